"""The few fields of Kubernetes objects the services read, decoded straight from JSON with msgspec
(a full model of every pod of a large cluster would cost too much memory and time)."""

from __future__ import annotations

from typing import Any

import msgspec


class ObjectMeta(msgspec.Struct, rename="camel", omit_defaults=True):
    name: str = ""
    namespace: str = ""
    uid: str = ""
    resource_version: str = ""
    annotations: dict[str, str] = {}
    labels: dict[str, str] = {}
    deletion_timestamp: str | None = None
    creation_timestamp: str | None = None


class Resources(msgspec.Struct, omit_defaults=True):
    limits: dict[str, Any] = {}
    requests: dict[str, Any] = {}


class Container(msgspec.Struct, omit_defaults=True):
    name: str = ""
    resources: Resources = msgspec.field(default_factory=Resources)
    env: list[dict[str, Any]] = []


class PodSpec(msgspec.Struct, rename="camel", omit_defaults=True):
    node_name: str = ""
    scheduler_name: str = ""
    containers: list[Container] = []
    init_containers: list[Container] = []


class PodStatus(msgspec.Struct, omit_defaults=True):
    phase: str = ""


class Pod(msgspec.Struct, omit_defaults=True):
    metadata: ObjectMeta = msgspec.field(default_factory=ObjectMeta)
    spec: PodSpec = msgspec.field(default_factory=PodSpec)
    status: PodStatus = msgspec.field(default_factory=PodStatus)

    @property
    def key(self) -> str:
        return f"{self.metadata.namespace}/{self.metadata.name}"

    @property
    def terminated(self) -> bool:
        return self.status.phase in ("Succeeded", "Failed")

    def as_dict(self) -> dict[str, Any]:
        """The shape `vcplugin.core.request.parse_pod` reads."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out


class NodeStatus(msgspec.Struct, omit_defaults=True):
    allocatable: dict[str, Any] = {}
    capacity: dict[str, Any] = {}


class Node(msgspec.Struct, omit_defaults=True):
    metadata: ObjectMeta = msgspec.field(default_factory=ObjectMeta)
    status: NodeStatus = msgspec.field(default_factory=NodeStatus)


class ConfigMap(msgspec.Struct, omit_defaults=True):
    metadata: ObjectMeta = msgspec.field(default_factory=ObjectMeta)
    data: dict[str, str] = {}


class Secret(msgspec.Struct, omit_defaults=True):
    metadata: ObjectMeta = msgspec.field(default_factory=ObjectMeta)
    data: dict[str, str] = {}


class ListMeta(msgspec.Struct, rename="camel", omit_defaults=True):
    resource_version: str = ""


class Status(msgspec.Struct, omit_defaults=True):
    """The apiserver's error object (also the object of a watch ERROR event)."""

    code: int = 0
    reason: str = ""
    message: str = ""


class RawList(msgspec.Struct):
    metadata: ListMeta = msgspec.field(default_factory=ListMeta)
    items: list[msgspec.Raw] = []


class RawEvent(msgspec.Struct):
    type: str
    object: msgspec.Raw
