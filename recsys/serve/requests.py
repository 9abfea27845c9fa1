"""Request validation: a JSON body -> a typed request, or a :class:`RequestError` naming the field.

::

    POST /rank      {"user_id": 3, "candidates": [8, 40, 7], "request_time": 1700000000,
                     "context": {"surface": "home"}}
    POST /retrieve  {"user_id": 3, "k": 10, "request_time": 1700000000, "exclude_seen": "none"}

``request_time`` (seconds since the epoch, UTC) defaults to the server's clock; every feature is
cut strictly before it. ``context.surface`` is a name of the run's surface vocabulary or its id
(default: the first surface). Unknown users are :class:`~recsys.serve.features.UnknownUser` (404),
everything else wrong is a :class:`RequestError` (422; 400 for a body that is not JSON).
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from recsys.data.features import FeatureSpec
from recsys.errors import DataError
from recsys.serve.features import RankingRequest
from recsys.serve.retriever import EXCLUDE_SEEN, RetrievalRequest


class RequestError(DataError):
    """A request field is wrong (HTTP 422, or 400 with ``status=400``); the message names it."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def parse_json(body: bytes) -> dict:
    """The body as a JSON object; :class:`RequestError` (400) otherwise."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise RequestError(f"the body is not JSON: {error}", status=400) from None
    if not isinstance(payload, dict):
        raise RequestError(f"the body must be a JSON object, got {type(payload).__name__}", status=400)
    return payload


def parse_rank(payload: dict, spec: FeatureSpec, max_candidates: int) -> RankingRequest:
    """``POST /rank``'s body -> :class:`RankingRequest`."""
    _known_fields(payload, {"user_id", "candidates", "request_time", "context"})
    user = _int(payload, "user_id", 0, 2**62)  # unknown users are 404s (FeatureStore.check_user)
    candidates = payload.get("candidates")
    if not isinstance(candidates, list):
        raise RequestError(f"candidates must be a list of item ids, got {_name(candidates)}")
    if not 1 <= len(candidates) <= max_candidates:
        raise RequestError(f"candidates holds {len(candidates)} items; send 1..{max_candidates} per request "
                           "(--max-candidates)")
    for i, item in enumerate(candidates):
        if isinstance(item, bool) or not isinstance(item, int):
            raise RequestError(f"candidates[{i}] must be an integer item id, got {item!r}")
        if not 0 <= item < spec.num_items:
            raise RequestError(f"candidates[{i}]={item} is not an item of the model (ids 0..{spec.num_items - 1})")
    context = payload.get("context", {})
    if not isinstance(context, dict):
        raise RequestError(f"context must be an object, got {_name(context)}")
    _known_fields(context, {"surface"}, where="context")
    return RankingRequest(user, np.asarray(candidates, np.int64), _request_time(payload),
                          _surface(context.get("surface"), spec.surface_vocab))


def parse_retrieve(payload: dict, spec: FeatureSpec, max_k: int) -> RetrievalRequest:
    """``POST /retrieve``'s body -> :class:`RetrievalRequest`."""
    _known_fields(payload, {"user_id", "k", "request_time", "exclude_seen"})
    user = _int(payload, "user_id", 0, 2**62)  # unknown users are 404s (FeatureStore.check_user)
    k = _int(payload, "k", 1, min(max_k, spec.num_items))
    exclude = payload.get("exclude_seen", "none")
    if exclude not in EXCLUDE_SEEN:
        raise RequestError(f"exclude_seen must be one of {list(EXCLUDE_SEEN)}, got {exclude!r}")
    return RetrievalRequest(user, k, _request_time(payload), exclude)


def _known_fields(payload: dict, known: set[str], where: str = "the body") -> None:
    extra = sorted(set(payload) - known)
    if extra:
        raise RequestError(f"{where} has unknown fields {extra}; known: {sorted(known)}")


def _int(payload: dict, field: str, lo: int, hi: int) -> int:
    if field not in payload:
        raise RequestError(f"{field} is missing")
    value = payload[field]
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{field} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise RequestError(f"{field}={value} is outside {lo}..{hi}")
    return value


def _request_time(payload: dict) -> int:
    if payload.get("request_time") is None:
        return int(time.time())
    return _int(payload, "request_time", 0, 2**62)


def _surface(value: Any, vocab: tuple[str, ...]) -> int:
    if value is None:
        return 0
    if isinstance(value, str) and value in vocab:
        return vocab.index(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(vocab):
        return value
    raise RequestError(f"context.surface must be one of {list(vocab)} or an id 0..{len(vocab) - 1}, got {value!r}")


def _name(value: Any) -> str:
    return type(value).__name__
