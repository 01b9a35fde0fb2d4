"""What the chart configures: the device ConfigMap, the scheduler config, the programs' flags."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodeagent.cli import build_parser as agent_parser
from vcplugin.cli import build_parser as sidecar_parser
from vcplugin.core.config import DATA_KEY, DeviceConfig, default_config, load_config_text

from .chart import CHART, ROOT, RenderError, container, find, one, render
from .conftest import requires_helm
from .scenarios import SCENARIOS, example_values

SHIPPED = ROOT / "vcplugin" / "data" / "device-config.yaml"
CHART_COPY = CHART / "files" / "device-config.yaml"


def test_chart_copy_of_device_config_is_byte_identical() -> None:
    # Helm cannot read outside the chart, so the chart carries a copy of the shipped config.
    # Refresh it with: cp vcplugin/data/device-config.yaml helm/vgpu-pool/files/device-config.yaml
    assert CHART_COPY.read_bytes() == SHIPPED.read_bytes(), (
        "helm/vgpu-pool/files/device-config.yaml differs from vcplugin/data/device-config.yaml; "
        "copy the latter over the former"
    )


def test_chart_version_follows_the_project() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == project["version"]


def _comparable(cfg: DeviceConfig) -> dict[str, Any]:
    """A DeviceConfig as plain data (its compiled MIG tables do not compare by value)."""
    out = {f: getattr(cfg, f) for f in cfg.__struct_fields__ if f != "geometries"}
    out["geometries"] = {
        model: [(g.index, g.group, [(s.profile.name, s.memory, s.cores) for s in g.slots]) for g in geoms]
        for model, geoms in cfg.geometries.items()
    }
    return out


def _device_cm(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objects, "ConfigMap", "vgpu-pool-device-config")


def _sidecar(objects: list[dict[str, Any]]) -> dict[str, Any]:
    deps = find(objects, "Deployment")
    if deps:
        return container(deps[0]["spec"]["template"]["spec"], "vgpu-pool-sidecar")
    snippets = one(objects, "ConfigMap", "vgpu-pool-scheduler-snippets")
    patch = yaml.safe_load(snippets["data"]["deployment-patch.yaml"])
    return container(patch["spec"]["template"]["spec"], "vgpu-pool-sidecar")


def _agent(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return container(one(objects, "DaemonSet")["spec"]["template"]["spec"], "node-agent")


def _scheduler_conf(objects: list[dict[str, Any]]) -> dict[str, Any]:
    cms = find(objects, "ConfigMap", "vgpu-pool-scheduler-configmap") or find(
        objects, "ConfigMap", "vgpu-pool-scheduler-snippets"
    )
    conf = yaml.safe_load(cms[0]["data"]["volcano-scheduler.conf"])
    assert isinstance(conf, dict)
    return conf


def _extender(conf: dict[str, Any]) -> dict[str, Any]:
    found = [p for tier in conf["tiers"] for p in tier["plugins"] if p["name"] == "extender"]
    assert len(found) == 1
    args = found[0]["arguments"]
    assert isinstance(args, dict)
    return args


@requires_helm
class TestDeviceConfigMap:
    def test_default_is_the_shipped_file_verbatim(self) -> None:
        cm = _device_cm(render())
        assert cm["data"][DATA_KEY] == SHIPPED.read_text()

    def test_default_loads_as_the_programs_default(self) -> None:
        cm = _device_cm(render({"scheduler": {"mode": "sidecar-only"}}))
        assert _comparable(load_config_text(cm["data"][DATA_KEY], "rendered")) == _comparable(default_config())

    def test_values_change_what_the_programs_load(self) -> None:
        cm = _device_cm(render(SCENARIOS["everything"]))
        cfg = load_config_text(cm["data"][DATA_KEY], "rendered")
        base = default_config()
        assert cfg.resource_count == "example.com/vgpu"
        assert cfg.resource_memory == "example.com/vgpu-memory"
        assert cfg.resource_cores == base.resource_cores  # not given: kept
        assert (cfg.node_policy, cfg.gpu_policy) == ("spread", "binpack")
        assert (cfg.weight_gpu_memory, cfg.weight_cpu, cfg.weight_memory) == (3, 1, 1)
        assert cfg.split_count == 4
        # knownMigGeometries replaced as a whole, order kept; the other models are gone.
        assert len(cfg.geometries) == 1
        (geoms,) = cfg.geometries.values()
        assert [g.slots[0].profile.name for g in geoms] == ["3g.20gb", "1g.5gb"]
        assert cfg.node("gpu-a").mode == "mig"
        # Everything else as shipped.
        assert (cfg.default_memory, cfg.default_gpu_num, cfg.memory_scaling) == (
            base.default_memory,
            base.default_gpu_num,
            base.memory_scaling,
        )

    def test_override_replaces_the_shipped_file(self) -> None:
        text = "nvidia:\n  resourceCountName: example.com/gpu\n  deviceSplitCount: 2\n"
        cm = _device_cm(render({"deviceConfig": {"override": text}}))
        assert cm["data"][DATA_KEY] == text
        cfg = load_config_text(cm["data"][DATA_KEY], "rendered")
        assert cfg.resource_count == "example.com/gpu" and cfg.geometries == {}
        # The extender's managed resources follow the override (the rest at their defaults).
        assert _extender(_scheduler_conf(render({"deviceConfig": {"override": text}})))[
            "extender.managedResources"
        ] == ["example.com/gpu", "nvidia.com/gpumem", "nvidia.com/gpumem-percentage", "nvidia.com/gpucores"]

    def test_invalid_override_is_refused(self) -> None:
        with pytest.raises(RenderError):
            render({"deviceConfig": {"override": "nvidia: [unclosed"}})

    def test_nodeconfig_example(self) -> None:
        cm = _device_cm(render(example_values("values-nodeconfig.yaml")))
        cfg = load_config_text(cm["data"][DATA_KEY], "rendered")
        n1 = cfg.node("gpu-node-1")
        assert n1.mode == "mig"
        assert n1.filter_uuids == {"GPU-8f3c2a1e-5b7d-4e9a-9c61-2d0f4b8e7a13"} and n1.filter_indexes == {3}
        n2 = cfg.node("gpu-node-2")
        assert (n2.mode, n2.split_count, n2.memory_scaling) == ("hami-core", 4, 1.5)
        assert cfg.node("elsewhere").mode == "hami-core"
        assert _comparable(cfg)["geometries"] == _comparable(default_config())["geometries"]  # shipped ones stay

    def test_both_programs_watch_it(self) -> None:
        for scenario in ("deploy", "sidecar-only"):
            objects = render(SCENARIOS[scenario])
            cm = _device_cm(objects)
            ref = f"{cm['metadata']['namespace']}/{cm['metadata']['name']}"
            assert f"--config-map={ref}" in _sidecar(objects)["args"]
            assert f"--config-map={ref}" in _agent(objects)["args"]


@requires_helm
class TestSchedulerConfig:
    def test_default_equals_the_repositorys_scheduler_conf(self) -> None:
        shipped = yaml.safe_load((ROOT / "configs" / "volcano-scheduler.conf").read_text())
        assert _scheduler_conf(render()) == shipped
        assert _scheduler_conf(render(SCENARIOS["sidecar-only"])) == shipped

    def test_extender_arguments(self) -> None:
        args = _extender(_scheduler_conf(render(SCENARIOS["everything"])))
        assert args["extender.urlPrefix"] == "http://127.0.0.1:9000"
        assert args["extender.httpTimeout"] == "500ms"
        assert args["extender.ignorable"] is True
        # A YAML list (vc-scheduler exits on a comma string), with the configured resource names.
        assert args["extender.managedResources"] == [
            "example.com/vgpu",
            "example.com/vgpu-memory",
            "nvidia.com/gpumem-percentage",
            "nvidia.com/gpucores",
        ]
        assert "extender.onSessionOpenVerb" not in args  # the whole cluster every session: off
        for verb in ("predicate", "prioritize", "allocateFunc", "deallocateFunc", "onSessionClose"):
            assert args[f"extender.{verb}Verb"]

    def test_volcanos_own_vgpu_allocator_is_off(self) -> None:
        conf = _scheduler_conf(render())
        (ds,) = [p for tier in conf["tiers"] for p in tier["plugins"] if p["name"] == "deviceshare"]
        assert ds["arguments"]["deviceshare.VGPUEnable"] is False

    def test_conf_override(self) -> None:
        text = "actions: allocate\ntiers: []\n"
        objects = render({"scheduler": {"conf": {"override": text}}})
        cm = one(objects, "ConfigMap", "vgpu-pool-scheduler-configmap")
        assert cm["data"]["volcano-scheduler.conf"] == text

    def test_vc_scheduler_reads_the_rendered_file(self) -> None:
        objects = render()
        dep = one(objects, "Deployment", "vgpu-pool-scheduler")
        spec = dep["spec"]["template"]["spec"]
        vc = container(spec, "vc-scheduler")
        (mount,) = [m for m in vc["volumeMounts"] if m["name"] == "scheduler-config"]
        (vol,) = [v for v in spec["volumes"] if v["name"] == "scheduler-config"]
        assert vol["configMap"]["name"] == "vgpu-pool-scheduler-configmap"
        assert f"--scheduler-conf={mount['mountPath']}/volcano-scheduler.conf" in vc["args"]
        assert "--scheduler-name=volcano" in vc["args"] and "--leader-elect=false" in vc["args"]
        two = container(one(render(SCENARIOS["everything"]), "Deployment")["spec"]["template"]["spec"], "vc-scheduler")
        assert "--leader-elect=true" in two["args"]


@requires_helm
class TestFlags:
    """Every flag the chart passes exists in the programs' parsers, with the meaning intended."""

    @pytest.mark.parametrize("scenario", sorted(SCENARIOS))
    def test_sidecar_flags_parse(self, scenario: str) -> None:
        objects = render(SCENARIOS[scenario])
        c = _sidecar(objects)
        assert c["command"] == ["vcplugin", "serve"]
        args = sidecar_parser().parse_args(c["command"][1:] + c["args"])
        assert args.command == "serve"
        assert args.signing_key_file == _mounted_secret_file(objects, c, sidecar=True)
        port = SCENARIOS[scenario].get("sidecar", {}).get("port", 8713)
        # The verbs stay on the loopback; metrics get a listener of their own on all interfaces.
        assert args.listen == f"127.0.0.1:{port}"
        metrics_port = SCENARIOS[scenario].get("sidecar", {}).get("metricsPort", 8714)
        enabled = SCENARIOS[scenario].get("metrics", {}).get("enabled")
        assert args.metrics_listen == (f"0.0.0.0:{metrics_port}" if enabled else "")
        assert args.log_level in ("info", "debug")

    @pytest.mark.parametrize("scenario", sorted(SCENARIOS))
    def test_agent_flags_parse(self, scenario: str) -> None:
        objects = render(SCENARIOS[scenario])
        c = _agent(objects)
        assert c["command"] == ["nodeagent", "run"]
        args = agent_parser().parse_args(c["command"][1:] + c["args"])
        assert args.command == "run"
        assert args.node_name is None  # from $NODE_NAME
        assert args.signing_key_file == _mounted_secret_file(objects, c, sidecar=False)
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert args.device_plugin_dir in mounts
        assert args.hami_core_dir in mounts and args.lock_dir in mounts
        assert str(Path(args.state_file).parent) in mounts

    def test_agent_switches(self) -> None:
        args = agent_parser().parse_args(["run", *_agent(render(SCENARIOS["everything"]))["args"]])
        assert args.adopt_foreign and args.no_memory_cores
        assert args.nvml == "sim:/etc/vgpu-pool/sim.yaml"
        assert args.grace == 5.0  # extraArgs come last and win
        assert args.device_plugin_dir == "/var/lib/k0s/kubelet/device-plugins"
        defaults = agent_parser().parse_args(["run", *_agent(render())["args"]])
        assert not defaults.adopt_foreign and not defaults.no_memory_cores and defaults.nvml is None

    def test_sidecar_switches(self) -> None:
        args = sidecar_parser().parse_args(["serve", *_sidecar(render(SCENARIOS["everything"]))["args"]])
        assert args.no_assign_at_bind and args.max_body_mib == 64 and args.log_format == "text"


