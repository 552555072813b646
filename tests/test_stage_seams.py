"""The values that pass from one stage to the next (filter -> score -> select -> train), each checked
against an independent computation on a real toy run (docs/testing.md, "Stage seams"):

- filter: every sample's verdict and the funnel are what the documented rules give (docs/filters.md);
- score: each sentence's teacher and student log-prob is the sum of the engines' per-token log-probs
  of its tokens when they are asked again for that response (docs/das.md, section 2), and the
  student's are those of the very tokens, in the very context, that training gives the response;
- select: the picks and their order are the DAS rule of docs/das.md applied by hand to the stored
  sentence rows;
- train: each example's ids are the student's chat template of the stored prompt and the selected
  response, the loss falls on the response and its end-of-turn token only, and a mixed-policy
  example's student prefix is trained unless ``mask_prefix`` (docs/mixed-policy.md).

The second half runs the score stage with a sentencepiece student (tests/sp_tokenizer.py) under
templates that tokenise a response otherwise in context than alone: it used to be scored on its own
tokens after the generation prompt, which training never sees.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

from dasd.config import load_config
from dasd.engines.base import ScoreRequest
from dasd.engines.offsets import token_bytes
from dasd.runs import named_pools, open_engine, resolve_model
from dasd.stages.filter import run_filter
from dasd.stages.sample import run_sample
from dasd.stages.score import run_score
from dasd.stages.select import run_select
from dasd.store import RunStore
from dasd.toy.tokenizer import QWEN_LIKE_TEMPLATE as QWEN_LIKE
from dasd.train.data import load_examples, prepare
from dasd.train.encode import IGNORE

sys.path.insert(0, str(Path(__file__).parent))
from sp_tokenizer import CHARS, llama2_style_tokenizer, save_nudged_llama  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
TAU, M = 0.693, 2  # configs/demo.yaml's das.tau; two picks of three per prompt, so the order shows


def _anchor(text: str, s: int, e: int) -> int:
    """docs/das.md: a token belongs to the sentence holding its first non-whitespace character (its
    start when it has none)."""
    return next((i for i in range(s, e) if not text[i].isspace()), s)


def _sentence_of(text: str, starts: list[int], s: int, e: int) -> int:
    a = _anchor(text, s, e)
    return max(k for k, st in enumerate(starts) if st <= a)


def _student_tokens(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """sample -> filter -> score -> select on the shipped toy teacher and student (configs/demo.yaml,
    4 prompts x 3 samples at T=0.6 and T=1.0). The filter's student-token limit is the median
    sample's length, so the ``length`` rule drops some and ``correctness`` judges the rest."""
    from transformers import AutoTokenizer

    run = tmp_path_factory.mktemp("seams") / "run"
    base = [f"run_dir={run}", "data.toy.n_train=4", "sample.k=3", "teacher.batch_size=32", f"select.m={M}"]
    run_sample(load_config(str(DEMO), base))
    store = RunStore.open(run)
    tok = AutoTokenizer.from_pretrained(resolve_model("toy:student"))
    lengths = sorted(_student_tokens(tok, s["text"]) for p in ("T0.6", "T1") for s in store.read("sample", f"pool-{p}"))
    limit = lengths[len(lengths) // 2]
    cfg = load_config(str(DEMO), [*base, f"filter.max_student_tokens={limit}"])
    funnel = run_filter(cfg)
    run_score(cfg)
    run_select(cfg)
    return cfg, store, funnel, limit, tok


def _documented_filter_rule(sample: dict, prompt: dict, tok, limit: int) -> str | None:
    """The rules of docs/filters.md that can fire on toy samples, in their order, written out again."""
    text = sample["text"]
    if not text.strip():
        return "empty"
    if sample["finish_reason"] == "length":
        return "cutoff"
    head, _, rest = text.partition("<think>")
    thinking, _, final = rest.partition("</think>")
    if text.count("<think>") != 1 or text.count("</think>") != 1 or head.strip() or not thinking.strip() \
            or not final.strip():
        return "structure"
    if _student_tokens(tok, text) > limit:
        return "length"
    boxed = re.findall(r"\\boxed\{([^{}]*)\}", text)
    return None if boxed and boxed[-1].strip() == str(prompt["answer"]) else "correctness"


def test_filter_verdicts_are_the_documented_rules(toy_run):
    _, store, funnel, limit, tok = toy_run
    prompts = {p["id"]: p for p in store.read("sample", "prompts")}
    rejects = {r["id"]: r for r in store.read("filter", "rejects")}
    fired = set()
    for pool in ("T0.6", "T1"):
        want_kept, dropped = [], {}
        for s in store.read("sample", f"pool-{pool}"):
            rule = _documented_filter_rule(s, prompts[s["prompt_id"]], tok, limit)
            assert (rejects[s["id"]]["rule"] if s["id"] in rejects else None) == rule, s["id"]
            if rule is None:
                want_kept.append(s["id"])
            else:
                dropped[rule] = dropped.get(rule, 0) + 1
                assert rejects[s["id"]]["pool"] == pool
                if rule == "length":
                    assert rejects[s["id"]]["reason"] == f"length: {_student_tokens(tok, s['text'])} student tokens > {limit}"
        kept = list(store.read("filter", f"kept-{pool}"))
        assert [k["id"] for k in kept] == want_kept
        assert funnel[pool] == {"in": len(want_kept) + sum(dropped.values()), "dropped": dropped, "out": len(want_kept)}
        fired |= set(dropped)
    assert {"length", "correctness"} <= fired  # the check can fail: both rules really dropped samples here


def test_sentence_logprobs_are_the_engines_token_logprobs_asked_again(toy_run):
    cfg, store, _, _, _ = toy_run
    prompts = {p["id"]: p for p in store.read("sample", "prompts")}
    teacher, student = open_engine(cfg.teacher), open_engine(cfg.student)
    checked = 0
    for pool in ("T0.6", "T1"):
        scored = list(store.read("score", f"pool-{pool}"))
        reqs = [ScoreRequest(id=s["id"], messages=prompts[s["prompt_id"]]["messages"], continuation=s["text"]) for s in scored]
        for s, t, st in zip(scored, teacher.score(reqs), student.score(reqs)):
            text, rows = s["text"], s["sentences"]
            starts = [r["start"] for r in rows]
            assert [(r["start"], r["end"]) for r in rows] == list(zip(starts, starts[1:] + [len(text)]))
            assert t.token_ids == [int(i) for i in s["teacher"]["token_ids"]]  # the sampled tokens, scored again
            for side, again in (("teacher", t), ("student", st)):
                sums, counts = [0.0] * len(rows), [0] * len(rows)
                for (a, b), lp in zip(again.offsets, again.logprobs):
                    k = _sentence_of(text, starts, a, b)
                    sums[k] += lp
                    counts[k] += 1
                assert [r[f"n_{side}_tokens"] for r in rows] == counts, (s["id"], side)
                got = [r[f"lp_{side}"] * r[f"n_{side}_tokens"] if r[f"n_{side}_tokens"] else 0.0 for r in rows]
                assert got == pytest.approx(sums, abs=1e-4), (s["id"], side)
            checked += 1
    assert checked >= 8


def test_student_scores_are_its_training_tokens_in_its_training_context(toy_run):
    """The stored student log-probs of every selected response, recomputed by one forward pass of the
    student over the example as training tokenises it (system prompt, template and all)."""
    from transformers import AutoModelForCausalLM

    cfg, store, _, _, tok = toy_run
    model = AutoModelForCausalLM.from_pretrained(resolve_model("toy:student"), dtype=torch.float32).eval()
    scored = {s["id"]: s for p in ("T0.6", "T1") for s in store.read("score", f"pool-{p}")}
    examples = [(e, s) for p in ("T0.6", "T1")
                for e, s in zip(store.read("select", f"train-{p}"), store.read("select", f"selected-{p}"))]
    assert examples
    for ex, sel in examples:
        s = scored[sel["id"]]
        want = _training_response_logprobs(model, tok, ex)
        assert [float(x) for x in s["student"]["logprobs"]] == pytest.approx(want, abs=2e-4)


def _training_response_logprobs(model, tok, example: dict) -> list[float]:
    """log p(token | everything before it) of the tokens that hold the response's characters, in the
    conversation as training renders and tokenises it (all of them carry loss)."""
    from dasd.train.encode import encode_example

    enc = encode_example(tok, example)
    rendered = tok.apply_chat_template(example["messages"], tokenize=False)
    head = tok.apply_chat_template(example["messages"][:-1], tokenize=False, add_generation_prompt=True)
    response = example["messages"][-1]["content"]
    assert rendered.startswith(head + response)
    lo, hi = len(head.encode()), len((head + response).encode())
    pos, held = 0, []
    for t, piece in enumerate(token_bytes(tok, enc.input_ids)):
        if piece and lo < pos + len(piece) and pos < hi:
            held.append(t)
        pos += len(piece)
    assert held and all(enc.loss_mask[t] for t in held)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([enc.input_ids])).logits.float()[0], -1)
    return [logp[t - 1, enc.input_ids[t]].item() for t in held]


