"""The scale-out UIC store: every user's record in Redis, commits and snapshots as Lua scripts.

Keys of a namespace ``ns`` (the ``{ns}`` hash tag puts them in one Redis Cluster slot, so a
namespace's scripts are legal on a cluster too; scale out by giving each user partition its own
namespace and stream)::

    {ns}:rec:<user_id>             hash: state, last_timestamp, last_event_id, events_applied, model_version
    {ns}:users                     set of the user ids that have a record
    {ns}:counters                  hash: counter name -> total (HINCRBY)
    {ns}:snapshots                 sorted set: snapshot name, scored by creation order
    {ns}:snapseq                   the creation-order counter
    {ns}:snap:<name>:rec:<user_id> a snapshot's copy of a record
    {ns}:snap:<name>:users         a snapshot's user set

Why Lua scripts and not MULTI/EXEC: Redis runs a script to its end with no other command in between
(like MULTI/EXEC), and with AOF a script's writes are logged as one MULTI/EXEC block, which Redis
drops whole when a crash cut it short. But neither MULTI/EXEC nor a script rolls back when one of its
commands fails at run time (say ``HINCRBY`` on a key another program set to a string): the commands
before it stay applied. :data:`COMMIT` therefore checks everything that could fail (key types,
counter values) before its first write, so a commit that fails leaves nothing.

Snapshots are Lua scripts too (:data:`SNAPSHOT`, :data:`RESTORE`): one script ``COPY``s every record
key (listed by ``{ns}:users``, no ``SCAN``) under the snapshot's prefix, so a snapshot is a consistent
cut between commits: every batch is in it whole or not at all, with no pause protocol or versioned
pointer for readers to follow. The price: the server serves nothing else while it copies (time
linear in the records; ``benchmarks/mimn_uic_redis.py`` measures the rate) and needs memory for the
copy. Take snapshots at model roll-outs, not on a timer. Counters are ingest totals, not state: snapshots and restores leave them alone.
"""

from __future__ import annotations

import operator
from typing import Any, Iterable, Mapping, Sequence

from recsys.errors import DataError
from recsys.uic.redis_connection import RedisUnavailable, connect, translate_errors
from recsys.uic.store import SNAPSHOT_NAME, StateStore, UserRecord, check_snapshot_name, missing_snapshot

INT64 = (-(2**63), 2**63 - 1)
RECORD_FIELDS = ("state", "last_timestamp", "last_event_id", "events_applied", "model_version")

# KEYS: counters, users, record keys... ARGV: n_counters, (name, delta)*, (user_id, state, last_timestamp,
# last_event_id, events_applied, model_version)* in the order of the record keys.
COMMIT = """#!lua
local function wrong_type(key, want)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= want then
    return 'UICSTORE key ' .. key .. ' holds a ' .. t .. ', not a ' .. want
  end
end
local problem = wrong_type(KEYS[1], 'hash') or wrong_type(KEYS[2], 'set')
for j = 3, #KEYS do problem = problem or wrong_type(KEYS[j], 'hash') end
if problem then return redis.error_reply(problem) end
local n_counters = tonumber(ARGV[1])
for i = 1, n_counters do
  local name, delta = ARGV[2 * i], tonumber(ARGV[2 * i + 1])
  local current = redis.call('HGET', KEYS[1], name)
  if current then
    if not string.match(current, '^%-?%d+$') or #current > 16 then
      return redis.error_reply('UICSTORE counter ' .. name .. ' in ' .. KEYS[1] .. ' holds ' .. current .. ', not an integer below 10^15')
    end
    if math.abs(tonumber(current) + delta) >= 1e15 then
      return redis.error_reply('UICSTORE counter ' .. name .. ' in ' .. KEYS[1] .. ' would pass 10^15')
    end
  end
end
local base = 1 + 2 * n_counters
for j = 3, #KEYS do
  local a = base + 6 * (j - 3)
  redis.call('HSET', KEYS[j], 'state', ARGV[a + 2], 'last_timestamp', ARGV[a + 3], 'last_event_id', ARGV[a + 4],
             'events_applied', ARGV[a + 5], 'model_version', ARGV[a + 6])
  redis.call('SADD', KEYS[2], ARGV[a + 1])
end
for i = 1, n_counters do redis.call('HINCRBY', KEYS[1], ARGV[2 * i], ARGV[2 * i + 1]) end
return #KEYS - 2
"""

