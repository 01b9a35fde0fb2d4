"""The whole system in one process: an in-memory Kubernetes API, the sidecar, one node agent per node
on a simulated NVML, one fake kubelet per node, and a Volcano-like driver.

Everything here is a simulation (vgpupool_testing is test equipment); only the services themselves,
the sidecar and the node agents, are the product, and they run unmodified: they talk to the API
over real HTTP list/watch/patch, the driver talks to the sidecar over real HTTP, and kubelet talks to
each agent's device plugin over real gRPC on a unix socket."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from nodeagent.agent import AgentOptions, NodeAgent
from nodeagent.hamicore_env import HamiCorePaths
from vgpupool_testing.fakeapi import FakeKubeApi
from vgpupool_testing.kubelet import FakeKubelet
from vgpupool_testing.simnvml import SimNvml
from vgpupool_testing.volcano import VolcanoDriver

from ..core import names
from ..core.config import DeviceConfig, load_config_text
from ..kube.client import KubeClient
from ..protocol.registration import decode_registration
from ..sidecar.service import ServeOptions, Sidecar
from .workload import DemoNode, Plan

log = logging.getLogger("vcplugin.demo")
Obj = dict[str, Any]
RESOURCE = "nvidia.com/gpu"
HOST_RESOURCES = {"cpu": "128", "memory": "1024Gi", "pods": "110"}


def demo_config(nodes: tuple[DemoNode, ...]) -> DeviceConfig:
    """The shipped device config with one nodeconfig entry per node (its operating mode), loaded
    through the same validation a ConfigMap gets."""
    text = resources.files("vcplugin").joinpath("data/device-config.yaml").read_text()
    data = yaml.safe_load(text)
    data["nvidia"]["nodeconfig"] = [{"name": n.name, "operatingmode": n.type.mode} for n in nodes]
    return load_config_text(yaml.safe_dump(data, sort_keys=False), "demo config (shipped default + nodeconfig)")


@dataclass
class Admission:
    """What kubelet got back from the node's device plugin for one pod."""

    ok: bool
    envs: list[dict[str, str]] = field(default_factory=list)  # one per container that asked for vGPUs
    error: str = ""
    seconds: float = 0.0


@dataclass
class NodeRuntime:
    spec: DemoNode
    sim: SimNvml
    agent: NodeAgent
    kube: KubeClient
    kubelet: FakeKubelet | None
    free_ids: list[str] = field(default_factory=list)  # kubelet's unallocated device IDs
    held_ids: dict[str, list[str]] = field(default_factory=dict)  # pod uid -> device IDs

    @property
    def name(self) -> str:
        return self.spec.name


