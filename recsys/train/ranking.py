"""Training recipe for the zoo's ranking models (DLRM first): one readable loop, no framework.

``RankingRecipe(cfg)`` -> ``setup(resume)`` -> ``train()`` -> ``evaluate(split)`` -> ``cleanup()``.

- The model is built on the meta device and always wrapped in ``DistributedModelParallel``
  (a world of one included), with the planner placing its tables and FBGEMM's fused optimizer
  updating them inside the backward; a dense optimizer covers everything else.
- Every ``checkpoint_every`` steps the sharded model, the optimizer states, the data position and
  the RNG states are saved; ``resume=True`` continues from the latest complete checkpoint and ends
  with the same weights and metrics as an uninterrupted run.
- Rank 0 shows a tqdm bar and writes ``metrics.jsonl`` + TensorBoard events to ``output_dir``.
"""

from __future__ import annotations

import gc
import json
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from recsys.config import to_dict
from recsys.data.loader import make_dataloader
from recsys.data.pipeline import RankingData, build_ranking_data, load_events
from recsys.distributed.optimizers import build_optimizer
from recsys.distributed.process_group import DistContext, init_distributed, teardown
from recsys.distributed.plan_io import save_plan
from recsys.distributed.sharding import plan_to_dict, shard_model
from recsys.metrics.classification import HeadMetrics
from recsys.models import get_model
from recsys.models.popularity import PopularityModel
from recsys.models.task import RankingTask
from recsys.modules.weighted_cross_entropy import WeightedCrossEntropy, user_weights
from recsys.train.checkpoint import CheckpointManager
from recsys.train.config import TrainConfig
from recsys.train.reproducibility import capture_rng_state, restore_rng_state, seed_everything
from recsys.train.run_log import RunLog


