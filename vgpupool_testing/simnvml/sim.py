"""SimNvml: the MIG part of pynvml, simulated, as an object with the same call surface.

Agent code written against `nvml` (the real `pynvml` module or a SimNvml) runs unchanged: same function
names, argument order, return types, ctypes conventions and `pynvml.NVMLError_*` exceptions. MIG facts come
from vcplugin.core.migtables; behaviour follows the checklist of reference/mig.md §6.

Handles are real ctypes pointers (c_nvmlDevice_t, c_nvmlGpuInstance_t, c_nvmlComputeInstance_t) whose
address identifies a simulated object, so they can be stored into ctypes arrays exactly as NVML fills them.
Every address is backed by a buffer kept for the simulator's lifetime: a destroyed GI/CI never gets its
address reused, and its old handles answer INVALID_ARGUMENT.
"""

from __future__ import annotations

import ctypes
import functools
import random
import re
import threading
import uuid as uuidlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pynvml
from pynvml import NVMLError

from vcplugin.core import migtables
from vcplugin.core.migtables import MigModel, MigProfile, layout_problem, place

from . import faults as _faults
from ._state import (
    NVML_MIG_DISABLE,
    NVML_MIG_ENABLE,
    CiProfile,
    ComputeInstance,
    Gpu,
    GpuInstance,
    MigDevice,
    Process,
    ci_profiles,
)

DEFAULT_DRIVER_VERSION = "550.90.07"
MiB = 1 << 20
NOT_MIG = 0xFFFFFFFF  # gpuInstanceId/computeInstanceId of a process outside MIG
SUCCESS: int = pynvml.NVML_SUCCESS
IN_USE: int = pynvml.NVML_ERROR_IN_USE

_T = TypeVar("_T")
_CArgObject = type(ctypes.byref(ctypes.c_uint()))

# pynvml helpers that are plain Python (no C call): safe to hand out from the real module.
_PURE_HELPERS = {"nvmlExceptionClass", "nvmlStructToFriendlyObject", "nvmlFriendlyObjectToStruct"}
# Calls that do not name a GPU: injected faults for them are checked on entry.
_NO_DEVICE_CALLS = {
    "nvmlInit",
    "nvmlInitWithFlags",
    "nvmlShutdown",
    "nvmlSystemGetDriverVersion",
    "nvmlDeviceGetCount",
}
# pynvml aliases -> the method name faults are matched against.
ALIASES = {
    "nvmlDeviceGetGpuInstanceProfileInfoV": "nvmlDeviceGetGpuInstanceProfileInfo",
    "nvmlDeviceGetGpuInstanceProfileInfoByIdV": "nvmlDeviceGetGpuInstanceProfileInfoById",
    "nvmlGpuInstanceGetComputeInstanceProfileInfoV": "nvmlGpuInstanceGetComputeInstanceProfileInfo",
    "nvmlComputeInstanceGetInfo_v2": "nvmlComputeInstanceGetInfo",
    "nvmlDeviceGetComputeRunningProcesses_v2": "nvmlDeviceGetComputeRunningProcesses",
    "nvmlDeviceGetComputeRunningProcesses_v3": "nvmlDeviceGetComputeRunningProcesses",
    "nvmlDeviceGetGraphicsRunningProcesses_v2": "nvmlDeviceGetGraphicsRunningProcesses",
    "nvmlDeviceGetGraphicsRunningProcesses_v3": "nvmlDeviceGetGraphicsRunningProcesses",
    "nvmlDeviceGetPciInfo_v3": "nvmlDeviceGetPciInfo",
}

# Where CreateGpuInstance (no placement) puts a profile, by (memory slices of the GPU, profile size).
# Observed: seven `-cgi 19` land at 6,4,5,0,1,2,3; a lone 2g at 4; `-cgi 9,19,14,19` gives 3g@4, 1g@0, 2g@2,
# 1g@1 (reference/mig.md §2.4). The rest follows the same "upper half first" shape (inferred).
_DEFAULT_START_ORDER: dict[tuple[int, int], tuple[int, ...]] = {
    (8, 1): (6, 4, 5, 0, 1, 2, 3),
    (8, 2): (6, 4, 0, 2),
    (8, 4): (4, 0),
    (4, 1): (3, 2, 0, 1),
    (4, 2): (2, 0),
}


class SimUsageError(TypeError):
    """A calling convention that is undefined behaviour with real NVML: a struct passed by value where pynvml
    hands C a pointer, an output array smaller than what NVML writes, a handle that is not a ctypes pointer.
    Real NVML would crash or corrupt memory; the simulator refuses loudly instead."""


# pynvml's str(NVMLError) asks the C library for texts it has not cached; without a library it prints
# "NVML Error with code 23". Cache the texts real NVML gives for the codes the simulator raises most.
NVMLError._errcode_to_string.setdefault(pynvml.NVML_ERROR_IN_USE, "In use by another client")
NVMLError._errcode_to_string.setdefault(pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES, "Insufficient Resources")


def _err(code: int) -> NVMLError:
    # NVMLError(code) returns the matching subclass (NVMLError_InUse, ...), exactly as pynvml raises it.
    return NVMLError(code)


def _address(handle: Any) -> int | None:
    if handle is None:
        return None
    if isinstance(handle, ctypes._Pointer):
        return ctypes.cast(handle, ctypes.c_void_p).value
    if isinstance(handle, ctypes.c_void_p):
        return handle.value
    raise SimUsageError(f"expected an NVML handle (a ctypes pointer as pynvml returns), got {type(handle).__name__}")


def _handle(addr: int, ptr_type: Any) -> Any:
    return ctypes.cast(ctypes.c_void_p(addr), ptr_type)


def _deref(ref: Any, what: str) -> Any:
    """The object behind ctypes.byref(x) / ctypes.pointer(x); None for NULL.

    pynvml declares no argtypes: what the caller passes goes to C as is, so anything else is a bug."""
    if ref is None:
        return None
    if isinstance(ref, _CArgObject):
        return ref._obj  # type: ignore[attr-defined]
    if isinstance(ref, ctypes._Pointer):
        return ref.contents if ref else None
    raise SimUsageError(
        f"{what}: pass ctypes.byref(x) (pynvml hands this argument to C as a pointer), got {type(ref).__name__}"
    )


