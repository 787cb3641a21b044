"""A redis-server of a test's own: a free port, a temporary directory, switched off and on at will.

The shared test server may never be stopped; a scenario or a test that kills Redis starts one of these. With
the append-only file fsynced on every write, a kill (a crash, not a shutdown) loses nothing it acknowledged.
`RedisClusterServers` is a Redis Cluster of its own (3 masters, 3 replicas) for the scale and failover benchmark.
"""

from __future__ import annotations

import contextlib
import os
import signal
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

    def __init__(self, binary: str, directory: Path, *, durable: bool = True, appendfsync: str = "always") -> None:
        self.port = free_port()
        persistence = ["--appendonly", "yes", "--appendfsync", appendfsync] if durable else ["--appendonly", "no"]
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

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

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


CLUSTER_NODES = 6  # 3 masters, each with one replica: the smallest cluster that survives losing a master
CLUSTER_READY_S = 60.0
CLUSTER_BUS_OFFSET = 10000  # a node gossips on its port + 10000


class ClusterError(Exception):
    """The cluster did not form, or did not promote a replica in time; the message says which."""


class RedisClusterServers:
    """A 3+3 Redis Cluster on free loopback ports, each node's files in its own folder under `directory`.

    `node_timeout_ms` is how long a master may be unreachable before its replica is promoted. Nothing is
    persisted (no RDB, no AOF): a node killed is gone, as the failover benchmark wants.
    """

    def __init__(self, directory: Path, *, binary: str = "redis-server", node_timeout_ms: int = 2000) -> None:
        self.ports = _distinct_free_ports(CLUSTER_NODES)
        self._binary = binary
        self._cli = str(Path(binary).with_name("redis-cli")) if os.sep in binary else "redis-cli"
        self._directory = directory
        self._node_timeout_ms = node_timeout_ms
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._argv: dict[int, list[str]] = {}

    @property
    def url(self) -> str:
        """A seed node's URL: the cluster client discovers the others from it."""
        return f"redis://{LOCALHOST}:{self.ports[0]}"

    def start(self) -> None:
        """Start the six nodes, create the cluster (one replica per master), wait for `cluster_state:ok`."""
        for port in self.ports:
            folder = self._directory / f"node-{port}"
            folder.mkdir(parents=True, exist_ok=True)
            argv = [self._binary, "--port", str(port), "--bind", LOCALHOST, "--dir", str(folder), "--save", ""]
            argv += ["--appendonly", "no", "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            argv += ["--cluster-node-timeout", str(self._node_timeout_ms), "--protected-mode", "no"]
            self._argv[port] = argv
            self._spawn(port)
        for port in self.ports:
            wait_for_port(port)
        nodes = [f"{LOCALHOST}:{port}" for port in self.ports]
        create = [self._cli, "--cluster", "create", *nodes, "--cluster-replicas", "1", "--cluster-yes"]
        done = subprocess.run(create, capture_output=True, timeout=CLUSTER_READY_S, check=False)
        if done.returncode != 0:
            raise ClusterError(f"redis-cli --cluster create failed: {done.stdout.decode()[-500:]}")
        self.wait_ok(self.ports)
        self._wait_replicated()

    def _wait_replicated(self, *, deadline_s: float = CLUSTER_READY_S) -> None:
        """Return once every node sees 3 replicas and each replica's link to its master is up."""
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            views = [self.cli(port, "cluster", "nodes") for port in self.ports]
            if all(view.count(" slave ") + view.count(",slave ") == CLUSTER_NODES // 2 for view in views):
                replicas = [p for p in self.ports if "role:slave" in self.cli(p, "info", "replication")]
                if all("master_link_status:up" in self.cli(p, "info", "replication") for p in replicas):
                    return
            time.sleep(_POLL_S)  # bounded by the deadline: the replicas attach and sync within a few seconds
        raise ClusterError(f"the replicas did not attach within {deadline_s} s")

    def _spawn(self, port: int) -> None:
        with (self._directory / f"node-{port}" / "redis.log").open("ab") as log:
            self._procs[port] = subprocess.Popen(self._argv[port], stdout=log, stderr=subprocess.STDOUT)

    def restart(self, port: int) -> None:
        """Start a killed node again: its `nodes.conf` brings it back, as a replica once it was failed over."""
        self._spawn(port)
        wait_for_port(port)

    def is_synced_replica(self, port: int) -> bool:
        """Whether the node is a replica whose link to its master is up (its initial sync done)."""
        info = self.cli(port, "info", "replication")
        return "role:slave" in info and "master_link_status:up" in info

    def wait_ok(self, ports: list[int], *, deadline_s: float = CLUSTER_READY_S) -> None:
        """Return once every node of `ports` reports `cluster_state:ok`; ClusterError after `deadline_s`."""
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if all("cluster_state:ok" in self.cli(port, "cluster", "info") for port in ports):
                return
            time.sleep(_POLL_S)  # bounded by the deadline: gossip takes a moment to agree
        raise ClusterError(f"the cluster is not ok after {deadline_s} s")

    def cli(self, port: int, *args: str) -> str:
        """One redis-cli command against a node; its output ("" when the node does not answer)."""
        done = subprocess.run([self._cli, "-p", str(port), *args], capture_output=True, timeout=10, check=False)
        return done.stdout.decode(errors="replace")

    def replica_of(self, master_port: int) -> int:
        """The port of the replica of the master on `master_port`."""
        node_id = self.cli(master_port, "cluster", "myid").strip()
        for line in self.cli(master_port, "cluster", "nodes").splitlines():
            fields = line.split()
            if len(fields) > 3 and fields[3] == node_id and "slave" in fields[2]:
                return int(fields[1].split("@")[0].rsplit(":", 1)[1])
        raise ClusterError(f"no replica of the master on port {master_port}")

    def pid_of(self, port: int) -> int:
        """The node's process id, as the node itself reports it (`INFO server` `process_id`)."""
        for line in self.cli(port, "info", "server").splitlines():
            if line.startswith("process_id:"):
                return int(line.split(":", 1)[1])
        raise ClusterError(f"the node on port {port} does not answer INFO")

    def kill_9(self, port: int) -> None:
        """`kill -9` the node's process (a crash: no shutdown, nothing flushed to its replica)."""
        os.kill(self.pid_of(port), signal.SIGKILL)
        proc = self._procs.pop(port)
        proc.wait(timeout=10)

    def is_master(self, port: int) -> bool:
        return "role:master" in self.cli(port, "info", "replication")

    def close(self) -> None:
        """Stop every node still running (SIGKILL: nothing is persisted anyway)."""
        for proc in self._procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=10)
        self._procs.clear()


def _distinct_free_ports(count: int) -> list[int]:
    """`count` different ports free right now whose cluster bus ports (port + 10000) are free too.

    The OS hands out ports up to 60999; a node's bus port must still be a port, so higher ones are skipped.
    """
    chosen: list[int] = []
    with contextlib.ExitStack() as held:
        for _ in range(count * 50):
            sock = held.enter_context(socket.socket())
            sock.bind((LOCALHOST, 0))
            port = int(sock.getsockname()[1])
            if port + CLUSTER_BUS_OFFSET > 65535:
                continue
            bus = held.enter_context(socket.socket())
            with contextlib.suppress(OSError):  # taken: something is bound to the bus port
                bus.bind((LOCALHOST, port + CLUSTER_BUS_OFFSET))
                chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise ClusterError(f"found no {count} free ports with free cluster bus ports")
