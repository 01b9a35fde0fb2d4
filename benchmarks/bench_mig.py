"""MIG packing: how many pods of a stream fit before the first rejection, and how much GPU memory is
stranded then, for three ways of choosing MIG layouts on the same GPUs:

- the design documents' first-fit (HAMi's legacy algorithm): a GPU's template is chosen when it is
  empty, as the first geometry in ConfigMap order with an entry holding the request, and stays locked
  while any instance is in use; requests take the first free slot of the template that holds them;
- ours (the core): first fit over the geometries that keep the instances in use where they are,
  smallest instance that fits, placements that keep the most geometries reachable;
- the best possible (small clusters): the longest prefix of the stream that some set of valid
  layouts can hold at once, by exhaustive search over the maximal layouts (19 on an A100).

Requests come from the Alibaba openb default trace: GPU pods in a seeded shuffle, `gpu_milli`
mapped to memory (milli/1000 of the GPU's memory); multi-GPU pods ask for N whole-GPU instances.

    python benchmarks/bench_mig.py [--gpus 8] [--seeds 10] [--model "NVIDIA A100-SXM4-80GB"]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vcplugin.core.cluster import make_gpu  # noqa: E402
from vcplugin.core.config import Geometry, default_config  # noqa: E402
from vcplugin.core.node import NodeState  # noqa: E402
from vcplugin.core.request import ContainerRequest, PodRequest  # noqa: E402
from vcplugin.core.types import Assignment  # noqa: E402
from vcplugin.simulate import trace  # noqa: E402

TRACES = ROOT.parent / "shared" / "traces" / "alibaba-openb"


def stream(model_memory: int, seed: int, n: int, whole: bool) -> list[tuple[int, int]]:
    """(instances, MiB each) per GPU pod of the trace, shuffled: the GPU-sharing pods (a mixed stream
    of sizes), and with `whole` also the pods that take whole GPUs."""
    pods = [
        p
        for p in trace.load_pods(TRACES / "openb_pod_list_default.csv")
        if p.gpus and (whole or (p.gpus == 1 and p.milli < 1000))
    ]
    random.Random(seed).shuffle(pods)
    out = []
    for p in pods[:n]:
        if p.gpus == 1 and p.milli < 1000:
            out.append((1, max(1, p.milli * model_memory // 1000)))
        else:
            out.append((p.gpus, model_memory))
    return out


class LegacyFirstFit:
    """The design documents' first-fit, on GPUs of one model."""

    def __init__(self, geometries: tuple[Geometry, ...], n_gpus: int):
        self.geometries = geometries
        self.template: list[int | None] = [None] * n_gpus
        self.used: list[list[bool]] = [[] for _ in range(n_gpus)]

    def place(self, count: int, mem: int) -> bool:
        taken: list[tuple[int, int]] = []
        for _ in range(count):
            for g in range(len(self.template)):
                slot = self._slot(g, mem)
                if slot is not None:
                    self.used[g][slot] = True
                    taken.append((g, slot))
                    break
            else:
                for g, s in taken:
                    self.used[g][s] = False
                    if not any(self.used[g]):
                        self.template[g], self.used[g] = None, []
                return False
        return True

    def _slot(self, g: int, mem: int) -> int | None:
        if self.template[g] is None:  # empty: the first geometry with an entry that holds the request
            for t, geom in enumerate(self.geometries):
                if any(s.memory >= mem for s in geom.slots):
                    self.template[g], self.used[g] = t, [False] * len(geom.slots)
                    break
            else:
                return None
        geom = self.geometries[self.template[g]]  # type: ignore[index]
        for i, s in enumerate(geom.slots):  # first free slot, in config order
            if not self.used[g][i] and s.memory >= mem:
                return i
        if not any(self.used[g]):
            self.template[g], self.used[g] = None, []
        return None

    def used_memory(self) -> int:
        total = 0
        for g, t in enumerate(self.template):
            if t is not None:
                total += sum(s.memory for s, u in zip(self.geometries[t].slots, self.used[g], strict=True) if u)
        return total


def ours(model: str, model_memory: int, n_gpus: int, reqs: list[tuple[int, int]]) -> tuple[int, int]:
    cfg = default_config()
    s = cfg.node("bench")
    gpus = [make_gpu(f"GPU-{i}", i, model, "mig", model_memory, cfg, s) for i in range(n_gpus)]
    node = NodeState("bench", gpus)
    for k, (count, mem) in enumerate(reqs):
        req = PodRequest(f"uid-{k}", "bench", f"p{k}", (ContainerRequest("main", False, count, mem, 0, 0),), "mig")
        if not isinstance(node.allocate(req, cfg), Assignment):
            return k, sum(g.used_memory for g in gpus)
    return len(reqs), sum(g.used_memory for g in gpus)


