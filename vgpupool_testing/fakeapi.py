"""In-memory fake Kubernetes API server for tests (test equipment, not product code).

It speaks the real REST/JSON protocol over HTTP so the real ``kubernetes_asyncio`` client can talk
to it, and exposes a direct Python API to seed/mutate state plus fault-injection knobs::

    async with FakeKubeApi() as api:
        api.create("nodes", {"metadata": {"name": "n1"}})
        client = await api.new_client()          # kubernetes_asyncio ApiClient
        ...

Everything runs on the caller's asyncio loop; the Python API must be called from that loop's thread.
Resources are described by the ``KINDS`` table, so adding one (even from another API group) is a
single ``KindInfo`` entry.  Deliberate simplifications: no auth/admission/validation, list snapshots
are always "now" (``resourceVersion`` on list/get is ignored), strategic merge patch knows merge
keys by field name only, and deletes are immediate unless the object carries finalizers.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import random
import re
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from aiohttp import web

Obj = dict[str, Any]


@dataclass(frozen=True)
class KindInfo:
    plural: str
    kind: str
    group_version: str = "v1"
    namespaced: bool = True
    subresources: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")

    @property
    def prefix(self) -> str:
        return "/api/v1" if self.group_version == "v1" else f"/apis/{self.group_version}"


KINDS: tuple[KindInfo, ...] = (
    KindInfo("pods", "Pod", subresources=("status", "binding")),
    KindInfo("nodes", "Node", namespaced=False, subresources=("status",)),
    KindInfo("namespaces", "Namespace", namespaced=False, subresources=("status",)),
    KindInfo("configmaps", "ConfigMap"),
    KindInfo("secrets", "Secret"),
    KindInfo("events", "Event"),
    KindInfo("leases", "Lease", "coordination.k8s.io/v1"),
)

_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class FakeApiError(Exception):
    """An API failure; rendered over HTTP as a k8s ``Status`` object."""

    def __init__(self, code: int, message: str, reason: str | None = None, details: Obj | None = None):
        super().__init__(message)
        self.code, self.message = code, message
        self.reason = reason or _REASONS.get(code, "Unknown")
        self.details = details

    def status(self) -> Obj:
        st: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            st["details"] = self.details
        return st

    def response(self) -> web.Response:
        headers = {"Retry-After": "1"} if self.code == 429 else None
        return web.json_response(self.status(), status=self.code, headers=headers)


def _not_found(kind: KindInfo, name: str) -> FakeApiError:
    return FakeApiError(404, f'{kind.plural} "{name}" not found', details={"name": name, "kind": kind.plural})


def _conflict(
    kind: KindInfo,
    name: str,
    why: str = "the object has been modified; please apply your changes to the latest version and try again",
) -> FakeApiError:
    return FakeApiError(
        409,
        f'Operation cannot be fulfilled on {kind.plural} "{name}": {why}',
        details={"name": name, "kind": kind.plural},
    )


def _truthy(v: str | None) -> bool:
    return (v or "").lower() in ("true", "1")  # kubernetes_asyncio sends Python's "True"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------------
# Selectors


def _split_top(sel: str) -> list[str]:
    """Split on commas that are not inside ``in (a,b)`` parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in sel:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


_LABEL_RE = re.compile(r"^(!?)\s*([\w./-]+)\s*(?:(==|=|!=)\s*([\w.-]*)|\s+(in|notin)\s*\(([^)]*)\))?$")


def _dig(obj: Any, dotted: str) -> str:
    for part in dotted.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    if isinstance(obj, bool):
        return str(obj).lower()
    return "" if obj is None else str(obj)


