"""The workloads: what the node agent gets from the node, least privilege, the signing key."""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest
import yaml

from .chart import NAMESPACE, container, find, notes, one, render
from .conftest import requires_helm
from .scenarios import SCENARIOS

pytestmark = requires_helm


def _agent_pod(values: dict[str, Any] | None = None) -> dict[str, Any]:
    spec = one(render(values), "DaemonSet")["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def _sidecar(values: dict[str, Any] | None = None) -> dict[str, Any]:
    objects = render(values)
    deps = find(objects, "Deployment")
    if deps:
        return container(deps[0]["spec"]["template"]["spec"], "vgpu-pool-sidecar")
    patch = yaml.safe_load(one(objects, "ConfigMap", "vgpu-pool-scheduler-snippets")["data"]["deployment-patch.yaml"])
    return container(patch["spec"]["template"]["spec"], "vgpu-pool-sidecar")


class TestNodeAgent:
    def test_host_paths_mounted_where_the_agent_hands_them_to_kubelet(self) -> None:
        spec = _agent_pod()
        host = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
        assert sorted(host.values()) == sorted(
            [
                "/var/lib/kubelet/device-plugins",
                "/var/lib/kubelet/pod-resources",
                "/usr/local/vgpu",
                "/tmp/vgpulock",
                "/var/lib/vgpu-pool",
            ]
        )
        agent = container(spec, "node-agent")
        for m in agent["volumeMounts"]:
            if m["name"] in host:
                # The agent gives kubelet host paths (HAMi-core's library, cache and lock dirs) that
                # it also creates itself, so inside the container they must be the same paths.
                assert m["mountPath"] == host[m["name"]], m
                assert m.get("readOnly", False) == (host[m["name"]] == "/var/lib/kubelet/pod-resources"), m
        args = agent["args"]
        assert "--hami-core-dir=/usr/local/vgpu" in args and "--lock-dir=/tmp/vgpulock" in args
        assert "--device-plugin-dir=/var/lib/kubelet/device-plugins" in args
        assert "--state-file=/var/lib/vgpu-pool/nodeagent-owned.json" in args
        assert "--pod-resources-socket=/var/lib/kubelet/pod-resources/kubelet.sock" in args
        kinds = {v["hostPath"]["path"]: v["hostPath"]["type"] for v in spec["volumes"] if "hostPath" in v}
        # kubelet's directories: never create them.
        assert kinds["/var/lib/kubelet/device-plugins"] == kinds["/var/lib/kubelet/pod-resources"] == "Directory"

    def test_metrics_port_and_probes(self) -> None:
        agent = container(_agent_pod(), "node-agent")
        assert "--metrics-listen=:9401" in agent["args"]
        assert agent["ports"] == [{"name": "metrics", "containerPort": 9401, "protocol": "TCP"}]
        for probe in ("startupProbe", "livenessProbe"):
            assert agent[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        off = container(_agent_pod({"nodeAgent": {"metricsPort": 0, "podResourcesDir": ""}}), "node-agent")
        assert "--metrics-listen=" in off["args"] and "--pod-resources-socket=" in off["args"]
        assert "ports" not in off and "livenessProbe" not in off
        assert "pod-resources" not in {m["name"] for m in off["volumeMounts"]}

    def test_environment(self) -> None:
        env = {e["name"]: e for e in container(_agent_pod(), "node-agent")["env"]}
        assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
        for name in ("NVIDIA_VISIBLE_DEVICES", "NVIDIA_MIG_CONFIG_DEVICES", "NVIDIA_MIG_MONITOR_DEVICES"):
            assert env[name]["value"] == "all"
        assert env["NVIDIA_DRIVER_CAPABILITIES"]["value"] == "utility"  # NVML only

    def test_least_privilege_by_default(self) -> None:
        spec = _agent_pod()
        sc = container(spec, "node-agent")["securityContext"]
        assert sc["runAsUser"] == 0 and not sc.get("privileged", False)
        assert sc["capabilities"] == {"drop": ["ALL"], "add": ["SYS_ADMIN"]}
        # The API server rejects allowPrivilegeEscalation=false together with CAP_SYS_ADMIN.
        assert sc.get("allowPrivilegeEscalation", True) is True
        assert spec["hostPID"] is True
        assert "hostNetwork" not in spec and "hostIPC" not in spec
        for init in spec["initContainers"]:
            isc = init["securityContext"]
            assert isc["capabilities"] == {"drop": ["ALL"]} and isc["allowPrivilegeEscalation"] is False
            assert "NVIDIA_VISIBLE_DEVICES" not in {e["name"] for e in init.get("env", [])}

    def test_privileged_fallback(self) -> None:
        sc = container(_agent_pod({"nodeAgent": {"privileged": True}}), "node-agent")["securityContext"]
        assert sc["privileged"] is True and "capabilities" not in sc

    def test_placement(self) -> None:
        spec = _agent_pod()
        assert spec["nodeSelector"] == {"vgpu-pool.io/enabled": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        assert spec["priorityClassName"] == "system-node-critical"
        assert "runtimeClassName" not in spec
        spec = _agent_pod(SCENARIOS["everything"])
        assert spec["nodeSelector"] == {"example.com/gpu": "a100"}
        assert spec["tolerations"] == [{"operator": "Exists"}]
        assert spec["runtimeClassName"] == "nvidia"
        assert spec["imagePullSecrets"] == [{"name": "regcred"}]

    def test_hami_core_install_init_container(self) -> None:
        assert [c["name"] for c in _agent_pod()["initContainers"]] == ["prepare-host"]
        spec = _agent_pod(SCENARIOS["everything"])
        install, prepare = spec["initContainers"]
        assert install["name"] == "install-hami-core" and prepare["name"] == "prepare-host"
        assert install["image"] == "projecthami/hami:v2.6.0"
        script = install["args"][0]
        assert "mv -f" in script and "/libvgpu.so" in script  # replaced by rename, never overwritten in place
        with pytest.raises(Exception, match="hamiCore.install.image"):
            render({"hamiCore": {"install": {"enabled": True}}})


class TestSidecar:
    @pytest.mark.parametrize("scenario", ["deploy", "sidecar-only"])
    def test_non_root_and_read_only(self, scenario: str) -> None:
        sc = _sidecar(SCENARIOS[scenario])["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532 and sc["runAsGroup"] == 65532
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}

    def test_loopback_only_without_metrics(self) -> None:
        c = _sidecar()
        assert "--listen=127.0.0.1:8713" in c["args"] and "ports" not in c
        # Probes run in the container (kubelet could not reach the loopback).
        for probe in ("readinessProbe", "livenessProbe"):
            assert "exec" in c[probe] and "127.0.0.1:8713" in c[probe]["exec"]["command"][-1]

    def test_image(self) -> None:
        assert _sidecar()["image"] == "vgpu-pool:0.1.0"
        digest = SCENARIOS["everything"]["image"]["digest"]
        assert _sidecar(SCENARIOS["everything"])["image"] == f"registry.example.com/vgpu-pool@{digest}"
        assert container(_agent_pod(SCENARIOS["everything"]), "node-agent")["image"].endswith(digest)


class TestSigningKey:
    def _secrets(self, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return find(render(values), "Secret")

    def test_generated_when_not_given(self) -> None:
        (secret,) = self._secrets()
        assert secret["metadata"] == {**secret["metadata"], "name": "vgpu-pool-signing-key", "namespace": NAMESPACE}
        key = base64.b64decode(secret["data"]["key"]).decode()
        assert re.fullmatch(r"[A-Za-z0-9]{48}", key)

    def test_sidecar_only_gets_the_same_key_in_the_schedulers_namespace(self) -> None:
        secrets = self._secrets(SCENARIOS["sidecar-only"])
        assert sorted(s["metadata"]["namespace"] for s in secrets) == sorted([NAMESPACE, "volcano-system"])
        assert secrets[0]["data"] == secrets[1]["data"]

    def test_fixed_value(self) -> None:
        (secret,) = self._secrets({"signingKey": {"value": "s3cret"}})
        assert base64.b64decode(secret["data"]["key"]) == b"s3cret"

    def test_existing_secret_is_used_not_made(self) -> None:
        objects = render(SCENARIOS["everything"])
        assert not find(objects, "Secret")
        for spec in (
            one(objects, "DaemonSet")["spec"]["template"]["spec"],
            one(objects, "Deployment")["spec"]["template"]["spec"],
        ):
            (vol,) = [v for v in spec["volumes"] if "secret" in v]
            assert vol["secret"]["secretName"] == "my-signing-key"
            assert vol["secret"]["items"] == [{"key": "hmac", "path": "hmac"}]

    def test_template_keeps_an_existing_key_on_upgrade(self) -> None:
        # `lookup` returns nothing offline, so check the template's logic as written.
        from .chart import CHART

        text = (CHART / "templates" / "signing-secret.yaml").read_text()
        assert 'lookup "v1" "Secret" .Release.Namespace $name' in text
        assert "randAlphaNum 48" in text


def test_notes_explain_the_gpu_operator() -> None:
    text = notes()
    for needle in (
        "devicePlugin.enabled=false",
        "migManager.enabled=false",
        "nvidia.com/gpu.deploy.device-plugin=false",
        "nvidia.com/gpu.deploy.mig-manager=false",
        "DCGM exporter",
    ):
        assert needle in text, needle
    assert (
        'lookup "nvidia.com/v1" "ClusterPolicy"'
        in (
            __import__("pathlib").Path(__file__).resolve().parents[2] / "helm" / "vgpu-pool" / "templates" / "NOTES.txt"
        ).read_text()
    )


def test_notes_for_sidecar_only_give_the_patch_command() -> None:
    text = notes(SCENARIOS["sidecar-only"])
    if "scheduler.mode=sidecar-only" in text:  # rendered (the SDK renders NOTES; `helm template` does not)
        assert "kubectl -n volcano-system patch deployment volcano-scheduler --type strategic" in text
        assert "deployment-patch" in text and "extender-plugin" in text
