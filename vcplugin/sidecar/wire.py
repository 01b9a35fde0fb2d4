"""Volcano's extender wire format (reference/volcano.md §1.3, §2), decoded only as far as needed.

Go's encoding/json writes TaskInfo/NodeInfo with PascalCase keys and the Pod in Kubernetes'
camelCase. Unknown keys are ignored, and whole NodeInfo objects are never decoded: a node is its name."""

from __future__ import annotations

import msgspec

from ..kube.objects import Pod


class TaskInfo(msgspec.Struct, rename="pascal"):
    uid: str = msgspec.field(default="", name="UID")
    name: str = ""
    namespace: str = ""
    node_name: str = ""
    status: int = 0
    pod: Pod | None = None


class NodeName(msgspec.Struct, rename="pascal"):
    name: str = ""


class PredicateRequest(msgspec.Struct):
    task: TaskInfo | None = None
    node: NodeName | None = None


class PrioritizeRequest(msgspec.Struct):
    task: TaskInfo | None = None
    nodes: list[NodeName] | None = None


class EventHandlerRequest(msgspec.Struct):
    task: TaskInfo | None = None


class PredicateResponse(msgspec.Struct):
    """Volcano >= 1.10 reads `status`/`code`; 1.6-1.7 read `errorMessage`: both are sent."""

    status: str = ""
    code: int = 0
    errorMessage: str = ""  # noqa: N815 (wire name)


class PrioritizeResponse(msgspec.Struct):
    nodeScore: dict[str, float]  # noqa: N815
    errorMessage: str = ""  # noqa: N815


class EventHandlerResponse(msgspec.Struct):
    errorMessage: str = ""  # noqa: N815


class VictimsResponse(msgspec.Struct):
    """preemptable / reclaimable: status 0 = abstain."""

    status: int = 0
    victims: list[msgspec.Raw] | None = None


class StatusIntResponse(msgspec.Struct):
    """jobEnqueueable: 1 permit, 0 abstain, -1 reject."""

    status: int = 0


class StatusBoolResponse(msgspec.Struct):
    """jobReady."""

    status: bool = True


class OverusedResponse(msgspec.Struct):
    overused: bool = False


class Empty(msgspec.Struct):
    pass


predicate_decoder = msgspec.json.Decoder(PredicateRequest)
prioritize_decoder = msgspec.json.Decoder(PrioritizeRequest)
event_decoder = msgspec.json.Decoder(EventHandlerRequest)
encoder = msgspec.json.Encoder()
