"""TorchRec's TrainPipelineSparseDist in the ranking recipe: on CPU it trains exactly as the plain
loop (same loss at every step, same weights and metrics), and a pipelined run killed while batches
were in flight resumes to the same end."""

import json

import pytest
import torch
from torchrec import KeyedJaggedTensor

from recsys.errors import ConfigError
from recsys.train.pipeline import PlainStep, SparseDistStep, build_train_step, fx_trace_error

from tests.recsys.distributed.toy_sharded import ToyRanker
from tests.recsys.train.test_ranking_recipe import Killed, tiny_config, train_to_end


FAST = ["train.batch_size=512", "train.log_every=1"]  # 12 steps per epoch
PIPELINED = [*FAST, "train.pipeline=sparse_dist", "train.checkpoint_every=3"]


def losses(run_dir) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train/loss"]) for r in records if "train/loss" in r]


@pytest.fixture(scope="module")
def pipelined_run(tmp_path_factory):
    """A pipelined 2-epoch run with a checkpoint every 3 steps: (run dir, weights, valid metrics, steps)."""
    run_dir = tmp_path_factory.mktemp("pipelined")
    return (run_dir, *train_to_end(tiny_config(run_dir, *PIPELINED)))


def test_pipelined_run_equals_the_plain_loop(tmp_path, pipelined_run):
    run_dir, weights, metrics, steps = pipelined_run
    plain_weights, plain_metrics, plain_steps = train_to_end(tiny_config(tmp_path, *FAST, "train.pipeline=none"))
    assert steps == plain_steps and len(losses(run_dir)) == steps
    assert losses(run_dir) == losses(tmp_path)
    for key in plain_weights:
        torch.testing.assert_close(weights[key], plain_weights[key], rtol=0, atol=0, msg=key)
    assert metrics == plain_metrics


def test_pipelined_run_killed_with_batches_in_flight_resumes_exactly(tmp_path, pipelined_run):
    _, weights, metrics, steps = pipelined_run
    cfg = tiny_config(tmp_path, *PIPELINED)
    with pytest.raises(Killed):
        train_to_end(cfg, kill_at=8)  # the last checkpoint, step 6, had two batches read ahead
    resumed_weights, resumed_metrics, resumed_steps = train_to_end(cfg, resume=True)
    assert resumed_steps == steps
    for key in weights:
        torch.testing.assert_close(resumed_weights[key], weights[key], rtol=0, atol=0, msg=key)
    assert resumed_metrics == metrics


class BranchyRanker(ToyRanker):
    """ToyRanker with Python control flow on its input: torch.fx cannot trace it."""

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        if features.values().numel() == 0:
            raise ValueError("empty batch")
        return super().forward(features)


def test_build_train_step_picks_the_step_and_refuses_what_cannot_be_pipelined():
    cpu = torch.device("cpu")
    traceable, branchy = ToyRanker(cpu), BranchyRanker(cpu)
    optimizer = torch.optim.SGD(traceable.parameters(), lr=0.1)

    step, note = build_train_step("auto", traceable, optimizer, cpu)
    assert isinstance(step, PlainStep) and "auto on CPU" in note
    step, _ = build_train_step("sparse_dist", traceable, optimizer, cpu)
    assert isinstance(step, SparseDistStep) and step.in_flight == 0
    assert fx_trace_error(traceable) is None

    assert "TraceError" in fx_trace_error(branchy)
    with pytest.raises(ConfigError, match="tracing failed: TraceError.*set train.pipeline=none"):
        build_train_step("sparse_dist", branchy, optimizer, cpu)
    step, note = build_train_step("auto", branchy, optimizer, torch.device("cuda"))  # no CUDA is touched
    assert isinstance(step, PlainStep) and "does not trace" in note
    with pytest.raises(ConfigError, match="train.pipeline must be one of"):
        build_train_step("fast", traceable, optimizer, cpu)
