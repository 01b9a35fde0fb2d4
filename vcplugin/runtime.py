"""What both long-running programs share: command-line basics, the signing key, the event loop."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Coroutine
from typing import Any

from . import logs


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster service account)")
    parser.add_argument("--signing-key-file", help="HMAC key shared by the scheduler sidecar and the node agents")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-format", choices=("json", "text"), default="json")


def setup_logging(args: argparse.Namespace) -> None:
    logs.setup(args.log_level, args.log_format == "json")


def read_key(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as f:
        key = f.read().strip()
    if not key:
        raise SystemExit(f"error: signing key file {path} is empty")
    return key


def run(coro: Coroutine[Any, Any, None]) -> None:
    """On uvloop where it is installed."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    uvloop.run(coro)
