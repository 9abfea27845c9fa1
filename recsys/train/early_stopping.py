"""Early stopping and model selection on the validation split.

After each epoch the recipe evaluates validation and calls :meth:`EarlyStopping.update`. The epoch
with the best validation metric is the selected model; the run stops once ``patience`` epochs in a
row have not improved on it. Test is never used to select: the recipe evaluates test only at an
epoch where validation improved and records it with :meth:`EarlyStopping.record_test`, which
accepts test metrics of the best validation epoch only. The test numbers reported at the end are
therefore those of the best validation epoch::

    epoch   valid ndcg@10   improved   test evaluated   reported test
    0       0.020           yes        yes              epoch 0's
    1       0.031           yes        yes              epoch 1's
    2       0.029           no         no               epoch 1's
    3       0.030           no         no               epoch 1's  -> stop with patience=2

Example::

    stopper = EarlyStopping(metric="ndcg@10", mode="max", patience=10)
    for epoch in range(num_epochs):
        ...
        stop = stopper.update(epoch, evaluate(valid))
        if stopper.improved:
            stopper.record_test(epoch, evaluate(test))
        if stop:
            break
    stopper.best_epoch, stopper.best_metrics, stopper.best_test_metrics
"""

from __future__ import annotations

import math

from recsys.errors import CheckpointError, ConfigError, DataError

MODES = ("max", "min")


class EarlyStopping:
    """Tracks the best validation epoch and says when to stop.

    Args:
        metric: the validation metric selecting the model (a key of the metric dicts).
        mode: "max" (higher is better) or "min".
        patience: epochs in a row without improvement after which ``update`` says stop; >= 1.
        min_delta: an improvement must beat the best value by more than this (>= 0).
    """

    def __init__(self, metric: str = "ndcg@10", mode: str = "max", patience: int = 10, min_delta: float = 0.0):
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
        if int(patience) != patience or patience < 1:
            raise ConfigError(f"patience must be a positive integer, got {patience}")
        if not min_delta >= 0:
            raise ConfigError(f"min_delta must be >= 0, got {min_delta}")
        self.metric = metric
        self.mode = mode
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.best_epoch: int | None = None
        self.best_value: float | None = None
        self.best_metrics: dict[str, float] | None = None
        self.best_test_metrics: dict[str, float] | None = None
        self.epochs_without_improvement = 0
        self.improved = False  # whether the last update improved the best value
        self.last_epoch: int | None = None

    def update(self, epoch: int, valid_metrics: dict[str, float]) -> bool:
        """Records the validation metrics of ``epoch``; returns True when training should stop.

        Args:
            epoch: the epoch just evaluated (increasing from call to call).
            valid_metrics: metric name -> value; must hold ``metric``. A NaN value never improves.
        """
        if self.metric not in valid_metrics:
            raise ConfigError(f"early stopping metric {self.metric!r} is not among the validation metrics "
                              f"{sorted(valid_metrics)}; set the metric to one of them")
        if self.last_epoch is not None and epoch <= self.last_epoch:
            raise DataError(f"epoch {epoch} comes after epoch {self.last_epoch}; update once per epoch, in order")
        self.last_epoch = int(epoch)
        value = float(valid_metrics[self.metric])
        self.improved = self._better(value)
        if self.improved:
            self.best_epoch = int(epoch)
            self.best_value = value
            self.best_metrics = {k: float(v) for k, v in valid_metrics.items()}
            self.best_test_metrics = None  # the test metrics of the previous best no longer apply
            self.epochs_without_improvement = 0
        else:
            self.epochs_without_improvement += 1
        return self.should_stop

    @property
    def should_stop(self) -> bool:
        return self.epochs_without_improvement >= self.patience

    def _better(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best_value is None:
            return True
        if self.mode == "max":
            return value > self.best_value + self.min_delta
        return value < self.best_value - self.min_delta

    def record_test(self, epoch: int, test_metrics: dict[str, float]) -> None:
        """Keeps the test metrics of the best validation epoch; any other epoch is refused, so test
        numbers can only ever be reported for the model validation selected."""
        if epoch != self.best_epoch:
            raise DataError(f"test metrics of epoch {epoch} given, but the best validation epoch is "
                            f"{self.best_epoch}; evaluate test only when update() reports an improvement")
        self.best_test_metrics = {k: float(v) for k, v in test_metrics.items()}

    def state_dict(self) -> dict:
        """Everything needed to continue after a restart (plain Python values)."""
        return {
            "metric": self.metric,
            "mode": self.mode,
            "best_epoch": self.best_epoch,
            "best_value": self.best_value,
            "best_metrics": self.best_metrics,
            "best_test_metrics": self.best_test_metrics,
            "epochs_without_improvement": self.epochs_without_improvement,
            "improved": self.improved,
            "last_epoch": self.last_epoch,
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("metric", "mode"):
            if state.get(key) != getattr(self, key):
                raise CheckpointError(f"early-stopping state was saved with {key}={state.get(key)!r} but this run "
                                      f"uses {getattr(self, key)!r}; resume with the same setting")
        for key in ("best_epoch", "best_value", "best_metrics", "best_test_metrics",
                    "epochs_without_improvement", "improved", "last_epoch"):
            if key not in state:
                raise CheckpointError(f"early-stopping state lacks {key!r}; "
                                      "it must come from EarlyStopping.state_dict()")
            setattr(self, key, state[key])
