"""`vcplugin serve`: informers + state + extender + HTTP, on one asyncio loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from dataclasses import dataclass, field

from aiohttp import web

from ..core.config import DATA_KEY, ConfigError, DeviceConfig, default_config, load_config_text
from ..kube.client import KubeClient, KubeError
from ..kube.informer import Informer, configmap_informer
from ..kube.objects import ConfigMap, Node, Pod
from .extender import Extender
from .metrics import Metrics
from .server import build_app, build_metrics_app
from .state import ClusterState

log = logging.getLogger(__name__)


def now() -> int:
    return int(time.time())


@dataclass
class ServeOptions:
    listen: str = "127.0.0.1:8713"
    config_map: str | None = "kube-system/vgpu-pool-device-config"
    config: DeviceConfig | None = None
    signing_key: bytes | None = None
    max_body: int = 512 * 1024 * 1024
    verbs: dict[str, str] = field(default_factory=dict)
    assign_at_bind: bool = True
    stale_after: int = 300
    unbound_grace: int = 120
    housekeeping_interval: float = 10.0
    metrics_listen: str | None = None  # a separate HOST:PORT for /metrics, /healthz, /readyz only


class Sidecar:
    """Everything `vcplugin serve` runs; tests and the demo drive it in process."""

    def __init__(self, kube: KubeClient, opts: ServeOptions):
        self.kube, self.opts = kube, opts
        self.state = ClusterState(
            opts.config or default_config(), stale_after=opts.stale_after, unbound_grace=opts.unbound_grace
        )
        self.metrics = Metrics(self.state)
        if opts.signing_key is None:
            log.warning(
                "NO SIGNING KEY: assignments are unsigned, and any user who can annotate a pod can claim GPUs. "
                "Give --signing-key-file (a Secret shared with the node agents)."
            )
        self.extender = Extender(self.state, kube, now, self.metrics, opts.signing_key)
        self.informers: list[Informer] = []  # type: ignore[type-arg]
        self.tasks: list[asyncio.Task[None]] = []
        self.runner: web.AppRunner | None = None
        self.metrics_runner: web.AppRunner | None = None
        self.url = ""
        self.config_errors = 0

    # --- informer callbacks -----------------------------------------------------------------------

    def _on_nodes(self, nodes: list[Node]) -> None:
        self.state.replace_nodes(nodes, now())

    def _on_node(self, kind: str, node: Node) -> None:
        if kind == "DELETED":
            self.state.delete_node(node.metadata.name)
        else:
            self.state.upsert_node(node, now())

    def _on_pods(self, pods: list[Pod]) -> None:
        self.state.replace_pods(pods, now())

    def _on_pod(self, kind: str, pod: Pod) -> None:
        if kind == "DELETED":
            self.state.delete_pod(pod.metadata.uid)
            return
        self.state.upsert_pod(pod, now())
        if self.opts.assign_at_bind and pod.spec.node_name and pod.metadata.uid in self.state.pods:
            entry = self.state.pods[pod.metadata.uid]
            if entry.holding is None:
                self.tasks.append(asyncio.ensure_future(self.extender.assign_bound(pod)))

    def _on_configmap(self, kind: str, cm: ConfigMap) -> None:
        if kind == "DELETED" or DATA_KEY not in cm.data:
            return
        source = f"ConfigMap {cm.metadata.namespace}/{cm.metadata.name}"
        try:
            cfg = load_config_text(cm.data[DATA_KEY], source)
        except ConfigError as exc:
            self.config_errors += 1
            self.metrics.config_reloads.labels("invalid").inc()
            log.error("rejected new device config; keeping the last good one:\n%s", exc)
            self.tasks.append(asyncio.ensure_future(self._config_event(cm, str(exc))))
            return
        for w in cfg.warnings:
            log.warning("device config: %s", w)
        self.state.set_config(cfg, now())
        self.metrics.config_reloads.labels("ok").inc()
        log.info("device config loaded from %s (%d MIG models)", source, len(cfg.geometries))

    async def _config_event(self, cm: ConfigMap, message: str) -> None:
        ns = cm.metadata.namespace
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": "vgpu-pool-config-", "namespace": ns},
            "involvedObject": {
                "kind": "ConfigMap",
                "namespace": ns,
                "name": cm.metadata.name,
                "uid": cm.metadata.uid,
                "apiVersion": "v1",
            },
            "reason": "InvalidDeviceConfig",
            "message": message[:1000],
            "type": "Warning",
            "source": {"component": "vgpu-pool-sidecar"},
        }
        with contextlib.suppress(KubeError, OSError):
            await self.kube.post(f"/api/v1/namespaces/{ns}/events", body)

    # --- lifecycle --------------------------------------------------------------------------------

    def ready(self) -> bool:
        return all(i.synced.is_set() for i in self.informers)

    async def start(self) -> str:
        self.informers = [
            Informer(self.kube, "/api/v1/nodes", Node, self._on_nodes, self._on_node),
            Informer(self.kube, "/api/v1/pods", Pod, self._on_pods, self._on_pod),
        ]
        if self.opts.config_map:
            self.informers.append(configmap_informer(self.kube, self.opts.config_map, self._on_configmap))
        for inf, res in zip(self.informers, ("nodes", "pods", "configmaps"), strict=False):
            self.tasks.append(asyncio.ensure_future(self._run_informer(inf, res)))
        self.tasks.append(asyncio.ensure_future(self._housekeeping()))
        self.tasks.append(asyncio.ensure_future(self._freeze_after_sync()))
        app = build_app(self.extender, verbs=self.opts.verbs, max_body=self.opts.max_body, ready=self.ready)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        host, _, port = self.opts.listen.rpartition(":")
        site = web.TCPSite(self.runner, host or "127.0.0.1", int(port))
        await site.start()
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        actual = sockets[0].getsockname()[1] if sockets else int(port)
        self.url = f"http://{host or '127.0.0.1'}:{actual}"
        log.info("extender listening on %s", self.url)
        if self.opts.metrics_listen:
            # Metrics on their own listener, so exposing them never exposes the extender verbs.
            mapp = build_metrics_app(self.metrics, self.ready)
            self.metrics_runner = web.AppRunner(mapp, access_log=None)
            await self.metrics_runner.setup()
            mhost, _, mport = self.opts.metrics_listen.rpartition(":")
            await web.TCPSite(self.metrics_runner, mhost or "0.0.0.0", int(mport)).start()
            log.info("metrics listening on %s", self.opts.metrics_listen)
        return self.url

    async def _run_informer(self, inf: Informer, resource: str) -> None:  # type: ignore[type-arg]
        async def mark() -> None:
            await inf.synced.wait()
            self.metrics.synced.labels(resource).set(1)

        marker = asyncio.ensure_future(mark())
        try:
            await inf.run()
        finally:
            marker.cancel()

    async def _freeze_after_sync(self) -> None:
        """The cache of a large cluster is hundreds of thousands of long-lived objects; left in the
        collector's generations, every full collection walks them all (milliseconds per request
        at 5,000 nodes). Freeze what the first sync built."""
        await asyncio.gather(*(i.synced.wait() for i in self.informers))
        gc.collect()
        gc.freeze()

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self.opts.housekeeping_interval)
            t = now()
            for key in self.state.expire(t):
                log.info("released devices of %s: assigned but not bound within %ss", key, self.opts.unbound_grace)
            self.state.check_staleness(t)
            self.tasks = [task for task in self.tasks if not task.done()]

    async def wait_synced(self, timeout: float = 30.0) -> None:
        await asyncio.wait_for(asyncio.gather(*(i.synced.wait() for i in self.informers)), timeout)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for runner in (self.runner, self.metrics_runner):
            if runner is not None:
                await runner.cleanup()


async def serve_forever(kubeconfig: str | None, opts: ServeOptions) -> None:
    kube = await KubeClient.connect(kubeconfig)
    sidecar = Sidecar(kube, opts)
    try:
        await sidecar.start()
        await asyncio.Event().wait()
    finally:
        await sidecar.stop()
        await kube.close()
