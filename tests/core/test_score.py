"""Node scores (binpack / spread over GPU memory, CPU and host memory, with weights) and GPU order,
computed from the state before the pod is added."""

from __future__ import annotations

import pytest

from vcplugin.core.cluster import best_node
from vcplugin.core.node import NodeState
from vcplugin.core.score import node_score, order_gpus, utilisation
from vcplugin.core.types import Assignment

from .helpers import DEFAULT, config, gpus, request, snapshot

GPU, MEM = "nvidia.com/gpu", "nvidia.com/gpumem"
H100 = "NVIDIA H100 80GB HBM3"
T4 = "Tesla T4"
A100 = "NVIDIA A100-PCIE-40GB"


def nodes(cfg=DEFAULT, cpu=0, mem=0, specs=((T4, "hami-core"),)):
    return [NodeState(name, gpus(name, specs, cfg), cpu, mem) for name in ("n1", "n2", "n3")]


def put(n: NodeState, name: str, cfg=DEFAULT, **kw) -> None:
    a = n.allocate(request(cfg, name=name, **kw), cfg)
    assert isinstance(a, Assignment)


def policy_ann(node_policy=None, gpu_policy=None):
    ann = {}
    if node_policy:
        ann["hami.io/node-scheduler-policy"] = node_policy
    if gpu_policy:
        ann["hami.io/gpu-scheduler-policy"] = gpu_policy
    return ann or None


def test_binpack_prefers_the_busiest_node_spread_the_idlest() -> None:
    ns = nodes()
    put(ns[1], "a", limits={GPU: 1, MEM: 8000})
    put(ns[2], "b", limits={GPU: 1, MEM: 2000})
    for policy, expected in (("binpack", "n2"), ("spread", "n1")):
        req = request(name="x", annotations=policy_ann(policy), limits={GPU: 1, MEM: 1000})
        got = best_node(ns, req, DEFAULT)
        assert not isinstance(got, dict)
        assert got[0].name == expected, policy


def test_config_node_policy_is_the_default() -> None:
    cfg = config("scheduler:\n  nodePolicy: spread\n")
    ns = nodes(cfg)
    put(ns[0], "a", cfg, limits={GPU: 1, MEM: 8000})
    got = best_node(ns, request(cfg, name="x", limits={GPU: 1, MEM: 1000}), cfg)
    assert got[0].name == "n2"
    got = best_node(ns, request(cfg, name="y", annotations=policy_ann("binpack"), limits={GPU: 1, MEM: 1000}), cfg)
    assert got[0].name == "n1"


def test_score_is_computed_before_the_pod_is_added() -> None:
    """Volcano computed spread after bumping usage, so an empty node scored 0; score before."""
    ns = nodes()
    req = request(name="x", annotations=policy_ann("spread"), limits={GPU: 1, MEM: 15360})
    before = [snapshot(n) for n in ns]
    got = best_node(ns, req, DEFAULT)
    assert not isinstance(got, dict)
    assert got[2] == pytest.approx(100.0)
    assert [snapshot(n) for n in ns] == before  # scoring placed nothing
    assert node_score(ns[0], DEFAULT, "spread") == pytest.approx(100.0)
    assert node_score(ns[0], DEFAULT, "binpack") == pytest.approx(0.0)


def test_binpack_score_of_half_used_node() -> None:
    n = nodes()[0]
    put(n, "a", limits={GPU: 1, MEM: 7680})
    assert node_score(n, DEFAULT, "binpack") == pytest.approx(50.0)
    assert node_score(n, DEFAULT, "spread") == pytest.approx(50.0)


def test_cpu_and_host_memory_count_too() -> None:
    ns = nodes(cpu=10_000, mem=10 * 2**30)
    put(ns[0], "gpu-heavy", limits={GPU: 1, MEM: 3072})  # 20 % GPU memory
    put(ns[1], "cpu-heavy", limits={GPU: 1, MEM: 1536}, requests={"cpu": "8", "memory": "8Gi"})
    u0, u1 = utilisation(ns[0], DEFAULT), utilisation(ns[1], DEFAULT)
    assert u0 == pytest.approx(0.2 / 3)
    assert u1 == pytest.approx((0.1 + 0.8 + 0.8) / 3)
    got = best_node(ns, request(name="x", annotations=policy_ann("binpack"), limits={GPU: 1, MEM: 100}), DEFAULT)
    assert got[0].name == "n2"


