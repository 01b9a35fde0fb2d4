"""Shared test helpers: configs, pods, nodes, and an independent MIG layout enumerator.

The enumerator encodes the placement tables of reference/mig.md §1.3 directly (not through
vcplugin.core.migtables), so the product's tables and solver are checked against it."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from vcplugin.core.cluster import make_gpu
from vcplugin.core.config import DeviceConfig, default_config, load_config_text
from vcplugin.core.node import NodeState
from vcplugin.core.request import PodRequest, parse_pod
from vcplugin.core.types import GpuState, MigInstance

# --- placement tables, straight from reference/mig.md §1.3 ------------------------------------


@dataclass(frozen=True)
class Kind:
    key: str  # table key: "1g", "1g+me", "1g.2x", "2g", ...
    g: int  # compute slices
    size: int  # memory slices
    starts: tuple[int, ...]
    max_count: int
    media: bool = False


@dataclass(frozen=True)
class Table:
    memory_slices: int
    compute_slices: int
    kinds: tuple[Kind, ...]

    def kind(self, key: str) -> Kind:
        return next(k for k in self.kinds if k.key == key)


SEVEN_SLICE = Table(
    8,
    7,
    (
        Kind("1g", 1, 1, (0, 1, 2, 3, 4, 5, 6), 7),
        Kind("1g+me", 1, 1, (0, 1, 2, 3, 4, 5, 6), 1, media=True),
        Kind("1g.2x", 1, 2, (0, 2, 4, 6), 4),
        Kind("2g", 2, 2, (0, 2, 4), 3),
        Kind("3g", 3, 4, (0, 4), 2),
        Kind("4g", 4, 4, (0,), 1),
        Kind("7g", 7, 8, (0,), 1),
    ),
)

A30_TABLE = Table(
    4,
    4,
    (
        Kind("1g", 1, 1, (0, 1, 2, 3), 4),
        Kind("1g+me", 1, 1, (0, 1, 2, 3), 1, media=True),
        Kind("2g", 2, 2, (0, 2), 2),
        Kind("2g+me", 2, 2, (0, 2), 1, media=True),
        Kind("4g", 4, 4, (0,), 1),
    ),
)

# Profile names per model (reference/mig.md §1.4), table kind -> name.
PROFILE_NAMES: dict[str, dict[str, str]] = {
    "A30-24GB": {"1g": "1g.6gb", "1g+me": "1g.6gb+me", "2g": "2g.12gb", "2g+me": "2g.12gb+me", "4g": "4g.24gb"},
    "A100-40GB": {
        "1g": "1g.5gb", "1g+me": "1g.5gb+me", "1g.2x": "1g.10gb", "2g": "2g.10gb",
        "3g": "3g.20gb", "4g": "4g.20gb", "7g": "7g.40gb",
    },
    "A100-80GB": {
        "1g": "1g.10gb", "1g+me": "1g.10gb+me", "1g.2x": "1g.20gb", "2g": "2g.20gb",
        "3g": "3g.40gb", "4g": "4g.40gb", "7g": "7g.80gb",
    },
    "H100-80GB": {
        "1g": "1g.10gb", "1g+me": "1g.10gb+me", "1g.2x": "1g.20gb", "2g": "2g.20gb",
        "3g": "3g.40gb", "4g": "4g.40gb", "7g": "7g.80gb",
    },
    "H100-NVL-94GB": {
        "1g": "1g.12gb", "1g+me": "1g.12gb+me", "1g.2x": "1g.24gb", "2g": "2g.24gb",
        "3g": "3g.47gb", "4g": "4g.47gb", "7g": "7g.94gb",
    },
    "H200-141GB": {
        "1g": "1g.18gb", "1g+me": "1g.18gb+me", "1g.2x": "1g.35gb", "2g": "2g.35gb",
        "3g": "3g.71gb", "4g": "4g.71gb", "7g": "7g.141gb",
    },
}

TABLE_FOR_MODEL = {k: (A30_TABLE if k == "A30-24GB" else SEVEN_SLICE) for k in PROFILE_NAMES}

CLASSIC = ("1g", "2g", "3g", "4g", "7g")

Layout = frozenset[tuple[str, int]]  # {(kind key, start)}


def valid(table: Table, placed: Iterable[tuple[str, int]]) -> bool:
    """Independent validity check of a list of (kind key, start) on a placement table."""
    used: set[int] = set()
    compute = media = 0
    counts: Counter[str] = Counter()
    for key, start in placed:
        k = table.kind(key)
        if start not in k.starts:
            return False
        span = set(range(start, start + k.size))
        if span & used:
            return False
        used |= span
        compute += k.g
        media += k.media
        counts[key] += 1
        if counts[key] > k.max_count:
            return False
    return compute <= table.compute_slices and media <= 1


def enumerate_layouts(table: Table, kinds: Iterable[str]) -> set[Layout]:
    """Every valid set of placed instances (the empty layout included), by brute force."""
    cands = [(k, s) for k in kinds for s in table.kind(k).starts]
    out: set[Layout] = set()

    def rec(i: int, chosen: list[tuple[str, int]]) -> None:
        if i == len(cands):
            out.add(frozenset(chosen))
            return
        rec(i + 1, chosen)
        chosen.append(cands[i])
        if valid(table, chosen):
            rec(i + 1, chosen)
        chosen.pop()

    rec(0, [])
    return out


def multiset(layout: Iterable[tuple[str, int]]) -> tuple[tuple[str, int], ...]:
    """A layout's profile multiset as a sorted tuple of (kind, count)."""
    return tuple(sorted(Counter(k for k, _ in layout).items()))


