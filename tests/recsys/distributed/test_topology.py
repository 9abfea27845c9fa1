"""TopologyConfig.for_host: the plan's host constants scaled to a measured host."""

import pytest

from recsys.distributed.topology import REFERENCE_RAW_LAUNCH_US, TopologyConfig
from recsys.errors import ConfigError


def test_for_host_scales_the_host_constants_by_the_bare_op_time_and_nothing_else():
    base = TopologyConfig(launch_overhead_us=8.0, step_fixed_ms=2.0)
    slower = base.for_host(2 * REFERENCE_RAW_LAUNCH_US)
    assert slower.launch_overhead_us == pytest.approx(16.0)
    assert slower.step_fixed_ms == pytest.approx(4.0)
    assert base.for_host(REFERENCE_RAW_LAUNCH_US) == base
    untouched = {k: v for k, v in vars(slower).items() if k not in ("launch_overhead_us", "step_fixed_ms")}
    assert untouched == {k: v for k, v in vars(base).items() if k not in ("launch_overhead_us", "step_fixed_ms")}


@pytest.mark.parametrize("bad", [0, -1.0, True, "9.8"])
def test_for_host_names_the_field_on_bad_input(bad):
    with pytest.raises(ConfigError, match="raw_launch_us"):
        TopologyConfig().for_host(bad)
