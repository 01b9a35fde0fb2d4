"""`nodeagent run`: the one process on a GPU node that touches the GPUs.

It discovers the GPUs with NVML, publishes them on the Node (Volcano's registration plus our MIG
layout), creates and destroys MIG instances for the pods assigned here, and answers kubelet's
device-plugin Allocate with HAMi-core's environment or the MIG device UUIDs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec

from vcplugin.core import names
from vcplugin.core.config import DATA_KEY, ConfigError, DeviceConfig, default_config, load_config_text
from vcplugin.core.migtables import find_model
from vcplugin.kube.client import KubeClient, KubeError, node_path, pod_path
from vcplugin.kube.informer import Informer, configmap_informer
from vcplugin.kube.objects import ConfigMap, Pod
from vcplugin.protocol.registration import (
    MigLayout,
    RegisteredGpu,
    encode_layout,
    encode_registration,
)

from .assignments import (
    Held,
    device_containers,
    holders,
    next_container,
    remaining_segments,
    remaining_value,
    wants_of,
)
from .deviceplugin.server import DevicePluginServer, PluginManager
from .deviceplugin.types import AllocateError, ContainerAllocation
from .gpus import AgentGpu, mig_layout, registration, unusable_geometries
from .hamicore_env import HamiCorePaths, hami_core_allocation, is_mig, mig_allocation
from .journal import Journal
from .metrics import AgentMetrics
from .migmanager import MigGpu, MigManager, PassResult
from .nvml import Nvml
from .podresources import PodResourcesVerifier

log = logging.getLogger("nodeagent")

# kubelet reads ListAndWatch with gRPC's default 4 MiB limit; a device costs about 16 bytes there.
MAX_LISTED_DEVICES = 200_000


@dataclass
class AgentOptions:
    node_name: str
    config_map: str | None = "kube-system/vgpu-pool-device-config"
    config: DeviceConfig | None = None
    signing_key: bytes | None = None
    device_plugin_dir: str = "/var/lib/kubelet/device-plugins"
    state_file: str | None = "/var/lib/vgpu-pool/nodeagent-owned.json"
    hami_core: HamiCorePaths = field(default_factory=HamiCorePaths)
    grace: float = 30.0  # seconds an unused instance of ours survives before it is destroyed
    reconcile_interval: float = 10.0
    heartbeat_interval: float = 60.0
    health_interval: float = 30.0
    allocate_wait: float = 30.0  # how long Allocate waits for the pod / its MIG instances
    advertise_memory_cores: bool = True
    memory_unit_mib: int = 1
    pod_resources_socket: str | None = "/var/lib/kubelet/pod-resources/kubelet.sock"
    adopt_foreign: bool = False
    device_plugins: bool = True
    metrics_listen: str | None = None  # HOST:PORT for /metrics and /healthz


class NodeAgent:
    def __init__(self, kube: KubeClient | None, nv: Any, opts: AgentOptions, clock: Any = time.time):
        self.kube, self.opts, self.clock = kube, opts, clock
        self.nvml = Nvml(nv)
        self.cfg = opts.config or default_config()
        self.journal = Journal(opts.state_file)
        self.mig = MigManager(self.nvml, self.journal, clock, grace=opts.grace, adopt_foreign=opts.adopt_foreign)
        self.gpus: list[AgentGpu] = []
        self.pods: dict[str, Pod] = {}
        self.consumed: dict[str, int] = {}  # pod uid -> containers admitted by this agent
        self.refused_marked: set[str] = set()
        self.last: PassResult = PassResult()
        self.changed = asyncio.Event()
        self.progress = asyncio.Condition()
        self.alloc_lock = asyncio.Lock()
        self.tasks: list[asyncio.Task[None]] = []
        self.informers: list[Informer] = []  # type: ignore[type-arg]
        self.plugins = PluginManager()
        self.published: tuple[str, str] | None = None
        self.published_at = 0.0
        self.driver = ""
        self.metrics = AgentMetrics()
        self.runner: Any = None
        self.verifier: PodResourcesVerifier | None = None
        if opts.pod_resources_socket:
            self.verifier = PodResourcesVerifier(opts.pod_resources_socket, on_mismatch=self._mismatch)
        if opts.signing_key is None:
            log.warning(
                "NO SIGNING KEY: assignments are not verified; any pod annotation will be honoured. "
                "Give --signing-key-file (the Secret shared with the scheduler sidecar)."
            )

    # --- discovery ----------------------------------------------------------------------------------

    async def discover(self) -> None:
        self.driver = await self.nvml.run(self.nvml.init)
        await self.configure()

    async def configure(self) -> None:
        """Decide each GPU's mode and usable geometries from the config and what NVML reports."""
        settings = self.cfg.node(self.opts.node_name)
        infos = await self.nvml.run(self.nvml.gpus)
        gpus: list[AgentGpu] = []
        for info in infos:
            if info.uuid in settings.filter_uuids or info.index in settings.filter_indexes:
                continue
            g = AgentGpu(info, settings.mode)
            if settings.mode == names.MODE_MIG:
                await self._configure_mig(g)
            else:
                g.memory = int(info.memory_mib * settings.memory_scaling)
                g.split = settings.split_count
                if info.mig_current:
                    g.healthy = False
                    g.problem = (
                        "MIG mode is on: HAMi-core cannot share this GPU; disable MIG "
                        "(nvidia-smi -i N -mig 0) or set the node's operatingmode to mig"
                    )
            if g.problem:
                log.warning("GPU %d (%s): %s", info.index, info.uuid, g.problem)
            gpus.append(g)
        self.gpus = gpus
        self.mig.set_gpus([g.mig for g in gpus if g.mig is not None])
        self._export_gpu_metrics()

    def _export_gpu_metrics(self) -> None:
        self.metrics.unusable_geometry.clear()
        for g in self.gpus:
            lv = [g.info.uuid, str(g.info.index), g.info.name]
            self.metrics.healthy.labels(*lv).set(1 if g.healthy else 0)
            self.metrics.mig_pending.labels(*lv).set(1 if g.info.mig_pending else 0)
            for idx in g.unusable:
                self.metrics.unusable_geometry.labels(*lv, str(idx)).set(1)

    async def _configure_mig(self, g: AgentGpu) -> None:
        info = g.info
        model = find_model(info.name)
        g.memory = info.memory_mib
        g.split = model.compute_slices if model else 1
        if not info.mig_capable or model is None:
            g.healthy = False
            g.problem = f"{info.name} cannot do MIG (or is not in the MIG tables); node is in mig mode"
            return
        if not info.mig_current:
            processes = await self.nvml.run(self.nvml.gpu_processes, info.index)
            try:
                current, pending = await self.nvml.run(self.nvml.enable_mig, info.index)
            except Exception as exc:
                current, pending = False, False
                g.problem = f"enabling MIG mode failed: {exc}"
            if not current:
                g.healthy = False
                g.problem = g.problem or (
                    f"MIG mode pending: the GPU must be reset to apply it ({processes} process(es) running; "
                    "the agent never resets a GPU). Reset it when idle (nvidia-smi -i N -r) or reboot."
                )
                g.info = msgspec.structs.replace(info, mig_pending=pending)
                return
            g.info = msgspec.structs.replace(info, mig_current=True, mig_pending=False)
        profiles = await self.nvml.run(self.nvml.profiles, info.index)
        g.mig = MigGpu(info.index, info.uuid, model, profiles)
        for index, why in unusable_geometries(g.mig, self.cfg.geometries_for(model)):
            g.unusable.append(index)
            log.warning("GPU %d: geometry %d not usable: %s", info.index, index, why)

    # --- publishing ---------------------------------------------------------------------------------

    def registration(self) -> list[RegisteredGpu]:
        return registration(self.gpus)

    def layout(self) -> MigLayout:
        return mig_layout(self.gpus, self.mig, self.journal, int(self.clock()))

    async def publish(self, force: bool = False) -> bool:
        reg = encode_registration(self.registration())
        layout = self.layout()
        body = encode_layout(msgspec.structs.replace(layout, heartbeat=0))
        due = self.clock() - self.published_at >= self.opts.heartbeat_interval
        if not force and not due and self.published == (reg, body):
            return False
        problems = "; ".join(f"GPU {g.info.index}: {g.problem}" for g in self.gpus if g.problem)
        annotations = {
            names.ANNO_NODE_REGISTER: reg,
            names.ANNO_MIG_LAYOUT: encode_layout(layout),
            names.ANNO_AGENT_STATUS: problems or "ok",
        }
        if self.kube is not None:
            try:
                await self.kube.patch(node_path(self.opts.node_name), {"metadata": {"annotations": annotations}})
            except (KubeError, OSError) as exc:
                log.warning("publishing GPUs on node %s failed: %s", self.opts.node_name, exc)
                return False
        self.published, self.published_at = (reg, body), self.clock()
        return True

    # --- pods and reconciliation --------------------------------------------------------------------

    def _caps(self) -> dict[str, tuple[int, int, int]]:
        s = self.cfg.node(self.opts.node_name)
        return {
            g.info.uuid: (g.memory, g.split, int(100 * s.core_scaling))
            for g in self.gpus
            if g.mode == names.MODE_HAMI_CORE
        }

    def holders(self) -> tuple[list[Held], list[Any]]:
        return holders(list(self.pods.values()), self.opts.node_name, self.opts.signing_key, self._caps())

    async def reconcile_once(self) -> PassResult:
        held, refused = self.holders()
        result = await self.mig.reconcile(wants_of(held))
        self.last = result
        self.metrics.instances_created.inc(len(result.created))
        self.metrics.instances_destroyed.inc(len(result.destroyed))
        for h in held:
            await self._annotate_mig(h, result)
        for r in refused:
            await self._mark_failed(r.pod, r.reason)
        await self.publish()
        async with self.progress:
            self.progress.notify_all()
        return result

    async def _annotate_mig(self, h: Held, result: PassResult) -> None:
        devs = [d for d in h.assignment.devices() if d.mode == names.MODE_MIG and d.placement]
        if not devs:
            return
        uuids = [result.ready.get((d.uuid, d.placement[0], d.placement[1])) for d in devs if d.placement]
        if not all(uuids):
            return
        value = msgspec.json.encode(
            [
                {"gpu": d.uuid, "profile": d.profile, "placement": d.placement, "migUUID": u}
                for d, u in zip(devs, uuids, strict=True)
            ]
        ).decode()
        if h.pod.metadata.annotations.get(names.ANNO_MIG_DEVICES) == value:
            return
        await self._patch_pod(h.pod, {names.ANNO_MIG_DEVICES: value})
        h.pod.metadata.annotations[names.ANNO_MIG_DEVICES] = value

    async def _mark_failed(self, pod: Pod, reason: str) -> None:
        if pod.metadata.uid in self.refused_marked:
            return
        self.refused_marked.add(pod.metadata.uid)
        self.metrics.refused.inc()
        log.error("refusing pod %s: %s", pod.key, reason)
        if pod.metadata.annotations.get(names.ANNO_BIND_PHASE) != names.BIND_PHASE_SUCCESS:
            await self._patch_pod(pod, {names.ANNO_BIND_PHASE: names.BIND_PHASE_FAILED, "vgpu-pool.io/failure": reason})

    async def _patch_pod(self, pod: Pod, annotations: dict[str, str | None]) -> None:
        if self.kube is None:
            return
        try:
            await self.kube.patch(
                pod_path(pod.metadata.namespace, pod.metadata.name), {"metadata": {"annotations": annotations}}
            )
        except (KubeError, OSError) as exc:
            log.warning("patching pod %s failed: %s", pod.key, exc)

    def _on_pods(self, pods: list[Pod]) -> None:
        self.pods = {p.metadata.uid: p for p in pods}
        self._poke()

    def _on_pod(self, kind: str, pod: Pod) -> None:
        if kind == "DELETED":
            self.pods.pop(pod.metadata.uid, None)
            self.consumed.pop(pod.metadata.uid, None)
        else:
            self.pods[pod.metadata.uid] = pod
        self._poke()

    def _poke(self) -> None:
        self.changed.set()
        self.tasks.append(asyncio.ensure_future(self._notify_progress()))

    async def _notify_progress(self) -> None:
        async with self.progress:
            self.progress.notify_all()

    def _on_configmap(self, kind: str, cm: ConfigMap) -> None:
        if kind == "DELETED" or DATA_KEY not in cm.data:
            return
        try:
            cfg = load_config_text(cm.data[DATA_KEY], f"ConfigMap {cm.metadata.namespace}/{cm.metadata.name}")
        except ConfigError as exc:
            log.error("rejected new device config; keeping the last good one:\n%s", exc)
            return
        self.cfg = cfg
        self.tasks.append(asyncio.ensure_future(self._reconfigure()))

    async def _reconfigure(self) -> None:
        await self.configure()
        await self.mig.refresh()
        await self.publish(force=True)
        await self.plugins.notify()

    # --- kubelet Allocate ---------------------------------------------------------------------------

    async def allocate(self, requests: list[list[str]]) -> list[ContainerAllocation]:
        start = time.perf_counter()
        try:
            async with self.alloc_lock:  # two admissions never take the same assignment
                out = [await self._admit(ids) for ids in requests]
        except AllocateError:
            self.metrics.allocations.labels("failed").inc()
            raise
        finally:
            self.metrics.allocate_seconds.observe(time.perf_counter() - start)
        self.metrics.allocations.labels("ok").inc(len(out))
        return out

    async def _admit(self, ids: list[str]) -> ContainerAllocation:
        count = len(ids)
        deadline = self.clock() + self.opts.allocate_wait
        while True:
            held, _ = self.holders()
            for h in held:
                uid = h.pod.metadata.uid
                anns = h.pod.metadata.annotations
                if h.pod.spec.node_name != self.opts.node_name:
                    continue
                if anns.get(names.ANNO_BIND_PHASE) != names.BIND_PHASE_ALLOCATING:
                    continue
                grant = next_container(h, self.consumed.get(uid, 0))
                if grant is not None and len(grant.devices) == count:
                    alloc = await self._give(h, grant, deadline)
                    if self.verifier is not None:
                        self.verifier.expect(
                            h.pod.metadata.namespace, h.pod.metadata.name, grant.name, self.cfg.resource_count, ids
                        )
                    return alloc
            if self.clock() >= deadline:
                raise AllocateError(
                    f"no pod bound to {self.opts.node_name} has an unconsumed vgpu-pool assignment of {count} vGPUs"
                )
            await self._wait_progress(0.2)

    async def _give(self, h: Held, grant: Any, deadline: float) -> ContainerAllocation:
        uid = h.pod.metadata.uid
        try:
            if is_mig(grant):
                uuids = await self._mig_uuids(grant, deadline)
                alloc = mig_allocation(uuids)
            else:
                alloc = hami_core_allocation(grant, uid, self.opts.hami_core)
        except AllocateError as exc:
            await self._patch_pod(
                h.pod, {names.ANNO_BIND_PHASE: names.BIND_PHASE_FAILED, "vgpu-pool.io/failure": exc.message}
            )
            raise
        # Containers admitted so far: what the annotation shows, or what this agent gave out since.
        done = max(self.consumed.get(uid, 0), len(device_containers(h.assignment)) - remaining_segments(h.pod)) + 1
        self.consumed[uid] = done
        rest = remaining_value(h, done)
        patch: dict[str, str | None] = {names.ANNO_DEVICES_TO_ALLOCATE: rest}
        if not rest:
            patch[names.ANNO_BIND_PHASE] = names.BIND_PHASE_SUCCESS
        await self._patch_pod(h.pod, patch)
        log.info(
            "allocated",
            extra={
                "fields": {
                    "pod": h.pod.key,
                    "container": grant.name,
                    "env": alloc.envs.get("NVIDIA_VISIBLE_DEVICES", ""),
                }
            },
        )
        return alloc

    async def _mig_uuids(self, grant: Any, deadline: float) -> list[str]:
        keys = [(d.uuid, d.placement[0], d.placement[1]) for d in grant.devices]
        while True:
            ready = self.last.ready
            if all(k in ready for k in keys):
                return [ready[k] for k in keys]
            if self.clock() >= deadline:
                why = "; ".join(sorted(set(self.last.waiting.values()))) or "not created yet"
                raise AllocateError(f"MIG instances for container {grant.name!r} are not ready: {why}")
            self.changed.set()
            await self._wait_progress(0.2)

    async def _wait_progress(self, timeout: float) -> None:
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that races the wait.
        async with self.progress:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.progress.wait()

    def _mismatch(self, expectation: Any, detail: str) -> None:
        """kubelet admitted another pod with the devices than the one whose assignment was handed out."""
        self.metrics.podresources_mismatch.inc()
        log.error("ADMISSION MISMATCH: %s", detail)

    # --- device plugin ------------------------------------------------------------------------------

    def _count_devices(self) -> list[tuple[str, bool, int | None]]:
        return [(f"{g.info.uuid}::{k}", g.healthy, None) for g in self.gpus for k in range(g.split)]

    def _memory_devices(self) -> list[tuple[str, bool, int | None]]:
        total = sum(g.memory for g in self.gpus if g.healthy) // max(1, self.opts.memory_unit_mib)
        return [(f"m{i}", True, None) for i in range(total)]

    def _core_devices(self) -> list[tuple[str, bool, int | None]]:
        return [(f"{g.info.uuid}::core-{k}", g.healthy, None) for g in self.gpus for k in range(100)]

    async def _bookkeeping_only(self, requests: list[list[str]]) -> list[ContainerAllocation]:
        return [ContainerAllocation() for _ in requests]

    def _build_plugins(self) -> None:
        d = self.opts.device_plugin_dir
        self.plugins = PluginManager()
        self.plugins.add(
            DevicePluginServer(self.cfg.resource_count, d, "vgpu-pool-gpu.sock", self._count_devices, self.allocate)
        )
        if self.opts.advertise_memory_cores:
            units = sum(g.memory for g in self.gpus) // max(1, self.opts.memory_unit_mib)
            if self.cfg.resource_memory and units > MAX_LISTED_DEVICES:
                log.warning(
                    "not advertising %s: %d devices of %d MiB would exceed kubelet's 4 MiB gRPC message; "
                    "set --memory-unit-mib (and the pods' %s in those units) to advertise it",
                    self.cfg.resource_memory,
                    units,
                    self.opts.memory_unit_mib,
                    self.cfg.resource_memory,
                )
            elif self.cfg.resource_memory:
                self.plugins.add(
                    DevicePluginServer(
                        self.cfg.resource_memory,
                        d,
                        "vgpu-pool-gpumem.sock",
                        self._memory_devices,
                        self._bookkeeping_only,
                    )
                )
            if self.cfg.resource_cores:
                self.plugins.add(
                    DevicePluginServer(
                        self.cfg.resource_cores,
                        d,
                        "vgpu-pool-gpucores.sock",
                        self._core_devices,
                        self._bookkeeping_only,
                    )
                )

    # --- loops --------------------------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.opts.reconcile_interval):
                    await self.changed.wait()
            self.changed.clear()
            try:
                await self.reconcile_once()
            except Exception:
                self.metrics.reconcile_errors.inc()
                log.exception("reconcile pass failed; retrying")
                await asyncio.sleep(1.0)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.opts.health_interval)
            changed = await self.check_health()
            if changed:
                self._export_gpu_metrics()
                await self.publish(force=True)
                await self.plugins.notify()

    async def check_health(self) -> bool:
        changed = False
        for g in self.gpus:
            try:
                await self.nvml.run(self.nvml.health_probe, g.info.index)
                ok = not g.problem
            except Exception as exc:
                ok = False
                log.warning("GPU %d (%s) unhealthy: %s", g.info.index, g.info.uuid, exc)
            if ok != g.healthy:
                g.healthy = ok
                changed = True
                log.info("GPU %d is now %s", g.info.index, "healthy" if ok else "unhealthy")
        return changed

    async def start(self) -> None:
        await self.discover()
        await self.mig.refresh()
        if self.kube is not None:
            sel = f"{names.LABEL_ASSIGNED_NODE}={self.opts.node_name}"
            self.informers.append(
                Informer(self.kube, "/api/v1/pods", Pod, self._on_pods, self._on_pod, label_selector=sel)
            )
            if self.opts.config_map and self.opts.config is None:
                self.informers.append(configmap_informer(self.kube, self.opts.config_map, self._on_configmap))
            for inf in self.informers:
                self.tasks.append(asyncio.ensure_future(inf.run()))
            await asyncio.wait_for(self.informers[0].synced.wait(), 60)
        await self.reconcile_once()
        await self.publish(force=True)
        if self.opts.device_plugins:
            self._build_plugins()
            await self.plugins.start()
        self.tasks.append(asyncio.ensure_future(self._reconcile_loop()))
        self.tasks.append(asyncio.ensure_future(self._health_loop()))
        if self.opts.metrics_listen:
            await self._serve_metrics(self.opts.metrics_listen)
        if self.verifier is not None:
            self.tasks.append(asyncio.ensure_future(self.verifier.run()))

    async def _serve_metrics(self, listen: str) -> None:
        from aiohttp import web
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        async def metrics(request: web.Request) -> web.Response:
            return web.Response(
                body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
            )

        async def healthz(request: web.Request) -> web.Response:
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/healthz", healthz)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        host, _, port = listen.rpartition(":")
        await web.TCPSite(self.runner, host or "0.0.0.0", int(port)).start()

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.opts.device_plugins:
            await self.plugins.stop()
        if self.runner is not None:
            await self.runner.cleanup()
        self.nvml.close()
