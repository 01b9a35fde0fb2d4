"""Answers of every extender verb in Volcano's wire format, and bad requests answered with a clear 4xx."""

from __future__ import annotations

import json
import time

import pytest

from vgpupool_testing.volcano import (
    ALLOCATED,
    ExtenderError,
    VolcanoDriver,
    go_json,
    job_info,
    node_info,
    session_open_payload,
    task_info,
)

from .conftest import gpu_node, gpu_pod, plain_pod, wait_until


async def _healthy(c, driver: VolcanoDriver | None = None) -> None:
    """The service still answers predicates normally."""
    d = driver or c.volcano
    pod = gpu_pod("probe", count=1, mem=1000)
    pod["metadata"]["uid"] = "probe-uid"
    answer = await d.predicate(task_info(pod), node_info(gpu_node("not-in-cluster", mode="hami-core")))
    assert answer["code"] == 3 and "not-in-cluster" in answer["status"], answer
    answer = await d.predicate(task_info(plain_pod("plain")), node_info(gpu_node("not-in-cluster")))
    assert answer["status"] == "" and answer["code"] == 0, answer


# --- predicate ---------------------------------------------------------------------------------


async def test_predicate_answers_fit_not_now_and_never(start_cluster) -> None:
    nodes = [
        gpu_node("n1", mode="hami-core"),
        gpu_node("bare", register=False),
        gpu_node("mig1", mode="mig"),
    ]
    c = await start_cluster(nodes=nodes)
    v = c.volcano
    infos = {n["metadata"]["name"]: node_info(n) for n in c.nodes()}
    small = c.create("pods", gpu_pod("small", count=1, mem=1000))
    whole = c.create("pods", gpu_pod("whole", count=1))  # the whole GPU's memory
    huge = c.create("pods", gpu_pod("huge", count=1, mem=200000))
    await wait_until(lambda: len(c.sc.state.pods) == 3, what="pods cached")

    # Fits: empty status, code 0 (and Volcano 1.6-1.7's errorMessage empty too).
    fit = await v.predicate(task_info(whole), infos["n1"])
    assert fit["status"] == "" and fit["code"] == 0 and fit.get("errorMessage", "") == ""
    assert v.predicate_verdict(fit) == (True, 0, "")

    # Cannot fit now: code 2 (preemption may help), reason in `status` and in `errorMessage`.
    assert not (await v.allocate(task_info(whole, node_name="n1", status=ALLOCATED)))["errorMessage"]
    busy = await v.predicate(task_info(small), infos["n1"])
    assert busy["code"] == 2 and busy["status"] and busy["errorMessage"] == busy["status"], busy
    assert v.predicate_verdict(busy)[0] is False

    # Never fits on this node: code 3.
    never = await v.predicate(task_info(huge), infos["mig1"])
    assert never["code"] == 3 and "200000" in never["status"] and never["errorMessage"] == never["status"]
    never_hami = await v.predicate(task_info(huge), infos["n1"])
    assert never_hami["code"] == 3, never_hami
    unregistered = await v.predicate(task_info(small), infos["bare"])
    assert unregistered["code"] == 3 and "registration" in unregistered["status"], unregistered
    unknown = await v.predicate(task_info(small), node_info(gpu_node("not-in-cluster")))
    assert unknown["code"] == 3 and unknown["status"], unknown

    # A pod without GPU requests fits anywhere, even on nodes the sidecar does not know.
    plain = c.create("pods", plain_pod("plain"))
    for info in (infos["bare"], node_info(gpu_node("not-in-cluster"))):
        assert await v.predicate(task_info(plain), info) == {"status": "", "code": 0, "errorMessage": ""}


async def test_invalid_gpu_request_is_rejected_with_a_reason(cluster) -> None:
    pod = gpu_pod("bad", count=1, mem="8Gi")  # gpumem is MiB, a binary suffix is a mistake
    pod["metadata"]["uid"] = "bad-uid"
    answer = await cluster.volcano.predicate(task_info(pod), node_info(gpu_node("n1")))
    assert answer["code"] == 3 and "gpumem" in answer["status"], answer


# --- prioritize --------------------------------------------------------------------------------


