"""One node's GPUs and host resources, and whether a pod fits them."""

from __future__ import annotations

import re

import msgspec

from . import names
from .config import DeviceConfig
from .fragmentation import UNTRACKED_CPU, FragPack, Workload, gpu_free_share, grant_share
from .hamicore import HamiCoreSharing, needed_memory
from .mig import MigSharing
from .migtables import layout_problem, normalize_model_name
from .request import ContainerRequest, PodRequest
from .score import order_gpus
from .sharing import Sharing
from .types import Assignment, ContainerGrant, DeviceGrant, GpuState, Rejection

SHARING: dict[str, Sharing] = {names.MODE_HAMI_CORE: HamiCoreSharing(), names.MODE_MIG: MigSharing()}
_BOTH = (names.MODE_HAMI_CORE, names.MODE_MIG)


class PodRecord(msgspec.Struct):
    key: str
    assignment: Assignment
    cpu_milli: int
    memory_bytes: int


def type_matches(wanted: str, model: str) -> bool:
    """`wanted` names the model as a whole word run ("A100" matches "A100-PCIE-40GB"; "H20" does not
    match "H200"), case-insensitively, after dropping the NVIDIA prefix."""
    w, m = normalize_model_name(wanted), normalize_model_name(model)
    return re.search(rf"(?<![a-z0-9]){re.escape(w)}(?![a-z0-9])", m) is not None


