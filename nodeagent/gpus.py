"""The node's GPUs as the agent describes them: mode, health, MIG model and the geometries a GPU can
honour, and how they are published (Volcano's registration, our MIG layout)."""

from __future__ import annotations

import msgspec

from vcplugin.core import names
from vcplugin.core.config import Geometry
from vcplugin.protocol.registration import LayoutGpu, LayoutInstance, MigLayout, RegisteredGpu

from .journal import Journal
from .migmanager import MigGpu, MigManager
from .nvml import NvmlGpu


class AgentGpu(msgspec.Struct):
    info: NvmlGpu
    mode: str
    healthy: bool = True
    problem: str = ""
    mig: MigGpu | None = None
    unusable: list[int] = []
    memory: int = 0  # registered memory (MiB; scaled in hami-core mode)
    split: int = 1


def unusable_geometries(gpu: MigGpu, geometries: tuple[Geometry, ...]) -> list[tuple[int, str]]:
    """Configured geometries this GPU cannot honour: a profile the driver does not offer, or one
    holding less memory than the config promises. (index, why) each."""
    out = []
    for geom in geometries:
        for slot in geom.slots:
            offered = gpu.nvml_profile(slot.profile.name)
            if offered is None:
                out.append((geom.index, f"{geom.describe()}: the driver offers no {slot.profile.name}"))
                break
            if offered.memory_mib < slot.memory:
                out.append(
                    (
                        geom.index,
                        f"{geom.describe()}: {slot.profile.name} holds {offered.memory_mib} MiB "
                        f"here, the config promises {slot.memory}",
                    )
                )
                break
    return out


def registration(gpus: list[AgentGpu]) -> list[RegisteredGpu]:
    return [RegisteredGpu(g.info.uuid, g.split, g.memory, g.info.name, g.healthy, g.mode, g.info.index) for g in gpus]


def mig_layout(gpus: list[AgentGpu], mig: MigManager, journal: Journal, now: int) -> MigLayout:
    """Each MIG GPU's instances as NVML has them, whose they are, and what the GPU cannot do."""
    out = []
    for g in gpus:
        if g.mode != names.MODE_MIG:
            continue
        instances = []
        for inst in mig.actual.get(g.info.uuid, []):
            owned = mig.owned(g.info.uuid, inst)
            entry = journal.get(g.info.uuid, inst.start, inst.size) if owned else None
            instances.append(
                LayoutInstance(
                    profile_label(g, inst.profile_id),
                    inst.start,
                    inst.size,
                    inst.mig_uuid,
                    entry.pod if entry else "",
                    entry.pod_uid if entry else "",
                    owned,
                )
            )
        out.append(
            LayoutGpu(
                g.info.uuid,
                g.info.index,
                g.info.name,
                g.info.memory_mib,
                g.info.mig_current,
                g.info.mig_pending,
                [p.name for p in g.mig.profiles] if g.mig else [],
                g.unusable,
                instances,
            )
        )
    return MigLayout(1, now, out)


def profile_label(g: AgentGpu, profile_id: int) -> str:
    """Our table's name for an NVML profile id (names drift across drivers; the index does not)."""
    if g.mig is None:
        return str(profile_id)
    offered = next((p for p in g.mig.profiles if p.id == profile_id), None)
    if offered is None:
        return str(profile_id)
    ours = next((p for p in g.mig.model.profiles if p.index == offered.index), None)
    return ours.name if ours else offered.name
