"""Packing: the plan is a valid bin packing, and packed loss/gradients equal unpacked ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoTokenizer

from dasd.train.encode import encode_example
from dasd.train.loss import LossModel
from dasd.train.packing import collate, pack

TEXTS = ["<think>3 + 4 = 7.</think> The answer is \\boxed{7}.", "Café 日本語, résumé: 12 / 4 = 3.",
         "First, 5 - 2 = 3. So \\boxed{3}.", "ok"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=60), st.integers(50, 120))
def test_pack_places_every_example_once_within_capacity(lengths, cap):
    bins = pack(lengths, cap)
    flat = sorted(i for b in bins for i in b)
    assert flat == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= cap for b in bins)
    # any-fit property: a bin was opened only when its first item fitted nowhere, so no two bins could merge
    loads = [sum(lengths[i] for i in b) for b in bins]
    assert all(loads[i] + loads[j] > cap for i in range(len(loads)) for j in range(i + 1, len(loads)))


def _pack_lists(lengths, capacity):
    """Best-fit decreasing as it was written over Python lists (the reference)."""
    import bisect

    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins, free = [], []
    for i in order:
        n = lengths[i]
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            room, b = free.pop(k)
            bins[b].append(i)
            bisect.insort(free, (room - n, b))
        else:
            bins.append([i])
            bisect.insort(free, (capacity - n, len(bins) - 1))
    return bins


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(1, 50), max_size=80), st.integers(50, 120))
def test_the_columnar_plan_is_the_list_plan(lengths, cap):
    """``pack`` keeps the plan in flat arrays; it is the same plan, bin for bin, as the list version."""
    bins = pack(lengths, cap)
    want = _pack_lists(lengths, cap)
    assert bins == want and [bins[k] for k in range(len(bins))] == want and len(bins) == len(want)
    assert pack(np.asarray(lengths, dtype=np.int64), cap) == bins and bins[-1:] == want[-1:]


def _examples(tok):
    out = []
    for i, t in enumerate(TEXTS):
        ex = {"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": t}],
              "prefix_chars": 4 if i == 1 else 0}
        out.append(encode_example(tok, ex))
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("chunk", [3, 4096])
def test_packed_loss_and_grads_equal_unpacked(tiny_lm_dir, attn, chunk):
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    lm = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, dtype=torch.float32, attn_implementation=attn)
    model = LossModel(lm, chunk=chunk)
    exs = _examples(tok)
    n = sum(e.n_loss_tokens for e in exs)

    packed_sum, packed_n = model(**collate([exs], tok.pad_token_id))
    (packed_sum / n).backward()
    g_packed = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    sep_sum = 0
    for e in exs:
        s, _ = model(**collate([[e]], tok.pad_token_id))
        sep_sum = sep_sum + s
    (sep_sum / n).backward()
    g_sep = [p.grad.clone() for p in model.parameters()]

    assert int(packed_n) == n
    assert abs(float(packed_sum.detach()) / n - float(sep_sum.detach()) / n) < 1e-5
    for a, b in zip(g_packed, g_sep):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_without_position_restarts_examples_would_see_each_other(tiny_lm_dir):
    """Negative control: the equality above is not vacuous; continuous positions change the loss."""
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    lm = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, dtype=torch.float32, attn_implementation="sdpa")
    model = LossModel(lm).eval()
    exs = _examples(tok)
    batch = collate([exs], tok.pad_token_id)
    with torch.no_grad():
        good, _ = model(**batch)
        batch["position_ids"] = torch.arange(batch["input_ids"].shape[1]).unsqueeze(0)
        leaky, _ = model(**batch)
    assert abs(float(good) - float(leaky)) > 1e-3


def test_padding_rows_carry_no_loss_and_do_not_change_it(tiny_lm_dir):
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    lm = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, dtype=torch.float32)
    model = LossModel(lm).eval()
    exs = _examples(tok)
    with torch.no_grad():
        two_rows, n2 = model(**collate([exs[:1], exs[1:]], tok.pad_token_id))
        one_row, n1 = model(**collate([exs], tok.pad_token_id))
    assert int(n1) == int(n2)
    assert abs(float(two_rows) - float(one_row)) < 1e-4
