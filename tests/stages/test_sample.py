"""`dasd sample` on a real tiny model: pools per temperature, resume equals uninterrupted, bad prompts quarantined."""

from __future__ import annotations

import json

import pytest

from dasd.config import load_config
from dasd.runs import open_engine
from dasd.stages.sample import run_sample
from dasd.store import RunStore
from graded_runs import graded_toy_run


@pytest.fixture()
def prompts_file(tmp_path):
    rows = [{"id": f"p{i}", "prompt": f"Compute {i} + {i + 1}."} for i in range(5)]
    lines = [json.dumps(r) for r in rows]
    lines.insert(2, "{broken json")
    lines.append(json.dumps({"id": "nomsg"}))
    p = tmp_path / "prompts.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def config(tmp_path, run, prompts_file, model):
    return load_config(None, [
        f"run_dir={tmp_path / run}", f"data.prompts={prompts_file}", f"teacher.model={model}",
        "sample.k=2", "sample.max_tokens=12", "sample.batch_prompts=2", "sample.temperatures=[0.6, 1.0]",
    ])


class Crash(Exception):
    pass


class CrashAfter:
    """A real engine that dies after ``n`` generate calls (to simulate a crash mid-stage); otherwise
    the engine itself (its context length, tokenizer, ...)."""

    def __init__(self, engine, n):
        self.engine, self.n = engine, n

    def generate(self, reqs):
        if self.n == 0:
            raise Crash()
        self.n -= 1
        return self.engine.generate(reqs)

    def __getattr__(self, name):
        return getattr(self.engine, name)


def records(run):
    store = RunStore.open(run)
    return {pool: sorted((r["id"], r["text"], tuple(r["teacher"]["logprobs"])) for r in store.read("sample", f"pool-{pool}"))
            for pool in ("T0.6", "T1")}


def test_sample_pools_resume_and_rejects(tmp_path, prompts_file, tiny_lm_dir):
    cfg = config(tmp_path, "full", prompts_file, tiny_lm_dir)
    counts = run_sample(cfg)
    assert counts["T0.6"]["samples"] == 10 and counts["T1"]["samples"] == 10
    full = records(tmp_path / "full")
    store = RunStore.open(tmp_path / "full")
    s = next(store.read("sample", "pool-T0.6"))
    assert s["teacher"]["logprob_mode"] == "raw" and s["model"] == tiny_lm_dir
    assert len(s["teacher"]["offsets"]) == len(s["teacher"]["logprobs"]) == len(s["teacher"]["token_ids"])
    rejects = list(store.read("sample", "rejects"))
    assert {r["where"] for r in rejects} == {f"{prompts_file}:3", f"{prompts_file}:7"}
    assert store.stage_info("sample")["complete"]
    # unset, the knob is not in the stage's config: a run sampled before it existed keeps its config
    # hash, so its later stages stay up to date
    assert "prompts_per_temperature" not in store.stage_info("sample")["config"]["sample"]

    cfg2 = config(tmp_path, "crashed", prompts_file, tiny_lm_dir)
    engine = open_engine(cfg2.teacher)
    with pytest.raises(Crash):
        run_sample(cfg2, engine=CrashAfter(engine, 3))
    partial = records(tmp_path / "crashed")
    assert 0 < sum(map(len, partial.values())) < 20
    assert not RunStore.open(tmp_path / "crashed").stage_info("sample")["complete"]
    run_sample(cfg2, engine=engine)
    assert records(tmp_path / "crashed") == full  # resumed == uninterrupted, nothing twice


# -- sample.prompts_per_temperature ------------------------------------------------------------------


def toy_prompts(ids):
    return [{"id": i, "messages": [{"role": "user", "content": f"q {i}"}]} for i in ids]


def asked_ids(prompts, temperatures, per, seed=0):
    from dasd.rules.sampling import SampleConfig, picks_by_temperature

    ids = [p["id"] for p in prompts]
    picked, warnings = picks_by_temperature(ids, SampleConfig(temperatures=temperatures, prompts_per_temperature=per, seed=seed))
    return {t: ids if picked is None else [ids[i] for i in picked[t]] for t in temperatures}, warnings


