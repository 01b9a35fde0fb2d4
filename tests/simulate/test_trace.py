"""Trace replay: loading, FGD's inflation, the allocation ratio, departures, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vcplugin.cli import main
from vcplugin.core.config import default_config
from vcplugin.simulate import trace

NODES = "sn,cpu_milli,memory_mib,gpu,model\nn0,32000,131072,2,T4\nn1,32000,131072,4,V100M16\n"
PODS = (
    "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n"
    "p0,4000,8192,1,500,,LS,Running,0,100,0\n"
    "p1,4000,8192,1,500,,LS,Running,1,100,1\n"
    "p2,8000,8192,2,1000,V100M16,LS,Running,2,50,2\n"
    "p3,2000,4096,0,0,,BE,Running,3,10,3\n"
    "p4,4000,8192,1,1000,,LS,Running,60,200,60\n"
)


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    n, p = tmp_path / "nodes.csv", tmp_path / "pods.csv"
    n.write_text(NODES)
    p.write_text(PODS)
    return n, p


def test_load_and_errors_name_file_and_line(tmp_path: Path, files: tuple[Path, Path]) -> None:
    nodes, pods = trace.load_nodes(files[0]), trace.load_pods(files[1])
    assert [len(n.free) for n in nodes] == [2, 4]
    assert pods[2].models == frozenset({"V100M16"}) and pods[3].gpus == 0
    bad = tmp_path / "bad.csv"
    bad.write_text(PODS.replace("p1,4000", "p1,lots"))
    with pytest.raises(trace.TraceError, match=r"bad.csv:3: column cpu_milli"):
        trace.load_pods(bad)
    missing = tmp_path / "missing.csv"
    missing.write_text("sn,cpu_milli\nn0,1\n")
    with pytest.raises(trace.TraceError, match="missing column"):
        trace.load_nodes(missing)


def test_inflation_reaches_the_target_and_keeps_the_original_pods(files: tuple[Path, Path]) -> None:
    pods = trace.load_pods(files[1])
    order = trace.inflate(pods, capacity=6000, ratio=1.3, seed=1)
    assert sum(p.gpu_request for p in order) >= 1.3 * 6000
    assert sorted(p.name for p in order[: len(pods)]) == sorted(p.name for p in pods)
    assert order == trace.inflate(pods, 6000, 1.3, 1)  # deterministic per seed


@pytest.mark.parametrize("policy", trace.TRACE_POLICIES)
def test_replay_never_overcommits_and_reports_the_ratio(files: tuple[Path, Path], policy: str) -> None:
    nodes, pods = trace.load_nodes(files[0]), trace.load_pods(files[1])
    r = trace.replay_inflated(nodes, pods, default_config(), policy, inflate_ratio=1.3, seed=3)
    for n in nodes:
        assert all(0 <= f <= 1000 for f in n.free) and n.cpu_free >= 0 and n.mem_free >= 0
    allocated = sum(1000 - f for n in nodes for f in n.free)
    assert r.unallocated_gpus == pytest.approx((6000 - allocated) / 1000)
    assert set(r.allocation_ratio) == {"90", "100", "130"}
    assert all(0 <= v <= 100 for v in r.allocation_ratio.values())
    # The constrained pod only ever lands on a V100M16 node.
    assert r.placed > 0


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(trace.TraceError, match="unknown policy"):
        trace.make_policy("fifo", default_config(), trace.Workload(()))


def test_timed_replay_releases_departed_pods(files: tuple[Path, Path]) -> None:
    nodes, pods = trace.load_nodes(files[0]), trace.load_pods(files[1])
    out = trace.replay_timed(nodes, pods, default_config(), "binpack")
    assert out["placed"] == 5 and out["failed"] == 0
    assert all(f == 1000 for n in nodes for f in n.free)  # everyone left by the end
    assert out["series"][-1][1] == 0.0


def test_cli_json(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    chart = tmp_path / "c.html"
    rc = main(["simulate", "--nodes-csv", str(files[0]), "--pods-csv", str(files[1]), "--json",
               "--policy", "frag-pack", "--chart", str(chart)])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    for key in ("allocation_ratio", "unallocated_gpus", "fragmentation", "pods_per_second"):
        assert key in data
    assert set(data["allocation_ratio"]) == {"90", "100", "130"}
    assert "<svg" in chart.read_text()


def test_cli_errors_exit_nonzero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "n.csv"
    bad.write_text("sn,cpu_milli,memory_mib,gpu,model\nn0,x,1,1,T4\n")
    assert main(["simulate", "--nodes-csv", str(bad), "--pods-csv", str(bad)]) == 2
    assert "n.csv" in capsys.readouterr().err
