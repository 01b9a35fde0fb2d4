"""deallocate, failed PATCHes, evictions: the assignment on the pod and the sidecar's usage agree."""

from __future__ import annotations

import asyncio

from vcplugin.protocol.assignment import ASSIGNMENT_KEYS
from vgpupool_testing.volcano import (
    ALLOCATED,
    PENDING,
    RELEASING,
    RUNNING,
    ExtenderError,
    VolcanoDriver,
    bind,
    node_info,
    start_pod,
    task_info,
)

from .conftest import NS, annotations_of, gpu_node, gpu_pod, plain_pod, used_memory, wait_until

WHOLE = 40960


def _pod_patches(api, name: str) -> list:
    return [r for r in api.requests if r.verb == "patch" and r.path == f"/api/v1/namespaces/{NS}/pods/{name}"]


async def _running(c, name: str) -> dict:
    """Schedule, bind and start one pod; return it as the API holds it once the sidecar has seen it."""
    pod = c.api.get("pods", NS, name)
    result = await c.volcano.schedule_job([pod], c.nodes())
    assert result.placements, result.tasks
    assert await bind(c.api, result)
    start_pod(c.api, NS, name)
    await c.synced_pod(
        name,
        lambda p: (
            p["status"].get("phase") == "Running"
            and p["metadata"]["annotations"].get("volcano.sh/bind-phase") == "success"
        ),
    )
    return c.api.get("pods", NS, name)


async def test_deallocate_removes_the_assignment_and_frees_the_devices(start_cluster) -> None:
    c = await start_cluster(nodes=[gpu_node("n1", mode="hami-core")])
    p1 = c.create("pods", gpu_pod("p1", count=1, annotations={"team": "a"}))
    p2 = c.create("pods", gpu_pod("p2", count=1))
    await wait_until(lambda: len(c.sc.state.pods) == 2, what="pods cached")
    v = c.volcano
    await v.open_session()
    assert await v.allocate(task_info(p1, "n1", ALLOCATED)) == {"errorMessage": ""}
    assert annotations_of(c.api, "p1")["volcano.sh/vgpu-node"] == "n1"
    assert used_memory(c.sc) == WHOLE

    assert await v.deallocate(task_info(p1, "n1", PENDING)) == {"errorMessage": ""}

    removal = _pod_patches(c.api, "p1")[-1]
    assert removal.content_type == "application/merge-patch+json"
    assert removal.body["metadata"]["annotations"] == dict.fromkeys(ASSIGNMENT_KEYS)
    assert removal.body["metadata"].get("labels", {}) == {"vgpu-pool.io/node": None}
    assert {"volcano.sh/vgpu-node", "volcano.sh/devices-to-allocate", "volcano.sh/bind-phase",
            "vgpu-pool.io/assignment", "vgpu-pool.io/assignment-signature"} <= set(ASSIGNMENT_KEYS)  # fmt: skip
    assert annotations_of(c.api, "p1") == {"team": "a"}  # the pod's own annotations stay
    assert "vgpu-pool.io/node" not in (c.api.get("pods", NS, "p1")["metadata"].get("labels") or {})
    assert used_memory(c.sc) == 0
    await c.synced_pod("p1", lambda p: "volcano.sh/vgpu-node" not in p["metadata"]["annotations"])
    assert used_memory(c.sc) == 0

    # Released for real: another pod takes the GPU in the same session.
    result = await v.schedule_job([p2], c.nodes(), open_session=False)
    assert result.placements == {f"{NS}/p2": "n1"}
    assert annotations_of(c.api, "p2")["volcano.sh/vgpu-node"] == "n1"

    # A second deallocate of p1 has nothing to undo: no PATCH.
    before = len(_pod_patches(c.api, "p1"))
    assert await v.deallocate(task_info(p1, "n1", PENDING)) == {"errorMessage": ""}
    assert len(_pod_patches(c.api, "p1")) == before
    assert used_memory(c.sc) == WHOLE


async def test_deallocate_of_a_pod_without_gpus_patches_nothing(cluster) -> None:
    pod = cluster.create("pods", plain_pod("plain"))
    assert await cluster.volcano.deallocate(task_info(pod, "n1", PENDING)) == {"errorMessage": ""}
    assert await cluster.volcano.allocate(task_info(pod, "n1", ALLOCATED)) == {"errorMessage": ""}
    assert _pod_patches(cluster.api, "plain") == []


