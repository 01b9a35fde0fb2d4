"""Conformance tests for the simulated NVML (reference/mig.md §6), driven like an agent drives pynvml.

Every MIG call below uses the pynvml surface and ctypes conventions real code uses with real NVML:
profile-info by index -> `info.id` for everything else, placement arrays + byref(c_uint) counts,
byref(placement) for explicit-placement creation, `.value` on nvmlDeviceIsMigDeviceHandle.
"""

from __future__ import annotations

import contextlib
import ctypes
import inspect
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
import pynvml
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vcplugin.core import migtables
from vgpupool_testing.simnvml import (
    CallError,
    DestroyInUse,
    GpuSpec,
    HideProfile,
    NoPermission,
    SimNvml,
    SimUsageError,
    StuckPending,
    load,
)

A100 = "NVIDIA A100-PCIE-40GB"
A30 = "NVIDIA A30"
A100_MODEL = migtables.find_model(A100)
A30_MODEL = migtables.find_model(A30)
assert A100_MODEL is not None and A30_MODEL is not None

P = pynvml  # profile index constants, error classes


# --- agent-style helpers -------------------------------------------------------------------------


def make(*gpus: dict[str, Any], **top: Any) -> SimNvml:
    nvml = SimNvml.from_dict({"gpus": list(gpus), **top})
    nvml.nvmlInit()
    return nvml


@pytest.fixture
def nvml() -> Iterator[SimNvml]:
    sim = make({"model": A100, "mig": True})
    yield sim
    sim.nvmlShutdown()


def dev0(nvml: SimNvml) -> Any:
    return nvml.nvmlDeviceGetHandleByIndex(0)


def pid_of(nvml: SimNvml, dev: Any, index: int) -> int:
    """Profile *index* constant -> profile *ID* (the namespace every other call uses)."""
    return int(nvml.nvmlDeviceGetGpuInstanceProfileInfo(dev, index).id)


def placements(nvml: SimNvml, dev: Any, profile_id: int) -> list[tuple[int, int]]:
    cnt = ctypes.c_uint(0)
    nvml.nvmlDeviceGetGpuInstancePossiblePlacements(dev, profile_id, None, ctypes.byref(cnt))  # count only
    arr = (nvml.c_nvmlGpuInstancePlacement_t * cnt.value)()
    nvml.nvmlDeviceGetGpuInstancePossiblePlacements(dev, profile_id, arr, ctypes.byref(cnt))
    return [(arr[i].start, arr[i].size) for i in range(cnt.value)]


def create_at(nvml: SimNvml, dev: Any, profile_id: int, start: int, size: int) -> Any:
    p = nvml.c_nvmlGpuInstancePlacement_t()
    p.start, p.size = start, size
    return nvml.nvmlDeviceCreateGpuInstanceWithPlacement(dev, profile_id, ctypes.byref(p))


def gi_where(nvml: SimNvml, gi: Any) -> tuple[int, int, int, int]:
    info = nvml.nvmlGpuInstanceGetInfo(gi)
    return info.id, info.profileId, info.placement.start, info.placement.size


def gpu_instances(nvml: SimNvml, dev: Any, profile_id: int) -> list[Any]:
    n = nvml.nvmlDeviceGetGpuInstanceProfileInfoById(dev, profile_id).instanceCount
    arr = (nvml.c_nvmlGpuInstance_t * n)()
    cnt = ctypes.c_uint(0)
    nvml.nvmlDeviceGetGpuInstances(dev, profile_id, arr, ctypes.byref(cnt))
    return [arr[i] for i in range(cnt.value)]


def full_ci(nvml: SimNvml, gi: Any) -> Any:
    """What `nvidia-smi mig -cgi ... -C` does: the full-size CI of the GI."""
    for ci_index in (4, 3, 2, 1, 0):  # 7c, 4c, 3c, 2c, 1c: the first allowed one is the full size
        try:
            info = nvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, ci_index, 0)
        except pynvml.NVMLError_NotSupported:
            continue
        return nvml.nvmlGpuInstanceCreateComputeInstance(gi, info.id)
    raise AssertionError("no CI profile")


def destroy_gi(nvml: SimNvml, gi: Any) -> None:
    """CIs first, then the GI (CI ids are small: probe them)."""
    for ci_id in range(7):
        try:
            ci = nvml.nvmlGpuInstanceGetComputeInstanceById(gi, ci_id)
        except pynvml.NVMLError_NotFound:
            continue
        nvml.nvmlComputeInstanceDestroy(ci)
    nvml.nvmlGpuInstanceDestroy(gi)


def layout_via_api(nvml: SimNvml, dev: Any, profile_ids: list[int]) -> frozenset[tuple[int, int]]:
    out = set()
    for pid in profile_ids:
        for gi in gpu_instances(nvml, dev, pid):
            _, prof, start, _ = gi_where(nvml, gi)
            out.add((prof, start))
    return frozenset(out)


def classic_ids(model: migtables.MigModel) -> list[int]:
    """1g, 2g, 3g, 4g, 7g profile IDs (no +me, no double-memory 1g)."""
    idx = {P.NVML_GPU_INSTANCE_PROFILE_1_SLICE, P.NVML_GPU_INSTANCE_PROFILE_2_SLICE}
    idx |= {P.NVML_GPU_INSTANCE_PROFILE_3_SLICE, P.NVML_GPU_INSTANCE_PROFILE_4_SLICE}
    idx |= {P.NVML_GPU_INSTANCE_PROFILE_7_SLICE}
    return [p.profile_id for p in model.profiles if p.index in idx]


# --- surface ---------------------------------------------------------------------------------------


def test_every_simulated_call_has_pynvmls_signature() -> None:
    names = [n for n in dir(SimNvml) if n.startswith("nvml")]
    assert len(names) > 50
    for name in names:
        assert hasattr(pynvml, name), name
        ours = list(inspect.signature(getattr(SimNvml, name)).parameters.values())[1:]  # drop self
        theirs = list(inspect.signature(getattr(pynvml, name)).parameters.values())
        assert [(p.name, p.default) for p in ours] == [(p.name, p.default) for p in theirs], name


def test_reexports_pynvml_constants_structs_and_errors(nvml: SimNvml) -> None:
    assert nvml.NVML_DEVICE_MIG_ENABLE == 1
    assert nvml.c_nvmlGpuInstancePlacement_t is pynvml.c_nvmlGpuInstancePlacement_t
    assert nvml.NVMLError_NotFound is pynvml.NVMLError_NotFound
    assert nvml.NVMLError is pynvml.NVMLError
    # A C call the simulator does not implement must not silently reach the real library.
    assert not hasattr(nvml, "nvmlDeviceGetTemperature")
    with pytest.raises(AttributeError, match="does not simulate"):
        nvml.nvmlDeviceGetTemperature  # noqa: B018


