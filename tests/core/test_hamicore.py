"""HAMi-core sharing rules: split count, memory scaling, cores <= 100, exclusive 100-core requests,
one GPU at most once per container."""

from __future__ import annotations

from vcplugin.core.types import Assignment, Rejection

from .helpers import DEFAULT, config, hami_node, node, request, snapshot

GPU, MEM, PCT, CORES = "nvidia.com/gpu", "nvidia.com/gpumem", "nvidia.com/gpumem-percentage", "nvidia.com/gpucores"
H100 = "NVIDIA H100 80GB HBM3"  # 81559 MiB
T4 = "Tesla T4"  # 15360 MiB


def alloc(n, cfg=DEFAULT, **kw):
    return n.allocate(request(cfg, **kw), cfg)


def test_share_memory_and_cores() -> None:
    n = hami_node(T4)
    a = alloc(n, name="a", limits={GPU: 1, MEM: 5000, CORES: 30})
    assert isinstance(a, Assignment)
    (d,) = a.devices()
    assert (d.mode, d.memory, d.cores, d.profile, d.placement) == ("hami-core", 5000, 30, None, None)
    g = n.gpus[0]
    assert (g.used_memory, g.used_cores, g.shares) == (5000, 30, 1)
    assert isinstance(alloc(n, name="b", limits={GPU: 1, MEM: 10360, CORES: 70}), Assignment)
    assert (g.used_memory, g.used_cores, g.shares) == (15360, 100, 2)
    assert isinstance(alloc(n, name="c", limits={GPU: 1, MEM: 1}), Rejection)  # memory full
    n.release("uid-default-b")
    assert (g.used_memory, g.used_cores, g.shares) == (5000, 30, 1)
    assert isinstance(alloc(n, name="d", limits={GPU: 1, MEM: 10360, CORES: 71}), Rejection)  # 101 cores
    assert isinstance(alloc(n, name="e", limits={GPU: 1, MEM: 10360, CORES: 70}), Assignment)


def test_memory_exactly_full_fits_and_one_more_does_not() -> None:
    n = hami_node(T4)
    assert isinstance(alloc(n, name="a", limits={GPU: 1, MEM: 15360}), Assignment)
    n.release("uid-default-a")
    assert isinstance(alloc(n, name="b", limits={GPU: 1, MEM: 15361}), Rejection)


def test_split_count() -> None:
    cfg = config("nvidia:\n  deviceSplitCount: 3\n")
    n = node("n", [(T4, "hami-core")], cfg)
    for i in range(3):
        assert isinstance(alloc(n, cfg, name=f"p{i}", limits={GPU: 1, MEM: 100}), Assignment)
    r = alloc(n, cfg, name="p3", limits={GPU: 1, MEM: 100})
    assert isinstance(r, Rejection)
    assert n.gpus[0].shares == 3


def test_split_count_per_node_from_nodeconfig() -> None:
    cfg = config("nvidia:\n  deviceSplitCount: 10\n  nodeconfig:\n  - {name: small, devicesplitcount: 1}\n")
    n = node("small", [(T4, "hami-core")], cfg)
    assert n.gpus[0].split_count == 1
    assert isinstance(alloc(n, cfg, name="a", limits={GPU: 1, MEM: 100}), Assignment)
    assert isinstance(alloc(n, cfg, name="b", limits={GPU: 1, MEM: 100}), Rejection)


def test_memory_scaling_oversubscribes() -> None:
    cfg = config("nvidia:\n  deviceMemoryScaling: 2\n")
    n = node("n", [(T4, "hami-core")], cfg)
    assert n.gpus[0].total_memory == 2 * 15360
    assert isinstance(alloc(n, cfg, name="a", limits={GPU: 1, MEM: 20000}), Assignment)
    assert isinstance(alloc(n, cfg, name="b", limits={GPU: 1, MEM: 10720}), Assignment)
    assert isinstance(alloc(n, cfg, name="c", limits={GPU: 1, MEM: 1}), Rejection)


def test_memory_scaling_below_one() -> None:
    cfg = config("nvidia:\n  deviceMemoryScaling: 0.5\n")
    n = node("n", [(T4, "hami-core")], cfg)
    assert isinstance(alloc(n, cfg, name="a", limits={GPU: 1, MEM: 7681}), Rejection)
    assert isinstance(alloc(n, cfg, name="b", limits={GPU: 1, MEM: 7680}), Assignment)


def test_core_scaling() -> None:
    cfg = config("nvidia:\n  deviceCoreScaling: 2\n")
    n = node("n", [(T4, "hami-core")], cfg)
    for i in range(4):
        assert isinstance(alloc(n, cfg, name=f"p{i}", limits={GPU: 1, MEM: 100, CORES: 50}), Assignment)
    assert isinstance(alloc(n, cfg, name="p4", limits={GPU: 1, MEM: 100, CORES: 1}), Rejection)


