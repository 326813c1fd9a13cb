"""deploy/kubernetes/ws2sip.yaml against Kubernetes' own OpenAPI schemas (kubernetes-validate
ships them: no cluster and no network), as `kubectl apply --dry-run=client` would check it,
plus the drain parts: a PodDisruptionBudget, a preStop drain, and a grace period longer than
the drain."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_config

# Untyped libraries (no stubs): Any here, as in test_deploy_files.
kubernetes_validate = pytest.importorskip("kubernetes_validate")
jsonschema = pytest.importorskip("jsonschema")
yaml = pytest.importorskip("yaml")

MANIFEST = Path(__file__).resolve().parent.parent.parent / "deploy" / "kubernetes" / "ws2sip.yaml"
# The oldest release still maintained when this was written, and the newest the library knows.
VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


def documents() -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(MANIFEST.read_text()) if document]


def gateway_deployment(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return next(d for d in objects
                if d["kind"] == "Deployment" and d["metadata"]["name"] == "ws2sip")


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_passes_the_kubernetes_schema_strictly(version: str) -> None:
    objects = documents()
    assert {d["kind"] for d in objects} >= {"Deployment", "Service", "PodDisruptionBudget"}
    for document in objects:
        kubernetes_validate.validate(document, version, strict=True)


def test_the_schema_check_catches_a_misspelt_field() -> None:
    broken = copy.deepcopy(gateway_deployment(documents()))
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["lifecycle"]["preStop"]["exec"]["comand"] = container["lifecycle"]["preStop"][
        "exec"].pop("command")
    with pytest.raises(jsonschema.ValidationError, match="comand"):
        kubernetes_validate.validate(broken, VERSIONS[0], strict=True)


def test_pods_drain_before_they_stop(tmp_path: Path) -> None:
    objects = documents()
    deployment = gateway_deployment(objects)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["ws2sip", "drain"] and "--wait" in command
    # `ws2sip drain --config FILE` finds the node's metrics listener in the mounted file.
    config_map = next(d for d in objects if d["kind"] == "ConfigMap")
    path = tmp_path / "ws2sip.toml"
    path.write_text(config_map["data"]["ws2sip.toml"])
    config = load_config(str(path), {})
    assert config.metrics.startswith("127.0.0.1:")
    assert command[command.index("--config") + 1] == "/etc/ws2sip/ws2sip.toml"
    assert pod["terminationGracePeriodSeconds"] > config.drain_grace + config.drain_timeout
    # Unready while draining (/healthz 503), but alive: the liveness probe is not /healthz.
    readiness = container["readinessProbe"]
    assert readiness["httpGet"]["path"] == "/healthz"
    assert readiness["periodSeconds"] * readiness["failureThreshold"] <= config.drain_grace
    assert "httpGet" not in container["livenessProbe"]
    budget = next(d for d in objects if d["kind"] == "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"] == \
        deployment["spec"]["selector"]["matchLabels"]
