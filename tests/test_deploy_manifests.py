"""The deployment kit's promises, read from its files: image, compose, Kubernetes, alerts and dashboard.

`.ci/deploy-checks` validates the same files with the vendors' tools (hadolint, the Compose schema, kubectl and
kubernetes-validate, promtool) and runs the roles; these tests hold what no schema says.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.checks.metric_names import exposed_names, missing_metrics, queried_metrics
from system.metrics import Metrics
from system.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S_FILES = [*sorted((DEPLOY / "k8s" / "base").glob("*.yaml")), *sorted((DEPLOY / "k8s" / "overlays").glob("*/*.yaml"))]
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
DASHBOARD = DEPLOY / "grafana" / "aiadmin.json"
RUNBOOK = ROOT / "docs" / "operations.md"


def k8s_objects(kind: str) -> list[dict[str, Any]]:
    docs = (doc for path in K8S_FILES for doc in yaml.safe_load_all(path.read_text()))
    return [doc for doc in docs if doc and doc.get("kind") == kind]


def deployment(name: str) -> dict[str, Any]:
    (found,) = [d for d in k8s_objects("Deployment") if d["metadata"]["name"] == name]
    return found


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / "compose.yaml").read_text()))


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


# --- image ---------------------------------------------------------------------------------------------------


def test_image_runs_aiadmin_as_a_numeric_non_root_user_from_pinned_bases() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["aiadmin"]' in dockerfile
    assert 'CMD ["api"]' in dockerfile
    (user,) = re.findall(r"^USER (\S+)", dockerfile, re.MULTILINE)
    assert all(part.isdigit() and int(part) > 0 for part in user.split(":"))
    (base,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)", dockerfile, re.MULTILINE)
    assert re.fullmatch(r"python:3\.(1[1-9])\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), base
    assert "/health" in dockerfile.split("HEALTHCHECK", 1)[1].split("\n\n", 1)[0]


# --- compose -------------------------------------------------------------------------------------------------


def test_compose_redis_keeps_an_append_only_file_on_a_volume() -> None:
    redis = compose()["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])
    assert "healthcheck" in redis


def test_compose_roles_wait_for_healthy_dependencies_and_read_secrets_from_the_ignored_env_file() -> None:
    services = compose()["services"]
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["api"]["ports"][0].endswith(":8080")
    for role in ("api", "batcher", "worker"):
        service = services[role]
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "healthcheck" in service
        assert [entry["path"] for entry in service["env_file"]] == [".env"]
    assert "deploy/.env" in (ROOT / ".gitignore").read_text().splitlines()


def test_compose_fakes_profile_serves_every_vendor_the_example_env_points_at() -> None:
    services = compose()["services"]
    fakes = {name: s for name, s in services.items() if "fakes" in s.get("profiles", [])}
    assert {s["command"][1] for s in fakes.values()} == {"whatsapp", "llm", "crm"}
    example = env_example()
    for name, service in fakes.items():
        port = service["command"][service["command"].index("--port") + 1]
        assert any(f"http://{name}:{port}" in value for value in example.values()), name


def env_example() -> dict[str, str]:
    lines = (DEPLOY / ".env.example").read_text().splitlines()
    pairs = (line.split("=", 1) for line in lines if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


def test_env_example_names_only_real_settings() -> None:
    fields = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    assert set(env_example()) <= fields, set(env_example()) - fields


def test_worker_stop_grace_exceeds_its_shutdown_time() -> None:
    shutdown_s = Settings.model_fields["worker_shutdown_s"].default
    (config,) = k8s_objects("ConfigMap")[:1]
    assert float(config["data"]["AIADMIN_WORKER_SHUTDOWN_S"]) == shutdown_s
    assert deployment("aiadmin-worker")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > shutdown_s
    assert int(compose()["services"]["worker"]["stop_grace_period"].removesuffix("s")) > shutdown_s


# --- Kubernetes ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(d["metadata"]["name"] for d in k8s_objects("Deployment")))
def test_every_container_is_non_root_read_only_capability_free_and_bounded(name: str) -> None:
    pod = deployment(name)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"]:
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert {"cpu", "memory"} <= set(container["resources"]["limits"])


def test_api_is_ready_on_ready_and_alive_on_health_behind_a_service() -> None:
    (container,) = deployment("aiadmin-api")["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    services = {s["metadata"]["name"]: s for s in k8s_objects("Service")}
    assert services["aiadmin-api"]["spec"]["selector"]["app.kubernetes.io/component"] == "api"


def test_secrets_are_referenced_never_committed() -> None:
    assert k8s_objects("Secret") == []
    for name in ("aiadmin-api", "aiadmin-batcher", "aiadmin-worker"):
        (container,) = deployment(name)["spec"]["template"]["spec"]["containers"]
        assert {"secretRef": {"name": "aiadmin-secrets"}} in container["envFrom"]


def test_each_role_has_a_disruption_budget_and_the_api_an_hpa_on_cpu() -> None:
    budgets = {
        b["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] for b in k8s_objects("PodDisruptionBudget")
    }
    assert budgets == {"api", "batcher", "worker"}
    (hpa,) = k8s_objects("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "aiadmin-api"
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert k8s_objects("NetworkPolicy")


# --- alerts and dashboard ------------------------------------------------------------------------------------


def test_every_alert_explains_itself_and_links_its_runbook_section() -> None:
    headings = [line.lstrip("#").strip() for line in RUNBOOK.read_text().splitlines() if line.startswith("#")]
    anchors = {github_anchor(h) for h in headings}
    rules = alert_rules()
    assert len(rules) >= 8
    for rule in rules:
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], rule["alert"]
        path, _, anchor = annotations["runbook_url"].partition("#")
        assert path == "docs/operations.md"
        assert anchor == github_anchor(rule["alert"]) and anchor in anchors, rule["alert"]


@pytest.mark.parametrize("source", [DASHBOARD, ALERTS], ids=lambda p: p.name)
def test_dashboard_and_alerts_query_only_metrics_the_system_registers(source: Path) -> None:
    registered = exposed_names(Metrics().registry.collect())
    assert queried_metrics(source), "no aiadmin metric found: the extraction is broken"
    assert missing_metrics(source, registered) == []


def test_dashboard_covers_each_stage() -> None:
    queried = queried_metrics(DASHBOARD)
    for metric in (
        "aiadmin_webhook_requests_total",
        "aiadmin_accept_seconds_bucket",
        "aiadmin_flush_lateness_seconds_bucket",
        "aiadmin_queue_length",
        "aiadmin_jobs_total",
        "aiadmin_llm_seconds_bucket",
        "aiadmin_send_seconds_bucket",
        "aiadmin_dead_letters",
    ):
        assert metric in queried