def test_calls_before_init_and_after_shutdown_are_uninitialized() -> None:
    sim = SimNvml.from_dict({"gpus": [{"model": A100}]})
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        sim.nvmlDeviceGetCount()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        sim.nvmlShutdown()
    sim.nvmlInit()
    sim.nvmlInit()  # refcounted like NVML
    sim.nvmlShutdown()
    assert sim.nvmlDeviceGetCount() == 1
    dev = sim.nvmlDeviceGetHandleByIndex(0)
    sim.nvmlShutdown()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        sim.nvmlDeviceGetName(dev)


def test_device_identity() -> None:
    sim = make({"model": A100, "count": 2, "mig": True}, driver_version="535.104.05")
    assert sim.nvmlSystemGetDriverVersion() == "535.104.05"
    assert sim.nvmlDeviceGetCount() == 2
    dev = sim.nvmlDeviceGetHandleByIndex(1)
    assert isinstance(dev, pynvml.c_nvmlDevice_t)
    assert sim.nvmlDeviceGetName(dev) == A100
    assert sim.nvmlDeviceGetIndex(dev) == 1
    assert sim.nvmlDeviceGetMinorNumber(dev) == 1
    uuid = sim.nvmlDeviceGetUUID(dev)
    assert uuid.startswith("GPU-") and len(uuid) == 40
    assert sim.nvmlDeviceGetIndex(sim.nvmlDeviceGetHandleByUUID(uuid)) == 1
    assert sim.nvmlDeviceGetIndex(sim.nvmlDeviceGetHandleByUUID(uuid.encode())) == 1
    pci = sim.nvmlDeviceGetPciInfo(dev)
    assert pci.pciDeviceId == 0x20F110DE  # PCIe board
    assert pci.busId == "00000000:11:00.0"  # _PrintableStructure decodes char arrays
    mem = sim.nvmlDeviceGetMemoryInfo(dev)
    assert mem.total == 40960 * 2**20 and mem.free == mem.total and mem.used == 0
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        sim.nvmlDeviceGetHandleByIndex(2)
    with pytest.raises(pynvml.NVMLError_NotFound):
        sim.nvmlDeviceGetHandleByUUID("GPU-00000000-0000-4000-8000-000000000000")


def test_uuids_are_deterministic_from_the_seed() -> None:
    def uuids(seed: int) -> list[str]:
        sim = make({"model": A100, "count": 3}, seed=seed)
        return [sim.nvmlDeviceGetUUID(sim.nvmlDeviceGetHandleByIndex(i)) for i in range(3)]

    assert uuids(7) == uuids(7)
    assert uuids(7) != uuids(8)
    assert len(set(uuids(7))) == 3


# --- §6.1 non-MIG GPUs -----------------------------------------------------------------------------


def test_rule1_non_mig_gpu() -> None:
    sim = make({"model": "Tesla T4", "memory_mib": 15360})
    dev = dev0(sim)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        sim.nvmlDeviceGetMigMode(dev)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        sim.nvmlDeviceSetMigMode(dev, pynvml.NVML_DEVICE_MIG_ENABLE)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        sim.nvmlDeviceGetGpuInstanceProfileInfo(dev, P.NVML_GPU_INSTANCE_PROFILE_1_SLICE)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        sim.nvmlDeviceGetGpuInstancePossiblePlacements(dev, 19, None, ctypes.byref(ctypes.c_uint()))
    with pytest.raises(pynvml.NVMLError_NotSupported):
        sim.nvmlDeviceCreateGpuInstance(dev, 19)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        sim.nvmlDeviceGetMigDeviceHandleByIndex(dev, 0)
    assert sim.nvmlDeviceGetMaxMigDeviceCount(dev) == 0
    assert sim.nvmlDeviceIsMigDeviceHandle(dev).value == 0
    assert sim.nvmlDeviceGetMemoryInfo(dev).total == 15360 * 2**20
    assert sim.nvmlDeviceGetPciInfo(dev).pciDeviceId == 0


def test_rule1_a_mig_capable_gpu_with_mig_off_reports_zero_mig_devices() -> None:
    sim = make({"model": A100})
    dev = dev0(sim)
    assert sim.nvmlDeviceGetMigMode(dev) == [0, 0]
    assert sim.nvmlDeviceGetMaxMigDeviceCount(dev) == 0


# --- §6.2 MIG mode ---------------------------------------------------------------------------------


def test_rule2_set_mig_mode_on_idle_gpu_applies_at_once() -> None:
    sim = make({"model": A100})
    dev = dev0(sim)
    assert sim.nvmlDeviceSetMigMode(dev, pynvml.NVML_DEVICE_MIG_ENABLE) == pynvml.NVML_SUCCESS
    assert sim.nvmlDeviceGetMigMode(dev) == [1, 1]
    assert sim.nvmlDeviceGetMaxMigDeviceCount(dev) == 7
    assert sim.nvmlDeviceSetMigMode(dev, pynvml.NVML_DEVICE_MIG_DISABLE) == pynvml.NVML_SUCCESS
    assert sim.nvmlDeviceGetMigMode(dev) == [0, 0]


def test_rule2_set_mig_mode_needs_root() -> None:
    sim = make({"model": A100}, root=False)
    with pytest.raises(pynvml.NVMLError_NoPermission):
        sim.nvmlDeviceSetMigMode(dev0(sim), pynvml.NVML_DEVICE_MIG_ENABLE)
    assert sim.nvmlDeviceGetMigMode(dev0(sim)) == [0, 0]


def test_rule2_busy_gpu_keeps_the_change_pending_until_reset() -> None:
    sim = make({"model": A100, "processes": [{"pid": 100, "used_mib": 500}]})
    dev = dev0(sim)
    status = sim.nvmlDeviceSetMigMode(dev, pynvml.NVML_DEVICE_MIG_ENABLE)
    assert status == pynvml.NVML_ERROR_IN_USE  # returned, not raised
    assert sim.nvmlDeviceGetMigMode(dev) == [0, 1]  # current != pending
    with pytest.raises(pynvml.NVMLError_NotSupported):  # MIG is not on yet
        sim.nvmlDeviceGetGpuInstanceProfileInfo(dev, P.NVML_GPU_INSTANCE_PROFILE_1_SLICE)
    with pytest.raises(pynvml.NVMLError_InUse):
        sim.reset(0)  # nvidia-smi -r refuses while a process holds the GPU
    sim.remove_process(100)
    sim.reset(0)
    assert sim.nvmlDeviceGetMigMode(dev) == [1, 1]


def test_rule2_holders_also_keep_it_pending() -> None:
    sim = make({"model": A100, "holders": ["nvidia-persistenced"]})
    dev = dev0(sim)
    assert sim.nvmlDeviceSetMigMode(dev, 1) == pynvml.NVML_ERROR_IN_USE
    sim.remove_holder(0, "nvidia-persistenced")
    sim.reset(0)
    assert sim.nvmlDeviceGetMigMode(dev) == [1, 1]


def test_rule2_reset_wipes_gpu_and_compute_instances(nvml: SimNvml) -> None:
    dev = dev0(nvml)
    gi = nvml.nvmlDeviceCreateGpuInstance(dev, pid_of(nvml, dev, P.NVML_GPU_INSTANCE_PROFILE_3_SLICE))
    ci = full_ci(nvml, gi)
    nvml.reset(0)
    assert nvml.nvmlDeviceGetMigMode(dev) == [1, 1]
    assert gpu_instances(nvml, dev, 9) == []
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nvml.nvmlGpuInstanceGetInfo(gi)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nvml.nvmlComputeInstanceGetInfo(ci)


