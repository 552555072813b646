"""The shipped column-world models (toy:column-teacher, toy:column-student): real transformers
checkpoints that load offline, give every digit a token of its own, and carry the world's premise
through the real scoring path: the teacher's column lines are the sentences the student finds far
less likely than the teacher does (DAS's Teacher sentences), so DAS ranks column answers first."""

from __future__ import annotations

import json
import random

import pytest

from dasd.engines.base import ScoreRequest
from dasd.engines.config import EngineConfig
from dasd.engines.hf import HFEngine
from dasd.rules.das import DASConfig, score_sample
from dasd.runs import resolve_model
from dasd.toy.build import _complete, shipped_dir
from dasd.toy.column import make_sum_problems, problem_to_prompt, response

pytestmark = pytest.mark.skipif(not _complete(shipped_dir("column")), reason="column models not shipped in this checkout")


@pytest.fixture(scope="module")
def engines():
    return {role: HFEngine(EngineConfig(model=resolve_model(f"toy:column-{role}"), device="cpu"))
            for role in ("teacher", "student")}


def test_aliases_resolve_to_the_shipped_models_and_digits_are_single_tokens(engines):
    from transformers import AutoTokenizer

    assert resolve_model("toy:column-teacher") == str(shipped_dir("column") / "teacher")
    text = "Step 1: add 47. 8 + 7 = 15, 3 + 4 + 1 = 8, so 38 + 47 = 85."
    for role in ("teacher", "student"):
        tok = AutoTokenizer.from_pretrained(resolve_model(f"toy:column-{role}"))
        pieces = [tok.decode([i]) for i in tok(text, add_special_tokens=False)["input_ids"]]
        assert "".join(pieces) == text
        assert all(len(p.strip()) <= 1 for p in pieces if any(c.isdigit() for c in p)), pieces


def test_manifest_records_a_teacher_that_writes_columns_and_a_student_that_never_does():
    m = json.loads((shipped_dir("column") / "manifest.json").read_text(encoding="utf-8"))
    assert m["world"] == "column" and m["seed"] == 0 and "checks" not in m
    t, s = m["models"]["teacher"], m["models"]["student"]
    assert t["spec"]["column_share"] == 0.4 and s["spec"]["column_share"] == 0.0 and "style_mix" not in t["spec"]
    assert t["eval"]["T=0.6"]["accuracy"] > 0.8 and t["eval"]["T=1.0"]["column_share"] > 0.2
    assert s["eval"]["T=0.6"]["accuracy"] < 0.1 and s["eval"]["T=1.0"]["column_share"] == 0.0


def test_das_types_column_lines_teacher_sentences_and_ranks_column_answers_first(engines):
    """For held-out problems answered both ways by the generating process (no slips), each response
    scored teacher-forced by both models (each with its own tokenizer) and typed by dasd.rules.das:
    column answers are mostly Teacher sentences and one-shot answers almost none, and DAS scores the
    column answer above the one-shot one for every problem."""
    cfg = DASConfig()  # tau = ln 2, the config's default
    rng = random.Random(0)
    problems = make_sum_problems(24, 0, "test")
    samples = []
    for p in problems:
        rec = problem_to_prompt(p)
        for style in ("column", "oneshot"):
            samples.append({"id": f"{rec['id']}/{style}", "style": style, "messages": rec["messages"],
                            "text": response(p, style, rng, 0.0)})
    scored = {}
    for role in ("teacher", "student"):
        results = engines[role].score([ScoreRequest(id=s["id"], messages=s["messages"], continuation=s["text"])
                                       for s in samples])
        scored[role] = {s["id"]: r for s, r in zip(samples, results)}
    typed = []
    for s in samples:
        t = scored["teacher"][s["id"]]
        teacher = {"offsets": [list(o) for o in t.offsets], "logprobs": list(t.logprobs)}
        st = scored["student"][s["id"]]
        typed.append(score_sample({**s, "teacher": teacher}, st.offsets, st.logprobs, cfg))
    share = {style: sum(x["das"]["frac_teacher"] for x in typed if x["style"] == style) / len(problems)
             for style in ("column", "oneshot")}
    # Measured: 0.90 of a column answer's sentences are Teacher sentences, 0.002 of a one-shot one's.
    assert share["column"] > 0.7 and share["oneshot"] < 0.1, share
    wins = sum(typed[2 * i]["das"]["score"] > typed[2 * i + 1]["das"]["score"] for i in range(len(problems)))
    assert wins == len(problems), (wins, share)
