"""Every Redis key, stream, group and channel name of the system, built in one place.

Cluster layout: a conversation (company, phone) is assigned to one of `shards` slots by CRC32; every key
an atomic script touches for that conversation carries the shard's hash tag `{sN}`, so each script
stays inside one hash slot. Keys used only by single-key commands need no tag.

| key | type | lifetime |
|---|---|---|
| `{p}:{sN}:due` | zset conversation → effective deadline ms | while a batch waits |
| `{p}:{sN}:buf:{company}:{phone}` | list of fragment JSON (the open batch) | keep_ms after the last fragment |
| `{p}:{sN}:sealed:{company}:{phone}` | list of sealed batches (JSON arrays) | keep_ms after the last fragment |
| `{p}:{sN}:meta:{company}:{phone}` | hash: deadline, first_id, first_ms | keep_ms after the last fragment |
| `{p}:{sN}:lease:{company}:{phone}` | string: batch id of the turn in flight | queued / visibility lease |
| `{p}:{sN}:seen:{company}:{phone}:{message id}` | de-duplication marker | dedup TTL (7 days) |
| `{p}:{sN}:rl:{company}:{phone}` | string: sender token bucket (GCRA arrival time, ms) | until full again |
| `{p}:{sN}:rlg:{company}` | string: the company's bucket (global limit / shards) | until full again |
| `{p}:{sN}:queue` | stream of jobs, group `workers` | until acked (then deleted) |
| `{p}:{sN}:delayed` | zset of jobs waiting for a retry | until due |
| `{p}:{sN}:dlq` | stream of dead letters | capped |
| `{p}:{sN}:stats` | hash of counters | none |
| `{p}:{sN}:lateness` | list of the last flush lateness values, ms | capped |
| `{p}:stats` | hash of counters outside a conversation | none |
| `{p}:ignored` | stream of acknowledged-but-unbatched inbound items | capped |
| `{p}:status:{wamid}` | hash: outbound delivery status; `turn` = the key of the turn that sent it | turn TTL (7 days) |
| `{p}:rls:{recipient}:{window}` | string: delivery statuses about one recipient in a 60 s window | 2 windows |
| `{p}:batchers` | zset batcher id → last heartbeat ms | pruned |
| `{p}:{sN}:turn:{batch id}` | hash: a turn's record (reply, `part:{i}` ids, stage, delivery) | turn TTL (7 days) |
| `dialog:{company}:{phone}` | hash: stage, draft, slots offered, client name, last turn applied | dialog TTL (24 h) |
| `messages:{company}:{phone}` | list: the last 50 messages of both sides | messages TTL (30 days) |
| `preferences:{company}:{phone}` | hash: name, favourite master, usual services | preferences TTL (90 days) |

The four TTLs are the deployment's retention (`Retention`, from `AIADMIN_DIALOG_TTL_S`, `AIADMIN_MESSAGES_TTL_S`,
`AIADMIN_PREFERENCES_TTL_S`, `AIADMIN_TURN_TTL_S`); each is refreshed by every write of its key.

The three context keys keep the reference system's names on a single server. On a cluster
(`AIADMIN_REDIS_CLUSTER`) the client part becomes a hash tag, `dialog:{962302:79001234567}`, so the three
share a slot: a turn writes them in one script, marked with the turn's key so a redelivery never writes twice.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import NamedTuple

WORKER_GROUP = "workers"


class ConversationKeys(NamedTuple):
    """Keys of one conversation; all in the hash slot of its shard.

    A named tuple rather than a frozen dataclass: built once per conversation on the hot path, where
    a frozen dataclass's field-by-field `object.__setattr__` costs more than the key strings.
    """

    member: str  # "{company}:{phone}", the conversation's name inside its shard's zset
    buf: str
    sealed: str
    meta: str
    lease: str
    rate: str
    rate_company: str
    seen_prefix: str

    def seen(self, message_id: str) -> str:
        return self.seen_prefix + message_id


@dataclass(frozen=True, slots=True)
class ShardKeys:
    """Keys shared by all conversations of one shard."""

    index: int
    due: str
    queue: str
    delayed: str
    dlq: str
    stats: str
    lateness: str
    wake_channel: str
    jobs_channel: str


@dataclass(frozen=True, slots=True)
class Retention:
    """How long a conversation's keys live after their last write, in seconds (the reference's figures)."""

    dialog_s: int = 24 * 3600  # where the conversation stands: a new day starts a new dialog
    messages_s: int = 30 * 24 * 3600  # the history the model reads
    preferences_s: int = 90 * 24 * 3600  # name, favourite master, usual services
    turn_s: int = 7 * 24 * 3600  # a turn's record and its sent messages' delivery statuses


@dataclass(frozen=True, slots=True)
class ContextKeys:
    """One client's dialog context (lifetimes in `Retention`)."""

    dialog: str
    messages: str
    preferences: str


