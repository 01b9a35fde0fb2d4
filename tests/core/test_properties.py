"""Property-based tests over random request sequences with releases.

Invariants after every step: nothing over-committed (hami-core memory, cores, split count; MIG
slices via layout_problem and the independent placement rules), in-use MIG instances never move,
every MIG layout (in-use + free slots of the current geometry) is valid, usage equals the sum of
what is held, fit() changes nothing and predicts allocate(), rejections change nothing, and the
whole run is deterministic."""

from __future__ import annotations

from importlib import resources
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vcplugin.core import mig as migmod
from vcplugin.core.config import load_config_text
from vcplugin.core.migtables import layout_problem
from vcplugin.core.node import NodeState
from vcplugin.core.request import parse_pod
from vcplugin.core.types import Assignment, Rejection

from .helpers import DEFAULT, PROFILE_NAMES, TABLE_FOR_MODEL, expected_mig_choice, gpus, pod, snapshot, valid

GPU, MEM, PCT, CORES = "nvidia.com/gpu", "nvidia.com/gpumem", "nvidia.com/gpumem-percentage", "nvidia.com/gpucores"

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_SHIPPED = resources.files("vcplugin").joinpath("data/device-config.yaml").read_text()
TIGHT = load_config_text(
    _SHIPPED.replace("deviceSplitCount: 10", "deviceSplitCount: 3").replace(
        "deviceMemoryScaling: 1 ", "deviceMemoryScaling: 1.5 "
    ),
    "tight.yaml",
)
assert TIGHT.split_count == 3 and TIGHT.memory_scaling == 1.5

MIXED = [
    ("NVIDIA A100-PCIE-40GB", "mig"),
    ("NVIDIA A100-PCIE-40GB", "mig"),
    ("NVIDIA A30", "mig"),
    ("NVIDIA H100 80GB HBM3", "hami-core"),
    ("Tesla T4", "hami-core"),
    ("Tesla T4", "hami-core"),
]

MIG_SIZES = [1000, 4864, 4865, 5952, 8000, 9856, 11968, 15000, 19968, 20000, 24064, 30000, 40192]


# --- strategies ---------------------------------------------------------------------------------

memory_st = st.one_of(st.none(), st.sampled_from(MIG_SIZES), st.integers(1, 90000))
cores_st = st.one_of(st.none(), st.sampled_from([0, 10, 30, 50, 100]), st.integers(0, 100))


@st.composite
def container_st(draw: Any, name: str) -> dict[str, Any]:
    limits: dict[str, Any] = {GPU: draw(st.integers(1, 3))}
    mem = draw(memory_st)
    if mem is not None:
        limits[MEM] = mem
    elif draw(st.booleans()):
        limits[PCT] = draw(st.integers(1, 100))
    cores = draw(cores_st)
    if cores is not None:
        limits[CORES] = cores
    return {"name": name, "resources": {"limits": limits}}


@st.composite
def pod_st(draw: Any) -> dict[str, Any]:
    ann: dict[str, str] = {}
    mode = draw(st.sampled_from([None, None, "mig", "hami-core"]))
    if mode:
        ann["nvidia.com/vgpu-mode"] = mode
    gpol = draw(st.sampled_from([None, "binpack", "spread"]))
    if gpol:
        ann["hami.io/gpu-scheduler-policy"] = gpol
    n = draw(st.integers(1, 2))
    containers = [draw(container_st(f"c{i}")) for i in range(n)]
    init = [draw(container_st("init"))] if draw(st.integers(0, 4)) == 0 else None
    return {"annotations": ann, "containers": containers, "init": init}


op_st = st.one_of(
    st.tuples(st.just("alloc"), pod_st()),
    st.tuples(st.just("release"), st.integers(0, 1000)),
)
ops_st = st.lists(op_st, min_size=1, max_size=30)


# --- checks -------------------------------------------------------------------------------------


def _held_on(held: dict[str, Assignment], uuid: str):
    return [(uid, d) for uid, a in held.items() for d in a.devices() if d.uuid == uuid]


