"""The sidecar in process against the fake kube-apiserver, driven by the Volcano-like driver.

`cluster` starts FakeKubeApi, a KubeClient, the Sidecar and a VolcanoDriver; `start_cluster(**opts)`
does the same with other ServeOptions. Helpers build GPU nodes and pods in the shapes the device
plugin and users write, and poll for state changes with a deadline."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from vcplugin.kube.client import KubeClient
from vcplugin.sidecar.service import ServeOptions, Sidecar
from vgpupool_testing.fakeapi import FakeKubeApi
from vgpupool_testing.volcano import VolcanoDriver

Obj = dict[str, Any]
KEY = b"test-signing-key"
A100 = "NVIDIA A100-PCIE-40GB"
A100_UUID = "GPU-0fc3eda5-e98b-a25b-5b0d-cf5c855d1448"
NS = "default"


def gpu_uuid(node: str, index: int) -> str:
    return f"GPU-{node}-{index:04d}"


def registration(
    node: str, gpus: int, mode: str, model: str = A100, memory: int = 40960, uuids: list[str] | None = None
) -> str:
    """`volcano.sh/node-vgpu-register` as the device plugin writes it."""
    ids = uuids or [gpu_uuid(node, i) for i in range(gpus)]
    return "".join(f"{u},10,{memory},NVIDIA-{model},true,{mode}:" for u in ids)


def gpu_node(
    name: str,
    gpus: int = 1,
    mode: str = "mig",
    *,
    model: str = A100,
    memory: int = 40960,
    uuids: list[str] | None = None,
    annotations: dict[str, str] | None = None,
    register: bool = True,
) -> Obj:
    """A v1 Node with the registration annotation and the GPU resources in status.allocatable
    (Volcano rejects a node that does not list them before asking the extender)."""
    anns = dict(annotations or {})
    if register:
        anns["volcano.sh/node-vgpu-register"] = registration(name, gpus, mode, model, memory, uuids)
    resources = {
        "cpu": "32",
        "memory": "263855044Ki",
        "pods": "110",
        "nvidia.com/gpu": str(10 * gpus),
        "nvidia.com/gpumem": str(memory * gpus),
        "nvidia.com/gpucores": str(100 * gpus),
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}, "annotations": anns},
        "spec": {},
        "status": {
            "capacity": dict(resources),
            "allocatable": dict(resources),
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
        },
    }


def gpu_pod(
    name: str,
    count: int | None = 1,
    mem: int | str | None = None,
    cores: int | None = None,
    *,
    mode: str | None = None,
    group: str | None = None,
    namespace: str = NS,
    annotations: dict[str, str] | None = None,
    node: str | None = None,
) -> Obj:
    """A pod asking for vGPUs in its limits (the apiserver copies them into requests)."""
    limits: dict[str, str] = {}
    if count is not None:
        limits["nvidia.com/gpu"] = str(count)
    if mem is not None:
        limits["nvidia.com/gpumem"] = str(mem)
    if cores is not None:
        limits["nvidia.com/gpucores"] = str(cores)
    anns = dict(annotations or {})
    if mode:
        anns["nvidia.com/vgpu-mode"] = mode
    if group:
        anns["scheduling.k8s.io/group-name"] = group
        anns["volcano.sh/task-spec"] = "worker"
    spec: Obj = {
        "schedulerName": "volcano",
        "restartPolicy": "OnFailure",
        "containers": [
            {
                "name": "main",
                "image": "nvidia/cuda:12.4.0-base-ubuntu22.04",
                "command": ["sleep", "infinity"],
                "resources": {"limits": limits, "requests": {"cpu": "1", "memory": "2Gi", **limits}},
            }
        ],
    }
    if node:
        spec["nodeName"] = node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "annotations": anns},
        "spec": spec,
        "status": {"phase": "Pending", "qosClass": "Burstable"},
    }


def plain_pod(name: str, namespace: str = NS) -> Obj:
    return {
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"containers": [{"name": "main", "image": "busybox", "resources": {"requests": {"cpu": "100m"}}}]},
        "status": {"phase": "Pending"},
    }


async def wait_until(cond: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    """Poll `cond` (sync or async) until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        value = cond()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        last = value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        await asyncio.sleep(0.01)


def usage(sidecar: Sidecar) -> dict[str, list[tuple[str, int, int, int, tuple[tuple[str, int, str], ...]]]]:
    """Per node: (gpu uuid, used memory, used cores, shares, MIG instances (profile, start, pod))."""
    return {
        name: [
            (
                g.uuid,
                g.used_memory,
                g.used_cores,
                g.shares,
                tuple(sorted((i.profile, i.start, i.pod) for i in g.instances)),
            )
            for g in state.gpus
        ]
        for name, state in sorted(sidecar.state.states.items())
    }


