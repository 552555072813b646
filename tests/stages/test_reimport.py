"""A pool imported again (`dasd import` under another ``import_key``) whose records come back the
same: `dasd filter` keeps its verdicts on them and judges none, `dasd score` keeps what it made of
them and asks the student and the teacher about none; a row edited in the source is the only one
judged and asked about. `dasd score` run after the import and before `dasd filter` says so in one
line. Release rows with their -Logprob companion (gpt-oss's ids: o200k + harmony), the toy student
and teacher engines, counted."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from transformers import AutoTokenizer

import dasd.stages.filter as filter_stage
from dasd.columnar import plain
from dasd.config import load_config
from dasd.errors import DasdError
from dasd.runs import open_engine
from dasd.stages.filter import run_filter
from dasd.stages.import_ import run_import
from dasd.stages.score import run_score
from dasd.store import RunStore

ROWS = 7  # u0..u6: u5 has no companion row (the teacher re-scores it), u6 is too long for the student
CONTEXT = ["student.max_model_len=128"]
RELAXED = ["filter.require_structure=false", "filter.drop_cutoff=false", "filter.repetition.enabled=false"]
ALONE = ["student.score_batch_tokens=1", "teacher.score_batch_tokens=1"]  # log-probs independent of batch mates
FIRST = {"scored": ROWS - 1, "rejected": 1, "too_long": 1}  # what score holds for pool T1


def _body(i: int, edited: bool = False) -> str:
    body = f"We need {i} + 4. {i} + 4 = {i + 4}." * (12 if i == 6 else 1)
    return body + (f" Check it: 4 + {i} too." if edited else "")


def _write(folder, tok, order=range(ROWS), body_edited=None, answer_edited=None):
    """The release rows (``data.jsonl``) and their companion (``logprob.jsonl``), both in ``order``;
    the reasoning of row ``body_edited`` edited (its companion row fits it no more), the final answer
    of row ``answer_edited`` (its companion row, of the reasoning only, still fits)."""
    rows, lps = [], []
    for i in order:
        answer = f"\\boxed{{{i + 4}}}" + (" Indeed." if i == answer_edited else "")
        rows.append({"uuid": f"u{i}", "input": f"What is {i} + 4?", "domain": "math", "meta": "{}",
                     "output": f"<think>\n{_body(i, i == body_edited)}\n</think>\n\n{answer}"})
        if i != 5:
            ids = tok.encode(_body(i), add_special_tokens=False)
            lps.append({"sample_uuid": f"u{i}", "token_ids": ids, "logprobs": [-0.25 - 0.01 * k for k in range(len(ids))]})
    for name, recs in (("data.jsonl", rows), ("logprob.jsonl", lps)):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")


def _cfg(run, src, teacher, *more):
    return load_config(None, [f"run_dir={run}", f"import.source={src / 'data.jsonl'}", f"import.logprobs={src / 'logprob.jsonl'}",
                              f"teacher.model={teacher}", "student.model=toy:student", *CONTEXT, *RELAXED, *ALONE, *more])


def _scored(run) -> dict[str, dict]:
    """What score holds for pool T1, by id: its scored records and quarantined ones, as plain values
    (the ``import_key`` of the sample a record was made from left out)."""
    store = RunStore.open(run)
    out = {r["id"]: plain(r) for r in store.read("score", "pool-T1")}
    out.update({r["id"]: r for r in store.read("score", "rejects")})
    return {k: {f: v for f, v in r.items() if f != "import_key"} for k, r in out.items()}


def _judged(run) -> dict[str, int]:
    """How many samples of each pool the last `dasd filter` that ran judged (its manifest's ``judged``)."""
    return RunStore.open(run).stage_info("filter")["judged"]


def _first_run(tmp_path, o200k_harmony_dir, counting_scorer):
    """The release imported, filtered and scored with the toy engines (counted):
    ``(tokenizer, cfg(src, *overrides), score(cfg) -> (counts, student requests, teacher requests),
    what score holds)``."""
    tok = AutoTokenizer.from_pretrained(o200k_harmony_dir)
    toy = load_config(None, ["student.model=toy:student", "teacher.model=toy:teacher", *CONTEXT, *ALONE])
    student, teacher = counting_scorer(open_engine(toy.student)), counting_scorer(open_engine(toy.teacher))

    def cfg(src, *more):
        return _cfg(tmp_path / "run", src, o200k_harmony_dir, *more)

    def score(c):
        student.requests = teacher.requests = 0
        run_filter(c)
        counts = run_score(c, student=student, teacher=teacher)["T1"]
        return counts, student.requests, teacher.requests

    (tmp_path / "src").mkdir()
    _write(tmp_path / "src", tok)
    c = cfg(tmp_path / "src")
    assert run_import(c)["with_logprobs"] == ROWS - 1
    counts, asked_student, asked_teacher = score(c)
    assert counts == {**FIRST, "new": ROWS} and asked_teacher == 1
    assert asked_student > ROWS  # a call refused as too long (u6) is split and asked again, to find it
    return tok, cfg, score, _scored(tmp_path / "run")


@pytest.fixture
def first_run(tmp_path, o200k_harmony_dir, counting_scorer):
    """The run ``_first_run`` makes."""
    return _first_run(tmp_path, o200k_harmony_dir, counting_scorer)


def test_a_reimport_of_the_same_records_asks_the_engines_about_none(tmp_path, first_run, monkeypatch):
    """Each change below gives the pool another import key (the sources' content, a setting, an
    earlier dasd's way of making the key), or none (only the files' stat): the pool is imported
    again, or found up to date, and the same records come back; score asks neither engine about
    any, and holds what it held (the too-long response still quarantined)."""
    import dasd.stages.import_ as import_

    tok, cfg, score, before = first_run
    src, run = tmp_path / "src", tmp_path / "run"

    def key():
        return RunStore.open(run).stage_info("import")["pools"]["T1"]["import_key"]

    def reimported(c, rekeyed: bool, step: str):
        old = key()
        assert run_import(c)["imported"] == ROWS, step
        assert (key() != old) == rekeyed, step
        got = score(c)
        assert got == ({**FIRST, "new": 0 if rekeyed else ROWS}, 0, 0), step  # up to date: the first run's counts
        assert _judged(run) == {"T1": 0 if rekeyed else ROWS}, step  # filter judged none (up to date: the first run's)
        assert _scored(run) == before, step

    for f in src.iterdir():  # the same content under another stat, then at another path
        st = f.stat()
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**10))
    reimported(cfg(src), False, "touched")
    shutil.copytree(src, tmp_path / "copy")
    reimported(cfg(tmp_path / "copy"), False, "copied")

    _write(src, tok, order=[3, 6, 5, 0, 4, 1, 2])
    reimported(cfg(src), True, "rows and companion rows in another order")
    data = (src / "data.jsonl").read_bytes()
    _write(src, tok, order=reversed(range(ROWS)))
    (src / "data.jsonl").write_bytes(data)
    reimported(cfg(src), True, "companion rows in another order")
    # at temperature 1 and top_p 1, auto reads the log-probs as raw: declaring it gives the same records
    reimported(cfg(src, "import.logprob_mode=raw"), True, "logprob_mode declared")

    current = import_.import_config  # the key as an earlier dasd made it (its sources hashed otherwise)
    with monkeypatch.context() as m:
        m.setattr(import_, "import_config", lambda c, digests=None: {**current(c, digests), "sources": "hashed otherwise"})
        reimported(cfg(src), True, "imported by an earlier dasd")
    reimported(cfg(src), True, "imported again after upgrading")


