"""Serving a gRPC servicer on a unix socket, as kubelet does (shared by the fake kubelet servers)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

import grpc


async def serve_unix(
    socket_path: str, add_servicer: Callable[[Any, grpc.aio.Server], None], servicer: Any
) -> grpc.aio.Server:
    """Start a grpc.aio server for `servicer` on `socket_path`, replacing a stale socket file."""
    os.makedirs(os.path.dirname(os.path.abspath(socket_path)), exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)
    server = grpc.aio.server()
    add_servicer(servicer, server)
    server.add_insecure_port(f"unix://{os.path.abspath(socket_path)}")
    await server.start()
    return server
