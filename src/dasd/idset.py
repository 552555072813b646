"""``IdSet``: a set of record ids held as 16-byte digests, about 20 bytes an id.

A Python ``set`` of ``str`` ids costs 100-150 bytes an id (the string and its slot, with the
table's slack); the run's writers and readers keep one per output to skip the records on disk,
and ``dasd sample`` several, so at millions of prompts and samples those sets were the stage's
memory. ``IdSet`` keeps each id's BLAKE2b-128 digest instead, as two int64 numpy arrays sorted
by the first half, and the digests added since in a small Python set that is merged in when it
reaches an eighth of the arrays (an insert of the sorted new ones: the arrays are copied once a
merge, a few times over while the set doubles). Two ids that share a digest would be taken for
one (about 1e-21 for a billion ids). An ``IdSet`` answers ``in``, ``add`` and ``len``; it cannot
list its ids.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable

import numpy as np

_MERGE_AT = 4096  # added ids kept in the Python set before the first merge
_PAIR = struct.Struct("<qq")


def _digest(record_id: object) -> bytes:
    if isinstance(record_id, str):
        data = b"s" + record_id.encode("utf-8", "surrogatepass")
    else:  # ids are strings; anything else is told apart from the string of the same text
        data = b"r" + repr(record_id).encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=16).digest()


class IdSet:
    """A set of ids (see the module doc): ``x in s``, ``s.add(x)`` (True when ``x`` is new),
    ``s.update(xs)``, ``len(s)``."""

    def __init__(self, ids: Iterable[object] = ()):
        self._hi = np.zeros(0, np.int64)  # the digests' first halves, sorted
        self._lo = np.zeros(0, np.int64)
        self._recent: set[bytes] = set()
        self.update(ids)

    def __len__(self) -> int:
        return len(self._hi) + len(self._recent)

    def __contains__(self, record_id: object) -> bool:
        d = _digest(record_id)
        return d in self._recent or self._in_sorted(d)

    def _in_sorted(self, d: bytes) -> bool:
        hi, lo = _PAIR.unpack(d)
        i = int(self._hi.searchsorted(hi))
        while i < len(self._hi) and self._hi[i] == hi:  # ids whose first halves are the same: rare
            if self._lo[i] == lo:
                return True
            i += 1
        return False

    def add(self, record_id: object) -> bool:
        """Add ``record_id``; True when it was not in the set."""
        d = _digest(record_id)
        if d in self._recent or self._in_sorted(d):
            return False
        self._recent.add(d)
        if len(self._recent) >= max(_MERGE_AT, len(self._hi) // 8):
            self._merge()
        return True

    def update(self, ids: Iterable[object]) -> None:
        for record_id in ids:
            self.add(record_id)

    def _merge(self) -> None:
        pairs = np.frombuffer(b"".join(self._recent), dtype="<i8").reshape(-1, 2)
        self._recent = set()
        pairs = pairs[np.argsort(pairs[:, 0], kind="stable")]
        at = self._hi.searchsorted(pairs[:, 0])
        self._hi = np.insert(self._hi, at, pairs[:, 0])
        self._lo = np.insert(self._lo, at, pairs[:, 1])
