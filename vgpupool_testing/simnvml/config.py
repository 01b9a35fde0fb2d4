"""Build a SimNvml from a plain dict or YAML.

driver_version: "550.90.07"     # optional
root: true                      # optional; false -> mutating calls answer NO_PERMISSION
seed: 0                         # optional; GPU and MIG UUIDs are drawn from it (reproducible)
gi_ids: sequential              # optional; or "swizzle" (the memory-partition ids A100 drivers showed)
gpus:
  - model: "NVIDIA A100-PCIE-40GB"   # NVML name (migtables.find_model); unknown names need memory_mib
    count: 2                          # optional, default 1
    mig: true                         # MIG mode current (default false)
    mig_pending: false                # optional, default = mig
    uuids: [GPU-..., GPU-...]         # optional, one per GPU; or
    uuid_prefix: "GPU-node1-"         # optional: UUIDs <prefix>0, <prefix>1, ... within this entry
    name: "..."                       # optional NVML name (default: model)
    memory_mib: 15360                 # needed for non-MIG models ("Tesla T4", "NVIDIA L4")
    pci_device_id: 0x20F110DE         # optional
    hide_profiles: ["1g.10gb"]        # optional: profiles this driver does not offer
    holders: ["nvidia-persistenced"]  # optional: clients keeping the GPU busy
    instances:                        # optional, created on every GPU of the entry (MIG on)
      - {profile: "3g.20gb", start: 4, compute: true}
    processes:                        # optional; gpu = index within this entry (default 0)
      - {pid: 1234, used_mib: 1000, gpu: 0, gi_id: 1, ci_id: 0}
faults:                               # optional, see faults.fault_from_dict
  - {kind: call_error, calls: nvmlDeviceGetMemoryInfo, gpu: 1, error: GPU_IS_LOST, count: null}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from .sim import DEFAULT_DRIVER_VERSION, GpuSpec, SimNvml

_TOP_KEYS = {"gpus", "driver_version", "root", "seed", "gi_ids", "faults"}
_GPU_KEYS = {
    "model",
    "count",
    "mig",
    "mig_pending",
    "uuids",
    "uuid_prefix",
    "name",
    "memory_mib",
    "pci_device_id",
    "hide_profiles",
    "holders",
    "instances",
    "processes",
}


def _check_keys(where: str, spec: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown} (allowed: {sorted(allowed)})")


def from_dict(spec: dict[str, Any]) -> SimNvml:
    if not isinstance(spec, dict):
        raise ValueError(f"simulator spec must be a mapping, got {type(spec).__name__}")
    _check_keys("simulator spec", spec, _TOP_KEYS)
    sim = SimNvml(
        driver_version=str(spec.get("driver_version", DEFAULT_DRIVER_VERSION)),
        root=bool(spec.get("root", True)),
        seed=int(spec.get("seed", 0)),
        gi_ids=str(spec.get("gi_ids", "sequential")),
    )
    for n, entry in enumerate(spec.get("gpus") or []):
        where = f"gpus[{n}]"
        if not isinstance(entry, dict) or "model" not in entry:
            raise ValueError(f"{where}: needs at least a model")
        _check_keys(where, entry, _GPU_KEYS)
        count = int(entry.get("count", 1))
        uuids = entry.get("uuids")
        if uuids is not None and len(uuids) != count:
            raise ValueError(f"{where}: {len(uuids)} uuids for count {count}")
        prefix = entry.get("uuid_prefix")
        if prefix is not None and not str(prefix).startswith("GPU-"):
            prefix = "GPU-" + str(prefix)
        first = None
        for k in range(count):
            uuid = uuids[k] if uuids else (f"{prefix}{k}" if prefix else None)
            try:
                index = sim.add_gpu(
                    GpuSpec(
                        model=str(entry["model"]),
                        mig=bool(entry.get("mig", False)),
                        mig_pending=entry.get("mig_pending"),
                        uuid=uuid,
                        name=entry.get("name"),
                        memory_mib=entry.get("memory_mib"),
                        pci_device_id=entry.get("pci_device_id"),
                        hide_profiles=tuple(entry.get("hide_profiles") or ()),
                        holders=tuple(entry.get("holders") or ()),
                    )
                )
                for inst in entry.get("instances") or []:
                    sim.create_instance(index, inst["profile"], inst.get("start"), bool(inst.get("compute", True)))
            except Exception as exc:
                raise ValueError(f"{where}: {exc}") from exc
            first = index if first is None else first
        for proc in entry.get("processes") or []:
            k = int(proc.get("gpu", 0))
            if not 0 <= k < count or first is None:
                raise ValueError(f"{where}: process gpu {k} outside this entry's {count} GPUs")
            sim.add_process(first + k, int(proc["pid"]), int(proc["used_mib"]), proc.get("gi_id"), proc.get("ci_id"))
    for fault in spec.get("faults") or []:
        sim.inject(fault)
    return sim


def from_yaml(path_or_text: str | os.PathLike[str]) -> SimNvml:
    """From a YAML file path or YAML text."""
    if isinstance(path_or_text, os.PathLike) or ("\n" not in path_or_text and os.path.isfile(path_or_text)):
        text = Path(path_or_text).read_text()
    else:
        text = path_or_text
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{str(path_or_text)[:80]!r} is neither a simulator YAML file nor YAML text with a mapping")
    return from_dict(data)


def load(spec: str) -> SimNvml:
    """A simulator from "sim:FILE" or a plain path (what an agent's --nvml option can take)."""
    path = spec[len("sim:") :] if spec.startswith("sim:") else spec
    if not os.path.isfile(path):
        raise FileNotFoundError(f"simulator spec file {path!r} not found")
    return from_yaml(Path(path))
