"""The node's side of the assignment protocol: signatures, double promises, container order."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from nodeagent.assignments import (
    Held,
    device_containers,
    holders,
    next_container,
    read_assignment,
    remaining_value,
    wants_of,
)
from vcplugin.core import names
from vcplugin.core.types import Assignment, ContainerGrant, DeviceGrant
from vcplugin.kube.objects import Pod
from vcplugin.protocol.assignment import assignment_annotations, encode_assignment, sign

NODE = "n1"
KEY = b"scheduler-secret"
G0 = "GPU-00000000-0000-0000-0000-000000000000"
G1 = "GPU-11111111-1111-1111-1111-111111111111"
CAPS = {G0: (40960, 10, 100), G1: (40960, 10, 100)}


def mig(profile: str, start: int, size: int, gpu: str = G0, memory: int = 9856) -> DeviceGrant:
    return DeviceGrant(gpu, 0, names.MODE_MIG, memory, 29, profile, (start, size), 1)


def share(memory: int, cores: int = 0, gpu: str = G0) -> DeviceGrant:
    return DeviceGrant(gpu, 0 if gpu == G0 else 1, names.MODE_HAMI_CORE, memory, cores)


def assignment(*containers: tuple[str, tuple[DeviceGrant, ...]] | ContainerGrant, node: str = NODE) -> Assignment:
    out = []
    for c in containers:
        out.append(c if isinstance(c, ContainerGrant) else ContainerGrant(c[0], c[1]))
    return Assignment(node, tuple(out))


def pod(
    name: str,
    a: Assignment | None,
    *,
    bind_time: int = 100,
    key: bytes | None = KEY,
    extra: dict[str, str | None] | None = None,
    phase: str = "",
    uid: str | None = None,
) -> Pod:
    uid = uid or f"uid-{name}"
    anns: dict[str, str] = {}
    if a is not None:
        anns = assignment_annotations(uid, a, {}, bind_time, key)
    for k, v in (extra or {}).items():
        if v is None:
            anns.pop(k, None)
        else:
            anns[k] = v
    return msgspec.convert(
        {
            "metadata": {
                "name": name,
                "namespace": "default",
                "uid": uid,
                "annotations": anns,
                "labels": {names.LABEL_ASSIGNED_NODE: NODE},
                "creationTimestamp": "2024-01-01T00:00:00Z",
            },
            "spec": {"nodeName": NODE, "containers": [{"name": "main"}]},
            "status": {"phase": phase},
        },
        Pod,
    )


def held_names(held: list[Held]) -> list[str]:
    return [h.pod.metadata.name for h in held]


def refused_reasons(refused: list[Any]) -> dict[str, str]:
    return {r.pod.metadata.name: r.reason for r in refused}


ONE_MIG = assignment(("main", (mig("2g.10gb", 2, 2),)))


# --- signatures -----------------------------------------------------------------------------------


def test_signed_assignment_is_held() -> None:
    held, refused = holders([pod("good", ONE_MIG)], NODE, KEY, CAPS)
    assert held_names(held) == ["good"] and refused == []
    assert held[0].assignment == ONE_MIG
    assert held[0].bind_time == 100


def _tampered() -> dict[str, str]:
    other = encode_assignment(assignment(("main", (mig("7g.40gb", 0, 8),))))
    return {names.ANNO_ASSIGNMENT: other}


FORGERIES = {
    "unsigned": {"key": None},
    "wrong key": {"key": b"user-made-this-up"},
    "signature removed": {"extra": {names.ANNO_SIGNATURE: None}},
    "garbage signature": {"extra": {names.ANNO_SIGNATURE: "v1:" + "0" * 64}},
    "tampered JSON": {"extra": _tampered()},
    "signed for another pod": {
        "extra": {names.ANNO_SIGNATURE: sign(KEY, "uid-someone-else", NODE, encode_assignment(ONE_MIG))}
    },
    "signed for another node": {
        "extra": {names.ANNO_SIGNATURE: sign(KEY, "uid-forged", "n2", encode_assignment(ONE_MIG))}
    },
}


@pytest.mark.parametrize("how", list(FORGERIES))
def test_forged_assignment_refused_when_a_key_is_set(how: str) -> None:
    p = pod("forged", ONE_MIG, **FORGERIES[how])  # type: ignore[arg-type]
    held, refused = holders([p], NODE, KEY, CAPS)
    assert held == []
    reasons = refused_reasons(refused)
    assert set(reasons) == {"forged"}
    assert "signature" in reasons["forged"]
    assert isinstance(read_assignment(p, NODE, KEY), str)
    assert wants_of(held) == []


def test_assignment_naming_another_node_refused() -> None:
    a = assignment(("main", (mig("2g.10gb", 2, 2),)), node="n2")
    # The volcano node annotation says n1, the signed JSON says n2 (signature valid for n2).
    p = pod("elsewhere", a, extra={names.ANNO_VGPU_NODE: NODE})
    held, refused = holders([p], NODE, KEY, CAPS)
    assert held == []
    assert "n2" in refused_reasons(refused)["elsewhere"]


def test_pod_assigned_to_another_node_is_ignored() -> None:
    a = assignment(("main", (mig("2g.10gb", 2, 2),)), node="n2")
    held, refused = holders([pod("other", a)], NODE, KEY, CAPS)
    assert held == [] and refused == []


def test_unreadable_assignment_refused() -> None:
    p = pod("junk", ONE_MIG, extra={names.ANNO_ASSIGNMENT: "{not json"})
    held, refused = holders([p], NODE, None, CAPS)
    assert held == []
    assert "unreadable" in refused_reasons(refused)["junk"]


@pytest.mark.parametrize("how", ["unsigned", "wrong key", "tampered JSON"])
def test_without_a_key_assignments_are_taken_as_they_are(how: str) -> None:
    p = pod("trusted", ONE_MIG, **FORGERIES[how])  # type: ignore[arg-type]
    held, refused = holders([p], NODE, None, CAPS)
    assert held_names(held) == ["trusted"] and refused == []


def test_terminated_pods_hold_nothing() -> None:
    done = pod("done", ONE_MIG, bind_time=10, phase="Succeeded")
    new = pod("new", ONE_MIG, bind_time=20)
    held, refused = holders([done, new], NODE, KEY, CAPS)
    assert held_names(held) == ["new"] and refused == []


# --- one MIG instance, one pod --------------------------------------------------------------------


def test_second_pod_on_the_same_mig_placement_refused_older_wins() -> None:
    # Listed newest first, so list order cannot be what decides.
    newer = pod("newer", ONE_MIG, bind_time=200)
    older = pod("older", ONE_MIG, bind_time=100)
    held, refused = holders([newer, older], NODE, KEY, CAPS)
    assert held_names(held) == ["older"]
    reasons = refused_reasons(refused)
    assert set(reasons) == {"newer"}
    assert "default/older" in reasons["newer"]
    assert [(w.pod_uid, w.start, w.size) for w in wants_of(held)] == [("uid-older", 2, 2)]


def test_same_placement_on_another_gpu_is_no_conflict() -> None:
    a = pod("a", ONE_MIG, bind_time=1)
    b = pod("b", assignment(("main", (mig("2g.10gb", 2, 2, gpu=G1),))), bind_time=2)
    held, refused = holders([a, b], NODE, KEY, CAPS)
    assert held_names(held) == ["a", "b"] and refused == []


def test_one_pod_claiming_one_instance_twice_refused() -> None:
    twice = assignment(("c1", (mig("1g.5gb", 3, 1),)), ("c2", (mig("1g.5gb", 3, 1),)))
    held, refused = holders([pod("greedy", twice)], NODE, KEY, CAPS)
    assert held == []
    assert "overlaps memory slice 3 of this pod" in refused_reasons(refused)["greedy"]


def test_mig_device_without_placement_refused() -> None:
    d = DeviceGrant(G0, 0, names.MODE_MIG, 9856, 29, "2g.10gb", None, 1)
    held, refused = holders([pod("noplace", assignment(("main", (d,))))], NODE, KEY, CAPS)
    assert held == []
    assert "placement" in refused_reasons(refused)["noplace"]


# --- hami-core shares -----------------------------------------------------------------------------


def test_hami_core_shares_within_caps_are_held() -> None:
    pods = [pod(f"p{i}", assignment(("main", (share(10000, 25),))), bind_time=i) for i in range(4)]
    held, refused = holders(pods, NODE, KEY, CAPS)
    assert held_names(held) == ["p0", "p1", "p2", "p3"] and refused == []


@pytest.mark.parametrize(
    "caps, first, second, why",
    [
        ({G0: (16000, 10, 100)}, share(10000), share(6001), "memory"),
        ({G0: (40960, 1, 100)}, share(100), share(100), "shares"),
        ({G0: (40960, 10, 100)}, share(100, 60), share(100, 41), "cores"),
    ],
)
def test_hami_core_over_commit_refused_for_the_later_pod(
    caps: dict[str, tuple[int, int, int]], first: DeviceGrant, second: DeviceGrant, why: str
) -> None:
    later = pod("later", assignment(("main", (second,))), bind_time=20)
    earlier = pod("earlier", assignment(("main", (first,))), bind_time=10)
    held, refused = holders([later, earlier], NODE, KEY, caps)
    assert held_names(held) == ["earlier"]
    assert why in refused_reasons(refused)["later"]


def test_hami_core_exactly_at_the_caps_is_allowed() -> None:
    caps = {G0: (16000, 2, 100)}
    a = pod("a", assignment(("main", (share(10000, 60),))), bind_time=1)
    b = pod("b", assignment(("main", (share(6000, 40),))), bind_time=2)
    held, refused = holders([a, b], NODE, KEY, caps)
    assert held_names(held) == ["a", "b"] and refused == []


def test_hami_core_share_of_a_gpu_not_here_refused() -> None:
    p = pod("lost", assignment(("main", (share(100, gpu="GPU-gone"),))))
    held, refused = holders([p], NODE, KEY, CAPS)
    assert held == []
    assert "not on this node" in refused_reasons(refused)["lost"]


def test_refused_pod_does_not_consume_capacity() -> None:
    caps = {G0: (10000, 10, 100)}
    a = pod("a", assignment(("main", (share(6000),))), bind_time=1)
    too_big = pod("big", assignment(("main", (share(5000),))), bind_time=2)
    small = pod("small", assignment(("main", (share(4000),))), bind_time=3)
    held, refused = holders([a, too_big, small], NODE, KEY, caps)
    assert held_names(held) == ["a", "small"]
    assert set(refused_reasons(refused)) == {"big"}


def test_one_pod_over_committing_across_its_containers_refused() -> None:
    caps = {G0: (10000, 10, 100)}
    a = assignment(("c1", (share(6000),)), ("c2", (share(6000),)))
    held, refused = holders([pod("split", a)], NODE, KEY, caps)
    assert held == []
    assert "memory" in refused_reasons(refused)["split"]


# --- containers kubelet has not admitted yet --------------------------------------------------------

MULTI = assignment(
    ContainerGrant("init-a", (share(1000),), init=True),
    ContainerGrant("sidecar", ()),  # asks for no vGPU: not in devices-to-allocate
    ContainerGrant("main", (share(2000), share(3000, gpu=G1))),
    ContainerGrant("helper", (share(4000),)),
)


def _multi_pod(devices_to_allocate: str | None = None) -> Held:
    p = pod("multi", MULTI)
    if devices_to_allocate is not None:
        p.metadata.annotations[names.ANNO_DEVICES_TO_ALLOCATE] = devices_to_allocate
    return Held(p, MULTI, 100)


def test_device_containers_in_admission_order() -> None:
    assert [c.name for c in device_containers(MULTI)] == ["init-a", "main", "helper"]


def test_next_container_counts_consumed_segments() -> None:
    h = _multi_pod()
    full = h.pod.metadata.annotations[names.ANNO_DEVICES_TO_ALLOCATE]
    segs = [s for s in full.split(";") if s]
    assert len(segs) == 3
    assert next_container(h, 0).name == "init-a"  # type: ignore[union-attr]
    # The agent admitted init-a; the annotation has not caught up yet.
    assert next_container(h, 1).name == "main"  # type: ignore[union-attr]
    assert next_container(h, 2).name == "helper"  # type: ignore[union-attr]
    assert next_container(h, 3) is None

    # The annotation shows init-a consumed: counting from it, whatever this agent remembers.
    h2 = _multi_pod(";".join(segs[1:]) + ";")
    assert next_container(h2, 0).name == "main"  # type: ignore[union-attr]
    h3 = _multi_pod(segs[2] + ";")
    assert next_container(h3, 0).name == "helper"  # type: ignore[union-attr]
    assert next_container(h3, 1).name == "helper"  # type: ignore[union-attr]
    assert next_container(_multi_pod(""), 0) is None


def test_remaining_value_drops_consumed_segments() -> None:
    h = _multi_pod()
    full = h.pod.metadata.annotations[names.ANNO_DEVICES_TO_ALLOCATE]
    segs = [s for s in full.split(";") if s]
    assert remaining_value(h, 0) == full
    assert remaining_value(h, 1) == segs[1] + ";" + segs[2] + ";"
    assert remaining_value(h, 2) == segs[2] + ";"
    assert remaining_value(h, 3) == ""
    # Annotation already shows one consumed: admitting the second leaves the third.
    h2 = _multi_pod(segs[1] + ";" + segs[2] + ";")
    assert remaining_value(h2, 2) == segs[2] + ";"
    assert remaining_value(h2, 3) == ""


def test_walk_a_pod_through_its_admissions() -> None:
    """Simulate kubelet admitting each container and the agent updating devices-to-allocate."""
    h = _multi_pod()
    order = []
    consumed = 0
    while (c := next_container(h, consumed)) is not None:
        order.append((c.name, len(c.devices)))
        consumed += 1
        h.pod.metadata.annotations[names.ANNO_DEVICES_TO_ALLOCATE] = remaining_value(h, consumed)
    assert order == [("init-a", 1), ("main", 2), ("helper", 1)]
    assert h.pod.metadata.annotations[names.ANNO_DEVICES_TO_ALLOCATE] == ""


def test_wants_carry_exact_placements() -> None:
    a = assignment(("main", (mig("3g.20gb", 4, 4, memory=19968), mig("1g.5gb", 0, 1, gpu=G1, memory=4864))))
    held, _ = holders([pod("w", a)], NODE, KEY, CAPS)
    got = [(w.gpu, w.profile, w.start, w.size, w.pod) for w in wants_of(held)]
    assert got == [(G0, "3g.20gb", 4, 4, "default/w"), (G1, "1g.5gb", 0, 1, "default/w")]
    assert json.loads(held[0].pod.metadata.annotations[names.ANNO_ASSIGNMENT])["node"] == NODE


def test_overlapping_mig_placements_of_different_sizes_refused() -> None:
    """A 3g at 0 covers memory slices 0-3: a 1g at 2 on the same GPU overlaps it."""
    first = pod("first", assignment(("main", (mig("3g.20gb", 0, 4),))), bind_time=1)
    second = pod("second", assignment(("main", (mig("1g.5gb", 2, 1),))), bind_time=2)
    held, refused = holders([first, second], NODE, KEY, CAPS)
    assert [h.pod.metadata.name for h in held] == ["first"]
    assert "overlaps memory slice 2" in refused_reasons(refused)["second"]
