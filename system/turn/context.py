"""The dialog context of one client of one salon: dialog state, message history and preferences."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT

from system.store import lua
from system.store.keys import Keys
from system.store.scripts import Script

MESSAGES_KEPT = 50
USUAL_SERVICES_KEPT = 5


@dataclass(frozen=True, slots=True)
class HistoryItem:
    role: str  # "client" | "admin"
    text: str
    at_ms: int

    def to_json(self) -> bytes:
        return orjson.dumps({"role": self.role, "text": self.text, "at_ms": self.at_ms})


@dataclass(frozen=True, slots=True)
class Dialog:
    """Where the conversation stands: stage, the booking being assembled, the slots last offered."""

    stage: str = "new"  # new | choosing | booked | cancelled | rescheduled | talking
    draft: dict[str, Any] = field(default_factory=dict)  # service, master, date, time
    offered_slots: tuple[str, ...] = ()  # ISO datetimes last offered to the client
    client_name: str = ""


@dataclass(frozen=True, slots=True)
class Preferences:
    name: str = ""
    favourite_master: str = ""
    usual_services: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Context:
    dialog: Dialog
    history: tuple[HistoryItem, ...]
    preferences: Preferences


@dataclass(frozen=True, slots=True)
class ContextUpdate:
    """What one turn changes; written in one transaction."""

    new_messages: tuple[HistoryItem, ...]
    dialog: Dialog
    preferences: Preferences


class ContextStore:
    """Reads and writes the context keys; a turn's writes are one script in the context's slot."""

    def __init__(self, redis: Redis, *, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._save = Script(redis, lua.CONTEXT_SAVE)

    async def load(self, company_id: int, phone: str) -> Context:
        k = self._keys.context(company_id, phone)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(k.dialog)
            pipe.lrange(k.messages, -MESSAGES_KEPT, -1)
            pipe.hgetall(k.preferences)
            dialog_raw, history_raw, prefs_raw = await pipe.execute()
        return Context(
            dialog=_dialog(_texts(dialog_raw)),
            history=tuple(_history_item(raw) for raw in history_raw),
            preferences=_preferences(_texts(prefs_raw)),
        )

    async def save(
        self,
        company_id: int,
        phone: str,
        update: ContextUpdate,
        *,
        also: Mapping[str, Mapping[FieldT, EncodableT]] | None = None,
    ) -> bool:
        """Write the turn's context atomically, then `also` (the turn record's fields that mark it done).

        With `also`, its first key marks the write in the dialog hash: a repeat of the same turn (a redelivery
        after a crash between the two writes) writes the context no second time. False when it was a repeat.
        The turn record lives in another slot on a cluster, so the two writes are not one transaction; the mark
        makes the pair idempotent instead.
        """
        k, ttl = self._keys.context(company_id, phone), self._keys.retention
        d, p = update.dialog, update.preferences
        dialog_fields = _flat(
            {
                "stage": d.stage,
                "draft": orjson.dumps(d.draft),
                "offered_slots": orjson.dumps(list(d.offered_slots)),
                "client_name": d.client_name,
            }
        )
        preference_fields = _flat(
            {
                "name": p.name,
                "favourite_master": p.favourite_master,
                "usual_services": orjson.dumps(list(p.usual_services)),
            }
        )
        written = await self._save(
            keys=[k.dialog, k.messages, k.preferences],
            args=[
                next(iter(also), "") if also else "",
                ttl.dialog_s,
                ttl.messages_s,
                ttl.preferences_s,
                MESSAGES_KEPT,
                len(dialog_fields),
                *dialog_fields,
                len(preference_fields),
                *preference_fields,
                *(m.to_json() for m in update.new_messages),
            ],
        )
        if also:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, mapping in also.items():
                    pipe.hset(key, mapping=mapping)
                await pipe.execute()
        return bool(written)

    async def move(self, company_id: int, old_phone: str, new_phone: str) -> bool:
        """Carry a client's context to the new number they moved to (Meta's `user_changed_number`).

        False when the new number already has a context of its own: that one is kept, the old one is left
        to expire. Key by key (DUMP/RESTORE keeps each TTL): the old and the new number's keys are in different
        slots on a cluster; a repeat of the same change finds nothing left to move.
        """
        k, n = self._keys.context(company_id, old_phone), self._keys.context(company_id, new_phone)
        old, new = (k.dialog, k.messages, k.preferences), (n.dialog, n.messages, n.preferences)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.exists(*new)
            for key in old:
                pipe.dump(key)
                pipe.pttl(key)
            taken, *dumped = await pipe.execute()
        if taken:
            return False
        async with self._redis.pipeline(transaction=False) as pipe:
            for i, (source, target) in enumerate(zip(old, new, strict=True)):
                payload, ttl_ms = dumped[2 * i], dumped[2 * i + 1]
                if payload is not None:
                    pipe.restore(target, max(int(ttl_ms), 0), payload)  # -1 (no TTL) restores as 0: none
                    pipe.delete(source)
            await pipe.execute()
        return any(dumped[0::2])


def remember_service(prefs: Preferences, service: str) -> Preferences:
    """The client's usual services, most recent first, bounded."""
    usual = (service, *(s for s in prefs.usual_services if s != service))[:USUAL_SERVICES_KEPT]
    return replace(prefs, usual_services=usual)


def _flat(mapping: Mapping[str, EncodableT]) -> list[EncodableT]:
    """A hash's fields and values, one after the other, as HSET takes them."""
    return [item for pair in mapping.items() for item in pair]


def _texts(raw: dict[Any, Any]) -> dict[str, str]:
    return {_s(k): _s(v) for k, v in raw.items()}


def _s(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _loads(raw: str | None, default: Any) -> Any:
    if not raw:
        return default
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return default


def _dialog(raw: dict[str, str]) -> Dialog:
    draft = _loads(raw.get("draft"), {})
    offered = _loads(raw.get("offered_slots"), [])
    return Dialog(
        stage=raw.get("stage") or "new",
        draft=draft if isinstance(draft, dict) else {},
        offered_slots=tuple(str(s) for s in offered) if isinstance(offered, list) else (),
        client_name=raw.get("client_name", ""),
    )


def _preferences(raw: dict[str, str]) -> Preferences:
    usual = _loads(raw.get("usual_services"), [])
    return Preferences(
        name=raw.get("name", ""),
        favourite_master=raw.get("favourite_master", ""),
        usual_services=tuple(str(s) for s in usual) if isinstance(usual, list) else (),
    )


def _history_item(raw: object) -> HistoryItem:
    doc = _loads(_s(raw), {})
    return HistoryItem(
        role=str(doc.get("role", "client")), text=str(doc.get("text", "")), at_ms=int(doc.get("at_ms", 0))
    )
