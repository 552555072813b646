"""sample -> filter -> score -> select on real tiny models with different tokenizers."""

from __future__ import annotations

import json

import pytest

from dasd.config import load_config
from dasd.stages.filter import run_filter
from dasd.stages.import_ import run_import
from dasd.stages.sample import run_sample
from dasd.stages.score import run_score
from dasd.stages.select import run_select
from dasd.store import RunStore

RELAXED = ["filter.require_structure=false", "filter.drop_cutoff=false", "filter.repetition.enabled=false"]


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory, tiny_lm_dir, tiny_lm_dir_other_vocab):
    tmp = tmp_path_factory.mktemp("pipe")
    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Say {i}."}) + "\n" for i in range(3)), encoding="utf-8")
    overrides = [
        f"run_dir={tmp / 'run'}", f"data.prompts={prompts}", f"teacher.model={tiny_lm_dir}",
        f"student.model={tiny_lm_dir_other_vocab}", "sample.k=3", "sample.max_tokens=16", *RELAXED,
    ]
    cfg = load_config(None, overrides)
    run_sample(cfg)
    funnel = run_filter(cfg)
    counts = run_score(cfg)
    return cfg, overrides, funnel, counts


def test_filter_funnel_and_score(scored_run):
    cfg, _, funnel, counts = scored_run
    assert set(funnel) == {"T0.6", "T1"}
    assert all(f["in"] == 9 and f["out"] + sum(f["dropped"].values()) == 9 for f in funnel.values())
    store = RunStore.open(cfg.run_dir)
    for pool in ("T0.6", "T1"):
        assert counts[pool]["scored"] == funnel[pool]["out"]
        for s in store.read("score", f"pool-{pool}"):
            sents = s["sentences"]
            assert sents and sents[0]["start"] == 0 and sents[-1]["end"] == len(s["text"])
            assert all(a["end"] == b["start"] for a, b in zip(sents, sents[1:]))
            assert sum(x["n_student_tokens"] for x in sents) == len(s["student"]["logprobs"])
            assert sum(x["n_teacher_tokens"] for x in sents) == len(s["teacher"]["logprobs"])
            assert s["das"]["score"] is None or -1.0 <= s["das"]["score"] <= 1.0


def test_select_das_and_random_same_budget(scored_run):
    cfg, overrides, _, _ = scored_run
    das = run_select(cfg)
    store = RunStore.open(cfg.run_dir)
    for pool in ("T0.6", "T1"):
        sel = list(store.read("select", f"selected-{pool}"))
        rej = list(store.read("select", f"rejected-{pool}"))
        by_prompt = {}
        for s in sel:
            by_prompt.setdefault(s["prompt_id"], []).append(s)
        assert all(len(v) == 1 for v in by_prompt.values())
        for r in rej:
            best = by_prompt[r["prompt_id"]][0]["das"]["score"]
            if r["das"]["score"] is not None and best is not None:
                assert best >= r["das"]["score"]
        train = list(store.read("select", f"train-{pool}"))
        assert len(train) == len(sel) and train[0]["messages"][-1]["role"] == "assistant"
        assert das[pool]["selected"]["n"] == len(sel)
    rs_cfg = load_config(None, [*overrides, "select.method=random", "select.seed=3"])
    rs = run_select(rs_cfg)
    assert {p: rs[p]["selected"]["n"] for p in rs} == {p: das[p]["selected"]["n"] for p in das}
    again = run_select(rs_cfg)
    assert again == rs  # seeded: the same draw


def test_imported_without_logprobs_is_rescored_by_teacher(tmp_path, tiny_lm_dir, tiny_lm_dir_other_vocab):
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>a b c.</think> Done. 日本"}]}) + "\n", encoding="utf-8")
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"import.source={data}", "import.format=chat",
                             f"teacher.model={tiny_lm_dir}", f"student.model={tiny_lm_dir_other_vocab}", *RELAXED])
    run_import(cfg)
    run_filter(cfg)
    assert run_score(cfg)["T1"]["scored"] == 1
    s = next(RunStore.open(tmp_path / "run").read("score", "pool-T1"))
    assert s["teacher"]["rescored"] and s["teacher"]["logprob_mode"] == "raw"
    never = load_config(None, [f"run_dir={tmp_path / 'run2'}", f"import.source={data}", "import.format=chat",
                               f"teacher.model={tiny_lm_dir}", f"student.model={tiny_lm_dir_other_vocab}",
                               "score.rescore_teacher=never", *RELAXED])
    run_import(never)
    run_filter(never)
    assert run_score(never)["T1"] == {"scored": 0, "rejected": 1, "new": 1}


