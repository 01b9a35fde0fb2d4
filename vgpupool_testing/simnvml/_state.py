"""Plain state of the simulated GPUs: GPUs, GPU instances (GIs), compute instances (CIs), processes.

No locking and no NVML conventions here; SimNvml owns both. MIG facts come from vcplugin.core.migtables.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vcplugin.core.migtables import CI_PROFILE_FOR_SLICES, MigModel, MigProfile

NVML_MIG_DISABLE = 0
NVML_MIG_ENABLE = 1


@dataclass(frozen=True)
class CiProfile:
    """A compute-instance profile allowed inside one GI profile (reference/mig.md §1.6).

    The CI profile index is also its ID (nvidia-smi prints the same number)."""

    index: int
    slices: int  # compute slices (c)
    max_count: int

    def starts(self, gi_slices: int) -> tuple[int, ...]:
        # CIs sit on compute slices aligned to their size inside the GI (3c in a 7g: 0 and 3).
        return tuple(range(0, gi_slices - self.slices + 1, self.slices))


# c-slices -> CI profile index; the full-size CI of a g-slice GI uses CI_PROFILE_FOR_SLICES[g].
_CI_INDEX = {1: 0x0, 2: 0x1, 3: 0x2, 4: 0x3, 7: 0x4}
CI_PROFILE_1_SLICE_REV1 = 0x7  # same size as 1c, valid only inside the 1g double-memory GI

# Smaller CIs allowed per GI size (mig-parted known_configs, go-nvml A100 mock): 4g has no 3c.
_CI_SLICES_PER_GI = {1: (1,), 2: (1, 2), 3: (1, 2, 3), 4: (1, 2, 4), 7: (1, 2, 3, 4, 7)}


def ci_profiles(gi: MigProfile) -> tuple[CiProfile, ...]:
    g = gi.slices
    out = [CiProfile(_CI_INDEX[c], c, g // c) for c in _CI_SLICES_PER_GI[g]]
    assert out[-1].index == CI_PROFILE_FOR_SLICES[g]
    if g == 1 and gi.size == 2:
        out.append(CiProfile(CI_PROFILE_1_SLICE_REV1, 1, 1))
    return tuple(out)


@dataclass(eq=False)
class Process:
    pid: int
    used_mib: int
    gi_id: int | None = None  # None: on the whole GPU (non-MIG GPU, or a holder outside any MIG device)
    ci_id: int | None = None


@dataclass(eq=False)
class ComputeInstance:
    gi: GpuInstance
    id: int
    profile: CiProfile
    start: int
    uuid: str  # "MIG-<uuid4>", new on every creation
    mig_index: int  # index for nvmlDeviceGetMigDeviceHandleByIndex
    handle: int = 0  # address behind the c_nvmlComputeInstance_t handle
    dev_handle: int = 0  # address behind the MIG device's c_nvmlDevice_t handle
    alive: bool = True

    @property
    def label(self) -> str:
        """Name part as nvidia-smi prints it: "3g.20gb" for a full-size CI, "1c.3g.20gb" for a smaller one."""
        gi_name = self.gi.profile.name
        return gi_name if self.profile.slices == self.gi.profile.slices else f"{self.profile.slices}c.{gi_name}"


@dataclass(eq=False)
class MigDevice:
    """What a MIG device handle points at: one per CI, alive as long as the CI."""

    ci: ComputeInstance

    @property
    def alive(self) -> bool:
        return self.ci.alive


@dataclass(eq=False)
class GpuInstance:
    gpu: Gpu
    id: int
    profile: MigProfile
    start: int  # first memory slice
    cis: dict[int, ComputeInstance] = field(default_factory=dict)
    handle: int = 0
    alive: bool = True

    def ci_slices_used(self) -> list[bool]:
        used = [False] * self.profile.slices
        for ci in self.cis.values():
            for s in range(ci.start, ci.start + ci.profile.slices):
                used[s] = True
        return used


@dataclass(eq=False)
class Gpu:
    index: int
    name: str  # NVML product name, e.g. "NVIDIA A100-PCIE-40GB"
    uuid: str
    model: MigModel | None  # None: not MIG-capable
    memory_mib: int
    pci_device_id: int
    minor: int
    bus: int
    mig_current: int = NVML_MIG_DISABLE
    mig_pending: int = NVML_MIG_DISABLE
    hidden: tuple[str | int, ...] = ()  # profiles this driver does not offer (names or profile IDs)
    gis: dict[int, GpuInstance] = field(default_factory=dict)
    processes: dict[int, Process] = field(default_factory=dict)
    holders: set[str] = field(default_factory=set)  # non-CUDA clients that keep the GPU busy
    handle: int = 0
    alive: bool = True  # physical GPUs never go away

    @property
    def bus_id(self) -> str:
        return f"00000000:{self.bus:02X}:00.0"

    @property
    def mig_enabled(self) -> bool:
        return self.model is not None and self.mig_current == NVML_MIG_ENABLE

    def layout(self) -> list[tuple[str, int]]:
        """Current GIs as (profile name, start), the form migtables.layout_problem/place take."""
        return sorted(((gi.profile.name, gi.start) for gi in self.gis.values()), key=lambda p: (p[1], p[0]))

    def all_cis(self) -> list[ComputeInstance]:
        return [ci for gi in self.gis.values() for ci in gi.cis.values()]

    @property
    def busy(self) -> bool:
        return bool(self.processes or self.holders)