def _uint_out(ref: Any) -> ctypes.c_uint:
    obj = _deref(ref, "count")
    if obj is None:
        raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
    if not isinstance(obj, ctypes.c_uint):
        raise SimUsageError(f"count: expected ctypes.byref(ctypes.c_uint()), got a reference to {type(obj).__name__}")
    return obj


def _placement_in(ref: Any) -> tuple[int, int]:
    obj = _deref(ref, "placement")
    if obj is None:
        raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
    if not isinstance(obj, ctypes.Structure) or not hasattr(obj, "start") or not hasattr(obj, "size"):
        raise SimUsageError(f"placement: expected a placement struct, got {type(obj).__name__}")
    return int(obj.start), int(obj.size)


def _is_null(ref: Any) -> bool:
    return ref is None or (isinstance(ref, ctypes._Pointer | ctypes.c_void_p) and not ref)


def _elem_ok(elem: Any, kind: str) -> bool:
    if kind == "placement":  # c_nvmlGpuInstancePlacement_t or c_nvmlComputeInstancePlacement_t
        return (
            isinstance(elem, type)
            and issubclass(elem, ctypes.Structure)
            and ([f[0] for f in getattr(elem, "_fields_", ())] == ["start", "size"])
        )
    return isinstance(elem, type) and issubclass(elem, ctypes._Pointer | ctypes.c_void_p)  # handles


def _out_array(ref: Any, needed: int, what: str, kind: str) -> Any:
    """A caller-supplied output array that NVML writes `needed` elements of `kind` ("placement" or "handle")
    into: a ctypes array, a ctypes pointer to the first element, or byref() of either."""
    obj = ref
    if isinstance(ref, _CArgObject):
        obj = ref._obj  # type: ignore[attr-defined]
        if not isinstance(obj, ctypes.Array):
            obj = (type(obj) * 1).from_buffer(obj)  # byref(one element): room for exactly one
    if isinstance(obj, ctypes.Array):
        elem, room = obj._type_, len(obj)
    elif isinstance(obj, ctypes._Pointer):
        elem, room = obj._type_, None  # unbounded, as in C
    else:
        raise SimUsageError(f"{what}: expected a ctypes array, got {type(ref).__name__}")
    if not _elem_ok(elem, kind):
        raise SimUsageError(f"{what}: array of {getattr(elem, '__name__', elem)}, expected {kind} elements")
    if room is not None and room < needed:
        raise SimUsageError(f"{what}: array of {room} elements, NVML writes {needed} (buffer overrun)")
    return obj


def _store_handles(ref: Any, addrs: Sequence[int], what: str) -> None:
    out = _out_array(ref, len(addrs), what, "handle")
    for i, addr in enumerate(addrs):
        out[i] = _handle(addr, out._type_)