def test_prompts_per_temperature_takes_nested_sets_of_one_seeded_ranking():
    prompts = toy_prompts([f"p{i}" for i in range(50)])
    asked, warnings = asked_ids(prompts, [0.6, 1.0, 1.2], [10, 30, 50])
    assert [len(asked[t]) for t in (0.6, 1.0, 1.2)] == [10, 30, 50] and not warnings
    assert set(asked[0.6]) < set(asked[1.0]) < set(asked[1.2]) == {p["id"] for p in prompts}
    order = [p["id"] for p in prompts]
    assert asked[1.0] == [i for i in order if i in set(asked[1.0])]  # in the order of the prompts
    # the ranking does not depend on the temperature: a list the other way round takes the same sets
    flipped, _ = asked_ids(prompts, [1.0, 0.6], [30, 10])
    assert set(flipped[0.6]) == set(asked[0.6]) and set(flipped[1.0]) == set(asked[1.0])
    # a larger count extends a smaller one; another seed ranks otherwise
    eleven = set(asked_ids(prompts, [0.6], [11])[0][0.6])
    assert eleven > set(asked[0.6]) and len(eleven) == 11
    assert set(asked_ids(prompts, [0.6], [10], seed=1)[0][0.6]) != set(asked[0.6])
    # prompts added to the file: each set loses at most one prompt per prompt added
    more = prompts + toy_prompts([f"new{i}" for i in range(3)])
    grown, _ = asked_ids(more, [0.6, 1.0, 1.2], [10, 30, 50])
    assert all(len(set(asked[t]) - set(grown[t])) <= 3 for t in asked)
    assert len(set(asked[0.6]) & set(grown[0.6])) >= 7
    # None: every prompt at every temperature; a count above the prompts: all, with a warning
    assert asked_ids(prompts, [0.6, 1.0], None) == ({0.6: order, 1.0: order}, [])
    asked, warnings = asked_ids(prompts, [0.6, 1.0], [5, 80])
    assert asked[1.0] == order and len(asked[0.6]) == 5
    assert warnings == ["T1: sample.prompts_per_temperature asks 80 prompts and the run has 50: all of them are asked"]


@pytest.mark.parametrize("value, message", [
    ("[10]", r"sample: .*prompts_per_temperature has 1 count\(s\) for 2 temperature\(s\) \[0.6, 1.0\]: give one count per temperature"),
    ("[10, 0]", r"sample: .*prompts_per_temperature: every count must be >= 1 \(got \[10, 0\]\)"),
    ("[10, x]", r"sample.prompts_per_temperature.1: .*valid integer"),
])
def test_prompts_per_temperature_is_checked_at_load(value, message):
    from dasd.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config(None, ["sample.temperatures=[0.6, 1.0]", f"sample.prompts_per_temperature={value}"])
    assert load_config(None, ["sample.prompts_per_temperature=[3, 5]"]).sample.prompts_per_temperature == [3, 5]


class CountingEngine:
    """A real engine that records the (prompt id, temperature) of every request it answers."""

    def __init__(self, engine):
        self.engine, self.asked = engine, []

    def generate(self, reqs):
        self.asked += [(r.id, r.temperature) for r in reqs]
        return self.engine.generate(reqs)


def pool_prompts(run):
    store = RunStore.open(run)
    return {pool: {r["prompt_id"] for r in store.read("sample", f"pool-{pool}")} for pool in ("T0.6", "T1")}


