"""NodeAgent end to end: the fake kube-apiserver, the fake kubelet and the simulated NVML."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import msgspec
import pytest

from nodeagent.agent import AgentOptions, NodeAgent
from nodeagent.deviceplugin import HEALTHY, UNHEALTHY
from nodeagent.hamicore_env import HamiCorePaths
from nodeagent.journal import Journal
from vcplugin.core import names
from vcplugin.core.config import NodeSettings, default_config
from vcplugin.core.migtables import find_model
from vcplugin.core.types import Assignment, ContainerGrant, DeviceGrant
from vcplugin.kube.client import KubeClient
from vcplugin.protocol.assignment import assignment_annotations
from vcplugin.protocol.registration import decode_layout, decode_registration
from vgpupool_testing.fakeapi import FakeKubeApi
from vgpupool_testing.kubelet import FakeKubelet
from vgpupool_testing.simnvml import CallError, HideProfile, SimNvml

NODE = "n1"
KEY = b"k"
A100 = "NVIDIA A100-PCIE-40GB"
MODEL = find_model(A100)
assert MODEL is not None
RES = "nvidia.com/gpu"
STEPS = ("after-intent", "after-gi", "after-ci", "after-journal")


class Killed(BaseException):
    """The agent process dies here (not an Exception: nothing inside the agent may swallow it)."""


async def eventually(cond: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def stop_agent(agent: NodeAgent) -> None:
    """agent.stop(), with any cancel the agent swallowed repeated (see
    test_stop_returns_even_when_a_pass_is_due): a product bug must fail its own test, not slow down or
    wedge every other one."""
    stopping = asyncio.ensure_future(agent.stop())
    deadline = time.monotonic() + 10.0
    while True:
        done, _ = await asyncio.wait([stopping], timeout=0.1)
        if done:
            break
        if time.monotonic() > deadline:
            raise AssertionError("the agent did not stop")
        for t in agent.tasks:
            if not t.done():
                t.cancel()
    stopping.result()


@dataclass
class Env:
    api: FakeKubeApi
    kubelet: FakeKubelet
    dir: str
    agents: list[NodeAgent] = field(default_factory=list)
    kubes: list[KubeClient] = field(default_factory=list)

    @property
    def state_file(self) -> str:
        return os.path.join(self.dir, "owned.json")

    async def agent(
        self,
        sim: SimNvml,
        mode: str = names.MODE_MIG,
        *,
        filter_indexes: frozenset[int] = frozenset(),
        start: bool = True,
        **opts: Any,
    ) -> NodeAgent:
        cfg = default_config()
        settings = NodeSettings(mode, 10, 1.0, 1.0, frozenset(), filter_indexes)
        cfg = msgspec.structs.replace(cfg, nodes={NODE: settings})
        kw: dict[str, Any] = {
            "config_map": None,
            "config": cfg,
            "signing_key": KEY,
            "device_plugin_dir": self.dir,
            "state_file": self.state_file,
            "grace": 1.0,
            "reconcile_interval": 0.2,
            "allocate_wait": 2.0,
            "advertise_memory_cores": False,
            "pod_resources_socket": None,
            "hami_core": HamiCorePaths(
                host_dir=os.path.join(self.dir, "vgpu"), lock_dir=os.path.join(self.dir, "vgpulock")
            ),
        }
        kw.update(opts)
        kube = KubeClient(await self.api.new_client())
        self.kubes.append(kube)
        agent = NodeAgent(kube, sim, AgentOptions(NODE, **kw))
        self.agents.append(agent)
        if start:
            await agent.start()
        return agent

    async def stop(self, agent: NodeAgent) -> None:
        if agent in self.agents:
            self.agents.remove(agent)
            await stop_agent(agent)

    def node_annotations(self) -> dict[str, str]:
        return self.api.get("nodes", None, NODE)["metadata"].get("annotations", {})  # type: ignore[index]

    def pod_annotations(self, name: str) -> dict[str, str]:
        obj = self.api.get("pods", "default", name)
        assert obj is not None, f"pod {name} is gone"
        return obj["metadata"].get("annotations", {})  # type: ignore[no-any-return]

    def add_pod(
        self,
        name: str,
        a: Assignment,
        *,
        bind_time: int | None = None,
        key: bytes | None = KEY,
        bound: bool = True,
    ) -> str:
        """A pod the scheduler assigned here: annotations + node label, then bound (nodeName)."""
        obj = self.api.create(
            "pods",
            {
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"containers": [{"name": c.name} for c in a.containers]},
            },
        )
        uid = obj["metadata"]["uid"]
        now = int(time.time()) if bind_time is None else bind_time
        patch: dict[str, Any] = {
            "metadata": {
                "annotations": assignment_annotations(uid, a, {}, now, key),
                "labels": {names.LABEL_ASSIGNED_NODE: NODE},
            }
        }
        if bound:
            patch["spec"] = {"nodeName": NODE}
        self.api.patch("pods", "default", name, patch)
        return str(uid)


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    d = tempfile.mkdtemp(prefix="na", dir="/tmp")
    try:
        async with FakeKubeApi() as api, FakeKubelet(d) as kubelet:
            api.create("nodes", {"metadata": {"name": NODE}})
            e = Env(api, kubelet, d)
            try:
                yield e
            finally:
                for agent in list(e.agents):
                    await e.stop(agent)
                for kube in e.kubes:
                    await kube.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)


async def seen(agent: NodeAgent, *pods: str) -> None:
    """Wait until the agent's pod cache holds these pods, assigned and bound."""

    def ok() -> bool:
        have = {p.metadata.name: p for p in agent.pods.values()}
        return all(
            n in have and names.ANNO_ASSIGNMENT in have[n].metadata.annotations and have[n].spec.node_name == NODE
            for n in pods
        )

    await eventually(ok, what=f"agent sees {pods}")


