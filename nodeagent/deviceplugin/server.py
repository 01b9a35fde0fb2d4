"""Asyncio (grpc.aio) server for kubelet's device-plugin API v1beta1, one per extended resource.

Lifecycle of a ``DevicePluginServer``:

* ``start()`` serves ``DevicePlugin`` on ``<socket_dir>/<endpoint_name>`` (a stale socket file is
  removed first), then registers with kubelet through ``<socket_dir>/kubelet.sock``.
* ``notify()`` pushes a fresh device list to every open ListAndWatch stream.
* A watcher polls the directory (every ``watch_interval`` seconds, no inotify). When kubelet restarts
  it deletes every plugin socket and recreates ``kubelet.sock``; so if our socket file is gone or
  replaced, or ``kubelet.sock`` has a new identity (device, inode, mtime) or reappeared, the server is
  restarted and registers again. A registration that failed is retried every ``retry_interval``.
* ``stop()`` stops the watcher and the server and removes the socket file.

``devices_provider`` is called on the event loop for every list sent, so it must be cheap (return
cached state); the allocate and preferred handlers are coroutines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence

import grpc

from . import api_pb2, api_pb2_grpc
from .types import API_VERSION, HEALTHY, KUBELET_SOCKET, UNHEALTHY, AllocateError, ContainerAllocation

log = logging.getLogger(__name__)

DevicesProvider = Callable[[], Iterable[tuple[str, bool, int | None]]]
AllocateHandler = Callable[[list[list[str]]], Awaitable[Sequence[ContainerAllocation]]]
# (available device ids, device ids that must be included, allocation size) -> preferred device ids
PreferredHandler = Callable[[list[str], list[str], int], Awaitable[Sequence[str]]]

_MAX_UNIX_PATH = 107  # sun_path is 108 bytes including the terminating NUL
_FileId = tuple[int, int, int]


def _file_id(path: str) -> _FileId | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns)


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def allocation_to_proto(alloc: ContainerAllocation) -> api_pb2.ContainerAllocateResponse:
    return api_pb2.ContainerAllocateResponse(
        envs=alloc.envs,
        mounts=[
            api_pb2.Mount(container_path=m.container_path, host_path=m.host_path, read_only=m.read_only)
            for m in alloc.mounts
        ],
        devices=[
            api_pb2.DeviceSpec(container_path=d.container_path, host_path=d.host_path, permissions=d.permissions)
            for d in alloc.devices
        ],
        annotations=alloc.annotations,
        cdi_devices=[api_pb2.CDIDevice(name=n) for n in alloc.cdi_devices],
    )


class DevicePluginServer(api_pb2_grpc.DevicePluginServicer):
    def __init__(
        self,
        resource_name: str,
        socket_dir: str | os.PathLike[str],
        endpoint_name: str,
        devices_provider: DevicesProvider,
        allocate_handler: AllocateHandler,
        preferred_handler: PreferredHandler | None = None,
        *,
        pre_start_required: bool = False,
        watch_interval: float = 1.0,
        retry_interval: float = 5.0,
        rpc_timeout: float = 10.0,
    ) -> None:
        if "/" in endpoint_name:
            raise ValueError(f"endpoint name {endpoint_name!r} must be a plain file name")
        self.resource_name = resource_name
        self.socket_dir = os.fspath(socket_dir)
        self.endpoint_name = endpoint_name
        self.socket_path = os.path.join(self.socket_dir, endpoint_name)
        self.kubelet_socket = os.path.join(self.socket_dir, KUBELET_SOCKET)
        for path in (self.socket_path, self.kubelet_socket):
            if len(os.fsencode(os.path.abspath(path))) > _MAX_UNIX_PATH:
                raise ValueError(f"unix socket path too long: {path}")
        self._devices_provider = devices_provider
        self._allocate_handler = allocate_handler
        self._preferred_handler = preferred_handler
        self.options = api_pb2.DevicePluginOptions(
            pre_start_required=pre_start_required,
            get_preferred_allocation_available=preferred_handler is not None,
        )
        self.watch_interval = watch_interval
        self.retry_interval = retry_interval
        self.rpc_timeout = rpc_timeout

        self._server: grpc.aio.Server | None = None
        self._own_id: _FileId | None = None  # identity of the socket file we created
        self._kubelet_id: _FileId | None = None  # identity of kubelet.sock when we last registered
        self._registered = False
        self._last_attempt = 0.0
        self._serving = False
        self._generation = 0  # bumped on every server stop, ends the streams of the old server
        self._watchers: set[asyncio.Event] = set()
        self._watch_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.registrations = 0  # successful registrations, for metrics and tests

    @property
    def registered(self) -> bool:
        return self._registered

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Serve and register. A failed registration is logged and retried by the watcher."""
        async with self._lock:
            if self._server is not None:
                return
            await self._serve()
            await self._register()
            self._watch_task = asyncio.create_task(self._watch(), name=f"deviceplugin-watch:{self.resource_name}")

    async def stop(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
            self._watch_task = None
        async with self._lock:
            await self._shutdown()
            self._registered = False

    async def notify(self) -> None:
        """Send the current device list on every open ListAndWatch stream."""
        for wake in self._watchers:
            wake.set()

    async def _serve(self) -> None:
        os.makedirs(self.socket_dir, exist_ok=True)
        _unlink(self.socket_path)  # stale socket from an earlier run
        server = grpc.aio.server()
        api_pb2_grpc.add_DevicePluginServicer_to_server(self, server)
        server.add_insecure_port(f"unix://{os.path.abspath(self.socket_path)}")
        self._server = server
        try:
            await server.start()
        except BaseException:
            self._server = None
            raise
        self._serving = True
        self._own_id = _file_id(self.socket_path)
        log.info("device plugin %s serving on %s", self.resource_name, self.socket_path)

    async def _shutdown(self) -> None:
        self._serving = False
        self._generation += 1
        for wake in self._watchers:
            wake.set()
        if self._server is not None:
            await self._server.stop(grace=1.0)
            self._server = None
        if self._own_id is not None and _file_id(self.socket_path) == self._own_id:
            _unlink(self.socket_path)
        self._own_id = None

    async def _register(self) -> bool:
        self._last_attempt = time.monotonic()
        kubelet_id = _file_id(self.kubelet_socket)
        if kubelet_id is None:
            log.warning(
                "device plugin %s: %s does not exist; waiting for kubelet", self.resource_name, self.kubelet_socket
            )
            self._registered = False
            self._kubelet_id = None
            return False
        request = api_pb2.RegisterRequest(
            version=API_VERSION, endpoint=self.endpoint_name, resource_name=self.resource_name, options=self.options
        )
        try:
            async with grpc.aio.insecure_channel(f"unix://{os.path.abspath(self.kubelet_socket)}") as channel:
                await api_pb2_grpc.RegistrationStub(channel).Register(request, timeout=self.rpc_timeout)
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "device plugin %s: registration with kubelet failed: %s %s",
                self.resource_name,
                exc.code().name,
                exc.details(),
            )
            self._registered = False
            self._kubelet_id = kubelet_id
            return False
        self._registered = True
        self._kubelet_id = kubelet_id
        self.registrations += 1
        log.info("device plugin %s registered with kubelet as %s", self.resource_name, self.endpoint_name)
        return True

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.watch_interval)
            try:
                async with self._lock:
                    await self._check()
            except Exception:
                log.exception("device plugin %s: socket watch failed", self.resource_name)

    async def _check(self) -> None:
        kubelet_id = _file_id(self.kubelet_socket)
        if _file_id(self.socket_path) != self._own_id:
            reason = "plugin socket was removed"
        elif kubelet_id is not None and kubelet_id != self._kubelet_id:
            reason = "kubelet socket was recreated"
        else:
            if kubelet_id is None:
                self._kubelet_id = None  # so that its reappearance counts as a change
                self._registered = False
            elif not self._registered and time.monotonic() - self._last_attempt >= self.retry_interval:
                await self._register()
            return
        log.info("device plugin %s: %s; restarting and registering again", self.resource_name, reason)
        self._registered = False
        await self._shutdown()
        await self._serve()
        if kubelet_id is not None:
            await self._register()
        else:
            self._kubelet_id = None

    # -- DevicePlugin service --------------------------------------------------------------------

    def _list(self) -> api_pb2.ListAndWatchResponse:
        devices = []
        for device_id, healthy, numa in self._devices_provider():
            device = api_pb2.Device(ID=device_id, health=HEALTHY if healthy else UNHEALTHY)
            if numa is not None:
                device.topology.nodes.add(ID=numa)
            devices.append(device)
        return api_pb2.ListAndWatchResponse(devices=devices)

    async def GetDevicePluginOptions(
        self, request: api_pb2.Empty, context: grpc.aio.ServicerContext
    ) -> api_pb2.DevicePluginOptions:
        return self.options

    async def ListAndWatch(
        self, request: api_pb2.Empty, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api_pb2.ListAndWatchResponse]:
        generation = self._generation
        wake = asyncio.Event()
        self._watchers.add(wake)
        try:
            while self._serving and generation == self._generation:
                wake.clear()
                try:
                    response = self._list()
                except Exception:  # keep the stream: ending it would make kubelet drop the resource
                    log.exception("device plugin %s: devices provider failed", self.resource_name)
                else:
                    yield response
                await wake.wait()
        finally:
            self._watchers.discard(wake)

    async def GetPreferredAllocation(
        self, request: api_pb2.PreferredAllocationRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.PreferredAllocationResponse:
        if self._preferred_handler is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "GetPreferredAllocation is not available")
        assert self._preferred_handler is not None
        response = api_pb2.PreferredAllocationResponse()
        for req in request.container_requests:
            chosen = await self._preferred_handler(
                list(req.available_deviceIDs), list(req.must_include_deviceIDs), req.allocation_size
            )
            response.container_responses.add(deviceIDs=chosen)
        return response

    async def Allocate(
        self, request: api_pb2.AllocateRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.AllocateResponse:
        requests = [list(c.devices_ids) for c in request.container_requests]
        try:
            allocations = await self._allocate_handler(requests)
        except AllocateError as exc:
            log.warning("device plugin %s: allocate %s refused: %s", self.resource_name, requests, exc.message)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, exc.message)
        except Exception as exc:
            log.exception("device plugin %s: allocate %s failed", self.resource_name, requests)
            await context.abort(grpc.StatusCode.UNKNOWN, f"allocate failed: {exc}")
        if len(allocations) != len(requests):
            await context.abort(
                grpc.StatusCode.INTERNAL,
                f"allocate handler answered {len(allocations)} containers for {len(requests)} requested",
            )
        return api_pb2.AllocateResponse(container_responses=[allocation_to_proto(a) for a in allocations])

    async def PreStartContainer(
        self, request: api_pb2.PreStartContainerRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.PreStartContainerResponse:
        return api_pb2.PreStartContainerResponse()


class PluginManager:
    """Runs several device-plugin servers (e.g. the vGPU count resource plus memory and cores)."""

    def __init__(self, servers: Iterable[DevicePluginServer] = ()) -> None:
        self.servers: dict[str, DevicePluginServer] = {}
        for server in servers:
            self.add(server)

    def add(self, server: DevicePluginServer) -> DevicePluginServer:
        if server.resource_name in self.servers:
            raise ValueError(f"duplicate resource {server.resource_name}")
        if any(s.socket_path == server.socket_path for s in self.servers.values()):
            raise ValueError(f"duplicate endpoint {server.socket_path}")
        self.servers[server.resource_name] = server
        return server

    def __getitem__(self, resource_name: str) -> DevicePluginServer:
        return self.servers[resource_name]

    async def start(self) -> None:
        started: list[DevicePluginServer] = []
        try:
            for server in self.servers.values():
                await server.start()
                started.append(server)
        except BaseException:
            await asyncio.gather(*(s.stop() for s in started), return_exceptions=True)
            raise

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.servers.values()))

    async def notify(self) -> None:
        await asyncio.gather(*(s.notify() for s in self.servers.values()))

    async def __aenter__(self) -> PluginManager:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
