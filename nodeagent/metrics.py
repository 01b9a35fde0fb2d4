"""Prometheus metrics of the node agent (GPU health, geometries it cannot honour, MIG work, Allocate)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class AgentMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        labels = ["gpu", "index", "model"]
        self.healthy = Gauge("vgpu_pool_agent_gpu_healthy", "1 when the GPU answers NVML", labels, registry=r)
        self.mig_pending = Gauge(
            "vgpu_pool_agent_mig_pending", "1 while a MIG mode change waits for a reset", labels, registry=r
        )
        self.unusable_geometry = Gauge(
            "vgpu_pool_agent_geometry_unusable",
            "1 for each configured geometry this GPU cannot honour",
            [*labels, "geometry"],
            registry=r,
        )
        self.instances_created = Counter(
            "vgpu_pool_agent_mig_instances_created_total", "MIG instances created", registry=r
        )
        self.instances_destroyed = Counter(
            "vgpu_pool_agent_mig_instances_destroyed_total", "MIG instances destroyed", registry=r
        )
        self.allocations = Counter(
            "vgpu_pool_agent_allocations_total", "kubelet Allocate answers", ["result"], registry=r
        )
        self.allocate_seconds = Histogram(
            "vgpu_pool_agent_allocate_seconds",
            "time to answer Allocate",
            registry=r,
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.refused = Counter(
            "vgpu_pool_agent_assignments_refused_total",
            "assignments refused (bad signature, double promise)",
            registry=r,
        )
        self.reconcile_errors = Counter("vgpu_pool_agent_reconcile_errors_total", "failed reconcile passes", registry=r)
        self.podresources_mismatch = Counter(
            "vgpu_pool_agent_podresources_mismatch_total",
            "admissions kubelet's pod-resources API attributes to another pod than the agent chose",
            registry=r,
        )