class NodeState:
    __slots__ = ("name", "gpus", "cpu_capacity", "memory_capacity", "cpu_used", "memory_used", "pods")

    def __init__(self, name: str, gpus: list[GpuState], cpu_capacity: int = 0, memory_capacity: int = 0):
        self.name = name
        self.gpus = gpus
        self.cpu_capacity = cpu_capacity  # milli-cores; 0 = not tracked
        self.memory_capacity = memory_capacity  # bytes; 0 = not tracked
        self.cpu_used = 0
        self.memory_used = 0
        self.pods: dict[str, PodRecord] = {}

    def gpu(self, uuid: str) -> GpuState | None:
        return next((g for g in self.gpus if g.uuid == uuid), None)

    # --- candidates -------------------------------------------------------------------------------

    def _candidates(self, req: PodRequest, mode: str, healthy_only: bool = True) -> list[GpuState]:
        out = []
        for g in self.gpus:
            if g.mode != mode or (healthy_only and not g.healthy):
                continue
            if req.use_types and not any(type_matches(t, g.model) for t in req.use_types):
                continue
            if req.nouse_types and any(type_matches(t, g.model) for t in req.nouse_types):
                continue
            if req.use_uuids and g.uuid not in req.use_uuids:
                continue
            if req.nouse_uuids and g.uuid in req.nouse_uuids:
                continue
            out.append(g)
        return out

    # --- fit --------------------------------------------------------------------------------------

    def fit(
        self, req: PodRequest, cfg: DeviceConfig, *, check_host: bool = True, workload: Workload | None = None
    ) -> Assignment | Rejection:
        """Where the pod would go on this node; the node is left unchanged. `workload` (the typical
        requests) drives the frag-pack GPU choice."""
        return self._place(req, cfg, check_host, False, workload)

    def allocate(
        self, req: PodRequest, cfg: DeviceConfig, *, check_host: bool = True, workload: Workload | None = None
    ) -> Assignment | Rejection:
        """Fit and record the pod on this node (idempotent by pod UID)."""
        existing = self.pods.get(req.uid)
        if existing is not None:
            return existing.assignment
        return self._place(req, cfg, check_host, True, workload)

    def _order(
        self, gpus: list[GpuState], policy: str, ctr: ContainerRequest, workload: Workload | None, pod_asked: bool
    ) -> list[GpuState]:
        if gpus and gpus[0].mode == names.MODE_MIG and not pod_asked:
            # MIG instances are isolated in hardware, so spreading them buys nothing and leaves every
            # GPU partly carved (no room for a whole-GPU instance): MIG GPUs are packed unless the pod
            # itself asks for spread.
            return order_gpus(gpus, names.POLICY_BINPACK)
        if policy != names.POLICY_FRAG_PACK or workload is None or not workload.pods or ctr.count != 1:
            return order_gpus(gpus, policy)
        if any(g.mode != names.MODE_HAMI_CORE for g in gpus):
            return order_gpus(gpus, names.POLICY_BINPACK)
        free = [gpu_free_share(g) for g in gpus]
        share = max(grant_share(g, needed_memory(g, ctr), ctr.cores) for g in gpus)
        cpu_free = self.cpu_capacity - self.cpu_used if self.cpu_capacity else UNTRACKED_CPU
        order = FragPack(workload).gpu_order(free, cpu_free, share, [i for i, f in enumerate(free) if f >= share])
        rest = [i for i in range(len(gpus)) if i not in order]
        return [gpus[i] for i in (*order, *rest)]

    def _place(
        self, req: PodRequest, cfg: DeviceConfig, check_host: bool, commit: bool, workload: Workload | None = None
    ) -> Assignment | Rejection:
        if check_host:
            rejected = self._host_check(req)
            if rejected is not None:
                return rejected
        if not req.containers:
            assignment = Assignment(self.name, ())
            if commit:
                self._record(req, assignment)
            return assignment
        if not self.gpus:
            return Rejection(f"node {self.name} has no registered GPUs", 3)
        policy = req.gpu_policy or cfg.gpu_policy
        saved = [g.save() for g in self.gpus]
        grants: list[ContainerGrant] = []
        for ctr in req.containers:
            reasons: list[str] = []
            got: list[DeviceGrant] | None = None
            for mode in (req.mode,) if req.mode else _BOTH:
                gpus = self._candidates(req, mode)
                if not gpus:
                    continue
                result = SHARING[mode].allocate(
                    self._order(gpus, policy, ctr, workload, req.gpu_policy is not None), ctr, req.uid, req.key
                )
                if isinstance(result, list):
                    got = result
                    break
                reasons.append(f"{mode}: {result}")
            if got is None:
                for g, s in zip(self.gpus, saved, strict=True):
                    g.restore(s)
                return self._reject(req, ctr.name, reasons)
            grants.append(ContainerGrant(ctr.name, tuple(got), ctr.init))
        assignment = Assignment(self.name, tuple(grants))
        if commit:
            self._record(req, assignment)
        else:
            for g, s in zip(self.gpus, saved, strict=True):
                g.restore(s)
        return assignment

    def _host_check(self, req: PodRequest) -> Rejection | None:
        if self.cpu_capacity and req.cpu_milli:
            if req.cpu_milli > self.cpu_capacity:
                return Rejection(f"cpu {req.cpu_milli}m > node capacity {self.cpu_capacity}m", 3)
            if self.cpu_used + req.cpu_milli > self.cpu_capacity:
                return Rejection(f"cpu {req.cpu_milli}m > free {self.cpu_capacity - self.cpu_used}m")
        if self.memory_capacity and req.memory_bytes:
            if req.memory_bytes > self.memory_capacity:
                return Rejection(f"memory {req.memory_bytes} B > node capacity {self.memory_capacity} B", 3)
            if self.memory_used + req.memory_bytes > self.memory_capacity:
                return Rejection(f"memory {req.memory_bytes} B > free {self.memory_capacity - self.memory_used} B")
        return None

    def _reject(self, req: PodRequest, ctr_name: str, reasons: list[str]) -> Rejection:
        ctr = next(c for c in req.containers if c.name == ctr_name)
        modes = (req.mode,) if req.mode else _BOTH
        never: list[str] = []
        for mode in modes:
            gpus = self._candidates(req, mode, healthy_only=False)
            why = SHARING[mode].never_fits(gpus, ctr)
            if why is not None:
                never.append(f"{mode}: {why}")
        what = f"container {ctr_name!r} ({ctr.count} vGPU"
        what += f", {ctr.memory} MiB" if ctr.memory else (f", {ctr.memory_percent}%" if ctr.memory_percent else "")
        what += f", {ctr.cores}% cores)" if ctr.cores else ")"
        if len(never) == len(modes):
            return Rejection(f"{self.name}: {what} can never fit: {'; '.join(never)}", 3)
        if not reasons:
            unhealthy = sum(1 for g in self.gpus if not g.healthy)
            return Rejection(f"{self.name}: {what}: no healthy GPU of the requested mode/type ({unhealthy} unhealthy)")
        return Rejection(f"{self.name}: {what} does not fit now: {'; '.join(reasons)}")

    # --- bookkeeping ------------------------------------------------------------------------------

    def _record(self, req: PodRequest, assignment: Assignment) -> None:
        self.pods[req.uid] = PodRecord(req.key, assignment, req.cpu_milli, req.memory_bytes)
        self.cpu_used += req.cpu_milli
        self.memory_used += req.memory_bytes

    def add_existing(
        self, uid: str, key: str, assignment: Assignment, cpu_milli: int = 0, memory_bytes: int = 0
    ) -> list[str]:
        """Record a pod that already holds devices (rebuilt from its annotations). Returns problems
        (unknown GPU, MIG overlap); devices with problems are skipped, never double-booked."""
        if uid in self.pods:
            return []
        problems: list[str] = []
        kept: list[ContainerGrant] = []
        for cg in assignment.containers:
            devs = []
            for d in cg.devices:
                gpu = self.gpu(d.uuid)
                if gpu is None:
                    problems.append(f"{key}: GPU {d.uuid} is not registered on {self.name}")
                    continue
                if d.mode == names.MODE_MIG:
                    if d.profile is None or d.placement is None:
                        problems.append(f"{key}: MIG device on {d.uuid} without profile/placement")
                        continue
                    placed = [(i.profile, i.start) for i in gpu.instances] + [(d.profile, d.placement[0])]
                    if gpu.mig_model is None:
                        problems.append(f"{key}: GPU {d.uuid} ({gpu.model}) has no MIG model")
                        continue
                    why = layout_problem(gpu.mig_model, placed)
                    if why is not None:
                        problems.append(f"{key}: MIG {d.profile}@{d.placement[0]} on {d.uuid}: {why}")
                        continue
                SHARING[d.mode].add(gpu, d, uid, key)
                devs.append(d)
            kept.append(ContainerGrant(cg.name, tuple(devs), cg.init))
        self.pods[uid] = PodRecord(key, Assignment(self.name, tuple(kept)), cpu_milli, memory_bytes)
        self.cpu_used += cpu_milli
        self.memory_used += memory_bytes
        return problems

    def release(self, uid: str) -> bool:
        record = self.pods.pop(uid, None)
        if record is None:
            return False
        for d in record.assignment.devices():
            gpu = self.gpu(d.uuid)
            if gpu is not None:
                SHARING[d.mode].remove(gpu, d, uid)
        self.cpu_used -= record.cpu_milli
        self.memory_used -= record.memory_bytes
        return True
