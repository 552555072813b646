"""The packing plan of a stage: which packed sequences each optimizer step, process and micro-step uses.

One optimizer step consumes a global batch of ``G = micro_batch x grad_accum x processes`` packed
sequences, taken in an order fixed by ``(seed, epoch)`` (reshuffled each epoch). Every process holds
the whole plan, so each knows the global batch's token and loss-token counts without communication.
At an epoch's end a short global batch is topped up with loss-free fillers (``None`` rows).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from dasd.train.config import TrainConfig
from dasd.train.data import Piece, StageData
from dasd.train.encode import IGNORE

Rows = list[list[int] | None]


def filler(pad_id: int) -> Piece:
    """A one-token sequence that carries no loss (stands in for a missing row of a short batch)."""
    return Piece(np.array([pad_id], dtype=np.int32), np.array([IGNORE], dtype=np.int32))


class Plan:
    """Which packed sequences each step, process and micro-step uses (see the module docstring)."""

    def __init__(self, sd: StageData, cfg: TrainConfig, processes: int, seed: int):
        self.sd, self.P, self.seed = sd, processes, seed
        self.micro_batch = cfg.micro_batch
        self.G = cfg.micro_batch * cfg.grad_accum * processes
        self.steps_per_epoch = math.ceil(len(sd.sequences) / self.G)
        self._lengths = sd.lengths
        self._perm: tuple[int, np.ndarray] | None = None

    def total_steps(self, epochs: float, max_steps: int | None) -> int:
        """The stage's optimizer steps: ``max_steps`` when set, else ``epochs`` passes (at least one step)."""
        return max_steps or max(1, math.ceil(epochs * self.steps_per_epoch))

    def order(self, epoch: int) -> np.ndarray:
        """The sequence order of ``epoch`` (a permutation seeded by ``seed`` and ``epoch``), as an int64
        array: 8 bytes a sequence, not a Python list's ~36 (one sequence per example without packing)."""
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(len(self.sd.sequences), generator=g).numpy())
        return self._perm[1]

    def rows(self, step: int) -> Rows:
        """The global batch of ``step``: ``G`` sequences (``None`` = loss-free filler at an epoch's end)."""
        epoch, k = divmod(step, self.steps_per_epoch)
        ids = self.order(epoch)[k * self.G : (k + 1) * self.G]
        seqs: Rows = [self.sd.sequences[i] for i in ids.tolist()]
        return seqs + [None] * (self.G - len(seqs))

    def local(self, rows: Rows, rank: int, micro: int) -> Rows:
        """The ``micro_batch`` rows of process ``rank`` at micro-step ``micro`` (micro-steps x ranks partition ``rows``)."""
        mb = self.micro_batch
        start = (micro * self.P + rank) * mb
        return rows[start : start + mb]

    def tokens(self, rows: Rows) -> int:
        """Real (non-padding) tokens in ``rows``."""
        return int(sum(int(self._lengths[i]) for r in rows if r is not None for i in r))

    def loss_tokens(self, rows: Rows) -> int:
        """Loss-carrying tokens in ``rows`` (the global batch's loss denominator)."""
        return int(sum(int(self.sd.n_loss[i]) for r in rows if r is not None for i in r))

    def pieces(self, rows: Rows, pad_id: int) -> list[list[Piece]]:
        """Each row's examples as token pieces, ready for ``packing.collate`` (a filler for ``None``)."""
        return [[self.sd.piece(i) for i in r] if r is not None else [filler(pad_id)] for r in rows]
