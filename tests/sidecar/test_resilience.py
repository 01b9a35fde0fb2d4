"""Restarts, dropped and expired watches, ConfigMap reloads, bind-time assignment, stale nodes, health."""

from __future__ import annotations

import asyncio
import json
import time

from vcplugin.core.config import default_config
from vgpupool_testing.volcano import bind, node_info, start_pod, task_info

from .conftest import (
    NS,
    annotations_of,
    assignment_of,
    gpu_node,
    gpu_pod,
    metric_lines,
    plain_pod,
    usage,
    used_memory,
    wait_until,
)

GPU_SERIES = ("vgpu_pool_gpu_memory_used_mib", "vgpu_pool_gpu_cores_used_percent", "vgpu_pool_gpu_shares",
              "vgpu_pool_mig_instance", "vgpu_pool_gpu_geometry")  # fmt: skip
CM = "vgpu-pool-device-config"


def _config_text(split_count: int) -> str:
    from importlib import resources

    text = resources.files("vcplugin").joinpath("data/device-config.yaml").read_text()
    assert "deviceSplitCount: 10" in text
    return text.replace("deviceSplitCount: 10", f"deviceSplitCount: {split_count}")


# --- restart ------------------------------------------------------------------------------------


async def test_restarted_sidecar_rebuilds_the_same_usage(start_cluster) -> None:
    nodes = [gpu_node("mig1", gpus=2, mode="mig"), gpu_node("hami1", gpus=2, mode="hami-core")]
    c = await start_cluster(nodes=nodes)
    pods = [
        c.create("pods", gpu_pod("m-2x8g", count=2, mem=8000, mode="mig")),
        c.create("pods", gpu_pod("m-20g", count=1, mem=19000, mode="mig")),
        c.create("pods", gpu_pod("m-4g", count=1, mem=4000, mode="mig")),
        c.create("pods", gpu_pod("h-10g", count=1, mem=10000, cores=30, mode="hami-core")),
        c.create("pods", gpu_pod("h-2x5g", count=2, mem=5000, cores=20, mode="hami-core")),
    ]
    pending = c.create("pods", gpu_pod("h-unbound", count=1, mem=3000, mode="hami-core"))
    await wait_until(lambda: len(c.sc.state.pods) == 6, what="pods cached")
    for p in pods:
        result = await c.volcano.schedule_job([p], c.nodes())
        assert result.placements, result.tasks
        assert await bind(c.api, result)
    for p in pods[:3]:
        start_pod(c.api, NS, p["metadata"]["name"])
    # Allocated in a session but not bound yet (within the unbound grace period): still held.
    assert (await c.volcano.schedule_job([pending], c.nodes())).placements
    await wait_until(
        lambda: sum(1 for e in c.sc.state.pods.values() if e.pod.spec.node_name and e.holding) == 5,
        what="bound pods in the cache",
    )
    await wait_until(lambda: all(e.holding for e in c.sc.state.pods.values()), what="every pod holding")
    before_usage = usage(c.sc)
    before = metric_lines(await c.metrics(), *GPU_SERIES)
    assert any(line.startswith("vgpu_pool_mig_instance{") and line.endswith(" 1.0") for line in before)
    assert used_memory(c.sc, "hami1") == 10000 + 2 * 5000 + 3000
    assert used_memory(c.sc, "mig1") > 0

    await c.restart()

    assert usage(c.sc) == before_usage
    assert metric_lines(await c.metrics(), *GPU_SERIES) == before
    # And the rebuilt state schedules as the old one would: nothing double-booked.
    late = c.create("pods", gpu_pod("late", count=1, mem=4000, mode="mig"))
    await wait_until(lambda: len(c.sc.state.pods) == 7, what="late pod cached")
    assert (await c.volcano.schedule_job([late], c.nodes())).placements
    taken = [
        (d["uuid"], tuple(d["placement"]))
        for p in [*pods, late]
        if (a := assignment_of(c.api, p["metadata"]["name"])) and a["node"] == "mig1"
        for ctr in a["containers"]
        for d in ctr["devices"]
    ]
    assert len(taken) == len(set(taken)), taken


