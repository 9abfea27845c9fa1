"""A run folder as ``recsys train`` writes it (config.json, feature_spec.json, a DCP checkpoint), for a given model.

The UIC's command-line tests load models through ``recsys.load``; writing the folder with the
recipe's own writers is much faster than training one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from recsys.atomic_files import write_json_atomic
from recsys.config import to_dict
from recsys.data.features import FEATURE_SPEC_FILE, save_feature_spec
from recsys.train.checkpoint import CheckpointManager
from recsys.data.synthetic import SyntheticConfig
from recsys.train.config import DataConfig, TrainConfig
from tests.recsys.uic.conftest import SPEC, TINY, tiny_model


class _Task(torch.nn.Module):
    """What the ranking recipe checkpoints: the model under the ``model.`` prefix."""

    def __init__(self, model):
        super().__init__()
        self.model = model


class _NoOptimizer:
    def state_dict(self) -> dict:
        return {}


def write_run(path: Path, seed: int = 0, synthetic: dict | None = None) -> Path:
    """A run folder of :func:`tiny_model` (seed ``seed``) whose config's data section is a small synthetic world."""
    model = tiny_model(seed)
    world = SyntheticConfig(**(synthetic or {}))
    cfg = TrainConfig(model={"name": "mimn", **TINY}, data=DataConfig(synthetic=world, max_sequence=SPEC.max_sequence),
                      output_dir=str(path))
    write_json_atomic(path / "config.json", to_dict(cfg))
    save_feature_spec(SPEC, path / FEATURE_SPEC_FILE)
    CheckpointManager(path / "checkpoints").save(0, _Task(model), _NoOptimizer(), extra={})
    return path
