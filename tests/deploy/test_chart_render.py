"""The chart renders in every scenario, and every object is valid against Kubernetes' schemas."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from .chart import NAMESPACE, ROOT, RenderError, find, lint, one, render
from .conftest import requires_helm
from .scenarios import SCENARIOS, example_value_files, example_values

pytestmark = requires_helm

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schema at hand.
OLDEST = "1.25.0"
NEWEST = kubernetes_validate.latest_version()

# Kinds that exist only in newer Kubernetes releases: (kind, first version with it).
NEWER_KINDS = {"ValidatingAdmissionPolicy": "1.30.0", "ValidatingAdmissionPolicyBinding": "1.30.0"}

CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}

DURATION = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$")

# The subset of the Prometheus operator's ServiceMonitor (monitoring.coreos.com/v1) the chart uses,
# with the field types of its CRD; anything else is a typo.
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name", "namespace"],
            "properties": {
                "name": {"type": "string"},
                "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                            "interval": {"type": "string", "pattern": DURATION.pattern},
                            "scrapeTimeout": {"type": "string", "pattern": DURATION.pattern},
                        },
                    },
                },
            },
        },
    },
}


def _validate(obj: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(obj, version, strict=True)


ALL_SCENARIOS = {**SCENARIOS, **{f"example:{p.name}": example_values(p.name) for p in example_value_files()}}


@pytest.mark.parametrize("name", sorted(ALL_SCENARIOS))
def test_every_object_is_valid_kubernetes(name: str) -> None:
    objects = render(ALL_SCENARIOS[name])
    assert objects
    checked = 0
    for obj in objects:
        key = (obj.get("apiVersion"), obj.get("kind"))
        if key in CUSTOM_KINDS:
            continue  # no schema in kubernetes-validate: test_service_monitor checks it
        assert obj["metadata"].get("labels", {}).get("app.kubernetes.io/managed-by") == "Helm", obj["metadata"]
        for version in (OLDEST, NEWEST):
            since = NEWER_KINDS.get(obj["kind"])
            if since and tuple(map(int, version.split("."))) < tuple(map(int, since.split("."))):
                continue
            try:
                _validate(obj, version)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{name}: {obj['kind']} {obj['metadata']['name']} invalid for Kubernetes {version}: {exc}")
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize("name", sorted(ALL_SCENARIOS))
def test_object_names_are_unique(name: str) -> None:
    seen: set[tuple[str, str, str]] = set()
    for obj in render(ALL_SCENARIOS[name]):
        key = (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        assert key not in seen, f"{key} rendered twice"
        seen.add(key)


@pytest.mark.parametrize("name", sorted(ALL_SCENARIOS))
def test_helm_lint_strict(name: str) -> None:
    assert lint(ALL_SCENARIOS[name]) == []


@pytest.mark.parametrize("name", ["deploy+metrics", "sidecar-only+metrics", "everything"])
def test_service_monitors(name: str) -> None:
    objects = render(SCENARIOS[name])
    services = {s["metadata"]["name"]: s for s in find(objects, "Service")}
    monitors = find(objects, "ServiceMonitor")
    assert sorted(m["metadata"]["name"] for m in monitors) == ["vgpu-pool-node-agent", "vgpu-pool-sidecar"]
    for sm in monitors:
        jsonschema.validate(sm, SERVICE_MONITOR_SCHEMA)
        # It selects exactly one of our Services, in that Service's namespace, on a port it has.
        (svc,) = [
            s
            for s in services.values()
            if sm["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
        ]
        assert sm["spec"]["namespaceSelector"]["matchNames"] == [svc["metadata"]["namespace"]]
        (endpoint,) = sm["spec"]["endpoints"]
        assert endpoint["port"] in [p["name"] for p in svc["spec"]["ports"]]
        assert endpoint["path"] == "/metrics"

    # The sidecar's Service reaches pods that run the sidecar, on its metrics listener (all interfaces),
    # never on the extender verbs (loopback only).
    svc = services["vgpu-pool-sidecar-metrics"]
    (port,) = svc["spec"]["ports"]
    if name.startswith("sidecar-only"):
        assert svc["metadata"]["namespace"] == "volcano-system"
        assert svc["spec"]["selector"] == {"app": "volcano-scheduler"}
        cm = one(objects, "ConfigMap", "vgpu-pool-scheduler-snippets")
        patch = yaml.safe_load(cm["data"]["deployment-patch.yaml"])
        sidecar = patch["spec"]["template"]["spec"]["containers"][0]
    else:
        dep = one(objects, "Deployment")
        assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
        sidecar = next(c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "vgpu-pool-sidecar")
    assert f"--metrics-listen=0.0.0.0:{port['targetPort']}" in sidecar["args"]
    assert any(a.startswith("--listen=127.0.0.1:") for a in sidecar["args"])
    assert {"name": port["name"], "containerPort": port["targetPort"], "protocol": "TCP"} in sidecar["ports"]

    # The agents' headless Service reaches the agent pods' metrics port.
    agents = services["vgpu-pool-node-agent-metrics"]
    ds = one(objects, "DaemonSet")
    assert agents["spec"]["clusterIP"] == "None"
    assert agents["spec"]["selector"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    agent = ds["spec"]["template"]["spec"]["containers"][0]
    assert agents["spec"]["ports"][0]["targetPort"] in [p["name"] for p in agent["ports"]]


def test_no_metrics_objects_by_default() -> None:
    for scenario in ("deploy", "sidecar-only"):
        objects = render(SCENARIOS[scenario])
        assert (
            not find(objects, "Service") and not find(objects, "ServiceMonitor") and not find(objects, "NetworkPolicy")
        )


def test_network_policy_opens_only_the_sidecar_port_to_the_peers() -> None:
    objects = render(SCENARIOS["deploy+metrics"])
    pol = one(objects, "NetworkPolicy")
    dep = one(objects, "Deployment")
    assert pol["spec"]["podSelector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    restricted, others = pol["spec"]["ingress"]
    assert restricted["ports"] == [{"protocol": "TCP", "port": 8714}]
    assert restricted["from"] == SCENARIOS["deploy+metrics"]["metrics"]["networkPolicy"]["from"]
    assert "from" not in others  # every other port: anyone, as without the policy
    tcp = sorted((p["port"], p["endPort"]) for p in others["ports"] if p["protocol"] == "TCP")
    assert tcp == [(1, 8713), (8715, 65535)]
    with pytest.raises(RenderError, match="networkPolicy.from"):
        render({"metrics": {"enabled": True, "networkPolicy": {"enabled": True}}})


def test_bad_mode_is_refused() -> None:
    with pytest.raises(RenderError, match="scheduler.mode"):
        render({"scheduler": {"mode": "both"}})


def test_everything_lands_in_the_release_namespace_or_the_schedulers() -> None:
    for name in ("deploy", "sidecar-only"):
        for obj in render(SCENARIOS[name]):
            ns = obj["metadata"].get("namespace")
            if obj["kind"].startswith("Cluster") or obj["kind"].startswith("ValidatingAdmission"):
                assert ns is None
            elif name == "deploy":
                assert ns == NAMESPACE, obj["metadata"]
            else:
                assert ns in (NAMESPACE, "volcano-system"), obj["metadata"]


def test_helm_binary_path_gives_the_same_objects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/deploy/chart.py also drives a `helm` binary; deploy-tools/helm-lite speaks its CLI and
    output format (on the SDK), so the binary path is exercised even where no helm binary exists."""
    import sys

    from . import chart

    if chart.engine() is not None and chart.engine().startswith("binary:"):  # type: ignore[union-attr]
        pytest.skip("a real helm binary is in use already")
    shim = tmp_path / "helm"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{ROOT / "deploy-tools" / "helm-lite"}" "$@"\n')
    shim.chmod(0o755)
    monkeypatch.setenv("HELM_BIN", str(shim))
    for scenario in (SCENARIOS["deploy"], SCENARIOS["sidecar-only+metrics"]):
        values = {**scenario, "signingKey": {"value": "fixed"}}  # else each render makes a new key
        key = (json.dumps(values, sort_keys=True), NAMESPACE, "vgpu-pool")
        via_binary = dict(chart._render_cached.__wrapped__(*key))  # type: ignore[attr-defined]
        monkeypatch.delenv("HELM_BIN")
        monkeypatch.setattr(chart, "_helm_binary", lambda: None)
        via_sdk = dict(chart._render_cached.__wrapped__(*key))  # type: ignore[attr-defined]
        monkeypatch.undo()
        monkeypatch.setenv("HELM_BIN", str(shim))

        def objects(files: dict[str, str]) -> list[Any]:
            docs = [d for p, t in sorted(files.items()) if not p.endswith("NOTES.txt") for d in yaml.safe_load_all(t)]
            return sorted(
                (d for d in docs if d),
                key=lambda d: (d["kind"], d["metadata"]["name"], d["metadata"].get("namespace", "")),
            )

        assert objects(via_binary) == objects(via_sdk)


@pytest.mark.parametrize(
    "values",
    [
        {"nodeAgent": {"nodeSelecter": {"a": "b"}}},  # a typo
        {"deviceConfig": {"policy": {"nodePolicy": "fastest"}}},
        {"scheduler": {"extender": {"httpTimeout": "1 second"}}},  # vc-scheduler would ignore it silently
        {"sidecar": {"port": 70000}},
        {"logLevel": "verbose"},
    ],
)
def test_values_schema_refuses(values: dict[str, Any]) -> None:
    with pytest.raises(RenderError):
        render(values)


@pytest.mark.parametrize("name", sorted(ALL_SCENARIOS))
def test_no_stray_whitespace(name: str) -> None:
    from .chart import render_files

    for path, text in render_files(ALL_SCENARIOS[name]).items():
        for n, line in enumerate(text.splitlines(), 1):
            assert line == line.rstrip(), f"{path}:{n}: trailing whitespace {line!r}"