def test_selection_is_the_das_rule_by_hand(toy_run):
    _, store, _, _, _ = toy_run
    for pool in ("T0.6", "T1"):
        groups: dict[str, list[tuple]] = {}
        for s in store.read("score", f"pool-{pool}"):
            total = teacher = student = 0
            scored = False
            for row in s["sentences"]:  # docs/das.md: weight = student tokens; Teacher iff delta > tau
                w = row["n_student_tokens"]
                total += w
                if row["n_teacher_tokens"] >= 1 and row["n_student_tokens"] >= 1:
                    scored = True
                    delta = row["lp_teacher"] - row["lp_student"]
                    teacher += w if delta > TAU else 0
                    student += w if delta < -TAU else 0
            score = teacher / total - 1.0 * (student / total) if scored else None
            groups.setdefault(s["prompt_id"], []).append((score is None, -(score or 0.0), s["id"], s["text"]))
        want = [g for members in groups.values() for g in sorted(members)[:M]]
        assert [r["id"] for r in store.read("select", f"selected-{pool}")] == [g[2] for g in want]
        train = list(store.read("select", f"train-{pool}"))
        assert [e["messages"][-1]["content"] for e in train] == [g[3] for g in want]


def test_training_examples_are_the_students_template_of_prompt_and_response(toy_run):
    """Through the training data path (named pools -> prepare): ids, and the labels of the loss."""
    cfg, store, _, _, tok = toy_run
    prompts = {p["id"]: p for p in store.read("sample", "prompts")}
    data = named_pools(cfg, store)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    for pool, temp in (("low", "T0.6"), ("high", "T1")):
        texts = list(store.read("select", f"selected-{temp}"))  # the scored records, in rank order
        sd = prepare(tok, load_examples(pool, data), cfg.train.context, mask_prefix=False, packing=False)
        assert sd.n_examples == len(texts) > 0
        for i, s in enumerate(texts):
            head = tok.apply_chat_template(prompts[s["prompt_id"]]["messages"], tokenize=False, add_generation_prompt=True)
            ctx, resp = (tok(x, add_special_tokens=False)["input_ids"] for x in (head, s["text"]))
            want_ids = ctx + resp + [end] + tok("\n", add_special_tokens=False)["input_ids"]
            piece = sd.piece(i)
            assert piece.input_ids.tolist() == want_ids
            # label t is the target of position t: the response's tokens and <|im_end|>, nothing else
            want_labels = [IGNORE] * len(want_ids)
            for t in range(len(ctx), len(ctx) + len(resp) + 1):
                want_labels[t - 1] = want_ids[t]
            assert piece.labels.tolist() == want_labels


