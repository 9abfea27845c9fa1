"""Nearest-neighbour selection: the op against a brute force written from the definition."""

import math
import sys

import numpy as np
import pytest
import torch

from recsys.errors import ConfigError, DataError
from recsys.ops.int8_quantization import dequantize_int8, quantize_int8
from recsys.ops.nn_select import nn_select, nn_select_kernels
from recsys.ops.nn_select_reference import nn_select_reference


def normalised_score(query, token):
    """(q_c . q_t) / ||q_t|| as the op rounds it: exact integer dot, float32 of the float64
    inverse norm, one float32 product (0 for a zero token)."""
    dot = sum(q * int(v) for q, v in zip(query, token))
    norm = math.sqrt(sum(int(v) * int(v) for v in token))
    inverse = np.float32(1.0 / norm) if norm > 0 else np.float32(0.0)
    return float(np.float32(dot) * inverse)


def brute_force(values, starts, lengths, candidates, candidate_seq, k, scale=0.65):
    """Per candidate, Python numbers: sort (score desc, position desc), keep min(k, L), ascending."""
    codes = candidates if candidates.dtype == torch.int8 else quantize_int8(candidates, scale)
    out = []
    for b in range(codes.size(0)):
        r = int(candidate_seq[b])
        start, length = int(starts[r]), int(lengths[r])
        query = codes[b].tolist()
        scored = [(normalised_score(query, values[start + j].tolist()), j) for j in range(length)]
        kept = sorted(j for _, j in sorted(scored, reverse=True)[: min(k, length)])
        out.append(kept + [-1] * (k - len(kept)))
    return torch.tensor(out, dtype=torch.int64).reshape(codes.size(0), k)


def select(values, starts, lengths, candidates, candidate_seq, k):
    as_index = lambda x: torch.tensor(x, dtype=torch.int64)  # noqa: E731
    return nn_select(values, as_index(starts), as_index(lengths), candidates, as_index(candidate_seq), k)


def one_dim(tokens):
    return torch.tensor(tokens, dtype=torch.int8).reshape(-1, 1)


def angles(degrees, radius=100):
    """2-D int8 tokens at these angles (degrees) from the x axis."""
    rad = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([radius * rad.cos(), radius * rad.sin()], dim=1).round().to(torch.int8)


def test_known_selection_in_time_order():
    values = angles([80, 10, 45, 10])  # cosines with candidate (1, 0): 0.17, 0.98, 0.71, 0.98
    cand = torch.tensor([[1, 0]], dtype=torch.int8)
    assert select(values, [0], [4], cand, [0], 2).tolist() == [[1, 3]]
    assert select(values, [0], [4], cand, [0], 3).tolist() == [[1, 2, 3]]
    assert select(values, [0], [4], -cand, [0], 1).tolist() == [[0]]  # negated candidate: farthest token wins


def test_tokens_are_scored_normalised_not_by_raw_dot_product():
    """A long token pointing away from the candidate loses to a short one pointing at it: the score
    is the candidate against the L2-normalised dequantised token, as the paper's serving path."""
    values = torch.tensor([[120, 90], [20, 0], [0, 0]], dtype=torch.int8)  # raw dots with (1, 0): 120, 20, 0
    cand = torch.tensor([[1.0, 0.0]])
    assert select(values, [0], [3], cand, [0], 1).tolist() == [[1]]  # cosines 0.8, 1.0, 0 (zero token)
    assert select(values, [0], [3], cand, [0], 2).tolist() == [[0, 1]]


def test_ties_go_to_the_most_recent_tokens():
    values = one_dim([5, 5, 5, 5, 9])
    cand = one_dim([1])
    assert select(values, [0], [5], cand, [0], 3).tolist() == [[2, 3, 4]]
    assert select(values, [0], [4], cand, [0], 2).tolist() == [[2, 3]]


def test_short_sequences_return_all_tokens_and_pad_with_minus_one():
    values = one_dim([4, -2, 7])
    cand = one_dim([1, -1])
    got = select(values, [0, 1], [3, 2], cand, [0, 1], 5)
    assert got.tolist() == [[0, 1, 2, -1, -1], [0, 1, -1, -1, -1]]


def test_empty_sequences_and_k_zero():
    values = one_dim([4, -2, 7])
    cand = one_dim([1, 2, 3])
    assert select(values, [0, 3], [3, 0], cand, [1, 0, 1], 2).tolist() == [[-1, -1], [0, 2], [-1, -1]]
    assert select(values, [0], [3], cand, [0, 0, 0], 0).shape == (3, 0)
    empty = torch.empty(0, 1)
    assert select(values, [0], [3], empty, [], 4).shape == (0, 4)


def test_overlapping_windows_share_one_token_table():
    """History as of two times is two windows of one stream: no copy, each window ranked alone."""
    values = angles([0, 80, 10, 70, 20])  # nearest to (1, 0) first: 0, 2, 4, 3, 1
    cand = torch.tensor([[1, 0], [1, 0]], dtype=torch.int8)
    got = select(values, [0, 0], [3, 5], cand, [0, 1], 2)
    assert got.tolist() == [[0, 2], [0, 2]]
    got = select(values, [1, 2], [2, 3], cand, [0, 1], 1)
    assert got.tolist() == [[1], [0]]  # windows [1, 8] and [8, 2, 7]: positions within each window


