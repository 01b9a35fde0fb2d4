"""Fake kubelet device manager for tests (test equipment, not product code).

Serves the device-plugin ``Registration`` service on ``<dir>/kubelet.sock`` with grpc.aio. For every
registration it dials the plugin's endpoint and follows its ListAndWatch stream in the background,
recording each device list. It can call the plugin's other RPCs the way kubelet does, and simulate a
kubelet restart (which deletes every socket in the directory)::

    async with FakeKubelet(tmpdir) as kubelet:
        await plugin.start()
        await kubelet.wait_registered("nvidia.com/gpu")
        devices = await kubelet.wait_devices("nvidia.com/gpu", lambda ds: len(ds) == 2)
        response = await kubelet.allocate("nvidia.com/gpu", [["gpu-0"]])

Everything runs on the caller's asyncio loop. Like kubelet, a registration with an unsupported
version is refused (INVALID_ARGUMENT), and a new registration for a resource replaces the old one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from nodeagent.deviceplugin import api_pb2, api_pb2_grpc
from nodeagent.deviceplugin.types import API_VERSION, KUBELET_SOCKET

from .unixgrpc import serve_unix

Devices = list[api_pb2.Device]


@dataclass
class PluginConnection:
    """Kubelet's side of one registered plugin."""

    request: api_pb2.RegisterRequest
    channel: grpc.aio.Channel
    stub: api_pb2_grpc.DevicePluginStub
    updates: list[Devices] = field(default_factory=list)  # every ListAndWatch response, in order
    stream_task: asyncio.Task[None] | None = None
    stream_error: BaseException | None = None  # why the stream ended, if it did with an error
    stream_ended: bool = False