def test_mixed_policy_prefix_is_trained_unless_masked(toy_run):
    """docs/mixed-policy.md: a token carrying any character of the student prefix is a prefix token;
    prefix tokens carry loss unless mask_prefix. Examples: selected responses cut after their second
    sentence's first character (so a token straddles the cut where the tokenizer merges there)."""
    cfg, store, _, _, tok = toy_run
    examples = [dict(e) for e in store.read("select", "train-T0.6")]
    for e in examples:
        e["prefix_chars"] = e["messages"][-1]["content"].index("\n", 8) + 2
    items = [(f"mixed[{i}]", e) for i, e in enumerate(examples)]
    for mask in (False, True):
        sd = prepare(tok, items, cfg.train.context, mask_prefix=mask, packing=False)
        for i, e in enumerate(examples):
            head = tok.apply_chat_template(e["messages"][:-1], tokenize=False, add_generation_prompt=True)
            response = e["messages"][-1]["content"]
            b0 = len(head.encode())
            b_prefix, b_end = b0 + len(response[: e["prefix_chars"]].encode()), b0 + len(response.encode())
            ids = sd.piece(i).input_ids.tolist()
            pos, want = 0, []
            for t, piece in enumerate(token_bytes(tok, ids)):
                in_response = b0 <= pos and pos + len(piece) <= b_end + len(b"<|im_end|>")
                in_prefix = pos < b_prefix and b0 < pos + len(piece)
                if in_response and piece and not (mask and in_prefix):
                    want.append(t)
                pos += len(piece)
            labels = sd.piece(i).labels.tolist()
            assert [t for t in range(1, len(ids)) if labels[t - 1] != IGNORE] == want, (mask, i)


