"""How an assignment travels on the pod: Volcano's annotations, our exact JSON, and its signature.

Volcano's device string: per device `UUID,NVIDIA,<memMiB>,<cores>:`, containers joined with `;`, only
containers that ask for vGPUs; a MIG device is `UUID[<group>-<position>]`. Our JSON
(`vgpu-pool.io/assignment`) carries the exact profile and placement of each MIG instance. The
signature is HMAC-SHA256 over pod UID, node and that JSON, so a user cannot forge an assignment by
annotating their own pod."""

from __future__ import annotations

import hashlib
import hmac

import msgspec

from ..core import names
from ..core.config import Geometry
from ..core.types import Assignment, ContainerGrant, DeviceGrant

SIGNATURE_VERSION = "v1"


class AssignmentError(ValueError):
    pass


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Assignment)


def encode_assignment(a: Assignment) -> str:
    return _encoder.encode(a).decode()


def decode_assignment(value: str) -> Assignment:
    try:
        return _decoder.decode(value)
    except msgspec.DecodeError as exc:
        raise AssignmentError(f"{names.ANNO_ASSIGNMENT}: {exc}") from None


def mig_device_id(d: DeviceGrant, geometries: tuple[Geometry, ...], taken: list[DeviceGrant]) -> str:
    """`UUID[group-position]`: the position of the instance among its geometry's slots, where slots
    of one profile are numbered in placement order."""
    if d.geometry is None or d.geometry >= len(geometries) or d.placement is None:
        return f"{d.uuid}[geometry-0]"
    geom = geometries[d.geometry]
    group = geom.group or f"geometry{geom.index}"
    first = next((i for i, s in enumerate(geom.slots) if s.profile.name == d.profile), 0)
    ordinal = sum(
        1
        for t in taken
        if t.uuid == d.uuid and t.profile == d.profile and t.placement and t.placement[0] < d.placement[0]
    )
    return f"{d.uuid}[{group}-{first + ordinal}]"


def volcano_devices(a: Assignment, geometries_of: dict[str, tuple[Geometry, ...]]) -> str:
    """The `vgpu-ids-new` / `devices-to-allocate` value for an assignment."""
    all_devs = a.devices()
    parts = []
    for c in a.containers:
        if not c.devices:
            continue
        entry = ""
        for d in c.devices:
            ident = d.uuid
            if d.mode == names.MODE_MIG:
                ident = mig_device_id(d, geometries_of.get(d.uuid, ()), all_devs)
            entry += f"{ident},{names.DEVICE_VENDOR},{d.memory},{d.cores}:"
        parts.append(entry)
    return ";".join(parts) + (";" if parts else "")


def parse_volcano_devices(value: str, node: str) -> Assignment:
    """Usage recorded by Volcano's own format (pods placed by Volcano's deviceshare or HAMi):
    hami-core shares only; MIG entries without our JSON carry no placement and are skipped."""
    containers = []
    for ci, chunk in enumerate(value.split(";")):
        devs = []
        for entry in chunk.split(":"):
            fields = entry.split(",")
            if len(fields) < 4 or not fields[0]:
                continue
            ident = fields[0]
            try:
                mem, cores = int(fields[2]), int(fields[3])
            except ValueError:
                raise AssignmentError(f"device entry {entry!r}: memory/cores not integers") from None
            if "[" in ident:
                continue
            devs.append(DeviceGrant(ident, -1, names.MODE_HAMI_CORE, mem, cores))
        if devs:
            containers.append(ContainerGrant(f"container-{ci}", tuple(devs)))
    return Assignment(node, tuple(containers))


def sign(key: bytes, pod_uid: str, node: str, assignment_json: str) -> str:
    mac = hmac.new(key, f"{pod_uid}\n{node}\n{assignment_json}".encode(), hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}:{mac}"


def verify(key: bytes, pod_uid: str, node: str, assignment_json: str, signature: str) -> bool:
    return hmac.compare_digest(sign(key, pod_uid, node, assignment_json), signature or "")


def assignment_annotations(
    pod_uid: str,
    a: Assignment,
    geometries_of: dict[str, tuple[Geometry, ...]],
    now: int,
    key: bytes | None,
) -> dict[str, str]:
    """Every annotation written on allocate (the PATCH body's metadata.annotations)."""
    devices = volcano_devices(a, geometries_of)
    exact = encode_assignment(a)
    out = {
        names.ANNO_VGPU_NODE: a.node,
        names.ANNO_VGPU_TIME: str(now),
        names.ANNO_VGPU_IDS: devices,
        names.ANNO_DEVICES_TO_ALLOCATE: devices,
        names.ANNO_BIND_PHASE: names.BIND_PHASE_ALLOCATING,
        names.ANNO_BIND_TIME: str(now),
        names.ANNO_ASSIGNMENT: exact,
    }
    if key is not None:
        out[names.ANNO_SIGNATURE] = sign(key, pod_uid, a.node, exact)
    return out


def assignment_patch(annotations: dict[str, str], node: str) -> dict[str, object]:
    """The merge patch written on allocate: the annotations, and the node label agents watch."""
    return {"metadata": {"annotations": annotations, "labels": {names.LABEL_ASSIGNED_NODE: node}}}


def release_patch() -> dict[str, object]:
    """The merge patch written on deallocate: every assignment key and the label removed."""
    return {
        "metadata": {
            "annotations": dict.fromkeys(ASSIGNMENT_KEYS),
            "labels": {names.LABEL_ASSIGNED_NODE: None},
        }
    }


# Keys removed on deallocate (set to null in a merge patch).
ASSIGNMENT_KEYS = (
    names.ANNO_VGPU_NODE,
    names.ANNO_VGPU_TIME,
    names.ANNO_VGPU_IDS,
    names.ANNO_DEVICES_TO_ALLOCATE,
    names.ANNO_BIND_PHASE,
    names.ANNO_BIND_TIME,
    names.ANNO_ASSIGNMENT,
    names.ANNO_SIGNATURE,
    names.ANNO_MIG_DEVICES,
)
