"""The sidecar's view of the cluster: every GPU node's NodeState, rebuilt from Node and Pod objects.

Pure: no I/O, and the time is passed in. Usage comes only from pod annotations (plus instances the
node agent reports it did not create), so a restarted sidecar rebuilds exactly the same usage."""

from __future__ import annotations

import logging
import re
from collections import deque
from datetime import datetime

import msgspec

from ..core import names
from ..core.cluster import make_gpu, workload_of
from ..core.config import DeviceConfig
from ..core.fragmentation import Workload
from ..core.node import NodeState
from ..core.request import PodRequest, RequestError, parse_pod
from ..core.types import Assignment, DeviceGrant, GpuState, MigInstance, Rejection
from ..kube.objects import Node, Pod
from ..protocol.assignment import AssignmentError, decode_assignment, parse_volcano_devices
from ..protocol.registration import MigLayout, RegistrationError, decode_layout, decode_registration

log = logging.getLogger(__name__)

FOREIGN = "foreign"  # pseudo pod holding MIG instances vgpu-pool did not create
_HANDSHAKE = re.compile(r"Reported (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:\.\d+)? ([+-]\d{4})")


class Holding(msgspec.Struct, frozen=True):
    node: str
    assignment: Assignment


class PodEntry(msgspec.Struct):
    pod: Pod
    holding: Holding | None  # what this pod holds in the NodeStates right now


def _bind_time(pod: Pod) -> int:
    try:
        return int(pod.metadata.annotations.get(names.ANNO_BIND_TIME, "0"))
    except ValueError:
        return 0


