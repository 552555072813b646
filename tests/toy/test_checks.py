"""The toy world's checks score the pool as `dasd score` does: on the tokens training gives each response."""

from __future__ import annotations

import pytest
import torch

from dasd.engines.base import ScoreRequest
from dasd.engines.config import EngineConfig
from dasd.engines.hf import HFEngine
from dasd.rules.das import DASConfig, score_sample
from dasd.toy import world
from dasd.toy.build import default_toy_dir
from dasd.toy.checks import sample_pool, score_pool
from dasd.train.encode import encode_example
from train.test_encode import QWEN_LIKE  # re-lays <think>R</think>A as <think>\nR\n</think>\n\nA


@pytest.fixture(scope="module")
def toy_pool():
    """Six finished samples of the shipped toy teacher (three dev problems, two each at T=1.0), with
    its raw log-probs: ``<think>\nR\n</think>\nA``."""
    d = default_toy_dir()
    teacher = HFEngine(EngineConfig(model=str(d / "teacher"), device="cpu", batch_size=8))
    pool = sample_pool(teacher, world.make_problems(3, 0, "dev"), 2, (1.0,), 400, seed=0)
    assert len(pool) == 6 and all(s["finish_reason"] == "stop" and "\n</think>\nThe answer is" in s["text"] for s in pool)
    return pool


def _student(template: str | None) -> HFEngine:
    student = HFEngine(EngineConfig(model=str(default_toy_dir() / "student"), device="cpu", batch_size=8))
    if template:
        student.tokenizer.chat_template = template
    return student


def _training_logprobs(student: HFEngine, sample: dict) -> list[float]:
    """log p of the response's tokens where training has them: the loss tokens of its training
    encoding but the closing <|im_end|>, each after exactly the ids before it."""
    enc = encode_example(student.tokenizer, {"messages": [*sample["messages"], {"role": "assistant", "content": sample["text"]}]})
    held = [t for t, m in enumerate(enc.loss_mask) if m]
    assert student.tokenizer.convert_ids_to_tokens(enc.input_ids[held[-1]]) == "<|im_end|>"
    with torch.no_grad():
        logits = student.model(input_ids=torch.tensor([enc.input_ids])).logits.float()[0]
    logp = torch.log_softmax(logits, -1)
    return [logp[t - 1, enc.input_ids[t]].item() for t in held[:-1]]


def _alone(student: HFEngine, samples: list[dict], cfg: DASConfig) -> list[dict]:
    """What the checks did before: each response scored on its own tokens after the generation prompt."""
    results = student.score([ScoreRequest(id=s["id"], messages=s["messages"], continuation=s["text"]) for s in samples])
    return [score_sample(s, r.offsets, r.logprobs, cfg) for s, r in zip(samples, results)]


def test_the_checks_score_the_toy_world_as_before(toy_pool):
    """On the toy world (byte-level BPE, ChatML) a response alone and as trained are the same tokens:
    the checks' student log-probs, sentence types and DAS figures are those of scoring it alone, and
    each log-prob is that of its training token."""
    cfg = DASConfig()
    student = _student(None)
    scored, before = score_pool(student, toy_pool, cfg), _alone(student, toy_pool, cfg)
    for s, new, old in zip(toy_pool, scored, before):
        assert new["student"]["offsets"].tolist() == old["student"]["offsets"].tolist()
        assert new["student"]["logprobs"].tolist() == pytest.approx(old["student"]["logprobs"].tolist(), abs=1e-5)
        assert new["student"]["logprobs"].tolist() == pytest.approx(_training_logprobs(student, s), abs=2e-4)
        assert [r["type"] for r in new["sentences"]] == [r["type"] for r in old["sentences"]]
        assert new["das"] == pytest.approx(old["das"], abs=1e-6)


def test_the_checks_score_as_trained_where_the_template_relays_whitespace(toy_pool):
    """With a student template that re-lays the whitespace around </think>, the checks score the
    tokens training gives the response (what `dasd score` does), not its own tokens: before, they
    scored the response's "\\n" after </think> where training has "\\n\\n"."""
    cfg = DASConfig()
    student = _student(QWEN_LIKE)
    scored, before = score_pool(student, toy_pool, cfg), _alone(student, toy_pool, cfg)
    for s, new, old in zip(toy_pool, scored, before):
        want = _training_logprobs(student, s)
        assert new["student"]["logprobs"].tolist() == pytest.approx(want, abs=2e-4)
        assert old["student"]["logprobs"].tolist() != pytest.approx(want, abs=2e-4)
        assert new["student"]["offsets"][-1].tolist() == [len(s["text"]) - 1, len(s["text"])]
