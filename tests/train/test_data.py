"""Stage data: the on-disk token cache equals in-memory tokenisation, is reused, and is keyed by content."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from transformers import AutoTokenizer

from dasd.train.data import prepare
from dasd.train.encode import encode_example

from .conftest import make_pool


def _items(pool):
    return [(f"pool[{i}]", ex) for i, ex in enumerate(pool)]


class ThreadRanks:
    """``world`` threads meeting as a run's processes do: ``first_true(rank)`` is rank's
    ``ranks.first_true``, an all-reduce over them at a real barrier (which gives up after ``timeout``
    seconds, as torch.distributed does after ``dist_timeout_s``); ``calls`` records each rank's flags."""

    def __init__(self, world: int, timeout: float = 120):
        self.barrier, self.flags, self.calls = threading.Barrier(world, timeout=timeout), [False] * world, []

    def first_true(self, rank: int):
        def agree(flag: bool) -> int | None:
            self.calls.append((rank, flag))
            self.flags[rank] = flag
            self.barrier.wait()
            hit = next((r for r, f in enumerate(self.flags) if f), None)
            self.barrier.wait()
            return hit
        return agree

    def run(self, fn) -> dict:
        """``fn(rank)`` on each rank's thread; what each returned or raised."""
        out = {}

        def one(r):
            try:
                out[r] = fn(r)
            except Exception as e:  # noqa: BLE001 - what a rank raised is the result
                out[r] = e
        threads = [threading.Thread(target=one, args=(r,)) for r in range(len(self.flags))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return out


def test_processes_tokenise_shares_in_parallel_into_one_cache_any_process_count_reads(tiny_lm_dir, tmp_path):
    # three "processes" (threads, each with its own tokenizer) meet at a real barrier, as ranks do
    items = _items(make_pool(10))
    toks = [AutoTokenizer.from_pretrained(tiny_lm_dir) for _ in range(3)]
    mem = prepare(toks[0], items, context=256, mask_prefix=False, packing=True)
    ranks = ThreadRanks(3)
    out = ranks.run(lambda r: prepare(toks[r], items, context=256, mask_prefix=False, packing=True,
                                      cache_dir=tmp_path / "tokens", rank=r, world=3, first_true=ranks.first_true(r)))
    # each rank: the cache is missing, its share is built, the main process's write is done
    assert sorted(ranks.calls) == [(r, flag) for r in range(3) for flag in (False, False, True)]
    assert sorted(out) == [0, 1, 2]
    meta = json.loads((tmp_path / "tokens" / "meta.json").read_text())
    assert meta["parts"] == 3 and meta["examples"] == 10
    assert [int(np.load(tmp_path / f"tokens/part-{r:05d}/starts.npy").size) - 1 for r in range(3)] == [3, 3, 4]
    for sd in out.values():
        np.testing.assert_array_equal(sd.starts, mem.starts)
        np.testing.assert_array_equal(sd.n_loss, mem.n_loss)
        assert sd.sequences == mem.sequences and sd.key == mem.key
        for i in range(10):
            assert sd.piece(i).input_ids.tolist() == mem.piece(i).input_ids.tolist()
            assert sd.piece(i).labels.tolist() == mem.piece(i).labels.tolist()
    # one process (a resume on another process count) reads the same cache without tokenising again
    stamp = (tmp_path / "tokens" / "part-00002" / "ids.bin").stat().st_mtime_ns
    calls = []
    one = prepare(toks[0], items, context=256, mask_prefix=False, packing=True, cache_dir=tmp_path / "tokens",
                  first_true=lambda flag: calls.append(flag) or (0 if flag else None))
    assert calls == [False] and (tmp_path / "tokens" / "part-00002" / "ids.bin").stat().st_mtime_ns == stamp
    assert one.sequences == mem.sequences and one.piece(9).input_ids.tolist() == mem.piece(9).input_ids.tolist()


def test_cache_equals_memory_and_is_reused_until_the_content_changes(tiny_lm_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    items = _items(make_pool(10))
    mem = prepare(tok, items, context=256, mask_prefix=False, packing=True)
    disk = prepare(tok, items, context=256, mask_prefix=False, packing=True, cache_dir=tmp_path / "tokens")
    assert isinstance(disk.ids[0], np.memmap) and len(disk.ids) == len(mem.ids) == 1
    np.testing.assert_array_equal(mem.ids[0], disk.ids[0])
    np.testing.assert_array_equal(mem.labels[0], disk.labels[0])
    np.testing.assert_array_equal(mem.starts, disk.starts)
    assert mem.sequences == disk.sequences and mem.key == disk.key
    # each example's slice is exactly what encode_example gives
    for i, (where, ex) in enumerate(items):
        e = encode_example(tok, ex, where=where)
        assert disk.piece(i).input_ids.tolist() == e.input_ids and disk.piece(i).labels.tolist() == e.labels
        assert int(disk.n_loss[i]) == e.n_loss_tokens

    stamp = (tmp_path / "tokens" / "part-00000" / "ids.bin").stat().st_mtime_ns
    again = prepare(tok, items, context=256, mask_prefix=False, packing=True, cache_dir=tmp_path / "tokens")
    assert (tmp_path / "tokens" / "part-00000" / "ids.bin").stat().st_mtime_ns == stamp and again.key == disk.key

    # a build of other data killed half-way leaves its folder; the next build that finishes removes it
    stale = tmp_path / ".tokens.tmp-0123456789abcdef" / "part-00000"
    stale.mkdir(parents=True)
    (stale / "ids.bin").write_bytes(b"\0" * 64)
    masked = prepare(tok, items, context=256, mask_prefix=True, packing=True, cache_dir=tmp_path / "tokens")
    assert masked.key != disk.key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens"]
    assert int(masked.n_loss.sum()) < int(disk.n_loss.sum())  # prefix tokens of the mixed examples left out


def test_examples_over_context_are_dropped_and_counted(tiny_lm_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    items = _items(make_pool(10))
    full = prepare(tok, items, context=4096, mask_prefix=False, packing=False)
    cap = int(np.sort(full.lengths)[5])
    for cache in (None, tmp_path / "tokens"):
        sd = prepare(tok, items, context=cap, mask_prefix=False, packing=True, cache_dir=cache)
        kept = int((full.lengths <= cap).sum())
        assert sd.n_examples == kept and sd.dropped == {"over_context": 10 - kept}
        assert all(int(sd.lengths[s].sum()) <= cap for s in map(np.array, sd.sequences))


def test_plan_visits_every_sequence_once_per_epoch_and_splits_steps_across_processes():
    from dasd.train.config import TrainConfig
    from dasd.train.data import StageData
    from dasd.train.plan import Plan as _Plan

    seqs = [[i] for i in range(11)]
    sd = StageData([np.zeros(11, np.int32)], [np.zeros(11, np.int32)], np.arange(12), np.ones(11, np.int64), seqs, "k")
    for procs, mb, ga in [(1, 1, 1), (2, 1, 2), (3, 2, 1)]:
        cfg = TrainConfig(base_model="m", micro_batch=mb, grad_accum=ga, stages=[{"name": "a", "data": "x", "init": "base"}])
        plan = _Plan(sd, cfg, procs, seed=0)
        for epoch in range(2):
            seen = []
            for step in range(epoch * plan.steps_per_epoch, (epoch + 1) * plan.steps_per_epoch):
                rows = plan.rows(step)
                assert len(rows) == plan.G == procs * mb * ga
                parts = [r for m in range(ga) for p in range(procs) for r in plan.local(rows, p, m)]
                assert sorted(map(str, parts)) == sorted(map(str, rows))  # ranks x micro-steps partition the step
                seen += [r[0] for r in rows if r is not None]
            assert sorted(seen) == list(range(11))
        assert plan.order(0).tolist() != plan.order(1).tolist()  # reshuffled each epoch


def test_the_plans_epoch_order_is_an_array_not_a_python_int_per_sequence():
    """Without packing a stage has one sequence per example: the epoch's order is held as an int64
    array (8 bytes a sequence), not a list of Python ints (~36), and is torch.randperm's order."""
    import tracemalloc

    import torch

    from dasd.train.config import TrainConfig
    from dasd.train.data import StageData
    from dasd.train.packing import Packed
    from dasd.train.plan import Plan

    n = 200_000
    sd = StageData([np.zeros(n, np.int32)], [np.zeros(n, np.int32)], np.arange(n + 1), np.ones(n, np.int64),
                   Packed.singletons(n), "k")
    plan = Plan(sd, TrainConfig(base_model="m", stages=[{"name": "a", "data": "x", "init": "base"}]), 1, seed=3)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        order = plan.order(0)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 8 * n  # a list of Python ints held ~36 bytes a sequence here
    g = torch.Generator().manual_seed(3 * 1_000_003)
    assert order.tolist() == torch.randperm(n, generator=g).tolist()  # the order earlier checkpoints resume in
    assert plan.rows(1) == [[int(order[1])]]


def test_streamed_examples_tokenise_exactly_as_a_held_list(tiny_lm_dir, tmp_path):
    """A stage's examples are read as a stream, twice when the cache is built (key, then this
    process's share) and once when it is reused; the tokens, key and plan equal those of a list."""
    from dasd.jsonl import dumps
    from dasd.train.data import load_examples

    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    pool = make_pool(11)
    held = prepare(tok, _items(pool), context=256, mask_prefix=False, packing=True)

    class Reader:  # a stored pool: every pass reads fresh records
        passes = 0

        def __iter__(self):
            Reader.passes += 1
            return (json.loads(json.dumps(r)) for r in pool)

    path = tmp_path / "pool.jsonl"
    path.write_text("".join(dumps(r) + "\n" for r in pool))
    sources = {"named": load_examples("pool", {"pool": Reader()}), "jsonl": load_examples(str(path), None)}
    for name, items in sources.items():
        for world in (1, 3):
            cache = tmp_path / f"tokens-{name}-{world}"
            ranks, toks = ThreadRanks(world), [tok] + [AutoTokenizer.from_pretrained(tiny_lm_dir) for _ in range(world - 1)]
            out = ranks.run(lambda r, items=items, cache=cache, ranks=ranks, toks=toks, world=world: prepare(
                toks[r], items, context=256, mask_prefix=False, packing=True, cache_dir=cache, rank=r, world=world,
                first_true=ranks.first_true(r)))
            assert sorted(out) == list(range(world)) and not any(isinstance(v, Exception) for v in out.values())
            sd = prepare(tok, items, context=256, mask_prefix=False, packing=True, cache_dir=cache)
            assert sd.sequences == held.sequences and sd.dropped == {"over_context": 0}
            np.testing.assert_array_equal(sd.starts, held.starts)
            np.testing.assert_array_equal(sd.n_loss, held.n_loss)
            for i in range(len(pool)):
                assert sd.piece(i).input_ids.tolist() == held.piece(i).input_ids.tolist()
                assert sd.piece(i).labels.tolist() == held.piece(i).labels.tolist()
        if name == "named":
            assert sd.key == held.key != prepare(tok, _items(pool[1:]), 256, False, True).key
    before = Reader.passes
    prepare(tok, sources["named"], context=256, mask_prefix=False, packing=True, cache_dir=tmp_path / "tokens-named-1")
    assert Reader.passes == before + 1  # a reused cache: one pass for the key, no tokenising
    prepare(tok, sources["named"], context=256, mask_prefix=False, packing=True, cache_dir=tmp_path / "tokens-new")
    assert Reader.passes == before + 3  # a new cache: the key's pass and the share's


def test_a_bad_example_of_a_streamed_source_names_its_line(tiny_lm_dir, tmp_path):
    from dasd.errors import InputError
    from dasd.train.data import load_examples

    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(make_pool(1)[0]) + "\n" + json.dumps({"messages": [{"role": "robot", "content": "x"}]}) + "\n")
    items = load_examples(str(path), None)
    with pytest.raises(InputError, match=r"d\.jsonl:2: field 'messages\.0\.role'"):
        prepare(tok, items, context=256, mask_prefix=False, packing=True, cache_dir=tmp_path / "tokens")
    assert not (tmp_path / "tokens").exists()


def test_a_share_that_fails_on_one_process_stops_every_process_at_once(tiny_lm_dir, tmp_path):
    """A process whose share of the tokenising fails (here an example of process 1's share whose
    prefix_chars is past its message) raised alone, and the others waited for it at the barrier
    until the run's timeout. Every process now stops at once: that one with its own error naming
    the example, the others saying which process failed; no cache is put in place."""
    from dasd.errors import DasdError, InputError

    pool = make_pool(9)
    pool[4]["prefix_chars"] = 10_000  # the second of the three shares: examples 3..5
    items, ranks = _items(pool), ThreadRanks(3)
    toks = [AutoTokenizer.from_pretrained(tiny_lm_dir) for _ in range(3)]
    out = ranks.run(lambda r: prepare(toks[r], items, context=256, mask_prefix=False, packing=True,
                                      cache_dir=tmp_path / "tokens", rank=r, world=3, source="stage 's1' (data 'd')",
                                      first_true=ranks.first_true(r)))
    assert isinstance(out[1], InputError) and str(out[1]).startswith("pool[4]: prefix_chars=10000 is longer")
    for r in (0, 2):
        assert type(out[r]) is DasdError
        assert str(out[r]) == "process 1 could not tokenise its share of stage 's1' (data 'd'): see its error"
    assert not (tmp_path / "tokens").exists()
