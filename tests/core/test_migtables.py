"""MIG tables (reference/mig.md §1.3-1.4), model-name matching, layout rules and the placement solver,
checked against an independent brute-force enumerator (tests/core/helpers.py)."""

from __future__ import annotations

import itertools
import random

import pytest

from vcplugin.core import migtables
from vcplugin.core.migtables import find_model, layout_problem, normalize_model_name, place

from .helpers import (
    A30_TABLE,
    CLASSIC,
    PROFILE_NAMES,
    SEVEN_SLICE,
    TABLE_FOR_MODEL,
    all_multisets,
    enumerate_layouts,
    maximal_layouts,
    multiset,
    valid,
)

MODEL_KEYS = tuple(PROFILE_NAMES)


def _model(key: str) -> migtables.MigModel:
    m = next((m for m in migtables.MODELS if m.key == key), None)
    assert m is not None, f"no MIG model {key}"
    return m


def _names(key: str) -> dict[str, str]:
    return PROFILE_NAMES[key]


def _kind_of(key: str) -> dict[str, str]:
    return {v: k for k, v in PROFILE_NAMES[key].items()}


# --- per-model profiles ------------------------------------------------------------------------

# (name, profile id, g, memory slices, MiB range, SMs, max) from reference/mig.md §1.2-1.4
EXPECTED_PROFILES = {
    "A30-24GB": [
        ("1g.6gb", 14, 1, 1, (5952, 5952), 14, 4),
        ("1g.6gb+me", 21, 1, 1, (5952, 5952), 14, 1),
        ("2g.12gb", 5, 2, 2, (11968, 11968), 28, 2),
        ("2g.12gb+me", 6, 2, 2, (11968, 11968), 28, 1),
        ("4g.24gb", 0, 4, 4, (24000, 24064), 56, 1),
    ],
    "A100-40GB": [
        ("1g.5gb", 19, 1, 1, (4864, 4864), 14, 7),
        ("1g.5gb+me", 20, 1, 1, (4864, 4864), 14, 1),
        ("1g.10gb", 15, 1, 2, (9856, 9856), 14, 4),
        ("2g.10gb", 14, 2, 2, (9856, 9984), 28, 3),
        ("3g.20gb", 9, 3, 4, (19968, 20096), 42, 2),
        ("4g.20gb", 5, 4, 4, (19968, 19968), 56, 1),
        ("7g.40gb", 0, 7, 8, (40192, 40192), 98, 1),
    ],
    "A100-80GB": [
        ("1g.10gb", 19, 1, 1, (9728, 9728), 14, 7),
        ("1g.10gb+me", 20, 1, 1, (9728, 9728), 14, 1),
        ("1g.20gb", 15, 1, 2, (19968, 19968), 14, 4),
        ("2g.20gb", 14, 2, 2, (19968, 19968), 28, 3),
        ("3g.40gb", 9, 3, 4, (40192, 40192), 42, 2),
        ("4g.40gb", 5, 4, 4, (40192, 40192), 56, 1),
        ("7g.80gb", 0, 7, 8, (80896, 81152), 98, 1),
    ],
    "H100-80GB": [
        ("1g.10gb", 19, 1, 1, (9984, 9984), 16, 7),
        ("1g.10gb+me", 20, 1, 1, (9984, 9984), 16, 1),
        ("1g.20gb", 15, 1, 2, (20096, 20096), 26, 4),
        ("2g.20gb", 14, 2, 2, (20096, 20096), 32, 3),
        ("3g.40gb", 9, 3, 4, (40448, 40448), 60, 2),
        ("4g.40gb", 5, 4, 4, (40448, 40448), 64, 1),
        ("7g.80gb", 0, 7, 8, (81152, 81152), 132, 1),
    ],
    "H100-NVL-94GB": [
        ("1g.12gb", 19, 1, 1, (11008, 11008), 16, 7),
        ("1g.12gb+me", 20, 1, 1, (11008, 11008), 16, 1),
        ("1g.24gb", 15, 1, 2, (22144, 22144), 26, 4),
        ("2g.24gb", 14, 2, 2, (22144, 22144), 32, 3),
        ("3g.47gb", 9, 3, 4, (47488, 47488), 60, 2),
        ("4g.47gb", 5, 4, 4, (47488, 47488), 64, 1),
        ("7g.94gb", 0, 7, 8, (95360, 95360), 132, 1),
    ],
    "H200-141GB": [
        ("1g.18gb", 19, 1, 1, (16384, 16384), 16, 7),
        ("1g.18gb+me", 20, 1, 1, (16384, 16384), 16, 1),
        # Driver-dependent: 32.25 / 69.50 GiB in the notes, 33280 / 71424 MiB read from a real H200
        # on driver 580.159.04 (benchmarks/results-h200-nvml.json).
        ("1g.35gb", 15, 1, 2, (33024, 33280), 26, 4),
        ("2g.35gb", 14, 2, 2, (33024, 33280), 32, 3),
        ("3g.71gb", 9, 3, 4, (71168, 71424), 60, 2),
        ("4g.71gb", 5, 4, 4, (71168, 71424), 64, 1),
        # "~140 GiB" in the notes
        ("7g.141gb", 0, 7, 8, (139 * 1024, 141 * 1024), 132, 1),
    ],
}


