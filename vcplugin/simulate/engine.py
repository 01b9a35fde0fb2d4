"""Run a scenario through the core: the same fit and score the sidecar uses, in process."""

from __future__ import annotations

from typing import Any

import msgspec

from ..core import names
from ..core.cluster import best_node, make_gpu, stable_gpu_uuid, summarize_rejections, workload_of
from ..core.config import DeviceConfig
from ..core.mig import layout
from ..core.node import NodeState
from ..core.types import Assignment
from .scenario import Scenario


class DeviceOut(msgspec.Struct):
    gpu: str
    index: int
    mode: str
    profile: str | None
    placement: tuple[int, int] | None
    memory: int
    cores: int


class ContainerOut(msgspec.Struct):
    name: str
    devices: list[DeviceOut]


class PlacementOut(msgspec.Struct):
    pod: str
    node: str
    containers: list[ContainerOut]


class UnschedulableOut(msgspec.Struct):
    pod: str
    reason: str


class InstanceOut(msgspec.Struct):
    profile: str
    placement: tuple[int, int]
    pod: str | None


class GpuOut(msgspec.Struct):
    node: str
    index: int
    uuid: str
    model: str
    mode: str
    geometry: int | None
    instances: list[InstanceOut]
    used_memory: int
    used_cores: int
    shares: int
    total_memory: int


class SimulationResult(msgspec.Struct):
    placements: list[PlacementOut]
    unschedulable: list[UnschedulableOut]
    gpus: list[GpuOut]
    departed: list[str] = []


def build_nodes(scenario: Scenario, cfg: DeviceConfig) -> list[NodeState]:
    nodes = []
    for plan in scenario.nodes:
        settings = cfg.node(plan.name)
        mode = plan.mode or settings.mode
        gpus = [
            make_gpu(stable_gpu_uuid(plan.name, i), i, model, mode, mem, cfg, settings)
            for i, (model, mem) in enumerate(plan.gpus)
            if stable_gpu_uuid(plan.name, i) not in settings.filter_uuids and i not in settings.filter_indexes
        ]
        nodes.append(NodeState(plan.name, gpus, plan.cpu_milli, plan.memory_bytes))
    return nodes


def _placement(key: str, a: Assignment) -> PlacementOut:
    return PlacementOut(
        key,
        a.node,
        [
            ContainerOut(
                c.name,
                [DeviceOut(d.uuid, d.index, d.mode, d.profile, d.placement, d.memory, d.cores) for d in c.devices],
            )
            for c in a.containers
        ],
    )


def gpu_report(nodes: list[NodeState]) -> list[GpuOut]:
    out = []
    for node in nodes:
        for g in node.gpus:
            instances = []
            if g.mode == names.MODE_MIG and g.mig_model is not None:
                instances = [
                    InstanceOut(p, (start, size), inst.pod if inst else None) for p, start, size, inst in layout(g)
                ]
            out.append(
                GpuOut(
                    node.name,
                    g.index,
                    g.uuid,
                    g.model,
                    g.mode,
                    g.geometry,
                    instances,
                    g.used_memory,
                    g.used_cores,
                    g.shares,
                    g.total_memory,
                )
            )
    return out


def run_scenario(scenario: Scenario, cfg: DeviceConfig) -> SimulationResult:
    nodes = build_nodes(scenario, cfg)
    gpu_mems = sorted(g.total_memory for n in nodes for g in n.gpus)
    workload = workload_of(
        [s.request for s in scenario.steps if s.request is not None and s.request.wants_gpu],
        gpu_mems[len(gpu_mems) // 2] if gpu_mems else 0,
    )
    placed: dict[str, tuple[NodeState, str]] = {}
    placements: list[PlacementOut] = []
    unschedulable: list[UnschedulableOut] = []
    departed: list[str] = []
    for step in scenario.steps:
        if step.delete:
            found = placed.pop(step.key, None)
            if found is not None:
                found[0].release(found[1])
                placements = [p for p in placements if p.pod != step.key]
                departed.append(step.key)
            continue
        if step.error is not None or step.request is None:
            unschedulable.append(UnschedulableOut(step.key, step.error or "invalid pod"))
            continue
        req = step.request
        if step.key in placed:
            unschedulable.append(UnschedulableOut(step.key, "a pod with this name is already placed"))
            continue
        result = best_node(nodes, req, cfg, workload=workload)
        if isinstance(result, dict):
            unschedulable.append(UnschedulableOut(step.key, summarize_rejections(result)))
            continue
        node, _, _ = result
        assignment = node.allocate(req, cfg, workload=workload)
        assert isinstance(assignment, Assignment)
        placed[step.key] = (node, req.uid)
        placements.append(_placement(step.key, assignment))
    return SimulationResult(placements, unschedulable, gpu_report(nodes), departed)


def as_json(result: SimulationResult) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.to_builtins(result)
    data.pop("departed", None)
    for g in data["gpus"]:
        g.pop("total_memory", None)
    return data
