"""The served model: a ``recsys train`` run loaded once, with its feature store and scorer.

``Engine.load(run_dir)`` reads the model (``recsys.load``), the run's config and its event log
through the same pipeline ``recsys eval`` reads it with (``load_events(cfg.data)``), indexes the
log (:class:`~recsys.serve.features.FeatureStore`) and builds the ranker (dlrm and the other
pointwise rankers; hstu_ranking through M-FALCON) or the retrieval index (hstu, sasrec).
``Engine.run(requests)`` scores one batch of requests (called by the batcher's worker thread).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from recsys.errors import ConfigError
from recsys.serve.features import FeatureStore, RankingRequest
from recsys.serve.retriever import RetrievalRequest, Retriever


class Engine:
    """One loaded model and what scoring it needs.

    Args:
        model: the zoo model in eval mode (``recsys.load``).
        store: the feature store of the run's log.
        task: ``"ranking"`` or ``"retrieval"``.
        name: the model's zoo name.
    """

    def __init__(self, model: torch.nn.Module, store: FeatureStore, task: str, name: str):
        from recsys.serve.ranker import make_ranker

        self.model, self.store, self.task, self.name = model, store, task, name
        self.scorer = Retriever(model, store) if task == "retrieval" else make_ranker(model, store)
        self.heads = getattr(self.scorer, "heads", [])
        self.warm = False

    @classmethod
    def load(cls, checkpoint: str | Path) -> "Engine":
        """The engine of a run folder (its ``output_dir``, ``checkpoints/`` or a ``step_*`` folder)."""
        from recsys.data.pipeline import load_events
        from recsys.inference import _locate, _run_config, _run_feature_spec, load
        from recsys.models import get_model_spec

        run_dir = _locate(Path(checkpoint), None)[0]
        cfg = _run_config(run_dir)
        if cfg.data.lifelong.enabled:
            raise ConfigError(f"{checkpoint} is a lifelong-sequence run ({cfg.model_name}); its request path "
                              "(TransAct V2 through rank_requests) is not served by recsys serve yet")
        model = load(checkpoint)
        store = FeatureStore(load_events(cfg.data), _run_feature_spec(run_dir, cfg))
        return cls(model, store, get_model_spec(cfg.model_name).task, cfg.model_name)

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
        probabilities = self.scorer(requests).T.contiguous().numpy()  # [H, R], one row per head
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