class Selector:
    """Namespace + labelSelector + fieldSelector, evaluated against a stored object."""

    def __init__(self, namespace: str | None = None, labels: str | None = None, fields: str | None = None):
        self.namespace = namespace
        self.label_reqs: list[tuple[str, str, frozenset[str]]] = []
        for part in _split_top(labels or ""):
            m = _LABEL_RE.match(part)
            if not m or (m[1] and (m[3] or m[5])):
                raise FakeApiError(400, f"unable to parse requirement: {part!r}")
            neg, key, op, val, setop, vals = m.groups()
            if setop:
                self.label_reqs.append((setop, key, frozenset(v.strip() for v in vals.split(","))))
            else:
                self.label_reqs.append(("!" if neg else (op or "exists"), key, frozenset([val or ""])))
        self.field_reqs: list[tuple[str, str, str]] = []
        for part in _split_top(fields or ""):
            m = re.match(r"^([\w.]+)\s*(==|=|!=)\s*(.*)$", part)
            if not m:
                raise FakeApiError(400, f"invalid field selector: {part!r}")
            self.field_reqs.append((m[1], "!=" if m[2] == "!=" else "=", m[3]))

    def matches(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        labels = meta.get("labels") or {}
        for op, key, vals in self.label_reqs:
            present, val = key in labels, labels.get(key)
            ok = {
                "=": present and val in vals,
                "==": present and val in vals,
                "in": present and val in vals,
                "!=": val not in vals,
                "notin": val not in vals,  # absent keys satisfy != / notin
                "exists": present,
                "!": not present,
            }[op]
            if not ok:
                return False
        return all((_dig(obj, path) == want) == (op == "=") for path, op, want in self.field_reqs)


# ---------------------------------------------------------------------------------------------------
# Patches


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (null deletes keys, lists are replaced)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


# Merge keys of the list fields we care about (the apiserver derives these from Go struct tags).
_SMP_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "conditions": "type",
    "imagePullSecrets": "name",
    "ownerReferences": "uid",
    "addresses": "type",
}
_SMP_PRIMITIVE_MERGE = {"finalizers"}  # lists of scalars merged as a union


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Merge patch plus list merging by key, ``$patch: delete|replace`` and ``$deleteFromPrimitiveList``."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    result = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if k.startswith("$deleteFromPrimitiveList/"):
            name = k.split("/", 1)[1]
            result[name] = [x for x in result.get(name) or [] if x not in v]
        elif k.startswith("$"):  # $setElementOrder/..., $retainKeys, $patch: ordering hints we ignore
            continue
        elif v is None:
            result.pop(k, None)
        elif isinstance(v, list) and k in _SMP_PRIMITIVE_MERGE:
            cur = list(result.get(k) or [])
            result[k] = cur + [x for x in v if x not in cur]
        elif isinstance(v, list) and k in _SMP_MERGE_KEYS:
            result[k] = _merge_keyed_list(result.get(k) or [], v, _SMP_MERGE_KEYS[k])
        else:
            result[k] = strategic_merge_patch(result.get(k), v)
    return result


