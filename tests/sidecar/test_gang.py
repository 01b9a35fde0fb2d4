"""Sessions with several tasks: the per-session ledger never double-books, gangs roll back."""

from __future__ import annotations

import asyncio

from vgpupool_testing.volcano import ALLOCATED, Job, bind, node_info, task_info

from .conftest import NS, annotations_of, assignment_of, gpu_node, gpu_pod, used_memory, wait_until


def _devices(api, name: str) -> list[tuple[str, str]]:
    a = assignment_of(api, name)
    assert a is not None, f"{name} has no assignment"
    return [(a["node"], d["uuid"]) for c in a["containers"] for d in c["devices"]]


async def test_gang_that_cannot_fit_rolls_back_then_a_smaller_gang_fits(start_cluster) -> None:
    c = await start_cluster(nodes=[gpu_node("n0", mode="hami-core"), gpu_node("n1", mode="hami-core")])
    whole = [c.create("pods", gpu_pod(f"w{i}", count=1, group="big")) for i in range(4)]  # a whole GPU each
    await wait_until(lambda: len(c.sc.state.pods) == 4, what="pods cached")
    v = c.volcano

    result = await v.schedule_job(whole, c.nodes(), min_available=4, name="big")

    assert not result.ready and result.placements == {}
    # Two tasks got a GPU each, on different nodes; the other two found no free GPU anywhere.
    tentative = [t.tentative_node for t in result.tasks]
    assert sorted(n for n in tentative if n) == ["n0", "n1"], result.tasks
    for t in result.tasks:
        if t.tentative_node is None:
            assert set(t.predicates) == {"n0", "n1"}
            assert all(isinstance(a, dict) and a["code"] == 2 for a in t.predicates.values()), t.predicates
    # Statement.Discard: deallocate in reverse order of allocation, Status Pending, NodeName still set.
    allocated = [t.key for t in result.tasks if t.tentative_node]
    deallocs = v.calls_of("deallocate")
    assert [call.task for call in deallocs] == list(reversed(allocated))
    assert all(call.response == {"errorMessage": ""} for call in deallocs)
    assert [call.verb for call in v.calls][-1] == "onSessionClose"

    # Everything released: on the pods (PATCHed before deallocate answered) and in the sidecar's state.
    for p in whole:
        assert "volcano.sh/vgpu-node" not in annotations_of(c.api, p["metadata"]["name"])
    await wait_until(lambda: all(e.holding is None for e in c.sc.state.pods.values()), what="no pod holds devices")
    await wait_until(lambda: used_memory(c.sc) == 0, what="all GPU memory free after the watch events")

    # Next session: a gang of two fits exactly, on disjoint devices.
    pair = [c.create("pods", gpu_pod(f"pair{i}", count=1, group="pair")) for i in range(2)]
    await wait_until(lambda: len(c.sc.state.pods) == 6, what="pods cached")
    v.calls.clear()
    result = await v.schedule_job(pair, c.nodes(), min_available=2, name="pair")
    assert result.ready and sorted(result.placements.values()) == ["n0", "n1"], result.tasks
    assert v.calls_of("deallocate") == []
    d0, d1 = _devices(c.api, "pair0"), _devices(c.api, "pair1")
    assert len(d0) == len(d1) == 1 and d0 != d1
    assert used_memory(c.sc) == 2 * 40960


async def test_two_gangs_in_one_session_share_the_ledger(start_cluster) -> None:
    """A job committed earlier in the session holds its devices for the next job of that session."""
    c = await start_cluster(nodes=[gpu_node("n0", gpus=2, mode="hami-core")])
    a = [c.create("pods", gpu_pod(f"a{i}", count=1, mem=30000, group="a")) for i in range(2)]
    b = [c.create("pods", gpu_pod(f"b{i}", count=1, mem=30000, group="b")) for i in range(2)]
    await wait_until(lambda: len(c.sc.state.pods) == 4, what="pods cached")
    ra, rb = await c.volcano.schedule([Job("a", a, 2), Job("b", b, 2)], c.nodes())
    assert ra.ready and len(ra.placements) == 2
    assert not rb.ready and rb.placements == {}
    gpus = {uuid for p in a for _, uuid in _devices(c.api, p["metadata"]["name"])}
    assert len(gpus) == 2  # one GPU each: 30000 + 30000 MiB does not fit one 40960 MiB GPU
    assert used_memory(c.sc) == 60000
    for p in b:
        assert assignment_of(c.api, p["metadata"]["name"]) is None