def test_a_reimport_with_one_row_edited_asks_the_engines_about_that_record_only(tmp_path, first_run):
    """One row's final answer edited (its companion row, of the reasoning, still fits): the student
    alone is asked about it. Then another row's reasoning (its companion row fits no more: no teacher
    log-probs): the teacher and the student are asked about it, once each. Nothing else changes."""
    tok, cfg, score, before = first_run
    src, run = tmp_path / "src", tmp_path / "run"
    ids = {r["source_id"]: k for k, r in before.items() if "source_id" in r}  # the scored ones

    _write(src, tok, answer_edited=1)
    assert run_import(cfg(src))["with_logprobs"] == ROWS - 1
    assert score(cfg(src)) == ({**FIRST, "new": 1}, 1, 0)
    assert _judged(run) == {"T1": 1}
    after = _scored(run)
    assert after[ids["u1"]]["text"].endswith("Indeed.") and after[ids["u1"]]["sentences"] != before[ids["u1"]]["sentences"]
    assert {k: r for k, r in after.items() if k != ids["u1"]} == {k: r for k, r in before.items() if k != ids["u1"]}

    before = after
    _write(src, tok, answer_edited=1, body_edited=2)
    counts = run_import(cfg(src))
    assert (counts["with_logprobs"], counts["logprobs_mismatched"], counts["logprobs_missing"]) == (ROWS - 2, 1, 1)
    assert score(cfg(src)) == ({**FIRST, "new": 1}, 1, 1)
    assert _judged(run) == {"T1": 1}
    after = _scored(run)
    assert after[ids["u2"]]["teacher"]["rescored"] and "Check it" in after[ids["u2"]]["text"]
    assert {k: r for k, r in after.items() if k != ids["u2"]} == {k: r for k, r in before.items() if k != ids["u2"]}


