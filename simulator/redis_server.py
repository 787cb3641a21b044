"""A redis-server of a test's own: a free port, a temporary directory, switched off and on at will.

The shared test server may never be stopped; a scenario or a test that kills Redis starts one of these. With
the append-only file fsynced on every write, a kill (a crash, not a shutdown) loses nothing it acknowledged.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

LOCALHOST = "127.0.0.1"
LISTEN_DEADLINE_S = 10.0  # a started server listens within this (an AOF replay included)
_POLL_S = 0.05


def free_port() -> int:
    """A local port free right now, chosen by the OS (bound, then released)."""
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, *, deadline_s: float = LISTEN_DEADLINE_S) -> None:
    """Return once something listens on `port`; AssertionError after `deadline_s`."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex((LOCALHOST, port)) == 0:
                return
        time.sleep(_POLL_S)  # bounded by the deadline: the server takes a moment to listen
    raise AssertionError(f"nothing listens on port {port} after {deadline_s} s")


class RedisServer:
    """One redis-server on a free port, its data and log in `directory`; `durable` fsyncs every write."""

    def __init__(self, binary: str, directory: Path, *, durable: bool = True) -> None:
        self.port = free_port()
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if durable else ["--appendonly", "no"]
        self._argv = [binary, "--port", str(self.port), "--bind", LOCALHOST, "--dir", str(directory), "--save", ""]
        self._argv += persistence
        self._log = (directory / "redis.log").open("ab")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """The server's URL without a database."""
        return f"redis://{LOCALHOST}:{self.port}"

    @property
    def url(self) -> str:
        """Database 1 of the server: never db 0."""
        return f"{self.base_url}/1"

    def start(self) -> None:
        self._proc = subprocess.Popen(self._argv, stdout=self._log, stderr=subprocess.STDOUT)
        wait_for_port(self.port)

    def kill(self) -> None:
        """A crash, not a shutdown: only what the append-only file holds survives."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=10)
            self._proc = None

    def close(self) -> None:
        self.kill()
        self._log.close()
