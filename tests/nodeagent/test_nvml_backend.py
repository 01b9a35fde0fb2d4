"""nodeagent.nvml.Nvml over the simulated pynvml surface (vgpupool_testing.simnvml)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from nodeagent.nvml import Nvml, NvmlInstance
from vgpupool_testing.simnvml import SimNvml

A100 = "NVIDIA A100-PCIE-40GB"


def make(spec: dict[str, Any]) -> tuple[SimNvml, Nvml]:
    sim = SimNvml.from_dict(spec)
    nv = Nvml(sim)
    nv.init()
    return sim, nv


@pytest.fixture
def a100() -> Iterator[tuple[SimNvml, Nvml]]:
    sim, nv = make({"gpus": [{"model": A100, "count": 2, "mig": True}]})
    yield sim, nv
    nv.close()


class Recorder:
    """A pynvml stand-in that forwards to the simulator and records every attribute the agent uses."""

    def __init__(self, sim: SimNvml):
        self._sim = sim
        self.used: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.used.append(name)
        return getattr(self._sim, name)


# --- discovery ------------------------------------------------------------------------------------


def test_gpus_reports_identity_memory_and_mig_state() -> None:
    sim, nv = make(
        {
            "gpus": [
                {"model": A100, "mig": True},
                {"model": A100, "mig": False},
                {"model": A100, "mig": False, "mig_pending": True},
                {"model": "Tesla T4", "memory_mib": 15360},
            ]
        }
    )
    try:
        gpus = nv.gpus()
        snap = sim.snapshot()["gpus"]
        assert [g.index for g in gpus] == [0, 1, 2, 3]
        assert [g.uuid for g in gpus] == [s["uuid"] for s in snap]
        assert all(g.uuid.startswith("GPU-") for g in gpus)
        assert [g.name for g in gpus] == [A100, A100, A100, "Tesla T4"]
        assert [g.memory_mib for g in gpus] == [40960, 40960, 40960, 15360]
        assert [(g.mig_capable, g.mig_current, g.mig_pending) for g in gpus] == [
            (True, True, False),
            (True, False, False),
            (True, False, True),  # enable requested, not applied yet
            (False, False, False),  # GetMigMode answers NOT_SUPPORTED on a non-MIG GPU
        ]
    finally:
        nv.close()


def test_profiles_keep_nvml_ids_apart_from_indexes(a100: tuple[SimNvml, Nvml]) -> None:
    _, nv = a100
    by_name = {p.name: p for p in nv.profiles(0)}
    assert set(by_name) == {"1g.5gb", "1g.5gb+me", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"}
    # (index constant, profile ID) pairs from reference/mig.md §1.2: IDs are not indexes.
    assert {n: (p.index, p.id) for n, p in by_name.items()} == {
        "1g.5gb": (0x0, 19),
        "1g.5gb+me": (0x7, 20),
        "1g.10gb": (0x9, 15),
        "2g.10gb": (0x1, 14),
        "3g.20gb": (0x2, 9),
        "4g.20gb": (0x3, 5),
        "7g.40gb": (0x4, 0),
    }
    p3 = by_name["3g.20gb"]
    assert (p3.slices, p3.memory_mib, p3.instance_count) == (3, 19968, 2)
    assert p3.placements == ((0, 4), (4, 4))
    assert by_name["1g.5gb"].placements == tuple((s, 1) for s in range(7))
    assert by_name["1g.10gb"].placements == ((0, 2), (2, 2), (4, 2), (6, 2))
    assert by_name["7g.40gb"].placements == ((0, 8),)
    assert by_name["7g.40gb"].memory_mib == 40192


def test_profiles_of_an_a30_use_its_own_ids() -> None:
    _, nv = make({"gpus": [{"model": "NVIDIA A30", "mig": True}]})
    try:
        got = {p.name: (p.index, p.id, p.memory_mib, p.placements) for p in nv.profiles(0)}
    finally:
        nv.close()
    assert got == {
        "1g.6gb": (0x0, 14, 5952, ((0, 1), (1, 1), (2, 1), (3, 1))),
        "1g.6gb+me": (0x7, 21, 5952, ((0, 1), (1, 1), (2, 1), (3, 1))),
        "2g.12gb": (0x1, 5, 11968, ((0, 2), (2, 2))),
        "2g.12gb+me": (0x8, 6, 11968, ((0, 2), (2, 2))),
        "4g.24gb": (0x3, 0, 24064, ((0, 4),)),
    }


def test_profiles_follow_the_driver_not_a_table() -> None:
    _, nv = make({"gpus": [{"model": A100, "mig": True, "hide_profiles": ["4g.20gb"]}]})
    try:
        names = {p.name for p in nv.profiles(0)}
    finally:
        nv.close()
    assert "4g.20gb" not in names
    assert "3g.20gb" in names


def test_profiles_of_a_gpu_without_mig_mode_are_empty() -> None:
    _, nv = make({"gpus": [{"model": A100, "mig": False}]})
    try:
        assert nv.profiles(0) == []
    finally:
        nv.close()


# --- instances ------------------------------------------------------------------------------------


def test_create_at_exact_placement_and_report_it(a100: tuple[SimNvml, Nvml]) -> None:
    sim, nv = a100
    nv.profiles(0)
    # 1g at 3: a driver choosing by itself would take 6 first; the agent must get exactly 3.
    gi1 = nv.create_gpu_instance(0, 19, 3, 1)
    gi3 = nv.create_gpu_instance(0, 9, 4, 4)
    assert nv.instances(0)[0].ci_ids == ()  # a GI alone has no compute instance, hence no MIG device
    assert nv.mig_uuid(0, gi1) == ""
    ci1 = nv.create_compute_instance(0, gi1, 1)
    ci3 = nv.create_compute_instance(0, gi3, 3)
    assert (ci1, ci3) == (0, 0)  # CI ids restart at 0 in every GI
    u1, u3 = nv.mig_uuid(0, gi1), nv.mig_uuid(0, gi3)
    assert u1.startswith("MIG-") and u3.startswith("MIG-") and u1 != u3

    snap = sim.snapshot()["gpus"][0]
    assert snap["layout"] == [("1g.5gb", 3), ("3g.20gb", 4)]
    for gi in snap["gpu_instances"]:
        assert len(gi["compute_instances"]) == 1
        assert gi["compute_instances"][0]["slices"] == {"1g.5gb": 1, "3g.20gb": 3}[gi["profile"]]  # full size
    sim_uuids = {gi["id"]: gi["compute_instances"][0]["uuid"] for gi in snap["gpu_instances"]}
    assert sim_uuids == {gi1: u1, gi3: u3}

    assert nv.instances(0) == [
        NvmlInstance(gi1, 19, 3, 1, (0,), u1, 0),
        NvmlInstance(gi3, 9, 4, 4, (0,), u3, 0),
    ]
    assert nv.instances(1) == []

    sim.add_process(0, 4242, 1000, gi3)
    sim.add_process(0, 4243, 1000, gi3)
    by_gi = {i.gi_id: i for i in nv.instances(0)}
    assert by_gi[gi3].processes == 2
    assert by_gi[gi1].processes == 0
    assert nv.gpu_processes(0) == 2


def test_create_rejects_an_invalid_or_occupied_placement(a100: tuple[SimNvml, Nvml]) -> None:
    sim, nv = a100
    nv.create_gpu_instance(0, 9, 4, 4)
    with pytest.raises(sim.NVMLError):
        nv.create_gpu_instance(0, 14, 4, 2)  # overlaps the 3g
    with pytest.raises(sim.NVMLError):
        nv.create_gpu_instance(0, 9, 2, 4)  # 3g cannot start at 2
    assert sim.snapshot()["gpus"][0]["layout"] == [("3g.20gb", 4)]


def test_destroy_refuses_with_processes_and_succeeds_after(a100: tuple[SimNvml, Nvml]) -> None:
    sim, nv = a100
    gi = nv.create_gpu_instance(0, 14, 2, 2)
    nv.create_compute_instance(0, gi, 2)
    uuid = nv.mig_uuid(0, gi)
    sim.add_process(0, 77, 512, gi)
    with pytest.raises(sim.NVMLError) as exc:
        nv.destroy(0, gi)
    assert nv.is_error(exc.value, "NVML_ERROR_IN_USE")
    # Nothing of the instance went away: GI, CI and MIG device are intact.
    assert nv.instances(0) == [NvmlInstance(gi, 14, 2, 2, (0,), uuid, 1)]

    sim.remove_process(77)
    nv.destroy(0, gi)
    assert nv.instances(0) == []
    assert sim.snapshot()["gpus"][0]["gpu_instances"] == []


def test_destroy_a_gi_without_compute_instance(a100: tuple[SimNvml, Nvml]) -> None:
    sim, nv = a100
    gi = nv.create_gpu_instance(0, 0, 0, 8)
    nv.destroy(0, gi)
    assert sim.snapshot()["gpus"][0]["layout"] == []


def test_destroy_of_a_missing_gi_is_a_noop(a100: tuple[SimNvml, Nvml]) -> None:
    sim, nv = a100
    gi = nv.create_gpu_instance(0, 19, 0, 1)
    nv.create_compute_instance(0, gi, 1)
    nv.destroy(0, gi)
    nv.destroy(0, gi)  # already gone: NOT_FOUND is swallowed
    nv.destroy(0, 13)  # never existed
    other = sim.create_instance(1, "1g.5gb", 0)
    nv.destroy(0, other[0])  # an id that exists on another GPU only
    assert sim.snapshot()["gpus"][1]["layout"] == [("1g.5gb", 0)]


# --- MIG mode -------------------------------------------------------------------------------------


def test_enable_mig_on_an_idle_gpu() -> None:
    sim, nv = make({"gpus": [{"model": A100, "mig": False}]})
    try:
        assert nv.enable_mig(0) == (True, False)
    finally:
        nv.close()
    assert sim.snapshot()["gpus"][0]["mig_current"] is True


def test_enable_mig_on_a_busy_gpu_stays_pending_and_never_resets() -> None:
    sim = SimNvml.from_dict({"gpus": [{"model": A100, "mig": False}, {"model": A100, "mig": False}]})
    sim.add_process(0, 31337, 2048)
    sim.add_holder(1, "nvidia-persistenced")
    rec = Recorder(sim)
    nv = Nvml(rec)
    try:
        nv.init()
        assert nv.enable_mig(0) == (False, True)
        assert nv.enable_mig(1) == (False, True)
        gpus = nv.gpus()
        assert [(g.mig_current, g.mig_pending) for g in gpus] == [(False, True), (False, True)]
    finally:
        nv.close()
    snap = sim.snapshot()["gpus"]
    assert (snap[0]["mig_current"], snap[0]["mig_pending"]) == (False, True)
    assert snap[0]["processes"] == [{"pid": 31337, "used_mib": 2048, "gi_id": None, "ci_id": None}]
    assert snap[1]["holders"] == ["nvidia-persistenced"]
    assert not [n for n in rec.used if "reset" in n.lower()], rec.used


# --- off the event loop ---------------------------------------------------------------------------


async def test_calls_run_on_a_worker_thread(a100: tuple[SimNvml, Nvml]) -> None:
    sim, nv = a100
    seen: list[threading.Thread] = []

    def probe() -> list[Any]:
        seen.append(threading.current_thread())
        return nv.gpus()

    gpus = await nv.run(probe)
    assert len(gpus) == 2
    assert seen and seen[0] is not threading.main_thread()
    assert seen[0].name.startswith("nvml")

    # A slow NVML call does not stall the loop.
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    t = asyncio.ensure_future(ticker())
    try:
        await nv.run(time.sleep, 0.3)
    finally:
        t.cancel()
    assert ticks >= 10


async def test_calls_are_serialised_on_one_thread(a100: tuple[SimNvml, Nvml]) -> None:
    _, nv = a100
    active = 0
    peak = 0
    lock = threading.Lock()

    def slow() -> str:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.02)
        with lock:
            active -= 1
        return threading.current_thread().name

    names = await asyncio.gather(*(nv.run(slow) for _ in range(5)))
    assert peak == 1
    assert len(set(names)) == 1
