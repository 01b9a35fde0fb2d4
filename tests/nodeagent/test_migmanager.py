"""MigManager + Journal over the simulated NVML: exact instances, ownership, grace, crash safety."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodeagent.journal import Journal
from nodeagent.migmanager import MigGpu, MigManager, PassResult, Want
from nodeagent.nvml import Nvml
from vcplugin.core.config import default_config
from vcplugin.core.migtables import find_model, layout_problem
from vgpupool_testing.simnvml import CallError, DestroyInUse, SimNvml

A100 = "NVIDIA A100-PCIE-40GB"
MODEL = find_model(A100)
assert MODEL is not None
STEPS = ("after-intent", "after-gi", "after-ci", "after-journal")


class Crash(Exception):
    """The agent was killed at a crash point."""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def new_sim(count: int = 2) -> SimNvml:
    return SimNvml.from_dict({"gpus": [{"model": A100, "count": count, "mig": True}]})


async def build(
    sim: SimNvml,
    state: str,
    clock: Callable[[], float],
    *,
    grace: float = 10.0,
    crash_hook: Callable[[str], None] | None = None,
    adopt_foreign: bool = False,
) -> MigManager:
    """What the agent does at start: a fresh NVML wrapper, the journal re-read from disk, the GPUs."""
    nv = Nvml(sim)
    await nv.run(nv.init)
    gpus = []
    for g in await nv.run(nv.gpus):
        model = find_model(g.name)
        assert model is not None
        gpus.append(MigGpu(g.index, g.uuid, model, await nv.run(nv.profiles, g.index)))
    mgr = MigManager(nv, Journal(state), clock, grace=grace, crash_hook=crash_hook, adopt_foreign=adopt_foreign)
    mgr.set_gpus(gpus)
    return mgr


def uuids(sim: SimNvml) -> list[str]:
    return [g["uuid"] for g in sim.snapshot()["gpus"]]


def want(sim: SimNvml, gpu: int, profile: str, start: int, pod: str = "p") -> Want:
    prof = MODEL.profile(profile)
    assert prof is not None
    return Want(uuids(sim)[gpu], profile, start, prof.size, f"uid-{pod}", f"default/{pod}")


def layout(sim: SimNvml) -> dict[str, list[tuple[str, int]]]:
    return {g["uuid"]: g["layout"] for g in sim.snapshot()["gpus"]}


def expected_layout(sim: SimNvml, wants: list[Want], extra: list[tuple[int, str, int]] = ()) -> dict[str, Any]:
    out: dict[str, list[tuple[str, int]]] = {u: [] for u in uuids(sim)}
    for w in wants:
        out[w.gpu].append((w.profile, w.start))
    for gpu, profile, start in extra:
        out[uuids(sim)[gpu]].append((profile, start))
    return {u: sorted(v, key=lambda p: (p[1], p[0])) for u, v in out.items()}


def instances(sim: SimNvml) -> dict[tuple[str, int, int], dict[str, Any]]:
    return {(g["uuid"], gi["start"], gi["size"]): gi for g in sim.snapshot()["gpus"] for gi in g["gpu_instances"]}


def assert_converged(sim: SimNvml, mgr: MigManager, wants: list[Want], foreign: list[tuple[int, str, int]] = ()):
    """Exactly the wanted instances (plus foreign ones), each with one full-size CI; the journal
    owns exactly the wanted instances; the pass reports every one ready with its MIG UUID."""
    assert layout(sim) == expected_layout(sim, wants, list(foreign))
    insts = instances(sim)
    for w in wants:
        gi = insts[w.key]
        assert len(gi["compute_instances"]) == 1, gi
        assert gi["compute_instances"][0]["slices"] == MODEL.profile(w.profile).slices
    assert set(mgr.journal.entries) == {w.key for w in wants}
    assert set(Journal(mgr.journal.path).entries) == {w.key for w in wants}  # on disk too
    for w in wants:
        assert mgr.journal.entries[w.key].profile_id == MODEL.profile(w.profile).profile_id


@pytest.fixture
def state() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="migm", dir="/tmp")
    yield os.path.join(d, "owned.json")
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
async def env(state: str) -> AsyncIterator[tuple[SimNvml, MigManager, Clock]]:
    sim, clock = new_sim(), Clock()
    mgr = await build(sim, state, clock)
    yield sim, mgr, clock
    mgr.nvml.close()


# --- creation -------------------------------------------------------------------------------------


async def test_creates_exactly_the_wanted_instances_at_exact_placements(env: Any) -> None:
    sim, mgr, _ = env
    # Placements a driver left to itself would not pick (1g at 3, not 6; 2g at 0, not 4).
    wants = [
        want(sim, 0, "2g.10gb", 0, "a"),
        want(sim, 0, "1g.5gb", 3, "b"),
        want(sim, 0, "3g.20gb", 4, "c"),
        want(sim, 1, "7g.40gb", 0, "d"),
    ]
    res = await mgr.reconcile(wants)
    assert sorted(res.created) == sorted(w.key for w in wants)
    assert res.destroyed == [] and res.waiting == {}
    assert_converged(sim, mgr, wants)
    insts = instances(sim)
    assert res.ready == {w.key: insts[w.key]["compute_instances"][0]["uuid"] for w in wants}
    assert len(set(res.ready.values())) == 4
    entry = mgr.journal.entries[wants[1].key]
    assert (entry.pod_uid, entry.pod, entry.gi_id) == ("uid-b", "default/b", insts[wants[1].key]["id"])
    assert entry.mig_uuid == res.ready[wants[1].key]


async def test_second_pass_is_idempotent(env: Any) -> None:
    sim, mgr, clock = env
    wants = [want(sim, 0, "3g.20gb", 0, "a"), want(sim, 0, "3g.20gb", 4, "b")]
    first = await mgr.reconcile(wants)
    before = sim.snapshot()
    clock.now += 1000
    second = await mgr.reconcile(wants)
    assert second.created == [] and second.destroyed == [] and second.waiting == {}
    assert second.ready == first.ready
    assert sim.snapshot() == before  # same GIs, same CIs, same MIG UUIDs


async def test_unplaceable_want_waits_with_a_reason(env: Any) -> None:
    sim, mgr, _ = env
    bad = Want(uuids(sim)[0], "3g.20gb", 2, 4, "uid-x", "default/x")
    unknown = Want("GPU-not-here", "1g.5gb", 0, 1, "uid-y", "default/y")
    res = await mgr.reconcile([bad, unknown])
    assert "cannot be placed" in res.waiting["uid-x"]
    assert "not a MIG GPU of this node" in res.waiting["uid-y"]
    assert res.created == [] and layout(sim) == expected_layout(sim, [])
    assert mgr.journal.entries == {}


# --- destruction ----------------------------------------------------------------------------------


async def test_unwanted_instance_destroyed_only_after_grace(env: Any) -> None:
    sim, mgr, clock = env
    w = want(sim, 0, "2g.10gb", 2)
    await mgr.reconcile([w])
    res = await mgr.reconcile([])  # the pod went away: the grace period starts now
    assert res.destroyed == []
    clock.now += 9.9
    assert (await mgr.reconcile([])).destroyed == []
    assert layout(sim)[w.gpu] == [("2g.10gb", 2)]
    assert w.key in mgr.journal.entries
    clock.now += 0.1
    res = await mgr.reconcile([])
    assert res.destroyed == [w.key]
    assert layout(sim) == expected_layout(sim, [])
    assert mgr.journal.entries == {} and Journal(mgr.journal.path).entries == {}


async def test_wanted_again_within_grace_is_kept(env: Any) -> None:
    sim, mgr, clock = env
    w = want(sim, 0, "1g.5gb", 5)
    first = await mgr.reconcile([w])
    await mgr.reconcile([])
    clock.now += 5
    again = await mgr.reconcile([w])
    assert again.created == [] and again.ready == first.ready
    clock.now += 100
    assert (await mgr.reconcile([w])).destroyed == []  # the grace clock was reset by the new holder
    assert layout(sim)[w.gpu] == [("1g.5gb", 5)]


async def test_never_destroyed_while_processes_run(env: Any) -> None:
    sim, mgr, clock = env
    w = want(sim, 0, "3g.20gb", 4)
    await mgr.reconcile([w])
    gi = instances(sim)[w.key]
    sim.add_process(0, 1001, 4096, gi["id"])
    await mgr.reconcile([])
    clock.now += 1000
    for _ in range(3):
        res = await mgr.reconcile([])
        assert res.destroyed == []
    assert instances(sim)[w.key]["compute_instances"][0]["uuid"] == gi["compute_instances"][0]["uuid"]
    assert w.key in mgr.journal.entries

    sim.remove_process(1001)
    res = await mgr.reconcile([])
    assert res.destroyed == [w.key]
    assert layout(sim) == expected_layout(sim, [])


async def test_busy_instance_blocks_a_new_want_instead_of_being_destroyed(env: Any) -> None:
    sim, mgr, clock = env
    old = want(sim, 0, "3g.20gb", 4, "old")
    await mgr.reconcile([old])
    sim.add_process(0, 1002, 100, instances(sim)[old.key]["id"])
    new = want(sim, 0, "2g.10gb", 4, "new")  # needs slices 4-5, held by the busy 3g
    res = await mgr.reconcile([new])
    assert res.destroyed == [] and res.created == []
    assert "in use by processes" in res.waiting["uid-new"]
    assert layout(sim)[old.gpu] == [("3g.20gb", 4)]

    sim.remove_process(1002)
    res = await mgr.reconcile([new])  # blocking a wanted instance: no grace needed once idle
    assert res.destroyed == [old.key] and res.created == [new.key]
    assert_converged(sim, mgr, [new])


async def test_transient_in_use_on_destroy_is_retried(env: Any) -> None:
    sim, mgr, clock = env
    w = want(sim, 1, "4g.20gb", 0)
    await mgr.reconcile([w])
    await mgr.reconcile([])
    clock.now += 100
    fault = sim.inject(DestroyInUse(count=1))
    res = await mgr.reconcile([])
    assert fault.count == 0  # the destroy was tried and answered IN_USE
    assert res.destroyed == []
    assert layout(sim)[w.gpu] == [("4g.20gb", 0)]
    assert w.key in mgr.journal.entries  # still ours, to retry
    res = await mgr.reconcile([])
    assert res.destroyed == [w.key]
    assert layout(sim) == expected_layout(sim, []) and mgr.journal.entries == {}


# --- instances vgpu-pool did not create ------------------------------------------------------------


async def test_foreign_instances_are_never_destroyed(state: str) -> None:
    sim, clock = new_sim(), Clock()
    sim.create_instance(0, "3g.20gb", 4)
    sim.create_instance(1, "1g.5gb", 6, compute=False)
    before = sim.snapshot()
    mgr = await build(sim, state, clock)
    try:
        for _ in range(3):
            res = await mgr.reconcile([])
            clock.now += 1000
            assert res.destroyed == []
        overlapping = want(sim, 0, "2g.10gb", 4, "ov")  # slices 4-5: inside the foreign 3g
        res = await mgr.reconcile([overlapping, want(sim, 1, "7g.40gb", 0, "all")])
        assert "not created by vgpu-pool" in res.waiting["uid-ov"]
        assert "not created by vgpu-pool" in res.waiting["uid-all"]
        assert res.created == [] and res.destroyed == [] and res.ready == {}
        assert sim.snapshot() == before
        assert mgr.journal.entries == {}
        # A want beside them is served.
        beside = want(sim, 0, "2g.10gb", 2, "ok")
        res = await mgr.reconcile([beside])
        assert res.created == [beside.key]
        assert layout(sim)[beside.gpu] == [("2g.10gb", 2), ("3g.20gb", 4)]
        assert set(mgr.journal.entries) == {beside.key}
    finally:
        mgr.nvml.close()


async def test_foreign_instance_at_the_wanted_placement_is_not_handed_out(state: str) -> None:
    """A foreign instance of exactly the wanted profile and placement (someone else's job may run in
    it) must not be reported ready, i.e. given to the pod, unless adopt_foreign is set."""
    sim, clock = new_sim(), Clock()
    sim.create_instance(0, "3g.20gb", 4)
    mgr = await build(sim, state, clock)
    try:
        w = want(sim, 0, "3g.20gb", 4, "same")
        res = await mgr.reconcile([w])
        assert w.key not in res.ready, "a foreign MIG instance was handed to a pod"
        why = res.waiting.get("uid-same", "")
        assert "vgpu-pool" in why and "create" in why, why  # says the instance is not vgpu-pool's
        assert mgr.journal.entries == {}
    finally:
        mgr.nvml.close()


async def test_adopt_foreign_takes_over_an_instance_at_the_wanted_placement(state: str) -> None:
    sim, clock = new_sim(), Clock()
    sim.create_instance(0, "1g.5gb", 2, compute=False)
    mgr = await build(sim, state, clock, adopt_foreign=True)
    try:
        w = want(sim, 0, "1g.5gb", 2, "adopt")
        await mgr.reconcile([w])
        res = await mgr.reconcile([w])
        assert w.key in res.ready
        assert_converged(sim, mgr, [w])
        await mgr.reconcile([])
        clock.now += 100
        assert (await mgr.reconcile([])).destroyed == [w.key]  # adopted: now ours to clean up
    finally:
        mgr.nvml.close()


# --- crash safety ---------------------------------------------------------------------------------


def crash_at(step: str, nth: int = 1) -> Callable[[str], None]:
    seen = 0

    def hook(s: str) -> None:
        nonlocal seen
        if s == step:
            seen += 1
            if seen == nth:
                raise Crash(step)

    return hook


@pytest.mark.parametrize("nth", [1, 2])
@pytest.mark.parametrize("step", STEPS)
async def test_killed_at_each_step_restart_converges(state: str, step: str, nth: int) -> None:
    sim, clock = new_sim(), Clock()
    foreign = [(1, "3g.20gb", 0)]
    sim.create_instance(1, "3g.20gb", 0)
    wants = [want(sim, 0, "3g.20gb", 4, "a"), want(sim, 0, "2g.10gb", 0, "b"), want(sim, 1, "2g.10gb", 4, "c")]
    first = await build(sim, state, clock, crash_hook=crash_at(step, nth))
    with pytest.raises(Crash):
        await first.reconcile(wants)
    first.nvml.close()  # killed: its memory is gone, only the journal file and the GPUs remain

    again = await build(sim, state, clock)
    try:
        res = await again.reconcile(wants)
        assert res.waiting == {}
        assert set(res.ready) == {w.key for w in wants}
        assert_converged(sim, again, wants, foreign)
        insts = instances(sim)
        assert res.ready == {w.key: insts[w.key]["compute_instances"][0]["uuid"] for w in wants}
        assert (await again.reconcile(wants)).created == []
    finally:
        again.nvml.close()


async def test_killed_between_gi_and_ci_one_pass_recovers(state: str, caplog: pytest.LogCaptureFixture) -> None:
    """The first pass after a crash between GI and CI creation adds the missing CI once and reports
    the instance ready: the pod's annotation and Allocate need not wait for another pass."""
    sim, clock = new_sim(), Clock()
    w = want(sim, 0, "3g.20gb", 0)
    first = await build(sim, state, clock, crash_hook=crash_at("after-gi"))
    with pytest.raises(Crash):
        await first.reconcile([w])
    first.nvml.close()
    assert instances(sim)[w.key]["compute_instances"] == []  # the GI, no CI

    again = await build(sim, state, clock)
    try:
        with caplog.at_level("WARNING", logger="nodeagent.migmanager"):
            res = await again.reconcile([w])
        assert_converged(sim, again, [w])
        assert res.ready == {w.key: instances(sim)[w.key]["compute_instances"][0]["uuid"]}
        failed = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
        assert failed == [], f"a second compute instance was attempted in the same GI: {failed}"
    finally:
        again.nvml.close()


