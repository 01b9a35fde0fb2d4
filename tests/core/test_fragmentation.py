"""FGD's fragmentation measure and the frag-pack score."""

from __future__ import annotations

import pytest

from vcplugin.core.fragmentation import FragPack, TypicalPod, Workload, node_fragmentation

HALF = Workload((TypicalPod(500, 1, 1000, 1.0),))  # every pod wants half a GPU and 1 CPU
WHOLE2 = Workload((TypicalPod(1000, 2, 1000, 1.0),))  # every pod wants two whole GPUs


def test_free_parts_smaller_than_the_typical_share_are_fragments() -> None:
    # GPUs with 300 and 200 free cannot hold a 500 share; the 800 one can.
    assert node_fragmentation([300, 200, 800], 10_000, HALF) == pytest.approx(500)


def test_a_node_a_typical_pod_cannot_fit_is_all_fragment() -> None:
    assert node_fragmentation([300, 200, 400], 10_000, HALF) == pytest.approx(900)  # no GPU holds 500
    assert node_fragmentation([1000, 1000], 500, HALF) == pytest.approx(2000)  # not enough CPU


def test_whole_gpu_pods_need_idle_gpus() -> None:
    assert node_fragmentation([1000, 1000, 300], 10_000, WHOLE2) == pytest.approx(300)
    assert node_fragmentation([1000, 600, 300], 10_000, WHOLE2) == pytest.approx(1900)


def test_expectation_over_the_workload() -> None:
    mixed = Workload((TypicalPod(500, 1, 0, 0.5), TypicalPod(1000, 2, 0, 0.5)))
    assert node_fragmentation([1000, 1000, 300], 0, mixed) == pytest.approx(0.5 * 300 + 0.5 * 300)


def test_typical_pods_cover_95_percent_by_frequency() -> None:
    shapes = [(500, 1, 0)] * 90 + [(250, 1, 0)] * 6 + [(100, 1, 0)] * 4 + [(0, 0, 100)] * 50
    w = Workload.from_shapes(shapes)
    assert [(p.share, p.gpus) for p in w.pods] == [(500, 1), (250, 1)]  # 96 % covered; CPU-only left out
    assert sum(p.weight for p in w.pods) == pytest.approx(1.0)


def test_frag_pack_prefers_filling_a_half_used_gpu() -> None:
    scorer = FragPack(Workload((TypicalPod(500, 1, 1000, 0.5), TypicalPod(1000, 1, 1000, 0.5))))
    free = [500, 1000]
    onto_half = scorer.score(free, 10_000, {0: 500}, 1000, 2000)
    onto_idle = scorer.score(free, 10_000, {1: 500}, 1000, 2000)
    assert onto_half > onto_idle
    assert scorer.gpu_order(free, 10_000, 500, [0, 1])[0] == 0


def test_frag_pack_penalises_starving_gpus_of_cpu() -> None:
    w = Workload((TypicalPod(1000, 1, 8000, 1.0),))  # 8 CPUs per GPU
    scorer = FragPack(w)
    # A CPU-only pod: taking 8 CPUs from a node whose GPU is idle strands the GPU; from a node whose
    # GPUs are all busy it strands nothing.
    idle_node = scorer.score([1000], 8000, {}, 8000, 1000)
    busy_node = scorer.score([0], 8000, {}, 8000, 1000)
    assert busy_node > idle_node