class RankingRecipe:
    """Trains and evaluates one ranking model on the shared data pipeline."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.output_dir = Path(cfg.output_dir)
        self.step = 0
        self.epoch = 0
        self._popularity: PopularityModel | None = None  # fitted on the training events at first use

    # ------------------------------------------------------------------ setup
    def setup(self, resume: bool = False, data: RankingData | None = None, write_run_files: bool = True) -> None:
        cfg = self.cfg
        self.data = data or self._build_data()  # before the process group: a data error leaves none behind
        self.ctx: DistContext = init_distributed()
        seed_everything(cfg.train.seed)
        self.heads = self._build_model()
        self.loader = self._loader(self.data.train, cfg.train.batch_size, shuffle=True)
        self.checkpoints = CheckpointManager(
            self.output_dir / "checkpoints", backend=cfg.train.checkpoint_backend, keep_last=cfg.train.keep_checkpoints
        )
        self.run_log = RunLog(self.output_dir, rank=self.ctx.rank)
        if self.ctx.is_main:
            if write_run_files:
                self._write_run_files()
            print(self.summary())
        if resume:
            self._resume()

    def _build_data(self) -> RankingData:
        cfg = self.cfg
        log = load_events(cfg.data)
        weights = user_weights(log, cfg.loss.user_weighting)
        return build_ranking_data(cfg.data, seed=cfg.train.seed, user_weights=weights, log=log)

    def _build_model(self) -> list[str]:
        cfg = self.cfg
        model = get_model(cfg.model_name, feature_spec=self.data.spec, device=torch.device("meta"), **cfg.model_overrides)
        heads = list(model.heads)
        loss = WeightedCrossEntropy(heads, self.data.spec.action_vocab, cfg.loss.label_weights)
        self.model = shard_model(RankingTask(model, loss), self.ctx, cfg.sharding, cfg.optim.sparse)
        self.optimizer = build_optimizer(self.model, cfg.optim.dense)
        return heads

    def summary(self) -> str:
        """A few lines on the data, the model and where its tables went."""
        log, spec = self.data.log, self.data.spec
        params = sum(p.numel() for p in self.model.parameters())
        tables = ", ".join(
            f"{table}: {p['sharding_type']}" for module in plan_to_dict(self.model.plan).values() for table, p in module.items()
        )
        return "\n".join([
            f"data: {self.cfg.data.source}, {len(log):,} events, {log.num_users:,} users, {log.num_items:,} items, "
            f"actions {list(spec.action_vocab)}",
            f"rows: train {len(self.data.train):,}, valid {len(self.data.valid):,}, test {len(self.data.test):,}",
            f"model: {self.cfg.model_name}, heads {self.heads}, {params:,} parameters on this rank; "
            f"world size {self.ctx.world_size} ({self.ctx.backend})",
            f"tables: {tables}",
            f"output: {self.output_dir}",
        ])

    def _write_run_files(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        _write_json(self.output_dir / "config.json", to_dict(self.cfg))
        save_plan(self.model.plan, self.output_dir / "plan.json", self.ctx.world_size, self.ctx.device.type)

    # ------------------------------------------------------------------ checkpoints
    def _trainer_state(self) -> dict:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "loader": self.loader.state_dict(),
            "rng": capture_rng_state(),
        }

    def save_checkpoint(self) -> None:
        self.checkpoints.save(self.step, self.model, self.optimizer, extra=self._trainer_state())

    def _resume(self) -> None:
        if self.checkpoints.latest_step() is None:
            if self.ctx.is_main:
                print(f"no checkpoint in {self.checkpoints.directory}; starting from scratch")
            return
        state = self.checkpoints.load(self.model, self.optimizer)
        self.step, self.epoch = state["step"], state["epoch"]
        self.loader.load_state_dict(state["loader"])
        restore_rng_state(state["rng"])
        if self.ctx.is_main:
            print(f"resumed from step {self.step} (epoch {self.epoch}, batch {state['loader']['batches_consumed']})")

    # ------------------------------------------------------------------ train
    def train(self, on_step: Callable[[int], None] | None = None) -> None:
        """Runs the remaining epochs; ``on_step(step)`` is called after every optimizer step."""
        cfg = self.cfg.train
        self.model.train()
        steps_per_epoch = len(self.loader)
        bar = tqdm(
            total=steps_per_epoch * cfg.epochs,
            initial=self.step,
            disable=not (cfg.progress and self.ctx.is_main),
            desc="train",
            dynamic_ncols=True,
        )
        while self.epoch < cfg.epochs:
            self.loader.set_epoch(self.epoch)
            for batch in self.loader:
                loss = self._train_step(batch.to(self.ctx.device))
                bar.update(1)
                if self.step % cfg.log_every == 0:
                    bar.set_postfix(loss=f"{loss:.4f}")
                    self.run_log.log(self.step, {"train/loss": loss, "train/epoch": self.epoch})
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                if on_step is not None:
                    on_step(self.step)
            self.epoch += 1
            self._log_eval("valid")
        bar.close()
        self.save_checkpoint()

    def _loader(self, examples, batch_size: int, shuffle: bool):
        return make_dataloader(
            examples, batch_size, shuffle=shuffle, seed=self.cfg.train.seed, num_workers=self.cfg.data.num_workers,
            drop_last=shuffle and self.ctx.world_size > 1, rank=self.ctx.rank, world_size=self.ctx.world_size,
        )

    def _train_step(self, batch) -> float:
        loss, _ = self.model(batch)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return float(loss.detach())

    # ------------------------------------------------------------------ evaluate
    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, dict]:
        """Per-head AUC / NE of the model on ``split`` ("valid" or "test"), over all ranks' rows."""
        examples = self.data.examples(split)
        metrics = HeadMetrics(self.heads)
        was_training = self.model.training
        self.model.eval()
        for batch in self._loader(examples, self.cfg.train.eval_batch_size, shuffle=False):
            _, logits = self.model(batch.to(self.ctx.device))
            metrics.update(logits.float().cpu(), self._head_labels(batch))
        self.model.train(was_training)
        return _gather_metrics(metrics, self.ctx)

    def _head_labels(self, batch) -> torch.Tensor:
        columns = [self.data.spec.action_vocab.index(h) for h in self.heads]
        return batch.labels[:, columns].cpu()

    def evaluate_popularity(self, split: str) -> dict[str, dict]:
        """Per-head AUC / NE of the popularity baseline on ``split``."""
        if self._popularity is None:
            self._popularity = PopularityModel().fit(self.data.log, self.data.split.train, self.heads)
        popularity = self._popularity
        examples = self.data.examples(split)
        metrics = HeadMetrics(self.heads)
        for batch in make_dataloader(examples, self.cfg.train.eval_batch_size, shuffle=False, seed=0):
            metrics.update(popularity.scores(batch.item_id), self._head_labels(batch))
        return metrics.compute()

    def evaluate_ground_truth(self, split: str) -> dict[str, dict]:
        """Per-head AUC of the generator's true long-term action probabilities on ``split``: what
        a model that knew each user's interests (but not their session) would reach. Synthetic only."""
        from recsys.data.synthetic import SyntheticWorld

        examples, log = self.data.examples(split), self.data.log
        event = examples.event
        probabilities = SyntheticWorld(self.cfg.data.synthetic).action_probabilities(
            log.user_id[event], examples.item, log.timestamp[event], log.surface[event]
        )  # [N, A]
        columns = [self.data.spec.action_vocab.index(h) for h in self.heads]
        labels = (examples.label_bits[:, None] >> np.asarray(columns)) & 1  # [N, H]
        metrics = HeadMetrics(self.heads)
        metrics.update(torch.from_numpy(probabilities[:, columns]).float().logit(eps=1e-6), torch.from_numpy(labels).float())
        return metrics.compute()

    def _log_eval(self, split: str) -> dict:
        result = self.evaluate(split)
        values = {f"{split}/{head}/{name}": m[name] for head, m in result.items() for name in ("auc", "ne")}
        self.run_log.log(self.step, values)
        return result

    # ------------------------------------------------------------------ cleanup
    def cleanup(self) -> None:
        self.run_log.close()
        del self.model, self.optimizer
        gc.collect()
        teardown(self.ctx)