# KEYS: users, snapshot users, snapshots, snapseq. ARGV: record prefix, snapshot record prefix, name.
SNAPSHOT = """#!lua
local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'none' and t ~= 'set' then return redis.error_reply('UICSTORE key ' .. KEYS[1] .. ' holds a ' .. t .. ', not a set') end
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do redis.call('DEL', ARGV[2] .. id) end
redis.call('DEL', KEYS[2])
local ids = redis.call('SMEMBERS', KEYS[1])
for _, id in ipairs(ids) do redis.call('COPY', ARGV[1] .. id, ARGV[2] .. id) end
if #ids > 0 then redis.call('COPY', KEYS[1], KEYS[2]) end
redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[4]), ARGV[3])
return #ids
"""

# KEYS: users, snapshot users, snapshots. ARGV: record prefix, snapshot record prefix, name.
RESTORE = """#!lua
if not redis.call('ZSCORE', KEYS[3], ARGV[3]) then return redis.error_reply('UICSTORE no snapshot') end
local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'none' and t ~= 'set' then return redis.error_reply('UICSTORE key ' .. KEYS[1] .. ' holds a ' .. t .. ', not a set') end
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do redis.call('DEL', ARGV[1] .. id) end
redis.call('DEL', KEYS[1])
local ids = redis.call('SMEMBERS', KEYS[2])
for _, id in ipairs(ids) do redis.call('COPY', ARGV[2] .. id, ARGV[1] .. id) end
if #ids > 0 then redis.call('COPY', KEYS[2], KEYS[1]) end
return #ids
"""

# KEYS: snapshot users, snapshots. ARGV: snapshot record prefix, name.
DROP = """#!lua
if not redis.call('ZSCORE', KEYS[2], ARGV[2]) then return redis.error_reply('UICSTORE no snapshot') end
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do redis.call('DEL', ARGV[1] .. id) end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"""


