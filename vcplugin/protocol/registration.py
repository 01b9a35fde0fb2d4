"""How a node publishes its GPUs: Volcano's vGPU registration string, and our MIG layout JSON.

Volcano's format (`volcano.sh/node-vgpu-register`), one device per `:`-terminated entry:
`<UUID>,<splitCount>,<memMiB>,NVIDIA-<model>,<health>,<mode>:` in index order. The unmodified
volcano-vgpu-device-plugin writes it for hami-core GPUs, and so does our node agent.

Our MIG layout (`vgpu-pool.io/mig-layout`), JSON written by the node agent:
{"version": 1, "heartbeat": <unix seconds>, "gpus": [{"uuid", "index", "model", "memory", "migEnabled",
 "migPending", "profiles": [<names NVML reports>], "unusableGeometries": [<indexes>],
 "instances": [{"profile", "start", "size", "uuid", "pod", "podUID", "owned"}]}]}
Instances with `owned: false` were not created by vgpu-pool; the scheduler keeps clear of them."""

from __future__ import annotations

import msgspec

from ..core import names


class RegisteredGpu(msgspec.Struct, frozen=True):
    uuid: str
    split_count: int
    memory: int  # MiB
    model: str  # NVML product name, e.g. "NVIDIA A100-PCIE-40GB"
    healthy: bool
    mode: str
    index: int


class RegistrationError(ValueError):
    pass


def _type_field(model: str) -> str:
    return model if model.startswith(f"{names.DEVICE_VENDOR}-") else f"{names.DEVICE_VENDOR}-{model}"


def encode_registration(gpus: list[RegisteredGpu]) -> str:
    out = []
    for g in sorted(gpus, key=lambda g: g.index):
        if any(c in g.uuid + g.model for c in ",:"):
            raise RegistrationError(f"GPU {g.uuid!r} / {g.model!r}: ',' and ':' cannot be encoded")
        health = "true" if g.healthy else "false"
        out.append(f"{g.uuid},{g.split_count},{g.memory},{_type_field(g.model)},{health},{g.mode}:")
    return "".join(out)


def decode_registration(value: str) -> list[RegisteredGpu]:
    """Parse the registration; a malformed entry raises RegistrationError naming it."""
    gpus: list[RegisteredGpu] = []
    for pos, entry in enumerate(e for e in value.strip().split(":") if e.strip()):
        fields = entry.split(",")
        if len(fields) < 6:
            raise RegistrationError(f"device {pos}: {entry!r} has {len(fields)} fields, 6 needed")
        uuid, count, mem, typ, health, mode = (f.strip() for f in fields[:6])
        try:
            split, memory = int(count), int(mem)
        except ValueError:
            raise RegistrationError(f"device {pos}: count {count!r} / memory {mem!r} are not integers") from None
        if mode not in names.MODES:
            mode = names.MODE_HAMI_CORE  # Volcano maps anything else (mps) to hami-core
        model = typ[len(names.DEVICE_VENDOR) + 1 :] if typ.startswith(f"{names.DEVICE_VENDOR}-") else typ
        gpus.append(RegisteredGpu(uuid, split, memory, model, health.lower() == "true", mode, pos))
    return gpus


class LayoutInstance(msgspec.Struct, rename="camel", omit_defaults=True):
    profile: str
    start: int
    size: int
    uuid: str = ""  # MIG device UUID
    pod: str = ""  # namespace/name of the holder
    pod_uid: str = ""
    owned: bool = True


class LayoutGpu(msgspec.Struct, rename="camel", omit_defaults=True):
    uuid: str
    index: int
    model: str
    memory: int = 0
    mig_enabled: bool = False
    mig_pending: bool = False
    profiles: list[str] = []
    unusable_geometries: list[int] = []
    instances: list[LayoutInstance] = []


class MigLayout(msgspec.Struct, omit_defaults=True):
    version: int = 1
    heartbeat: int = 0  # unix seconds of the agent's last report
    gpus: list[LayoutGpu] = []


_layout_decoder = msgspec.json.Decoder(MigLayout)


def decode_layout(value: str) -> MigLayout:
    try:
        return _layout_decoder.decode(value)
    except msgspec.DecodeError as exc:
        raise RegistrationError(f"{names.ANNO_MIG_LAYOUT}: {exc}") from None


def encode_layout(layout: MigLayout) -> str:
    return msgspec.json.encode(layout).decode()
