"""Tests for the fake Kubernetes API server, driven through the real kubernetes_asyncio client."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from vgpupool_testing.fakeapi import FakeApiError, FakeKubeApi, Selector, json_patch, merge_patch

NS = "default"


@pytest.fixture
async def api() -> AsyncIterator[FakeKubeApi]:
    async with FakeKubeApi() as fake:
        yield fake


@pytest.fixture
async def v1(api: FakeKubeApi) -> AsyncIterator[client.CoreV1Api]:
    api_client = await api.new_client()  # config.new_client_from_config_dict(api.kubeconfig_dict())
    try:
        yield client.CoreV1Api(api_client)
    finally:
        await api_client.close()


def pod(name: str, ns: str = NS, node: str | None = None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "main", "image": "busybox",
                                            "env": [{"name": "A", "value": "1"}]}]}
    if node:
        spec["nodeName"] = node
    return {"metadata": {"name": name, "namespace": ns, "labels": labels or {}}, "spec": spec,
            "status": {"phase": "Pending"}}


async def collect(w: watch.Watch, n: int, timeout: float = 5.0) -> list[tuple[str, str]]:
    """Read n events from an already-started stream as (type, name) pairs."""
    out: list[tuple[str, str]] = []
    async with asyncio.timeout(timeout):
        async for ev in w:
            out.append((ev["type"], ev["raw_object"]["metadata"].get("name", "")))
            if len(out) == n:
                break
    return out


async def raw_get(api: FakeKubeApi, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.get(api.url + path) as r:
        return r.status, await r.json(content_type=None)


# --- plumbing -----------------------------------------------------------------------------------------


async def test_kubeconfig_file_and_discovery(api: FakeKubeApi, tmp_path: Any) -> None:
    cfg = client.Configuration()
    await config.load_kube_config(config_file=api.write_kubeconfig(str(tmp_path / "kubeconfig")),
                                  client_configuration=cfg)
    assert cfg.host == api.url
    async with client.ApiClient(cfg) as c:
        assert (await client.VersionApi(c).get_code()).git_version == "v1.30.0-fake"
        assert (await client.CoreApi(c).get_api_versions()).versions == ["v1"]
        names = {r.name for r in (await client.CoreV1Api(c).get_api_resources()).resources}
        assert {"pods", "pods/status", "pods/binding", "nodes", "nodes/status", "configmaps"} <= names


# --- CRUD ---------------------------------------------------------------------------------------------


async def test_pod_crud_roundtrip(api: FakeKubeApi, v1: client.CoreV1Api) -> None:
    created = await v1.create_namespaced_pod(NS, pod("p1", labels={"app": "x"}))
    assert created.metadata.uid and created.metadata.creation_timestamp is not None
    assert created.metadata.resource_version == "1" and created.kind == "Pod"
    with pytest.raises(ApiException) as exc:
        await v1.create_namespaced_pod(NS, pod("p1"))
    assert exc.value.status == 409 and json.loads(exc.value.body)["reason"] == "AlreadyExists"

    await v1.create_namespaced_pod("other", pod("p2", ns="other"))
    lst = await v1.list_namespaced_pod(NS)
    assert [p.metadata.name for p in lst.items] == ["p1"] and lst.metadata.resource_version == "2"
    everywhere = await v1.list_pod_for_all_namespaces()
    assert sorted(p.metadata.name for p in everywhere.items) == ["p1", "p2"]
    # Like the real apiserver, list items carry no kind/apiVersion.
    status, body = await raw_get(api, f"/api/v1/namespaces/{NS}/pods")
    assert status == 200 and body["kind"] == "PodList" and "kind" not in body["items"][0]

    got = await v1.read_namespaced_pod("p1", NS)
    got.metadata.labels["app"] = "y"
    replaced = await v1.replace_namespaced_pod("p1", NS, got)
    assert replaced.metadata.labels == {"app": "y"} and replaced.metadata.uid == created.metadata.uid
    assert int(replaced.metadata.resource_version) == 3

    deleted = await v1.delete_namespaced_pod("p1", NS)
    assert deleted.metadata.name == "p1"
    with pytest.raises(ApiException) as exc:
        await v1.read_namespaced_pod("p1", NS)
    assert exc.value.status == 404 and json.loads(exc.value.body)["reason"] == "NotFound"
    assert api.get("pods", NS, "p1") is None


async def test_nodes_and_status_subresource(api: FakeKubeApi, v1: client.CoreV1Api) -> None:
    await v1.create_node({"metadata": {"name": "n1", "labels": {"gpu": "a100"}}, "status": {"capacity": {}}})
    api.create("nodes", {"metadata": {"name": "n2"}})
    assert [n.metadata.name for n in (await v1.list_node(label_selector="gpu")).items] == ["n1"]
    assert [n.metadata.name for n in (await v1.list_node(label_selector="!gpu")).items] == ["n2"]

    cond = {"type": "Ready", "status": "True"}
    node = await v1.patch_node_status("n1", {"status": {"conditions": [cond], "capacity": {"nvidia.com/gpu": "8"}},
                                             "metadata": {"labels": {"ignored": "yes"}}})
    assert node.status.capacity == {"nvidia.com/gpu": "8"}
    assert "ignored" not in node.metadata.labels  # a /status write only changes status
    # Conditions are merged by type under strategic merge patch.
    await v1.patch_node_status("n1", {"status": {"conditions": [{"type": "DiskPressure", "status": "False"}]}})
    types = [c["type"] for c in api.get("nodes", None, "n1")["status"]["conditions"]]
    assert types == ["Ready", "DiskPressure"]
    # ...while a write to the main resource cannot change status.
    node = await v1.patch_node("n1", {"spec": {"unschedulable": True}, "status": {"capacity": {}}})
    assert node.spec.unschedulable is True and node.status.capacity == {"nvidia.com/gpu": "8"}
    assert [n.metadata.name for n in (await v1.list_node(field_selector="spec.unschedulable=true")).items] == ["n1"]

    await v1.delete_node("n2")
    assert [n["metadata"]["name"] for n in api.list("nodes")] == ["n1"]


async def test_configmaps_secrets_events(api: FakeKubeApi, v1: client.CoreV1Api) -> None:
    await v1.create_namespaced_config_map(NS, {"metadata": {"name": "cm"}, "data": {"k": "v"}})
    cm = await v1.patch_namespaced_config_map("cm", NS, {"data": {"k": None, "k2": "v2"}})
    assert cm.data == {"k2": "v2"}
    sec = await v1.create_namespaced_secret(NS, {"metadata": {"name": "s"}, "stringData": {"token": "abc"}})
    assert sec.data == {"token": base64.b64encode(b"abc").decode()} and sec.string_data is None
    for ns in ("a", "b"):
        await v1.create_namespaced_event(ns, {"metadata": {"generateName": "ev-"}, "reason": "Scheduled",
                                              "involvedObject": {"kind": "Pod", "name": "p"}})
    events = await v1.list_event_for_all_namespaces(field_selector="involvedObject.name=p")
    assert len(events.items) == 2 and all(e.metadata.name.startswith("ev-") for e in events.items)


async def test_namespaces_and_group_resources(api: FakeKubeApi, v1: client.CoreV1Api) -> None:
    await v1.create_namespace({"metadata": {"name": "gpu"}})
    assert (await v1.read_namespace("gpu")).metadata.name == "gpu"
    ns = await v1.patch_namespace_status("gpu", {"status": {"phase": "Active"}})
    assert ns.status.phase == "Active"
    coord = client.CoordinationV1Api(v1.api_client)
    lease = await coord.create_namespaced_lease("gpu", {"metadata": {"name": "leader"},
                                                        "spec": {"holderIdentity": "a"}})
    assert lease.kind == "Lease" and lease.api_version == "coordination.k8s.io/v1"
    lease.spec.holder_identity = "b"
    assert (await coord.replace_namespaced_lease("leader", "gpu", lease)).spec.holder_identity == "b"
    with pytest.raises(ApiException) as exc:  # the stale copy loses the leader-election race
        await coord.replace_namespaced_lease("leader", "gpu", lease)
    assert exc.value.status == 409
    assert api.get("leases", "gpu", "leader")["spec"]["holderIdentity"] == "b"


async def test_pagination_and_deletecollection(api: FakeKubeApi, v1: client.CoreV1Api) -> None:
    for i in range(5):
        api.create("pods", pod(f"p{i}", labels={"batch": "1" if i < 3 else "2"}))
    page = await v1.list_namespaced_pod(NS, limit=2)
    names = [p.metadata.name for p in page.items]
    while page.metadata._continue:
        page = await v1.list_namespaced_pod(NS, limit=2, _continue=page.metadata._continue)
        names += [p.metadata.name for p in page.items]
    assert names == [f"p{i}" for i in range(5)]
    await v1.delete_collection_namespaced_pod(NS, label_selector="batch=1")
    assert [p["metadata"]["name"] for p in api.list("pods", NS)] == ["p3", "p4"]


# --- patch --------------------------------------------------------------------------------------------


async def test_merge_patch_replaces_lists_and_null_deletes(api: FakeKubeApi, v1: client.CoreV1Api) -> None:
    api.create("pods", pod("p", labels={"a": "1", "b": "2"}))
    body = {"metadata": {"labels": {"a": None, "c": "3"}},
            "spec": {"containers": [{"name": "side", "image": "x"}]}}
    p = await v1.patch_namespaced_pod("p", NS, body, _content_type="application/merge-patch+json")
    assert p.metadata.labels == {"b": "2", "c": "3"}
    assert [c.name for c in p.spec.containers] == ["side"]  # merge patch replaces lists wholesale
    assert api.requests[-1].content_type == "application/merge-patch+json"


async def test_strategic_merge_patch_is_client_default_for_dicts(api: FakeKubeApi, v1: client.CoreV1Api) -> None:
    api.create("pods", pod("p"))
    body = {"spec": {"containers": [{"name": "main", "env": [{"name": "B", "value": "2"}]},
                                    {"name": "side", "image": "x"}]},
            "metadata": {"finalizers": ["f1"]}}
    p = await v1.patch_namespaced_pod("p", NS, body)
    assert api.requests[-1].content_type == "application/strategic-merge-patch+json"
    assert [c.name for c in p.spec.containers] == ["main", "side"]
    assert p.spec.containers[0].image == "busybox"
    assert [(e.name, e.value) for e in p.spec.containers[0].env] == [("A", "1"), ("B", "2")]
    p = await v1.patch_namespaced_pod("p", NS, {"spec": {"containers": [{"name": "side", "$patch": "delete"}]},
                                                "metadata": {"$deleteFromPrimitiveList/finalizers": ["f1"]}})
    assert [c.name for c in p.spec.containers] == ["main"] and not p.metadata.finalizers


async def test_json_patch_ops_and_pointer_escapes(api: FakeKubeApi, v1: client.CoreV1Api) -> None:
    api.create("pods", pod("p", labels={"app": "x"}))
    ops = [
        {"op": "test", "path": "/metadata/labels/app", "value": "x"},
        {"op": "add", "path": "/metadata/annotations", "value": {}},
        {"op": "add", "path": "/metadata/annotations/vgpu.io~1share", "value": "25"},
        {"op": "copy", "from": "/metadata/labels/app", "path": "/metadata/labels/copy"},
        {"op": "move", "from": "/metadata/labels/app", "path": "/metadata/labels/moved"},
        {"op": "replace", "path": "/spec/containers/0/image", "value": "alpine"},
        {"op": "add", "path": "/spec/containers/-", "value": {"name": "side", "image": "y"}},
        {"op": "remove", "path": "/spec/containers/0/env"},
    ]
    p = await v1.patch_namespaced_pod("p", NS, ops)  # a list body makes the client pick json-patch
    assert api.requests[-1].content_type == "application/json-patch+json"
    assert p.metadata.annotations == {"vgpu.io/share": "25"}
    assert p.metadata.labels == {"copy": "x", "moved": "x"}
    assert [(c.name, c.image) for c in p.spec.containers] == [("main", "alpine"), ("side", "y")]
    assert p.spec.containers[0].env is None


async def test_json_patch_failed_test_is_422_and_changes_nothing(api: FakeKubeApi, v1: client.CoreV1Api) -> None:
    api.create("pods", pod("p", labels={"app": "x"}))
    rv = api.resource_version
    ops = [{"op": "add", "path": "/metadata/labels/new", "value": "1"},
           {"op": "test", "path": "/metadata/labels/app", "value": "nope"}]
    with pytest.raises(ApiException) as exc:
        await v1.patch_namespaced_pod("p", NS, ops, _content_type="application/json-patch+json")
    assert exc.value.status == 422 and json.loads(exc.value.body)["reason"] == "Invalid"
    assert api.get("pods", NS, "p")["metadata"]["labels"] == {"app": "x"} and api.resource_version == rv


def test_patch_functions_rfc_examples() -> None:
    # RFC 7386 appendix A samples.
    assert merge_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": [{"b": "c"}]}, {"a": [1]}) == {"a": [1]}
    assert merge_patch({"e": None}, {"a": 1}) == {"e": None, "a": 1}
    assert merge_patch([1, 2], {"a": "b", "c": None}) == {"a": "b"}
    assert merge_patch({}, {"a": {"bb": {"ccc": None}}}) == {"a": {"bb": {}}}
    # RFC 6901 escapes: "~01" decodes to "~1", not "/".
    doc = {"a/b": 1, "m~n": 2, "~1": 3}
    assert json_patch(doc, [{"op": "remove", "path": "/a~1b"}, {"op": "remove", "path": "/m~0n"},
                            {"op": "replace", "path": "/~01", "value": 4}]) == {"~1": 4}
    assert json_patch([1, 2], [{"op": "add", "path": "/1", "value": 9}]) == [1, 9, 2]
    assert json_patch({"a": 1}, [{"op": "replace", "path": "", "value": [1]}]) == [1]
    for bad in ([{"op": "remove", "path": "/missing"}], [{"op": "add", "path": "/x/y", "value": 1}],
                [{"op": "test", "path": "/a", "value": True}],  # JSON true != 1
                [{"op": "replace", "path": "/l/5", "value": 1}], [{"op": "bogus", "path": "/a"}]):
        with pytest.raises(FakeApiError) as exc:
            json_patch({"a": 1, "l": [0]}, bad)
        assert exc.value.code == 422


async def test_stale_resource_version_conflicts(api: FakeKubeApi, v1: client.CoreV1Api) -> None:
    api.create("pods", pod("p"))
    stale = await v1.read_namespaced_pod("p", NS)
    api.patch("pods", NS, "p", {"metadata": {"labels": {"bumped": "1"}}})  # concurrent writer
    with pytest.raises(ApiException) as exc:
        await v1.patch_namespaced_pod("p", NS, {"metadata": {"resourceVersion": stale.metadata.resource_version,
                                                             "labels": {"x": "1"}}})
    assert exc.value.status == 409 and json.loads(exc.value.body)["reason"] == "Conflict"
    stale.metadata.labels = {"x": "1"}
    with pytest.raises(ApiException) as exc:
        await v1.replace_namespaced_pod("p", NS, stale)
    assert exc.value.status == 409
    # With the current RV both succeed.
    fresh = await v1.read_namespaced_pod("p", NS)
    fresh.metadata.labels["x"] = "1"
    assert (await v1.replace_namespaced_pod("p", NS, fresh)).metadata.labels == {"bumped": "1", "x": "1"}
    cur_rv = api.get("pods", NS, "p")["metadata"]["resourceVersion"]
    ok = await v1.patch_namespaced_pod("p", NS, [{"op": "test", "path": "/metadata/resourceVersion",
                                                  "value": cur_rv},
                                                 {"op": "add", "path": "/metadata/labels/y", "value": "2"}])
    assert ok.metadata.labels["y"] == "2"
    obj = api.get("pods", NS, "p")
    obj["metadata"]["resourceVersion"] = stale.metadata.resource_version
    with pytest.raises(FakeApiError) as err:  # the in-process API enforces the same precondition
        api.update("pods", obj)
    assert err.value.code == 409


async def test_noop_patch_does_not_bump_resource_version(api: FakeKubeApi, v1: client.CoreV1Api) -> None:
    api.create("pods", pod("p", labels={"a": "1"}))
    rv = api.resource_version
    p = await v1.patch_namespaced_pod("p", NS, {"metadata": {"labels": {"a": "1"}}})
    assert p.metadata.resource_version == str(rv) and api.resource_version == rv


async def test_binding_sets_node_and_returns_status(api: FakeKubeApi, v1: client.CoreV1Api) -> None:
    api.create("pods", pod("p"))
    body = {"metadata": {"name": "p"}, "target": {"kind": "Node", "name": "n1"}}
    # Like the real apiserver the reply is a Status, which kubernetes_asyncio cannot deserialize into a
    # V1Binding (target is required): callers must pass _preload_content=False.
    with pytest.raises(ValueError, match="target"):
        await v1.create_namespaced_pod_binding("p", NS, body)
    assert api.get("pods", NS, "p")["spec"]["nodeName"] == "n1"
    api.update("pods", {**api.get("pods", NS, "p"), "spec": {"containers": []}})  # unbind (god mode)
    resp = await v1.create_namespaced_pod_binding("p", NS, body, _preload_content=False)
    assert resp.status == 201 and (await resp.json())["status"] == "Success"
    p = api.get("pods", NS, "p")
    assert p["spec"]["nodeName"] == "n1" and p["status"]["conditions"][0]["type"] == "PodScheduled"
    # Beware: with _preload_content=False kubernetes_asyncio does NOT raise on HTTP errors.
    resp = await v1.create_namespaced_pod_binding("p", NS, body, _preload_content=False)
    assert resp.status == 409 and (await resp.json())["reason"] == "Conflict"


async def test_finalizers_defer_deletion(api: FakeKubeApi, v1: client.CoreV1Api) -> None:
    api.create("pods", {**pod("p"), "metadata": {"name": "p", "namespace": NS, "finalizers": ["vgpu.io/x"]}})
    p = await v1.delete_namespaced_pod("p", NS, grace_period_seconds=30)
    assert p.metadata.deletion_timestamp is not None
    assert api.get("pods", NS, "p") is not None
    await v1.patch_namespaced_pod("p", NS, {"metadata": {"finalizers": None}},
                                  _content_type="application/merge-patch+json")
    assert api.get("pods", NS, "p") is None


def test_selector_parsing() -> None:
    obj = {"metadata": {"name": "p", "namespace": "ns", "labels": {"env": "prod", "tier": "web"}},
           "spec": {"nodeName": ""}, "status": {"phase": "Running"}}
    for sel, want in [("env=prod", True), ("env==prod,tier=web", True), ("env!=prod", False),
                      ("missing!=x", True), ("env", True), ("!env", False), ("env in (dev, prod)", True),
                      ("env notin (prod)", False), ("tier in (db),env", False)]:
        assert Selector(labels=sel).matches(obj) is want, sel
    for sel, want in [("spec.nodeName=", True), ("spec.nodeName!=", False), ("status.phase=Running", True),
                      ("metadata.name=p,metadata.namespace=ns", True), ("metadata.namespace!=ns", False)]:
        assert Selector(fields=sel).matches(obj) is want, sel
    with pytest.raises(FakeApiError):
        Selector(labels="a=b=c")


# --- watch --------------------------------------------------------------------------------------------


async def test_watch_field_selector_translates_transitions(api: FakeKubeApi, v1: client.CoreV1Api) -> None:
    api.create("pods", pod("elsewhere", node="n2"))  # never matches: not delivered
    rv = str(api.resource_version)  # (RV "0" would mean "start from current state" instead)
    async with watch.Watch() as w:
        w.stream(v1.list_pod_for_all_namespaces, field_selector="spec.nodeName=n1", resource_version=rv,
                 timeout_seconds=10)
        reader = asyncio.create_task(collect(w, 4))
        api.create("pods", pod("a"))  # unscheduled: not delivered yet
        api.patch("pods", NS, "a", {"spec": {"nodeName": "n1"}})  # starts matching -> ADDED
        api.patch("pods", NS, "a", {"metadata": {"labels": {"x": "1"}}})  # MODIFIED
        api.patch("pods", NS, "a", {"spec": {"nodeName": "n3"}})  # stops matching -> DELETED
        api.create("pods", pod("b", node="n1"))  # ADDED
        assert await reader == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a"), ("ADDED", "b")]
    api.create("pods", pod("c"))
    unscheduled = await v1.list_pod_for_all_namespaces(field_selector="spec.nodeName=")
    assert [p.metadata.name for p in unscheduled.items] == ["c"]


async def test_watch_replays_history_and_events_carry_kind(api: FakeKubeApi, v1: client.CoreV1Api) -> None:
    api.create("pods", pod("old"))
    start = api.resource_version
    await v1.create_namespaced_pod(NS, pod("p", labels={"app": "gpu"}))
    await v1.patch_namespaced_pod("p", NS, {"metadata": {"labels": {"v": "2"}}})
    await v1.delete_namespaced_pod("p", NS)
    async with watch.Watch() as w:
        w.stream(v1.list_namespaced_pod, NS, label_selector="app=gpu", resource_version=str(start),
                 timeout_seconds=10)
        events = []
        async for ev in w:
            events.append(ev)
            if len(events) == 3:
                break
    assert [(e["type"], e["object"].metadata.name) for e in events] == [
        ("ADDED", "p"), ("MODIFIED", "p"), ("DELETED", "p")]
    assert all(e["raw_object"]["kind"] == "Pod" and e["raw_object"]["apiVersion"] == "v1" for e in events)
    assert [int(e["object"].metadata.resource_version) for e in events] == [start + 1, start + 2, start + 3]


async def test_watch_without_rv_starts_with_synthetic_added(api: FakeKubeApi, v1: client.CoreV1Api) -> None:
    api.create("nodes", {"metadata": {"name": "n1"}})
    api.create("nodes", {"metadata": {"name": "n2"}})
    async with watch.Watch() as w:
        w.stream(v1.list_node, timeout_seconds=10)
        reader = asyncio.create_task(collect(w, 3))
        await api.wait_for_watchers()
        api.delete("nodes", None, "n1")
        assert await reader == [("ADDED", "n1"), ("ADDED", "n2"), ("DELETED", "n1")]


async def test_watch_timeout_ends_stream(api: FakeKubeApi, v1: client.CoreV1Api) -> None:
    t0 = time.monotonic()
    async with watch.Watch() as w:
        events = [ev async for ev in w.stream(v1.list_node, timeout_seconds=1)]
    assert events == [] and 0.9 < time.monotonic() - t0 < 3


async def test_watch_expired_rv_raises_410(api: FakeKubeApi, v1: client.CoreV1Api) -> None:
    api.create("pods", pod("p"))
    old = str(api.resource_version)
    api.patch("pods", NS, "p", {"metadata": {"labels": {"x": "1"}}})
    api.compact()
    # The apiserver sends a 200 stream with one ERROR event; kubernetes_asyncio turns it into ApiException.
    with pytest.raises(ApiException) as exc:
        async with watch.Watch() as w:
            async for _ in w.stream(v1.list_namespaced_pod, NS, resource_version=old, timeout_seconds=5):
                pass
    assert exc.value.status == 410 and "Expired" in exc.value.reason
    assert api.count("watch", "pods") == 1
    # Without timeout_seconds the client silently re-watches once from the same RV before raising.
    with pytest.raises(ApiException) as exc:
        async with watch.Watch() as w:
            async for _ in w.stream(v1.list_namespaced_pod, NS, resource_version=old):
                pass
    assert exc.value.status == 410 and api.count("watch", "pods") == 3
    # A watch from the current RV is still fine after compaction.
    async with watch.Watch() as w:
        w.stream(v1.list_namespaced_pod, NS, resource_version=str(api.resource_version), timeout_seconds=5)
        reader = asyncio.create_task(collect(w, 1))
        api.delete("pods", NS, "p")
        assert await reader == [("DELETED", "p")]


async def test_bounded_history_expires_old_rvs() -> None:
    async with FakeKubeApi(max_history=3) as small:
        for i in range(5):
            small.create("configmaps", {"metadata": {"name": f"c{i}", "namespace": NS}})
        _, body = await raw_get(small, "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=1")
        assert body["type"] == "ERROR" and body["object"]["code"] == 410
        async with aiohttp.ClientSession() as s, s.get(
                small.url + "/api/v1/namespaces/default/configmaps",
                params={"watch": "true", "resourceVersion": "2", "timeoutSeconds": "1"}) as r:
            lines = [json.loads(line) async for line in r.content]
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in lines] == [
            ("ADDED", "c2"), ("ADDED", "c3"), ("ADDED", "c4")]


async def test_bookmarks(api: FakeKubeApi, v1: client.CoreV1Api) -> None:
    async with watch.Watch() as w:
        w.stream(v1.list_namespaced_pod, NS, allow_watch_bookmarks=True, resource_version="0", timeout_seconds=5)
        reader = asyncio.create_task(collect(w, 2))
        await api.wait_for_watchers()
        api.create("pods", pod("p"))
        api.send_bookmarks()
        assert await reader == [("ADDED", "p"), ("BOOKMARK", "")]
        assert w.resource_version == str(api.resource_version)


# --- fault injection ----------------------------------------------------------------------------------


async def test_fail_next_and_request_log(api: FakeKubeApi, v1: client.CoreV1Api) -> None:
    api.create("pods", pod("p"))
    api.fail_next(2, status=500, verbs={"get"}, path_contains="/pods/p")
    for _ in range(2):
        with pytest.raises(ApiException) as exc:
            await v1.read_namespaced_pod("p", NS)
        assert exc.value.status == 500 and json.loads(exc.value.body)["reason"] == "InternalError"
    await v1.list_namespaced_pod(NS)  # verb does not match: unaffected
    assert (await v1.read_namespaced_pod("p", NS)).metadata.name == "p"  # budget used up
    api.fail_next(1, status=429, verbs={"PATCH"})
    with pytest.raises(ApiException) as exc:
        await v1.patch_namespaced_pod("p", NS, {"metadata": {"labels": {"a": "b"}}})
    assert exc.value.status == 429 and exc.value.headers["Retry-After"] == "1"
    assert api.count("get", "pods") == 3 and api.count("list", "pods") == 1 and api.count("patch") == 1
    last = api.requests[-1]
    assert (last.method, last.path, last.verb, last.body) == (
        "PATCH", "/api/v1/namespaces/default/pods/p", "patch", {"metadata": {"labels": {"a": "b"}}})


async def test_conflict_next_patch(api: FakeKubeApi, v1: client.CoreV1Api) -> None:
    api.create("pods", pod("p"))
    api.conflict_next_patch(1)
    with pytest.raises(ApiException) as exc:
        await v1.patch_namespaced_pod("p", NS, {"metadata": {"labels": {"a": "b"}}})
    assert exc.value.status == 409
    assert "a" not in api.get("pods", NS, "p")["metadata"]["labels"]
    p = await v1.patch_namespaced_pod("p", NS, {"metadata": {"labels": {"a": "b"}}})
    assert p.metadata.labels == {"a": "b"}


async def test_fail_next_on_watch_surfaces_as_api_exception(api: FakeKubeApi, v1: client.CoreV1Api) -> None:
    api.fail_next(1, status=503, verbs={"watch"})
    with pytest.raises(ApiException) as exc:
        async with watch.Watch() as w:
            async for _ in w.stream(v1.list_namespaced_pod, NS, timeout_seconds=5):
                pass
    assert exc.value.status == 503


async def test_delay(api: FakeKubeApi, v1: client.CoreV1Api) -> None:
    api.delay(0.3, path_contains="/nodes")
    t0 = time.monotonic()
    await v1.list_node()
    assert time.monotonic() - t0 >= 0.3
    t0 = time.monotonic()
    await v1.list_namespaced_pod(NS)
    assert time.monotonic() - t0 < 0.3
    api.delay(0, path_contains="/nodes")
    t0 = time.monotonic()
    await v1.list_node()
    assert time.monotonic() - t0 < 0.3


async def test_drop_watches_abruptly(api: FakeKubeApi, v1: client.CoreV1Api) -> None:
    async with watch.Watch() as w:
        w.stream(v1.list_namespaced_pod, NS)  # no timeout: the client would reconnect on a clean EOF
        reader = asyncio.create_task(collect(w, 5))
        await api.wait_for_watchers()
        api.create("pods", pod("p"))
        await asyncio.sleep(0.1)
        assert api.drop_watches() == 1
        # A torn-down TCP stream is not retried by kubernetes_asyncio: it surfaces to the caller.
        with pytest.raises(aiohttp.ClientPayloadError):
            await reader
    await asyncio.sleep(0.05)
    assert api.watcher_count == 0


async def test_drop_watches_gracefully_ends_stream(api: FakeKubeApi, v1: client.CoreV1Api) -> None:
    async with watch.Watch() as w:
        w.stream(v1.list_namespaced_pod, NS, timeout_seconds=30)
        reader = asyncio.create_task(collect(w, 5))
        await api.wait_for_watchers()
        api.create("pods", pod("p"))
        await asyncio.sleep(0.1)
        api.drop_watches(graceful=True)
        assert await asyncio.wait_for(reader, 2) == [("ADDED", "p")]  # clean end, long before the timeout
    # Without timeout_seconds kubernetes_asyncio reconnects after a clean end, resuming from its last RV.
    async with watch.Watch() as w:
        w.stream(v1.list_namespaced_pod, NS)
        reader = asyncio.create_task(collect(w, 2))
        await api.wait_for_watchers()
        api.drop_watches(graceful=True)
        await asyncio.sleep(0.1)
        await api.wait_for_watchers()
        api.delete("pods", NS, "p")
        assert await reader == [("ADDED", "p"), ("DELETED", "p")]
    assert api.count("watch", "pods") == 3