# --- watches ------------------------------------------------------------------------------------


async def test_dropped_watches_are_resumed(start_cluster) -> None:
    c = await start_cluster(nodes=[gpu_node("n1", mode="hami-core")])
    await c.api.wait_for_watchers(2)
    assert c.api.drop_watches() >= 2
    c.create("nodes", gpu_node("n2", mode="hami-core"))
    p = c.create("pods", gpu_pod("p", count=1, mem=1000, node="n2"))
    await wait_until(lambda: "n2" in c.sc.state.states, what="n2 in the state")
    await wait_until(lambda: p["metadata"]["uid"] in c.sc.state.pods, what="the new pod in the state")
    # A second drop, gracefully this time, and a change made while the watch is down.
    c.api.drop_watches(graceful=True)
    c.api.patch("nodes", None, "n2", {"metadata": {"annotations": {"volcano.sh/node-vgpu-register": None}}})
    await wait_until(lambda: "n2" in c.sc.state.problems, what="n2 without registration")
    answer = await c.volcano.predicate(task_info(gpu_pod("q", count=1)), node_info(c.api.get("nodes", None, "n2")))
    assert answer["code"] == 3


async def test_expired_watch_410_relists(start_cluster) -> None:
    c = await start_cluster(nodes=[gpu_node("n1", mode="hami-core")])
    await c.api.wait_for_watchers(2)
    relists = [i.relists for i in c.sc.informers]
    c.api.drop_watches()
    # While no watch is open: changes, then the history is compacted, so resuming gets 410 Gone.
    c.create("nodes", gpu_node("n3", mode="hami-core"))
    c.api.delete("nodes", None, "n1")
    bound = c.create("pods", gpu_pod("bound", count=1, mem=2000, node="n3"))
    c.api.patch("pods", NS, "bound", {"metadata": {"annotations": {"volcano.sh/vgpu-node": "n3"}}})
    c.api.compact()
    await wait_until(lambda: "n3" in c.sc.state.states and "n1" not in c.sc.state.states, what="nodes relisted")
    await wait_until(lambda: bound["metadata"]["uid"] in c.sc.state.pods, what="pods relisted")
    assert all(i.relists > r for i, r in zip(c.sc.informers, relists, strict=True))
    # Later changes keep arriving on the new watch.
    c.create("nodes", gpu_node("n4", mode="hami-core"))
    await wait_until(lambda: "n4" in c.sc.state.states, what="n4 after the relist")
    assert c.sc.ready()


async def test_an_allocation_survives_a_dropped_watch(start_cluster) -> None:
    """The assignment PATCHed while the watch is down comes back by the resumed watch and keeps the
    devices held after the session (no double booking in the next session)."""
    c = await start_cluster(nodes=[gpu_node("n1", mode="hami-core")])
    a = c.create("pods", gpu_pod("a", count=1))
    b = c.create("pods", gpu_pod("b", count=1))
    await wait_until(lambda: len(c.sc.state.pods) == 2, what="pods cached")
    await c.api.wait_for_watchers(2)
    c.api.drop_watches()
    assert (await c.volcano.schedule_job([a], c.nodes())).placements
    await c.synced_pod("a", lambda p: "volcano.sh/vgpu-node" in p["metadata"]["annotations"])
    result = await c.volcano.schedule_job([b], c.nodes())
    assert result.placements == {}
    assert result.tasks[0].predicates["n1"]["code"] == 2


# --- ConfigMap ----------------------------------------------------------------------------------


