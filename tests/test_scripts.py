"""Commands packed by hand for the hot path must be byte-for-byte what redis-py would send."""

from __future__ import annotations

import enum

import pytest
from redis.asyncio.connection import Connection

from system.store.resp import pack_command


class Kind(enum.IntEnum):
    TEXT = 3


class Route(enum.StrEnum):
    META = "meta"


@pytest.mark.parametrize(
    "parts",
    [
        (b"EVALSHA", "a" * 40, 2, "aiadmin:{s3}:conv:962302:79001234567:buf", "k2", 1764097000000),
        ("SET", "ключ", '{"text": "Хочу записаться 💈"}', b"\x00\xff raw", -5, 0.25, 1e-7),
        ("HSET", "k", ""),
    ],
)
def test_packed_commands_match_redis_py(parts: tuple[object, ...]) -> None:
    expected = b"".join(Connection().pack_command(*parts))
    assert pack_command(*parts) == expected


def test_enum_members_are_sent_as_their_values() -> None:
    # redis-py would send repr(Kind.TEXT), "<Kind.TEXT: 3>", for an int enum.
    assert pack_command(Kind.TEXT, Route.META) == b"*2\r\n$1\r\n3\r\n$4\r\nmeta\r\n"


@pytest.mark.parametrize("bad", [True, None, object(), ["list"]])
def test_values_redis_cannot_take_are_refused(bad: object) -> None:
    with pytest.raises(TypeError):
        pack_command("SET", "k", bad)
