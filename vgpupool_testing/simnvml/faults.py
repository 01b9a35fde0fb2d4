"""Faults a test can inject into a SimNvml (see SimNvml.inject).

Each fault mirrors a failure seen on real nodes (reference/mig.md §6 point 11):
- DestroyInUse: GI/CI destroy answers IN_USE for a while (leaked handles held by DCGM, nvidia-smi...).
- StuckPending: a MIG mode change stays pending and a GPU reset does not commit it (gpu-operator #1845).
- NoPermission: mutating calls answer NO_PERMISSION (a container without the MIG config capability).
- CallError: any named call fails with a given error on one GPU or all (to mark a GPU unhealthy).
- HideProfile: the driver does not offer a profile (profile sets vary by driver, e.g. B200 4g.90gb).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pynvml

GI_DESTROY = "nvmlGpuInstanceDestroy"
CI_DESTROY = "nvmlComputeInstanceDestroy"


def error_code(error: int | str) -> int:
    """An NVML return code from an int or a name such as "IN_USE" / "NVML_ERROR_IN_USE"."""
    if isinstance(error, int):
        return error
    name = error.strip().upper()
    if not name.startswith("NVML_ERROR_"):
        name = "NVML_ERROR_" + name
    code = getattr(pynvml, name, None)
    if not isinstance(code, int):
        raise ValueError(f"unknown NVML error {error!r}")
    return code


@dataclass
class CallError:
    """The next `count` calls named in `calls` ("*" = any call) on GPU `gpu` (None = any) raise `error`.

    count=None keeps failing until SimNvml.clear_faults()."""

    calls: str | tuple[str, ...]
    error: int | str = pynvml.NVML_ERROR_UNKNOWN
    gpu: int | None = None
    count: int | None = 1

    def matches(self, call: str, gpu: int | None) -> bool:
        if self.count is not None and self.count <= 0:
            return False
        names = (self.calls,) if isinstance(self.calls, str) else self.calls
        if "*" not in names and call not in names:
            return False
        # A GPU-specific fault fires only once the call has resolved its GPU.
        return self.gpu is None or self.gpu == gpu


@dataclass
class DestroyInUse(CallError):
    """The next `count` GI/CI destroy calls answer IN_USE (transient: later calls succeed)."""

    calls: str | tuple[str, ...] = (GI_DESTROY, CI_DESTROY)
    error: int | str = pynvml.NVML_ERROR_IN_USE


@dataclass
class StuckPending:
    """SetMigMode leaves the change pending with activation status `status`; reset() does not commit it."""

    gpu: int | None = None
    status: int | str = pynvml.NVML_ERROR_IN_USE


@dataclass
class NoPermission:
    """Every mutating call (SetMigMode, create/destroy GI/CI) answers NO_PERMISSION."""

    gpu: int | None = None


@dataclass
class HideProfile:
    """The driver does not offer this GI profile (name like "4g.20gb", or its profile ID)."""

    profile: str | int
    gpu: int | None = None


Fault = CallError | StuckPending | NoPermission | HideProfile

_KINDS: dict[str, type] = {
    "call_error": CallError,
    "destroy_in_use": DestroyInUse,
    "stuck_pending": StuckPending,
    "no_permission": NoPermission,
    "hide_profile": HideProfile,
}


def fault_from_dict(spec: dict[str, Any]) -> Fault:
    """A fault from a plain dict, e.g. {"kind": "call_error", "calls": "nvmlDeviceGetMemoryInfo",
    "gpu": 1, "error": "GPU_IS_LOST", "count": null}."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    cls = _KINDS.get(str(kind))
    if cls is None:
        raise ValueError(f"unknown fault kind {kind!r} (known: {sorted(_KINDS)})")
    if "calls" in spec and isinstance(spec["calls"], list):
        spec["calls"] = tuple(spec["calls"])
    try:
        fault: Fault = cls(**spec)
    except TypeError as exc:
        raise ValueError(f"bad {kind} fault {spec}: {exc}") from None
    return fault


@dataclass
class FaultSet:
    """The faults currently injected (no locking: SimNvml holds its lock around every use)."""

    faults: list[Fault] = field(default_factory=list)

    def add(self, fault: Fault) -> None:
        if isinstance(fault, CallError | StuckPending):
            # Validate error names early, not at the call that fires the fault.
            error_code(fault.error if isinstance(fault, CallError) else fault.status)
        self.faults.append(fault)

    def clear(self) -> None:
        self.faults.clear()

    def fire(self, call: str, gpu: int | None) -> int | None:
        """The error code an injected CallError produces for this call, consuming one use."""
        for fault in self.faults:
            if isinstance(fault, CallError) and fault.matches(call, gpu):
                if fault.count is not None:
                    fault.count -= 1
                return error_code(fault.error)
        return None

    def stuck(self, gpu: int) -> StuckPending | None:
        return next((f for f in self.faults if isinstance(f, StuckPending) and f.gpu in (None, gpu)), None)

    def no_permission(self, gpu: int) -> bool:
        return any(isinstance(f, NoPermission) and f.gpu in (None, gpu) for f in self.faults)

    def hidden(self, gpu: int) -> list[str | int]:
        return [f.profile for f in self.faults if isinstance(f, HideProfile) and f.gpu in (None, gpu)]
