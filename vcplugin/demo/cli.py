"""`vcplugin demo`: run the simulated cluster, show progress, print a summary, write the report."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `demo` on vcplugin's subcommands."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="run the whole system on a simulated cluster (no Kubernetes, no GPU) and report",
        description="Run the scheduler sidecar and one node agent per node against an in-memory Kubernetes API "
        "and simulated GPUs, replay a workload of Volcano Jobs through a Volcano-like scheduler, and "
        "write an HTML report of what happened.",
    )
    p.add_argument("--nodes", type=_positive, help="number of nodes (default: the workload's six-node mix)")
    p.add_argument("--pods", type=_positive, help="number of pods (default: ten per node)")
    p.add_argument("--seed", type=int, default=1, help="random seed of the workload and GPU UUIDs (default 1)")
    p.add_argument("--workload", help="workload YAML (default: the built-in vcplugin/data/demo-workload.yaml)")
    p.add_argument("--out", default="vgpu-pool-demo.html", help="HTML report to write (default vgpu-pool-demo.html)")
    p.add_argument("--no-progress", action="store_true", help="no live progress on stderr")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=cmd_demo)
    return p


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def cmd_demo(args: argparse.Namespace) -> int:
    from .progress import LiveProgress
    from .report import summarize, summary_text, write_html
    from .run import DemoOptions, NoProgress, run_demo
    from .workload import WorkloadError

    path = os.path.abspath(args.out)
    if not os.path.isdir(os.path.dirname(path)):  # say so now, not after the run
        print(f"error: --out {args.out}: no directory {os.path.dirname(path)}", file=sys.stderr)
        return 2
    opts = DemoOptions(nodes=args.nodes, pods=args.pods, seed=args.seed, workload=args.workload)
    # Plain asyncio, not uvloop as `serve` uses: the agents' device plugins run on grpc.aio.
    progress = NoProgress() if args.no_progress else LiveProgress(sys.stderr)
    try:
        result = asyncio.run(run_demo(opts, progress))
    except WorkloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TimeoutError as exc:  # a service did not come up (the message says which)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    summary = summarize(result, path)
    try:
        write_html(result, summary, path)
    except OSError as exc:
        print(f"error: cannot write the report {path}: {exc.strerror}", file=sys.stderr)
        summary["report"] = None
    if args.json:
        print(json.dumps(summary))
    else:
        print(summary_text(summary))
    return 0 if result.ok else 1