def test_rule2_reboot_keeps_mode_wipes_instances_and_applies_pending() -> None:
    sim = make(
        {"model": A100, "mig": True, "instances": [{"profile": "3g.20gb"}]},
        {"model": A100, "processes": [{"pid": 7, "used_mib": 10}]},
    )
    d0, d1 = sim.nvmlDeviceGetHandleByIndex(0), sim.nvmlDeviceGetHandleByIndex(1)
    assert len(gpu_instances(sim, d0, 9)) == 1
    assert sim.nvmlDeviceSetMigMode(d1, 1) == pynvml.NVML_ERROR_IN_USE
    sim.reboot()
    assert sim.nvmlDeviceGetMigMode(d0) == [1, 1]
    assert gpu_instances(sim, d0, 9) == []
    assert sim.nvmlDeviceGetMigMode(d1) == [1, 1]
    assert sim.nvmlDeviceGetComputeRunningProcesses(d1) == []


def test_rule2_disabling_mig_with_instances_is_in_use(nvml: SimNvml) -> None:
    dev = dev0(nvml)
    gi = nvml.nvmlDeviceCreateGpuInstance(dev, 19)
    with pytest.raises(pynvml.NVMLError_InUse):
        nvml.nvmlDeviceSetMigMode(dev, pynvml.NVML_DEVICE_MIG_DISABLE)
    assert nvml.nvmlDeviceGetMigMode(dev) == [1, 1]
    nvml.nvmlGpuInstanceDestroy(gi)
    assert nvml.nvmlDeviceSetMigMode(dev, pynvml.NVML_DEVICE_MIG_DISABLE) == pynvml.NVML_SUCCESS


# --- §6.3 profile info: two namespaces ---------------------------------------------------------------


@pytest.mark.parametrize(
    "model_name", [A100, "NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3", "NVIDIA H100 NVL"]
)
def test_rule3_index_to_id_on_seven_slice_gpus(model_name: str) -> None:
    sim = make({"model": model_name, "mig": True})
    dev = dev0(sim)
    expected = {0x0: 19, 0x7: 20, 0x9: 15, 0x1: 14, 0x2: 9, 0x3: 5, 0x4: 0}
    assert {i: pid_of(sim, dev, i) for i in expected} == expected
    model = migtables.find_model(model_name)
    assert model is not None
    for prof in model.profiles:
        info = sim.nvmlDeviceGetGpuInstanceProfileInfo(dev, prof.index)
        assert isinstance(info, pynvml.c_nvmlGpuInstanceProfileInfo_v2_t)
        assert (info.id, info.sliceCount, info.instanceCount, info.memorySizeMB) == (
            prof.profile_id,
            prof.slices,
            prof.max_count,
            prof.memory_mib,
        )
        assert info.multiprocessorCount == prof.multiprocessors
        assert info.name == f"MIG {prof.name}"  # _PrintableStructure decodes char arrays
        by_id = sim.nvmlDeviceGetGpuInstanceProfileInfoById(dev, prof.profile_id)
        assert by_id.sliceCount == prof.slices


def test_rule3_a30_uses_other_ids() -> None:
    sim = make({"model": A30, "mig": True})
    dev = dev0(sim)
    assert pid_of(sim, dev, P.NVML_GPU_INSTANCE_PROFILE_1_SLICE) == 14
    assert pid_of(sim, dev, P.NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1) == 21
    assert pid_of(sim, dev, P.NVML_GPU_INSTANCE_PROFILE_2_SLICE) == 5
    assert pid_of(sim, dev, P.NVML_GPU_INSTANCE_PROFILE_2_SLICE_REV1) == 6
    assert pid_of(sim, dev, P.NVML_GPU_INSTANCE_PROFILE_4_SLICE) == 0
    with pytest.raises(pynvml.NVMLError_NotSupported):
        sim.nvmlDeviceGetGpuInstanceProfileInfo(dev, P.NVML_GPU_INSTANCE_PROFILE_7_SLICE)
    # A100's 3g ID (9) means nothing on an A30: the mig-parted #157 bug class.
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        sim.nvmlDeviceCreateGpuInstance(dev, 9)


def test_rule3_unsupported_and_invalid_indices(nvml: SimNvml) -> None:
    dev = dev0(nvml)
    for index in (0x5, 0x6, 0x8, 0xA, 0x11):  # 8/6-slice, A30's 2g+me, RTX PRO profiles
        with pytest.raises(pynvml.NVMLError_NotSupported):
            nvml.nvmlDeviceGetGpuInstanceProfileInfo(dev, index)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceGetGpuInstanceProfileInfo(dev, pynvml.NVML_GPU_INSTANCE_PROFILE_COUNT)
    # The documented forward-compatible loop: enumerate indices until INVALID_ARGUMENT.
    found = []
    index = 0
    while True:
        try:
            found.append(nvml.nvmlDeviceGetGpuInstanceProfileInfo(dev, index).id)
        except pynvml.NVMLError_NotSupported:
            pass
        except pynvml.NVMLError_InvalidArgument:
            break
        index += 1
    assert sorted(found) == [0, 5, 9, 14, 15, 19, 20]


def test_rule3_legacy_version_and_mig_disabled() -> None:
    sim = make({"model": A100, "mig": True}, {"model": A100})
    d0, d1 = sim.nvmlDeviceGetHandleByIndex(0), sim.nvmlDeviceGetHandleByIndex(1)
    legacy = sim.nvmlDeviceGetGpuInstanceProfileInfo(d0, 0, version=1)
    assert isinstance(legacy, pynvml.c_nvmlGpuInstanceProfileInfo_t) and legacy.id == 19
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        sim.nvmlDeviceGetGpuInstanceProfileInfo(d0, 0, version=3)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        sim.nvmlDeviceGetGpuInstanceProfileInfo(d1, 0)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        sim.nvmlDeviceGetGpuInstanceProfileInfoById(d1, 19)


# --- §6.4 placements --------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [A100_MODEL, A30_MODEL], ids=lambda m: m.key)
def test_rule4_placement_table_comes_from_migtables(model: migtables.MigModel) -> None:
    sim = make({"model": f"NVIDIA {model.names[0]}", "mig": True})
    dev = dev0(sim)
    for prof in model.profiles:
        assert placements(sim, dev, prof.profile_id) == [(s, prof.size) for s in prof.starts]


def test_rule4_placements_ignore_occupancy_and_mig_mode() -> None:
    sim = make({"model": A100, "mig": True, "instances": [{"profile": "7g.40gb"}]}, {"model": A100})
    for i in (0, 1):
        dev = sim.nvmlDeviceGetHandleByIndex(i)
        assert placements(sim, dev, 19) == [(s, 1) for s in range(7)]
        assert placements(sim, dev, 9) == [(0, 4), (4, 4)]
    with pytest.raises(pynvml.NVMLError_InvalidArgument):  # unknown profile ID
        placements(sim, sim.nvmlDeviceGetHandleByIndex(0), 21)


