"""`vcplugin`: the Volcano extender sidecar and its offline tools."""

from __future__ import annotations

import argparse
import json
import sys

from .core.config import ConfigError, DeviceConfig, default_config, load_config_file


def _config(path: str | None) -> DeviceConfig:
    return load_config_file(path) if path else default_config()


def cmd_simulate(args: argparse.Namespace) -> int:
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


def _read_key(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as f:
        key = f.read().strip()
    if not key:
        raise SystemExit(f"error: signing key file {path} is empty")
    return key


def _run(coro: object) -> None:
    import asyncio

    try:
        import uvloop

        uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]


def cmd_serve(args: argparse.Namespace) -> int:
    from . import logs
    from .sidecar.service import ServeOptions, serve_forever

    logs.setup(args.log_level, args.log_format == "json")
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
        signing_key=_read_key(args.signing_key_file),
        max_body=args.max_body_mib * 1024 * 1024,
        verbs=verbs,
        assign_at_bind=not args.no_assign_at_bind,
    )
    _run(serve_forever(args.kubeconfig, opts))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vcplugin", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("simulate", help="place pods on simulated nodes with the scheduler's core")
    sim.add_argument("--scenario", help="scenario YAML (nodes and pods); default: the built-in demo")
    sim.add_argument("--config", help="device config YAML (default: the shipped one)")
    sim.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    sim.set_defaults(func=cmd_simulate)

    srv = sub.add_parser("serve", help="answer vc-scheduler's extender plugin (the sidecar)")
    srv.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster service account)")
    srv.add_argument("--listen", default="127.0.0.1:8713", help="HOST:PORT (default 127.0.0.1:8713)")
    srv.add_argument(
        "--config-map",
        default="kube-system/vgpu-pool-device-config",
        help="NS/NAME of the device ConfigMap to watch ('' to disable)",
    )
    srv.add_argument("--config", help="device config file used until (or instead of) the ConfigMap")
    srv.add_argument("--signing-key-file", help="HMAC key shared with the node agents")
    srv.add_argument("--max-body-mib", type=int, default=512, help="largest request body (default 512 MiB)")
    srv.add_argument("--verb-path", action="append", help="VERB=PATH to serve a verb elsewhere (repeatable)")
    srv.add_argument(
        "--no-assign-at-bind",
        action="store_true",
        help="do not assign devices to pods bound without an allocate call (Volcano < 1.13)",
    )
    srv.add_argument("--log-level", default="info")
    srv.add_argument("--log-format", choices=("json", "text"), default="json")
    srv.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
