"""MIG sharing: first-fit over geometries in config order, all N instances in the chosen geometry,
best fit inside it, geometry switches that keep in-use instances where they are."""

from __future__ import annotations

import pytest

from vcplugin.core import mig as migmod
from vcplugin.core.migtables import layout_problem
from vcplugin.core.types import Assignment, Rejection

from .helpers import DEFAULT, config, expected_mig_choice, mig_node, node, request, snapshot

GPU, MEM, PCT, CORES = "nvidia.com/gpu", "nvidia.com/gpumem", "nvidia.com/gpumem-percentage", "nvidia.com/gpucores"
A100 = "NVIDIA A100-PCIE-40GB"
MIG = {"nvidia.com/vgpu-mode": "mig"}


def alloc(n, cfg=DEFAULT, name="p", **kw):
    kw.setdefault("annotations", MIG)
    return n.allocate(request(cfg, name=name, **kw), cfg)


def placed(a: Assignment) -> list[tuple[str, int, int]]:
    return [(d.profile, *d.placement) for d in a.devices()]


def instances(gpu) -> list[tuple[str, int]]:
    return sorted((i.profile, i.start) for i in gpu.instances)


def test_worked_example() -> None:
    """Empty A100-PCIE-40GB in mig mode, gpu: 2, gpumem: 8000: skip [1g.5gb x7] (4864 < 8000), take
    [2g.10gb x3, 1g.5gb x1], two 2g.10gb instances of that one GPU."""
    n = mig_node(A100)
    a = alloc(n, limits={GPU: 2, MEM: 8000})
    assert isinstance(a, Assignment)
    devs = a.devices()
    assert len(devs) == 2
    assert {d.uuid for d in devs} == {n.gpus[0].uuid}
    assert all(d.mode == "mig" and d.profile == "2g.10gb" and d.memory >= 8000 for d in devs)
    assert all(d.placement[1] == 2 for d in devs)
    assert len({d.placement for d in devs}) == 2
    g = n.gpus[0]
    geom = g.geometries[g.geometry]
    assert sorted(s.profile.name for s in geom.slots) == ["1g.5gb", "2g.10gb", "2g.10gb", "2g.10gb"]
    assert g.geometry == 1
    assert all(d.geometry == 1 for d in devs)
    assert layout_problem(g.mig_model, [(p, s) for p, s, _, _ in migmod.layout(g)]) is None
    # The rest of the geometry is still there: one 2g.10gb and one 1g.5gb free.
    free = sorted(p for p, _, _, inst in migmod.layout(g) if inst is None)
    assert free == ["1g.5gb", "2g.10gb"]


def test_worked_example_on_two_gpus_stays_on_one_gpu() -> None:
    n = mig_node(A100, count=2)
    a = alloc(n, limits={GPU: 2, MEM: 8000})
    assert isinstance(a, Assignment)
    assert len({d.uuid for d in a.devices()}) == 1


def test_small_request_takes_first_geometry() -> None:
    n = mig_node(A100)
    a = alloc(n, limits={GPU: 1, MEM: 4000})
    assert isinstance(a, Assignment)
    (d,) = a.devices()
    assert d.profile == "1g.5gb" and d.geometry == 0 and d.memory == 4864


def test_memory_exactly_instance_size_fits() -> None:
    n = mig_node(A100)
    a = alloc(n, limits={GPU: 1, MEM: 4864})
    assert isinstance(a, Assignment) and a.devices()[0].profile == "1g.5gb"
    a = alloc(n, name="q", limits={GPU: 1, MEM: 4865})
    assert isinstance(a, Assignment) and a.devices()[0].profile != "1g.5gb"


def test_config_order_not_smallest_geometry() -> None:
    cfg = config(
        "nvidia:\n  knownMigGeometries:\n  - models: [A100-PCIE-40GB]\n    allowedGeometries:\n"
        "      - - {name: 7g.40gb, memory: 40192, count: 1}\n"
        "      - - {name: 1g.5gb, memory: 4864, count: 7}\n"
    )
    n = mig_node(A100, cfg=cfg)
    a = alloc(n, cfg, limits={GPU: 1, MEM: 1000})
    assert isinstance(a, Assignment)
    assert placed(a) == [("7g.40gb", 0, 8)]


