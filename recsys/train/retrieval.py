"""Training recipe for the zoo's next-item retrieval models (HSTU, SASRec): one readable loop.

``RetrievalRecipe(cfg)`` -> ``setup(resume)`` -> ``train()`` -> ``cleanup()``. The protocol is the
literature's: leave-one-out with a validation target; every ``eval_every`` epochs the validation
targets are ranked against ALL items less the seen items ``eval.exclude_seen`` removes (default
``last_n``, the reference's: the history the model reads; a target among them is a miss), giving
HR@K, NDCG@K and MRR; the protocol is printed with every result and stored in ``results.json`` and
``metrics.jsonl``. When validation improves, the test split is evaluated and kept; the run reports test at the best
validation epoch and never selects on test. ``patience`` stops the run early.

As in the ranking recipe, the model is built on the meta device and wrapped in
DistributedModelParallel (item table sharded by the planner, FBGEMM's fused optimizer), and every
epoch ends with a checkpoint that ``resume=True`` continues from.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from recsys.config import to_dict
from recsys.data.features import FEATURE_SPEC_FILE, FeatureSpec, save_feature_spec
from recsys.data.loader import position_for_sampler
from recsys.data.pipeline import load_events
from recsys.data.sequences import ITEM_KEY, SequenceExamples, make_sequence_dataloader
from recsys.data.splits import leave_one_out
from recsys.distributed.dense_reservation import training_reservation
from recsys.distributed.optimizers import build_optimizer
from recsys.atomic_files import write_json_atomic
from recsys.distributed.plan_io import save_plan
from recsys.distributed.process_group import DistContext, init_distributed, teardown
from recsys.distributed.sharding import shard_model
from recsys.errors import ConfigError
from recsys.metrics.retrieval import RetrievalMetrics, describe_protocol, excluded_items, rank_of_targets
from recsys.models import get_model, model_config
from recsys.train.checkpoint import CheckpointManager
from recsys.train.config import TrainConfig
from recsys.train.early_stopping import EarlyStopping
from recsys.train.guards import check_batch_memory, check_splits_not_empty
from recsys.train.reproducibility import capture_rng_state, restore_rng_state, seed_everything
from recsys.train.run_log import RunLog
from recsys.train.step_options import StepOptions


class RetrievalRecipe:
    """Trains a sequential retrieval model and reports test metrics at the best validation epoch."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.output_dir = Path(cfg.output_dir)
        self.step = 0
        self.epoch = 0

    # ------------------------------------------------------------------ setup
    def setup(self, resume: bool = False, write_run_files: bool = True) -> None:
        cfg = self.cfg
        self._build_data()  # before the process group: a config or data error leaves nothing to tear down
        self._check_memory()  # a step that cannot fit stops here, before the process group and the model
        self.ctx: DistContext = init_distributed()
        seed_everything(cfg.train.seed)
        torch.set_float32_matmul_precision(cfg.train.matmul_precision)
        model = get_model(cfg.model_name, feature_spec=self.spec, device=torch.device("meta"), **cfg.model_overrides)
        reservation = training_reservation(model, cfg, self.spec, self.ctx.device.type, log=self.log)
        self.model = shard_model(
            model, self.ctx, cfg.sharding, cfg.optim.sparse, batch_size=cfg.train.batch_size, storage_reservation=reservation
        )
        self.optimizer = build_optimizer(self.model, cfg.optim.dense)
        self.loader = make_sequence_dataloader(
            self.train_rows, cfg.train.batch_size, shuffle=True, seed=cfg.train.seed,
            num_workers=cfg.data.num_workers, drop_last=self.ctx.world_size > 1,
            rank=self.ctx.rank, world_size=self.ctx.world_size,
        )
        self.step_options = StepOptions.setup(
            cfg, self.model, self.optimizer, self.ctx.device, total_steps=len(self.loader) * cfg.train.epochs
        )
        self.stopper = EarlyStopping(metric=cfg.train.select_metric, patience=max(cfg.train.patience, 1))
        self.checkpoints = CheckpointManager(
            self.output_dir / "checkpoints", backend=cfg.train.checkpoint_backend, keep_last=cfg.train.keep_checkpoints
        )
        self.run_log = RunLog(self.output_dir, rank=self.ctx.rank)
        if self.ctx.is_main:
            if write_run_files:
                self.output_dir.mkdir(parents=True, exist_ok=True)
                write_json_atomic(self.output_dir / "config.json", to_dict(cfg))
                save_feature_spec(self.spec, self.output_dir / FEATURE_SPEC_FILE)
                save_plan(self.model.plan, self.output_dir / "plan.json", self.ctx.world_size, self.ctx.device.type)
            print(self.summary())
            print(self.step_options.describe())
        if resume:
            self._resume()

    def _build_data(self) -> None:
        cfg = self.cfg
        max_len = cfg.data.max_sequence
        model_max = model_config(cfg.model_name, **cfg.model_overrides).max_seq_len
        if max_len < 2 or max_len > model_max:
            raise ConfigError(
                f"data.max_sequence={max_len} must be in 2..{model_max} (the model's max_seq_len); "
                f"set data.max_sequence={model_max}"
            )
        self.log = load_events(cfg.data)
        self.spec = FeatureSpec.from_log(self.log, max_sequence=max_len)
        split = leave_one_out(self.log)
        self.train_rows = SequenceExamples.build(
            self.log, split, "train", max_len, stochastic_length_alpha=cfg.data.stochastic_length_alpha, seed=cfg.train.seed
        )
        self.valid_rows = SequenceExamples.build(self.log, split, "valid", max_len)
        self.test_rows = SequenceExamples.build(self.log, split, "test", max_len)
        check_splits_not_empty(
            {"train": len(self.train_rows), "valid": len(self.valid_rows), "test": len(self.test_rows)},
            "Leave-one-out needs users with at least 3 engaged events: use more data.",
        )

    def _check_memory(self) -> None:
        """Refuses a ``train.batch_size`` / ``data.max_sequence`` whose training step would not fit
        in this rank's memory (:func:`~recsys.train.guards.check_batch_memory`)."""
        cfg = self.cfg
        model = get_model(cfg.model_name, feature_spec=self.spec, device=torch.device("meta"), **cfg.model_overrides)
        check_batch_memory(model, cfg, self.spec, train_rows=len(self.train_rows), log=self.log)

    def summary(self) -> str:
        params = sum(p.numel() for p in self.model.parameters())
        return "\n".join([
            f"data: {self.cfg.data.source}, {len(self.log):,} events, {self.log.num_users:,} users, "
            f"{self.log.num_items:,} items; leave-one-out",
            f"rows: train {len(self.train_rows):,}, valid {len(self.valid_rows):,}, test {len(self.test_rows):,} "
            f"(ranked against all {self.log.num_items:,} items; {self.protocol})",
            f"model: {self.cfg.model_name}, {params:,} parameters on this rank; world size {self.ctx.world_size} ({self.ctx.backend})",
            f"output: {self.output_dir}",
        ])

    @property
    def protocol(self) -> str:
        """The evaluation protocol in words, printed and stored with every result."""
        return describe_protocol(self.cfg.eval.exclude_seen, self.cfg.data.max_sequence)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> None:
        extra = {
            "step": self.step,
            "epoch": self.epoch,
            "loader": self.loader.state_dict(),
            "early_stopping": self.stopper.state_dict(),
            "rng": capture_rng_state(),
            **self.step_options.state_dict(),
        }
        self.checkpoints.save(self.step, self.model, self.optimizer, extra=extra)

    def _resume(self) -> None:
        step = self.checkpoints.resume_step()  # `latest`, else the newest step that verifies
        if step is None:
            return
        state = self.checkpoints.load(self.model, self.optimizer, step=step)
        self.step, self.epoch = state["step"], state["epoch"]
        self.loader.load_state_dict(position_for_sampler(state["loader"], self.loader.sampler))
        self.stopper.load_state_dict(state["early_stopping"])
        restore_rng_state(state["rng"])
        self.step_options.load_state_dict(state, self.step)
        self.run_log.truncate_after(self.step)

    # ------------------------------------------------------------------ train
    def train(self) -> dict:
        """Runs the remaining epochs (or until ``patience`` runs out); returns the final report."""
        cfg = self.cfg.train
        bar = tqdm(total=len(self.loader) * cfg.epochs, initial=self.step, disable=not (cfg.progress and self.ctx.is_main),
                   desc="train", dynamic_ncols=True)
        started = time.time()
        while self.epoch < cfg.epochs and not (cfg.patience and self.stopper.should_stop):
            self.model.train()
            self.loader.set_epoch(self.epoch)
            epoch_started, sequences = time.time(), 0
            for batch in self.loader:
                loss = self.train_step(batch.to(self.ctx.device))
                sequences += batch.batch_size
                bar.update(1)
                if self.step % cfg.log_every == 0:
                    value = float(loss)  # waits for the device: only when logging
                    bar.set_postfix(loss=f"{value:.4f}")
                    self.run_log.log(self.step, {"train/loss": value, "train/epoch": self.epoch})
            self.epoch += 1
            train_seconds = time.time() - epoch_started
            self.run_log.log(self.step, {"train/epoch_seconds": train_seconds,
                                         "train/sequences_per_second": sequences * self.ctx.world_size / train_seconds})
            if self.epoch % cfg.eval_every == 0 or self.epoch == cfg.epochs:
                self._validate(train_seconds)
            self.save_checkpoint()
        bar.close()
        return self.report(time.time() - started)

    def train_step(self, batch) -> torch.Tensor:
        """One optimizer step on ``batch`` (a SequenceBatch on this rank's device): its loss, a
        detached scalar tensor (reading it waits for the device; the loop does so only to log).
        ``train()`` calls it once per batch; ``benchmarks/train_throughput.py`` times it."""
        with self.step_options.autocast():
            loss = self.model(batch)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.step_options.after_step()  # the lr schedule
        self.step += 1
        return loss.detach()

    def _validate(self, train_seconds: float) -> None:
        eval_started = time.time()
        valid = self.evaluate("valid")
        self.stopper.update(self.epoch, valid)
        self.run_log.log(self.step, {f"valid/{k}": v for k, v in valid.items()})
        if self.stopper.improved:
            test = self.evaluate("test")
            self.stopper.record_test(self.epoch, test)
            self.run_log.log(self.step, {f"best/test/{k}": v for k, v in test.items()} | {"best/epoch": self.epoch})
        if self.ctx.is_main:
            best = self.stopper.best_epoch
            print(f"epoch {self.epoch}: valid {self.cfg.train.select_metric} {valid[self.cfg.train.select_metric]:.4f}"
                  f" (best {self.stopper.best_value:.4f} at epoch {best}) [train {train_seconds:.1f} s, "
                  f"{len(self.train_rows) / train_seconds:,.0f} sequences/s; evaluation {time.time() - eval_started:.1f} s]"
                  f" [{self.protocol}]")

    # ------------------------------------------------------------------ evaluate
    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        """Full-ranking metrics of ``split`` ("valid" or "test") over all ranks' rows."""
        rows = {"valid": self.valid_rows, "test": self.test_rows}[split]
        module = self.model.module
        was_training = module.training
        module.eval()
        items = module.item_vectors()  # [I, D]
        metrics = RetrievalMetrics()
        loader = make_sequence_dataloader(
            rows, self.cfg.train.eval_batch_size, shuffle=False, seed=0, num_workers=self.cfg.data.num_workers,
            rank=self.ctx.rank, world_size=self.ctx.world_size,
        )
        for batch in loader:
            batch = batch.to(self.ctx.device)
            users = module.user_vectors(batch)  # [B, D]
            exclude = excluded_items(self.cfg.eval.exclude_seen, batch.item_ids[ITEM_KEY], batch.seen_items)
            metrics.update(rank_of_targets(users, items, batch.target_item, exclude=exclude))
        module.train(was_training)
        if self.ctx.world_size > 1:
            states = [None] * self.ctx.world_size
            dist.all_gather_object(states, metrics.state())
            metrics = RetrievalMetrics.from_states(metrics.ks_hr, metrics.ks_ndcg, states)
        return metrics.compute()

    def report(self, seconds: float) -> dict:
        stopper = self.stopper
        return {
            "model": self.cfg.model_name,
            "protocol": self.protocol,
            "exclude_seen": self.cfg.eval.exclude_seen,
            "best_epoch": stopper.best_epoch,
            "valid": stopper.best_metrics,
            "test": stopper.best_test_metrics,
            "epochs_run": self.epoch,
            "train_seconds": seconds,
        }

    # ------------------------------------------------------------------ cleanup
    def cleanup(self) -> None:
        self.run_log.close()
        del self.model, self.optimizer
        gc.collect()
        teardown(self.ctx)