def mig_sim(count: int = 2, **gpu: Any) -> SimNvml:
    return SimNvml.from_dict({"gpus": [{"model": A100, "count": count, "mig": True, **gpu}]})


def gpu_uuids(sim: SimNvml) -> list[str]:
    return [g["uuid"] for g in sim.snapshot()["gpus"]]


def mig_grant(sim: SimNvml, gpu: int, profile: str, start: int) -> DeviceGrant:
    prof = MODEL.profile(profile)
    assert prof is not None
    return DeviceGrant(
        gpu_uuids(sim)[gpu],
        gpu,
        names.MODE_MIG,
        prof.memory_mib,
        MODEL.cores_percent(prof),
        profile,
        (start, prof.size),
        0,
    )


def share(sim: SimNvml, gpu: int, memory: int, cores: int) -> DeviceGrant:
    return DeviceGrant(gpu_uuids(sim)[gpu], gpu, names.MODE_HAMI_CORE, memory, cores)


def one_container(*devices: DeviceGrant, name: str = "main") -> Assignment:
    return Assignment(NODE, (ContainerGrant(name, tuple(devices)),))


def sim_layout(sim: SimNvml) -> list[list[tuple[str, int]]]:
    return [g["layout"] for g in sim.snapshot()["gpus"]]


def sim_instance(sim: SimNvml, gpu: int, start: int) -> dict[str, Any] | None:
    gis = sim.snapshot()["gpus"][gpu]["gpu_instances"]
    return next((gi for gi in gis if gi["start"] == start), None)


async def device_ids(env: Env, count: int) -> list[str]:
    await env.kubelet.wait_registered(RES)
    devs = await env.kubelet.wait_devices(RES, lambda ds: len(ds) >= count)
    return [d.ID for d in devs[:count]]


def envs_of(resp: Any) -> dict[str, str]:
    return dict(resp.container_responses[0].envs)


# --- registration -----------------------------------------------------------------------------------


async def test_publishes_volcano_registration_and_mig_layout(env: Env) -> None:
    sim = SimNvml.from_dict(
        {"gpus": [{"model": A100, "count": 2, "mig": True}, {"model": "Tesla T4", "memory_mib": 15360}]}
    )
    await env.agent(sim, advertise_memory_cores=True)
    anns = env.node_annotations()
    uuids = gpu_uuids(sim)

    reg = decode_registration(anns[names.ANNO_NODE_REGISTER])
    assert [g.uuid for g in reg] == uuids
    assert [(g.split_count, g.memory, g.model, g.mode) for g in reg] == [
        (7, 40960, A100, "mig"),
        (7, 40960, A100, "mig"),
        (1, 15360, "Tesla T4", "mig"),
    ]
    assert [g.healthy for g in reg] == [True, True, False]  # a T4 cannot do MIG on a mig node
    assert "GPU 2" in anns[names.ANNO_AGENT_STATUS]

    layout = decode_layout(anns[names.ANNO_MIG_LAYOUT])
    assert layout.heartbeat > 0
    by_uuid = {g.uuid: g for g in layout.gpus}
    for u in uuids[:2]:
        g = by_uuid[u]
        assert (g.model, g.memory, g.mig_enabled, g.mig_pending) == (A100, 40960, True, False)
        assert set(g.profiles) == {p.name for p in MODEL.profiles}
        assert g.unusable_geometries == [] and g.instances == []

    # kubelet sees every GPU's shares, and the memory and cores resources.
    devs = await env.kubelet.wait_devices(RES, lambda ds: len(ds) == 15)
    health = {d.ID: d.health for d in devs}
    assert {i for i in health if health[i] == HEALTHY} == {f"{u}::{k}" for u in uuids[:2] for k in range(7)}
    assert health[f"{uuids[2]}::0"] == UNHEALTHY
    for res in ("nvidia.com/gpumem", "nvidia.com/gpucores"):
        await env.kubelet.wait_registered(res)


