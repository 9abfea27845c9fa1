"""The synthetic training step's Workload describes the batch the model really reads."""

import torch

from recsys.distributed.probe_workloads import probe_case, probe_data
from recsys.models.pinnability import s_all_batch


def test_transact_v2_workload_counts_s_all_and_the_next_action_pairs_the_model_forms(tmp_path):
    """A lifelong batch also stores S_RT's realtime history (V1 / BST read it, V2 drops it): V2's
    Workload holds the S_all lengths V2 encodes, its position table the config's S_all length, and
    the next-action pairs and impression negatives its loss really scores."""
    data = probe_data("transact_v2", 16, 12, cache_dir=str(tmp_path))
    s_all = s_all_batch(data.batch)
    assert data.batch.sequence_features.lengths().sum() > s_all.sequence_features.lengths().sum()  # history stored
    s_all_lengths = s_all.sequence_features["seq_item_id"].lengths().numpy()
    assert sorted(data.work.lengths.typical_batch(16).tolist()) == sorted(s_all_lengths.tolist())
    assert data.overrides == {"transact_v2": {"max_sequence": 12 + 8 + 8 + 8}}  # lifelong_k + r + realtime_k + impression_k

    case = probe_case("transact_v2", 16, 12, cache_dir=str(tmp_path), embedding_dim=16)
    loss = case.model.model.sequence_arch.next_action_loss
    seen = {}
    loss.register_forward_pre_hook(lambda m, args: seen.update(queries=args[0].shape[0]))
    impressions = loss._impressions
    loss._impressions = lambda *a: seen.setdefault("negatives", impressions(*a))
    with torch.no_grad():
        case.step()
    assert seen["queries"] == round(16 * case.work.next_action_pairs_per_row) > 0
    assert seen["negatives"][0].shape[0] == round(16 * case.work.impressions_per_row) > 0