def test_rule4_ctypes_conventions(nvml: SimNvml) -> None:
    dev = dev0(nvml)
    cnt = ctypes.c_uint(8)
    arr = (nvml.c_nvmlGpuInstancePlacement_t * 8)()
    assert (
        nvml.nvmlDeviceGetGpuInstancePossiblePlacements(dev, 14, arr, ctypes.byref(cnt))
        == pynvml.NVML_SUCCESS
    )
    assert cnt.value == 3 and [(arr[i].start, arr[i].size) for i in range(3)] == [(0, 2), (2, 2), (4, 2)]
    nvml.nvmlDeviceGetGpuInstancePossiblePlacements(dev, 14, arr, ctypes.pointer(cnt))  # pointer is fine too
    with pytest.raises(SimUsageError, match="overrun"):
        small = (nvml.c_nvmlGpuInstancePlacement_t * 2)()
        nvml.nvmlDeviceGetGpuInstancePossiblePlacements(dev, 19, small, ctypes.byref(cnt))
    with pytest.raises(SimUsageError, match="byref"):
        nvml.nvmlDeviceGetGpuInstancePossiblePlacements(dev, 19, arr, cnt)  # c_uint by value
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceGetGpuInstancePossiblePlacements(dev, 19, arr, None)


# --- §6.5 create with placement ----------------------------------------------------------------------


def test_rule5_create_with_placement(nvml: SimNvml) -> None:
    dev = dev0(nvml)
    three = pid_of(nvml, dev, P.NVML_GPU_INSTANCE_PROFILE_3_SLICE)
    gi = create_at(nvml, dev, three, 4, 4)
    assert isinstance(gi, pynvml.c_nvmlGpuInstance_t)
    assert gi_where(nvml, gi)[1:] == (9, 4, 4)
    assert nvml.nvmlGpuInstanceGetInfo(gi).device  # the parent device handle
    # ctypes.pointer(placement) is as good as byref; a struct by value is undefined behaviour in C.
    p = nvml.c_nvmlGpuInstancePlacement_t(0, 1)
    gi1 = nvml.nvmlDeviceCreateGpuInstanceWithPlacement(dev, 19, ctypes.pointer(p))
    assert gi_where(nvml, gi1)[2:] == (0, 1)
    with pytest.raises(SimUsageError, match="byref"):
        nvml.nvmlDeviceCreateGpuInstanceWithPlacement(dev, 19, nvml.c_nvmlGpuInstancePlacement_t(1, 1))
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceCreateGpuInstanceWithPlacement(dev, 19, None)


@pytest.mark.parametrize(
    ("profile_id", "start", "size"), [(19, 7, 1), (9, 2, 4), (9, 4, 3), (14, 1, 2), (0, 0, 7)]
)
def test_rule5_placement_not_in_table_is_invalid_argument(
    nvml: SimNvml, profile_id: int, start: int, size: int
) -> None:
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        create_at(nvml, dev0(nvml), profile_id, start, size)


def test_rule5_overlap_is_insufficient_resources(nvml: SimNvml) -> None:
    dev = dev0(nvml)
    create_at(nvml, dev, 14, 2, 2)
    for pid, start, size in [(19, 2, 1), (19, 3, 1), (9, 0, 4), (5, 0, 4), (0, 0, 8), (15, 2, 2)]:
        with pytest.raises(pynvml.NVMLError_InsufficientResources):
            create_at(nvml, dev, pid, start, size)
    create_at(nvml, dev, 9, 4, 4)  # the other half is free


def test_rule5_media_engine_taken(nvml: SimNvml) -> None:
    dev = dev0(nvml)
    me = pid_of(nvml, dev, P.NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1)
    create_at(nvml, dev, me, 0, 1)
    with pytest.raises(pynvml.NVMLError_InsufficientResources):
        create_at(nvml, dev, me, 1, 1)
    # A30: both +me profiles want the single media-engine set.
    sim = make({"model": A30, "mig": True})
    d = dev0(sim)
    create_at(sim, d, pid_of(sim, d, P.NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1), 0, 1)
    with pytest.raises(pynvml.NVMLError_InsufficientResources):
        create_at(sim, d, pid_of(sim, d, P.NVML_GPU_INSTANCE_PROFILE_2_SLICE_REV1), 2, 2)


def test_rule5_compute_budget_and_instance_count() -> None:
    # On real tables memory always binds first; shrink the budgets to see the two other rules act.
    assert A100_MODEL is not None
    tight = msgspec.structs.replace(
        A100_MODEL,
        compute_slices=6,
        profiles=tuple(
            msgspec.structs.replace(p, max_count=2) if p.profile_id == 19 else p for p in A100_MODEL.profiles
        ),
    )
    sim = SimNvml([GpuSpec(model=tight, mig=True)])
    sim.nvmlInit()
    dev = dev0(sim)
    create_at(sim, dev, 5, 0, 4)  # 4g: 4 compute slices
    create_at(sim, dev, 14, 4, 2)  # 2g: 6 of 6
    with pytest.raises(pynvml.NVMLError_InsufficientResources):
        create_at(sim, dev, 19, 6, 1)  # memory slice 6 is free, compute is not
    sim2 = SimNvml([GpuSpec(model=tight, mig=True)])
    sim2.nvmlInit()
    d2 = dev0(sim2)
    create_at(sim2, d2, 19, 0, 1)
    create_at(sim2, d2, 19, 1, 1)
    with pytest.raises(pynvml.NVMLError_InsufficientResources):
        create_at(sim2, d2, 19, 2, 1)  # instanceCount 2 reached
    assert sim2.nvmlDeviceGetGpuInstanceRemainingCapacity(d2, 19) == 0


def test_rule5_mig_disabled_and_no_permission() -> None:
    sim = make({"model": A100})
    with pytest.raises(pynvml.NVMLError_NotSupported):
        create_at(sim, dev0(sim), 19, 0, 1)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        sim.nvmlDeviceGetGpuInstanceRemainingCapacity(dev0(sim), 19)
    sim = make({"model": A100, "mig": True}, root=False)
    dev = dev0(sim)
    with pytest.raises(pynvml.NVMLError_NoPermission):
        create_at(sim, dev, 19, 0, 1)
    with pytest.raises(pynvml.NVMLError_NoPermission):
        sim.nvmlDeviceCreateGpuInstance(dev, 19)
    assert sim.nvmlDeviceGetGpuInstanceRemainingCapacity(dev, 19) == 7  # reads still work


# --- §6.6 create without placement --------------------------------------------------------------------


def test_rule6_default_placement_order_of_1g(nvml: SimNvml) -> None:
    dev = dev0(nvml)
    starts = [gi_where(nvml, nvml.nvmlDeviceCreateGpuInstance(dev, 19))[2] for _ in range(7)]
    assert starts == [6, 4, 5, 0, 1, 2, 3]
    with pytest.raises(pynvml.NVMLError_InsufficientResources):
        nvml.nvmlDeviceCreateGpuInstance(dev, 19)


