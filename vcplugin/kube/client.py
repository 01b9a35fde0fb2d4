"""A thin asyncio client for the few Kubernetes API calls the services make.

kubernetes-asyncio supplies configuration and authentication (kubeconfig or in-cluster); bodies are
decoded by the caller with msgspec, never into kubernetes-asyncio's model objects."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from kubernetes_asyncio import client as kclient
from kubernetes_asyncio import config as kconfig

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"


class KubeError(Exception):
    def __init__(self, status: int, body: str, what: str):
        self.status = status
        self.body = body
        super().__init__(f"{what}: HTTP {status}: {body[:300]}")


class KubeClient:
    def __init__(self, api: kclient.ApiClient):
        self.api = api

    @classmethod
    async def connect(cls, kubeconfig: str | None = None) -> KubeClient:
        """From a kubeconfig file, else the in-cluster service account."""
        cfg = kclient.Configuration()
        if kubeconfig:
            await kconfig.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        else:
            kconfig.load_incluster_config(client_configuration=cfg)
        return cls(kclient.ApiClient(configuration=cfg))

    async def close(self) -> None:
        await self.api.close()

    async def _call(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | None = 30.0,
    ) -> Any:
        return await self.api.call_api(
            path,
            method,
            query_params=[(k, v) for k, v in (query or {}).items() if v is not None],
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=timeout,
        )

    async def request(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | None = 30.0,
    ) -> bytes:
        resp = await self._call(method, path, query, body, content_type, timeout)
        try:
            data: bytes = await resp.read()
        finally:
            resp.release()
        if not 200 <= resp.status < 300:
            raise KubeError(resp.status, data.decode(errors="replace"), f"{method} {path}")
        return data

    async def get(self, path: str, query: dict[str, Any] | None = None, timeout: float | None = 60.0) -> bytes:
        return await self.request("GET", path, query, timeout=timeout)

    async def watch(self, path: str, query: dict[str, Any]) -> AsyncIterator[bytes]:
        """Lines of a watch stream; ends when the server closes it."""
        q = {**query, "watch": "true"}
        timeout = float(q.get("timeoutSeconds", 300)) + 30
        resp = await self._call("GET", path, q, timeout=timeout)
        try:
            if resp.status != 200:
                data = await resp.read()
                raise KubeError(resp.status, data.decode(errors="replace"), f"watch {path}")
            buf = b""
            async for chunk in resp.content.iter_any():
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield line
            if buf.strip():
                yield buf
        finally:
            resp.release()

    async def patch(self, path: str, body: dict[str, Any] | list[Any], content_type: str = MERGE_PATCH) -> bytes:
        return await self.request("PATCH", path, body=body, content_type=content_type, timeout=10.0)

    async def post(self, path: str, body: dict[str, Any]) -> bytes:
        return await self.request("POST", path, body=body, timeout=10.0)


def pod_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{namespace}/pods/{name}"


def node_path(name: str) -> str:
    return f"/api/v1/nodes/{name}"


def annotations_patch(annotations: dict[str, str | None]) -> dict[str, Any]:
    """A merge patch that sets (or, with None, removes) annotations."""
    return {"metadata": {"annotations": annotations}}


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))
