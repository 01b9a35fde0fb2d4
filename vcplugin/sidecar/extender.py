"""What each extender verb does. Wire types live in wire.py; HTTP in server.py."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import OrderedDict
from collections.abc import Callable

from ..core import names
from ..core.request import PodRequest
from ..core.score import node_score
from ..core.types import Assignment, Rejection
from ..kube.client import KubeClient, KubeError, pod_path
from ..kube.objects import Pod
from ..protocol.assignment import assignment_annotations, assignment_patch, release_patch
from . import wire
from .metrics import Metrics, reason_category
from .state import ClusterState, parse_pod_request

log = logging.getLogger("vcplugin.decisions")


class Extender:
    def __init__(
        self,
        state: ClusterState,
        kube: KubeClient | None,
        clock: Callable[[], int],
        metrics: Metrics,
        signing_key: bytes | None = None,
        patch_timeout: float = 0.8,
    ):
        self.state = state
        self.kube = kube
        self.clock = clock
        self.metrics = metrics
        self.signing_key = signing_key
        self.patch_timeout = patch_timeout
        self._requests: OrderedDict[tuple[str, str], PodRequest | str] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[bytes]] = {}

    # --- requests -------------------------------------------------------------------------------

    def request_of(self, task: wire.TaskInfo) -> PodRequest | str:
        """The pod's parsed request, cached by (uid, resourceVersion): Volcano repeats the same pod in
        every predicate of a task."""
        pod = task.pod or Pod()
        if not pod.metadata.uid:
            pod.metadata.uid = task.uid
        if not pod.metadata.namespace:
            pod.metadata.namespace = task.namespace
        if not pod.metadata.name:
            pod.metadata.name = task.name
        key = (pod.metadata.uid, pod.metadata.resource_version)
        cached = self._requests.get(key)
        if cached is None:
            cached = parse_pod_request(pod, self.state.cfg)
            self._requests[key] = cached
            if not isinstance(cached, str) and cached.wants_gpu:
                self.state.observe(cached)
            if len(self._requests) > 4096:
                self._requests.popitem(last=False)
        return cached

    # --- verbs ----------------------------------------------------------------------------------

    def predicate(self, body: wire.PredicateRequest) -> wire.PredicateResponse:
        if body.task is None or body.node is None:
            raise ValueError("predicate needs `task` and `node`")
        req = self.request_of(body.task)
        node_name = body.node.name
        if isinstance(req, str):
            return self._reject("predicate", f"invalid GPU request: {req}", 3)
        if not req.wants_gpu:
            return wire.PredicateResponse()
        state = self.state.node_for(node_name)
        if isinstance(state, Rejection):
            return self._reject("predicate", state.reason, state.code)
        if req.uid in state.pods:
            return wire.PredicateResponse()  # already holds devices here (allocated this session)
        result = state.fit(req, self.state.cfg, check_host=False)
        if isinstance(result, Rejection):
            return self._reject("predicate", result.reason, result.code)
        self.metrics.decisions.labels("predicate", "fit", "").inc()
        return wire.PredicateResponse()

    def _reject(self, verb: str, reason: str, code: int) -> wire.PredicateResponse:
        self.metrics.decisions.labels(verb, "reject", reason_category(reason)).inc()
        return wire.PredicateResponse(status=reason, code=code, errorMessage=reason)

    def prioritize(self, body: wire.PrioritizeRequest) -> wire.PrioritizeResponse:
        if body.task is None:
            raise ValueError("prioritize needs `task`")
        req = self.request_of(body.task)
        scores: dict[str, float] = {}
        policy = req.node_policy if isinstance(req, PodRequest) else None
        frag = (policy or self.state.cfg.node_policy) == names.POLICY_FRAG_PACK and isinstance(req, PodRequest)
        for n in body.nodes or []:
            state = self.state.states.get(n.name)
            if state is None:
                scores[n.name] = 0.0
            elif frag and isinstance(req, PodRequest):
                # frag-pack scores the placement itself: where on the node the pod would go.
                fit = state.fit(req, self.state.cfg, check_host=False, workload=self.state.workload)
                assignment = fit if isinstance(fit, Assignment) else None
                scores[n.name] = node_score(
                    state, self.state.cfg, policy, assignment=assignment, workload=self.state.workload
                )
            else:
                scores[n.name] = node_score(state, self.state.cfg, policy)
        return wire.PrioritizeResponse(nodeScore=scores)

    async def allocate(self, body: wire.EventHandlerRequest) -> wire.EventHandlerResponse:
        task = body.task
        if task is None:
            raise ValueError("allocate needs `task`")
        req = self.request_of(task)
        node_name = task.node_name or (task.pod.spec.node_name if task.pod else "")
        if isinstance(req, str):
            return self._failed("allocate", f"invalid GPU request: {req}")
        if not req.wants_gpu:
            return wire.EventHandlerResponse()
        if not node_name:
            return self._failed("allocate", f"pod {req.key}: allocate without a node name")
        return await self.assign(req, node_name, "allocate")

    def _settled(self, uid: str, node_name: str) -> bool:
        """The pod already holds devices on this node that the node gave out or that are bound there:
        an allocate for it (Volcano un-evicting a running pod) changes nothing."""
        entry = self.state.pods.get(uid)
        if entry is None or entry.holding is None or entry.holding.node != node_name:
            return False
        anns = entry.pod.metadata.annotations
        return anns.get(names.ANNO_BIND_PHASE) == names.BIND_PHASE_SUCCESS or entry.pod.spec.node_name == node_name

    def _patch_done(self, uid: str, task: asyncio.Future[bytes]) -> None:
        if self._inflight.get(uid) is task:
            del self._inflight[uid]
        if not task.cancelled() and task.exception() is not None:
            log.warning("assignment PATCH for pod uid %s failed: %s", uid, task.exception())

    async def assign(self, req: PodRequest, node_name: str, verb: str) -> wire.EventHandlerResponse:
        """Give the pod devices on the node and PATCH the assignment onto it before answering."""
        if self._settled(req.uid, node_name):
            return wire.EventHandlerResponse()
        result = self.state.allocate(req, node_name)
        if isinstance(result, Rejection):
            return self._failed(verb, result.reason)
        annotations = assignment_annotations(req.uid, result, self.state.geometries_of, self.clock(), self.signing_key)
        if self.kube is not None:
            # The PATCH must finish inside Volcano's timeout. On our own deadline the reply says so
            # (Volcano rolls back), but the request is not abandoned: a late PATCH could land after the
            # rollback's removal, so deallocate waits for it first.
            patch = asyncio.ensure_future(
                self.kube.patch(pod_path(req.namespace, req.name), assignment_patch(annotations, result.node))
            )
            self._inflight[req.uid] = patch
            patch.add_done_callback(functools.partial(self._patch_done, req.uid))
            try:
                await asyncio.wait_for(asyncio.shield(patch), self.patch_timeout)
            except (KubeError, OSError, TimeoutError) as exc:
                self.state.deallocate(req.uid)
                self.metrics.patch_failures.labels(verb).inc()
                why = "the API server did not answer in time" if isinstance(exc, TimeoutError) else str(exc)
                return self._failed(verb, f"pod {req.key}: could not record the assignment: {why}")
        self.metrics.decisions.labels(verb, "assigned", "").inc()
        log.info("assigned", extra={"fields": _decision(req, result)})
        return wire.EventHandlerResponse()

    def _failed(self, verb: str, reason: str) -> wire.EventHandlerResponse:
        self.metrics.decisions.labels(verb, "error", reason_category(reason)).inc()
        log.info("not assigned", extra={"fields": {"verb": verb, "reason": reason}})
        return wire.EventHandlerResponse(errorMessage=reason)

    async def deallocate(self, body: wire.EventHandlerRequest) -> wire.EventHandlerResponse:
        task = body.task
        if task is None:
            raise ValueError("deallocate needs `task`")
        uid = task.uid or (task.pod.metadata.uid if task.pod else "")
        inflight = self._inflight.get(uid)
        if inflight is not None:
            with contextlib.suppress(Exception):
                await inflight  # never let an allocate's PATCH land after this removal
        entry = self.state.pods.get(uid)
        cached = entry.pod.metadata.annotations if entry is not None else {}
        if cached.get(names.ANNO_BIND_PHASE) == names.BIND_PHASE_SUCCESS or (entry and entry.pod.spec.node_name):
            # An eviction of a running pod: it keeps its devices until it really terminates.
            return wire.EventHandlerResponse()
        released = self.state.deallocate(uid)
        if released is None and names.ANNO_VGPU_NODE not in cached and inflight is None:
            return wire.EventHandlerResponse()
        namespace = task.namespace or (task.pod.metadata.namespace if task.pod else "")
        name = task.name or (task.pod.metadata.name if task.pod else "")
        if self.kube is not None and namespace and name:
            try:
                await self.kube.patch(pod_path(namespace, name), release_patch())
            except (KubeError, OSError, TimeoutError) as exc:
                self.metrics.patch_failures.labels("deallocate").inc()
                log.warning("deallocate %s/%s: could not remove the assignment: %s", namespace, name, exc)
        self.metrics.decisions.labels("deallocate", "released", "").inc()
        log.info(
            "released", extra={"fields": {"pod": f"{namespace}/{name}", "node": released.node if released else ""}}
        )
        return wire.EventHandlerResponse()

    def session_close(self) -> None:
        self.state.close_session()

    async def assign_bound(self, pod: Pod) -> None:
        """Volcano before 1.13 has no allocate verb: a GPU pod bound to a node without an assignment
        gets one here, for that node, by the same rules."""
        anns = pod.metadata.annotations
        if not pod.spec.node_name or pod.terminated or names.ANNO_VGPU_NODE in anns:
            return
        req = parse_pod_request(pod, self.state.cfg)
        if isinstance(req, str) or not req.wants_gpu:
            return
        await self.assign(req, pod.spec.node_name, "bind")


def _decision(req: PodRequest, a: Assignment) -> dict[str, object]:
    return {
        "pod": req.key,
        "uid": req.uid,
        "node": a.node,
        "devices": [
            {
                "gpu": d.uuid,
                "mode": d.mode,
                "memory": d.memory,
                "cores": d.cores,
                "profile": d.profile,
                "placement": d.placement,
            }
            for d in a.devices()
        ],
    }
