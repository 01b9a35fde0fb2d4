"""`vcplugin demo` end to end: the default run, checked from its raw records (pod assignments, the
simulated NVMLs, Allocate answers), not from the demo's own verdicts; and the CLI on a small cluster."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from vcplugin.core import names
from vcplugin.core.migtables import find_model
from vcplugin.core.types import Assignment
from vcplugin.demo import DemoOptions, DemoResult, run_demo
from vcplugin.demo.cli import add_parser
from vcplugin.demo.progress import LiveProgress
from vcplugin.demo.run import PodRecord
from vcplugin.demo.workload import WorkloadError, build_plan, load_workload, parse_workload
from vcplugin.protocol.assignment import decode_assignment, verify

SPLIT = 10  # deviceSplitCount of the shipped config


@pytest.fixture(scope="module")
def demo() -> DemoResult:
    """The default demo (6 nodes, 60 pods, seed 1), run once for the module."""
    return asyncio.run(run_demo(DemoOptions()))


def placed(r: DemoResult) -> list[PodRecord]:
    return [p for p in r.pods.values() if p.node]


def assignment(rec: PodRecord) -> Assignment:
    return decode_assignment(rec.assignment)


def live_at(r: DemoResult, step: int) -> list[PodRecord]:
    """Pods holding devices during session `step` (placed then or before, not yet departed)."""
    return [
        p
        for p in placed(r)
        if p.placed_step is not None and p.placed_step <= step and (p.departed_step is None or p.departed_step > step)
    ]


def gpu_memory(r: DemoResult) -> dict[str, int]:
    """GPU uuid -> MiB, from the simulated NVMLs (what the hardware has, not what the sidecar thinks)."""
    out = {}
    for snap in r.sims.values():
        for g in snap["gpus"]:
            model = find_model(g["name"])
            assert model is not None
            out[g["uuid"]] = model.memory_mib
    return out


def test_default_run_places_pods_and_reports_ok(demo: DemoResult) -> None:
    assert demo.plan.pod_count == 60 and len(demo.plan.nodes) == 6
    assert len(placed(demo)) >= 55
    assert demo.ok, [c for c in demo.checks if not c.ok]
    assert demo.allocations_failed == 0
    assert demo.allocations_ok == len(placed(demo))
    assert not [w for w in demo.warnings if "Traceback" in w]


def test_every_placed_pod_has_a_valid_signed_assignment(demo: DemoResult) -> None:
    for rec in placed(demo):
        assert rec.assignment, rec.key
        assert verify(demo.signing_key, rec.uid, rec.node or "", rec.assignment, rec.signature), rec.key
        assert not verify(b"another key", rec.uid, rec.node or "", rec.assignment, rec.signature)
        a = assignment(rec)
        assert a.node == rec.node
        job = demo.jobs[rec.job]
        assert len(a.devices()) == job.kind.gpus, rec.key
        assert all(d.memory >= job.gpumem for d in a.devices()), rec.key
    # Pods still running carry the same assignment on the API object.
    live = {f"{p['metadata']['namespace']}/{p['metadata']['name']}": p for p in demo.final_pods}
    for rec in placed(demo):
        if rec.departed_step is None:
            anns = live[rec.key]["metadata"]["annotations"]
            assert anns[names.ANNO_ASSIGNMENT] == rec.assignment
            assert live[rec.key]["spec"]["nodeName"] == rec.node
            assert anns[names.ANNO_BIND_PHASE] == names.BIND_PHASE_SUCCESS


def test_pinned_modes_are_respected(demo: DemoResult) -> None:
    for rec in placed(demo):
        if rec.mode:
            assert set(rec.modes) == {rec.mode}, rec.key
    open_modes = {m for rec in placed(demo) if rec.mode is None for m in rec.modes}
    assert open_modes <= {names.MODE_MIG, names.MODE_HAMI_CORE} and open_modes


def test_mig_pods_got_instances_that_exist_in_their_nodes_nvml(demo: DemoResult) -> None:
    live = {f"{p['metadata']['namespace']}/{p['metadata']['name']}": p for p in demo.final_pods}
    checked = 0
    for rec in placed(demo):
        a = assignment(rec)
        migs = [d for d in a.devices() if d.mode == names.MODE_MIG]
        if not migs:
            continue
        assert rec.admission is not None and rec.admission.ok, rec.key
        visible = rec.admission.envs[0]["NVIDIA_VISIBLE_DEVICES"].split(",")
        assert len(visible) == len(migs) and all(v.startswith("MIG-") for v in visible), rec.key
        if rec.departed_step is not None:
            assert rec.verified, rec.verify_note  # checked against NVML when kubelet admitted it
            continue
        sim = {g["uuid"]: g for g in demo.sims[rec.node or ""]["gpus"]}
        devices = json.loads(live[rec.key]["metadata"]["annotations"][names.ANNO_MIG_DEVICES])
        for d, uuid, reported in zip(migs, visible, devices, strict=True):
            assert d.placement is not None
            gi = next(
                (
                    gi
                    for gi in sim[d.uuid]["gpu_instances"]
                    if (gi["start"], gi["size"]) == tuple(d.placement) and gi["profile"] == d.profile
                ),
                None,
            )
            assert gi is not None, f"{rec.key}: no {d.profile}@{d.placement} on {d.uuid}"
            assert [ci["uuid"] for ci in gi["compute_instances"]] == [uuid]
            assert reported["migUUID"] == uuid and reported["placement"] == list(d.placement)
            checked += 1
    assert checked > 0


def test_nvml_holds_exactly_the_running_pods_instances(demo: DemoResult) -> None:
    wanted: dict[str, set[tuple[int, int]]] = defaultdict(set)
    for rec in placed(demo):
        if rec.departed_step is None:
            for d in assignment(rec).devices():
                if d.mode == names.MODE_MIG and d.placement:
                    wanted[d.uuid].add(tuple(d.placement))
    actual: dict[str, set[tuple[int, int]]] = defaultdict(set)
    for snap in demo.sims.values():
        for g in snap["gpus"]:
            for gi in g["gpu_instances"]:
                actual[g["uuid"]].add((gi["start"], gi["size"]))
    assert actual == wanted


def test_no_gpu_is_ever_over_committed(demo: DemoResult) -> None:
    memory = gpu_memory(demo)
    for step in range(demo.plan.steps):
        mem: dict[str, int] = defaultdict(int)
        cores: dict[str, int] = defaultdict(int)
        shares: dict[str, int] = defaultdict(int)
        slices: dict[str, set[int]] = defaultdict(set)
        for rec in live_at(demo, step):
            for d in assignment(rec).devices():
                if d.mode == names.MODE_MIG:
                    assert d.placement is not None
                    cells = set(range(d.placement[0], d.placement[0] + d.placement[1]))
                    assert not cells & slices[d.uuid], f"step {step}: MIG slices of {d.uuid} given twice"
                    slices[d.uuid] |= cells
                else:
                    mem[d.uuid] += d.memory
                    cores[d.uuid] += d.cores
                    shares[d.uuid] += 1
        for uuid, used in mem.items():
            assert used <= memory[uuid], f"step {step}: {uuid} {used}/{memory[uuid]} MiB"
            assert cores[uuid] <= 100 and shares[uuid] <= SPLIT, f"step {step}: {uuid}"
    # The sidecar's own view agreed at every step.
    for s in demo.samples:
        assert s.mig_used <= s.mig_total and s.hami_used <= s.hami_total


def test_gangs_are_placed_all_or_nothing(demo: DemoResult) -> None:
    gangs = [j for j in demo.jobs.values() if len(j.pods) > 1]
    assert gangs
    for job in gangs:
        recs = [demo.pods[f"default/{p['metadata']['name']}"] for p in job.pods]
        steps = {r.placed_step for r in recs}
        assert len(steps) == 1, f"{job.name} placed in parts: {steps}"
        for step in range(demo.plan.steps):
            n = sum(1 for r in recs if r in live_at(demo, step))
            assert n in (0, len(recs)), f"step {step}: {n}/{len(recs)} of {job.name}"
    assert any(demo.job_placed.get(j.name) is not None for j in gangs)


def test_departures_make_mig_geometries_switch(demo: DemoResult) -> None:
    assert demo.switches, "no MIG GPU changed geometry"
    assert demo.created > 0 and demo.destroyed > 0
    # Independent evidence: some GPU's slices were re-carved into a different instance.
    occupant: dict[tuple[str, int], tuple[str | None, int]] = {}
    recarved = 0
    for rec in sorted(placed(demo), key=lambda r: r.placed_step or 0):
        for d in assignment(rec).devices():
            if d.mode != names.MODE_MIG or d.placement is None:
                continue
            start, size = d.placement
            if any(
                occupant.get((d.uuid, c), (d.profile, start)) != (d.profile, start) for c in range(start, start + size)
            ):
                recarved += 1
            for c in range(start, start + size):
                occupant[(d.uuid, c)] = (d.profile, start)
    assert recarved > 0


def test_the_pod_that_never_fits_is_reported_with_the_sidecars_reason(demo: DemoResult) -> None:
    big = [p for p in demo.pods.values() if p.kind == "too-big"]
    assert big and all(not p.node and p.never for p in big)
    assert all(p.detail and "100000" in p.detail for p in big), [p.detail for p in big]  # the sidecar's words


def test_the_same_seed_gives_the_same_plan_and_scaling() -> None:
    wl = load_workload()
    a, b = build_plan(wl, seed=7), build_plan(wl, seed=7)
    assert [(j.name, j.arrival, j.duration, j.gpumem) for j in a.jobs] == [
        (j.name, j.arrival, j.duration, j.gpumem) for j in b.jobs
    ]
    assert [j.name for j in build_plan(wl, seed=8).jobs] != [j.name for j in a.jobs]
    big = build_plan(wl, nodes=50, pods=500, seed=1)
    assert len(big.nodes) == 50 and big.pod_count == 500
    assert len({n.name for n in big.nodes}) == 50
    assert {n.type.mode for n in big.nodes} == {names.MODE_MIG, names.MODE_HAMI_CORE}
    assert sum(1 for j in big.jobs if len(j.pods) > 1) == 500 // 60
    pods = [p["metadata"]["name"] for j in big.jobs for p in j.pods]
    assert len(set(pods)) == len(pods)


def test_workload_errors_name_the_problem() -> None:
    with pytest.raises(WorkloadError, match=r"nodes\[0\]\.mode"):
        parse_workload({"nodes": [{"name": "n", "model": "NVIDIA A100-PCIE-40GB", "mode": "mps"}], "jobs": []}, "x")
    with pytest.raises(WorkloadError, match="weight"):
        parse_workload(
            {"nodes": [{"name": "n", "model": "NVIDIA A100-PCIE-40GB", "mode": "mig"}], "jobs": [{"name": "j"}]}, "x"
        )


def test_progress_is_a_live_table_on_a_terminal_and_lines_elsewhere(demo: DemoResult) -> None:
    tty, log = io.StringIO(), io.StringIO()
    for stream, is_tty in ((tty, True), (log, False)):
        p = LiveProgress(stream, tty=is_tty)
        p.status("starting")
        p.begin(demo.plan)
        for s in demo.samples:
            p.update(s, demo.plan)
        p.end()
    assert "\x1b[4F" in tty.getvalue() and "geometry switches" in tty.getvalue()
    lines = log.getvalue().splitlines()
    assert "\x1b" not in log.getvalue()
    assert 3 <= len([line for line in lines if line.startswith("step ")]) <= 8
    assert lines[-1].startswith(f"step {demo.plan.steps}/{demo.plan.steps}")


def test_cli_runs_a_small_cluster_and_writes_a_self_contained_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="vcplugin")
    add_parser(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "report.html"
    args = parser.parse_args(["demo", "--nodes", "3", "--pods", "20", "--seed", "3", "--out", str(out), "--json"])
    rc = args.func(args)
    summary: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert rc == 0, summary["checks"]
    assert summary["cluster"]["nodes"] == 3 and summary["pods"]["total"] == 20
    assert summary["pods"]["placed"] >= 15
    assert all(c["ok"] for c in summary["checks"])
    assert summary["report"] == str(out)
    page = out.read_text()
    assert page.startswith("<!doctype html>") and page.count("<svg") >= 4
    assert "<script" not in page and "src=" not in page and "href=" not in page  # nothing external
    assert "MIG GPUs at the end" in page and "HAMi-core GPUs at the end" in page


def test_cli_rejects_bad_sizes() -> None:
    parser = argparse.ArgumentParser(prog="vcplugin")
    add_parser(parser.add_subparsers(dest="command", required=True))
    with pytest.raises(SystemExit):
        parser.parse_args(["demo", "--nodes", "0"])


def test_without_device_plugins_kubelet_calls_the_agents_directly() -> None:
    r = asyncio.run(run_demo(DemoOptions(nodes=3, pods=20, seed=2, device_plugins=False)))
    assert r.ok, [c for c in r.checks if not c.ok]
    assert r.allocations_ok == len(placed(r)) > 0