async def test_invalid_configmap_is_kept_out(start_cluster) -> None:
    c = await start_cluster(nodes=[gpu_node("n1", mode="hami-core")], config_map=f"kube-system/{CM}")
    assert c.sc.state.cfg.split_count == default_config().split_count == 10
    c.create("configmaps", {"metadata": {"name": CM, "namespace": "kube-system"},
                            "data": {"device-config.yaml": _config_text(7)}})  # fmt: skip
    await wait_until(lambda: c.sc.state.cfg.split_count == 7, what="the valid config loaded")
    assert 'vgpu_pool_config_reloads_total{result="ok"} 1.0' in await c.metrics()

    for n, bad in enumerate(["nvidia: [unclosed\n  deviceSplitCount: 3", _config_text(0)], start=1):
        c.api.patch("configmaps", "kube-system", CM, {"data": {"device-config.yaml": bad}})
        await _wait_metric(c, f'vgpu_pool_config_reloads_total{{result="invalid"}} {n}.0')
        assert c.sc.state.cfg.split_count == 7  # the last good config stays
        events = await wait_until(
            lambda n=n: len(_config_events(c)) >= n and _config_events(c), what="InvalidDeviceConfig event"
        )
        assert events[-1]["involvedObject"]["name"] == CM and events[-1]["type"] == "Warning"
        assert events[-1]["message"]
    assert 'vgpu_pool_config_reloads_total{result="ok"} 1.0' in await c.metrics()
    # The service keeps answering with the last good config.
    p = c.create("pods", gpu_pod("p", count=1, mem=1000))
    await wait_until(lambda: p["metadata"]["uid"] in c.sc.state.pods, what="pod cached")
    assert (await c.volcano.schedule_job([p], c.nodes())).placements

    # A valid config again is taken.
    c.api.patch("configmaps", "kube-system", CM, {"data": {"device-config.yaml": _config_text(5)}})
    await wait_until(lambda: c.sc.state.cfg.split_count == 5, what="the next valid config loaded")


def _config_events(c) -> list[dict]:
    return [e for e in c.api.list("events", "kube-system") if e.get("reason") == "InvalidDeviceConfig"]


async def _wait_metric(c, line: str) -> None:
    deadline = time.monotonic() + 5
    while line not in await c.metrics():
        assert time.monotonic() < deadline, f"metric line {line!r} never appeared"
        await asyncio.sleep(0.01)


# --- bind-time assignment (Volcano < 1.13) ----------------------------------------------------


async def test_pod_bound_without_an_assignment_gets_one(start_cluster) -> None:
    c = await start_cluster(nodes=[gpu_node("n1", mode="mig")])
    gpu = c.create("pods", gpu_pod("old-volcano", count=2, mem=8000, mode="mig"))
    c.create("pods", plain_pod("plain"))
    await wait_until(lambda: gpu["metadata"]["uid"] in c.sc.state.pods, what="pod cached")
    # No session at all: the scheduler (Volcano < 1.13) just binds.
    assert await bind(c.api, {f"{NS}/old-volcano": "n1", f"{NS}/plain": "n1"}) == [f"{NS}/old-volcano", f"{NS}/plain"]

    a = await wait_until(lambda: assignment_of(c.api, "old-volcano"), what="assignment PATCHed at bind")
    assert a["node"] == "n1"
    assert [d["profile"] for ctr in a["containers"] for d in ctr["devices"]] == ["2g.10gb", "2g.10gb"]
    anns = annotations_of(c.api, "old-volcano")
    assert anns["volcano.sh/vgpu-node"] == "n1" and anns["vgpu-pool.io/assignment-signature"].startswith("v1:")
    await c.synced_pod("old-volcano", lambda p: "vgpu-pool.io/assignment" in p["metadata"]["annotations"])
    assert len(c.sc.state.states["n1"].gpus[0].instances) == 2
    assert c.sc.state.tentative == set()
    assert annotations_of(c.api, "plain") == {}
    assert 'vgpu_pool_decisions_total{reason="",result="assigned",verb="bind"} 1.0' in await c.metrics()