@pytest.mark.parametrize("key", MODEL_KEYS)
def test_profiles_match_reference(key: str) -> None:
    model = _model(key)
    table = TABLE_FOR_MODEL[key]
    assert model.memory_slices == table.memory_slices
    assert model.compute_slices == table.compute_slices
    expected = EXPECTED_PROFILES[key]
    assert sorted(p.name for p in model.profiles) == sorted(e[0] for e in expected)
    kinds = _kind_of(key)
    for name, pid, g, size, (lo, hi), sms, mx in expected:
        p = model.profile(name)
        assert p is not None, name
        assert (p.profile_id, p.slices, p.size, p.multiprocessors, p.max_count) == (pid, g, size, sms, mx), name
        assert lo <= p.memory_mib <= hi, (name, p.memory_mib)
        kind = table.kind(kinds[name])
        assert p.starts == kind.starts, name
        assert p.media == kind.media, name


@pytest.mark.parametrize("key", MODEL_KEYS)
def test_profile_lookup_is_case_insensitive(key: str) -> None:
    model = _model(key)
    for p in model.profiles:
        assert model.profile(p.name.upper()) == p
        assert model.profile(f" {p.name} ") == p
    assert model.profile("9g.99gb") is None


# --- model names -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("NVIDIA A30", "A30-24GB"),
        ("NVIDIA A100-PCIE-40GB", "A100-40GB"),
        ("NVIDIA A100-SXM4-40GB", "A100-40GB"),
        ("nvidia a100-sxm4-40gb", "A100-40GB"),
        ("A100-SXM4-40GB", "A100-40GB"),
        ("NVIDIA A100-SXM4-80GB", "A100-80GB"),
        ("NVIDIA A100 80GB PCIe", "A100-80GB"),
        ("NVIDIA H100 80GB HBM3", "H100-80GB"),
        ("NVIDIA H100 NVL", "H100-NVL-94GB"),
        ("NVIDIA H200", "H200-141GB"),
        ("NVIDIA H200 NVL", "H200-141GB"),
        ("  NVIDIA   H200  ", "H200-141GB"),
        ("NVIDIA-NVIDIA A100-PCIE-40GB", "A100-40GB"),  # Volcano's doubled prefix
    ],
)
def test_find_model_exact_after_normalising(name: str, key: str) -> None:
    model = find_model(name)
    assert model is not None and model.key == key


@pytest.mark.parametrize(
    "name",
    [
        "NVIDIA H20",  # a substring of H200: must not match it
        "H20",
        "A100",  # a substring of every A100 name
        "NVIDIA A100",
        "H200 NVL extra",
        "A30X",
        "NVIDIA H100 80GB HBM3 MIG 1g.10gb",
        "Tesla T4",
        "",
    ],
)
def test_find_model_never_matches_by_substring(name: str) -> None:
    assert find_model(name) is None


def test_normalize_model_name() -> None:
    assert normalize_model_name("NVIDIA H100 NVL") == normalize_model_name("h100 nvl")
    assert normalize_model_name("NVIDIA H20") != normalize_model_name("NVIDIA H200")


# --- the brute-force enumerator agrees with mig.md §1.5 (sanity of the oracle itself) -----------


def _maximal_multisets(layouts: set) -> set:
    ms = {multiset(lay) for lay in layouts}

    def strictly_contains(a: tuple, b: tuple) -> bool:
        ca, cb = dict(a), dict(b)
        return a != b and all(ca.get(k, 0) >= v for k, v in cb.items())

    return {m for m in ms if not any(strictly_contains(o, m) for o in ms)}


def test_enumerator_counts_match_reference() -> None:
    classic = enumerate_layouts(SEVEN_SLICE, CLASSIC)
    assert len(classic) - 1 == 297  # the reference does not count the empty layout
    assert len({multiset(lay) for lay in classic}) - 1 == 37
    assert len(_maximal_multisets(classic)) == 12
    assert len(maximal_layouts(SEVEN_SLICE, CLASSIC, classic)) == 19
    with_2x = enumerate_layouts(SEVEN_SLICE, (*CLASSIC, "1g.2x"))
    assert len(with_2x) - 1 == 722
    assert len({multiset(lay) for lay in with_2x}) - 1 == 77
    assert len(_maximal_multisets(with_2x)) == 28
    assert len(maximal_layouts(SEVEN_SLICE, (*CLASSIC, "1g.2x"), with_2x)) == 78
    a30 = enumerate_layouts(A30_TABLE, ("1g", "2g", "4g"))
    assert len(maximal_layouts(A30_TABLE, ("1g", "2g", "4g"), a30)) == 5


