"""The worker's KEDA ScaledObject against KEDA's documented `redis-streams` trigger (no schema ships for it).

The trigger's parameters, as KEDA's scaler page lists them (https://keda.sh/docs/latest/scalers/redis-streams/):
`address` or `host` + `port` (or their `…FromEnv` forms), `stream` (required), `consumerGroup`, one of
`pendingEntriesCount` / `streamLength` / `lagCount` (with `activationLagCount`), `databaseIndex`, `enableTLS`,
`unsafeSsl`, `usernameFromEnv`, `passwordFromEnv`; metadata values are strings; a TriggerAuthentication gives
`username` / `password`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from system.store.keys import WORKER_GROUP, Keys

BASE = Path(__file__).resolve().parents[1] / "deploy" / "k8s" / "base"

DOCUMENTED = {
    "address",
    "host",
    "port",
    "addressFromEnv",
    "hostFromEnv",
    "portFromEnv",
    "usernameFromEnv",
    "passwordFromEnv",
    "stream",
    "consumerGroup",
    "pendingEntriesCount",
    "streamLength",
    "lagCount",
    "activationLagCount",
    "databaseIndex",
    "enableTLS",
    "unsafeSsl",
}
MODES = ("pendingEntriesCount", "streamLength", "lagCount")
AUTH_PARAMETERS = {"username", "password"}


def documents(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((BASE / name).read_text()) if doc]


def one(kind: str, name: str = "autoscaling.yaml") -> dict[str, Any]:
    (doc,) = [d for d in documents(name) if d["kind"] == kind]
    return doc


def config() -> dict[str, str]:
    return dict(one("ConfigMap", "configmap.yaml")["data"])


def triggers() -> list[dict[str, Any]]:
    return list(one("ScaledObject")["spec"]["triggers"])


@pytest.mark.parametrize("index", range(len(triggers())))
def test_trigger_uses_only_documented_fields(index: int) -> None:
    trigger = triggers()[index]
    assert trigger["type"] == "redis-streams"
    metadata = trigger["metadata"]
    assert set(metadata) <= DOCUMENTED, set(metadata) - DOCUMENTED
    assert all(isinstance(value, str) for value in metadata.values()), "KEDA metadata values are strings"
    assert "stream" in metadata
    assert "address" in metadata or "addressFromEnv" in metadata or {"host", "port"} <= set(metadata)


@pytest.mark.parametrize("index", range(len(triggers())))
def test_trigger_has_one_mode_with_a_positive_target(index: int) -> None:
    metadata = triggers()[index]["metadata"]
    (mode,) = [m for m in MODES if m in metadata]
    assert int(metadata[mode]) > 0
    if mode == "lagCount":  # "required if lagCount is provided", and the lag is only the group's
        assert int(metadata["activationLagCount"]) >= 0
    if mode != "streamLength":  # without consumerGroup the scaler falls back to the stream's length
        assert metadata["consumerGroup"] == WORKER_GROUP


def test_triggers_watch_every_shard_stream_of_the_deployment() -> None:
    settings = config()
    keys = Keys(prefix=settings.get("AIADMIN_REDIS_PREFIX", "aiadmin"), shards=int(settings["AIADMIN_REDIS_SHARDS"]))
    watched = {t["metadata"]["stream"] for t in triggers()}
    assert watched == {shard.queue for shard in keys.all_shards}
    for shard in keys.all_shards:  # pending entries (turns in flight) and lag (unread backlog) on each shard
        modes = {m for t in triggers() if t["metadata"]["stream"] == shard.queue for m in MODES if m in t["metadata"]}
        assert modes == {"pendingEntriesCount", "lagCount"}


def test_scaled_object_targets_the_worker_deployment() -> None:
    spec = one("ScaledObject")["spec"]
    worker = one("Deployment", "worker.yaml")
    assert spec["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert "replicas" not in worker["spec"], "KEDA owns the worker's replica count"


def test_trigger_authentication_gives_documented_parameters_from_the_secret() -> None:
    auth = one("TriggerAuthentication")
    refs = auth["spec"]["secretTargetRef"]
    assert {ref["parameter"] for ref in refs} <= AUTH_PARAMETERS
    assert {ref["name"] for ref in refs} == {"aiadmin-secrets"}
    assert {t["authenticationRef"]["name"] for t in triggers()} == {auth["metadata"]["name"]}
