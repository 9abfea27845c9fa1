"""MIMN served from the User Interest Center's states: one batched ``POST /states`` per model batch.

The UIC (:mod:`recsys.uic`) keeps every user's MIMN state current as events arrive; the ranker
only reads it, so a request costs the same for a user with ten events or ten thousand::

    batch of B requests --unique users--> UIC POST /states (base64)  --> MIMNState [U]
       rows (features.py: candidate ids, dense features)                 state of each row [R]
       logits = model.score(state[row's user], candidate, dense)         [R, H]

When the UIC cannot answer (unreachable, timed out, an error status, a body that is not its
format, or states written by another model version), the batch is scored from the empty state
``init_state`` (a user without behaviour) and ``recsys_serve_uic_fallback_total{reason}`` counts
the users concerned: ranking degrades, it does not fail.

Shape letters: B requests, U distinct users, R candidates of all requests, H heads.
"""

from __future__ import annotations

import base64

import numpy as np
import torch
from torch import nn

from recsys.errors import ConfigError
from recsys.serve.features import FeatureStore, RankingRequest
from recsys.serve.metrics import Counter

FALLBACK_REASONS = ("unreachable", "status", "format", "model_version")


class UICStates:
    """A client of a UIC's ``POST /states``: users -> their states, or why not.

    Args:
        url: the UIC's base URL, e.g. ``http://127.0.0.1:8700``.
        model: the served :class:`~recsys.models.mimn.MIMNRanker` (its state layout and version).
        timeout_s: the most one lookup may take (connect and read) before the fallback.
    """

    def __init__(self, url: str, model: nn.Module, timeout_s: float = 0.05):
        import httpx

        from recsys.uic.center import model_version_of
        from recsys.uic.state_codec import StateCodec

        from recsys.models.mimn import MIMNRanker

        if not isinstance(model, MIMNRanker):
            raise ConfigError(f"--uic-url serves mimn models from the UIC's states; this run holds "
                              f"{type(model).__name__} (leave --uic-url out)")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"--uic-url must be an http(s) URL such as http://127.0.0.1:8700, got {url!r}")
        if timeout_s <= 0:
            raise ConfigError(f"--uic-timeout-ms must be > 0, got {timeout_s * 1000}")
        self.url = url.rstrip("/")
        self.codec, self.model_version = StateCodec.of(model), model_version_of(model)
        self.client = httpx.Client(timeout=timeout_s)

    def fetch(self, users: list[int]):
        """``(MIMNState [U], None)`` of ``users`` in order, or ``(None, reason)`` (one of :data:`FALLBACK_REASONS`)."""
        import httpx

        try:
            response = self.client.post(f"{self.url}/states", json={"user_ids": users, "encoding": "base64"})
        except httpx.HTTPError:
            return None, "unreachable"
        if response.status_code != 200:
            return None, "status"
        try:
            body = response.json()
            if body["model_version"] != self.model_version:
                return None, "model_version"
            rows = body["states"]
            if [row["user_id"] for row in rows] != users:
                return None, "format"
            return self.codec.decode([base64.b64decode(row["state"]) for row in rows]), None
        except (ValueError, KeyError, TypeError):
            return None, "format"

    def close(self) -> None:
        self.client.close()


class MIMNUICRanker:
    """MIMN scores from the UIC's states (module docstring).

    Args:
        model: the served MIMNRanker (eval mode), the one the UIC runs.
        store: the run's feature store (candidate rows, dense features).
        states: the UIC client.
    """

    def __init__(self, model: nn.Module, store: FeatureStore, states: UICStates):
        self.model, self.store, self.states = model, store, states
        self.heads = list(model.heads)
        self.fallback = Counter("recsys_serve_uic_fallback_total",
                                "Users scored from the empty MIMN state because the UIC could not answer, by reason.",
                                ("reason",))
        self.metrics = (self.fallback,)

    def __call__(self, requests: list[RankingRequest]) -> torch.Tensor:
        """``[R, H]`` probabilities of the candidates of ``requests``, request after request."""
        device = next(self.model.parameters()).device
        rows = self.store.ranking_batch(requests).to(device)  # R rows: candidate ids, dense features
        users, of_request = np.unique([r.user for r in requests], return_inverse=True)  # [U], [B]
        state, reason = self.states.fetch(users.tolist())
        if state is None:
            self.fallback.inc(reason, amount=len(users))
            state = self.model.init_state(len(users))
        state = state.map(lambda t: t.to(device))
        counts = torch.tensor([len(r.items) for r in requests])  # [B]
        of_row = torch.from_numpy(of_request.reshape(-1)).repeat_interleave(counts).to(device)  # [R] the user of each row
        logits = self.model.score(state.map(lambda t: t[of_row]), rows.item_id, rows.dense_features)  # [R, H]
        return torch.sigmoid(logits.float())
