"""The shipped toy models: real transformers checkpoints that load offline, follow the chat format,
have different vocabularies, and solve the task (teacher) or solve it worse (student)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dasd.toy import world
from dasd.toy.build import SHIPPED_DIR, default_toy_dir, evaluate_accuracy, style_shares

pytestmark = pytest.mark.skipif(
    not (SHIPPED_DIR / "teacher" / "model.safetensors").is_file(), reason="toy models not shipped in this checkout"
)

TEXTS = [
    "<think>\nStep 2: multiply by 2. 7 * 2 = 14, which is 4 modulo 10.\n</think>\nThe answer is \\boxed{4}.",
    "Caf\u00e9 na\u00efve \u65e5\u672c\u8a9e \U0001f600 \\frac{1}{2}\t\n  x",
]


@pytest.fixture(scope="module")
def models():
    d = default_toy_dir()
    assert d == SHIPPED_DIR
    out = {}
    for name in ("teacher", "student"):
        tok = AutoTokenizer.from_pretrained(str(d / name))
        model = AutoModelForCausalLM.from_pretrained(str(d / name), dtype=torch.float32)
        out[name] = (tok, model)
    return out


def test_load_offline_with_chat_template(models):
    p = world.make_problems(1, 0, "test")[0]
    msgs = world.problem_to_prompt(p)["messages"]
    for name, (tok, model) in models.items():
        assert model.config.model_type == "llama"
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        assert text.endswith("<|im_start|>assistant\n") and p.question in text
        assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
        assert model.config.vocab_size == len(tok)
        assert model.generation_config.eos_token_id == tok.eos_token_id


def test_tokenizers_differ_and_round_trip(models):
    t_tok, s_tok = models["teacher"][0], models["student"][0]
    assert t_tok.get_vocab() != s_tok.get_vocab()
    assert 259 < len(s_tok) < len(t_tok)  # its own, smaller BPE
    assert len(t_tok) > 300  # BPE with merges
    for text in TEXTS:
        for tok in (t_tok, s_tok):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert tok.decode(ids) == text
    # on task text the two vocabularies split differently (rare unicode stays bytes in both)
    assert t_tok.tokenize(TEXTS[0]) != s_tok.tokenize(TEXTS[0])


def test_manifest_records_the_build():
    m = json.loads((SHIPPED_DIR / "manifest.json").read_text())
    assert {"seed", "threads", "build_seconds", "models"} <= set(m)
    for name in ("teacher", "student"):
        ev = m["models"][name]["eval"]
        assert set(ev) == {"T=0.6", "T=1.0"}
    t, s = m["models"]["teacher"]["eval"], m["models"]["student"]["eval"]
    assert t["T=0.6"]["accuracy"] >= 0.9
    assert s["T=0.6"]["accuracy"] < t["T=0.6"]["accuracy"]
    checks = m["checks"]["checks"]  # the mechanism checks the build measured (dasd.toy.checks)
    assert checks["teacher_share"]["pass"] and checks["teacher_share"]["gap"] >= 0.10
    assert checks["distillation"]["pass"] and checks["distillation"]["tuned_below_teacher"]


def test_teacher_accurate_student_weaker(models):
    problems = world.make_problems(30, seed=123, split="test")
    t_acc, t_texts = evaluate_accuracy(
        models["teacher"][1], problems, 0.6, 400, seed=0, tokenizer=models["teacher"][0], return_texts=True
    )
    s_acc, s_texts = evaluate_accuracy(
        models["student"][1], problems, 0.6, 700, seed=0, tokenizer=models["student"][0], return_texts=True
    )
    assert t_acc >= 0.8, t_texts[:3]
    assert s_acc < t_acc
    # the student mostly follows the format: its answers are extractable
    assert sum(world.extract_answer(t) is not None for t in s_texts) >= 0.6 * len(s_texts), s_texts[:3]
    assert style_shares(t_texts)["none"] <= 0.1