def test_rule6_documented_ordering_failure(nvml: SimNvml) -> None:
    dev = dev0(nvml)
    nvml.nvmlDeviceCreateGpuInstance(dev, 19)
    nvml.nvmlDeviceCreateGpuInstance(dev, 19)
    nvml.nvmlDeviceCreateGpuInstance(dev, 14)
    with pytest.raises(pynvml.NVMLError_InsufficientResources):  # MIG guide: -cgi 19,19,14,9 fails on the 3g
        nvml.nvmlDeviceCreateGpuInstance(dev, 9)


def test_rule6_documented_ordering_success_and_swizzle_ids() -> None:
    sim = make({"model": A100, "mig": True}, gi_ids="swizzle")
    dev = dev0(sim)
    made = [gi_where(sim, sim.nvmlDeviceCreateGpuInstance(dev, pid)) for pid in (9, 19, 14, 19)]
    # Observed on an A100 (reference/mig.md §2.4): GI 2@4:4, 7@0:1, 4@2:2, 8@1:1.
    assert [(i, s, z) for i, _, s, z in made] == [(2, 4, 4), (7, 0, 1), (4, 2, 2), (8, 1, 1)]
    sim2 = make({"model": A100, "mig": True}, gi_ids="swizzle")
    d2 = dev0(sim2)
    ids = [gi_where(sim2, sim2.nvmlDeviceCreateGpuInstance(d2, 19))[0] for _ in range(7)]
    assert ids == [13, 11, 12, 7, 8, 9, 10]


def test_rule6_lone_2g_goes_to_4_and_default_ids_are_small_sequential(nvml: SimNvml) -> None:
    dev = dev0(nvml)
    gi = nvml.nvmlDeviceCreateGpuInstance(dev, 14)
    assert gi_where(nvml, gi) == (1, 14, 4, 2)
    gi2 = nvml.nvmlDeviceCreateGpuInstance(dev, 14)
    assert gi_where(nvml, gi2)[0] == 2
    nvml.nvmlGpuInstanceDestroy(gi)
    assert gi_where(nvml, nvml.nvmlDeviceCreateGpuInstance(dev, 19))[0] == 1  # ids are reused


# --- §6.7 remaining capacity -----------------------------------------------------------------------------


def test_rule7_remaining_capacity(nvml: SimNvml) -> None:
    dev = dev0(nvml)
    cap = nvml.nvmlDeviceGetGpuInstanceRemainingCapacity
    assert [cap(dev, p) for p in (19, 20, 15, 14, 9, 5, 0)] == [7, 1, 4, 3, 2, 1, 1]
    gi = create_at(nvml, dev, 9, 0, 4)
    assert cap(dev, 19) == 3  # 3g@0 strands a compute slice: 4,5,6 only
    assert [cap(dev, p) for p in (14, 9, 5, 0)] == [1, 1, 0, 0]
    nvml.nvmlGpuInstanceDestroy(gi)
    create_at(nvml, dev, 9, 4, 4)
    assert cap(dev, 19) == 4
    assert cap(dev, 15) == 2


# --- §6.8 destroy, stale handles, unknown ids -------------------------------------------------------------


def test_rule8_destroy_rules(nvml: SimNvml) -> None:
    dev = dev0(nvml)
    gi = create_at(nvml, dev, 9, 4, 4)
    ci = full_ci(nvml, gi)
    with pytest.raises(pynvml.NVMLError_InUse):  # CIs alive
        nvml.nvmlGpuInstanceDestroy(gi)
    gi_id = gi_where(nvml, gi)[0]
    ci_id = nvml.nvmlComputeInstanceGetInfo(ci).id
    nvml.add_process(0, 4242, 1000, gi_id=gi_id, ci_id=ci_id)
    with pytest.raises(pynvml.NVMLError_InUse):  # a process runs in it
        nvml.nvmlComputeInstanceDestroy(ci)
    nvml.remove_process(4242)
    assert nvml.nvmlComputeInstanceDestroy(ci) == pynvml.NVML_SUCCESS
    assert nvml.nvmlGpuInstanceDestroy(gi) == pynvml.NVML_SUCCESS
    # Stale handles: every use is INVALID_ARGUMENT.
    for call in (
        lambda: nvml.nvmlGpuInstanceDestroy(gi),
        lambda: nvml.nvmlGpuInstanceGetInfo(gi),
        lambda: nvml.nvmlGpuInstanceCreateComputeInstance(gi, 2),
        lambda: nvml.nvmlComputeInstanceDestroy(ci),
        lambda: nvml.nvmlComputeInstanceGetInfo(ci),
    ):
        with pytest.raises(pynvml.NVMLError_InvalidArgument):
            call()
    with pytest.raises(pynvml.NVMLError_NotFound):
        nvml.nvmlDeviceGetGpuInstanceById(dev, gi_id)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):  # a NULL handle
        nvml.nvmlGpuInstanceGetInfo(pynvml.c_nvmlGpuInstance_t())
    with pytest.raises(pynvml.NVMLError_InvalidArgument):  # a device handle where a GI is expected
        nvml.nvmlGpuInstanceGetInfo(dev)


def test_rule8_lookup_by_id_and_ci_ids_restart_per_gi(nvml: SimNvml) -> None:
    dev = dev0(nvml)
    gi_a = create_at(nvml, dev, 14, 0, 2)
    gi_b = create_at(nvml, dev, 9, 4, 4)
    one_c = nvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(
        gi_b, P.NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE, 0
    )
    cis_b = [nvml.nvmlGpuInstanceCreateComputeInstance(gi_b, one_c.id) for _ in range(3)]
    cis_a = [nvml.nvmlGpuInstanceCreateComputeInstance(gi_a, one_c.id) for _ in range(2)]
    assert [nvml.nvmlComputeInstanceGetInfo(c).id for c in cis_b] == [0, 1, 2]
    assert [nvml.nvmlComputeInstanceGetInfo(c).id for c in cis_a] == [0, 1]
    with pytest.raises(pynvml.NVMLError_InsufficientResources):
        nvml.nvmlGpuInstanceCreateComputeInstance(gi_a, one_c.id)
    b_id = gi_where(nvml, gi_b)[0]
    again = nvml.nvmlDeviceGetGpuInstanceById(dev, b_id)
    assert gi_where(nvml, again) == gi_where(nvml, gi_b)
    ci = nvml.nvmlGpuInstanceGetComputeInstanceById(again, 2)
    info = nvml.nvmlComputeInstanceGetInfo(ci)
    assert (info.id, info.profileId, info.placement.start, info.placement.size) == (2, 0, 2, 1)
    assert gi_where(nvml, info.gpuInstance)[0] == b_id
    with pytest.raises(pynvml.NVMLError_NotFound):
        nvml.nvmlGpuInstanceGetComputeInstanceById(again, 5)
    with pytest.raises(pynvml.NVMLError_NotFound):
        nvml.nvmlDeviceGetGpuInstanceById(dev, 12)
    arr = (nvml.c_nvmlComputeInstance_t * 3)()
    cnt = ctypes.c_uint(0)
    nvml.nvmlGpuInstanceGetComputeInstances(gi_b, one_c.id, arr, ctypes.byref(cnt))
    assert cnt.value == 3