def test_a_rescored_teacher_signal_is_arrays_stored_as_the_lists_were(tmp_path):
    """score's re-scoring teacher signal (``_signal``) keeps the result's offsets and log-probs as numpy
    arrays (no per-token lists); the columnar store writes and reads back the same values it did
    for the lists (int32 spans, float32 log-probs), for a cut response's array offsets and for an
    engine's list of tuples alike."""
    import numpy as np

    from dasd.engines.base import ScoreResult
    from dasd.stages.score import _signal

    text = "ab \u00e9\U0001f600 c"
    spans, lps = [(0, 1), (1, 3), (3, 4), (4, 5), (4, 5), (5, 7)], [-0.1234567891, -2.5e-9, 0.0, -17.25, -1e-3, -3.3]
    old = {"offsets": [list(o) for o in spans], "logprobs": list(lps), "logprob_mode": "raw"}  # as _signal made it
    store = RunStore(tmp_path / "run")
    with store.writer("sample", "pool-T1") as w:
        for k, offsets in enumerate((spans, np.asarray(spans, dtype=np.int64))):
            sig = _signal(ScoreResult(request_id="r", tokens=[], token_ids=[], offsets=offsets, logprobs=lps))
            assert sig["offsets"].dtype == np.int64 and sig["offsets"].shape == (6, 2) and sig["offsets"].tolist() == old["offsets"]
            assert isinstance(sig["logprobs"], np.ndarray) and sig["logprobs"].tolist() == lps
            w.add({"id": f"new{k}", "prompt_id": "p", "text": text, "teacher": {**sig, "rescored": True}})
        w.add({"id": "old", "prompt_id": "p", "text": text, "teacher": {**old, "rescored": True}})
    got = {r["id"]: r["teacher"] for r in store.read("sample", "pool-T1")}
    for k in ("new0", "new1"):
        for key in ("offsets", "logprobs"):
            assert got[k][key].dtype == got["old"][key].dtype and np.array_equal(got[k][key], got["old"][key])
        assert got[k]["logprob_mode"] == "raw" and got[k]["rescored"]
    assert got["old"]["offsets"].tolist() == old["offsets"] and got["old"]["logprobs"].tolist() == np.float32(lps).tolist()


def test_unusable_teacher_signals_are_quarantined_before_the_student_scores(tmp_path, tiny_lm_dir, tiny_lm_dir_other_vocab,
                                                                            counting_scorer):
    """With ``score.rescore_teacher: never`` an imported response without teacher log-probs is
    quarantined, and the student scores only the sampled responses of the same pool."""
    from dasd.runs import open_engine

    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>a b.</think> Done."}]}) + "\n", encoding="utf-8")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Say {i}."}) + "\n" for i in range(2)), encoding="utf-8")
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"import.source={data}", "import.format=chat", f"data.prompts={prompts}",
                             f"teacher.model={tiny_lm_dir}", f"student.model={tiny_lm_dir_other_vocab}", "sample.k=2",
                             "sample.max_tokens=12", "sample.temperatures=[1.0]", "score.rescore_teacher=never", *RELAXED])
    run_sample(cfg)
    run_import(cfg)  # into the same pool, T1
    kept = run_filter(cfg)["T1"]["out"]
    assert kept == 5
    student = counting_scorer(open_engine(cfg.student))
    assert run_score(cfg, student=student)["T1"] == {"scored": 4, "rejected": 1, "new": 5}
    assert student.requests == 4  # the imported response never reached the student
    rejects = list(RunStore.open(cfg.run_dir).read("score", "rejects"))
    assert len(rejects) == 1 and "not raw" in rejects[0]["reason"]


