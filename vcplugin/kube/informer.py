"""List + watch one kind of object, keep going through dropped watches and 410 Gone.

The informer owns no store: it hands `on_replace` the full list after every (re)list and
`on_event` each watch event, so the caller keeps exactly the state it needs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import msgspec

from .client import KubeClient, KubeError
from .objects import RawEvent, RawList, Status

log = logging.getLogger(__name__)
T = TypeVar("T")

_list_decoder = msgspec.json.Decoder(RawList)
_event_decoder = msgspec.json.Decoder(RawEvent)
_status_decoder = msgspec.json.Decoder(Status)


class _Expired(Exception):
    pass


class Informer(Generic[T]):
    def __init__(
        self,
        kube: KubeClient,
        path: str,
        kind: type[T],
        on_replace: Callable[[list[T]], Awaitable[None] | None],
        on_event: Callable[[str, T], Awaitable[None] | None],
        *,
        field_selector: str | None = None,
        label_selector: str | None = None,
        watch_timeout: int = 300,
        max_backoff: float = 30.0,
    ):
        self.kube, self.path, self.kind = kube, path, kind
        self.on_replace, self.on_event = on_replace, on_event
        self.field_selector, self.label_selector = field_selector, label_selector
        self.watch_timeout, self.max_backoff = watch_timeout, max_backoff
        self.decoder = msgspec.json.Decoder(kind)
        self.synced = asyncio.Event()
        self.resource_version = ""
        self.relists = 0
        self.reconnects = 0

    def _query(self) -> dict[str, Any]:
        return {"fieldSelector": self.field_selector, "labelSelector": self.label_selector}

    async def _relist(self) -> None:
        data = await self.kube.get(self.path, self._query())
        lst = _list_decoder.decode(data)
        items = [self.decoder.decode(raw) for raw in lst.items]
        self.resource_version = lst.metadata.resource_version
        self.relists += 1
        await _maybe_await(self.on_replace(items))
        self.synced.set()

    async def _watch_once(self) -> None:
        query = {
            **self._query(),
            "resourceVersion": self.resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self.watch_timeout),
        }
        async for line in self.kube.watch(self.path, query):
            event = _event_decoder.decode(line)
            if event.type == "ERROR":
                status = _status_decoder.decode(event.object)
                if status.code == 410:
                    raise _Expired(status.message)
                raise KubeError(status.code or 500, status.message, f"watch {self.path}")
            if event.type == "BOOKMARK":
                rv = msgspec.json.decode(event.object).get("metadata", {}).get("resourceVersion")
                if rv:
                    self.resource_version = rv
                continue
            obj = self.decoder.decode(event.object)
            rv = getattr(getattr(obj, "metadata", None), "resource_version", "")
            if rv:
                self.resource_version = rv
            await _maybe_await(self.on_event(event.type, obj))

    async def run(self) -> None:
        """Forever: list, then watch from the list's resourceVersion; relist on 410 or errors."""
        backoff = 0.5
        need_list = True
        while True:
            try:
                if need_list:
                    await self._relist()
                    need_list = False
                await self._watch_once()  # returns when the server ends the stream (timeout)
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except _Expired as exc:
                log.info("watch %s expired (%s); relisting", self.path, exc)
                need_list = True
            except Exception as exc:  # network, decode and API errors alike: back off, retry
                if isinstance(exc, KubeError) and exc.status == 410:
                    need_list = True
                    continue
                self.reconnects += 1
                log.warning("watch %s failed (%s); retrying in %.1fs", self.path, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(self.max_backoff, backoff * 2)
                # After an error the resourceVersion may be gone; a relist is always safe.
                need_list = not self.resource_version or isinstance(exc, KubeError)


async def _maybe_await(value: Awaitable[None] | None) -> None:
    if value is not None:
        await value


def configmap_informer(
    kube: KubeClient,
    ref: str,
    on_change: Callable[[str, Any], Awaitable[None] | None],
) -> Informer[Any]:
    """An informer of one ConfigMap ("namespace/name"): every object it lists or sees changing is
    handed to `on_change(event type, configmap)` (a relist reports each as "ADDED")."""
    from .objects import ConfigMap

    ns, _, name = ref.partition("/")

    async def replace(items: list[ConfigMap]) -> None:
        for cm in items:
            await _maybe_await(on_change("ADDED", cm))

    return Informer(
        kube,
        f"/api/v1/namespaces/{ns}/configmaps",
        ConfigMap,
        replace,
        on_change,
        field_selector=f"metadata.name={name}",
    )