def test_weights() -> None:
    cfg = config("scheduler:\n  weights: {gpuMemory: 1, cpu: 0, memory: 0}\n")
    ns = nodes(cfg, cpu=10_000, mem=10 * 2**30)
    put(ns[0], "gpu-heavy", cfg, limits={GPU: 1, MEM: 3072})
    put(ns[1], "cpu-heavy", cfg, limits={GPU: 1, MEM: 1536}, requests={"cpu": "8", "memory": "8Gi"})
    assert utilisation(ns[0], cfg) == pytest.approx(0.2)
    assert utilisation(ns[1], cfg) == pytest.approx(0.1)
    got = best_node(ns, request(cfg, name="x", annotations=policy_ann("binpack"), limits={GPU: 1, MEM: 100}), cfg)
    assert got[0].name == "n1"
    cfg2 = config("scheduler:\n  weights: {gpuMemory: 0, cpu: 1, memory: 0}\n")
    assert utilisation(ns[0], cfg2) == pytest.approx(0.0)
    assert utilisation(ns[1], cfg2) == pytest.approx(0.8)


def test_weighted_mean() -> None:
    cfg = config("scheduler:\n  weights: {gpuMemory: 3, cpu: 1, memory: 0}\n")
    n = nodes(cfg, cpu=10_000, mem=10 * 2**30)[0]
    put(n, "a", cfg, limits={GPU: 1, MEM: 7680}, requests={"cpu": "1", "memory": "9Gi"})
    assert utilisation(n, cfg) == pytest.approx((3 * 0.5 + 1 * 0.1) / 4)


def test_nodes_that_do_not_fit_are_skipped() -> None:
    ns = nodes()
    put(ns[1], "full", limits={GPU: 1, MEM: 15000})
    got = best_node(ns, request(name="x", annotations=policy_ann("binpack"), limits={GPU: 1, MEM: 1000}), DEFAULT)
    assert got[0].name != "n2"
    got = best_node(ns, request(name="y", limits={GPU: 1, MEM: 99999}), DEFAULT)
    assert isinstance(got, dict) and set(got) == {"n1", "n2", "n3"}


# --- GPU order within a node -----------------------------------------------------------------------


@pytest.mark.parametrize(("policy", "expected_index"), [("binpack", 1), ("spread", 0)])
def test_gpu_policy_hami_core(policy: str, expected_index: int) -> None:
    n = NodeState("n", gpus("n", [(T4, "hami-core"), (T4, "hami-core"), (T4, "hami-core")]))
    put(n, "a", limits={GPU: 1, MEM: 1000}, annotations={"nvidia.com/use-gpuuuid": n.gpus[1].uuid})
    put(n, "b", limits={GPU: 1, MEM: 500}, annotations={"nvidia.com/use-gpuuuid": n.gpus[2].uuid})
    req = request(name="x", annotations=policy_ann(gpu_policy=policy), limits={GPU: 1, MEM: 100})
    a = n.fit(req, DEFAULT)
    assert isinstance(a, Assignment) and a.devices()[0].index == expected_index


@pytest.mark.parametrize(("policy", "expected_index"), [("binpack", 0), ("spread", 1)])
def test_gpu_policy_mig(policy: str, expected_index: int) -> None:
    n = NodeState("n", gpus("n", [(A100, "mig"), (A100, "mig")]))
    put(n, "a", limits={GPU: 1, MEM: 4000}, annotations={"nvidia.com/use-gpuuuid": n.gpus[0].uuid})
    req = request(name="x", annotations=policy_ann(gpu_policy=policy), limits={GPU: 1, MEM: 4000})
    a = n.fit(req, DEFAULT)
    assert isinstance(a, Assignment) and a.devices()[0].index == expected_index


def test_config_gpu_policy_default_is_spread_and_configurable() -> None:
    assert DEFAULT.gpu_policy == "spread"
    assert DEFAULT.node_policy == "binpack"
    cfg = config("scheduler:\n  gpuPolicy: binpack\n")
    n = NodeState("n", gpus("n", [(T4, "hami-core"), (T4, "hami-core")], cfg))
    put(n, "a", cfg, limits={GPU: 1, MEM: 1000}, annotations={"nvidia.com/use-gpuuuid": n.gpus[1].uuid})
    a = n.fit(request(cfg, name="x", limits={GPU: 1, MEM: 100}), cfg)
    assert a.devices()[0].index == 1


def test_order_gpus_ties_by_index() -> None:
    gs = gpus("n", [(T4, "hami-core")] * 3)
    assert [g.index for g in order_gpus(list(reversed(gs)), "binpack")] == [0, 1, 2]
    assert [g.index for g in order_gpus(list(reversed(gs)), "spread")] == [0, 1, 2]


def test_best_node_is_deterministic_on_ties() -> None:
    ns = nodes()
    req = request(name="x", limits={GPU: 1, MEM: 1000})
    picks = {best_node(ns, req, DEFAULT)[0].name for _ in range(5)}
    assert picks == {"n1"}
