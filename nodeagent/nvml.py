"""Every NVML call the agent makes, over a pynvml-like module: the real `pynvml`, or the simulated
one from vgpupool_testing.simnvml (same functions, same ctypes conventions, same errors).

NVML calls block, so the async methods run them on one worker thread: it keeps the event loop
free and serialises MIG changes on the GPU."""

from __future__ import annotations

import asyncio
import ctypes
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import msgspec

log = logging.getLogger(__name__)
T = TypeVar("T")

MIG_ENABLE = 1


class NvmlProfile(msgspec.Struct, frozen=True):
    index: int  # NVML profile index constant
    id: int  # NVML profile ID
    name: str
    slices: int
    memory_mib: int
    instance_count: int
    placements: tuple[tuple[int, int], ...]


class NvmlInstance(msgspec.Struct, frozen=True):
    gi_id: int
    profile_id: int
    start: int
    size: int
    ci_ids: tuple[int, ...]
    mig_uuid: str  # "" when the GI has no compute instance
    processes: int


class NvmlGpu(msgspec.Struct, frozen=True):
    index: int
    uuid: str
    name: str
    memory_mib: int
    mig_capable: bool
    mig_current: bool
    mig_pending: bool


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class Nvml:
    def __init__(self, nv: Any):
        self.nv = nv
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="nvml")
        self._profiles: dict[int, list[NvmlProfile]] = {}

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=False)

    def is_error(self, exc: BaseException, code_name: str) -> bool:
        return isinstance(exc, self.nv.NVMLError) and getattr(exc, "value", None) == getattr(self.nv, code_name)

    # --- the calls (run these through `run`) ----------------------------------------------------

    def init(self) -> str:
        self.nv.nvmlInit()
        try:
            return _text(self.nv.nvmlSystemGetDriverVersion())
        except self.nv.NVMLError:
            return "unknown"

    def shutdown(self) -> None:
        self.nv.nvmlShutdown()

    def handle(self, index: int) -> Any:
        return self.nv.nvmlDeviceGetHandleByIndex(index)

    def gpus(self) -> list[NvmlGpu]:
        out = []
        for i in range(self.nv.nvmlDeviceGetCount()):
            h = self.handle(i)
            mem = self.nv.nvmlDeviceGetMemoryInfo(h)
            capable, current, pending = True, False, False
            try:
                cur, pend = self.nv.nvmlDeviceGetMigMode(h)
                current, pending = cur == MIG_ENABLE, pend != cur
            except self.nv.NVMLError as exc:
                if not self.is_error(exc, "NVML_ERROR_NOT_SUPPORTED"):
                    raise
                capable = False
            out.append(
                NvmlGpu(
                    i,
                    _text(self.nv.nvmlDeviceGetUUID(h)),
                    _text(self.nv.nvmlDeviceGetName(h)),
                    int(mem.total) // (1024 * 1024),
                    capable,
                    current,
                    pending,
                )
            )
        return out

    def health_probe(self, index: int) -> None:
        """Raises when the GPU does not answer (the agent then marks it unhealthy)."""
        h = self.handle(index)
        self.nv.nvmlDeviceGetMemoryInfo(h)
        self.nv.nvmlDeviceGetUUID(h)

    def profiles(self, index: int) -> list[NvmlProfile]:
        """Every GPU-instance profile the driver offers on this GPU (needs MIG mode on)."""
        h = self.handle(index)
        out = []
        for pidx in range(int(getattr(self.nv, "NVML_GPU_INSTANCE_PROFILE_COUNT", 0x12))):
            try:
                info = self.nv.nvmlDeviceGetGpuInstanceProfileInfo(h, pidx)
            except self.nv.NVMLError as exc:
                if self.is_error(exc, "NVML_ERROR_INVALID_ARGUMENT"):
                    break
                continue  # NOT_SUPPORTED: no such profile on this GPU
            n = int(info.instanceCount) or 1
            arr = (self.nv.c_nvmlGpuInstancePlacement_t * max(n, 8))()
            cnt = ctypes.c_uint(max(n, 8))
            self.nv.nvmlDeviceGetGpuInstancePossiblePlacements(h, info.id, arr, ctypes.byref(cnt))
            placements = tuple((int(arr[k].start), int(arr[k].size)) for k in range(cnt.value))
            out.append(
                NvmlProfile(
                    pidx,
                    int(info.id),
                    _text(info.name).removeprefix("MIG "),
                    int(info.sliceCount),
                    int(info.memorySizeMB),
                    int(info.instanceCount),
                    placements,
                )
            )
        self._profiles[index] = out
        return out

    def _known_profiles(self, index: int) -> list[NvmlProfile]:
        return self._profiles.get(index) or self.profiles(index)

    def instances(self, index: int) -> list[NvmlInstance]:
        """Every GPU instance on the GPU with its placement, compute instances, MIG UUID, processes."""
        h = self.handle(index)
        per_gi: dict[int, int] = {}
        for p in self.nv.nvmlDeviceGetComputeRunningProcesses(h) or []:
            gi = int(getattr(p, "gpuInstanceId", 0xFFFFFFFF))
            per_gi[gi] = per_gi.get(gi, 0) + 1
        uuids = self._mig_uuids(h)
        out = []
        for prof in self._known_profiles(index):
            arr = (self.nv.c_nvmlGpuInstance_t * max(prof.instance_count, 1))()
            cnt = ctypes.c_uint(0)
            self.nv.nvmlDeviceGetGpuInstances(h, prof.id, arr, ctypes.byref(cnt))
            for k in range(cnt.value):
                gi = arr[k]
                info = self.nv.nvmlGpuInstanceGetInfo(gi)
                ci_ids = self._ci_ids(gi)
                gid = int(info.id)
                out.append(
                    NvmlInstance(
                        gid,
                        int(info.profileId),
                        int(info.placement.start),
                        int(info.placement.size),
                        ci_ids,
                        uuids.get(gid, ""),
                        per_gi.get(gid, 0),
                    )
                )
        return sorted(out, key=lambda i: i.start)

    def _ci_ids(self, gi: Any) -> tuple[int, ...]:
        ids: list[int] = []
        for cidx in range(int(getattr(self.nv, "NVML_COMPUTE_INSTANCE_PROFILE_COUNT", 9))):
            try:
                info = self.nv.nvmlGpuInstanceGetComputeInstanceProfileInfo(
                    gi, cidx, self.nv.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED
                )
            except self.nv.NVMLError:
                continue
            arr = (self.nv.c_nvmlComputeInstance_t * max(int(info.instanceCount), 1))()
            cnt = ctypes.c_uint(0)
            try:
                self.nv.nvmlGpuInstanceGetComputeInstances(gi, info.id, arr, ctypes.byref(cnt))
            except self.nv.NVMLError:
                continue
            for k in range(cnt.value):
                ids.append(int(self.nv.nvmlComputeInstanceGetInfo(arr[k]).id))
        return tuple(sorted(set(ids)))

    def _mig_uuids(self, h: Any) -> dict[int, str]:
        """GI id -> MIG device UUID (MIG device indices are sparse: NOT_FOUND marks holes)."""
        out: dict[int, str] = {}
        for i in range(int(self.nv.nvmlDeviceGetMaxMigDeviceCount(h))):
            try:
                mh = self.nv.nvmlDeviceGetMigDeviceHandleByIndex(h, i)
            except self.nv.NVMLError as exc:
                if self.is_error(exc, "NVML_ERROR_NOT_FOUND"):
                    continue
                raise
            out[int(self.nv.nvmlDeviceGetGpuInstanceId(mh))] = _text(self.nv.nvmlDeviceGetUUID(mh))
        return out

    def create_gpu_instance(self, index: int, profile_id: int, start: int, size: int) -> int:
        """Create a GI at exactly this placement; returns its id."""
        h = self.handle(index)
        p = self.nv.c_nvmlGpuInstancePlacement_t()
        p.start, p.size = start, size
        gi = self.nv.nvmlDeviceCreateGpuInstanceWithPlacement(h, profile_id, ctypes.byref(p))
        return int(self.nv.nvmlGpuInstanceGetInfo(gi).id)

    def create_compute_instance(self, index: int, gi_id: int, slices: int) -> int:
        """A full-size CI in the GI (the plain profile, never the REV1/NVL variants)."""
        from vcplugin.core.migtables import CI_PROFILE_FOR_SLICES

        gi = self.nv.nvmlDeviceGetGpuInstanceById(self.handle(index), gi_id)
        info = self.nv.nvmlGpuInstanceGetComputeInstanceProfileInfo(
            gi, CI_PROFILE_FOR_SLICES[slices], self.nv.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED
        )
        ci = self.nv.nvmlGpuInstanceCreateComputeInstance(gi, info.id)
        return int(self.nv.nvmlComputeInstanceGetInfo(ci).id)

    def mig_uuid(self, index: int, gi_id: int) -> str:
        return self._mig_uuids(self.handle(index)).get(gi_id, "")

    def destroy(self, index: int, gi_id: int) -> None:
        """Destroy the GI's compute instances, then the GI. NOT_FOUND means already gone;
        IN_USE (processes) propagates: the caller retries later."""
        h = self.handle(index)
        try:
            gi = self.nv.nvmlDeviceGetGpuInstanceById(h, gi_id)
        except self.nv.NVMLError as exc:
            if self.is_error(exc, "NVML_ERROR_NOT_FOUND"):
                return
            raise
        for ci_id in self._ci_ids(gi):
            try:
                ci = self.nv.nvmlGpuInstanceGetComputeInstanceById(gi, ci_id)
            except self.nv.NVMLError as exc:
                if self.is_error(exc, "NVML_ERROR_NOT_FOUND"):
                    continue
                raise
            self.nv.nvmlComputeInstanceDestroy(ci)
        self.nv.nvmlGpuInstanceDestroy(gi)

    def enable_mig(self, index: int) -> tuple[bool, bool]:
        """Ask for MIG mode; returns (current, pending). Never resets the GPU: a busy GPU stays
        pending until its processes are gone and an operator resets or reboots it."""
        h = self.handle(index)
        self.nv.nvmlDeviceSetMigMode(h, MIG_ENABLE)
        cur, pend = self.nv.nvmlDeviceGetMigMode(h)
        return cur == MIG_ENABLE, pend != cur

    def gpu_processes(self, index: int) -> int:
        return len(self.nv.nvmlDeviceGetComputeRunningProcesses(self.handle(index)) or [])


def load_nvml(spec: str | None) -> Any:
    """`sim:FILE` loads the simulated NVML; anything else (or None) the real library."""
    if spec and spec.startswith("sim:"):
        from vgpupool_testing import simnvml

        return simnvml.load(spec)
    import pynvml

    return pynvml