def test_sample_asks_each_temperature_its_count_and_resumes_a_raised_one(tmp_path, prompts_file, tiny_lm_dir, caplog):
    run = tmp_path / "run"
    engine = CountingEngine(open_engine(config(tmp_path, "run", prompts_file, tiny_lm_dir).teacher))

    def sample(per):
        engine.asked = []
        cfg = load_config(None, [f"{k}={v}" for k, v in (
            ("run_dir", run), ("data.prompts", prompts_file), ("teacher.model", tiny_lm_dir), ("sample.k", 2),
            ("sample.max_tokens", 12), ("sample.batch_prompts", 2), ("sample.temperatures", "[0.6, 1.0]"),
            ("sample.prompts_per_temperature", per))])
        assert cfg.sample.seed == 0
        return run_sample(cfg, engine=engine)

    counts = sample("[2, 4]")  # the file has 5 usable prompts
    first = pool_prompts(run)
    assert (len(first["T0.6"]), len(first["T1"])) == (2, 4) and first["T0.6"] < first["T1"]
    assert {(c["samples"], c["prompts"], c["asked"], c["not_asked"], c["new"]) for c in counts.values()} == {
        (4, 2, 2, 0, 4), (8, 4, 4, 0, 8)}
    assert sorted(engine.asked) == sorted([(p, 0.6) for p in first["T0.6"]] + [(p, 1.0) for p in first["T1"]])
    store = RunStore.open(run)
    assert {p["id"] for p in store.read("sample", "prompts")} == first["T1"]  # the prompts asked somewhere
    assert store.stage_info("sample")["config"]["sample"]["prompts_per_temperature"] == [2, 4]

    counts = sample("[3, 4]")  # raised: only the prompt it adds is asked
    second = pool_prompts(run)
    assert second["T1"] == first["T1"] and first["T0.6"] < second["T0.6"] and len(second["T0.6"]) == 3
    assert engine.asked == [(next(iter(second["T0.6"] - first["T0.6"])), 0.6)]
    assert (counts["T0.6"]["new"], counts["T1"]["new"]) == (2, 0)

    counts = sample("[3, 9]")  # above the 5 prompts: all of them, with a warning
    assert pool_prompts(run)["T1"] == {f"p{i}" for i in range(5)}
    assert sorted(engine.asked) == [(p, 1.0) for p in sorted({f"p{i}" for i in range(5)} - first["T1"])]
    assert "T1: sample.prompts_per_temperature asks 9 prompts and the run has 5: all of them are asked" in caplog.text

    caplog.clear()
    counts = sample("[1, 5]")  # lowered: nothing asked, nothing deleted, a warning says so
    assert engine.asked == [] and pool_prompts(run) == {"T0.6": second["T0.6"], "T1": {f"p{i}" for i in range(5)}}
    assert (counts["T0.6"]["samples"], counts["T0.6"]["asked"], counts["T0.6"]["not_asked"]) == (6, 1, 2)
    assert "T0.6: 2 prompt(s) of the pool are not among the 1 it asks now" in caplog.text


def test_sample_does_not_hold_the_prompts(tmp_path):
    """`dasd sample` streams its prompts (ids from one pass, RUN/sample/prompts written as they are
    read, the missing ones read back and fed to the engine): its peak Python memory stays below the
    prompts' size (it held every prompt, ~2x their size, before). 1000 large prompts were quarantined
    as too long by an earlier run (same context, not asked again), 2 small ones are sampled."""
    import tracemalloc

    from dasd.stages.sample import _context_key

    def run(root, n, size):
        src = root / "prompts.jsonl"
        src.parent.mkdir(parents=True, exist_ok=True)
        big = [{"id": f"p{i:05d}", "prompt": f"Question {i}: " + "x" * size} for i in range(n)]
        small = [{"id": "s0", "prompt": "Start with 5. 5 - 2 = ?"}, {"id": "s1", "prompt": "Compute 3 + 4."}]
        src.write_text("".join(json.dumps(r) + "\n" for r in big + small))
        cfg = load_config(None, [f"run_dir={root / 'run'}", f"data.prompts={src}", "teacher.model=toy:teacher",
                                 "sample.temperatures=[0.6]", "sample.k=1", "sample.max_tokens=4"])
        store = RunStore(cfg.run_dir)
        store.write_rejects("sample", [{"id": f"too-long-p{i:05d}", "where": f"prompt p{i:05d}", "reason": "too long",
                                        "context": _context_key(cfg)} for i in range(n)])
        return cfg, store, src.stat().st_size

    engine = open_engine(load_config(None, ["teacher.model=toy:teacher"]).teacher)
    run_sample(*run(tmp_path / "warm", 3, 100)[:2], engine=engine)  # the libraries it loads, loaded before measuring
    cfg, store, size = run(tmp_path / "big", 1000, 8000)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        counts = run_sample(cfg, store, engine=engine)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert counts["T0.6"]["samples"] == 2 and counts["T0.6"]["prompts"] == 2 and counts["T0.6"]["asked"] == 1002
    assert len(list(store.read("sample", "prompts"))) == 1002
    assert peak < size / 2, (peak, size)


