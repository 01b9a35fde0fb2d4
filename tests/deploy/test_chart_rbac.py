"""RBAC: each part gets what its code calls and nothing beyond the agreed lists.

The lists (the issue's): sidecar nodes get/list/watch, pods get/list/watch/patch, configmaps
get/list/watch, events create (core, optionally events.k8s.io); node agent nodes get/patch, pods
get/list/watch/patch, configmaps get/list/watch, events create. vc-scheduler's own ClusterRole
(deploy mode only) is Volcano's business and is checked only for where it is bound."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest

from .chart import NAMESPACE, component, find, render
from .conftest import requires_helm
from .scenarios import SCENARIOS

pytestmark = requires_helm

Grants = dict[tuple[str, str], set[str]]  # (apiGroup, resource) -> verbs

ALLOWED: dict[str, Grants] = {
    "sidecar": {
        ("", "nodes"): {"get", "list", "watch"},
        ("", "pods"): {"get", "list", "watch", "patch"},
        ("", "configmaps"): {"get", "list", "watch"},
        ("", "events"): {"create"},
        ("events.k8s.io", "events"): {"create"},
    },
    "node-agent": {
        ("", "nodes"): {"get", "patch"},
        ("", "pods"): {"get", "list", "watch", "patch"},
        ("", "configmaps"): {"get", "list", "watch"},
        ("", "events"): {"create"},
        ("events.k8s.io", "events"): {"create"},
    },
}

# What the code calls (vcplugin/sidecar/service.py, vcplugin/sidecar/extender.py, nodeagent/agent.py).
NEEDED: dict[str, Grants] = {
    "sidecar": {
        ("", "nodes"): {"list", "watch"},
        ("", "pods"): {"list", "watch", "patch"},
        ("", "configmaps"): {"list", "watch"},
        ("", "events"): {"create"},
    },
    "node-agent": {
        ("", "nodes"): {"patch"},
        ("", "pods"): {"list", "watch", "patch"},
        ("", "configmaps"): {"list", "watch"},
    },
}

SA = {
    "deploy": {"sidecar": (NAMESPACE, "vgpu-pool-scheduler"), "node-agent": (NAMESPACE, "vgpu-pool-node-agent")},
    "sidecar-only": {
        "sidecar": ("volcano-system", "volcano-scheduler"),
        "node-agent": (NAMESPACE, "vgpu-pool-node-agent"),
    },
}


def _roles(objects: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {
        (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o
        for o in objects
        if o["kind"] in ("Role", "ClusterRole")
    }


def _grants_by_subject(
    objects: list[dict[str, Any]],
) -> dict[tuple[str, str], list[tuple[dict[str, Any], dict[str, Any]]]]:
    """(sa namespace, sa name) -> [(binding, role)] for the chart's own roles."""
    roles = _roles(objects)
    out: dict[tuple[str, str], list[tuple[dict[str, Any], dict[str, Any]]]] = defaultdict(list)
    for b in objects:
        if b["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        ref = b["roleRef"]
        ns = b["metadata"].get("namespace", "") if ref["kind"] == "Role" else ""
        role = roles.get((ref["kind"], ns, ref["name"]))
        for s in b["subjects"]:
            assert s["kind"] == "ServiceAccount", s
            out[(s["namespace"], s["name"])].append((b, role or {"external": ref["name"]}))
    return out


def _flatten(role: dict[str, Any]) -> Grants:
    grants: Grants = defaultdict(set)
    for rule in role.get("rules", []):
        assert "nonResourceURLs" not in rule, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants[(group, resource)] |= set(rule["verbs"])
    return grants


@pytest.mark.parametrize("scenario", ["deploy", "sidecar-only", "everything", "deploy+metrics"])
def test_rbac_within_the_lists_and_enough(scenario: str) -> None:
    values = SCENARIOS[scenario]
    objects = render(values)
    mode = values.get("scheduler", {}).get("mode", "deploy")
    by_subject = _grants_by_subject(objects)
    for part in ("sidecar", "node-agent"):
        subject = SA[mode][part]
        got: Grants = defaultdict(set)
        for binding, role in by_subject[subject]:
            if "external" in role or component(role) == "vc-scheduler":
                assert part == "sidecar" and mode == "deploy", f"{part} bound to vc-scheduler's role"
                continue
            assert component(role) == part, f"{subject} bound to {role['metadata']['name']}"
            assert component(binding) == part
            for key, verbs in _flatten(role).items():
                got[key] |= verbs
        for key, verbs in got.items():
            assert "*" not in verbs and "*" not in key, (part, key, verbs)
            assert key in ALLOWED[part], f"{part} must not get {key}"
            assert verbs <= ALLOWED[part][key], f"{part} gets {verbs - ALLOWED[part][key]} on {key}"
        for key, verbs in NEEDED[part].items():
            assert verbs <= got.get(key, set()), f"{part} lacks {verbs - got.get(key, set())} on {key}"


@pytest.mark.parametrize("scenario", ["deploy", "sidecar-only"])
def test_no_role_is_bound_to_anyone_else(scenario: str) -> None:
    objects = render(SCENARIOS[scenario])
    mode = SCENARIOS[scenario].get("scheduler", {}).get("mode", "deploy")
    subjects = set(_grants_by_subject(objects))
    assert subjects == set(SA[mode].values())
    for role in find(objects, "ClusterRole") + find(objects, "Role"):
        assert component(role) in ("sidecar", "node-agent", "vc-scheduler"), role["metadata"]


def test_configmap_access_is_limited_to_the_device_config() -> None:
    objects = render()
    for role in find(objects, "Role"):
        for rule in role["rules"]:
            if "configmaps" in rule["resources"]:
                assert rule["resourceNames"] == ["vgpu-pool-device-config"]
                assert role["metadata"]["namespace"] == NAMESPACE
    # Cluster-wide, nobody of ours reads ConfigMaps, Secrets or anything but nodes and pods.
    for role in find(objects, "ClusterRole"):
        if component(role) == "vc-scheduler":
            continue
        assert set(_flatten(role)) <= {("", "nodes"), ("", "pods")}


def test_events_k8s_io_only_when_asked() -> None:
    def sidecar_grants(values: dict[str, Any]) -> Grants:
        g: Grants = defaultdict(set)
        for role in find(render(values), "Role") + find(render(values), "ClusterRole"):
            if component(role) == "sidecar":
                for k, v in _flatten(role).items():
                    g[k] |= v
        return g

    assert ("events.k8s.io", "events") not in sidecar_grants({})
    assert sidecar_grants({"rbac": {"eventsK8sIo": True}})[("events.k8s.io", "events")] == {"create"}


def test_vc_scheduler_role_only_in_deploy_mode() -> None:
    assert [r for r in find(render(), "ClusterRole") if component(r) == "vc-scheduler"]
    assert not [o for o in render(SCENARIOS["sidecar-only"]) if component(o) == "vc-scheduler"]
    # Binding an existing ClusterRole instead of making one.
    objects = render(SCENARIOS["everything"])
    assert not [r for r in find(objects, "ClusterRole") if component(r) == "vc-scheduler"]
    (b,) = [b for b in find(objects, "ClusterRoleBinding") if component(b) == "vc-scheduler"]
    assert b["roleRef"]["name"] == "volcano-scheduler"
    assert b["subjects"] == [{"kind": "ServiceAccount", "name": "vgpu-pool-scheduler", "namespace": NAMESPACE}]


def test_pods_run_as_the_bound_service_accounts() -> None:
    objects = render()
    (ds,) = find(objects, "DaemonSet")
    assert ds["spec"]["template"]["spec"]["serviceAccountName"] == SA["deploy"]["node-agent"][1]
    (dep,) = find(objects, "Deployment")
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == SA["deploy"]["sidecar"][1]
    sas = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in find(objects, "ServiceAccount")}
    assert sas == set(SA["deploy"].values())
    # sidecar-only: the existing vc-scheduler's account is not created, only bound.
    sas = {
        (o["metadata"]["namespace"], o["metadata"]["name"])
        for o in find(render(SCENARIOS["sidecar-only"]), "ServiceAccount")
    }
    assert sas == {SA["sidecar-only"]["node-agent"]}


def test_own_node_policy() -> None:
    objects = render(SCENARIOS["everything"])
    (policy,) = find(objects, "ValidatingAdmissionPolicy")
    (binding,) = find(objects, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    (cond,) = policy["spec"]["matchConditions"]
    assert (
        cond["expression"] == f"request.userInfo.username == 'system:serviceaccount:{NAMESPACE}:vgpu-pool-node-agent'"
    )
    assert not find(render(), "ValidatingAdmissionPolicy")
