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
_task_only = msgspec.json.Decoder(PrioritizeRequest)

_NODES_KEY = b',"nodes":['
_NODE_START = b'{"Name":"'
_NODE_AFTER_NAME = b'","Node":'


def decode_prioritize(body: bytes) -> PrioritizeRequest:
    """Prioritize carries every candidate node with all its pods (hundreds of KiB); only the task and
    the node names matter. Go's encoding/json writes struct fields in declaration order, so the body
    is `{"task":{...},"nodes":[{"Name":"n1","Node":...},...]}`: decode the task alone and find each
    `{"Name":"..","Node":` with memchr-speed searches. Anything unexpected falls back to a full
    decode, which is the reference behaviour."""
    cut = body.find(_NODES_KEY)
    if body.startswith(b'{"task":') and cut > 0 and body.rstrip().endswith(b"]}"):
        try:
            head = _task_only.decode(body[:cut] + b"}")
        except msgspec.DecodeError:
            head = None
        if head is not None:
            names: list[NodeName] = []
            pos = cut + len(_NODES_KEY)
            ok = True
            while True:
                i = body.find(_NODE_START, pos)
                if i < 0:
                    break
                j = body.find(b'"', i + len(_NODE_START))
                if j < 0 or not body.startswith(_NODE_AFTER_NAME, j):
                    ok = False
                    break
                raw = body[i + len(_NODE_START) : j]
                if b"\\" in raw:
                    ok = False
                    break
                names.append(NodeName(raw.decode()))
                pos = j
            if ok and (names or body[cut + len(_NODES_KEY) :].lstrip().startswith(b"]")):
                head.nodes = names
                return head
    return prioritize_decoder.decode(body)


event_decoder = msgspec.json.Decoder(EventHandlerRequest)
encoder = msgspec.json.Encoder()
