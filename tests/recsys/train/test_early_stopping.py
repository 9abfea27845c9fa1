import math

import pytest

from recsys.errors import CheckpointError, ConfigError, DataError
from recsys.train.early_stopping import EarlyStopping


def run(stopper: EarlyStopping, valid_values: list[float], test_values: list[float]) -> int:
    """Drives ``stopper`` like the recipe does; returns the epoch training stopped after."""
    for epoch, (valid, test) in enumerate(zip(valid_values, test_values)):
        stop = stopper.update(epoch, {"ndcg@10": valid, "hr@10": 2 * valid})
        if stopper.improved:
            stopper.record_test(epoch, {"ndcg@10": test})
        if stop:
            return epoch
    return len(valid_values) - 1


def test_stops_after_patience_and_keeps_the_best_validation_epoch():
    stopper = EarlyStopping(metric="ndcg@10", mode="max", patience=2)
    # Test peaks at epoch 3, where validation does not improve: it must not be selected.
    stopped = run(stopper, [0.20, 0.31, 0.29, 0.30, 0.25, 0.50], [0.1, 0.2, 0.3, 0.9, 0.1, 0.1])
    assert stopped == 3
    assert stopper.best_epoch == 1
    assert stopper.best_value == 0.31
    assert stopper.best_metrics == {"ndcg@10": 0.31, "hr@10": 0.62}
    assert stopper.best_test_metrics == {"ndcg@10": 0.2}


def test_min_mode_min_delta_and_nan():
    stopper = EarlyStopping(metric="loss", mode="min", patience=3, min_delta=0.01)
    assert not stopper.update(0, {"loss": 1.0}) and stopper.improved
    assert not stopper.update(1, {"loss": 0.995}) and not stopper.improved  # within min_delta
    assert not stopper.update(2, {"loss": math.nan}) and not stopper.improved
    assert not stopper.update(3, {"loss": 0.5}) and stopper.improved
    assert stopper.best_epoch == 3 and stopper.epochs_without_improvement == 0


def test_test_metrics_only_for_the_best_epoch():
    stopper = EarlyStopping(patience=5)
    stopper.update(0, {"ndcg@10": 0.3})
    stopper.record_test(0, {"ndcg@10": 0.25})
    stopper.update(1, {"ndcg@10": 0.1})
    with pytest.raises(DataError, match="best validation epoch is 0"):
        stopper.record_test(1, {"ndcg@10": 0.9})
    assert stopper.best_test_metrics == {"ndcg@10": 0.25}
    stopper.update(2, {"ndcg@10": 0.4})
    assert stopper.best_test_metrics is None  # until test of the new best epoch is recorded


def test_resume_from_state_dict_continues_identically():
    valid = [0.1, 0.3, 0.2, 0.25, 0.2, 0.1]
    whole = EarlyStopping(patience=3)
    whole_stop = run(whole, valid, valid)
    first = EarlyStopping(patience=3)
    run(first, valid[:2], valid[:2])
    resumed = EarlyStopping(patience=3)
    resumed.load_state_dict(first.state_dict())
    stops = [resumed.update(epoch, {"ndcg@10": valid[epoch]}) for epoch in range(2, whole_stop + 1)]
    assert stops == [False] * (len(stops) - 1) + [True]
    assert resumed.state_dict() == whole.state_dict()
    with pytest.raises(CheckpointError, match="metric"):
        EarlyStopping(metric="hr@10").load_state_dict(first.state_dict())


def test_bad_settings_and_inputs():
    with pytest.raises(ConfigError, match="mode"):
        EarlyStopping(mode="maximise")
    with pytest.raises(ConfigError, match="patience"):
        EarlyStopping(patience=0)
    stopper = EarlyStopping(metric="ndcg@10")
    with pytest.raises(ConfigError, match="hr@10"):
        stopper.update(0, {"hr@10": 0.2})
    stopper.update(0, {"ndcg@10": 0.2})
    with pytest.raises(DataError, match="in order"):
        stopper.update(0, {"ndcg@10": 0.3})