def test_sample_holds_digests_not_id_sets(tmp_path):
    """What `dasd sample` keeps per prompt: the prompts' ids, and the ids it skips (prompts read,
    samples on disk, the prompts to ask, the pool's counts) as 16-byte digests (``dasd.idset.IdSet``)
    where it kept Python sets of str. 8000 prompts whose samples are all on disk (nothing is asked):
    RUN/sample/prompts written, every sample checked, the pool counted; the peak Python memory
    above that of a run of 1000 prompts grows by less than 300 bytes a prompt (about 600 with the
    sets; about 180 now, the id list a third of it)."""
    import tracemalloc

    from dasd.records import sample_id

    def run(root, n):
        src = root / "prompts.jsonl"
        root.mkdir(parents=True)
        src.write_text("".join(json.dumps({"id": f"p{i:06d}", "prompt": f"Compute {i} + 1."}) + "\n" for i in range(n)))
        cfg = load_config(None, [f"run_dir={root / 'run'}", f"data.prompts={src}", "teacher.model=toy:teacher",
                                 "sample.temperatures=[0.6]", "sample.k=1"])
        store = RunStore(cfg.run_dir)
        with store.writer("sample", "pool-T0.6", shard_size=64) as w:  # as sample writes it
            for i in range(n):
                w.add({"id": sample_id(f"p{i:06d}", "toy:teacher", 0.6, 1.0, 0, 0), "prompt_id": f"p{i:06d}",
                       "model": "toy:teacher", "temperature": 0.6, "top_p": 1.0, "seed": 0, "index": 0,
                       "text": "4.", "finish_reason": "stop",
                       "teacher": {"token_ids": [7, 8], "offsets": [[0, 1], [1, 2]], "logprobs": [-0.5, -0.25],
                                   "logprob_mode": "raw"}})
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            counts = run_sample(cfg, store)  # every sample on disk: no engine is opened
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
        assert counts["T0.6"] | {"mean_token_logprob": None} == {
            "samples": n, "prompts": n, "cut_off": 0, "tokens": 2 * n, "mean_token_logprob": None, "asked": n,
            "not_asked": 0, "beyond_k": 0, "quarantined": 0, "refused_too_long": 0, "new": 0}
        assert counts["T0.6"]["mean_token_logprob"] == pytest.approx(-0.375)
        assert len(list(store.read("sample", "prompts"))) == n
        return peak

    run(tmp_path / "warm", 10)  # the libraries it loads, loaded before measuring
    small, large = run(tmp_path / "small", 1000), run(tmp_path / "large", 8000)
    per_prompt = (large - small) / 7000
    assert per_prompt < 300, per_prompt


class SpoilFirstSample:
    """A real engine whose first call's first sample comes back with a NaN log-prob."""

    def __init__(self, engine):
        self.engine, self.spoiled = engine, False

    def generate(self, reqs):
        out = self.engine.generate(reqs)
        if not self.spoiled:
            out[0][0].logprobs[0], self.spoiled = float("nan"), True
        return out


def test_a_rerun_asks_only_the_missing_sample_of_a_prompt(tmp_path, prompts_file, tiny_lm_dir):
    """Sample 0 of a prompt quarantined (non-finite), its sample 1 kept: the next run asks the prompt
    again and keeps only sample 0 (the batch engine returns both; sample 1 is skipped as on disk)."""
    cfg = config(tmp_path, "run", prompts_file, tiny_lm_dir)
    engine = open_engine(cfg.teacher)
    first = run_sample(cfg, engine=SpoilFirstSample(engine))
    assert first["T0.6"]["quarantined"] == 1 and first["T0.6"]["samples"] == 9
    again = run_sample(cfg, engine=engine)
    assert again["T0.6"]["new"] == 1 and again["T0.6"]["samples"] == 10 and again["T1"]["new"] == 0
    full = config(tmp_path, "full", prompts_file, tiny_lm_dir)
    run_sample(full, engine=engine)
    got, want = records(tmp_path / "run"), records(tmp_path / "full")
    for pool in want:  # the same samples (log-probs up to the float noise of another batch)
        assert [(i, t) for i, t, _ in got[pool]] == [(i, t) for i, t, _ in want[pool]]
        for (_, _, a), (_, _, b) in zip(got[pool], want[pool]):
            assert a == pytest.approx(b, abs=1e-4)


