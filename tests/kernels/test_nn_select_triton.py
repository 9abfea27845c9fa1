"""The Triton nearest-neighbour selection kernel against the PyTorch reference: exact equality.

On a machine without CUDA the kernel runs in the Triton interpreter on CPU tensors:
``TRITON_INTERPRET=1`` is set here, before the kernel module (and its ``@triton.jit``) is first
imported, which happens lazily on the first ``kernel="triton"`` call. Shapes are then kept small.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from recsys.ops.int8_quantization import quantize_int8  # noqa: E402
from recsys.ops.nn_select import nn_select  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_case(lengths, per_seq, dim, seed, levels=127, overlap=False, device=DEVICE):
    """Ragged sequences of int8 tokens; ``levels`` small means many tied scores; ``overlap`` makes
    every window start at row 0 of one shared stream (histories of one user at several times)."""
    g = torch.Generator().manual_seed(seed)
    lengths_t = torch.tensor(lengths, dtype=torch.int64)
    starts = torch.zeros_like(lengths_t) if overlap else torch.cumsum(lengths_t, 0) - lengths_t
    total = max(lengths) if overlap else sum(lengths)
    values = torch.randint(-levels, levels + 1, (total + 2, dim), generator=g).to(torch.int8)
    candidate_seq = torch.randint(0, len(lengths), (per_seq * len(lengths),), generator=g)
    candidates = torch.randn(candidate_seq.numel(), dim, generator=g) * 0.3
    return [t.to(device) for t in (values, starts, lengths_t, candidates, candidate_seq)]


CASES = [  # (lengths, candidates per sequence, C, k, levels, overlap)
    ([70, 0, 5, 33, 1], 3, 32, 8, 127, False),
    ([40, 40], 4, 5, 12, 1, False),  # values in {-1, 0, 1}: ties everywhere, C below one dot tile
    ([130], 70, 40, 16, 2, False),  # 70 candidates of one sequence: two programs; C=40 pads to 64
    ([9, 3, 0], 2, 32, 20, 127, False),  # k above every length: all tokens, -1 padding
    ([64, 20, 100], 2, 8, 5, 3, True),  # overlapping windows of one stream
    ([0, 0], 3, 16, 4, 127, False),  # only empty sequences
]


@pytest.mark.parametrize("lengths, per_seq, dim, k, levels, overlap", CASES)
def test_triton_equals_reference(lengths, per_seq, dim, k, levels, overlap):
    case = make_case(lengths, per_seq, dim, seed=sum(lengths) + k, levels=levels, overlap=overlap)
    want = nn_select(*case, k, kernel="pytorch")
    got = nn_select(*case, k, kernel="triton")
    assert torch.equal(got, want)


@pytest.mark.parametrize("lengths, per_seq, k, levels", [([300, 7, 0, 129], 3, 10, 127), ([256], 20, 40, 1)])
def test_segments_merge_to_the_same_selection(lengths, per_seq, k, levels):
    """Sequences cut into 64-token segments (what a GPU does for few, long requests)."""
    from recsys.kernels.nn_select_triton import nn_select_triton

    case = make_case(lengths, per_seq, 32, seed=k, levels=levels)
    assert torch.equal(nn_select_triton(*case, k, segment_len=64), nn_select(*case, k, kernel="pytorch"))


def test_k_zero_and_int8_candidates():
    values, starts, lengths, candidates, candidate_seq = make_case([12, 7], 2, 32, seed=1)
    assert nn_select(values, starts, lengths, candidates, candidate_seq, 0, kernel="triton").shape == (4, 0)
    codes = quantize_int8(candidates)
    assert torch.equal(nn_select(values, starts, lengths, codes, candidate_seq, 5, kernel="triton"),
                       nn_select(values, starts, lengths, candidates, candidate_seq, 5, kernel="pytorch"))


def test_serving_shape_with_many_candidates_per_request():
    """Several requests with many candidates each; larger on a GPU than in the interpreter."""
    if DEVICE == "cuda":
        lengths, per_seq, k = [10_000, 3_000, 1, 0, 257], 300, 96
    else:
        lengths, per_seq, k = [300, 90, 1, 0, 65], 20, 24
    case = make_case(lengths, per_seq, 32, seed=7)
    assert torch.equal(nn_select(*case, k, kernel="triton"), nn_select(*case, k, kernel="pytorch"))


def test_kernel_scores_normalised_tokens():
    """A long token pointing away from the candidate loses to a short one pointing at it."""
    values = torch.tensor([[120, 90], [20, 0], [0, 0], [-50, 5]], dtype=torch.int8, device=DEVICE)
    as_index = lambda x: torch.tensor(x, dtype=torch.int64, device=DEVICE)  # noqa: E731
    cand = torch.tensor([[1.0, 0.0]], device=DEVICE)
    got = nn_select(values, as_index([0]), as_index([4]), cand, as_index([0]), 1, kernel="triton")
    assert got.tolist() == [[1]]
    got = nn_select(values, as_index([0]), as_index([4]), -cand, as_index([0]), 2, kernel="triton")
    assert got.tolist() == [[2, 3]]  # cosines with (-1, 0): -0.8, -1, 0 (zero token), 0.995