class Keys:
    """Builds every key name from a prefix and a shard count, and carries their lifetimes (set once per deployment)."""

    def __init__(
        self, *, prefix: str = "aiadmin", shards: int = 1, cluster: bool = False, retention: Retention | None = None
    ) -> None:
        if shards < 1:
            raise ValueError("shards must be >= 1")
        self.prefix = prefix
        self.shards = shards
        self.cluster = cluster
        self.retention = retention or Retention()
        self.stats = f"{prefix}:stats"
        self.ignored = f"{prefix}:ignored"
        self.batchers = f"{prefix}:batchers"

    def shard_of(self, company_id: int, phone: str) -> int:
        return zlib.crc32(f"{company_id}:{phone}".encode()) % self.shards

    @cached_property
    def all_shards(self) -> tuple[ShardKeys, ...]:
        return tuple(self._shard(i) for i in range(self.shards))

    def shard(self, index: int) -> ShardKeys:
        return self.all_shards[index]

    def _shard(self, index: int) -> ShardKeys:
        base = f"{self.prefix}:{{s{index}}}"
        return ShardKeys(
            index=index,
            due=f"{base}:due",
            queue=f"{base}:queue",
            delayed=f"{base}:delayed",
            dlq=f"{base}:dlq",
            stats=f"{base}:stats",
            lateness=f"{base}:lateness",
            wake_channel=f"{base}:wake",
            jobs_channel=f"{base}:jobs",
        )

    def conversation(self, company_id: int, phone: str) -> tuple[ShardKeys, ConversationKeys]:
        # The same conversations come back on the hot path; the bound keeps memory flat.
        return self._conversation(company_id, phone)

    @lru_cache(maxsize=1024)  # noqa: B019 - one Keys per process, kept for the process's life
    def _conversation(self, company_id: int, phone: str) -> tuple[ShardKeys, ConversationKeys]:
        shard = self.shard(self.shard_of(company_id, phone))
        base = f"{self.prefix}:{{s{shard.index}}}"
        member = f"{company_id}:{phone}"
        return shard, ConversationKeys(
            member=member,
            buf=f"{base}:buf:{member}",
            sealed=f"{base}:sealed:{member}",
            meta=f"{base}:meta:{member}",
            lease=f"{base}:lease:{member}",
            rate=f"{base}:rl:{member}",
            rate_company=f"{base}:rlg:{company_id}",
            seen_prefix=f"{base}:seen:{member}:",
        )

    def conversation_of_member(self, member: str) -> tuple[ShardKeys, ConversationKeys]:
        company, _, phone = member.partition(":")
        return self.conversation(int(company), phone)

    def status(self, message_id: str) -> str:
        return f"{self.prefix}:status:{message_id}"

    def status_rate(self, recipient: str, window: int) -> str:
        """The count of delivery statuses about one recipient in one window (its number since the epoch)."""
        return f"{self.prefix}:rls:{recipient}:{window}"

    def turn(self, company_id: int, phone: str, batch_id: str) -> str:
        """The idempotency record of one turn, in its conversation's slot."""
        shard, _ = self.conversation(company_id, phone)
        return f"{self.prefix}:{{s{shard.index}}}:turn:{batch_id}"

    def context(self, company_id: int, phone: str) -> ContextKeys:
        """The dialog context keys, named as the reference system named them (no prefix).

        On a cluster the client part is a hash tag, `dialog:{962302:79001234567}`, so that the three keys
        share a slot and a turn writes them in one atomic script.
        """
        client = f"{{{company_id}:{phone}}}" if self.cluster else f"{company_id}:{phone}"
        return ContextKeys(
            dialog=f"dialog:{client}",
            messages=f"messages:{client}",
            preferences=f"preferences:{client}",
        )