async def test_hami_core_registration_and_filtered_devices(env: Env) -> None:
    sim = SimNvml.from_dict({"gpus": [{"model": A100, "count": 3}]})
    uuids = gpu_uuids(sim)
    await env.agent(sim, names.MODE_HAMI_CORE, filter_indexes=frozenset({1}))
    anns = env.node_annotations()
    reg = decode_registration(anns[names.ANNO_NODE_REGISTER])
    assert [(g.uuid, g.split_count, g.memory, g.healthy, g.mode) for g in reg] == [
        (uuids[0], 10, 40960, True, "hami-core"),
        (uuids[2], 10, 40960, True, "hami-core"),
    ]
    assert anns[names.ANNO_AGENT_STATUS] == "ok"
    assert decode_layout(anns[names.ANNO_MIG_LAYOUT]).gpus == []  # no MIG GPUs here
    devs = await env.kubelet.wait_devices(RES, lambda ds: len(ds) == 20)
    assert not any(d.ID.startswith(uuids[1]) for d in devs)


@pytest.mark.parametrize("unit", [1, 4])
async def test_memory_resource_never_breaks_kubelets_stream(env: Env, unit: int) -> None:
    """kubelet reads ListAndWatch with gRPC's default 4 MiB message limit (kubernetes#109304; the same
    failure hit volcano-vgpu-device-plugin#99 on 8 x H20). One device per MiB on 3 x A100-80GB passes
    it: the memory resource is then left out (not sent in a list kubelet cannot read); in 4 MiB units
    it fits and is advertised in full."""
    sim = SimNvml.from_dict({"gpus": [{"model": "NVIDIA A100-SXM4-80GB", "count": 3}]})
    await env.agent(sim, names.MODE_HAMI_CORE, advertise_memory_cores=True, memory_unit_mib=unit)
    await env.kubelet.wait_registered("nvidia.com/gpucores")  # registered after the memory resource
    res = "nvidia.com/gpumem"
    plugin = env.kubelet.plugins.get(res)
    if unit == 1 and plugin is None:
        return  # left out, as documented
    assert plugin is not None, f"{res} not advertised although {3 * 81920 // unit} devices fit"
    await eventually(lambda: plugin.updates or plugin.stream_ended, timeout=10.0, what="first gpumem list")
    assert plugin.stream_error is None, f"kubelet could not read the gpumem device list: {plugin.stream_error}"
    assert len(env.kubelet.devices(res)) == 3 * 81920 // unit


# --- MIG --------------------------------------------------------------------------------------------