def test_a_pool_of_an_earlier_dasds_ids_imported_again_is_scored_again_once(tmp_path, o200k_harmony_dir, counting_scorer,
                                                                            monkeypatch):
    """Records an earlier dasd imported under ids without the pool, scored by this one: imported
    again (the source rewritten in another order), they come back under ids that name the pool
    (docs/released-data.md), so to score, which keeps a record by its input's id and content, they
    are other records: all judged again, to the same scores. Once: imported again after that, none is."""
    import dasd.stages.import_ as import_
    from dasd.records import content_id

    with monkeypatch.context() as m:  # what dasd wrote before ids named the pool
        m.setattr(import_, "imported_id", lambda model, pool, uuid: content_id("import", model, uuid))
        tok, cfg, score, before = _first_run(tmp_path, o200k_harmony_dir, counting_scorer)
    src = tmp_path / "src"
    _write(src, tok, order=reversed(range(ROWS)))
    assert run_import(cfg(src))["imported"] == ROWS
    counts, asked_student, asked_teacher = score(cfg(src))
    assert counts == {**FIRST, "new": ROWS} and asked_student > ROWS and asked_teacher == 1
    assert _judged(tmp_path / "run") == {"T1": ROWS}  # other ids: other samples to filter too
    after = _scored(tmp_path / "run")
    assert not set(after) & set(before)
    by_uuid = {r["source_id"]: r["sentences"] for r in before.values() if "source_id" in r}
    assert {r["source_id"]: r["sentences"] for r in after.values() if "source_id" in r} == by_uuid

    _write(src, tok)
    assert run_import(cfg(src))["imported"] == ROWS
    assert score(cfg(src)) == ({**FIRST, "new": 0}, 0, 0)
    assert _judged(tmp_path / "run") == {"T1": 0}
    assert _scored(tmp_path / "run") == after


def _verdicts(run) -> tuple[list[str], dict[str, dict]]:
    """Filter's verdicts on pool T1: the kept ids in order, and the rejects by id (their ``where`` left out)."""
    store = RunStore.open(run)
    rejects = {r["id"]: {k: v for k, v in r.items() if k != "where"} for r in store.read("filter", "rejects")}
    return [s["id"] for s in store.read("filter", "kept-T1")], rejects


