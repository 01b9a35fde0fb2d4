"""Building GPU state from config, and choosing the best node for a pod."""

from __future__ import annotations

import uuid as uuidlib

from . import names
from .config import DeviceConfig, NodeSettings
from .fragmentation import WHOLE, Workload
from .migtables import find_model
from .node import NodeState
from .request import PodRequest
from .score import node_score
from .types import Assignment, GpuState, Rejection

_UUID_NS = uuidlib.UUID("6f1d9d6e-3c2b-4b8e-9a57-0c4f7e2a9b10")


def stable_gpu_uuid(node: str, index: int) -> str:
    """A GPU UUID that is the same on every run (simulations)."""
    return f"GPU-{uuidlib.uuid5(_UUID_NS, f'{node}/{index}')}"


def make_gpu(
    uuid: str,
    index: int,
    model: str,
    mode: str,
    memory_mib: int,
    cfg: DeviceConfig,
    settings: NodeSettings,
    healthy: bool = True,
) -> GpuState:
    """A GPU as the core sees it: hami-core GPUs get the node's split count and scaling; MIG GPUs get
    their model's geometries from the config."""
    mig_model = find_model(model)
    if mode == names.MODE_MIG:
        return GpuState(
            uuid,
            index,
            model,
            mode,
            memory_mib,
            total_cores=100,
            split_count=mig_model.compute_slices if mig_model else 0,
            mig_model=mig_model,
            geometries=cfg.geometries_for(mig_model),
            healthy=healthy,
        )
    return GpuState(
        uuid,
        index,
        model,
        mode,
        int(memory_mib * settings.memory_scaling),
        total_cores=int(100 * settings.core_scaling),
        split_count=settings.split_count,
        mig_model=mig_model,
        healthy=healthy,
    )


def best_node(
    nodes: list[NodeState],
    req: PodRequest,
    cfg: DeviceConfig,
    *,
    check_host: bool = True,
    workload: Workload | None = None,
) -> tuple[NodeState, Assignment, float] | dict[str, Rejection]:
    """The highest-scoring node that fits (first in list order on ties), or every node's rejection."""
    best: tuple[NodeState, Assignment, float] | None = None
    rejections: dict[str, Rejection] = {}
    for node in nodes:
        result = node.fit(req, cfg, check_host=check_host, workload=workload)
        if isinstance(result, Rejection):
            rejections[node.name] = result
            continue
        score = node_score(node, cfg, req.node_policy, assignment=result, workload=workload, cpu=req.cpu_milli)
        if best is None or score > best[2]:
            best = (node, result, score)
    if best is None:
        return rejections
    return best


def summarize_rejections(rejections: dict[str, Rejection], limit: int = 3) -> str:
    """One line: how many nodes refused, and the first few reasons."""
    if not rejections:
        return "no nodes"
    items = list(rejections.values())
    shown = "; ".join(r.reason for r in items[:limit])
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return f"0/{len(items)} nodes fit: {shown}{more}"


def workload_of(reqs: list[PodRequest], gpu_memory: int) -> Workload:
    """Typical requests (FGD's "typical pods") of a known set of pods; absolute memory is read as a
    share of a GPU of `gpu_memory` MiB."""
    shapes = []
    for r in reqs:
        for c in r.containers:
            if c.count > 1:
                share = WHOLE
            else:
                by_mem = c.memory * WHOLE // gpu_memory if gpu_memory else 0
                share = min(WHOLE, max(c.cores * 10, c.memory_percent * 10, by_mem) or WHOLE)
            shapes.append((share, c.count, r.cpu_milli))
    return Workload.from_shapes(shapes)
