"""The Volcano-like driver against a scripted extender: it must read answers the way vc-scheduler does,
or the sidecar tests would prove nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from vgpupool_testing.volcano import ALLOCATED, PENDING, ExtenderError, VolcanoDriver, go_json, node_info, task_info

from .conftest import gpu_node, gpu_pod

Handler = Callable[[str, Any], Any]  # (verb, decoded body) -> JSON-able answer | web.Response


class Stub:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.answers: dict[str, Handler] = {}
        self.delay: dict[str, float] = {}
        self.inflight = self.max_inflight = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        verb = request.path.strip("/")
        body = await request.read()
        self.requests.append((request.method, verb, dict(request.headers), body))
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            await asyncio.sleep(self.delay.get(verb, 0))
        finally:
            self.inflight -= 1
        fn = self.answers.get(verb)
        answer = fn(verb, json.loads(body) if body else None) if fn else _default(verb)
        if isinstance(answer, web.StreamResponse):
            return answer
        return web.Response(body=json.dumps(answer).encode(), content_type="application/json")

    def bodies(self, verb: str) -> list[Any]:
        return [json.loads(b) for _, v, _, b in self.requests if v == verb]


def _default(verb: str) -> Any:
    return {
        "predicate": {"status": "", "code": 0},
        "prioritize": {"nodeScore": {}, "errorMessage": ""},
        "allocate": {"errorMessage": ""},
        "deallocate": {"errorMessage": ""},
    }.get(verb, {})


@pytest.fixture
async def stub() -> AsyncIterator[Stub]:
    s = Stub()
    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", s.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    s.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield s
    await runner.cleanup()


def _pods(n: int) -> list[dict]:
    out = []
    for i in range(n):
        p = gpu_pod(f"t{i}", count=1)
        p["metadata"]["uid"] = f"uid-{i}"
        out.append(p)
    return out


def _nodes(n: int) -> list[dict]:
    return [gpu_node(f"n{i:02d}", mode="hami-core") for i in range(n)]


async def test_requests_are_volcanos_posts(stub: Stub) -> None:
    async with VolcanoDriver(stub.url) as d:
        await d.schedule_job(_pods(1), _nodes(2))
    verbs = [v for _, v, _, _ in stub.requests]
    assert verbs == ["onSessionOpen", "predicate", "predicate", "prioritize", "allocate", "onSessionClose"]
    for method, _, headers, _body in stub.requests:
        assert method == "POST" and headers["Content-Type"] == "application/json"
        assert headers["User-Agent"] == "Go-http-client/1.1"
    close = stub.requests[-1][3]
    assert close == b"{}"
    pred = stub.bodies("predicate")[0]
    assert list(pred) == ["task", "node"] and pred["task"]["Status"] == PENDING and pred["task"]["NodeName"] == ""
    assert stub.requests[1][3] == go_json({"task": task_info(_pods(1)[0]), "node": node_info(_nodes(2)[0])})
    alloc = stub.bodies("allocate")[0]["task"]
    assert alloc["Status"] == ALLOCATED and alloc["NodeName"] == "n00" and alloc["Pod"]["spec"]["nodeName"] == "n00"
    opened = stub.bodies("onSessionOpen")[0]
    assert list(opened) == ["Jobs", "Nodes", "Queues", "NamespaceInfo", "RevocableNodes", "NodeList"]
    assert opened["NodeList"] is None and set(opened["Nodes"]) == {"n00", "n01"}


@pytest.mark.parametrize(
    ("answer", "passes"),
    [
        ({"status": "", "code": 0}, True),
        ({}, True),
        ({"status": "", "code": 3}, True),  # no reason: the code is ignored
        ({"errorMessage": "old format only"}, True),  # 1.10+ reads only `status`
        ({"status": "busy", "code": 2}, False),
        ({"status": "never", "code": 3}, False),
        ({"status": "x", "code": 0}, False),  # rewritten to Error
        ({"status": "x", "code": 4}, False),
        ({"status": "x", "code": 5}, False),
        ({"status": "x", "code": 7}, True),  # PredicateForAllocateAction lets unknown codes pass
        ({"Status": "case-insensitive", "Code": 2}, False),
    ],
)
async def test_predicate_answers_are_read_like_volcano(stub: Stub, answer: dict, passes: bool) -> None:
    stub.answers["predicate"] = lambda v, b: answer
    async with VolcanoDriver(stub.url) as d:
        result = await d.schedule_job(_pods(1), _nodes(1))
    assert (result.placements != {}) is passes, result.tasks


@pytest.mark.parametrize(
    "answer",
    [
        {"status": ["old", "array"]},  # v1.8-1.9 format: a decode error for 1.10+
        "not an object",
    ],
)
async def test_undecodable_predicate_answer_is_a_fit_error(stub: Stub, answer: Any) -> None:
    stub.answers["predicate"] = lambda v, b: answer
    async with VolcanoDriver(stub.url) as d:
        result = await d.schedule_job(_pods(1), _nodes(1))
    assert result.placements == {}
    assert isinstance(result.tasks[0].predicates["n00"], str)


async def test_prioritize_picks_the_best_and_null_scores_skip_the_task(stub: Stub) -> None:
    stub.answers["prioritize"] = lambda v, b: {"nodeScore": {"n00": 1, "n01": 50.5, "n02": 50.5}, "errorMessage": ""}
    async with VolcanoDriver(stub.url) as d:
        result = await d.schedule_job(_pods(1), _nodes(3))
        assert result.placements == {"default/t0": "n01"}  # ties: the first
        for bad in ({"nodeScore": None, "errorMessage": ""}, {"nodeScore": {"n00": 1}, "errorMessage": "boom"}):
            stub.answers["prioritize"] = lambda v, b, bad=bad: bad
            result = await d.schedule_job(_pods(1), _nodes(3))
            assert result.placements == {} and "prioritize" in result.tasks[0].reason
            assert d.calls[-2].verb == "prioritize"  # no allocate after it
    # One node passes: no prioritize call at all.
    stub.requests.clear()
    async with VolcanoDriver(stub.url) as d:
        await d.schedule_job(_pods(1), _nodes(1))
    assert "prioritize" not in [v for _, v, _, _ in stub.requests]


async def test_allocate_error_runs_unallocate(stub: Stub) -> None:
    stub.answers["allocate"] = lambda v, b: {"errorMessage": "no"}
    async with VolcanoDriver(stub.url) as d:
        result = await d.schedule_job(_pods(1), _nodes(1))
    assert result.placements == {} and result.tasks[0].allocate_error == "no"
    dealloc = stub.bodies("deallocate")
    assert len(dealloc) == 1
    t = dealloc[0]["task"]
    assert t["Status"] == PENDING and t["NodeName"] == "n00" and t["Pod"]["spec"]["nodeName"] == "n00"


async def test_gang_discard_deallocates_in_reverse_order(stub: Stub) -> None:
    stub.answers["predicate"] = lambda v, b: (
        {"status": "full", "code": 2} if b["task"]["Name"] == "t2" else {"status": "", "code": 0}
    )
    async with VolcanoDriver(stub.url) as d:
        result = await d.schedule_job(_pods(3), _nodes(1), min_available=3)
    assert not result.ready and result.placements == {}
    assert [b["task"]["Name"] for b in stub.bodies("deallocate")] == ["t1", "t0"]
    assert [b["task"]["Name"] for b in stub.bodies("allocate")] == ["t0", "t1"]
    # The second task's NodeInfo already listed the first as an allocated task.
    second = [b for b in stub.bodies("predicate") if b["task"]["Name"] == "t1"][0]
    assert second["node"]["Tasks"]["default/t0"]["Status"] == ALLOCATED


async def test_sixteen_predicates_at_a_time(stub: Stub) -> None:
    stub.delay["predicate"] = 0.02
    async with VolcanoDriver(stub.url) as d:
        await d.schedule_job(_pods(1), _nodes(40))
    assert stub.max_inflight == 16
    assert len(stub.bodies("predicate")) == 40


async def test_transport_failures_are_errors(stub: Stub) -> None:
    async with VolcanoDriver(stub.url, timeout=0.3) as d:
        t, n = task_info(_pods(1)[0]), node_info(_nodes(1)[0])
        stub.answers["predicate"] = lambda v, b: web.Response(body=b"", content_type="application/json")
        with pytest.raises(ExtenderError, match="EOF"):
            await d.predicate(t, n)
        stub.answers["predicate"] = lambda v, b: web.Response(status=500, text="{}")
        with pytest.raises(ExtenderError, match="code 500"):
            await d.predicate(t, n)
        stub.answers.pop("predicate")
        stub.delay["predicate"] = 0.6
        with pytest.raises(ExtenderError, match="Timeout"):
            await d.predicate(t, n)
        # onSessionOpen fails: the extender sits the session out, onSessionClose is still sent.
        stub.answers["onSessionOpen"] = lambda v, b: web.Response(status=503)
        stub.requests.clear()
        result = await d.schedule_job(_pods(1), _nodes(1))
        assert result.placements == {} and "onSessionOpen" in result.tasks[0].reason
        assert [v for _, v, _, _ in stub.requests] == ["onSessionOpen", "onSessionClose"]