def test_other_top_p_seed_or_cap_on_sampled_pools_is_refused_in_one_line(tmp_path, prompts_file, tiny_lm_dir):
    """Pools drawn with one top_p, seed or max_tokens are not sampled on with another (each prompt
    would get k more samples, or keep those cut at the old cap): one line, nothing written; the
    same settings (and batch_prompts, a speed knob) resume; deleting the pools samples again."""
    from dasd.errors import ConfigError

    cfg = config(tmp_path, "run", prompts_file, tiny_lm_dir)
    engine = open_engine(cfg.teacher)
    run_sample(cfg, engine=engine)
    first = records(tmp_path / "run")
    store = RunStore(tmp_path / "run")
    for knob, value, shown in (("top_p", 0.9, "sample.top_p 1.0 -> 0.9"), ("seed", 7, "sample.seed 0 -> 7"),
                               ("max_tokens", 16, "sample.max_tokens 12 -> 16")):
        other = cfg.model_copy(update={"sample": cfg.sample.model_copy(update={knob: value})})
        with pytest.raises(ConfigError, match=rf"^{shown} since the pools in .*/sample were sampled: sampling on "
                                              r"would mix samples of both settings in one pool; set it back, or delete"):
            run_sample(other, store, engine=engine)
        assert records(tmp_path / "run") == first
    faster = cfg.model_copy(update={"sample": cfg.sample.model_copy(update={"batch_prompts": 1})})
    assert run_sample(faster, store, engine=engine)["T1"]["new"] == 0
    store.remove_outputs("sample", ("pool-",))
    other = cfg.model_copy(update={"sample": cfg.sample.model_copy(update={"seed": 7})})
    run_sample(other, store, engine=engine)
    again = records(tmp_path / "run")
    assert {p: len(v) for p, v in again.items()} == {"T0.6": 10, "T1": 10} and again != first


def test_a_prompt_edited_under_its_id_is_refused_and_removed_ones_lowered_k_and_dropped_pools_are_warned_of(
        tmp_path, prompts_file, tiny_lm_dir, caplog):
    """What a user meets editing the prompts or the schedule of a sampled run: a prompt whose text
    changed under the same id was sampled on with the old text kept (new samples asked with it, later
    stages joining to it): now one line, nothing written; a new id for it is sampled. A prompt removed,
    a lower sample.k and a temperature dropped keep their samples, which later stages use: each now
    says so (they were silent without sample.prompts_per_temperature)."""
    from dasd.errors import InputError

    cfg = config(tmp_path, "run", prompts_file, tiny_lm_dir)
    engine = open_engine(cfg.teacher)
    run_sample(cfg, engine=engine)
    first = records(tmp_path / "run")
    store = RunStore(tmp_path / "run")
    manifest = json.dumps(store.manifest, sort_keys=True)
    files = sorted(p.name for p in (tmp_path / "run" / "sample").glob("*-*"))

    def prompts(rows):
        src = tmp_path / "edited.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return cfg.model_copy(update={"data": cfg.data.model_copy(update={"prompts": str(src)})})

    kept = [{"id": f"p{i}", "prompt": f"Compute {i} + {i + 1}."} for i in (0, 2, 3, 4)]
    edited = prompts([{"id": "p1", "prompt": "Compute 9 + 9."}, *kept])
    with pytest.raises(InputError, match=r"^\S+edited.jsonl: 1 prompt\(s\) have other messages than the run keeps "
                                         r"under their id \(e.g. id 'p1'; .*\): the samples in \S+ answer the old text"):
        run_sample(edited, store, engine=engine)
    system = cfg.model_copy(update={"data": cfg.data.model_copy(update={"system_prompt": "Be brief."})})
    with pytest.raises(InputError, match=r"5 prompt\(s\) have other messages"):
        run_sample(system, store, engine=engine)
    assert json.dumps(store.manifest, sort_keys=True) == manifest
    assert sorted(p.name for p in (tmp_path / "run" / "sample").glob("*-*")) == files and records(tmp_path / "run") == first

    caplog.clear()  # p1 under a new id, p0 removed, k lowered to 1, T1 dropped from the schedule
    renamed = prompts([{"id": "p1b", "prompt": "Compute 9 + 9."}, *kept[1:]])
    lower = renamed.model_copy(update={"sample": renamed.sample.model_copy(update={"k": 1, "temperatures": [0.6]})})
    counts = run_sample(lower, store, engine=engine)["T0.6"]
    assert (counts["new"], counts["asked"], counts["not_asked"], counts["beyond_k"]) == (1, 4, 2, 5)
    got = records(tmp_path / "run")
    assert got["T1"] == first["T1"] and set(first["T0.6"]) < set(got["T0.6"]) and len(got["T0.6"]) == 11
    assert {p["id"]: p["messages"][-1]["content"] for p in store.read("sample", "prompts")}["p1b"] == "Compute 9 + 9."
    assert "T0.6: 2 prompt(s) of the pool are not among the 4 it asks now" in caplog.text
    assert "T0.6: 5 sample(s) beyond sample.k=1 per prompt (k lowered since they were sampled)" in caplog.text
    assert "pool(s) T1 in " in caplog.text and "are not at a temperature of sample.temperatures [0.6]" in caplog.text


