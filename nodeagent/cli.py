"""`nodeagent`: the vgpu-pool agent on each GPU node."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from vcplugin.core.config import ConfigError, load_config_file
from vcplugin.runtime import add_common_args


def cmd_run(args: argparse.Namespace) -> int:
    from vcplugin.kube.client import KubeClient
    from vcplugin.runtime import read_key, run, setup_logging

    from .agent import AgentOptions, NodeAgent
    from .hamicore_env import HamiCorePaths
    from .nvml import load_nvml

    setup_logging(args)
    node = args.node_name or os.environ.get("NODE_NAME")
    if not node:
        print("error: give --node-name or set NODE_NAME (the DaemonSet sets it from spec.nodeName)", file=sys.stderr)
        return 2
    try:
        cfg = load_config_file(args.config) if args.config else None
        nv = load_nvml(args.nvml)
    except (ConfigError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    key = read_key(args.signing_key_file)
    opts = AgentOptions(
        node_name=node,
        config_map=args.config_map or None,
        config=cfg,
        signing_key=key,
        device_plugin_dir=args.device_plugin_dir,
        state_file=args.state_file,
        hami_core=HamiCorePaths(host_dir=args.hami_core_dir, lock_dir=args.lock_dir),
        grace=args.grace,
        adopt_foreign=args.adopt_foreign,
        advertise_memory_cores=not args.no_memory_cores,
        metrics_listen=args.metrics_listen or None,
        memory_unit_mib=args.memory_unit_mib,
        pod_resources_socket=args.pod_resources_socket or None,
    )

    async def main() -> None:
        kube = await KubeClient.connect(args.kubeconfig)
        agent = NodeAgent(kube, nv, opts)
        try:
            await agent.start()
            await asyncio.Event().wait()
        finally:
            await agent.stop()
            await kube.close()

    run(main())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nodeagent", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent for this node")
    run.add_argument("--node-name", help="this node (default: $NODE_NAME)")
    run.add_argument("--nvml", help="'sim:FILE' for the simulated NVML (default: the real library)")
    run.add_argument("--config-map", default="kube-system/vgpu-pool-device-config", help="NS/NAME of the device config")
    run.add_argument("--config", help="device config file (instead of the ConfigMap)")
    run.add_argument(
        "--device-plugin-dir",
        default="/var/lib/kubelet/device-plugins",
        help="kubelet's device-plugin directory (kubelet.sock lives there)",
    )
    run.add_argument(
        "--state-file",
        default="/var/lib/vgpu-pool/nodeagent-owned.json",
        help="record of the MIG instances this agent created (keep it on a hostPath)",
    )
    run.add_argument("--hami-core-dir", default="/usr/local/vgpu", help="host dir with libvgpu.so and ld.so.preload")
    run.add_argument("--lock-dir", default="/tmp/vgpulock", help="host dir for HAMi-core's lock file")
    run.add_argument("--grace", type=float, default=30.0, help="seconds before an unused MIG instance is destroyed")
    run.add_argument(
        "--adopt-foreign",
        action="store_true",
        help="use MIG instances vgpu-pool did not create when an assignment matches them exactly",
    )
    run.add_argument(
        "--no-memory-cores", action="store_true", help="do not advertise the GPU memory and cores resources to kubelet"
    )
    run.add_argument(
        "--memory-unit-mib",
        type=int,
        default=1,
        help="MiB per advertised device of the GPU memory resource (kubelet caps the device list)",
    )
    run.add_argument(
        "--pod-resources-socket",
        default="/var/lib/kubelet/pod-resources/kubelet.sock",
        help="kubelet's pod-resources API, used to confirm admissions ('' to disable)",
    )
    run.add_argument("--metrics-listen", default=":9401", help="HOST:PORT for /metrics and /healthz ('' to disable)")
    add_common_args(run)
    run.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
