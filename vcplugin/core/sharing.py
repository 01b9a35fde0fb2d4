"""The one interface both ways of slicing a GPU implement (HAMi-core shares, MIG instances)."""

from __future__ import annotations

from typing import Protocol

from .request import ContainerRequest
from .types import DeviceGrant, GpuState


class Sharing(Protocol):
    mode: str

    def allocate(
        self, gpus: list[GpuState], req: ContainerRequest, pod_uid: str, pod_key: str
    ) -> list[DeviceGrant] | str:
        """Take `req.count` vGPUs from `gpus` (already filtered and in policy order), changing their
        state; return the grants, or a reason and leave the GPUs as they were."""
        ...

    def add(self, gpu: GpuState, grant: DeviceGrant, pod_uid: str, pod_key: str) -> None:
        """Record an existing grant (rebuilding usage from annotations)."""
        ...

    def remove(self, gpu: GpuState, grant: DeviceGrant, pod_uid: str) -> None: ...

    def never_fits(self, gpus: list[GpuState], req: ContainerRequest) -> str | None:
        """A reason the request cannot fit these GPUs even when they are empty, or None."""
        ...