def _merge_keyed_list(cur: list[Any], patch: list[Any], key: str) -> list[Any]:
    out = list(cur)
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            out.append(copy.deepcopy(item))
            continue
        idx = next((i for i, o in enumerate(out) if isinstance(o, dict) and o.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                del out[idx]
        elif idx is None:
            out.append({k: copy.deepcopy(v) for k, v in item.items() if k != "$patch"})
        else:
            out[idx] = strategic_merge_patch(out[idx], item)
    return out


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise FakeApiError(422, f"invalid JSON pointer {path!r}")
    # "~1" must be decoded before "~0" (RFC 6901) so "~01" becomes "~1", not "/".
    return [t.replace("~1", "/").replace("~0", "~") for t in path.split("/")[1:]]


def _index(container: list[Any], token: str, allow_end: bool = False) -> int:
    if token == "-" and allow_end:
        return len(container)
    if not token.isdigit() or (len(token) > 1 and token[0] == "0"):
        raise FakeApiError(422, f"invalid array index {token!r}")
    i = int(token)
    if i > len(container) or (i == len(container) and not allow_end):
        raise FakeApiError(422, f"array index {i} out of bounds")
    return i


def _walk(doc: Any, tokens: list[str]) -> Any:
    for t in tokens:
        if isinstance(doc, dict) and t in doc:
            doc = doc[t]
        elif isinstance(doc, list):
            doc = doc[_index(doc, t)]
        else:
            raise FakeApiError(422, f"path /{'/'.join(tokens)} does not exist")
    return doc


def _json_eq(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):  # Python has True == 1; JSON does not
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_eq(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_eq(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902 JSON patch; any failure (including a failed ``test``) is a 422."""
    if not isinstance(ops, list):
        raise FakeApiError(400, "json patch must be a JSON array of operations")
    doc = copy.deepcopy(doc)

    def add(doc: Any, tokens: list[str], value: Any) -> Any:
        if not tokens:
            return value
        parent = _walk(doc, tokens[:-1])
        if isinstance(parent, list):
            parent.insert(_index(parent, tokens[-1], allow_end=True), value)
        elif isinstance(parent, dict):
            parent[tokens[-1]] = value
        else:
            raise FakeApiError(422, "cannot add to a scalar")
        return doc

    def remove(doc: Any, tokens: list[str]) -> Any:
        if not tokens:
            raise FakeApiError(422, "cannot remove the document root")
        parent = _walk(doc, tokens[:-1])
        if isinstance(parent, list):
            return parent.pop(_index(parent, tokens[-1]))
        if isinstance(parent, dict) and tokens[-1] in parent:
            return parent.pop(tokens[-1])
        raise FakeApiError(422, f"path /{'/'.join(tokens)} does not exist")

    for op in ops:
        if not isinstance(op, dict):
            raise FakeApiError(400, "json patch operation must be an object")
        kind, path = op.get("op"), _pointer(op.get("path"))
        if kind in ("add", "replace", "test") and "value" not in op:
            raise FakeApiError(422, f"{kind} operation missing value")
        if kind == "add":
            doc = add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "remove":
            remove(doc, path)
        elif kind == "replace":
            if path:
                remove(doc, path)  # replace = remove + add, and the target must exist
            doc = add(doc, path, copy.deepcopy(op["value"]))
        elif kind in ("move", "copy"):
            src = _pointer(op.get("from"))
            value = remove(doc, src) if kind == "move" else copy.deepcopy(_walk(doc, src))
            doc = add(doc, path, value)
        elif kind == "test":
            if not _json_eq(_walk(doc, path), op["value"]):
                raise FakeApiError(422, f"testing value {op.get('path')} failed")
        else:
            raise FakeApiError(422, f"unsupported json patch op {kind!r}")
    return doc


_PATCHERS = {
    "application/merge-patch+json": merge_patch,
    "application/strategic-merge-patch+json": strategic_merge_patch,
    "application/json-patch+json": json_patch,
}
_PATCH_TYPES = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
}


# ---------------------------------------------------------------------------------------------------
# Server


class RecordedRequest(NamedTuple):
    method: str
    path: str
    query: dict[str, str]
    verb: str  # k8s verb: get/list/watch/create/update/patch/delete/deletecollection, "" for non-resource
    resource: str  # "pods", "pods/status", "" for non-resource paths
    content_type: str
    body: Any


@dataclass
class _Event:
    rv: int
    kind: KindInfo
    type: str
    obj: Obj  # state after the change (for DELETED: the last state, with the deletion's RV)
    old: Obj | None  # state before the change, needed to translate selector transitions


@dataclass(eq=False)
class _Watcher:
    kind: KindInfo
    selector: Selector
    request: web.Request
    bookmarks: bool
    queue: asyncio.Queue[_Event | str] = field(default_factory=asyncio.Queue)


_END, _BOOKMARK = "end", "bookmark"  # queue sentinels


@dataclass
class _Fault:
    remaining: int
    status: int
    verbs: frozenset[str] | None
    path_contains: str | None


class FakeKubeApi:
    def __init__(
        self, kinds: tuple[KindInfo, ...] = KINDS, max_history: int = 1000, bookmark_interval: float | None = None
    ):
        self.kinds = kinds
        self._by_name: dict[str, KindInfo] = {}
        for k in kinds:
            for alias in (k.plural, k.kind.lower(), f"{k.plural}.{k.group_version.split('/')[0]}"):
                self._by_name.setdefault(alias, k)
        self._store: dict[KindInfo, dict[tuple[str, str], Obj]] = {k: {} for k in kinds}
        self._rv = 0
        self._history: deque[_Event] = deque()
        self.max_history = max_history
        self._compacted_rv = 0  # watches must start at an RV >= this (newer events are all in history)
        self.bookmark_interval = bookmark_interval  # periodic BOOKMARKs for allowWatchBookmarks watches
        self._watchers: set[_Watcher] = set()
        self._faults: list[_Fault] = []
        self._delays: dict[str | None, float] = {}
        self._patch_conflicts = 0
        self.requests: list[RecordedRequest] = []
        self.counts: Counter[tuple[str, str]] = Counter()
        self._runner: web.AppRunner | None = None
        self.url = ""

    # -- lifecycle -----------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a client hanging up on a watch cancels the handler (no leaked watcher).
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        self.url = f"http://{bound_host}:{bound_port}"
        return self.url

    async def stop(self) -> None:
        for w in list(self._watchers):
            w.queue.put_nowait(_END)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeKubeApi:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def kubeconfig_dict(self, namespace: str = "default") -> Obj:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "fake",
            "preferences": {},
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
        }

    def write_kubeconfig(self, path: str) -> str:
        with open(path, "w") as f:
            json.dump(self.kubeconfig_dict(), f, indent=2)  # JSON is valid YAML
        return path

    async def new_client(self) -> Any:
        """A ``kubernetes_asyncio.client.ApiClient`` pointed at this server (caller closes it)."""
        from kubernetes_asyncio import config

        return await config.new_client_from_config_dict(self.kubeconfig_dict())

    # -- in-process API (same code path and watch events as HTTP) -----------------------------------

    @property
    def resource_version(self) -> int:
        return self._rv

    def kind(self, name: str) -> KindInfo:
        try:
            return self._by_name[name.lower()]
        except KeyError:
            raise KeyError(f"unknown kind {name!r}") from None

    def create(self, kind: str, obj: Obj) -> Obj:
        return self._create(self.kind(kind), obj, None)

    def get(self, kind: str, namespace: str | None, name: str) -> Obj | None:
        k = self.kind(kind)
        obj = self._store[k].get(((namespace or "") if k.namespaced else "", name))
        return copy.deepcopy(obj) if obj is not None else None

    def update(self, kind: str, obj: Obj) -> Obj:
        """Replace the whole object, status included (409 if it carries a stale resourceVersion)."""
        k, meta = self.kind(kind), obj.get("metadata") or {}
        return self._update(
            k, meta.get("namespace") or ("default" if k.namespaced else ""), meta.get("name", ""), obj, mode="all"
        )

    def patch(self, kind: str, namespace: str | None, name: str, body: Any, patch_type: str = "merge") -> Obj:
        """``patch_type``: merge | strategic | json; patches the whole object, status included."""
        k = self.kind(kind)
        return self._patch(k, namespace or "", name, body, _PATCH_TYPES[patch_type], mode="all")

    def delete(self, kind: str, namespace: str | None, name: str) -> Obj | None:
        k = self.kind(kind)
        try:
            return self._delete(k, namespace or "", name, None)[0]
        except FakeApiError as e:
            if e.code == 404:
                return None
            raise

    def list(
        self,
        kind: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[Obj]:
        k = self.kind(kind)
        sel = Selector(namespace if k.namespaced else None, label_selector, field_selector)
        return [copy.deepcopy(o) for o in self._select(k, sel)]

    # -- fault injection & introspection ----------------------------------------------------------------

    def compact(self) -> None:
        """Forget watch history: watches from any RV older than the current one now get 410 Expired."""
        self._history.clear()
        self._compacted_rv = self._rv

    def drop_watches(self, graceful: bool = False) -> int:
        """End all open watch streams; abruptly (TCP abort) unless ``graceful`` (clean end-of-stream)."""
        for w in list(self._watchers):
            if not graceful and w.request.transport is not None:
                w.request.transport.abort()
            w.queue.put_nowait(_END)
        return len(self._watchers)

    def send_bookmarks(self) -> None:
        """Send a BOOKMARK (current RV) to every watch opened with allowWatchBookmarks=true."""
        for w in self._watchers:
            if w.bookmarks:
                w.queue.put_nowait(_BOOKMARK)

    def fail_next(self, n: int = 1, status: int = 500, verbs: Any = None, path_contains: str | None = None) -> None:
        """Fail the next ``n`` matching requests. ``verbs`` may mix HTTP methods and k8s verbs."""
        vs = frozenset(v.lower() for v in verbs) if verbs else None
        self._faults.append(_Fault(n, status, vs, path_contains))

    def delay(self, seconds: float, path_contains: str | None = None) -> None:
        """Add latency to matching requests until reset (``seconds=0`` removes this rule)."""
        if seconds > 0:
            self._delays[path_contains] = seconds
        else:
            self._delays.pop(path_contains, None)

    def conflict_next_patch(self, n: int = 1) -> None:
        self._patch_conflicts += n

    def reset_faults(self) -> None:
        self._faults.clear()
        self._delays.clear()
        self._patch_conflicts = 0

    def count(self, verb: str | None = None, resource: str | None = None) -> int:
        return sum(
            c
            for (v, r), c in self.counts.items()
            if (verb is None or v == verb) and (resource is None or r == resource)
        )

    @property
    def watcher_count(self) -> int:
        return len(self._watchers)

    async def wait_for_watchers(self, n: int = 1, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self._watchers) < n:
                await asyncio.sleep(0.005)

    # -- core store operations --------------------------------------------------------------------------

    def _select(self, kind: KindInfo, sel: Selector) -> list[Obj]:
        return [o for _, o in sorted(self._store[kind].items()) if sel.matches(o)]

    def _stored(self, kind: KindInfo, ns: str, name: str) -> Obj:
        obj = self._store[kind].get((ns if kind.namespaced else "", name))
        if obj is None:
            raise _not_found(kind, name)
        return obj

    def _commit(self, kind: KindInfo, etype: str, obj: Obj, old: Obj | None) -> Obj:
        """Every write funnels through here: bump the global RV, store, record history, notify watchers."""
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        if etype == "DELETED":
            self._store[kind].pop(key, None)
        else:
            self._store[kind][key] = obj  # stored dicts are never mutated in place after this
        ev = _Event(self._rv, kind, etype, copy.deepcopy(obj), old)
        self._history.append(ev)
        while len(self._history) > self.max_history:
            self._compacted_rv = self._history.popleft().rv
        for w in self._watchers:
            if w.kind is kind:
                w.queue.put_nowait(ev)
        return copy.deepcopy(obj)

    @staticmethod
    def _normalize(kind: KindInfo, obj: Obj) -> None:
        obj["kind"], obj["apiVersion"] = kind.kind, kind.group_version
        if kind.kind == "Secret" and "stringData" in obj:  # the apiserver folds stringData into data
            data = obj.setdefault("data", {}) or {}
            for k, v in (obj.pop("stringData") or {}).items():
                data[k] = base64.b64encode(str(v).encode()).decode()
            obj["data"] = data

    def _create(self, kind: KindInfo, obj: Obj, url_ns: str | None) -> Obj:
        if not isinstance(obj, dict):
            raise FakeApiError(400, "request body must be a JSON object")
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if kind.namespaced:
            if url_ns and meta.get("namespace") and meta["namespace"] != url_ns:
                raise FakeApiError(
                    400, "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = url_ns or meta.get("namespace") or "default"
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise FakeApiError(422, f"{kind.kind} is invalid: metadata.name: Required value")
            meta["name"] = meta["generateName"] + "".join(random.choices("bcdfghjklmnpqrstvwxz2456789", k=5))
        if (meta.get("namespace", ""), meta["name"]) in self._store[kind]:
            raise FakeApiError(
                409,
                f'{kind.plural} "{meta["name"]}" already exists',
                "AlreadyExists",
                {"name": meta["name"], "kind": kind.plural},
            )
        for server_owned in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(server_owned, None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        self._normalize(kind, obj)
        return self._commit(kind, "ADDED", obj, None)

    def _update(self, kind: KindInfo, ns: str, name: str, obj: Any, mode: str) -> Obj:
        if not isinstance(obj, dict):
            raise FakeApiError(400, "request body must be a JSON object")
        cur = self._stored(kind, ns, name)
        meta = obj.get("metadata") or {}
        if meta.get("name") and meta["name"] != name:
            raise FakeApiError(400, "the name of the object does not match the name on the URL")
        if meta.get("resourceVersion") and meta["resourceVersion"] != cur["metadata"]["resourceVersion"]:
            raise _conflict(kind, name)
        return self._replace(kind, cur, copy.deepcopy(obj), mode)

    def _patch(self, kind: KindInfo, ns: str, name: str, body: Any, content_type: str, mode: str) -> Obj:
        patcher = _PATCHERS.get(content_type)
        if patcher is None:
            raise FakeApiError(
                415,
                f"the body of the request was in an unknown format - "
                f"accepted media types include: {', '.join(_PATCHERS)}",
            )
        if patcher is not json_patch and not isinstance(body, dict):
            raise FakeApiError(400, "merge patch body must be a JSON object")
        cur = self._stored(kind, ns, name)
        new = copy.deepcopy(patcher(copy.deepcopy(cur), body))
        if not isinstance(new, dict):
            raise FakeApiError(422, "patched object is not a JSON object")
        # A resourceVersion/uid left in the patched object acts as a precondition, as in the apiserver.
        nmeta, cmeta = new.get("metadata") or {}, cur["metadata"]
        if nmeta.get("resourceVersion") not in (None, cmeta["resourceVersion"]):
            raise _conflict(kind, name)
        if nmeta.get("uid") not in (None, cmeta["uid"]):
            raise _conflict(kind, name, "Precondition failed: UID in precondition does not match object")
        return self._replace(kind, cur, new, mode)

    def _replace(self, kind: KindInfo, cur: Obj, new: Obj, mode: str) -> Obj:
        """Apply an update. mode: "main" (HTTP main resource: status is kept), "status" (only status
        changes, like the /status subresource), "all" (in-process god mode)."""
        cmeta = cur["metadata"]
        if mode == "status":
            status, new = new.get("status"), copy.deepcopy(cur)
            if status is None:
                new.pop("status", None)
            else:
                new["status"] = status
        else:
            meta = new.setdefault("metadata", {})
            for owned in (
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
            ):  # immutable or server-owned
                if owned in cmeta:
                    meta[owned] = cmeta[owned]
                else:
                    meta.pop(owned, None)
            if mode == "main" and "status" in kind.subresources:
                if "status" in cur:
                    new["status"] = copy.deepcopy(cur["status"])
                else:
                    new.pop("status", None)
            self._normalize(kind, new)
            spec_keys = (set(new) | set(cur)) - {"metadata", "status", "kind", "apiVersion"}
            spec_changed = any(new.get(k) != cur.get(k) for k in spec_keys)
            meta["generation"] = cmeta.get("generation", 1) + (1 if spec_changed else 0)
        new["metadata"]["resourceVersion"] = cmeta["resourceVersion"]
        if new == cur:  # no-op writes neither bump the RV nor emit watch events, like the apiserver
            return copy.deepcopy(cur)
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            return self._commit(kind, "DELETED", new, cur)  # last finalizer removed: now really gone
        return self._commit(kind, "MODIFIED", new, cur)

    def _delete(self, kind: KindInfo, ns: str, name: str, options: Obj | None) -> tuple[Obj, bool]:
        """Returns (object, deleted_now)."""
        cur = self._stored(kind, ns, name)
        pre = (options or {}).get("preconditions") or {}
        if pre.get("resourceVersion") not in (None, cur["metadata"]["resourceVersion"]):
            raise _conflict(kind, name, "Precondition failed: ResourceVersion in precondition does not match")
        if pre.get("uid") not in (None, cur["metadata"]["uid"]):
            raise _conflict(kind, name, "Precondition failed: UID in precondition does not match")
        if cur["metadata"].get("finalizers"):  # finalizers pending: mark for deletion instead
            if cur["metadata"].get("deletionTimestamp"):
                return copy.deepcopy(cur), False
            new = copy.deepcopy(cur)
            new["metadata"].update(deletionTimestamp=_now(), deletionGracePeriodSeconds=0)
            return self._commit(kind, "MODIFIED", new, cur), False
        return self._commit(kind, "DELETED", copy.deepcopy(cur), cur), True

    def _bind(self, ns: str, name: str, body: Any) -> None:
        pods = self.kind("pods")
        node = ((body or {}).get("target") or {}).get("name")
        if not node:
            raise FakeApiError(422, "Binding is invalid: target.name: Required value")
        cur = self._stored(pods, ns, name)
        if (cur.get("spec") or {}).get("nodeName"):
            raise _conflict(pods, name, f'pod {name} is already assigned to node "{cur["spec"]["nodeName"]}"')
        new = copy.deepcopy(cur)
        new.setdefault("spec", {})["nodeName"] = node
        status = new.setdefault("status", {})
        status["conditions"] = _merge_keyed_list(
            status.get("conditions") or [],
            [{"type": "PodScheduled", "status": "True", "lastTransitionTime": _now()}],
            "type",
        )
        self._replace(pods, cur, new, "all")

    # -- HTTP ----------------------------------------------------------------------------------------------

    def _route(self, path: str) -> tuple[KindInfo, str | None, str | None, str | None] | Obj:
        """Map a URL to (kind, namespace, name, subresource), or return a discovery document."""
        if path in ("/healthz", "/readyz", "/livez"):
            return {"ok": True}
        if path == "/version":
            return {
                "major": "1",
                "minor": "30",
                "gitVersion": "v1.30.0-fake",
                "gitCommit": "fake",
                "gitTreeState": "clean",
                "buildDate": "2024-01-01T00:00:00Z",
                "goVersion": "go1.22",
                "compiler": "gc",
                "platform": "linux/amd64",
            }
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if path == "/apis":
            gvs = sorted({k.group_version for k in self.kinds if k.group_version != "v1"})
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [
                    {
                        "name": gv.split("/")[0],
                        "versions": [{"groupVersion": gv, "version": gv.split("/")[1]}],
                        "preferredVersion": {"groupVersion": gv, "version": gv.split("/")[1]},
                    }
                    for gv in gvs
                ],
            }
        m = re.fullmatch(r"/api/(v1)(?:/(.*))?", path) or re.fullmatch(r"/apis/([^/]+/[^/]+)(?:/(.*))?", path)
        if not m:
            raise FakeApiError(404, "the server could not find the requested resource")
        gv, rest = m[1], m[2]
        if not rest:
            return self._discovery(gv)
        segs, ns = rest.split("/"), None
        if segs[0] == "namespaces" and len(segs) >= 3 and not (len(segs) == 3 and segs[2] in ("status", "finalize")):
            ns, segs = segs[1], segs[2:]
        kind = next((k for k in self.kinds if k.group_version == gv and k.plural == segs[0]), None)
        if (
            kind is None
            or len(segs) > 3
            or (ns is not None and not kind.namespaced)
            or (len(segs) == 3 and segs[2] not in kind.subresources)
        ):
            raise FakeApiError(404, "the server could not find the requested resource")
        return kind, ns, segs[1] if len(segs) > 1 else None, segs[2] if len(segs) > 2 else None

    def _discovery(self, gv: str) -> Obj:
        resources: list[Obj] = []
        for k in self.kinds:
            if k.group_version != gv:
                continue
            resources.append(
                {
                    "name": k.plural,
                    "singularName": k.kind.lower(),
                    "namespaced": k.namespaced,
                    "kind": k.kind,
                    "verbs": list(k.verbs),
                }
            )
            for sub in k.subresources:
                verbs = ["create"] if sub == "binding" else ["get", "patch", "update"]
                resources.append(
                    {
                        "name": f"{k.plural}/{sub}",
                        "singularName": "",
                        "namespaced": k.namespaced,
                        "kind": "Binding" if sub == "binding" else k.kind,
                        "verbs": verbs,
                    }
                )
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}

    @staticmethod
    def _verb(method: str, name: str | None, query: dict[str, str]) -> str:
        if method == "GET":
            return "get" if name else ("watch" if _truthy(query.get("watch")) else "list")
        if method == "DELETE" and not name:
            return "deletecollection"
        verbs = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
        return verbs.get(method, method.lower())

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path, query, method = request.path.rstrip("/") or "/", dict(request.query), request.method
        raw = await request.read()
        body: Any = None
        try:
            body = json.loads(raw) if raw else None
            body_error = None
        except ValueError:
            body_error = FakeApiError(400, "request body is not valid JSON")
        try:
            route: Any = self._route(path)
        except FakeApiError as e:
            route = e
        verb, resource = "", ""
        if isinstance(route, tuple):
            verb = self._verb(method, route[2], query)
            resource = route[0].plural + (f"/{route[3]}" if route[3] else "")
        self.requests.append(RecordedRequest(method, path, query, verb, resource, request.content_type, body))
        self.counts[(verb, resource)] += 1

        wait = sum(s for p, s in self._delays.items() if p is None or p in path)
        if wait:
            await asyncio.sleep(wait)
        for f in self._faults:
            if (
                f.remaining > 0
                and (f.verbs is None or f.verbs & {method.lower(), verb})
                and (f.path_contains is None or f.path_contains in request.path_qs)
            ):
                f.remaining -= 1
                return FakeApiError(f.status, f"injected fault ({f.status})").response()
        self._faults = [f for f in self._faults if f.remaining > 0]
        try:
            if isinstance(route, FakeApiError):
                raise route
            if isinstance(route, dict):
                if method != "GET":
                    raise FakeApiError(405, "method not allowed")
                return web.json_response(route)
            if body_error is not None:
                raise body_error
            if method == "PATCH" and self._patch_conflicts > 0:
                self._patch_conflicts -= 1
                raise _conflict(route[0], route[2] or "", "injected conflict")
            return await self._dispatch(request, method, verb, query, body, *route)
        except FakeApiError as e:
            return e.response()

    async def _dispatch(
        self,
        request: web.Request,
        method: str,
        verb: str,
        query: dict[str, str],
        body: Any,
        kind: KindInfo,
        ns: str | None,
        name: str | None,
        sub: str | None,
    ) -> web.StreamResponse:
        obj_ns = ns or ""
        if verb in ("list", "watch", "deletecollection"):
            sel = Selector(ns if kind.namespaced else None, query.get("labelSelector"), query.get("fieldSelector"))
            if verb == "watch":
                return await self._watch(request, kind, sel, query)
            if verb == "deletecollection":
                items = [
                    self._delete(kind, o["metadata"].get("namespace", ""), o["metadata"]["name"], body)[0]
                    for o in self._select(kind, sel)
                ]
                return web.json_response(self._list_doc(kind, items, query, paginate=False))
            return web.json_response(self._list_doc(kind, self._select(kind, sel), query))
        if method == "POST":
            if sub == "binding":
                self._bind(obj_ns, name or "", body)
                # The real apiserver answers a binding with a Status, not a Binding.
                return web.json_response(
                    {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}, status=201
                )
            if name or (kind.namespaced and ns is None):
                raise FakeApiError(405, "method not allowed")
            return web.json_response(self._create(kind, body, ns), status=201)
        if name is None:
            raise FakeApiError(405, "method not allowed")
        mode = "status" if sub == "status" else "main"
        if method == "GET":
            return web.json_response(copy.deepcopy(self._stored(kind, obj_ns, name)))
        if method == "PUT":
            return web.json_response(self._update(kind, obj_ns, name, body, mode))
        if method == "PATCH":
            return web.json_response(self._patch(kind, obj_ns, name, body, request.content_type, mode))
        if method == "DELETE":
            obj, gone = self._delete(kind, obj_ns, name, body)
            return web.json_response(obj, status=200 if gone else 202)
        raise FakeApiError(405, "method not allowed")

    def _list_doc(self, kind: KindInfo, items: list[Obj], query: dict[str, str], paginate: bool = True) -> Obj:
        meta: Obj = {"resourceVersion": str(self._rv)}
        if paginate and query.get("continue"):
            try:
                after = tuple(json.loads(base64.urlsafe_b64decode(query["continue"])))
            except ValueError:
                raise FakeApiError(400, "invalid continue token") from None
            items = [o for o in items if (o["metadata"].get("namespace", ""), o["metadata"]["name"]) > after]
        limit = int(query.get("limit") or 0) if paginate else 0
        if limit and len(items) > limit:
            last = items[limit - 1]["metadata"]
            token = json.dumps([last.get("namespace", ""), last["name"]]).encode()
            meta.update(
                {"continue": base64.urlsafe_b64encode(token).decode(), "remainingItemCount": len(items) - limit}
            )
            items = items[:limit]
        # Like the real apiserver, list items carry no kind/apiVersion.
        stripped = [{k: copy.deepcopy(v) for k, v in o.items() if k not in ("kind", "apiVersion")} for o in items]
        return {"kind": f"{kind.kind}List", "apiVersion": kind.group_version, "metadata": meta, "items": stripped}

    @staticmethod
    def _translate(ev: _Event, sel: Selector) -> tuple[str, Obj] | None:
        """Selector-filtered view of an event: objects entering/leaving the selection become ADDED/DELETED."""
        was = ev.old is not None and sel.matches(ev.old)
        now = ev.type != "DELETED" and sel.matches(ev.obj)
        if was and now:
            return ev.type, ev.obj
        if now:
            return "ADDED", ev.obj
        if was:
            return "DELETED", ev.obj
        return None

    async def _watch(
        self, request: web.Request, kind: KindInfo, sel: Selector, query: dict[str, str]
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        rv_param = query.get("resourceVersion") or "0"
        try:
            since = int(rv_param)
            timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        except ValueError:
            raise FakeApiError(400, "invalid resourceVersion or timeoutSeconds") from None

        async def send(etype: str, obj: Obj) -> None:
            await resp.write(json.dumps({"type": etype, "object": obj}).encode() + b"\n")

        if since and since < self._compacted_rv:
            # The apiserver reports an expired watch RV as a 200 stream holding a single ERROR event.
            await resp.prepare(request)
            err = FakeApiError(410, f"too old resource version: {since} ({self._compacted_rv})")
            await send("ERROR", err.status())
            await resp.write_eof()
            return resp

        # Compute the backlog and register in the same synchronous step so no event is missed or doubled.
        if since == 0:  # no RV / "0": synthetic ADDED for the current state, then live events
            backlog = [("ADDED", o) for o in self._select(kind, sel)]
        else:
            backlog = [
                t
                for ev in self._history
                if ev.rv > since and ev.kind is kind
                if (t := self._translate(ev, sel)) is not None
            ]
        w = _Watcher(kind, sel, request, _truthy(query.get("allowWatchBookmarks")))
        self._watchers.add(w)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        try:
            await resp.prepare(request)
            for etype, obj in backlog:
                await send(etype, obj)
            while True:
                wait = None if deadline is None else deadline - loop.time()
                if self.bookmark_interval and w.bookmarks:
                    wait = self.bookmark_interval if wait is None else min(wait, self.bookmark_interval)
                if wait is not None and wait <= 0:
                    break
                try:
                    item = await asyncio.wait_for(w.queue.get(), wait)
                except TimeoutError:
                    if deadline is not None and loop.time() >= deadline:
                        break
                    item = _BOOKMARK
                if item == _END:
                    break
                if item == _BOOKMARK:
                    await send(
                        "BOOKMARK",
                        {
                            "kind": kind.kind,
                            "apiVersion": kind.group_version,
                            "metadata": {"resourceVersion": str(self._rv)},
                        },
                    )
                elif isinstance(item, _Event) and (t := self._translate(item, sel)) is not None:
                    await send(*t)
            await resp.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # client went away or the stream was aborted by drop_watches()
        finally:
            self._watchers.discard(w)
        return resp
