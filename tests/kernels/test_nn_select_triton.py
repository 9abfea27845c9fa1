"""The fused Triton nearest-neighbour selection kernel against the PyTorch reference: exact equality.

On a machine without CUDA the kernel runs in the Triton interpreter on CPU tensors:
``TRITON_INTERPRET=1`` is set here, before the kernel module (and its ``@triton.jit``) is first
imported, which happens lazily on the first ``kernel="triton"`` call. Shapes are then kept small,
and the token tile is 32 (so sequences of 33, 70 or 130 tokens end in a partial tile).
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


def kernel(*case, k, **options):
    from recsys.kernels.nn_select_triton import nn_select_triton

    return nn_select_triton(*case, k, **options)


CASES = [  # (lengths, candidates per sequence, C, k, levels, overlap)
    ([70, 0, 5, 33, 1], 3, 32, 8, 127, False),  # ragged, an empty sequence, partial tiles
    ([40, 40], 4, 5, 12, 1, False),  # values in {-1, 0, 1}: ties everywhere, C below one dot tile
    ([130], 70, 40, 16, 2, False),  # 70 candidates of one sequence: two programs; C=40 pads to 64
    ([9, 3, 0], 2, 32, 20, 127, False),  # k above every length: all tokens, -1 padding
    ([64, 20, 100], 2, 8, 5, 3, True),  # overlapping windows of one stream
    ([0, 0], 3, 16, 4, 127, False),  # only empty sequences
    ([97, 31], 2, 32, 1, 1, False),  # k = 1 under ties: the most recent of the best
]


@pytest.mark.parametrize("lengths, per_seq, dim, k, levels, overlap", CASES)
def test_triton_equals_reference(lengths, per_seq, dim, k, levels, overlap):
    case = make_case(lengths, per_seq, dim, seed=sum(lengths) + k, levels=levels, overlap=overlap)
    want = nn_select(*case, k, kernel="pytorch")
    got = nn_select(*case, k, kernel="triton")
    assert torch.equal(got, want)


SPLITS = [  # (lengths, candidates per sequence, k, levels, segment_len, block_s)
    ([300, 7, 0, 129], 3, 10, 127, 64, 32),  # segments merged by the second kernel
    ([256], 20, 40, 1, 100, 32),  # ties, segments not a multiple of the tile
    ([200, 45], 3, 20, 127, None, 16),  # k > tile: no bound from pass 1, the buffers shrink as they fill
    ([333], 4, 24, 2, 150, 16),  # ... in segments, with ties
]


@pytest.mark.parametrize("lengths, per_seq, k, levels, segment_len, block_s", SPLITS)
def test_segments_and_buffer_shrinks_give_the_same_selection(lengths, per_seq, k, levels, segment_len, block_s):
    """Sequences cut into segments (what a GPU does for few, long requests), and tiles narrower
    than k (every buffer overflows and shrinks to its top k, possibly several times)."""
    case = make_case(lengths, per_seq, 32, seed=k + len(lengths), levels=levels)
    got = kernel(*case, k=k, segment_len=segment_len, block_s=block_s)
    assert torch.equal(got, nn_select(*case, k, kernel="pytorch"))


def test_adversarial_order_overflows_the_buffer():
    """Scores rising along one tile column: every group maximum sits in the last tile, so pass 1's
    bound admits a whole column of the sequence and the buffer must shrink mid-pass."""
    length, block_s, k = 640, 16, 8
    values = torch.zeros(length, 32, dtype=torch.int8)
    values[:, 1] = 1  # every token points along axis 1 ...
    column0 = torch.arange(0, length, block_s)
    values[column0, 0] = torch.linspace(1, 127, column0.numel()).round().to(torch.int8)  # ... column 0 along axis 0
    as_index = lambda x: torch.tensor(x, dtype=torch.int64, device=DEVICE)  # noqa: E731
    case = [values.to(DEVICE), as_index([0]), as_index([length]), torch.eye(32)[:2].to(DEVICE), as_index([0, 0])]
    got = kernel(*case, k=k, block_s=block_s)
    assert torch.equal(got, nn_select(*case, k, kernel="pytorch"))
    assert got[0].tolist() == column0[-k:].tolist()  # candidate along axis 0: the k largest of column 0


def test_precomputed_groups_give_the_same_selection():
    """Candidates in any order, grouped once and reused (what a CUDA-graph caller does)."""
    from recsys.kernels.nn_select_triton import candidate_groups

    values, starts, lengths, candidates, candidate_seq = make_case([50, 0, 17], 3, 32, seed=5)
    groups = candidate_groups(candidate_seq, lengths)
    assert groups.most == int(torch.bincount(candidate_seq).max()) and groups.longest == 50
    codes = quantize_int8(candidates)
    for k in (4, 20):
        got = kernel(values, starts, lengths, codes, candidate_seq, k=k, groups=groups)
        assert torch.equal(got, nn_select(values, starts, lengths, candidates, candidate_seq, k, kernel="pytorch"))


def test_k_zero_and_int8_candidates():
    values, starts, lengths, candidates, candidate_seq = make_case([12, 7], 2, 32, seed=1)
    assert nn_select(values, starts, lengths, candidates, candidate_seq, 0, kernel="triton").shape == (4, 0)
    codes = quantize_int8(candidates)
    assert torch.equal(nn_select(values, starts, lengths, codes, candidate_seq, 5, kernel="triton"),
                       nn_select(values, starts, lengths, candidates, candidate_seq, 5, kernel="pytorch"))


def test_serving_shape_with_many_candidates_per_request():
    """Several requests with many candidates each; larger on a GPU than in the interpreter."""
    if DEVICE == "cuda":
        lengths, per_seq, k = [16_000, 3_000, 1, 0, 257], 500, 64
    else:
        lengths, per_seq, k = [300, 90, 1, 0, 65], 20, 24
    case = make_case(lengths, per_seq, 32, seed=7)
    assert torch.equal(nn_select(*case, k, kernel="triton"), nn_select(*case, k, kernel="pytorch"))


@pytest.mark.skipif(DEVICE != "cuda", reason="the autotuned, segmented GPU path: CUDA only")
@pytest.mark.parametrize("requests, per_request, length, k", [(1, 500, 16_000, 64), (64, 4, 16_000, 64),
                                                               (1024, 1, 10_000, 64), (3, 7, 5_000, 300)])
def test_benchmark_shapes_on_gpu(requests, per_request, length, k):
    case = make_case([length] * requests, per_request, 32, seed=requests + k, levels=127)
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


def test_benchmark_graph_replay_keeps_what_the_graph_reads_alive(monkeypatch):
    """``benchmarks/nn_select.py``'s ``triton-graph``: a CUDA graph replays its launches at the
    captured addresses and owns only what the capture allocated, so every tensor the captured call
    was given (the int8 candidates and the candidate groups prepared before the capture) must live
    as long as the replay function. Freed, the caching allocator hands their memory to the next
    tensors and the replays read garbage candidate indices: on an H100 the benchmark died with an
    illegal memory access at its first timing after a replay had passed the check. On CPU the
    graph is a stand-in that runs the captured call once (the interpreter)."""
    import contextlib
    import gc
    import importlib.util
    import weakref
    from pathlib import Path

    import recsys.kernels.nn_select_triton as K

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "nn_select.py"
    spec = importlib.util.spec_from_file_location("nn_select_benchmark_graph", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    given, capturing, real = [], [False], K.nn_select_triton

    def recording(*args, groups=None, **kwargs):
        if capturing[0]:
            given.extend(weakref.ref(t) for t in (*args, *kwargs.values(), *(groups or ())) if torch.is_tensor(t))
        return real(*args, groups=groups, **kwargs)

    @contextlib.contextmanager
    def capture(graph, *args, **kwargs):
        with (real_graph(graph, *args, **kwargs) if DEVICE == "cuda" else contextlib.nullcontext()):
            capturing[0] = True
            yield
        capturing[0] = False

    real_graph = torch.cuda.graph
    monkeypatch.setattr(K, "nn_select_triton", recording)
    monkeypatch.setattr(torch.cuda, "graph", capture)
    if DEVICE != "cuda":
        monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: type("Graph", (), {"replay": lambda self: None})())
        monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: None)
    x = bench.make_inputs(2, 40, 3, 32, DEVICE)
    replay = bench.graph_fn(x, 5, segment_len=16)
    gc.collect()
    freed = [i for i, ref in enumerate(given) if ref() is None]
    assert given and not freed, f"tensors the graph reads were freed: arguments {freed} of {len(given)}"
    want = nn_select(**x, k=5, kernel="pytorch")
    for _ in range(3):
        junk = [torch.full((n,), -1, dtype=torch.int64, device=DEVICE) for n in (1, 6, 96, 2048)]  # reuse freed memory
        assert torch.equal(replay(), want)
        del junk