def _engines(prof: MigProfile, model: MigModel) -> tuple[int, int, int, int, int]:
    """(copy, decoder, encoder, jpeg, ofa) engines of a GI profile. Not in migtables and not used by the
    agent: A100-like approximations (CE = slices, NVDEC ~ 5/7 per slice, JPEG/OFA with +me or full GPU)."""
    full_or_media = int(prof.media or prof.slices == model.compute_slices)
    return prof.slices, max(prof.slices * 5 // 7, int(prof.media)), 0, full_or_media, full_or_media


def _api(fn: Callable[..., _T]) -> Callable[..., _T]:
    """One NVML entry point: the state lock, the Uninitialized check, and the name faults match against."""
    name = fn.__name__
    no_device = name in _NO_DEVICE_CALLS

    @functools.wraps(fn)
    def wrapper(self: SimNvml, *args: Any, **kwargs: Any) -> _T:
        with self._lock:
            if self._init_count <= 0 and name not in ("nvmlInit", "nvmlInitWithFlags"):
                raise _err(pynvml.NVML_ERROR_UNINITIALIZED)
            saved = self._call, self._fired
            self._call, self._fired = name, False
            try:
                if no_device:
                    self._fire(None)
                return fn(self, *args, **kwargs)
            finally:
                self._call, self._fired = saved

    return wrapper


@dataclass
class GpuSpec:
    """One simulated GPU. `model` is an NVML product name ("NVIDIA A100-PCIE-40GB", matched with
    migtables.find_model) or a MigModel; a name migtables does not know is a plain non-MIG GPU and needs
    `memory_mib`."""

    model: str | MigModel
    mig: bool = False  # MIG mode current
    mig_pending: bool | None = None  # default: same as current
    uuid: str | None = None  # default: "GPU-<uuid4>" from the simulator's seed
    name: str | None = None  # NVML name; default: the model string
    memory_mib: int | None = None
    pci_device_id: int | None = None
    hide_profiles: Sequence[str | int] = ()  # profiles this driver does not offer (names or profile IDs)
    holders: Sequence[str] = ()  # non-CUDA clients keeping the GPU busy (nvidia-persistenced, dcgm...)


def _pci_device_id(model: MigModel | None, name: str) -> int:
    if model is None or not model.pci_device_ids:
        return 0
    ids = model.pci_device_ids
    # migtables lists the SXM id first and the PCIe/NVL board second.
    upper = name.upper()
    return ids[1] if len(ids) > 1 and ("PCIE" in upper or "NVL" in upper) else ids[0]


class SimNvml:
    """A simulated NVML with the pynvml call surface. Thread-safe: one lock around all state.

    Besides the nvml* calls it has test hooks: add_gpu, add_process, remove_process, add_holder,
    remove_holder, create_instance, inject, clear_faults, reset, reboot, snapshot."""

    def __init__(
        self,
        gpus: Iterable[GpuSpec] = (),
        *,
        driver_version: str = DEFAULT_DRIVER_VERSION,
        root: bool = True,
        seed: int = 0,
        gi_ids: str = "sequential",
    ) -> None:
        if gi_ids not in ("sequential", "swizzle"):
            raise ValueError(f"gi_ids must be 'sequential' or 'swizzle', not {gi_ids!r}")
        self._lock = threading.RLock()
        self._rng = random.Random(seed)
        self.driver_version = driver_version
        self.root = root  # False: mutating calls answer NO_PERMISSION, as in a container without MIG caps
        # "sequential": lowest free id from 1 (ids say nothing about placement, as DCGM #138 warns);
        # "swizzle": the memory-partition id A100 drivers showed (7g 0, halves 1-2, quarters 3-6, 8ths 7-14).
        self.gi_ids = gi_ids
        self._init_count = 0
        self._call = ""
        self._fired = False
        self._faults = _faults.FaultSet()
        self._objects: dict[int, Any] = {}
        self._keepalive: list[Any] = []
        self._gpus: list[Gpu] = []
        for spec in gpus:
            self.add_gpu(spec)

    # --- construction -----------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> SimNvml:
        from .config import from_dict

        return from_dict(spec)

    @classmethod
    def from_yaml(cls, path_or_text: Any) -> SimNvml:
        from .config import from_yaml

        return from_yaml(path_or_text)

    def add_gpu(self, spec: GpuSpec) -> int:
        """Add a GPU (a test hook: real GPUs do not appear at run time); returns its index."""
        with self._lock:
            if isinstance(spec.model, MigModel):
                model: MigModel | None = spec.model
                name = spec.name or f"NVIDIA {spec.model.names[0]}"
            else:
                model = migtables.find_model(spec.model)
                name = spec.name or spec.model
                if model is None and spec.memory_mib is None:
                    raise ValueError(
                        f"unknown GPU model {spec.model!r}: known MIG models are "
                        f"{migtables.known_model_names()}; a non-MIG GPU needs memory_mib"
                    )
            if model is None and (spec.mig or spec.mig_pending):
                raise ValueError(f"GPU model {spec.model!r} is not MIG-capable")
            current = NVML_MIG_ENABLE if spec.mig else NVML_MIG_DISABLE
            pending = current if spec.mig_pending is None else int(bool(spec.mig_pending))
            index = len(self._gpus)
            gpu = Gpu(
                index=index,
                name=name,
                uuid=spec.uuid or self._new_uuid("GPU-"),
                model=model,
                memory_mib=int(spec.memory_mib or (model.memory_mib if model else 0)),
                pci_device_id=spec.pci_device_id if spec.pci_device_id is not None else _pci_device_id(model, name),
                minor=index,
                bus=(0x10 + index) & 0xFF,
                mig_current=current,
                mig_pending=pending,
                hidden=tuple(spec.hide_profiles),
                holders=set(spec.holders),
            )
            if any(g.uuid == gpu.uuid for g in self._gpus):
                raise ValueError(f"duplicate GPU UUID {gpu.uuid}")
            gpu.handle = self._register(gpu)
            self._gpus.append(gpu)
            return index

    def __repr__(self) -> str:
        return f"SimNvml({len(self._gpus)} GPUs, driver {self.driver_version})"

    def __getattr__(self, name: str) -> Any:
        # Re-export pynvml's constants, struct classes and exception classes (nvml.NVML_DEVICE_MIG_ENABLE,
        # nvml.c_nvmlGpuInstancePlacement_t, nvml.NVMLError_NotFound...). A C call the simulator does not
        # implement is *not* forwarded: it would reach the real library.
        if name.startswith("__"):
            raise AttributeError(name)
        if name in ALIASES:
            return getattr(self, ALIASES[name])
        value = getattr(pynvml, name, None)
        if value is None:
            raise AttributeError(f"pynvml has no attribute {name!r}")
        if name.startswith("nvml") and callable(value) and not isinstance(value, type) and name not in _PURE_HELPERS:
            raise AttributeError(f"SimNvml does not simulate {name}")
        return value

    # --- internals ----------------------------------------------------------------------------------

    def _register(self, obj: Any) -> int:
        buf = ctypes.create_string_buffer(1)  # a unique address, never freed, so never reused
        self._keepalive.append(buf)
        addr = ctypes.addressof(buf)
        self._objects[addr] = obj
        return addr

    def _new_uuid(self, prefix: str) -> str:
        return prefix + str(uuidlib.UUID(int=self._rng.getrandbits(128), version=4))

    def _fire(self, gpu: Gpu | None) -> None:
        """Raise the injected error for the current call, once per call, after its GPU is known."""
        if self._fired:
            return
        self._fired = True
        code = self._faults.fire(self._call, gpu.index if gpu else None)
        if code is not None:
            raise _err(code)

    def _lookup(self, handle: Any, kind: Any) -> Any:
        obj = self._objects.get(_address(handle) or 0)
        if not isinstance(obj, kind) or not obj.alive:
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)  # NULL, wrong kind or stale handle
        return obj

    def _device(self, handle: Any) -> tuple[Gpu, ComputeInstance | None]:
        """A GPU handle or a MIG device handle -> (physical GPU, the MIG device's CI or None)."""
        obj = self._lookup(handle, Gpu | MigDevice)
        gpu, ci = (obj, None) if isinstance(obj, Gpu) else (obj.ci.gi.gpu, obj.ci)
        self._fire(gpu)
        return gpu, ci

    def _parent(self, handle: Any) -> Gpu:
        """A physical GPU handle; MIG device handles are invalid for whole-GPU calls."""
        gpu = self._lookup(handle, Gpu)
        self._fire(gpu)
        return gpu  # type: ignore[no-any-return]

    def _gi(self, handle: Any) -> GpuInstance:
        gi: GpuInstance = self._lookup(handle, GpuInstance)
        self._fire(gi.gpu)
        return gi

    def _ci(self, handle: Any) -> ComputeInstance:
        ci: ComputeInstance = self._lookup(handle, ComputeInstance)
        self._fire(ci.gi.gpu)
        return ci

    @staticmethod
    def _need_mig_capable(gpu: Gpu) -> MigModel:
        if gpu.model is None:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return gpu.model

    @staticmethod
    def _need_mig_enabled(gpu: Gpu) -> None:
        if not gpu.mig_enabled:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def _need_root(self, gpu: Gpu) -> None:
        if not self.root or self._faults.no_permission(gpu.index):
            raise _err(pynvml.NVML_ERROR_NO_PERMISSION)

    def _offered(self, gpu: Gpu) -> tuple[MigProfile, ...]:
        """The GI profiles this GPU's driver offers (the model's, minus hidden ones)."""
        assert gpu.model is not None
        hidden = [*gpu.hidden, *self._faults.hidden(gpu.index)]
        names = {h.lower() for h in hidden if isinstance(h, str)}
        ids = {h for h in hidden if isinstance(h, int)}
        return tuple(p for p in gpu.model.profiles if p.name.lower() not in names and p.profile_id not in ids)

    def _profile_by_id(self, gpu: Gpu, profile_id: int) -> MigProfile:
        # Calls in the profile-ID namespace answer INVALID_ARGUMENT for an ID the device does not have.
        prof = next((p for p in self._offered(gpu) if p.profile_id == profile_id), None)
        if prof is None:
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return prof

    @staticmethod
    def _ci_profile(gi: GpuInstance, profile: int) -> CiProfile:
        if not 0 <= profile < pynvml.NVML_COMPUTE_INSTANCE_PROFILE_COUNT:
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        cip = next((c for c in ci_profiles(gi.profile) if c.index == profile), None)
        if cip is None:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return cip

    def _gi_capacity(self, gpu: Gpu, prof: MigProfile) -> int:
        """How many more `prof` instances could exist at once (exact search: migtables.place)."""
        assert gpu.model is not None
        fixed = gpu.layout()
        n = 0
        while n < prof.max_count and place(gpu.model, fixed, [prof.name] * (n + 1)) is not None:
            n += 1
        return n

    def _default_starts(self, model: MigModel, prof: MigProfile) -> list[int]:
        order = _DEFAULT_START_ORDER.get((model.memory_slices, prof.size), ())
        starts = [s for s in order if s in prof.starts]
        return starts + sorted((s for s in prof.starts if s not in starts), reverse=True)

    def _new_gi_id(self, gpu: Gpu, prof: MigProfile, start: int) -> int:
        assert gpu.model is not None
        if self.gi_ids == "swizzle":
            level = (gpu.model.memory_slices // prof.size).bit_length() - 1
            return (1 << level) - 1 + start // prof.size
        gi_id = 1
        while gi_id in gpu.gis:
            gi_id += 1
        return gi_id

    def _create_gi(self, gpu: Gpu, prof: MigProfile, start: int | None) -> GpuInstance:
        model = gpu.model
        assert model is not None
        fixed = gpu.layout()
        if start is None:
            # No placement given: the driver picks one (deterministically), it may pick a bad one.
            start = next(
                (
                    s
                    for s in self._default_starts(model, prof)
                    if layout_problem(model, [*fixed, (prof.name, s)]) is None
                ),
                None,
            )
            if start is None:
                raise _err(pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES)
        elif layout_problem(model, [*fixed, (prof.name, start)]) is not None:
            # Overlap, instanceCount reached, compute budget or the media engine already taken.
            raise _err(pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES)
        gi = GpuInstance(gpu=gpu, id=self._new_gi_id(gpu, prof, start), profile=prof, start=start)
        gi.handle = self._register(gi)
        gpu.gis[gi.id] = gi
        return gi

    def _create_ci(self, gi: GpuInstance, cip: CiProfile, start: int | None) -> ComputeInstance:
        gpu = gi.gpu
        assert gpu.model is not None
        used = gi.ci_slices_used()
        if sum(1 for c in gi.cis.values() if c.profile.index == cip.index) >= cip.max_count:
            raise _err(pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES)
        candidates = cip.starts(gi.profile.slices) if start is None else (start,)
        start = next((s for s in candidates if not any(used[s : s + cip.slices])), None)
        if start is None:
            raise _err(pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES)
        ci_id = 0  # CI ids restart at 0 in every GI
        while ci_id in gi.cis:
            ci_id += 1
        taken = {c.mig_index for c in gpu.all_cis()}
        mig_index = next(i for i in range(gpu.model.compute_slices) if i not in taken)
        ci = ComputeInstance(
            gi=gi, id=ci_id, profile=cip, start=start, uuid=self._new_uuid("MIG-"), mig_index=mig_index
        )
        ci.handle = self._register(ci)
        ci.dev_handle = self._register(MigDevice(ci))
        gi.cis[ci.id] = ci
        return ci

    @staticmethod
    def _ci_capacity(gi: GpuInstance, cip: CiProfile) -> int:
        # CI placements of one profile never overlap each other: count the free ones.
        used = gi.ci_slices_used()
        free = sum(1 for s in cip.starts(gi.profile.slices) if not any(used[s : s + cip.slices]))
        existing = sum(1 for c in gi.cis.values() if c.profile.index == cip.index)
        return max(0, min(free, cip.max_count - existing))

    @staticmethod
    def _wipe(gpu: Gpu) -> None:
        """Every GI/CI vanishes (reset, reboot): their handles go stale."""
        for gi in gpu.gis.values():
            for ci in gi.cis.values():
                ci.alive = False
            gi.cis.clear()
            gi.alive = False
        gpu.gis.clear()

    def _gi_profile_info(self, gpu: Gpu, prof: MigProfile, version: int) -> Any:
        assert gpu.model is not None
        if version == 2:
            info: Any = pynvml.c_nvmlGpuInstanceProfileInfo_v2_t()
            info.name = f"MIG {prof.name}".encode()
        else:
            info = pynvml.c_nvmlGpuInstanceProfileInfo_t()
        info.id = prof.profile_id
        info.isP2pSupported = 0
        info.sliceCount = prof.slices
        info.instanceCount = prof.max_count
        info.multiprocessorCount = prof.multiprocessors
        info.copyEngineCount, info.decoderCount, info.encoderCount, info.jpegCount, info.ofaCount = _engines(
            prof, gpu.model
        )
        info.memorySizeMB = prof.memory_mib
        return info

    # --- library ----------------------------------------------------------------------------------

    @_api
    def nvmlInit(self) -> None:
        self._init_count += 1

    @_api
    def nvmlInitWithFlags(self, flags: int) -> None:
        self._init_count += 1

    @_api
    def nvmlShutdown(self) -> None:
        self._init_count -= 1

    @_api
    def nvmlSystemGetDriverVersion(self) -> str:
        return self.driver_version

    # --- devices ----------------------------------------------------------------------------------

    @_api
    def nvmlDeviceGetCount(self) -> int:
        return len(self._gpus)

    @_api
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        if not 0 <= int(index) < len(self._gpus):
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        gpu = self._gpus[int(index)]
        self._fire(gpu)
        return _handle(gpu.handle, pynvml.c_nvmlDevice_t)

    @_api
    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> Any:
        """GPU UUIDs, MIG UUIDs ("MIG-<uuid>") and the legacy "MIG-GPU-<gpu uuid>/<gi>/<ci>" form."""
        text = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
        if not text:
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        legacy = re.fullmatch(r"MIG-(GPU-[^/]+)/(\d+)/(\d+)", text)
        for gpu in self._gpus:
            if gpu.uuid == text:
                self._fire(gpu)
                return _handle(gpu.handle, pynvml.c_nvmlDevice_t)
            for ci in gpu.all_cis():
                if ci.uuid == text or (
                    legacy and legacy.group(1) == gpu.uuid and (ci.gi.id, ci.id) == (int(legacy[2]), int(legacy[3]))
                ):
                    self._fire(gpu)
                    return _handle(ci.dev_handle, pynvml.c_nvmlDevice_t)
        raise _err(pynvml.NVML_ERROR_NOT_FOUND)

    @_api
    def nvmlDeviceGetName(self, handle: Any) -> str:
        gpu, ci = self._device(handle)
        return gpu.name if ci is None else f"{gpu.name} MIG {ci.label}"

    @_api
    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        gpu, ci = self._device(handle)
        return gpu.uuid if ci is None else ci.uuid

    @_api
    def nvmlDeviceGetIndex(self, handle: Any) -> int:
        return self._parent(handle).index

    @_api
    def nvmlDeviceGetMinorNumber(self, handle: Any) -> int:
        return self._parent(handle).minor

    @_api
    def nvmlDeviceGetPciInfo(self, handle: Any) -> Any:
        gpu, _ = self._device(handle)  # a MIG device reports its parent's PCI identity
        info = pynvml.nvmlPciInfo_t()
        info.busIdLegacy = f"0000:{gpu.bus:02X}:00.0".encode()
        info.busId = gpu.bus_id.encode()
        info.domain, info.bus, info.device = 0, gpu.bus, 0
        info.pciDeviceId = gpu.pci_device_id
        info.pciSubSystemId = 0
        return info

    nvmlDeviceGetPciInfo_v3 = nvmlDeviceGetPciInfo

    @_api
    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: int | None = None) -> Any:
        gpu, ci = self._device(handle)
        if ci is None:
            total, procs = gpu.memory_mib, list(gpu.processes.values())
        else:  # a MIG device sees its GI's memory, shared by the GI's CIs
            total, procs = (
                ci.gi.profile.memory_mib,
                [p for p in gpu.processes.values() if p.gi_id == ci.gi.id],
            )
        total_b = total * MiB
        used_b = min(total_b, sum(p.used_mib for p in procs) * MiB)
        if version:
            mem: Any = pynvml.c_nvmlMemory_v2_t()
            mem.version = version
            mem.reserved = 0
        else:
            mem = pynvml.c_nvmlMemory_t()
        mem.total, mem.used, mem.free = total_b, used_b, total_b - used_b
        return mem

    # --- MIG mode ---------------------------------------------------------------------------------

    @_api
    def nvmlDeviceGetMigMode(self, device: Any) -> list[int]:
        gpu = self._parent(device)
        self._need_mig_capable(gpu)
        return [gpu.mig_current, gpu.mig_pending]

    @_api
    def nvmlDeviceSetMigMode(self, device: Any, mode: int) -> int:
        """Returns the activation status (an NVML return code, not raised): IN_USE while the GPU is busy, in
        which case the change stays pending until reset()/reboot()."""
        gpu = self._parent(device)
        self._need_mig_capable(gpu)
        self._need_root(gpu)
        if mode not in (NVML_MIG_DISABLE, NVML_MIG_ENABLE):
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if mode == NVML_MIG_DISABLE and gpu.gis:
            # Unverified on hardware, conservative: mig-parted always clears GIs before disabling.
            raise _err(pynvml.NVML_ERROR_IN_USE)
        gpu.mig_pending = mode
        if gpu.mig_current == mode:
            return SUCCESS  # nothing to activate (or a pending change cancelled)
        stuck = self._faults.stuck(gpu.index)
        if stuck is not None:
            return _faults.error_code(stuck.status)
        if gpu.busy:
            return IN_USE
        gpu.mig_current = mode
        return SUCCESS

    # --- GPU instance profiles and placements -------------------------------------------------------

    @_api
    def nvmlDeviceGetGpuInstanceProfileInfo(self, device: Any, profile: int, version: int = 2) -> Any:
        """`profile` is an NVML_GPU_INSTANCE_PROFILE_* index; the answer's `.id` is the profile ID every other
        call takes. version=2 -> c_nvmlGpuInstanceProfileInfo_v2_t (with name), 1 -> the legacy struct."""
        if version not in (1, 2):
            raise _err(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)  # what pynvml raises itself
        gpu = self._parent(device)
        self._need_mig_capable(gpu)
        if not 0 <= profile < pynvml.NVML_GPU_INSTANCE_PROFILE_COUNT:
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)  # the end of the documented enumeration loop
        self._need_mig_enabled(gpu)
        prof = next((p for p in self._offered(gpu) if p.index == profile), None)
        if prof is None:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return self._gi_profile_info(gpu, prof, version)

    nvmlDeviceGetGpuInstanceProfileInfoV = nvmlDeviceGetGpuInstanceProfileInfo

    @_api
    def nvmlDeviceGetGpuInstanceProfileInfoById(self, device: Any, profileId: int) -> Any:
        gpu = self._parent(device)
        self._need_mig_capable(gpu)
        self._need_mig_enabled(gpu)
        prof = next((p for p in self._offered(gpu) if p.profile_id == profileId), None)
        if prof is None:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return self._gi_profile_info(gpu, prof, 2)

    nvmlDeviceGetGpuInstanceProfileInfoByIdV = nvmlDeviceGetGpuInstanceProfileInfoById

    @_api
    def nvmlDeviceGetGpuInstancePossiblePlacements(
        self, device: Any, profileId: int, placementsRef: Any, countRef: Any
    ) -> int:
        """The static placement table, whatever is occupied and whatever the MIG mode. placementsRef is a
        ctypes array of c_nvmlGpuInstancePlacement_t or None (count only); countRef is byref(c_uint)."""
        gpu = self._parent(device)
        self._need_mig_capable(gpu)
        prof = self._profile_by_id(gpu, profileId)
        count = _uint_out(countRef)
        if not _is_null(placementsRef):
            out = _out_array(placementsRef, len(prof.starts), "placements", "placement")
            for i, start in enumerate(prof.starts):
                out[i].start, out[i].size = start, prof.size
        count.value = len(prof.starts)
        return SUCCESS

    @_api
    def nvmlDeviceGetGpuInstanceRemainingCapacity(self, device: Any, profileId: int) -> int:
        gpu = self._parent(device)
        self._need_mig_capable(gpu)
        self._need_mig_enabled(gpu)
        return self._gi_capacity(gpu, self._profile_by_id(gpu, profileId))

    # --- GPU instances ----------------------------------------------------------------------------

    @_api
    def nvmlDeviceCreateGpuInstance(self, device: Any, profileId: int) -> Any:
        gpu = self._parent(device)
        self._need_mig_capable(gpu)
        self._need_root(gpu)
        self._need_mig_enabled(gpu)
        gi = self._create_gi(gpu, self._profile_by_id(gpu, profileId), None)
        return _handle(gi.handle, pynvml.c_nvmlGpuInstance_t)

    @_api
    def nvmlDeviceCreateGpuInstanceWithPlacement(self, device: Any, profileId: int, placement: Any) -> Any:
        """`placement` as pynvml passes it to C: ctypes.byref(c_nvmlGpuInstancePlacement_t) (or a pointer)."""
        start, size = _placement_in(placement)
        gpu = self._parent(device)
        self._need_mig_capable(gpu)
        self._need_root(gpu)
        self._need_mig_enabled(gpu)
        prof = self._profile_by_id(gpu, profileId)
        if start not in prof.starts or size != prof.size:
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)  # not a placement of this profile
        gi = self._create_gi(gpu, prof, start)
        return _handle(gi.handle, pynvml.c_nvmlGpuInstance_t)

    @_api
    def nvmlGpuInstanceDestroy(self, gpuInstance: Any) -> int:
        gi = self._gi(gpuInstance)
        self._need_root(gi.gpu)
        if gi.cis or any(p.gi_id == gi.id for p in gi.gpu.processes.values()):
            raise _err(pynvml.NVML_ERROR_IN_USE)
        del gi.gpu.gis[gi.id]
        gi.alive = False
        return SUCCESS

    @_api
    def nvmlDeviceGetGpuInstances(self, device: Any, profileId: int, gpuInstancesRef: Any, countRef: Any) -> int:
        """Fills a caller array of c_nvmlGpuInstance_t (size it with the profile's instanceCount)."""
        gpu = self._parent(device)
        self._need_mig_capable(gpu)
        self._need_mig_enabled(gpu)
        self._profile_by_id(gpu, profileId)
        count = _uint_out(countRef)
        if _is_null(gpuInstancesRef):
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        gis = sorted((gi for gi in gpu.gis.values() if gi.profile.profile_id == profileId), key=lambda g: g.id)
        _store_handles(gpuInstancesRef, [gi.handle for gi in gis], "gpuInstances")
        count.value = len(gis)
        return SUCCESS

    @_api
    def nvmlDeviceGetGpuInstanceById(self, device: Any, gpuInstanceId: int) -> Any:
        gpu = self._parent(device)
        self._need_mig_capable(gpu)
        self._need_mig_enabled(gpu)
        gi = gpu.gis.get(gpuInstanceId)
        if gi is None:
            raise _err(pynvml.NVML_ERROR_NOT_FOUND)
        return _handle(gi.handle, pynvml.c_nvmlGpuInstance_t)

    @_api
    def nvmlGpuInstanceGetInfo(self, gpuInstance: Any) -> Any:
        gi = self._gi(gpuInstance)
        info = pynvml.c_nvmlGpuInstanceInfo_t()
        info.device = _handle(gi.gpu.handle, pynvml.c_nvmlDevice_t)
        info.id = gi.id
        info.profileId = gi.profile.profile_id
        info.placement.start, info.placement.size = gi.start, gi.profile.size
        return info

    # --- compute instances ------------------------------------------------------------------------

    @_api
    def nvmlGpuInstanceGetComputeInstanceProfileInfo(
        self, device: Any, profile: int, engProfile: int, version: int = 2
    ) -> Any:
        """`device` is the GI handle (pynvml's parameter name). CI profile index == CI profile ID."""
        if version not in (1, 2):
            raise _err(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        gi = self._gi(device)
        if not 0 <= engProfile < pynvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_COUNT:
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        cip = self._ci_profile(gi, profile)
        assert gi.gpu.model is not None
        if version == 2:
            info: Any = pynvml.c_nvmlComputeInstanceProfileInfo_v2_t()
            full = cip.slices == gi.profile.slices
            info.name = (f"MIG {gi.profile.name}" if full else f"MIG {cip.slices}c.{gi.profile.name}").encode()
        else:
            info = pynvml.c_nvmlComputeInstanceProfileInfo_t()
        info.id = cip.index
        info.sliceCount = cip.slices
        info.instanceCount = cip.max_count
        info.multiprocessorCount = gi.profile.multiprocessors * cip.slices // gi.profile.slices
        ce, dec, enc, jpeg, ofa = _engines(gi.profile, gi.gpu.model)  # engines are shared across the GI's CIs
        info.sharedCopyEngineCount, info.sharedDecoderCount, info.sharedEncoderCount = ce, dec, enc
        info.sharedJpegCount, info.sharedOfaCount = jpeg, ofa
        return info

    nvmlGpuInstanceGetComputeInstanceProfileInfoV = nvmlGpuInstanceGetComputeInstanceProfileInfo

    @_api
    def nvmlGpuInstanceGetComputeInstanceRemainingCapacity(self, gpuInstance: Any, profileId: int) -> int:
        gi = self._gi(gpuInstance)
        return self._ci_capacity(gi, self._ci_profile(gi, profileId))

    @_api
    def nvmlGpuInstanceGetComputeInstancePossiblePlacements(
        self, gpuInstance: Any, profileId: int, placementsRef: Any, countRef: Any
    ) -> int:
        gi = self._gi(gpuInstance)
        cip = self._ci_profile(gi, profileId)
        count = _uint_out(countRef)
        starts = cip.starts(gi.profile.slices)
        if not _is_null(placementsRef):
            out = _out_array(placementsRef, len(starts), "placements", "placement")
            for i, start in enumerate(starts):
                out[i].start, out[i].size = start, cip.slices
        count.value = len(starts)
        return SUCCESS

    @_api
    def nvmlGpuInstanceCreateComputeInstance(self, gpuInstance: Any, profileId: int) -> Any:
        gi = self._gi(gpuInstance)
        self._need_root(gi.gpu)
        ci = self._create_ci(gi, self._ci_profile(gi, profileId), None)
        return _handle(ci.handle, pynvml.c_nvmlComputeInstance_t)

    @_api
    def nvmlGpuInstanceCreateComputeInstanceWithPlacement(
        self, gpuInstance: Any, profileId: int, placement: Any
    ) -> Any:
        start, size = _placement_in(placement)
        gi = self._gi(gpuInstance)
        self._need_root(gi.gpu)
        cip = self._ci_profile(gi, profileId)
        if start not in cip.starts(gi.profile.slices) or size != cip.slices:
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        ci = self._create_ci(gi, cip, start)
        return _handle(ci.handle, pynvml.c_nvmlComputeInstance_t)

    @_api
    def nvmlComputeInstanceDestroy(self, computeInstance: Any) -> int:
        ci = self._ci(computeInstance)
        gpu = ci.gi.gpu
        self._need_root(gpu)
        if any((p.gi_id, p.ci_id) == (ci.gi.id, ci.id) for p in gpu.processes.values()):
            raise _err(pynvml.NVML_ERROR_IN_USE)
        del ci.gi.cis[ci.id]
        ci.alive = False
        return SUCCESS

    @_api
    def nvmlGpuInstanceGetComputeInstances(
        self, gpuInstance: Any, profileId: int, computeInstancesRef: Any, countRef: Any
    ) -> int:
        gi = self._gi(gpuInstance)
        self._ci_profile(gi, profileId)
        count = _uint_out(countRef)
        if _is_null(computeInstancesRef):
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        cis = sorted((c for c in gi.cis.values() if c.profile.index == profileId), key=lambda c: c.id)
        _store_handles(computeInstancesRef, [c.handle for c in cis], "computeInstances")
        count.value = len(cis)
        return SUCCESS

    @_api
    def nvmlGpuInstanceGetComputeInstanceById(self, gpuInstance: Any, computeInstanceId: int) -> Any:
        gi = self._gi(gpuInstance)
        ci = gi.cis.get(computeInstanceId)
        if ci is None:
            raise _err(pynvml.NVML_ERROR_NOT_FOUND)
        return _handle(ci.handle, pynvml.c_nvmlComputeInstance_t)

    @_api
    def nvmlComputeInstanceGetInfo(self, computeInstance: Any) -> Any:
        ci = self._ci(computeInstance)
        info = pynvml.c_nvmlComputeInstanceInfo_t()
        info.device = _handle(ci.gi.gpu.handle, pynvml.c_nvmlDevice_t)  # the parent GPU, as in NVML
        info.gpuInstance = _handle(ci.gi.handle, pynvml.c_nvmlGpuInstance_t)
        info.id = ci.id
        info.profileId = ci.profile.index
        info.placement.start, info.placement.size = ci.start, ci.profile.slices
        return info

    nvmlComputeInstanceGetInfo_v2 = nvmlComputeInstanceGetInfo

    # --- MIG devices ------------------------------------------------------------------------------

    @_api
    def nvmlDeviceGetMaxMigDeviceCount(self, device: Any) -> int:
        gpu = self._parent(device)
        return gpu.model.compute_slices if gpu.mig_enabled and gpu.model else 0

    @_api
    def nvmlDeviceGetMigDeviceHandleByIndex(self, device: Any, index: int) -> Any:
        """Indices are sparse: a hole (a destroyed CI's index) answers NOT_FOUND."""
        gpu = self._parent(device)
        model = self._need_mig_capable(gpu)
        limit = model.compute_slices if gpu.mig_enabled else 0
        if not 0 <= index < limit:
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        ci = next((c for c in gpu.all_cis() if c.mig_index == index), None)
        if ci is None:
            raise _err(pynvml.NVML_ERROR_NOT_FOUND)
        return _handle(ci.dev_handle, pynvml.c_nvmlDevice_t)

    @_api
    def nvmlDeviceIsMigDeviceHandle(self, device: Any) -> ctypes.c_uint:
        # pynvml quirk mirrored: the wrapper returns the c_uint object itself; callers need `.value`.
        _, ci = self._device(device)
        return ctypes.c_uint(0 if ci is None else 1)

    @_api
    def nvmlDeviceGetGpuInstanceId(self, device: Any) -> int:
        _, ci = self._device(device)
        if ci is None:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)  # only MIG device handles have one
        return ci.gi.id

    @_api
    def nvmlDeviceGetComputeInstanceId(self, device: Any) -> int:
        _, ci = self._device(device)
        if ci is None:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return ci.id

    @_api
    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, migDevice: Any) -> Any:
        gpu, ci = self._device(migDevice)
        if ci is None:
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return _handle(gpu.handle, pynvml.c_nvmlDevice_t)

    # --- processes --------------------------------------------------------------------------------

    @_api
    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[Any]:
        """Parent handle: every process, with its GI/CI ids; MIG handle: that MIG device's processes.
        Objects as pynvml builds them (nvmlFriendlyObject: pid, usedGpuMemory in bytes, gpuInstanceId,
        computeInstanceId; 0xFFFFFFFF outside MIG)."""
        gpu, ci = self._device(handle)
        procs = sorted(gpu.processes.values(), key=lambda p: p.pid)
        if ci is not None:
            procs = [p for p in procs if (p.gi_id, p.ci_id) == (ci.gi.id, ci.id)]
        out = []
        for p in procs:
            info = pynvml.c_nvmlProcessInfo_v3_t()
            info.pid, info.usedGpuMemory = p.pid, p.used_mib * MiB
            info.gpuInstanceId = NOT_MIG if p.gi_id is None else p.gi_id
            info.computeInstanceId = NOT_MIG if p.ci_id is None else p.ci_id
            out.append(pynvml.nvmlStructToFriendlyObject(info))
        return out

    nvmlDeviceGetComputeRunningProcesses_v3 = nvmlDeviceGetComputeRunningProcesses
    nvmlDeviceGetComputeRunningProcesses_v2 = nvmlDeviceGetComputeRunningProcesses

    @_api
    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: Any) -> list[Any]:
        self._device(handle)
        return []

    nvmlDeviceGetGraphicsRunningProcesses_v3 = nvmlDeviceGetGraphicsRunningProcesses
    nvmlDeviceGetGraphicsRunningProcesses_v2 = nvmlDeviceGetGraphicsRunningProcesses

    @_api
    def nvmlDeviceGetMPSComputeRunningProcesses(self, handle: Any) -> list[Any]:
        self._device(handle)
        return []

    # --- test hooks (not part of pynvml) ------------------------------------------------------------

    def _gpu(self, index: int) -> Gpu:
        if not 0 <= index < len(self._gpus):
            raise IndexError(f"no simulated GPU {index} (have {len(self._gpus)})")
        return self._gpus[index]

    def add_process(
        self, gpu_index: int, pid: int, used_mib: int, gi_id: int | None = None, ci_id: int | None = None
    ) -> None:
        """A CUDA process on a GPU (gi_id/ci_id None) or inside a MIG device. With gi_id alone, the GI's only
        CI is meant. A process keeps its CI (destroy -> IN_USE) and its GPU busy (mode changes pend)."""
        with self._lock:
            gpu = self._gpu(gpu_index)
            if any(pid in g.processes for g in self._gpus):
                raise ValueError(f"pid {pid} already exists")
            if gi_id is None and ci_id is not None:
                raise ValueError("ci_id needs gi_id")
            if gi_id is not None:
                gi = gpu.gis.get(gi_id)
                if gi is None:
                    raise ValueError(f"GPU {gpu_index} has no GPU instance {gi_id}")
                if ci_id is None:
                    if len(gi.cis) != 1:
                        raise ValueError(f"GPU instance {gi_id} has {len(gi.cis)} compute instances: give ci_id")
                    ci_id = next(iter(gi.cis))
                elif ci_id not in gi.cis:
                    raise ValueError(f"GPU instance {gi_id} has no compute instance {ci_id}")
            gpu.processes[pid] = Process(pid=pid, used_mib=used_mib, gi_id=gi_id, ci_id=ci_id)

    def remove_process(self, pid: int) -> None:
        with self._lock:
            for gpu in self._gpus:
                if gpu.processes.pop(pid, None) is not None:
                    return
            raise KeyError(f"no process {pid}")

    def add_holder(self, gpu_index: int, name: str) -> None:
        """A non-CUDA client holding the GPU open (nvidia-persistenced, DCGM): blocks mode change, reset."""
        with self._lock:
            self._gpu(gpu_index).holders.add(name)

    def remove_holder(self, gpu_index: int, name: str) -> None:
        with self._lock:
            self._gpu(gpu_index).holders.discard(name)

    def create_instance(
        self, gpu_index: int, profile: str | int, start: int | None = None, compute: bool = True
    ) -> tuple[int, int | None]:
        """Create a GI (profile name or profile ID; start None = the driver's choice) and, with `compute`, its
        full-size CI, bypassing init/permission/faults. For preloading a layout; returns (gi_id, ci_id)."""
        with self._lock:
            gpu = self._gpu(gpu_index)
            if not gpu.mig_enabled:
                raise ValueError(f"GPU {gpu_index} does not have MIG enabled")
            assert gpu.model is not None
            prof = gpu.model.profile(profile) if isinstance(profile, str) else gpu.model.profile_by_id(profile)
            if prof is None:
                raise ValueError(f"GPU {gpu_index} ({gpu.model.key}) has no profile {profile!r}")
            if start is not None and start not in prof.starts:
                raise ValueError(f"{prof.name} cannot start at {start} (allowed {list(prof.starts)})")
            gi = self._create_gi(gpu, prof, start)
            if not compute:
                return gi.id, None
            full = next(c for c in ci_profiles(prof) if c.slices == prof.slices)
            return gi.id, self._create_ci(gi, full, None).id

    def inject(self, fault: _faults.Fault | dict[str, Any]) -> _faults.Fault:
        """Add a fault (a faults.* object or a dict with "kind"); returns it (`count` shows what is left)."""
        if isinstance(fault, dict):
            fault = _faults.fault_from_dict(fault)
        if isinstance(fault, _faults.CallError):
            names = (fault.calls,) if isinstance(fault.calls, str) else tuple(fault.calls)
            fault.calls = tuple(ALIASES.get(n, n) for n in names)
        with self._lock:
            self._faults.add(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset(self, gpu_index: int | None = None) -> None:
        """`nvidia-smi -r` on one GPU (or all): refused with NVMLError_InUse while processes or holders
        exist; otherwise the pending MIG mode becomes current (unless StuckPending) and all GIs/CIs vanish."""
        with self._lock:
            gpus = list(self._gpus) if gpu_index is None else [self._gpu(gpu_index)]
            if any(gpu.busy for gpu in gpus):
                raise _err(pynvml.NVML_ERROR_IN_USE)
            for gpu in gpus:
                self._wipe(gpu)
                if self._faults.stuck(gpu.index) is None:
                    gpu.mig_current = gpu.mig_pending

    def reboot(self) -> None:
        """A node reboot: processes end, GIs/CIs vanish (they are not persistent), the MIG mode setting
        survives and a pending change is applied (unless a StuckPending fault). Holders come back."""
        with self._lock:
            for gpu in self._gpus:
                gpu.processes.clear()
                self._wipe(gpu)
                if self._faults.stuck(gpu.index) is None:
                    gpu.mig_current = gpu.mig_pending

    def snapshot(self) -> dict[str, Any]:
        """A plain description (dicts, lists, tuples) of every GPU, for assertions. `layout` is the list of
        (profile name, start) that migtables.layout_problem takes."""
        with self._lock:
            return {
                "driver_version": self.driver_version,
                "root": self.root,
                "gpus": [self._gpu_snapshot(gpu) for gpu in self._gpus],
            }

    @staticmethod
    def _gpu_snapshot(gpu: Gpu) -> dict[str, Any]:
        return {
            "index": gpu.index,
            "uuid": gpu.uuid,
            "name": gpu.name,
            "model": gpu.model.key if gpu.model else None,
            "mig_capable": gpu.model is not None,
            "mig_current": gpu.mig_current == NVML_MIG_ENABLE,
            "mig_pending": gpu.mig_pending == NVML_MIG_ENABLE,
            "layout": gpu.layout(),
            "gpu_instances": [
                {
                    "id": gi.id,
                    "profile": gi.profile.name,
                    "profile_id": gi.profile.profile_id,
                    "start": gi.start,
                    "size": gi.profile.size,
                    "compute_instances": [
                        {
                            "id": ci.id,
                            "profile_id": ci.profile.index,
                            "slices": ci.profile.slices,
                            "start": ci.start,
                            "name": ci.label,
                            "uuid": ci.uuid,
                            "mig_index": ci.mig_index,
                        }
                        for ci in sorted(gi.cis.values(), key=lambda c: c.id)
                    ],
                }
                for gi in sorted(gpu.gis.values(), key=lambda g: g.start)
            ],
            "processes": [
                {"pid": p.pid, "used_mib": p.used_mib, "gi_id": p.gi_id, "ci_id": p.ci_id}
                for p in sorted(gpu.processes.values(), key=lambda p: p.pid)
            ],
            "holders": sorted(gpu.holders),
        }