async def test_deallocate_keeps_the_assignment_once_the_node_took_it(start_cluster) -> None:
    """bind-phase=success: the device plugin already gave the devices out; the annotations stay."""
    c = await start_cluster(nodes=[gpu_node("n1", mode="hami-core")])
    c.create("pods", gpu_pod("p1", count=1))
    await wait_until(lambda: len(c.sc.state.pods) == 1, what="pod cached")
    running = await _running(c, "p1")
    before = annotations_of(c.api, "p1")
    patches = len(_pod_patches(c.api, "p1"))

    # Statement.Evict (preempt/reclaim): DeallocateFunc with Status=Releasing.
    assert await c.volcano.deallocate(task_info(running, "n1", RELEASING)) == {"errorMessage": ""}

    assert annotations_of(c.api, "p1") == before
    assert len(_pod_patches(c.api, "p1")) == patches


async def test_deallocate_of_a_running_pod_does_not_free_its_devices(start_cluster) -> None:
    """The annotations stay (bind-phase=success), so the devices stay taken: the state must agree with
    the pod, or the next pod is put on a GPU that a running pod holds."""
    c = await start_cluster(nodes=[gpu_node("n1", mode="hami-core")])
    c.create("pods", gpu_pod("p1", count=1))
    p2 = c.create("pods", gpu_pod("p2", count=1))
    await wait_until(lambda: len(c.sc.state.pods) == 2, what="pods cached")
    running = await _running(c, "p1")
    assert used_memory(c.sc) == WHOLE

    await c.volcano.open_session()
    await c.volcano.deallocate(task_info(running, "n1", RELEASING))
    await c.volcano.close_session()

    assert "volcano.sh/vgpu-node" in annotations_of(c.api, "p1")
    assert used_memory(c.sc) == WHOLE, "p1 still runs with its GPU, but the sidecar released it"
    answer = await c.volcano.predicate(task_info(p2), node_info(c.api.get("nodes", None, "n1"), [running]))
    assert answer["code"] == 2, f"p2 was offered the GPU that running p1 holds: {answer}"


async def test_evict_then_unevict_leaves_the_running_pod_untouched(start_cluster) -> None:
    """Statement.Discard of an eviction: DeallocateFunc (Releasing) then AllocateFunc (Running) for a
    pod that never stopped. Its assignment and bind-phase must not change."""
    c = await start_cluster(nodes=[gpu_node("n1", gpus=2, mode="hami-core")])
    c.create("pods", gpu_pod("p1", count=1, mem=10000))
    await wait_until(lambda: len(c.sc.state.pods) == 1, what="pod cached")
    running = await _running(c, "p1")
    before = annotations_of(c.api, "p1")
    usage_before = used_memory(c.sc)

    await c.volcano.open_session()
    await c.volcano.deallocate(task_info(running, "n1", RELEASING))
    answer = await c.volcano.allocate(task_info(running, "n1", RUNNING))
    await c.volcano.close_session()

    assert answer == {"errorMessage": ""}
    after = annotations_of(c.api, "p1")
    assert after.get("volcano.sh/bind-phase") == "success", "a running pod was sent back to bind-phase=allocating"
    assert after == before
    await asyncio.sleep(0.1)
    assert used_memory(c.sc) == usage_before


async def test_failed_patch_answers_an_error_and_frees_the_devices(start_cluster) -> None:
    c = await start_cluster(nodes=[gpu_node("n1", mode="hami-core")])
    p1 = c.create("pods", gpu_pod("p1", count=1))
    await wait_until(lambda: len(c.sc.state.pods) == 1, what="pod cached")
    c.api.fail_next(1, status=500, verbs=["patch"])

    result = await c.volcano.schedule_job([p1], c.nodes())

    task = result.tasks[0]
    assert task.node is None and task.allocate_error, task
    assert "500" in task.allocate_error
    # Volcano's unallocate called deallocate; nothing was written and nothing is held.
    assert [call.verb for call in c.volcano.calls] == ["onSessionOpen", "predicate", "allocate", "deallocate",
                                                       "onSessionClose"]  # fmt: skip
    assert "volcano.sh/vgpu-node" not in annotations_of(c.api, "p1")
    assert used_memory(c.sc) == 0
    assert c.sc.state.tentative == set()
    assert 'vgpu_pool_pod_patch_failures_total{verb="allocate"} 1.0' in await c.metrics()

    # The next session places it.
    result = await c.volcano.schedule_job([c.api.get("pods", NS, "p1")], c.nodes())
    assert result.placements == {f"{NS}/p1": "n1"}
    assert annotations_of(c.api, "p1")["volcano.sh/vgpu-node"] == "n1"