async def test_one_failing_gpu_does_not_stop_mig_work_on_the_others(env: Any) -> None:
    sim, mgr, _ = env
    sim.inject(CallError("nvmlDeviceGetGpuInstances", "GPU_IS_LOST", gpu=1, count=None))
    ok = want(sim, 0, "2g.10gb", 0, "ok")
    lost = want(sim, 1, "2g.10gb", 0, "lost")
    res = await mgr.reconcile([ok, lost])
    assert layout(sim)[ok.gpu] == [("2g.10gb", 0)]
    assert ok.key in res.ready
    assert "uid-lost" in res.waiting


@pytest.mark.parametrize("step", STEPS)
async def test_killed_then_pod_gone_leaks_nothing(state: str, step: str) -> None:
    sim, clock = new_sim(), Clock()
    w = want(sim, 0, "1g.10gb", 6)
    first = await build(sim, state, clock, crash_hook=crash_at(step))
    with pytest.raises(Crash):
        await first.reconcile([w])
    first.nvml.close()
    again = await build(sim, state, clock)
    try:
        await again.reconcile([])
        clock.now += 100
        await again.reconcile([])
        assert layout(sim) == expected_layout(sim, [])
        assert again.journal.entries == {}
    finally:
        again.nvml.close()


async def test_killed_twice_in_a_row_converges(state: str) -> None:
    sim, clock = new_sim(), Clock()
    wants = [want(sim, 0, "1g.5gb", k, f"p{k}") for k in range(7)]
    for step in STEPS:
        mgr = await build(sim, state, clock, crash_hook=crash_at(step))
        with pytest.raises(Crash):
            await mgr.reconcile(wants)
        mgr.nvml.close()
    mgr = await build(sim, state, clock)
    try:
        await mgr.reconcile(wants)
        assert_converged(sim, mgr, wants)
    finally:
        mgr.nvml.close()