class DemoCluster:
    """Start with `await start()`, stop with `await stop()` (or `async with`)."""

    def __init__(
        self,
        plan: Plan,
        workdir: str,
        *,
        signing_key: bytes,
        device_plugins: bool = True,
        status: Callable[[str], None] = lambda msg: None,
    ):
        self.plan = plan
        self.workdir = workdir
        self.key = signing_key
        self.device_plugins = device_plugins
        self.status = status
        self.config = demo_config(plan.nodes)
        self.api = FakeKubeApi()
        self.nodes: dict[str, NodeRuntime] = {}
        self.sidecar: Sidecar | None = None
        self.sidecar_kube: KubeClient | None = None
        self.driver: VolcanoDriver | None = None
        self.url = ""

    async def __aenter__(self) -> DemoCluster:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def sc(self) -> Sidecar:
        assert self.sidecar is not None, "cluster not started"
        return self.sidecar

    @property
    def volcano(self) -> VolcanoDriver:
        assert self.driver is not None, "cluster not started"
        return self.driver

    # --- start and stop ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.api.start()
        for n in self.plan.nodes:
            self.api.create("nodes", _node_object(n))
        self.status(f"starting {len(self.plan.nodes)} node agents (simulated NVML, device plugins, kubelets)")
        # Agents start concurrently: each discovers its GPUs, enables nothing (MIG mode is already on
        # where wanted), publishes them on its Node and registers its device plugin with kubelet.
        await asyncio.gather(*(self._start_node(n) for n in self.plan.nodes))
        self.status("starting the scheduler sidecar")
        self.sidecar_kube = KubeClient(await self.api.new_client())
        opts = ServeOptions(listen="127.0.0.1:0", config_map=None, config=self.config, signing_key=self.key)
        self.sidecar = Sidecar(self.sidecar_kube, opts)
        self.url = await self.sidecar.start()
        await self.sidecar.wait_synced()
        await self.wait_for(self._all_nodes_usable, 30, "every node registered with the sidecar")
        # vc-scheduler's own settings: 1 s HTTP timeout (Volcano's default), 16 concurrent predicates.
        self.driver = VolcanoDriver(self.url)

    def _all_nodes_usable(self) -> bool:
        states, problems = self.sc.state.states, self.sc.state.problems
        return all(n.name in states and n.name not in problems for n in self.plan.nodes)

    async def _start_node(self, n: DemoNode) -> None:
        d = os.path.join(self.workdir, n.name)
        os.makedirs(d, exist_ok=True)
        sim = SimNvml.from_dict(
            {"gpus": [{"model": n.type.model, "count": n.type.gpus, "mig": n.type.mode == names.MODE_MIG}],
             "seed": n.seed}
        )  # fmt: skip
        kubelet: FakeKubelet | None = None
        if self.device_plugins:
            kubelet = FakeKubelet(d, timeout=15.0)
            await kubelet.start()
        kube = KubeClient(await self.api.new_client())
        opts = AgentOptions(
            n.name,
            config_map=None,
            config=self.config,
            signing_key=self.key,
            device_plugin_dir=d,
            state_file=os.path.join(d, "owned.json"),
            hami_core=HamiCorePaths(host_dir=os.path.join(d, "vgpu"), lock_dir=os.path.join(d, "vgpulock")),
            grace=0.5,  # the real default is 30 s; a demo step is far shorter
            reconcile_interval=1.0,
            allocate_wait=10.0,
            # Memory and cores as kubelet devices would be one device per MiB: ~650,000 for an
            # 8 x H100 node. The demo's kubelet puts them in the Node's allocatable directly.
            advertise_memory_cores=False,
            device_plugins=self.device_plugins,
        )
        agent = NodeAgent(kube, sim, opts)
        await agent.start()
        rt = NodeRuntime(n, sim, agent, kube, kubelet)
        self.nodes[n.name] = rt
        if kubelet is not None:
            await kubelet.wait_registered(RESOURCE)
            devices = await kubelet.wait_devices(RESOURCE, lambda ds: len(ds) > 0)
            rt.free_ids = [d.ID for d in devices]
        else:
            rt.free_ids = [f"{g.info.uuid}::{k}" for g in agent.gpus for k in range(g.split)]
        self._publish_allocatable(rt)

    def _publish_allocatable(self, rt: NodeRuntime) -> None:
        """Kubelet's part: the Node's capacity lists the extended resources the device plugins
        advertise (Volcano checks a pod's requests against them before asking the extender)."""
        node = self.api.get("nodes", None, rt.name)
        assert node is not None
        reg = decode_registration(node["metadata"]["annotations"][names.ANNO_NODE_REGISTER])
        healthy = [g for g in reg if g.healthy]
        res = dict(HOST_RESOURCES)
        res[RESOURCE] = str(len(rt.free_ids))
        res["nvidia.com/gpumem"] = str(sum(g.memory for g in healthy))
        res["nvidia.com/gpucores"] = str(100 * len(healthy))
        self.api.patch("nodes", None, rt.name, {"status": {"capacity": res, "allocatable": res}})

    async def stop(self) -> None:
        if self.driver is not None:
            await self.driver.close()
        if self.sidecar is not None:
            await self.sidecar.stop()
        await asyncio.gather(*(rt.agent.stop() for rt in self.nodes.values()), return_exceptions=True)
        for rt in self.nodes.values():
            if rt.kubelet is not None:
                await rt.kubelet.stop()
            await rt.kube.close()
        if self.sidecar_kube is not None:
            await self.sidecar_kube.close()
        await self.api.stop()

    # --- what the rest of a cluster does --------------------------------------------------------

    @staticmethod
    async def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
            await asyncio.sleep(0.005)

    async def sidecar_sees(self, present: set[str], gone: set[str], timeout: float = 30.0) -> bool:
        """Wait until the sidecar's informer has delivered these pod creations and deletions, so that a
        session right after an API write does not run on the older cache. On a machine so loaded that
        it takes longer, go on anyway: the sidecar then answers from its older cache, as it would in a
        real cluster, and the next session catches up."""
        pods = self.sc.state.pods
        try:
            await self.wait_for(
                lambda: all(u in pods for u in present) and not any(u in pods for u in gone),
                timeout,
                "the sidecar's pod cache",
            )
        except TimeoutError as exc:
            log.warning("%s; scheduling on the older cache", exc)
            return False
        return True

    async def admit(self, pod: Obj) -> Admission:
        """Kubelet admitting a bound pod: Allocate on the node's device plugin for the containers that
        ask for vGPUs (device IDs from kubelet's free list), then the pod runs."""
        meta, spec = pod["metadata"], pod["spec"]
        rt = self.nodes[spec["nodeName"]]
        requests: list[list[str]] = []
        for c in spec.get("containers") or []:
            count = int((c.get("resources", {}).get("limits") or {}).get(RESOURCE, 0))
            if count:
                ids, rt.free_ids = rt.free_ids[:count], rt.free_ids[count:]
                requests.append(ids)
        rt.held_ids[meta["uid"]] = [i for ids in requests for i in ids]
        started = time.perf_counter()
        try:
            if rt.kubelet is not None:
                resp = await rt.kubelet.allocate(RESOURCE, requests)
                envs = [dict(c.envs) for c in resp.container_responses]
            else:
                envs = [dict(a.envs) for a in await rt.agent.allocate(requests)]
        except Exception as exc:  # a gRPC error: kubelet fails the pod (UnexpectedAdmissionError)
            details = getattr(exc, "details", None)
            why = details() if callable(details) else str(exc)
            self.api.patch("pods", meta["namespace"], meta["name"], {"status": {"phase": "Failed"}})
            return Admission(False, error=why or type(exc).__name__, seconds=time.perf_counter() - started)
        self.api.patch("pods", meta["namespace"], meta["name"], {"status": {"phase": "Running"}})
        return Admission(True, envs, seconds=time.perf_counter() - started)

    def delete_pod(self, pod: Obj) -> None:
        """The job finished: the pod is deleted and kubelet frees its device IDs."""
        meta = pod["metadata"]
        node = (pod.get("spec") or {}).get("nodeName")
        if node in self.nodes:
            self.nodes[node].free_ids.extend(self.nodes[node].held_ids.pop(meta["uid"], []))
        self.api.delete("pods", meta["namespace"], meta["name"])


def _node_object(n: DemoNode) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": n.name,
            "labels": {
                "kubernetes.io/hostname": n.name,
                "nvidia.com/gpu.product": n.type.model.replace(" ", "-"),
                "nvidia.com/gpu.count": str(n.type.gpus),
            },
        },
        "spec": {},
        "status": {
            "capacity": dict(HOST_RESOURCES),
            "allocatable": dict(HOST_RESOURCES),
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
        },
    }
