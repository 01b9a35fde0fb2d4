"""Kubelet device-plugin API (v1beta1) for the node agent: generated stubs, server, and data types."""

from .server import DevicePluginServer, PluginManager
from .types import (
    API_VERSION,
    DEVICE_PLUGIN_PATH,
    HEALTHY,
    KUBELET_SOCKET,
    UNHEALTHY,
    AllocateError,
    ContainerAllocation,
    DeviceNodeSpec,
    DeviceState,
    MountSpec,
)

__all__ = [
    "API_VERSION",
    "DEVICE_PLUGIN_PATH",
    "HEALTHY",
    "KUBELET_SOCKET",
    "UNHEALTHY",
    "AllocateError",
    "ContainerAllocation",
    "DeviceNodeSpec",
    "DeviceState",
    "DevicePluginServer",
    "MountSpec",
    "PluginManager",
]
