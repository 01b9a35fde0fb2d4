"""configs/examples: the Volcano Jobs are valid and ask what they say; the values files render."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml

from vcplugin.core import names
from vcplugin.core.config import default_config
from vcplugin.core.request import parse_pod

from .chart import ROOT

EXAMPLES = ROOT / "configs" / "examples"

# file -> (mode annotation expected, vGPUs per pod, MiB per vGPU, SM percent per vGPU)
JOBS = {
    "job-mig.yaml": ("mig", 2, 8000, 0),
    "job-hami-core.yaml": ("hami-core", 1, 6000, 30),
    "job-open.yaml": (None, 1, 10000, 0),
}


def _load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((EXAMPLES / name).read_text())
    assert isinstance(data, dict)
    return data


def _pods(job: dict[str, Any]) -> list[dict[str, Any]]:
    """The pods Volcano's job controller makes from each task (the parts that matter here)."""
    pods = []
    for task in job["spec"]["tasks"]:
        tpl = task["template"]
        pods.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"{job['metadata']['name']}-{task['name']}-0",
                    "namespace": job["metadata"]["namespace"],
                    **tpl.get("metadata", {}),
                },
                "spec": {**tpl["spec"], "schedulerName": job["spec"]["schedulerName"]},
            }
        )
    return pods


def test_every_mode_has_an_example() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("job-*.yaml")) == sorted(JOBS)


@pytest.mark.parametrize("name", sorted(JOBS))
def test_job_example(name: str) -> None:
    job = _load(name)
    assert job["apiVersion"] == "batch.volcano.sh/v1alpha1" and job["kind"] == "Job"
    spec = job["spec"]
    assert spec["schedulerName"] == "volcano" and spec["queue"]
    assert 1 <= spec["minAvailable"] <= sum(t["replicas"] for t in spec["tasks"])
    mode, count, memory, cores = JOBS[name]
    cfg = default_config()
    for pod in _pods(job):
        kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)
        annotations = pod["metadata"].get("annotations", {})
        assert annotations.get(names.ANNO_VGPU_MODE) == mode
        req = parse_pod(pod, cfg)
        assert req.mode == mode
        (ctr,) = req.containers
        assert (ctr.count, ctr.memory, ctr.cores) == (count, memory, cores)
        # vc-scheduler and HAMi read limits: the example puts GPU resources there only.
        for c in pod["spec"]["containers"]:
            gpu = {k for k in c["resources"].get("requests", {}) if k.startswith("nvidia.com/")}
            assert not gpu, f"{name}: GPU resources belong in limits"
            assert set(c["resources"]["limits"]) <= {
                cfg.resource_count,
                cfg.resource_memory,
                cfg.resource_memory_percentage,
                cfg.resource_cores,
            }


def test_open_example_uses_a_type_filter() -> None:
    (pod,) = _pods(_load("job-open.yaml"))
    req = parse_pod(pod, default_config())
    assert req.use_types == ("A100", "H100")


def test_values_example_is_only_deviceconfig() -> None:
    values = _load("values-nodeconfig.yaml")
    assert set(values) == {"deviceConfig"}
    (mig,) = [n for n in values["deviceConfig"]["nodeconfig"] if n["operatingmode"] == "mig"]
    assert mig["filterdevices"]["uuid"] and mig["filterdevices"]["index"]
