"""The device config (ConfigMap key `device-config.yaml`): loading, validation and the compiled form.

Accepts the design documents' format (`allowedGeometries` as a list of geometry lists) and Volcano's
named-group variant (`allowedGeometries: [{group, geometries: [...]}]`). Every error names the file,
line, field path and value; a caller that already runs keeps its last good config on error."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import msgspec

from . import names
from .migtables import MigModel, MigProfile, find_model, known_model_names, layout_problem, place
from .yamlsrc import Problems, fmt_path, parse_msgspec_path, yaml_with_lines

DATA_KEY = "device-config.yaml"
_serials = itertools.count(1)


class ConfigError(ValueError):
    """A config that must not be used. `errors` lists one line per problem."""

    def __init__(self, source: str, errors: list[str]):
        self.source = source
        self.errors = errors
        super().__init__(f"invalid device config {source}:\n  " + "\n  ".join(errors))


# --- the file's shape (msgspec decodes it; unknown keys are ignored, as HAMi's loader does) -----


class MigTemplate(msgspec.Struct, forbid_unknown_fields=False):
    name: str
    memory: int
    count: int = 1
    core: int | None = None


class NamedGeometry(msgspec.Struct, forbid_unknown_fields=False):
    geometries: list[MigTemplate]
    group: str = ""


class KnownGeometries(msgspec.Struct, rename="camel", forbid_unknown_fields=False):
    models: list[str]
    allowed_geometries: list[list[MigTemplate] | NamedGeometry]


class FilterDevices(msgspec.Struct, forbid_unknown_fields=False):
    uuid: list[str] = []
    index: list[int] = []


class NodeConfigEntry(msgspec.Struct, forbid_unknown_fields=False):
    name: str
    operatingmode: str = names.MODE_HAMI_CORE
    devicesplitcount: int | None = None
    devicememoryscaling: float | None = None
    devicecorescaling: float | None = None
    filterdevices: FilterDevices | None = None


class ScoreWeights(msgspec.Struct, rename="camel", forbid_unknown_fields=False):
    gpu_memory: float = 1.0
    cpu: float = 1.0
    memory: float = 1.0


class NvidiaSection(msgspec.Struct, rename="camel", forbid_unknown_fields=False):
    resource_count_name: str = names.DEFAULT_RESOURCE_COUNT
    resource_memory_name: str = names.DEFAULT_RESOURCE_MEMORY
    resource_memory_percentage_name: str = names.DEFAULT_RESOURCE_MEMORY_PERCENTAGE
    resource_core_name: str = names.DEFAULT_RESOURCE_CORES
    default_memory: int = 0
    default_cores: int = 0
    default_gpu_num: int = msgspec.field(default=1, name="defaultGPUNum")
    device_split_count: int = 10
    device_memory_scaling: float = 1.0
    device_core_scaling: float = 1.0
    known_mig_geometries: list[KnownGeometries] = []
    nodeconfig: list[NodeConfigEntry] = []


class SchedulerSection(msgspec.Struct, rename="camel", forbid_unknown_fields=False):
    node_policy: str = names.POLICY_BINPACK
    gpu_policy: str = names.POLICY_SPREAD
    weights: ScoreWeights = msgspec.field(default_factory=ScoreWeights)


class ConfigFile(msgspec.Struct, forbid_unknown_fields=False):
    nvidia: NvidiaSection = msgspec.field(default_factory=NvidiaSection)
    scheduler: SchedulerSection = msgspec.field(default_factory=SchedulerSection)


# --- the compiled form the core uses -------------------------------------------------------------


class GeometrySlot(msgspec.Struct, frozen=True):
    profile: MigProfile
    memory: int  # MiB charged and compared against requests (the config's `memory`)
    cores: int  # percent of the GPU's compute


class Geometry(msgspec.Struct, frozen=True):
    index: int  # position in the model's allowedGeometries
    group: str
    slots: tuple[GeometrySlot, ...]  # one per instance (counts expanded), in config order
    layout: tuple[tuple[str, int], ...]  # a valid placement of all slots on an empty GPU
    serial: int = 0  # unique per compiled geometry: a cheap cache key
    max_memory: int = 0  # the largest slot's memory

    def count(self, profile: str) -> int:
        return sum(1 for s in self.slots if s.profile.name == profile)

    def describe(self) -> str:
        parts: dict[str, int] = {}
        for s in self.slots:
            parts[s.profile.name] = parts.get(s.profile.name, 0) + 1
        return "[" + ", ".join(f"{n} x{c}" for n, c in parts.items()) + "]"


class NodeSettings(msgspec.Struct, frozen=True):
    mode: str
    split_count: int
    memory_scaling: float
    core_scaling: float
    filter_uuids: frozenset[str]
    filter_indexes: frozenset[int]


class DeviceConfig(msgspec.Struct, frozen=True):
    resource_count: str
    resource_memory: str
    resource_memory_percentage: str
    resource_cores: str
    default_memory: int
    default_cores: int
    default_gpu_num: int
    split_count: int
    memory_scaling: float
    core_scaling: float
    geometries: dict[str, tuple[Geometry, ...]]  # by MigModel.key
    nodes: dict[str, NodeSettings]
    node_policy: str
    gpu_policy: str
    weight_gpu_memory: float
    weight_cpu: float
    weight_memory: float
    warnings: tuple[str, ...] = ()

    def geometries_for(self, model: MigModel | None) -> tuple[Geometry, ...]:
        return self.geometries.get(model.key, ()) if model is not None else ()

    def node(self, name: str) -> NodeSettings:
        found = self.nodes.get(name)
        if found is not None:
            return found
        return NodeSettings(
            names.MODE_HAMI_CORE, self.split_count, self.memory_scaling, self.core_scaling, frozenset(), frozenset()
        )


# --- loading --------------------------------------------------------------------------------------


def load_config_text(text: str, source: str = "<device-config>") -> DeviceConfig:
    """Parse and validate a device config; raise ConfigError listing every problem found."""
    data, lines = yaml_with_lines(text, source, ConfigError)
    if data is None:
        data = {}
    # A ConfigMap manifest, or just its data map, are accepted too.
    if isinstance(data, dict) and isinstance(data.get("data"), dict) and DATA_KEY in data["data"]:
        return load_config_text(data["data"][DATA_KEY], f"{source} (data.{DATA_KEY})")
    problems = Problems(source, data, lines)
    if not isinstance(data, dict):
        problems.add((), "expected a mapping with an `nvidia:` section")
        raise ConfigError(source, problems.errors)
    try:
        parsed = msgspec.convert(data, ConfigFile, strict=False)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        path: tuple[Any, ...] = ()
        if " - at `$" in msg:
            msg, _, at = msg.partition(" - at `$")
            path = parse_msgspec_path(at.rstrip("`"))
        problems.add(path, msg)
        raise ConfigError(source, problems.errors) from None
    return _compile(parsed, problems)


def load_config_file(path: str | Path) -> DeviceConfig:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(str(p), [f"{p}: cannot read: {exc.strerror}"]) from None
    return load_config_text(text, str(p))


def default_config() -> DeviceConfig:
    """The shipped default (configs/device-config.yaml, packaged as vcplugin/data)."""
    from importlib import resources

    text = resources.files("vcplugin").joinpath("data/device-config.yaml").read_text()
    return load_config_text(text, "vcplugin/data/device-config.yaml")


def _compile(f: ConfigFile, problems: Problems) -> DeviceConfig:
    nv, N = f.nvidia, ("nvidia",)
    warnings: list[str] = []
    for field, value in (
        ("deviceSplitCount", nv.device_split_count),
        ("defaultGPUNum", nv.default_gpu_num),
    ):
        if value < 1:
            problems.add((*N, field), "must be at least 1")
    for field, fvalue in (
        ("deviceMemoryScaling", nv.device_memory_scaling),
        ("deviceCoreScaling", nv.device_core_scaling),
    ):
        if not fvalue > 0:
            problems.add((*N, field), "must be greater than 0")
    if nv.default_memory < 0:
        problems.add((*N, "defaultMemory"), "must not be negative")
    if not 0 <= nv.default_cores <= 100:
        problems.add((*N, "defaultCores"), "must be between 0 and 100")
    for field, rname in (
        ("resourceCountName", nv.resource_count_name),
        ("resourceMemoryName", nv.resource_memory_name),
        ("resourceCoreName", nv.resource_core_name),
    ):
        if not rname:
            problems.add((*N, field), "must not be empty")

    geometries: dict[str, tuple[Geometry, ...]] = {}
    seen_models: dict[str, tuple[Any, ...]] = {}
    for ei, entry in enumerate(nv.known_mig_geometries):
        epath = (*N, "knownMigGeometries", ei)
        models: list[MigModel] = []
        for mi, mname in enumerate(entry.models):
            model = find_model(mname)
            if model is None:
                problems.add(
                    (*epath, "models", mi),
                    f"unknown GPU model; known MIG models: {', '.join(known_model_names())}",
                )
                continue
            if model.key in seen_models and seen_models[model.key][: len(epath)] != epath:
                problems.add(
                    (*epath, "models", mi),
                    f"model {model.key} already has geometries at {fmt_path(seen_models[model.key])}",
                )
                continue
            seen_models.setdefault(model.key, (*epath, "models", mi))
            if model not in models:
                models.append(model)
        if not entry.allowed_geometries:
            problems.add((*epath, "allowedGeometries"), "must list at least one geometry")
        for model in models:
            compiled = []
            for gi, geom in enumerate(entry.allowed_geometries):
                g = _compile_geometry(model, gi, geom, (*epath, "allowedGeometries", gi), problems, warnings)
                if g is not None:
                    compiled.append(g)
            geometries[model.key] = tuple(compiled)

    nodes: dict[str, NodeSettings] = {}
    for ni, ne in enumerate(nv.nodeconfig):
        npath = (*N, "nodeconfig", ni)
        if ne.operatingmode not in names.MODES:
            problems.add((*npath, "operatingmode"), f"unknown operating mode; use one of {', '.join(names.MODES)}")
        if ne.name in nodes:
            problems.add((*npath, "name"), "duplicate node name")
        split = ne.devicesplitcount if ne.devicesplitcount is not None else nv.device_split_count
        mscale = ne.devicememoryscaling if ne.devicememoryscaling is not None else nv.device_memory_scaling
        cscale = ne.devicecorescaling if ne.devicecorescaling is not None else nv.device_core_scaling
        if split < 1:
            problems.add((*npath, "devicesplitcount"), "must be at least 1")
        if not mscale > 0:
            problems.add((*npath, "devicememoryscaling"), "must be greater than 0")
        if not cscale > 0:
            problems.add((*npath, "devicecorescaling"), "must be greater than 0")
        fd = ne.filterdevices or FilterDevices()
        nodes[ne.name] = NodeSettings(ne.operatingmode, split, mscale, cscale, frozenset(fd.uuid), frozenset(fd.index))

    sch, S = f.scheduler, ("scheduler",)
    if sch.node_policy not in names.POLICIES:
        problems.add((*S, "nodePolicy"), f"unknown policy; use one of {', '.join(names.POLICIES)}")
    if sch.gpu_policy not in names.POLICIES:
        problems.add((*S, "gpuPolicy"), f"unknown policy; use one of {', '.join(names.POLICIES)}")
    w = sch.weights
    for field, wv in (("gpuMemory", w.gpu_memory), ("cpu", w.cpu), ("memory", w.memory)):
        if wv < 0:
            problems.add((*S, "weights", field), "must not be negative")
    if w.gpu_memory + w.cpu + w.memory <= 0:
        problems.add((*S, "weights"), "at least one weight must be positive")

    if problems.errors:
        raise ConfigError(problems.source, problems.errors)
    return DeviceConfig(
        resource_count=nv.resource_count_name,
        resource_memory=nv.resource_memory_name,
        resource_memory_percentage=nv.resource_memory_percentage_name,
        resource_cores=nv.resource_core_name,
        default_memory=nv.default_memory,
        default_cores=nv.default_cores,
        default_gpu_num=nv.default_gpu_num,
        split_count=nv.device_split_count,
        memory_scaling=nv.device_memory_scaling,
        core_scaling=nv.device_core_scaling,
        geometries=geometries,
        nodes=nodes,
        node_policy=sch.node_policy,
        gpu_policy=sch.gpu_policy,
        weight_gpu_memory=w.gpu_memory,
        weight_cpu=w.cpu,
        weight_memory=w.memory,
        warnings=tuple(warnings),
    )


def _compile_geometry(
    model: MigModel,
    index: int,
    geom: list[MigTemplate] | NamedGeometry,
    path: tuple[Any, ...],
    problems: Problems,
    warnings: list[str],
) -> Geometry | None:
    if isinstance(geom, NamedGeometry):
        templates, group, tpath = geom.geometries, geom.group, (*path, "geometries")
        if "-" in group:
            problems.add((*path, "group"), "group names must not contain '-' (Volcano's device IDs split on it)")
    else:
        templates, group, tpath = geom, "", path
    if not templates:
        problems.add(path, "a geometry must list at least one instance type")
        return None
    before = len(problems.errors)
    slots: list[GeometrySlot] = []
    for ti, t in enumerate(templates):
        prof = model.profile(t.name)
        if prof is None:
            known = ", ".join(p.name for p in model.profiles)
            problems.add((*tpath, ti, "name"), f"unknown MIG profile for {model.key} (known: {known})")
            continue
        if t.memory <= 0:
            problems.add((*tpath, ti, "memory"), "memory must be a positive number of MiB")
        elif t.memory > prof.memory_mib:
            warnings.append(
                f"{fmt_path((*tpath, ti, 'memory'))}: {t.memory} MiB is more than a real {prof.name} holds "
                f"({prof.memory_mib} MiB on {model.key}); pods will be promised memory the instance lacks"
            )
        if t.count <= 0:
            problems.add((*tpath, ti, "count"), "count must be at least 1")
        elif t.count > prof.max_count:
            problems.add((*tpath, ti, "count"), f"{prof.name} allows at most {prof.max_count} instances per GPU")
        cores = t.core if t.core is not None else model.cores_percent(prof)
        slots.extend(GeometrySlot(prof, t.memory, cores) for _ in range(max(t.count, 0)))
    if len(problems.errors) > before:
        return None
    used = sum(s.profile.slices for s in slots)
    if used > model.compute_slices:
        problems.add(path, f"uses {used} compute slices; {model.key} has {model.compute_slices}", show_value=False)
        return None
    layout = place(model, (), [s.profile.name for s in slots])
    if layout is None:
        why = layout_problem(model, ()) or "no placement of these instances exists on the placement table"
        problems.add(path, f"cannot be placed on a {model.key}: {why}", show_value=False)
        return None
    # Stable order: larger instances first is how `place` lays them out; slots keep config order.
    return Geometry(index, group, tuple(slots), layout, next(_serials), max(s.memory for s in slots))
