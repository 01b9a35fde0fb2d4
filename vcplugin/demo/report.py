"""What the demo shows at the end: a summary (text or JSON) and a self-contained HTML report with
inline SVG (no scripts, no external assets): GPU allocation over time, each MIG GPU's final layout as
memory slices, and each HAMi-core GPU's shares."""

from __future__ import annotations

import hashlib
import html
import textwrap
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

from ..core import names
from .run import DemoResult, GpuFinal, PodRecord, mean

MIG_COLOR = "#4e79a7"
HAMI_COLOR = "#f28e2b"
VERB_ORDER = {
    v: i for i, v in enumerate(("onSessionOpen", "predicate", "prioritize", "allocate", "deallocate", "onSessionClose"))
}
# Hue per job kind (pods of one kind share a hue; each job gets its own shade).
KIND_HUES = {
    "notebook": 212,
    "inference": 178,
    "finetune": 268,
    "batch": 30,
    "pair": 12,
    "open": 130,
    "train-gang": 350,
}


# --- the numbers ------------------------------------------------------------------------------------


def _ms(seconds: float) -> float:
    return round(1000 * seconds, 1)


def unplaced_reason(rec: PodRecord) -> str:
    if rec.never:
        return f"never fits: {rec.detail or rec.reason}"
    return f"still waiting: {rec.detail or rec.reason}" if rec.attempts else "not tried yet"