def format_retrieval_report(report: dict, note: str | None = None) -> str:
    """The valid / test table of a report; ``note`` replaces the header's "(best validation epoch ...)"."""
    names = list(report["test"] or report["valid"] or {})
    note = note or f"best validation epoch {report['best_epoch']}, {report['epochs_run']} epochs run"
    lines = [f"{'metric':<10}{'valid':>10}{'test':>10}   ({note})"]
    for name in names:
        lines.append(f"{name:<10}{report['valid'][name]:>10.4f}{report['test'][name]:>10.4f}")
    lines.append(f"protocol: full ranking, {report['protocol']}")
    return "\n".join(lines)


def run_retrieval_training(cfg: TrainConfig, resume: bool = False) -> dict:
    """``recsys train`` for retrieval models: trains, then prints and saves valid/test metrics."""
    recipe = RetrievalRecipe(cfg)
    recipe.setup(resume=resume)
    try:
        report = recipe.train()
        if recipe.ctx.is_main:
            print("\n" + format_retrieval_report(report))
            write_json_atomic(recipe.output_dir / "results.json", report)
        return report
    finally:
        recipe.cleanup()


def run_retrieval_evaluation(cfg: TrainConfig, checkpoint_dir: str | None = None, step: int | None = None) -> dict:
    """``recsys eval`` for retrieval models: loads a checkpoint (default: the latest), prints the
    valid / test table of training for it and returns the report."""
    if checkpoint_dir is not None:
        cfg.output_dir = str(Path(checkpoint_dir).parent)
    recipe = RetrievalRecipe(cfg)
    recipe.setup(resume=False, write_run_files=False)
    try:
        state = recipe.checkpoints.load(recipe.model, recipe.optimizer, step=step)
        report = {
            "model": cfg.model_name, "step": state["step"], "epoch": state["epoch"],
            "valid": recipe.evaluate("valid"), "test": recipe.evaluate("test"),
            "protocol": recipe.protocol, "exclude_seen": cfg.eval.exclude_seen,
        }
        if recipe.ctx.is_main:
            print("\n" + format_retrieval_report(report, note=f"checkpoint of step {state['step']}, epoch {state['epoch']}"))
        return report
    finally:
        recipe.cleanup()
