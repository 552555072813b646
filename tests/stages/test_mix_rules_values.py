"""Mixed-policy rules on exact values: the mutants of rules/mixing.py that survived tests/stages/test_mix.py
(docs/testing.md, "Mutation testing") are killed here."""

from __future__ import annotations

from dasd.rules.mixing import MixConfig, continuation_verdict, has_reference, prompt_record_id, rollout_id

PREFIX, CONT = "<think>\nAdd 3 and 4.", " That is 7.\n</think>\nThe answer is \\boxed{7}."


def test_a_reference_is_tests_choices_or_a_non_empty_answer():
    assert has_reference({"tests": {"inputs": ["1"], "outputs": ["1"]}})
    assert has_reference({"choices": ["A", "B"]})
    assert has_reference({"answer": "7"}) and has_reference({"answer": 0})
    assert not has_reference({}) and not has_reference({"answer": ""}) and not has_reference({"tests": {}, "choices": []})


def test_verdict_details():
    cfg = MixConfig()
    q = {"id": "q", "answer": "8"}
    assert continuation_verdict(q, PREFIX, CONT, "stop", cfg, lambda p, t: False) == ("incorrect", "graded wrong")
    assert continuation_verdict(q, PREFIX, CONT, "stop", cfg, lambda p, t: True) == ("kept", "")
    # a question with choices only is graded too
    assert continuation_verdict({"id": "c", "choices": ["7", "8"]}, PREFIX, CONT, "stop", cfg, lambda p, t: False)[0] == "incorrect"


def test_rollout_id_changes_with_everything_that_changes_the_outcome():
    cfg = MixConfig()
    base = rollout_id("p1", "student-a", "teacher-a", cfg)
    assert base == rollout_id("p1", "student-a", "teacher-a", MixConfig())  # a content hash: reproducible
    changed = [
        rollout_id("p2", "student-a", "teacher-a", cfg),
        rollout_id("p1", "student-b", "teacher-a", cfg),
        rollout_id("p1", "student-a", "teacher-b", cfg),
        rollout_id("p1", "student-a", "teacher-a", cfg.model_copy(update={"cut_low": 0.4})),
        rollout_id("p1", "student-a", "teacher-a", cfg.model_copy(update={"teacher_temperature": 0.7})),
    ]
    assert base not in changed and len(set(changed)) == len(changed)
    # how many questions are drawn and how they are batched do not change one question's attempt
    same = cfg.model_copy(update={"n_questions": cfg.n_questions + 5, "batch_questions": cfg.batch_questions + 3})
    assert rollout_id("p1", "student-a", "teacher-a", same) == base


def test_prompt_record_id_changes_with_any_field_of_the_record():
    q = {"id": "q", "messages": [{"role": "user", "content": "3 + 4?"}], "answer": "7", "domain": "math"}
    base = prompt_record_id(q)
    assert base == prompt_record_id(dict(reversed(list(q.items()))))  # a content hash, key order aside
    changed = [prompt_record_id({**q, "answer": "8"}), prompt_record_id({**q, "domain": "toy"}),
               prompt_record_id({**q, "choices": ["7", "8"]}), prompt_record_id({**q, "meta": {"checked": True}})]
    assert base not in changed and len(set(changed)) == len(changed)
