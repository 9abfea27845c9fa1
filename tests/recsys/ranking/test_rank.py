"""rank_requests: the deduplicated request path equals the model's offline forward on the
replicated batch (one RankingBatch row per (request, candidate) with its stored S_all)."""

import copy

import numpy as np
import pytest
import torch

from recsys.data.lifelong import collate_lifelong
from recsys.errors import ConfigError
from recsys.ranking import HostArena, RankRequest, RankRequestBatch, UserSequence, rank_requests

from .conftest import SMALL, request_groups, requests_from_rows


def ragged_groups(examples):
    """Every request, with 1, a few or all (16 or more) of its candidates."""
    groups = request_groups(examples)
    return [rows[: (1, 3, len(rows))[i % 3]] for i, rows in enumerate(groups)]


def offline_scores(world, groups):
    rows = np.concatenate(groups)
    return world["model"](collate_lifelong(world["examples"], world["sequences"], rows))  # [sum N_r, H]


def test_dedup_scores_equal_the_replicated_offline_forward(world):
    groups = ragged_groups(world["examples"])
    requests = requests_from_rows(world, groups)
    sizes = [r.num_candidates for r in requests]
    tokens = [r.sequence.num_tokens for r in requests]
    assert 1 in sizes and max(sizes) >= 16 and 0 in tokens  # ragged counts, an empty sequence
    windows = RankRequestBatch.build(requests, world["spec"], world["log"].items).windows(SMALL)
    assert np.any((windows.lifelong_len > 0) & (windows.lifelong_len < SMALL.lifelong_k)) \
        or np.any((windows.impression_len > 0) & (windows.impression_len < SMALL.impression_k))  # K > S
    scores = rank_requests(world["model"], requests, world["log"].items, lifelong=SMALL)
    assert [s.shape for s in scores] == [(n, len(world["model"].heads)) for n in sizes]
    with torch.no_grad():
        expected = offline_scores(world, groups)
    torch.testing.assert_close(torch.cat(scores), expected, rtol=1e-5, atol=1e-5)


def test_scores_read_the_sequence(world):
    """The same request with its sequence emptied scores differently (the sequence is used)."""
    groups = [rows for rows in request_groups(world["examples"])]
    request = max(requests_from_rows(world, groups[:8]), key=lambda r: r.sequence.num_tokens)
    empty = RankRequest(request.user_id, request.request_time, UserSequence.empty(world["spec"].content_dim, 0.65),
                        request.candidates, request.surface, request.context, request.history)
    full, = rank_requests(world["model"], [request], world["log"].items, lifelong=SMALL)
    none, = rank_requests(world["model"], [empty], world["log"].items, lifelong=SMALL)
    assert (full - none).abs().max() > 1e-3


def test_rank_requests_is_deterministic_and_arena_reuse_keeps_results(world):
    groups = ragged_groups(world["examples"])
    big, small = requests_from_rows(world, groups[:12]), requests_from_rows(world, groups[12:14])
    arena = HostArena(world["spec"], max_requests=16, max_candidates=256, max_tokens=4096)
    items = world["log"].items
    first = rank_requests(world["model"], small, items, lifelong=SMALL, arena=arena)
    rank_requests(world["model"], big, items, lifelong=SMALL, arena=arena)  # fills more of the buffer
    again = rank_requests(world["model"], small, items, lifelong=SMALL, arena=arena)
    fresh = rank_requests(world["model"], small, items, lifelong=SMALL)
    for a, b, c in zip(first, again, fresh):
        assert torch.equal(a, b) and torch.equal(a, c)  # a one-off arena pads to the same bucket


def test_model_and_config_are_checked(world):
    requests = requests_from_rows(world, request_groups(world["examples"])[:1])
    items = world["log"].items
    with pytest.raises(ConfigError, match="eval"):
        rank_requests(world["model"].train(), requests, items, lifelong=SMALL)
    world["model"].eval()
    with pytest.raises(ConfigError, match="position"):
        rank_requests(world["model"], requests, items)  # the default 192-token split, a 42-token encoder


def test_cuda_pinned_arena_and_graphs_replay_the_eager_scores(world):
    """GPU only (skips on a CPU machine): pinned host buffer, one async copy, CUDA graphs per bucket."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from recsys.ranking.graphs import DenseStageGraphs

    model = copy.deepcopy(world["model"]).to("cuda").eval()
    model.sequence_arch.encoder.config.inference_kernel = "pytorch"  # float32 layers: the offline scores' rounding
    groups = ragged_groups(world["examples"])
    requests, items = requests_from_rows(world, groups), world["log"].items
    arena = HostArena(world["spec"], 64, 2048, 1 << 14, device="cuda")
    assert arena.host.is_pinned()
    graphs = DenseStageGraphs(model)
    eager = rank_requests(model, requests, items, lifelong=SMALL, arena=arena)
    graphed = rank_requests(model, requests, items, lifelong=SMALL, arena=arena, graphs=graphs)
    again = rank_requests(model, requests, items, lifelong=SMALL, arena=arena, graphs=graphs)
    assert len(graphs) == 1
    for a, b, c in zip(eager, graphed, again):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
        assert torch.equal(b, c)
    with torch.no_grad():
        expected = offline_scores(world, groups)
    torch.testing.assert_close(torch.cat(eager).cpu(), expected, rtol=1e-4, atol=1e-4)

    # SKUT (the encoder in one Triton kernel, bfloat16 matmuls) inside the captured graphs: the same
    # scores up to bfloat16 rounding (a wrong row or token would move them by O(1)), replayed exactly.
    model.sequence_arch.encoder.config.inference_kernel = "triton"
    fused_graphs = DenseStageGraphs(model)
    fused = rank_requests(model, requests, items, lifelong=SMALL, arena=arena, graphs=fused_graphs)
    fused_again = rank_requests(model, requests, items, lifelong=SMALL, arena=arena, graphs=fused_graphs)
    for a, b, c in zip(eager, fused, fused_again):
        torch.testing.assert_close(b, a, rtol=0, atol=5e-2)
        assert torch.equal(b, c)
