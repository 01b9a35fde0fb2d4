"""A Kubernetes Pod (v1 JSON/YAML as a dict) turned into per-container vGPU requests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from . import names
from .config import DeviceConfig
from .quantity import QuantityError, parse_quantity, quantity_int


class RequestError(ValueError):
    """A pod whose GPU request cannot be honoured as written; the message says what to change."""


class ContainerRequest(msgspec.Struct, frozen=True):
    name: str
    init: bool
    count: int  # vGPUs
    memory: int  # MiB per vGPU; 0 when not given
    memory_percent: int  # percent of a GPU's memory per vGPU; 0 when not given
    cores: int  # percent of a GPU's SMs per vGPU


class PodRequest(msgspec.Struct, frozen=True):
    uid: str
    namespace: str
    name: str
    containers: tuple[ContainerRequest, ...]  # only containers that ask for vGPUs; init containers first
    mode: str | None = None  # mig | hami-core | None (either)
    use_types: tuple[str, ...] = ()
    nouse_types: tuple[str, ...] = ()
    use_uuids: tuple[str, ...] = ()
    nouse_uuids: tuple[str, ...] = ()
    node_policy: str | None = None
    gpu_policy: str | None = None
    cpu_milli: int = 0  # host CPU request of the pod
    memory_bytes: int = 0  # host memory request of the pod

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def wants_gpu(self) -> bool:
        return bool(self.containers)

    @property
    def vgpu_count(self) -> int:
        return sum(c.count for c in self.containers)


def _resource(resources: Mapping[str, Any] | None, name: str) -> object | None:
    """Limits first (what HAMi and Volcano read), then requests."""
    if not resources:
        return None
    for part in ("limits", "requests"):
        values = resources.get(part) or {}
        if name in values:
            found: object = values[name]
            return found
    return None


def _host(resources: Mapping[str, Any] | None, name: str) -> object | None:
    """Host CPU/memory: requests first (what the scheduler charges), then limits."""
    if not resources:
        return None
    for part in ("requests", "limits"):
        values = resources.get(part) or {}
        if name in values:
            found: object = values[name]
            return found
    return None


def _int_field(ctr: str, rname: str, raw: object, lo: int, hi: int | None) -> int:
    try:
        q = parse_quantity(raw)
    except QuantityError as exc:
        raise RequestError(f"container {ctr!r}: {rname}: {exc}") from None
    if q != int(q):
        raise RequestError(f"container {ctr!r}: {rname} must be a whole number, got {raw!r}")
    value = int(q)
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise RequestError(f"container {ctr!r}: {rname} must be {bound}, got {raw!r}")
    return value


def _container_request(ctr: Mapping[str, Any], init: bool, cfg: DeviceConfig) -> ContainerRequest | None:
    cname = str(ctr.get("name", "?"))
    res = ctr.get("resources")
    raw_count = _resource(res, cfg.resource_count)
    raw_mem = _resource(res, cfg.resource_memory)
    raw_pct = _resource(res, cfg.resource_memory_percentage) if cfg.resource_memory_percentage else None
    raw_cores = _resource(res, cfg.resource_cores)
    if raw_count is None and raw_mem is None and raw_pct is None and raw_cores is None:
        return None
    count = _int_field(cname, cfg.resource_count, raw_count, 0, None) if raw_count is not None else cfg.default_gpu_num
    if isinstance(raw_mem, str) and raw_mem.strip().endswith(
        ("Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "M", "G", "T", "P", "E")
    ):
        raise RequestError(
            f"container {cname!r}: {cfg.resource_memory} is a number of MiB; write e.g. 16384, not {raw_mem!r}"
        )
    memory = _int_field(cname, cfg.resource_memory, raw_mem, 1, None) if raw_mem is not None else 0
    percent = _int_field(cname, cfg.resource_memory_percentage, raw_pct, 1, 100) if raw_pct is not None else 0
    cores = _int_field(cname, cfg.resource_cores, raw_cores, 0, 100) if raw_cores is not None else cfg.default_cores
    if count == 0:
        if memory or percent or raw_cores is not None:
            raise RequestError(
                f"container {cname!r}: asks for GPU memory or cores with {cfg.resource_count}: 0; "
                f"set {cfg.resource_count} to at least 1 or drop the other GPU resources"
            )
        return None
    if memory == 0 and percent == 0 and cfg.default_memory:
        memory = cfg.default_memory
    return ContainerRequest(cname, init, count, memory, percent, cores)


def _list_annotation(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _policy(annotations: Mapping[str, str], key: str) -> str | None:
    raw = annotations.get(key)
    if not raw:
        return None
    for token in _list_annotation(raw):
        if token in names.POLICIES:
            return token
    raise RequestError(f"annotation {key}: {raw!r} is not a policy this scheduler knows; use binpack or spread")


def parse_pod(pod: Mapping[str, Any], cfg: DeviceConfig) -> PodRequest:
    """Raise RequestError with a reason a user can act on when the pod's GPU request is invalid."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    annotations: Mapping[str, str] = meta.get("annotations") or {}
    containers: list[ContainerRequest] = []
    cpu_sum = mem_sum = cpu_init = mem_init = 0
    for init, key in ((True, "initContainers"), (False, "containers")):
        for ctr in spec.get(key) or []:
            req = _container_request(ctr, init, cfg)
            if req is not None:
                containers.append(req)
            res = ctr.get("resources")
            try:
                cpu_raw, mem_raw = _host(res, "cpu"), _host(res, "memory")
                cpu = quantity_int(parse_quantity(cpu_raw) * 1000) if cpu_raw is not None else 0
                mem = quantity_int(mem_raw) if mem_raw is not None else 0
            except QuantityError as exc:
                raise RequestError(f"container {ctr.get('name', '?')!r}: {exc}") from None
            if init:
                cpu_init, mem_init = max(cpu_init, cpu), max(mem_init, mem)
            else:
                cpu_sum, mem_sum = cpu_sum + cpu, mem_sum + mem
    mode = annotations.get(names.ANNO_VGPU_MODE) or annotations.get(names.ANNO_VGPU_MODE_VOLCANO) or None
    if mode is not None:
        mode = mode.strip().lower()
        if mode not in names.MODES:
            raise RequestError(
                f"annotation {names.ANNO_VGPU_MODE}: {mode!r} is not a mode; use {' or '.join(names.MODES)}"
            )
    return PodRequest(
        uid=str(meta.get("uid") or ""),
        namespace=str(meta.get("namespace") or "default"),
        name=str(meta.get("name") or ""),
        containers=tuple(containers),
        mode=mode,
        use_types=_list_annotation(annotations.get(names.ANNO_USE_GPUTYPE)),
        nouse_types=_list_annotation(annotations.get(names.ANNO_NOUSE_GPUTYPE)),
        use_uuids=_list_annotation(annotations.get(names.ANNO_USE_GPUUUID)),
        nouse_uuids=_list_annotation(annotations.get(names.ANNO_NOUSE_GPUUUID)),
        node_policy=_policy(annotations, names.ANNO_NODE_POLICY),
        gpu_policy=_policy(annotations, names.ANNO_GPU_POLICY),
        cpu_milli=max(cpu_sum, cpu_init),
        memory_bytes=max(mem_sum, mem_init),
    )
