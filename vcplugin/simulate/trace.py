"""Replay a production trace (Alibaba's openb format) at cluster scale: `vcplugin simulate --trace`.

The trace's pods ask for `num_gpu` GPUs with a per-GPU share `gpu_milli` (1000 = a whole GPU); as
HAMi-core requests that is `gpumem-percentage` and `gpucores` both `gpu_milli / 10`, so a GPU's
state is one number: its free share. The replay keeps that compact state per node (never a full
NodeState per pod: 1,213 nodes x 10,000 pods would take hours) and scores with the core's own
formulas (`score.weighted_utilisation`, `fragmentation.node_fragmentation`). Scores are cached per
node and pod shape and dropped when the node changes, so each pod costs a pass over dictionaries.

Methodology of the FGD paper: shuffle the pods with a seed, inflate the workload to a fraction of
capacity by sampling with replacement, no departures, and record the GPU allocation ratio against the
arrived GPU request."""

from __future__ import annotations

import abc
import csv
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from ..core import names
from ..core.config import DeviceConfig
from ..core.fragmentation import WHOLE, FragPack, Workload, node_fragmentation
from ..core.score import policy_score, weighted_utilisation


class TraceError(ValueError):
    pass


class TraceNode:
    __slots__ = (
        "name",
        "model",
        "cpu_cap",
        "mem_cap",
        "cpu_free",
        "mem_free",
        "free",
        "shares",
        "cache",
        "frag",
        "gpu_cap",
    )

    def __init__(self, name: str, model: str, cpu: int, mem: int, gpus: int):
        self.name, self.model = name, model
        self.cpu_cap = self.cpu_free = cpu
        self.mem_cap = self.mem_free = mem
        self.free = [WHOLE] * gpus  # free share per GPU, milli-GPUs
        self.shares = [0] * gpus
        self.gpu_cap = WHOLE * gpus
        self.cache: dict[tuple[int, int, int, int], tuple[float, tuple[int, ...]] | None] = {}
        self.frag = 0.0


class TracePod(msgspec.Struct, frozen=True):
    name: str
    cpu: int  # milli-cores
    mem: int  # MiB
    gpus: int
    milli: int  # per-GPU share
    models: frozenset[str] | None
    created: int = 0
    deleted: int = 0

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.cpu, self.mem, self.gpus, self.milli)

    @property
    def gpu_request(self) -> int:
        return self.gpus * self.milli