def check_invariants(n: NodeState, held: dict[str, Assignment]) -> None:
    for g in n.gpus:
        grants = _held_on(held, g.uuid)
        assert g.used_memory == sum(d.memory for _, d in grants)
        assert g.used_cores == sum(d.cores for _, d in grants)
        assert g.shares == len(grants)
        assert 0 <= g.used_memory <= g.total_memory, g
        assert g.shares <= g.split_count, g
        if g.mode == "hami-core":
            assert g.used_cores <= g.total_cores, g
            if any(d.cores >= 100 for _, d in grants):
                assert g.shares == 1, "a 100-core share must be alone on its GPU"
            assert all(d.mode == "hami-core" for _, d in grants)
            continue
        # MIG
        model = g.mig_model
        assert model is not None
        assert all(d.mode == "mig" for _, d in grants)
        inst = sorted((i.profile, i.start, i.pod_uid) for i in g.instances)
        assert inst == sorted((d.profile, d.placement[0], uid) for uid, d in grants), "instance moved or leaked"
        for i in g.instances:
            prof = model.profile(i.profile)
            assert prof is not None and i.size == prof.size
        kind = {v: k for k, v in PROFILE_NAMES[model.key].items()}
        in_use = [(i.profile, i.start) for i in g.instances]
        assert layout_problem(model, in_use) is None
        assert valid(TABLE_FOR_MODEL[model.key], [(kind[p], s) for p, s in in_use])
        lay = migmod.layout(g)
        full = [(p, s) for p, s, _, _ in lay]
        assert layout_problem(model, full) is None, full
        assert valid(TABLE_FOR_MODEL[model.key], [(kind[p], s) for p, s in full]), full
        assert sorted((p, s) for p, s, _, i in lay if i is not None) == sorted(in_use)
        if g.instances:
            assert g.geometry is not None
            geom = g.geometries[g.geometry]
            # the current geometry holds exactly what the layout shows
            assert sorted(p for p, _ in full) == sorted(s.profile.name for s in geom.slots)
        else:
            assert g.geometry is None


def check_assignment(n: NodeState, req: Any, a: Assignment) -> None:
    assert a.node == n.name
    assert [(c.name, c.init) for c in a.containers] == [(c.name, c.init) for c in req.containers]
    for cg, cr in zip(a.containers, req.containers, strict=True):
        assert len(cg.devices) == cr.count
        hami = [d.uuid for d in cg.devices if d.mode == "hami-core"]
        assert len(hami) == len(set(hami)), "a hami-core GPU twice in one container"
        for d in cg.devices:
            g = n.gpu(d.uuid)
            assert g is not None and g.mode == d.mode and g.index == d.index
            if req.mode:
                assert d.mode == req.mode
            if d.mode == "hami-core":
                assert d.profile is None and d.placement is None
                assert d.cores == cr.cores
                if cr.memory:
                    assert d.memory == cr.memory
                elif cr.memory_percent:
                    assert d.memory == g.total_memory * cr.memory_percent // 100
                else:
                    assert d.memory == g.total_memory
            else:
                assert d.profile is not None and d.placement is not None
                assert d.placement[1] == g.mig_model.profile(d.profile).size
                if cr.memory:
                    assert d.memory >= cr.memory


def run(ops: list, specs: list, cfg: Any) -> list[Any]:
    n = NodeState("n", gpus("n", specs, cfg))
    held: dict[str, Assignment] = {}
    out: list[Any] = []
    for i, (kind, arg) in enumerate(ops):
        if kind == "release":
            if not held:
                continue
            uid = sorted(held)[arg % len(held)]
            assert n.release(uid) is True
            del held[uid]
            out.append(("release", uid))
        else:
            manifest = pod(
                f"p{i}",
                containers=arg["containers"],
                init_containers=arg["init"],
                annotations=arg["annotations"] or None,
            )
            req = parse_pod(manifest, cfg)
            before = snapshot(n)
            predicted = n.fit(req, cfg)
            assert snapshot(n) == before, "fit() changed the node"
            got = n.allocate(req, cfg)
            assert got == predicted, "fit() and allocate() disagree"
            if isinstance(got, Rejection):
                assert snapshot(n) == before, "a rejection changed the node"
                assert got.code in (2, 3)
            else:
                check_assignment(n, req, got)
                held[req.uid] = got
            out.append(got)
        check_invariants(n, held)
    for uid in sorted(held):
        n.release(uid)
    held.clear()
    check_invariants(n, held)
    for g in n.gpus:
        assert (g.used_memory, g.used_cores, g.shares, g.instances) == (0, 0, 0, [])
    return out


@SETTINGS
@given(ops=ops_st)
def test_random_sequences_on_mixed_node(ops: list) -> None:
    first = run(ops, MIXED, DEFAULT)
    second = run(ops, MIXED, DEFAULT)
    assert first == second, "not deterministic"


