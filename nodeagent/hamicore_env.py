"""What a container needs from Allocate: HAMi-core's environment and mounts, or MIG device UUIDs."""

from __future__ import annotations

import os
from dataclasses import dataclass

from vcplugin.core import names
from vcplugin.core.types import ContainerGrant

from .deviceplugin.types import ContainerAllocation, MountSpec

CONTAINER_DIR = "/usr/local/vgpu"  # where HAMi-core's library and its cache live in the container


@dataclass(frozen=True)
class HamiCorePaths:
    """Host paths (configurable): HAMi-core's library directory and the lock directory."""

    host_dir: str = "/usr/local/vgpu"  # holds libvgpu.so and ld.so.preload
    lock_dir: str = "/tmp/vgpulock"
    library: str = "libvgpu.so"


def hami_core_allocation(
    grant: ContainerGrant, pod_uid: str, paths: HamiCorePaths, *, create_dirs: bool = True
) -> ContainerAllocation:
    """NVIDIA_VISIBLE_DEVICES plus the limits HAMi-core reads; the per-container cache directory is
    created on the host and mounted at /usr/local/vgpu (the shared-region file lands there)."""
    devs = grant.devices
    envs = {"NVIDIA_VISIBLE_DEVICES": ",".join(d.uuid for d in devs)}
    for i, d in enumerate(devs):
        envs[f"CUDA_DEVICE_MEMORY_LIMIT_{i}"] = f"{d.memory}m"
        envs[f"CUDA_DEVICE_SM_LIMIT_{i}"] = str(d.cores)
    envs["CUDA_DEVICE_SM_LIMIT"] = str(devs[0].cores) if devs else "0"
    envs["CUDA_DEVICE_MEMORY_SHARED_CACHE"] = f"{CONTAINER_DIR}/{pod_uid}_{grant.name}.cache"
    cache_dir = os.path.join(paths.host_dir, "containers", f"{pod_uid}_{grant.name}")
    if create_dirs:
        # Containers may run as any user: the directories must be writable by all (umask would cut the
        # mode given to makedirs). The lock directory is shared by every container, hence sticky.
        os.makedirs(cache_dir, exist_ok=True)
        os.chmod(cache_dir, 0o777)
        os.makedirs(paths.lock_dir, exist_ok=True)
        os.chmod(paths.lock_dir, 0o1777)
    mounts = (
        MountSpec(f"{CONTAINER_DIR}/{paths.library}", os.path.join(paths.host_dir, paths.library), True),
        MountSpec(CONTAINER_DIR, cache_dir, False),
        MountSpec("/tmp/vgpulock", paths.lock_dir, False),
        MountSpec("/etc/ld.so.preload", os.path.join(paths.host_dir, "ld.so.preload"), True),
    )
    return ContainerAllocation(envs=envs, mounts=mounts)


def mig_allocation(mig_uuids: list[str]) -> ContainerAllocation:
    return ContainerAllocation(envs={"NVIDIA_VISIBLE_DEVICES": ",".join(mig_uuids)})


def is_mig(grant: ContainerGrant) -> bool:
    return any(d.mode == names.MODE_MIG for d in grant.devices)
