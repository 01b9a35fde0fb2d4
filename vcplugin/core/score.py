"""Node scores and GPU order: binpack or spread, from the state before the pod is added."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import names

if TYPE_CHECKING:
    from .config import DeviceConfig
    from .fragmentation import Workload
    from .node import NodeState
    from .types import Assignment, GpuState


def weighted_utilisation(
    cfg: DeviceConfig,
    gpu_used: float,
    gpu_total: float,
    cpu_used: float,
    cpu_total: float,
    mem_used: float,
    mem_total: float,
) -> float:
    """Weighted mean of GPU-memory, CPU and host-memory use, 0..1. Parts with no capacity drop out."""
    total = weight = 0.0
    if gpu_total and cfg.weight_gpu_memory:
        total += cfg.weight_gpu_memory * min(1.0, gpu_used / gpu_total)
        weight += cfg.weight_gpu_memory
    if cpu_total and cfg.weight_cpu:
        total += cfg.weight_cpu * min(1.0, cpu_used / cpu_total)
        weight += cfg.weight_cpu
    if mem_total and cfg.weight_memory:
        total += cfg.weight_memory * min(1.0, mem_used / mem_total)
        weight += cfg.weight_memory
    return total / weight if weight else 0.0


def utilisation(node: NodeState, cfg: DeviceConfig) -> float:
    return weighted_utilisation(
        cfg,
        sum(g.used_memory for g in node.gpus),
        sum(g.total_memory for g in node.gpus),
        node.cpu_used,
        node.cpu_capacity,
        node.memory_used,
        node.memory_capacity,
    )


def policy_score(utilisation: float, policy: str) -> float:
    """0..100, higher is better: binpack prefers busy nodes, spread idle ones."""
    s = utilisation if policy == names.POLICY_BINPACK else 1.0 - utilisation
    return round(100.0 * s, 4)


def node_score(
    node: NodeState,
    cfg: DeviceConfig,
    policy: str | None = None,
    *,
    assignment: Assignment | None = None,
    workload: Workload | None = None,
    cpu: int = 0,
) -> float:
    """0..100; higher is better. binpack prefers busy nodes, spread idle ones."""
    policy = policy or cfg.node_policy
    hami_only = assignment is not None and all(d.mode == names.MODE_HAMI_CORE for d in assignment.devices())
    if policy == names.POLICY_FRAG_PACK and hami_only and workload is not None and workload.pods:
        assert assignment is not None
        from .fragmentation import FragPack, placement_score

        # Raw FragPack scores are milli-GPUs around 0 (a whole GPU fragmented costs 1000); map to 0..100.
        raw = placement_score(node, assignment, FragPack(workload), cpu)
        return round(max(0.0, min(100.0, 50.0 + raw / 20.0)), 4)
    if policy == names.POLICY_FRAG_PACK:
        # No workload seen yet, or a MIG placement (a MIG GPU's capacity is its geometry, not a share
        # of memory and cores): pack.
        policy = names.POLICY_BINPACK
    return policy_score(utilisation(node, cfg), policy)


def order_gpus(gpus: list[GpuState], policy: str) -> list[GpuState]:
    """binpack (and frag-pack without a workload): the fullest GPU first; spread: the emptiest first;
    ties by index."""
    if policy != names.POLICY_SPREAD:
        return sorted(gpus, key=lambda g: (-g.used_memory / g.total_memory if g.total_memory else 0, g.index))
    return sorted(gpus, key=lambda g: (g.used_memory / g.total_memory if g.total_memory else 0, g.index))
