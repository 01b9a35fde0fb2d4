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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vcplugin", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("simulate", help="place pods on simulated nodes with the scheduler's core")
    sim.add_argument("--scenario", help="scenario YAML (nodes and pods); default: the built-in demo")
    sim.add_argument("--config", help="device config YAML (default: the shipped one)")
    sim.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    sim.set_defaults(func=cmd_simulate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
