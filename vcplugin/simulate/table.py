"""The readable table `vcplugin simulate` prints without --json."""

from __future__ import annotations

import textwrap

from .engine import SimulationResult


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(out)


def render(result: SimulationResult) -> str:
    rows = []
    for p in result.placements:
        for c in p.containers:
            devs = []
            for d in c.devices:
                if d.profile:
                    devs.append(f"GPU{d.index} {d.profile}@{d.placement[0] if d.placement else '?'}")
                else:
                    devs.append(f"GPU{d.index} {d.memory}MiB {d.cores}%")
            rows.append([p.pod, p.node, c.name, ", ".join(devs)])
    parts = [f"Placed {len(result.placements)} pod(s)", _table(["POD", "NODE", "CONTAINER", "DEVICES"], rows)]
    if result.unschedulable:
        parts.append(f"\nUnschedulable {len(result.unschedulable)} pod(s)")
        for u in result.unschedulable:
            parts.append(f"  {u.pod}:")
            parts.extend(textwrap.wrap(u.reason, 100, initial_indent="    ", subsequent_indent="    "))
    if result.departed:
        parts.append(f"\nDeparted: {', '.join(result.departed)}")
    gpu_rows = []
    for g in result.gpus:
        if g.instances:
            lay = " ".join(f"{i.profile}@{i.placement[0]}{'*' if i.pod else ''}" for i in g.instances)
        else:
            lay = f"{g.shares} share(s)" if g.mode == "hami-core" else "empty"
        gpu_rows.append(
            [
                g.node,
                str(g.index),
                g.model,
                g.mode,
                f"{g.used_memory}/{g.total_memory}",
                f"{g.used_cores}%",
                "-" if g.geometry is None else str(g.geometry),
                lay,
            ]
        )
    parts.append(f"\nGPUs ({sum(1 for g in result.gpus if g.used_memory)} of {len(result.gpus)} in use; * = in use)")
    parts.append(_table(["NODE", "GPU", "MODEL", "MODE", "MEM MiB", "CORES", "GEOM", "LAYOUT"], gpu_rows))
    return "\n".join(parts)
