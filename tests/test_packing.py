"""Best-Fit Decreasing packing: placement, capacities, no truncation, optimality, determinism."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smelter.transforms.pack.packing import PackResult, martello_toth_l2, pack, pack_arrays


def brute_force_bfd(lengths: list[int], max_len: int) -> list[list[int]]:
    """Item-by-item BFD by linear scan: the reference. Ties go to the sequence that reached its
    room most recently (the documented tie break); long documents are left out (drop mode)."""
    items = sorted((i for i, n in enumerate(lengths) if n <= max_len), key=lambda i: -lengths[i])
    rooms: list[int] = []
    stamps: list[int] = []
    bins: list[list[int]] = []
    for t, i in enumerate(items):
        s = lengths[i]
        best = -1
        for b, room in enumerate(rooms):
            if room >= s and (
                best < 0 or room < rooms[best] or (room == rooms[best] and stamps[b] > stamps[best])
            ):
                best = b
        if best < 0:
            rooms.append(max_len)
            stamps.append(-1)
            bins.append([])
            best = len(rooms) - 1
        rooms[best] -= s
        stamps[best] = t
        bins[best].append(i)
    return bins


def check_plan(lengths: list[int], max_len: int, plan: PackResult) -> None:
    """Every token of every kept document is placed exactly once, within capacity."""
    loads = plan.bin_loads()
    assert (loads <= max_len).all()
    assert (loads > 0).all()
    covered: dict[int, list[tuple[int, int]]] = {}
    for item in plan.bin_items.tolist():
        doc = int(plan.item_doc[item])
        covered.setdefault(doc, []).append((int(plan.item_start[item]), int(plan.item_len[item])))
    assert sorted(plan.bin_items.tolist()) == list(range(len(plan.item_doc)))
    dropped = set(plan.dropped.tolist())
    for doc, n in enumerate(lengths):
        if doc in dropped:
            assert n > max_len and doc not in covered
            continue
        pieces = sorted(covered[doc])
        if n <= max_len:
            assert pieces == [(0, n)], "a document that fits is never cut"
        else:
            assert plan.mode == "split"
            pos = 0
            for start, length in pieces:
                assert start == pos and 0 < length <= max_len
                pos += length
            assert pos == n


@pytest.mark.parametrize("seed", range(40))
def test_matches_brute_force_bfd_exactly(seed: int) -> None:
    rng = random.Random(seed)
    max_len = rng.randint(1, 64)
    lengths = [
        rng.choice([rng.randint(1, max_len), rng.randint(1, max(1, max_len // 5)), max_len + 3])
        for _ in range(rng.randint(0, 120))
    ]
    plan = pack_arrays(lengths, max_len, mode="drop")
    assert plan.bins() == brute_force_bfd(lengths, max_len)
    check_plan(lengths, max_len, plan)


@settings(max_examples=200, deadline=None)
@given(
    max_len=st.integers(1, 50),
    lengths=st.lists(st.integers(1, 80), max_size=80),
    mode=st.sampled_from(["split", "drop"]),
)
def test_every_token_placed_once_within_capacity(
    max_len: int, lengths: list[int], mode: str
) -> None:
    plan = pack_arrays(lengths, max_len, mode=mode)  # type: ignore[arg-type]
    check_plan(lengths, max_len, plan)
    if mode == "drop":
        assert plan.bins() == brute_force_bfd(lengths, max_len)


def test_worked_example() -> None:
    # Sorted: 7(0) 6(3) 5(1) 4(4) 2(2) 2(5). 7->A, 6->B, 5->C, 4: rooms A3 B4 C5 -> B (4 left: 4).
    # 2: rooms A3 B0 C5 -> A (1 left); 2: rooms A1 C5 -> C.
    assert pack([7, 5, 2, 6, 4, 2], 10) == [[0, 2], [3, 4], [1, 5]]


def test_split_mode_cuts_long_documents_into_max_len_pieces() -> None:
    plan = pack_arrays([25, 3, 10], 10, mode="split")
    check_plan([25, 3, 10], 10, plan)
    pieces = sorted(
        zip(plan.item_doc.tolist(), plan.item_start.tolist(), plan.item_len.tolist(), strict=True)
    )
    assert pieces == [(0, 0, 10), (0, 10, 10), (0, 20, 5), (1, 0, 3), (2, 0, 10)]
    assert plan.docs_split == 1
    assert plan.num_bins == 4 == plan.lower_bound  # 10 | 10 | 10 | 5+3
    assert plan.dropped.size == 0


def test_drop_mode_reports_long_documents() -> None:
    plan = pack_arrays([25, 3, 10, 11], 10, mode="drop")
    assert plan.dropped.tolist() == [0, 3]
    assert plan.bins() == [[2], [1]]
    assert plan.packed_tokens == 13


def test_deterministic_and_input_order_only_matters_for_ties() -> None:
    rng = np.random.default_rng(7)
    lengths = rng.integers(1, 500, 5000)
    a = pack_arrays(lengths, 1024)
    b = pack_arrays(lengths.copy(), 1024)
    assert a.bins() == b.bins()
    shuffled = rng.permutation(len(lengths))
    c = pack_arrays(lengths[shuffled], 1024)
    assert sorted(c.bin_loads().tolist()) == sorted(a.bin_loads().tolist())


@pytest.mark.parametrize(
    ("max_len", "sigma"), [(4096, 1.0), (32768, 1.0), (2048, 0.6), (8192, 1.4)]
)
def test_close_to_lower_bound_on_lognormal_lengths(max_len: int, sigma: float) -> None:
    rng = np.random.default_rng(max_len)
    lengths = np.maximum(1, rng.lognormal(math.log(600), sigma, 20000)).astype(np.int64)
    plan = pack_arrays(lengths, max_len, mode="split")
    assert plan.packed_tokens == int(lengths.sum())  # nothing lost
    assert plan.num_bins <= math.ceil(plan.lower_bound * 1.005) + 1
    check_plan(lengths.tolist(), max_len, plan)


def test_all_fitting_is_one_bin_and_empty_is_none() -> None:
    assert pack([1, 2, 3], 6) == [[2, 1, 0]]
    assert pack([], 6) == []
    assert pack_arrays([], 6).fill_ratio == 1.0


@pytest.mark.parametrize(
    ("lengths", "max_len", "mode"), [([0, 1], 4, "split"), ([1], 0, "split"), ([1], 4, "cut")]
)
def test_bad_input_is_a_value_error(lengths: list[int], max_len: int, mode: str) -> None:
    with pytest.raises(ValueError):
        pack_arrays(lengths, max_len, mode=mode)  # type: ignore[arg-type]


def optimal_bins(sizes: list[int], capacity: int) -> int:
    """The optimum by exhaustive search (tiny instances only): items in decreasing order, each
    tried in every open bin with room and in one new bin."""
    items = sorted(sizes, reverse=True)
    best = len(items)

    def place(i: int, rooms: list[int]) -> None:
        nonlocal best
        if len(rooms) >= best:
            return
        if i == len(items):
            best = len(rooms)
            return
        for b in range(len(rooms)):
            if rooms[b] >= items[i] and rooms[b] not in rooms[:b]:  # equal rooms: try one
                rooms[b] -= items[i]
                place(i + 1, rooms)
                rooms[b] += items[i]
        place(i + 1, [*rooms, capacity - items[i]])

    place(0, [])
    return best


@pytest.mark.parametrize(
    ("sizes", "capacity", "l1", "l2"),
    [
        # K = 4: the two 7s need a bin each (> 10 - 4) and the three 4s cannot join them: 2 + 2.
        ([7, 7, 4, 4, 4], 10, 3, 4),
        # K = 0: four items > 5 each need a bin; the 3s fit in their room.
        ([6, 6, 6, 6, 3, 3], 10, 3, 4),
        ([51, 51, 51], 100, 2, 3),
        ([5, 5, 5, 5], 10, 2, 2),
        ([1], 1, 1, 1),
        ([], 10, 0, 0),
    ],
)
def test_martello_toth_l2_on_known_instances(
    sizes: list[int], capacity: int, l1: int, l2: int
) -> None:
    assert math.ceil(sum(sizes) / capacity) == l1
    assert martello_toth_l2(sizes, capacity) == l2 == optimal_bins(sizes, capacity)


@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(1, 30), data=st.data())
def test_martello_toth_l2_between_l1_and_the_optimum(capacity: int, data: st.DataObject) -> None:
    sizes = data.draw(st.lists(st.integers(1, capacity), max_size=7))
    bound = martello_toth_l2(sizes, capacity)
    assert math.ceil(sum(sizes) / capacity) <= bound <= optimal_bins(sizes, capacity)


def test_martello_toth_l2_refuses_items_larger_than_a_bin() -> None:
    with pytest.raises(ValueError):
        martello_toth_l2([11], 10)
