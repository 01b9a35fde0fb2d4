"""Turn MIG assignments into GPU instances: create exactly the instances pods were assigned, at their
exact placements, and destroy only instances this agent created that nobody holds any more.

Each pass re-reads NVML, so it is idempotent: a pass after a crash at any point (between GI and CI
creation, before the journal or the pod annotation caught up) converges to the same instances."""

from __future__ import annotations

import logging
from collections.abc import Callable

import msgspec

from vcplugin.core.migtables import MigModel

from .journal import Journal, Owned
from .nvml import Nvml, NvmlInstance, NvmlProfile

log = logging.getLogger(__name__)

Key = tuple[str, int, int]  # (GPU UUID, start, size)


class Want(msgspec.Struct, frozen=True):
    """One MIG instance a pod was assigned."""

    gpu: str
    profile: str
    start: int
    size: int
    pod_uid: str
    pod: str

    @property
    def key(self) -> Key:
        return (self.gpu, self.start, self.size)


class MigGpu(msgspec.Struct):
    index: int
    uuid: str
    model: MigModel
    profiles: list[NvmlProfile]  # what the driver offers, by NVML profile index

    def nvml_profile(self, name: str) -> NvmlProfile | None:
        """The driver's profile for a label: matched by profile index, since names drift."""
        ours = self.model.profile(name)
        if ours is None:
            return None
        return next((p for p in self.profiles if p.index == ours.index), None)


class PassResult(msgspec.Struct):
    created: list[Key] = []
    destroyed: list[Key] = []
    waiting: dict[str, str] = {}  # pod uid -> why its instance is not there yet
    ready: dict[Key, str] = {}  # wanted instance -> MIG device UUID


def _overlaps(a_start: int, a_size: int, b_start: int, b_size: int) -> bool:
    return a_start < b_start + b_size and b_start < a_start + a_size


