"""A Volcano-like driver for the extender sidecar (test equipment, not product code).

It calls the sidecar the way vc-scheduler >= 1.13 does (reference/volcano.md §1-2): plain HTTP/1.1
POSTs with `Content-Type: application/json`, a whole-request timeout (Volcano's `extender.httpTimeout`,
default 1 s), and bodies in the exact JSON shape Go's `encoding/json` writes for `api.TaskInfo` and
`api.NodeInfo`: PascalCase keys in struct declaration order, map keys sorted, `null` for nil, integral
floats without a fraction, `<`, `>`, `&` escaped as `\\u003c`... Resources are in Volcano's units (cpu
in milli, memory in bytes, `pods` raw, every other scalar resource as a milli-value).

    driver = VolcanoDriver(sidecar_url)
    result = await driver.schedule_job(pods, nodes, min_available=2, existing_pods=bound_pods)
    await bind(api, result)                       # the async binder, after the session
    await driver.close()

`schedule` runs one session like Volcano's allocate action: onSessionOpen; per task, Volcano's own
resource check, then `predicate` for every candidate node (16 at a time), `prioritize` once with every
node that passed (skipped when exactly one passed), the best node (ties: the first), `allocate`
(Status=Allocated, NodeName in TaskInfo and Pod.spec.nodeName); a non-empty `errorMessage` (or a
transport error) → `deallocate` for that task (Status=Pending, NodeName still set), as Statement's
unallocate does; after the job's tasks, gang check (`min_available`) and, if not ready,
Statement.Discard: `deallocate` for every allocated task in reverse order; onSessionClose.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    from .fakeapi import FakeKubeApi

Obj = dict[str, Any]

# --- Volcano constants (pkg/scheduler/api/types.go) ----------------------------------------------

PENDING, ALLOCATED, PIPELINED, BINDING, BOUND, RUNNING, RELEASING, SUCCEEDED, FAILED, UNKNOWN = (
    1,
    2,
    4,
    8,
    16,
    32,
    64,
    128,
    256,
    512,
)
# Predicate status codes.
SUCCESS, ERROR, UNSCHEDULABLE, UNRESOLVABLE, WAIT, SKIP = 0, 1, 2, 3, 4, 5
REJECTING_CODES = frozenset({ERROR, UNSCHEDULABLE, UNRESOLVABLE, WAIT, SKIP})  # PredicateForAllocateAction

DEFAULT_VERBS: dict[str, str] = {
    "onSessionOpen": "onSessionOpen",
    "onSessionClose": "onSessionClose",
    "predicate": "predicate",
    "prioritize": "prioritize",
    "allocate": "allocate",
    "deallocate": "deallocate",
}
"""The verbs of reference/volcano.md §4's scheduler config. Add e.g. `jobReady` to have the driver
ask it too (Volcano's ssn.JobReady); a verb missing here is "not registered" and never called."""

ZERO_TIME = "0001-01-01T00:00:00Z"
GROUP_NAME_ANNOTATION = "scheduling.k8s.io/group-name"
TASK_SPEC_ANNOTATION = "volcano.sh/task-spec"
PREEMPTABLE_ANNOTATION = "volcano.sh/preemptable"
REVOCABLE_ZONE_ANNOTATION = "volcano.sh/revocable-zone"


# --- Go's encoding/json -------------------------------------------------------------------------


def go_json(obj: Any) -> bytes:
    """`json.Marshal` output: compact, UTF-8, HTML-escaped (`<`, `>`, `&`, U+2028, U+2029).

    Integral floats are written as integers (Go prints float64 1000 as `1000`). Key order is the
    order of the dicts, which the builders below keep in Go's order."""
    text = json.dumps(_go_numbers(obj), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)  # these characters only ever occur inside strings
    return text.encode()


def _go_numbers(obj: Any) -> Any:
    if isinstance(obj, float) and obj.is_integer() and abs(obj) < 1e21:
        return int(obj)
    if isinstance(obj, dict):
        return {k: _go_numbers(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_go_numbers(v) for v in obj]
    return obj


def _sorted_map(m: Mapping[str, Any] | None) -> Obj | None:
    """A Go map: keys sorted (encoding/json sorts map keys), nil stays null."""
    if m is None:
        return None
    return {k: m[k] for k in sorted(m)}


_MAP_FIELDS = frozenset(
    {"annotations", "labels", "limits", "requests", "allocatable", "capacity", "nodeSelector", "data"}
)


def _go_object(obj: Any, key: str = "") -> Any:
    """A Kubernetes object as Go would marshal it: structs keep the API server's field order; the
    map-typed fields (annotations, labels, resource lists, nodeSelector, data) get sorted keys."""
    if isinstance(obj, dict):
        keys = sorted(obj) if key in _MAP_FIELDS else list(obj)
        return {k: _go_object(obj[k], k) for k in keys}
    if isinstance(obj, list):
        return [_go_object(v) for v in obj]
    return obj


# --- quantities and Volcano's Resource ----------------------------------------------------------

_SUFFIX = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}


def quantity(value: Any) -> Decimal:
    """A Kubernetes quantity ("3k", "8Gi", "500m", 4) as an exact number."""
    if isinstance(value, bool):
        raise ValueError(f"invalid quantity {value!r}")
    if isinstance(value, int | float):
        return Decimal(str(value))
    text = str(value).strip()
    for suffix in sorted(_SUFFIX, key=len, reverse=True):
        if suffix and text.endswith(suffix) and not (suffix == "E" and _is_exponent(text)):
            number, mult = text[: -len(suffix)], _SUFFIX[suffix]
            break
    else:
        number, mult = text, Decimal(1)
    try:
        return Decimal(number) * mult
    except InvalidOperation:
        raise ValueError(f"invalid quantity {value!r}") from None


def _is_exponent(text: str) -> bool:
    try:
        Decimal(text)
        return True
    except InvalidOperation:
        return False


def _ceil(d: Decimal) -> int:
    return int(d.to_integral_value(rounding="ROUND_CEILING"))


class Resource:
    """`api.Resource`: MilliCPU, Memory (bytes), ScalarResources (milli-values; `pods` raw), MaxTaskNum."""

    def __init__(self) -> None:
        self.milli_cpu = 0.0
        self.memory = 0.0
        self.scalar: dict[str, float] | None = None
        self.max_task_num = 0

    @classmethod
    def from_list(cls, rl: Mapping[str, Any] | None) -> Resource:
        """`api.NewResource(v1.ResourceList)`."""
        r = cls()
        for name, raw in (rl or {}).items():
            q = quantity(raw)
            if name == "cpu":
                r.milli_cpu += float(_ceil(q * 1000))
            elif name == "memory":
                r.memory += float(_ceil(q))
            elif name == "pods":
                r.max_task_num += int(q)
                r.add_scalar("pods", float(_ceil(q)))
            else:  # ephemeral-storage, hugepages, every extended resource: milli-value
                r.add_scalar(name, float(_ceil(q * 1000)))
        return r

    def add_scalar(self, name: str, value: float) -> None:
        if self.scalar is None:
            self.scalar = {}
        self.scalar[name] = self.scalar.get(name, 0.0) + value

    def copy(self) -> Resource:
        r = Resource()
        r.milli_cpu, r.memory, r.max_task_num = self.milli_cpu, self.memory, self.max_task_num
        r.scalar = dict(self.scalar) if self.scalar is not None else None
        return r

    def add(self, other: Resource) -> Resource:
        self.milli_cpu += other.milli_cpu
        self.memory += other.memory
        for k, v in (other.scalar or {}).items():
            self.add_scalar(k, v)
        return self

    def sub(self, other: Resource) -> Resource:
        self.milli_cpu -= other.milli_cpu
        self.memory -= other.memory
        for k, v in (other.scalar or {}).items():
            self.add_scalar(k, -v)
        return self

    def set_max(self, other: Resource) -> Resource:
        self.milli_cpu = max(self.milli_cpu, other.milli_cpu)
        self.memory = max(self.memory, other.memory)
        for k, v in (other.scalar or {}).items():
            if self.scalar is None:
                self.scalar = {}
            self.scalar[k] = max(self.scalar.get(k, 0.0), v)
        return self

    def fits_in(self, idle: Resource) -> tuple[bool, str]:
        """The allocate action's `task.InitResreq <= node.FutureIdle()` check, for every dimension
        the task asks for (a scalar the node does not advertise counts as 0)."""
        if self.milli_cpu > idle.milli_cpu:
            return False, f"Insufficient cpu ({self.milli_cpu:g} > {idle.milli_cpu:g})"
        if self.memory > idle.memory:
            return False, f"Insufficient memory ({self.memory:g} > {idle.memory:g})"
        for k, v in (self.scalar or {}).items():
            have = (idle.scalar or {}).get(k, 0.0)
            if v > have:
                return False, f"Insufficient {k} ({v:g} > {have:g})"
        return True, ""

    def json(self) -> Obj:
        return {
            "MilliCPU": self.milli_cpu,
            "Memory": self.memory,
            "ScalarResources": _sorted_map(self.scalar),
            "MaxTaskNum": self.max_task_num,
        }


def _empty_resource() -> Obj:
    return Resource().json()


def _container_requests(ctr: Mapping[str, Any]) -> dict[str, Any]:
    """What the API server stores: requests, with limits copied in where a request is missing for an
    extended resource (the apiserver defaults requests from limits)."""
    res = ctr.get("resources") or {}
    out = dict(res.get("limits") or {})
    out.update(res.get("requests") or {})
    return out


def pod_resreq(pod: Mapping[str, Any]) -> tuple[Resource, Resource]:
    """(Resreq, InitResreq) of a pod: the sum of the containers; InitResreq also the max with each
    init container. Both get `pods: 1`."""
    spec = pod.get("spec") or {}
    req = Resource()
    for ctr in spec.get("containers") or []:
        req.add(Resource.from_list(_container_requests(ctr)))
    init = req.copy()
    for ctr in spec.get("initContainers") or []:
        init.set_max(Resource.from_list(_container_requests(ctr)))
    for r in (req, init):
        r.add_scalar("pods", 1.0)
    return req, init


# --- TaskInfo / NodeInfo / JobInfo builders -----------------------------------------------------


def pod_status(pod: Mapping[str, Any]) -> int:
    """`api.getTaskStatus`."""
    phase = (pod.get("status") or {}).get("phase") or "Pending"
    deleting = bool((pod.get("metadata") or {}).get("deletionTimestamp"))
    node = (pod.get("spec") or {}).get("nodeName")
    if phase == "Running":
        return RELEASING if deleting else RUNNING
    if phase == "Pending":
        if deleting:
            return RELEASING
        return BOUND if node else PENDING
    if phase == "Succeeded":
        return SUCCEEDED
    if phase == "Failed":
        return FAILED
    return UNKNOWN


def job_id(pod: Mapping[str, Any]) -> str:
    """`<namespace>/<podgroup>`; a pod without a group gets Volcano's shadow PodGroup `podgroup-<uid>`."""
    meta = pod.get("metadata") or {}
    group = (meta.get("annotations") or {}).get(GROUP_NAME_ANNOTATION, "") or f"podgroup-{meta.get('uid', '')}"
    return f"{meta.get('namespace') or 'default'}/{group}"


def _full_pod(pod: Mapping[str, Any], node_name: str) -> Obj:
    """The Pod as Volcano holds it: the informer's object, spec.nodeName set when allocated."""
    p = copy.deepcopy(dict(pod))
    meta = p.setdefault("metadata", {})
    meta.setdefault("namespace", "default")
    meta.setdefault("uid", str(uuid.uuid5(uuid.NAMESPACE_URL, f"{meta['namespace']}/{meta.get('name', '')}")))
    spec = p.setdefault("spec", {})
    spec.setdefault("schedulerName", "volcano")
    if node_name:
        spec["nodeName"] = node_name
    p.setdefault("status", {}).setdefault("phase", "Pending")
    p.pop("kind", None)
    p.pop("apiVersion", None)
    return _go_object(p)  # type: ignore[no-any-return]


def task_info(pod: Mapping[str, Any], node_name: str = "", status: int = PENDING) -> Obj:
    """`api.TaskInfo` as encoding/json writes it (volcano HEAD field set, declaration order)."""
    full = _full_pod(pod, node_name)
    meta, spec = full["metadata"], full["spec"]
    annotations = meta.get("annotations") or {}
    resreq, init = pod_resreq(full)
    best_effort = resreq.milli_cpu == 0 and resreq.memory == 0
    restartable_init = any(c.get("restartPolicy") == "Always" for c in spec.get("initContainers") or [])
    return {
        "UID": meta["uid"],
        "Job": job_id(full),
        "Name": meta.get("name", ""),
        "Namespace": meta["namespace"],
        "TaskRole": annotations.get(TASK_SPEC_ANNOTATION, ""),
        "Resreq": resreq.json(),
        "InitResreq": init.json(),
        "DRAResreq": None,
        "ResourceClaimKeys": None,
        "ResourceClaimDRAResreq": None,
        # TransactionContext, embedded and flattened:
        "NodeName": node_name,
        "EvictionOccurred": False,
        "JobAllocatedHyperNode": "",
        "Status": status,
        "LastTransaction": None,
        "Priority": int(spec.get("priority") or 0),
        "VolumeReady": False,
        "Preemptable": annotations.get(PREEMPTABLE_ANNOTATION, "") == "true",
        "BestEffort": best_effort,
        "HasRestartableInitContainer": restartable_init,
        "SchGated": bool(spec.get("schedulingGates")),
        "RevocableZone": annotations.get(REVOCABLE_ZONE_ANNOTATION, ""),
        "NumaInfo": {"Policy": "", "ResMap": {}},
        "Pod": full,
        "PodAnnotations": _sorted_map(annotations) if annotations else None,
        "CustomBindErrHandlerSucceeded": False,
    }


def _task_key(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace') or 'default'}/{meta.get('name', '')}"


_ACTIVE = (ALLOCATED, PIPELINED, BINDING, BOUND, RUNNING, RELEASING)


def node_info(
    node: Mapping[str, Any],
    pods_on_node: Iterable[Mapping[str, Any]] = (),
    *,
    tasks: Iterable[Obj] = (),
    generation: int = 1,
) -> Obj:
    """`api.NodeInfo` as encoding/json writes it. `pods_on_node` become `Tasks` (keyed by
    "namespace/name", each a full TaskInfo); `tasks` adds ready-made TaskInfos (tasks allocated in the
    session). Idle/Used follow the tasks that hold resources."""
    full = _go_object(copy.deepcopy(dict(node)))
    full.pop("kind", None)
    full.pop("apiVersion", None)
    name = (full.get("metadata") or {}).get("name", "")
    status = full.get("status") or {}
    allocatable = Resource.from_list(status.get("allocatable"))
    capacity = Resource.from_list(status.get("capacity") or status.get("allocatable"))
    all_tasks: dict[str, Obj] = {}
    for pod in pods_on_node:
        all_tasks[_task_key(pod)] = task_info(pod, (pod.get("spec") or {}).get("nodeName") or name, pod_status(pod))
    for t in tasks:
        all_tasks[f"{t['Namespace']}/{t['Name']}"] = t
    used, releasing, pipelined = Resource(), Resource(), Resource()
    for t in all_tasks.values():
        r = _resource_of(t["Resreq"])
        if t["Status"] == RELEASING:
            releasing.add(r)
            used.add(r)
        elif t["Status"] == PIPELINED:
            pipelined.add(r)
        elif t["Status"] in _ACTIVE:
            used.add(r)
    idle = allocatable.copy().sub(used)
    ready = _node_ready(full)
    return {
        "Name": name,
        "Node": full,
        "State": {"Phase": 1 if ready else 2, "Reason": "" if ready else "NotReady"},
        "Releasing": releasing.json(),
        "Pipelined": pipelined.json(),
        "Idle": idle.json(),
        "Used": used.json(),
        "Allocatable": allocatable.json(),
        "Capacity": capacity.json(),
        "ResourceUsage": {"MetricsTime": ZERO_TIME, "CPUUsageAvg": {}, "MEMUsageAvg": {}},
        "Tasks": {k: all_tasks[k] for k in sorted(all_tasks)},
        "NumaInfo": None,
        "UnassignedNumaPods": None,
        "NumaSchedulerInfo": None,
        "RevocableZone": "",
        "Others": {},
        "OversubscriptionNode": False,
        "OfflineJobEvicting": False,
        "OversubscriptionResource": _empty_resource(),
        "ImageStates": {},
        "Generation": generation,
        "BindGeneration": 0,
    }


def _node_ready(node: Mapping[str, Any]) -> bool:
    conditions = (node.get("status") or {}).get("conditions") or []
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    return ready is None or ready.get("status") == "True"


def _resource_of(j: Mapping[str, Any]) -> Resource:
    r = Resource()
    r.milli_cpu, r.memory, r.max_task_num = float(j["MilliCPU"]), float(j["Memory"]), int(j["MaxTaskNum"])
    r.scalar = dict(j["ScalarResources"]) if j["ScalarResources"] is not None else None
    return r


def job_info(
    name: str,
    tasks: Sequence[Obj],
    *,
    namespace: str = "default",
    min_available: int = 1,
    queue: str = "default",
) -> Obj:
    """`api.JobInfo` (only for onSessionOpen / jobReady bodies): `Tasks` keyed by task UID."""
    total = Resource()
    for t in tasks:
        total.add(_resource_of(t["Resreq"]))
    return {
        "UID": f"{namespace}/{name}",
        "PgUID": str(uuid.uuid5(uuid.NAMESPACE_URL, f"podgroup/{namespace}/{name}")),
        "Name": name,
        "Namespace": namespace,
        "Queue": queue,
        "Priority": 0,
        "MinAvailable": min_available,
        "WaitingTime": None,
        "JobFitErrors": "",
        "NodesFitErrors": {},
        "TaskStatusIndex": {},
        "Tasks": {t["UID"]: t for t in sorted(tasks, key=lambda t: t["UID"])},
        "TaskMinAvailable": {},
        "TaskMinAvailableTotal": 0,
        "Allocated": _empty_resource(),
        "TotalRequest": total.json(),
        "CreationTimestamp": ZERO_TIME,
        "PodGroup": None,
        "ScheduleStartTimestamp": ZERO_TIME,
        "Preemptable": False,
        "RevocableZone": "",
        "Budget": None,
    }


def session_open_payload(jobs: Sequence[Obj], nodes: Sequence[Obj], queues: Sequence[str] = ("default",)) -> Obj:
    """`OnSessionOpenRequest`: every job and node of the snapshot (NodeList is never filled)."""
    return {
        "Jobs": {j["UID"]: j for j in sorted(jobs, key=lambda j: j["UID"])},
        "Nodes": {n["Name"]: n for n in sorted(nodes, key=lambda n: n["Name"])},
        "Queues": {q: {"UID": q, "Name": q, "Weight": 1, "Queue": None} for q in sorted(queues)},
        "NamespaceInfo": {},
        "RevocableNodes": {},
        "NodeList": None,
    }


# --- results ------------------------------------------------------------------------------------


class ExtenderError(Exception):
    """What Volcano's `send` reports: transport error, timeout, non-200 status, or a body that does
    not decode into the response struct."""


@dataclass
class Call:
    verb: str
    task: str  # "namespace/name" or ""
    node: str  # predicate's node, allocate's NodeName, or ""
    started: float
    elapsed: float
    status: int  # HTTP status, 0 on a transport error
    response: Any  # the decoded JSON, or the error text


@dataclass
class TaskResult:
    key: str  # "namespace/name"
    uid: str
    node: str | None = None  # where it was allocated and committed; None otherwise
    reason: str = ""  # why not (fit errors, allocate error, gang), "" when placed
    tentative_node: str | None = None  # where allocateFunc placed it (even if discarded later)
    predicates: dict[str, Obj | str] = field(default_factory=dict)  # node -> answer or error text
    scores: dict[str, float] | None = None
    allocate_error: str = ""


@dataclass
class JobResult:
    name: str
    tasks: list[TaskResult]
    min_available: int
    ready: bool = False

    @property
    def placements(self) -> dict[str, str]:
        """task key -> node, committed tasks only."""
        return {t.key: t.node for t in self.tasks if t.node is not None}

    def __getitem__(self, key: str) -> TaskResult:
        return next(t for t in self.tasks if t.key == key or t.key.endswith("/" + key))


@dataclass
class Job:
    name: str
    pods: list[Obj]
    min_available: int = 1
    namespace: str = "default"


# --- the driver ---------------------------------------------------------------------------------


class VolcanoDriver:
    """vc-scheduler's extender plugin, over real HTTP (aiohttp client)."""

    def __init__(
        self,
        url: str,
        verbs: Mapping[str, str] | None = None,
        *,
        timeout: float = 1.0,
        concurrency: int = 16,
        ignorable: bool = False,
        resource_check: bool = True,
    ):
        self.url = url.rstrip("/")
        self.verbs = dict(DEFAULT_VERBS if verbs is None else verbs)
        self.timeout = timeout
        self.concurrency = concurrency
        self.ignorable = ignorable
        self.resource_check = resource_check
        self.calls: list[Call] = []
        self.inflight: dict[str, int] = {}
        self.max_inflight: dict[str, int] = {}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> VolcanoDriver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=False),
                headers={"User-Agent": "Go-http-client/1.1", "Accept-Encoding": "gzip"},
                skip_auto_headers=("Accept",),
            )
        return self._session

    def calls_of(self, verb: str) -> list[Call]:
        return [c for c in self.calls if c.verb == verb]

    # --- transport (Volcano's `send`) -----------------------------------------------------------

    async def raw(self, path: str, body: bytes | None = None, method: str = "POST") -> tuple[int, bytes]:
        """One request with no interpretation (for probing malformed input)."""
        headers = {"Content-Type": "application/json"} if body is not None else {}
        to = aiohttp.ClientTimeout(total=self.timeout)
        async with self._http().request(
            method, f"{self.url}/{path.lstrip('/')}", data=body, headers=headers, timeout=to
        ) as resp:
            return resp.status, await resp.read()

    async def send(self, verb: str, args: Any, *, want_result: bool = True, task: str = "", node: str = "") -> Any:
        """POST `args` to the verb's path; raise ExtenderError as Volcano would treat the answer."""
        path = self.verbs.get(verb)
        if not path:
            raise ExtenderError(f"verb {verb} is not registered")
        body = args if isinstance(args, bytes) else go_json(args)
        url = f"{self.url}/{path}"
        started = time.perf_counter()
        self.inflight[verb] = self.inflight.get(verb, 0) + 1
        self.max_inflight[verb] = max(self.max_inflight.get(verb, 0), self.inflight[verb])
        status: int = 0
        result: Any = None
        try:
            to = aiohttp.ClientTimeout(total=self.timeout)
            async with self._http().post(
                url, data=body, headers={"Content-Type": "application/json"}, timeout=to
            ) as resp:
                status = resp.status
                if resp.status != 200:
                    raise ExtenderError(f"failed {verb} with extender at URL {url}, code {resp.status}")
                if not want_result:
                    result = {}
                    return result
                data = await resp.content.read(10 << 20)
                if not data.strip():
                    raise ExtenderError("EOF")
                try:
                    result = json.loads(data)
                except ValueError as exc:
                    raise ExtenderError(f"decode {verb} response: {exc}") from None
                return result
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            result = f"{type(exc).__name__}: {exc}"
            raise ExtenderError(f"{verb}: {result}") from None
        except ExtenderError as exc:
            result = str(exc)
            raise
        finally:
            self.inflight[verb] -= 1
            self.calls.append(Call(verb, task, node, started, time.perf_counter() - started, status, result))

    # --- verbs ----------------------------------------------------------------------------------

    async def open_session(self, payload: Obj | bytes | None = None) -> None:
        await self.send(
            "onSessionOpen", payload if payload is not None else session_open_payload([], []), want_result=False
        )

    async def close_session(self) -> None:
        await self.send("onSessionClose", {}, want_result=False)

    async def predicate(self, task: Obj, node: Obj) -> Obj:
        """The decoded answer; its interpretation is `predicate_verdict`."""
        out = await self.send("predicate", {"task": task, "node": node}, task=_tkey(task), node=node["Name"])
        status = _field(out, "status", "")
        code = _field(out, "code", 0)
        if not isinstance(status, str) or not isinstance(code, int) or isinstance(code, bool):
            raise ExtenderError(f"predicate: cannot decode {out!r} into PredicateResponse")
        return out  # type: ignore[no-any-return]

    async def prioritize(self, task: Obj, nodes: Sequence[Obj]) -> Obj:
        out = await self.send("prioritize", {"task": task, "nodes": list(nodes)}, task=_tkey(task))
        scores = _field(out, "nodeScore", None)
        if scores is not None and (
            not isinstance(scores, dict) or not all(isinstance(v, int | float) for v in scores.values())
        ):
            raise ExtenderError(f"prioritize: cannot decode {out!r} into PrioritizeResponse")
        return out  # type: ignore[no-any-return]

    async def allocate(self, task: Obj) -> Obj:
        return await self._event("allocate", task)

    async def deallocate(self, task: Obj) -> Obj:
        return await self._event("deallocate", task)

    async def _event(self, verb: str, task: Obj) -> Obj:
        out = await self.send(verb, {"task": task}, task=_tkey(task), node=task.get("NodeName", ""))
        if not isinstance(_field(out, "errorMessage", ""), str):
            raise ExtenderError(f"{verb}: cannot decode {out!r} into EventHandlerResponse")
        return out  # type: ignore[no-any-return]

    async def job_ready(self, job: Obj) -> bool:
        """ssn.JobReady's extender part (only when the `jobReady` verb is registered)."""
        try:
            out = await self.send("jobReady", {"job": job})
        except ExtenderError:
            return not self.ignorable  # Volcano: a non-ignorable error declares the job ready (sic)
        return bool(_field(out, "status", False))

    # --- Volcano's interpretation ---------------------------------------------------------------

    @staticmethod
    def predicate_verdict(answer: Obj | str) -> tuple[bool, int, str]:
        """(passes, code, reason) under PredicateForAllocateAction."""
        if isinstance(answer, str):  # transport error, not ignorable: api.NewFitError → code Error
            return False, ERROR, answer
        status = _field(answer, "status", "") or ""
        if status == "":
            return True, SUCCESS, ""
        code = _field(answer, "code", 0) or ERROR  # code 0 with a reason is rewritten to Error
        return code not in REJECTING_CODES, code, status

    async def _predicate_safe(self, task: Obj, node: Obj) -> Obj | str:
        try:
            return await self.predicate(task, node)
        except ExtenderError as exc:
            if self.ignorable:
                return {"status": "", "code": 0}
            return str(exc)

    # --- one session ----------------------------------------------------------------------------

    async def schedule_job(
        self,
        tasks: Sequence[Obj],
        nodes: Sequence[Obj],
        min_available: int | None = None,
        *,
        existing_pods: Sequence[Obj] = (),
        name: str = "job",
        open_session: bool = True,
        close_session: bool = True,
    ) -> JobResult:
        """One session with one gang job (`min_available` defaults to all its tasks)."""
        job = Job(name, list(tasks), len(tasks) if min_available is None else min_available)
        return (
            await self.schedule(
                [job], nodes, existing_pods=existing_pods, open_session=open_session, close_session=close_session
            )
        )[0]

    async def schedule(
        self,
        jobs: Sequence[Job],
        nodes: Sequence[Obj],
        *,
        existing_pods: Sequence[Obj] = (),
        open_session: bool = True,
        close_session: bool = True,
    ) -> list[JobResult]:
        """One session of the allocate action over several jobs, in order."""
        pods_by_node: dict[str, list[Obj]] = {}
        for pod in existing_pods:
            node_name = (pod.get("spec") or {}).get("nodeName")
            if node_name and pod_status(pod) not in (SUCCEEDED, FAILED):
                pods_by_node.setdefault(node_name, []).append(pod)
        session_tasks: dict[str, list[Obj]] = {}  # node -> TaskInfos allocated in this session
        generation = {n["metadata"]["name"]: 1 for n in nodes}

        def snapshot(n: Obj) -> Obj:
            nm = n["metadata"]["name"]
            return node_info(n, pods_by_node.get(nm, ()), tasks=session_tasks.get(nm, ()), generation=generation[nm])

        skipped = False
        if open_session and "onSessionOpen" in self.verbs:
            job_infos = [
                job_info(j.name, [task_info(p) for p in j.pods], namespace=j.namespace, min_available=j.min_available)
                for j in jobs
            ]
            try:
                await self.open_session(session_open_payload(job_infos, [snapshot(n) for n in nodes]))
            except ExtenderError:
                # Not ignorable: the plugin registers none of its callbacks, the extender is skipped for the
                # whole session (Volcano then places GPU pods without it; this driver models only the
                # extender, so it places nothing). onSessionClose is still sent.
                skipped = not self.ignorable
        results = []
        try:
            for job in jobs:
                if skipped:
                    reason = "extender skipped: onSessionOpen failed"
                    results.append(
                        JobResult(job.name, [TaskResult(_task_key(p), _uid(p), reason=reason) for p in job.pods],
                                  job.min_available)
                    )  # fmt: skip
                else:
                    results.append(await self._allocate_job(job, nodes, snapshot, session_tasks, generation))
        finally:
            if close_session and "onSessionClose" in self.verbs:
                with contextlib.suppress(ExtenderError):  # only logged by Volcano
                    await self.close_session()
        return results

    async def _allocate_job(
        self,
        job: Job,
        nodes: Sequence[Obj],
        snapshot: Any,
        session_tasks: dict[str, list[Obj]],
        generation: dict[str, int],
    ) -> JobResult:
        results: list[TaskResult] = []
        allocated: list[tuple[TaskResult, Obj]] = []  # (result, allocated TaskInfo), in order
        sem = asyncio.Semaphore(self.concurrency)
        for pod in job.pods:
            task = task_info(pod)
            res = TaskResult(_task_key(pod), task["UID"])
            results.append(res)
            candidates, fit_errors = [], {}
            for n in nodes:
                info = snapshot(n)
                if self.resource_check:
                    ok, why = _resource_of(task["InitResreq"]).fits_in(_resource_of(info["Idle"]))
                    if not ok:
                        fit_errors[info["Name"]] = why
                        continue
                candidates.append(info)

            async def one(info: Obj, task: Obj = task) -> tuple[str, Obj | str]:
                async with sem:
                    return info["Name"], await self._predicate_safe(task, info)

            passed: list[Obj] = []
            if "predicate" in self.verbs:
                answers = await asyncio.gather(*(one(info) for info in candidates))
                for info, (node_name, answer) in zip(candidates, answers, strict=True):
                    res.predicates[node_name] = answer
                    ok, _, why = self.predicate_verdict(answer)
                    if ok:
                        passed.append(info)
                    else:
                        fit_errors[node_name] = why
            else:
                passed = candidates
            if not passed:
                res.reason = "; ".join(f"{k}: {v}" for k, v in fit_errors.items()) or "no nodes"
                continue
            best = passed[0]
            if len(passed) > 1 and "prioritize" in self.verbs:
                prio: Obj | None = None
                err = ""
                try:
                    prio = await self.prioritize(task, passed)
                except ExtenderError as exc:
                    err = str(exc)
                    if self.ignorable:
                        prio = {"nodeScore": {}, "errorMessage": ""}
                if prio is None or _field(prio, "errorMessage", "") or _field(prio, "nodeScore", None) is None:
                    # util.PrioritizeNodes → empty map → SelectBestNode returns nil: skipped this cycle.
                    why = err if prio is None else (_field(prio, "errorMessage", "") or "nodeScore is null")
                    res.reason = f"prioritize failed: {why}"
                    continue
                scores = {k: float(v) for k, v in _field(prio, "nodeScore", {}).items()}
                res.scores = scores
                top = max(scores.get(n["Name"], 0.0) for n in passed)
                best = next(n for n in passed if scores.get(n["Name"], 0.0) == top)
            node_name = best["Name"]
            # Statement.Allocate: Pod.Spec.NodeName, NodeName, Status=Allocated, node.AddTask, AllocateFuncs.
            alloc_task = task_info(pod, node_name=node_name, status=ALLOCATED)
            err = ""
            if "allocate" in self.verbs:
                try:
                    answer = await self.allocate(alloc_task)
                    err = _field(answer, "errorMessage", "") or ""
                except ExtenderError as exc:
                    err = "" if self.ignorable else str(exc)
            if err:
                # The deferred unallocate: every DeallocateFunc, Status=Pending, NodeName still set.
                res.allocate_error = err
                res.reason = f"allocate failed: {err}"
                await self._deallocate_quiet(task_info(pod, node_name=node_name, status=PENDING))
                continue
            res.tentative_node = node_name
            session_tasks.setdefault(node_name, []).append(alloc_task)
            generation[node_name] += 1
            allocated.append((res, alloc_task))

        ready = len(allocated) >= job.min_available
        if ready and "jobReady" in self.verbs:
            ready = await self.job_ready(
                job_info(job.name, [t for _, t in allocated], namespace=job.namespace, min_available=job.min_available)
            )
        if ready:
            for res, alloc_task in allocated:
                res.node = alloc_task["NodeName"]
        else:
            # Statement.Discard: unallocate in reverse order.
            for res, alloc_task in reversed(allocated):
                node_name = alloc_task["NodeName"]
                session_tasks[node_name] = [t for t in session_tasks[node_name] if t["UID"] != alloc_task["UID"]]
                generation[node_name] += 1
                await self._deallocate_quiet(task_info(_pod_of(alloc_task), node_name=node_name, status=PENDING))
                res.reason = f"gang: {len(allocated)}/{job.min_available} tasks allocatable, job not ready"
        return JobResult(job.name, results, job.min_available, ready)

    async def _deallocate_quiet(self, task: Obj) -> None:
        if "deallocate" in self.verbs:
            with contextlib.suppress(ExtenderError):  # event.Err is ignored on the unallocate path
                await self.deallocate(task)


