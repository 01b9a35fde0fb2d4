"""The demo's cluster and workload: loaded from YAML (default: vcplugin/data/demo-workload.yaml) and
expanded, deterministically for a seed, into nodes and a timeline of Volcano Jobs."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..core import names

NAMESPACE = "default"
DEMO_LABEL = "vgpu-pool.io/demo-kind"  # which job kind a pod is (the report groups by it)


class WorkloadError(ValueError):
    pass


@dataclass(frozen=True)
class NodeType:
    name: str  # node names are "<name>-<n>"
    model: str  # NVML product name, as the simulated NVML reports it
    gpus: int
    mode: str  # names.MODE_MIG or names.MODE_HAMI_CORE


@dataclass(frozen=True)
class JobKind:
    name: str
    about: str = ""
    mode: str | None = None  # None: the pod may be served by either technique
    replicas: int = 1
    gpus: int = 1
    gpumem: tuple[int, ...] = ()
    gpucores: tuple[int, ...] = ()
    duration: tuple[int, int] = (2, 6)
    weight: float = 0.0  # drawn at random by weight ...
    every: int = 0  # ... or: one job per `every` pods, arriving at fraction `at` of the arrivals
    at: float = 0.5


@dataclass(frozen=True)
class Workload:
    nodes: tuple[NodeType, ...]
    kinds: tuple[JobKind, ...]
    steps: int = 24
    arrivals: float = 0.75
    source: str = "vcplugin/data/demo-workload.yaml"


@dataclass(frozen=True)
class DemoNode:
    name: str
    type: NodeType
    seed: int  # the simulated NVML's seed: GPU and MIG UUIDs differ per node and repeat per run


@dataclass
class DemoJob:
    name: str
    kind: JobKind
    arrival: int  # step
    duration: int  # steps it runs once placed
    gpumem: int
    gpucores: int | None
    pods: list[dict[str, Any]] = field(default_factory=list)  # manifests, as a user would create them

    @property
    def min_available(self) -> int:
        return len(self.pods)  # Volcano's default: every replica (the job is a gang)


@dataclass(frozen=True)
class Plan:
    nodes: tuple[DemoNode, ...]
    jobs: tuple[DemoJob, ...]  # in arrival order
    steps: int
    seed: int
    source: str
    kinds: tuple[str, ...] = ()  # job kinds, in the workload's order

    @property
    def pod_count(self) -> int:
        return sum(len(j.pods) for j in self.jobs)


# --- loading ---------------------------------------------------------------------------------------


def _choices(entry: dict[str, Any], key: str, where: str) -> tuple[int, ...]:
    raw = entry.get(key, [])
    values = raw if isinstance(raw, list) else [raw]
    try:
        return tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise WorkloadError(f"{where}.{key}: expected integers, got {raw!r}") from None


def parse_workload(data: Any, source: str) -> Workload:
    if not isinstance(data, dict):
        raise WorkloadError(f"{source}: expected a mapping with `nodes` and `jobs`")
    nodes = []
    for i, n in enumerate(data.get("nodes") or []):
        where = f"{source}: nodes[{i}]"
        try:
            nt = NodeType(str(n["name"]), str(n["model"]), int(n.get("gpus", 1)), str(n.get("mode", "hami-core")))
        except (KeyError, TypeError, ValueError) as exc:
            raise WorkloadError(f"{where}: needs name, model, gpus and mode ({exc})") from None
        if nt.mode not in names.MODES:
            raise WorkloadError(f"{where}.mode: {nt.mode!r} is not one of {', '.join(names.MODES)}")
        if nt.gpus < 1:
            raise WorkloadError(f"{where}.gpus: must be at least 1")
        nodes.append(nt)
    kinds = []
    for i, j in enumerate(data.get("jobs") or []):
        where = f"{source}: jobs[{i}]"
        if not isinstance(j, dict) or "name" not in j:
            raise WorkloadError(f"{where}: needs a name")
        mode = j.get("mode")
        if mode is not None and mode not in names.MODES:
            raise WorkloadError(f"{where}.mode: {mode!r} is not one of {', '.join(names.MODES)}")
        dur = _choices(j, "duration", where) or (2, 6)
        kind = JobKind(
            name=str(j["name"]),
            about=str(j.get("about", "")),
            mode=mode,
            replicas=int(j.get("replicas", 1)),
            gpus=int(j.get("gpus", 1)),
            gpumem=_choices(j, "gpumem", where),
            gpucores=_choices(j, "gpucores", where),
            duration=(min(dur), max(dur)),
            weight=float(j.get("weight", 0)),
            every=int(j.get("every", 0)),
            at=float(j.get("at", 0.5)),
        )
        if kind.replicas < 1 or kind.gpus < 1:
            raise WorkloadError(f"{where}: replicas and gpus must be at least 1")
        if not kind.weight and not kind.every:
            raise WorkloadError(f"{where}: give a `weight` (drawn at random) or `every` (one per N pods)")
        kinds.append(kind)
    if not nodes or not kinds:
        raise WorkloadError(f"{source}: needs at least one node and one job kind")
    steps = int(data.get("steps", 24))
    arrivals = float(data.get("arrivals", 0.75))
    if steps < 2 or not 0 < arrivals <= 1:
        raise WorkloadError(f"{source}: steps must be at least 2 and arrivals in (0, 1]")
    return Workload(tuple(nodes), tuple(kinds), steps, arrivals, source)


def load_workload(path: str | Path | None = None) -> Workload:
    """The workload file at `path`, or the built-in one."""
    if path is None:
        text = resources.files("vcplugin").joinpath("data/demo-workload.yaml").read_text()
        source = "vcplugin/data/demo-workload.yaml"
    else:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise WorkloadError(f"{path}: cannot read: {exc.strerror}") from None
        source = str(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise WorkloadError(f"{source}: not valid YAML: {exc}") from None
    return parse_workload(data, source)


# --- expansion -------------------------------------------------------------------------------------


def pod_manifest(job: DemoJob, index: int) -> dict[str, Any]:
    """A pod of a Volcano Job as the job controller creates it: the PodGroup annotation ties the
    replicas together, GPU resources are limits (the API server copies them into requests)."""
    kind = job.kind
    limits = {"nvidia.com/gpu": str(kind.gpus)}
    if job.gpumem:
        limits["nvidia.com/gpumem"] = str(job.gpumem)
    if job.gpucores is not None:
        limits["nvidia.com/gpucores"] = str(job.gpucores)
    annotations = {"scheduling.k8s.io/group-name": job.name, "volcano.sh/task-spec": "worker"}
    if kind.mode:
        annotations[names.ANNO_VGPU_MODE] = kind.mode
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{job.name}-{index}",
            "namespace": NAMESPACE,
            "labels": {DEMO_LABEL: kind.name, "volcano.sh/job-name": job.name},
            "annotations": annotations,
        },
        "spec": {
            "schedulerName": "volcano",
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": "nvidia/cuda:12.4.0-base-ubuntu22.04",
                    "command": ["sleep", "infinity"],
                    "resources": {"limits": limits, "requests": {"cpu": "2", "memory": "8Gi", **limits}},
                }
            ],
        },
        "status": {"phase": "Pending"},
    }


def build_plan(workload: Workload, *, nodes: int | None = None, pods: int | None = None, seed: int = 1) -> Plan:
    """Nodes (the mix repeated to `nodes`) and jobs (about `pods` pods) for one run."""
    rng = random.Random(seed)
    node_count = len(workload.nodes) if nodes is None else nodes
    if node_count < 1:
        raise WorkloadError("--nodes must be at least 1")
    demo_nodes = tuple(
        DemoNode(f"{t.name}-{i // len(workload.nodes)}", t, seed * 100_003 + i)
        for i, t in ((i, workload.nodes[i % len(workload.nodes)]) for i in range(node_count))
    )
    # The default scales with the cluster: ten pods per node.
    budget = 10 * node_count if pods is None else pods
    if budget < 1:
        raise WorkloadError("--pods must be at least 1")
    arrival_steps = max(1, round(workload.steps * workload.arrivals))

    counters: dict[str, int] = {}

    def new_job(kind: JobKind, arrival: int, replicas: int) -> DemoJob:
        n = counters.get(kind.name, 0)
        counters[kind.name] = n + 1
        job = DemoJob(
            name=f"{kind.name}-{n:03d}",
            kind=kind,
            arrival=arrival,
            duration=rng.randint(*kind.duration),
            gpumem=rng.choice(kind.gpumem) if kind.gpumem else 0,
            gpucores=rng.choice(kind.gpucores) if kind.gpucores else None,
        )
        job.pods = [pod_manifest(job, r) for r in range(replicas)]
        return job

    jobs: list[DemoJob] = []
    # The fixed kinds first (the gang, the pod that never fits), so a small --pods still shows them,
    # as long as they leave at least half the pods to the drawn kinds.
    total = budget
    for kind in (k for k in workload.kinds if k.every):
        count = max(1, budget // kind.every)
        for c in range(count):
            if 2 * kind.replicas > total or budget < kind.replicas:
                break
            frac = kind.at + (1 - kind.at) * c / count
            jobs.append(new_job(kind, min(arrival_steps - 1, int(frac * arrival_steps)), kind.replicas))
            budget -= kind.replicas
    drawn = [k for k in workload.kinds if k.weight > 0]
    weights = [k.weight for k in drawn]
    while budget > 0 and drawn:
        kind = rng.choices(drawn, weights)[0]
        replicas = min(kind.replicas, budget)
        jobs.append(new_job(kind, rng.randrange(arrival_steps), replicas))
        budget -= replicas
    jobs.sort(key=lambda j: j.arrival)  # stable: same-step jobs keep their creation order
    return Plan(demo_nodes, tuple(jobs), workload.steps, seed, workload.source, tuple(k.name for k in workload.kinds))
