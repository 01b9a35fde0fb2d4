"""Pod-resources verifier against the fake kubelet pod-resources server, over real unix sockets."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from nodeagent.podresources import Expectation, Outcome, PodResourcesVerifier, api_pb2, api_pb2_grpc
from vgpupool_testing.podresources import FakePodResources

RES = "volcano.sh/vgpu-number"
LOGGER = "nodeagent.podresources.verifier"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    def __init__(self) -> None:
        self.mismatches: list[tuple[Expectation, str]] = []
        self.confirmed: list[Expectation] = []

    def on_mismatch(self, e: Expectation, detail: str) -> None:
        self.mismatches.append((e, detail))

    def on_confirmed(self, e: Expectation) -> None:
        self.confirmed.append(e)


@pytest.fixture
def sockdir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="pr", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def kubelet(sockdir: str) -> AsyncIterator[FakePodResources]:
    async with FakePodResources(sockdir) as k:
        yield k


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
async def verifier(sockdir: str, clock: Clock, rec: Recorder) -> AsyncIterator[PodResourcesVerifier]:
    v = PodResourcesVerifier(os.path.join(sockdir, "kubelet.sock"), interval=0.01, timeout=120.0, clock=clock,
                             on_mismatch=rec.on_mismatch, on_confirmed=rec.on_confirmed)
    yield v
    await v.close()


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


async def test_confirmed_once_kubelet_lists_the_pod(
        kubelet: FakePodResources, verifier: PodResourcesVerifier, rec: Recorder) -> None:
    e = verifier.expect("ml", "train-0", "main", RES, ["gpu-0-1", "gpu-0-2"])
    assert await verifier.check_once() == []  # not listed yet: keep waiting
    assert verifier.available and verifier.pending == [e]

    kubelet.set_pods([("ml", "other", [("main", [("nvidia.com/gpu", ["gpu-0-1"])])]),  # same id, other resource
                      ("ml", "train-0", [("main", [(RES, ["gpu-0-2", "gpu-0-1"])])])])
    [verdict] = await verifier.check_once()
    assert verdict.outcome is Outcome.CONFIRMED and verdict.expectation is e
    assert rec.confirmed == [e] and rec.mismatches == []
    assert verifier.pending == []


async def test_mismatch_when_ids_are_listed_under_another_pod(
        kubelet: FakePodResources, verifier: PodResourcesVerifier, rec: Recorder,
        caplog: pytest.LogCaptureFixture) -> None:
    verifier.expect("ml", "train-0", "main", RES, ["gpu-0-1"])
    kubelet.set_pods([("ml", "train-1", [("main", [(RES, ["gpu-0-1"])])])])
    [verdict] = await verifier.check_once()
    assert verdict.outcome is Outcome.MISMATCH
    [(e, detail)] = rec.mismatches
    assert e.pod == "train-0" and "ml/train-1 container main" in detail and "gpu-0-1" in detail
    [error] = records(caplog, logging.ERROR)
    assert "ml/train-0" in error and "ml/train-1" in error and "gpu-0-1" in error
    assert verifier.pending == [] and rec.confirmed == []


async def test_mismatch_when_the_pod_lists_different_ids(
        kubelet: FakePodResources, verifier: PodResourcesVerifier, rec: Recorder,
        caplog: pytest.LogCaptureFixture) -> None:
    verifier.expect("ml", "train-0", "main", RES, ["gpu-0-1"])
    kubelet.set_pods([("ml", "train-0", [("main", [(RES, ["gpu-1-3"])])])])
    [verdict] = await verifier.check_once()
    assert verdict.outcome is Outcome.MISMATCH
    [(_, detail)] = rec.mismatches
    assert "gpu-1-3" in detail
    [error] = records(caplog, logging.ERROR)
    assert "gpu-0-1" in error and "gpu-1-3" in error


async def test_swapped_guess_reports_both_pods(
        kubelet: FakePodResources, verifier: PodResourcesVerifier, rec: Recorder) -> None:
    # The agent thought train-0 got gpu-0-1 and train-1 got gpu-0-2; kubelet admitted them the other way round.
    verifier.expect("ml", "train-0", "main", RES, ["gpu-0-1"])
    verifier.expect("ml", "train-1", "main", RES, ["gpu-0-2"])
    kubelet.set_pods([("ml", "train-0", [("main", [(RES, ["gpu-0-2"])])]),
                      ("ml", "train-1", [("main", [(RES, ["gpu-0-1"])])])])
    verdicts = await verifier.check_once()
    assert [v.outcome for v in verdicts] == [Outcome.MISMATCH, Outcome.MISMATCH]
    assert {e.pod for e, _ in rec.mismatches} == {"train-0", "train-1"}


async def test_other_container_of_the_same_pod_is_a_mismatch(
        kubelet: FakePodResources, verifier: PodResourcesVerifier, rec: Recorder) -> None:
    verifier.expect("ml", "train-0", "main", RES, ["gpu-0-1"])
    kubelet.set_pods([("ml", "train-0", [("main", []), ("sidecar", [(RES, ["gpu-0-1"])])])])
    [verdict] = await verifier.check_once()
    assert verdict.outcome is Outcome.MISMATCH and "container sidecar" in verdict.detail


async def test_expired_when_the_pod_never_shows_up(
        kubelet: FakePodResources, verifier: PodResourcesVerifier, rec: Recorder, clock: Clock,
        caplog: pytest.LogCaptureFixture) -> None:
    verifier.expect("ml", "gone", "main", RES, ["gpu-0-1"])
    clock.now += 119
    assert await verifier.check_once() == []
    clock.now += 1
    [verdict] = await verifier.check_once()
    assert verdict.outcome is Outcome.EXPIRED
    assert rec.mismatches == [] and rec.confirmed == [] and verifier.pending == []
    assert records(caplog, logging.ERROR) == []
    [warning] = records(caplog, logging.WARNING)
    assert "ml/gone" in warning and "gpu-0-1" in warning


async def test_no_list_call_without_pending_expectations(
        kubelet: FakePodResources, verifier: PodResourcesVerifier) -> None:
    await verifier.check_once()
    await verifier.check_once()
    assert verifier.available and kubelet.list_calls == 0
    verifier.expect("ml", "train-0", "main", RES, ["gpu-0-1"])
    await verifier.check_once()
    assert kubelet.list_calls == 1


async def test_socket_absent_disables_with_one_info_line(
        verifier: PodResourcesVerifier, rec: Recorder, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    for _ in range(3):
        assert await verifier.check_once() == []
    assert not verifier.available
    [info] = records(caplog, logging.INFO)
    assert "not available" in info and verifier.socket_path in info

    verifier.expect("ml", "train-0", "main", RES, ["gpu-0-1"])
    clock.now += 121
    assert await verifier.check_once() == []
    assert verifier.pending == []  # dropped: it could not be checked, so no warning about it
    assert records(caplog, logging.WARNING) == [] and records(caplog, logging.ERROR) == []
    assert rec.mismatches == [] and rec.confirmed == []


async def test_socket_appearing_later_enables(
        sockdir: str, verifier: PodResourcesVerifier, rec: Recorder, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    e = verifier.expect("ml", "train-0", "main", RES, ["gpu-0-1"])
    await verifier.check_once()
    assert not verifier.available and verifier.pending == [e]  # kept until it expires: kubelet may be restarting

    kubelet = FakePodResources(sockdir)
    kubelet.set_pods([("ml", "train-0", [("main", [(RES, ["gpu-0-1"])])])])
    await kubelet.start()
    try:
        [verdict] = await verifier.check_once()
        assert verifier.available and verdict.outcome is Outcome.CONFIRMED and rec.confirmed == [e]

        await kubelet.stop()  # kubelet restarts: the socket goes away and comes back
        await verifier.check_once()
        assert not verifier.available
        await kubelet.start()
        e2 = verifier.expect("ml", "train-1", "main", RES, ["gpu-0-2"])
        kubelet.set_pods([("ml", "train-1", [("main", [(RES, ["gpu-0-2"])])])])
        [verdict] = await verifier.check_once()
        assert verifier.available and verdict.expectation is e2 and verdict.outcome is Outcome.CONFIRMED
    finally:
        await kubelet.stop()
    infos = records(caplog, logging.INFO)
    assert len(infos) == 4 and "not available" in infos[0] and "found" in infos[1]


async def test_list_failure_warns_once_and_keeps_waiting(
        sockdir: str, verifier: PodResourcesVerifier, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    with open(verifier.socket_path, "w"):
        pass  # a stale file where the socket should be: nothing answers
    verifier.expect("ml", "train-0", "main", RES, ["gpu-0-1"])
    for _ in range(2):
        assert await verifier.check_once() == []
    assert verifier.available and len(verifier.pending) == 1
    clock.now += 120
    assert await verifier.check_once() == [] and verifier.pending == []  # dropped: it could not be checked
    [warning] = records(caplog, logging.WARNING)
    assert "List" in warning


async def test_run_loop_confirms_in_the_background(
        kubelet: FakePodResources, verifier: PodResourcesVerifier, rec: Recorder) -> None:
    task = asyncio.create_task(verifier.run())
    try:
        e = verifier.expect("ml", "train-0", "main", RES, ["gpu-0-1"])
        await asyncio.sleep(0.05)
        kubelet.set_pods([("ml", "train-0", [("main", [(RES, ["gpu-0-1"])])])])
        async with asyncio.timeout(5):
            while not rec.confirmed:
                await asyncio.sleep(0.01)
        assert rec.confirmed == [e]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_callback_failure_is_contained(
        kubelet: FakePodResources, sockdir: str, caplog: pytest.LogCaptureFixture) -> None:
    def boom(e: Expectation, detail: str) -> None:
        raise RuntimeError("boom")

    v = PodResourcesVerifier(kubelet.socket_path, on_mismatch=boom)
    try:
        v.expect("ml", "train-0", "main", RES, ["gpu-0-1"])
        kubelet.set_pods([("ml", "train-1", [("main", [(RES, ["gpu-0-1"])])])])
        [verdict] = await v.check_once()
        assert verdict.outcome is Outcome.MISMATCH and v.pending == []
        assert any("callback" in m for m in records(caplog, logging.ERROR))
    finally:
        await v.close()


async def test_fake_server_get_and_allocatable(kubelet: FakePodResources) -> None:
    kubelet.set_pods([("ml", "train-0", [("main", [(RES, ["gpu-0-1"])])])])
    kubelet.set_allocatable([(RES, ["gpu-0-1", "gpu-0-2"])])
    async with grpc.aio.insecure_channel(f"unix://{kubelet.socket_path}") as channel:
        stub = api_pb2_grpc.PodResourcesListerStub(channel)
        got = await stub.Get(api_pb2.GetPodResourcesRequest(pod_namespace="ml", pod_name="train-0"), timeout=5)
        assert got.pod_resources.containers[0].devices[0].device_ids == ["gpu-0-1"]
        alloc = await stub.GetAllocatableResources(api_pb2.AllocatableResourcesRequest(), timeout=5)
        assert list(alloc.devices[0].device_ids) == ["gpu-0-1", "gpu-0-2"]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Get(api_pb2.GetPodResourcesRequest(pod_namespace="ml", pod_name="nope"), timeout=5)
        assert "not found" in (err.value.details() or "")


def test_expect_needs_device_ids(verifier: PodResourcesVerifier) -> None:
    with pytest.raises(ValueError):
        verifier.expect("ml", "train-0", "main", RES, [])


async def test_large_list_over_the_default_grpc_limit(
        kubelet: FakePodResources, verifier: PodResourcesVerifier, rec: Recorder) -> None:
    # A memory resource advertises one device id per MiB: a busy node lists far more than gRPC's default 4 MiB.
    mem = "nvidia.com/gpumem"
    kubelet.set_pods([("ml", f"big-{p}", [("main", [(mem, [f"GPU-{p:04d}-mem-{i}" for i in range(40_000)])])])
                      for p in range(8)]
                     + [("ml", "train-0", [("main", [(RES, ["gpu-0-1"]), (mem, ["GPU-0009-mem-1"])])])])
    e = verifier.expect("ml", "train-0", "main", RES, ["gpu-0-1"])
    m = verifier.expect("ml", "train-0", "main", mem, ["GPU-0009-mem-1"])
    verdicts = await verifier.check_once()
    assert {(v.expectation, v.outcome) for v in verdicts} == {(e, Outcome.CONFIRMED), (m, Outcome.CONFIRMED)}
