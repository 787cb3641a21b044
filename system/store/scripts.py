"""The Lua scripts run by EVALSHA: each one loaded once, run again after the server lost it, batched by hand."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError
from redis.typing import EncodableT, KeyT

from system.store import lua
from system.store.cluster import as_cluster, exchange_by_node, is_cluster, must_rerun
from system.store.resp import Lane, borrow_connection, exchange, pack_command


class Script:
    """One Lua script, run by EVALSHA; loaded again when the server has lost it (restart, failover)."""

    def __init__(self, redis: Redis, source: str) -> None:
        self._redis = redis
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def load(self) -> None:
        await self._redis.script_load(self.source)

    async def __call__(self, *, keys: Sequence[KeyT], args: Sequence[EncodableT]) -> Any:
        try:
            return await self._redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.load()
            return await self._redis.evalsha(self.sha, len(keys), *keys, *args)


@dataclass(frozen=True, slots=True)
class _Call:
    script: Script
    keys: Sequence[KeyT]
    args: Sequence[EncodableT]


class ReplicaWaitTimeout(RedisError):
    """Fewer replicas than asked acknowledged the writes in time: they may be lost in a failover.

    A RedisError, so the webhook answers it as it answers Redis being down: 503, and the sender retries (the
    retry is recognised by its message id and accepted once).
    """


class ScriptBatch:
    """Script calls sent in one pipeline (one round trip per node), each call still atomic on its own.

    redis-py's own pipeline support asks SCRIPT EXISTS on every execute, a second round trip; here a
    call the server reports as unknown (it never ran) is loaded and run again instead. The calls go on
    `lane` when one is given (a caller's dedicated connection), else on a connection from the pool; on a
    cluster, on a connection to the node that owns each call's slot. With `wait_replicas`, the round trip
    ends with WAIT on the same connection, and ReplicaWaitTimeout says the replicas did not all confirm.
    """

    def __init__(
        self, redis: Redis, *, lane: Lane | None = None, wait_replicas: int = 0, wait_timeout_ms: int = 0
    ) -> None:
        self._redis = redis
        self._lane = lane
        self._calls: list[_Call] = []
        self._wait = pack_command(b"WAIT", wait_replicas, wait_timeout_ms) if wait_replicas > 0 else b""
        self._wait_replicas = wait_replicas

    def add(self, script: Script, *, keys: Sequence[KeyT], args: Sequence[EncodableT]) -> None:
        self._calls.append(_Call(script, keys, args))

    async def run(self) -> list[Any]:
        """One result per call, in order; a failed call's exception is returned in its place."""
        results = await self._execute(self._calls)
        if is_cluster(self._redis) and any(must_rerun(r) for r in results):
            # A failover or a resharding moved a slot: read the new slot map and send those calls once more.
            await as_cluster(self._redis).nodes_manager.initialize()
            await self._rerun(results, [i for i, r in enumerate(results) if must_rerun(r)])
        lost = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if lost:
            for script in {self._calls[i].script.sha: self._calls[i].script for i in lost}.values():
                await script.load()
            await self._rerun(results, lost)
        return results

    async def _rerun(self, results: list[Any], indices: list[int]) -> None:
        for i, result in zip(indices, await self._execute([self._calls[i] for i in indices]), strict=True):
            results[i] = result

    async def _execute(self, calls: Sequence[_Call]) -> list[Any]:
        # The commands go straight onto the connection: redis-py's pipeline spends more on packing
        # arguments and bookkeeping than the webhook spends on everything else it does.
        packed = [pack_command(b"EVALSHA", c.script.sha, len(c.keys), *c.keys, *c.args) for c in calls]
        if is_cluster(self._redis):
            routed = [(_routing_key(c.keys[0]), command) for c, command in zip(calls, packed, strict=True)]
            results, waited = await exchange_by_node(self._redis, routed, trailer=self._wait)
            # A WAIT answered with an error comes from a node that failed (its calls failed with it) or that is a
            # replica now (its calls came back MOVED; WAIT refuses to run on a replica): in a failover. `run` reads
            # the slot map again and sends those calls again, WAIT included. Raising here would skip that, and
            # every later webhook would go to the dead or demoted node again.
            stale = any(must_rerun(r) for r in results)
            self._check_wait([reply for reply in waited if not (stale and isinstance(reply, BaseException))])
            return results
        replies = len(calls) + (1 if self._wait else 0)
        if self._lane is not None and self._lane.connection is not None:
            results = await exchange(
                self._lane.connection, b"".join(packed) + self._wait, replies, timeout_s=self._lane.timeout_s
            )
        else:
            conn = await borrow_connection(self._redis)
            try:
                results = await exchange(conn, b"".join(packed) + self._wait, replies)
            finally:
                await self._redis.connection_pool.release(conn)
        if self._wait:
            self._check_wait([results.pop()])
        return results

    def _check_wait(self, replies: list[Any]) -> None:
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
            if int(reply) < self._wait_replicas:
                raise ReplicaWaitTimeout(f"{reply} of {self._wait_replicas} replicas confirmed the writes in time")


def _routing_key(key: KeyT) -> str:
    return key.decode() if isinstance(key, bytes) else str(key)


@dataclass(frozen=True, slots=True)
class Scripts:
    """The system's scripts bound to one client."""

    claim: Script
    hold: Script
    ack: Script
    retry: Script
    dead_letter: Script
    promote: Script
    replay: Script
    status: Script

    @classmethod
    def register(cls, redis: Redis) -> Scripts:
        return cls(
            claim=Script(redis, lua.CLAIM),
            hold=Script(redis, lua.HOLD),
            ack=Script(redis, lua.ACK),
            retry=Script(redis, lua.RETRY),
            dead_letter=Script(redis, lua.DEAD_LETTER),
            promote=Script(redis, lua.PROMOTE),
            replay=Script(redis, lua.REPLAY),
            status=Script(redis, lua.STATUS),
        )

    async def load(self) -> None:
        """Load every script up front, so the first requests need no extra round trip."""
        for script in (
            self.claim,
            self.hold,
            self.ack,
            self.retry,
            self.dead_letter,
            self.promote,
            self.replay,
            self.status,
        ):
            await script.load()