def _mounted_secret_file(objects: list[dict[str, Any]], c: dict[str, Any], sidecar: bool) -> str:
    """The file path under which container c sees the signing key (mount + item path)."""
    if sidecar:
        deps = find(objects, "Deployment")
        if deps:
            volumes = deps[0]["spec"]["template"]["spec"]["volumes"]
        else:
            patch = yaml.safe_load(
                one(objects, "ConfigMap", "vgpu-pool-scheduler-snippets")["data"]["deployment-patch.yaml"]
            )
            volumes = patch["spec"]["template"]["spec"]["volumes"]
    else:
        volumes = one(objects, "DaemonSet")["spec"]["template"]["spec"]["volumes"]
    secret_vols = {v["name"]: v["secret"] for v in volumes if "secret" in v}
    (mount,) = [m for m in c["volumeMounts"] if m["name"] in secret_vols]
    assert mount.get("readOnly") is True
    (item,) = secret_vols[mount["name"]]["items"]
    return f"{mount['mountPath']}/{item['path']}"


@requires_helm
def test_sidecar_only_patch_applies_to_volcanos_scheduler_deployment() -> None:
    """The patch, merged as `kubectl patch --type strategic` does (containers and volumes by name),
    into a Deployment shaped like the one Volcano's chart installs, gives a valid Deployment."""
    import kubernetes_validate

    objects = render(SCENARIOS["sidecar-only"])
    patch = yaml.safe_load(one(objects, "ConfigMap", "vgpu-pool-scheduler-snippets")["data"]["deployment-patch.yaml"])
    volcano: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "volcano-scheduler", "namespace": "volcano-system"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "volcano-scheduler"}},
            "template": {
                "metadata": {"labels": {"app": "volcano-scheduler"}},
                "spec": {
                    "serviceAccount": "volcano-scheduler",
                    "containers": [
                        {
                            "name": "volcano-scheduler",
                            "image": "volcanosh/vc-scheduler:v1.15.1",
                            "args": ["--scheduler-conf=/volcano.scheduler/volcano-scheduler.conf"],
                            "volumeMounts": [{"name": "scheduler-config", "mountPath": "/volcano.scheduler"}],
                        }
                    ],
                    "volumes": [{"name": "scheduler-config", "configMap": {"name": "volcano-scheduler-configmap"}}],
                },
            },
        },
    }
    merged = copy.deepcopy(volcano)
    pod = merged["spec"]["template"]
    pod["metadata"].setdefault("annotations", {}).update(patch["spec"]["template"]["metadata"]["annotations"])
    for key in ("containers", "volumes"):
        by_name = {x["name"]: x for x in pod["spec"].get(key, [])}
        for x in patch["spec"]["template"]["spec"][key]:
            by_name[x["name"]] = x
        pod["spec"][key] = list(by_name.values())
    assert [c["name"] for c in pod["spec"]["containers"]] == ["volcano-scheduler", "vgpu-pool-sidecar"]
    kubernetes_validate.validate(merged, kubernetes_validate.latest_version(), strict=True)
    # Every volume the sidecar mounts is in the patch; the Secret it names is rendered in that namespace.
    names = {v["name"] for v in pod["spec"]["volumes"]}
    assert {m["name"] for m in container(pod["spec"], "vgpu-pool-sidecar")["volumeMounts"]} <= names
    secret_name = next(v["secret"]["secretName"] for v in pod["spec"]["volumes"] if "secret" in v)
    assert any(
        s["metadata"]["name"] == secret_name and s["metadata"]["namespace"] == "volcano-system"
        for s in find(objects, "Secret")
    )
    # And the snippet's plugin entry is the one in the whole config.
    plugin = yaml.safe_load(one(objects, "ConfigMap", "vgpu-pool-scheduler-snippets")["data"]["extender-plugin.yaml"])
    assert plugin == [{"name": "extender", "arguments": _extender(_scheduler_conf(objects))}]


def test_values_schema_knows_the_programs_policies_and_modes() -> None:
    import json

    from vcplugin.core import names

    schema = json.loads((CHART / "values.schema.json").read_text())
    dc = schema["properties"]["deviceConfig"]["properties"]
    for key in ("nodePolicy", "gpuPolicy"):
        assert set(dc["policy"]["properties"][key]["enum"]) == {"", *names.POLICIES}
    modes = dc["nodeconfig"]["items"]["properties"]["operatingmode"]["enum"]
    assert set(modes) == set(names.MODES)
