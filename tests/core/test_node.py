"""The unified pool: modes, GPU type/UUID filters, host resources, and fit() leaving state unchanged."""

from __future__ import annotations

import pytest

from vcplugin.core.node import NodeState, type_matches
from vcplugin.core.types import Assignment, Rejection

from .helpers import DEFAULT, gpus, node, request, snapshot

GPU, MEM, CORES = "nvidia.com/gpu", "nvidia.com/gpumem", "nvidia.com/gpucores"
A100 = "NVIDIA A100-PCIE-40GB"
H100 = "NVIDIA H100 80GB HBM3"
T4 = "Tesla T4"


def alloc(n, name="p", mode=None, annotations=None, **kw):
    ann = dict(annotations or {})
    if mode:
        ann["nvidia.com/vgpu-mode"] = mode
    return n.allocate(request(name=name, annotations=ann or None, **kw), DEFAULT)


def modes(a: Assignment) -> set[str]:
    return {d.mode for d in a.devices()}


def test_pod_without_mode_lands_on_mig_node() -> None:
    n = node("n", [(A100, "mig")])
    a = alloc(n, limits={GPU: 1, MEM: 4000})
    assert isinstance(a, Assignment) and modes(a) == {"mig"}


def test_pod_without_mode_lands_on_hami_core_node() -> None:
    n = node("n", [(H100, "hami-core")])
    a = alloc(n, limits={GPU: 1, MEM: 4000})
    assert isinstance(a, Assignment) and modes(a) == {"hami-core"}


@pytest.mark.parametrize(("gpu_mode", "pod_mode"), [("mig", "hami-core"), ("hami-core", "mig")])
def test_pod_with_mode_only_on_that_kind(gpu_mode: str, pod_mode: str) -> None:
    n = node("n", [(A100, gpu_mode)])
    before = snapshot(n)
    r = alloc(n, mode=pod_mode, limits={GPU: 1, MEM: 4000})
    assert isinstance(r, Rejection)
    assert r.code == 3  # no GPU of that mode, ever
    assert snapshot(n) == before


@pytest.mark.parametrize("pod_mode", ["mig", "hami-core"])
def test_pod_with_mode_on_mixed_node(pod_mode: str) -> None:
    n = NodeState("n", gpus("n", [(A100, "mig"), (A100, "hami-core")]))
    a = alloc(n, mode=pod_mode, limits={GPU: 1, MEM: 4000})
    assert isinstance(a, Assignment) and modes(a) == {pod_mode}
    dev = a.devices()[0]
    assert n.gpu(dev.uuid).mode == pod_mode


def test_pod_without_mode_uses_mig_when_hami_core_is_full() -> None:
    n = NodeState("n", gpus("n", [(A100, "mig"), (T4, "hami-core")]))
    a = alloc(n, "big", limits={GPU: 1, MEM: 16000})  # no T4 holds 16000 MiB; a 3g.20gb does
    assert isinstance(a, Assignment) and modes(a) == {"mig"}
    b = alloc(n, "small", limits={GPU: 1, MEM: 1000})
    assert isinstance(b, Assignment)


def test_without_mode_devices_match_their_gpus() -> None:
    n = NodeState("n", gpus("n", [(A100, "mig"), (T4, "hami-core")]))
    a = alloc(n, limits={GPU: 2, MEM: 4000})
    assert isinstance(a, Assignment)
    assert len(a.devices()) == 2
    for d in a.devices():
        assert n.gpu(d.uuid).mode == d.mode


def test_node_mode_from_nodeconfig_default_hami_core() -> None:
    from .helpers import config

    cfg = config("nvidia:\n  nodeconfig:\n  - {name: m, operatingmode: mig}\n")
    assert cfg.node("m").mode == "mig"
    assert cfg.node("other").mode == "hami-core"


# --- GPU type and UUID filters --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wanted", "model", "match"),
    [
        ("A100", "NVIDIA A100-PCIE-40GB", True),
        ("a100", "NVIDIA A100-PCIE-40GB", True),
        ("A100-PCIE-40GB", "NVIDIA A100-PCIE-40GB", True),
        ("NVIDIA A100-PCIE-40GB", "NVIDIA A100-PCIE-40GB", True),
        ("H100", "NVIDIA H100 80GB HBM3", True),
        ("H20", "NVIDIA H200", False),
        ("H20", "NVIDIA H200 NVL", False),
        ("H200", "NVIDIA H200 NVL", True),
        ("A10", "NVIDIA A100-PCIE-40GB", False),
        ("T4", "Tesla T4", True),
    ],
)
def test_type_matches(wanted: str, model: str, match: bool) -> None:
    assert type_matches(wanted, model) is match


