"""The design document's worked example, end to end over HTTP: Volcano-like driver → sidecar → PATCH."""

from __future__ import annotations

import json
import re
import time

from vcplugin.protocol.assignment import verify
from vgpupool_testing.volcano import ALLOCATED, bind, go_json, node_info, task_info

from .conftest import A100, A100_UUID, KEY, NS, annotations_of, gpu_node, gpu_pod, wait_until

REGISTRATION = f"{A100_UUID},10,40960,NVIDIA-{A100},true,mig:"


async def test_two_8000_mib_vgpus_become_two_2g10gb_instances_of_one_a100(start_cluster) -> None:
    node = gpu_node("gpu-node-1", uuids=[A100_UUID])
    assert node["metadata"]["annotations"]["volcano.sh/node-vgpu-register"] == REGISTRATION
    c = await start_cluster(nodes=[node])
    pod = c.create("pods", gpu_pod("vgpu-train-worker-0", count=2, mem=8000, mode="mig", group="vgpu-train"))
    await c.synced_pod("vgpu-train-worker-0", lambda p: True)
    before = int(time.time())

    result = await c.volcano.schedule_job([pod], c.nodes(), min_available=1)

    assert result.placements == {f"{NS}/vgpu-train-worker-0": "gpu-node-1"}, result.tasks
    verbs = [call.verb for call in c.volcano.calls]
    # One node passed: prioritize is skipped, as in Volcano's allocate action.
    assert verbs == ["onSessionOpen", "predicate", "allocate", "onSessionClose"]
    assert all(call.status == 200 for call in c.volcano.calls)

    # The assignment was PATCHed onto the pod before allocate answered.
    patches = [r for r in c.api.requests if r.verb == "patch" and r.resource == "pods"]
    assert len(patches) == 1 and patches[0].path == f"/api/v1/namespaces/{NS}/pods/vgpu-train-worker-0"
    anns = annotations_of(c.api, "vgpu-train-worker-0")
    assignment_json = anns["vgpu-pool.io/assignment"]
    a = json.loads(assignment_json)
    assert a["node"] == "gpu-node-1"
    devices = [d for ctr in a["containers"] for d in ctr["devices"]]
    assert [ctr["name"] for ctr in a["containers"]] == ["main"]
    assert len(devices) == 2
    assert {d["uuid"] for d in devices} == {A100_UUID}  # one GPU
    assert all(d["mode"] == "mig" and d["profile"] == "2g.10gb" for d in devices)
    assert sorted(tuple(d["placement"]) for d in devices) == [(0, 2), (2, 2)]
    assert all(d["memory"] >= 8000 for d in devices)
    # The geometry is the second of the config ([1g.5gb x7] is too small): [2g.10gb x3, 1g.5gb x1].
    assert {d["geometry"] for d in devices} == {1}

    # The node label the node agents watch by.
    assert c.api.get("pods", NS, "vgpu-train-worker-0")["metadata"]["labels"]["vgpu-pool.io/node"] == "gpu-node-1"
    # Volcano's annotations, in the format the device plugin reads.
    assert anns["volcano.sh/vgpu-node"] == "gpu-node-1"
    assert anns["volcano.sh/bind-phase"] == "allocating"
    for key in ("volcano.sh/vgpu-time", "volcano.sh/bind-time"):
        assert before - 1 <= int(anns[key]) <= int(time.time()) + 1
    ids = anns["volcano.sh/vgpu-ids-new"]
    assert anns["volcano.sh/devices-to-allocate"] == ids
    entries = re.fullmatch(r"((?:[^,:;\[]+\[[^\]-]+-\d+\],NVIDIA,\d+,\d+:)+);", ids)
    assert entries, ids
    parsed = re.findall(r"([^,:;\[]+)\[([^\]-]+)-(\d+)\],NVIDIA,(\d+),(\d+):", ids)
    assert [p[0] for p in parsed] == [A100_UUID, A100_UUID]
    assert len({p[1] for p in parsed}) == 1  # one group (geometry)
    assert sorted(int(p[2]) for p in parsed) == [0, 1]  # the first two 2g.10gb slots of that group
    assert all(int(p[3]) >= 8000 for p in parsed)

    # A valid HMAC over (pod UID, node, assignment JSON); tampering breaks it.
    sig = anns["vgpu-pool.io/assignment-signature"]
    uid = pod["metadata"]["uid"]
    assert verify(KEY, uid, "gpu-node-1", assignment_json, sig)
    assert not verify(KEY, uid, "gpu-node-2", assignment_json, sig)
    assert not verify(b"other-key", uid, "gpu-node-1", assignment_json, sig)
    assert not verify(KEY, uid, "gpu-node-1", assignment_json.replace("[0,2]", "[4,2]"), sig)

    # The state holds the two instances; after binding, a fresh session still sees them.
    assert await bind(c.api, result) == [f"{NS}/vgpu-train-worker-0"]
    await c.synced_pod("vgpu-train-worker-0", lambda p: p["spec"].get("nodeName") == "gpu-node-1")
    instances = c.sc.state.states["gpu-node-1"].gpus[0].instances
    assert sorted((i.profile, i.start, i.size) for i in instances) == [("2g.10gb", 0, 2), ("2g.10gb", 2, 2)]