def maximal_layouts(table: Table, kinds: Iterable[str], layouts: set[Layout]) -> set[Layout]:
    kinds = tuple(kinds)
    cands = [(k, s) for k in kinds for s in table.kind(k).starts]
    return {
        lay for lay in layouts if not any(c not in lay and valid(table, [*lay, c]) for c in cands)
    }


# --- configs, pods, nodes -----------------------------------------------------------------------

DEFAULT = default_config()


def config(text: str) -> DeviceConfig:
    return load_config_text(text, "test-config.yaml")


def pod(
    name: str = "p",
    *,
    limits: Mapping[str, Any] | None = None,
    requests: Mapping[str, Any] | None = None,
    annotations: Mapping[str, str] | None = None,
    containers: list[dict[str, Any]] | None = None,
    init_containers: list[dict[str, Any]] | None = None,
    uid: str | None = None,
    namespace: str = "default",
) -> dict[str, Any]:
    """A Pod manifest as a dict. `limits`/`requests` build a single container named "main"."""
    if containers is None:
        res: dict[str, Any] = {}
        if limits is not None:
            res["limits"] = dict(limits)
        if requests is not None:
            res["requests"] = dict(requests)
        containers = [{"name": "main", "resources": res}]
    spec: dict[str, Any] = {"containers": containers}
    if init_containers:
        spec["initContainers"] = init_containers
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": uid or f"uid-{namespace}-{name}"}
    if annotations:
        meta["annotations"] = dict(annotations)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def request(cfg: DeviceConfig = DEFAULT, **kw: Any) -> PodRequest:
    return parse_pod(pod(**kw), cfg)


GPU_MEMORY = {
    "NVIDIA A30": 24576,
    "NVIDIA A100-PCIE-40GB": 40960,
    "NVIDIA A100-SXM4-80GB": 81920,
    "NVIDIA H100 80GB HBM3": 81559,
    "NVIDIA H100 NVL": 95830,
    "NVIDIA H200": 143771,
    "Tesla T4": 15360,
}


def gpus(
    node: str, specs: Iterable[tuple[str, str]], cfg: DeviceConfig = DEFAULT, start: int = 0
) -> list[GpuState]:
    """GPUs from (model, mode) pairs, numbered from `start`."""
    settings = cfg.node(node)
    return [
        make_gpu(f"GPU-{node}-{i}", i, model, mode, GPU_MEMORY[model], cfg, settings)
        for i, (model, mode) in enumerate(specs, start)
    ]