def test_rule8_compute_instance_profiles_per_gi(nvml: SimNvml) -> None:
    dev = dev0(nvml)
    allowed = {}
    for pid, start, size in [(19, 0, 1), (14, 2, 2), (9, 4, 4)]:
        gi = create_at(nvml, dev, pid, start, size)
        got = []
        for ci_index in range(pynvml.NVML_COMPUTE_INSTANCE_PROFILE_COUNT):
            try:
                info = nvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, ci_index, 0)
            except pynvml.NVMLError_NotSupported:
                continue
            got.append((info.sliceCount, info.instanceCount))
            assert nvml.nvmlGpuInstanceGetComputeInstanceRemainingCapacity(gi, info.id) == info.instanceCount
        allowed[pid] = got
    assert allowed == {19: [(1, 1)], 14: [(1, 2), (2, 1)], 9: [(1, 3), (2, 1), (3, 1)]}
    sim = make({"model": A100, "mig": True, "instances": [{"profile": "7g.40gb", "compute": False}]})
    gi7 = sim.nvmlDeviceGetGpuInstanceById(dev0(sim), 1)
    infos = []
    for ci_index in range(pynvml.NVML_COMPUTE_INSTANCE_PROFILE_COUNT):
        with contextlib.suppress(pynvml.NVMLError_NotSupported):
            infos.append(sim.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi7, ci_index, 0))
    assert [(i.sliceCount, i.instanceCount) for i in infos] == [(1, 7), (2, 3), (3, 2), (4, 1), (7, 1)]
    assert infos[0].name == "MIG 1c.7g.40gb" and infos[-1].name == "MIG 7g.40gb"
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        sim.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi7, pynvml.NVML_COMPUTE_INSTANCE_PROFILE_COUNT, 0)
    # 4c then 3c do not both fit (3c sits at compute slice 0 or 3).
    sim.nvmlGpuInstanceCreateComputeInstance(gi7, P.NVML_COMPUTE_INSTANCE_PROFILE_4_SLICE)
    assert (
        sim.nvmlGpuInstanceGetComputeInstanceRemainingCapacity(gi7, P.NVML_COMPUTE_INSTANCE_PROFILE_3_SLICE)
        == 0
    )
    assert (
        sim.nvmlGpuInstanceGetComputeInstanceRemainingCapacity(gi7, P.NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE)
        == 3
    )
    cnt = ctypes.c_uint(0)
    arr = (pynvml.c_nvmlComputeInstancePlacement_t * 7)()
    sim.nvmlGpuInstanceGetComputeInstancePossiblePlacements(gi7, 1, arr, ctypes.byref(cnt))
    assert [(arr[i].start, arr[i].size) for i in range(cnt.value)] == [(0, 2), (2, 2), (4, 2)]
    p = pynvml.c_nvmlComputeInstancePlacement_t(6, 1)
    ci = sim.nvmlGpuInstanceCreateComputeInstanceWithPlacement(gi7, 0, ctypes.byref(p))
    assert sim.nvmlComputeInstanceGetInfo(ci).placement.start == 6
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        p2 = pynvml.c_nvmlComputeInstancePlacement_t(1, 2)
        sim.nvmlGpuInstanceCreateComputeInstanceWithPlacement(gi7, 1, ctypes.byref(p2))


# --- §6.9 MIG devices ------------------------------------------------------------------------------------


def test_rule9_mig_device_handles(nvml: SimNvml) -> None:
    dev = dev0(nvml)
    gpu_uuid = nvml.nvmlDeviceGetUUID(dev)
    assert nvml.nvmlDeviceGetMaxMigDeviceCount(dev) == 7
    gis = [create_at(nvml, dev, 19, s, 1) for s in (0, 1, 2)]
    cis = [full_ci(nvml, gi) for gi in gis]
    handles = [nvml.nvmlDeviceGetMigDeviceHandleByIndex(dev, i) for i in range(3)]
    uuids = [nvml.nvmlDeviceGetUUID(h) for h in handles]
    assert all(u.startswith("MIG-") and len(u) == 40 for u in uuids) and len(set(uuids)) == 3
    # Free index 1: a hole.
    nvml.nvmlComputeInstanceDestroy(cis[1])
    with pytest.raises(pynvml.NVMLError_NotFound):
        nvml.nvmlDeviceGetMigDeviceHandleByIndex(dev, 1)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):  # stale MIG device handle
        nvml.nvmlDeviceGetUUID(handles[1])
    for i in range(3, 7):
        with pytest.raises(pynvml.NVMLError_NotFound):
            nvml.nvmlDeviceGetMigDeviceHandleByIndex(dev, i)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceGetMigDeviceHandleByIndex(dev, 7)
    # Re-creating the "same" instance gives a new UUID.
    full_ci(nvml, gis[1])
    again = nvml.nvmlDeviceGetMigDeviceHandleByIndex(dev, 1)
    assert nvml.nvmlDeviceGetUUID(again) not in uuids
    mig = handles[2]
    is_mig = nvml.nvmlDeviceIsMigDeviceHandle(mig)
    assert isinstance(is_mig, ctypes.c_uint) and is_mig.value == 1  # pynvml returns the c_uint itself
    assert nvml.nvmlDeviceIsMigDeviceHandle(dev).value == 0
    gi_id = gi_where(nvml, gis[2])[0]
    assert nvml.nvmlDeviceGetGpuInstanceId(mig) == gi_id
    assert nvml.nvmlDeviceGetComputeInstanceId(mig) == 0
    with pytest.raises(pynvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetGpuInstanceId(dev)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetComputeInstanceId(dev)
    parent = nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig)
    assert nvml.nvmlDeviceGetUUID(parent) == gpu_uuid
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(dev)
    assert nvml.nvmlDeviceGetMemoryInfo(mig).total == 4864 * 2**20
    assert nvml.nvmlDeviceGetName(mig) == f"{A100} MIG 1g.5gb"
    # UUID lookups: canonical MIG UUID and the legacy R450 form.
    by_uuid = nvml.nvmlDeviceGetHandleByUUID(uuids[2])
    assert nvml.nvmlDeviceGetGpuInstanceId(by_uuid) == gi_id
    legacy = nvml.nvmlDeviceGetHandleByUUID(f"MIG-{gpu_uuid}/{gi_id}/0")
    assert nvml.nvmlDeviceGetUUID(legacy) == uuids[2]
    with pytest.raises(pynvml.NVMLError_NotFound):
        nvml.nvmlDeviceGetHandleByUUID(f"MIG-{gpu_uuid}/{gi_id}/3")
    with pytest.raises(pynvml.NVMLError_InvalidArgument):  # whole-GPU calls reject MIG handles
        nvml.nvmlDeviceGetMigMode(mig)


# --- §6.10 processes --------------------------------------------------------------------------------------