# -- a sentencepiece student under templates that tokenise a response in context otherwise than alone --

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
BRACKETS = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}[assistant] {% endif %}")
THINK_OPENS = QWEN_LIKE.replace("<|im_start|>assistant\n{% endif %}", "<|im_start|>assistant\n<think>\n{% endif %}")

RESPONSES = [
    "<think>\nThe sum is 7. So ok.\n</think>\nThe answer is \\boxed{7}.",
    "<think>\nSo 3 and 4 make 7.\nThe check: 7 - 4 = 3.\n</think>\n\nThe answer is \\boxed{7}.",
    "<think>\nTake 3. Then add 4, so 7.\n</think>\nSo \\boxed{7}.",
]


def _sp_run(tmp_path, template: str, messages: list[dict]):
    """A nudged Llama-2-style (sentencepiece) model under ``template`` and a run holding one prompt
    (``messages``) with the hand-written RESPONSES as its T0.6 pool, without teacher signal:
    ``(tokenizer, model dir, store)``."""
    tok = llama2_style_tokenizer([("\u2581", "T"), ("h", "e"), ("\u2581T", "he"), ("\u2581", "S"), ("o", "k")],
                                 chars=CHARS + "<>|", pad=True)
    tok.chat_template = template
    student = save_nudged_llama(tok, ["\u2581T", "\u2581The", "\u2581S"], tmp_path / "student", 512)
    store = RunStore(tmp_path / "run")
    with store.writer("sample", "prompts") as w:
        w.add({"id": "p0", "domain": "other", "messages": messages})
    with store.writer("sample", "pool-T0.6") as w:
        for i, text in enumerate(RESPONSES):
            w.add({"id": f"s{i}", "prompt_id": "p0", "model": "hand", "temperature": 0.6, "top_p": 1.0, "seed": 0,
                   "index": i, "text": text, "finish_reason": "stop"})
    return tok, student, store


@pytest.mark.parametrize("template", [CHATML, BRACKETS, QWEN_LIKE, THINK_OPENS], ids=["chatml", "brackets", "qwen", "think-opens"])
def test_a_sentencepiece_student_is_scored_on_its_training_tokens(template, tmp_path):
    """Scored alone, a Llama-2-style tokenizer's response starts with a word-start '▁' that training
    never has; a Qwen3-style template trains on re-laid whitespace; a template whose generation prompt
    opens <think> had it twice in the scoring context. Each stored student log-prob must be that of a
    training token in the training context, and each sentence's count those of its tokens."""
    from transformers import AutoModelForCausalLM

    tok, student, store = _sp_run(tmp_path, template, [{"role": "system", "content": "Be brief."},
                                                       {"role": "user", "content": "Add 3 and 4."}])
    # the same model re-scores as the teacher (the samples carry no teacher signal): its path is checked too
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"teacher.model={student}", f"student.model={student}",
                             "select.m=3"])
    assert run_filter(cfg)["T0.6"]["out"] == 3
    assert run_score(cfg)["T0.6"] == {"scored": 3, "rejected": 0, "new": 3}
    run_select(cfg)
    model = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32).eval()
    scored = {s["id"]: s for s in store.read("score", "pool-T0.6")}
    train = list(store.read("select", "train-T0.6"))
    for ex, sel in zip(train, store.read("select", "selected-T0.6")):
        s = scored[sel["id"]]
        want = _training_logprobs_any_template(model, tok, ex, "\n" if template == BRACKETS else "<|im_end|>\n")
        assert [float(x) for x in s["student"]["logprobs"]] == pytest.approx(want, abs=2e-4), s["id"]
        assert s["teacher"]["rescored"] and [float(x) for x in s["teacher"]["logprobs"]] == pytest.approx(want, abs=2e-4)
        # the offsets carry the tokens back into the response: no token is anchored in another sentence
        text, rows = s["text"], s["sentences"]
        starts = [r["start"] for r in rows]
        counts = [0] * len(rows)
        for a, b in s["student"]["offsets"].tolist():
            counts[_sentence_of(text, starts, a, b)] += 1
        assert [r["n_student_tokens"] for r in rows] == counts
        if template == THINK_OPENS:  # the opener is the prompt's: the student does not predict it
            assert text[rows[0]["start"]:rows[0]["end"]] == "<think>\n" and rows[0]["n_student_tokens"] == 0
        else:
            assert all(r["n_student_tokens"] for r in rows)


