"""Pod -> per-container vGPU requests (resource names from config, defaults, annotations, errors)."""

from __future__ import annotations

import pytest

from vcplugin.core.request import RequestError, parse_pod

from .helpers import DEFAULT, config, pod

GPU, MEM, PCT, CORES = "nvidia.com/gpu", "nvidia.com/gpumem", "nvidia.com/gpumem-percentage", "nvidia.com/gpucores"


def parse(cfg=DEFAULT, **kw):
    return parse_pod(pod(**kw), cfg)


def only(req):
    assert len(req.containers) == 1
    return req.containers[0]


def test_count_memory_cores() -> None:
    c = only(parse(limits={GPU: 2, MEM: 8000, CORES: 30}))
    assert (c.name, c.init, c.count, c.memory, c.memory_percent, c.cores) == ("main", False, 2, 8000, 0, 30)


def test_memory_percentage() -> None:
    c = only(parse(limits={GPU: 1, PCT: 50}))
    assert (c.count, c.memory, c.memory_percent) == (1, 0, 50)


def test_string_values_and_quantities() -> None:
    c = only(parse(limits={GPU: "2", MEM: "3k", CORES: "25"}))
    assert (c.count, c.memory, c.cores) == (2, 3000, 25)


def test_requests_are_the_fallback_for_limits() -> None:
    c = only(parse(requests={GPU: 1, MEM: 4000, CORES: 10}))
    assert (c.count, c.memory, c.cores) == (1, 4000, 10)


def test_limits_win_over_requests() -> None:
    c = only(parse(limits={GPU: 2, MEM: 6000}, requests={GPU: 1, MEM: 3000, CORES: 40}))
    assert (c.count, c.memory, c.cores) == (2, 6000, 40)  # cores only in requests: taken from there


def test_pod_without_gpu() -> None:
    req = parse(limits={"cpu": "1"})
    assert req.containers == () and not req.wants_gpu and req.vgpu_count == 0


def test_gpu_zero_without_other_gpu_resources_is_no_request() -> None:
    assert parse(limits={GPU: 0}).containers == ()


def test_gpu_zero_with_memory_is_an_error() -> None:
    with pytest.raises(RequestError) as exc:
        parse(limits={GPU: 0, MEM: 1000})
    assert GPU in str(exc.value) and "main" in str(exc.value)


def test_init_containers_come_first_and_are_marked() -> None:
    req = parse(
        containers=[
            {"name": "app", "resources": {"limits": {GPU: 1, MEM: 2000}}},
            {"name": "sidecar", "resources": {"limits": {"cpu": "1"}}},
            {"name": "app2", "resources": {"limits": {GPU: 2, MEM: 1000}}},
        ],
        init_containers=[{"name": "warmup", "resources": {"limits": {GPU: 1, MEM: 500}}}],
    )
    assert [(c.name, c.init, c.count, c.memory) for c in req.containers] == [
        ("warmup", True, 1, 500),
        ("app", False, 1, 2000),
        ("app2", False, 2, 1000),
    ]
    assert req.vgpu_count == 4


def test_host_resources() -> None:
    req = parse(
        containers=[
            {"name": "a", "resources": {"requests": {"cpu": "500m", "memory": "8Gi"}, "limits": {GPU: 1}}},
            {"name": "b", "resources": {"requests": {"cpu": "1.5", "memory": "512Mi"}}},
        ],
        init_containers=[{"name": "i", "resources": {"requests": {"cpu": "3", "memory": "1Gi"}}}],
    )
    assert req.cpu_milli == 3000  # the init container's 3 cores exceed 0.5 + 1.5
    assert req.memory_bytes == 8 * 2**30 + 512 * 2**20


def test_host_resources_limits_fallback() -> None:
    req = parse(limits={GPU: 1, "cpu": "2", "memory": "1Gi"})
    assert req.cpu_milli == 2000 and req.memory_bytes == 2**30


def test_metadata() -> None:
    req = parse(name="trainer", namespace="team-a", uid="u-1", limits={GPU: 1})
    assert (req.uid, req.namespace, req.name, req.key) == ("u-1", "team-a", "trainer", "team-a/trainer")


# --- defaults from the config ------------------------------------------------------------------

DEFAULTS_CFG = """\
nvidia:
  defaultMemory: 2048
  defaultCores: 25
  defaultGPUNum: 2
"""


def test_default_gpu_num_applies_when_only_memory_is_given() -> None:
    c = only(parse(config(DEFAULTS_CFG), limits={MEM: 1000}))
    assert c.count == 2


def test_default_memory_and_cores() -> None:
    c = only(parse(config(DEFAULTS_CFG), limits={GPU: 1}))
    assert (c.count, c.memory, c.memory_percent, c.cores) == (1, 2048, 0, 25)


def test_default_memory_not_used_when_percentage_given() -> None:
    c = only(parse(config(DEFAULTS_CFG), limits={GPU: 1, PCT: 30}))
    assert (c.memory, c.memory_percent) == (0, 30)


