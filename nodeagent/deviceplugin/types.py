"""What the node agent hands the device-plugin servers: device states and per-container allocations.

Plain data (no gRPC) so the rest of the agent can build these without touching the generated API.
"""

from __future__ import annotations

from typing import Final, NamedTuple

import msgspec

# Kubelet device-plugin API constants (k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1/constants.go).
API_VERSION: Final = "v1beta1"
KUBELET_SOCKET: Final = "kubelet.sock"
DEVICE_PLUGIN_PATH: Final = "/var/lib/kubelet/device-plugins/"
HEALTHY: Final = "Healthy"
UNHEALTHY: Final = "Unhealthy"


class DeviceState(NamedTuple):
    """One advertised device. A plain ``(device_id, healthy, numa)`` tuple works as well."""

    device_id: str  # unique within the resource, at most 63 characters
    healthy: bool
    numa: int | None = None  # NUMA node, when known


class MountSpec(msgspec.Struct, frozen=True):
    """A host path mounted into the container."""

    container_path: str
    host_path: str
    read_only: bool = False


class DeviceNodeSpec(msgspec.Struct, frozen=True):
    """A host device node exposed in the container; permissions are cgroup ones (r, w, m)."""

    container_path: str
    host_path: str
    permissions: str = "rw"


class ContainerAllocation(msgspec.Struct, frozen=True):
    """What kubelet must inject into one container for the devices it was allocated."""

    envs: dict[str, str] = msgspec.field(default_factory=dict)
    mounts: tuple[MountSpec, ...] = ()
    devices: tuple[DeviceNodeSpec, ...] = ()
    annotations: dict[str, str] = msgspec.field(default_factory=dict)
    cdi_devices: tuple[str, ...] = ()  # fully qualified CDI names, e.g. "nvidia.com/gpu=0"


class AllocateError(Exception):
    """Raised by an allocate handler to refuse an allocation.

    The plugin fails the Allocate call with FAILED_PRECONDITION and this message; kubelet then
    rejects the pod with UnexpectedAdmissionError quoting it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