async def test_a_third_2g10gb_fits_next_to_them_and_a_fourth_does_not(start_cluster) -> None:
    """The chosen geometry [2g.10gb x3, 1g.5gb x1] keeps one 2g.10gb free after the example."""
    c = await start_cluster(nodes=[gpu_node("gpu-node-1", uuids=[A100_UUID])])
    first = c.create("pods", gpu_pod("first", count=2, mem=8000, mode="mig"))
    third = c.create("pods", gpu_pod("third", count=1, mem=8000, mode="mig"))
    fourth = c.create("pods", gpu_pod("fourth", count=1, mem=8000, mode="mig"))
    await wait_until(lambda: len(c.sc.state.pods) == 3, what="three GPU pods cached")
    r1 = await c.volcano.schedule_job([first], c.nodes())
    r3 = await c.volcano.schedule_job([third], c.nodes())
    assert r1.placements and r3.placements
    devices = json.loads(annotations_of(c.api, "third")["vgpu-pool.io/assignment"])["containers"][0]["devices"]
    assert [(d["profile"], tuple(d["placement"])) for d in devices] == [("2g.10gb", (4, 2))]
    r4 = await c.volcano.schedule_job([fourth], c.nodes())
    assert not r4.placements
    answer = r4.tasks[0].predicates["gpu-node-1"]
    assert isinstance(answer, dict) and answer["code"] == 2, answer


def test_payloads_have_volcanos_exact_shape() -> None:
    """The driver's TaskInfo/NodeInfo: Go's field order, units and map shapes (reference §2.1)."""
    node = gpu_node("gpu-node-1", uuids=[A100_UUID])
    pod = gpu_pod("vgpu-train-worker-0", count=1, mem="3k", cores=50, mode="mig", group="vgpu-train")
    pod["metadata"]["uid"] = "7b1d0c1e-5a52-4b7e-9f0e-2d7a6f3c9a10"
    t = task_info(pod)
    assert list(t) == [
        "UID", "Job", "Name", "Namespace", "TaskRole", "Resreq", "InitResreq", "DRAResreq", "ResourceClaimKeys",
        "ResourceClaimDRAResreq", "NodeName", "EvictionOccurred", "JobAllocatedHyperNode", "Status",
        "LastTransaction", "Priority", "VolumeReady", "Preemptable", "BestEffort", "HasRestartableInitContainer",
        "SchGated", "RevocableZone", "NumaInfo", "Pod", "PodAnnotations", "CustomBindErrHandlerSucceeded",
    ]  # fmt: skip
    assert t["Job"] == "default/vgpu-train" and t["TaskRole"] == "worker" and t["Status"] == 1
    assert t["Resreq"] == {
        "MilliCPU": 1000.0,
        "Memory": 2147483648.0,
        "ScalarResources": {"nvidia.com/gpu": 1000.0, "nvidia.com/gpucores": 50000.0,
                            "nvidia.com/gpumem": 3000000.0, "pods": 1.0},
        "MaxTaskNum": 0,
    }  # fmt: skip
    wire = go_json({"task": t})
    assert b'"MilliCPU":1000,"Memory":2147483648,' in wire  # Go prints integral float64 without ".0"
    assert b'"DRAResreq":null' in wire and b'"NumaInfo":{"Policy":"","ResMap":{}}' in wire

    allocated = task_info(pod, node_name="gpu-node-1", status=ALLOCATED)
    assert allocated["NodeName"] == "gpu-node-1" and allocated["Pod"]["spec"]["nodeName"] == "gpu-node-1"

    running = dict(pod, spec=dict(pod["spec"], nodeName="gpu-node-1"), status={"phase": "Running"})
    n = node_info(node, [running])
    assert list(n) == [
        "Name", "Node", "State", "Releasing", "Pipelined", "Idle", "Used", "Allocatable", "Capacity",
        "ResourceUsage", "Tasks", "NumaInfo", "UnassignedNumaPods", "NumaSchedulerInfo", "RevocableZone", "Others",
        "OversubscriptionNode", "OfflineJobEvicting", "OversubscriptionResource", "ImageStates", "Generation",
        "BindGeneration",
    ]  # fmt: skip
    assert n["ResourceUsage"] == {"MetricsTime": "0001-01-01T00:00:00Z", "CPUUsageAvg": {}, "MEMUsageAvg": {}}
    assert (
        list(n["Tasks"]) == ["default/vgpu-train-worker-0"]
        and n["Tasks"]["default/vgpu-train-worker-0"]["Status"] == 32
    )
    assert n["Allocatable"]["ScalarResources"]["nvidia.com/gpu"] == 10000.0
    assert n["Allocatable"]["MaxTaskNum"] == 110 and n["Allocatable"]["MilliCPU"] == 32000.0
    assert n["Idle"]["ScalarResources"]["nvidia.com/gpu"] == 9000.0
    assert n["Idle"]["MilliCPU"] == 31000.0
    assert n["Node"]["metadata"]["annotations"]["volcano.sh/node-vgpu-register"] == REGISTRATION
    assert n["Node"]["status"]["allocatable"]["nvidia.com/gpu"] == "10"
    assert n["Releasing"] == {"MilliCPU": 0.0, "Memory": 0.0, "ScalarResources": None, "MaxTaskNum": 0}
    assert b"<" not in go_json({"s": "<&>"}) and go_json({"s": "<&>"}) == b'{"s":"\\u003c\\u0026\\u003e"}'
