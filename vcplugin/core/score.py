"""Node scores and GPU order: binpack or spread, from the state before the pod is added."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import names

if TYPE_CHECKING:
    from .config import DeviceConfig
    from .node import NodeState
    from .types import GpuState


def utilisation(node: NodeState, cfg: DeviceConfig) -> float:
    """Weighted mean of GPU-memory, CPU and host-memory use, 0..1. Parts with no capacity drop out."""
    total = weight = 0.0
    gpu_total = sum(g.total_memory for g in node.gpus)
    if gpu_total and cfg.weight_gpu_memory:
        total += cfg.weight_gpu_memory * sum(g.used_memory for g in node.gpus) / gpu_total
        weight += cfg.weight_gpu_memory
    if node.cpu_capacity and cfg.weight_cpu:
        total += cfg.weight_cpu * min(1.0, node.cpu_used / node.cpu_capacity)
        weight += cfg.weight_cpu
    if node.memory_capacity and cfg.weight_memory:
        total += cfg.weight_memory * min(1.0, node.memory_used / node.memory_capacity)
        weight += cfg.weight_memory
    return total / weight if weight else 0.0


def node_score(node: NodeState, cfg: DeviceConfig, policy: str | None = None) -> float:
    """0..100; higher is better. binpack prefers busy nodes, spread idle ones."""
    u = utilisation(node, cfg)
    s = u if (policy or cfg.node_policy) == names.POLICY_BINPACK else 1.0 - u
    return round(100.0 * s, 4)


def order_gpus(gpus: list[GpuState], policy: str) -> list[GpuState]:
    """binpack: the fullest GPU first; spread: the emptiest first; ties by index."""
    if policy == names.POLICY_BINPACK:
        return sorted(gpus, key=lambda g: (-g.used_memory / g.total_memory if g.total_memory else 0, g.index))
    return sorted(gpus, key=lambda g: (g.used_memory / g.total_memory if g.total_memory else 0, g.index))
