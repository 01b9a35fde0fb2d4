"""The node's side of the assignment protocol: which pods hold which devices here, whether each
assignment is genuine (signed by the scheduler) and consistent (no device promised twice), and
which of a pod's containers kubelet has not admitted yet. Pure: no I/O."""

from __future__ import annotations

import msgspec

from vcplugin.core import names
from vcplugin.core.types import Assignment, ContainerGrant
from vcplugin.kube.objects import Pod
from vcplugin.protocol.assignment import AssignmentError, decode_assignment, verify

from .migmanager import Want


class Held(msgspec.Struct):
    pod: Pod
    assignment: Assignment
    bind_time: int


class Refused(msgspec.Struct):
    pod: Pod
    reason: str


def _bind_time(pod: Pod) -> int:
    try:
        return int(pod.metadata.annotations.get(names.ANNO_BIND_TIME, "0"))
    except ValueError:
        return 0


def read_assignment(pod: Pod, node: str, key: bytes | None) -> Assignment | str | None:
    """The pod's assignment for this node; a reason string when it must not be honoured; None when
    the pod has no assignment here."""
    anns = pod.metadata.annotations
    if anns.get(names.ANNO_VGPU_NODE) != node or names.ANNO_ASSIGNMENT not in anns:
        return None
    raw = anns[names.ANNO_ASSIGNMENT]
    try:
        a = decode_assignment(raw)
    except AssignmentError as exc:
        return f"unreadable assignment: {exc}"
    if a.node != node:
        return f"assignment names node {a.node!r}, not {node!r}"
    if key is not None and not verify(key, pod.metadata.uid, node, raw, anns.get(names.ANNO_SIGNATURE, "")):
        return "assignment signature is missing or invalid: it was not written by the scheduler"
    return a


def holders(
    pods: list[Pod], node: str, key: bytes | None, gpus: dict[str, tuple[int, int, int]]
) -> tuple[list[Held], list[Refused]]:
    """Live pods holding devices here, oldest bind first, and pods refused. `gpus` maps GPU UUID to
    (memory MiB, split count, core total) for hami-core accounting. A later pod whose devices were
    already promised to an earlier one is refused: nothing is handed out twice."""
    held: list[Held] = []
    refused: list[Refused] = []
    candidates = []
    for pod in pods:
        if pod.terminated:
            continue
        a = read_assignment(pod, node, key)
        if a is None:
            continue
        if isinstance(a, str):
            refused.append(Refused(pod, a))
            continue
        candidates.append(Held(pod, a, _bind_time(pod)))
    candidates.sort(key=lambda h: (h.bind_time, h.pod.metadata.creation_timestamp or "", h.pod.metadata.uid))
    mig_taken: dict[tuple[str, int], str] = {}  # (GPU, memory slice) -> pod
    mem: dict[str, int] = {}
    shares: dict[str, int] = {}
    cores: dict[str, int] = {}
    for h in candidates:
        why = None
        claims: list[tuple[str, int]] = []  # memory slices this pod's MIG instances cover
        add_mem: dict[str, int] = {}
        add_shares: dict[str, int] = {}
        add_cores: dict[str, int] = {}
        for d in h.assignment.devices():
            if d.mode == names.MODE_MIG:
                if d.placement is None:
                    why = "MIG device without placement"
                    break
                start, size = d.placement
                slices = [(d.uuid, k) for k in range(start, start + size)]
                clash = next((sl for sl in slices if sl in mig_taken or sl in claims), None)
                if clash is not None:
                    owner = mig_taken.get(clash, "this pod")
                    why = f"MIG instance {d.profile}@{start} on {d.uuid} overlaps memory slice {clash[1]} of {owner}"
                    break
                claims.extend(slices)
            else:
                add_mem[d.uuid] = add_mem.get(d.uuid, 0) + d.memory
                add_shares[d.uuid] = add_shares.get(d.uuid, 0) + 1
                add_cores[d.uuid] = add_cores.get(d.uuid, 0) + d.cores
        if why is None:
            for uuid in add_mem:
                cap = gpus.get(uuid)
                if cap is None:
                    why = f"GPU {uuid} is not on this node"
                    break
                if mem.get(uuid, 0) + add_mem[uuid] > cap[0]:
                    why = f"GPU {uuid}: memory promised to other pods leaves too little"
                    break
                if shares.get(uuid, 0) + add_shares[uuid] > cap[1]:
                    why = f"GPU {uuid}: all shares already promised"
                    break
                if cores.get(uuid, 0) + add_cores[uuid] > cap[2]:
                    why = f"GPU {uuid}: cores already promised"
                    break
        if why is not None:
            refused.append(Refused(h.pod, why))
            continue
        for slot in claims:
            mig_taken[slot] = h.pod.key
        for uuid, v in add_mem.items():
            mem[uuid] = mem.get(uuid, 0) + v
            shares[uuid] = shares.get(uuid, 0) + add_shares[uuid]
            cores[uuid] = cores.get(uuid, 0) + add_cores[uuid]
        held.append(h)
    return held, refused


def wants_of(held: list[Held]) -> list[Want]:
    out = []
    for h in held:
        for d in h.assignment.devices():
            if d.mode == names.MODE_MIG and d.profile and d.placement:
                out.append(Want(d.uuid, d.profile, d.placement[0], d.placement[1], h.pod.metadata.uid, h.pod.key))
    return out


def device_containers(a: Assignment) -> list[ContainerGrant]:
    """Containers that got devices, in the order kubelet admits them (init containers first)."""
    return [c for c in a.containers if c.devices]


def remaining_segments(pod: Pod) -> int:
    value = pod.metadata.annotations.get(names.ANNO_DEVICES_TO_ALLOCATE, "")
    return sum(1 for seg in value.split(";") if seg.strip())


def next_container(h: Held, consumed_here: int) -> ContainerGrant | None:
    """The next container of the pod kubelet has not admitted: counted from the consumed segments
    of devices-to-allocate, plus admissions this agent made that the annotation does not show yet."""
    containers = device_containers(h.assignment)
    done = len(containers) - remaining_segments(h.pod)
    done = max(done, consumed_here)
    return containers[done] if done < len(containers) else None


def remaining_value(h: Held, consumed: int) -> str:
    """devices-to-allocate after `consumed` containers were admitted."""
    segs = [s for s in h.pod.metadata.annotations.get(names.ANNO_DEVICES_TO_ALLOCATE, "").split(";") if s.strip()]
    total = len(device_containers(h.assignment))
    already = total - len(segs)
    left = segs[max(0, consumed - already) :]
    return ";".join(left) + (";" if left else "")
