"""`vcplugin simulate`: scenarios, the JSON shape, the worked example, and errors that name the file,
field and line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from vcplugin.cli import main
from vcplugin.core.config import default_config, load_config_text
from vcplugin.core.migtables import find_model, layout_problem
from vcplugin.simulate.engine import as_json, run_scenario
from vcplugin.simulate.scenario import ScenarioError, load_scenario_text

ROOT = Path(__file__).resolve().parents[2]

WORKED = """\
nodes:
- name: a100
  mode: mig
  gpus: [{model: NVIDIA A100-PCIE-40GB, count: 1}]
pods:
- metadata: {name: two-vgpus, annotations: {nvidia.com/vgpu-mode: mig}}
  spec:
    containers:
    - name: main
      resources: {limits: {nvidia.com/gpu: 2, nvidia.com/gpumem: 8000}}
"""

TOP_KEYS = {"placements", "unschedulable", "gpus"}
PLACEMENT_KEYS = {"pod", "node", "containers"}
CONTAINER_KEYS = {"name", "devices"}
DEVICE_KEYS = {"gpu", "index", "mode", "profile", "placement", "memory", "cores"}
UNSCHED_KEYS = {"pod", "reason"}
GPU_KEYS = {"node", "index", "uuid", "model", "mode", "geometry", "instances", "used_memory", "used_cores", "shares"}
INSTANCE_KEYS = {"profile", "placement", "pod"}


def check_shape(data: dict[str, Any]) -> None:
    assert set(data) >= TOP_KEYS
    for p in data["placements"]:
        assert set(p) == PLACEMENT_KEYS
        assert isinstance(p["pod"], str) and isinstance(p["node"], str)
        for c in p["containers"]:
            assert set(c) == CONTAINER_KEYS
            for d in c["devices"]:
                assert set(d) == DEVICE_KEYS
                assert d["mode"] in ("mig", "hami-core")
                assert isinstance(d["index"], int) and isinstance(d["memory"], int) and isinstance(d["cores"], int)
                if d["mode"] == "mig":
                    assert isinstance(d["profile"], str)
                    assert isinstance(d["placement"], list) and len(d["placement"]) == 2
                else:
                    assert d["profile"] is None and d["placement"] is None
    for u in data["unschedulable"]:
        assert set(u) == UNSCHED_KEYS and u["reason"]
    for g in data["gpus"]:
        assert set(g) == GPU_KEYS
        for i in g["instances"]:
            assert set(i) == INSTANCE_KEYS
            assert isinstance(i["placement"], list) and len(i["placement"]) == 2


def check_consistent(data: dict[str, Any]) -> None:
    """The GPU report agrees with the placements: usage sums, MIG instances, valid layouts."""
    by_gpu: dict[str, list[tuple[str, dict]]] = {}
    for p in data["placements"]:
        for c in p["containers"]:
            for d in c["devices"]:
                by_gpu.setdefault(d["gpu"], []).append((p["pod"], d))
    for g in data["gpus"]:
        devs = by_gpu.get(g["uuid"], [])
        assert g["used_memory"] == sum(d["memory"] for _, d in devs)
        assert g["used_cores"] == sum(d["cores"] for _, d in devs)
        assert g["shares"] == len(devs)
        if g["mode"] == "mig":
            in_use = sorted((i["profile"], tuple(i["placement"]), i["pod"]) for i in g["instances"] if i["pod"])
            assert in_use == sorted((d["profile"], tuple(d["placement"]), pod) for pod, d in devs)
            model = find_model(g["model"])
            assert layout_problem(model, [(i["profile"], i["placement"][0]) for i in g["instances"]]) is None
        else:
            assert g["instances"] == []


def simulate(text: str, cfg=None) -> dict[str, Any]:
    cfg = cfg or default_config()
    # as the CLI prints it: through JSON
    data = json.loads(json.dumps(as_json(run_scenario(load_scenario_text(text, cfg, "scenario.yaml"), cfg))))
    check_shape(data)
    check_consistent(data)
    return data


def check_worked(data: dict[str, Any]) -> None:
    assert data["unschedulable"] == []
    (p,) = data["placements"]
    assert (p["pod"], p["node"]) == ("default/two-vgpus", "a100")
    (c,) = p["containers"]
    assert c["name"] == "main"
    devs = c["devices"]
    assert len(devs) == 2
    assert {d["profile"] for d in devs} == {"2g.10gb"}
    assert {d["mode"] for d in devs} == {"mig"}
    assert len({d["gpu"] for d in devs}) == 1 and {d["index"] for d in devs} == {0}
    assert all(d["memory"] >= 8000 for d in devs)
    assert all(d["placement"][1] == 2 for d in devs)
    assert len({tuple(d["placement"]) for d in devs}) == 2
    (g,) = data["gpus"]
    assert g["mode"] == "mig" and g["node"] == "a100"
    assert sorted(i["profile"] for i in g["instances"]) == ["1g.5gb", "2g.10gb", "2g.10gb", "2g.10gb"]
    assert sum(1 for i in g["instances"] if i["pod"] == "default/two-vgpus") == 2
    geom = default_config().geometries_for(find_model("A100-PCIE-40GB"))[g["geometry"]]
    assert sorted(s.profile.name for s in geom.slots) == ["1g.5gb", "2g.10gb", "2g.10gb", "2g.10gb"]


def test_worked_example_in_process() -> None:
    check_worked(simulate(WORKED))


@pytest.fixture
def worked_file(tmp_path: Path) -> Path:
    p = tmp_path / "worked.yaml"
    p.write_text(WORKED)
    return p


def test_worked_example_cli_main(worked_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["simulate", "--scenario", str(worked_file), "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    data = json.loads(out)
    check_shape(data)
    check_consistent(data)
    check_worked(data)


def test_worked_example_cli_subprocess(worked_file: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "vcplugin", "simulate", "--scenario", str(worked_file), "--json"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    check_shape(data)
    check_worked(data)


def test_cli_table_output(worked_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--scenario", str(worked_file)]) == 0
    out = capsys.readouterr().out
    assert "default/two-vgpus" in out and "2g.10gb" in out


def test_demo_scenario_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    check_shape(data)
    check_consistent(data)
    first = next(p for p in data["placements"] if p["pod"] == "default/mig-2x8g")
    devices = first["containers"][0]["devices"]
    # Two MIG instances of at least 8000 MiB on one GPU (which node is frag-pack's choice).
    assert len(devices) == 2 and all(d["mode"] == "mig" and d["memory"] >= 8000 for d in devices)
    assert len({d["gpu"] for d in devices}) == 1


def test_deterministic(worked_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["simulate", "--json"])
    a = capsys.readouterr().out
    main(["simulate", "--json"])
    b = capsys.readouterr().out
    assert a == b


# --- scenarios ----------------------------------------------------------------------------------------


def test_mode_from_nodeconfig_and_default_hami_core() -> None:
    cfg = load_config_text(
        default_config_text().replace("  nodeconfig: []", "  nodeconfig:\n  - {name: m1, operatingmode: mig}"),
        "cfg.yaml",
    )
    data = simulate(
        """\
        nodes:
        - name: m1
          gpus: [{model: NVIDIA A100-PCIE-40GB}]
        - name: h1
          gpus: [{model: NVIDIA A100-PCIE-40GB}]
        pods: []
        """.replace("        ", ""),
        cfg,
    )
    modes = {g["node"]: g["mode"] for g in data["gpus"]}
    assert modes == {"m1": "mig", "h1": "hami-core"}


def default_config_text() -> str:
    from importlib import resources

    return resources.files("vcplugin").joinpath("data/device-config.yaml").read_text()


def test_filterdevices_leave_gpus_alone() -> None:
    cfg = load_config_text(
        default_config_text().replace(
            "  nodeconfig: []", "  nodeconfig:\n  - {name: n, filterdevices: {uuid: [], index: [0, 2]}}"
        ),
        "cfg.yaml",
    )
    text = (
        "nodes:\n- name: n\n  gpus: [{model: Tesla T4, count: 4}]\n"
        "pods:\n"
        + "".join(
            f"- metadata: {{name: p{i}}}\n  spec: {{containers: [{{name: c, resources: {{limits: "
            f"{{nvidia.com/gpu: 1, nvidia.com/gpumem: 15000}}}}}}]}}\n"
            for i in range(3)
        )
    )
    data = simulate(text, cfg)
    assert sorted(g["index"] for g in data["gpus"]) == [1, 3]
    used = {d["index"] for p in data["placements"] for c in p["containers"] for d in c["devices"]}
    assert used == {1, 3}
    assert [u["pod"] for u in data["unschedulable"]] == ["default/p2"]


def test_mixed_cluster_modes() -> None:
    data = simulate(
        """\
