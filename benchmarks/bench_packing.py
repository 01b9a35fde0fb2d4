"""The packing benchmark on the Alibaba openb traces (FGD methodology): GPU allocation (% of capacity)
when the arrived GPU request reaches 100 % and 130 % of capacity, over 10 seeds, for our policies,
next to the six policies published with the FGD paper (their simulator, same traces and seeds).

    python benchmarks/bench_packing.py [--seeds 10] [--traces default gpushare60] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vcplugin.core.config import default_config  # noqa: E402
from vcplugin.simulate import trace  # noqa: E402
from vcplugin.simulate.chart import load_published  # noqa: E402

TRACES = ROOT.parent / "shared" / "traces" / "alibaba-openb"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--traces", nargs="+", default=["default", "gpushare60"])
    ap.add_argument("--policies", nargs="+", default=list(trace.TRACE_POLICIES))
    ap.add_argument("--dir", default=str(TRACES))
    ap.add_argument("--out")
    args = ap.parse_args()
    cfg = default_config()
    base = Path(args.dir)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name in args.traces:
        pods = trace.load_pods(base / f"openb_pod_list_{name}.csv")
        published = load_published(base / "fgd-expected-results" / "summary_by_policy.csv", f"openb_pod_list_{name}")
        results[name] = {}
        print(f"\n{name} trace, {args.seeds} seeds (42..{41 + args.seeds}); GPU allocated % at arrived 100 % / 130 %")
        for policy in args.policies:
            a100, a130, unalloc, rates = [], [], [], []
            t0 = time.perf_counter()
            for seed in range(42, 42 + args.seeds):
                nodes = trace.load_nodes(base / "openb_node_list_gpu_node.csv")
                r = trace.replay_inflated(nodes, pods, cfg, policy, 1.3, seed)
                a100.append(r.allocation_ratio["100"])
                a130.append(r.allocation_ratio["130"])
                unalloc.append(r.unallocated_gpus)
                rates.append(r.pods_per_second)
            row = {
                "alloc_100_mean": round(statistics.mean(a100), 2),
                "alloc_100_std": round(statistics.pstdev(a100), 2),
                "alloc_130_mean": round(statistics.mean(a130), 2),
                "alloc_130_std": round(statistics.pstdev(a130), 2),
                "unallocated_gpus_mean": round(statistics.mean(unalloc), 1),
                "pods_per_second": round(statistics.mean(rates)),
                "seconds": round(time.perf_counter() - t0, 1),
            }
            results[name][f"ours/{policy}"] = row
            print(
                f"  ours/{policy:10s} {row['alloc_100_mean']:6.2f} ± {row['alloc_100_std']:.2f}   "
                f"{row['alloc_130_mean']:6.2f} ± {row['alloc_130_std']:.2f}"
                f"   unallocated {row['unallocated_gpus_mean']:6.1f}"
                f"   {row['pods_per_second']} pods/s",
                flush=True,
            )
        for policy, pts in published.items():
            results[name][f"published/{policy}"] = {"alloc_100_mean": pts["100"], "alloc_130_mean": pts["130"]}
            print(f"  published/{policy:14s} {pts['100']:6.2f}          {pts['130']:6.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
