"""`dasd score` after filter wrote a pool's kept output again: the scores of the samples it still
keeps unchanged are kept (re-linked to their new kept rows), only new or changed samples are
scored, and the output equals a fresh run's. Before, the whole pool was scored again."""

from __future__ import annotations

import json
import shutil

import pytest

from dasd.columnar import plain
from dasd.config import load_config
from dasd.runs import open_engine
from dasd.stages.filter import run_filter
from dasd.stages.import_ import run_import
from dasd.stages.sample import run_sample
from dasd.stages.score import run_score
from dasd.stages.select import run_select
from dasd.store import RunStore
from graded_runs import graded_toy_run

# each response scored in a batch of its own: its log-probs do not depend on which others are
# scored with it (padding moves them by ~1e-7), so a fresh run's equal those kept exactly
ALONE = ["student.score_batch_tokens=1", "teacher.score_batch_tokens=1"]
RELAXED = ["filter.require_structure=false", "filter.drop_cutoff=false", "filter.repetition.enabled=false"]


def scored(run, name: str = "pool-T1") -> dict[str, dict]:
    """The records of a scored output by id, as plain values (no positions)."""
    return {r["id"]: plain(r) for r in RunStore.open(run).read("score", name)}


def ids_on_disk(run, stage: str, prefix: str) -> list[str]:
    """Every id in the output's shards, duplicates included."""
    import pyarrow.parquet as pq

    return [i for p in sorted((run / stage).glob(f"{prefix}-*.parquet")) for i in pq.read_table(p, columns=["id"])["id"].to_pylist()]


def test_a_corrected_answer_that_drops_kept_samples_scores_nothing_again(tmp_path, counting_scorer, capsys):
    """A prompt's answer corrected: `dasd filter` drops its kept samples, making the pool's kept
    output again (new shards). `dasd score` keeps the scores of every other sample and asks the
    student for none; its output and select's equal a fresh run's on the corrected prompts. A
    score killed after writing the re-linked shards, before the old ones went, finishes the same."""
    from dasd.prompts import toy_prompts

    write, cfg = graded_toy_run(tmp_path, "sample.k=3", "sample.temperatures=[1.0]", *ALONE)

    rows = toy_prompts(8, 0, "train", None)
    write(rows)
    teacher = open_engine(cfg("run").teacher)
    run_sample(cfg("run"), engine=teacher)
    run_filter(cfg("run"))
    student = counting_scorer(open_engine(cfg("run").student))
    first = run_score(cfg("run"), student=student)
    before = scored(tmp_path / "run")
    assert student.requests == len(before) == first["T1"]["scored"] > 3
    store = RunStore.open(tmp_path / "run")
    by_prompt = {}
    for s in before.values():
        by_prompt.setdefault(s["prompt_id"], []).append(s["id"])
    right = next(p for p in rows if by_prompt.get(p["id"]))  # a prompt with kept samples: the new answer fails them
    write([{**p, "answer": str(int(p["answer"]) + 1000)} if p is right else p for p in rows])
    run_sample(cfg("run"), engine=teacher)
    old_kept = [p.name for p in (tmp_path / "run" / "filter").glob("kept-*")]
    run_filter(cfg("run"))
    assert not set(old_kept) & {p.name for p in (tmp_path / "run" / "filter").glob("kept-*")}  # kept made again
    store = RunStore.open(tmp_path / "run")
    kept = store.ids("filter", "kept-T1")
    assert kept == set(before) - set(by_prompt[right["id"]])

    killed = tmp_path / "killed"
    shutil.copytree(tmp_path / "run", killed, ignore=shutil.ignore_patterns(".lock"))

    capsys.readouterr()
    student.requests = 0
    again = run_score(cfg("run"), student=student)
    assert student.requests == 0  # no sample scored again
    assert again["T1"]["scored"] == len(kept)
    assert (f"filter/kept-T1, sample/prompts lost records since this stage last ran: its 1 output(s) made from them "
            f"keep the {len(kept)} record(s) whose input is there unchanged; {len(by_prompt[right['id']])} dropped"
            in capsys.readouterr().err)
    got = scored(tmp_path / "run")
    assert got == {k: v for k, v in before.items() if k in kept}  # the same scores, nothing recomputed

    run_sample(cfg("fresh"), engine=teacher)  # the corrected prompts from the start
    run_filter(cfg("fresh"))
    fresh_counts = run_score(cfg("fresh"), student=student)
    relinked = {"T1": {**fresh_counts["T1"], "new": 0}}  # what score holds is a fresh run's; nothing judged again
    assert got == scored(tmp_path / "fresh") and again == relinked
    assert run_select(cfg("run")) == run_select(cfg("fresh"))
    for name in ("selected-T1", "rejected-T1", "train-T1"):
        assert ([plain(r) for r in RunStore.open(tmp_path / "run").read("select", name)]
                == [plain(r) for r in RunStore.open(tmp_path / "fresh").read("select", name)]), name

    # killed between writing the re-linked shards and deleting the old ones: both are on disk
    def kill(self, stage, name, paths):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RunStore, "remove_shards", kill)
        with pytest.raises(KeyboardInterrupt):
            run_score(cfg("killed"), student=student)
    assert len(ids_on_disk(killed, "score", "pool-T1")) == len(before) + len(kept)
    student.requests = 0
    assert run_score(cfg("killed"), student=student) == relinked and student.requests == 0
    assert scored(killed) == got and sorted(ids_on_disk(killed, "score", "pool-T1")) == sorted(kept)