def test_percentage_of_gpu_memory() -> None:
    n = hami_node(T4)
    a = alloc(n, name="a", limits={GPU: 1, PCT: 25})
    assert isinstance(a, Assignment)
    assert a.devices()[0].memory == 15360 // 4


def test_no_memory_means_the_whole_gpu() -> None:
    n = hami_node(T4)
    a = alloc(n, name="a", limits={GPU: 1, CORES: 10})
    assert isinstance(a, Assignment) and a.devices()[0].memory == 15360
    assert isinstance(alloc(n, name="b", limits={GPU: 1, MEM: 1}), Rejection)


def test_exclusive_request_needs_an_idle_gpu() -> None:
    n = hami_node(T4)
    assert isinstance(alloc(n, name="small", limits={GPU: 1, MEM: 100, CORES: 0}), Assignment)
    r = alloc(n, name="excl", limits={GPU: 1, MEM: 100, CORES: 100})
    assert isinstance(r, Rejection)  # memory and cores would fit, but 100 cores means exclusive


def test_exclusive_holder_blocks_everyone() -> None:
    n = hami_node(T4)
    assert isinstance(alloc(n, name="excl", limits={GPU: 1, MEM: 100, CORES: 100}), Assignment)
    assert isinstance(alloc(n, name="zero-cores", limits={GPU: 1, MEM: 100, CORES: 0}), Rejection)
    n.release("uid-default-excl")
    assert isinstance(alloc(n, name="zero-cores", limits={GPU: 1, MEM: 100, CORES: 0}), Assignment)


def test_exclusive_with_core_scaling_still_exclusive() -> None:
    cfg = config("nvidia:\n  deviceCoreScaling: 2\n")
    n = node("n", [(T4, "hami-core")], cfg)
    assert isinstance(alloc(n, cfg, name="excl", limits={GPU: 1, MEM: 100, CORES: 100}), Assignment)
    assert isinstance(alloc(n, cfg, name="other", limits={GPU: 1, MEM: 100, CORES: 10}), Rejection)


def test_one_gpu_at_most_once_per_container() -> None:
    n = hami_node(T4, count=1)
    r = alloc(n, name="two", limits={GPU: 2, MEM: 100})
    assert isinstance(r, Rejection)
    assert n.gpus[0].shares == 0  # nothing half-taken
    n2 = hami_node(T4, count=3)
    a = alloc(n2, name="two", limits={GPU: 2, MEM: 100})
    assert isinstance(a, Assignment)
    uuids = [d.uuid for d in a.devices()]
    assert len(uuids) == 2 and len(set(uuids)) == 2


def test_two_containers_may_share_one_gpu() -> None:
    n = hami_node(T4, count=1)
    a = n.allocate(
        request(
            containers=[
                {"name": "a", "resources": {"limits": {GPU: 1, MEM: 1000, CORES: 40}}},
                {"name": "b", "resources": {"limits": {GPU: 1, MEM: 1000, CORES: 40}}},
            ]
        ),
        DEFAULT,
    )
    assert isinstance(a, Assignment)
    assert [c.name for c in a.containers] == ["a", "b"]
    assert n.gpus[0].shares == 2 and n.gpus[0].used_cores == 80


def test_second_container_failing_undoes_the_first() -> None:
    n = hami_node(T4, count=1)
    before = snapshot(n)
    r = n.allocate(
        request(
            containers=[
                {"name": "a", "resources": {"limits": {GPU: 1, MEM: 10000}}},
                {"name": "b", "resources": {"limits": {GPU: 1, MEM: 10000}}},
            ]
        ),
        DEFAULT,
    )
    assert isinstance(r, Rejection)
    assert snapshot(n) == before


def test_unhealthy_gpu_is_skipped() -> None:
    n = hami_node(T4, count=2)
    n.gpus[0].healthy = False
    a = alloc(n, name="a", limits={GPU: 1, MEM: 100})
    assert isinstance(a, Assignment) and a.devices()[0].index == 1
    assert isinstance(alloc(n, name="b", limits={GPU: 2, MEM: 100}), Rejection)


def test_never_fits_is_code_3_and_not_now_is_code_2() -> None:
    n = hami_node(T4)
    never = alloc(n, name="huge", limits={GPU: 1, MEM: 20000})
    assert isinstance(never, Rejection) and never.code == 3
    assert isinstance(alloc(n, name="a", limits={GPU: 1, MEM: 15000}), Assignment)
    later = alloc(n, name="b", limits={GPU: 1, MEM: 1000})
    assert isinstance(later, Rejection) and later.code == 2


def test_release_is_idempotent_and_allocate_is_idempotent_by_uid() -> None:
    n = hami_node(H100)
    req = request(name="a", limits={GPU: 1, MEM: 1000})
    a1 = n.allocate(req, DEFAULT)
    a2 = n.allocate(req, DEFAULT)
    assert a1 == a2 and n.gpus[0].shares == 1
    assert n.release(req.uid) is True
    assert n.release(req.uid) is False
    assert n.gpus[0].used_memory == 0 and n.gpus[0].shares == 0
