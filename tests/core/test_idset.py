"""``dasd.idset.IdSet``: a set of ids as digests, against a Python set of the same ids."""

from __future__ import annotations

import random
import tracemalloc

import dasd.idset
from dasd.idset import IdSet


def test_answers_as_a_python_set_across_merges():
    """Membership, ``add``'s answer and the size agree with a ``set`` while ids are added before,
    across and after several merges of the recent ids into the sorted arrays."""
    rng = random.Random(0)
    ids = [f"id-{rng.getrandbits(40)}-{i % 7}" for i in range(30_000)] + ["", "é", "\ud800", "x" * 10_000]
    s, ref = IdSet(), set()
    for x in ids + ids[:500]:  # a few again
        assert s.add(x) == (x not in ref)
        ref.add(x)
    assert len(s) == len(ref) == len(set(ids))
    assert all(x in s for x in ids)
    assert not any(f"other-{i}" in s for i in range(5000))
    assert len(s._hi) > 0 and len(s._recent) < len(s)  # merged at least once


def test_ids_of_other_types_are_not_their_strings():
    s = IdSet([1, "2", None])
    assert 1 in s and "1" not in s and 2 not in s and "2" in s and None in s and "None" not in s and len(s) == 3


def test_ids_whose_digests_share_their_first_half_are_told_apart(monkeypatch):
    """Ids are found by the first 8 bytes of their digest, then compared on the rest."""
    monkeypatch.setattr(dasd.idset, "_MERGE_AT", 4)
    real = dasd.idset._digest
    monkeypatch.setattr(dasd.idset, "_digest", lambda x: b"\0" * 8 + real(x)[8:])  # every first half the same
    s = IdSet(f"a{i}" for i in range(20))
    assert len(s._hi) >= 16 and all(f"a{i}" in s for i in range(20)) and "b" not in s and not s.add("a3")


def test_holds_about_20_bytes_an_id():
    """What it keeps: 16 bytes an id in the arrays, and the recent ones (less than an eighth) as
    bytes; a Python set of the same ids (16 hex characters, as content ids are) keeps about 100."""
    n = 200_000
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        s = IdSet(f"{i:016x}" for i in range(n))
        held = tracemalloc.get_traced_memory()[0] - base
        ref = {f"{i:016x}" for i in range(n)}
        held_set = tracemalloc.get_traced_memory()[0] - base - held
    finally:
        tracemalloc.stop()
    assert len(s) == len(ref) == n and f"{n - 1:016x}" in s
    assert held / n < 30, held / n
    assert held_set / n > 80, held_set / n
