"""Device config: both geometry formats, the shipped default, and validation messages that name the
file, line, field path and value."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from vcplugin.core import names
from vcplugin.core.config import ConfigError, default_config, load_config_file, load_config_text
from vcplugin.core.migtables import find_model, layout_problem

from .helpers import PROFILE_NAMES, TABLE_FOR_MODEL, valid

SRC = "my-config.yaml"


def load(text: str):
    return load_config_text(textwrap.dedent(text), SRC)


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load(text)
    assert exc.value.errors, "a ConfigError must list its problems"
    assert SRC in str(exc.value)
    return exc.value.errors


def one_error(text: str) -> str:
    errs = errors(text)
    assert len(errs) == 1, errs
    return errs[0]


# --- formats ----------------------------------------------------------------------------------

DESIGN_FORMAT = """\
nvidia:
  resourceCountName: example.com/vgpu
  resourceMemoryName: example.com/vgpu-mem
  resourceMemoryPercentageName: example.com/vgpu-mem-pct
  resourceCoreName: example.com/vgpu-cores
  defaultMemory: 1024
  defaultCores: 20
  defaultGPUNum: 2
  deviceSplitCount: 4
  deviceMemoryScaling: 1.5
  deviceCoreScaling: 2
  knownMigGeometries:
  - models: ["A100-PCIE-40GB", "NVIDIA A100-SXM4-40GB"]
    allowedGeometries:
      - - {name: 1g.5gb, memory: 4864, count: 7}
      - - {name: 2g.10gb, memory: 9856, count: 3}
        - {name: 1g.5gb, memory: 4864, count: 1}
  - models: ["A30"]
    allowedGeometries:
      - - {name: 4g.24gb, memory: 24064, count: 1}
  nodeconfig:
  - name: node-mig
    operatingmode: mig
  - name: node-shared
    operatingmode: hami-core
    devicesplitcount: 3
    devicememoryscaling: 2
    filterdevices: {uuid: ["GPU-x"], index: [1, 3]}
