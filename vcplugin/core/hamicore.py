"""HAMi-core software sharing: memory and SM limits per container on a shared GPU."""

from __future__ import annotations

from . import names
from .request import ContainerRequest
from .types import DeviceGrant, GpuState


def needed_memory(gpu: GpuState, req: ContainerRequest) -> int:
    if req.memory:
        return req.memory
    if req.memory_percent:
        return gpu.total_memory * req.memory_percent // 100
    return gpu.total_memory  # nothing asked: the whole GPU's memory


def _why_not(gpu: GpuState, req: ContainerRequest, mem: int) -> str | None:
    if gpu.shares >= gpu.split_count:
        return f"GPU {gpu.index}: all {gpu.split_count} shares taken"
    if gpu.exclusive:
        return f"GPU {gpu.index}: held exclusively"
    if req.cores >= 100 and gpu.shares:
        return f"GPU {gpu.index}: exclusive use asked but {gpu.shares} pod(s) share it"
    if mem > gpu.free_memory:
        return f"GPU {gpu.index}: {gpu.free_memory} MiB free < {mem}"
    if gpu.used_cores + req.cores > gpu.total_cores:
        return f"GPU {gpu.index}: cores {gpu.used_cores}+{req.cores} > {gpu.total_cores}"
    return None


class HamiCoreSharing:
    mode = names.MODE_HAMI_CORE

    def allocate(
        self, gpus: list[GpuState], req: ContainerRequest, pod_uid: str, pod_key: str
    ) -> list[DeviceGrant] | str:
        grants: list[DeviceGrant] = []
        reasons: list[str] = []
        for gpu in gpus:  # each GPU at most once per container
            mem = needed_memory(gpu, req)
            why = _why_not(gpu, req, mem)
            if why is not None:
                reasons.append(why)
                continue
            grant = DeviceGrant(gpu.uuid, gpu.index, self.mode, mem, req.cores)
            self.add(gpu, grant, pod_uid, pod_key)
            grants.append(grant)
            if len(grants) == req.count:
                return grants
        by_uuid = {g.uuid: g for g in gpus}
        for grant in grants:
            self.remove(by_uuid[grant.uuid], grant, pod_uid)
        shown = "; ".join(reasons[:4]) + ("; ..." if len(reasons) > 4 else "")
        return f"{len(grants)} of {req.count} hami-core vGPUs fit ({shown})" if reasons else "no hami-core GPU"

    def add(self, gpu: GpuState, grant: DeviceGrant, pod_uid: str, pod_key: str) -> None:
        gpu.used_memory += grant.memory
        gpu.used_cores += grant.cores
        gpu.shares += 1
        if grant.cores >= 100:
            gpu.exclusive += 1

    def remove(self, gpu: GpuState, grant: DeviceGrant, pod_uid: str) -> None:
        gpu.used_memory -= grant.memory
        gpu.used_cores -= grant.cores
        gpu.shares -= 1
        if grant.cores >= 100:
            gpu.exclusive -= 1

    def never_fits(self, gpus: list[GpuState], req: ContainerRequest) -> str | None:
        fitting = [g for g in gpus if needed_memory(g, req) <= g.total_memory and req.cores <= g.total_cores]
        if len(fitting) < req.count:
            if not gpus:
                return "no hami-core GPU"
            biggest = max(g.total_memory for g in gpus)
            return (
                f"{req.count} vGPUs on distinct GPUs asked, {len(fitting)} of {len(gpus)} hami-core GPUs are "
                f"large enough (largest {biggest} MiB)"
            )
        return None
