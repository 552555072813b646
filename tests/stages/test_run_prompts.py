"""``runs.RunPrompts``: the run's prompts looked up by id from the run's files, with only an index
held, gives the stages exactly what the dict of every prompt (``runs.load_run_prompts``) gave."""

from __future__ import annotations

import json
import shutil
import tracemalloc

import pytest

from dasd import runs
from dasd.config import load_config
from dasd.errors import DasdError
from dasd.runs import RunPrompts, load_run_prompts
from dasd.stages import filter as filter_stage
from dasd.stages import score as score_stage
from dasd.stages import select as select_stage
from dasd.stages.mix import curated_from_run
from dasd.stages.sample import run_sample
from dasd.store import RunStore


def _prompt(i: int, size: int = 300) -> dict:
    rec = {"id": f"p{i:05d}", "domain": "math", "meta": {"i": i},
           "messages": [{"role": "user", "content": f"Problem {i}: " + "caf\u00e9 \u65e5 " * (size // 7)}]}
    if i % 3 == 0:
        rec.update(domain="code", tests={"inputs": [str(i)] * 5, "outputs": [str(i * 2)] * 5})
    else:
        rec["answer"] = str(i)
    return rec


def _store_with(tmp_path, prompts: list[dict], shard_size: int = 7) -> RunStore:
    store = RunStore(tmp_path / "run")
    with store.writer("sample", "prompts", shard_size=shard_size) as w:
        for p in prompts:
            w.add(p)
    return store


def test_lookup_equals_the_dict_across_shards(tmp_path):
    store = _store_with(tmp_path, [_prompt(i) for i in range(50)])
    assert len(store.outputs("sample")) == 1 and len(list((tmp_path / "run" / "sample").glob("prompts-*"))) == 8
    want = load_run_prompts(store)
    got = RunPrompts(store, cache=4)
    for pid in [*want, *reversed(want), "p00003", "p00003"]:  # out of order, again, and from the cache
        assert got[pid] == want[pid] and got.get(pid) == want[pid] and pid in got
    assert got.get("nope") is None and got.get("nope", {}) == {} and "nope" not in got and got.get(None) is None
    with pytest.raises(KeyError):
        got["nope"]


def test_an_id_written_twice_gives_its_first_record(tmp_path):
    store = RunStore(tmp_path / "run")
    for text in ("first", "second"):  # two shards holding the same id (a writer reopened skips it; by hand)
        shard = len(list((tmp_path / "run" / "sample").glob("prompts-*"))) if (tmp_path / "run" / "sample").is_dir() else 0
        (tmp_path / "run" / "sample").mkdir(exist_ok=True)
        (tmp_path / "run" / "sample" / f"prompts-{shard:05d}.jsonl").write_text(
            json.dumps({"id": "p", "messages": [{"role": "user", "content": text}]}) + "\n", encoding="utf-8")
    assert RunPrompts(store)["p"] == load_run_prompts(store)["p"]
    assert RunPrompts(store)["p"]["messages"][0]["content"] == "first"


def test_ids_that_share_a_hash_are_told_apart(tmp_path, monkeypatch):
    store = _store_with(tmp_path, [_prompt(i) for i in range(20)])
    monkeypatch.setattr(runs, "hash", lambda s: 7, raising=False)  # every id collides
    got = RunPrompts(store, cache=1)
    want = load_run_prompts(store)
    assert all(got[pid] == want[pid] for pid in want) and got.get("p99999") is None


def test_a_corrupt_line_names_file_and_line(tmp_path):
    store = _store_with(tmp_path, [_prompt(i) for i in range(3)])
    shard = tmp_path / "run" / "sample" / "prompts-00000.jsonl"
    shard.write_text(shard.read_text(encoding="utf-8") + "{not json\n", encoding="utf-8")
    with pytest.raises(DasdError, match=r"prompts-00000\.jsonl:4: corrupt run file"):
        RunPrompts(store)
    shard.write_text(json.dumps({"messages": []}) + "\n", encoding="utf-8")
    with pytest.raises(DasdError, match=r"prompts-00000\.jsonl:1: .*without a string 'id'"):
        RunPrompts(store)


def test_memory_is_an_index_not_the_prompts(tmp_path):
    """What the lookup holds (and its peak while indexing) stays far below the prompts' size."""
    n = 2000
    store = _store_with(tmp_path, [_prompt(i, size=2000) for i in range(n)], shard_size=256)
    size = sum(p.stat().st_size for p in (tmp_path / "run" / "sample").glob("prompts-*"))
    assert size > n * 2000
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        lookup = RunPrompts(store, cache=4)
        for i in range(n):
            assert lookup[f"p{i:05d}"]["meta"]["i"] == i
        held, peak = tracemalloc.get_traced_memory()
        held -= base
        peak -= base
        dicts = load_run_prompts(store)
        held_dict = tracemalloc.get_traced_memory()[0] - base - held
    finally:
        tracemalloc.stop()
    assert len(dicts) == n
    assert held < 64 * n + 4 * 2**14, held  # 16 bytes a prompt in the index, 4 cached prompts
    assert peak < size / 20, (peak, size)
    assert held_dict > size, (held_dict, size)  # what the stages held before


TOY = ["student.model=toy:student", "teacher.model=toy:teacher", "data.toy.n_train=6", "sample.k=2",
       "sample.temperatures=[0.6,1.0]", "filter.require_correct=true", "select.m=1",
       "select.method=local_naturalness"]


def test_stage_outputs_are_byte_identical_with_the_dict(tmp_path, monkeypatch):
    """filter (grading against each prompt's answer), score (the prompt's messages as context, and
    the local-naturalness windows), select (training examples) and mix's curated set write and
    read the same with ``RunPrompts`` as with every prompt held in a dict."""
    base = tmp_path / "base"
    run_sample(load_config(None, [f"run_dir={base}", *TOY]))
    outputs = {}
    for lookup in ("lazy", "dict"):
        root = tmp_path / lookup
        shutil.copytree(base, root)
        if lookup == "dict":
            for module in (filter_stage, score_stage, select_stage, runs):
                monkeypatch.setattr(module, "RunPrompts", lambda store: load_run_prompts(store))
        cfg = load_config(None, [f"run_dir={root}", *TOY])
        store = RunStore(root)
        filter_stage.run_filter(cfg, store)
        score_stage.run_score(cfg, store)
        select_stage.run_select(cfg, store)
        curated = [{"prompt": c["prompt"], "teacher_text": c["teacher_text"]} for c in curated_from_run(store)]
        files = {p.relative_to(root).as_posix(): p.read_bytes().replace(str(root).encode(), b"RUN")  # rejects name it
                 for st in ("filter", "score", "select") for p in sorted((root / st).iterdir())}
        outputs[lookup] = (files, curated)
        monkeypatch.undo()
    lazy, full = outputs["lazy"], outputs["dict"]
    assert lazy[0].keys() == full[0].keys() and any(k.startswith("select/train-") for k in lazy[0])
    assert [k for k in lazy[0] if lazy[0][k] != full[0][k]] == []
    assert lazy[1] == full[1] and lazy[1]
    examples = [json.loads(line) for k, v in lazy[0].items() if k.startswith("select/train-") for line in v.splitlines()]
    prompts = load_run_prompts(RunStore.open(tmp_path / "lazy"))
    assert examples and all(e["messages"][:-1] in [p["messages"] for p in prompts.values()] for e in examples)


def _filter_run(root, n: int, size: int):
    """A run of n prompts of ``size`` characters, one response each (wrong for the even math ones); the
    code prompts without their tests, so that nothing but the math answers is graded."""
    prompts = [{k: v for k, v in _prompt(i, size=size).items() if k != "tests"} for i in range(n)]
    store = _store_with(root, prompts, shard_size=256)
    with store.writer("sample", "pool-T0.6") as w:
        for i in range(n):
            w.add({"id": f"s{i}", "prompt_id": f"p{i:05d}", "model": "m", "temperature": 0.6, "top_p": 1.0, "seed": 0,
                   "index": 0, "text": f"<think>\nIt is {i}.\n</think>\nThe answer is \\boxed{{{i + 1 - i % 2}}}.",
                   "finish_reason": "stop"})
    cfg = load_config(None, [f"run_dir={root / 'run'}", "student.model=toy:student", "teacher.model=toy:teacher",
                             "sample.temperatures=[0.6]", "filter.require_correct=true",
                             "filter.repetition.enabled=false"])
    return cfg, store


def test_filter_does_not_hold_the_prompts(tmp_path):
    """`dasd filter` grading responses against their prompts' answers: its peak Python memory stays
    below the prompts' size (it held every prompt, ~2x their size on disk, before ``RunPrompts``)."""
    filter_stage.run_filter(*_filter_run(tmp_path / "warm", 3, 100))  # the libraries it loads, loaded before measuring
    n = 300
    cfg, store = _filter_run(tmp_path, n, 20000)
    size = sum(p.stat().st_size for p in (tmp_path / "run" / "sample").glob("prompts-*"))
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        funnel = filter_stage.run_filter(cfg, store)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    wrong = sum(i % 3 != 0 and i % 2 == 0 for i in range(n))  # a math prompt (code: no reference), answered i + 1
    assert funnel["T0.6"]["in"] == n and funnel["T0.6"]["dropped"] == {"correctness": wrong}
    assert peak < size / 2, (peak, size)
