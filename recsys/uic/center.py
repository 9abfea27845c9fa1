"""The User Interest Center: applies batches of behaviour events to the users' MIMN states.

One :meth:`UserInterestCenter.apply` call (MIMN, Pi et al., KDD 2019, §3: the UIC updates a user's
state on each behaviour event, so ranking only reads it)::

    events of the batch --group by user--> store.read(users)              one read
      per user: drop key == last applied (duplicate), key < last (late)   the rule of events.py
                sort the rest by order_key; consume unengaged ones        (skipped, see below)
    E = model.event_embeddings(all items, all actions)                    one table lookup   [N, D]
    step t = 0..T-1: every user with a t-th event steps through MIMN.update, batched across users
    store.commit(records, counters)                                       one atomic write

Users are stepped longest-sequence first, so step t updates the prefix of the ``n_t`` users that
still have events (rows that are done leave the batch instead of being masked): the same result
as ``update`` over all rows with the others masked, without computing them.

Choices:

- Unengaged events (``actions == 0``, an impression without action) advance the user's last key
  but not the state: the training sequences of the behaviour-sequence models hold engaged events
  only (``recsys/data/examples.py``), so the served state sees what training saw.
  ``apply_unengaged=True`` applies them too.
- A record written by another model version is *rebuilt*: with a ``history`` (a callable
  ``user_id -> that user's logged events``, e.g. :class:`~recsys.uic.event_log.EventLogHistory`)
  the user's logged events up to the record's last key are replayed through the new model before
  the batch's; without one the state restarts from ``init_state`` and keeps its last key (events
  at or before it are still not applied again): the state then holds only the events from now on,
  and ``recsys uic warmup`` with the new checkpoint replays the log.

Shape letters: N events applied, U users of a batch, D embedding dim, H heads.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from recsys.errors import DataError
from recsys.modules.mimn import MIMNState
from recsys.uic.events import BehaviorEvent
from recsys.uic.state_codec import StateCodec
from recsys.uic.store import StateStore, UserRecord

MAX_ID = 2**63 - 1  # stores keep ids and keys as signed 64-bit integers
History = Callable[[int], Sequence[BehaviorEvent]]


@dataclass(frozen=True)
class ApplyResult:
    """What one :meth:`UserInterestCenter.apply` did.

    Args:
        applied: events of the batch that stepped a state.
        duplicates: events whose key equals the last applied one (redeliveries), not applied.
        late: events older than the last applied one, not applied.
        skipped: unengaged events consumed without stepping the state (``apply_unengaged=False``).
        rebuilt: users whose record came from another model version.
        replayed: history events replayed to rebuild those users.
    """

    applied: int = 0
    duplicates: int = 0
    late: int = 0
    skipped: int = 0
    rebuilt: int = 0
    replayed: int = 0

    def counters(self) -> dict[str, int]:
        """The non-zero counts (what a store's counters add)."""
        return {name: value for name, value in asdict(self).items() if value}

    def __add__(self, other: "ApplyResult") -> "ApplyResult":
        return ApplyResult(**{name: value + getattr(other, name) for name, value in asdict(self).items()})


def model_version_of(model: torch.nn.Module) -> str:
    """A short version id of ``model``'s weights: sha256 over its state_dict (names, shapes, bytes), 16 hex."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16]


def _order_key(event: BehaviorEvent) -> tuple[int, int]:
    return event.order_key


@dataclass
class _UserPlan:
    """One user's part of a batch: where the state starts and which events step it."""

    user_id: int
    record: UserRecord | None
    rebuilt: bool
    steps: list[BehaviorEvent]  # events that step the state, in key order (replayed history first)
    last_key: tuple[int, int] | None
    consumed: int  # batch events accepted (applied or skipped)


class UserInterestCenter:
    """Keeps every user's MIMN state in a :class:`StateStore`, one event batch at a time.

    Args:
        model: a :class:`~recsys.models.mimn.MIMNRanker` (eval mode; used under ``torch.no_grad``).
        store: where the records live.
        model_version: the version written into every record (:func:`model_version_of`).
        history: ``user_id -> the user's logged events`` to rebuild states of another model
            version by replay; None = restart them from ``init_state``.
        apply_unengaged: step the state on events without actions too (default: consume them).

    Example::

        center = UserInterestCenter(model, SQLiteStateStore("uic.sqlite"), model_version_of(model))
        center.apply([BehaviorEvent(user_id=7, item_id=3, timestamp=100, event_id=0, actions=1)])
        logits = center.score([7], torch.tensor([12]), dense_features)   # [1, H]
    """

    def __init__(self, model: torch.nn.Module, store: StateStore, model_version: str,
                 history: History | None = None, apply_unengaged: bool = False):
        self.model = model.eval()
        self.codec = StateCodec.of(model)
        self.store = store
        self.model_version = str(model_version)
        self.history = history
        self.apply_unengaged = apply_unengaged
        self.num_items = int(model.spec.num_items)
        self.num_actions = int(model.spec.num_actions)
        self._lock = threading.Lock()  # apply is read-modify-write: one batch at a time

    # ------------------------------------------------------------------ ingest
    def apply(self, events: Sequence[BehaviorEvent]) -> ApplyResult:
        """Applies a batch of events (any users, any order) and commits it; returns the counts.

        The batch is validated first (a :class:`DataError` naming ``events[i].field`` applies
        nothing); the store holds every record of the batch, or none, when this returns.
        """
        self.validate(events)
        if not events:
            return ApplyResult()
        by_user: dict[int, list[BehaviorEvent]] = {}
        for event in events:
            by_user.setdefault(event.user_id, []).append(event)
        with self._lock, torch.no_grad():
            records = self.store.read(list(by_user))
            plans, counts = self._plan(by_user, records)
            states = self._step(plans)
            blobs = self.codec.encode(states) if plans else []
            new_records = [self._record(plan, blob) for plan, blob in zip(plans, blobs)]
            result = ApplyResult(**counts)
            self.store.commit(new_records, {**result.counters(), "batches": 1})
        return result

    def validate(self, events: Sequence[BehaviorEvent]) -> None:
        """DataError naming ``events[i].field`` for an id the model or the store cannot take."""
        limit = 1 << self.num_actions
        for i, event in enumerate(events):
            if not isinstance(event, BehaviorEvent):
                raise DataError(f"events[{i}] must be a BehaviorEvent, got {type(event).__name__}")
            if not 0 <= event.item_id < self.num_items:
                raise DataError(f"events[{i}].item_id={event.item_id} is outside the model's items 0..{self.num_items - 1}")
            if not 0 <= event.actions < limit:
                raise DataError(f"events[{i}].actions={event.actions} has bits beyond the model's {self.num_actions} actions "
                                f"(at most {limit - 1})")
            for name in ("user_id", "timestamp", "event_id"):
                if not 0 <= getattr(event, name) <= MAX_ID:
                    raise DataError(f"events[{i}].{name}={getattr(event, name)} must lie in 0..2**63-1")

    def _plan(self, by_user: dict[int, list[BehaviorEvent]], records: dict[int, UserRecord]):
        """Per user: the idempotence rule, the rebuild and the events that step the state."""
        counts = dict(applied=0, duplicates=0, late=0, skipped=0, rebuilt=0, replayed=0)
        plans = []
        for user_id, user_events in by_user.items():
            record = records.get(user_id)
            rebuilt = record is not None and record.model_version != self.model_version
            last = record.last_key if record is not None else None
            steps: list[BehaviorEvent] = []
            if rebuilt:
                counts["rebuilt"] += 1
                replay = self._replay(user_id, last)
                counts["replayed"] += len(replay)
                steps.extend(replay)
            consumed = 0
            if len(user_events) > 1:
                user_events = sorted(user_events, key=_order_key)
            for event in user_events:
                key = event.order_key
                if last is not None and key <= last:
                    counts["duplicates" if key == last else "late"] += 1
                    continue
                last, consumed = key, consumed + 1
                if self.apply_unengaged or event.actions != 0:
                    steps.append(event)
                    counts["applied"] += 1
                else:
                    counts["skipped"] += 1
            if consumed or rebuilt:
                plans.append(_UserPlan(user_id, record, rebuilt, steps, last, consumed))
        return plans, counts

    def _replay(self, user_id: int, last: tuple[int, int]) -> list[BehaviorEvent]:
        """The user's logged events up to ``last`` that step a state (empty without a history)."""
        if self.history is None:
            return []
        logged = sorted(self.history(user_id), key=lambda e: e.order_key)
        self.validate(logged)
        return [e for e in logged if e.order_key <= last and (self.apply_unengaged or e.actions != 0)]

    def _step(self, plans: list[_UserPlan]) -> MIMNState:
        """Steps every plan's user through its events, batched across users; rows in ``plans`` order."""
        if not plans:
            return self.model.init_state(0)
        start = self._start_states(plans)  # [U] rows
        lengths = np.array([len(p.steps) for p in plans], dtype=np.int64)  # [U]
        order = np.argsort(-lengths, kind="stable")  # longest first: step t updates a prefix
        state = start.map(lambda t: t[torch.from_numpy(order)])
        flat = [e for i in order for e in plans[i].steps]  # events in user-major order
        if not flat:
            return start
        embeddings = self.model.event_embeddings(
            torch.tensor([e.item_id for e in flat], dtype=torch.int64),
            torch.tensor([e.actions for e in flat], dtype=torch.int64),
        )  # [N, D]
        sorted_lengths = lengths[order]  # [U] descending
        offsets = np.concatenate([[0], np.cumsum(sorted_lengths)])[:-1]  # [U] first event of each row
        done: list[MIMNState] = []  # rows that have no more events, from the last rows up
        active = int((sorted_lengths > 0).sum())
        if active < len(plans):
            done.append(state.map(lambda t: t[active:]))
        state = state.map(lambda t: t[:active])
        for step in range(int(sorted_lengths[0])):
            n = int((sorted_lengths > step).sum())  # users with a step-th event: rows 0..n-1
            if n < state.batch_size:
                done.append(state.map(lambda t: t[n:]))
                state = state.map(lambda t: t[:n])
            rows = torch.from_numpy(offsets[:n] + step)  # [n] flat index of each row's step-th event
            state = self.model.arch.update(state, embeddings[rows], torch.ones(n, dtype=torch.bool))
        done.append(state)
        stepped = MIMNState(**{name: torch.cat([getattr(s, name) for s in reversed(done)]) for name, _ in self.codec.shapes})
        inverse = torch.from_numpy(np.argsort(order, kind="stable"))
        return stepped.map(lambda t: t[inverse])  # back to plans order

    def _start_states(self, plans: list[_UserPlan]) -> MIMNState:
        """``[U]`` rows: the stored state, or ``init_state`` for new and rebuilt users."""
        init = self.model.init_state(len(plans)).map(lambda t: t.contiguous().clone())
        stored = [i for i, p in enumerate(plans) if p.record is not None and not p.rebuilt]
        if not stored:
            return init
        decoded = self.codec.decode([plans[i].record.state for i in stored])
        index = torch.tensor(stored, dtype=torch.int64)
        for name, _ in self.codec.shapes:
            getattr(init, name)[index] = getattr(decoded, name)
        return init

    def _record(self, plan: _UserPlan, blob: bytes) -> UserRecord:
        previous = plan.record.events_applied if plan.record is not None and not plan.rebuilt else 0
        last = plan.last_key if plan.last_key is not None else (0, 0)
        return UserRecord(
            user_id=plan.user_id, state=blob, last_timestamp=last[0], last_event_id=last[1],
            events_applied=previous + len(plan.steps), model_version=self.model_version,
        )

    # ------------------------------------------------------------------ read
    def states(self, user_ids: Sequence[int]) -> MIMNState:
        """``[B]`` rows of the users' states; ``init_state`` for unknown users (and records of another model version)."""
        return self.states_and_records(user_ids)[0]

    def states_and_records(self, user_ids: Sequence[int]) -> tuple[MIMNState, dict[int, UserRecord]]:
        """The states of :meth:`states` and the current-version records they came from."""
        user_ids = [int(u) for u in user_ids]
        records = {u: r for u, r in self.store.read(user_ids).items() if r.model_version == self.model_version}
        plans = [_UserPlan(u, records.get(u), False, [], None, 0) for u in user_ids]
        if not plans:
            return self.model.init_state(0), records
        return self._start_states(plans), records

    def score(self, user_ids: Sequence[int], candidate_items: torch.Tensor,
              dense_features: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, H]`` logits of candidate ``candidate_items [B]`` for ``user_ids [B]`` from their stored states."""
        with torch.no_grad():
            return self.model.score(self.states(user_ids), candidate_items, dense_features)