async def test_prioritize_always_answers_a_score_map(start_cluster) -> None:
    c = await start_cluster(nodes=[gpu_node("n1", mode="hami-core"), gpu_node("n2", mode="hami-core")])
    v = c.volcano
    infos = [node_info(n) for n in c.nodes()] + [node_info(gpu_node("ghost"))]
    busy = c.create("pods", gpu_pod("busy", count=1, mem=20000))
    gpu = c.create("pods", gpu_pod("gpu", count=1, mem=1000))
    plain = c.create("pods", plain_pod("plain"))
    await wait_until(lambda: len(c.sc.state.pods) == 2, what="pods cached")
    assert not (await v.allocate(task_info(busy, node_name="n2", status=ALLOCATED)))["errorMessage"]

    for pod in (gpu, plain):
        answer = await v.prioritize(task_info(pod), infos)
        assert answer["errorMessage"] == "", answer
        scores = answer["nodeScore"]
        assert isinstance(scores, dict) and set(scores) == {"n1", "n2", "ghost"}, answer
        assert all(isinstance(s, int | float) for s in scores.values())
        assert scores["ghost"] == 0
    # binpack (asked for by the pod) prefers the busier node.
    packed = c.create("pods", gpu_pod("packed", count=1, mem=1000,
                                      annotations={"hami.io/node-scheduler-policy": "binpack"}))
    scores = (await v.prioritize(task_info(packed), infos))["nodeScore"]
    assert scores["n2"] > scores["n1"], scores
    empty = await v.prioritize(task_info(gpu), [])
    assert empty == {"nodeScore": {}, "errorMessage": ""}


# --- the verbs the sidecar only acknowledges ----------------------------------------------------


async def test_neutral_verbs(cluster) -> None:
    names = ["onSessionOpen", "onSessionClose", "predicate", "prioritize", "allocate", "deallocate",
             "preemptable", "reclaimable", "jobEnqueueable", "jobEnqueued", "queueOverused", "jobReady"]  # fmt: skip
    all_verbs = {v: v for v in names}
    d = VolcanoDriver(cluster.url, all_verbs)
    try:
        pod = gpu_pod("p", count=1)
        pod["metadata"]["uid"] = "p-uid"
        t = task_info(pod)
        victims = {"evictor": t, "evictees": [task_info(plain_pod("v"))]}
        assert await d.send("preemptable", victims) == {"status": 0, "victims": None}
        assert await d.send("reclaimable", victims) == {"status": 0, "victims": None}
        job = job_info("j", [t])
        assert await d.send("jobEnqueueable", {"job": job}) == {"status": 0}
        assert await d.send("jobEnqueued", {"job": job}) == {}
        assert await d.send("queueOverused", {"queue": {"UID": "default", "Name": "default"}}) == {"overused": False}
        assert await d.send("jobReady", {"job": job}) == {"status": True}
        assert await d.job_ready(job) is True
        assert await d.send("onSessionClose", {}) == {}
    finally:
        await d.close()


async def test_session_open_with_a_huge_body_answers_quickly(start_cluster) -> None:
    c = await start_cluster(max_body=64 * 1024)  # far below the payload: onSessionOpen must not read it
    bulk = [{"manager": "kubelet", "operation": "Update", "fieldsV1": {"f:status": {"x" * 200: {}}}}] * 20
    pods = []
    for j in range(10):
        p = gpu_pod(f"p-NODE-{j}", count=1, mem=1000, node="NODE")
        p["metadata"]["uid"] = f"uid-NODE-{j}"
        p["metadata"]["managedFields"] = bulk
        p["status"]["phase"] = "Running"
        pods.append(p)
    template = go_json(node_info(gpu_node("NODE", gpus=8), pods)).decode()
    job = go_json(job_info("job-NODE", [task_info(p) for p in pods])).decode()
    # Every job and node of a 300-node cluster (encoded once, renamed per node: building
    # it is not the test).
    nodes = ",".join(f'"n{i}":' + template.replace("NODE", f"n{i}") for i in range(300))
    jobs = ",".join(f'"default/job-n{i}":' + job.replace("NODE", f"n{i}") for i in range(300))
    rest = go_json(session_open_payload([], []))[len(b'{"Jobs":{},"Nodes":{}') :].decode()
    body = ('{"Jobs":{' + jobs + '},"Nodes":{' + nodes + "}" + rest).encode()
    assert '"Name":"NODE"' in template and len(body) > 20 << 20
    started = time.perf_counter()
    status, answer = await c.volcano.raw("onSessionOpen", body)
    elapsed = time.perf_counter() - started
    assert (status, json.loads(answer)) == (200, {})
    assert elapsed < 1.0, f"onSessionOpen took {elapsed:.2f}s (Volcano's default httpTimeout is 1s)"
    await _healthy(c)


# --- bad requests ------------------------------------------------------------------------------


