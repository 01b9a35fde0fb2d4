"""The prioritize fast path must decode exactly what the full decoder does, or fall back to it."""

from __future__ import annotations

import json

import pytest

from vcplugin.sidecar import wire
from vgpupool_testing.volcano import go_json, node_info, task_info


def _pod(name: str, node: str = "") -> dict:
    return {
        "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}",
                     "annotations": {"x": 'tricky ,"nodes":[ {"Name":"fake","Node":'}},
        "spec": {"nodeName": node, "containers": [{"name": "main", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
        "status": {"phase": "Running" if node else "Pending"},
    }


def _node(name: str) -> dict:
    return {"metadata": {"name": name, "annotations": {}}, "status": {"allocatable": {"cpu": "8"}}}


@pytest.mark.parametrize("n_nodes", [0, 1, 5])
def test_fast_prioritize_equals_full_decode(n_nodes: int) -> None:
    nodes = [node_info(_node(f"n{i}"), [_pod(f"p{i}-{k}", f"n{i}") for k in range(3)]) for i in range(n_nodes)]
    body = go_json({"task": task_info(_pod("incoming")), "nodes": nodes})
    fast = wire.decode_prioritize(body)
    full = wire.prioritize_decoder.decode(body)
    assert fast == full
    assert [n.name for n in fast.nodes or []] == [f"n{i}" for i in range(n_nodes)]


def test_fast_prioritize_falls_back_on_other_key_orders() -> None:
    body = json.dumps({"nodes": [{"Node": {}, "Name": "b"}], "task": {"UID": "u", "Name": "t"}}).encode()
    got = wire.decode_prioritize(body)
    assert [n.name for n in got.nodes or []] == ["b"]
    assert got.task is not None and got.task.uid == "u"


def test_fast_prioritize_rejects_malformed_json() -> None:
    import msgspec

    with pytest.raises(msgspec.DecodeError):
        wire.decode_prioritize(b'{"task":{"UID":"u"},"nodes":[{"Name":"a","Node":')
