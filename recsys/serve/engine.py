"""The served model: a ``recsys train`` run loaded once, with its feature store and scorer.

``Engine.load(run_dir)`` reads the model (``recsys.load``), the run's config and its event log
through the same pipeline ``recsys eval`` reads it with (``load_events(cfg.data)``), indexes the
log (:class:`~recsys.serve.features.FeatureStore`) and builds the ranker (dlrm and the other
pointwise rankers; hstu_ranking through M-FALCON; a lifelong run (transact_v2) through
``rank_requests`` on the run's lifelong store) or the retrieval index (hstu, sasrec).
``Engine.run(requests)`` scores one batch of requests (called by the batcher's worker thread).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from recsys.serve.config import ServeConfig
from recsys.serve.features import FeatureStore, RankingRequest
from recsys.serve.retriever import RetrievalRequest, Retriever


class Engine:
    """One loaded model and what scoring it needs.

    Args:
        model: the zoo model in eval mode (``recsys.load``).
        store: the feature store of the run's log.
        task: ``"ranking"`` or ``"retrieval"``.
        name: the model's zoo name.
        config: the serve config (the HSTU ranker's KV cache); None = defaults.
    """

    def __init__(self, model: torch.nn.Module, store: FeatureStore, task: str, name: str,
                 config: ServeConfig | None = None, lifelong=None, uic=None):
        from recsys.serve.ranker import make_ranker

        self.model, self.store, self.task, self.name = model, store, task, name
        self.config = config or ServeConfig()
        self.scorer = (Retriever(model, store) if task == "retrieval"
                       else make_ranker(model, store, self.config.kv_cache, lifelong, uic))
        self.heads = getattr(self.scorer, "heads", [])
        self.metrics = getattr(self.scorer, "metrics", ())  # the scorer's own metrics, shown by /metrics
        self.warm = False

    @classmethod
    def load(cls, checkpoint: str | Path, config: ServeConfig | None = None, uic_url: str | None = None,
             uic_timeout_s: float = 0.05, device: str = "cpu") -> "Engine":
        """The engine of a run folder (its ``output_dir``, ``checkpoints/`` or a ``step_*`` folder);
        ``config``: the serve config (the HSTU ranker's KV cache); a mimn run with ``uic_url`` reads
        its users' states from that UIC (``recsys uic serve``). ``device``: where the model scores
        (``cpu`` or ``cuda``; features are built on the host and moved once per batch)."""
        from recsys.data.pipeline import load_events
        from recsys.inference import _locate, _run_config, _run_feature_spec, load
        from recsys.models import get_model_spec

        run_dir = _locate(Path(checkpoint), None)[0]
        cfg = _run_config(run_dir)
        task = get_model_spec(cfg.model_name).task
        model = load(checkpoint).to(_serving_device(device))
        log = load_events(cfg.data)
        store = FeatureStore(log, _run_feature_spec(run_dir, cfg))
        lifelong = None
        if cfg.data.lifelong.enabled:
            lifelong = (lifelong_store(run_dir, cfg.data.lifelong, log), cfg.data.lifelong)
        uic = None
        if uic_url is not None:
            from recsys.serve.uic_ranker import UICStates

            uic = UICStates(uic_url, model, uic_timeout_s)
        return cls(model, store, task, cfg.model_name, config, lifelong, uic)

    def check(self, request) -> None:
        """Raises the request's 404 (unknown user) before it is queued."""
        self.store.index.check_user(request.user)

    def size(self, request) -> int:
        """What a request weighs in a batch: its candidates (ranking) or 1 (retrieval)."""
        return len(request.items) if isinstance(request, RankingRequest) else 1

    def run(self, requests: list) -> list:
        """Results of a batch, in order: ``{head: [C] float32 array}`` or ``(items, scores)`` lists."""
        if self.task == "retrieval":
            return [(items.tolist(), scores.tolist()) for items, scores in self.scorer(requests)]
        probabilities = self.scorer(requests).T.contiguous().cpu().numpy()  # [H, R], one row per head
        out, start = [], 0
        for request in requests:
            block = probabilities[:, start: start + len(request.items)]  # [H, C]
            out.append({head: np.ascontiguousarray(block[h]) for h, head in enumerate(self.heads)})
            start += len(request.items)
        return out

    def warmup(self) -> None:
        """One request through the model (the first forward pays for lazy initialisation), then ready."""
        log = self.store.log
        user = int(log.user_id[self.store.index.engaged_events[0]]) if len(self.store.index.engaged_events) else 0
        time = int(log.timestamp.max()) + 1
        with torch.inference_mode():
            if self.task == "retrieval":
                self.run([RetrievalRequest(user, 1, time)])
            else:
                self.run([RankingRequest(user, np.arange(min(8, self.store.spec.num_items)), time, 0)])
        self.warm = True


def _serving_device(device: str) -> torch.device:
    """``device`` checked: a CUDA device needs CUDA."""
    from recsys.errors import ConfigError

    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device {device!r} is not a device; use cpu or cuda (cuda:N)") from None
    if chosen.type == "cpu":
        return chosen
    if chosen.type != "cuda" or not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: this machine has no CUDA device; serve on --device cpu")
    return chosen


def lifelong_store(run_dir: Path, config, log):
    """The lifelong store the run trained on: its cached copy (``data.lifelong.cache_dir``, by default
    ``<run>/lifelong/<key>/store``) when present, else built from the same log the same way.

    Args:
        run_dir: the run's folder.
        config: the run's ``data.lifelong`` (:class:`~recsys.data.lifelong_pipeline.LifelongDataConfig`).
        log: the run's event log.
    """
    from recsys.data.lifelong_pipeline import cache_key
    from recsys.data.lifelong_store import LifelongStore
    from recsys.errors import DataError

    root = Path(config.cache_dir) if config.cache_dir else run_dir / "lifelong"
    path = root / cache_key(log, config.sequence_config(), config.scale) / "store"
    if path.exists():
        try:
            return LifelongStore.load(path)
        except DataError:
            pass  # incomplete or from another version: built again below, in memory
    return LifelongStore.from_log(log, scale=config.scale)