def test_a_corrected_answer_takes_effect_and_filter_judges_the_responses_again(tmp_path, caplog, monkeypatch):
    """A prompt whose reference answer or meta changed under the same id and messages kept its
    first record in RUN/sample/prompts, and filter judged against the old answer, silently. Now
    `dasd sample` replaces the record (one warning: how many, which fields, an example; no sample
    asked again) and `dasd filter` judges again the samples of the prompts whose answer changed, and
    only those (a meta change is not graded): the kept samples the new answer fails are dropped
    (the kept output re-linked without them, not made again), a rejected one it passes is kept: the
    verdicts of a fresh run on the corrected prompts. A run killed after the new prompts shard was
    written and before the old one went (the old shard back beside it) is finished by the next run."""
    import dasd.stages.filter as filter_stage
    from dasd.grading.grade import grade_one
    from dasd.prompts import toy_prompts
    from dasd.runs import load_run_prompts
    from dasd.stages.filter import run_filter

    write, cfg = graded_toy_run(tmp_path, "sample.k=3", "sample.temperatures=[1.0]")

    def verdicts(run):
        store = RunStore.open(tmp_path / run)
        return store.ids("filter", "kept-T1"), {r["id"]: r["rule"] for r in store.read("filter", "rejects")}

    rows = toy_prompts(8, 0, "train", None)
    write(rows)
    engine = open_engine(cfg("run").teacher)
    run_sample(cfg("run"), engine=engine)
    run_filter(cfg("run"))
    kept, rejected = verdicts("run")
    samples = list(RunStore.open(tmp_path / "run").read("sample", "pool-T1"))
    by_id = {p["id"]: p for p in rows}
    right = next(p for p in rows if any(s["id"] in kept for s in samples if s["prompt_id"] == p["id"]))
    wrong, text = next((p, s["text"]) for p in rows for s in samples if s["prompt_id"] == p["id"] and p is not right
                       and rejected.get(s["id"]) == "correctness" and grade_one(p, s["text"])["extracted"])
    fixed = {right["id"]: {"answer": str(int(right["answer"]) + 1000)},  # its kept samples now fail
             wrong["id"]: {"answer": grade_one(wrong, text)["extracted"]},  # a rejected sample now passes
             rows[max(rows.index(right), rows.index(wrong)) + 1]["id"]: {"meta": {"checked": True}}}  # after them
    write([{**p, **fixed.get(p["id"], {})} for p in rows])
    old_shards = {p.name: p.read_bytes() for p in (tmp_path / "run" / "sample").glob("prompts-*")}

    caplog.clear()
    counts = run_sample(cfg("run"), engine=engine)
    assert counts["T1"]["new"] == 0 and counts["T1"]["samples"] == 24
    first = min(right, wrong, key=rows.index)  # the example the warning gives
    assert (f"3 prompt(s) have the same messages and other fields than the run kept under their id: answer (2), "
            f"meta (1) (e.g. id {first['id']!r}: answer {first['answer']!r} -> {fixed[first['id']]['answer']!r}); the "
            "run's prompts now hold the new records, and `dasd filter` judges their responses again") in caplog.text
    want = {k: {**by_id[k], **v} for k, v in fixed.items()}
    assert {k: load_run_prompts(RunStore.open(tmp_path / "run"))[k] for k in fixed} == want

    for name, data in old_shards.items():  # killed before the old shard went: it is read first, the old answers
        (tmp_path / "run" / "sample" / name).write_bytes(data)
    assert load_run_prompts(RunStore.open(tmp_path / "run"))[right["id"]]["answer"] == right["answer"]
    assert run_sample(cfg("run"), engine=engine)["T1"]["new"] == 0
    prompts = list(RunStore.open(tmp_path / "run").read("sample", "prompts"))
    assert len(prompts) == 8 and {p["id"]: p for p in prompts if p["id"] in fixed} == want
    assert len(list((tmp_path / "run" / "sample").glob("prompts-*"))) == 1

    caplog.clear()
    judged, rules = [], filter_stage.apply_filters
    monkeypatch.setattr(filter_stage, "apply_filters", lambda s, *a: judged.append(s["id"]) or rules(s, *a))
    funnel = run_filter(cfg("run"))
    got_kept, got_rejected = verdicts("run")
    assert not any(s["id"] in got_kept for s in samples if s["prompt_id"] == right["id"])
    assert any(s["id"] in got_kept and s["text"] == text for s in samples if s["prompt_id"] == wrong["id"])
    stale = kept - got_kept  # right's kept samples, and wrong's that passed the old answer
    assert stale and {s["prompt_id"] for s in samples if s["id"] in stale} <= {right["id"], wrong["id"]}
    assert sorted(judged) == sorted(s["id"] for s in samples if s["prompt_id"] in (right["id"], wrong["id"]))
    assert RunStore.open(tmp_path / "run").stage_info("filter")["judged"] == {"T1": 6}
    assert "sample/prompts lost records since this stage last ran: its 2 output(s)" in caplog.text
    assert "dropped by the rules now" not in caplog.text  # no kept output made again

    run_sample(cfg("fresh"), engine=engine)  # the corrected prompts from the start
    fresh_funnel = run_filter(cfg("fresh"))
    fresh_kept, fresh_rejected = verdicts("fresh")
    assert got_kept == fresh_kept and got_rejected == fresh_rejected and funnel == fresh_funnel


