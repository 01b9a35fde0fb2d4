"""The replay: one Volcano scheduling session per step over the demo cluster, and what it records.

Each step: jobs that ran their course leave (their pods are deleted; node agents destroy the MIG
instances after a short grace), new jobs arrive (their pods are created pending), one session of the
allocate action runs over every waiting job (predicate / prioritize / allocate on the sidecar, gang
rollback with deallocate), the committed pods are bound, and kubelet admits them through each node's
device plugin. The run checks, as it goes, what a user should be able to trust: signed assignments,
MIG instances that really exist where they were assigned, no GPU promised twice, gangs whole."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Protocol

from vgpupool_testing.volcano import UNRESOLVABLE, Job, JobResult, bind

from ..core import names
from ..core.mig import layout as mig_layout
from ..protocol.assignment import decode_assignment, verify
from .cluster import Admission, DemoCluster
from .workload import DemoJob, Plan, build_plan, load_workload

Obj = dict[str, Any]


@dataclass
class DemoOptions:
    nodes: int | None = None  # default: the workload's node mix once
    pods: int | None = None  # default: ten per node
    seed: int = 1
    workload: str | None = None  # a workload YAML; default: the built-in one
    device_plugins: bool = True  # False: call the agents' Allocate directly instead of over gRPC


class Progress(Protocol):
    def status(self, message: str) -> None: ...
    def begin(self, plan: Plan) -> None: ...
    def update(self, sample: Sample, plan: Plan) -> None: ...
    def end(self) -> None: ...


class NoProgress:
    def status(self, message: str) -> None:
        pass

    def begin(self, plan: Plan) -> None:
        pass

    def update(self, sample: Sample, plan: Plan) -> None:
        pass

    def end(self) -> None:
        pass


@dataclass
class PodRecord:
    key: str  # namespace/name
    uid: str
    job: str
    kind: str
    mode: str | None  # the mode the pod asked for (None: open)
    arrival: int
    node: str | None = None
    placed_step: int | None = None
    departed_step: int | None = None
    assignment: str = ""  # vgpu-pool.io/assignment as the sidecar wrote it
    signature: str = ""
    modes: tuple[str, ...] = ()  # the technique of each vGPU it got
    admission: Admission | None = None
    verified: bool | None = None  # Allocate's answer matched the assignment (and the simulated NVML)
    verify_note: str = ""
    reason: str = ""  # why it is not placed (the last session's verdict, as Volcano words it)
    detail: str = ""  # the sidecar's own reason, from the first node that rejected it
    never: bool = False  # every node answered "never fits here" (Volcano's UnschedulableAndUnresolvable)
    attempts: int = 0


@dataclass
class Sample:
    step: int
    running: int
    pending: int
    placed: int  # pods placed so far
    departed: int
    gpus_busy: int
    mig_used: int  # MiB promised on MIG GPUs
    hami_used: int  # MiB promised on hami-core GPUs
    mig_instances: int  # instances in the simulated NVMLs
    switches: int  # geometry switches so far
    created: int
    destroyed: int
    elapsed: float
    gpus: int  # totals, the same at every step (they make each sample self-contained)
    mig_total: int
    hami_total: int

    @property
    def memory_percent(self) -> float:
        total = self.mig_total + self.hami_total
        return 100.0 * (self.mig_used + self.hami_used) / total if total else 0.0


@dataclass
class GeometrySwitch:
    step: int
    node: str
    gpu_index: int
    gpu: str
    old: int
    new: int
    kept: int  # instances that stayed where they were during the switch
    pod: str  # the pod(s) whose new instances made the GPU switch
    old_layout: str
    new_layout: str


@dataclass
class Slot:
    profile: str
    start: int
    size: int
    pod: str = ""  # "" for a free slot of the current geometry
    mig_uuid: str = ""


@dataclass
class Share:
    pod: str
    memory: int
    cores: int


@dataclass
class GpuFinal:
    node: str
    index: int
    uuid: str
    model: str
    mode: str
    memory: int
    used_memory: int
    used_cores: int
    shares: int
    split: int
    geometry: int | None = None
    geometry_layout: str = ""
    memory_slices: int = 8
    slots: list[Slot] = field(default_factory=list)  # MIG: instances in use and free slots
    pods: list[Share] = field(default_factory=list)  # hami-core: who holds what


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class CallStats:
    count: int = 0
    errors: int = 0
    seconds: list[float] = field(default_factory=list)

    def quantile(self, q: float) -> float:
        if not self.seconds:
            return 0.0
        s = sorted(self.seconds)
        return s[min(len(s) - 1, int(q * len(s)))]


@dataclass
class DemoResult:
    plan: Plan
    seconds: float
    startup_seconds: float
    samples: list[Sample]
    pods: dict[str, PodRecord]
    jobs: dict[str, DemoJob]
    job_placed: dict[str, int]  # job -> step it was placed
    switches: list[GeometrySwitch]
    gpus: list[GpuFinal]
    checks: list[Check]
    calls: dict[str, CallStats]
    created: int
    destroyed: int
    allocations_ok: int
    allocations_failed: int
    warnings: list[str]
    sims: dict[str, Obj]  # node -> SimNvml.snapshot() at the end
    final_pods: list[Obj]  # every pod object left in the API at the end
    signing_key: bytes

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


class _LogCapture(logging.Handler):
    """Warnings of the services during the run, for the summary (printing them would tear the live
    display)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.lines) < 200:
            self.lines.append(f"{record.name}: {record.getMessage()}")


