"""Every YAML under configs/ (recursively) loads into its typed config and starts with its command.

Cluster descriptions under configs/plan/ (no ``model`` section) are TopologyConfigs, configs/serve/
holds ServeConfigs (``recsys serve --config``); every other YAML is a TrainConfig.
"""

from pathlib import Path

import pytest

from recsys.config import load_config, load_yaml
from recsys.distributed.topology import TopologyConfig
from recsys.models import model_config
from recsys.serve.config import ServeConfig
from recsys.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def test_there_are_configs():
    assert CONFIGS, "configs/ holds no YAML"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_config_loads_and_names_its_command(path):
    first_line = path.read_text().splitlines()[0]
    relative = path.relative_to(ROOT)
    assert first_line.startswith("# recsys ") and str(relative) in first_line, (
        f"{relative} must start with the command that runs it, e.g. '# recsys train --config {relative}'"
    )
    if relative.parts[:2] == ("configs", "plan") and "model" not in load_yaml(path):
        assert load_config(TopologyConfig, path).world_size >= 1
        return
    if relative.parts[:2] == ("configs", "serve"):
        assert first_line.startswith("# recsys serve ") and " --config " in first_line
        load_config(ServeConfig, path)
        return
    cfg = load_config(TrainConfig, path)
    model_config(cfg.model_name, **cfg.model_overrides)  # the model section maps onto the model's dataclass
    assert not (cfg.data.path or "").startswith(".."), (
        f"{relative} reads data.path={cfg.data.path!r} outside the project; name a cached set "
        f"(data.path: dataset:<name>[/<file>], fetched with `recsys data fetch <name>`)"
    )