FIRST_FIT_CFG = (
    "nvidia:\n  knownMigGeometries:\n  - models: [A100-PCIE-40GB]\n    allowedGeometries:\n"
    "      - - {name: 3g.20gb, memory: 19968, count: 1}\n"
    "        - {name: 1g.5gb, memory: 4864, count: 4}\n"
    "      - - {name: 3g.20gb, memory: 19968, count: 2}\n"
)


def test_chosen_geometry_must_hold_all_n_instances() -> None:
    """Legacy first-fit would take geometry 0 (it has one 3g) and fail the second instance."""
    cfg = config(FIRST_FIT_CFG)
    n = mig_node(A100, cfg=cfg)
    a = alloc(n, cfg, limits={GPU: 2, MEM: 15000})
    assert isinstance(a, Assignment)
    assert sorted(placed(a)) == [("3g.20gb", 0, 4), ("3g.20gb", 4, 4)]
    assert all(d.geometry == 1 for d in a.devices())


def test_single_instance_takes_first_geometry_with_it() -> None:
    cfg = config(FIRST_FIT_CFG)
    n = mig_node(A100, cfg=cfg)
    a = alloc(n, cfg, limits={GPU: 1, MEM: 15000})
    assert isinstance(a, Assignment)
    assert a.devices()[0].geometry == 0 and a.devices()[0].profile == "3g.20gb"


def test_no_geometry_holds_n_instances_on_one_gpu() -> None:
    n = mig_node(A100)
    before = snapshot(n)
    r = alloc(n, limits={GPU: 4, MEM: 9000})  # at most three 2g.10gb in any geometry
    assert isinstance(r, Rejection)
    assert snapshot(n) == before


def test_n_instances_may_span_gpus_when_one_cannot_hold_them() -> None:
    n = mig_node(A100, count=2)
    a = alloc(n, limits={GPU: 4, MEM: 9000})
    assert isinstance(a, Assignment)
    assert len(a.devices()) == 4
    assert all(d.memory >= 9000 for d in a.devices())
    for g in n.gpus:
        assert layout_problem(g.mig_model, [(i.profile, i.start) for i in g.instances]) is None


def test_best_fit_inside_a_geometry() -> None:
    cfg = config(
        "nvidia:\n  knownMigGeometries:\n  - models: [A100-PCIE-40GB]\n    allowedGeometries:\n"
        "      - - {name: 3g.20gb, memory: 19968, count: 1}\n"
        "        - {name: 2g.10gb, memory: 9856, count: 1}\n"
        "        - {name: 1g.5gb, memory: 4864, count: 2}\n"
    )
    n = mig_node(A100, cfg=cfg)
    a = alloc(n, cfg, name="a", limits={GPU: 1, MEM: 4000})
    assert a.devices()[0].profile == "1g.5gb"
    b = alloc(n, cfg, name="b", limits={GPU: 1, MEM: 8000})
    assert b.devices()[0].profile == "2g.10gb"
    c = alloc(n, cfg, name="c", limits={GPU: 1, MEM: 4000})
    assert c.devices()[0].profile == "1g.5gb"
    d = alloc(n, cfg, name="d", limits={GPU: 1, MEM: 4000})
    assert d.devices()[0].profile == "3g.20gb"  # the only one left
    assert isinstance(alloc(n, cfg, name="e", limits={GPU: 1, MEM: 1000}), Rejection)


def test_best_fit_prefers_fewer_slices_at_equal_memory() -> None:
    n = mig_node(A100)
    # [7g] blocks nothing here; a 15000 MiB request on the default config goes to [3g x2] (index 2).
    a = alloc(n, limits={GPU: 1, MEM: 15000})
    assert a.devices()[0].profile == "3g.20gb"


