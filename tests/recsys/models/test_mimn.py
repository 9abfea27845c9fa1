"""The mimn zoo model: event-at-a-time state == the training forward, the utilisation loss, overfitting, the recipe."""

import pytest
import torch

from recsys.errors import ConfigError
from recsys.models import get_model, model_config
from recsys.models.task import RankingTask
from recsys.modules.mimn import MIMNState, utilisation_loss
from recsys.modules.weighted_cross_entropy import WeightedCrossEntropy
from tests.recsys.models.sequence_batches import HISTORIES, SPEC, make_batch, overfit_loss, train_tiny

SMALL = dict(embedding_dim=8, memory_slots=3, memory_dim=6, controller_dim=5, induction_dim=4, induction_top_k=2,
             over_arch_layers=[8])


def small_model(**overrides):
    torch.manual_seed(0)
    return get_model("mimn", feature_spec=SPEC, **{**SMALL, **overrides}).eval()


def test_default_sizes_are_the_papers():
    """§5.1 of the paper: memory slot width = embedding width (16), MIU GRU width 32, 4 slots (Amazon's best)."""
    config = model_config("mimn")
    assert (config.memory_slots, config.memory_dim, config.embedding_dim, config.induction_dim) == (4, 16, 16, 32)
    model = get_model("mimn", feature_spec=SPEC)
    assert model.arch.induction.hidden_size == 32 and model.init_state(2).induction.shape == (2, 4, 32)


def test_config_ranges():
    assert model_config("mimn").utilisation_regularization
    with pytest.raises(ConfigError, match="induction_top_k"):
        model_config("mimn", memory_slots=2, induction_top_k=3)
    with pytest.raises(ConfigError, match="utilisation_loss_weight"):
        model_config("mimn", utilisation_loss_weight=-1.0)
    with pytest.raises(ConfigError, match="memory_dim"):
        model_config("mimn", memory_dim=0)


def test_streaming_one_event_at_a_time_equals_the_training_forward():
    """The UIC path (update per event, ids in) builds the state the whole-sequence forward builds."""
    model = small_model()
    batch = make_batch()
    events, mask, candidates = model.embed(batch.sequence_features, batch.item_id, batch.batch_size)
    whole = model.arch.encode(events, mask)
    streamed: list[MIMNState] = []
    for history in HISTORIES:  # each user alone, events arriving one by one
        state = model.init_state(1)
        for item, bits in history:
            state = model.update(state, torch.tensor([item]), torch.tensor([bits]), torch.tensor([True]))
        streamed.append(state)
    for b, state in enumerate(streamed):
        for name in ("memory", "utilisation", "controller", "read", "induction"):
            torch.testing.assert_close(getattr(state, name)[0], getattr(whole, name)[b], msg=name)
    stacked = MIMNState(**{n: torch.cat([getattr(s, n) for s in streamed]) for n in ("memory", "utilisation", "controller", "read", "induction")})
    scored = model.score(stacked, batch.item_id, batch.dense_features)
    torch.testing.assert_close(scored, model(batch))


def test_a_batch_of_users_with_events_at_different_times_keeps_the_others_unchanged():
    model = small_model()
    batch = make_batch()
    events, mask, _ = model.embed(batch.sequence_features, batch.item_id, batch.batch_size)
    whole = model.arch.encode(events, mask)
    state = model.init_state(4)
    arrivals = [(b, t) for t in range(6) for b in (3, 0, 2) if t < len(HISTORIES[b])]  # interleaved users
    for b, t in arrivals:
        item, bits = HISTORIES[b][t]
        ids, actions = torch.zeros(4, dtype=torch.int64), torch.zeros(4, dtype=torch.int64)
        ids[b], actions[b] = item, bits
        state = model.update(state, ids, actions, torch.arange(4) == b)
    for name in ("memory", "utilisation", "controller", "read", "induction"):
        torch.testing.assert_close(getattr(state, name), getattr(whole, name), msg=name)


def test_auxiliary_loss_is_the_utilisation_loss_of_the_rows_with_history():
    model = small_model()
    batch = make_batch()
    model(batch)
    events, mask, _ = model.embed(batch.sequence_features, batch.item_id, batch.batch_size)
    state = model.arch.encode(events, mask)
    has_history = torch.tensor([1.0, 0.0, 1.0, 1.0])
    torch.testing.assert_close(model.auxiliary_loss, utilisation_loss(state.utilisation, has_history))
    assert model.auxiliary_loss > 0
    task = RankingTask(model, WeightedCrossEntropy(model.heads, SPEC.action_vocab))
    assert task.auxiliary_weight == model_config("mimn").utilisation_loss_weight
    plain = small_model(utilisation_regularization=False)
    plain(batch)
    assert plain.auxiliary_loss is None


def test_overfits_a_tiny_batch():
    first, last = overfit_loss("mimn", memory_slots=3, memory_dim=8, controller_dim=8, induction_dim=8)
    assert last < 0.3 * first


def test_trains_under_the_ranking_recipe(tmp_path):
    click = train_tiny("mimn", tmp_path)
    assert click["auc"] > 0.6 and click["ne"] < 1.0, click
