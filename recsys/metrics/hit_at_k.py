"""HIT@K per head: how many of the candidates a user acted on land in the top K of their request.

The TransAct papers (KDD 2023, arXiv 2306.00248; arXiv 2506.02267) evaluate the ranker as it is
used: the candidates shown together (a *request*, ``RankingBatch.request_id``; the paper's "chunk")
are ranked, and the candidates with a head's action among the top K count as hits. The papers rank
a request once by the production utility of all heads (*combined* HIT@K, below); ``hit@K`` ranks
it by the one head's own score, an extra per-head view.
The paper aggregates the hit counts over chunks; here they are divided by the number of positives::

    HIT@K(h) = #{positive candidates of h ranked <= K in their request} / #{positive candidates of h}

so the value is a fraction in [0, 1]. On one evaluation set both normalisations divide the same
hit count by a constant of the data (the positives, or the requests holding one), so they order
models identically. Requests without a positive of the head add nothing and are skipped.

Positive heads (click, save, ...) sort a request by their score, highest first: a good model puts
the acted-on candidates on top, higher HIT@K is better. A *negative* head (hide, ``NEGATIVE_ACTIONS``)
sorts by its score lowest first, the order in which a feed avoiding hides would show them: a good
model keeps the hidden candidates out of the top, so for hide LOWER HIT@K is better (the papers
report HIT@3/hide that way). Sorting hide highest first would instead reward a model for finding
hidden candidates, the opposite reading.

Ties are broken at random, and a candidate gets its *expected* hit under that tie-breaking: with
``a`` candidates of its request ranked strictly before it and ``g`` tying with it (itself
included), its rank is uniform over ``a+1 .. a+g`` and it counts ``clip(K - a, 0, g) / g``
(:func:`expected_hits`). A scorer that scores equal candidates equally (the generator's own
probabilities, popularity on a repeated item) is thus neither penalised nor flattered; a constant
scorer gets ``K / n`` per positive in a request of ``n > K`` candidates, for every head.

**Combined HIT@K** (the TransAct paper's HIT@3/action, arXiv 2306.00248): production ranks a
request once, by one utility of all heads' predicted probabilities, ``u = sum_h w_h sigmoid(s_h)``
(positive actions weigh positive, hide negative: :func:`head_weights`), and reports per action
the share of its positives in the top K of that single ranking (for hide, lower is better).
:class:`HitAtK` reports it as ``combined_hit@K`` beside the per-head rankings (``hit@K``).

Rows of one request may be split across batches and ranks: :class:`HitAtK` keeps
``(request_id, scores, labels)`` of every row and ranks at :meth:`HitAtK.compute`; ranks exchange
:meth:`HitAtK.state` (e.g. with ``all_gather_object``) and merge them with :meth:`HitAtK.from_states`.

Shape letters: N rows, H heads.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from recsys.errors import ConfigError, DataError


NEGATIVE_ACTIONS = ("hide",)


def head_weights(heads: list[str], weights: dict[str, float] | None = None) -> list[float]:
    """``[H]`` utility weight per head: ``weights[head]`` where given, else +1 for a positive action
    and -1 for a negative one (:data:`NEGATIVE_ACTIONS`).

    Raises:
        ConfigError: a weight names no head, is not a finite number, or every weight is 0.
    """
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(heads))
    if unknown:
        raise ConfigError(f"train.utility_weights names {unknown}, which are not heads of the model {list(heads)}; "
                          "use the head names")
    values = []
    for head in heads:
        value = weights.get(head, -1.0 if head in NEGATIVE_ACTIONS else 1.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"train.utility_weights[{head!r}]={value!r} must be a finite number")
        values.append(float(value))
    if not any(values):
        raise ConfigError("train.utility_weights are all 0, so the utility ranks nothing; give a head a non-zero weight")
    return values


def utility(scores: np.ndarray, weights) -> np.ndarray:
    """``[N, H]`` per-head logits and ``[H]`` weights -> ``[N]`` float64 ``sum_h w_h sigmoid(s_h)``."""
    scores = np.asarray(scores, dtype=np.float64)
    probabilities = 0.5 * (1.0 + np.tanh(0.5 * scores))  # sigmoid without overflow
    return probabilities @ np.asarray(weights, dtype=np.float64)


def request_ranks(request_id: np.ndarray, keys: np.ndarray, ties_first: bool = False) -> np.ndarray:
    """``[N]`` int64 rank of every row within its request when sorted by ``keys``, highest first.

    Args:
        request_id: ``[N]`` request of each row.
        keys: ``[N]`` sort key of each row (higher = ranked first).
        ties_first: a row tying with others takes the best rank of its tie group
            (``1 + #{j : keys[j] > keys[i]}``); otherwise the worst (``#{j : keys[j] >= keys[i]}``).
            Both count only rows of the same request.
    """
    order = np.lexsort((-keys, request_id))  # by request, then highest key first
    request, key = request_id[order], keys[order]
    n = len(order)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    new_request = np.r_[True, request[1:] != request[:-1]]  # [N] first row of its request
    new_tie = new_request | np.r_[True, key[1:] != key[:-1]]  # [N] first row of its tie group
    last_tie = np.r_[new_tie[1:], True]  # [N] last row of its tie group
    position = np.arange(n)
    request_start = np.maximum.accumulate(np.where(new_request, position, 0))  # [N]
    if ties_first:
        tie_position = np.maximum.accumulate(np.where(new_tie, position, 0))  # [N] first row of the tie group
    else:
        tie_position = np.minimum.accumulate(np.where(last_tie, position, n)[::-1])[::-1]  # [N] its last row
    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = tie_position - request_start + 1
    return ranks


def expected_hits(request_id: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
    """``[N]`` float64 probability that each row lands in the top ``k`` of its request when sorted by
    ``keys`` (highest first) with ties broken uniformly at random: ``clip(k - a, 0, g) / g`` for
    ``a`` rows strictly before it and ``g`` rows tying with it (itself included)."""
    best = request_ranks(request_id, keys, ties_first=True)  # a + 1
    worst = request_ranks(request_id, keys, ties_first=False)  # a + g
    group = worst - best + 1
    return np.clip(k - (best - 1), 0, group) / group


def hit_at_k(request_id, scores, labels, k: int = 3, negative: bool = False) -> tuple[float, int, int]:
    """HIT@K of one head, with the expected credit of tied rows (random tie-breaking).

    Args:
        request_id: ``[N]`` request of each row.
        scores: ``[N]`` the head's predicted scores (logits or probabilities).
        labels: ``[N]`` 0/1, 1 where the head's action was taken.
        k: K.
        negative: a negative head (hide): rank lowest score first (lower HIT@K is better);
            otherwise highest first.

    Returns:
        ``(HIT@K, positives, requests with a positive)``; HIT@K is NaN without positives.
    """
    request_id = np.asarray(request_id, dtype=np.int64).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    positive = np.asarray(labels, dtype=np.float64).reshape(-1) > 0.5
    if not request_id.shape == scores.shape == positive.shape:
        raise DataError(
            f"hit_at_k: request_id, scores and labels must have one value per row, got lengths "
            f"{request_id.shape[0]}, {scores.shape[0]} and {positive.shape[0]}"
        )
    if k < 1:
        raise DataError(f"hit_at_k: k must be >= 1, got {k}")
    if np.isnan(scores).any():
        raise DataError("scores hold NaN values; the model diverged or its inputs hold NaN")
    num_positive = int(positive.sum())
    if num_positive == 0:
        return float("nan"), 0, 0
    hits = expected_hits(request_id, -scores if negative else scores, k)[positive].sum()
    return float(hits) / num_positive, num_positive, int(np.unique(request_id[positive]).shape[0])


class HitAtK:
    """Accumulates request ids, scores and labels over batches; HIT@K per head at the end.

    Args:
        heads: H head names, the columns of scores and labels.
        k: K.
        negative_heads: heads ranked lowest score first (lower HIT@K is better); None =
            the heads named in :data:`NEGATIVE_ACTIONS`.
        weights: ``[H]`` utility weights of the combined ranking (:func:`head_weights`); None =
            no combined HIT@K. Scores must then be logits (probabilities = their sigmoid).

    Example::

        metric = HitAtK(["click", "hide"], k=3, weights=head_weights(["click", "hide"]))
        metric.update(batch.request_id, logits, labels)  # [B], [B, H], [B, H]
        metric.compute()  # {"click": {"hit@3": 0.41, "combined_hit@3": 0.40, "positives": 120, ...}, ...}
    """

    def __init__(self, heads: list[str], k: int = 3, negative_heads: list[str] | None = None,
                 weights: list[float] | None = None):
        self.heads = list(heads)
        self.k = int(k)
        self.negative_heads = [h for h in heads if h in NEGATIVE_ACTIONS] if negative_heads is None else list(negative_heads)
        if weights is not None and len(weights) != len(self.heads):
            raise ConfigError(f"HitAtK: {len(weights)} utility weights for {len(self.heads)} heads {self.heads}")
        self.weights = None if weights is None else [float(w) for w in weights]
        self._requests: list[torch.Tensor] = []
        self._scores: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    @property
    def name(self) -> str:
        return f"hit@{self.k}"

    @property
    def combined_name(self) -> str:
        return f"combined_hit@{self.k}"

    def update(self, request_id: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> None:
        """Adds a batch: ``request_id [B]``, ``scores [B, H]`` and 0/1 ``labels [B, H]``."""
        h = len(self.heads)
        if scores.dim() != 2 or scores.shape[1] != h or labels.shape != scores.shape or request_id.shape != scores.shape[:1]:
            raise DataError(
                f"HitAtK.update needs request_id [B] and scores, labels [B, {h}] for heads {self.heads}; got "
                f"{tuple(request_id.shape)}, {tuple(scores.shape)} and {tuple(labels.shape)}"
            )
        self._requests.append(request_id.detach().to(torch.int64).cpu())
        self._scores.append(scores.detach().float().cpu())
        self._labels.append(labels.detach().float().cpu())

    def state(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(request_id [N], scores [N, H], labels [N, H])`` seen so far."""
        h = len(self.heads)
        if not self._scores:
            return torch.zeros(0, dtype=torch.int64), torch.zeros(0, h), torch.zeros(0, h)
        return torch.cat(self._requests), torch.cat(self._scores), torch.cat(self._labels)

    @classmethod
    def from_states(cls, heads: list[str], states, k: int = 3, negative_heads: list[str] | None = None,
                    weights: list[float] | None = None) -> "HitAtK":
        """Joins the :meth:`state` of several ranks (or batches) into one accumulator."""
        merged = cls(heads, k, negative_heads, weights)
        for request_id, scores, labels in states:
            merged.update(request_id, scores, labels)
        return merged

    def compute(self) -> dict[str, dict]:
        """Per head: ``hit@K`` (NaN without positives), ``positives`` and ``requests`` (with a
        positive), and with weights ``combined_hit@K``: HIT@K of the head's positives when every
        request is ranked once by the utility (highest first; for a negative head lower is better)."""
        request_id, scores, labels = self.state()
        request_id, scores, labels = request_id.numpy(), scores.numpy(), labels.numpy()
        combined = utility(scores, self.weights) if self.weights is not None else None  # [N]
        results = {}
        for h, head in enumerate(self.heads):
            value, positives, requests = hit_at_k(request_id, scores[:, h], labels[:, h], self.k,
                                                  negative=head in self.negative_heads)
            results[head] = {self.name: value, "positives": positives, "requests": requests}
            if combined is not None:
                results[head][self.combined_name] = hit_at_k(request_id, combined, labels[:, h], self.k)[0]
        return results