async def test_mig_flow_create_annotate_allocate_release(env: Env) -> None:
    sim = mig_sim()
    agent = await env.agent(sim)
    ids = await device_ids(env, 2)
    grants = (mig_grant(sim, 0, "3g.20gb", 4), mig_grant(sim, 1, "1g.5gb", 3))
    uid = env.add_pod("p1", one_container(*grants))

    raw = await eventually(lambda: env.pod_annotations("p1").get(names.ANNO_MIG_DEVICES), what="mig-devices")
    # Before kubelet asks: the instances exist at exactly the assigned placements, with a CI each.
    assert sim_layout(sim) == [[("3g.20gb", 4)], [("1g.5gb", 3)]]
    gi0, gi1 = sim_instance(sim, 0, 4), sim_instance(sim, 1, 3)
    assert gi0 and gi1 and len(gi0["compute_instances"]) == 1 and len(gi1["compute_instances"]) == 1
    mig_uuids = [gi0["compute_instances"][0]["uuid"], gi1["compute_instances"][0]["uuid"]]
    written = json.loads(raw)
    assert [(d["gpu"], d["profile"], tuple(d["placement"]), d["migUUID"]) for d in written] == [
        (gpu_uuids(sim)[0], "3g.20gb", (4, 4), mig_uuids[0]),
        (gpu_uuids(sim)[1], "1g.5gb", (3, 1), mig_uuids[1]),
    ]
    assert env.pod_annotations("p1")[names.ANNO_BIND_PHASE] == names.BIND_PHASE_ALLOCATING

    # The node's layout shows the instances as ours, held by the pod.
    def layout_instances() -> list[Any]:
        lay = decode_layout(env.node_annotations()[names.ANNO_MIG_LAYOUT])
        return [i for g in lay.gpus for i in g.instances]

    insts = await eventually(lambda: len(layout_instances()) == 2 and layout_instances(), what="layout")
    assert {(i.profile, i.start, i.uuid, i.pod, i.pod_uid, i.owned) for i in insts} == {
        ("3g.20gb", 4, mig_uuids[0], "default/p1", uid, True),
        ("1g.5gb", 3, mig_uuids[1], "default/p1", uid, True),
    }

    resp = await env.kubelet.allocate(RES, [ids])
    got = envs_of(resp)
    assert got == {"NVIDIA_VISIBLE_DEVICES": ",".join(mig_uuids)}  # MIG: the UUIDs and nothing else
    assert list(resp.container_responses[0].mounts) == []
    await eventually(
        lambda: env.pod_annotations("p1").get(names.ANNO_BIND_PHASE) == names.BIND_PHASE_SUCCESS, what="success"
    )
    assert env.pod_annotations("p1").get(names.ANNO_DEVICES_TO_ALLOCATE) == ""

    # The pod goes away: its instances survive the grace period, then are destroyed.
    env.api.delete("pods", "default", "p1")
    await asyncio.sleep(0.4)
    assert sim_layout(sim) == [[("3g.20gb", 4)], [("1g.5gb", 3)]]
    await eventually(lambda: sim_layout(sim) == [[], []], timeout=5.0, what="instances destroyed")
    assert Journal(env.state_file).entries == {}
    await eventually(lambda: layout_instances() == [], what="layout emptied")
    assert agent.journal.entries == {}


async def test_instance_with_a_running_process_outlives_its_pod(env: Env) -> None:
    sim = mig_sim(1)
    await env.agent(sim)
    env.add_pod("p1", one_container(mig_grant(sim, 0, "2g.10gb", 2)))
    await eventually(lambda: env.pod_annotations("p1").get(names.ANNO_MIG_DEVICES), what="mig-devices")
    gi = sim_instance(sim, 0, 2)
    assert gi is not None
    sim.add_process(0, 999, 100, gi["id"])
    env.api.delete("pods", "default", "p1")
    await asyncio.sleep(1.6)  # grace 1 s, passes every 0.2 s
    assert sim_layout(sim) == [[("2g.10gb", 2)]]
    sim.remove_process(999)
    await eventually(lambda: sim_layout(sim) == [[]], what="destroyed once idle")


@pytest.mark.parametrize("key", [None, b"not-the-schedulers-key"], ids=["unsigned", "forged"])
async def test_forged_or_unsigned_assignment_refused(env: Env, key: bytes | None) -> None:
    sim = mig_sim()
    await env.agent(sim, allocate_wait=1.0)
    ids = await device_ids(env, 1)
    env.add_pod("evil", one_container(mig_grant(sim, 0, "7g.40gb", 0)), key=key)

    anns = await eventually(
        lambda: (a := env.pod_annotations("evil")).get(names.ANNO_BIND_PHASE) == names.BIND_PHASE_FAILED and a,
        what="bind-phase failed",
    )
    assert "signature" in anns.get("vgpu-pool.io/failure", "")
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await env.kubelet.allocate(RES, [ids])
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert sim_layout(sim) == [[], []]
    assert names.ANNO_MIG_DEVICES not in env.pod_annotations("evil")
    assert Journal(env.state_file).entries == {}


async def test_allocate_waits_for_an_instance_not_there_yet(env: Env) -> None:
    """kubelet asks while the instance is missing (its first creation failed): Allocate drives another
    pass and answers once it exists, long before the periodic pass."""
    sim = mig_sim(1)
    await env.agent(sim, reconcile_interval=30.0, allocate_wait=3.0)
    ids = await device_ids(env, 1)
    fault = sim.inject(CallError("nvmlDeviceCreateGpuInstanceWithPlacement", "UNKNOWN", count=1))
    env.add_pod("p1", one_container(mig_grant(sim, 0, "1g.10gb", 6)))
    await seen(env.agents[-1], "p1")
    await eventually(lambda: fault.count == 0, what="first creation attempt")
    await asyncio.sleep(0.1)
    assert sim_layout(sim) == [[]]
    resp = await env.kubelet.allocate(RES, [ids])
    gi = sim_instance(sim, 0, 6)
    assert gi is not None and gi["profile"] == "1g.10gb"
    assert envs_of(resp)["NVIDIA_VISIBLE_DEVICES"] == gi["compute_instances"][0]["uuid"]
    assert Journal(env.state_file).entries.keys() == {(gpu_uuids(sim)[0], 6, 2)}