NINETEEN = """
1g@0 1g@1 1g@2 1g@3 1g@4 1g@5 1g@6 | 1g@0 1g@1 1g@2 1g@3 2g@4 1g@6 | 1g@0 1g@1 1g@2 1g@3 3g@4
1g@0 1g@1 2g@2 1g@4 1g@5 1g@6 | 1g@0 1g@1 2g@2 2g@4 1g@6 | 1g@0 1g@1 2g@2 3g@4
2g@0 1g@2 1g@3 1g@4 1g@5 1g@6 | 2g@0 1g@2 1g@3 2g@4 1g@6 | 2g@0 1g@2 1g@3 3g@4
2g@0 2g@2 1g@4 1g@5 1g@6 | 2g@0 2g@2 2g@4 1g@6 | 2g@0 2g@2 3g@4
4g@0 1g@4 1g@5 1g@6 | 4g@0 2g@4 1g@6 | 4g@0 3g@4 | 7g@0
3g@0 1g@4 1g@5 1g@6 | 3g@0 2g@4 1g@6 | 3g@0 3g@4
"""


def _parse_layouts(text: str) -> set[frozenset[tuple[str, int]]]:
    out = set()
    for chunk in text.replace("\n", "|").split("|"):
        items = chunk.split()
        if items:
            out.add(frozenset((k, int(s)) for k, s in (i.split("@") for i in items)))
    return out


def test_a100_40gb_has_exactly_the_19_maximal_layouts() -> None:
    expected = _parse_layouts(NINETEEN)
    assert len(expected) == 19
    layouts = enumerate_layouts(SEVEN_SLICE, CLASSIC)
    assert maximal_layouts(SEVEN_SLICE, CLASSIC, layouts) == expected
    # ... and the product accepts each of them, and every one of its instances is needed.
    model = _model("A100-40GB")
    names = _names("A100-40GB")
    for lay in expected:
        placed = [(names[k], s) for k, s in lay]
        assert layout_problem(model, placed) is None, placed
        for k in CLASSIC:
            for s in SEVEN_SLICE.kind(k).starts:
                if (k, s) not in lay:
                    assert layout_problem(model, [*placed, (names[k], s)]) is not None, (placed, k, s)


# --- layout_problem agrees with the independent rules ---------------------------------------------


@pytest.mark.parametrize(
    ("key", "kinds"),
    [
        ("A100-40GB", ("1g", "1g+me", "1g.2x", "2g", "3g", "4g", "7g")),
        ("H100-80GB", (*CLASSIC, "1g.2x")),
        ("A30-24GB", ("1g", "1g+me", "2g", "2g+me", "4g")),
    ],
)
def test_layout_problem_agrees_with_brute_force(key: str, kinds: tuple[str, ...]) -> None:
    """Every valid layout is accepted; every one-instance extension is accepted iff valid."""
    model = _model(key)
    table = TABLE_FOR_MODEL[key]
    names = _names(key)
    layouts = enumerate_layouts(table, kinds)
    cands = [(k, s) for k in kinds for s in table.kind(k).starts]
    for lay in layouts:
        placed = [(names[k], s) for k, s in sorted(lay)]
        assert layout_problem(model, placed) is None, placed
        for c in cands:
            ext = [*sorted(lay), c]
            got = layout_problem(model, [(names[k], s) for k, s in ext]) is None
            assert got == valid(table, ext), ext


@pytest.mark.parametrize(
    "placed",
    [
        [("1g.5gb", 7)],  # 1g can never sit at 7
        [("2g.10gb", 1)],
        [("3g.20gb", 2)],
        [("4g.20gb", 4)],
        [("7g.40gb", 1)],
        [("1g.10gb", 1)],
        [("1g.5gb", 0), ("1g.5gb", 0)],  # the same slice twice
        [("3g.20gb", 0), ("2g.10gb", 2)],  # overlap
        [("1g.5gb+me", 0), ("1g.5gb+me", 1)],  # one +me only
        [("3g.20gb", 0), ("3g.20gb", 4), ("1g.5gb", 3)],
        [("nope", 0)],
    ],
)
def test_layout_problem_rejects(placed: list[tuple[str, int]]) -> None:
    assert layout_problem(_model("A100-40GB"), placed) is not None


