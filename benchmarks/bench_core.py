"""Core speed: fit + score evaluations per second on an 8-GPU node, and one predicate's cost on a
node carrying 100 pods. Printed as ratios to decoding the same predicate request's JSON (the least
work any extender must do per call), measured in the same process.

    python benchmarks/bench_core.py
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vcplugin.core.cluster import make_gpu, stable_gpu_uuid  # noqa: E402
from vcplugin.core.config import default_config, load_config_text  # noqa: E402
from vcplugin.core.node import NodeState  # noqa: E402
from vcplugin.core.request import parse_pod  # noqa: E402
from vcplugin.core.score import node_score  # noqa: E402
from vcplugin.core.types import Assignment  # noqa: E402


def pod(name: str, count: int, mem: int, cores: int = 0, mode: str | None = None) -> dict:
    limits = {"nvidia.com/gpu": str(count), "nvidia.com/gpumem": str(mem)}
    if cores:
        limits["nvidia.com/gpucores"] = str(cores)
    anns = {"nvidia.com/vgpu-mode": mode} if mode else {}
    return {
        "metadata": {"name": name, "namespace": "bench", "uid": f"uid-{name}", "annotations": anns},
        "spec": {"containers": [{"name": "main", "resources": {"limits": limits, "requests": {"cpu": "1"}}}]},
    }


def node(cfg, mode: str, model: str, memory: int, n: int = 8) -> NodeState:
    s = cfg.node("bench")
    gpus = [make_gpu(stable_gpu_uuid("bench", i), i, model, mode, memory, cfg, s) for i in range(n)]
    return NodeState("bench", gpus, 128000, 1 << 40)


def rate(fn, seconds: float = 1.0) -> float:
    """Calls per second of fn()."""
    n, start = 0, time.perf_counter()
    while True:
        for _ in range(200):
            fn()
        n += 200
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n / elapsed


def main() -> None:
    rng = random.Random(7)
    cfg = default_config()
    cfg16 = load_config_text(
        (Path(__file__).resolve().parents[1] / "vcplugin/data/device-config.yaml")
        .read_text()
        .replace("deviceSplitCount: 10", "deviceSplitCount: 16")
    )
    results = {}

    # Baseline: decode one predicate request body (the pod) with msgspec.
    body = json.dumps({"task": {"UID": "u", "Pod": pod("p", 1, 8000)}, "node": {"Name": "bench"}}).encode()
    baseline = rate(lambda: msgspec.json.decode(body))
    results["baseline_decode_per_s"] = baseline

    # hami-core: 8 x H100 with 20 shares in use, random requests.
    hc = node(cfg, "hami-core", "NVIDIA H100 80GB HBM3", 81559)
    for i in range(20):
        r = parse_pod(pod(f"fill{i}", 1, rng.choice([4000, 8000, 16000]), rng.choice([10, 20, 30])), cfg)
        hc.allocate(r, cfg)
    reqs = [parse_pod(pod(f"q{i}", rng.choice([1, 1, 2]), rng.choice([2000, 8000, 30000]), 20), cfg) for i in range(64)]
    it = iter(range(10**12))
    results["hami_core_fit_score_per_s"] = rate(lambda: (hc.fit(reqs[next(it) % 64], cfg), node_score(hc, cfg)))

    # MIG: 8 x A100-40GB, half carrying instances.
    mg = node(cfg, "mig", "NVIDIA A100-PCIE-40GB", 40960)
    for i in range(12):
        mg.allocate(parse_pod(pod(f"m{i}", 1, rng.choice([4000, 9000, 19000]), mode="mig"), cfg), cfg)
    mreqs = [
        parse_pod(pod(f"mq{i}", rng.choice([1, 1, 2]), rng.choice([4000, 9000, 19000, 39000]), mode="mig"), cfg)
        for i in range(64)
    ]
    it2 = iter(range(10**12))
    results["mig_fit_score_per_s"] = rate(lambda: (mg.fit(mreqs[next(it2) % 64], cfg), node_score(mg, cfg)))

    # A predicate (parse the pod + fit) on a node carrying 100 pods.
    busy = node(cfg16, "hami-core", "NVIDIA H100 80GB HBM3", 81559)
    placed = 0
    while placed < 100:
        r = parse_pod(pod(f"b{placed}", 1, 500, 5), cfg16)
        assert isinstance(busy.allocate(r, cfg16), Assignment)
        placed += 1
    pred_pod = pod("pred", 1, 2000, 10)
    results["predicate_100_pods_per_s"] = rate(lambda: busy.fit(parse_pod(pred_pod, cfg16), cfg16, check_host=False))

    print(f"baseline (decode a predicate request): {baseline:,.0f}/s = {1e6 / baseline:.1f} us")
    for key in ("hami_core_fit_score_per_s", "mig_fit_score_per_s", "predicate_100_pods_per_s"):
        v = results[key]
        print(f"{key:32s} {v:>12,.0f}/s  {1e6 / v:8.1f} us  = {baseline / v:5.1f}x the baseline's cost")
    print(json.dumps({k: round(v) for k, v in results.items()}))


if __name__ == "__main__":
    main()