def random_case(lengths, per_seq, dim, seed, levels=127):
    g = torch.Generator().manual_seed(seed)
    starts = torch.cumsum(torch.tensor([0] + lengths[:-1]), 0)
    values = torch.randint(-levels, levels + 1, (sum(lengths) + 3, dim), generator=g).to(torch.int8)
    candidate_seq = torch.arange(len(lengths)).repeat_interleave(per_seq)
    candidate_seq = candidate_seq[torch.randperm(candidate_seq.numel(), generator=g)]
    candidates = torch.randn(candidate_seq.numel(), dim, generator=g) * 0.4
    return values, starts, torch.tensor(lengths), candidates, candidate_seq


@pytest.mark.parametrize("lengths, per_seq, dim, k, levels", [
    ([7, 0, 12, 3, 1], 3, 4, 4, 127),
    ([30, 30], 5, 2, 10, 1),  # values in {-1, 0, 1}: many ties
    ([1, 2, 3, 4, 5, 6], 2, 8, 3, 3),
    ([50], 9, 32, 50, 127),  # k == L
    ([5, 9], 2, 3, 0, 127),
])
def test_reference_matches_brute_force(lengths, per_seq, dim, k, levels):
    case = random_case(lengths, per_seq, dim, seed=len(lengths) * 7 + k, levels=levels)
    assert torch.equal(nn_select(*case, k), brute_force(*case, k))


def test_int8_candidates_are_used_as_given():
    values, starts, lengths, candidates, candidate_seq = random_case([20, 6], 4, 5, seed=3)
    codes = quantize_int8(candidates)
    assert torch.equal(nn_select(values, starts, lengths, codes, candidate_seq, 5),
                       nn_select(values, starts, lengths, candidates, candidate_seq, 5))


def test_selection_is_nearest_by_dequantised_dot_product():
    """On unit vectors the kept tokens outscore the dropped ones up to the quantisation error."""
    g = torch.Generator().manual_seed(5)
    tokens = torch.nn.functional.normalize(torch.randn(400, 16, generator=g), dim=1)
    cand = torch.nn.functional.normalize(torch.randn(3, 16, generator=g), dim=1)
    values = quantize_int8(tokens)
    got = nn_select(values, torch.tensor([0]), torch.tensor([400]), cand, torch.zeros(3, dtype=torch.int64), 20)
    scores = cand @ dequantize_int8(values).T  # [3, 400]
    for b in range(3):
        kept = torch.zeros(400, dtype=torch.bool)
        kept[got[b]] = True
        # |s_float - s_int8| <= sum_c |t_c| * step/2 <= sqrt(C) * 0.65 / 254 for unit vectors
        assert float(scores[b, kept].min()) >= float(scores[b, ~kept].max()) - 2 * 4 * 0.65 / 254


def test_auto_on_cpu_is_the_reference():
    case = random_case([6, 4], 2, 3, seed=9)
    assert torch.equal(nn_select(*case, 3, kernel="auto"), nn_select_reference(*case, 3))
    assert {"pytorch", "triton"} <= set(nn_select_kernels())


def test_bad_inputs_raise_clear_errors(monkeypatch):
    values, starts, lengths, candidates, candidate_seq = random_case([6, 4], 2, 3, seed=9)
    with pytest.raises(DataError, match="int8"):
        nn_select(values.float(), starts, lengths, candidates, candidate_seq, 2)
    with pytest.raises(DataError, match="candidates must be"):
        nn_select(values, starts, lengths, candidates[:, :2], candidate_seq, 2)
    with pytest.raises(DataError, match="window"):
        nn_select(values, starts, lengths + 10, candidates, candidate_seq, 2)
    with pytest.raises(DataError, match="candidate_seq"):
        nn_select(values, starts, lengths, candidates, candidate_seq + 5, 2)
    with pytest.raises(ConfigError, match="k must"):
        nn_select(values, starts, lengths, candidates, candidate_seq, -1)
    with pytest.raises(ConfigError, match="unknown"):
        nn_select(values, starts, lengths, candidates, candidate_seq, 2, kernel="cuda_magic")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match="TRITON_INTERPRET"):
        nn_select(values, starts, lengths, candidates, candidate_seq, 2, kernel="triton")


def test_triton_without_the_installed_kernels_package_names_the_fix(monkeypatch):
    """A checkout on PYTHONPATH without `pip install -e .` has no recsys.kernels (mapped from kernels/)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setitem(sys.modules, "recsys.kernels.nn_select_triton", None)  # import fails as if absent
    case = random_case([6, 4], 2, 3, seed=9)
    with pytest.raises(ConfigError, match="pip install -e"):
        nn_select(*case, 2, kernel="triton")
