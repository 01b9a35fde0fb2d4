"""Device-plugin server against the fake kubelet, over real unix sockets."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator

import grpc
import pytest

from nodeagent.deviceplugin import (
    API_VERSION,
    HEALTHY,
    KUBELET_SOCKET,
    UNHEALTHY,
    AllocateError,
    ContainerAllocation,
    DeviceNodeSpec,
    DevicePluginServer,
    MountSpec,
    PluginManager,
)
from vgpupool_testing.kubelet import FakeKubelet

RES = "volcano.sh/vgpu-number"


class Gpus:
    """Devices as the agent would track them: id -> (healthy, numa)."""

    def __init__(self) -> None:
        self.state: dict[str, tuple[bool, int | None]] = {"gpu-0": (True, 0), "gpu-1": (True, 1)}

    def __call__(self) -> list[tuple[str, bool, int | None]]:
        return [(d, healthy, numa) for d, (healthy, numa) in self.state.items()]


async def allocate(requests: list[list[str]]) -> list[ContainerAllocation]:
    out = []
    for ids in requests:
        if "gone" in ids:
            raise AllocateError("device gone was removed from the node")
        if "boom" in ids:
            raise RuntimeError("unexpected")
        out.append(ContainerAllocation(
            envs={"NVIDIA_VISIBLE_DEVICES": ",".join(ids), "CUDA_DEVICE_MEMORY_LIMIT_0": "1024m"},
            mounts=(MountSpec("/usr/local/vgpu/libvgpu.so", "/opt/vgpu/libvgpu.so", read_only=True),
                    MountSpec("/tmp/vgpulock", "/tmp/vgpulock")),
            devices=tuple(DeviceNodeSpec(f"/dev/nvidia{i[-1]}", f"/dev/nvidia{i[-1]}", "rw") for i in ids),
            annotations={"vgpu-pool.io/ids": ",".join(ids)},
            cdi_devices=tuple(f"nvidia.com/gpu={i}" for i in ids),
        ))
    return out


async def prefer_last(available: list[str], must_include: list[str], size: int) -> list[str]:
    rest = [d for d in sorted(available, reverse=True) if d not in must_include]
    return (must_include + rest)[:size]


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


@pytest.fixture
def sockdir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="dp", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def kubelet(sockdir: str) -> AsyncIterator[FakeKubelet]:
    async with FakeKubelet(sockdir) as k:
        yield k


@pytest.fixture
def gpus() -> Gpus:
    return Gpus()


def make_server(sockdir: str, gpus: Gpus, **kw: object) -> DevicePluginServer:
    kw.setdefault("watch_interval", 0.05)
    kw.setdefault("retry_interval", 0.1)
    return DevicePluginServer(RES, sockdir, "vgpu.sock", gpus, allocate, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def plugin(sockdir: str, gpus: Gpus, kubelet: FakeKubelet) -> AsyncIterator[DevicePluginServer]:
    server = make_server(sockdir, gpus)
    await server.start()
    yield server
    await server.stop()


async def test_registers_with_kubelet(plugin: DevicePluginServer, kubelet: FakeKubelet) -> None:
    request = await kubelet.wait_registered(RES)
    assert (request.version, request.endpoint, request.resource_name) == (API_VERSION, "vgpu.sock", RES)
    assert not request.options.pre_start_required
    assert not request.options.get_preferred_allocation_available
    assert plugin.registered and plugin.registrations == 1
    assert os.path.exists(plugin.socket_path)


async def test_list_and_watch_initial_list_and_health_change(plugin: DevicePluginServer, kubelet: FakeKubelet,
                                                             gpus: Gpus) -> None:
    devices = await kubelet.wait_devices(RES, lambda ds: len(ds) == 2)
    assert [(d.ID, d.health, [n.ID for n in d.topology.nodes]) for d in devices] == [
        ("gpu-0", HEALTHY, [0]), ("gpu-1", HEALTHY, [1])]

    seen = kubelet.update_count(RES)
    gpus.state["gpu-1"] = (False, 1)
    await plugin.notify()
    devices = await kubelet.wait_update(RES, after=seen)
    assert {d.ID: d.health for d in devices} == {"gpu-0": HEALTHY, "gpu-1": UNHEALTHY}

    seen = kubelet.update_count(RES)
    gpus.state["gpu-2"] = (True, None)
    del gpus.state["gpu-0"]
    await plugin.notify()
    devices = await kubelet.wait_update(RES, after=seen)
    assert [(d.ID, d.health, d.HasField("topology")) for d in devices] == [
        ("gpu-1", UNHEALTHY, True), ("gpu-2", HEALTHY, False)]


async def test_allocate_round_trip_multi_container(plugin: DevicePluginServer, kubelet: FakeKubelet) -> None:
    await kubelet.wait_registered(RES)
    response = await kubelet.allocate(RES, [["gpu-0"], ["gpu-0", "gpu-1"]])
    assert len(response.container_responses) == 2
    first, second = response.container_responses
    assert dict(first.envs) == {"NVIDIA_VISIBLE_DEVICES": "gpu-0", "CUDA_DEVICE_MEMORY_LIMIT_0": "1024m"}
    assert dict(second.envs)["NVIDIA_VISIBLE_DEVICES"] == "gpu-0,gpu-1"
    assert [(m.container_path, m.host_path, m.read_only) for m in second.mounts] == [
        ("/usr/local/vgpu/libvgpu.so", "/opt/vgpu/libvgpu.so", True), ("/tmp/vgpulock", "/tmp/vgpulock", False)]
    assert [(d.container_path, d.host_path, d.permissions) for d in second.devices] == [
        ("/dev/nvidia0", "/dev/nvidia0", "rw"), ("/dev/nvidia1", "/dev/nvidia1", "rw")]
    assert dict(second.annotations) == {"vgpu-pool.io/ids": "gpu-0,gpu-1"}
    assert [c.name for c in second.cdi_devices] == ["nvidia.com/gpu=gpu-0", "nvidia.com/gpu=gpu-1"]
    assert [d.host_path for d in first.devices] == ["/dev/nvidia0"]


async def test_allocate_error_reaches_kubelet(plugin: DevicePluginServer, kubelet: FakeKubelet) -> None:
    await kubelet.wait_registered(RES)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await kubelet.allocate(RES, [["gpu-0"], ["gone"]])
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.details() == "device gone was removed from the node"

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await kubelet.allocate(RES, [["boom"]])
    assert info.value.code() == grpc.StatusCode.UNKNOWN
    assert "unexpected" in (info.value.details() or "")


async def test_kubelet_restart_reregisters_and_resumes(plugin: DevicePluginServer, kubelet: FakeKubelet,
                                                       gpus: Gpus) -> None:
    await kubelet.wait_devices(RES, lambda ds: len(ds) == 2)
    await kubelet.restart()
    assert [r.resource_name for r in kubelet.registrations] == [RES, RES]
    await eventually(lambda: plugin.registrations == 2 and plugin.registered)
    devices = await kubelet.wait_devices(RES, lambda ds: len(ds) == 2)
    assert {d.ID for d in devices} == {"gpu-0", "gpu-1"}

    seen = kubelet.update_count(RES)
    gpus.state["gpu-0"] = (False, 0)
    await plugin.notify()
    devices = await kubelet.wait_update(RES, after=seen)
    assert {d.ID: d.health for d in devices}["gpu-0"] == UNHEALTHY
    response = await kubelet.allocate(RES, [["gpu-1"]])
    assert response.container_responses[0].envs["NVIDIA_VISIBLE_DEVICES"] == "gpu-1"


async def test_plugin_socket_removed_restarts_server(plugin: DevicePluginServer, kubelet: FakeKubelet) -> None:
    await kubelet.wait_devices(RES, lambda ds: len(ds) == 2)
    os.unlink(plugin.socket_path)
    await eventually(lambda: len(kubelet.registrations) == 2)
    assert os.path.exists(plugin.socket_path)
    await kubelet.wait_devices(RES, lambda ds: len(ds) == 2)
    assert (await kubelet.allocate(RES, [["gpu-0"]])).container_responses[0].envs


async def test_registers_when_kubelet_comes_up_later(sockdir: str, gpus: Gpus) -> None:
    server = make_server(sockdir, gpus)
    await server.start()  # no kubelet.sock yet: serves, registration waits
    try:
        assert not server.registered
        assert not os.path.exists(os.path.join(sockdir, KUBELET_SOCKET))
        async with FakeKubelet(sockdir) as kubelet:
            await kubelet.wait_registered(RES)
            await kubelet.wait_devices(RES, lambda ds: len(ds) == 2)
            await eventually(lambda: server.registered)
    finally:
        await server.stop()


async def test_stale_socket_replaced_and_removed_on_stop(sockdir: str, gpus: Gpus, kubelet: FakeKubelet) -> None:
    server = make_server(sockdir, gpus)
    with open(server.socket_path, "w") as f:
        f.write("stale")
    await server.start()
    await kubelet.wait_devices(RES, lambda ds: len(ds) == 2)
    await server.stop()
    assert not os.path.exists(server.socket_path)
    assert not server.registered


async def test_get_device_plugin_options(plugin: DevicePluginServer, kubelet: FakeKubelet) -> None:
    await kubelet.wait_registered(RES)
    options = await kubelet.options(RES)
    assert not options.pre_start_required and not options.get_preferred_allocation_available
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await kubelet.preferred_allocation(RES, ["gpu-0", "gpu-1"], size=1)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    await kubelet.pre_start_container(RES, ["gpu-0"])


async def test_preferred_allocation_when_enabled(sockdir: str, gpus: Gpus, kubelet: FakeKubelet) -> None:
    server = make_server(sockdir, gpus, preferred_handler=prefer_last, pre_start_required=True)
    await server.start()
    try:
        request = await kubelet.wait_registered(RES)
        assert request.options.get_preferred_allocation_available and request.options.pre_start_required
        options = await kubelet.options(RES)
        assert options.get_preferred_allocation_available and options.pre_start_required
        assert await kubelet.preferred_allocation(RES, ["gpu-0", "gpu-1", "gpu-2"], size=2) == ["gpu-2", "gpu-1"]
        assert await kubelet.preferred_allocation(RES, ["gpu-0", "gpu-1", "gpu-2"], ["gpu-0"], 2) == [
            "gpu-0", "gpu-2"]
    finally:
        await server.stop()


async def test_plugin_manager_runs_several_resources(sockdir: str, gpus: Gpus, kubelet: FakeKubelet) -> None:
    async def no_op(requests: list[list[str]]) -> list[ContainerAllocation]:
        return [ContainerAllocation() for _ in requests]

    memory = [(f"mem-{i}", True, None) for i in range(4)]
    manager = PluginManager([
        make_server(sockdir, gpus),
        DevicePluginServer("volcano.sh/vgpu-memory", sockdir, "vgpu-memory.sock", lambda: memory, no_op,
                           watch_interval=0.05),
    ])
    with pytest.raises(ValueError):
        manager.add(make_server(sockdir, gpus))
    async with manager:
        await kubelet.wait_devices(RES, lambda ds: len(ds) == 2)
        await kubelet.wait_devices("volcano.sh/vgpu-memory", lambda ds: len(ds) == 4)
        seen = kubelet.update_count("volcano.sh/vgpu-memory")
        memory.pop()
        await manager.notify()
        assert len(await kubelet.wait_update("volcano.sh/vgpu-memory", after=seen)) == 3
        response = await kubelet.allocate("volcano.sh/vgpu-memory", [["mem-0", "mem-1"]])
        assert len(response.container_responses) == 1 and not response.container_responses[0].envs
        await kubelet.restart()
        assert {r.resource_name for r in kubelet.registrations[2:]} == {RES, "volcano.sh/vgpu-memory"}
    assert not os.path.exists(manager[RES].socket_path)


async def test_failing_devices_provider_keeps_the_stream(plugin: DevicePluginServer, kubelet: FakeKubelet,
                                                         gpus: Gpus, monkeypatch: pytest.MonkeyPatch) -> None:
    await kubelet.wait_devices(RES, lambda ds: len(ds) == 2)
    seen = kubelet.update_count(RES)

    def broken() -> list[tuple[str, bool, int | None]]:
        raise RuntimeError("nvml went away")

    monkeypatch.setattr(plugin, "_devices_provider", broken)
    await plugin.notify()
    await asyncio.sleep(0.1)
    assert kubelet.update_count(RES) == seen and not kubelet.plugins[RES].stream_ended
    monkeypatch.setattr(plugin, "_devices_provider", gpus)
    gpus.state["gpu-0"] = (False, 0)
    await plugin.notify()
    devices = await kubelet.wait_update(RES, after=seen)
    assert devices[0].health == UNHEALTHY
