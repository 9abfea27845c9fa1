"""User Interest Center (UIC): the service that keeps every user's MIMN state up to date.

The UIC applies each behaviour event to its user's fixed-size :class:`recsys.modules.mimn.MIMNState`
as it arrives (MIMN, Pi et al., KDD 2019, §3), so ranking only reads a state and its cost does not
grow with the user's history. Floors, in reading order:

- ``events.py``: :class:`BehaviorEvent`, the wire format of one event, and its ordering key.
- ``store.py``: :class:`UserRecord` and the :class:`StateStore` interface every store implements
  (SQLite, the embedded default; Redis, the scale-out store).
- ``state_codec.py``: one user's state <-> bytes (fixed float32 little-endian layout).
- ``center.py``: :class:`UserInterestCenter`, which applies event batches (batched across users)
  and commits them in one store write; ``event_log.py``: an EventLog as events (warm-up, replay).
- ``sqlite_store.py``: the embedded store; ``snapshots.py``: daily snapshots and rollback.
- ``redis_connection.py``, ``redis_store.py`` (the scale-out store), ``redis_stream.py`` (events from a
  Redis stream, consumer group, at least once); ``stream_ingest.py``: the thread that feeds a stream's
  events to the center beside the HTTP service.
- ``http_service.py``: the FastAPI app; ``cli.py``: ``recsys uic serve|warmup|snapshot|rollback``
  (``--store sqlite:PATH | redis://...``, ``--source redis://...``).

Nothing here imports a server library at package import.
"""