nodes:
- {name: mig-node, mode: mig, gpus: [{model: NVIDIA A100-PCIE-40GB}]}
- {name: shared-node, mode: hami-core, gpus: [{model: Tesla T4}]}
pods:
- metadata: {name: wants-mig, annotations: {nvidia.com/vgpu-mode: mig}}
  spec: {containers: [{name: c, resources: {limits: {nvidia.com/gpu: 1, nvidia.com/gpumem: 1000}}}]}
- metadata: {name: wants-hami, annotations: {nvidia.com/vgpu-mode: hami-core}}
  spec: {containers: [{name: c, resources: {limits: {nvidia.com/gpu: 1, nvidia.com/gpumem: 1000}}}]}
- metadata: {name: too-big-for-t4}
  spec: {containers: [{name: c, resources: {limits: {nvidia.com/gpu: 1, nvidia.com/gpumem: 16000}}}]}
"""
    )
    nodes = {p["pod"]: p["node"] for p in data["placements"]}
    assert nodes == {"default/wants-mig": "mig-node", "default/wants-hami": "shared-node",
                     "default/too-big-for-t4": "mig-node"}


def test_delete_frees_instances() -> None:
    data = simulate(
        """\
nodes:
- {name: n, mode: mig, gpus: [{model: NVIDIA A100-PCIE-40GB}]}
pods:
- metadata: {name: small}
  spec: {containers: [{name: c, resources: {limits: {nvidia.com/gpu: 1, nvidia.com/gpumem: 1000}}}]}
