"""MIG facts per GPU model: profiles, placements and the rules that make a layout valid.

Placements are in memory slices ({start, size}), as NVML's nvmlGpuInstancePlacement_t. The tables hold
what real `nvidia-smi mig -lgip/-lgipp` and NVML printed (A30, A100, H100 80GB, H100 NVL, and the H200
read with benchmarks/real_nvml_check.py). Names are labels: the agent re-reads names and sizes from
NVML and keys on (profile index, slices, memory slices).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import cache, lru_cache

import msgspec

# NVML GPU-instance profile *index* constants (nvmlDeviceGetGpuInstanceProfileInfo's argument).
PROFILE_1_SLICE = 0x0
PROFILE_2_SLICE = 0x1
PROFILE_3_SLICE = 0x2
PROFILE_4_SLICE = 0x3
PROFILE_7_SLICE = 0x4
PROFILE_1_SLICE_REV1 = 0x7  # 1g + media extensions (+me)
PROFILE_2_SLICE_REV1 = 0x8  # 2g + media extensions (A30)
PROFILE_1_SLICE_REV2 = 0x9  # 1g with two memory slices
PROFILE_INDEX_COUNT = 0x12  # NVML_GPU_INSTANCE_PROFILE_COUNT

# Compute-instance profile index for a full-size CI inside a GI of g slices.
CI_PROFILE_FOR_SLICES = {1: 0x0, 2: 0x1, 3: 0x2, 4: 0x3, 7: 0x4}


class MigProfile(msgspec.Struct, frozen=True):
    name: str  # label, e.g. "2g.10gb"
    index: int  # NVML profile index constant
    profile_id: int  # NVML profile ID (info.id), used by every other call
    slices: int  # compute slices (g)
    size: int  # memory slices occupied (placement size)
    memory_mib: int  # NVML memorySizeMB
    multiprocessors: int
    starts: tuple[int, ...]  # allowed placement starts
    max_count: int  # instanceCount
    media: bool = False  # +me: takes the single media-engine set

    @property
    def ci_profile_index(self) -> int:
        return CI_PROFILE_FOR_SLICES[self.slices]


class MigModel(msgspec.Struct, frozen=True):
    key: str  # canonical family name
    names: tuple[str, ...]  # NVML product names (without "NVIDIA "), plus common aliases
    memory_mib: int  # whole-GPU memory as NVML reports it
    multiprocessors: int
    compute_slices: int
    memory_slices: int
    profiles: tuple[MigProfile, ...]
    pci_device_ids: tuple[int, ...] = ()

    def profile(self, name: str) -> MigProfile | None:
        return _profiles_by_name(self).get(name.strip().lower())

    def profile_by_id(self, profile_id: int) -> MigProfile | None:
        return next((p for p in self.profiles if p.profile_id == profile_id), None)

    def cores_percent(self, profile: MigProfile) -> int:
        """SM share in percent, rounded down so the instances of a full GPU never add up past 100."""
        return 100 * profile.slices // self.compute_slices


@cache
def _profiles_by_name(model: MigModel) -> dict[str, MigProfile]:
    return {p.name.lower(): p for p in model.profiles}


def _seven_slice(
    mem: tuple[int, int, int, int, int], sms: tuple[int, int, int, int, int, int], gb: tuple[int, ...]
) -> tuple[MigProfile, ...]:
    """The 7-slice table (A100, H100, H100 NVL, H200): memory of 1g, 1g.2x/2g, 3g/4g, 7g; SMs per profile."""
    m1, m2, m4, m7, _ = mem
    s1, s1x2, s2, s3, s4, s7 = sms
    g1, g2, g4, g7 = gb
    all7 = (0, 1, 2, 3, 4, 5, 6)
    return (
        MigProfile(f"1g.{g1}gb", PROFILE_1_SLICE, 19, 1, 1, m1, s1, all7, 7),
        MigProfile(f"1g.{g1}gb+me", PROFILE_1_SLICE_REV1, 20, 1, 1, m1, s1, all7, 1, media=True),
        MigProfile(f"1g.{g2}gb", PROFILE_1_SLICE_REV2, 15, 1, 2, m2, s1x2, (0, 2, 4, 6), 4),
        MigProfile(f"2g.{g2}gb", PROFILE_2_SLICE, 14, 2, 2, m2, s2, (0, 2, 4), 3),
        MigProfile(f"3g.{g4}gb", PROFILE_3_SLICE, 9, 3, 4, m4, s3, (0, 4), 2),
        MigProfile(f"4g.{g4}gb", PROFILE_4_SLICE, 5, 4, 4, m4, s4, (0,), 1),
        MigProfile(f"7g.{g7}gb", PROFILE_7_SLICE, 0, 7, 8, m7, s7, (0,), 1),
    )


MODELS: tuple[MigModel, ...] = (
    MigModel(
        key="A30-24GB",
        names=("A30", "A30-24GB", "A30 24GB"),
        memory_mib=24576,
        multiprocessors=56,
        compute_slices=4,
        memory_slices=4,
        pci_device_ids=(0x20B710DE,),
        profiles=(
            MigProfile("1g.6gb", PROFILE_1_SLICE, 14, 1, 1, 5952, 14, (0, 1, 2, 3), 4),
            MigProfile("1g.6gb+me", PROFILE_1_SLICE_REV1, 21, 1, 1, 5952, 14, (0, 1, 2, 3), 1, media=True),
            MigProfile("2g.12gb", PROFILE_2_SLICE, 5, 2, 2, 11968, 28, (0, 2), 2),
            MigProfile("2g.12gb+me", PROFILE_2_SLICE_REV1, 6, 2, 2, 11968, 28, (0, 2), 1, media=True),
            MigProfile("4g.24gb", PROFILE_4_SLICE, 0, 4, 4, 24064, 56, (0,), 1),
        ),
    ),
    MigModel(
        key="A100-40GB",
        names=("A100-SXM4-40GB", "A100-PCIE-40GB", "A100 40GB PCIe", "A100-40GB-PCIe", "A100-40GB"),
        memory_mib=40960,
        multiprocessors=108,
        compute_slices=7,
        memory_slices=8,
        pci_device_ids=(0x20B010DE, 0x20F110DE),
        profiles=_seven_slice((4864, 9856, 19968, 40192, 0), (14, 14, 28, 42, 56, 98), (5, 10, 20, 40)),
    ),
    MigModel(
        key="A100-80GB",
        names=("A100-SXM4-80GB", "A100 80GB PCIe", "A100-PCIE-80GB", "A100-80GB-PCIe", "A100-80GB"),
        memory_mib=81920,
        multiprocessors=108,
        compute_slices=7,
        memory_slices=8,
        pci_device_ids=(0x20B210DE, 0x20B510DE),
        profiles=_seven_slice((9728, 19968, 40192, 80896, 0), (14, 14, 28, 42, 56, 98), (10, 20, 40, 80)),
    ),
    MigModel(
        key="H100-80GB",
        names=("H100 80GB HBM3", "H100 PCIe", "H100-SXM5-80GB", "H100-PCIE-80GB", "H100 SXM5 80GB", "H100-80GB"),
        memory_mib=81559,
        multiprocessors=132,
        compute_slices=7,
        memory_slices=8,
        pci_device_ids=(0x233010DE, 0x233110DE),
        profiles=_seven_slice((9984, 20096, 40448, 81152, 0), (16, 26, 32, 60, 64, 132), (10, 20, 40, 80)),
    ),
    MigModel(
        key="H100-NVL-94GB",
        names=("H100 NVL", "H100-NVL", "H100 NVL 94GB", "H100-PCIE-94GB", "H100-SXM5-94GB", "H100-94GB"),
        memory_mib=95830,
        multiprocessors=132,
        compute_slices=7,
        memory_slices=8,
        pci_device_ids=(0x232110DE,),
        profiles=_seven_slice((11008, 22144, 47488, 95360, 0), (16, 26, 32, 60, 64, 132), (12, 24, 47, 94)),
    ),
    MigModel(
        key="H200-141GB",
        names=("H200", "H200 NVL", "H200-SXM5", "H200 SXM 141GB", "H200-141GB", "H200 141GB HBM3e"),
        memory_mib=143771,
        multiprocessors=132,
        compute_slices=7,
        memory_slices=8,
        pci_device_ids=(0x233510DE, 0x233B10DE),
        # Memory, SMs, IDs and placements as NVML reported them on an H200 (driver 580.159.04).
        profiles=_seven_slice((16384, 33280, 71424, 143360, 0), (16, 26, 32, 60, 64, 132), (18, 35, 71, 141)),
    ),
)


_PREFIX = re.compile(r"^(nvidia[\s\-_]+)+")


def normalize_model_name(name: str) -> str:
    """Lower-case, drop any leading "NVIDIA " / "NVIDIA-" (Volcano writes "NVIDIA-NVIDIA A100-..."),
    and collapse runs of whitespace."""
    text = " ".join(name.strip().lower().split())
    return _PREFIX.sub("", text)


_BY_NAME: dict[str, MigModel] = {}
for _model in MODELS:
    for _name in (_model.key, *_model.names):
        _BY_NAME[normalize_model_name(_name)] = _model


def find_model(name: str) -> MigModel | None:
    """The MIG model whose name matches exactly after normalisation ("H20" never matches "H200")."""
    return _BY_NAME.get(normalize_model_name(name))


def known_model_names() -> list[str]:
    return sorted({n for m in MODELS for n in m.names})


# --- layout rules -----------------------------------------------------------------------------

Placed = tuple[str, int]  # (profile name, start)


def layout_problem(model: MigModel, placed: Iterable[Placed]) -> str | None:
    """Why a set of instances cannot coexist on one GPU of this model, or None when it can."""
    used = [False] * model.memory_slices
    compute = 0
    counts: Counter[str] = Counter()
    media = 0
    for name, start in placed:
        prof = model.profile(name)
        if prof is None:
            return f"unknown profile {name!r} for {model.key}"
        if start not in prof.starts:
            return f"{prof.name} cannot start at memory slice {start} (allowed {list(prof.starts)})"
        for s in range(start, start + prof.size):
            if used[s]:
                return f"{prof.name}@{start} overlaps memory slice {s}"
            used[s] = True
        compute += prof.slices
        counts[prof.name] += 1
        if counts[prof.name] > prof.max_count:
            return f"more than {prof.max_count} x {prof.name}"
        media += prof.media
    if compute > model.compute_slices:
        return f"{compute} compute slices used, {model.compute_slices} available"
    if media > 1:
        return "more than one media-extension (+me) instance"
    return None


def place(model: MigModel, fixed: Sequence[Placed], extra: Sequence[str]) -> tuple[Placed, ...] | None:
    """A deterministic placement of `extra` profiles around the `fixed` instances, or None.

    Larger profiles are placed first, each at its lowest free allowed start, with backtracking;
    the result lists fixed instances first, then the new ones in placement order."""
    key = (model.key, tuple(sorted(fixed)), tuple(sorted(p.lower() for p in extra)))
    return _place_cached(model, key[1], key[2])


@lru_cache(maxsize=65536)
def _place_cached(model: MigModel, fixed: tuple[Placed, ...], extra: tuple[str, ...]) -> tuple[Placed, ...] | None:
    if layout_problem(model, fixed) is not None:
        return None
    profiles = []
    for name in extra:
        prof = model.profile(name)
        if prof is None:
            return None
        profiles.append(prof)
    profiles.sort(key=lambda p: (-p.size, -p.slices, p.name))
    used = [False] * model.memory_slices
    compute = 0
    counts: Counter[str] = Counter()
    media = 0
    for name, start in fixed:
        prof = model.profile(name)
        assert prof is not None
        for s in range(start, start + prof.size):
            used[s] = True
        compute += prof.slices
        counts[prof.name] += 1
        media += prof.media
    if compute + sum(p.slices for p in profiles) > model.compute_slices:
        return None
    if media + sum(p.media for p in profiles) > 1:
        return None
    for prof in profiles:
        counts[prof.name] += 1
        if counts[prof.name] > prof.max_count:
            return None
    out: list[Placed] = []

    def solve(i: int) -> bool:
        if i == len(profiles):
            return True
        prof = profiles[i]
        # Same profile twice: keep starts increasing so each multiset is tried once.
        lo = out[-1][1] + 1 if out and out[-1][0] == prof.name else -1
        for start in prof.starts:
            if start < lo or any(used[s] for s in range(start, start + prof.size)):
                continue
            for s in range(start, start + prof.size):
                used[s] = True
            out.append((prof.name, start))
            if solve(i + 1):
                return True
            out.pop()
            for s in range(start, start + prof.size):
                used[s] = False
        return False

    if not solve(0):
        return None
    return tuple(fixed) + tuple(out)


# Whole-GPU memory (MiB, as NVML reports) of common GPUs without MIG, for simulations.
OTHER_GPU_MEMORY: dict[str, int] = {
    normalize_model_name(k): v
    for k, v in {
        "Tesla T4": 15360,
        "Tesla V100-SXM2-16GB": 16384,
        "Tesla V100-SXM2-32GB": 32768,
        "Tesla P100-PCIE-16GB": 16384,
        "A10": 23028,
        "L4": 23034,
        "L40S": 46068,
    }.items()
}


def gpu_memory_mib(model_name: str) -> int | None:
    """Whole-GPU memory of a known model, or None."""
    model = find_model(model_name)
    if model is not None:
        return model.memory_mib
    return OTHER_GPU_MEMORY.get(normalize_model_name(model_name))