def test_use_gputype() -> None:
    n = NodeState("n", gpus("n", [(T4, "hami-core"), (H100, "hami-core")]))
    a = alloc(n, "a", annotations={"nvidia.com/use-gputype": "H100"}, limits={GPU: 1, MEM: 100})
    assert isinstance(a, Assignment) and a.devices()[0].index == 1
    r = alloc(n, "b", annotations={"nvidia.com/use-gputype": "A100"}, limits={GPU: 1, MEM: 100})
    assert isinstance(r, Rejection)


def test_nouse_gputype() -> None:
    n = NodeState("n", gpus("n", [(T4, "hami-core"), (H100, "hami-core")]))
    a = alloc(n, "a", annotations={"nvidia.com/nouse-gputype": "H100,A100"}, limits={GPU: 1, MEM: 100})
    assert isinstance(a, Assignment) and a.devices()[0].index == 0
    r = alloc(n, "b", annotations={"nvidia.com/nouse-gputype": "H100, T4"}, limits={GPU: 1, MEM: 100})
    assert isinstance(r, Rejection)


def test_use_gputype_h20_does_not_pick_h200() -> None:
    n = NodeState("n", gpus("n", [("NVIDIA H200", "mig")]))
    r = alloc(n, annotations={"nvidia.com/use-gputype": "H20"}, limits={GPU: 1, MEM: 100})
    assert isinstance(r, Rejection)


def test_use_and_nouse_gpuuuid() -> None:
    n = NodeState("n", gpus("n", [(T4, "hami-core"), (T4, "hami-core")]))
    a = alloc(n, "a", annotations={"nvidia.com/use-gpuuuid": n.gpus[1].uuid}, limits={GPU: 1, MEM: 100})
    assert a.devices()[0].uuid == n.gpus[1].uuid
    b = alloc(n, "b", annotations={"nvidia.com/nouse-gpuuuid": n.gpus[0].uuid}, limits={GPU: 1, MEM: 100})
    assert b.devices()[0].uuid == n.gpus[1].uuid


# --- host resources, empty nodes ------------------------------------------------------------------


def test_host_cpu_and_memory() -> None:
    n = NodeState("n", gpus("n", [(H100, "hami-core")]), cpu_capacity=4000, memory_capacity=8 * 2**30)
    a = alloc(n, "a", limits={GPU: 1, MEM: 100}, requests={"cpu": "3", "memory": "4Gi"})
    assert isinstance(a, Assignment)
    assert (n.cpu_used, n.memory_used) == (3000, 4 * 2**30)
    r = alloc(n, "b", limits={GPU: 1, MEM: 100}, requests={"cpu": "2"})
    assert isinstance(r, Rejection) and r.code == 2
    r = alloc(n, "c", limits={GPU: 1, MEM: 100}, requests={"cpu": "5"})
    assert isinstance(r, Rejection) and r.code == 3
    r = alloc(n, "d", limits={GPU: 1, MEM: 100}, requests={"memory": "5Gi"})
    assert isinstance(r, Rejection)
    n.release("uid-default-a")
    assert (n.cpu_used, n.memory_used) == (0, 0)


def test_pod_without_gpu_fits_a_gpu_node() -> None:
    n = NodeState("n", gpus("n", [(H100, "hami-core")]))
    a = alloc(n, limits={"cpu": "1"})
    assert isinstance(a, Assignment) and a.containers == ()


def test_gpu_pod_on_node_without_gpus() -> None:
    n = NodeState("n", [])
    r = alloc(n, limits={GPU: 1})
    assert isinstance(r, Rejection) and r.code == 3


# --- fit() ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("specs", "limits", "mode"),
    [
        ([(A100, "mig")], {GPU: 2, MEM: 8000}, "mig"),
        ([(A100, "mig"), (A100, "mig")], {GPU: 4, MEM: 9000}, None),
        ([(H100, "hami-core"), (T4, "hami-core")], {GPU: 2, MEM: 8000, CORES: 30}, None),
        ([(T4, "hami-core")], {GPU: 2, MEM: 100}, None),
        ([(A100, "mig")], {GPU: 9, MEM: 100}, None),
    ],
)
def test_fit_leaves_state_unchanged_and_predicts_allocate(specs, limits, mode) -> None:
    n = NodeState("n", gpus("n", specs))
    alloc(n, "warm", mode=mode, limits={GPU: 1, MEM: 3000})  # some state to preserve
    before = snapshot(n)
    ann = {"nvidia.com/vgpu-mode": mode} if mode else None
    req = request(name="x", annotations=ann, limits=limits)
    f1 = n.fit(req, DEFAULT)
    assert snapshot(n) == before
    f2 = n.fit(req, DEFAULT)
    assert f1 == f2
    a = n.allocate(req, DEFAULT)
    assert a == f1