async def run_demo(opts: DemoOptions, progress: Progress | None = None) -> DemoResult:
    plan = build_plan(load_workload(opts.workload), nodes=opts.nodes, pods=opts.pods, seed=opts.seed)
    return await run_plan(plan, progress or NoProgress(), device_plugins=opts.device_plugins)


async def run_plan(plan: Plan, progress: Progress, *, device_plugins: bool = True) -> DemoResult:
    started = time.perf_counter()
    capture = _LogCapture()
    root = logging.getLogger()
    root.addHandler(capture)
    key = os.urandom(32)  # the Secret the sidecar and the agents share
    try:
        with tempfile.TemporaryDirectory(prefix="vgpu-pool-demo-") as workdir:
            cluster = DemoCluster(plan, workdir, signing_key=key, device_plugins=device_plugins, status=progress.status)
            try:
                await cluster.start()
                replay = Replay(cluster, plan, progress, started)
                startup = time.perf_counter() - started
                await replay.run()
                return replay.result(startup, time.perf_counter() - started, capture.lines)
            finally:
                await cluster.stop()
    finally:
        root.removeHandler(capture)
        progress.end()


class Replay:
    def __init__(self, cluster: DemoCluster, plan: Plan, progress: Progress, started: float):
        self.c = cluster
        self.api = cluster.api
        self.plan = plan
        self.progress = progress
        self.started = started
        self.jobs = {j.name: j for j in plan.jobs}
        self.arrivals: dict[int, list[DemoJob]] = defaultdict(list)
        for j in plan.jobs:
            self.arrivals[j.arrival].append(j)
        self.pods: dict[str, PodRecord] = {}
        self.job_pods: dict[str, list[str]] = defaultdict(list)
        self.waiting: list[DemoJob] = []  # arrived, not placed (in arrival order: Volcano's FIFO)
        self.ends: dict[str, int] = {}  # placed job -> step it leaves
        self.job_placed: dict[str, int] = {}
        self.samples: list[Sample] = []
        self.switches: list[GeometrySwitch] = []
        self.last_geometry: dict[str, int] = {}  # GPU uuid -> the geometry it had when it last had instances
        self.calls: dict[str, CallStats] = defaultdict(CallStats)
        self.violations: list[str] = []  # over-commitment seen in the sidecar's state
        self.gang_violations: list[str] = []

    # --- the loop -------------------------------------------------------------------------------------

    async def run(self) -> None:
        self.progress.begin(self.plan)
        for step in range(self.plan.steps):
            await self.step(step)
        await self.settle()

    async def step(self, t: int) -> None:
        gone: set[str] = set()
        for name, end in list(self.ends.items()):
            if end <= t:
                del self.ends[name]
                for k in self.job_pods[name]:
                    gone |= self._depart(k, t)
        created: set[str] = set()
        for job in self.arrivals.get(t, []):
            for manifest in job.pods:
                obj = self.api.create("pods", manifest)
                meta = obj["metadata"]
                rec = PodRecord(
                    f"{meta['namespace']}/{meta['name']}", meta["uid"], job.name, job.kind.name, job.kind.mode, t
                )
                self.pods[rec.key] = rec
                self.job_pods[job.name].append(rec.key)
                created.add(rec.uid)
            self.waiting.append(job)
        await self.c.sidecar_sees(created, gone)
        if self.waiting:
            await self.session(t)
        self._check_state(t)
        sample = self._sample(t)
        self.samples.append(sample)
        self.progress.update(sample, self.plan)

    def _depart(self, key: str, t: int) -> set[str]:
        rec = self.pods[key]
        ns, _, name = key.partition("/")
        pod = self.api.get("pods", ns, name)
        if pod is None:
            return set()
        self.c.delete_pod(pod)
        rec.departed_step = t
        return {rec.uid}

    async def session(self, t: int) -> None:
        current = {f"{p['metadata']['namespace']}/{p['metadata']['name']}": p for p in self.api.list("pods")}
        jobs = [
            Job(j.name, [current[k] for k in self.job_pods[j.name]], len(self.job_pods[j.name])) for j in self.waiting
        ]
        bound_pods = [p for p in current.values() if (p.get("spec") or {}).get("nodeName")]
        driver = self.c.volcano
        before = self._mig_instances()
        results = await driver.schedule(jobs, self.api.list("nodes"), existing_pods=bound_pods)
        self._account_calls()
        self._observe_geometries(t, before)
        bound = set(await bind(self.api, results))  # the async binder: POST pods/binding
        admit: list[PodRecord] = []
        for res in results:
            job = self.jobs[res.name]
            for tr in res.tasks:
                rec = self.pods[tr.key]
                rec.attempts += 1
                if tr.node is not None and tr.key in bound:
                    rec.node, rec.placed_step, rec.reason, rec.never = tr.node, t, "", False
                    admit.append(rec)
                else:
                    rec.reason = tr.reason or "bind failed"
                    rec.detail = next(
                        (a["status"] for a in tr.predicates.values() if isinstance(a, dict) and a.get("status")), ""
                    )
                    codes = [a.get("code") for a in tr.predicates.values() if isinstance(a, dict)]
                    rec.never = (
                        bool(codes) and len(codes) == len(tr.predicates) and all(c == UNRESOLVABLE for c in codes)
                    )
            if self._placed(res, bound):
                self.waiting.remove(job)
                self.ends[job.name] = t + job.duration
                self.job_placed[job.name] = t
        for rec in admit:
            self._record_assignment(rec)
        await self._admit_all(admit)

    @staticmethod
    def _placed(res: JobResult, bound: set[str]) -> bool:
        return res.ready and all(tr.key in bound for tr in res.tasks)

    def _record_assignment(self, rec: PodRecord) -> None:
        """Keep what the sidecar wrote on the pod: its assignment and signature."""
        ns, _, name = rec.key.partition("/")
        pod = self.api.get("pods", ns, name)
        anns = (pod or {}).get("metadata", {}).get("annotations") or {}
        rec.assignment = anns.get(names.ANNO_ASSIGNMENT, "")
        rec.signature = anns.get(names.ANNO_SIGNATURE, "")
        if rec.assignment:
            rec.modes = tuple(d.mode for d in decode_assignment(rec.assignment).devices())

    def _mig_instances(self) -> dict[str, set[tuple[str, int, str]]]:
        """GPU uuid -> the MIG instances the sidecar holds for pods: (profile, start, pod)."""
        return {
            g.uuid: {(i.profile, i.start, i.pod) for i in g.instances}
            for state in self.c.sc.state.states.values()
            for g in state.gpus
            if g.mode == names.MODE_MIG
        }

    def _observe_geometries(self, t: int, before: dict[str, set[tuple[str, int, str]]]) -> None:
        """A geometry switch: a GPU got new instances in this session and its geometry (the MIG layout
        the sidecar carves it by, `vgpu_pool_gpu_geometry` in /metrics) differs from the one it had the
        last time it had any. `kept` counts the instances that stayed where they were."""
        for name, state in self.c.sc.state.states.items():
            for g in state.gpus:
                if g.mode != names.MODE_MIG or g.geometry is None:
                    continue
                now = {(i.profile, i.start, i.pod) for i in g.instances}
                old = before.get(g.uuid, set())
                added = now - old
                last = self.last_geometry.get(g.uuid)
                if added and last is not None and last != g.geometry:
                    self.switches.append(
                        GeometrySwitch(
                            t,
                            name,
                            g.index,
                            g.uuid,
                            last,
                            g.geometry,
                            len(now & old),
                            ", ".join(sorted({pod for _, _, pod in added})),
                            _describe(g.geometries, last),
                            _describe(g.geometries, g.geometry),
                        )
                    )
                self.last_geometry[g.uuid] = g.geometry

    async def _admit_all(self, recs: list[PodRecord]) -> None:
        """Kubelet admits pods one at a time per node (nodes in parallel), oldest assignment first:
        the order in which the node agent hands out assignments of equal size."""
        by_node: dict[str, list[Obj]] = defaultdict(list)
        for rec in recs:
            ns, _, name = rec.key.partition("/")
            pod = self.api.get("pods", ns, name)
            if pod is not None and rec.node:
                by_node[rec.node].append(pod)

        def order(p: Obj) -> tuple[int, str, str]:
            anns = p["metadata"].get("annotations") or {}
            return (
                int(anns.get(names.ANNO_BIND_TIME, "0") or 0),
                p["metadata"]["creationTimestamp"],
                p["metadata"]["uid"],
            )

        async def node_admissions(pods: list[Obj]) -> None:
            for p in sorted(pods, key=order):
                key = f"{p['metadata']['namespace']}/{p['metadata']['name']}"
                rec = self.pods[key]
                rec.admission = await self.c.admit(p)
                self._verify(rec)

        await asyncio.gather(*(node_admissions(pods) for pods in by_node.values()))

    def _verify(self, rec: PodRecord) -> None:
        """Allocate's answer against the assignment: MIG device UUIDs of instances that exist in the
        node's (simulated) NVML at the assigned placements; HAMi-core limits for this very pod."""
        adm = rec.admission
        if adm is None or not adm.ok:
            rec.verified, rec.verify_note = False, adm.error if adm else "not admitted"
            return
        if not rec.assignment:
            rec.verified, rec.verify_note = False, "no assignment annotation"
            return
        a = decode_assignment(rec.assignment)
        containers = [c for c in a.containers if c.devices]
        if len(containers) != len(adm.envs):
            rec.verified, rec.verify_note = False, f"{len(adm.envs)} Allocate answers for {len(containers)} containers"
            return
        sim = self.c.nodes[a.node].sim.snapshot()
        instances = {
            (g["uuid"], gi["start"], gi["size"]): (gi["profile"], [ci["uuid"] for ci in gi["compute_instances"]])
            for g in sim["gpus"]
            for gi in g["gpu_instances"]
        }
        problems = []
        for c, env in zip(containers, adm.envs, strict=True):
            visible = env.get("NVIDIA_VISIBLE_DEVICES", "").split(",")
            for i, d in enumerate(c.devices):
                got = visible[i] if i < len(visible) else ""
                if d.mode == names.MODE_MIG:
                    assert d.placement is not None
                    found = instances.get((d.uuid, d.placement[0], d.placement[1]))
                    if found is None:
                        problems.append(f"no MIG instance {d.profile}@{d.placement[0]} on {d.uuid}")
                    elif found[0] != d.profile or got not in found[1]:
                        problems.append(f"MIG {d.profile}@{d.placement[0]}: Allocate gave {got}, NVML has {found}")
                else:
                    if got != d.uuid or env.get(f"CUDA_DEVICE_MEMORY_LIMIT_{i}") != f"{d.memory}m":
                        problems.append(f"hami-core share {d.uuid} {d.memory} MiB: Allocate gave {got}")
                    if rec.uid not in env.get("CUDA_DEVICE_MEMORY_SHARED_CACHE", ""):
                        problems.append("Allocate answered with another pod's share")
        rec.verified = not problems
        rec.verify_note = "; ".join(problems)

    def _account_calls(self) -> None:
        driver = self.c.volcano
        for call in driver.calls:
            s = self.calls[call.verb]
            s.count += 1
            s.seconds.append(call.elapsed)
            if call.status != 200:
                s.errors += 1
        driver.calls.clear()  # thousands per session on a large cluster: keep only the numbers

    # --- checks and samples -----------------------------------------------------------------------

    def _check_state(self, t: int) -> None:
        for name, state in self.c.sc.state.states.items():
            for g in state.gpus:
                if g.used_memory > g.total_memory or g.used_cores > g.total_cores:
                    self.violations.append(f"step {t}: {name} GPU {g.index}: {g.used_memory}/{g.total_memory} MiB")
                if g.mode == names.MODE_HAMI_CORE and g.shares > g.split_count:
                    self.violations.append(f"step {t}: {name} GPU {g.index}: {g.shares}/{g.split_count} shares")
                taken: set[int] = set()
                for inst in g.instances:
                    cells = set(range(inst.start, inst.start + inst.size))
                    if cells & taken:
                        self.violations.append(f"step {t}: {name} GPU {g.index}: MIG {inst.profile} overlaps")
                    taken |= cells
        for name, keys in self.job_pods.items():
            if len(keys) < 2:
                continue
            placed = sum(1 for k in keys if self.pods[k].node and self.pods[k].departed_step is None)
            if placed not in (0, len(keys)) and not any(self.pods[k].departed_step is not None for k in keys):
                self.gang_violations.append(f"step {t}: job {name}: {placed}/{len(keys)} pods placed")

    def _sample(self, t: int) -> Sample:
        running = pending = placed = departed = 0
        for rec in self.pods.values():
            if rec.departed_step is not None:
                departed += 1
            if rec.node is not None:
                placed += 1
                if rec.departed_step is None:
                    running += 1
            elif rec.departed_step is None:
                pending += 1
        busy = gpus = mig_used = hami_used = mig_total = hami_total = 0
        for state in self.c.sc.state.states.values():
            for g in state.gpus:
                gpus += 1
                busy += 1 if g.shares else 0
                if g.mode == names.MODE_MIG:
                    mig_used += g.used_memory
                    mig_total += g.total_memory
                else:
                    hami_used += g.used_memory
                    hami_total += g.total_memory
        instances = sum(len(g["gpu_instances"]) for rt in self.c.nodes.values() for g in rt.sim.snapshot()["gpus"])
        created, destroyed = self._instance_counts()
        return Sample(
            t,
            running,
            pending,
            placed,
            departed,
            busy,
            mig_used,
            hami_used,
            instances,
            len(self.switches),
            created,
            destroyed,
            time.perf_counter() - self.started,
            gpus,
            mig_total,
            hami_total,
        )

    def _instance_counts(self) -> tuple[int, int]:
        created = destroyed = 0.0
        for rt in self.c.nodes.values():
            reg = rt.agent.metrics.registry
            created += reg.get_sample_value("vgpu_pool_agent_mig_instances_created_total") or 0
            destroyed += reg.get_sample_value("vgpu_pool_agent_mig_instances_destroyed_total") or 0
        return int(created), int(destroyed)

    def _wanted_instances(self) -> dict[str, set[tuple[int, int]]]:
        """GPU uuid -> MIG placements held by pods still running."""
        out: dict[str, set[tuple[int, int]]] = defaultdict(set)
        for rec in self.pods.values():
            if rec.node and rec.departed_step is None and rec.assignment:
                for d in decode_assignment(rec.assignment).devices():
                    if d.mode == names.MODE_MIG and d.placement:
                        out[d.uuid].add(d.placement)
        return out

    def _actual_instances(self) -> dict[str, set[tuple[int, int]]]:
        out: dict[str, set[tuple[int, int]]] = defaultdict(set)
        for rt in self.c.nodes.values():
            for g in rt.sim.snapshot()["gpus"]:
                for gi in g["gpu_instances"]:
                    out[g["uuid"]].add((gi["start"], gi["size"]))
        return out

    async def settle(self, timeout: float = 10.0) -> None:
        """After the last step, let the agents destroy the instances of departed pods (grace period)."""
        want = self._wanted_instances()
        with contextlib.suppress(TimeoutError):  # what is left is reported by the "NVML matches" check
            await self.c.wait_for(lambda: self._actual_instances() == want, timeout, "the agents' MIG cleanup")

    # --- the result -------------------------------------------------------------------------------------

    def result(self, startup: float, seconds: float, warnings: list[str]) -> DemoResult:
        created, destroyed = self._instance_counts()
        ok = failed = 0
        for rt in self.c.nodes.values():
            reg = rt.agent.metrics.registry
            ok += int(reg.get_sample_value("vgpu_pool_agent_allocations_total", {"result": "ok"}) or 0)
            failed += int(reg.get_sample_value("vgpu_pool_agent_allocations_total", {"result": "failed"}) or 0)
        return DemoResult(
            plan=self.plan,
            seconds=seconds,
            startup_seconds=startup,
            samples=self.samples,
            pods=self.pods,
            jobs=self.jobs,
            job_placed=self.job_placed,
            switches=self.switches,
            gpus=self._final_gpus(),
            checks=self._checks(),
            calls=dict(self.calls),
            created=created,
            destroyed=destroyed,
            allocations_ok=ok,
            allocations_failed=failed,
            warnings=warnings,
            sims={name: rt.sim.snapshot() for name, rt in self.c.nodes.items()},
            final_pods=self.api.list("pods"),
            signing_key=self.c.key,
        )

    def _final_gpus(self) -> list[GpuFinal]:
        mig_uuids: dict[tuple[str, int], str] = {}
        for rt in self.c.nodes.values():
            for g in rt.sim.snapshot()["gpus"]:
                for gi in g["gpu_instances"]:
                    cis = gi["compute_instances"]
                    mig_uuids[(g["uuid"], gi["start"])] = cis[0]["uuid"] if cis else ""
        out = []
        for n in self.plan.nodes:
            state = self.c.sc.state.states.get(n.name)
            if state is None:
                continue
            holders: dict[str, list[Share]] = defaultdict(list)
            for record in state.pods.values():
                for d in record.assignment.devices():
                    if d.mode == names.MODE_HAMI_CORE:
                        holders[d.uuid].append(Share(record.key, d.memory, d.cores))
            for g in state.gpus:
                f = GpuFinal(
                    n.name,
                    g.index,
                    g.uuid,
                    g.model,
                    g.mode,
                    g.total_memory,
                    g.used_memory,
                    g.used_cores,
                    g.shares,
                    g.split_count,
                )
                if g.mode == names.MODE_MIG and g.mig_model is not None:
                    f.memory_slices = g.mig_model.memory_slices
                    f.geometry = g.geometry
                    f.geometry_layout = _describe(g.geometries, g.geometry)
                    for profile, start, size, inst in mig_layout(g):
                        pod = inst.pod if inst else ""
                        f.slots.append(
                            Slot(profile, start, size, pod, mig_uuids.get((g.uuid, start), "") if pod else "")
                        )
                else:
                    f.pods = sorted(holders.get(g.uuid, []), key=lambda s: s.pod)
                out.append(f)
        return out

    def _checks(self) -> list[Check]:
        placed = [r for r in self.pods.values() if r.node]
        unsigned = [
            r.key
            for r in placed
            if not (r.assignment and verify(self.c.key, r.uid, r.node or "", r.assignment, r.signature))
        ]
        mig = [r for r in placed if names.MODE_MIG in r.modes]
        bad = [f"{r.key}: {r.verify_note}" for r in placed if not r.verified]
        want, actual = self._wanted_instances(), self._actual_instances()
        mismatch = sorted(
            f"{u}: NVML {sorted(actual.get(u, set()))} != held {sorted(want.get(u, set()))}"
            for u in set(want) | set(actual)
            if want.get(u, set()) != actual.get(u, set())
        )
        gangs = [j for j in self.jobs.values() if len(j.pods) > 1]
        return [
            Check(
                "assignments signed",
                not unsigned,
                f"{len(placed) - len(unsigned)}/{len(placed)} placed pods carry a valid HMAC signature"
                + (f"; bad: {', '.join(unsigned[:5])}" if unsigned else ""),
            ),
            Check(
                "Allocate matches the assignment",
                not bad,
                f"{len(placed) - len(bad)}/{len(placed)} admissions ({len(mig)} with MIG instances found in NVML at "
                "their assigned placements)" + (f"; {'; '.join(bad[:3])}" if bad else ""),
            ),
            Check(
                "no GPU over-committed",
                not self.violations,
                "memory, cores, shares and MIG slices within each GPU at every step"
                if not self.violations
                else "; ".join(self.violations[:3]),
            ),
            Check(
                "gangs all-or-nothing",
                not self.gang_violations,
                f"{len(gangs)} multi-pod job(s) never partly placed"
                if not self.gang_violations
                else "; ".join(self.gang_violations[:3]),
            ),
            Check(
                "NVML matches the pods",
                not mismatch,
                "every MIG instance in NVML belongs to a running pod, and every running pod's instance exists"
                if not mismatch
                else "; ".join(mismatch[:3]),
            ),
        ]


def _describe(geometries: tuple[Any, ...], index: int | None) -> str:
    if index is None or index >= len(geometries):
        return ""
    return str(geometries[index].describe())


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else 0.0