MALFORMED = [
    ("predicate", b"{bad"),
    ("predicate", b""),
    ("predicate", b'{"task": 5, "node": {"Name": "n1"}}'),
    ("predicate", b'{"task": {"UID": "u"}}'),  # no node
    ("predicate", b'{"task": {"UID": "u", "Pod": {"spec": {"containers": "x"}}}, "node": {"Name": "n"}}'),
    ("predicate", b"[1, 2]"),
    ("predicate", b'{"task": {"UID": "u"}, "node": {"Name": "n"}} trailing'),
    ("prioritize", b'{"task": {"UID": 7}, "nodes": []}'),
    ("prioritize", b'{"task": {"UID": "u"}, "nodes": {"Name": "n1"}}'),
    ("prioritize", b'{"nodes": []}'),
    ("allocate", b'{"task": "x"}'),
    ("allocate", b"{}"),
    ("allocate", b'{"task": {"UID": "u", "Status": "Allocated"}}'),
    ("deallocate", b'{"task": []}'),
    ("allocate", b'{"task": {"UID": "\xc3'),
]


async def test_malformed_requests_get_a_400_and_the_service_goes_on(cluster) -> None:
    wrong = []
    for path, body in MALFORMED:
        status, answer = await cluster.volcano.raw(path, body)
        try:
            message = json.loads(answer)["error"]
        except (ValueError, KeyError, TypeError):
            message = ""
        if status != 400 or path not in message:
            wrong.append((path, body, status, answer[:200]))
    assert not wrong, wrong
    await _healthy(cluster)


async def test_malformed_prioritize_in_volcanos_key_order_is_400(cluster) -> None:
    """Prioritize reads only the task and the node names of Volcano's body (its NodeInfos are hundreds
    of KiB; see README, "prioritize fast path"). What it reads must be well-formed: a truncated body,
    a broken task, or a broken node name is a 400."""
    wrong = []
    for body in (
        b'{"task":{"UID":"u"},"nodes":[{"Name":"a","Node":{',  # truncated
        b'{"task":{"UID":"u",},"nodes":[{"Name":"a","Node":null}]}',  # broken task
        b'{"task":{"UID":5},"nodes":[{"Name":"a","Node":null}]}',  # task of the wrong type
        b'{"task":{"UID":"u"},"nodes":[{"Name":"a\\","Node":null}]}',  # name the fast path cannot read
        b'{"task":{"UID":"u"},"nodes":[{"Name":"a" "Node":null}]}',  # no comma: not Volcano's shape
    ):
        status, answer = await cluster.volcano.raw("prioritize", body)
        if status != 400:
            wrong.append((body, status, answer))
    assert not wrong, wrong
    await _healthy(cluster)


async def test_body_over_max_body_is_413(start_cluster) -> None:
    c = await start_cluster(max_body=16 * 1024)
    pod = gpu_pod("big", count=1)
    pod["metadata"]["uid"] = "big-uid"
    pod["metadata"]["annotations"]["filler"] = "x" * (64 * 1024)
    body = go_json({"task": task_info(pod), "node": node_info(gpu_node("n1"))})
    status, _ = await c.volcano.raw("predicate", body)
    assert status == 413
    with pytest.raises(ExtenderError, match="code 413"):
        await c.volcano.predicate(task_info(pod), node_info(gpu_node("n1")))
    await _healthy(c)


async def test_unknown_verb_is_404(cluster) -> None:
    status, answer = await cluster.volcano.raw("bindTask", b"{}")
    assert status == 404
    assert "/predicate" in json.loads(answer)["error"]  # it lists the verbs it serves
    await _healthy(cluster)


@pytest.mark.parametrize("method", ["GET", "PUT"])
async def test_wrong_method_on_a_verb_is_405(cluster, method: str) -> None:
    status, _ = await cluster.volcano.raw("predicate", None, method=method)
    assert status == 405, f"{method} /predicate answered {status}, expected 405 Method Not Allowed"
    await _healthy(cluster)


async def test_verb_paths_follow_serve_options(start_cluster) -> None:
    c = await start_cluster(verbs={"predicate": "filter"})
    d = VolcanoDriver(c.url, {"predicate": "filter"})
    try:
        await _healthy(c, d)
    finally:
        await d.close()
    status, _ = await c.volcano.raw("predicate", b"{}")
    assert status in (404, 405)


async def test_metrics_on_their_own_listener_expose_no_verbs(start_cluster) -> None:
    import socket

    import aiohttp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = await start_cluster(metrics_listen=f"127.0.0.1:{port}")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
            assert r.status == 200 and "vgpu_pool_extender_request_seconds" in await r.text()
        async with http.post(f"http://127.0.0.1:{port}/allocate", json={"task": {}}) as r:
            assert r.status in (404, 405)
    assert c.sc.url