async def test_concurrent_predicates_after_an_allocation_never_offer_the_taken_gpu(start_cluster) -> None:
    nodes = [gpu_node(f"n{i:02d}", mode="hami-core") for i in range(24)]
    c = await start_cluster(nodes=nodes)
    first = c.create("pods", gpu_pod("first", count=1))
    second = c.create("pods", gpu_pod("second", count=1))
    await wait_until(lambda: len(c.sc.state.pods) == 2, what="pods cached")
    v = c.volcano
    await v.open_session()
    assert (await v.allocate(task_info(first, node_name="n07", status=ALLOCATED))) == {"errorMessage": ""}
    # The NodeInfo Volcano sends now lists the new task (no device annotations on it yet).
    infos = [
        node_info(n, tasks=[task_info(first, "n07", ALLOCATED)] if n["metadata"]["name"] == "n07" else [])
        for n in c.nodes()
    ]
    sem = asyncio.Semaphore(16)

    async def one(info):
        async with sem:
            return info["Name"], await v.predicate(task_info(second), info)

    for _ in range(3):
        answers = dict(await asyncio.gather(*(one(i) for i in infos)))
        assert answers["n07"]["code"] == 2, answers["n07"]
        assert all(a == {"status": "", "code": 0, "errorMessage": ""} for n, a in answers.items() if n != "n07")
    assert v.max_inflight["predicate"] == 16

    # The driver's own session does the same: 16 at a time, prioritize over the 23 that passed.
    result = await v.schedule_job([second], c.nodes(), existing_pods=[], open_session=False)
    node = result.placements[f"{NS}/second"]
    assert node != "n07"
    assert len(result.tasks[0].predicates) == 24 and result.tasks[0].predicates["n07"]["code"] == 2
    assert result.tasks[0].scores is not None and "n07" not in result.tasks[0].scores
    assert len(v.calls_of("prioritize")) == 1
    # Both hold a GPU of their own.
    assert {assignment_of(c.api, "first")["node"], assignment_of(c.api, "second")["node"]} == {"n07", node}


async def test_per_gpu_fragmentation_is_the_sidecars_call(start_cluster) -> None:
    """Three 25000 MiB tasks on two 40960 MiB GPUs pass Volcano's own node-total check (75000 <= 81920),
    but only two fit GPU by GPU: the third's predicate says no."""
    c = await start_cluster(nodes=[gpu_node("n0", gpus=2, mode="hami-core")])
    pods = [c.create("pods", gpu_pod(f"s{i}", count=1, mem=25000, group="s")) for i in range(3)]
    await wait_until(lambda: len(c.sc.state.pods) == 3, what="pods cached")
    result = await c.volcano.schedule_job(pods, c.nodes(), min_available=2)
    assert result.ready and len(result.placements) == 2
    last = result.tasks[2]
    assert last.node is None and last.predicates["n0"]["code"] == 2, last
    assert used_memory(c.sc) == 50000
    gpus = {uuid for i in range(2) for _, uuid in _devices(c.api, f"s{i}")}
    assert len(gpus) == 2
    assert await bind(c.api, result) == [f"{NS}/s0", f"{NS}/s1"]
    await wait_until(
        lambda: sum(1 for e in c.sc.state.pods.values() if e.holding and e.pod.spec.node_name == "n0") == 2,
        what="both bound in the cache",
    )
    assert used_memory(c.sc) == 50000
    assert assignment_of(c.api, "s2") is None