def _gather_metrics(metrics: HeadMetrics, ctx: DistContext) -> dict[str, dict]:
    if ctx.world_size > 1:
        parts = [None] * ctx.world_size
        dist.all_gather_object(parts, metrics.state())
        metrics = HeadMetrics.from_states(metrics.heads, parts)
    return metrics.compute()


def _write_json(path: Path, value) -> None:
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=2, default=str))
    os.replace(tmp, path)


def format_metrics_table(model_name: str, results: dict[str, dict[str, dict]]) -> str:
    """``results``: {"<model> valid": {head: {"auc", "ne", "positives"}}, ...} -> a text table."""
    columns = list(results)
    heads = list(next(iter(results.values())))
    header = f"{'head':<12}" + "".join(f"{c + ' AUC':>22}" for c in columns) + f"{'NE (' + columns[0] + ')':>24}"
    lines = [header, "-" * len(header)]
    for head in heads:
        row = f"{head:<12}" + "".join(f"{results[c][head]['auc']:>22.4f}" for c in columns)
        row += f"{results[columns[0]][head]['ne']:>24.4f}"
        lines.append(row)
    return "\n".join(lines)


def run_training(cfg: TrainConfig, resume: bool = False) -> dict:
    """``recsys train``: trains, then prints and saves per-head metrics of model and baseline."""
    recipe = RankingRecipe(cfg)
    started = time.time()
    recipe.setup(resume=resume)
    try:
        recipe.train()
        results = _final_evaluation(recipe)
        results["train_seconds"] = time.time() - started
        if recipe.ctx.is_main:
            _write_json(recipe.output_dir / "results.json", results)
        return results
    finally:
        recipe.cleanup()


def _final_evaluation(recipe: RankingRecipe) -> dict:
    name = recipe.cfg.model_name
    results: dict = {}
    for split in ("valid", "test"):
        results[f"{name} {split}"] = recipe.evaluate(split)
        if recipe.cfg.train.baseline:
            results[f"popularity {split}"] = recipe.evaluate_popularity(split)
        if recipe.cfg.data.source == "synthetic":
            results[f"truth {split}"] = recipe.evaluate_ground_truth(split)
    if recipe.ctx.is_main:
        for split in ("valid", "test"):
            table = {k: v for k, v in results.items() if k.endswith(split)}
            print(f"\n{split} split, per-head metrics ({len(recipe.data.examples(split))} rows)")
            print(format_metrics_table(name, table))
    return results


def run_evaluation(cfg: TrainConfig, checkpoint_dir: str | None = None, step: int | None = None) -> dict:
    """``recsys eval``: loads a checkpoint and prints per-head metrics on valid and test."""
    if checkpoint_dir is not None:
        cfg.output_dir = str(Path(checkpoint_dir).parent)
    recipe = RankingRecipe(cfg)
    recipe.setup(resume=False, write_run_files=False)
    try:
        recipe.checkpoints.load(recipe.model, recipe.optimizer, step=step)
        return _final_evaluation(recipe)
    finally:
        recipe.cleanup()
