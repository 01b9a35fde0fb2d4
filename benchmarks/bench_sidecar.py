"""Sidecar speed and size, each as a ratio to a bare aiohttp server in the same run.

- predicate and prioritize: throughput and p50/p99 latency at 16 concurrent requests on snapshots
  of 1,000 and 5,000 nodes (8 GPUs each, 10 pods per node), payloads shaped like Volcano's
  (full TaskInfo/NodeInfo JSON, every pod of the node in Tasks), against a bare aiohttp server
  answering `{}` to the same payloads;
- time to answer onSessionOpen for the whole snapshot;
- resident memory of the sidecar's cache with 5,000 nodes x 8 GPUs and 50,000 pods.

    python benchmarks/bench_sidecar.py [--nodes 1000 5000] [--seconds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GPUS_PER_NODE = 8
PODS_PER_NODE = 10


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# --- the synthetic cluster ------------------------------------------------------------------------


def cluster(n_nodes: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Nodes (registration annotations) and bound pods (assignment annotations, made by the core)."""
    from vcplugin.core.cluster import make_gpu
    from vcplugin.core.config import default_config
    from vcplugin.core.node import NodeState
    from vcplugin.core.request import parse_pod
    from vcplugin.core.types import Assignment
    from vcplugin.protocol.assignment import assignment_annotations
    from vcplugin.protocol.registration import RegisteredGpu, encode_registration

    cfg = default_config()
    settings = cfg.node("x")
    nodes, pods = [], []
    for n in range(n_nodes):
        name = f"node-{n:05d}"
        mig = n % 5 == 0
        model = "NVIDIA A100-SXM4-80GB" if mig else "NVIDIA H100 80GB HBM3"
        mem = 81920 if mig else 81559
        mode = "mig" if mig else "hami-core"
        reg = [
            RegisteredGpu(f"GPU-{n:05d}-{i}", 7 if mig else 10, mem, model, True, mode, i) for i in range(GPUS_PER_NODE)
        ]
        nodes.append(
            {
                "metadata": {
                    "name": name,
                    "uid": f"uid-{name}",
                    "resourceVersion": "1",
                    "labels": {"kubernetes.io/hostname": name},
                    "annotations": {"volcano.sh/node-vgpu-register": encode_registration(reg)},
                },
                "status": {
                    "allocatable": {
                        "cpu": "128",
                        "memory": "1Ti",
                        "pods": "110",
                        "nvidia.com/gpu": "80",
                        "nvidia.com/gpumem": str(mem * 8),
                        "nvidia.com/gpucores": "800",
                    },
                    "conditions": [{"type": "Ready", "status": "True"}],
                },
            }
        )
        state = NodeState(name, [make_gpu(g.uuid, g.index, model, mode, mem, cfg, settings) for g in reg])
        for k in range(PODS_PER_NODE):
            pname = f"p-{n:05d}-{k}"
            limits = {"nvidia.com/gpu": "1", "nvidia.com/gpumem": str([4000, 9000, 16000][k % 3])}
            pod = {
                "metadata": {
                    "name": pname,
                    "namespace": "bench",
                    "uid": f"uid-{pname}",
                    "resourceVersion": "1",
                    "annotations": {"volcano.sh/vgpu-mode": mode},
                    "labels": {"app": "bench"},
                },
                "spec": {
                    "nodeName": name,
                    "schedulerName": "volcano",
                    "containers": [
                        {
                            "name": "main",
                            "image": "nvcr.io/nvidia/pytorch:24.05-py3",
                            "resources": {"limits": limits, "requests": {"cpu": "4", "memory": "16Gi", **limits}},
                        }
                    ],
                },
                "status": {"phase": "Running"},
            }
            a = state.allocate(parse_pod(pod, cfg), cfg)
            if isinstance(a, Assignment):
                pod["metadata"]["annotations"].update(assignment_annotations(pod["metadata"]["uid"], a, {}, 1, b"k"))
            pods.append(pod)
    return nodes, pods


# --- the servers (run in a child process) ---------------------------------------------------------


