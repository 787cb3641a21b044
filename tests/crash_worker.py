"""A worker process that dies at a chosen point of a turn (crash injection for the exactly-once test).

Usage: python -m tests.crash_worker JOURNAL CRASH_POINT, with REDIS_URL and the world's settings in the
environment. CRASH_POINT is "after_send" (the reply went out, the ack did not), "after_booking" (the CRM
booked, the reply was not decided yet) or "after_first_part" (part 1 of a long reply went out, part 2 did
not). The process ends with os._exit(137), as if SIGKILLed.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from system.runtime import Runtime, build_worker
from system.settings import load_settings
from system.turn.records import TurnStore

from .world import World, call, say

CRASH_EXIT = 137
# Two paragraphs of about 3,800 characters: more than one WhatsApp text (4,096), so two parts.
LONG_REPLY = ("Записал вас на завтра 15:00 к Сергею. " * 100).strip() + "\n\n" + ("Ждём вас в салоне. " * 200).strip()


def crash_after(cls: type, name: str) -> None:
    original = getattr(cls, name)

    async def then_die(self: Any, *args: Any, **kwargs: Any) -> Any:
        await original(self, *args, **kwargs)
        os._exit(CRASH_EXIT)

    setattr(cls, name, then_die)


def crash_before(cls: type, name: str) -> None:
    async def die(self: Any, *args: Any, **kwargs: Any) -> Any:
        os._exit(CRASH_EXIT)

    setattr(cls, name, die)


async def main(journal: Path, point: str) -> None:
    settings = load_settings()
    world = World(journal=journal)
    world.llm_answers.extend(
        [
            call("create_booking", service="Стрижка машинкой", datetime="2025-11-26T15:00", master="Сергей"),
            say(LONG_REPLY if point == "after_first_part" else "Записал вас на завтра 15:00 к Сергею."),
        ]
    )
    if point == "after_send":
        crash_after(TurnStore, "mark_sent")
    elif point == "after_first_part":
        crash_after(TurnStore, "record_part")  # part 1 is sent and recorded; part 2 never goes out
    else:
        crash_before(TurnStore, "save_reply")
    from simulator.clock import VirtualClock

    clock = VirtualClock(start_ms=int(os.environ["CRASH_START_MS"]))
    rt = Runtime.build(settings, clock=clock)
    driver = asyncio.create_task(clock.drive())
    async with world.http() as http:
        worker = build_worker(rt, http=http, consumer="doomed", concurrency=1)
        [delivery] = await rt.queue.read("doomed", count=1, now_ms=clock.now_ms())
        await worker.handle(delivery)
    driver.cancel()
    sys.exit("the crash point was never reached")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