class ClusterState:
    def __init__(self, cfg: DeviceConfig, *, stale_after: int = 300, unbound_grace: int = 120):
        self.cfg = cfg
        self.stale_after = stale_after  # seconds without an agent heartbeat before a node is stale
        self.unbound_grace = unbound_grace  # seconds an assigned, unbound pod keeps its devices
        self.nodes: dict[str, Node] = {}
        self.states: dict[str, NodeState] = {}
        self.problems: dict[str, tuple[str, int]] = {}  # node -> (reason, code) when not usable
        self.layouts: dict[str, MigLayout] = {}
        self.pods: dict[str, PodEntry] = {}  # by uid; only pods with GPU requests or assignments
        self.tentative: set[str] = set()  # pod UIDs allocated in this session, not yet bound
        self.geometries_of: dict[str, tuple] = {}  # GPU uuid -> its model's geometries (for device IDs)
        self.warnings: list[str] = []
        self.recent: deque[PodRequest] = deque(maxlen=5000)  # recent GPU requests (frag-pack's workload)
        self.workload: Workload | None = None
        self._since_refresh = 0

    # --- the workload frag-pack optimises for -------------------------------------------------------

    def observe(self, req: PodRequest) -> None:
        """Remember a GPU request; the typical workload is refreshed every 100 requests."""
        self.recent.append(req)
        self._since_refresh += 1
        if self.workload is None or self._since_refresh >= 100:
            self.workload = workload_of(list(self.recent), self._reference_memory())
            self._since_refresh = 0

    def _reference_memory(self) -> int:
        mems = sorted(g.total_memory for st in self.states.values() for g in st.gpus)
        return mems[len(mems) // 2] if mems else 0

    # --- config -----------------------------------------------------------------------------------

    def set_config(self, cfg: DeviceConfig, now: int) -> None:
        self.cfg = cfg
        for name in list(self.nodes):
            self._rebuild_node(name, now)

    # --- nodes ------------------------------------------------------------------------------------

    def replace_nodes(self, nodes: list[Node], now: int) -> None:
        self.nodes = {n.metadata.name: n for n in nodes}
        self.states.clear()
        self.problems.clear()
        for name in self.nodes:
            self._rebuild_node(name, now)

    def upsert_node(self, node: Node, now: int) -> None:
        name = node.metadata.name
        old = self.nodes.get(name)
        self.nodes[name] = node
        if old is not None and _gpu_annotations(old) == _gpu_annotations(node):
            return  # status-only update: usage is unchanged
        self._rebuild_node(name, now)

    def delete_node(self, name: str) -> None:
        self.nodes.pop(name, None)
        self.states.pop(name, None)
        self.problems.pop(name, None)
        self.layouts.pop(name, None)

    def _rebuild_node(self, name: str, now: int) -> None:
        node = self.nodes[name]
        self.states.pop(name, None)
        self.problems.pop(name, None)
        anns = node.metadata.annotations
        raw = anns.get(names.ANNO_NODE_REGISTER)
        if not raw:
            self.problems[name] = (f"node {name} has no GPU registration ({names.ANNO_NODE_REGISTER})", 3)
            return
        try:
            registered = decode_registration(raw)
        except RegistrationError as exc:
            self.problems[name] = (f"node {name}: unreadable GPU registration: {exc}", 2)
            return
        layout = MigLayout()
        if names.ANNO_MIG_LAYOUT in anns:
            try:
                layout = decode_layout(anns[names.ANNO_MIG_LAYOUT])
            except RegistrationError as exc:
                log.warning("node %s: %s", name, exc)
        self.layouts[name] = layout
        settings = self.cfg.node(name)
        by_uuid = {g.uuid: g for g in layout.gpus}
        gpus: list[GpuState] = []
        for r in registered:
            if r.uuid in settings.filter_uuids or r.index in settings.filter_indexes:
                continue
            gpu = make_gpu(r.uuid, r.index, r.model, r.mode, r.memory, self.cfg, settings, r.healthy)
            if r.mode == names.MODE_HAMI_CORE:
                # The registration carries the split count and scaled memory the node advertises.
                gpu.split_count = r.split_count
            reported = by_uuid.get(r.uuid)
            if r.mode == names.MODE_MIG and reported is not None:
                if not reported.mig_enabled or reported.mig_pending:
                    gpu.healthy = False  # MIG mode not (yet) in effect on this GPU
                if reported.unusable_geometries:
                    bad = set(reported.unusable_geometries)
                    gpu.geometries = tuple(g for g in gpu.geometries if g.index not in bad)
            self.geometries_of[r.uuid] = gpu.geometries
            gpus.append(gpu)
        state = NodeState(name, gpus)  # host CPU and memory are Volcano's to check
        for g in layout.gpus:
            gpu_state = state.gpu(g.uuid)
            if gpu_state is None or gpu_state.mode != names.MODE_MIG:
                continue
            for inst in g.instances:
                if not inst.owned:
                    gpu_state.instances.append(MigInstance(inst.profile, inst.start, inst.size, 0, 0, FOREIGN, FOREIGN))
        self.states[name] = state
        stale = self._staleness(node, layout, now)
        if stale:
            self.problems[name] = (stale, 2)
        for entry in self.pods.values():
            if entry.holding is not None and entry.holding.node == name:
                self._add_holding(state, entry.pod, entry.holding.assignment)

    def _staleness(self, node: Node, layout: MigLayout, now: int) -> str | None:
        beat = layout.heartbeat
        hs = node.metadata.annotations.get(names.ANNO_NODE_HANDSHAKE, "")
        if not beat and hs.startswith("Deleted"):
            return f"node {node.metadata.name}: device plugin marked its registration deleted"
        if not beat:
            m = _HANDSHAKE.search(hs)
            if m:
                beat = int(datetime.strptime(f"{m.group(1)} {m.group(2)}", "%Y-%m-%d %H:%M:%S %z").timestamp())
        if beat and now - beat > self.stale_after:
            return f"node {node.metadata.name}: GPU registration is stale (last report {now - beat}s ago)"
        return None

    def check_staleness(self, now: int) -> None:
        """Re-evaluate heartbeats (called periodically; nodes go stale without any event)."""
        for name, node in self.nodes.items():
            if name not in self.states:
                continue
            stale = self._staleness(node, self.layouts.get(name, MigLayout()), now)
            if stale:
                self.problems[name] = (stale, 2)
            elif name in self.problems and self.problems[name][1] == 2 and "stale" in self.problems[name][0]:
                del self.problems[name]

    # --- pods -------------------------------------------------------------------------------------

    def replace_pods(self, pods: list[Pod], now: int) -> None:
        for entry in list(self.pods.values()):
            self._set_holding(entry, None)
        self.pods.clear()
        for pod in pods:
            self.upsert_pod(pod, now)

    def upsert_pod(self, pod: Pod, now: int) -> None:
        uid = pod.metadata.uid
        entry = self.pods.get(uid)
        holding = self._holding_of(pod, now)
        if entry is None:
            if holding is None and not _asks_for_gpu(pod, self.cfg):
                return
            entry = PodEntry(pod, None)
            self.pods[uid] = entry
        entry.pod = pod
        if pod.spec.node_name:
            self.tentative.discard(uid)
        elif uid in self.tentative and holding is None:
            holding = entry.holding  # allocated this session; our PATCH has not come back yet
        self._set_holding(entry, holding)

    def delete_pod(self, uid: str) -> None:
        entry = self.pods.pop(uid, None)
        self.tentative.discard(uid)
        if entry is not None:
            self._set_holding(entry, None)

    def expire(self, now: int) -> list[str]:
        """Release assigned pods that never got bound within the grace period; returns their keys."""
        released = []
        for entry in self.pods.values():
            if entry.holding is not None and self._holding_of(entry.pod, now) is None:
                self._set_holding(entry, None)
                released.append(entry.pod.key)
        return released

    def _holding_of(self, pod: Pod, now: int) -> Holding | None:
        anns = pod.metadata.annotations
        node = anns.get(names.ANNO_VGPU_NODE)
        if not node or pod.terminated or pod.metadata.deletion_timestamp and not pod.spec.node_name:
            return None
        if pod.spec.node_name and pod.spec.node_name != node:
            return None  # bound elsewhere: the assignment is stale
        unbound = not pod.spec.node_name and pod.metadata.uid not in self.tentative
        if unbound and now - _bind_time(pod) > self.unbound_grace:
            return None
        exact = anns.get(names.ANNO_ASSIGNMENT)
        try:
            if exact:
                a = decode_assignment(exact)
                if a.node != node:
                    return None
            elif anns.get(names.ANNO_VGPU_IDS):
                a = parse_volcano_devices(anns[names.ANNO_VGPU_IDS], node)
            else:
                return None
        except AssignmentError as exc:
            log.warning("pod %s: unreadable assignment: %s", pod.key, exc)
            return None
        return Holding(node, a)

    def _set_holding(self, entry: PodEntry, holding: Holding | None) -> None:
        if entry.holding == holding:
            return
        uid = entry.pod.metadata.uid
        if entry.holding is not None:
            state = self.states.get(entry.holding.node)
            if state is not None:
                state.release(uid)
        entry.holding = holding
        if holding is not None:
            state = self.states.get(holding.node)
            if state is not None:
                self._add_holding(state, entry.pod, holding.assignment)

    def _add_holding(self, state: NodeState, pod: Pod, assignment: Assignment) -> None:
        fixed = _resolve_indexes(state, assignment)
        for problem in state.add_existing(pod.metadata.uid, pod.key, fixed):
            log.warning("usage rebuild: %s", problem)

    # --- scheduling -------------------------------------------------------------------------------

    def node_for(self, name: str) -> NodeState | Rejection:
        problem = self.problems.get(name)
        if problem is not None:
            return Rejection(problem[0], problem[1])
        state = self.states.get(name)
        if state is None:
            return Rejection(f"node {name} is not known to the GPU scheduler (no registration seen)", 3)
        return state

    def allocate(self, req: PodRequest, node_name: str) -> Assignment | Rejection:
        """Tentatively give the pod devices on a node (idempotent by UID; moves it if on another)."""
        entry = self.pods.get(req.uid)
        if entry is not None and entry.holding is not None and entry.holding.node != node_name:
            self._set_holding(entry, None)
        state = self.node_for(node_name)
        if isinstance(state, Rejection):
            return state
        result = state.allocate(req, self.cfg, check_host=False, workload=self.workload)
        if isinstance(result, Assignment):
            self.tentative.add(req.uid)
            holding = Holding(node_name, result)
            if entry is None:
                entry = PodEntry(Pod(), holding)
                entry.pod.metadata.uid = req.uid
                entry.pod.metadata.namespace, entry.pod.metadata.name = req.namespace, req.name
                self.pods[req.uid] = entry
            else:
                entry.holding = holding
        return result

    def close_session(self) -> None:
        """Allocations that survive the session were committed for binding; from now on they hold
        their devices through their annotations (bound, or unbound within the grace period)."""
        self.tentative.clear()

    def deallocate(self, uid: str) -> Holding | None:
        """Undo a tentative allocation; returns what was released."""
        self.tentative.discard(uid)
        entry = self.pods.get(uid)
        if entry is None or entry.holding is None:
            return None
        released = entry.holding
        self._set_holding(entry, None)
        return released


def _asks_for_gpu(pod: Pod, cfg: DeviceConfig) -> bool:
    names_ = (cfg.resource_count, cfg.resource_memory, cfg.resource_cores, cfg.resource_memory_percentage)
    for c in (*pod.spec.containers, *pod.spec.init_containers):
        for part in (c.resources.limits, c.resources.requests):
            if any(n in part for n in names_):
                return True
    return False


def parse_pod_request(pod: Pod, cfg: DeviceConfig) -> PodRequest | str:
    try:
        return parse_pod(pod.as_dict(), cfg)
    except RequestError as exc:
        return str(exc)


def _resolve_indexes(state: NodeState, a: Assignment) -> Assignment:
    """Volcano's device strings carry no GPU index; fill it from the node."""
    if all(d.index >= 0 for d in a.devices()):
        return a
    containers = []
    for c in a.containers:
        devs = []
        for d in c.devices:
            if d.index < 0:
                gpu = state.gpu(d.uuid)
                d = DeviceGrant(d.uuid, gpu.index if gpu else -1, d.mode, d.memory, d.cores)
            devs.append(d)
        containers.append(msgspec.structs.replace(c, devices=tuple(devs)))
    return msgspec.structs.replace(a, containers=tuple(containers))


def _gpu_annotations(node: Node) -> tuple[str | None, ...]:
    a = node.metadata.annotations
    return (a.get(names.ANNO_NODE_REGISTER), a.get(names.ANNO_MIG_LAYOUT), a.get(names.ANNO_NODE_HANDSHAKE))