async def test_bind_time_assignment_can_be_turned_off(start_cluster) -> None:
    c = await start_cluster(nodes=[gpu_node("n1", mode="hami-core")], assign_at_bind=False)
    gpu = c.create("pods", gpu_pod("p", count=1, mem=1000))
    await wait_until(lambda: gpu["metadata"]["uid"] in c.sc.state.pods, what="pod cached")
    await bind(c.api, {f"{NS}/p": "n1"})
    await c.synced_pod("p", lambda p: p["spec"].get("nodeName") == "n1")
    assert assignment_of(c.api, "p") is None


# --- stale registration ---------------------------------------------------------------------------


async def test_stale_registration_is_rejected_with_code_2(start_cluster) -> None:
    now = int(time.time())

    def layout(beat: int) -> str:
        return json.dumps({"version": 1, "heartbeat": beat, "gpus": []})

    c = await start_cluster(
        nodes=[
            gpu_node("stale", mode="hami-core", annotations={"vgpu-pool.io/mig-layout": layout(now - 86400)}),
            gpu_node("fresh", mode="hami-core", annotations={"vgpu-pool.io/mig-layout": layout(now)}),
        ]
    )
    pod = gpu_pod("p", count=1, mem=1000)
    pod["metadata"]["uid"] = "p-uid"
    infos = {n["metadata"]["name"]: node_info(n) for n in c.nodes()}
    stale = await c.volcano.predicate(task_info(pod), infos["stale"])
    assert stale["code"] == 2 and "stale" in stale["status"].lower(), stale
    fresh = await c.volcano.predicate(task_info(pod), infos["fresh"])
    assert fresh["code"] == 0 and fresh["status"] == "", fresh
    assert 'vgpu_pool_node_unschedulable{node="stale"} 1.0' in await c.metrics()
    # A new heartbeat brings the node back.
    c.api.patch("nodes", None, "stale", {"metadata": {"annotations": {"vgpu-pool.io/mig-layout": layout(now)}}})
    await wait_until(lambda: "stale" not in c.sc.state.problems, what="heartbeat accepted")
    again = await c.volcano.predicate(task_info(pod), infos["stale"])
    assert again["code"] == 0, again


# --- health and metrics ---------------------------------------------------------------------------


async def test_health_ready_and_metrics(start_cluster) -> None:
    c = await start_cluster(nodes=[gpu_node("n1", mode="mig")], wait=False, setup=lambda api: api.delay(0.5, "/pods"))
    assert (await c.get("/healthz"))[0] == 200
    status, text = await c.get("/readyz")
    assert status == 503, (status, text)
    await c.sc.wait_synced(timeout=5)
    c.api.delay(0, "/pods")
    assert (await c.get("/readyz"))[0] == 200

    p = c.create("pods", gpu_pod("p", count=1, mem=8000, mode="mig"))
    await wait_until(lambda: p["metadata"]["uid"] in c.sc.state.pods, what="pod cached")
    assert (await c.volcano.schedule_job([p], c.nodes())).placements
    text = await c.metrics()
    used = metric_lines(text, "vgpu_pool_gpu_memory_used_mib")
    assert len(used) == 1, used
    for label in ('node="n1"', 'gpu="GPU-n1-0000"', 'mode="mig"', 'model="NVIDIA A100-PCIE-40GB"'):
        assert label in used[0], used
    assert float(used[0].rsplit(" ", 1)[1]) >= 8000
    mig = [line for line in metric_lines(text, "vgpu_pool_mig_instance") if 'pod="default/p"' in line]
    assert len(mig) == 1 and mig[0].endswith(" 1.0") and 'profile="2g.10gb"' in mig[0], mig
    for verb in ("onSessionOpen", "predicate", "allocate", "onSessionClose"):
        assert f'vgpu_pool_extender_request_seconds_count{{verb="{verb}"}} 1.0' in text, verb
    assert 'vgpu_pool_cache_synced{resource="pods"} 1.0' in text