class FakeKubelet(api_pb2_grpc.RegistrationServicer):
    def __init__(self, socket_dir: str | os.PathLike[str], *, timeout: float = 5.0) -> None:
        self.socket_dir = os.fspath(socket_dir)
        self.socket_path = os.path.join(self.socket_dir, KUBELET_SOCKET)
        self.timeout = timeout
        self.registrations: list[api_pb2.RegisterRequest] = []  # every accepted registration, in order
        self.rejected: list[api_pb2.RegisterRequest] = []
        self.plugins: dict[str, PluginConnection] = {}  # by resource name, latest registration
        self._server: grpc.aio.Server | None = None
        self._changed = asyncio.Event()  # set and replaced on every registration or update

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        self._server = await serve_unix(self.socket_path, api_pb2_grpc.add_RegistrationServicer_to_server, self)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None
        for plugin in list(self.plugins.values()):
            await self._disconnect(plugin)
        self.plugins.clear()

    async def restart(self, timeout: float | None = None) -> None:
        """Stop, delete kubelet.sock and every plugin socket (as kubelet does on start), start again,
        and wait until every plugin registered before has registered again."""
        expected = set(self.plugins)
        await self.stop()
        for name in os.listdir(self.socket_dir):
            path = os.path.join(self.socket_dir, name)
            if not os.path.isdir(path):
                os.unlink(path)
        await self.start()
        await self._wait(
            lambda: expected <= set(self.plugins),
            timeout,
            f"plugins {sorted(expected - set(self.plugins))} did not register again",
        )

    async def __aenter__(self) -> FakeKubelet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- Registration service --------------------------------------------------------------------

    async def Register(self, request: api_pb2.RegisterRequest, context: grpc.aio.ServicerContext) -> api_pb2.Empty:
        if request.version != API_VERSION:
            self.rejected.append(request)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unsupported API version {request.version!r}")
        old = self.plugins.pop(request.resource_name, None)
        if old is not None:
            await self._disconnect(old)
        endpoint = os.path.abspath(os.path.join(self.socket_dir, request.endpoint))
        channel = grpc.aio.insecure_channel(f"unix://{endpoint}")
        plugin = PluginConnection(request=request, channel=channel, stub=api_pb2_grpc.DevicePluginStub(channel))
        plugin.stream_task = asyncio.create_task(self._follow(plugin), name=f"fake-kubelet:{request.resource_name}")
        self.plugins[request.resource_name] = plugin
        self.registrations.append(request)
        self._notify()
        return api_pb2.Empty()

    async def _follow(self, plugin: PluginConnection) -> None:
        try:
            async for response in plugin.stub.ListAndWatch(api_pb2.Empty(), wait_for_ready=True):
                plugin.updates.append(list(response.devices))
                self._notify()
        except grpc.aio.AioRpcError as exc:
            plugin.stream_error = exc
        finally:
            plugin.stream_ended = True
            self._notify()

    async def _disconnect(self, plugin: PluginConnection) -> None:
        if plugin.stream_task is not None:
            plugin.stream_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await plugin.stream_task
        await plugin.channel.close()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait(self, predicate: Callable[[], bool], timeout: float | None, what: str) -> None:
        async def wait() -> None:
            while not predicate():
                await self._changed.wait()

        try:
            await asyncio.wait_for(wait(), self.timeout if timeout is None else timeout)
        except TimeoutError:
            raise TimeoutError(what) from None

    # -- observation -----------------------------------------------------------------------------

    def registration(self, resource: str) -> api_pb2.RegisterRequest:
        return self.plugins[resource].request

    def devices(self, resource: str) -> Devices:
        """The latest device list the plugin sent (empty before its first ListAndWatch response)."""
        updates = self.plugins[resource].updates
        return updates[-1] if updates else []

    def update_count(self, resource: str) -> int:
        plugin = self.plugins.get(resource)
        return len(plugin.updates) if plugin else 0

    async def wait_registered(self, resource: str, timeout: float | None = None) -> api_pb2.RegisterRequest:
        await self._wait(lambda: resource in self.plugins, timeout, f"{resource} did not register")
        return self.plugins[resource].request

    async def wait_update(self, resource: str, after: int | None = None, timeout: float | None = None) -> Devices:
        """Wait for a device list newer than update number ``after`` (default: the current count) of
        the current registration of ``resource``, and return the latest list."""
        seen = self.update_count(resource) if after is None else after
        await self._wait(lambda: self.update_count(resource) > seen, timeout, f"no update from {resource}")
        return self.devices(resource)

    async def wait_devices(
        self, resource: str, predicate: Callable[[Devices], bool], timeout: float | None = None
    ) -> Devices:
        """Wait until the latest device list of ``resource`` satisfies ``predicate``."""

        def ok() -> bool:
            plugin = self.plugins.get(resource)
            return bool(plugin and plugin.updates and predicate(plugin.updates[-1]))

        await self._wait(ok, timeout, f"device list of {resource} did not reach the expected state")
        return self.devices(resource)

    # -- calls kubelet makes ---------------------------------------------------------------------

    def _stub(self, resource: str) -> api_pb2_grpc.DevicePluginStub:
        return self.plugins[resource].stub

    async def options(self, resource: str) -> api_pb2.DevicePluginOptions:
        return await self._stub(resource).GetDevicePluginOptions(api_pb2.Empty(), timeout=self.timeout)

    async def allocate(self, resource: str, container_requests: list[list[str]]) -> api_pb2.AllocateResponse:
        request = api_pb2.AllocateRequest(
            container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=ids) for ids in container_requests]
        )
        return await self._stub(resource).Allocate(request, timeout=self.timeout)

    async def preferred_allocation(
        self, resource: str, available: list[str], must_include: list[str] | None = None, size: int = 1
    ) -> list[str]:
        request = api_pb2.PreferredAllocationRequest(
            container_requests=[
                api_pb2.ContainerPreferredAllocationRequest(
                    available_deviceIDs=available, must_include_deviceIDs=must_include or [], allocation_size=size
                )
            ]
        )
        response = await self._stub(resource).GetPreferredAllocation(request, timeout=self.timeout)
        return list(response.container_responses[0].deviceIDs)

    async def pre_start_container(self, resource: str, device_ids: list[str]) -> api_pb2.PreStartContainerResponse:
        request = api_pb2.PreStartContainerRequest(devices_ids=device_ids)
        return await self._stub(resource).PreStartContainer(request, timeout=self.timeout)
