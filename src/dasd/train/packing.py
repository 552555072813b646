"""Packing examples into fixed-capacity sequences, and collating sequences into model inputs.

- ``pack(lengths, capacity)``: best-fit decreasing bin packing. Each bin is a list of example
  indices whose total length is at most ``capacity``. Deterministic for given lengths.
- ``collate(rows, pad_id)``: a micro-batch of rows (each a list of ``Encoded`` examples) becomes
  ``input_ids``, ``labels`` and ``position_ids`` tensors. Position ids restart at 0 for every
  example; with no attention mask, transformers reads the restarts as sequence boundaries (a
  block-diagonal causal mask on sdpa/eager, varlen kernels on flash attention), so no token attends
  to another example. Rows shorter than the longest are padded with pad tokens whose positions also
  restart (a separate, loss-free "example").
"""

from __future__ import annotations

import bisect

import numpy as np
import torch

from dasd.train.encode import IGNORE


def pack(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: place each example (longest first) in the fullest bin it fits in."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (remaining capacity, bin index)
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"example {i} has {n} tokens, more than the capacity {capacity}")
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            room, b = free.pop(k)
            bins[b].append(i)
            bisect.insort(free, (room - n, b))
        else:
            bins.append([i])
            bisect.insort(free, (capacity - n, len(bins) - 1))
    return bins


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