def used_memory(sidecar: Sidecar, node: str | None = None) -> int:
    return sum(g.used_memory for n, s in sidecar.state.states.items() if node in (None, n) for g in s.gpus)


def assignment_of(api: FakeKubeApi, name: str, namespace: str = NS) -> Obj | None:
    pod = api.get("pods", namespace, name)
    raw = ((pod or {}).get("metadata", {}).get("annotations") or {}).get("vgpu-pool.io/assignment")
    return json.loads(raw) if raw else None


def annotations_of(api: FakeKubeApi, name: str, namespace: str = NS) -> dict[str, str]:
    pod = api.get("pods", namespace, name)
    return dict(((pod or {}).get("metadata") or {}).get("annotations") or {})


def metric_lines(text: str, *names: str) -> list[str]:
    return sorted(line for line in text.splitlines() if line.split("{")[0].split(" ")[0] in names)


@dataclass
class Cluster:
    api: FakeKubeApi
    opts: ServeOptions
    kube: KubeClient | None = None
    sidecar: Sidecar | None = None
    driver: VolcanoDriver | None = None
    url: str = ""
    _stopped: list[tuple[Sidecar, KubeClient]] = field(default_factory=list)

    @property
    def sc(self) -> Sidecar:
        assert self.sidecar is not None
        return self.sidecar

    @property
    def volcano(self) -> VolcanoDriver:
        assert self.driver is not None
        return self.driver

    async def start(self, wait: bool = True) -> None:
        self.kube = KubeClient(await self.api.new_client())
        self.sidecar = Sidecar(self.kube, self.opts)
        self.url = await self.sidecar.start()
        if wait:
            await self.sidecar.wait_synced(timeout=5)
        self.driver = VolcanoDriver(self.url)

    async def stop(self) -> None:
        if self.driver is not None:
            await self.driver.close()
            self.driver = None
        if self.sidecar is not None:
            await self.sidecar.stop()
            self.sidecar = None
        if self.kube is not None:
            await self.kube.close()
            self.kube = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    def create(self, kind: str, obj: Obj) -> Obj:
        return self.api.create(kind, obj)

    def pods(self) -> list[Obj]:
        return self.api.list("pods")

    def nodes(self) -> list[Obj]:
        return self.api.list("nodes")

    async def get(self, path: str) -> tuple[int, str]:
        async with aiohttp.ClientSession() as s, s.get(self.url + path) as r:
            return r.status, await r.text()

    async def metrics(self) -> str:
        status, text = await self.get("/metrics")
        assert status == 200
        return text

    async def synced_pod(
        self, name: str, pred: Callable[[Obj], bool], namespace: str = NS, timeout: float = 5.0
    ) -> Obj:
        """Wait until the sidecar's cache holds a version of the pod for which `pred` holds."""

        def check() -> Obj | None:
            for entry in self.sc.state.pods.values():
                p = entry.pod
                if p.metadata.name == name and p.metadata.namespace == namespace:
                    d = p.as_dict()
                    d.setdefault("metadata", {}).setdefault("annotations", {})
                    d.setdefault("spec", {})
                    d.setdefault("status", {})
                    return d if pred(d) else None
            return None

        return await wait_until(check, timeout, f"pod {namespace}/{name} in the sidecar's cache")  # type: ignore[no-any-return]


def serve_options(**overrides: Any) -> ServeOptions:
    opts: dict[str, Any] = {"listen": "127.0.0.1:0", "config_map": None, "signing_key": KEY}
    opts.update(overrides)
    return ServeOptions(**opts)


@pytest.fixture
async def start_cluster() -> AsyncIterator[Callable[..., Awaitable[Cluster]]]:
    """`await start_cluster(nodes=[...], pods=[...], **serve_options)`: objects are created before
    the sidecar starts (so its first list sees them)."""
    started: list[Cluster] = []
    apis: list[FakeKubeApi] = []

    async def start(
        nodes: Sequence[Obj] = (),
        pods: Sequence[Obj] = (),
        wait: bool = True,
        setup: Callable[[FakeKubeApi], None] | None = None,
        **overrides: Any,
    ) -> Cluster:
        api = FakeKubeApi()
        await api.start()
        apis.append(api)
        for n in nodes:
            api.create("nodes", n)
        for p in pods:
            api.create("pods", p)
        if setup is not None:
            setup(api)
        c = Cluster(api, serve_options(**overrides))
        started.append(c)
        await c.start(wait=wait)
        return c

    yield start
    for c in started:
        await c.stop()
    for api in apis:
        await api.stop()


@pytest.fixture
async def cluster(start_cluster: Callable[..., Awaitable[Cluster]]) -> Cluster:
    return await start_cluster()
