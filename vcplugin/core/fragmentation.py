"""GPU fragmentation as the FGD paper defines it (Weng et al., ATC'23), on primitive numbers.

A node's free GPU capacity is fragmented for a typical pod when that pod cannot use it: all of it if
the pod cannot fit the node at all, else the free parts of GPUs too small for the pod's per-GPU
share. The node's fragmentation is the expectation over the workload's typical pods. Shares are in
milli-GPUs (1000 = one whole GPU)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache

import msgspec

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