# --- property: random want sequences, random crashes ------------------------------------------------

GEOMETRIES = default_config().geometries_for(MODEL)
FOREIGN = (1, "1g.5gb", 6)  # one instance somebody else created on GPU 1


def _want_set(picks: list[tuple[int, list[bool]]], gpu_uuids: list[str]) -> list[Want]:
    out: list[Want] = []
    for gpu, (g_index, mask) in enumerate(picks):
        placed = [p for p, keep in zip(GEOMETRIES[g_index].layout, mask, strict=False) if keep]
        fixed = [(FOREIGN[1], FOREIGN[2])] if gpu == FOREIGN[0] else []
        chosen: list[tuple[str, int]] = []
        for name, start in placed:
            if layout_problem(MODEL, [*fixed, *chosen, (name, start)]) is None:
                chosen.append((name, start))
        for name, start in chosen:
            prof = MODEL.profile(name)
            assert prof is not None
            out.append(Want(gpu_uuids[gpu], name, start, prof.size, f"uid-{gpu}-{name}-{start}", f"ns/{name}"))
    return out


want_picks = st.lists(
    st.tuples(st.integers(0, len(GEOMETRIES) - 1), st.lists(st.booleans(), min_size=7, max_size=7)),
    min_size=2,
    max_size=2,
)
rounds = st.lists(
    st.tuples(
        want_picks,
        st.one_of(st.none(), st.tuples(st.sampled_from(STEPS), st.integers(1, 3))),  # crash point
        st.integers(0, 3),  # add a process to the k-th instance we created (0 = none)
        st.integers(0, 30),  # seconds the clock moves
    ),
    min_size=1,
    max_size=6,
)


