"""Packing examples into fixed-capacity sequences, and collating sequences into model inputs.

- ``pack(lengths, capacity)``: best-fit decreasing bin packing into a ``Packed``: each sequence is a
  list of example indices whose total length is at most ``capacity``, kept as flat numpy arrays.
  Deterministic for given lengths.
- ``collate(rows, pad_id)``: a micro-batch of rows (each a list of ``Encoded`` examples) becomes
  ``input_ids``, ``labels`` and ``position_ids`` tensors. Position ids restart at 0 for every
  example; with no attention mask, transformers reads the restarts as sequence boundaries (a
  block-diagonal causal mask on sdpa/eager, varlen kernels on flash attention), so no token attends
  to another example. Rows shorter than the longest are padded with pad tokens whose positions also
  restart (a separate, loss-free "example").
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np
import torch

from dasd.train.encode import IGNORE


class Packed(Sequence):
    """Packed sequences as two flat arrays (a list of lists costs ~40 bytes an example; these 8):
    sequence ``k`` is the example indices ``items[bounds[k]:bounds[k + 1]]``, read as a list."""

    def __init__(self, items: np.ndarray, bounds: np.ndarray):
        self.items, self.bounds = np.asarray(items, dtype=np.int64), np.asarray(bounds, dtype=np.int64)

    @classmethod
    def singletons(cls, n: int) -> Packed:
        """One example per sequence (no packing)."""
        return cls(np.arange(n), np.arange(n + 1))

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[j] for j in range(*k.indices(len(self)))]
        if not -len(self) <= k < len(self):
            raise IndexError(k)
        k = int(k) % len(self)
        return self.items[self.bounds[k] : self.bounds[k + 1]].tolist()

    def __eq__(self, other) -> bool:
        if isinstance(other, Packed):
            return np.array_equal(self.items, other.items) and np.array_equal(self.bounds, other.bounds)
        return isinstance(other, Sequence) and len(self) == len(other) and all(a == list(b) for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Packed({len(self)} sequences of {len(self.items)} examples)"


def pack(lengths, capacity: int) -> Packed:
    """Best-fit decreasing: place each example (longest first, ties by index) in the fullest bin it
    fits in. Only the bins' free room is held as Python objects; examples stay in numpy arrays."""
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    bin_of = np.empty(len(lengths), dtype=np.int64)
    free: list[tuple[int, int]] = []  # sorted (remaining capacity, bin index)
    bins = 0
    for lo in range(0, len(order), 65536):  # Python ints for a chunk at a time
        chunk = order[lo : lo + 65536]
        for i, n in zip(chunk.tolist(), lengths[chunk].tolist()):
            if n > capacity:
                raise ValueError(f"example {i} has {n} tokens, more than the capacity {capacity}")
            k = bisect.bisect_left(free, (n, -1))
            if k < len(free):
                room, b = free.pop(k)
                bisect.insort(free, (room - n, b))
            else:
                b, bins = bins, bins + 1
                bisect.insort(free, (capacity - n, b))
            bin_of[i] = b
    placed = bin_of[order]  # each bin's examples in the order they were placed
    return Packed(order[np.argsort(placed, kind="stable")],
                  np.concatenate([[0], np.cumsum(np.bincount(placed, minlength=bins))]))


def collate(rows: list[list], pad_id: int) -> dict[str, torch.Tensor]:
    """Concatenate each row's examples and pad rows to a common length (see module docstring).

    An example is anything with ``input_ids`` and ``labels`` sequences of equal length (an
    ``Encoded``, or a ``data.Piece`` of numpy views into the token cache).
    """
    ids, labels, pos = [], [], []
    for row in rows:
        ids.append(np.concatenate([np.asarray(e.input_ids, dtype=np.int64) for e in row]))
        labels.append(np.concatenate([np.asarray(e.labels, dtype=np.int64) for e in row]))
        pos.append(np.concatenate([np.arange(len(e.input_ids), dtype=np.int64) for e in row]))
    width = max(len(r) for r in ids)
    out_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    out_lab = np.full((len(rows), width), IGNORE, dtype=np.int64)
    out_pos = np.zeros((len(rows), width), dtype=np.int64)
    for k, (r_ids, r_lab, r_pos) in enumerate(zip(ids, labels, pos)):
        n = len(r_ids)
        out_ids[k, :n], out_lab[k, :n], out_pos[k, :n] = r_ids, r_lab, r_pos
        out_pos[k, n:] = np.arange(width - n)
    return {
        "input_ids": torch.from_numpy(out_ids),
        "labels": torch.from_numpy(out_lab),
        "position_ids": torch.from_numpy(out_pos),
    }