def test_layout_problem_a30_media_engines() -> None:
    model = _model("A30-24GB")
    assert layout_problem(model, [("1g.6gb+me", 0), ("2g.12gb+me", 2)]) is not None
    assert layout_problem(model, [("2g.12gb", 0), ("2g.12gb", 2)]) is None
    assert layout_problem(model, [("2g.12gb", 1)]) is not None


# --- place(): finds a placement iff one exists ----------------------------------------------------


def _check_place_result(model, table, names, fixed, extra, got) -> None:
    kinds = _kind_of(model.key)
    assert got[: len(fixed)] == tuple(sorted(fixed)) or sorted(got[: len(fixed)]) == sorted(fixed)
    new = got[len(fixed) :]
    assert sorted(p for p, _ in new) == sorted(extra)
    as_kinds = [(kinds[p], s) for p, s in got]
    assert valid(table, as_kinds), got
    assert layout_problem(model, got) is None


@pytest.mark.parametrize("key", ["A100-40GB", "A30-24GB"])
def test_place_on_empty_gpu_iff_feasible(key: str) -> None:
    model = _model(key)
    table = TABLE_FOR_MODEL[key]
    names = _names(key)
    kinds = tuple(names)
    feasible = {multiset(lay) for lay in enumerate_layouts(table, kinds)}
    for ms in all_multisets(table, kinds):
        extra = [names[k] for k, c in ms for _ in range(c)]
        got = place(model, (), extra)
        assert (got is not None) == (ms in feasible), ms
        if got is not None:
            _check_place_result(model, table, names, (), extra, got)


def test_place_around_fixed_instances_iff_feasible() -> None:
    """For every valid classic A100-40GB layout as the fixed part and every classic multiset of new
    instances that fits the compute budget: place() succeeds iff some valid layout extends it."""
    key = "A100-40GB"
    model = _model(key)
    table = SEVEN_SLICE
    names = _names(key)
    kinds = CLASSIC
    layouts = enumerate_layouts(table, kinds)
    extensions: dict[frozenset, set] = {lay: set() for lay in layouts}
    for big in layouts:
        for small in layouts:
            if small <= big:
                extensions[small].add(multiset(big - small))
    multisets = all_multisets(table, kinds)
    checked = 0
    for fixed_l in layouts:
        fixed = tuple((names[k], s) for k, s in sorted(fixed_l))
        room = table.compute_slices - sum(table.kind(k).g for k, _ in fixed_l)
        for ms in multisets:
            if sum(table.kind(k).g * c for k, c in ms) > room + 1:  # include some over-budget cases
                continue
            extra = [names[k] for k, c in ms for _ in range(c)]
            got = place(model, fixed, extra)
            assert (got is not None) == (ms in extensions[fixed_l]), (fixed, ms)
            if got is not None:
                _check_place_result(model, table, names, fixed, extra, got)
            checked += 1
    assert checked > 3_000


def test_place_rejects_invalid_fixed_and_unknown_profiles() -> None:
    model = _model("A100-40GB")
    assert place(model, (("1g.5gb", 0), ("1g.5gb", 0)), ["1g.5gb"]) is None
    assert place(model, (), ["5g.25gb"]) is None


def test_place_is_deterministic_and_order_independent() -> None:
    model = _model("A100-40GB")
    names = _names("A100-40GB")
    rng = random.Random(7)
    layouts = sorted(enumerate_layouts(SEVEN_SLICE, CLASSIC), key=sorted)
    for lay in layouts[:60]:
        items = [(names[k], s) for k, s in lay]
        fixed = items[: len(items) // 2]
        extra = [p for p, _ in items[len(items) // 2 :]]
        clear = getattr(migtables._place_cached, "cache_clear", None)
        first = place(model, tuple(fixed), extra)
        if clear:
            clear()
        shuffled_f, shuffled_e = fixed[:], extra[:]
        rng.shuffle(shuffled_f)
        rng.shuffle(shuffled_e)
        second = place(model, tuple(shuffled_f), shuffled_e)
        assert first is not None
        assert sorted(first) == sorted(second)
        assert first[len(fixed) :] == second[len(fixed) :]


def test_every_classic_multiset_is_placeable_on_every_seven_slice_model() -> None:
    feasible = {multiset(lay) for lay in enumerate_layouts(SEVEN_SLICE, CLASSIC)}
    for key in ("A100-80GB", "H100-80GB", "H100-NVL-94GB", "H200-141GB"):
        model = _model(key)
        names = _names(key)
        for ms in itertools.islice(sorted(all_multisets(SEVEN_SLICE, CLASSIC)), None):
            extra = [names[k] for k, c in ms for _ in range(c)]
            assert (place(model, (), extra) is not None) == (ms in feasible), (key, ms)