def test_rule10_processes(nvml: SimNvml) -> None:
    dev = dev0(nvml)
    gi_a, gi_b = create_at(nvml, dev, 9, 0, 4), create_at(nvml, dev, 9, 4, 4)
    full_ci(nvml, gi_a)
    full_ci(nvml, gi_b)
    a, b = gi_where(nvml, gi_a)[0], gi_where(nvml, gi_b)[0]
    nvml.add_process(0, 11, 1000, gi_id=a)
    nvml.add_process(0, 12, 2000, gi_id=b, ci_id=0)
    procs = nvml.nvmlDeviceGetComputeRunningProcesses(dev)
    assert [(p.pid, p.usedGpuMemory, p.gpuInstanceId, p.computeInstanceId) for p in procs] == [
        (11, 1000 * 2**20, a, 0),
        (12, 2000 * 2**20, b, 0),
    ]
    mig_b = next(
        h
        for h in (nvml.nvmlDeviceGetMigDeviceHandleByIndex(dev, i) for i in range(2))
        if nvml.nvmlDeviceGetGpuInstanceId(h) == b
    )
    assert [p.pid for p in nvml.nvmlDeviceGetComputeRunningProcesses(mig_b)] == [12]
    assert nvml.nvmlDeviceGetMemoryInfo(mig_b).used == 2000 * 2**20
    assert nvml.nvmlDeviceGetGraphicsRunningProcesses(dev) == []
    sim = make({"model": "NVIDIA L4", "memory_mib": 23034, "processes": [{"pid": 5, "used_mib": 300}]})
    (p,) = sim.nvmlDeviceGetComputeRunningProcesses(dev0(sim))
    assert (p.pid, p.gpuInstanceId, p.computeInstanceId) == (5, 0xFFFFFFFF, 0xFFFFFFFF)


# --- §6.11 faults ----------------------------------------------------------------------------------------


def test_rule11_transient_in_use_on_destroy(nvml: SimNvml) -> None:
    dev = dev0(nvml)
    gi = create_at(nvml, dev, 19, 0, 1)
    ci = full_ci(nvml, gi)
    fault = nvml.inject(DestroyInUse(count=2))
    with pytest.raises(pynvml.NVMLError_InUse):
        nvml.nvmlComputeInstanceDestroy(ci)
    with pytest.raises(pynvml.NVMLError_InUse):
        nvml.nvmlComputeInstanceDestroy(ci)
    assert isinstance(fault, CallError) and fault.count == 0
    nvml.nvmlComputeInstanceDestroy(ci)  # a retry succeeds
    nvml.nvmlGpuInstanceDestroy(gi)


def test_rule11_stuck_pending() -> None:
    sim = make({"model": A100})
    dev = dev0(sim)
    sim.inject(StuckPending())
    assert sim.nvmlDeviceSetMigMode(dev, 1) == pynvml.NVML_ERROR_IN_USE  # even though idle
    sim.reset(0)
    assert sim.nvmlDeviceGetMigMode(dev) == [0, 1]
    sim.clear_faults()
    sim.reset(0)
    assert sim.nvmlDeviceGetMigMode(dev) == [1, 1]


def test_rule11_permission_denied(nvml: SimNvml) -> None:
    dev = dev0(nvml)
    gi = create_at(nvml, dev, 19, 0, 1)
    nvml.inject(NoPermission())
    for call in (
        lambda: create_at(nvml, dev, 19, 1, 1),
        lambda: nvml.nvmlDeviceCreateGpuInstance(dev, 19),
        lambda: nvml.nvmlGpuInstanceDestroy(gi),
        lambda: nvml.nvmlGpuInstanceCreateComputeInstance(gi, 0),
        lambda: nvml.nvmlDeviceSetMigMode(dev, 0),
    ):
        with pytest.raises(pynvml.NVMLError_NoPermission):
            call()
    assert len(gpu_instances(nvml, dev, 19)) == 1  # reads still work


def test_rule11_error_on_a_named_call_for_one_gpu() -> None:
    sim = make({"model": A100, "count": 2, "mig": True})
    d0, d1 = sim.nvmlDeviceGetHandleByIndex(0), sim.nvmlDeviceGetHandleByIndex(1)
    sim.inject(
        {
            "kind": "call_error",
            "calls": "nvmlDeviceGetMemoryInfo",
            "gpu": 1,
            "error": "GPU_IS_LOST",
            "count": 2,
        }
    )
    sim.nvmlDeviceGetMemoryInfo(d0)
    for _ in range(2):
        with pytest.raises(pynvml.NVMLError_GpuIsLost):
            sim.nvmlDeviceGetMemoryInfo(d1)
    sim.nvmlDeviceGetMemoryInfo(d1)
    sim.inject(CallError(calls="*", error=pynvml.NVML_ERROR_UNKNOWN, gpu=0, count=None))
    for _ in range(3):
        with pytest.raises(pynvml.NVMLError_Unknown):
            sim.nvmlDeviceGetUUID(d0)
    sim.nvmlDeviceGetUUID(d1)
    sim.inject(CallError(calls="nvmlComputeInstanceGetInfo_v2", error="IN_USE"))  # alias names match too
    gi = sim.nvmlDeviceCreateGpuInstance(d1, 19)
    ci = full_ci(sim, gi)
    with pytest.raises(pynvml.NVMLError_InUse):
        sim.nvmlComputeInstanceGetInfo(ci)
    sim.inject(CallError(calls="nvmlInit", error="DRIVER_NOT_LOADED"))
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        sim.nvmlInit()


def test_rule11_driver_hides_a_profile() -> None:
    sim = make({"model": A100, "count": 2, "mig": True, "hide_profiles": ["1g.10gb"]})
    d0, d1 = sim.nvmlDeviceGetHandleByIndex(0), sim.nvmlDeviceGetHandleByIndex(1)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        sim.nvmlDeviceGetGpuInstanceProfileInfo(d0, P.NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV2)
    sim.inject(HideProfile(profile=5, gpu=1))  # 4g.20gb by profile ID, on GPU 1 only
    with pytest.raises(pynvml.NVMLError_NotSupported):
        sim.nvmlDeviceGetGpuInstanceProfileInfo(d1, P.NVML_GPU_INSTANCE_PROFILE_4_SLICE)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        create_at(sim, d1, 5, 0, 4)
    assert pid_of(sim, d0, P.NVML_GPU_INSTANCE_PROFILE_4_SLICE) == 5


# --- YAML -------------------------------------------------------------------------------------------------