def test_explicit_values_beat_defaults() -> None:
    c = only(parse(config(DEFAULTS_CFG), limits={GPU: 3, MEM: 100, CORES: 0}))
    assert (c.count, c.memory, c.cores) == (3, 100, 0)


def test_shipped_defaults() -> None:
    c = only(parse(limits={MEM: 1000}))
    assert (c.count, c.memory, c.cores) == (1, 1000, 0)
    c = only(parse(limits={GPU: 1}))
    assert (c.memory, c.memory_percent) == (0, 0)  # the whole GPU, decided at fit time


def test_resource_names_from_config() -> None:
    cfg = config(
        """\
        nvidia:
          resourceCountName: example.com/vgpu
          resourceMemoryName: example.com/vmem
          resourceMemoryPercentageName: example.com/vmem-pct
          resourceCoreName: example.com/vcores
        """.replace("        ", "")
    )
    c = only(parse(cfg, limits={"example.com/vgpu": 2, "example.com/vmem": 1000, "example.com/vcores": 10}))
    assert (c.count, c.memory, c.cores) == (2, 1000, 10)
    c = only(parse(cfg, limits={"example.com/vgpu": 1, "example.com/vmem-pct": 40}))
    assert c.memory_percent == 40
    # The default names mean nothing under this config.
    assert parse(cfg, limits={GPU: 1, MEM: 1000}).containers == ()


# --- annotations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "mode"), [("mig", "mig"), ("hami-core", "hami-core"), ("MIG", "mig"), (" mig ", "mig")]
)
def test_mode_annotation(value: str, mode: str) -> None:
    assert parse(limits={GPU: 1}, annotations={"nvidia.com/vgpu-mode": value}).mode == mode


def test_no_mode_annotation_means_either() -> None:
    assert parse(limits={GPU: 1}).mode is None


@pytest.mark.parametrize("value", ["mps", "both", "mig,hami-core"])
def test_bad_mode_annotation(value: str) -> None:
    with pytest.raises(RequestError) as exc:
        parse(limits={GPU: 1}, annotations={"nvidia.com/vgpu-mode": value})
    msg = str(exc.value)
    assert "nvidia.com/vgpu-mode" in msg and "mig" in msg and "hami-core" in msg


def test_gpu_type_annotations() -> None:
    req = parse(
        limits={GPU: 1},
        annotations={"nvidia.com/use-gputype": "A100, H100 ", "nvidia.com/nouse-gputype": "T4"},
    )
    assert req.use_types == ("A100", "H100") and req.nouse_types == ("T4",)


def test_empty_gpu_type_annotation_is_no_constraint() -> None:
    req = parse(limits={GPU: 1}, annotations={"nvidia.com/use-gputype": ""})
    assert req.use_types == ()


@pytest.mark.parametrize("policy", ["binpack", "spread"])
def test_policy_annotations(policy: str) -> None:
    req = parse(
        limits={GPU: 1},
        annotations={"hami.io/node-scheduler-policy": policy, "hami.io/gpu-scheduler-policy": policy},
    )
    assert req.node_policy == policy and req.gpu_policy == policy


def test_no_policy_annotations() -> None:
    req = parse(limits={GPU: 1})
    assert req.node_policy is None and req.gpu_policy is None


@pytest.mark.parametrize("key", ["hami.io/node-scheduler-policy", "hami.io/gpu-scheduler-policy"])
def test_bad_policy_annotation(key: str) -> None:
    with pytest.raises(RequestError) as exc:
        parse(limits={GPU: 1}, annotations={key: "fastest"})
    assert key in str(exc.value) and "binpack" in str(exc.value)


# --- invalid values --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "resource"),
    [
        ({GPU: "500m"}, GPU),  # half a vGPU
        ({GPU: -1}, GPU),
        ({GPU: "two"}, GPU),
        ({GPU: 1.5}, GPU),
        ({GPU: 1, MEM: 0}, MEM),
        ({GPU: 1, MEM: -100}, MEM),
        ({GPU: 1, MEM: "lots"}, MEM),
        ({GPU: 1, PCT: 0}, PCT),
        ({GPU: 1, PCT: 101}, PCT),
        ({GPU: 1, CORES: 101}, CORES),
        ({GPU: 1, CORES: -1}, CORES),
        ({GPU: 1, CORES: "1.5"}, CORES),
    ],
)
def test_invalid_values_name_container_resource_and_value(limits: dict, resource: str) -> None:
    with pytest.raises(RequestError) as exc:
        parse(limits=limits)
    msg = str(exc.value)
    assert "main" in msg and resource in msg


def test_invalid_host_quantity() -> None:
    with pytest.raises(RequestError) as exc:
        parse(limits={GPU: 1, "cpu": "many"})
    assert "main" in str(exc.value) and "many" in str(exc.value)


def test_request_error_is_a_value_error() -> None:
    assert issubclass(RequestError, ValueError)