@pytest.mark.parametrize("step", STEPS)
async def test_agent_killed_mid_creation_then_restarted_converges(env: Env, step: str) -> None:
    sim = mig_sim()
    first = await env.agent(sim)
    fired: list[str] = []

    def hook(s: str) -> None:
        if s == step and not fired:
            fired.append(s)
            raise Killed(s)

    first.mig.crash_hook = hook
    grants = (mig_grant(sim, 0, "2g.10gb", 0), mig_grant(sim, 0, "2g.10gb", 2))
    env.add_pod("p1", one_container(*grants))
    await eventually(lambda: fired, what=f"crash at {step}")
    await env.stop(first)  # killed: nothing but the journal file and the GPUs remain
    assert names.ANNO_MIG_DEVICES not in env.pod_annotations("p1")

    await env.agent(sim)
    raw = await eventually(lambda: env.pod_annotations("p1").get(names.ANNO_MIG_DEVICES), what="mig-devices")
    assert sim_layout(sim) == [[("2g.10gb", 0), ("2g.10gb", 2)], []]
    gis = sim.snapshot()["gpus"][0]["gpu_instances"]
    assert [len(gi["compute_instances"]) for gi in gis] == [1, 1]
    assert [d["migUUID"] for d in json.loads(raw)] == [gi["compute_instances"][0]["uuid"] for gi in gis]
    assert set(Journal(env.state_file).entries) == {(gpu_uuids(sim)[0], 0, 2), (gpu_uuids(sim)[0], 2, 2)}

    ids = await device_ids(env, 2)
    resp = await env.kubelet.allocate(RES, [ids])
    assert envs_of(resp)["NVIDIA_VISIBLE_DEVICES"] == ",".join(d["migUUID"] for d in json.loads(raw))


async def test_restart_keeps_instances_in_use_and_foreign_ones(env: Env) -> None:
    sim = mig_sim()
    sim.create_instance(1, "3g.20gb", 0)  # somebody else's
    first = await env.agent(sim)
    env.add_pod("p1", one_container(mig_grant(sim, 0, "4g.20gb", 0)))
    await eventually(lambda: env.pod_annotations("p1").get(names.ANNO_MIG_DEVICES), what="mig-devices")
    before = sim.snapshot()
    await env.stop(first)
    await env.agent(sim)
    await asyncio.sleep(1.5)  # several passes, past the grace period
    assert sim.snapshot() == before  # same instances, same MIG UUIDs: nothing re-created or destroyed
    lay = decode_layout(env.node_annotations()[names.ANNO_MIG_LAYOUT])
    foreign = [i for g in lay.gpus for i in g.instances if not i.owned]
    assert [(i.profile, i.start, i.pod) for i in foreign] == [("3g.20gb", 0, "")]


async def test_mig_pending_on_a_busy_gpu_is_reported_never_reset(env: Env) -> None:
    sim = SimNvml.from_dict({"gpus": [{"model": A100, "mig": False}, {"model": A100, "mig": True}]})
    sim.add_process(0, 4321, 1024)
    resets: list[Any] = []
    sim.reset = lambda *a: resets.append(a)  # type: ignore[method-assign]
    agent = await env.agent(sim)
    anns = env.node_annotations()
    status = anns[names.ANNO_AGENT_STATUS]
    assert "GPU 0" in status and "pending" in status.lower()
    assert "GPU 1" not in status
    reg = decode_registration(anns[names.ANNO_NODE_REGISTER])
    assert [g.healthy for g in reg] == [False, True]
    lay = {g.index: g for g in decode_layout(anns[names.ANNO_MIG_LAYOUT]).gpus}
    assert (lay[0].mig_enabled, lay[0].mig_pending) == (False, True)
    assert (lay[1].mig_enabled, lay[1].mig_pending) == (True, False)

    snap = sim.snapshot()["gpus"][0]
    assert (snap["mig_current"], snap["mig_pending"]) == (False, True)
    assert [p["pid"] for p in snap["processes"]] == [4321]
    assert resets == []
    uuids = gpu_uuids(sim)
    pending = [
        agent.metrics.registry.get_sample_value(
            "vgpu_pool_agent_mig_pending", {"gpu": u, "index": str(i), "model": A100}
        )
        for i, u in enumerate(uuids)
    ]
    assert pending == [1.0, 0.0]
    devs = await env.kubelet.wait_devices(RES, lambda ds: len(ds) == 14)
    assert {d.health for d in devs if d.ID.startswith(uuids[0])} == {UNHEALTHY}
    assert {d.health for d in devs if d.ID.startswith(uuids[1])} == {HEALTHY}