"""


def test_design_document_format_loads() -> None:
    cfg = load(DESIGN_FORMAT)
    assert cfg.resource_count == "example.com/vgpu"
    assert cfg.resource_memory == "example.com/vgpu-mem"
    assert cfg.resource_memory_percentage == "example.com/vgpu-mem-pct"
    assert cfg.resource_cores == "example.com/vgpu-cores"
    assert (cfg.default_memory, cfg.default_cores, cfg.default_gpu_num) == (1024, 20, 2)
    assert cfg.split_count == 4
    assert cfg.memory_scaling == 1.5 and cfg.core_scaling == 2
    a100 = cfg.geometries_for(find_model("NVIDIA A100-PCIE-40GB"))
    assert [g.describe() for g in a100] == ["[1g.5gb x7]", "[2g.10gb x3, 1g.5gb x1]"]
    assert [g.index for g in a100] == [0, 1]
    assert [len(g.slots) for g in a100] == [7, 4]
    assert a100[1].slots[0].memory == 9856
    a30 = cfg.geometries_for(find_model("NVIDIA A30"))
    assert len(a30) == 1 and a30[0].slots[0].profile.name == "4g.24gb"
    assert cfg.geometries_for(find_model("NVIDIA H100 80GB HBM3")) == ()
    mig = cfg.node("node-mig")
    assert mig.mode == names.MODE_MIG
    assert (mig.split_count, mig.memory_scaling) == (4, 1.5)  # inherits the section's defaults
    shared = cfg.node("node-shared")
    assert shared.mode == names.MODE_HAMI_CORE
    assert (shared.split_count, shared.memory_scaling) == (3, 2)
    assert shared.filter_uuids == {"GPU-x"} and shared.filter_indexes == {1, 3}
    other = cfg.node("not-listed")
    assert other.mode == names.MODE_HAMI_CORE  # the default mode
    assert other.split_count == 4 and not other.filter_indexes


def test_volcano_named_group_format_loads() -> None:
    cfg = load(
        """\
        nvidia:
          knownMigGeometries:
          - models: ["A100-PCIE-40GB"]
            allowedGeometries:
              - group: group1
                geometries:
                  - {name: 1g.5gb, memory: 4864, count: 7}
              - group: group2
                geometries:
                  - {name: 2g.10gb, memory: 9856, count: 3}
                  - {name: 1g.5gb, memory: 4864, count: 1}
              - group: group3
                geometries:
                  - {name: 7g.40gb, memory: 40192}
        """
    )
    geoms = cfg.geometries_for(find_model("A100-PCIE-40GB"))
    assert [g.group for g in geoms] == ["group1", "group2", "group3"]
    assert [g.describe() for g in geoms] == ["[1g.5gb x7]", "[2g.10gb x3, 1g.5gb x1]", "[7g.40gb x1]"]


def test_both_formats_give_the_same_geometry() -> None:
    a = load(
        """\
        nvidia:
          knownMigGeometries:
          - models: ["A30"]
            allowedGeometries:
              - - {name: 2g.12gb, memory: 11968, count: 1}
                - {name: 1g.6gb, memory: 5952, count: 2}
        """
    )
    b = load(
        """\
        nvidia:
          knownMigGeometries:
          - models: ["A30"]
            allowedGeometries:
              - group: g
                geometries:
                  - {name: 2g.12gb, memory: 11968, count: 1}
                  - {name: 1g.6gb, memory: 5952, count: 2}
        """
    )
    ga = a.geometries_for(find_model("A30"))[0]
    gb = b.geometries_for(find_model("A30"))[0]
    assert ga.slots == gb.slots and ga.layout == gb.layout


def test_configmap_manifest_is_accepted() -> None:
    inner = textwrap.indent(DESIGN_FORMAT, "    ")
    cfg = load("apiVersion: v1\nkind: ConfigMap\ndata:\n  device-config.yaml: |\n" + inner)
    assert cfg.resource_count == "example.com/vgpu"


def test_empty_config_uses_defaults() -> None:
    cfg = load("")
    assert cfg.resource_count == names.DEFAULT_RESOURCE_COUNT
    assert cfg.resource_memory == names.DEFAULT_RESOURCE_MEMORY
    assert cfg.resource_cores == names.DEFAULT_RESOURCE_CORES
    assert cfg.default_gpu_num == 1
    assert cfg.node("x").mode == names.MODE_HAMI_CORE


def test_load_config_file(tmp_path: Path) -> None:
    p = tmp_path / "device-config.yaml"
    p.write_text(DESIGN_FORMAT)
    assert load_config_file(p).split_count == 4
    with pytest.raises(ConfigError) as exc:
        load_config_file(tmp_path / "missing.yaml")
    assert "missing.yaml" in str(exc.value)


# --- the shipped default ----------------------------------------------------------------------

SHIPPED_MODELS = {
    "NVIDIA A30": "A30-24GB",
    "NVIDIA A100-PCIE-40GB": "A100-40GB",
    "NVIDIA A100-SXM4-40GB": "A100-40GB",
    "NVIDIA A100-SXM4-80GB": "A100-80GB",
    "NVIDIA H100 80GB HBM3": "H100-80GB",
    "NVIDIA H100 NVL": "H100-NVL-94GB",
    "NVIDIA H200": "H200-141GB",
}


@pytest.mark.parametrize("nvml_name", sorted(SHIPPED_MODELS))
def test_shipped_default_has_geometries(nvml_name: str) -> None:
    cfg = default_config()
    model = find_model(nvml_name)
    assert model is not None and model.key == SHIPPED_MODELS[nvml_name]
    geoms = cfg.geometries_for(model)
    assert geoms, f"no shipped geometries for {nvml_name}"
    for g in geoms:
        assert all(s.profile in model.profiles for s in g.slots)


def test_every_shipped_geometry_is_placeable() -> None:
    """Exhaustive: every geometry of every model in the shipped config has a layout that is valid on
    the real placement table (checked both by the product and by the independent rules)."""
    cfg = default_config()
    assert set(cfg.geometries) >= set(SHIPPED_MODELS.values())
    for key, geoms in cfg.geometries.items():
        model = next(m for m in (find_model(n) for n in SHIPPED_MODELS) if m and m.key == key)
        kind = {v: k for k, v in PROFILE_NAMES[key].items()}
        for g in geoms:
            assert len(g.layout) == len(g.slots)
            assert sorted(p for p, _ in g.layout) == sorted(s.profile.name for s in g.slots)
            assert layout_problem(model, g.layout) is None, (key, g.describe())
            assert valid(TABLE_FOR_MODEL[key], [(kind[p], s) for p, s in g.layout]), (key, g.describe())


def test_shipped_geometry_memory_is_what_real_instances_hold() -> None:
    cfg = default_config()
    assert cfg.warnings == ()
    for geoms in cfg.geometries.values():
        for g in geoms:
            for s in g.slots:
                assert 0 < s.memory <= s.profile.memory_mib


def test_shipped_first_geometries_follow_the_design_order() -> None:
    """The worked example relies on A100-40GB's order: [1g.5gb x7] then [2g.10gb x3, 1g.5gb x1]."""
    geoms = default_config().geometries_for(find_model("NVIDIA A100-PCIE-40GB"))
    assert geoms[0].describe() == "[1g.5gb x7]"
    assert sorted(s.profile.name for s in geoms[1].slots) == ["1g.5gb"] + ["2g.10gb"] * 3


