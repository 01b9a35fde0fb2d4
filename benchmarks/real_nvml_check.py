"""Read-only check of the agent's NVML backend against a real GPU: discovery, MIG mode, and the
placement table NVML reports for each profile of our tables. It never creates, destroys or changes
anything (no MIG mode change, no instance, no reset).

    python benchmarks/real_nvml_check.py
"""

from __future__ import annotations

import ctypes
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pynvml  # noqa: E402

from nodeagent.nvml import Nvml  # noqa: E402
from vcplugin.core.migtables import find_model  # noqa: E402


def placements(nv: Nvml, index: int, profile_id: int) -> list[tuple[int, int]] | str:
    h = nv.handle(index)
    arr = (pynvml.c_nvmlGpuInstancePlacement_t * 16)()
    cnt = ctypes.c_uint(16)
    try:
        pynvml.nvmlDeviceGetGpuInstancePossiblePlacements(h, profile_id, arr, ctypes.byref(cnt))
    except pynvml.NVMLError as exc:
        return f"error: {exc}"
    return [(int(arr[k].start), int(arr[k].size)) for k in range(cnt.value)]


def main() -> None:
    nv = Nvml(pynvml)
    report: dict[str, object] = {"driver": nv.init(), "gpus": []}
    for g in nv.gpus():
        model = find_model(g.name)
        entry: dict[str, object] = {
            "gpu": g.__struct_fields__ and {f: getattr(g, f) for f in g.__struct_fields__},
            "our_model": model.key if model else None,
        }
        try:
            nv.health_probe(g.index)
            entry["health_probe"] = "ok"
        except pynvml.NVMLError as exc:
            entry["health_probe"] = str(exc)
        if model is not None:
            table = {}
            for p in model.profiles:
                got = placements(nv, g.index, p.profile_id)
                ours = [(s, p.size) for s in p.starts]
                table[p.name] = {
                    "id": p.profile_id,
                    "nvml": got,
                    "ours": ours,
                    "match": got == ours if isinstance(got, list) else None,
                }
            entry["placements"] = table
        if g.mig_current:
            try:
                entry["profiles"] = [
                    {
                        "index": p.index,
                        "id": p.id,
                        "name": p.name,
                        "slices": p.slices,
                        "memory_mib": p.memory_mib,
                        "count": p.instance_count,
                        "placements": p.placements,
                    }
                    for p in nv.profiles(g.index)
                ]
                entry["instances"] = [
                    i.__struct_fields__ and {f: getattr(i, f) for f in i.__struct_fields__}
                    for i in nv.instances(g.index)
                ]
            except pynvml.NVMLError as exc:
                entry["profiles"] = f"error: {exc}"
        else:
            # Some drivers answer profile queries with MIG off; compare them with our tables.
            try:
                offered = nv.profiles(g.index)
            except pynvml.NVMLError as exc:
                offered = []
                entry["profiles"] = f"error (expected on drivers that need MIG on): {exc}"
            if offered and model is not None:
                rows = []
                for p in offered:
                    ours = next((o for o in model.profiles if o.index == p.index), None)
                    rows.append(
                        {
                            "index": p.index,
                            "id": p.id,
                            "nvml_name": p.name,
                            "nvml_mib": p.memory_mib,
                            "slices": p.slices,
                            "count": p.instance_count,
                            "ours": None
                            if ours is None
                            else [ours.name, ours.profile_id, ours.memory_mib, ours.slices, ours.max_count],
                        }
                    )
                entry["profiles"] = rows
        report["gpus"].append(entry)  # type: ignore[attr-defined]
    print(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