def _training_logprobs_any_template(model, tok, example: dict, closing: str) -> list[float]:
    """log p of the loss-carrying tokens that hold a character of the assistant turn between the
    generation prompt and the template's ``closing`` text, in the training encoding."""
    return [lp for _, _, lp in _training_tokens(model, tok, example, closing)]


def _training_tokens(model, tok, example: dict, closing: str) -> list[tuple[int, int, float]]:
    """``_training_logprobs_any_template`` with each token's byte span, counted from the start of the
    assistant turn's content."""
    from dasd.train.encode import encode_example

    enc = encode_example(tok, example)
    head = tok.apply_chat_template(example["messages"][:-1], tokenize=False, add_generation_prompt=True)
    rendered = tok.apply_chat_template(example["messages"], tokenize=False).encode()
    assert rendered.startswith(head.encode()) and rendered.endswith(closing.encode())
    pieces = token_bytes(tok, enc.input_ids)
    shift = len(b"".join(pieces)) - len(rendered)  # the word-start space the tokenizer puts before the text
    assert b"".join(pieces) == b" " * shift + rendered
    lo, hi = shift + len(head.encode()), shift + len(rendered) - len(closing.encode())
    at, held = 0, []
    for t, piece in enumerate(pieces):
        if piece and lo < at + len(piece) and at < hi and enc.loss_mask[t]:
            held.append((t, at - lo, at + len(piece) - lo))
        at += len(piece)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([enc.input_ids])).logits.float()[0], -1)
    return [(a, b, logp[t - 1, enc.input_ids[t]].item()) for t, a, b in held]


def test_local_naturalness_windows_are_scored_as_trained(tmp_path):
    """score.local_naturalness: each sentence's window (here the sentence before it and itself) is
    scored as an assistant turn is trained, after the prompt; the sentence's tokens are those
    anchored in it (docs/das.md). Scored alone, a sentencepiece window began with a '▁'."""
    from transformers import AutoModelForCausalLM

    messages = [{"role": "user", "content": "Add 3 and 4."}]
    tok, student, store = _sp_run(tmp_path, CHATML, messages)
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"teacher.model={student}", f"student.model={student}",
                             "score.local_naturalness=always", "score.local_window=1"])
    run_filter(cfg)
    run_score(cfg)
    model = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32).eval()
    checked = 0
    for s in store.read("score", "pool-T0.6"):
        text, rows = s["text"], s["sentences"]
        means = []
        for k, row in enumerate(rows):
            ctx = rows[max(0, k - 1)]["start"]
            window = text[ctx:row["end"]]  # ASCII: byte spans are character spans
            ex = {"messages": [*messages, {"role": "assistant", "content": window}]}
            lps = [lp for a, b, lp in _training_tokens(model, tok, ex, "<|im_end|>\n")
                   if _anchor(window, max(a, 0), b) >= row["start"] - ctx]
            means.append(sum(lps) / len(lps))
        assert s["naturalness"]["local"] == pytest.approx(sum(means) / len(means), abs=1e-5), s["id"]  # 1e-7 here
        checked += 1
    assert checked == len(RESPONSES)