def test_shipped_default_is_deterministic() -> None:
    def essence(cfg):
        return {
            k: [(g.index, g.group, g.slots, g.layout) for g in geoms] for k, geoms in cfg.geometries.items()
        }

    assert essence(default_config()) == essence(default_config())


# --- validation ----------------------------------------------------------------------------------


def _entry(geometry_yaml: str, model: str = "A100-PCIE-40GB") -> str:
    return (
        "nvidia:\n"
        "  knownMigGeometries:\n"
        f"  - models: [\"{model}\"]\n"
        "    allowedGeometries:\n"
        f"{geometry_yaml}"
    )


def test_unknown_profile_for_model() -> None:
    # 1g.6gb exists on an A30 but not on an A100-40GB
    err = one_error(_entry("      - - {name: 1g.6gb, memory: 5952, count: 1}\n"))
    assert f"{SRC}:5" in err
    assert "knownMigGeometries[0].allowedGeometries[0][0].name" in err
    assert "1g.6gb" in err


def test_unknown_profile_in_named_group() -> None:
    err = one_error(
        _entry(
            "      - group: g1\n"
            "        geometries:\n"
            "          - {name: 1g.5gb, memory: 4864, count: 1}\n"
            "          - {name: 5g.30gb, memory: 30000, count: 1}\n"
        )
    )
    assert f"{SRC}:8" in err
    assert "allowedGeometries[0].geometries[1].name" in err
    assert "5g.30gb" in err


def test_geometry_that_cannot_be_placed() -> None:
    # 7 compute slices and within per-profile counts, but 3g+3g take all 8 memory slices.
    err = one_error(
        _entry(
            "      - - {name: 1g.5gb, memory: 4864, count: 1}\n"
            "      - - {name: 3g.20gb, memory: 19968, count: 2}\n"
            "        - {name: 1g.5gb, memory: 4864, count: 1}\n"
        )
    )
    assert f"{SRC}:6" in err
    assert "knownMigGeometries[0].allowedGeometries[1]" in err
    assert "place" in err.lower()


def test_geometry_that_cannot_be_placed_4g_and_three_double_memory_1g() -> None:
    err = one_error(
        _entry(
            "      - - {name: 4g.20gb, memory: 19968, count: 1}\n"
            "        - {name: 1g.10gb, memory: 9856, count: 3}\n"
        )
    )
    assert "allowedGeometries[0]" in err and f"{SRC}:5" in err


def test_counts_over_the_slice_budget() -> None:
    err = one_error(
        _entry(
            "      - - {name: 3g.20gb, memory: 19968, count: 2}\n"
            "        - {name: 2g.10gb, memory: 9856, count: 1}\n"
        )
    )
    assert "allowedGeometries[0]" in err and f"{SRC}:5" in err
    assert "8" in err and "7" in err  # 8 compute slices used, 7 available


def test_count_over_profile_maximum() -> None:
    err = one_error(_entry("      - - {name: 1g.5gb, memory: 4864, count: 8}\n"))
    assert "allowedGeometries[0][0].count" in err and f"{SRC}:5" in err
    assert "8" in err


@pytest.mark.parametrize("count", [0, -1])
def test_count_must_be_positive(count: int) -> None:
    err = one_error(_entry(f"      - - {{name: 1g.5gb, memory: 4864, count: {count}}}\n"))
    assert "allowedGeometries[0][0].count" in err and str(count) in err


@pytest.mark.parametrize("memory", [0, -5])
def test_memory_must_be_positive(memory: int) -> None:
    err = one_error(_entry(f"      - - {{name: 1g.6gb, memory: {memory}, count: 1}}\n", model="A30"))
    assert f"{SRC}:5" in err
    assert "knownMigGeometries[0].allowedGeometries[0][0].memory" in err
    assert str(memory) in err


