"""Which Redis database a test tool may flush: a loopback one that is empty or that a tool of ours marked.

Every tool that flushes a database — the tests, the QA suite, `aiadmin simulate`, the benchmarks and the load
runner — claims it here first, from its own option or variable (never `REDIS_URL`, the production one). A claim

1. refuses a non-loopback host or database 0 unless forced (`--force`);
2. refuses a database that holds keys but no marker unless flushing was asked for explicitly (`--flush`): those
   keys were written by some other program;
3. flushes the database and writes the marker (`MARKER_KEY`, holding the owner's name), which a tool writes
   again after every flush of its own (`mark`), so that the next run knows the database for ours.

The check and the flush are two commands, not one atomic step: the guard is against a wrong target, not
against a program writing into our database at the same moment.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, cast

from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.cluster import RedisCluster as SyncRedisCluster
from redis.connection import parse_url
from redis.exceptions import RedisError

MARKER_KEY = "aiadmin:test-target"  # no TTL: it marks the database for as long as the database holds our keys
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})
CONNECT_TIMEOUT_S = 5.0


class TargetRefused(Exception):
    """Permanent: the URL or the database's contents say the database is not ours to flush."""


class TargetUnreachable(Exception):
    """Retryable: the Redis server did not answer."""


@dataclass(frozen=True, slots=True)
class Target:
    """A test tool's Redis database, as its owner names it in messages."""

    url: str
    db: int
    host: str  # the socket's path for a unix:// URL
    owner: str  # the tool, e.g. "aiadmin simulate"; stored in the marker
    flush_option: str = "--flush"  # how the user asks this tool to flush a database it did not write
    force_option: str = "--force"  # how the user lets this tool use db 0 or a remote host
    cluster: bool = False  # a Redis Cluster (database 0 only): claimed on every master


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_target(
    url: str,
    *,
    owner: str,
    force: bool,
    flush_option: str = "--flush",
    force_option: str = "--force",
    cluster: bool = False,
) -> Target:
    """The target `url` names; TargetRefused for a malformed URL, and for db 0 or a remote host unless forced.

    A cluster has database 0 only, so for a `cluster` the loopback rule and the marker are the whole guard: it is
    a throwaway cluster of the run's own (`.ci/redis-cluster`), claimed only when empty or marked by our tools.
    """
    try:
        parts: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise TargetRefused(f"{owner}: Redis URL {_shown(url)!r}: {exc}") from exc
    db = int(parts.get("db", 0) or 0)
    local_socket = "path" in parts
    host = str(parts["path"] if local_socket else parts.get("host", "localhost"))
    if cluster and db != 0:
        raise TargetRefused(f"{owner}: a Redis Cluster has database 0 only (got {db} in {_shown(url)})")
    if not force and db == 0 and not cluster:
        raise TargetRefused(
            f"{owner} flushes its Redis database: refusing database 0 of {_shown(url)} without {force_option}"
        )
    if not force and not local_socket and not is_loopback(host):
        raise TargetRefused(
            f"{owner} flushes its Redis database: refusing the non-loopback host {host!r} without {force_option}"
        )
    return Target(
        url=url, db=db, host=host, owner=owner, flush_option=flush_option, force_option=force_option, cluster=cluster
    )


def check_contents(target: Target, *, keys: int, marker: bytes | str | None, flush: bool) -> None:
    """TargetRefused when the database holds keys no tool of ours wrote and flushing was not asked for."""
    if keys == 0 or marker is not None or flush:
        return
    raise TargetRefused(
        f"{target.owner}: Redis database {target.db} at {_shown(target.url)} holds {keys} key(s) that no aiadmin "
        f"test tool wrote (no {MARKER_KEY} key); refusing to flush it. Point the tool at another database, or pass "
        f"{target.flush_option} to flush it anyway."
    )


async def claim(redis: Redis, target: Target, *, flush: bool) -> None:
    """Check the database's contents, then flush it and mark it as `target.owner`'s."""
    try:
        marker = await redis.get(MARKER_KEY)
        keys = int(await redis.dbsize(**_every_master(target)))
        check_contents(target, keys=keys, marker=marker, flush=flush)
        await redis.flushdb()
        await mark(redis, target)
    except (RedisError, OSError) as exc:
        raise TargetUnreachable(f"{target.owner}: Redis at {_shown(target.url)}: {exc}") from exc


async def mark(redis: Redis, target: Target) -> None:
    """Mark the database as a test tool's (after any flush of the tool's own)."""
    await redis.set(MARKER_KEY, target.owner)


def claim_sync(redis: SyncRedis, target: Target, *, flush: bool) -> None:
    """`claim` for a synchronous client."""
    try:
        marker = redis.get(MARKER_KEY)
        keys = int(redis.dbsize(**_every_master(target)))
        check_contents(target, keys=keys, marker=marker, flush=flush)
        redis.flushdb()
        mark_sync(redis, target)
    except (RedisError, OSError) as exc:
        raise TargetUnreachable(f"{target.owner}: Redis at {_shown(target.url)}: {exc}") from exc


def mark_sync(redis: SyncRedis, target: Target) -> None:
    redis.set(MARKER_KEY, target.owner)


def sync_client(target: Target) -> SyncRedis:
    """A synchronous client of the target: a cluster client for a cluster (its commands then reach every master)."""
    if target.cluster:
        cluster = SyncRedisCluster.from_url(
            target.url, socket_timeout=CONNECT_TIMEOUT_S, socket_connect_timeout=CONNECT_TIMEOUT_S
        )
        return cast(SyncRedis, cluster)  # the same command API; dbsize and flushdb go to every master
    return SyncRedis.from_url(target.url, socket_timeout=CONNECT_TIMEOUT_S, socket_connect_timeout=CONNECT_TIMEOUT_S)


def claim_url(target: Target, *, flush: bool) -> None:
    """Connect to `target.url`, claim the database and disconnect (for tools that hand the URL to processes)."""
    try:
        client = sync_client(target)
    except (RedisError, OSError) as exc:
        raise TargetUnreachable(f"{target.owner}: Redis at {_shown(target.url)}: {exc}") from exc
    try:
        claim_sync(client, target, flush=flush)
    finally:
        client.close()


def mark_url(target: Target) -> None:
    """Connect to `target.url` and mark the database again (after a run that flushed it on its own)."""
    try:
        client = sync_client(target)
        try:
            mark_sync(client, target)
        finally:
            client.close()
    except (RedisError, OSError) as exc:
        raise TargetUnreachable(f"{target.owner}: Redis at {_shown(target.url)}: {exc}") from exc


def _every_master(target: Target) -> dict[str, Any]:
    """DBSIZE's keywords: a cluster client asks one node unless told to sum every master's count."""
    return {"target_nodes": SyncRedisCluster.PRIMARIES} if target.cluster else {}


def _shown(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if "@" in rest else url