- metadata: {name: whole}
  spec: {containers: [{name: c, resources: {limits: {nvidia.com/gpu: 1, nvidia.com/gpumem: 30000}}}]}
- delete: default/small
- metadata: {name: whole-again}
  spec: {containers: [{name: c, resources: {limits: {nvidia.com/gpu: 1, nvidia.com/gpumem: 30000}}}]}
"""
    )
    assert [p["pod"] for p in data["placements"]] == ["default/whole-again"]
    assert [u["pod"] for u in data["unschedulable"]] == ["default/whole"]
    (g,) = data["gpus"]
    assert [(i["profile"], i["placement"], i["pod"]) for i in g["instances"]] == [
        ("7g.40gb", [0, 8], "default/whole-again")
    ]


def test_invalid_pod_is_unschedulable_with_reason() -> None:
    data = simulate(
        """\
nodes:
- {name: n, gpus: [{model: Tesla T4}]}
pods:
- metadata: {name: bad}
  spec: {containers: [{name: c, resources: {limits: {nvidia.com/gpu: 1, nvidia.com/gpucores: 150}}}]}
- metadata: {name: bad-mode, annotations: {nvidia.com/vgpu-mode: turbo}}
  spec: {containers: [{name: c, resources: {limits: {nvidia.com/gpu: 1}}}]}
"""
    )
    reasons = {u["pod"]: u["reason"] for u in data["unschedulable"]}
    assert "nvidia.com/gpucores" in reasons["default/bad"]
    assert "nvidia.com/vgpu-mode" in reasons["default/bad-mode"]


def test_unschedulable_reason_names_nodes() -> None:
    data = simulate(
        """\
nodes:
- {name: small-node, gpus: [{model: Tesla T4}]}
pods:
- metadata: {name: huge}
  spec: {containers: [{name: c, resources: {limits: {nvidia.com/gpu: 1, nvidia.com/gpumem: 100000}}}]}
