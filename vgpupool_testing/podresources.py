"""Fake kubelet pod-resources API for tests (test equipment, not product code).

Serves ``v1.PodResourcesLister`` with grpc.aio on ``<dir>/kubelet.sock`` (keep ``dir`` short: unix
socket paths are limited to about 100 bytes). The test sets what kubelet would report::

    async with FakePodResources(tmpdir) as kubelet:
        kubelet.set_pods([("default", "train-0", [("main", [("volcano.sh/vgpu-number", ["gpu-0-1"])])])])
        ...
        assert kubelet.list_calls == 1
"""

from __future__ import annotations

import contextlib
import os

import grpc

from nodeagent.podresources import api_pb2, api_pb2_grpc

from .unixgrpc import serve_unix

SOCKET = "kubelet.sock"

# [(namespace, pod, [(container, [(resource, [device ids])])])]
Pods = list[tuple[str, str, list[tuple[str, list[tuple[str, list[str]]]]]]]


class FakePodResources(api_pb2_grpc.PodResourcesListerServicer):
    def __init__(self, socket_dir: str | os.PathLike[str]) -> None:
        self.socket_dir = os.fspath(socket_dir)
        self.socket_path = os.path.join(self.socket_dir, SOCKET)
        self.pods: list[api_pb2.PodResources] = []
        self.allocatable: list[api_pb2.ContainerDevices] = []
        self.list_calls = 0
        self._server: grpc.aio.Server | None = None

    # -- state -----------------------------------------------------------------------------------

    def set_pods(self, pods: Pods) -> None:
        self.pods = [
            api_pb2.PodResources(
                namespace=namespace,
                name=name,
                containers=[
                    api_pb2.ContainerResources(
                        name=container,
                        devices=[
                            api_pb2.ContainerDevices(resource_name=resource, device_ids=ids)
                            for resource, ids in devices
                        ],
                    )
                    for container, devices in containers
                ],
            )
            for namespace, name, containers in pods
        ]

    def set_allocatable(self, devices: list[tuple[str, list[str]]]) -> None:
        self.allocatable = [api_pb2.ContainerDevices(resource_name=r, device_ids=ids) for r, ids in devices]

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        self._server = await serve_unix(self.socket_path, api_pb2_grpc.add_PodResourcesListerServicer_to_server, self)

    async def stop(self) -> None:
        """Stop serving and remove the socket, as a stopped kubelet leaves it."""
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)

    async def __aenter__(self) -> FakePodResources:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- PodResourcesLister ----------------------------------------------------------------------

    async def List(
        self, request: api_pb2.ListPodResourcesRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ListPodResourcesResponse:
        self.list_calls += 1
        return api_pb2.ListPodResourcesResponse(pod_resources=self.pods)

    async def GetAllocatableResources(
        self, request: api_pb2.AllocatableResourcesRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.AllocatableResourcesResponse:
        return api_pb2.AllocatableResourcesResponse(devices=self.allocatable)

    async def Get(
        self, request: api_pb2.GetPodResourcesRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.GetPodResourcesResponse:
        for pod in self.pods:
            if pod.namespace == request.pod_namespace and pod.name == request.pod_name:
                return api_pb2.GetPodResourcesResponse(pod_resources=pod)
        # kubelet returns a plain Go error here, which gRPC sends as UNKNOWN
        await context.abort(
            grpc.StatusCode.UNKNOWN, f"pod {request.pod_name} in namespace {request.pod_namespace} not found"
        )
        raise AssertionError("unreachable")