def test_other_free_types_stay_reachable() -> None:
    """Volcano's bug: once one instance type of a group is used, the other free types were unreachable."""
    n = mig_node(A100)
    a = alloc(n, name="a", limits={GPU: 1, MEM: 8000})
    assert a.devices()[0].profile == "2g.10gb" and a.devices()[0].geometry == 1
    b = alloc(n, name="b", limits={GPU: 1, MEM: 4000})
    assert isinstance(b, Assignment)
    assert b.devices()[0].profile == "1g.5gb"
    c = alloc(n, name="c", limits={GPU: 2, MEM: 8000})
    assert isinstance(c, Assignment)
    assert [d.profile for d in c.devices()] == ["2g.10gb", "2g.10gb"]
    assert sorted(instances(n.gpus[0])) == sorted(
        [("2g.10gb", 0), ("2g.10gb", 2), ("2g.10gb", 4), ("1g.5gb", 6)]
    )


def test_geometry_switches_around_an_instance_in_use() -> None:
    n = mig_node(A100)
    g = n.gpus[0]
    a = alloc(n, name="a", limits={GPU: 1, MEM: 4000})
    (small,) = placed(a)
    assert small[0] == "1g.5gb"
    expected = expected_mig_choice(g, 15000, 1)
    assert expected is not None
    b = alloc(n, name="b", limits={GPU: 1, MEM: 15000})
    assert isinstance(b, Assignment)
    (big,) = b.devices()
    assert big.profile in ("3g.20gb", "4g.20gb")  # the smallest instance of >= 15000 MiB
    assert big.geometry != 0  # the geometry switched away from [1g.5gb x7]
    assert (big.geometry, [big.profile]) == expected
    assert g.geometry == expected[0]
    # The in-use 1g.5gb never moved.
    assert (small[0], small[1]) in instances(g)
    assert layout_problem(g.mig_model, [(p, s) for p, s, _, _ in migmod.layout(g)]) is None


def test_switch_impossible_while_instance_in_use() -> None:
    n = mig_node(A100)
    alloc(n, name="a", limits={GPU: 1, MEM: 4000})
    r = alloc(n, name="b", limits={GPU: 1, MEM: 30000})  # only a 7g.40gb holds it
    assert isinstance(r, Rejection)
    assert r.code == 2  # it fits once the GPU is free
    n.release("uid-default-a")
    assert n.gpus[0].geometry is None and n.gpus[0].instances == []
    b = alloc(n, name="b", limits={GPU: 1, MEM: 30000})
    assert isinstance(b, Assignment) and placed(b) == [("7g.40gb", 0, 8)]


def test_release_frees_the_instance_and_keeps_others() -> None:
    n = mig_node(A100)
    a = alloc(n, name="a", limits={GPU: 2, MEM: 8000})
    b = alloc(n, name="b", limits={GPU: 1, MEM: 4000})
    g = n.gpus[0]
    kept = sorted((d.profile, d.placement[0]) for d in a.devices())
    n.release("uid-default-b")
    assert instances(g) == kept
    assert g.used_memory == sum(d.memory for d in a.devices())
    n.release("uid-default-a")
    assert (g.used_memory, g.used_cores, g.shares, g.instances, g.geometry) == (0, 0, 0, [], None)
    assert isinstance(b, Assignment)


def test_no_memory_means_the_largest_instance() -> None:
    n = mig_node(A100)
    a = alloc(n, limits={GPU: 1})
    assert placed(a) == [("7g.40gb", 0, 8)]


def test_percentage_of_largest_instance() -> None:
    n = mig_node(A100)
    a = alloc(n, limits={GPU: 1, PCT: 10})  # 10 % of 40192 MiB = 4020 MiB: a 1g.5gb holds it
    ((profile, _start, size),) = placed(a)
    assert (profile, size) == ("1g.5gb", 1)


def test_grant_memory_and_cores_are_the_instance() -> None:
    n = mig_node(A100)
    a = alloc(n, limits={GPU: 1, MEM: 15000})
    (d,) = a.devices()
    assert d.memory == 19968
    assert 0 < d.cores <= 100