def test_memory_of_wrong_type() -> None:
    err = one_error(_entry("      - - {name: 1g.5gb, memory: lots, count: 1}\n"))
    assert "allowedGeometries[0][0].memory" in err and "lots" in err and f"{SRC}:5" in err


def test_memory_larger_than_real_instance_is_a_warning() -> None:
    cfg = load(_entry("      - - {name: 1g.5gb, memory: 5120, count: 7}\n"))
    assert any("allowedGeometries[0][0].memory" in w and "5120" in w for w in cfg.warnings)


def test_unknown_operating_mode() -> None:
    err = one_error(
        """\
        nvidia:
          nodeconfig:
          - name: n1
            operatingmode: mig
          - name: n2
            operatingmode: turbo
        """
    )
    assert f"{SRC}:6" in err
    assert "nodeconfig[1].operatingmode" in err and "turbo" in err


def test_duplicate_model_across_entries() -> None:
    err = one_error(
        """\
        nvidia:
          knownMigGeometries:
          - models: ["A100-PCIE-40GB"]
            allowedGeometries:
              - - {name: 1g.5gb, memory: 4864, count: 7}
          - models: ["A30", "A100-SXM4-40GB"]
            allowedGeometries:
              - - {name: 4g.24gb, memory: 24064, count: 1}
        """
    )
    assert f"{SRC}:6" in err
    assert "knownMigGeometries[1].models[1]" in err and "A100-SXM4-40GB" in err


def test_same_model_twice_in_one_entry_is_fine() -> None:
    cfg = load(_entry("      - - {name: 1g.5gb, memory: 4864, count: 7}\n", model='A100-PCIE-40GB", "A100-SXM4-40GB'))
    assert len(cfg.geometries_for(find_model("A100-SXM4-40GB"))) == 1


def test_unknown_model_is_named() -> None:
    err = one_error(_entry("      - - {name: 1g.5gb, memory: 4864, count: 7}\n", model="A100X"))
    assert "knownMigGeometries[0].models[0]" in err and "A100X" in err and f"{SRC}:3" in err


def test_yaml_syntax_error_has_line_number() -> None:
    err = one_error(
        """\
        nvidia:
          deviceSplitCount: 10
          defaultMemory: 5: 6
          defaultCores: 0
        """
    )
    assert f"{SRC}:3" in err
    assert "syntax" in err.lower()


def test_yaml_syntax_error_from_file_names_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "broken.yaml"
    p.write_text("nvidia:\n  knownMigGeometries:\n  - models: [A30\n  - bad: ]\n")
    with pytest.raises(ConfigError) as exc:
        load_config_file(p)
    text = str(exc.value)
    assert str(p) in text
    assert any(f"{p}:{n}" in text for n in (3, 4))


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("deviceSplitCount", "0", "nvidia.deviceSplitCount"),
        ("defaultGPUNum", "0", "nvidia.defaultGPUNum"),
        ("deviceMemoryScaling", "0", "nvidia.deviceMemoryScaling"),
        ("deviceCoreScaling", "-1", "nvidia.deviceCoreScaling"),
        ("defaultMemory", "-1", "nvidia.defaultMemory"),
        ("defaultCores", "101", "nvidia.defaultCores"),
    ],
)
def test_scalar_fields_are_validated(field: str, value: str, fragment: str) -> None:
    err = one_error(f"nvidia:\n  deviceSplitCount: 10\n  {field}: {value}\n")
    assert f"{SRC}:3" in err and fragment in err and value in err


def test_every_problem_is_reported() -> None:
    errs = errors(
        """\
        nvidia:
          deviceSplitCount: 0
          knownMigGeometries:
          - models: ["A30"]
            allowedGeometries:
              - - {name: 9g.1gb, memory: 1, count: 1}
          nodeconfig:
          - name: n
            operatingmode: fast
        """
    )
    joined = "\n".join(errs)
    assert len(errs) >= 3
    assert "deviceSplitCount" in joined and "9g.1gb" in joined and "fast" in joined


def test_policy_and_weights_are_validated() -> None:
    errs = errors(
        """\
        scheduler:
          nodePolicy: fastest
          weights: {gpuMemory: -1, cpu: 1, memory: 1}
        """
    )
    joined = "\n".join(errs)
    assert "scheduler.nodePolicy" in joined and "fastest" in joined
    assert "scheduler.weights.gpuMemory" in joined
