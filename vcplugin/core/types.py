"""State of one GPU as the scheduler sees it, and the shape of an assignment."""

from __future__ import annotations

import msgspec

from .config import Geometry
from .migtables import MigModel


class DeviceGrant(msgspec.Struct, frozen=True, omit_defaults=True):
    """One vGPU given to one container: a HAMi-core share of a GPU, or one MIG instance."""

    uuid: str
    index: int
    mode: str
    memory: int  # MiB promised (and, for MIG, the instance's memory)
    cores: int  # percent of the GPU's SMs
    profile: str | None = None  # MIG profile label
    placement: tuple[int, int] | None = None  # MIG (start, size) in memory slices
    geometry: int | None = None  # MIG: index of the GPU's geometry after this grant


class ContainerGrant(msgspec.Struct, frozen=True):
    name: str
    devices: tuple[DeviceGrant, ...]
    init: bool = False


class Assignment(msgspec.Struct, frozen=True):
    node: str
    containers: tuple[ContainerGrant, ...]

    def devices(self) -> list[DeviceGrant]:
        return [d for c in self.containers for d in c.devices]


class Rejection(msgspec.Struct, frozen=True):
    """Why a pod does not fit a node. code 2: not now (may fit after releases or preemption);
    code 3: never on this node (as Volcano's Unschedulable / UnschedulableAndUnresolvable)."""

    reason: str
    code: int = 2


class MigInstance(msgspec.Struct, frozen=True):
    profile: str
    start: int
    size: int
    memory: int
    cores: int
    pod_uid: str
    pod: str  # "namespace/name"


class GpuState:
    """One physical GPU. Mutable; only NodeState and the sharing modules change it."""

    __slots__ = (
        "uuid",
        "index",
        "model",
        "mig_model",
        "mode",
        "healthy",
        "total_memory",
        "total_cores",
        "split_count",
        "used_memory",
        "used_cores",
        "shares",
        "exclusive",
        "geometry",
        "instances",
        "geometries",
    )

    def __init__(
        self,
        uuid: str,
        index: int,
        model: str,
        mode: str,
        total_memory: int,
        *,
        total_cores: int = 100,
        split_count: int = 10,
        mig_model: MigModel | None = None,
        geometries: tuple[Geometry, ...] = (),
        healthy: bool = True,
    ):
        self.uuid = uuid
        self.index = index
        self.model = model
        self.mig_model = mig_model
        self.mode = mode
        self.healthy = healthy
        self.total_memory = total_memory
        self.total_cores = total_cores
        self.split_count = split_count
        self.used_memory = 0
        self.used_cores = 0
        self.shares = 0
        self.exclusive = 0  # shares that asked for the whole GPU's cores
        self.geometry: int | None = None
        self.instances: list[MigInstance] = []
        self.geometries = geometries

    def save(self) -> tuple[int, int, int, int, int | None, int]:
        return (self.used_memory, self.used_cores, self.shares, self.exclusive, self.geometry, len(self.instances))

    def restore(self, saved: tuple[int, int, int, int, int | None, int]) -> None:
        self.used_memory, self.used_cores, self.shares, self.exclusive, self.geometry, n = saved
        del self.instances[n:]

    @property
    def free_memory(self) -> int:
        return self.total_memory - self.used_memory

    def __repr__(self) -> str:
        return f"GpuState({self.index} {self.uuid} {self.mode} mem {self.used_memory}/{self.total_memory})"