def test_full_geometry_never_exceeds_100_percent_cores() -> None:
    """Cores are percent of the GPU's SMs: a GPU holding a whole geometry must not be charged more
    than 100 % (no over-commit)."""
    over = []
    for model in ("NVIDIA A100-PCIE-40GB", "NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3", "NVIDIA A30"):
        g = mig_node(model).gpus[0]
        for geom in g.geometries:
            total = sum(s.cores for s in geom.slots)
            if total > g.total_cores:
                over.append((model, geom.describe(), total))
    assert over == []


def test_worked_example_then_fill_keeps_cores_within_100() -> None:
    n = mig_node(A100)
    alloc(n, name="a", limits={GPU: 2, MEM: 8000})
    alloc(n, name="b", limits={GPU: 1, MEM: 8000})
    alloc(n, name="c", limits={GPU: 1, MEM: 4000})
    g = n.gpus[0]
    assert len(g.instances) == 4
    assert g.used_cores <= g.total_cores


def test_a30() -> None:
    n = mig_node("NVIDIA A30")
    a = alloc(n, name="a", limits={GPU: 2, MEM: 10000})
    assert sorted(placed(a)) == [("2g.12gb", 0, 2), ("2g.12gb", 2, 2)]
    assert isinstance(alloc(n, name="b", limits={GPU: 1, MEM: 100}), Rejection)


def test_h20_gets_no_h200_geometries() -> None:
    h200 = mig_node("NVIDIA H200").gpus[0]
    assert h200.geometries and h200.mig_model.key == "H200-141GB"
    from vcplugin.core.cluster import make_gpu

    h20 = make_gpu("GPU-h20", 0, "NVIDIA H20", "mig", 98304, DEFAULT, DEFAULT.node("n"))
    assert h20.geometries == () and h20.mig_model is None


def test_unknown_model_in_mig_mode_never_fits() -> None:
    n = node("n", [("Tesla T4", "mig")])
    r = alloc(n, limits={GPU: 1, MEM: 100})
    assert isinstance(r, Rejection) and r.code == 3


def test_two_containers_on_one_mig_gpu() -> None:
    n = mig_node(A100)
    a = n.allocate(
        request(
            annotations=MIG,
            containers=[
                {"name": "x", "resources": {"limits": {GPU: 1, MEM: 8000}}},
                {"name": "y", "resources": {"limits": {GPU: 1, MEM: 4000}}},
            ],
        ),
        DEFAULT,
    )
    assert isinstance(a, Assignment)
    assert [c.name for c in a.containers] == ["x", "y"]
    assert [c.devices[0].profile for c in a.containers] == ["2g.10gb", "1g.5gb"]
    g = n.gpus[0]
    assert layout_problem(g.mig_model, [(i.profile, i.start) for i in g.instances]) is None


@pytest.mark.parametrize("mem", [1000, 4864, 5000, 9856, 15000, 19968, 20000, 40192])
@pytest.mark.parametrize("count", [1, 2, 3])
def test_empty_gpu_matches_oracle(mem: int, count: int) -> None:
    n = mig_node(A100)
    expected = expected_mig_choice(n.gpus[0], mem, count)
    a = alloc(n, limits={GPU: count, MEM: mem})
    if expected is None:
        assert isinstance(a, Rejection)
    else:
        assert isinstance(a, Assignment)
        assert {d.geometry for d in a.devices()} == {expected[0]}
        assert sorted(d.profile for d in a.devices()) == expected[1]


def test_equal_instances_prefer_the_placement_that_keeps_geometries_reachable() -> None:
    """A 3g at 4 leaves room for 1g and 2g instances; a 3g at 0 strands a compute slice."""
    n = mig_node(A100)
    a = alloc(n, name="a", limits={GPU: 1, MEM: 15000})
    assert placed(a) == [("3g.20gb", 4, 4)]
    g = n.gpus[0]
    mixed = [geo for geo in g.geometries if geo.describe() == "[3g.20gb x1, 1g.5gb x4]"]
    assert mixed and migmod.free_slots(g, mixed[0]) is not None  # still reachable around the 3g