class MigManager:
    def __init__(
        self,
        nvml: Nvml,
        journal: Journal,
        clock: Callable[[], float],
        *,
        grace: float = 30.0,
        adopt_foreign: bool = False,
        crash_hook: Callable[[str], None] | None = None,
    ):
        self.nvml = nvml
        self.journal = journal
        self.clock = clock
        self.grace = grace
        self.adopt_foreign = adopt_foreign
        self.crash_hook = crash_hook or (lambda step: None)
        self.gpus: dict[str, MigGpu] = {}
        self.actual: dict[str, list[NvmlInstance]] = {}
        self.unused_since: dict[Key, float] = {}
        self.failed: dict[str, str] = {}

    def set_gpus(self, gpus: list[MigGpu]) -> None:
        self.gpus = {g.uuid: g for g in gpus}

    def owned(self, gpu: str, inst: NvmlInstance) -> bool:
        return self.journal.owns(gpu, inst.start, inst.size, inst.profile_id)

    async def refresh(self) -> None:
        """Re-read every MIG GPU; a GPU whose NVML calls fail is left out of this pass (its wants wait)
        so one broken GPU never stops the work on the others."""
        self.failed: dict[str, str] = {}
        for uuid, g in self.gpus.items():
            try:
                self.actual[uuid] = await self.nvml.run(self.nvml.instances, g.index)
            except Exception as exc:
                self.actual.pop(uuid, None)
                self.failed[uuid] = str(exc)
                log.warning("reading MIG instances of GPU %d failed: %s", g.index, exc)

    async def reconcile(self, wants: list[Want]) -> PassResult:
        result = PassResult()
        await self.refresh()
        wanted: dict[Key, Want] = {w.key: w for w in wants if w.gpu in self.gpus and w.gpu not in self.failed}
        for w in wants:
            if w.gpu not in self.gpus:
                result.waiting[w.pod_uid] = f"GPU {w.gpu} is not a MIG GPU of this node"
            elif w.gpu in self.failed:
                result.waiting[w.pod_uid] = f"GPU {w.gpu} does not answer NVML: {self.failed[w.gpu]}"
        now = self.clock()
        missing = [w for w in wanted.values() if not self._present(w)]
        repaired = False

        # 1. Our instances nobody wants: destroy after the grace period, or at once when a wanted
        #    instance needs their slices; never while processes run on them.
        for uuid, instances in self.actual.items():
            g = self.gpus[uuid]
            for inst in instances:
                key = (uuid, inst.start, inst.size)
                want = wanted.get(key)
                if want is not None and self._matches(g, want, inst) and self.owned(uuid, inst):
                    self.unused_since.pop(key, None)
                    if not inst.ci_ids and await self._create_ci(g, inst, want):  # crashed between GI and CI
                        repaired = True
                    continue
                if not self.owned(uuid, inst):
                    continue  # not ours: never touched
                since = self.unused_since.setdefault(key, now)
                blocking = any(m.gpu == uuid and _overlaps(m.start, m.size, inst.start, inst.size) for m in missing)
                if not blocking and now - since < self.grace:
                    continue
                if inst.processes:
                    log.info(
                        "instance %s@%d on %s still has %d process(es); not destroying yet",
                        inst.profile_id,
                        inst.start,
                        uuid,
                        inst.processes,
                    )
                    continue
                try:
                    await self.nvml.run(self.nvml.destroy, g.index, inst.gi_id)
                except Exception as exc:  # IN_USE is normal (a process just started): retry next pass
                    log.info("destroy GI %d on %s deferred: %s", inst.gi_id, uuid, exc)
                    continue
                self.journal.drop(uuid, inst.start, inst.size)
                self.unused_since.pop(key, None)
                result.destroyed.append(key)
                log.info("destroyed unused MIG instance", extra={"fields": {"gpu": uuid, "start": inst.start}})
        if result.destroyed or repaired:
            await self.refresh()
            missing = [w for w in wanted.values() if not self._present(w)]

        # 2. Journal entries whose instance no longer exists.
        present = {(u, i.start, i.size) for u, lst in self.actual.items() for i in lst}
        for key in [k for k in self.journal.entries if k not in present and k[0] in self.gpus]:
            self.journal.drop(*key)

        # 3. Create what is missing.
        for w in missing:
            why = await self._create(w, result)
            if why:
                result.waiting[w.pod_uid] = why
        await self.refresh()
        for key, w in wanted.items():
            inst = self._instance(key)
            if (
                inst is not None
                and inst.mig_uuid
                and self._matches(self.gpus[w.gpu], w, inst)
                and self.owned(w.gpu, inst)
            ):
                result.ready[key] = inst.mig_uuid
        return result

    def _instance(self, key: Key) -> NvmlInstance | None:
        return next((i for i in self.actual.get(key[0], []) if (i.start, i.size) == key[1:]), None)

    def _matches(self, g: MigGpu, w: Want, inst: NvmlInstance) -> bool:
        prof = g.nvml_profile(w.profile)
        return prof is not None and prof.id == inst.profile_id

    def _present(self, w: Want) -> bool:
        """The wanted instance exists, is ours, and has its compute instance."""
        inst = self._instance(w.key)
        return (
            inst is not None
            and self._matches(self.gpus[w.gpu], w, inst)
            and bool(inst.ci_ids)
            and self.owned(w.gpu, inst)
        )

    async def _create(self, w: Want, result: PassResult) -> str | None:
        g = self.gpus[w.gpu]
        prof = g.nvml_profile(w.profile)
        if prof is None:
            return f"the driver offers no {w.profile} on GPU {g.index}"
        if (w.start, w.size) not in prof.placements:
            return f"{w.profile} cannot be placed at {w.start}:{w.size} on GPU {g.index}"
        existing = self._instance(w.key)
        if existing is not None and existing.profile_id == prof.id:
            if not self.owned(w.gpu, existing):
                if not self.adopt_foreign:
                    return f"an instance vgpu-pool did not create sits at {w.start}:{w.size} on GPU {g.index}"
                self.journal.put(Owned(w.gpu, prof.id, w.start, w.size, w.pod_uid, w.pod, existing.gi_id))
            if not existing.ci_ids:
                await self._create_ci(g, existing, w)
            return None
        for inst in self.actual.get(w.gpu, []):
            if _overlaps(inst.start, inst.size, w.start, w.size):
                who = (
                    "in use by processes"
                    if inst.processes
                    else ("not created by vgpu-pool" if not self.owned(w.gpu, inst) else "still being released")
                )
                return f"memory slices {w.start}:{w.size} on GPU {g.index} overlap an instance {who}"
        self.journal.put(Owned(w.gpu, prof.id, w.start, w.size, w.pod_uid, w.pod))
        self.crash_hook("after-intent")
        try:
            gi_id = await self.nvml.run(self.nvml.create_gpu_instance, g.index, prof.id, w.start, w.size)
        except Exception as exc:
            self.journal.drop(w.gpu, w.start, w.size)
            log.warning("creating %s@%d on GPU %d failed: %s", w.profile, w.start, g.index, exc)
            return f"creating {w.profile} at {w.start} on GPU {g.index} failed: {exc}"
        self.crash_hook("after-gi")
        self.journal.put(Owned(w.gpu, prof.id, w.start, w.size, w.pod_uid, w.pod, gi_id))
        ci_ok = await self._create_ci(g, NvmlInstance(gi_id, prof.id, w.start, w.size, (), "", 0), w)
        if not ci_ok:
            return f"compute instance for {w.profile} at {w.start} on GPU {g.index} failed"
        result.created.append(w.key)
        log.info(
            "created MIG instance",
            extra={"fields": {"gpu": w.gpu, "profile": w.profile, "start": w.start, "pod": w.pod}},
        )
        return None

    async def _create_ci(self, g: MigGpu, inst: NvmlInstance, w: Want) -> bool:
        prof = g.nvml_profile(w.profile)
        slices = prof.slices if prof else 1
        try:
            await self.nvml.run(self.nvml.create_compute_instance, g.index, inst.gi_id, slices)
        except Exception as exc:
            log.warning("compute instance in GI %d on GPU %d failed: %s", inst.gi_id, g.index, exc)
            return False
        self.crash_hook("after-ci")
        uuid = await self.nvml.run(self.nvml.mig_uuid, g.index, inst.gi_id)
        self.journal.put(Owned(w.gpu, inst.profile_id, w.start, w.size, w.pod_uid, w.pod, inst.gi_id, uuid))
        self.crash_hook("after-journal")
        return True