def node(
    name: str,
    specs: Iterable[tuple[str, str]],
    cfg: DeviceConfig = DEFAULT,
    cpu_milli: int = 0,
    memory_bytes: int = 0,
) -> NodeState:
    return NodeState(name, gpus(name, specs, cfg), cpu_milli, memory_bytes)


def mig_node(model: str = "NVIDIA A100-PCIE-40GB", count: int = 1, cfg: DeviceConfig = DEFAULT) -> NodeState:
    return node("n", [(model, "mig")] * count, cfg)


def hami_node(model: str = "NVIDIA H100 80GB HBM3", count: int = 1, cfg: DeviceConfig = DEFAULT) -> NodeState:
    return node("n", [(model, "hami-core")] * count, cfg)


def snapshot(n: NodeState) -> Any:
    """Everything fit() must leave as it was."""
    return (
        n.cpu_used,
        n.memory_used,
        tuple(sorted(n.pods)),
        tuple(
            (
                g.uuid, g.used_memory, g.used_cores, g.shares, g.exclusive, g.geometry,
                tuple(_inst(i) for i in g.instances),
            )
            for g in n.gpus
        ),
    )


def _inst(i: MigInstance) -> tuple[Any, ...]:
    return (i.profile, i.start, i.size, i.memory, i.cores, i.pod_uid, i.pod)


def all_multisets(table: Table, kinds: Iterable[str]) -> list[tuple[tuple[str, int], ...]]:
    """Every multiset of the kinds with 0..max_count of each (empty included)."""
    kinds = tuple(kinds)
    ranges = [range(table.kind(k).max_count + 1) for k in kinds]
    out = []
    for counts in itertools.product(*ranges):
        out.append(tuple(sorted((k, c) for k, c in zip(kinds, counts, strict=True) if c)))
    return out


# --- an independent oracle for MIG first-fit on one GPU ------------------------------------------

_LAYOUTS_BY_MULTISET: dict[int, dict[tuple, list[Layout]]] = {}


def _layouts_by_multiset(table: Table) -> dict[tuple, list[Layout]]:
    found = _LAYOUTS_BY_MULTISET.get(id(table))
    if found is None:
        found = {}
        for lay in enumerate_layouts(table, [k.key for k in table.kinds]):
            found.setdefault(multiset(lay), []).append(lay)
        _LAYOUTS_BY_MULTISET[id(table)] = found
    return found


def geometry_keeps(gpu: GpuState, geom: Any) -> bool:
    """Whether some valid layout of the geometry's instances keeps every in-use instance in place."""
    key = gpu.mig_model.key  # type: ignore[union-attr]
    kind = {v: k for k, v in PROFILE_NAMES[key].items()}
    table = TABLE_FOR_MODEL[key]
    fixed = {(kind[i.profile], i.start) for i in gpu.instances}
    ms = tuple(sorted(Counter(kind[s.profile.name] for s in geom.slots).items()))
    return any(fixed <= lay for lay in _layouts_by_multiset(table).get(ms, []))


def expected_mig_choice(gpu: GpuState, mem: int, n: int) -> tuple[int, list[str]] | None:
    """The contract on one GPU: the first geometry in config order that keeps every in-use instance at
    its placement and has n free instances of at least `mem` MiB; within it the n smallest such
    instances (by memory, then compute slices). Returns (geometry index, sorted profile names)."""
    for geom in gpu.geometries:
        if not geometry_keeps(gpu, geom):
            continue
        free = Counter(s.profile.name for s in geom.slots)
        free.subtract(Counter(i.profile for i in gpu.instances))
        slots = {s.profile.name: s for s in geom.slots}
        cands = sorted(
            (p for p, c in free.items() for _ in range(c) if slots[p].memory >= mem),
            key=lambda p: (slots[p].memory, slots[p].profile.slices),
        )
        if len(cands) >= n:
            return geom.index, sorted(cands[:n])
    return None
