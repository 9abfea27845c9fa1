"""Training recipe for the zoo's ranking models (DLRM first): one readable loop, no framework.

``RankingRecipe(cfg)`` -> ``setup(resume)`` -> ``train()`` -> ``evaluate(split)`` -> ``cleanup()``.

- The model is built on the meta device and always wrapped in ``DistributedModelParallel``
  (a world of one included), with the planner placing its tables and FBGEMM's fused optimizer
  updating them inside the backward; a dense optimizer covers everything else.
- Every ``checkpoint_every`` steps the sharded model, the optimizer states, the data position and
  the RNG states are saved; ``resume=True`` continues from the latest complete checkpoint and ends
  with the same weights and metrics as an uninterrupted run.
- ``train.pipeline`` picks the train step: TorchRec's ``TrainPipelineSparseDist`` (the next batch's
  ids travel to their ranks while this one trains) or one batch at a time (``recsys.train.pipeline``).
- Rank 0 shows a tqdm bar and writes ``metrics.jsonl`` + TensorBoard events to ``output_dir``.
- Evaluation reports per head AUC, NE, HIT@3 (``recsys.metrics.hit_at_k``: the share of a head's
  positives in the top 3 of their request ranked by that head's score; for hide, lower is better)
  and combined HIT@3 (the TransAct paper's: every request ranked once by the utility
  ``sum_h w_h p_h`` with ``train.utility_weights``). On synthetic data an *oracle* row scores the
  rows with the generator's exact probabilities (slot, session and in-session clicks included):
  no trained model beats it beyond noise; one that does points to a leak.
- ``data.lifelong.enabled`` builds (once, cached) S_all of every row and trains on lifelong
  batches (``recsys.data.lifelong_pipeline``), which TransAct V2 reads.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from recsys.config import to_dict
from recsys.data.features import FEATURE_SPEC_FILE, save_feature_spec
from recsys.data.lifelong_pipeline import LifelongData, prepare_lifelong_data
from recsys.data.loader import make_dataloader, position_for_sampler
from recsys.data.pipeline import RankingData, build_ranking_data, load_events_with_probabilities
from recsys.distributed.dense_reservation import training_reservation
from recsys.distributed.optimizers import build_optimizer
from recsys.distributed.process_group import DistContext, init_distributed, teardown
from recsys.atomic_files import write_json_atomic
from recsys.distributed.plan_io import save_plan
from recsys.distributed.sharding import plan_to_dict, shard_model
from recsys.metrics.classification import HeadMetrics
from recsys.errors import DataError
from recsys.metrics.hit_at_k import HitAtK, head_weights
from recsys.models import get_model
from recsys.models.popularity import PopularityModel
from recsys.models.task import RankingTask
from recsys.modules.weighted_cross_entropy import WeightedCrossEntropy
from recsys.train.checkpoint import CheckpointManager
from recsys.train.config import TrainConfig
from recsys.train.fault_injection import fail_step, maybe_fail
from recsys.train.guards import check_batch_memory, check_splits_not_empty
from recsys.train.pipeline import build_train_step
from recsys.train.reproducibility import capture_rng_state, restore_rng_state, seed_everything
from recsys.train.run_log import RunLog
from recsys.train.step_options import StepOptions


HIT_K = 3
HIT_NAME = f"hit@{HIT_K}"
COMBINED_HIT_NAME = f"combined_hit@{HIT_K}"


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
        check_splits_not_empty(
            {split: len(self.data.examples(split)) for split in ("train", "valid", "test")},
            "Use more data, or change data.split / data.valid_fraction / data.test_fraction.",
        )
        self._check_memory()  # before S_all, the process group and the model: a step that cannot fit stops here
        self.lifelong = self._build_lifelong()
        self.ctx: DistContext = init_distributed()
        seed_everything(cfg.train.seed)
        torch.set_float32_matmul_precision(cfg.train.matmul_precision)
        self.heads = self._build_model()
        self.utility_weights = head_weights(self.heads, cfg.train.utility_weights)  # [H]
        self.loader = self._loader(self.data.train, cfg.train.batch_size, shuffle=True)
        self.step_options = StepOptions.setup(
            cfg, self.model, self.optimizer, self.ctx.device, total_steps=len(self.loader) * cfg.train.epochs
        )
        self.pipeline, pipeline_note = build_train_step(
            cfg.train.pipeline, self.model, self.optimizer, self.ctx.device, self.step_options.autocast
        )
        self.checkpoints = CheckpointManager(
            self.output_dir / "checkpoints", backend=cfg.train.checkpoint_backend, keep_last=cfg.train.keep_checkpoints
        )
        self.run_log = RunLog(self.output_dir, rank=self.ctx.rank)
        if self.ctx.is_main:
            if write_run_files:
                self._write_run_files()
            print(self.summary())
            print(f"train step: {pipeline_note}; {self.step_options.describe()}")
        if resume:
            self._resume()

    def _build_data(self) -> RankingData:
        cfg = self.cfg
        log, probabilities = load_events_with_probabilities(cfg.data)
        return build_ranking_data(cfg.data, seed=cfg.train.seed, log=log,
                                  event_probabilities=probabilities)  # rows carry w_u (data.user_weights)

    def _check_memory(self) -> None:
        """Refuses a ``train.batch_size`` / ``data.max_sequence`` whose training step would not fit
        in this rank's memory (:func:`~recsys.train.guards.check_batch_memory`)."""
        cfg = self.cfg
        model = get_model(cfg.model_name, feature_spec=self.data.spec, device=torch.device("meta"), **cfg.model_overrides)
        check_batch_memory(model, cfg, self.data.spec, train_rows=len(self.data.train), log=self.data.log)

    def _build_lifelong(self) -> LifelongData | None:
        """Every split's S_all (cached under ``data.lifelong.cache_dir``) when lifelong batches are on."""
        config = self.cfg.data.lifelong
        if not config.enabled:
            return None
        cache_dir = Path(config.cache_dir) if config.cache_dir else self.output_dir / "lifelong"
        return prepare_lifelong_data(self.data, config, cache_dir)

    def _collate(self, examples):
        """The batches' collate function: S_all as the sequence on lifelong data, else the default."""
        return self.lifelong.collate(examples) if self.lifelong is not None else None

    def _build_model(self) -> list[str]:
        cfg = self.cfg
        model = get_model(cfg.model_name, feature_spec=self.data.spec, device=torch.device("meta"), **cfg.model_overrides)
        heads = list(model.heads)
        loss = WeightedCrossEntropy(heads, self.data.spec.action_vocab, cfg.loss.label_weights)
        task = RankingTask(model, loss)
        reservation = training_reservation(task, cfg, self.data.spec, self.ctx.device.type, log=self.data.log)
        self.model = shard_model(
            task, self.ctx, cfg.sharding, cfg.optim.sparse, batch_size=cfg.train.batch_size, storage_reservation=reservation
        )
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
        write_json_atomic(self.output_dir / "config.json", to_dict(self.cfg))
        save_feature_spec(self.data.spec, self.output_dir / FEATURE_SPEC_FILE)
        save_plan(self.model.plan, self.output_dir / "plan.json", self.ctx.world_size, self.ctx.device.type)

    # ------------------------------------------------------------------ checkpoints
    def _trainer_state(self) -> dict:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "loader": self._trained_position(),
            "rng": capture_rng_state(),
            **self.step_options.state_dict(),
        }

    def save_checkpoint(self) -> None:
        self.checkpoints.save(self.step, self.model, self.optimizer, extra=self._trainer_state())

    def _resume(self) -> None:
        step = self.checkpoints.resume_step()  # `latest`, else the newest step that verifies
        if step is None:
            if self.ctx.is_main:
                print(f"no checkpoint in {self.checkpoints.directory}; starting from scratch")
            return
        state = self.checkpoints.load(self.model, self.optimizer, step=step)
        self.step, self.epoch = state["step"], state["epoch"]
        self.loader.load_state_dict(self._position_for_this_world(state["loader"]))
        restore_rng_state(state["rng"])
        self.step_options.load_state_dict(state, self.step)
        self.run_log.truncate_after(self.step)
        if self.ctx.is_main:
            print(f"resumed from step {self.step} (epoch {self.epoch}, batch {state['loader']['batches_consumed']})")

    def _trained_position(self) -> dict:
        """The loader's state at the last trained batch: the pipeline may hold batches read ahead."""
        state = self.loader.state_dict()
        state["batches_consumed"] -= self.pipeline.in_flight
        return state

    def _position_for_this_world(self, saved: dict) -> dict:
        """A loader position saved by a job of another world size, for this job's loader: batches
        are per rank, so the global batch differs and the position carries over in rows."""
        return position_for_sampler(saved, self.loader.sampler)

    # ------------------------------------------------------------------ train
    def train(self, on_step: Callable[[int], None] | None = None) -> None:
        """Runs the remaining epochs; ``on_step(step)`` is called after every optimizer step.

        Testing hook: ``RECSYS_FAIL_AT_STEP`` / ``RECSYS_FAIL_RANK`` kill a rank after a given step
        on a torchrun job's first attempt (see ``recsys.train.fault_injection``).
        """
        cfg = self.cfg.train
        self.model.train()
        steps_per_epoch = len(self.loader)
        fail_at = fail_step(self.ctx.rank)
        bar = tqdm(
            total=steps_per_epoch * cfg.epochs,
            initial=self.step,
            disable=not (cfg.progress and self.ctx.is_main),
            desc="train",
            dynamic_ncols=True,
        )
        while self.epoch < cfg.epochs:
            self.loader.set_epoch(self.epoch)
            batches = iter(self.loader)
            while (loss := self.train_step(batches)) is not None:
                bar.update(1)
                if self.step % cfg.log_every == 0:
                    value = float(loss)  # waits for the GPU: only when logging
                    bar.set_postfix(loss=f"{value:.4f}")
                    self.run_log.log(self.step, {"train/loss": value, "train/epoch": self.epoch})
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                maybe_fail(self.step, fail_at)
                if on_step is not None:
                    on_step(self.step)
            self.pipeline.detach()  # evaluation calls the model's own forward
            self.epoch += 1
            self._log_eval("valid")
        bar.close()
        self.save_checkpoint()

    def _loader(self, examples, batch_size: int, shuffle: bool):
        return make_dataloader(
            examples, batch_size, shuffle=shuffle, seed=self.cfg.train.seed, num_workers=self.cfg.data.num_workers,
            drop_last=shuffle and self.ctx.world_size > 1, rank=self.ctx.rank, world_size=self.ctx.world_size,
            collate=self._collate(examples),
        )

    def train_step(self, batches) -> torch.Tensor | None:
        """One optimizer step of the configured train step (``train.pipeline``) on the next batch
        of ``batches``: its loss (a detached scalar, not synchronised), or None once every batch
        taken from ``batches`` has been trained on. ``train()`` calls it once per batch;
        ``benchmarks/train_throughput.py`` times it."""
        try:
            loss, _ = self.pipeline.progress(batches)
        except StopIteration:
            return None
        self.step_options.after_step()  # the lr schedule
        self.step += 1
        return loss

    # ------------------------------------------------------------------ evaluate
    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, dict]:
        """Per-head AUC / NE / HIT@3 / combined HIT@3 of the model on ``split`` ("valid" or "test"),
        over all ranks' rows."""
        request_id, logits, labels = self.predict(split)
        metrics, hits = HeadMetrics(self.heads), self._hits()
        if len(request_id):  # a rank may hold no rows of a small split
            metrics.update(logits, labels)
            hits.update(request_id, logits, labels)
        return _gather_metrics(metrics, hits, self.ctx)

    @torch.no_grad()
    def predict(self, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The model on this rank's rows of ``split``, in the evaluation loader's order (on one
        rank: row order): ``request_id [N]``, float32 ``logits [N, H]`` and ``labels [N, H]`` on the CPU."""
        examples = self.data.examples(split)
        requests, scores, targets = [], [], []
        was_training = self.model.training
        self.model.eval()
        for batch in self._loader(examples, self.cfg.train.eval_batch_size, shuffle=False):
            _, logits = self.model(batch.to(self.ctx.device))
            requests.append(batch.request_id.cpu())
            scores.append(logits.float().cpu())
            targets.append(self._head_labels(batch))
        self.model.train(was_training)
        if not scores:
            h = len(self.heads)
            return torch.zeros(0, dtype=torch.int64), torch.zeros(0, h), torch.zeros(0, h)
        return torch.cat(requests), torch.cat(scores), torch.cat(targets)

    def _hits(self) -> HitAtK:
        return HitAtK(self.heads, k=HIT_K, weights=self.utility_weights)

    def _head_labels(self, batch) -> torch.Tensor:
        columns = [self.data.spec.action_vocab.index(h) for h in self.heads]
        return batch.labels[:, columns].cpu()

    def evaluate_popularity(self, split: str) -> dict[str, dict]:
        """Per-head AUC / NE / HIT@3 / combined HIT@3 of the popularity baseline on ``split``."""
        if self._popularity is None:
            self._popularity = PopularityModel().fit(self.data.log, self.data.split.train, self.heads)
        popularity = self._popularity
        examples = self.data.examples(split)
        metrics, hits = HeadMetrics(self.heads), self._hits()
        for batch in make_dataloader(examples, self.cfg.train.eval_batch_size, shuffle=False, seed=0):
            scores, labels = popularity.scores(batch.item_id), self._head_labels(batch)
            metrics.update(scores, labels)
            hits.update(batch.request_id, scores, labels)
        return _with_hits(metrics.compute(), hits.compute())

    def has_oracle(self, split: str) -> bool:
        """True when every row of ``split`` has the generator's exact probabilities: synthetic data
        generated by the recipe, and no sampled negatives (items the feed never showed)."""
        return self.data.event_probabilities is not None and not self.data.examples(split).sampled_negative.any()

    def oracle_scores(self, split: str) -> torch.Tensor:
        """``[N, H]`` float32 logits of the generator's exact action probabilities of the rows of
        ``split`` (in row order): what each row's actions were drawn with."""
        if not self.has_oracle(split):
            raise DataError(f"no oracle for split {split!r}: it needs synthetic events generated with their "
                            "probabilities and no sampled negatives (data.eval_negatives_per_target=0)")
        examples = self.data.examples(split)
        columns = [self.data.spec.action_vocab.index(h) for h in self.heads]
        probabilities = self.data.event_probabilities[examples.event][:, columns]  # [N, H]
        return torch.from_numpy(probabilities).logit(eps=1e-12).float()

    def evaluate_oracle(self, split: str) -> dict[str, dict]:
        """Per-head AUC / NE / HIT@3 / combined HIT@3 of the generator's exact probabilities on
        ``split`` (:meth:`oracle_scores`): the ceiling no trained model passes beyond noise."""
        examples = self.data.examples(split)
        columns = [self.data.spec.action_vocab.index(h) for h in self.heads]
        labels = torch.from_numpy((examples.label_bits[:, None] >> np.asarray(columns)) & 1).float()  # [N, H]
        scores = self.oracle_scores(split)
        metrics, hits = HeadMetrics(self.heads), self._hits()
        metrics.update(scores, labels)
        hits.update(torch.from_numpy(examples.request_id), scores, labels)
        return _with_hits(metrics.compute(), hits.compute())

    def _log_eval(self, split: str) -> dict:
        result = self.evaluate(split)
        values = {f"{split}/{head}/{name}": m[name] for head, m in result.items()
                  for name in ("auc", "ne", HIT_NAME, COMBINED_HIT_NAME)}
        self.run_log.log(self.step, values)
        return result

    # ------------------------------------------------------------------ cleanup
    def cleanup(self) -> None:
        self.run_log.close()
        del self.pipeline, self.model, self.optimizer
        gc.collect()
        teardown(self.ctx)


def _gather_metrics(metrics: HeadMetrics, hits: HitAtK, ctx: DistContext) -> dict[str, dict]:
    """Every rank's rows scored together (a request's rows may sit on several ranks)."""
    if ctx.world_size > 1:
        parts = [None] * ctx.world_size
        dist.all_gather_object(parts, (metrics.state(), hits.state()))
        metrics = HeadMetrics.from_states(metrics.heads, [p[0] for p in parts])
        hits = HitAtK.from_states(hits.heads, [p[1] for p in parts], hits.k, hits.negative_heads, hits.weights)
    return _with_hits(metrics.compute(), hits.compute())


def _with_hits(metrics: dict[str, dict], hits: dict[str, dict]) -> dict[str, dict]:
    """Per head: the classification metrics plus ``hit@K``, ``combined_hit@K``, ``positives`` and
    ``requests`` (with a positive)."""
    keys = (HIT_NAME, COMBINED_HIT_NAME, "positives", "requests")
    return {head: {**m, **{key: hits[head][key] for key in keys if key in hits[head]}} for head, m in metrics.items()}


def format_metrics_table(model_name: str, results: dict[str, dict[str, dict]]) -> str:
    """``results``: {"<model> valid": {head: {"auc", "ne", "hit@3", "combined_hit@3", ...}}, ...} -> a text table.

    One AUC, one per-head HIT@3 and one combined HIT@3 column per result (e.g. the model, popularity
    and the oracle), then the first result's NE; a footnote says how to read HIT@3.
    """
    columns = list(results)
    heads = list(next(iter(results.values())))
    metrics = (("auc", " AUC", 22), (HIT_NAME, f" HIT@{HIT_K}", 24), (COMBINED_HIT_NAME, f" comb. HIT@{HIT_K}", 30))
    header = f"{'head':<12}" + "".join(f"{c + label:>{width}}" for _, label, width in metrics for c in columns)
    header += f"{'NE (' + columns[0] + ')':>24}"
    lines = [header, "-" * len(header)]
    for head in heads:
        row = f"{head:<12}" + "".join(f"{results[c][head].get(key, float('nan')):>{width}.4f}"
                                      for key, _, width in metrics for c in columns)
        row += f"{results[columns[0]][head]['ne']:>24.4f}"
        lines.append(row)
    lines.append(f"HIT@{HIT_K}: share of a head's positives in the top {HIT_K} of their request, sorted by the head's "
                 "score (hide: lowest first); comb. HIT@{k}: the same with every request sorted once by the utility "
                 "sum_h w_h p_h (train.utility_weights); ties count their expected hit. Higher is better, for hide "
                 "LOWER is better.".replace("{k}", str(HIT_K)))
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
            write_json_atomic(recipe.output_dir / "results.json", results)
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
        if recipe.has_oracle(split):
            results[f"oracle {split}"] = recipe.evaluate_oracle(split)
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