def test_yaml_text_file_and_load(tmp_path: Any) -> None:
    text = """
driver_version: "550.90.07"
seed: 3
gpus:
  - model: NVIDIA A100-PCIE-40GB
    count: 2
    mig: true
    uuid_prefix: node1-
    instances: [{profile: 3g.20gb, start: 4}]
    processes: [{pid: 9, used_mib: 100, gpu: 1, gi_id: 1, ci_id: 0}]
  - model: Tesla T4
    memory_mib: 15360
    uuids: [GPU-t4]
faults:
  - {kind: destroy_in_use, count: 1}
"""
    path = tmp_path / "node.yaml"
    path.write_text(text)
    for sim in (SimNvml.from_yaml(text), SimNvml.from_yaml(str(path)), load(f"sim:{path}"), load(str(path))):
        snap = sim.snapshot()
        assert [g["uuid"] for g in snap["gpus"]] == ["GPU-node1-0", "GPU-node1-1", "GPU-t4"]
        assert snap["gpus"][0]["layout"] == [("3g.20gb", 4)]
        assert snap["gpus"][1]["processes"] == [{"pid": 9, "used_mib": 100, "gi_id": 1, "ci_id": 0}]
        assert snap["gpus"][2]["mig_capable"] is False
        gi = snap["gpus"][0]["gpu_instances"][0]
        assert (gi["id"], gi["profile_id"], gi["start"], gi["size"]) == (1, 9, 4, 4)
        assert gi["compute_instances"][0]["name"] == "3g.20gb"
    with pytest.raises(FileNotFoundError):
        load("sim:/nonexistent.yaml")


def test_yaml_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown GPU model 'NVIDIA Z9'.*A100-PCIE-40GB"):
        SimNvml.from_dict({"gpus": [{"model": "NVIDIA Z9"}]})
    with pytest.raises(ValueError, match="not MIG-capable"):
        SimNvml.from_dict({"gpus": [{"model": "Tesla T4", "memory_mib": 15360, "mig": True}]})
    with pytest.raises(ValueError, match="unknown keys"):
        SimNvml.from_dict({"gpus": [{"model": A100, "migg": True}]})
    with pytest.raises(ValueError, match="unknown fault kind"):
        SimNvml.from_dict({"gpus": [], "faults": [{"kind": "meteor"}]})
    with pytest.raises(ValueError, match="mapping"):
        SimNvml.from_yaml("no-such-file.yaml")


# --- faithfulness: the layout lattice, driven through the simulator -----------------------------------------


def explore(nvml: SimNvml, dev: Any, profile_ids: list[int]) -> tuple[int, int]:
    """Non-empty layouts reachable by creating/destroying GIs with explicit placements; (layouts, maximal)."""
    table = [(pid, start, size) for pid in profile_ids for start, size in placements(nvml, dev, pid)]
    seen: set[frozenset[tuple[int, int]]] = set()
    maximal: set[frozenset[tuple[int, int]]] = set()

    def visit() -> None:
        key = layout_via_api(nvml, dev, profile_ids)
        if key in seen:
            return
        seen.add(key)
        grew = False
        for pid, start, size in table:
            try:
                gi = create_at(nvml, dev, pid, start, size)
            except pynvml.NVMLError_InsufficientResources:
                continue
            grew = True
            visit()
            nvml.nvmlGpuInstanceDestroy(gi)
        if not grew:
            maximal.add(key)

    visit()
    return len(seen) - 1, len(maximal)  # the empty GPU is not a layout


def test_a100_has_exactly_19_maximal_layouts(nvml: SimNvml) -> None:
    layouts, maximal = explore(nvml, dev0(nvml), classic_ids(A100_MODEL))
    assert (layouts, maximal) == (297, 19)  # reference/mig.md §1.5, NVIDIA's "19 configurations"


def test_a100_with_double_memory_1g_has_78_maximal_layouts(nvml: SimNvml) -> None:
    assert explore(nvml, dev0(nvml), [*classic_ids(A100_MODEL), 15]) == (722, 78)


def test_a30_has_5_maximal_layouts() -> None:
    sim = make({"model": A30, "mig": True})
    assert explore(sim, dev0(sim), classic_ids(A30_MODEL))[1] == 5


# --- property: random creates/destroys keep the layout valid and capacity honest ----------------------------


def max_creatable(nvml: SimNvml, dev: Any, profile_id: int, table: list[tuple[int, int]]) -> int:
    """The most extra `profile_id` GIs the simulator accepts at once (searched by create/destroy)."""
    best = 0

    def dfs(first: int, made: int) -> None:
        nonlocal best
        best = max(best, made)
        for k in range(first, len(table)):
            try:
                gi = create_at(nvml, dev, profile_id, *table[k])
            except pynvml.NVMLError_InsufficientResources:
                continue
            dfs(k + 1, made + 1)
            nvml.nvmlGpuInstanceDestroy(gi)

    dfs(0, 0)
    return best


ALL_A100_IDS = [p.profile_id for p in A100_MODEL.profiles]
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("place"), st.sampled_from(ALL_A100_IDS), st.integers(0, 6)),
        st.tuples(st.just("auto"), st.sampled_from(ALL_A100_IDS), st.just(0)),
        st.tuples(st.just("ci"), st.integers(0, 7), st.just(0)),
        st.tuples(st.just("destroy"), st.integers(0, 7), st.just(0)),
    ),
    max_size=14,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
def test_property_random_operations_keep_layout_valid(ops: list[tuple[str, int, int]]) -> None:
    sim = make({"model": A100, "mig": True})
    dev = dev0(sim)
    tables = {pid: placements(sim, dev, pid) for pid in ALL_A100_IDS}
    gis: list[Any] = []
    for op, a, b in ops:
        try:
            if op == "place":
                gis.append(create_at(sim, dev, a, *tables[a][b % len(tables[a])]))
            elif op == "auto":
                gis.append(sim.nvmlDeviceCreateGpuInstance(dev, a))
            elif op == "ci" and gis:
                full_ci(sim, gis[a % len(gis)])
            elif op == "destroy" and gis:
                destroy_gi(sim, gis.pop(a % len(gis)))
        except pynvml.NVMLError_InsufficientResources:
            pass
        layout = sim.snapshot()["gpus"][0]["layout"]
        assert migtables.layout_problem(A100_MODEL, layout) is None, layout
        assert len(layout) == len(gis)
    for pid in ALL_A100_IDS:
        remaining = sim.nvmlDeviceGetGpuInstanceRemainingCapacity(dev, pid)
        assert remaining == max_creatable(sim, dev, pid, tables[pid]), (
            pid,
            sim.snapshot()["gpus"][0]["layout"],
        )
        # Creatable with the driver's own choice iff capacity is left (it tries every allowed start).
        try:
            sim.nvmlGpuInstanceDestroy(sim.nvmlDeviceCreateGpuInstance(dev, pid))
            assert remaining > 0
        except pynvml.NVMLError_InsufficientResources:
            assert remaining == 0


# --- thread safety ------------------------------------------------------------------------------------------


def test_concurrent_creates_never_break_the_layout(nvml: SimNvml) -> None:
    dev = dev0(nvml)
    barrier = threading.Barrier(8)

    def worker(seed: int) -> int:
        barrier.wait()
        made = 0
        for start in [(seed + k) % 7 for k in range(7)]:
            try:
                create_at(nvml, dev, 19, start, 1)
                made += 1
            except pynvml.NVMLError_InsufficientResources:
                pass
        return made

    with ThreadPoolExecutor(8) as pool:
        total = sum(pool.map(worker, range(8)))
    assert total == 7
    layout = nvml.snapshot()["gpus"][0]["layout"]
    assert sorted(s for _, s in layout) == list(range(7))
