"""Prometheus metrics of the sidecar. GPU and MIG series are read from the state at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..core import names
from ..core.mig import layout

if TYPE_CHECKING:
    from .state import ClusterState

disable_created_metrics()  # the _created series only double the scrape size

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class GpuCollector(Collector):
    def __init__(self, state: ClusterState):
        self.state = state

    def collect(self) -> Iterator[Metric]:
        labels = ["node", "gpu", "index", "model", "mode"]
        mem_used = GaugeMetricFamily("vgpu_pool_gpu_memory_used_mib", "GPU memory promised to pods", labels=labels)
        mem_total = GaugeMetricFamily(
            "vgpu_pool_gpu_memory_total_mib", "GPU memory the pool may promise", labels=labels
        )
        cores_used = GaugeMetricFamily("vgpu_pool_gpu_cores_used_percent", "SM percent promised", labels=labels)
        cores_total = GaugeMetricFamily("vgpu_pool_gpu_cores_total_percent", "SM percent available", labels=labels)
        shares = GaugeMetricFamily("vgpu_pool_gpu_shares", "vGPUs (shares or MIG instances) in use", labels=labels)
        geometry = GaugeMetricFamily(
            "vgpu_pool_gpu_geometry", "index of the MIG geometry in effect (-1: none)", labels=labels
        )
        unusable = GaugeMetricFamily("vgpu_pool_node_unschedulable", "1 when a node takes no GPU pods", labels=["node"])
        mig = GaugeMetricFamily(
            "vgpu_pool_mig_instance",
            "one series per MIG instance of the current layouts: 1 in use, 0 free",
            labels=["node", "gpu", "index", "profile", "placement", "pod"],
        )
        for name, node in self.state.states.items():
            for g in node.gpus:
                lv = [name, g.uuid, str(g.index), g.model, g.mode]
                mem_used.add_metric(lv, g.used_memory)
                mem_total.add_metric(lv, g.total_memory)
                cores_used.add_metric(lv, g.used_cores)
                cores_total.add_metric(lv, g.total_cores)
                shares.add_metric(lv, g.shares)
                if g.mode == names.MODE_MIG:
                    geometry.add_metric(lv, -1 if g.geometry is None else g.geometry)
                    if g.mig_model is not None:
                        for profile, start, size, inst in layout(g):
                            pod = inst.pod if inst else ""
                            mig.add_metric(
                                [name, g.uuid, str(g.index), profile, f"{start}:{size}", pod], 1 if inst else 0
                            )
        for name in self.state.nodes:
            unusable.add_metric([name], 1 if name in self.state.problems else 0)
        yield from (mem_used, mem_total, cores_used, cores_total, shares, geometry, mig, unusable)


class Metrics:
    def __init__(self, state: ClusterState | None = None):
        self.registry = CollectorRegistry()
        r = self.registry
        self.latency = Histogram(
            "vgpu_pool_extender_request_seconds",
            "time to answer an extender verb",
            ["verb"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.decisions = Counter(
            "vgpu_pool_decisions_total",
            "extender decisions by verb and result",
            ["verb", "result", "reason"],
            registry=r,
        )
        self.synced = Gauge(
            "vgpu_pool_cache_synced", "1 once the informer's first list completed", ["resource"], registry=r
        )
        self.config_reloads = Counter("vgpu_pool_config_reloads_total", "device config reloads", ["result"], registry=r)
        self.patch_failures = Counter("vgpu_pool_pod_patch_failures_total", "failed pod PATCHes", ["verb"], registry=r)
        if state is not None:
            r.register(GpuCollector(state))


def reason_category(reason: str) -> str:
    """A short, low-cardinality label for a rejection reason."""
    r = reason.lower()
    for key, label in (
        ("no gpu registration", "no-registration"),
        ("stale", "stale-registration"),
        ("not known", "unknown-node"),
        ("never fit", "never-fits"),
        ("memory", "memory"),
        ("cores", "cores"),
        ("shares", "shares"),
        ("exclusive", "exclusive"),
        ("geometry", "mig-geometry"),
        ("mig", "mig"),
        ("invalid", "invalid-request"),
    ):
        if key in r:
            return label
    return "other"
