"""The extender's HTTP surface: aiohttp routes for Volcano's verbs, /metrics, /healthz, /readyz."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import wire
from .extender import Extender
from .metrics import Metrics

log = logging.getLogger(__name__)

DEFAULT_VERBS = {
    "onSessionOpen": "onSessionOpen",
    "onSessionClose": "onSessionClose",
    "predicate": "predicate",
    "prioritize": "prioritize",
    "allocate": "allocate",
    "deallocate": "deallocate",
    "preemptable": "preemptable",
    "reclaimable": "reclaimable",
    "jobEnqueueable": "jobEnqueueable",
    "jobEnqueued": "jobEnqueued",
    "queueOverused": "queueOverused",
    "jobReady": "jobReady",
}

_JSON = "application/json"
_ABSTAIN = wire.encoder.encode(wire.VictimsResponse())


def _json(data: bytes, status: int = 200) -> web.Response:
    return web.Response(body=data, status=status, content_type=_JSON)


def _error(status: int, message: str) -> web.Response:
    return _json(msgspec.json.encode({"error": message}), status)


def build_app(
    ext: Extender,
    *,
    verbs: dict[str, str] | None = None,
    max_body: int = 512 * 1024 * 1024,
    ready: Callable[[], bool] = lambda: True,
) -> web.Application:
    paths = {**DEFAULT_VERBS, **(verbs or {})}
    app = web.Application(client_max_size=max_body)
    metrics = ext.metrics

    def timed(verb: str, fn: Callable[[web.Request], Awaitable[web.Response]]):
        async def handler(request: web.Request) -> web.Response:
            start = time.perf_counter()
            try:
                return await fn(request)
            except msgspec.ValidationError as exc:
                return _error(400, f"{verb}: request does not match Volcano's format: {exc}")
            except msgspec.DecodeError as exc:
                return _error(400, f"{verb}: malformed JSON: {exc}")
            except ValueError as exc:
                return _error(400, f"{verb}: {exc}")
            finally:
                metrics.latency.labels(verb).observe(time.perf_counter() - start)

        return handler

    async def session_open(request: web.Request) -> web.Response:
        # Every job and node of the cluster, every second: never decode it, just drain it.
        async for _ in request.content.iter_any():
            pass
        return _json(b"{}")

    async def session_close(request: web.Request) -> web.Response:
        await request.read()
        ext.session_close()
        return _json(b"{}")

    async def predicate(request: web.Request) -> web.Response:
        body = wire.predicate_decoder.decode(await request.read())
        return _json(wire.encoder.encode(ext.predicate(body)))

    async def prioritize(request: web.Request) -> web.Response:
        body = wire.decode_prioritize(await request.read())
        return _json(wire.encoder.encode(ext.prioritize(body)))

    async def allocate(request: web.Request) -> web.Response:
        body = wire.event_decoder.decode(await request.read())
        return _json(wire.encoder.encode(await ext.allocate(body)))

    async def deallocate(request: web.Request) -> web.Response:
        body = wire.event_decoder.decode(await request.read())
        return _json(wire.encoder.encode(await ext.deallocate(body)))

    def neutral(payload: bytes) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            async for _ in request.content.iter_any():
                pass
            return _json(payload)

        return handler

    handlers: dict[str, Callable[[web.Request], Awaitable[web.Response]]] = {
        "onSessionOpen": session_open,
        "onSessionClose": session_close,
        "predicate": predicate,
        "prioritize": prioritize,
        "allocate": allocate,
        "deallocate": deallocate,
        "preemptable": neutral(_ABSTAIN),
        "reclaimable": neutral(_ABSTAIN),
        "jobEnqueueable": neutral(wire.encoder.encode(wire.StatusIntResponse(0))),
        "jobEnqueued": neutral(b"{}"),
        "queueOverused": neutral(wire.encoder.encode(wire.OverusedResponse(False))),
        "jobReady": neutral(wire.encoder.encode(wire.StatusBoolResponse(True))),
    }
    for verb, path in paths.items():
        app.router.add_post("/" + path.strip("/"), timed(verb, handlers[verb]))

    verb_paths = {"/" + p.strip("/") for p in paths.values()}

    async def unknown(request: web.Request) -> web.Response:
        if request.path in verb_paths:
            return web.json_response(
                {"error": f"{request.method} {request.path}: extender verbs take POST"},
                status=405,
                headers={"Allow": "POST"},
            )
        known = ", ".join(sorted(verb_paths))
        return _error(404, f"unknown path {request.path!r}; extender verbs: {known}")

    _add_health_routes(app, metrics, ready)
    app.router.add_route("*", "/{tail:.*}", unknown)
    return app


def _add_health_routes(app: web.Application, metrics: Metrics, ready: Callable[[], bool]) -> None:
    async def metrics_handler(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(request: web.Request) -> web.Response:
        return web.Response(text="ok") if ready() else web.Response(text="cache not synced", status=503)

    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)


def build_metrics_app(metrics: Metrics, ready: Callable[[], bool]) -> web.Application:
    """/metrics, /healthz and /readyz alone (for `--metrics-listen`)."""
    app = web.Application()
    _add_health_routes(app, metrics, ready)
    return app