def legacy(geometries: tuple[Geometry, ...], n_gpus: int, reqs: list[tuple[int, int]]) -> tuple[int, int]:
    ff = LegacyFirstFit(geometries, n_gpus)
    for k, (count, mem) in enumerate(reqs):
        if not ff.place(count, mem):
            return k, ff.used_memory()
    return len(reqs), ff.used_memory()


def best(geometries: tuple[Geometry, ...], n_gpus: int, reqs: list[tuple[int, int]]) -> tuple[int, int]:
    """The longest prefix that fits at once. A request is served by any instance of at least its memory,
    so requests and instances reduce to memory classes; one GPU's best contribution is one of the
    layouts (geometries) with its instances matched largest-first."""
    classes = sorted({s.memory for g in geometries for s in g.slots})
    layouts = sorted({tuple(sum(1 for s in g.slots if s.memory == c) for c in classes) for g in geometries})

    def need(prefix: list[tuple[int, int]]) -> tuple[int, ...] | None:
        counts = [0] * len(classes)
        for count, mem in prefix:
            c = next((i for i, m in enumerate(classes) if m >= mem), None)
            if c is None:
                return None
            counts[c] += count
        return tuple(counts)

    @cache
    def fits(gpus: int, counts: tuple[int, ...]) -> bool:
        if not any(counts):
            return True
        if gpus == 0:
            return False
        for lay in layouts:
            rest = list(counts)
            have = list(lay)
            for c in range(len(classes) - 1, -1, -1):  # biggest requests first, onto the smallest fit
                for i in range(c, len(classes)):
                    use = min(rest[c], have[i])
                    rest[c] -= use
                    have[i] -= use
            if tuple(rest) != counts and fits(gpus - 1, tuple(rest)):
                return True
        return False

    lo, hi = 0, len(reqs)
    while lo < hi:  # the largest k whose prefix fits
        mid = (lo + hi + 1) // 2
        n = need(reqs[:mid])
        if n is not None and fits(n_gpus, n):
            lo = mid
        else:
            hi = mid - 1
    n = need(reqs[:lo]) or ()
    used = sum(cnt * classes[i] for i, cnt in enumerate(n))
    return lo, used


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--model", default="NVIDIA A100-SXM4-80GB")
    ap.add_argument("--whole", action="store_true", help="include the pods that take whole GPUs")
    args = ap.parse_args()
    cfg = default_config()
    from vcplugin.core.migtables import find_model

    model = find_model(args.model)
    assert model is not None
    geoms = cfg.geometries_for(model)
    # The design documents' list: [1g x7], [2g x3, 1g x1], [3g x2], [7g x1], in that order.
    design = (
        geoms[0],
        geoms[1],
        *(g for g in geoms if len({s.profile.name for s in g.slots}) == 1 and g is not geoms[0]),
    )
    mem = model.memory_mib
    rows: dict[str, list[tuple[int, float]]] = {"first-fit (design documents)": [], "ours": [], "best possible": []}
    for seed in range(42, 42 + args.seeds):
        reqs = stream(max(s.memory for g in geoms for s in g.slots), seed, 400, args.whole)
        total = args.gpus * mem
        for name, (k, used) in (
            ("first-fit (design documents)", legacy(design, args.gpus, reqs)),
            ("ours", ours(args.model, mem, args.gpus, reqs)),
            ("best possible", best(geoms, args.gpus, reqs)),
        ):
            rows[name].append((k, 100 * (total - used) / total))
    print(f"{args.gpus} x {args.model} in mig mode, {args.seeds} seeds of the openb default trace's GPU pods")
    print(f"{'layout choice':30s} {'pods before 1st rejection':>26s} {'memory stranded then':>22s}")
    for name, vals in rows.items():
        ks = [k for k, _ in vals]
        st = [s for _, s in vals]
        print(
            f"{name:30s} {statistics.mean(ks):18.1f} ± {statistics.pstdev(ks):4.1f} "
            f"{statistics.mean(st):16.1f} % ± {statistics.pstdev(st):3.1f}"
        )


if __name__ == "__main__":
    main()
