"""`vcplugin`: the Volcano extender sidecar and its offline tools."""

from __future__ import annotations

import argparse
import json
import sys

from .core.config import ConfigError, DeviceConfig, default_config, load_config_file
from .runtime import add_common_args


def _config(path: str | None) -> DeviceConfig:
    return load_config_file(path) if path else default_config()


def cmd_trace(args: argparse.Namespace) -> int:
    import msgspec

    from .simulate import trace
    from .simulate.chart import load_published, render

    if not (args.nodes_csv and args.pods_csv):
        print("error: --trace needs --nodes-csv FILE and --pods-csv FILE", file=sys.stderr)
        return 2
    try:
        cfg = _config(args.config)
        pods = trace.load_pods(args.pods_csv)
        nodes = trace.load_nodes(args.nodes_csv)
        trace.make_policy(args.policy, cfg, trace.typical_workload(pods))  # validates the name
    except (ConfigError, trace.TraceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def progress(k: int, n: int) -> None:
        if not args.json and sys.stderr.isatty():
            print(f"\r  {k}/{n} pods", end="", file=sys.stderr, flush=True)

    if args.replay_times:
        out = trace.replay_timed(nodes, pods, cfg, args.policy)
        print(json.dumps(out) if args.json else json.dumps({k: v for k, v in out.items() if k != "series"}))
        return 0
    result = trace.replay_inflated(nodes, pods, cfg, args.policy, args.inflate, args.seed, progress=progress)
    if args.chart:
        from pathlib import Path

        published = {}
        if args.expected:
            published = load_published(args.expected, Path(args.pods_csv).stem)
        Path(args.chart).write_text(
            render(f"{Path(args.pods_csv).name}, seed {args.seed}", {args.policy: result.curve}, published)
        )
    if args.json:
        print(json.dumps(msgspec.to_builtins(result)))
    else:
        print(
            f"\rpolicy {result.policy}, seed {result.seed}: {result.placed}/{result.pods} pods placed on "
            f"{result.capacity_gpus:.0f} GPUs"
        )
        print(
            "GPU allocated (% of capacity) when the arrived GPU request reached 90 / 100 / 130 %: "
            + " / ".join(f"{result.allocation_ratio[k]:.2f}" for k in ("90", "100", "130"))
        )
        print(
            f"unallocated GPUs at the end: {result.unallocated_gpus}; fragmentation (% of capacity) at "
            + ", ".join(f"{k}%: {v}" for k, v in result.fragmentation.items())
        )
        print(f"{result.pods_per_second:.0f} pods/s; seconds: {result.seconds}")
        if args.chart:
            print(f"chart: {args.chart}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    if args.trace or args.nodes_csv or args.pods_csv:
        return cmd_trace(args)
    from .simulate.engine import as_json, run_scenario
    from .simulate.scenario import ScenarioError, demo_scenario, load_scenario_file
    from .simulate.table import render

    try:
        cfg = _config(args.config)
        scenario = load_scenario_file(args.scenario, cfg) if args.scenario else demo_scenario(cfg)
    except (ConfigError, ScenarioError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for w in cfg.warnings:
        print(f"warning: {w}", file=sys.stderr)
    result = run_scenario(scenario, cfg)
    if args.json:
        print(json.dumps(as_json(result)))
    else:
        print(f"Scenario: {scenario.source}")
        print(render(result))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .runtime import read_key, run, setup_logging
    from .sidecar.service import ServeOptions, serve_forever

    setup_logging(args)
    try:
        cfg = load_config_file(args.config) if args.config else None
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    verbs = {}
    for item in args.verb_path or []:
        verb, _, path = item.partition("=")
        if not path:
            print(f"error: --verb-path {item!r}: expected VERB=PATH", file=sys.stderr)
            return 2
        verbs[verb] = path
    opts = ServeOptions(
        listen=args.listen,
        config_map=args.config_map or None,
        config=cfg,
        signing_key=read_key(args.signing_key_file),
        max_body=args.max_body_mib * 1024 * 1024,
        verbs=verbs,
        assign_at_bind=not args.no_assign_at_bind,
        metrics_listen=args.metrics_listen or None,
    )
    run(serve_forever(args.kubeconfig, opts))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vcplugin", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    from .demo.cli import add_parser as add_demo_parser

    add_demo_parser(sub)
    sim = sub.add_parser("simulate", help="place pods on simulated nodes with the scheduler's core")
    sim.add_argument("--scenario", help="scenario YAML (nodes and pods); default: the built-in demo")
    sim.add_argument("--config", help="device config YAML (default: the shipped one)")
    sim.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    trace_opts = sim.add_argument_group("trace replay (Alibaba openb format)")
    trace_opts.add_argument("--trace", action="store_true", help="replay a trace (implied by --nodes-csv)")
    trace_opts.add_argument("--nodes-csv", help="node list CSV: sn,cpu_milli,memory_mib,gpu,model")
    trace_opts.add_argument("--pods-csv", help="pod list CSV: name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,...")
    trace_opts.add_argument("--inflate", type=float, default=1.3, help="workload as a fraction of capacity (1.3)")
    trace_opts.add_argument("--seed", type=int, default=42, help="shuffle and sampling seed (42)")
    trace_opts.add_argument("--policy", default="frag-pack", help="binpack | spread | fgd | frag-pack (default, ours)")
    trace_opts.add_argument(
        "--replay-times",
        action="store_true",
        help="replay creation and deletion times instead of the inflated arrivals",
    )
    trace_opts.add_argument("--chart", help="write an HTML chart of the allocation curve here")
    trace_opts.add_argument("--expected", help="summary_by_policy.csv of the published policies to overlay")
    sim.set_defaults(func=cmd_simulate)

    srv = sub.add_parser("serve", help="answer vc-scheduler's extender plugin (the sidecar)")
    srv.add_argument("--listen", default="127.0.0.1:8713", help="HOST:PORT (default 127.0.0.1:8713)")
    srv.add_argument(
        "--config-map",
        default="kube-system/vgpu-pool-device-config",
        help="NS/NAME of the device ConfigMap to watch ('' to disable)",
    )
    srv.add_argument("--config", help="device config file used until (or instead of) the ConfigMap")
    srv.add_argument("--max-body-mib", type=int, default=512, help="largest request body (default 512 MiB)")
    srv.add_argument("--verb-path", action="append", help="VERB=PATH to serve a verb elsewhere (repeatable)")
    srv.add_argument(
        "--no-assign-at-bind",
        action="store_true",
        help="do not assign devices to pods bound without an allocate call (Volcano < 1.13)",
    )
    srv.add_argument(
        "--metrics-listen", default="", help="HOST:PORT serving only /metrics, /healthz, /readyz (default: on --listen)"
    )
    add_common_args(srv)
    srv.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
