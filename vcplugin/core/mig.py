"""MIG sharing: instances carved from a GPU by the first geometry (in config order) that fits.

A GPU's state is its geometry index and the instances in use, each at a fixed placement. Free
instances are virtual: the geometry's layout around the in-use ones. A geometry is usable on a GPU
when it can keep every in-use instance where it is, so templates switch without moving anything."""

from __future__ import annotations

from collections import Counter

from . import names
from .config import Geometry, GeometrySlot
from .migtables import place
from .request import ContainerRequest
from .types import DeviceGrant, GpuState, MigInstance


def needed_memory(gpu: GpuState, req: ContainerRequest) -> int:
    """MiB an instance must hold. Percentages (and no memory at all) are of the largest instance the
    GPU can hold, so 100 % is the whole GPU, as in hami-core mode."""
    if req.memory:
        return req.memory
    whole = max((s.memory for g in gpu.geometries for s in g.slots), default=gpu.total_memory)
    if req.memory_percent:
        return -(-whole * req.memory_percent // 100)
    return whole


def _slot_for(geom: Geometry, profile: str) -> GeometrySlot:
    return next(s for s in geom.slots if s.profile.name == profile)


# (geometry serial, in-use placements) -> free slots; the state space is small (hundreds of layouts).
_FREE_CACHE: dict[tuple[int, tuple[tuple[str, int], ...]], tuple[tuple[GeometrySlot, int], ...] | None] = {}


def free_slots(gpu: GpuState, geom: Geometry) -> tuple[tuple[GeometrySlot, int], ...] | None:
    """The geometry's free instances (slot, start) on this GPU, or None when the geometry cannot keep
    the in-use instances where they are."""
    fixed = tuple(sorted((i.profile, i.start) for i in gpu.instances))
    key = (geom.serial, fixed)
    try:
        return _FREE_CACHE[key]
    except KeyError:
        pass
    result = _free_slots(gpu, geom, fixed)
    if len(_FREE_CACHE) > 200_000:
        _FREE_CACHE.clear()
    _FREE_CACHE[key] = result
    return result


def _free_slots(
    gpu: GpuState, geom: Geometry, fixed: tuple[tuple[str, int], ...]
) -> tuple[tuple[GeometrySlot, int], ...] | None:
    model = gpu.mig_model
    assert model is not None
    if not gpu.instances:
        return tuple((_slot_for(geom, p), start) for p, start in geom.layout)
    in_use = Counter(i.profile for i in gpu.instances)
    wanted = Counter(s.profile.name for s in geom.slots)
    if any(n > wanted[p] for p, n in in_use.items()):
        return None
    extra = list((wanted - in_use).elements())
    placed = place(model, fixed, extra)
    if placed is None:
        return None
    return tuple((_slot_for(geom, p), start) for p, start in placed[len(fixed) :])


def current_geometry(gpu: GpuState) -> int | None:
    """The geometry a GPU is in: the first, in config order, that keeps all its instances in use where
    they are (so it depends only on the instances, not on the order they were added)."""
    if not gpu.instances or gpu.mig_model is None:
        return None
    return next((g.index for g in gpu.geometries if free_slots(gpu, g) is not None), None)


def layout(gpu: GpuState) -> list[tuple[str, int, int, MigInstance | None]]:
    """The GPU's whole current layout: (profile, start, size, instance or None when free)."""
    out: list[tuple[str, int, int, MigInstance | None]] = [(i.profile, i.start, i.size, i) for i in gpu.instances]
    if gpu.geometry is not None and gpu.geometry < len(gpu.geometries):
        free = free_slots(gpu, gpu.geometries[gpu.geometry]) or ()
        out.extend((s.profile.name, start, s.profile.size, None) for s, start in free)
    return sorted(out, key=lambda t: t[1])


def _fitting(gpu: GpuState, geom: Geometry, mem: int) -> list[tuple[GeometrySlot, int]]:
    if geom.max_memory < mem:
        return []
    free = free_slots(gpu, geom)
    if not free:
        return []
    # Best fit: the smallest instance that holds the request, then fewest compute slices; among equal
    # instances the placement that keeps the most geometries reachable (a 3g at 4 leaves room for
    # 1g and 2g instances, a 3g at 0 strands a compute slice), then the lowest start.
    fit = [(s, start) for s, start in free if s.memory >= mem]
    if len(fit) > 1:
        fit.sort(key=lambda t: (t[0].memory, t[0].profile.slices, -_reachable(gpu, t[0].profile.name, t[1]), t[1]))
    return fit


def _reachable(gpu: GpuState, profile: str, start: int) -> int:
    """How many of the GPU's geometries could still hold its instances plus this one."""
    fixed = tuple(sorted([*((i.profile, i.start) for i in gpu.instances), (profile, start)]))
    key = (tuple(g.serial for g in gpu.geometries), fixed)
    hit = _REACH_CACHE.get(key)
    if hit is not None:
        return hit
    model = gpu.mig_model
    assert model is not None
    count = 0
    for geom in gpu.geometries:
        in_use = Counter(p for p, _ in fixed)
        wanted = Counter(s.profile.name for s in geom.slots)
        if any(n > wanted[p] for p, n in in_use.items()):
            continue
        if place(model, fixed, list((wanted - in_use).elements())) is not None:
            count += 1
    if len(_REACH_CACHE) > 100_000:
        _REACH_CACHE.clear()
    _REACH_CACHE[key] = count
    return count


_REACH_CACHE: dict[tuple[tuple[int, ...], tuple[tuple[str, int], ...]], int] = {}


class MigSharing:
    mode = names.MODE_MIG

    def allocate(
        self, gpus: list[GpuState], req: ContainerRequest, pod_uid: str, pod_key: str
    ) -> list[DeviceGrant] | str:
        # First: one GPU whose first fitting geometry holds all N instances.
        for gpu in gpus:
            mem = needed_memory(gpu, req)
            for geom in gpu.geometries:
                fit = _fitting(gpu, geom, mem)
                if len(fit) >= req.count:
                    return self._take(gpu, geom, fit[: req.count], pod_uid, pod_key)
        # Else: spread the N instances over several GPUs, each by its first geometry with any fit.
        grants: list[DeviceGrant] = []
        touched: list[tuple[GpuState, tuple[int, int, int, int, int | None, int]]] = []
        for gpu in gpus:
            mem = needed_memory(gpu, req)
            for geom in gpu.geometries:
                fit = _fitting(gpu, geom, mem)
                if fit:
                    touched.append((gpu, gpu.save()))
                    grants += self._take(gpu, geom, fit[: req.count - len(grants)], pod_uid, pod_key)
                    break
            if len(grants) == req.count:
                return grants
        for gpu, saved in reversed(touched):
            gpu.restore(saved)
        if not gpus:
            return "no MIG GPU"
        mem = needed_memory(gpus[0], req) if req.memory else 0
        what = f"{mem} MiB" if mem else "the requested share"
        return (
            f"{len(grants)} of {req.count} MIG instances of {what} fit: no geometry keeps the instances "
            f"in use and adds enough free ones"
        )

    def _take(
        self, gpu: GpuState, geom: Geometry, chosen: list[tuple[GeometrySlot, int]], pod_uid: str, pod_key: str
    ) -> list[DeviceGrant]:
        grants = []
        for slot, start in chosen:
            grant = DeviceGrant(
                gpu.uuid,
                gpu.index,
                self.mode,
                slot.memory,
                slot.cores,
                profile=slot.profile.name,
                placement=(start, slot.profile.size),
                geometry=geom.index,
            )
            self.add(gpu, grant, pod_uid, pod_key)
            grants.append(grant)
        return grants

    def add(self, gpu: GpuState, grant: DeviceGrant, pod_uid: str, pod_key: str) -> None:
        assert grant.profile is not None and grant.placement is not None
        start, size = grant.placement
        gpu.instances.append(MigInstance(grant.profile, start, size, grant.memory, grant.cores, pod_uid, pod_key))
        gpu.used_memory += grant.memory
        gpu.used_cores += grant.cores
        gpu.shares += 1
        gpu.geometry = current_geometry(gpu)

    def remove(self, gpu: GpuState, grant: DeviceGrant, pod_uid: str) -> None:
        assert grant.placement is not None
        start = grant.placement[0]
        for i, inst in enumerate(gpu.instances):
            if inst.start == start and inst.pod_uid == pod_uid and inst.profile == grant.profile:
                del gpu.instances[i]
                gpu.used_memory -= grant.memory
                gpu.used_cores -= grant.cores
                gpu.shares -= 1
                break
        gpu.geometry = current_geometry(gpu)  # None when empty: free to take any geometry again

    def never_fits(self, gpus: list[GpuState], req: ContainerRequest) -> str | None:
        usable = [g for g in gpus if g.geometries]
        if not usable:
            models = sorted({g.model for g in gpus})
            return f"no MIG geometries configured for {', '.join(models)}" if gpus else "no MIG GPU"
        capacity = 0
        for g in usable:
            mem = needed_memory(g, req)
            capacity += max((sum(1 for s in geo.slots if s.memory >= mem) for geo in g.geometries), default=0)
        if capacity < req.count:
            mem = needed_memory(usable[0], req)
            biggest = max(s.memory for g in usable for geo in g.geometries for s in geo.slots)
            return (
                f"{req.count} MIG instances of {mem} MiB asked; empty, these GPUs hold {capacity} "
                f"(largest instance {biggest} MiB)"
            )
        return None
