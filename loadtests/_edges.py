"""Reading the system at each inner edge of a run's windows, on a greenlet of the Locust process (`_windows`)."""

from __future__ import annotations

import gevent

from loadtests._load import LoadRun, wall_ms
from loadtests._probes import ProbeError, SystemProbe
from loadtests._windows import Edge, edges_ms


def read_edge(probe: SystemProbe, load: LoadRun, *, at_ms: int) -> Edge:
    """The stats route and the queue wait histogram now (None where they do not answer, the error noted)."""
    stats = queue_wait = None
    try:
        stats = probe.stats()
    except ProbeError as exc:
        load.error(f"window edge: {exc}")
    try:
        queue_wait = probe.queue_wait()
    except ProbeError as exc:
        load.error(f"window edge: {exc}")
    return Edge(at_ms=at_ms, stats=stats, queue_wait=queue_wait)


def read_window_edges(load: LoadRun, probe: SystemProbe) -> None:
    """Sleep to each inner edge of the planned run and read the system there (appended to `load.edges`)."""
    for edge_ms in edges_ms(started_ms=load.started_ms, planned_s=load.options.profile.duration_s):
        gevent.sleep(max(0.0, (edge_ms - wall_ms()) / 1000))
        load.edges.append(read_edge(probe, load, at_ms=wall_ms()))
