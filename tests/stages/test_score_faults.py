"""`dasd score` under faults: a response longer than the student's (or the re-scoring teacher's)
context is quarantined and the rest scored, through the openai engine against a real server on
loopback and through the in-process hf engine; a rerun does not ask again until the settings change."""

from __future__ import annotations

import json

import pytest

from dasd.config import load_config
from dasd.engines import EngineConfig, make_engine
from dasd.engines.server import EngineServer, ServerThread
from dasd.stages.filter import run_filter
from dasd.stages.sample import run_sample
from dasd.stages.score import run_score
from dasd.store import RunStore

RELAXED = ["filter.require_structure=false", "filter.drop_cutoff=false", "filter.repetition.enabled=false"]
LONG = "Compute 3 + 4 then times 2. " * 8


@pytest.fixture(scope="module")
def sampled(tmp_path_factory, tiny_lm_dir, tiny_lm_dir_other_vocab):
    """A run sampled and filtered: 3 short prompts and a long one, k=2, one pool; and the student
    context that the short prompts' responses fit and the long one's do not."""
    tmp = tmp_path_factory.mktemp("score_faults")
    prompts = tmp / "prompts.jsonl"
    rows = [{"id": f"p{i}", "prompt": f"Say {i}."} for i in range(3)] + [{"id": "long", "prompt": LONG}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    base = [f"data.prompts={prompts}", f"teacher.model={tiny_lm_dir}", f"student.model={tiny_lm_dir_other_vocab}",
            "sample.k=2", "sample.max_tokens=12", "sample.temperatures=[1.0]", *RELAXED]
    cfg = load_config(None, [f"run_dir={tmp / 'run'}", *base])
    run_sample(cfg)
    assert run_filter(cfg)["T1"]["out"] == 8
    student = make_engine(EngineConfig(model=tiny_lm_dir_other_vocab, device="cpu"))
    store = RunStore.open(cfg.run_dir)
    prompts_of = {p["id"]: p for p in store.read("sample", "prompts")}
    sizes = {s["id"]: (s["prompt_id"], len(student.context_ids(prompts_of[s["prompt_id"]]["messages"], None, s["id"]))
                       + len(student.encode(s["text"]))) for s in store.read("filter", "kept-T1")}
    longest_short = max(n for pid, n in sizes.values() if pid != "long")
    assert min(n for pid, n in sizes.values() if pid == "long") > longest_short
    return tmp, base, student, sizes, longest_short


def _copy_run(tmp, name):
    import shutil

    shutil.copytree(tmp / "run", tmp / name, ignore=shutil.ignore_patterns("score", ".lock"))
    return tmp / name


def _reopen_stage(run):
    """As if the stage had been interrupted: its manifest entry says it did not finish."""
    store = RunStore(run)
    store.manifest["stages"]["score"]["complete"] = False
    store.save_manifest()


def test_a_response_the_server_refuses_as_too_long_is_quarantined_and_the_rest_scored(sampled, tiny_lm_dir_other_vocab, capsys):
    tmp, base, student, sizes, limit = sampled
    run = _copy_run(tmp, "run-openai")
    # the server counts the prompt + the one token vLLM's prompt_logprobs asks for (max_tokens=1)
    short = make_engine(EngineConfig(model=tiny_lm_dir_other_vocab, device="cpu", max_model_len=limit + 1))
    server = EngineServer(short, served_name="student")
    with ServerThread(server) as srv:
        cfg = load_config(None, [f"run_dir={run}", *base, "student.kind=openai", "student.model=student",
                                 f"student.tokenizer={tiny_lm_dir_other_vocab}", f"student.openai.base_urls=[{srv.base_url}]",
                                 "student.openai.logprob_mode=raw", "score.batch=8"])
        counts = run_score(cfg)
        assert counts["T1"] == {"scored": 6, "rejected": 2, "too_long": 2, "new": 8}
        store = RunStore.open(run)
        rejects = list(store.read("score", "rejects"))
        assert {r["id"] for r in rejects} == {sid for sid, (pid, _) in sizes.items() if pid == "long"}
        for r in rejects:
            assert r["reason"].startswith("prompt + response longer than the student's context: score request")
            assert f"max_model_len is {limit + 1}" in r["reason"]  # the server's own words
        assert "2 response(s) longer than the student's or teacher's context" in capsys.readouterr().err
        # the others: the same values as the in-process student without a limit
        _assert_scored_as_in_process(store, student, set(sizes) - {r["id"] for r in rejects})
        served = server.stats["requests"]
        _reopen_stage(run)  # a rerun of the stage does not ask the server again
        assert run_score(cfg)["T1"] == {"scored": 6, "rejected": 2, "too_long": 2, "new": 0}  # what the outputs hold
        assert server.stats["requests"] == served
        assert RunStore.open(run).count("score", "rejects") == 2


def _assert_scored_as_in_process(store, student, ids):
    """The scored records are ``ids``, with the log-probs the in-process student (no limit) gives."""
    from dasd.engines.base import ScoreRequest

    prompts = {p["id"]: p for p in store.read("sample", "prompts")}
    reqs = [ScoreRequest(id=s["id"], messages=prompts[s["prompt_id"]]["messages"], continuation=s["text"])
            for s in store.read("filter", "kept-T1") if s["id"] in ids]
    want = {r.request_id: r.logprobs for r in student.score(reqs)}
    got = {s["id"]: list(s["student"]["logprobs"]) for s in store.read("score", "pool-T1")}
    assert set(got) == set(want) == ids
    for sid in got:
        assert got[sid] == pytest.approx(want[sid], abs=1e-4)


def test_a_response_longer_than_the_in_process_students_context_is_quarantined(sampled, tiny_lm_dir_other_vocab):
    """The hf engine refuses a whole call for one request too long: the stage splits the call until
    the refused one stands alone, scores the others as before, and judges it again once the
    student's context changed (here: ``student.max_model_len`` raised)."""
    tmp, base, student, sizes, limit = sampled
    run = _copy_run(tmp, "run-hf")
    cfg = load_config(None, [f"run_dir={run}", *base, f"student.max_model_len={limit}", "score.batch=8"])
    assert run_score(cfg)["T1"] == {"scored": 6, "rejected": 2, "too_long": 2, "new": 8}
    store = RunStore.open(run)
    rejects = list(store.read("score", "rejects"))
    long_ids = {sid for sid, (pid, _) in sizes.items() if pid == "long"}
    assert {r["id"] for r in rejects} == long_ids
    for r in rejects:
        n = sizes[r["id"]][1]
        assert r["reason"] == (f"prompt + response longer than the student's context: request {r['id']!r}: "
                               f"context + continuation is {n} tokens, max_model_len is {limit}")
    _assert_scored_as_in_process(store, student, set(sizes) - long_ids)
    _reopen_stage(run)
    assert run_score(cfg)["T1"] == {"scored": 6, "rejected": 2, "too_long": 2, "new": 0}  # not asked again: nothing new
    wider = load_config(None, [f"run_dir={run}", *base, f"student.max_model_len={max(n for _, n in sizes.values())}",
                               "score.batch=8"])
    assert run_score(wider)["T1"] == {"scored": 8, "rejected": 0, "new": 2}
    assert RunStore.open(run).count("score", "rejects") == 0
    _assert_scored_as_in_process(RunStore.open(run), student, set(sizes))


def test_a_response_quarantined_under_rescore_never_is_scored_once_rescoring_is_allowed(tmp_path, tiny_lm_dir,
                                                                                       tiny_lm_dir_other_vocab):
    """``score.rescore_teacher=never`` quarantines a response without teacher log-probs; set back to
    ``auto`` on the same run, the teacher re-scores it and it is scored (it was skipped for good)."""
    from dasd.stages.import_ import run_import

    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "q"},
                                             {"role": "assistant", "content": "<think>a b c.</think> Done."}]}) + "\n",
                    encoding="utf-8")
    base = [f"run_dir={tmp_path / 'run'}", f"import.source={data}", "import.format=chat", f"teacher.model={tiny_lm_dir}",
            f"student.model={tiny_lm_dir_other_vocab}", *RELAXED]
    never = load_config(None, [*base, "score.rescore_teacher=never"])
    run_import(never)
    run_filter(never)
    assert run_score(never)["T1"] == {"scored": 0, "rejected": 1, "new": 1}
    assert run_score(load_config(None, base))["T1"] == {"scored": 1, "rejected": 0, "new": 1}
    store = RunStore.open(tmp_path / "run")
    assert store.count("score", "rejects") == 0
    assert next(store.read("score", "pool-T1"))["teacher"]["rescored"]


