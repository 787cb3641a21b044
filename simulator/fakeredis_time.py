"""Moves fakeredis's clock with the virtual clock: its key expiry, stream ids and idle times read `time.time()`."""

from __future__ import annotations

import contextlib
import time
import types
from collections.abc import Iterator

from system.clock import Clock

# The fakeredis modules that read the time (checked against fakeredis 2.x).
_MODULES = ("fakeredis._helpers", "fakeredis._socket._base", "fakeredis.model._stream")


class _VirtualTime(types.SimpleNamespace):
    """A stand-in for the `time` module whose time() is the virtual clock's."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(**{n: getattr(time, n) for n in dir(time) if not n.startswith("__") and n != "time"})
        self._clock = clock

    def time(self) -> float:
        return self._clock.now_ms() / 1000


@contextlib.contextmanager
def fakeredis_on(clock: Clock) -> Iterator[None]:
    """While inside, every fakeredis server in this process runs on `clock`."""
    import importlib

    modules = [importlib.import_module(name) for name in _MODULES]
    saved = [m.time for m in modules]
    shim = _VirtualTime(clock)
    for module in modules:
        module.time = shim  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for module, original in zip(modules, saved, strict=True):
            module.time = original  # type: ignore[attr-defined]
