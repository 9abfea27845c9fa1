import json

import pytest
import torch

from recsys.errors import ConfigError
from recsys.train.run_log import RunLog


def test_rank_zero_writes_jsonl_and_tensorboard(tmp_path):
    with RunLog(tmp_path, rank=0) as log:
        log.log(step=1, values={"train/loss": 0.5, "train/auc": torch.tensor(0.75)})
        log.log(step=2, values={"train/loss": 0.25})
        # flushed at each write: readable before close
        assert len(log.metrics_path.read_text().splitlines()) == 2
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["train/loss"] == 0.5 and records[0]["train/auc"] == 0.75
    assert records[0]["time"] <= records[1]["time"]
    events = list(tmp_path.glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(tmp_path))
    accumulator.Reload()
    assert [(e.step, e.value) for e in accumulator.Scalars("train/loss")] == [(1, 0.5), (2, 0.25)]


def test_appends_across_reopen(tmp_path):
    for step in (1, 2):
        with RunLog(tmp_path, rank=0, tensorboard=False) as log:
            log.log(step=step, values={"loss": float(step)})
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


def test_other_ranks_write_nothing(tmp_path):
    log = RunLog(tmp_path / "run", rank=1)
    log.log(step=1, values={"loss": 1.0})
    log.close()
    assert not (tmp_path / "run").exists()


def test_bad_values_are_named(tmp_path):
    with RunLog(tmp_path, rank=0, tensorboard=False) as log:
        with pytest.raises(ConfigError, match="loss"):
            log.log(step=1, values={"loss": "high"})
        with pytest.raises(ConfigError, match="reserved"):
            log.log(step=1, values={"step": 3.0})


def test_truncate_after_drops_later_steps_and_a_cut_line(tmp_path):
    with RunLog(tmp_path, rank=0, tensorboard=False) as log:
        for step in (1, 2, 3, 4):
            log.log(step, {"train/loss": float(step)})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "train/lo')  # killed mid-line
    log = RunLog(tmp_path, rank=0, tensorboard=False)
    log.truncate_after(2)
    log.log(3, {"train/loss": 30.0})
    log.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["train/loss"]) for r in records] == [(1, 1.0), (2, 2.0), (3, 30.0)]