def _rows(path: Path, required: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    try:
        f = path.open(newline="")
    except OSError as exc:
        raise TraceError(f"{path}: cannot read: {exc.strerror}") from None
    with f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise TraceError(f"{path}:1: missing column(s) {', '.join(missing)}")
        return [(i + 2, row) for i, row in enumerate(reader)]


def _int(path: Path, line: int, row: dict[str, str], col: str, default: int | None = None) -> int:
    raw = (row.get(col) or "").strip()
    if not raw and default is not None:
        return default
    try:
        return int(float(raw))
    except ValueError:
        raise TraceError(f"{path}:{line}: column {col}: {raw!r} is not a number") from None


def load_nodes(path: str | Path) -> list[TraceNode]:
    p = Path(path)
    nodes = []
    for line, row in _rows(p, ("sn", "cpu_milli", "memory_mib", "gpu", "model")):
        gpus = _int(p, line, row, "gpu")
        if gpus < 0:
            raise TraceError(f"{p}:{line}: column gpu: negative")
        nodes.append(
            TraceNode(
                row["sn"], row["model"].strip(), _int(p, line, row, "cpu_milli"), _int(p, line, row, "memory_mib"), gpus
            )
        )
    if not nodes:
        raise TraceError(f"{p}: no nodes")
    return nodes


def load_pods(path: str | Path) -> list[TracePod]:
    p = Path(path)
    pods = []
    cols = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli", "gpu_spec")
    for line, row in _rows(p, cols):
        gpus, milli = _int(p, line, row, "num_gpu"), _int(p, line, row, "gpu_milli")
        if gpus < 0 or not 0 <= milli <= WHOLE:
            raise TraceError(f"{p}:{line}: num_gpu {gpus} / gpu_milli {milli} out of range")
        spec = (row.get("gpu_spec") or "").strip()
        pods.append(
            TracePod(
                row["name"],
                _int(p, line, row, "cpu_milli"),
                _int(p, line, row, "memory_mib"),
                gpus,
                milli if gpus else 0,
                frozenset(spec.split("|")) if spec else None,
                _int(p, line, row, "creation_time", 0),
                _int(p, line, row, "deletion_time", 0),
            )
        )
    return pods


def inflate(pods: list[TracePod], capacity: int, ratio: float, seed: int) -> list[TracePod]:
    """FGD's workload: the trace shuffled with the seed, then pods sampled with replacement until the
    GPU request reaches `ratio` x capacity (milli-GPUs)."""
    rng = random.Random(seed)
    order = list(pods)
    rng.shuffle(order)
    total = sum(p.gpu_request for p in order)
    target = ratio * capacity
    while total < target:
        p = order[rng.randrange(len(pods))]
        order.append(p)
        total += p.gpu_request
    return order


def typical_workload(pods: Sequence[TracePod]) -> Workload:
    return Workload.from_shapes((p.milli if p.gpus == 1 else WHOLE, p.gpus, p.cpu) for p in pods if p.gpus)


# --- policies -------------------------------------------------------------------------------------

Choice = tuple[float, tuple[int, ...]]  # (score: higher is better, GPU indexes)


def _gpu_options(node: TraceNode, pod: TracePod, split: int) -> list[tuple[int, ...]]:
    """Distinct ways to give the pod GPUs on the node (GPUs with equal free share are equivalent)."""
    if pod.gpus == 0:
        return [()]
    if pod.milli >= WHOLE or pod.gpus > 1:
        idle = [i for i, f in enumerate(node.free) if f >= WHOLE]
        return [tuple(idle[: pod.gpus])] if len(idle) >= pod.gpus else []
    seen: set[int] = set()
    out = []
    for i, f in enumerate(node.free):
        if f >= pod.milli and node.shares[i] < split and f not in seen:
            seen.add(f)
            out.append((i,))
    return out


class Policy(abc.ABC):
    """Scores one feasible (node, GPU choice); the replay keeps the best."""

    name = "base"

    def __init__(self, cfg: DeviceConfig, workload: Workload):
        self.cfg, self.workload = cfg, workload

    @abc.abstractmethod
    def choose(self, node: TraceNode, pod: TracePod, options: list[tuple[int, ...]]) -> Choice:
        """The best of `options` (GPU indexes) on this node, and its score."""


class UtilisationPolicy(Policy):
    """The product's binpack / spread: node score from weighted GPU, CPU and memory use before the
    pod; GPU within the node: fullest (binpack) or emptiest (spread) that fits."""

    def __init__(self, cfg: DeviceConfig, workload: Workload, policy: str):
        super().__init__(cfg, workload)
        self.policy = self.name = policy

    def choose(self, node: TraceNode, pod: TracePod, options: list[tuple[int, ...]]) -> Choice:
        u = weighted_utilisation(
            self.cfg,
            node.gpu_cap - sum(node.free),
            node.gpu_cap,
            node.cpu_cap - node.cpu_free,
            node.cpu_cap,
            node.mem_cap - node.mem_free,
            node.mem_cap,
        )
        score = policy_score(u, self.policy)
        if self.policy == names.POLICY_BINPACK:
            best = min(options, key=lambda o: (sum(node.free[i] for i in o), o))
        else:
            best = max(options, key=lambda o: (sum(node.free[i] for i in o), [-i for i in o]))
        return score, best


class FragmentationPolicy(Policy):
    """FGD: the placement that grows the cluster's expected fragmentation least."""

    name = "fgd"

    def delta(self, node: TraceNode, pod: TracePod, option: tuple[int, ...]) -> float:
        free = list(node.free)
        for i in option:
            free[i] -= pod.milli if pod.gpus == 1 else WHOLE
        after = node_fragmentation(free, node.cpu_free - pod.cpu, self.workload)
        return after - node.frag

    def choose(self, node: TraceNode, pod: TracePod, options: list[tuple[int, ...]]) -> Choice:
        best = min(options, key=lambda o: (self.delta(node, pod, o), o))
        return -self.delta(node, pod, best), best


class FragPackPolicy(Policy):
    """Ours (`frag-pack`): the core's FragPack score, FGD's fragmentation growth plus CPU starvation
    and packing (see vcplugin/core/fragmentation.py)."""

    name = names.POLICY_FRAG_PACK

    def __init__(self, cfg: DeviceConfig, workload: Workload):
        super().__init__(cfg, workload)
        self.scorer = FragPack(workload)

    def choose(self, node: TraceNode, pod: TracePod, options: list[tuple[int, ...]]) -> Choice:
        share = pod.milli if pod.gpus == 1 else WHOLE
        if pod.gpus == 1 and share < WHOLE:
            order = self.scorer.gpu_order(node.free, node.cpu_free - pod.cpu, share, [o[0] for o in options])
            best = (order[0],)
        else:
            best = options[0]
        take = dict.fromkeys(best, share)
        return self.scorer.score(node.free, node.cpu_free, take, pod.cpu, node.gpu_cap), best


def make_policy(name: str, cfg: DeviceConfig, workload: Workload) -> Policy:
    if name in (names.POLICY_BINPACK, names.POLICY_SPREAD):
        return UtilisationPolicy(cfg, workload, name)
    if name == "fgd":
        return FragmentationPolicy(cfg, workload)
    if name == names.POLICY_FRAG_PACK:
        return FragPackPolicy(cfg, workload)
    raise TraceError(f"unknown policy {name!r}; use one of {', '.join(TRACE_POLICIES)}")


TRACE_POLICIES = ("binpack", "spread", "fgd", "frag-pack")


# --- the replay -----------------------------------------------------------------------------------


class TraceResult(msgspec.Struct):
    policy: str
    seed: int
    pods: int
    placed: int
    capacity_gpus: float
    curve: list[tuple[float, float, float]]  # (arrived %, allocated %, fragmentation % of capacity)
    allocation_ratio: dict[str, float]
    fragmentation: dict[str, float]
    unallocated_gpus: float
    pods_per_second: float
    seconds: dict[str, float]


class Replay:
    def __init__(self, nodes: list[TraceNode], policy: Policy, split: int):
        self.nodes, self.policy, self.split = nodes, policy, split
        self.by_model: dict[str, list[TraceNode]] = {}
        for n in nodes:
            self.by_model.setdefault(n.model, []).append(n)
        self.gpu_nodes = [n for n in nodes if n.free]
        for n in nodes:
            n.frag = node_fragmentation(n.free, n.cpu_free, policy.workload)
        self.total_frag = sum(n.frag for n in nodes)
        self.t_score = self.t_apply = 0.0

    def candidates(self, pod: TracePod) -> list[TraceNode]:
        if pod.models is None:
            return self.gpu_nodes if pod.gpus else self.nodes
        out: list[TraceNode] = []
        for m in sorted(pod.models):
            out.extend(self.by_model.get(m, ()))
        return out

    def place(self, pod: TracePod) -> tuple[TraceNode, tuple[int, ...]] | None:
        t0 = time.perf_counter()
        best: tuple[float, TraceNode, tuple[int, ...]] | None = None
        shape = pod.shape
        for node in self.candidates(pod):
            if node.cpu_free < pod.cpu or node.mem_free < pod.mem:
                continue
            hit = node.cache.get(shape, False)
            if hit is False:
                options = _gpu_options(node, pod, self.split)
                hit = self.policy.choose(node, pod, options) if options else None
                node.cache[shape] = hit
            if hit is not None and (best is None or hit[0] > best[0]):
                best = (hit[0], node, hit[1])
        self.t_score += time.perf_counter() - t0
        if best is None:
            return None
        t1 = time.perf_counter()
        _, node, gpus = best
        self.apply(node, pod, gpus, +1)
        self.t_apply += time.perf_counter() - t1
        return node, gpus

    def apply(self, node: TraceNode, pod: TracePod, gpus: tuple[int, ...], sign: int) -> None:
        share = pod.milli if pod.gpus == 1 else WHOLE
        for i in gpus:
            node.free[i] -= sign * share
            node.shares[i] += sign
        node.cpu_free -= sign * pod.cpu
        node.mem_free -= sign * pod.mem
        node.cache.clear()
        self.total_frag -= node.frag
        node.frag = node_fragmentation(node.free, node.cpu_free, self.policy.workload)
        self.total_frag += node.frag


def _at(curve: list[tuple[float, float, float]], pct: float, col: int) -> float:
    for arrived, alloc, frag in curve:
        if arrived >= pct:
            return round((alloc, frag)[col - 1], 2)
    return round(curve[-1][col], 2) if curve else 0.0


def replay_inflated(
    nodes: list[TraceNode],
    pods: list[TracePod],
    cfg: DeviceConfig,
    policy_name: str,
    inflate_ratio: float = 1.3,
    seed: int = 42,
    split: int = 1000,
    progress: Callable[[int, int], None] | None = None,
) -> TraceResult:
    capacity = sum(n.gpu_cap for n in nodes)
    workload = typical_workload(pods)
    policy = make_policy(policy_name, cfg, workload)
    order = inflate(pods, capacity, inflate_ratio, seed)
    rep = Replay(nodes, policy, split)
    arrived = allocated = placed = 0
    curve: list[tuple[float, float, float]] = []
    start = time.perf_counter()
    for k, pod in enumerate(order):
        arrived += pod.gpu_request
        if rep.place(pod) is not None:
            allocated += pod.gpu_request
            placed += 1
        curve.append((100 * arrived / capacity, 100 * allocated / capacity, 100 * rep.total_frag / capacity))
        if progress and k % 500 == 0:
            progress(k, len(order))
    elapsed = time.perf_counter() - start
    points = ("50", "80", "90", "100", "130")
    return TraceResult(
        policy=policy_name,
        seed=seed,
        pods=len(order),
        placed=placed,
        capacity_gpus=capacity / WHOLE,
        curve=curve[:: max(1, len(curve) // 400)] + curve[-1:],
        allocation_ratio={p: _at(curve, float(p), 1) for p in ("90", "100", "130")},
        fragmentation={p: _at(curve, float(p), 2) for p in points},
        unallocated_gpus=round((capacity - allocated) / WHOLE, 1),
        pods_per_second=round(len(order) / elapsed, 1) if elapsed else 0.0,
        seconds={"total": round(elapsed, 2), "scoring": round(rep.t_score, 2), "bookkeeping": round(rep.t_apply, 2)},
    )


def replay_timed(
    nodes: list[TraceNode],
    pods: list[TracePod],
    cfg: DeviceConfig,
    policy_name: str,
    split: int = 1000,
) -> dict[str, Any]:
    """Creation and deletion times as recorded: pods arrive and leave; reports how many were placed and
    the allocation over time."""
    capacity = sum(n.gpu_cap for n in nodes)
    rep = Replay(nodes, make_policy(policy_name, cfg, typical_workload(pods)), split)
    events: list[tuple[int, int, int]] = []  # (time, 0 = leave first, pod index)
    for i, p in enumerate(pods):
        events.append((p.created, 1, i))
        if p.deleted > p.created:
            events.append((p.deleted, 0, i))
    events.sort()
    where: dict[int, tuple[TraceNode, tuple[int, ...]]] = {}
    allocated = placed = failed = 0
    series: list[tuple[int, float]] = []
    start = time.perf_counter()
    for t, kind, i in events:
        pod = pods[i]
        if kind == 0:
            got = where.pop(i, None)
            if got is not None:
                rep.apply(got[0], pod, got[1], -1)
                allocated -= pod.gpu_request
        else:
            got = rep.place(pod)
            if got is None:
                failed += 1
            else:
                where[i] = got
                placed += 1
                allocated += pod.gpu_request
        series.append((t, 100 * allocated / capacity))
    elapsed = time.perf_counter() - start
    return {
        "policy": policy_name,
        "placed": placed,
        "failed": failed,
        "peak_allocation_pct": round(max((a for _, a in series), default=0.0), 2),
        "series": series[:: max(1, len(series) // 400)],
        "pods_per_second": round(len(pods) / elapsed, 1),
    }