def test_an_imported_response_whose_text_changed_is_the_only_one_scored_again(tmp_path, tiny_lm_dir, tiny_lm_dir_other_vocab,
                                                                            counting_scorer):
    """Chat rows imported without teacher log-probs (the teacher re-scores them), one too long for
    the student's context (quarantined). One row's response is corrected and the file imported
    again: the pool's shards are replaced under the same ids, filter makes its kept output again,
    and score asks the teacher and the student about that response only; the quarantined one
    stays quarantined without being asked again, and the output equals a fresh import's."""
    src = tmp_path / "chat.jsonl"

    def write(texts):
        src.write_text("".join(json.dumps({"id": f"q{i}", "messages": [{"role": "user", "content": f"Say {i}."},
                                                                        {"role": "assistant", "content": t}]}) + "\n"
                               for i, t in enumerate(texts)), encoding="utf-8")

    def cfg(run):
        return load_config(None, [f"run_dir={tmp_path / run}", f"import.source={src}", "import.format=chat",
                                  f"teacher.model={tiny_lm_dir}", f"student.model={tiny_lm_dir_other_vocab}",
                                  "student.max_model_len=96", "filter.max_student_tokens=null", *RELAXED, *ALONE])

    texts = ["<think>a b c.</think> Done.", "<think>3 + 4 = 7.</think> 7.", "<think>5 - 2 = 3.</think> So 3.",
             "<think>" + "Compute 3 + 4 then times 2. " * 12 + "</think> 14."]
    write(texts)
    run_import(cfg("run"))
    run_filter(cfg("run"))
    teacher, student = counting_scorer(open_engine(cfg("run").teacher)), counting_scorer(open_engine(cfg("run").student))
    assert run_score(cfg("run"), student=student, teacher=teacher)["T1"] == {"scored": 3, "rejected": 1, "too_long": 1,
                                                                           "new": 4}
    before = scored(tmp_path / "run")
    changed = next(k for k, v in before.items() if v["text"] == texts[1])

    texts[1] = "<think>3 + 4 = 7, twice 14.</think> 14."
    write(texts)
    run_import(cfg("run"))  # another source: the pool's imported shards are replaced, under the same ids
    run_filter(cfg("run"))
    teacher.requests = student.requests = 0
    # the changed sample is scored; the quarantined one is kept, and counted: the counts say what score holds
    assert run_score(cfg("run"), student=student, teacher=teacher)["T1"] == {"scored": 3, "rejected": 1, "too_long": 1,
                                                                           "new": 1}
    assert (teacher.requests, student.requests) == (1, 1)
    got = scored(tmp_path / "run")
    assert set(got) == set(before) and got[changed]["text"] == texts[1]
    for k in set(got) - {changed}:  # the same scores; the sample's fields are the new import's (its key)
        assert {f for f in got[k] if got[k][f] != before[k].get(f)} == {"import_key"}, k
    rejects = list(RunStore.open(tmp_path / "run").read("score", "rejects"))
    assert len(rejects) == 1 and rejects[0]["too_long"]

    run_import(cfg("fresh"))
    run_filter(cfg("fresh"))
    run_score(cfg("fresh"))
    assert got == scored(tmp_path / "fresh")
    fresh_rejects = list(RunStore.open(tmp_path / "fresh").read("score", "rejects"))
    assert rejects == fresh_rejects
