"""Scenario files for `vcplugin simulate --scenario`: nodes with GPUs, and pods placed in order.

```yaml
nodes:
- name: gpu-a
  cpu: "64"
  memory: 512Gi
  mode: mig                      # optional; else the device config's nodeconfig, else hami-core
  gpus: [{model: NVIDIA A100-PCIE-40GB, count: 2}]   # memory: MiB for models we do not know
pods:
- <a Kubernetes Pod manifest>
- delete: default/pod-name       # a departure
```"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from ..core import names
from ..core.config import DeviceConfig
from ..core.migtables import gpu_memory_mib
from ..core.quantity import QuantityError, quantity_int, quantity_milli
from ..core.request import PodRequest, RequestError, parse_pod
from ..core.yamlsrc import Problems, yaml_with_lines


class ScenarioError(ValueError):
    def __init__(self, source: str, errors: list[str]):
        self.source, self.errors = source, errors
        super().__init__(f"invalid scenario {source}:\n  " + "\n  ".join(errors))


class GpuSpec(msgspec.Struct, forbid_unknown_fields=True):
    model: str
    count: int = 1
    memory: int | None = None  # MiB; needed only for models without a known size


class NodeSpec(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    gpus: list[GpuSpec] = []
    cpu: str | int | float = 0
    memory: str | int = 0
    mode: str | None = None


class ScenarioFile(msgspec.Struct, forbid_unknown_fields=True):
    nodes: list[NodeSpec]
    pods: list[dict[str, Any]] = []


class NodePlan(msgspec.Struct, frozen=True):
    name: str
    cpu_milli: int
    memory_bytes: int
    mode: str | None
    gpus: tuple[tuple[str, int], ...]  # (model, memory MiB) per GPU, in index order


class PodStep(msgspec.Struct, frozen=True):
    """Place a pod (request set), or reject it up front (error set), or delete one (delete set)."""

    key: str
    request: PodRequest | None = None
    error: str | None = None
    delete: bool = False


class Scenario(msgspec.Struct, frozen=True):
    source: str
    nodes: tuple[NodePlan, ...]
    steps: tuple[PodStep, ...]


def load_scenario_text(text: str, cfg: DeviceConfig, source: str = "<scenario>") -> Scenario:
    data, lines = yaml_with_lines(text, source, ScenarioError)
    problems = Problems(source, data, lines)
    try:
        parsed = msgspec.convert(data, ScenarioFile, strict=False)
    except msgspec.ValidationError as exc:
        from ..core.yamlsrc import parse_msgspec_path

        msg, _, at = str(exc).partition(" - at `$")
        problems.add(parse_msgspec_path(at.rstrip("`")) if at else (), msg)
        raise ScenarioError(source, problems.errors) from None
    nodes: list[NodePlan] = []
    seen: set[str] = set()
    for ni, n in enumerate(parsed.nodes):
        path = ("nodes", ni)
        if n.name in seen:
            problems.add((*path, "name"), "duplicate node name")
        seen.add(n.name)
        if n.mode is not None and n.mode not in names.MODES:
            problems.add((*path, "mode"), f"unknown mode; use one of {', '.join(names.MODES)}")
        try:
            cpu = quantity_milli(n.cpu)
            mem = quantity_int(n.memory)
        except QuantityError as exc:
            problems.add(path, str(exc))
            continue
        gpus: list[tuple[str, int]] = []
        for gi, g in enumerate(n.gpus):
            mem_mib = g.memory if g.memory is not None else gpu_memory_mib(g.model)
            if mem_mib is None:
                problems.add((*path, "gpus", gi, "model"), "unknown GPU model; give its `memory` in MiB")
                continue
            if mem_mib <= 0:
                problems.add((*path, "gpus", gi, "memory"), "must be a positive number of MiB")
            if g.count < 0:
                problems.add((*path, "gpus", gi, "count"), "must not be negative")
            gpus.extend((g.model, mem_mib) for _ in range(g.count))
        nodes.append(NodePlan(n.name, cpu, mem, n.mode, tuple(gpus)))
    steps: list[PodStep] = []
    for pi, pod in enumerate(parsed.pods):
        path = ("pods", pi)
        if "delete" in pod:
            steps.append(PodStep(str(pod["delete"]), delete=True))
            continue
        meta = pod.get("metadata") or {}
        if not meta.get("name"):
            problems.add((*path, "metadata"), "a pod needs metadata.name")
            continue
        key = f"{meta.get('namespace') or 'default'}/{meta['name']}"
        pod = {**pod, "metadata": {**meta, "uid": meta.get("uid") or f"uid-{key}"}}
        try:
            steps.append(PodStep(key, request=parse_pod(pod, cfg)))
        except RequestError as exc:
            steps.append(PodStep(key, error=str(exc)))
    if problems.errors:
        raise ScenarioError(source, problems.errors)
    return Scenario(source, tuple(nodes), tuple(steps))


def load_scenario_file(path: str | Path, cfg: DeviceConfig) -> Scenario:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ScenarioError(str(p), [f"{p}: cannot read: {exc.strerror}"]) from None
    return load_scenario_text(text, cfg, str(p))


def demo_scenario(cfg: DeviceConfig) -> Scenario:
    from importlib import resources

    text = resources.files("vcplugin").joinpath("data/demo-scenario.yaml").read_text()
    return load_scenario_text(text, cfg, "vcplugin/data/demo-scenario.yaml")
