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

import torch

from dasd.train.encode import IGNORE, Encoded


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


def collate(rows: list[list[Encoded]], pad_id: int) -> dict[str, torch.Tensor]:
    """Concatenate each row's examples and pad rows to a common length (see module docstring)."""
    ids, labels, pos = [], [], []
    for row in rows:
        r_ids, r_lab, r_pos = [], [], []
        for ex in row:
            r_ids += ex.input_ids
            r_lab += ex.labels
            r_pos += list(range(len(ex)))
        ids.append(r_ids)
        labels.append(r_lab)
        pos.append(r_pos)
    width = max(len(r) for r in ids)
    for r_ids, r_lab, r_pos in zip(ids, labels, pos):
        pad = width - len(r_ids)
        r_ids += [pad_id] * pad
        r_lab += [IGNORE] * pad
        r_pos += list(range(pad))
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "position_ids": torch.tensor(pos, dtype=torch.long),
    }
