"""benchmarks/scale.py measures what `dasd score` does: its stand-in student is scored on the tokens
training gives each response (``score_as_trained``), or, with ``cut=False``, on the response's own."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import scale  # noqa: E402

from dasd.engines.base import ScoreRequest  # noqa: E402
from dasd.train.encode import response_tokens, score_as_trained  # noqa: E402


@pytest.mark.parametrize("cut", [True, False], ids=["cut", "alone"])
def test_the_stand_in_student_is_scored_as_score_scores_it(cut):
    engine = scale.StandInStudent(cut=cut)
    messages = [{"role": "user", "content": "Problem 1: apply the operations."}]
    texts = [scale.response_text(random.Random(i))[0] for i in range(3)]
    results, alone = score_as_trained(engine, [ScoreRequest(id=str(i), messages=messages, continuation=t)
                                               for i, t in enumerate(texts)])
    assert alone == (0 if cut else 3)
    assert engine.cpu_s > 0  # the engine's own work, which the benchmark leaves out of the stage's
    with_template = scale.StandInStudent()
    for text, rt, r in zip(texts, response_tokens(with_template.tokenizer, [(messages, t) for t in texts]), results):
        own = with_template.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert r.token_ids == (rt.ids if cut else own) and len(r.logprobs) == len(r.token_ids)
        if cut:
            assert r.offsets.tolist() == rt.offsets.tolist()
