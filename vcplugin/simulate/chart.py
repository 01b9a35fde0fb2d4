"""A self-contained HTML page (inline SVG) of GPU allocation against arrived GPU request, with the
published policies of the FGD paper overlaid as markers."""

from __future__ import annotations

import csv
import html
from pathlib import Path

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def load_published(path: str | Path, workload: str) -> dict[str, dict[str, float]]:
    """{policy: {"90": pct, "100": pct, "130": pct}} from summary_by_policy.csv for one pod list."""
    out: dict[str, dict[str, float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("workload") != workload:
                continue
            out[row["sc_policy"]] = {
                "90": float(row["alloc_pct_at_arrived_90_mean"]),
                "100": float(row["alloc_pct_at_arrived_100_mean"]),
                "130": float(row["alloc_pct_at_arrived_130_mean"]),
            }
    return out


def render(
    title: str,
    curves: dict[str, list[tuple[float, float, float]]],
    published: dict[str, dict[str, float]] | None = None,
) -> str:
    w, h, pad = 760, 440, 50
    x0, x1, y0, y1 = 0.0, 135.0, 60.0, 100.0

    def px(x: float) -> float:
        return pad + (x - x0) / (x1 - x0) * (w - 2 * pad)

    def py(y: float) -> float:
        return h - pad - (max(y0, min(y1, y)) - y0) / (y1 - y0) * (h - 2 * pad)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
    ]
    for gx in range(0, 140, 10):
        parts.append(f'<line x1="{px(gx)}" y1="{py(y0)}" x2="{px(gx)}" y2="{py(y1)}" stroke="#eee"/>')
        parts.append(f'<text x="{px(gx)}" y="{h - pad + 16}" text-anchor="middle">{gx}</text>')
    for gy in range(int(y0), int(y1) + 1, 5):
        parts.append(f'<line x1="{px(x0)}" y1="{py(gy)}" x2="{px(x1)}" y2="{py(gy)}" stroke="#eee"/>')
        parts.append(f'<text x="{pad - 6}" y="{py(gy) + 4}" text-anchor="end">{gy}</text>')
    parts.append(f'<text x="{w / 2}" y="{h - 10}" text-anchor="middle">arrived GPU request (% of capacity)</text>')
    parts.append(
        f'<text x="14" y="{h / 2}" transform="rotate(-90 14 {h / 2})" text-anchor="middle">'
        "GPU allocated (% of capacity)</text>"
    )
    legend_y = pad
    for i, (name, curve) in enumerate(curves.items()):
        color = COLORS[i % len(COLORS)]
        pts = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b, _ in curve)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>')
        parts.append(f'<text x="{px(x0) + 10}" y="{legend_y}" fill="{color}">{html.escape(name)} (ours)</text>')
        legend_y += 16
    for i, (name, points) in enumerate((published or {}).items()):
        color = COLORS[(i + len(curves)) % len(COLORS)]
        for x, y in points.items():
            parts.append(f'<circle cx="{px(float(x)):.1f}" cy="{py(y):.1f}" r="4" fill="none" stroke="{color}"/>')
        parts.append(f'<text x="{px(x0) + 10}" y="{legend_y}" fill="{color}">o {html.escape(name)} (published)</text>')
        legend_y += 16
    parts.append("</svg>")
    return (
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<h2 style='font-family:sans-serif'>{html.escape(title)}</h2>{''.join(parts)}"
    )