def test_filter_judges_only_the_samples_a_reimport_changed(tmp_path, o200k_harmony_dir, monkeypatch):
    """Filter applied its rules to every sample of a pool imported again, the same ones too. Now a
    sample whose verdict is on disk made from it as it is now (text, teacher signal, ...; not its
    import key) keeps it: the same records in another order are judged by no rule, a row edited is
    the one judged, and the funnel, kept samples and rejects are those of a fresh run; a reject names
    where its sample is now. Another filter setting judges them all again. Counted twice: the rules
    applied (``apply_filters``) and the manifest's ``judged``."""
    tok = AutoTokenizer.from_pretrained(o200k_harmony_dir)
    src, run = tmp_path / "src", tmp_path / "run"
    src.mkdir()
    calls = []
    rules = filter_stage.apply_filters
    monkeypatch.setattr(filter_stage, "apply_filters", lambda s, *a: calls.append(s["source_id"]) or rules(s, *a))

    def filtered(c, judged: list[str]):
        calls.clear()
        assert run_import(c)["imported"] == ROWS
        funnel = run_filter(c)
        assert sorted(calls) == judged and _judged(c.run_dir) == {"T1": len(judged)}
        store = RunStore.open(c.run_dir)
        where = {s["id"]: f"{store.root / 'sample' / s['_ref'].shard} row {s['_ref'].row} sample {s['id']}"
                 for s in store.read("sample", "pool-T1")}
        assert {r["id"]: r["where"] for r in store.read("filter", "rejects")} == \
            {k: where[k] for k in _verdicts(c.run_dir)[1]}
        return funnel

    short = "filter.max_student_tokens=100"  # u6, the long one, is dropped
    _write(src, tok)
    first = filtered(_cfg(run, src, o200k_harmony_dir, short), [f"u{i}" for i in range(ROWS)])
    assert first == {"T1": {"in": ROWS, "dropped": {"length": 1}, "out": ROWS - 1}}
    kept, rejects = _verdicts(run)
    assert [r["rule"] for r in rejects.values()] == ["length"] and len(kept) == ROWS - 1

    _write(src, tok, order=[3, 6, 5, 0, 4, 1, 2])  # another import key, the same records
    assert filtered(_cfg(run, src, o200k_harmony_dir, short), []) == first
    assert _verdicts(run) == (kept, rejects)

    _write(src, tok, answer_edited=1)
    assert filtered(_cfg(run, src, o200k_harmony_dir, short), ["u1"]) == first
    fresh = tmp_path / "fresh"  # the edited source filtered from the start
    assert filtered(_cfg(fresh, src, o200k_harmony_dir, short), [f"u{i}" for i in range(ROWS)]) == first
    assert sorted(_verdicts(run)[0]) == sorted(_verdicts(fresh)[0]) and _verdicts(run)[1] == _verdicts(fresh)[1]

    assert filtered(_cfg(run, src, o200k_harmony_dir), [f"u{i}" for i in range(ROWS)]) == \
        {"T1": {"in": ROWS, "dropped": {}, "out": ROWS}}


def test_score_after_a_reimport_before_filter_says_to_run_filter(tmp_path, first_run):
    """`dasd score` run after a pool was imported again and before `dasd filter` said only that a
    kept row refers to a shard that is missing. Now one line: filter's output is older than the pool
    it read, which pool, and to run `dasd filter`; after it, score asks the engines about nothing."""
    tok, cfg, score, before = first_run
    src, run = tmp_path / "src", tmp_path / "run"
    _write(src, tok, order=reversed(range(ROWS)))
    assert run_import(cfg(src))["imported"] == ROWS
    with pytest.raises(DasdError) as err:
        run_score(cfg(src))
    assert str(err.value) == (
        f"{run}: `dasd filter`'s output is older than what it read (sample/pool-T1 written again since it ran), so "
        "`dasd score` would read out-of-date records; run `dasd filter`, then `dasd score`")
    assert score(cfg(src)) == ({**FIRST, "new": 0}, 0, 0) and _judged(run) == {"T1": 0}
    assert _scored(run) == before