async def test_failed_patch_of_a_mig_allocation_releases_the_instances_at_once(start_cluster) -> None:
    """The error answer itself leaves nothing held (before, and without, any deallocate)."""
    c = await start_cluster(nodes=[gpu_node("n1", mode="mig")])
    p1 = c.create("pods", gpu_pod("p1", count=2, mem=8000, mode="mig"))
    await wait_until(lambda: len(c.sc.state.pods) == 1, what="pod cached")
    c.api.fail_next(1, status=503, verbs=["patch"])
    await c.volcano.open_session()
    answer = await c.volcano.allocate(task_info(p1, "n1", ALLOCATED))
    assert answer["errorMessage"] and "503" in answer["errorMessage"]
    gpu = c.sc.state.states["n1"].gpus[0]
    assert gpu.instances == [] and gpu.used_memory == 0 and gpu.geometry is None
    assert p1["metadata"]["uid"] not in c.sc.state.tentative
    await c.volcano.close_session()


async def test_allocate_answers_within_volcanos_timeout_when_the_apiserver_is_slow(start_cluster) -> None:
    """Volcano gives each call 1 s (extender.httpTimeout default): a PATCH that hangs must not hold the
    answer past it. The sidecar should give up, answer an error and free the devices itself."""
    c = await start_cluster(nodes=[gpu_node("n1", mode="hami-core")])
    p1 = c.create("pods", gpu_pod("p1", count=1))
    await wait_until(lambda: len(c.sc.state.pods) == 1, what="pod cached")
    patient = VolcanoDriver(c.url, timeout=5.0)  # measure the sidecar, not the client
    try:
        c.api.delay(1.5, "/pods/p1")
        await patient.open_session()
        try:
            answer = await patient.allocate(task_info(p1, "n1", ALLOCATED))
        finally:
            c.api.delay(0, "/pods/p1")
        elapsed = patient.calls_of("allocate")[0].elapsed
        assert elapsed < 1.0, f"allocate answered after {elapsed:.2f}s; Volcano stopped waiting at 1s"
        assert answer["errorMessage"]
        await patient.deallocate(task_info(p1, "n1", PENDING))
        await patient.close_session()
    finally:
        await patient.close()
    await asyncio.sleep(1.0)
    assert "volcano.sh/vgpu-node" not in annotations_of(c.api, "p1")
    assert used_memory(c.sc) == 0


async def test_a_timed_out_allocate_leaves_no_assignment_behind(start_cluster) -> None:
    """Volcano times out on allocate (1 s), runs unallocate → deallocate; the PATCH of the abandoned
    allocate must not land after the deallocate's removal and leave the devices taken."""
    c = await start_cluster(nodes=[gpu_node("n1", mode="hami-core")])
    p1 = c.create("pods", gpu_pod("p1", count=1))
    await wait_until(lambda: len(c.sc.state.pods) == 1, what="pod cached")
    v = c.volcano
    c.api.delay(1.5, "/pods/p1")  # only the allocate's PATCH is slow
    await v.open_session()
    # The sidecar answers inside Volcano's 1 s with an error (or Volcano times out): either way the
    # allocation fails and Volcano unallocates.
    try:
        answer = await v.allocate(task_info(p1, "n1", ALLOCATED))
        assert answer.get("errorMessage"), answer
    except ExtenderError:
        pass
    c.api.delay(0, "/pods/p1")
    assert await v.deallocate(task_info(p1, "n1", PENDING)) == {"errorMessage": ""}
    await v.close_session()

    await asyncio.sleep(1.0)  # the abandoned PATCH has had time to land
    anns = annotations_of(c.api, "p1")
    assert "volcano.sh/vgpu-node" not in anns, f"stale assignment left on a pod Volcano unallocated: {anns}"
    assert used_memory(c.sc) == 0