def _hand_run(root: Path, prompts: list[dict], texts: list[tuple[str, str]]) -> RunStore:
    """A run whose sample stage holds ``prompts`` and one T=0.6 sample per ``(prompt id, text)``."""
    store = RunStore(root)
    with store.writer("sample", "prompts") as w:
        for p in prompts:
            w.add(p)
    with store.writer("sample", "pool-T0.6") as w:
        for i, (pid, text) in enumerate(texts):
            w.add({"id": f"s{i}", "prompt_id": pid, "model": "hand", "temperature": 0.6, "top_p": 1.0, "seed": 0,
                   "index": i, "text": text, "finish_reason": "stop"})
    return store


def test_filter_require_correct_grades_code_and_choice_prompts(tmp_path, tiny_lm_dir):
    """docs/filters.md: with require_correct, a response is dropped when graded wrong against its
    prompt's reference; tests and choices are references as much as an answer is (the filter graded
    only prompts with an ``answer`` and kept every program, right or wrong)."""
    user = [{"role": "user", "content": "q"}]
    prompts = [
        {"id": "code", "domain": "code", "messages": user,
         "tests": {"style": "stdio", "cases": [{"input": "3 4\n", "output": "7\n"}]}},
        {"id": "mc", "domain": "science", "messages": user, "choices": ["5", "7", "9"], "answer": "B"},
        {"id": "free", "domain": "other", "messages": user},  # nothing to grade against: kept
    ]
    program = "<think>\nAdd them.\n</think>\n```python\na, b = map(int, input().split())\nprint(a {} b)\n```"
    texts = [("code", program.format("+")), ("code", program.format("-")),
             ("mc", "<think>\n3 + 4 = 7.\n</think>\nThe answer is B."), ("mc", "<think>\n3 + 4 = 7.\n</think>\nThe answer is A."),
             ("free", "<think>\nHm.\n</think>\nAnything.")]
    store = _hand_run(tmp_path / "run", prompts, texts)
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"teacher.model={tiny_lm_dir}", f"student.model={tiny_lm_dir}",
                             "filter.require_correct=true"])
    assert run_filter(cfg)["T0.6"] == {"in": 5, "dropped": {"correctness": 2}, "out": 3}
    assert [s["id"] for s in store.read("filter", "kept-T0.6")] == ["s0", "s2", "s4"]
    assert {r["id"]: r["rule"] for r in store.read("filter", "rejects")} == {"s1": "correctness", "s3": "correctness"}


def test_a_finished_filter_that_graded_answers_only_is_made_again(tmp_path, tiny_lm_dir):
    """A filter finished by an earlier dasd (its manifest config without `graded`) kept every
    program: with require_correct it is made again, not taken as up to date."""
    from dasd.store import config_hash

    user = [{"role": "user", "content": "q"}]
    prompts = [{"id": "code", "domain": "code", "messages": user,
                "tests": {"style": "stdio", "cases": [{"input": "3 4\n", "output": "7\n"}]}}]
    program = "<think>\nAdd them.\n</think>\n```python\na, b = map(int, input().split())\nprint(a {} b)\n```"
    _hand_run(tmp_path / "run", prompts, [("code", program.format("+")), ("code", program.format("-"))])
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"teacher.model={tiny_lm_dir}", f"student.model={tiny_lm_dir}",
                             "filter.require_correct=true"])
    assert run_filter(cfg)["T0.6"] == {"in": 2, "dropped": {"correctness": 1}, "out": 1}
    old = RunStore.open(tmp_path / "run")  # as an earlier dasd left it: both programs kept, no `graded`
    info = old.stage_info("filter")
    info["config"].pop("graded")
    info["config_hash"] = config_hash(info["config"])
    old.stage_info("filter")["counts"] = {"T0.6": {"in": 2, "dropped": {}, "out": 2}}
    old.save_manifest()
    with old.writer("filter", "kept-T0.6") as w:
        w.add({**next(s for s in old.read("sample", "pool-T0.6") if s["id"] == "s1")})
    assert run_filter(cfg)["T0.6"] == {"in": 2, "dropped": {"correctness": 1}, "out": 1}
    assert [s["id"] for s in RunStore.open(tmp_path / "run").read("filter", "kept-T0.6")] == ["s0"]


