"""The Lua scripts run by EVALSHA: each one loaded once, run again after the server lost it, batched by hand."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError
from redis.typing import EncodableT, KeyT

from system.store import lua
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


class ScriptBatch:
    """Script calls sent in one pipeline (one round trip), each call still atomic on its own.

    redis-py's own pipeline support asks SCRIPT EXISTS on every execute, a second round trip; here a
    call the server reports as unknown (it never ran) is loaded and run again instead. The calls go on
    `lane` when one is given (a caller's dedicated connection), else on a connection from the pool.
    """

    def __init__(self, redis: Redis, *, lane: Lane | None = None) -> None:
        self._redis = redis
        self._lane = lane
        self._calls: list[_Call] = []

    def add(self, script: Script, *, keys: Sequence[KeyT], args: Sequence[EncodableT]) -> None:
        self._calls.append(_Call(script, keys, args))

    async def run(self) -> list[Any]:
        """One result per call, in order; a failed call's exception is returned in its place."""
        results = await self._execute(self._calls)
        lost = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if lost:
            for script in {self._calls[i].script.sha: self._calls[i].script for i in lost}.values():
                await script.load()
            for i, result in zip(lost, await self._execute([self._calls[i] for i in lost]), strict=True):
                results[i] = result
        return results

    async def _execute(self, calls: Sequence[_Call]) -> list[Any]:
        # The commands go straight onto the connection: redis-py's pipeline spends more on packing
        # arguments and bookkeeping than the webhook spends on everything else it does.
        packed = b"".join(pack_command(b"EVALSHA", c.script.sha, len(c.keys), *c.keys, *c.args) for c in calls)
        if self._lane is not None:
            return await exchange(self._lane.connection, packed, len(calls), timeout_s=self._lane.timeout_s)
        conn = await borrow_connection(self._redis)
        try:
            return await exchange(conn, packed, len(calls))
        finally:
            await self._redis.connection_pool.release(conn)


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
