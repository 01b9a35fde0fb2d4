"""Values for the chart scenarios the tests render (every one must render and validate)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .chart import ROOT

PROMETHEUS_PEER = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}

DEPLOY: dict[str, Any] = {}
SIDECAR_ONLY: dict[str, Any] = {"scheduler": {"mode": "sidecar-only"}}
DEPLOY_METRICS: dict[str, Any] = {
    "metrics": {
        "enabled": True,
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "networkPolicy": {"enabled": True, "from": [PROMETHEUS_PEER]},
    }
}
SIDECAR_ONLY_METRICS: dict[str, Any] = {
    "scheduler": {"mode": "sidecar-only"},
    "metrics": {"enabled": True, "serviceMonitor": {"enabled": True, "namespace": "monitoring"}},
}
# Every switch away from its default at once.
EVERYTHING: dict[str, Any] = {
    "image": {"repository": "registry.example.com/vgpu-pool", "digest": "sha256:" + "ab" * 32},
    "imagePullSecrets": [{"name": "regcred"}],
    "logLevel": "debug",
    "logFormat": "text",
    "deviceConfig": {
        "resourceNames": {"count": "example.com/vgpu", "memory": "example.com/vgpu-memory"},
        "policy": {"nodePolicy": "spread", "gpuPolicy": "binpack"},
        "weights": {"gpuMemory": 3},
        "nvidia": {"deviceSplitCount": 4},
        "knownMigGeometries": [
            {
                "models": ["A100-SXM4-40GB", "A100-PCIE-40GB"],
                "allowedGeometries": [
                    [{"name": "3g.20gb", "memory": 19968, "count": 2}],
                    [{"name": "1g.5gb", "memory": 4864, "count": 7}],
                ],
            }
        ],
        "nodeconfig": [{"name": "gpu-a", "operatingmode": "mig"}],
    },
    "signingKey": {"existingSecret": "my-signing-key", "secretKey": "hmac"},
    "nodeAgent": {
        "nodeSelector": {"example.com/gpu": "a100", "vgpu-pool.io/enabled": None},  # null drops a default key
        "tolerations": [{"operator": "Exists"}],
        "runtimeClassName": "nvidia",
        "privileged": True,
        "restrictToOwnNode": True,
        "adoptForeign": True,
        "advertiseMemoryCores": False,
        "nvml": "sim:/etc/vgpu-pool/sim.yaml",
        "extraArgs": ["--grace=5"],
        "devicePluginDir": "/var/lib/k0s/kubelet/device-plugins",
    },
    "hamiCore": {"install": {"enabled": True, "image": "projecthami/hami:v2.6.0"}},
    "scheduler": {
        "extender": {"httpTimeout": "500ms", "ignorable": True},
        "deploy": {
            "replicas": 2,
            "rbac": {"create": False, "existingClusterRole": "volcano-scheduler"},
            "extraArgs": ["--schedule-period=2s"],
        },
    },
    "sidecar": {"port": 9000, "assignAtBind": False, "extraArgs": ["--max-body-mib=64"]},
    "metrics": {"enabled": True, "serviceMonitor": {"enabled": True}},
    "rbac": {"eventsK8sIo": True},
}


def example_values(name: str) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "configs" / "examples" / name).read_text())
    assert isinstance(data, dict)
    return data


def example_value_files() -> list[Path]:
    return sorted((ROOT / "configs" / "examples").glob("values-*.yaml"))


SCENARIOS: dict[str, dict[str, Any]] = {
    "deploy": DEPLOY,
    "sidecar-only": SIDECAR_ONLY,
    "deploy+metrics": DEPLOY_METRICS,
    "sidecar-only+metrics": SIDECAR_ONLY_METRICS,
    "everything": EVERYTHING,
}