async def _scenario(rounds_: list[Any], state: str) -> None:
    sim, clock = new_sim(), Clock()
    sim.create_instance(FOREIGN[0], FOREIGN[1], FOREIGN[2])
    foreign_uuid = instances(sim)[(uuids(sim)[1], 6, 1)]["compute_instances"][0]["uuid"]
    busy: dict[int, str] = {}  # pid -> MIG UUID of the instance it runs in
    pid = 5000

    def check_invariants() -> None:
        live = {ci["uuid"] for gi in instances(sim).values() for ci in gi["compute_instances"]}
        assert foreign_uuid in live, "a foreign instance was destroyed"
        for p, u in busy.items():
            assert u in live, f"instance {u} was destroyed while process {p} ran in it"

    mgr = await build(sim, state, clock)
    wants: list[Want] = []
    try:
        for picks, crash, proc, dt in rounds_:
            wants = _want_set(picks, uuids(sim))
            clock.now += dt
            if crash is not None:
                mgr.nvml.close()
                mgr = await build(sim, state, clock, crash_hook=crash_at(*crash))
            try:
                await mgr.reconcile(wants)
            except Crash:
                check_invariants()
                mgr.nvml.close()
                mgr = await build(sim, state, clock)
                await mgr.reconcile(wants)
            mgr.crash_hook = lambda step: None  # a crash point only applies to its own round
            check_invariants()
            if proc:
                ours = sorted(
                    (k, gi) for k, gi in instances(sim).items() if k in mgr.journal.entries and gi["compute_instances"]
                )
                if len(ours) >= proc:
                    key, gi = ours[proc - 1]
                    pid += 1
                    sim.add_process(uuids(sim).index(key[0]), pid, 10, gi["id"])
                    busy[pid] = gi["compute_instances"][0]["uuid"]
        # Jobs end; a clean pass after the grace period converges.
        for p in busy:
            sim.remove_process(p)
        busy.clear()
        await mgr.reconcile(wants)
        clock.now += 1000
        await mgr.reconcile(wants)
        final = await mgr.reconcile(wants)
        assert final.created == [] and final.destroyed == [] and final.waiting == {}
        assert_converged(sim, mgr, wants, [FOREIGN])
        assert set(final.ready) == {w.key for w in wants}
    finally:
        mgr.nvml.close()


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rounds)
def test_random_wants_and_crashes_converge(rounds_: list[Any]) -> None:
    # The journal fsyncs every write: keep it on tmpfs when there is one, so many examples stay cheap.
    d = tempfile.mkdtemp(prefix="migp", dir="/dev/shm" if os.path.isdir("/dev/shm") else "/tmp")
    try:
        asyncio.run(_scenario(rounds_, os.path.join(d, "owned.json")))
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_pass_result_defaults_are_not_shared() -> None:
    a, b = PassResult(), PassResult()
    a.created.append(("g", 0, 1))
    a.waiting["x"] = "y"
    assert b.created == [] and b.waiting == {}
