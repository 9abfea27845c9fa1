"""Relative position / time bias indexing on small hand-computed cases."""

import torch

from recsys.modules.relative_bias import (
    RelativeAttentionBias,
    effective_positions,
    next_timestamps,
    padded_relative_bias,
    time_buckets,
)


def test_time_buckets_hand_computed():
    dt = torch.tensor([0, 1, -1, 2, -2, 3, 10, 100, 10**12])
    # floor(ln(max(|dt|, 1)) / 0.301): ln 2 / 0.301 = 2.30, ln 3 = 3.65, ln 10 = 7.65, ln 100 = 15.3
    assert time_buckets(dt, num_buckets=20).tolist() == [0, 0, 0, 2, 2, 3, 7, 15, 20]
    assert time_buckets(torch.tensor([100]), num_buckets=20, base=1.0).tolist() == [4]  # ln 100 = 4.6


def test_targets_share_the_position_after_history():
    # slots past the history (targets, and padding, which is masked anyway) sit at the history length
    lengths, num_targets = torch.tensor([4, 3, 0]), torch.tensor([2, 0, 0])
    assert effective_positions(lengths, num_targets, 5).tolist() == [[0, 1, 2, 2, 2], [0, 1, 2, 3, 3], [0, 0, 0, 0, 0]]


def test_next_timestamps_stop_at_history_end():
    ts = torch.tensor([[10, 20, 40, 80], [5, 6, 0, 0]])
    lengths = torch.tensor([4, 2])
    assert next_timestamps(ts, lengths, None).tolist() == [[20, 40, 80, 80], [6, 6, 0, 0]]
    # sequence 0 has 2 targets: token 1 does not read the first target, targets use their own time
    assert next_timestamps(ts, lengths, torch.tensor([2, 0])).tolist() == [[20, 20, 40, 80], [6, 6, 0, 0]]


def test_position_bias_indexes_relative_distance():
    table = torch.arange(7.0)  # L = 4, entry d + 3 for distance d = j - i
    bias = padded_relative_bias(torch.tensor([3]), 3, position_bias=table)
    assert bias[0].tolist() == [[3, 4, 5], [2, 3, 4], [1, 2, 3]]


def test_position_bias_clips_long_distances_and_handles_targets():
    table = torch.arange(5.0)  # L = 3: distances beyond +-2 use the end entries
    bias = padded_relative_bias(torch.tensor([5]), 5, num_targets=torch.tensor([1]), position_bias=table)
    # positions [0, 1, 2, 3, 4] with 1 target: the last token sits at 4 = history length
    assert bias[0, 0].tolist() == [2, 3, 4, 4, 4]
    assert bias[0, 4].tolist() == [0, 0, 0, 1, 2]


def test_time_bias_uses_next_timestamp_minus_key_time():
    table = torch.arange(0.0, 30.0)  # bucket b -> bias b
    ts = torch.tensor([[0, 1, 10]])
    bias = padded_relative_bias(torch.tensor([3]), 3, padded_timestamps=ts, time_bias=table)
    # t_next = [1, 10, 10]; row i, column j: bucket(|t_next(i) - t_j|)
    # |1-0|=1 ->0, |1-1|=0 ->0, |1-10|=9 ->7; |10-0|=10 ->7, |10-1|=9 ->7, 0 ->0
    assert bias[0].tolist() == [[0, 0, 7], [7, 7, 0], [7, 7, 0]]


def test_module_tables_and_dense_bias():
    rab = RelativeAttentionBias(max_seq_len=4, num_time_buckets=8)
    kwargs = rab.op_kwargs()
    assert kwargs["position_bias"].shape == (7,) and kwargs["time_bias"].shape == (9,)
    assert kwargs["time_bucket_base"] == 0.301
    assert 0 < kwargs["position_bias"].std() < 0.1
    ts = torch.tensor([[3, 9, 200, 0], [1, 2, 3, 4]])
    dense = rab(torch.tensor([3, 4]), 4, padded_timestamps=ts)
    assert dense.shape == (2, 4, 4)
    # entry (1, 0, 3): distance 3 -> position entry 6; t_next(0) = 2, |2 - 4| = 2 -> bucket 2
    torch.testing.assert_close(dense[1, 0, 3], rab.position_weights[6] + rab.time_weights[2])
    position_only = RelativeAttentionBias(max_seq_len=4, use_time=False)
    assert position_only.op_kwargs()["time_bias"] is None


def test_next_timestamp_is_the_last_history_tokens_t_next():
    ts = torch.tensor([[10, 20, 30, 40], [5, 6, 0, 0]])
    lengths, num_targets = torch.tensor([4, 2]), torch.tensor([1, 0])
    after = torch.tensor([99, 77])  # the events after each history
    assert next_timestamps(ts, lengths, num_targets, after).tolist() == [[20, 30, 99, 40], [6, 77, 0, 0]]
    assert next_timestamps(ts, lengths, num_targets).tolist() == [[20, 30, 30, 40], [6, 6, 0, 0]]
