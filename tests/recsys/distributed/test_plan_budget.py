import pytest

from recsys.distributed.plan_budget import MAX_BATCH, MemoryBudget, does_not_fit_message, largest_batch
from recsys.distributed.topology import GB


def test_largest_batch_is_the_last_that_fits():
    assert largest_batch(lambda b: 10 + 3 * b, usable=100) == 30
    assert largest_batch(lambda b: 10 + 3 * b, usable=5) == 0
    assert largest_batch(lambda b: 0, usable=1) == MAX_BATCH


def test_budget_and_message_name_every_part_and_knob():
    budget = MemoryBudget(capacity=80 * GB, headroom=0.25, dense=1 * GB, activations=100 * GB, inputs=2 * GB, tables=5 * GB)
    assert budget.usable == 60 * GB and budget.used == 108 * GB and not budget.fits
    message = does_not_fit_message("hstu", 64, "HBM", 4096, budget, {"encoder": 90 * GB, "loss": 10 * GB}, 48,
                                   1024, 54.0, ["shorter sequences: ..."])
    assert message.startswith("hstu does not fit 64 ranks at train.batch_size=4096 per rank: it needs 108.0 GB of HBM")
    for text in ("60.0 GB are usable", "activations kept for backward 100.0 GB", "encoder 90.0 GB",
                 "embedding tables at least 5.00 GB", "train.batch_size=48", "shorter sequences"):
        assert text in message
    assert MemoryBudget(80 * GB, 0.0, 1, 1, 1).fits
    assert budget.as_gb()["used"] == pytest.approx(108)
