"""Typed config of a ranking training run; the YAMLs in ``configs/`` map onto :class:`TrainConfig`.

Sections::

    model:     name + the model's own config fields (checked against the zoo's config class)
    data:      where events come from, how they are split, how rows and batches are made
    loss:      Pinnability's label weight matrix M (per-user weights: data.user_weights)
    optim:     dense optimizer (Adam, ...) and the fused optimizer of the embedding tables
    sharding:  per-table sharding constraints for the planner
    train:     epochs, batch size, seed, logging, checkpoints
    eval:      the retrieval evaluation protocol (which seen items leave the candidates)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from recsys.data.last_behavior import LastBehaviorConfig
from recsys.data.lifelong_pipeline import LifelongDataConfig
from recsys.data.synthetic import SyntheticConfig
from recsys.data.user_weights import UserWeightConfig
from recsys.distributed.optimizers import DenseOptimizerConfig, FusedOptimizerConfig
from recsys.distributed.sharding import ShardingConfig
from recsys.errors import ConfigError
from recsys.metrics.retrieval import EXCLUDE_SEEN
from recsys.train.lr_schedule import LRScheduleConfig


@dataclass
class DataConfig:
    """Events, split and rows.

    Args:
        source: "synthetic" (built-in generator), "movielens", "amazon" (S3-Rec format),
            "amazon_ratings" (an Amazon ratings-only CSV such as ``ratings_Books.csv``),
            "events" (CSV/Parquet with a column mapping) or "log" (``recsys data convert`` output).
        path: file or folder of the source (unused for synthetic), or ``dataset:<name>[/<file>]`` for a
            set of ``recsys data fetch`` in the cache folder (``recsys.data.datasets``).
        download: for MovieLens, fetch ``<name>.zip`` from GroupLens (MD5-checked) into
            ``path``'s parent when ``path`` (e.g. ``data/ml-1m``) does not hold the files yet; for
            amazon_ratings, fetch ``path`` (e.g. ``data/amzn-books/ratings_Books.csv``) from SNAP
            when absent (no published checksum: size and format are checked).
        options: keyword options of the reader (e.g. ``{like_min: 4}`` for MovieLens).
        synthetic: the generator's config when ``source == "synthetic"``.
        split: "time" (global time quantiles) or "leave_one_out" (each user's last engaged
            event is the test target, the one before it the validation target).
        valid_fraction / test_fraction: shares of time for the time split.
        negatives_per_target: sampled unseen items per row, for logs without logged negatives.
        eval_negatives_per_target: the same for validation and test rows.
        train_rows: "all" events of the training split become rows, or only "engaged" ones
            (for logs whose events are all engagements plus sampled negatives this is the same).
        max_history: most recent items per ``history_<action>`` feature (>= 0).
        stochastic_length_alpha: HSTU's stochastic length for long training sequences (alpha in
            (1, 2]); None keeps the most recent ``max_sequence`` tokens.
        max_sequence: most recent engaged events in ``sequence_features`` (the time-ordered history
            that sequence models read); 0 = no sequence features.
        num_workers: DataLoader worker processes.
        lifelong: TransAct V2's lifelong batches: S_all built once per row (cached) and used as
            the batches' sequence (:class:`~recsys.data.lifelong_pipeline.LifelongDataConfig`).
        user_weights: each user's loss weight w_u (TransAct's equation (1)), computed from the
            training events and carried by every row (:class:`~recsys.data.user_weights.UserWeightConfig`).
        protocol: "events" (rows from ``split``, ``negatives_per_target`` and ``train_rows``) or
            "last_behavior" (the MIMN paper's: each user's last behaviour is the test target, the one
            before it the validation target, earlier ones training targets, each against sampled
            unseen items; :mod:`recsys.data.last_behavior`, configured by ``last_behavior``).
        last_behavior: the rows of the last-behaviour protocol
            (:class:`~recsys.data.last_behavior.LastBehaviorConfig`).
    """

    source: Literal["synthetic", "movielens", "amazon", "amazon_ratings", "events", "log"] = "synthetic"
    path: str | None = None
    download: bool = False
    options: dict = field(default_factory=dict)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    split: Literal["time", "leave_one_out"] = "time"
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    negatives_per_target: int = 0
    eval_negatives_per_target: int = 0
    train_rows: Literal["all", "engaged"] = "all"
    max_history: int = 50
    max_sequence: int = 0
    stochastic_length_alpha: float | None = None
    num_workers: int = 0
    lifelong: LifelongDataConfig = field(default_factory=LifelongDataConfig)
    user_weights: UserWeightConfig = field(default_factory=UserWeightConfig)
    protocol: Literal["events", "last_behavior"] = "events"
    last_behavior: LastBehaviorConfig = field(default_factory=LastBehaviorConfig)

    def __post_init__(self) -> None:
        if self.protocol not in ("events", "last_behavior"):
            raise ConfigError(f"data.protocol={self.protocol!r} must be 'events' or 'last_behavior'")
        for name in ("negatives_per_target", "eval_negatives_per_target", "max_history", "max_sequence", "num_workers"):
            _check_at_least("data", name, getattr(self, name), 0)
        for name in ("valid_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"data.{name}={value} must be in [0, 1); e.g. data.{name}=0.1")
        if self.valid_fraction + self.test_fraction >= 1.0:
            raise ConfigError(
                f"data.valid_fraction + data.test_fraction = {self.valid_fraction + self.test_fraction} must be "
                "below 1 (training needs events); lower one of them"
            )


@dataclass
class LossConfig:
    """Pinnability's weighted cross-entropy.

    Args:
        label_weights: head -> {action or "none": weight}: the label weight matrix M (1 where unset).
        user_weighting: the former place of the user weights' scheme, kept for old configs: a value
            other than "uniform" sets ``data.user_weights.scheme`` (where user weights now belong:
            the data provides every row's weight, the loss only consumes it).
    """

    label_weights: dict[str, dict[str, float]] = field(default_factory=dict)
    user_weighting: Literal["uniform", "inverse_sqrt_activity"] = "uniform"


@dataclass
class OptimConfig:
    """Optimizers and their learning-rate schedule.

    Args:
        dense: optimizer of dense layers and data-parallel tables.
        sparse: FBGEMM's fused optimizer of the sharded tables.
        schedule: warmup steps, then "constant" / "linear" / "cosine" decay to ``min_lr_ratio``
            (:class:`~recsys.train.lr_schedule.LRScheduleConfig`); multiplies the lr of BOTH
            optimizers, e.g. ``optim.schedule.warmup_steps=500 optim.schedule.decay=cosine``.
    """

    dense: DenseOptimizerConfig = field(default_factory=DenseOptimizerConfig)
    sparse: FusedOptimizerConfig = field(default_factory=FusedOptimizerConfig)
    schedule: LRScheduleConfig = field(default_factory=LRScheduleConfig)


@dataclass
class TrainerConfig:
    """The loop.

    Args:
        epochs: passes over the training rows (>= 1).
        batch_size / eval_batch_size: rows per rank per batch (TorchRec's convention): a job of
            W ranks trains ``W * batch_size`` rows a step. ``recsys plan`` and the sharding planner
            plan for ``batch_size``. A job resumed on another world size keeps the batch per rank
            (so another global batch) and continues from the rows already trained.
        seed: seeds model init, shuffling and negative sampling.
        log_every: steps between JSONL/TensorBoard records (>= 1).
        checkpoint_every: steps between checkpoints (>= 0; 0 = only at the end).
        checkpoint_backend: "dcp" (torch.distributed.checkpoint, reshards) or "torchsnapshot"
            (same sharding plan only).
        keep_checkpoints: how many recent checkpoints to keep.
        progress: tqdm progress bar on rank 0.
        baseline: also score the popularity baseline on the evaluation splits.
        select_metric: validation metric that picks the best epoch (retrieval: "ndcg@10", ...);
            the test split is reported at that epoch, never selected on.
        patience: stop after this many evaluations without improvement (0 = never stop early).
        eval_every: epochs between validation evaluations.
        pipeline: ranking train step: "sparse_dist" (TorchRec's TrainPipelineSparseDist: the ids of
            the next batch travel to their ranks while this one trains), "none" (one batch at a
            time), or "auto" (sparse_dist on CUDA when the model's forward traces, none on CPU).
        matmul_precision: float32 matmuls, as ``torch.set_float32_matmul_precision``: "highest"
            (exact float32, PyTorch's default), "high" (TF32 tensor cores on GPUs that have them;
            also lets evaluation use the Triton HSTU attention kernel) or "medium" (bf16 passes).
        utility_weights: head -> weight ``w_h`` of its predicted probability in the utility
            ``sum_h w_h p_h`` that ranks each request once for the combined HIT@3 (the TransAct
            paper's HIT@3: production ranks by one weighted combination of the heads). Heads left
            unset weigh +1, a negative action (hide) -1: ``{}`` on the synthetic feed means
            ``click + save + long_view - hide``. Weights must be finite, name heads of the model
            and not all be 0 (checked at setup). The loss weights are ``loss.label_weights``.
        clip_grad_norm: clip the total gradient norm of the dense parameters (dense layers,
            data-parallel tables) to this value before each step (> 0; 0 = off). The sharded tables
            are not clipped: FBGEMM's fused optimizer updates them inside the backward.
        autocast: "bf16" runs the training forward under ``torch.autocast(dtype=torch.bfloat16)``
            (GPU and CPU; FBGEMM's lookups stay fp32, evaluation stays fp32); "none" = fp32.
        compile: ``torch.compile`` the dense submodules (those holding no embedding table) in
            place; the first steps are slow while it compiles (on CPU it needs a C compiler).
    """

    epochs: int = 1
    batch_size: int = 512
    eval_batch_size: int = 4096
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 0
    checkpoint_backend: Literal["dcp", "torchsnapshot"] = "dcp"
    keep_checkpoints: int = 3
    progress: bool = True
    baseline: bool = True
    select_metric: str = "ndcg@10"
    patience: int = 0
    eval_every: int = 1
    pipeline: Literal["auto", "sparse_dist", "none"] = "auto"
    matmul_precision: Literal["highest", "high", "medium"] = "highest"
    utility_weights: dict[str, float] = field(default_factory=dict)
    clip_grad_norm: float = 0.0
    autocast: Literal["none", "bf16"] = "none"
    compile: bool = False

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size", "log_every", "keep_checkpoints", "eval_every"):
            _check_at_least("train", name, getattr(self, name), 1)
        if not self.clip_grad_norm >= 0:  # also refuses NaN
            raise ConfigError(
                f"train.clip_grad_norm={self.clip_grad_norm} must be >= 0 (0 = no clipping); e.g. train.clip_grad_norm=1.0"
            )
        if self.autocast not in ("none", "bf16"):
            raise ConfigError(f"train.autocast={self.autocast!r} must be 'none' or 'bf16'")
        for name in ("checkpoint_every", "patience"):
            _check_at_least("train", name, getattr(self, name), 0)


@dataclass
class EvalConfig:
    """Full-ranking retrieval evaluation (:mod:`recsys.metrics.retrieval`).

    Args:
        exclude_seen: which of the user's seen items are no candidates, decided from the history
            alone (never from the target): "last_n" (default, the reference protocol: the last
            N = ``data.max_sequence`` history items, those the model reads), "all" (the whole
            history) or "none". A target among the excluded items counts as a miss.
    """

    exclude_seen: Literal["last_n", "all", "none"] = "last_n"

    def __post_init__(self) -> None:
        if self.exclude_seen not in EXCLUDE_SEEN:
            raise ConfigError(f"eval.exclude_seen={self.exclude_seen!r}; use one of {list(EXCLUDE_SEEN)}")


@dataclass
class TrainConfig:
    model: dict = field(default_factory=lambda: {"name": "dlrm"})
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    train: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = "runs/dlrm-synthetic"

    def __post_init__(self) -> None:
        legacy = self.loss.user_weighting
        if legacy != "uniform" and isinstance(self.data, DataConfig):
            if self.data.user_weights.scheme not in ("uniform", legacy):
                raise ConfigError(f"loss.user_weighting={legacy!r} and data.user_weights.scheme="
                                  f"{self.data.user_weights.scheme!r} disagree; set data.user_weights only")
            self.data.user_weights = dataclasses.replace(self.data.user_weights, scheme=legacy)

    @property
    def model_name(self) -> str:
        return str(self.model.get("name", "dlrm"))

    @property
    def model_overrides(self) -> dict:
        return {k: v for k, v in self.model.items() if k != "name"}


def _check_at_least(section: str, name: str, value: int, minimum: int) -> None:
    """Range check of an integer field: a ConfigError naming the field and the fix."""
    if value < minimum:
        raise ConfigError(f"{section}.{name}={value} must be >= {minimum}; set {section}.{name} to {minimum} or more")