async def test_geometry_the_gpu_cannot_honour_is_reported_not_used(env: Env) -> None:
    sim = mig_sim()
    sim.inject(HideProfile("3g.20gb", gpu=0))
    agent = await env.agent(sim)
    geoms = default_config().geometries_for(MODEL)
    with_3g = [g.index for g in geoms if g.count("3g.20gb")]
    assert with_3g  # the shipped config uses 3g.20gb
    lay = {g.index: g for g in decode_layout(env.node_annotations()[names.ANNO_MIG_LAYOUT]).gpus}
    assert sorted(lay[0].unusable_geometries) == with_3g
    assert "3g.20gb" not in lay[0].profiles
    assert lay[1].unusable_geometries == []
    assert "3g.20gb" in lay[1].profiles
    flagged = {
        (smp.labels["gpu"], int(smp.labels["geometry"]))
        for metric in agent.metrics.registry.collect()
        if metric.name == "vgpu_pool_agent_geometry_unusable"
        for smp in metric.samples
        if smp.value == 1
    }
    assert flagged == {(gpu_uuids(sim)[0], i) for i in with_3g}
    # An assignment that needs it anyway is not created.
    env.add_pod("p1", one_container(mig_grant(sim, 0, "3g.20gb", 4)))
    await asyncio.sleep(0.6)
    assert sim_layout(sim) == [[], []]
    assert any("3g.20gb" in why for why in agent.last.waiting.values())


# --- health -----------------------------------------------------------------------------------------


async def test_gpu_failing_nvml_calls_turns_unhealthy_and_recovers(env: Env) -> None:
    sim = mig_sim()
    uuids = gpu_uuids(sim)
    agent = await env.agent(sim, health_interval=3600.0)  # drive the checks by hand
    await env.kubelet.wait_devices(RES, lambda ds: len(ds) == 14 and all(d.health == HEALTHY for d in ds))

    def reg_health() -> list[bool]:
        return [g.healthy for g in decode_registration(env.node_annotations()[names.ANNO_NODE_REGISTER])]

    def lw_health(u: str) -> set[str]:
        return {d.health for d in env.kubelet.devices(RES) if d.ID.startswith(u)}

    sim.inject(CallError("nvmlDeviceGetMemoryInfo", "GPU_IS_LOST", gpu=1, count=None))
    assert await agent.check_health() is True
    assert [g.healthy for g in agent.gpus] == [True, False]
    await agent.publish(force=True)
    await agent.plugins.notify()
    await eventually(lambda: lw_health(uuids[1]) == {UNHEALTHY}, what="unhealthy in ListAndWatch")
    assert lw_health(uuids[0]) == {HEALTHY}
    assert reg_health() == [True, False]
    assert await agent.check_health() is False  # no change while it keeps failing

    sim.clear_faults()
    assert await agent.check_health() is True
    await agent.publish(force=True)
    await agent.plugins.notify()
    await eventually(lambda: lw_health(uuids[1]) == {HEALTHY}, what="healthy again in ListAndWatch")
    assert reg_health() == [True, True]


async def test_gpu_failing_mig_calls_does_not_block_the_other_gpus(env: Env) -> None:
    """NVML failing on GPU 1 (instance listing) must not stop MIG instances being made on GPU 0."""
    sim = mig_sim()
    await env.agent(sim)
    sim.inject(CallError("nvmlDeviceGetGpuInstances", "GPU_IS_LOST", gpu=1, count=None))
    env.add_pod("p0", one_container(mig_grant(sim, 0, "1g.5gb", 0)))
    raw = await eventually(
        lambda: env.pod_annotations("p0").get(names.ANNO_MIG_DEVICES), timeout=3.0, what="mig-devices on GPU 0"
    )
    gi = sim_instance(sim, 0, 0)
    assert gi is not None and json.loads(raw)[0]["migUUID"] == gi["compute_instances"][0]["uuid"]


