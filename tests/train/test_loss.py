"""Chunked cross-entropy equals the model's own full-logits loss, value and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from dasd.train.encode import IGNORE
from dasd.train.loss import LossModel


@pytest.mark.parametrize("chunk", [1, 5, 10_000])
def test_chunked_ce_equals_full_logits(tiny_lm_dir, chunk):
    lm = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, lm.config.vocab_size, (2, 17), generator=g)
    labels = torch.roll(ids, -1, dims=1)
    labels[:, -1] = IGNORE
    labels[0, :6] = IGNORE
    pos = torch.arange(17).repeat(2, 1)

    logits = lm(input_ids=ids, position_ids=pos).logits
    ref = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE, reduction="sum")
    ref.backward()
    g_ref = [p.grad.clone() for p in lm.parameters()]
    lm.zero_grad()

    s, n = LossModel(lm, chunk=chunk)(ids, pos, labels)
    s.backward()
    assert int(n) == int((labels != IGNORE).sum())
    torch.testing.assert_close(s, ref, atol=1e-4, rtol=1e-6)
    for a, b in zip(g_ref, [p.grad for p in lm.parameters()]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