@pytest.mark.parametrize("verb", ["filter", "score", "select", "mix", "analyze"])
def test_a_stage_run_where_there_is_no_run_leaves_nothing_behind(tmp_path, verb):
    """`dasd filter`, `score`, `select`, `mix`, `analyze` on a run directory that does not exist (a typo, a wrong working
    directory): one line saying what to run first, exit 2, and no directory created."""
    import subprocess
    import sys

    run = tmp_path / "nowhere" / "run"
    p = subprocess.run([sys.executable, "-m", "dasd", verb, f"run_dir={run}"], capture_output=True, text=True,
                       env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines()[-1] == (f"dasd: error: {run}: no dasd run here, so `dasd {verb}` has nothing "
                                                 "to read; run `dasd sample` (or `dasd import`) first, or `dasd run` "
                                                 "for the whole pipeline")
    assert not (tmp_path / "nowhere").exists()
    run.mkdir(parents=True)  # an empty directory made beforehand stays empty
    p = subprocess.run([sys.executable, "-m", "dasd", verb, f"run_dir={run}"], capture_output=True, text=True)
    assert p.returncode == 2 and "no dasd run here" in p.stderr and not any(run.iterdir())


class _Crash(Exception):
    pass


class _StudentThatDies:
    """The real student engine, recording the ids it is asked to score; it dies (as a stop or a crash
    would end the stage) on the first call that holds one of ``die_on``."""

    def __init__(self, engine, die_on=()):
        self.engine, self.die_on, self.asked = engine, set(die_on), []

    def score(self, reqs):
        if self.die_on & {r.id for r in reqs}:
            raise _Crash()
        self.asked.extend(r.id for r in reqs)
        return self.engine.score(reqs)

    def __getattr__(self, name):
        return getattr(self.engine, name)


def test_a_stage_stopped_mid_pool_keeps_the_quarantined_and_does_not_judge_them_again(tmp_path, tiny_lm_dir,
                                                                                     tiny_lm_dir_other_vocab):
    """Quarantine records were held until the end of their pool, so a stage stopped (SIGTERM, Ctrl-C, an
    error) after some were judged lost them while keeping the scored ones: the rerun asked the engine
    about them again. They are written as they are judged, like the scored records."""
    prompts = tmp_path / "prompts.jsonl"  # the long prompt first: its responses are judged in the first batch
    rows = [{"id": "long", "prompt": LONG}] + [{"id": f"p{i}", "prompt": f"Say {i}."} for i in range(3)]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    base = [f"data.prompts={prompts}", f"teacher.model={tiny_lm_dir}", f"student.model={tiny_lm_dir_other_vocab}",
            "sample.k=2", "sample.max_tokens=12", "sample.temperatures=[1.0]", "score.batch=2", *RELAXED]
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", *base])
    run_sample(cfg)
    run_filter(cfg)
    store = RunStore.open(cfg.run_dir)
    order = [(s["id"], s["prompt_id"]) for s in store.read("filter", "kept-T1")]
    assert [p for _, p in order[:2]] == ["long", "long"] and len(order) == 8
    student = make_engine(EngineConfig(model=tiny_lm_dir_other_vocab, device="cpu"))
    prompts_of = {p["id"]: p for p in store.read("sample", "prompts")}
    limit = max(len(student.context_ids(prompts_of[p]["messages"], None, i)) + len(student.encode(s["text"]))
                for s in store.read("filter", "kept-T1") for i, p in [(s["id"], s["prompt_id"])] if p != "long")
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", *base, f"student.max_model_len={limit}"])
    bounded = make_engine(EngineConfig(model=tiny_lm_dir_other_vocab, device="cpu", max_model_len=limit))
    with pytest.raises(_Crash):  # dies on the third batch: the first two (the long pair, then two short) are done
        run_score(cfg, student=_StudentThatDies(bounded, die_on={i for i, _ in order[4:6]}))
    store = RunStore.open(cfg.run_dir)
    long_ids = {i for i, _ in order[:2]}
    assert {r["id"] for r in store.read("score", "rejects")} == long_ids
    assert store.ids("score", "pool-T1") == {i for i, _ in order[2:4]}
    again = _StudentThatDies(bounded)
    assert run_score(cfg, student=again)["T1"] == {"scored": 6, "rejected": 2, "too_long": 2, "new": 4}
    assert sorted(again.asked) == sorted(i for i, _ in order[4:])  # nothing judged before is asked again
    assert {r["id"] for r in RunStore.open(cfg.run_dir).read("score", "rejects")} == long_ids