def test_naturalness_baselines_same_budget(scored_run, tmp_path):
    """score.local_naturalness=always adds the student's local naturalness to every record (checked
    against the student engine scoring each sentence's window by hand); both naturalness methods
    keep the same budget as DAS and pick the most natural candidate of each prompt."""
    from dasd.runs import open_engine
    from dasd.text.align import sentence_means
    from dasd.text.sentences import segment

    cfg, overrides, _, _ = scored_run
    local_over = [*(o for o in overrides if not o.startswith("run_dir=")), f"run_dir={tmp_path / 'run'}",
                  "score.local_naturalness=always", "score.local_window=1"]
    lcfg = load_config(None, local_over)
    import shutil

    shutil.copytree(cfg.run_dir, lcfg.run_dir)
    shutil.rmtree(tmp_path / "run" / "score")  # score again, with the local passes
    run_score(lcfg)
    store = RunStore.open(lcfg.run_dir)
    recs = list(store.read("score", "pool-T0.6"))
    assert recs and all(set(r["naturalness"]) == {"global", "local", "local_window"} for r in recs)
    student = open_engine(lcfg.student)
    prompts = {p["id"]: p for p in store.read("sample", "prompts")}
    r = max(recs, key=lambda x: len(segment(x["text"])))
    spans = segment(r["text"])
    from dasd.engines.base import ScoreRequest

    means = []
    for k, (s, e) in enumerate(spans):
        ctx = spans[max(0, k - 1)][0]
        res = student.score([ScoreRequest(id="x", messages=prompts[r["prompt_id"]]["messages"], continuation=r["text"][ctx:e])])[0]
        sub = [(0, s - ctx), (s - ctx, e - ctx)] if s > ctx else [(0, e - ctx)]
        means.append(sentence_means(r["text"][ctx:e], sub, res.offsets, res.logprobs)[0][-1])
    means = [m for m in means if m is not None]
    assert r["naturalness"]["local"] == pytest.approx(sum(means) / len(means))
    assert r["naturalness"]["global"] == pytest.approx(sum(r["student"]["logprobs"]) / len(r["student"]["logprobs"]))
    das = run_select(lcfg)
    for method in ("global_naturalness", "local_naturalness"):
        out = run_select(load_config(None, [*local_over, f"select.method={method}"]))
        assert {p: out[p]["selected"]["n"] for p in out} == {p: das[p]["selected"]["n"] for p in das}
        assert "random_same_budget" in out["T0.6"]
        key = method.split("_")[0]
        best = {}
        for c in store.read("score", "pool-T0.6"):
            best[c["prompt_id"]] = max(best.get(c["prompt_id"], -1e9), c["naturalness"][key])
        for s in store.read("select", "selected-T0.6"):
            assert s["naturalness"][key] == best[s["prompt_id"]]


def test_local_naturalness_asked_for_after_scoring_is_added_to_every_record(scored_run, tmp_path):
    """select.method=local_naturalness on a run scored without the local pass: select says to run
    score (it raised a ValueError traceback), and score then scores every record again with it (it
    resumed by id, kept the records without it and finished 'complete', so select still failed)."""
    import shutil

    from dasd.errors import DasdError

    cfg, overrides, _, _ = scored_run
    over = [*(o for o in overrides if not o.startswith("run_dir=")), f"run_dir={tmp_path / 'run'}",
            "select.method=local_naturalness"]
    lcfg = load_config(None, over)
    shutil.copytree(cfg.run_dir, lcfg.run_dir)
    with pytest.raises(DasdError, match=r"select.method local_naturalness needs .* run `dasd score` with the same "
                                        r"settings first"):
        run_select(lcfg)
    store = RunStore.open(lcfg.run_dir)
    n = {p: store.count("score", f"pool-{p}") for p in ("T0.6", "T1")}
    assert run_score(lcfg) == {p: {"scored": n[p], "rejected": 0, "new": n[p]} for p in n}  # all scored again
    recs = [r for p in n for r in store.read("score", f"pool-{p}")]
    assert len(recs) == sum(n.values()) and all("local" in r["naturalness"] for r in recs)
    out = run_select(lcfg)
    assert {p: out[p]["selected"]["n"] for p in out} == {"T0.6": 3, "T1": 3}  # m=1 per prompt
    assert run_score(lcfg) == {p: {"scored": n[p], "rejected": 0, "new": n[p]} for p in n}  # up to date now


def test_finished_stages_are_not_redone_until_inputs_change(scored_run):
    cfg, _, funnel, counts = scored_run
    summary = run_select(cfg)
    root = RunStore.open(cfg.run_dir).root
    stamps = {p: p.stat().st_mtime_ns for st in ("filter", "score", "select") for p in (root / st).iterdir()}
    assert run_filter(cfg) == funnel and run_score(cfg) == counts and run_select(cfg) == summary
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing rewritten
    # a new sample in a pool changes the filter's inputs: it runs again, and so do score and select
    store = RunStore.open(cfg.run_dir)
    extra = {k: v for k, v in next(store.read("sample", "pool-T1")).items() if k != "_ref"}
    with store.writer("sample", "pool-T1") as w:
        w.add({**extra, "id": "added-sample"})
    again = run_filter(cfg)
    assert again["T1"]["in"] == funnel["T1"]["in"] + 1 and again["T1"]["out"] == funnel["T1"]["out"] + 1  # a copy of a kept one
    assert run_score(cfg)["T1"]["scored"] == counts["T1"]["scored"] + 1
    assert "added-sample" in {s["id"] for s in RunStore.open(cfg.run_dir).read("score", "pool-T1")}
    assert sum(run_select(cfg)["T1"][k]["n"] for k in ("selected", "rejected")) == counts["T1"]["scored"] + 1


