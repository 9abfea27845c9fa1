"""User Interest Center (UIC): the service that keeps every user's MIMN state up to date.

The UIC applies each behaviour event to its user's fixed-size :class:`recsys.modules.mimn.MIMNState`
as it arrives (MIMN, Pi et al., KDD 2019, §3), so ranking only reads a state and its cost does not
grow with the user's history. Floors, in reading order:

- ``events.py``: :class:`BehaviorEvent`, the wire format of one event, and its ordering key.
- ``store.py``: :class:`UserRecord` and the :class:`StateStore` interface every store implements
  (SQLite, the embedded default; Redis, the scale-out store).

Nothing here imports a server library at package import.
"""