async def test_health_loop_publishes_changes_by_itself(env: Env) -> None:
    sim = SimNvml.from_dict({"gpus": [{"model": A100, "count": 2}]})
    uuids = gpu_uuids(sim)
    agent = await env.agent(sim, names.MODE_HAMI_CORE, health_interval=0.1)
    await env.kubelet.wait_devices(RES, lambda ds: len(ds) == 20)
    sim.inject(CallError("nvmlDeviceGetUUID", "UNKNOWN", gpu=0, count=None))

    def reg() -> list[bool]:
        return [g.healthy for g in decode_registration(env.node_annotations()[names.ANNO_NODE_REGISTER])]

    await env.kubelet.wait_devices(RES, lambda ds: {d.health for d in ds if d.ID.startswith(uuids[0])} == {UNHEALTHY})
    await eventually(lambda: reg() == [False, True], what="registration unhealthy")
    labels = {"gpu": uuids[0], "index": "0", "model": A100}
    assert agent.metrics.registry.get_sample_value("vgpu_pool_agent_gpu_healthy", labels) == 0.0
    sim.clear_faults()
    await env.kubelet.wait_devices(RES, lambda ds: all(d.health == HEALTHY for d in ds))
    await eventually(lambda: reg() == [True, True], what="registration healthy")
    assert agent.metrics.registry.get_sample_value("vgpu_pool_agent_gpu_healthy", labels) == 1.0


# --- hami-core --------------------------------------------------------------------------------------


async def test_hami_core_allocate_environment_and_mounts(env: Env) -> None:
    sim = SimNvml.from_dict({"gpus": [{"model": A100, "count": 2}]})
    uuids = gpu_uuids(sim)
    host_dir, lock_dir = os.path.join(env.dir, "hc"), os.path.join(env.dir, "locks")
    await env.agent(sim, names.MODE_HAMI_CORE, hami_core=HamiCorePaths(host_dir=host_dir, lock_dir=lock_dir))
    ids = await device_ids(env, 2)
    uid = env.add_pod("p1", one_container(share(sim, 1, 3000, 30), share(sim, 0, 5000, 30), name="work"))
    await seen(env.agents[-1], "p1")
    resp = await env.kubelet.allocate(RES, [ids])
    got = envs_of(resp)
    assert got["NVIDIA_VISIBLE_DEVICES"] == f"{uuids[1]},{uuids[0]}"
    # The limit index is the position in NVIDIA_VISIBLE_DEVICES, in MiB with an "m".
    assert got["CUDA_DEVICE_MEMORY_LIMIT_0"] == "3000m"
    assert got["CUDA_DEVICE_MEMORY_LIMIT_1"] == "5000m"
    assert got["CUDA_DEVICE_SM_LIMIT"] == "30"
    cache = got["CUDA_DEVICE_MEMORY_SHARED_CACHE"]
    assert os.path.dirname(cache) == "/usr/local/vgpu" and cache.endswith(".cache")  # lands in the cache mount

    mounts = {m.container_path: (m.host_path, m.read_only) for m in resp.container_responses[0].mounts}
    cache_dir = os.path.join(host_dir, "containers", f"{uid}_work")
    assert mounts == {
        "/usr/local/vgpu/libvgpu.so": (os.path.join(host_dir, "libvgpu.so"), True),
        "/usr/local/vgpu": (cache_dir, False),
        "/tmp/vgpulock": (lock_dir, False),
        "/etc/ld.so.preload": (os.path.join(host_dir, "ld.so.preload"), True),
    }
    assert os.path.isdir(cache_dir) and os.path.isdir(lock_dir)
    await eventually(
        lambda: env.pod_annotations("p1").get(names.ANNO_BIND_PHASE) == names.BIND_PHASE_SUCCESS, what="success"
    )


async def test_equal_requests_are_served_oldest_bind_first(env: Env) -> None:
    sim = SimNvml.from_dict({"gpus": [{"model": A100, "count": 1}]})
    agent = await env.agent(sim, names.MODE_HAMI_CORE, allocate_wait=1.0)
    ids = await device_ids(env, 1)
    now = int(time.time())
    # Created first but bound later: list order must not decide.
    env.add_pod("young", one_container(share(sim, 0, 2000, 10)), bind_time=now)
    env.add_pod("old", one_container(share(sim, 0, 3000, 20)), bind_time=now - 100)
    await seen(agent, "young", "old")

    first = envs_of(await env.kubelet.allocate(RES, [ids]))
    assert first["CUDA_DEVICE_MEMORY_LIMIT_0"] == "3000m"
    await eventually(
        lambda: env.pod_annotations("old").get(names.ANNO_BIND_PHASE) == names.BIND_PHASE_SUCCESS, what="old"
    )
    assert env.pod_annotations("young")[names.ANNO_BIND_PHASE] == names.BIND_PHASE_ALLOCATING
    second = envs_of(await env.kubelet.allocate(RES, [ids]))
    assert second["CUDA_DEVICE_MEMORY_LIMIT_0"] == "2000m"
    await eventually(
        lambda: env.pod_annotations("young").get(names.ANNO_BIND_PHASE) == names.BIND_PHASE_SUCCESS, what="young"
    )
    with pytest.raises(grpc.aio.AioRpcError) as exc:  # both consumed: nothing left to give
        await env.kubelet.allocate(RES, [ids])
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_concurrent_admissions_never_take_the_same_assignment(env: Env) -> None:
    sim = SimNvml.from_dict({"gpus": [{"model": A100, "count": 1}]})
    agent = await env.agent(sim, names.MODE_HAMI_CORE)
    ids = await device_ids(env, 1)
    for k in range(4):
        env.add_pod(f"p{k}", one_container(share(sim, 0, 1000 + k, 10)), bind_time=1000 + k)
    await seen(agent, "p0", "p1", "p2", "p3")
    results = await asyncio.gather(*(env.kubelet.allocate(RES, [ids]) for _ in range(4)))
    limits = sorted(envs_of(r)["CUDA_DEVICE_MEMORY_LIMIT_0"] for r in results)
    assert limits == ["1000m", "1001m", "1002m", "1003m"]
    for k in range(4):
        await eventually(
            lambda k=k: env.pod_annotations(f"p{k}").get(names.ANNO_BIND_PHASE) == names.BIND_PHASE_SUCCESS,
            what=f"p{k} success",
        )