"""
    )
    (u,) = data["unschedulable"]
    assert u["pod"] == "default/huge" and "small-node" in u["reason"]


# --- errors ---------------------------------------------------------------------------------------------


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = main(args)
    return rc, capsys.readouterr().err


def test_config_error_exits_nonzero_naming_file_field_line(
    tmp_path: Path, worked_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "bad-config.yaml"
    cfg.write_text(
        "nvidia:\n"
        "  knownMigGeometries:\n"
        "  - models: [A100-PCIE-40GB]\n"
        "    allowedGeometries:\n"
        "      - - {name: 1g.5gb, memory: 4864, count: 7}\n"
        "      - - {name: 9g.99gb, memory: 4864, count: 1}\n"
    )
    rc, err = run_cli(["simulate", "--scenario", str(worked_file), "--config", str(cfg), "--json"], capsys)
    assert rc != 0
    assert f"{cfg}:6" in err
    assert "allowedGeometries[1][0].name" in err and "9g.99gb" in err


def test_config_yaml_syntax_error_cli(tmp_path: Path, worked_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "syntax.yaml"
    cfg.write_text("nvidia:\n  deviceSplitCount: 10\n  defaultMemory: 1: 2\n")
    rc, err = run_cli(["simulate", "--scenario", str(worked_file), "--config", str(cfg)], capsys)
    assert rc != 0 and f"{cfg}:3" in err


def test_missing_config_file(tmp_path: Path, worked_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = run_cli(["simulate", "--scenario", str(worked_file), "--config", str(tmp_path / "nope.yaml")], capsys)
    assert rc != 0 and "nope.yaml" in err


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        (
            "nodes:\n- name: n\n  gpus:\n  - {model: Quantum GPU 9000}\n",
            4,
            "nodes[0].gpus[0].model",
        ),
        (
            "nodes:\n- name: n\n  mode: turbo\n  gpus: [{model: Tesla T4}]\n",
            3,
            "nodes[0].mode",
        ),
        (
            "nodes:\n- name: n\n  gpus: [{model: Tesla T4}]\n- name: n\n  gpus: [{model: Tesla T4}]\n",
            4,
            "nodes[1].name",
        ),
        (
            "nodes:\n- name: n\n  gpus: [{model: Tesla T4, count: 1}]\n  colour: blue\n",
            2,
            "nodes[0]",
        ),
        (
            "nodes:\n- name: n\n  gpus: [{model: Tesla T4, count: many}]\n",
            3,
            "nodes[0].gpus[0].count",
        ),
        (
            "nodes:\n- name: n\n  gpus: [{model: Tesla T4}]\npods:\n- spec: {containers: []}\n",
            5,
            "pods[0]",
        ),
    ],
)
def test_scenario_errors_name_file_field_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, line: int, field: str
) -> None:
    sc = tmp_path / "scenario.yaml"
    sc.write_text(text)
    rc, err = run_cli(["simulate", "--scenario", str(sc), "--json"], capsys)
    assert rc != 0
    assert f"{sc}:{line}" in err, err
    assert field in err, err


def test_scenario_yaml_syntax_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sc = tmp_path / "scenario.yaml"
    sc.write_text("nodes:\n- name: n\n  gpus: [{model: Tesla T4}\npods: []\n")
    rc, err = run_cli(["simulate", "--scenario", str(sc)], capsys)
    assert rc != 0 and str(sc) in err
    assert any(f"{sc}:{n}" in err for n in (3, 4))


def test_missing_scenario_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = run_cli(["simulate", "--scenario", str(tmp_path / "none.yaml")], capsys)
    assert rc != 0 and "none.yaml" in err


def test_scenario_error_type() -> None:
    with pytest.raises(ScenarioError) as exc:
        load_scenario_text("nodes: 5\n", default_config(), "s.yaml")
    assert "s.yaml" in str(exc.value)


def test_deterministic_across_processes() -> None:
    """Same scenario, different hash seeds: the same output byte for byte."""
    outs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": seed}
        proc = subprocess.run(
            [sys.executable, "-m", "vcplugin", "simulate", "--json"],
            capture_output=True, text=True, cwd=ROOT, env=env, timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        outs.append(proc.stdout)
    assert outs[0] == outs[1]