class RedisStateStore(StateStore):
    """The UIC's records in Redis (see the module docstring for the keys and the atomicity argument).

    Args:
        url_or_client: ``redis://host:port/db`` (``rediss://``, ``unix://`` too) or a ``redis.Redis``
            client made with ``decode_responses=False``. A URL's client is closed by :meth:`close`.
        namespace: prefix of every key (letters, digits, ``._-``); stores of different namespaces on one
            server share nothing.

    Example::

        with RedisStateStore("redis://127.0.0.1:6390/0", "uic") as store:
            store.commit([record], {"applied": 1})
            store.read([record.user_id])
    """

    def __init__(self, url_or_client: Any, namespace: str = "uic"):
        if not SNAPSHOT_NAME.match(namespace):
            raise DataError(f"namespace {namespace!r} must be 1-128 letters, digits or ._- (e.g. 'uic' or 'uic.p0')")
        self.client, self.address, self._owned = connect(url_or_client)
        if self.client.connection_pool.connection_kwargs.get("decode_responses"):
            raise RedisUnavailable("RedisStateStore needs a client made with decode_responses=False (states are bytes)")
        self.namespace = namespace
        self._prefix = "{" + namespace + "}"
        self._scripts = {name: self.client.register_script(body) for name, body in
                         (("commit", COMMIT), ("snapshot", SNAPSHOT), ("restore", RESTORE), ("drop", DROP))}

    def __repr__(self) -> str:
        return f"RedisStateStore({self.address!r}, namespace={self.namespace!r})"

    # -- keys -------------------------------------------------------------------------------------
    def record_key(self, user_id: int) -> str:
        return f"{self._prefix}:rec:{user_id}"

    def _key(self, name: str) -> str:
        return f"{self._prefix}:{name}"

    def _snapshot_keys(self, name: str) -> tuple[str, str]:
        """(the snapshot's user-set key, its record-key prefix)."""
        check_snapshot_name(name)
        return self._key(f"snap:{name}:users"), self._key(f"snap:{name}:rec:")

    # -- StateStore -------------------------------------------------------------------------------
    def read(self, user_ids: Sequence[int]) -> dict[int, UserRecord]:
        """Records of ``user_ids`` that exist, read in one MULTI/EXEC (a consistent cut between commits)."""
        ids = [_check_int("user_id", u) for u in dict.fromkeys(user_ids)]
        if not ids:
            return {}
        with translate_errors(self.address):
            pipe = self.client.pipeline(transaction=True)
            for user_id in ids:
                pipe.hgetall(self.record_key(user_id))
            replies = pipe.execute()
        return {u: self._parse(u, fields) for u, fields in zip(ids, replies) if fields}

    def commit(self, records: Iterable[UserRecord], counters: Mapping[str, int] | None = None) -> None:
        """Writes ``records`` and adds ``counters`` in one script: all of it is visible, or none (see module)."""
        records = list(records)
        counters = dict(counters or {})
        keys, args = self._commit_arguments(records, counters)
        if len(keys) == 2 and not counters:
            return
        self._run("commit", keys, args)

    def counters(self) -> dict[str, int]:
        with translate_errors(self.address):
            totals = self.client.hgetall(self._key("counters"))
        return {name.decode(): int(value) for name, value in totals.items()}

    def count(self) -> int:
        """Users with a record."""
        with translate_errors(self.address):
            return int(self.client.scard(self._key("users")))

    def snapshot(self, name: str) -> None:
        users, prefix = self._snapshot_keys(name)
        keys = [self._key("users"), users, self._key("snapshots"), self._key("snapseq")]
        self._run("snapshot", keys, [self._key("rec:"), prefix, name])

    def snapshots(self) -> list[str]:
        with translate_errors(self.address):
            return [n.decode() for n in self.client.zrange(self._key("snapshots"), 0, -1)]

    def restore(self, name: str) -> None:
        users, prefix = self._snapshot_keys(name)
        self._run("restore", [self._key("users"), users, self._key("snapshots")], [self._key("rec:"), prefix, name], name)

    def drop_snapshot(self, name: str) -> None:
        users, prefix = self._snapshot_keys(name)
        self._run("drop", [users, self._key("snapshots")], [prefix, name], name)

    def close(self) -> None:
        if self._owned:
            self.client.close()

    # -- helpers ----------------------------------------------------------------------------------
    def _commit_arguments(self, records: list[UserRecord], counters: dict[str, int]) -> tuple[list, list]:
        """Checks every value before anything is sent; the script's KEYS and ARGV."""
        args: list[Any] = [len(counters)]
        for name, delta in counters.items():
            if not isinstance(name, str) or not name:
                raise DataError(f"counter names must be non-empty strings, got {name!r}")
            args += [name, _check_int(f"counters[{name!r}]", delta)]
        keys = [self._key("counters"), self._key("users")]
        seen: set[int] = set()
        for i, record in enumerate(records):
            if not isinstance(record, UserRecord):
                raise DataError(f"records[{i}] must be a UserRecord, got {type(record).__name__}")
            user_id = _check_int(f"records[{i}].user_id", record.user_id)
            if user_id in seen:
                raise DataError(f"records[{i}].user_id {user_id} appears twice in one commit; commit one record per user")
            seen.add(user_id)
            if not isinstance(record.state, (bytes, bytearray, memoryview)):
                raise DataError(f"records[{i}].state must be bytes, got {type(record.state).__name__}")
            if not isinstance(record.model_version, str):
                raise DataError(f"records[{i}].model_version must be a string, got {record.model_version!r}")
            keys.append(self.record_key(user_id))
            args += [user_id, bytes(record.state),
                     _check_int(f"records[{i}].last_timestamp", record.last_timestamp),
                     _check_int(f"records[{i}].last_event_id", record.last_event_id),
                     _check_int(f"records[{i}].events_applied", record.events_applied),
                     record.model_version]
        return keys, args

    def _run(self, script: str, keys: list, args: list, snapshot: str | None = None):
        redis = __import__("redis")
        with translate_errors(self.address):
            try:
                return self._scripts[script](keys=keys, args=args)
            except redis.exceptions.ResponseError as error:
                message = str(error)
                if "UICSTORE no snapshot" in message:
                    raise missing_snapshot(snapshot, f"namespace {self.namespace!r} at {self.address}",
                                           self.snapshots()) from None
                if "UICSTORE" in message:
                    raise DataError(f"Redis at {self.address}: {message.split('UICSTORE ', 1)[1].split(' script:')[0]}; "
                                    f"another program writes under namespace {self.namespace!r}: give the store "
                                    "its own namespace. Nothing was written.") from None
                raise RedisUnavailable(f"Redis at {self.address} refused the {script} ({message}); nothing was written") from error

    def _parse(self, user_id: int, fields: dict) -> UserRecord:
        values = {k.decode(): v for k, v in fields.items()}
        missing = [f for f in RECORD_FIELDS if f not in values]
        if missing:
            raise DataError(f"Redis key {self.record_key(user_id)} at {self.address} lacks fields {missing}; "
                            f"it was not written by RedisStateStore: give the store its own namespace")
        return UserRecord(
            user_id=user_id,
            state=bytes(values["state"]),
            last_timestamp=int(values["last_timestamp"]),
            last_event_id=int(values["last_event_id"]),
            events_applied=int(values["events_applied"]),
            model_version=values["model_version"].decode(),
        )


def _check_int(name: str, value: Any) -> int:
    """``value`` as an int (Python or NumPy integers), or a DataError naming ``name``."""
    try:
        number = operator.index(value) if not isinstance(value, bool) else None
    except TypeError:
        number = None
    if number is None or not INT64[0] <= number <= INT64[1]:
        raise DataError(f"{name} must be a 64-bit integer, got {value!r}")
    return number