def test_filter_require_correct_names_a_prompt_it_cannot_grade(tmp_path, tiny_lm_dir):
    from dasd.errors import DasdError

    bad = {"id": "mc", "domain": "science", "messages": [{"role": "user", "content": "q"}], "choices": ["5", "7"],
           "answer": "seven"}
    _hand_run(tmp_path / "run", [bad], [("mc", "<think>\nx\n</think>\nThe answer is B.")])
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"teacher.model={tiny_lm_dir}", f"student.model={tiny_lm_dir}",
                             "filter.require_correct=true"])
    with pytest.raises(DasdError, match=r"^filter.require_correct: cannot grade prompt 'mc': .*answer 'seven' is neither"):
        run_filter(cfg)


def test_a_response_the_students_template_rewrites_is_scored_alone_and_counted(tmp_path, tiny_lm_dir, capsys):
    """A template that drops the reasoning from the assistant turn (as DeepSeek-R1's does) leaves no
    training tokens to score the response on: it is scored on its own tokens after the generation
    prompt, and the stage says how many were, per pool and model."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    tok.chat_template = CHATML.replace("{{ m['content'] }}", "{{ m['content'].split('</think>')[-1] }}")
    tok.save_pretrained(tmp_path / "r1_like")
    messages = [{"role": "user", "content": "Add 3 and 4."}]
    _hand_run(tmp_path / "run", [{"id": "p0", "domain": "other", "messages": messages}],
              [("p0", text) for text in RESPONSES])
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"teacher.model={tiny_lm_dir}", f"student.model={tiny_lm_dir}",
                             f"student.tokenizer={tmp_path / 'r1_like'}"])
    run_filter(cfg)
    assert run_score(cfg)["T0.6"] == {"scored": 3, "rejected": 0, "new": 3}
    err = capsys.readouterr().err
    assert "T0.6: 3 response(s) scored on their own tokens after the student's generation prompt" in err
    assert "teacher's generation prompt" not in err  # the teacher's template keeps them: re-scored as trained


@pytest.mark.parametrize("template", [CHATML, QWEN_LIKE], ids=["chatml", "qwen"])
def test_analyze_types_a_response_as_score_does(template, tmp_path):
    """`dasd analyze` scores the distilled model's responses as `dasd score` scores the selected
    ones: a response analysed gets the student's sentence log-probs and token counts that score
    stored for the same text after the same prompt (it scored them on their own tokens, with a
    sentencepiece student's extra word-start '▁' and the template's whitespace ignored)."""
    import json

    from dasd.runs import results_name
    from dasd.stages.analyze import run_analyze

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Add 3 and 4."}]
    tok, student, store = _sp_run(tmp_path, template, messages)
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"id": "p0", "messages": messages, "answer": "7"}) + "\n", encoding="utf-8")
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"teacher.model={student}", f"student.model={student}",
                             f"analyze.model={student}", f"eval.models=[{student}]",
                             f"eval.benchmarks=[{{name: b, format: prompts, path: {bench}}}]"])
    run_filter(cfg)
    run_score(cfg)
    store.begin_stage("eval", {})
    with store.writer("eval", results_name(str(student))) as w:
        for i, text in enumerate(RESPONSES):
            w.add({"id": f"r{i}", "benchmark": "b", "problem_id": "p0", "sample_index": i, "correct": True, "text": text})
    store.end_stage("eval", {})
    run_analyze(cfg)
    scored = {s["text"]: s["sentences"] for s in store.read("score", "pool-T0.6")}
    analysed = list(store.read("analyze", "responses"))
    assert len(analysed) == len(RESPONSES)
    for r in analysed:
        want = scored[r["text"]]
        assert [(x["start"], x["end"], x["n_student_tokens"], x["n_teacher_tokens"]) for x in r["sentences"]] == \
            [(x["start"], x["end"], x["n_student_tokens"], x["n_teacher_tokens"]) for x in want]
        for got, exp in zip(r["sentences"], want):
            for key in ("lp_student", "lp_teacher"):
                assert (got[key] is None) == (exp[key] is None)
                if exp[key] is not None:
                    assert got[key] == pytest.approx(exp[key], abs=2e-4), key