async def test_request_size_selects_the_matching_pod(env: Env) -> None:
    sim = SimNvml.from_dict({"gpus": [{"model": A100, "count": 2}]})
    uuids = gpu_uuids(sim)
    agent = await env.agent(sim, names.MODE_HAMI_CORE)
    ids = await device_ids(env, 2)
    env.add_pod("one", one_container(share(sim, 0, 1000, 10)), bind_time=1)
    env.add_pod("two", one_container(share(sim, 0, 2000, 10), share(sim, 1, 2000, 10)), bind_time=2)
    await seen(agent, "one", "two")
    got = envs_of(await env.kubelet.allocate(RES, [ids]))  # two devices: only "two" matches
    assert got["NVIDIA_VISIBLE_DEVICES"] == f"{uuids[0]},{uuids[1]}"
    await eventually(
        lambda: env.pod_annotations("two").get(names.ANNO_BIND_PHASE) == names.BIND_PHASE_SUCCESS, what="two"
    )
    assert env.pod_annotations("one")[names.ANNO_BIND_PHASE] == names.BIND_PHASE_ALLOCATING


async def test_hami_core_over_commit_refused_for_the_later_pod(env: Env) -> None:
    sim = SimNvml.from_dict({"gpus": [{"model": A100, "count": 1}]})
    await env.agent(sim, names.MODE_HAMI_CORE)
    env.add_pod("first", one_container(share(sim, 0, 30000, 50)), bind_time=10)
    env.add_pod("second", one_container(share(sim, 0, 20000, 50)), bind_time=20)
    anns = await eventually(
        lambda: (a := env.pod_annotations("second")).get(names.ANNO_BIND_PHASE) == names.BIND_PHASE_FAILED and a,
        what="second refused",
    )
    assert "memory" in anns["vgpu-pool.io/failure"]
    assert env.pod_annotations("first")[names.ANNO_BIND_PHASE] == names.BIND_PHASE_ALLOCATING


# --- lifecycle --------------------------------------------------------------------------------------


async def test_stop_returns_even_when_a_pass_is_due(env: Env) -> None:
    """stop() right after a pod event (the reconcile loop's `changed` is set) must stop the loops.
    On Python 3.11 asyncio.wait_for swallows a cancellation that arrives while its awaitable has just
    completed, so the reconcile loop carries on and stop() waits for it forever."""
    sim = SimNvml.from_dict({"gpus": [{"model": A100}]})
    agent = NodeAgent(
        None,
        sim,
        AgentOptions(
            NODE,
            config_map=None,
            config=None,
            state_file=None,
            device_plugins=False,
            pod_resources_socket=None,
            reconcile_interval=0.2,
            grace=1.0,
        ),
    )
    await agent.start()
    await asyncio.sleep(0.05)
    agent.changed.set()  # what every pod event does
    reconcile_loop = next(t for t in agent.tasks if t.get_coro().__name__ == "_reconcile_loop")  # type: ignore[union-attr]
    stopping = asyncio.ensure_future(agent.stop())
    done, _ = await asyncio.wait([stopping], timeout=2.0)
    if not done:
        alive = not reconcile_loop.done()
        reconcile_loop.cancel()  # a second cancel gets through: clean up before failing
        await asyncio.wait([stopping], timeout=3.0)
        pytest.fail(f"NodeAgent.stop() hung after a pod event; reconcile loop survived its cancel: {alive}")