async def serve(kind: str, n_nodes: int, port: int) -> None:
    import msgspec
    from aiohttp import web

    base = rss_mib()
    if os.environ.get("BENCH_FULL_DECODE"):
        from vcplugin.sidecar import wire

        wire.decode_prioritize = wire.prioritize_decoder.decode  # type: ignore[assignment]
    if kind == "bare":
        app = web.Application(client_max_size=1 << 30)

        async def answer(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(body=b"{}", content_type="application/json")

        app.router.add_post("/{verb}", answer)
        cache_mib = 0.0
    else:
        from vcplugin.core.config import default_config
        from vcplugin.kube.objects import Node, Pod
        from vcplugin.sidecar.extender import Extender
        from vcplugin.sidecar.metrics import Metrics
        from vcplugin.sidecar.server import build_app
        from vcplugin.sidecar.state import ClusterState

        nodes, pods = cluster(n_nodes)
        raw_nodes = [msgspec.json.encode(n) for n in nodes]
        raw_pods = [msgspec.json.encode(p) for p in pods]
        del nodes, pods
        before = rss_mib()
        state = ClusterState(default_config())
        state.replace_nodes([msgspec.json.decode(b, type=Node) for b in raw_nodes], 1)
        state.replace_pods([msgspec.json.decode(b, type=Pod) for b in raw_pods], 1)
        del raw_nodes, raw_pods
        import gc

        gc.collect()
        gc.freeze()  # as `vcplugin serve` does after its first sync
        cache_mib = rss_mib() - before
        ext = Extender(state, None, lambda: 1, Metrics(state), b"k")
        app = build_app(ext)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(
        json.dumps(
            {
                "ready": True,
                "rss_mib": round(rss_mib(), 1),
                "base_mib": round(base, 1),
                "cache_mib": round(cache_mib, 1),
            }
        ),
        flush=True,
    )
    await asyncio.Event().wait()


# --- the client -----------------------------------------------------------------------------------


def payloads(n_nodes: int) -> dict[str, Any]:
    from vgpupool_testing.volcano import go_json, node_info, session_open_payload, task_info

    nodes, pods = cluster(n_nodes)
    by_node: dict[str, list[dict[str, Any]]] = {}
    for p in pods:
        by_node.setdefault(p["spec"]["nodeName"], []).append(p)
    newpod = {
        "metadata": {
            "name": "incoming",
            "namespace": "bench",
            "uid": "uid-incoming",
            "resourceVersion": "7",
            "annotations": {},
        },
        "spec": {
            "schedulerName": "volcano",
            "containers": [
                {
                    "name": "main",
                    "resources": {
                        "limits": {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "8000"},
                        "requests": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1", "nvidia.com/gpumem": "8000"},
                    },
                }
            ],
        },
        "status": {"phase": "Pending"},
    }
    task = task_info(newpod)
    sample = nodes[:: max(1, len(nodes) // 64)][:64]
    infos = {n["metadata"]["name"]: node_info(n, by_node.get(n["metadata"]["name"], [])) for n in sample}
    predicate = [go_json({"task": task, "node": info}) for info in infos.values()]
    prioritize = [go_json({"task": task, "nodes": list(infos.values())[i : i + 16]}) for i in range(0, 64, 16)]
    # onSessionOpen: every node with its pods, stitched from one encoded node per name.
    one = go_json(node_info(nodes[1], by_node[nodes[1]["metadata"]["name"]])).decode()
    old = nodes[1]["metadata"]["name"]
    parts = [f'"{n["metadata"]["name"]}":' + one.replace(old, n["metadata"]["name"]) for n in nodes]
    head = go_json(session_open_payload([], [])).decode()
    open_body = head.replace('"Nodes":{}', '"Nodes":{' + ",".join(parts) + "}").encode()
    return {"predicate": predicate, "prioritize": prioritize, "open": open_body}


async def load(url: str, bodies: list[bytes], seconds: float, concurrency: int = 16) -> dict[str, float]:
    import aiohttp

    lat: list[float] = []
    stop = time.perf_counter() + seconds
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as s:

        async def worker(w: int) -> None:
            i = w
            while time.perf_counter() < stop:
                body = bodies[i % len(bodies)]
                i += concurrency
                t0 = time.perf_counter()
                async with s.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    assert r.status == 200, r.status
                lat.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - t0
    lat.sort()
    return {
        "rps": len(lat) / elapsed,
        "p50_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))],
    }


async def one_shot(url: str, body: bytes, repeat: int = 3) -> float:
    import aiohttp

    best = float("inf")
    async with aiohttp.ClientSession() as s:
        for _ in range(repeat):
            t0 = time.perf_counter()
            async with s.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                await r.read()
            best = min(best, time.perf_counter() - t0)
    return best


def start(kind: str, n_nodes: int, port: int) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "serve", kind, str(n_nodes), str(port)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, json.loads(line)


async def bench(n_nodes: int, seconds: float) -> dict[str, Any]:
    data = payloads(n_nodes)
    out: dict[str, Any] = {
        "nodes": n_nodes,
        "pods": n_nodes * PODS_PER_NODE,
        "predicate_body_kib": round(statistics.mean(len(b) for b in data["predicate"]) / 1024, 1),
        "prioritize_body_kib": round(statistics.mean(len(b) for b in data["prioritize"]) / 1024),
        "session_open_mib": round(len(data["open"]) / 2**20, 1),
    }
    # Alternate the two servers twice and keep each one's better round, so warm-up and noise on this
    # shared machine do not favour either.
    for _round in range(2):
        for kind, port in (("bare", 18741), ("sidecar", 18742)):
            proc, info = start(kind, n_nodes, port)
            try:
                url = f"http://127.0.0.1:{port}"
                res = {
                    "predicate": await load(f"{url}/predicate", data["predicate"], seconds),
                    "prioritize": await load(f"{url}/prioritize", data["prioritize"], seconds),
                    "session_open_s": await one_shot(f"{url}/onSessionOpen", data["open"]),
                    "server": info,
                }
            finally:
                proc.terminate()
                proc.wait()
            prev = out.get(kind)
            if prev is not None:
                for verb in ("predicate", "prioritize"):
                    if prev[verb]["rps"] > res[verb]["rps"]:
                        res[verb] = prev[verb]
                res["session_open_s"] = min(prev["session_open_s"], res["session_open_s"])
            out[kind] = res
    for verb in ("predicate", "prioritize"):
        out[f"{verb}_throughput_ratio"] = round(out["sidecar"][verb]["rps"] / out["bare"][verb]["rps"], 3)
    out["session_open_ratio"] = round(out["sidecar"]["session_open_s"] / out["bare"]["session_open_s"], 3)
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        import uvloop  # both servers on uvloop, as `vcplugin serve` runs

        uvloop.run(serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, nargs="+", default=[1000, 5000])
    ap.add_argument("--seconds", type=float, default=4.0)
    args = ap.parse_args()
    for n in args.nodes:
        r = asyncio.run(bench(n, args.seconds))
        s, b = r["sidecar"], r["bare"]
        print(
            f"\n{n} nodes x {GPUS_PER_NODE} GPUs, {r['pods']} pods; predicate body {r['predicate_body_kib']} KiB, "
            f"prioritize body {r['prioritize_body_kib']} KiB (16 nodes), onSessionOpen {r['session_open_mib']} MiB"
        )
        for verb in ("predicate", "prioritize"):
            print(
                f"  {verb:10s} sidecar {s[verb]['rps']:8.0f}/s p50 {s[verb]['p50_ms']:6.2f} ms p99 "
                f"{s[verb]['p99_ms']:6.2f} ms | bare {b[verb]['rps']:8.0f}/s p50 {b[verb]['p50_ms']:6.2f} ms "
                f"p99 {b[verb]['p99_ms']:6.2f} ms | ratio {r[f'{verb}_throughput_ratio']:.2f}"
            )
        print(
            f"  onSessionOpen: sidecar {s['session_open_s'] * 1000:.0f} ms, bare {b['session_open_s'] * 1000:.0f} ms "
            f"(ratio {r['session_open_ratio']:.2f})"
        )
        print(
            f"  sidecar RSS {s['server']['rss_mib']} MiB (cache {s['server']['cache_mib']} MiB); "
            f"bare RSS {b['server']['rss_mib']} MiB"
        )
        print(json.dumps(r))


if __name__ == "__main__":
    main()