@SETTINGS
@given(ops=ops_st)
def test_random_sequences_tight_config(ops: list) -> None:
    first = run(ops, MIXED, TIGHT)
    assert first == run(ops, MIXED, TIGHT)


# --- single-GPU oracles -----------------------------------------------------------------------------


@st.composite
def mig_ops(draw: Any) -> list:
    ops = []
    for _ in range(draw(st.integers(1, 25))):
        if draw(st.integers(0, 3)) == 0:
            ops.append(("release", draw(st.integers(0, 100))))
        else:
            ops.append(("alloc", (draw(st.integers(1, 3)), draw(st.sampled_from(MIG_SIZES)))))
    return ops


def _mig_oracle_run(ops: list, model: str) -> None:
    n = NodeState("n", gpus("n", [(model, "mig")]))
    g = n.gpus[0]
    held: dict[str, Assignment] = {}
    for i, (kind, arg) in enumerate(ops):
        if kind == "release":
            if held:
                uid = sorted(held)[arg % len(held)]
                n.release(uid)
                del held[uid]
            check_invariants(n, held)
            continue
        count, mem = arg
        manifest = pod(f"p{i}", limits={GPU: count, MEM: mem}, annotations={"nvidia.com/vgpu-mode": "mig"})
        req = parse_pod(manifest, DEFAULT)
        expected = expected_mig_choice(g, mem, count)
        got = n.allocate(req, DEFAULT)
        if expected is None:
            assert isinstance(got, Rejection), (g.instances, mem, count, got)
        else:
            assert isinstance(got, Assignment), (g.instances, mem, count, expected, got)
            devs = got.devices()
            assert {d.geometry for d in devs} == {expected[0]}
            assert g.geometry == expected[0]
            assert sorted(d.profile for d in devs) == expected[1]
            held[req.uid] = got
        check_invariants(n, held)


@SETTINGS
@given(ops=mig_ops())
def test_mig_first_fit_matches_oracle_a100(ops: list) -> None:
    _mig_oracle_run(ops, "NVIDIA A100-PCIE-40GB")


@settings(max_examples=60, deadline=None)
@given(ops=mig_ops())
def test_mig_first_fit_matches_oracle_a30_and_h100(ops: list) -> None:
    _mig_oracle_run(ops, "NVIDIA A30")
    _mig_oracle_run(ops, "NVIDIA H100 80GB HBM3")


@st.composite
def hami_ops(draw: Any) -> list:
    ops = []
    for _ in range(draw(st.integers(1, 25))):
        if draw(st.integers(0, 3)) == 0:
            ops.append(("release", draw(st.integers(0, 100))))
        else:
            ops.append(("alloc", (draw(st.integers(1, 9000)), draw(st.sampled_from([0, 5, 20, 50, 99, 100])))))
    return ops


@SETTINGS
@given(ops=hami_ops())
def test_hami_core_single_gpu_matches_rules(ops: list) -> None:
    """One T4 (15360 MiB), split count 3: a share fits iff a share is left, nobody holds it
    exclusively, a 100-core request finds it idle, memory fits and cores stay <= 100."""
    n = NodeState("n", gpus("n", [("Tesla T4", "hami-core")], TIGHT))
    g = n.gpus[0]
    total = g.total_memory
    assert total == int(15360 * 1.5)
    held: dict[str, tuple[int, int]] = {}
    assigned: dict[str, Assignment] = {}
    for i, (kind, arg) in enumerate(ops):
        if kind == "release":
            if held:
                uid = sorted(held)[arg % len(held)]
                n.release(uid)
                del held[uid], assigned[uid]
            continue
        mem, cores = arg
        req = parse_pod(pod(f"p{i}", limits={GPU: 1, MEM: mem, CORES: cores}), TIGHT)
        used_mem = sum(m for m, _ in held.values())
        used_cores = sum(c for _, c in held.values())
        exclusive_held = any(c >= 100 for _, c in held.values())
        fits = (
            len(held) < 3
            and not exclusive_held
            and (cores < 100 or not held)
            and used_mem + mem <= total
            and used_cores + cores <= 100
        )
        got = n.allocate(req, TIGHT)
        assert isinstance(got, Assignment) == fits, (held, mem, cores, got)
        if fits:
            held[req.uid] = (mem, cores)
            assigned[req.uid] = got
        check_invariants(n, assigned)