def summarize(r: DemoResult, report_path: str | None = None) -> dict[str, Any]:
    plan, pods, samples = r.plan, list(r.pods.values()), r.samples
    placed = [p for p in pods if p.node]
    gpus_by_mode = Counter(g.mode for g in r.gpus)
    kinds: dict[str, dict[str, int]] = {k: {} for k in plan.kinds}  # the workload's order
    for p in pods:
        k = kinds.setdefault(p.kind, {})
        if not k:
            k.update({"pods": 0, "placed": 0, names.MODE_MIG: 0, names.MODE_HAMI_CORE: 0})
        k["pods"] += 1
        if p.node:
            k["placed"] += 1
            for mode in set(p.modes):
                k[mode] += 1
    gangs = []
    for job in r.jobs.values():
        if len(job.pods) > 1:
            at = r.job_placed.get(job.name)
            gangs.append(  # sessions are numbered from 1, as everywhere the demo shows them
                {
                    "job": job.name,
                    "pods": len(job.pods),
                    "arrived": job.arrival + 1,
                    "placed": None if at is None else at + 1,
                    "waited": None if at is None else at - job.arrival,
                }
            )
    admissions = [p.admission for p in placed if p.admission is not None]
    memory = [s.memory_percent for s in samples]
    calls = {
        verb: {
            "count": c.count,
            "errors": c.errors,
            "p50_ms": _ms(c.quantile(0.5)),
            "p99_ms": _ms(c.quantile(0.99)),
        }
        for verb, c in sorted(r.calls.items(), key=lambda kv: (VERB_ORDER.get(kv[0], len(VERB_ORDER)), kv[0]))
    }
    return {
        "seed": plan.seed,
        "workload": plan.source,
        "seconds": round(r.seconds, 2),
        "startup_seconds": round(r.startup_seconds, 2),
        "steps": plan.steps,
        "cluster": {
            "nodes": len(plan.nodes),
            "gpus": len(r.gpus),
            "mig_gpus": gpus_by_mode[names.MODE_MIG],
            "hami_core_gpus": gpus_by_mode[names.MODE_HAMI_CORE],
            "models": dict(Counter(g.model for g in r.gpus)),
        },
        "pods": {
            "total": len(pods),
            "jobs": len(r.jobs),
            "placed": len(placed),
            "running": sum(1 for p in placed if p.departed_step is None),
            "departed": sum(1 for p in pods if p.departed_step is not None),
            "pending": len(pods) - len(placed),
            "unschedulable": [{"pod": p.key, "reason": unplaced_reason(p)} for p in pods if not p.node],
            "failed_admission": sum(1 for a in admissions if not a.ok),
        },
        "by_kind": {name: k for name, k in kinds.items() if k},
        "gangs": gangs,
        "gpu": {
            "peak_busy": max((s.gpus_busy for s in samples), default=0),
            "memory_peak_percent": round(max(memory, default=0.0), 1),
            "memory_mean_percent": round(mean(memory), 1),
        },
        "mig": {
            "instances_created": r.created,
            "instances_destroyed": r.destroyed,
            "instances_at_end": sum(len(g["gpu_instances"]) for s in r.sims.values() for g in s["gpus"]),
            "geometry_switches": len(r.switches),
            "switches_around_running_instances": sum(1 for s in r.switches if s.kept),
        },
        "allocate": {
            "ok": r.allocations_ok,
            "failed": r.allocations_failed,
            "p50_ms": _ms(sorted(a.seconds for a in admissions)[len(admissions) // 2]) if admissions else 0.0,
        },
        "scheduler_calls": calls,
        "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in r.checks],
        "warnings": r.warnings,
        "report": report_path,
    }


def summary_text(s: dict[str, Any]) -> str:
    cl, pods, gpu, mig, alloc = s["cluster"], s["pods"], s["gpu"], s["mig"], s["allocate"]
    lines = [
        f"vgpu-pool demo: {cl['nodes']} nodes, {cl['gpus']} GPUs ({cl['mig_gpus']} MIG, {cl['hami_core_gpus']} "
        f"HAMi-core), {pods['total']} pods in {pods['jobs']} Volcano Jobs, seed {s['seed']}",
        f"{s['steps']} scheduling sessions in {s['seconds']:.1f} s (start-up {s['startup_seconds']:.1f} s)",
        "",
    ]

    def row(label: str, text: str) -> None:
        lines.append(textwrap.fill(text, 110, initial_indent=f"  {label:<12}", subsequent_indent=" " * 14))

    def row_items(label: str, items: list[str]) -> None:
        """Items on as few lines as fit, never broken inside one."""
        out, line = [], ""
        for item in items:
            if line and len(line) + 2 + len(item) > 96:
                out.append(line + ",")
                line = item
            else:
                line = f"{line}, {item}" if line else item
        out.append(line)
        lines.append(f"  {label:<12}" + ("\n" + " " * 14).join(out))

    row(
        "Pods",
        f"{pods['placed']} of {pods['total']} placed; {pods['running']} running at the end, {pods['departed']} "
        f"departed, {pods['pending']} not placed"
        + (f", {pods['failed_admission']} failed admission" if pods["failed_admission"] else ""),
    )
    kinds = []
    for kind, k in s["by_kind"].items():
        text = f"{kind} {k['placed']}/{k['pods']}"
        if kind == "open" or (k[names.MODE_MIG] and k[names.MODE_HAMI_CORE]):
            text += f" ({k[names.MODE_MIG]} MIG, {k[names.MODE_HAMI_CORE]} HAMi-core)"
        kinds.append(text)
    row_items("by kind", kinds)
    gangs = s["gangs"]
    if len(gangs) <= 2:
        for g in gangs:
            if g["placed"] is None:
                row("Gang", f"{g['job']}: {g['pods']} pods, not placed (arrived at step {g['arrived']})")
            else:
                wait = f"after waiting {g['waited']} step(s)" if g["waited"] else "on arrival"
                row("Gang", f"{g['job']}: all {g['pods']} pods placed together at step {g['placed']}, {wait}")
    else:
        done = [g for g in gangs if g["placed"] is not None]
        waits = [g["waited"] for g in done if g["waited"]]
        text = f"{len(done)} of {len(gangs)} gang jobs placed whole, {len(done) - len(waits)} on arrival"
        if waits:
            text += f", {len(waits)} after waiting (up to {max(waits)} steps)"
        row("Gangs", text + ("" if len(done) == len(gangs) else f"; {len(gangs) - len(done)} still waiting"))
    row(
        "GPUs",
        f"peak {gpu['peak_busy']}/{cl['gpus']} busy; GPU memory promised: peak {gpu['memory_peak_percent']:.0f}%, "
        f"mean {gpu['memory_mean_percent']:.0f}%",
    )
    row(
        "MIG",
        f"{mig['instances_created']} instances created, {mig['instances_destroyed']} destroyed, "
        f"{mig['instances_at_end']} at the end; {mig['geometry_switches']} geometry switches "
        f"({mig['switches_around_running_instances']} around running instances)",
    )
    row(
        "Allocate",
        f"{alloc['ok']} kubelet Allocate answers, {alloc['failed']} failed (median {alloc['p50_ms']:.0f} ms)",
    )
    calls = s["scheduler_calls"]
    shown = ("predicate", "prioritize", "allocate", "deallocate")
    verbs = ", ".join(f"{v} {calls[v]['count']}" for v in shown if v in calls)
    pred = calls.get("predicate")
    lat = f" (predicate median {pred['p50_ms']:.0f} ms, p99 {pred['p99_ms']:.0f} ms)" if pred else ""
    errors = sum(c["errors"] for c in calls.values())
    row("Sidecar", f"{verbs}{lat}" + (f"; {errors} errors" if errors else ""))
    if pods["unschedulable"]:
        lines += ["", "  Not placed"]
        for u in pods["unschedulable"][:10]:
            lines.append(f"    {u['pod']}: {_clip(u['reason'], 150)}")
        if len(pods["unschedulable"]) > 10:
            lines.append(f"    ... and {len(pods['unschedulable']) - 10} more")
    lines += ["", "  Checks"]
    for c in s["checks"]:
        lines.append(f"    [{'ok' if c['ok'] else 'FAIL'}] {c['name']}: {c['detail']}")
    if s["warnings"]:
        lines += ["", f"  {len(s['warnings'])} warning(s) logged by the services, e.g.: {_clip(s['warnings'][0], 150)}"]
    if s.get("report"):
        lines += ["", f"Report: {s['report']}"]
    return "\n".join(lines)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


# --- the HTML report ---------------------------------------------------------------------------------


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def job_color(kind: str, job: str) -> str:
    hue = KIND_HUES.get(kind, int(hashlib.sha1(kind.encode()).hexdigest()[:4], 16) % 360)
    shade = int(hashlib.sha1(job.encode()).hexdigest()[:4], 16)
    return f"hsl({hue}, {50 + shade % 25}%, {48 + (shade >> 5) % 22}%)"


CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 24px auto;
       max-width: 1100px; padding: 0 16px; }
h1 { font-size: 24px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; }
h3 { font-size: 14px; margin: 18px 0 4px; }
.sub { color: #555; margin-top: 0; } .muted { color: #777; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0; }
.card { border: 1px solid #ddd; border-radius: 8px; padding: 10px 14px; min-width: 140px; }
.card b { display: block; font-size: 22px; } .card span { color: #666; font-size: 12px; }
table { border-collapse: collapse; margin: 8px 0; } td, th { padding: 3px 10px; text-align: left;
        border-bottom: 1px solid #eee; vertical-align: top; } th { font-weight: 600; }
.ok { color: #1a7f37; font-weight: 600; } .fail { color: #cf222e; font-weight: 600; }
.legend span { display: inline-block; margin-right: 14px; } .sw { display: inline-block; width: 12px; height: 12px;
        vertical-align: -1px; margin-right: 4px; border-radius: 2px; }
svg text { font: 11px system-ui, sans-serif; fill: #333; } svg .small { font-size: 10px; }
"""


def write_html(r: DemoResult, summary: dict[str, Any], path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(render_html(r, summary))


def render_html(r: DemoResult, s: dict[str, Any]) -> str:
    cl, pods, mig = s["cluster"], s["pods"], s["mig"]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>vgpu-pool demo (seed {s['seed']})</title><style>{CSS}</style></head><body>",
        "<h1>vgpu-pool demo</h1>",
        f"<p class='sub'>{cl['nodes']} nodes with {cl['gpus']} GPUs ({_e(_models(cl['models']))}), "
        f"{cl['mig_gpus']} in MIG mode and {cl['hami_core_gpus']} in HAMi-core mode; {pods['total']} pods in "
        f"{pods['jobs']} Volcano Jobs over {s['steps']} scheduling sessions; seed {s['seed']}; "
        f"{s['seconds']:.1f} s.</p>",
        "<p class='muted'>A simulation in one process: an in-memory Kubernetes API, a simulated NVML per node, a fake "
        "kubelet and a Volcano-like scheduler. The scheduler sidecar and the node agents are the real services: "
        "the sidecar answered every predicate, prioritize and allocate over HTTP, and the agents created the MIG "
        "instances and answered kubelet's Allocate over gRPC.</p>",
        "<div class='cards'>",
        _card(f"{pods['placed']}/{pods['total']}", "pods placed"),
        _card(str(s["gpu"]["peak_busy"]), f"of {cl['gpus']} GPUs busy at peak"),
        _card(f"{s['gpu']['memory_peak_percent']:.0f}%", "GPU memory promised at peak"),
        _card(
            str(mig["geometry_switches"]),
            f"MIG geometry switches ({mig['switches_around_running_instances']} around running instances)",
        ),  # fmt: skip
        _card(f"{mig['instances_created']} / {mig['instances_destroyed']}", "MIG instances created / destroyed"),
        _card(str(s["allocate"]["ok"]), "kubelet Allocate answers"),
        "</div>",
        "<h2>GPU allocation over time</h2>",
        "<p class='muted'>GPU memory promised to pods, as a share of all GPU memory in the cluster, per "
        "scheduling session; below, pods running and waiting, and the sessions in which a MIG GPU switched "
        "geometry.</p>",
        _memory_chart(r),
        _pods_chart(r),
        "<h2>MIG GPUs at the end</h2>",
        "<p class='muted'>Each row is a GPU's 8 memory slices. Colored: a MIG instance and the pod it was created "
        "for (hover for details); hatched: a free instance of the GPU's current geometry, ready for the next pod; "
        "grey: slices the current geometry leaves unused. Colors follow the job kind:</p>",
        _legend(r),
        _mig_section(r),
        "<h2>HAMi-core GPUs at the end</h2>",
        "<p class='muted'>Each bar is a GPU's memory; each segment a pod's share (memory limit and SM percent "
        "enforced by HAMi-core).</p>",
        _hami_section(r),
        "<h2>Geometry switches</h2>",
        _switch_table(r),
        "<h2>Pods not placed</h2>",
        _unplaced_table(s),
        "<h2>Checks</h2>",
        _checks(s),
        "<h2>Scheduler calls</h2>",
        _calls_table(s),
        "</body></html>",
    ]
    return "\n".join(parts)


def _models(models: dict[str, int]) -> str:
    return ", ".join(f"{n} x {m}" for m, n in models.items())


def _card(value: str, label: str) -> str:
    return f"<div class='card'><b>{_e(value)}</b><span>{_e(label)}</span></div>"


def _legend(r: DemoResult) -> str:
    kinds = sorted({p.kind for p in r.pods.values() if p.node})
    items = [f"<span><i class='sw' style='background:{job_color(k, k)}'></i>{_e(k)}</span>" for k in kinds]
    return "<p class='legend'>" + "".join(items) + "</p>"


# --- charts ------------------------------------------------------------------------------------------

W, PAD_L, PAD_R, PAD_T, PAD_B = 960, 48, 150, 12, 28


def _x(step: int, steps: int) -> float:
    span = W - PAD_L - PAD_R
    return PAD_L + (span * step / (steps - 1) if steps > 1 else span / 2)


def _memory_chart(r: DemoResult) -> str:
    samples, steps, h = r.samples, r.plan.steps, 240
    if not samples:
        return "<p>No samples.</p>"
    plot_h = h - PAD_T - PAD_B

    def y(pct: float) -> float:
        return PAD_T + plot_h * (1 - pct / 100)

    total = [max(1, s.mig_total + s.hami_total) for s in samples]
    mig = [100 * s.mig_used / t for s, t in zip(samples, total, strict=True)]
    both = [100 * (s.mig_used + s.hami_used) / t for s, t in zip(samples, total, strict=True)]
    xs = [_x(s.step, steps) for s in samples]
    base = y(0)
    mig_area = _area(xs, [y(v) for v in mig], [base] * len(xs))
    hami_area = _area(xs, [y(v) for v in both], [y(v) for v in mig])
    out = [f"<svg viewBox='0 0 {W} {h}' width='100%' role='img' aria-label='GPU memory promised over time'>"]
    for pct in (0, 25, 50, 75, 100):
        out.append(
            f"<line x1='{PAD_L}' x2='{W - PAD_R}' y1='{y(pct):.1f}' y2='{y(pct):.1f}' stroke='#e5e5e5'/>"
            f"<text x='{PAD_L - 6}' y='{y(pct) + 4:.1f}' text-anchor='end'>{pct}%</text>"
        )
    out.append(f"<polygon points='{mig_area}' fill='{MIG_COLOR}' fill-opacity='0.85'/>")
    out.append(f"<polygon points='{hami_area}' fill='{HAMI_COLOR}' fill-opacity='0.85'/>")
    for s, x in zip(samples, xs, strict=True):
        tip = (
            f"session {s.step + 1}: MIG {s.mig_used // 1024} GiB of {s.mig_total // 1024}, HAMi-core "
            f"{s.hami_used // 1024} GiB of {s.hami_total // 1024}; {s.gpus_busy}/{s.gpus} GPUs busy"
        )
        out.append(
            f"<rect x='{x - 4:.1f}' y='{PAD_T}' width='8' height='{plot_h}' fill='transparent'>"
            f"<title>{_e(tip)}</title></rect>"
        )
    out.append(_x_axis(steps, h))
    lx = W - PAD_R + 14
    out.append(
        f"<rect x='{lx}' y='{PAD_T + 4}' width='12' height='12' fill='{HAMI_COLOR}'/>"
        f"<text x='{lx + 18}' y='{PAD_T + 14}'>HAMi-core</text>"
        f"<rect x='{lx}' y='{PAD_T + 24}' width='12' height='12' fill='{MIG_COLOR}'/>"
        f"<text x='{lx + 18}' y='{PAD_T + 34}'>MIG</text>"
    )
    out.append("</svg>")
    return "".join(out)


def _pods_chart(r: DemoResult) -> str:
    samples, steps, h = r.samples, r.plan.steps, 190
    if not samples:
        return ""
    plot_h = h - PAD_T - PAD_B - 22  # a strip at the bottom for the geometry switches
    top = max([1, *(max(s.running, s.pending, s.gpus_busy) for s in samples)])

    def y(v: float) -> float:
        return PAD_T + plot_h * (1 - v / top)

    xs = [_x(s.step, steps) for s in samples]
    series = [
        ("pods running", "#2f7d4a", [s.running for s in samples]),
        ("pods waiting", "#c0392b", [s.pending for s in samples]),
        ("GPUs busy", "#777", [s.gpus_busy for s in samples]),
    ]
    out = [f"<svg viewBox='0 0 {W} {h}' width='100%' role='img' aria-label='pods and geometry switches over time'>"]
    for v in sorted({0, top // 2, top}):
        out.append(
            f"<line x1='{PAD_L}' x2='{W - PAD_R}' y1='{y(v):.1f}' y2='{y(v):.1f}' stroke='#e5e5e5'/>"
            f"<text x='{PAD_L - 6}' y='{y(v) + 4:.1f}' text-anchor='end'>{v}</text>"
        )
    for i, (label, color, values) in enumerate(series):
        pts = " ".join(f"{x:.1f},{y(v):.1f}" for x, v in zip(xs, values, strict=True))
        dash = " stroke-dasharray='4 3'" if label == "GPUs busy" else ""
        out.append(f"<polyline points='{pts}' fill='none' stroke='{color}' stroke-width='2'{dash}/>")
        ly = PAD_T + 6 + 18 * i
        out.append(
            f"<line x1='{W - PAD_R + 14}' x2='{W - PAD_R + 28}' y1='{ly}' y2='{ly}' stroke='{color}' "
            f"stroke-width='2'{dash}/><text x='{W - PAD_R + 34}' y='{ly + 4}'>{label}</text>"
        )
    per_step = Counter(sw.step for sw in r.switches)
    strip_y = PAD_T + plot_h + 14
    out.append(f"<text x='{W - PAD_R + 14}' y='{strip_y + 4}'>geometry switches</text>")
    for step, n in sorted(per_step.items()):
        x = _x(step, steps)
        rad = min(8.0, 3 + 1.5 * n)
        who = "; ".join(f"{sw.node} GPU {sw.gpu_index}: {sw.old}->{sw.new}" for sw in r.switches if sw.step == step)
        out.append(
            f"<circle cx='{x:.1f}' cy='{strip_y:.1f}' r='{rad:.1f}' fill='{MIG_COLOR}' fill-opacity='0.7'>"
            f"<title>{_e(f'session {step + 1}: {n} switch(es): {who}')}</title></circle>"
        )
    out.append(_x_axis(steps, h))
    out.append("</svg>")
    return "".join(out)


def _area(xs: list[float], tops: list[float], bottoms: list[float]) -> str:
    pts = [f"{x:.1f},{t:.1f}" for x, t in zip(xs, tops, strict=True)]
    pts += [f"{x:.1f},{b:.1f}" for x, b in reversed(list(zip(xs, bottoms, strict=True)))]
    return " ".join(pts)


def _x_axis(steps: int, h: int) -> str:
    base = h - PAD_B + 4
    every = max(1, steps // 10)
    ticks = [
        f"<text x='{_x(i, steps):.1f}' y='{base + 12}' text-anchor='middle'>{i + 1}</text>"
        for i in range(0, steps, every)
    ]
    return "".join(ticks) + f"<text x='{W - PAD_R + 14}' y='{base + 12}' class='small'>session</text>"


# --- final layouts -----------------------------------------------------------------------------------

CELL, ROW_H, LABEL_W = 84, 30, 280


def _by_node(gpus: Iterable[GpuFinal]) -> dict[str, list[GpuFinal]]:
    out: dict[str, list[GpuFinal]] = defaultdict(list)
    for g in gpus:
        out[g.node].append(g)
    return out


def _kind_of(r: DemoResult, pod: str) -> tuple[str, str]:
    rec = r.pods.get(pod)
    return (rec.kind, rec.job) if rec else ("other", pod)


def _mig_section(r: DemoResult) -> str:
    nodes = _by_node(g for g in r.gpus if g.mode == names.MODE_MIG)
    if not nodes:
        return "<p>No MIG GPUs.</p>"
    out = []
    for n, (node, gpus) in enumerate(nodes.items()):
        width = LABEL_W + CELL * max(g.memory_slices for g in gpus) + 10
        h = ROW_H * len(gpus) + 8
        pid = f"hatch{n}"
        svg = [
            f"<svg viewBox='0 0 {width} {h}' width='{width}' style='max-width:100%;height:auto' role='img' "
            f"aria-label='MIG layout of {_e(node)}'>",
            f"<defs><pattern id='{pid}' width='6' height='6' patternUnits='userSpaceOnUse' "
            f"patternTransform='rotate(45)'><rect width='6' height='6' fill='#fff'/>"
            f"<line x1='0' y1='0' x2='0' y2='6' stroke='#9aa7b8' stroke-width='2'/></pattern></defs>",
        ]
        for i, g in enumerate(gpus):
            y0 = 4 + i * ROW_H
            geom = f"geometry {g.geometry}: {g.geometry_layout}" if g.geometry is not None else "no geometry (idle)"
            svg.append(
                f"<text x='0' y='{y0 + 13}'>GPU {g.index}</text>"
                f"<text x='44' y='{y0 + 13}' class='small'>{_e(_clip(geom, 42))}<title>{_e(geom)}</title></text>"
            )
            for c in range(g.memory_slices):
                svg.append(
                    f"<rect x='{LABEL_W + c * CELL}' y='{y0}' width='{CELL - 2}' height='{ROW_H - 6}' "
                    f"fill='#eceff3' stroke='#d5dae1'/>"
                )
            for slot in g.slots:
                x, wid = LABEL_W + slot.start * CELL, slot.size * CELL - 2
                if slot.pod:
                    kind, job = _kind_of(r, slot.pod)
                    tip = f"{slot.pod}: {slot.profile} at slice {slot.start} ({slot.size} slices), {slot.mig_uuid}"
                    label = f"{slot.profile} {slot.pod.split('/')[-1]}"
                    svg.append(
                        f"<g><title>{_e(tip)}</title><rect x='{x}' y='{y0}' width='{wid}' height='{ROW_H - 6}' "
                        f"rx='3' fill='{job_color(kind, job)}' stroke='#333' stroke-width='0.6'/>"
                        f"<text x='{x + 5}' y='{y0 + 16}' class='small' style='fill:#fff'>"
                        f"{_e(_clip(label, max(4, wid // 6)))}</text></g>"
                    )
                else:
                    svg.append(
                        f"<g><title>{_e(f'free {slot.profile} at slice {slot.start}')}</title>"
                        f"<rect x='{x}' y='{y0}' width='{wid}' height='{ROW_H - 6}' rx='3' fill='url(#{pid})' "
                        f"stroke='#9aa7b8'/><text x='{x + 5}' y='{y0 + 16}' class='small'>"
                        f"{_e(_clip(slot.profile, max(4, wid // 6)))}</text></g>"
                    )
        svg.append("</svg>")
        out.append(f"<h3>{_e(node)} <span class='muted'>({_e(gpus[0].model)})</span></h3>" + "".join(svg))
    return "\n".join(out)


def _hami_section(r: DemoResult) -> str:
    nodes = _by_node(g for g in r.gpus if g.mode == names.MODE_HAMI_CORE)
    if not nodes:
        return "<p>No HAMi-core GPUs.</p>"
    biggest = max(g.memory for gs in nodes.values() for g in gs)
    bar_w = 8 * CELL
    out = []
    for node, gpus in nodes.items():
        width = LABEL_W + bar_w + 10
        h = ROW_H * len(gpus) + 8
        svg = [
            f"<svg viewBox='0 0 {width} {h}' width='{width}' style='max-width:100%;height:auto' role='img' "
            f"aria-label='shares of {_e(node)}'>"
        ]
        for i, g in enumerate(gpus):
            y0 = 4 + i * ROW_H
            full = bar_w * g.memory / biggest
            info = f"{g.shares}/{g.split} shares, SMs {g.used_cores}%, {g.used_memory // 1024}/{g.memory // 1024} GiB"
            svg.append(
                f"<text x='0' y='{y0 + 13}'>GPU {g.index}</text><text x='44' y='{y0 + 13}' class='small'>"
                f"{_e(info)}</text><rect x='{LABEL_W}' y='{y0}' width='{full:.1f}' height='{ROW_H - 6}' "
                f"fill='#eceff3' stroke='#d5dae1'/>"
            )
            x = float(LABEL_W)
            for share in g.pods:
                wid = bar_w * share.memory / biggest
                kind, job = _kind_of(r, share.pod)
                tip = f"{share.pod}: {share.memory} MiB, {share.cores}% of the SMs"
                svg.append(
                    f"<g><title>{_e(tip)}</title><rect x='{x:.1f}' y='{y0}' width='{max(1.0, wid - 1):.1f}' "
                    f"height='{ROW_H - 6}' rx='2' fill='{job_color(kind, job)}' stroke='#333' stroke-width='0.5'/>"
                    f"<text x='{x + 4:.1f}' y='{y0 + 16}' class='small' style='fill:#fff'>"
                    f"{_e(_clip(share.pod.split('/')[-1], max(3, int(wid // 6))))}</text></g>"
                )
                x += wid
        svg.append("</svg>")
        out.append(f"<h3>{_e(node)} <span class='muted'>({_e(gpus[0].model)})</span></h3>" + "".join(svg))
    return "\n".join(out)


# --- tables -------------------------------------------------------------------------------------------


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _switch_table(r: DemoResult) -> str:
    if not r.switches:
        return "<p>No MIG GPU changed geometry.</p>"
    rows = [
        [
            str(sw.step + 1),
            _e(f"{sw.node} GPU {sw.gpu_index}"),
            _e(f"{sw.old} {sw.old_layout}"),
            _e(f"{sw.new} {sw.new_layout}"),
            _e(sw.pod),
            str(sw.kept),
        ]
        for sw in r.switches
    ]
    return (
        "<p class='muted'>A GPU's geometry is the MIG layout it is carved by, one of the allowed geometries of "
        "the device config. It switches when a pod needs an instance the current one does not offer; the "
        "instances in use stay where they are.</p>"
        + _table(["session", "GPU", "from", "to", "new instances for", "instances kept in place"], rows)
    )


def _unplaced_table(s: dict[str, Any]) -> str:
    rows = [[_e(u["pod"]), _e(u["reason"])] for u in s["pods"]["unschedulable"]]
    return _table(["pod", "why"], rows) if rows else "<p>Every pod was placed.</p>"


def _checks(s: dict[str, Any]) -> str:
    rows = [
        [
            "<span class='ok'>ok</span>" if c["ok"] else "<span class='fail'>FAILED</span>",
            _e(c["name"]),
            _e(c["detail"]),
        ]
        for c in s["checks"]
    ]
    return _table(["", "check", "detail"], rows)


def _calls_table(s: dict[str, Any]) -> str:
    rows = [
        [_e(v), str(c["count"]), str(c["errors"]), f"{c['p50_ms']:.1f}", f"{c['p99_ms']:.1f}"]
        for v, c in s["scheduler_calls"].items()
    ]
    return (
        "<p class='muted'>As the Volcano-like driver saw them (latency includes everything else sharing the "
        "demo's single event loop).</p>" + _table(["verb", "calls", "errors", "median ms", "p99 ms"], rows)
    )