def _field(obj: Any, name: str, default: Any) -> Any:
    """Go's case-insensitive key match (an exact match wins)."""
    if not isinstance(obj, dict):
        return default
    if name in obj:
        return obj[name]
    lower = name.lower()
    return next((v for k, v in obj.items() if k.lower() == lower), default)


def _tkey(task: Obj) -> str:
    return f"{task.get('Namespace', '')}/{task.get('Name', '')}"


def _uid(pod: Obj) -> str:
    return str((pod.get("metadata") or {}).get("uid", ""))


def _pod_of(task: Obj) -> Obj:
    pod = copy.deepcopy(task["Pod"])
    pod.get("spec", {}).pop("nodeName", None)
    return pod  # type: ignore[no-any-return]


# --- after the session: the async binder --------------------------------------------------------


async def bind(
    api: FakeKubeApi,
    result: JobResult | Iterable[JobResult] | Mapping[str, str],
    *,
    via: str = "binding",
) -> list[str]:
    """Bind the committed tasks (`task key -> node`) like cache.DefaultBinder: POST pods/binding over
    HTTP (`via="binding"`) or a merge patch of spec.nodeName (`via="patch"`). Returns the keys bound;
    a failed bind is left unbound (Volcano never tells the extender)."""
    if isinstance(result, JobResult):
        placements = result.placements
    elif isinstance(result, Mapping):
        placements = dict(result)
    else:
        placements = {k: v for r in result for k, v in r.placements.items()}
    done = []
    async with aiohttp.ClientSession() as http:
        for key, node in placements.items():
            ns, _, name = key.partition("/")
            if via == "binding":
                body = {
                    "apiVersion": "v1",
                    "kind": "Binding",
                    "metadata": {"name": name, "namespace": ns},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": node},
                }
                url = f"{api.url}/api/v1/namespaces/{ns}/pods/{name}/binding"
                async with http.post(url, json=body) as resp:
                    ok = resp.status in (200, 201)
            else:
                url = f"{api.url}/api/v1/namespaces/{ns}/pods/{name}"
                async with http.patch(
                    url,
                    data=json.dumps({"spec": {"nodeName": node}}),
                    headers={"Content-Type": "application/merge-patch+json"},
                ) as resp:
                    ok = resp.status == 200
            if ok:
                done.append(key)
    return done


def start_pod(api: FakeKubeApi, namespace: str, name: str, *, bind_phase: str | None = "success") -> Obj:
    """What the node does after a bind: the device plugin marks `volcano.sh/bind-phase`, the kubelet
    sets the pod Running."""
    patch: Obj = {"status": {"phase": "Running"}}
    if bind_phase is not None:
        patch["metadata"] = {"annotations": {"volcano.sh/bind-phase": bind_phase}}
    return api.patch("pods", namespace, name, patch)
