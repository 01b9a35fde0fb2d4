"""GPU fragmentation as the FGD paper defines it (Weng et al., ATC'23), on primitive numbers.

A node's free GPU capacity is fragmented for a typical pod when that pod cannot use it: all of it if
the pod cannot fit the node at all, else the free parts of GPUs too small for the pod's per-GPU
share. The node's fragmentation is the expectation over the workload's typical pods. Shares are in
milli-GPUs (1000 = one whole GPU)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

import msgspec

from . import names

if TYPE_CHECKING:
    from .node import NodeState
    from .types import Assignment, GpuState

WHOLE = 1000


class TypicalPod(msgspec.Struct, frozen=True):
    share: int  # per-GPU share in milli-GPUs (1000 for whole GPUs)
    gpus: int  # GPUs it takes (1 for a sharing pod)
    cpu_milli: int
    weight: float  # probability in the workload


class Workload(msgspec.Struct, frozen=True):
    pods: tuple[TypicalPod, ...]

    @classmethod
    def from_shapes(cls, shapes: Iterable[tuple[int, int, int]], coverage: float = 0.95) -> Workload:
        """The most frequent (share, gpus, cpu) shapes that together cover `coverage` of the GPU pods,
        with their frequencies renormalised (FGD's "typical pods")."""
        counts = Counter(s for s in shapes if s[1] > 0)
        total = sum(counts.values())
        if not total:
            return cls(())
        chosen: list[tuple[tuple[int, int, int], int]] = []
        covered = 0
        for shape, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            chosen.append((shape, n))
            covered += n
            if covered >= coverage * total:
                break
        return cls(tuple(TypicalPod(s, g, c, n / covered) for (s, g, c), n in chosen))


def node_fragmentation(free: Sequence[int], cpu_free: int, workload: Workload) -> float:
    """Expected free GPU capacity (milli-GPUs) of the node that a typical pod cannot use."""
    return _fragmentation(tuple(sorted(free)), _cpu_mask(cpu_free, workload), workload)


def _cpu_mask(cpu_free: int, workload: Workload) -> int:
    mask = 0
    for i, m in enumerate(workload.pods):
        if m.cpu_milli <= cpu_free:
            mask |= 1 << i
    return mask


@lru_cache(maxsize=262144)
def _fragmentation(free: tuple[int, ...], cpu_mask: int, workload: Workload) -> float:
    total = sum(free)
    if total == 0:
        return 0.0
    whole = sum(1 for x in free if x >= WHOLE)
    frag = 0.0
    for i, m in enumerate(workload.pods):
        if not cpu_mask >> i & 1:
            frag += m.weight * total
        elif m.share < WHOLE:
            fits = any(x >= m.share for x in free)
            frag += m.weight * (sum(x for x in free if x < m.share) if fits else total)
        else:
            frag += m.weight * (sum(x for x in free if x < WHOLE) if whole >= m.gpus else total)
    return frag


# --- frag-pack: fragmentation growth, CPU starvation and packing in one score ----------------------


class FragPack(msgspec.Struct, frozen=True):
    """Our fragmentation-aware policy. Score of a placement (higher is better), in milli-GPUs:

    - the growth of FGD's expected fragmentation of the node;
    - `beta` x the growth of the node's *starved* GPU capacity: free GPU share that the CPU left on the
      node cannot feed at the workload's typical CPU per GPU (CPU-only and CPU-heavy pods strand GPUs
      that FGD's fragmentation only sees once a threshold is crossed);
    - `margin` x the fraction of the node's GPU capacity still free afterwards (pack nodes), the same
      margin within which the fullest GPU of a node is preferred to the least fragmenting one."""

    workload: Workload
    margin: float = 400.0
    beta: float = 2.0

    @property
    def cpu_per_share(self) -> float:
        cpu = sum(m.weight * m.cpu_milli for m in self.workload.pods)
        gpu = sum(m.weight * m.share * m.gpus for m in self.workload.pods)
        return cpu / gpu if gpu else 0.0

    def starved(self, gpu_free: int, cpu_free: int) -> float:
        r = self.cpu_per_share
        if r <= 0:
            return 0.0
        return max(0.0, r * gpu_free - cpu_free) / r

    def score(self, free: Sequence[int], cpu_free: int, take: dict[int, int], cpu: int, gpu_cap: int) -> float:
        """Score of taking `take` (GPU index -> milli) and `cpu` from a node with these free shares."""
        after = list(free)
        for i, t in take.items():
            after[i] -= t
        return self.change(free, cpu_free, after, cpu_free - cpu, gpu_cap)

    def change(self, free: Sequence[int], cpu_free: int, after: Sequence[int], cpu_after: int, gpu_cap: int) -> float:
        """Score of a node going from (free, cpu_free) to (after, cpu_after)."""
        d = node_fragmentation(after, cpu_after, self.workload) - node_fragmentation(free, cpu_free, self.workload)
        ds = self.starved(sum(after), cpu_after) - self.starved(sum(free), cpu_free)
        packed = sum(after) / gpu_cap if gpu_cap else 0.0
        return -d - self.beta * ds - self.margin * packed

    def gpu_order(self, free: Sequence[int], cpu_free: int, share: int, candidates: Sequence[int]) -> list[int]:
        """GPUs for one share: those whose fragmentation growth is within `margin` of the least, fullest
        first; then the rest by growth."""
        growth = {}
        for i in candidates:
            after = list(free)
            after[i] -= share
            growth[i] = node_fragmentation(after, cpu_free, self.workload)
        if not growth:
            return []
        low = min(growth.values())
        return sorted(
            candidates,
            key=lambda i: (growth[i] > low + self.margin, free[i] if growth[i] <= low + self.margin else growth[i], i),
        )


# --- the core's GPUs as shares ---------------------------------------------------------------------

UNTRACKED_CPU = 1 << 40  # a node whose CPU the caller does not track never starves


def gpu_free_share(g: GpuState) -> int:
    """A GPU's free share in milli-GPUs. HAMi-core: the scarcer of free cores and memory, 0 when no
    share is left. MIG: the largest instance any usable geometry could still carve around the
    instances in use (a MIG GPU's capacity is only as good as its largest free slot)."""
    if not g.healthy or not g.total_memory:
        return 0
    if g.mode == names.MODE_MIG:
        from .mig import free_slots

        largest = max((s.memory for geo in g.geometries for s, _ in (free_slots(g, geo) or ())), default=0)
        return min(WHOLE, largest * WHOLE // g.total_memory)
    if g.shares >= g.split_count or g.exclusive or not g.total_cores:
        return 0
    cores = (g.total_cores - g.used_cores) * WHOLE // g.total_cores
    memory = g.free_memory * WHOLE // g.total_memory
    return max(0, min(cores, memory))


def grant_share(g: GpuState, memory: int, cores: int) -> int:
    """The share of a GPU a grant of this memory and cores takes, in milli-GPUs."""
    by_memory = -(-memory * WHOLE // g.total_memory) if g.total_memory else WHOLE
    by_cores = cores * WHOLE // g.total_cores if g.total_cores else 0
    return min(WHOLE, max(by_memory, by_cores))


def placement_score(node: NodeState, assignment: Assignment, scorer: FragPack, cpu: int) -> float:
    """FragPack's score of an assignment on a node: the node before, and after the grants applied
    through the sharing modules themselves (exact for MIG layouts), then restored."""
    from .node import SHARING

    free = [gpu_free_share(g) for g in node.gpus]
    saved = [g.save() for g in node.gpus]
    try:
        for d in assignment.devices():
            gpu = node.gpu(d.uuid)
            if gpu is not None:
                SHARING[d.mode].add(gpu, d, "score", "score")
        after = [gpu_free_share(g) for g in node.gpus]
    finally:
        for g, s in zip(node.gpus, saved, strict=True):
            g.restore(s)
    tracked = bool(node.cpu_capacity)
    cpu_free = node.cpu_capacity - node.cpu_used if tracked else UNTRACKED_CPU
    return scorer.change(free, cpu_free, after, cpu_free - (cpu if tracked else 0), WHOLE * len(node.gpus))