def test_an_hf_prompt_source_is_streamed_once(tmp_path, monkeypatch):
    """An ``hf:`` data set of prompts is read in one pass (it was streamed twice: an id pass and a
    write pass, a second download from the hub): the prompts go to a temp file as they are checked,
    and RUN/sample/prompts is written from it."""
    import dasd.sources
    from dasd.prompts import to_prompt

    root = tmp_path / "hub-prompts"
    root.mkdir()
    (root / "README.md").write_text("---\nconfigs:\n- config_name: math\n  data_files: math-train.jsonl\n---\n",
                                    encoding="utf-8")
    rows = [{"id": f"q{i}", "prompt": f"Compute {i} + {i + 1}.", "answer": str(2 * i + 1)} for i in range(4)]
    (root / "math-train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    load_hub, opened = dasd.sources._load_hub, []

    def counted(*args, **kwargs):  # the real loader, counted
        opened.append(args[0].spec())
        return load_hub(*args, **kwargs)

    monkeypatch.setattr(dasd.sources, "_load_hub", counted)
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"data.prompts=hf:{root}:math", "teacher.model=toy:teacher",
                             "sample.temperatures=[0.6]", "sample.k=1", "sample.max_tokens=8"])
    engine = open_engine(cfg.teacher)
    assert run_sample(cfg, engine=engine)["T0.6"]["samples"] == 4
    assert opened == [f"hf:{root}:math@train"]
    store = RunStore.open(tmp_path / "run")
    assert list(store.read("sample", "prompts")) == [to_prompt(r, cfg.data.system_prompt) for r in rows]
    assert run_sample(cfg, engine=engine)["T0.6"]["new"] == 0 and len(opened) == 2  # once a run
