"""Confirm afterwards, through kubelet's pod-resources API, which pod an Allocate call really served.

Kubelet's device-plugin Allocate names devices, not pods, so the agent guesses the pod being admitted.
After each allocation the agent records its guess with :meth:`PodResourcesVerifier.expect`; the
verifier then polls kubelet's ``PodResourcesLister.List`` until the guess can be judged:

* CONFIRMED: the pod's container lists exactly those device ids for the resource.
* MISMATCH: the device ids are listed under another pod or container (kubelet admitted a different pod
  with them: the agent guessed wrong), or the pod's container lists different ids for the resource.
  Logged at ERROR with both pods and the ids, and passed to ``on_mismatch``.
* EXPIRED: no verdict within ``timeout`` (e.g. the pod was deleted first). Logged as a warning.

The API is optional: while kubelet's socket is absent the verifier is disabled (one INFO line, and
``available`` is False) and keeps looking for the socket every ``interval`` seconds. Expectations
that time out while the API is absent or failing (List errors are warned about once) are dropped
without a warning of their own.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

import grpc

from . import api_pb2, api_pb2_grpc

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
RPC_TIMEOUT = 10.0  # seconds for one List call
# List answers for every pod on the node, and gRPC's default 4 MiB limit is easily passed (kubelet's own
# client allows 16 MiB).
MAX_MESSAGE = 64 * 1024 * 1024

Owner = tuple[str, str, str]  # (namespace, pod, container)


@dataclass(frozen=True)
class Expectation:
    """The agent gave ``device_ids`` of ``resource`` to ``namespace/pod`` container ``container``."""

    namespace: str
    pod: str
    container: str
    resource: str
    device_ids: tuple[str, ...]
    since: float  # verifier clock when recorded

    @property
    def owner(self) -> Owner:
        return (self.namespace, self.pod, self.container)


class Outcome(enum.Enum):
    CONFIRMED = "confirmed"
    MISMATCH = "mismatch"
    EXPIRED = "expired"


class Verdict(NamedTuple):
    expectation: Expectation
    outcome: Outcome
    detail: str


def _who(owner: Owner) -> str:
    return f"{owner[0]}/{owner[1]} container {owner[2]}"


def _ids(ids: Iterable[str]) -> str:
    return ",".join(sorted(ids))


class PodResourcesVerifier:
    def __init__(
        self,
        socket_path: str = DEFAULT_SOCKET,
        *,
        interval: float = 2.0,
        timeout: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
        on_mismatch: Callable[[Expectation, str], None] | None = None,
        on_confirmed: Callable[[Expectation], None] | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.interval = interval
        self.timeout = timeout
        self.clock = clock
        self.on_mismatch = on_mismatch
        self.on_confirmed = on_confirmed
        self.available = False
        self._known: bool | None = None  # availability last logged; None before the first check
        self._pending: dict[tuple[str, str, str, str], Expectation] = {}
        self._channel: grpc.aio.Channel | None = None
        self._stub: api_pb2_grpc.PodResourcesListerStub | None = None
        self._failing = False  # List failed last time (warned once until it works again)

    @property
    def pending(self) -> list[Expectation]:
        return list(self._pending.values())

    def expect(self, namespace: str, pod: str, container: str, resource: str, device_ids: list[str]) -> Expectation:
        """Record that the agent gave ``device_ids`` to this container; replaces an earlier expectation
        for the same container and resource."""
        if not device_ids:
            raise ValueError("an expectation needs at least one device id")
        e = Expectation(namespace, pod, container, resource, tuple(device_ids), self.clock())
        self._pending[(namespace, pod, container, resource)] = e
        return e

    async def run(self) -> None:
        """Check every ``interval`` seconds until cancelled."""
        try:
            while True:
                try:
                    await self.check_once()
                except Exception:
                    log.exception("pod-resources check failed")
                await asyncio.sleep(self.interval)
        finally:
            await self.close()

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel, self._stub = self._channel, None, None
            await channel.close()

    async def check_once(self) -> list[Verdict]:
        """Look for the socket, and if there is something to judge, List and judge it."""
        await self._refresh_availability()
        if not self._pending:
            return []
        if not self.available:
            self._drop_expired()
            return []
        assert self._stub is not None
        try:
            response = await self._stub.List(api_pb2.ListPodResourcesRequest(), timeout=RPC_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            if not self._failing:
                log.warning("pod-resources List on %s failed: %s %s", self.socket_path, exc.code().name, exc.details())
            self._failing = True
            self._drop_expired()
            return []
        self._failing = False
        return self._judge(*_index(response, self.pending))

    # -- internals --------------------------------------------------------------------------------

    async def _refresh_availability(self) -> None:
        present = await asyncio.to_thread(os.path.exists, self.socket_path)
        if present and self._channel is None:
            self._channel = grpc.aio.insecure_channel(
                f"unix://{os.path.abspath(self.socket_path)}",
                options=[("grpc.max_receive_message_length", MAX_MESSAGE)],
            )
            self._stub = api_pb2_grpc.PodResourcesListerStub(self._channel)
        elif not present:
            await self.close()
        self.available = present
        if present != self._known:
            if present:
                log.info("pod-resources API found at %s; confirming device allocations", self.socket_path)
            else:
                log.info(
                    "pod-resources API not available (%s does not exist); allocations are not confirmed",
                    self.socket_path,
                )
            self._known = present

    def _drop_expired(self) -> None:
        now = self.clock()
        for key, e in list(self._pending.items()):
            if now - e.since >= self.timeout:
                del self._pending[key]
                log.debug("pod-resources could not be read; dropped unconfirmed %s", e)

    def _judge(
        self, containers: dict[Owner, dict[str, set[str]]], owners: dict[tuple[str, str], set[Owner]]
    ) -> list[Verdict]:
        verdicts = []
        now = self.clock()
        for key, e in list(self._pending.items()):
            verdict = _verdict(e, containers, owners)
            if verdict is None and now - e.since >= self.timeout:
                seen = "listed" if e.owner in containers else "not listed"
                verdict = Verdict(
                    e, Outcome.EXPIRED, f"{_who(e.owner)} {seen} with {e.resource} devices within {self.timeout:g}s"
                )
            if verdict is None:
                continue
            del self._pending[key]
            verdicts.append(verdict)
            self._report(verdict)
        return verdicts

    def _report(self, v: Verdict) -> None:
        e = v.expectation
        if v.outcome is Outcome.CONFIRMED:
            log.debug("pod-resources confirmed %s %s for %s", e.resource, _ids(e.device_ids), _who(e.owner))
            if self.on_confirmed is not None:
                self._call(self.on_confirmed, e)
        elif v.outcome is Outcome.MISMATCH:
            log.error(
                "pod-resources MISMATCH: vgpu-pool gave %s %s to %s, but %s",
                e.resource,
                _ids(e.device_ids),
                _who(e.owner),
                v.detail,
            )
            if self.on_mismatch is not None:
                self._call(self.on_mismatch, e, v.detail)
        else:
            log.warning(
                "pod-resources could not confirm %s %s for %s: %s",
                e.resource,
                _ids(e.device_ids),
                _who(e.owner),
                v.detail,
            )

    @staticmethod
    def _call(callback: Callable[..., object], *args: object) -> None:
        try:
            callback(*args)
        except Exception:
            log.exception("pod-resources callback %r failed", callback)


def _index(
    response: api_pb2.ListPodResourcesResponse, pending: list[Expectation]
) -> tuple[dict[Owner, dict[str, set[str]]], dict[tuple[str, str], set[Owner]]]:
    """(container -> resource -> ids, (resource, id) -> containers listing it), restricted to the
    containers and device ids that ``pending`` mentions: kubelet may list many thousands of ids (one per
    MiB for a memory resource), so only C-level set operations touch the rest."""
    wanted_owners = {e.owner for e in pending}
    wanted_ids: dict[str, set[str]] = {}
    for e in pending:
        wanted_ids.setdefault(e.resource, set()).update(e.device_ids)
    containers: dict[Owner, dict[str, set[str]]] = {}
    owners: dict[tuple[str, str], set[Owner]] = {}
    for pod in response.pod_resources:
        for c in pod.containers:
            owner = (pod.namespace, pod.name, c.name)
            for d in c.devices:
                if owner in wanted_owners:
                    containers.setdefault(owner, {}).setdefault(d.resource_name, set()).update(d.device_ids)
                for i in wanted_ids.get(d.resource_name, set()).intersection(d.device_ids):
                    owners.setdefault((d.resource_name, i), set()).add(owner)
            if owner in wanted_owners:
                containers.setdefault(owner, {})
    return containers, owners


def _verdict(
    e: Expectation, containers: dict[Owner, dict[str, set[str]]], owners: dict[tuple[str, str], set[Owner]]
) -> Verdict | None:
    want = set(e.device_ids)
    got = containers.get(e.owner, {}).get(e.resource, set())
    if got == want:
        return Verdict(e, Outcome.CONFIRMED, "")
    problems = []
    elsewhere: dict[Owner, set[str]] = {}
    for i in want:
        for owner in owners.get((e.resource, i), ()):
            if owner != e.owner:
                elsewhere.setdefault(owner, set()).add(i)
    for owner, ids in sorted(elsewhere.items()):
        problems.append(f"kubelet lists {_ids(ids)} under {_who(owner)}")
    if got:
        problems.append(f"kubelet lists {_ids(got)} for {_who(e.owner)}")
    if not problems:
        return None  # not listed (yet): keep waiting
    return Verdict(e, Outcome.MISMATCH, "; ".join(problems))
