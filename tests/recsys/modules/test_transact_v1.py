"""TransAct V1: newest-first layout, early fusion, visible-only readout, empty rows, the training-only
time window, and the quirk flags against a restatement of the published module's forward."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recsys.errors import ConfigError, DataError
from recsys.modules.time_window_mask import sample_time_windows
from recsys.modules.transact_v1 import (
    TransActV1,
    TransActV1Config,
    TransActV1Quirks,
    newest_first,
    readout,
)

A, C, S, K = 4, 4, 8, 3  # actions, content dim, max sequence, latest K
DAY = 86_400
REQUEST = 10 * DAY
SMALL = TransActV1Config(
    max_sequence=S, action_embedding_dim=4, num_layers=2, num_heads=1, feedforward_dim=16, dropout=0.0, latest_k=K,
    time_window_seconds=DAY,
)


def encoder(quirks: TransActV1Quirks = TransActV1Quirks(), **overrides) -> TransActV1:
    torch.manual_seed(0)
    config = dataclasses.replace(SMALL, quirks=quirks, **overrides)
    return TransActV1(A, C, config).double()


def seconds_before(*offsets):
    return [REQUEST - o for o in offsets]


# One row per request: (action bits, action times), oldest first. Row 3's only action is bit mask 1
# (the type the published module confuses with padding); row 4 is longer than S.
ROWS = [
    ([2, 1, 3, 5, 1, 6], seconds_before(90_000, 40_000, 20_000, 5_000, 100, 10)),
    ([], []),
    ([7, 1], seconds_before(3_000, 30)),
    ([1], seconds_before(50)),
    ([3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14], seconds_before(*range(120_000, 0, -10_000))),
]


def inputs(rows=ROWS, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([len(bits) for bits, _ in rows])
    bits = torch.tensor([b for row, _ in rows for b in row], dtype=torch.int64)
    times = torch.tensor([t for _, row in rows for t in row], dtype=torch.int64)
    content = torch.randn(len(bits), C, generator=gen, dtype=torch.float64)
    candidate = torch.randn(len(rows), C, generator=gen, dtype=torch.float64)
    return dict(
        lengths=lengths, action_bits=bits, action_content=content, action_time=times,
        request_time=torch.full((len(rows),), REQUEST), candidate_content=candidate,
    )


def select(x: dict, rows: list[int]) -> dict:
    """The inputs of some rows of ``x`` (repeats allowed), same values."""
    starts = torch.cumsum(x["lengths"], 0) - x["lengths"]
    actions = torch.cat([torch.arange(int(starts[r]), int(starts[r] + x["lengths"][r])) for r in rows])
    per_action = {k: x[k][actions] for k in ("action_bits", "action_content", "action_time")}
    per_row = {k: x[k][rows] for k in ("lengths", "request_time", "candidate_content")}
    return {**per_action, **per_row}


def published_forward(module: TransActV1, x: dict, window_seconds: float, training: bool) -> torch.Tensor:
    """The published TransAct forward restated from its source, on this module's weights.

    Its inputs are padded newest first: action type -1, zeros for content and time. Its
    vocabulary is the non-empty bit masks; raw id i maps to ``lookup[i + 1]`` = rank of i in the
    sorted vocabulary, 0 for anything else; ``padding_idx=0``; key padding = ``row <= 0``; one
    window for the batch; ``mask[:, 0] = 0``; float -inf mask; ``nn.TransformerEncoder`` with
    ``nhead=2``; output = ``cat(out_linear(max over all positions), first K positions)``.
    """
    lengths = x["lengths"].tolist()
    rows = len(lengths)
    types = torch.full((rows, S), -1, dtype=torch.int64)
    items = torch.zeros(rows, S, C, dtype=torch.float64)
    times = torch.zeros(rows, S, dtype=torch.int64)
    start = 0
    for b, n in enumerate(lengths):
        for p in range(min(n, S)):  # newest first
            j = start + n - 1 - p
            types[b, p], items[b, p], times[b, p] = x["action_bits"][j], x["action_content"][j], x["action_time"][j]
        start += n
    vocab = list(range(1, 2**A))
    lookup = torch.zeros(2**A + 1, dtype=torch.int64)
    for rank, action_id in enumerate(sorted(vocab)):
        lookup[action_id + 1] = rank
    table_rows = lookup[types + 1]
    action_emb = F.embedding(table_rows, module.action_embedding.weight[: len(vocab)], padding_idx=0)
    key_padding = table_rows <= 0
    request = x["request_time"].unsqueeze(-1).expand(-1, S)
    threshold = window_seconds if training else 0
    mask = key_padding | ((request - times) < threshold)
    mask[:, 0] = False
    float_mask = torch.zeros(rows, S, dtype=torch.float64).masked_fill(mask, float("-inf"))
    tokens = torch.cat([action_emb, items, x["candidate_content"].unsqueeze(1).expand(-1, S, -1)], dim=2)
    d = tokens.shape[-1]
    layer = nn.TransformerEncoderLayer(d, 2, dim_feedforward=SMALL.feedforward_dim, dropout=0.0, batch_first=True)
    published = nn.TransformerEncoder(layer, SMALL.num_layers).double()
    published.load_state_dict(module.encoder.state_dict())
    published.train(training)
    out = published(tokens, src_key_padding_mask=float_mask)
    pooled = module.pool_projection(out.max(dim=1).values)
    return torch.cat([pooled, out[:, :K].flatten(1)], dim=1)


def test_newest_first_layout():
    values = torch.tensor([1, 2, 3, 4, 5, 6])
    padded, real = newest_first(values, torch.tensor([3, 0, 1, 2]), 2)
    assert padded.tolist() == [[3, 2], [0, 0], [4, 0], [6, 5]]
    assert real.tolist() == [[True, True], [False, False], [True, False], [True, True]]
    empty, real = newest_first(torch.zeros(0, 2), torch.tensor([0, 0]), 3)
    assert empty.shape == (2, 3, 2) and not real.any()


def capture(module):
    seen = {}
    def before(module, args, kwargs):
        seen.update(tokens=args[0], mask=kwargs["src_key_padding_mask"])

    module.encoder.register_forward_pre_hook(before, with_kwargs=True)
    module.encoder.register_forward_hook(lambda m, args, out: seen.update(outputs=out))
    return seen


def test_early_fusion_tokens_newest_first():
    module = encoder().eval()
    seen = capture(module)
    x = inputs()
    out = module(**x)
    assert out.shape == (5, (K + 1) * module.model_dim) and module.model_dim == 4 + 2 * C
    tokens = seen["tokens"]  # [B, L, D]: every row, visible tokens first
    assert tokens.shape == (5, S, 12)
    row0 = tokens[0]  # 6 actions, newest first, then padding
    bits0 = torch.tensor([6, 1, 5, 3, 1, 2])
    torch.testing.assert_close(row0[:6, :4], module.action_embedding.weight[bits0 + 1])
    torch.testing.assert_close(row0[:6, 4:8], x["action_content"][:6].flip(0))
    torch.testing.assert_close(row0[:6, 8:], x["candidate_content"][0].expand(6, C))
    torch.testing.assert_close(tokens[4, :, 4:8], x["action_content"][-S:].flip(0))  # row 4: latest S only


def test_first_k_readout_is_the_k_most_recent_visible_outputs():
    module = encoder().eval()
    seen = capture(module)
    out = module(**inputs())
    outputs, mask = seen["outputs"], seen["mask"]
    d = module.model_dim
    latest = out[:, d:].view(5, K, d)
    torch.testing.assert_close(latest[0], outputs[0, :K])  # row 0 (6 actions): its 3 newest
    torch.testing.assert_close(latest[2, :2], outputs[2, :2])  # row 2 (2 actions): both, then zeros
    assert torch.all(latest[2, 2] == 0) and torch.all(out[1] == 0)  # row 1 is empty
    assert not mask[0, :K].any() and mask[2, 2:].all() and mask[1, 1:].all()

    module.train()
    torch.manual_seed(11)
    window = float(sample_time_windows(5, DAY)[0])
    torch.manual_seed(11)
    out = module(**inputs())
    # row 0: the actions 10, 100 and 5,000 s old fall inside the window, the next ones do not
    assert 5_000 < window < 20_000, window
    tokens = seen["tokens"]
    torch.testing.assert_close(tokens[0, :2, 4:8], inputs()["action_content"][[2, 1]])  # 20,000 s, 40,000 s old
    torch.testing.assert_close(out[0, d:].view(K, d)[:2], seen["outputs"][0, :2])


def test_max_pool_and_readout_ignore_hidden_positions_unless_the_quirk_is_on():
    torch.manual_seed(0)
    projection = nn.Linear(6, 6)
    hidden = torch.tensor([[False, False, True, True], [False, True, True, True], [True, True, True, True]])
    outputs = torch.randn(3, 4, 6)
    garbage = outputs.clone()
    garbage[hidden] = 100.0 * torch.randn(int(hidden.sum()), 6)
    fixed = readout(outputs, hidden, 2, projection)
    torch.testing.assert_close(readout(garbage, hidden, 2, projection), fixed)
    torch.testing.assert_close(fixed[0, :6], projection(outputs[0, :2].max(dim=0).values))
    torch.testing.assert_close(fixed[1, 6:12], outputs[1, 0])
    assert torch.all(fixed[1, 12:] == 0) and torch.all(fixed[2] == 0)
    published = readout(garbage, hidden, 2, projection, ignore_mask=True)
    torch.testing.assert_close(published[0, :6], projection(garbage[0].max(dim=0).values))
    torch.testing.assert_close(published[1, 12:], garbage[1, 1])


def test_a_row_does_not_depend_on_the_padding_of_its_batch():
    module = encoder().eval()
    alone = module(**select(inputs(), [2]))
    with_longer = module(**select(inputs(), [2, 4]))
    torch.testing.assert_close(with_longer[:1], alone)


def test_only_the_latest_s_actions_are_read():
    module = encoder().eval()
    x = inputs([ROWS[4]])
    cut = {**x, "lengths": torch.tensor([S]), "action_bits": x["action_bits"][-S:],
           "action_content": x["action_content"][-S:], "action_time": x["action_time"][-S:]}
    torch.testing.assert_close(module(**x), module(**cut))


@pytest.mark.parametrize("training", [False, True])
def test_empty_histories_give_zeros_and_finite_gradients(training):
    module = encoder().train(training)
    empty = inputs([([], []), ([], [])])
    empty["candidate_content"].requires_grad_(True)
    out = module(**empty)
    assert torch.all(out == 0)
    out.sum().backward()  # every parameter takes part even then (DDP's static graph needs it)
    assert all(p.grad is not None for p in module.parameters())
    module.zero_grad()
    mixed = module(**inputs())
    mixed.sum().backward()
    assert torch.isfinite(mixed).all() and torch.all(mixed[1] == 0)
    assert all(torch.isfinite(p.grad).all() for p in module.parameters() if p.grad is not None)


def test_time_window_only_in_training():
    module = encoder()
    recent = [([3, 5], seconds_before(20, 10))] * 4  # every action inside almost any window
    module.eval()
    first, second = module(**inputs(recent)), module(**inputs(recent))
    torch.testing.assert_close(first, second)
    assert first.abs().sum() > 0
    module.train()
    torch.manual_seed(0)
    hidden_in_training = module(**inputs(recent))
    assert torch.all(hidden_in_training == 0)  # windows > 20 s hide both actions: like an empty history
    no_window = encoder(time_window_seconds=0.0).train()
    torch.testing.assert_close(no_window(**inputs(recent)), first)


@pytest.mark.parametrize("training", [False, True])
def test_all_quirks_reproduce_the_published_forward(training):
    module = encoder(TransActV1Quirks.reference()).train(training)
    assert module.encoder.layers[0].self_attn.num_heads == 2
    x = inputs()
    window = float(sample_time_windows(5, DAY, torch.Generator().manual_seed(11), one_per_batch=True)[0])
    ours = module(**x, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(ours, published_forward(module, x, window, training))
    fixed = encoder().train(training)
    fixed.load_state_dict(module.state_dict(), strict=False)
    assert not torch.allclose(fixed(**x, generator=torch.Generator().manual_seed(11)), ours)


def test_each_quirk_on_its_own():
    x = inputs()
    fixed = encoder().eval()(**x)
    collided = encoder(TransActV1Quirks(pad_collides_with_first_action=True)).eval()
    out = collided(**x)
    assert torch.all(out[3] == 0) and not torch.all(fixed[3] == 0)  # row 3 holds only type 1: treated as padding
    assert collided.action_embedding(torch.tensor([0])).abs().sum() == 0

    newest = encoder(TransActV1Quirks(newest_action_never_masked=True))
    assert not torch.all(newest.eval()(**x)[1] == 0)  # the empty row attends to its padding token
    recent = inputs([([3, 5], seconds_before(20, 10))])
    torch.manual_seed(0)
    assert not torch.all(newest.train()(**recent) == 0)  # the newest action survives the window

    assert encoder(TransActV1Quirks(two_heads=True)).encoder.layers[0].self_attn.num_heads == 2

    same_rows = select(x, [0] * 16)
    torch.manual_seed(0)
    per_request = encoder().train()(**same_rows)
    torch.manual_seed(0)
    per_batch = encoder(TransActV1Quirks(one_window_per_batch=True)).train()(**same_rows)
    assert torch.allclose(per_batch, per_batch[:1].expand_as(per_batch))
    assert not torch.allclose(per_request, per_request[:1].expand_as(per_request))


def test_config_and_input_errors():
    with pytest.raises(ConfigError, match="must divide"):
        TransActV1(A, C, dataclasses.replace(SMALL, num_heads=5))
    with pytest.raises(ConfigError, match="content_dim=0"):
        TransActV1(A, 0, SMALL)
    with pytest.raises(ConfigError, match="time_window_seconds"):
        TransActV1Config(time_window_seconds=-1.0)
    with pytest.raises(ConfigError, match="latest_k"):
        TransActV1Config(latest_k=0)
    assert TransActV1Config(quirks={"two_heads": True}).quirks == TransActV1Quirks(two_heads=True)
    with pytest.raises(ConfigError, match="quirks.two_head"):
        TransActV1Config(quirks={"two_head": True})
    module = encoder()
    bad = inputs()
    bad["action_bits"] = bad["action_bits"] + 16
    with pytest.raises(DataError, match="bit masks"):
        module(**bad)
    short = inputs()
    short["action_content"] = short["action_content"][:, :2]
    with pytest.raises(DataError, match="action_content"):
        module(**short)