def test_select_drops_the_outputs_of_a_pool_that_is_gone(scored_run, tmp_path):
    """Selection rewrites its outputs whole: a pool no longer scored (its temperature left the
    config, its score output removed) leaves no selected, rejected or training examples behind."""
    import shutil

    cfg, overrides, _, _ = scored_run
    run_dir = tmp_path / "run"
    shutil.copytree(cfg.run_dir, run_dir)
    cfg2 = load_config(None, [*(o for o in overrides if not o.startswith("run_dir=")), f"run_dir={run_dir}"])
    run_select(cfg2)
    store = RunStore.open(run_dir)
    assert {"selected-T1", "rejected-T1", "train-T1"} <= set(store.outputs("select"))
    store.remove_output("score", "pool-T1")
    summary = run_select(cfg2)
    assert set(summary) == {"T0.6"}
    assert not [n for n in RunStore.open(run_dir).outputs("select") if n.endswith("-T1")]


def test_length_rule_counter_gives_the_tokenizer_verdict():
    """Below the byte bound the counter skips the tokenizer; the `length` verdict is the tokenizer's."""
    from transformers import AutoTokenizer

    from dasd.runs import resolve_model
    from dasd.stages.filter import student_token_counter

    cfg = load_config(None, ["student.model=toy:student", "filter.max_student_tokens=40"])
    count = student_token_counter(cfg)
    tok = AutoTokenizer.from_pretrained(resolve_model("toy:student"))
    for text in ["short", "日本語 " * 3, "x" * 39, "x" * 45, "word " * 30, "日本語テキスト" * 10, "é" * 19]:
        real = len(tok.encode(text, add_special_tokens=False))
        assert real <= len(text.encode("utf-8")) + 1
        assert (count(text) > 40) == (real > 40), text


def test_pools_of_different_question_sets_flow_through(tmp_path, tiny_lm_dir, tiny_lm_dir_other_vocab):
    # sample.prompts_per_temperature=[1, 3]: T0.6 holds one question, T1 all three; filter, score and
    # select work per pool and keep each pool's own questions
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Say {i}."}) + "\n" for i in range(3)), encoding="utf-8")
    cfg = load_config(None, [
        f"run_dir={tmp_path / 'run'}", f"data.prompts={prompts}", f"teacher.model={tiny_lm_dir}",
        f"student.model={tiny_lm_dir_other_vocab}", "sample.k=2", "sample.max_tokens=12",
        "sample.prompts_per_temperature=[1, 3]", *RELAXED,
    ])
    sampled = run_sample(cfg)
    assert {p: (c["samples"], c["prompts"]) for p, c in sampled.items()} == {"T0.6": (2, 1), "T1": (6, 3)}
    funnel = run_filter(cfg)
    assert (funnel["T0.6"]["in"], funnel["T1"]["in"]) == (2, 6)
    scored = run_score(cfg)
    assert all(scored[p]["scored"] == funnel[p]["out"] for p in ("T0.6", "T1"))
    run_select(cfg, grade=None)
    store = RunStore.open(cfg.run_dir)
    chosen = {p: [r["prompt_id"] for r in store.read("select", f"selected-{p}")] for p in ("T0.6", "T1")}
    kept = {p: {r["prompt_id"] for r in store.read("filter", f"kept-{p}")} for p in ("T0.6", "T1")}
    assert all(sorted(chosen[p]) == sorted(kept[p]) for p in chosen)  # m=1: one per question the pool kept
    assert (len(chosen["T0.6"]), len(chosen["T1"])) == (1, 3)
    assert set(chosen["T0.6"]) <= {r["prompt_id"] for r in store.read("sample", "pool-T1")}
    assert len(list(store.read("select", "train-T0.6"))) == len(chosen["T0.6"])


def test_score_warns_before_scoring_when_training_would_use_another_tokenizer(tmp_path, tiny_lm_dir,
                                                                              tiny_lm_dir_other_vocab, caplog):
    """`dasd score` (the costly pass) warns in one line when train.base_model tokenises otherwise
    than the student it scores with, before it scores; not when they are the same model."""
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a b c."}]})
                    + "\n", encoding="utf-8")

    def scored(run, *more):
        cfg = load_config(None, [f"run_dir={tmp_path / run}", f"import.source={data}", "import.format=chat",
                                 f"teacher.model={tiny_lm_dir}", f"student.model={tiny_lm_dir_other_vocab}", *RELAXED,
                                 *more])
        run_import(cfg)
        run_filter(cfg)
        caplog.clear()
        assert run_score(cfg)["T1"]["scored"] == 1
        return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "tokenizer" in r.getMessage()]

    (line,) = scored("other", f"train.base_model={tiny_lm_dir}")
    assert line.startswith(f"the student is scored with the tokenizer of {tiny_lm_dir_other_vocab!r}") \
        and f"trained with that of {tiny_lm_dir!r} (train.base_model): their vocabulary" in line
    assert scored("same") == []
