"""`dasd mix` on real tiny models: student cap in student tokens, cuts at sentence ends past half,
exact prefix/continuation joins (multi-byte too), prefix_chars -> prefix tokens in training, filters,
funnel, and crash-and-resume equals uninterrupted.

The fast tests use two random tiny Llamas with different vocabularies, *nudged* so that a short
rollout has structure to test: every token embedding gets the same constant in dimension 0 (so the
final hidden state has a stable positive component there) and a few tokens get a larger one, which
the tied lm head turns into a higher logit. The student is nudged towards sentence ends ("\\n",
"。", "."), so its rollouts have sentence boundaries to cut at; the teacher towards its end-of-turn
token, so its continuations finish within a few dozen tokens. Nothing else about them is special:
they go through the real hf engine, tokenizers and chat templates.
"""

from __future__ import annotations

import json
import math
import re
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from dasd.engines import EngineConfig, GenerateRequest, make_engine
from dasd.engines.offsets import token_bytes
from dasd.errors import DasdError, InputError
from dasd.grading.math import grade_math
from dasd.grading.grade import is_correct as default_grade
from dasd.rules.mixing import (
    MixConfig, continuation_verdict, cut_point, draw_questions, funnel_of, make_example, reasoning_region,
    render_generation_prompt, sentence_ends, student_cap, summary_line, teacher_context,
)
from dasd.rules.sampling import derived_seed
from dasd.stages.mix import curated_from_run, run_mix
from dasd.store import RunStore
from dasd.text.repetition import RepetitionConfig
from dasd.text.sentences import segment
from dasd.train.encode import IGNORE, encode_example
from graded_runs import graded_toy_run

MIX_CORPUS = [
    "<think>\nSchritt für Schritt: 3 + 4 = 7 ✓.\nThen 7 * 2 = 14.\n日本語の文。次の文。\n</think>\nThe answer is \\boxed{14}.",
    "<think>\nStart at 5. 5 - 2 = 3 ✓.\nCheck: 3 is right.\n答えは三。\n</think>\nSo \\boxed{3}.",
    "<think>\nLet me think. First, 12 / 4 = 3.\nThen 3 + 9 = 12! Done.\nWait, is it? Yes.\n</think>\nThe answer is \\boxed{12}.",
    "<think>\nEmoji 😀 step. Café résumé naïve.\nNext line.\nOK.\n</think>\nFinal: \\boxed{0}.",
]
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


@pytest.fixture(scope="session")
def mix_engines(tmp_path_factory, nudged_lm):
    """(student, teacher) hf engines with different vocabularies (see the module docstring)."""
    root = tmp_path_factory.mktemp("mix_models")
    s_dir = nudged_lm(root / "student", MIX_CORPUS * 20, 360, 3, {"\n", "。", "."}, 1.6)
    t_dir = nudged_lm(root / "teacher", list(reversed(MIX_CORPUS)) * 30, 420, 4, {"<|im_end|>"}, 1.3)
    student = make_engine(EngineConfig(model=s_dir, device="cpu", batch_size=16))
    teacher = make_engine(EngineConfig(model=t_dir, device="cpu", batch_size=16))
    return student, teacher


def curated_set(n: int) -> list[dict]:
    out = []
    for i in range(n):
        prompt = {
            "id": f"q{i:02d}", "domain": "math", "answer": str(i),
            "messages": [SYSTEM, {"role": "user", "content": f"Compute {i} + 0. Schritt für Schritt ✓"}],
        }
        out.append({"prompt": prompt, "teacher_text": MIX_CORPUS[i % 4]})
    return out


# The e2e runs keep filters that a random teacher can pass (its text never closes </think>); the
# default filters are tested on hand-written continuations and, in the slow test, on the toy world.
E2E = dict(n_questions=12, max_continuation_tokens=40, require_structure=False, require_correct=False,
           batch_questions=6, seed=7)


@pytest.fixture(scope="module")
def e2e(mix_engines, tmp_path_factory):
    student, teacher = mix_engines
    store = RunStore(tmp_path_factory.mktemp("mix_run") / "run")
    cfg = MixConfig(**E2E)
    curated = curated_set(16)
    funnel = run_mix(cfg, store, curated, student, teacher)
    rollouts = list(store.read("mix", "rollouts"))
    examples = list(store.read("mix", "examples"))
    return cfg, store, curated, funnel, rollouts, examples


# ------------------------------------------------------------------------------------------------
# Config and pieces


def test_config_is_validated():
    with pytest.raises(ValidationError, match="cut_low"):
        MixConfig(cut_low=0.8, cut_high=0.6)
    with pytest.raises(ValidationError):
        MixConfig(length_multiple=0)
    with pytest.raises(ValidationError, match="extra"):
        MixConfig(n_question=3)
    with pytest.raises(ValidationError):
        MixConfig(after_think="keep")
    assert MixConfig().length_multiple == 1.5 and MixConfig().require_correct is True


def _draw_held(curated, n, seed):
    """The draw as it was when every curated item was held (the reference)."""
    import random

    from dasd.rules.sampling import derived_seed

    by_id = {}
    for item in curated:
        by_id.setdefault(item["prompt"]["id"], item)
    ids = sorted(by_id)
    random.Random(derived_seed("mix-draw", seed)).shuffle(ids)
    return [by_id[i] for i in ids[:n]]


def test_the_two_pass_draw_equals_the_held_one_and_holds_only_the_drawn_items():
    """``draw_questions`` reads a re-readable curated set twice (check + ids, then the drawn items)
    and gives the draw that holding every item gave; a one-pass iterator is read into a list first."""
    import random

    rng = random.Random(5)
    base = curated_set(30)
    for trial in range(10):
        items = [{**rng.choice(base), "teacher_text": f"response {k}"} for k in range(rng.randint(1, 60))]

        class Reader:  # a stored set: every pass yields fresh dicts
            passes = 0

            def __iter__(self):
                Reader.passes += 1
                return iter([dict(i) for i in items])

        reader = Reader()
        for n in (0, 3, 100):
            want = _draw_held(items, n, trial)
            assert draw_questions(reader, n, trial) == want
            assert draw_questions(iter(items), n, trial) == want
        assert Reader.passes == 6


def test_draw_is_seeded_prefix_stable_and_one_per_question():
    curated = curated_set(20)
    curated.append({"prompt": curated[3]["prompt"], "teacher_text": "another response"})
    small, big = draw_questions(curated, 5, 1), draw_questions(curated, 12, 1)
    assert [q["prompt"]["id"] for q in big[:5]] == [q["prompt"]["id"] for q in small]
    assert len({q["prompt"]["id"] for q in draw_questions(curated, 100, 1)}) == 20
    assert next(q for q in draw_questions(curated, 100, 1) if q["prompt"]["id"] == "q03")["teacher_text"] != "another response"
    assert [q["prompt"]["id"] for q in draw_questions(curated, 20, 2)] != [q["prompt"]["id"] for q in draw_questions(curated, 20, 1)]
    bad = curated_set(3)
    bad[2] = {"prompt": bad[2]["prompt"]}
    with pytest.raises(InputError, match=r"curated\[2\]: field 'teacher_text'"):
        draw_questions(bad, 3, 0)
    bad[2] = {"prompt": {"id": "x", "messages": [SYSTEM]}, "teacher_text": "t"}
    with pytest.raises(InputError, match=r"curated\[2\]: field 'prompt'"):
        draw_questions(bad, 3, 0)


def test_empty_curated_set_is_a_clear_error(mix_engines, tmp_path):
    student, teacher = mix_engines
    with pytest.raises(DasdError, match="curated set is empty"):
        run_mix(MixConfig(), RunStore(tmp_path / "run"), [], student, teacher)


def test_student_cap_is_in_student_tokens(mix_engines):
    student, teacher = mix_engines
    text = MIX_CORPUS[0]
    n_s, n_t = student.count_tokens(text), teacher.count_tokens(text)
    assert n_s != n_t  # the two vocabularies really differ on this text
    assert student_cap(n_s, 1.5) == math.ceil(1.5 * n_s)
    assert student_cap(10, 1.5) == 15 and student_cap(11, 1.5) == 17 and student_cap(0, 1.5) == 1


def test_reasoning_region_and_after_think():
    text = "<think>\nOne. Two.\n</think>\nThe answer is 3. More."
    assert reasoning_region(text, "cut_in_thinking") == text.index("</think>")
    assert reasoning_region(text, "skip") is None
    assert reasoning_region("<think>\nOne. Two. Th", "skip") == len("<think>\nOne. Two. Th")
    at = cut_point(text, 0.99, 0.5, reasoning_region(text))
    assert at is not None and text[:at] == "<think>\nOne."  # strictly inside the reasoning region


def test_cut_point_rule_on_a_known_text():
    text = "<think>\nOne. Two is here. Three!\nFour? Five and"
    ends = sentence_ends(text)
    assert [text[:b][-5:] for b in ends] == ["\nOne.", "here.", "hree!", "Four?"]  # not the bare opener
    assert len(text) not in ends  # the cut-off end is not a sentence end
    L = len(text)
    # first end at or after the target
    assert cut_point(text, 0.5, 0.5) == min(b for b in ends if b >= 0.5 * L)
    # target past the last end: the last end (still past the floor)
    assert cut_point(text, 0.99, 0.5) == ends[-1]
    # nothing in [floor, L): no cut
    assert cut_point("<think>\nA very long sentence without any end at all", 0.6, 0.5) is None


_WORDS = st.sampled_from(["Let", "x", "be", "7", "für", "日本語", "😀", "e.g.", "3.14", "Dr.", "$a.b$", "Yes", "no"])
_ENDS = st.sampled_from([". ", "! ", "? ", ".\n", "\n", "。", "\n\n", ", ", " "])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_WORDS, _ENDS), min_size=1, max_size=30), st.floats(0.5, 0.999), st.floats(0.0, 0.9))
def test_cut_points_are_sentence_ends_past_the_floor(parts, u, floor):
    text = "<think>\n" + "".join(w + e for w, e in parts)
    floor = min(floor, u)
    at = cut_point(text, u, floor)
    spans = segment(text)
    real_ends = {s + len(text[s:e].rstrip()) for s, e in spans[:-1]}
    candidates = sorted(b for b in real_ends if floor * len(text) <= b < len(text) and b > len("<think>"))
    if not candidates:
        assert at is None
        return
    assert at in candidates
    assert at >= floor * len(text) and at < len(text)
    assert not text[at - 1].isspace() and text[at:].strip()  # ends on the sentence, more text follows
    later = [b for b in candidates if b >= u * len(text)]
    assert at == (later[0] if later else candidates[-1])


def test_teacher_context_places_prefix_inside_thinking():
    msgs = [SYSTEM, {"role": "user", "content": "Q?"}]
    prefix = "<think>\nStep one. Step two."
    chatml = lambda m: "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n"  # noqa: E731
    assert teacher_context(chatml(msgs), prefix) == chatml(msgs) + prefix
    reasoning = lambda m: chatml(m) + "<think>\n"  # noqa: E731  (a template that opens thinking itself)
    ctx = teacher_context(render_generation_prompt(reasoning, msgs), prefix)
    assert ctx == chatml(msgs) + prefix and ctx.count("<think>") == 1
    harmony = "<|start|>user<|message|>Q?<|end|><|start|>assistant<|channel|>analysis<|message|>"
    ctx = teacher_context(harmony, prefix, "<|channel|>analysis<|message|>")
    assert ctx == harmony + "Step one. Step two." and "<think>" not in ctx


def test_verdicts_use_the_real_filters_and_graders():
    prompt = {"id": "p", "messages": [SYSTEM, {"role": "user", "content": "3 + 4?"}], "answer": "7"}
    cfg = MixConfig()

    def grade(p, text):
        return grade_math(text, p["answer"])["correct"]

    pre = "<think>\n3 + 4 = 7."

    def v(cont, finish="stop", **kw):
        return continuation_verdict(prompt, pre, cont, finish, cfg.model_copy(update=kw), grade)[0]

    good = " Done.\n</think>\nThe answer is \\boxed{7}."
    loop = " I will now check the sum once more." * 8 + "\n</think>\nThe answer is \\boxed{7}."
    assert v(good) == "kept"
    assert v(good, "length") == "not_finished"
    assert v(" <think>\nAgain.\n</think>\n\\boxed{7}") == "reopens_think"
    assert v(" Done, the answer is \\boxed{7}.") == "structure"  # never closes the reasoning
    assert v(" Done.\n</think>\n  ") == "structure"  # no final answer
    assert v(" Done.\n</think>\n  ", require_structure=False, require_correct=False) == "kept"
    assert v(loop) == "repetitive"
    assert v(loop, repetition=RepetitionConfig(enabled=False)) == "kept"
    assert v(" Done.\n</think>\nThe answer is \\boxed{8}.") == "incorrect"
    assert v(" Done.\n</think>\nThe answer is \\boxed{8}.", require_correct=False) == "kept"
    ungraded = {k: val for k, val in prompt.items() if k != "answer"}
    assert continuation_verdict(ungraded, pre, " ok.\n</think>\n\\boxed{8}", "stop", cfg, grade)[0] == "kept"
    bad = {**prompt, "choices": ["1", "2"], "answer": "Z"}  # an answer that is no choice
    with pytest.raises(DasdError, match="cannot grade prompt 'p'"):
        continuation_verdict(bad, pre, good, "stop", cfg, default_grade)
    # the default grader (dasd.grading) agrees
    assert default_grade(prompt, pre + good) and not default_grade(prompt, pre + " x.\n</think>\n\\boxed{8}")


# ------------------------------------------------------------------------------------------------
# The stage, end to end


def test_e2e_cap_cutoffs_and_funnel(e2e, mix_engines, capsys):
    student, teacher = mix_engines
    cfg, store, curated, funnel, rollouts, examples = e2e
    by_id = {q["prompt"]["id"]: q for q in curated}
    assert len(rollouts) == cfg.n_questions
    differs = 0
    for r in rollouts:
        text = by_id[r["prompt_id"]]["teacher_text"]
        n = student.count_tokens(text)
        differs += n != teacher.count_tokens(text)
        assert r["teacher_student_tokens"] == n and r["cap"] == math.ceil(1.5 * n)
        if r["student"]["finish_reason"] == "length":
            assert r["student"]["n_tokens"] == r["cap"]
        else:
            assert r["verdict"] == "finished" and r["student"]["n_tokens"] < r["cap"] and r["student"]["text"] is None
    assert differs  # a teacher-token cap would have differed
    # the funnel adds up, and matches the records and the manifest
    assert funnel["questions"] == funnel["finished"] + funnel["cut_off"] == cfg.n_questions
    assert funnel["cut_off"] == sum(funnel["skipped"].values()) + funnel["continuations"]
    assert funnel["continuations"] == sum(funnel["dropped"].values()) + funnel["kept"]
    assert funnel["kept"] == len(examples) > 0
    assert funnel["cut_off"] == sum(r["student"]["finish_reason"] == "length" for r in rollouts) > 0
    assert funnel["cut_off_rate"] == pytest.approx(funnel["cut_off"] / funnel["questions"])
    info = RunStore.open(store.root).stage_info("mix")
    assert info["complete"] and info["counts"]["kept"] == funnel["kept"]


def test_e2e_cuts_are_sentence_ends_past_half(e2e):
    cfg, _, _, _, rollouts, _ = e2e
    cut = [r for r in rollouts if r["cut"] and r["cut"]["at"] is not None]
    assert len(cut) >= 3
    for r in cut:
        text, at, L = r["student"]["text"], r["cut"]["at"], r["cut"]["region_chars"]
        assert r["prefix_chars"] == at
        assert cfg.cut_low * L <= at < L
        assert at in sentence_ends(text, L)
        assert cfg.cut_low <= r["cut"]["u"] < cfg.cut_high


def test_e2e_continuation_starts_exactly_where_the_prefix_ends(e2e, mix_engines):
    student, teacher = mix_engines
    _, _, curated, _, rollouts, examples = e2e
    by_rollout = {r["example_id"]: r for r in rollouts if r["example_id"]}
    prompts = {q["prompt"]["id"]: q["prompt"] for q in curated}
    for ex in examples:
        r = by_rollout[ex["id"]]
        content = ex["messages"][-1]["content"]
        prefix = r["student"]["text"][: ex["prefix_chars"]]
        assert content == prefix + r["continuation"]["text"]
        assert content[: ex["prefix_chars"]] == prefix and content[ex["prefix_chars"]:] == r["continuation"]["text"]
        assert ex["messages"][:-1] == prompts[r["prompt_id"]]["messages"] and ex["source"] == "mixed_policy"
        assert "<think>" not in r["continuation"]["text"]


def test_e2e_records_and_examples_are_what_the_engines_return(e2e, mix_engines):
    """Every stored value checked against the engines asked again with the request the stage makes
    (its derived seeds): the student's rollout (text, finish reason, token count), the cut (u from
    its seed, the rule's cut point), the teacher's continuation of its own context + the prefix, and
    each example (the prompt's messages, then prefix + continuation as one assistant turn, the prefix's
    characters, its id and prompt id)."""
    import random

    from dasd.rules.mixing import example_id

    student, teacher = mix_engines
    cfg, _, curated, funnel, rollouts, examples = e2e
    prompts = {q["prompt"]["id"]: q["prompt"] for q in curated}
    gens = student.generate([GenerateRequest(
        id=r["prompt_id"], messages=prompts[r["prompt_id"]]["messages"], n=1, temperature=cfg.student_temperature,
        top_p=cfg.student_top_p, max_tokens=r["cap"], seed=derived_seed("mix-student", cfg.seed, r["prompt_id"]))
        for r in rollouts])
    want_examples = {}
    for r, (g,) in zip(rollouts, gens):
        pid = r["prompt_id"]
        assert (r["student"]["finish_reason"], r["student"]["n_tokens"]) == (g.finish_reason, len(g.token_ids))
        if g.finish_reason != "length":
            assert r["verdict"] == "finished" and r["cut"] is None
            continue
        assert r["student"]["text"] == g.text
        u = random.Random(derived_seed("mix-cut", cfg.seed, pid)).uniform(cfg.cut_low, cfg.cut_high)
        at = cut_point(g.text, u, cfg.cut_low, reasoning_region(g.text))
        assert r["cut"] == {"u": u, "target": u * len(g.text), "region_chars": len(g.text), "at": at}
        if at is None:
            assert r["verdict"] == "no_cut_point" and r["continuation"] is None
            continue
        prefix = g.text[:at]
        ctx = teacher_context(render_generation_prompt(teacher.tokenizer, prompts[pid]["messages"]), prefix)
        (c,) = teacher.generate([GenerateRequest(id=pid, prefix=ctx, n=1, temperature=cfg.teacher_temperature, top_p=cfg.teacher_top_p,
                                                 max_tokens=cfg.max_continuation_tokens, seed=derived_seed("mix-teacher", cfg.seed, pid))])[0]
        assert r["continuation"] == {"text": c.text, "finish_reason": c.finish_reason, "n_tokens": len(c.token_ids)}
        verdict = continuation_verdict(prompts[pid], prefix, c.text, c.finish_reason, cfg, default_grade)
        assert (r["verdict"], r["detail"]) == verdict
        if verdict[0] == "kept":
            want_examples[example_id(r["id"])] = {
                "id": example_id(r["id"]), "prompt_id": pid, "source": "mixed_policy", "prefix_chars": len(prefix),
                "messages": [*prompts[pid]["messages"], {"role": "assistant", "content": prefix + c.text}]}
    assert {e["id"]: e for e in examples} == want_examples and len(want_examples) == funnel["kept"] > 0


@pytest.mark.parametrize("prefix", [
    "<think>\nSchritt für Schritt: 3 + 4 = 7 ✓.",
    "<think>\n日本語の文。次の文。",
    "<think>\nEmoji 😀 step. Café résumé naïve.",
])
def test_teacher_continuation_joins_multibyte_prefix_at_token_level(mix_engines, prefix):
    _, teacher = mix_engines
    msgs = [SYSTEM, {"role": "user", "content": "Compute 3 + 4."}]
    ctx = teacher_context(render_generation_prompt(teacher.tokenizer, msgs), prefix)
    assert ctx.endswith(prefix)
    ctx_ids = teacher.encode(ctx)
    assert teacher.tokenizer.decode(ctx_ids) == ctx  # the context reaches the teacher whole
    g = teacher.generate([GenerateRequest(id="c", prefix=ctx, max_tokens=24, seed=1, temperature=1.0)])[0][0]
    whole = b"".join(token_bytes(teacher.tokenizer, ctx_ids + g.token_ids))
    # the bytes the teacher saw and wrote are the context's bytes followed by the continuation's
    assert whole.decode("utf-8", errors="replace") == ctx + g.text
    assert whole[: len(ctx.encode())] == ctx.encode()


def _sentencepiece_teacher(out) -> str:
    """A tiny Llama with a Llama-2-style tokenizer (Metaspace '▁' words, <0xNN> byte fallback, a decoder
    that strips the leading space of what it decodes), nudged towards '▁'-led pieces and its eos, so
    that a continuation of a prefix usually starts with a space token and ends."""
    from sp_tokenizer import CHARS, llama2_style_tokenizer, save_nudged_llama

    fast = llama2_style_tokenizer([("\u2581", "T"), ("h", "e"), ("\u2581T", "he"), ("\u2581", "S"), ("o", "k")],
                                  chars=CHARS + "<>|", pad=True)
    fast.chat_template = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                          "{% if add_generation_prompt %}[assistant] {% endif %}")
    return save_nudged_llama(fast, ["\u2581T", "\u2581The", "\u2581S"], out, 512)


def test_a_sentencepiece_teachers_continuation_keeps_its_leading_space(mix_engines, tmp_path):
    """A teacher whose decoder strips a leading space (Llama 2, Mistral): the continuation of a prefix is
    what its tokens add to the context, so prefix + continuation is the teacher's own decoding of the
    context and its tokens; the space its first token '▁The' holds is not lost at the join (it was:
    'sentence.The' instead of 'sentence. The')."""
    student, _ = mix_engines
    teacher = make_engine(EngineConfig(model=_sentencepiece_teacher(tmp_path / "sp"), device="cpu", batch_size=16))
    cfg = MixConfig(**{**E2E, "n_questions": 6})
    curated = curated_set(16)
    run_mix(cfg, RunStore(tmp_path / "run"), curated, student, teacher)
    prompts = {q["prompt"]["id"]: q["prompt"] for q in curated}
    conts = [r for r in RunStore.open(tmp_path / "run").read("mix", "rollouts") if r["continuation"]]
    assert len(conts) >= 3
    led_by_space = 0
    for r in conts:
        prefix = r["student"]["text"][: r["prefix_chars"]]
        ctx = teacher_context(render_generation_prompt(teacher.tokenizer, prompts[r["prompt_id"]]["messages"]), prefix)
        (g,) = teacher.generate([GenerateRequest(id="again", prefix=ctx, n=1, temperature=cfg.teacher_temperature,
                                                 max_tokens=cfg.max_continuation_tokens, seed=derived_seed("mix-teacher", cfg.seed, r["prompt_id"]))])[0]
        whole = teacher.tokenizer.decode(teacher.encode(ctx) + g.token_ids, clean_up_tokenization_spaces=False)
        assert whole == ctx + r["continuation"]["text"]
        led_by_space += g.tokens[0].startswith("\u2581")
    assert led_by_space >= 2  # the case at issue really happened


def _independent_prefix_tokens(tokenizer, example):
    """Token indices whose bytes overlap the prefix's bytes, computed from token bytes alone."""
    messages = example["messages"]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    head = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    content = messages[-1]["content"]
    assert text.startswith(head + content)
    b0 = len(head.encode())
    b1 = b0 + len(content[: example["prefix_chars"]].encode())
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    out, pos = set(), 0
    for t, piece in enumerate(token_bytes(tokenizer, ids)):
        if piece and pos < b1 and b0 < pos + len(piece):
            out.add(t)
        pos += len(piece)
    assert pos == len(text.encode())
    return ids, out


def test_prefix_chars_flags_exactly_the_prefix_tokens_in_training(e2e, mix_engines):
    from dasd.train.data import load_examples, prepare

    student, _ = mix_engines
    tok = student.tokenizer
    _, _, curated, _, _, examples = e2e
    handmade = make_example(curated[0]["prompt"], "<think>\nSchritt für Schritt: 3 + 4 = 7 ✓.",
                            " 😀 Then 7 * 2 = 14 ✓.\n</think>\n\\boxed{14}", "hand")
    for ex in examples + [handmade]:
        ids, want = _independent_prefix_tokens(tok, ex)
        enc = encode_example(tok, ex)
        assert enc.input_ids == ids
        assert {t for t, p in enumerate(enc.prefix_mask) if p} == want and want
        masked = encode_example(tok, ex, mask_prefix=True)
        for t in range(len(ids)):
            target = masked.labels[t - 1] if t else IGNORE
            if t in want:
                assert not masked.loss_mask[t] and target == IGNORE
            else:
                assert masked.loss_mask[t] == enc.loss_mask[t]
        assert all(enc.loss_mask[t] for t in want)  # unmasked (default): prefix tokens are trained
    # the training library reads the stage's output as a stage-3 data set
    items = load_examples("mixed", {"mixed": examples})
    for mask in (False, True):
        data = prepare(tok, items, context=4096, mask_prefix=mask, packing=False)
        assert data.n_examples == len(examples)
        for i, ex in enumerate(examples):
            assert data.piece(i).labels.tolist() == encode_example(tok, ex, mask_prefix=mask).labels


class Crash(Exception):
    pass


@contextmanager
def killed_before_the_rollouts_are_rewritten():
    """Run the block as a mix killed once it changed the examples, before it rewrites the rollouts
    (``RunStore.drop_records`` on them raises ``Crash``); the block must be killed there."""
    rewrite = RunStore.drop_records

    def killed(self, stage, name, drop, add=()):
        if name == "rollouts":
            raise Crash()
        return rewrite(self, stage, name, drop, add)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(RunStore, "drop_records", killed)
        with pytest.raises(Crash):
            yield


class CrashAfter:
    """A real engine that dies after ``n`` generate calls (a crash in the middle of the stage)."""

    def __init__(self, engine, n):
        self.engine, self.n = engine, n
        self.name, self.tokenizer, self.max_len = engine.name, engine.tokenizer, engine.max_len

    def count_tokens(self, text):
        return self.engine.count_tokens(text)

    def generate(self, reqs):
        if self.n == 0:
            raise Crash()
        self.n -= 1
        return self.engine.generate(reqs)


def _contents(store):
    rolls = sorted(json.dumps(r, sort_keys=True) for r in store.read("mix", "rollouts"))
    exs = sorted(json.dumps(r, sort_keys=True) for r in store.read("mix", "examples"))
    return rolls, exs


def test_crash_and_resume_equals_uninterrupted(e2e, mix_engines, tmp_path, capsys):
    student, teacher = mix_engines
    cfg, full_store, curated, funnel, _, _ = e2e
    store = RunStore(tmp_path / "run")
    with pytest.raises(Crash):
        run_mix(cfg, store, curated, student, CrashAfter(teacher, 1))  # dies in the second batch
    assert not RunStore.open(store.root).stage_info("mix")["complete"]
    partial = list(store.read("mix", "rollouts"))
    assert 0 < len(partial) < cfg.n_questions
    again = run_mix(cfg, store, curated, student, teacher)
    assert again["new"] == cfg.n_questions - len(partial)
    assert _contents(store) == _contents(full_store)
    volatile = ("new", "stale_examples_removed")
    assert {k: v for k, v in again.items() if k not in volatile} == {k: v for k, v in funnel.items() if k not in volatile}
    assert run_mix(cfg, store, curated, student, teacher)["new"] == 0  # nothing left, nothing twice
    # a smaller draw (prefix-stable) needs no generation and leaves only its own examples to train on
    first4 = {q["prompt"]["id"] for q in draw_questions(curated, 4, cfg.seed)}
    small = run_mix(cfg.model_copy(update={"n_questions": 4}), store, curated, student, teacher)
    assert small["new"] == 0 and small["questions"] == 4
    rolls = {r["example_id"]: r for r in store.read("mix", "rollouts") if r["example_id"]}
    kept4 = sorted(e["id"] for e in full_store.read("mix", "examples") if rolls[e["id"]]["prompt_id"] in first4)
    assert sorted(e["id"] for e in store.read("mix", "examples")) == kept4
    assert small["stale_examples_removed"] == funnel["kept"] - len(kept4) > 0
    # back to the full draw: the removed examples are regenerated, identical
    assert run_mix(cfg, store, curated, student, teacher)["new"] == funnel["kept"] - len(kept4)
    assert _contents(store) == _contents(full_store)
    out = capsys.readouterr().err
    assert "[mix] funnel" in out and re.search(rf"kept \(mixed-policy examples\)\s+{funnel['kept']}\b", out)


KILLED_MID_MIX = """
import json, os, sys
from dasd.engines import EngineConfig, make_engine
from dasd.rules.mixing import MixConfig
from dasd.stages import mix
from dasd.store import RunStore

student_dir, teacher_dir, run, cfg_json, curated_json = sys.argv[1:]
mix.FLUSH_QUESTIONS = 4  # records are written every 4 questions (64 in a real run)
student = make_engine(EngineConfig(model=student_dir, device="cpu", batch_size=16))
teacher = make_engine(EngineConfig(model=teacher_dir, device="cpu", batch_size=16))
calls = {"n": 0}
generate = teacher.generate

def generate_then_die(reqs):  # the process dies as under kill -9: nothing is flushed or closed
    calls["n"] += 1
    if calls["n"] == 4:
        os._exit(9)
    return generate(reqs)

teacher.generate = generate_then_die
mix.run_mix(MixConfig.model_validate_json(cfg_json), RunStore(run), json.loads(curated_json), student, teacher)
"""


def test_a_mix_killed_mid_run_redoes_only_the_questions_not_on_disk(e2e, mix_engines, tmp_path):
    """A process killed (kill -9: no flush) mid-mix: every kept rollout on disk has its example on
    disk, so the rerun asks the engines only about the questions whose records are not on disk, and
    ends as an uninterrupted run. (The two outputs were flushed apart, each every 64 of its own
    records: examples, fewer, lagged, and a rerun redid every kept question whose example was lost.)"""
    import subprocess
    import sys

    student, teacher = mix_engines
    cfg, full_store, curated, funnel, _, _ = e2e
    cfg = cfg.model_copy(update={"batch_questions": 2})  # not part of the ids: the same records as e2e's
    run = tmp_path / "run"
    p = subprocess.run([sys.executable, "-c", KILLED_MID_MIX, student.cfg.model, teacher.cfg.model, str(run),
                        cfg.model_dump_json(), json.dumps(curated)], capture_output=True, text=True)
    assert p.returncode == 9, p.stderr[-3000:]
    store = RunStore(run)
    rolls = list(store.read("mix", "rollouts"))
    examples = {e["id"] for e in store.read("mix", "examples")}
    assert 0 < len(rolls) < cfg.n_questions and len(rolls) % 4 == 0
    assert {r["example_id"] for r in rolls if r["verdict"] == "kept"} == examples and examples
    again = run_mix(cfg, store, curated, student, teacher)
    assert again["new"] == cfg.n_questions - len(rolls)
    assert _contents(store) == _contents(full_store)
    assert again["kept"] == funnel["kept"]


KILLED_REMOVING_STALE = """
import json, os, sys
from pathlib import Path
from dasd.engines import EngineConfig, make_engine
from dasd.rules.mixing import MixConfig
from dasd.stages import mix
from dasd.store import RunStore

student_dir, teacher_dir, run, cfg_json, curated_json = sys.argv[1:]
student = make_engine(EngineConfig(model=student_dir, device="cpu", batch_size=16))
teacher = make_engine(EngineConfig(model=teacher_dir, device="cpu", batch_size=16))
unlink = Path.unlink

def unlink_then_die(path, *a, **k):  # the process dies as under kill -9 once an examples shard is deleted
    unlink(path, *a, **k)
    if path.name.startswith("examples-"):
        os._exit(9)

Path.unlink = unlink_then_die
mix.run_mix(MixConfig.model_validate_json(cfg_json), RunStore(run), json.loads(curated_json), student, teacher)
"""


def test_a_mix_killed_while_removing_stale_examples_keeps_the_current_ones(e2e, mix_engines, tmp_path):
    """A smaller draw removes the examples of the larger one; a process killed (kill -9) while it
    does keeps every example of the draw on disk, so the rerun asks the engines nothing and ends as an
    uninterrupted run. (The kept examples were copied aside and renamed back after the old shards
    were deleted; killed in between, they were lost and their questions done again.)"""
    import shutil
    import subprocess
    import sys

    student, teacher = mix_engines
    cfg, full_store, curated, funnel, _, _ = e2e
    small = cfg.model_copy(update={"n_questions": 4})
    want = RunStore(tmp_path / "want")
    shutil.copytree(full_store.root / "mix", want.root / "mix")
    assert run_mix(small, want, curated, student, teacher)["stale_examples_removed"] > 0
    run = tmp_path / "run"
    shutil.copytree(full_store.root / "mix", run / "mix")
    p = subprocess.run([sys.executable, "-c", KILLED_REMOVING_STALE, student.cfg.model, teacher.cfg.model, str(run),
                        small.model_dump_json(), json.dumps(curated)], capture_output=True, text=True)
    assert p.returncode == 9, p.stderr[-3000:]
    again = run_mix(small, RunStore(run), curated, student, teacher)
    assert again["new"] == 0
    assert _contents(RunStore(run)) == _contents(want)


def test_funnel_of_counts_each_verdict_once():
    recs = [{"verdict": v} for v in ["finished", "finished", "kept", "no_cut_point", "incorrect", "kept"]]
    f = funnel_of(recs)
    assert (f["questions"], f["finished"], f["cut_off"], f["continuations"], f["kept"]) == (6, 2, 4, 3, 2)
    assert f["skipped"]["no_cut_point"] == 1 and f["dropped"]["incorrect"] == 1
    assert f["keep_rate"] == 0.5 and f["cut_off_rate"] == pytest.approx(4 / 6)


def _run_with_selected(tmp_path, curated: list[dict], pools: dict[str, list[dict]]) -> RunStore:
    """A run holding ``curated``'s prompts and, per pool, one selected response ("<pool> text") for each of its questions."""
    store = RunStore(tmp_path / "run")
    with store.writer("sample", "prompts") as w:
        for q in curated:
            w.add(q["prompt"])
    for pool, qs in pools.items():
        with store.writer("select", f"selected-{pool}") as w:
            for q in qs:
                w.add({"id": f"{q['prompt']['id']}-{pool}", "prompt_id": q["prompt"]["id"], "text": f"{pool} text"})
    return store


def test_curated_from_run_joins_selected_responses_to_prompts(tmp_path):
    curated = curated_set(3)
    store = _run_with_selected(tmp_path, curated, {"T1": curated[:2], "T0.6": curated[:2]})
    items = curated_from_run(store)
    assert [(i["prompt"]["id"], i["teacher_text"]) for i in items] == [
        ("q00", "T0.6 text"), ("q01", "T0.6 text"), ("q00", "T1 text"), ("q01", "T1 text")]
    assert {q["teacher_text"] for q in draw_questions(items, 5, 0)} == {"T0.6 text"}  # lowest T is the reference
    with store.writer("select", "selected-T2") as w:
        w.add({"id": "orphan", "prompt_id": "nope", "text": "t"})
    with pytest.raises(DasdError, match="selected-T2: sample orphan names prompt 'nope'"):
        draw_questions(curated_from_run(store), 5, 0)  # read as the draw reads it
    with pytest.raises(DasdError, match="no selected pools"):
        curated_from_run(RunStore(tmp_path / "empty"))


def test_pools_of_different_question_sets_draw_each_question_once(tmp_path):
    # sample.prompts_per_temperature: T0.6 asked one question, T1 all three (a subset of it); the
    # draw takes every question once, with the lowest-temperature response it has as the reference
    curated = curated_set(3)
    store = _run_with_selected(tmp_path, curated, {"T0.6": curated[:1], "T1": curated})
    drawn = draw_questions(curated_from_run(store), 10, 0)
    assert sorted((q["prompt"]["id"], q["teacher_text"]) for q in drawn) == [
        ("q00", "T0.6 text"), ("q01", "T1 text"), ("q02", "T1 text")]


def test_summary_line():
    f = funnel_of([{"verdict": v} for v in ["finished", "kept", "structure", "kept"]])
    assert summary_line(f) == ("[mix] 4 questions -> 3 cut off (75.0%) -> 3 teacher continuations -> "
                               "2 kept (66.7% of cut-offs)")


@pytest.mark.slow
def test_toy_world_mix_with_default_filters(tmp_path, capsys):
    """The toy world's trained models, default filters and grader: kept examples are real solutions."""
    import random

    from dasd.text.filters import check_structure
    from dasd.toy import world
    from dasd.toy.build import default_toy_dir

    toy = default_toy_dir()
    student = make_engine(EngineConfig(model=str(toy / "student"), device="cpu", batch_size=32))
    teacher = make_engine(EngineConfig(model=str(toy / "teacher"), device="cpu", batch_size=32))
    rng = random.Random(0)
    problems = world.make_problems(48, seed=3, split="train", min_steps=5, max_steps=7)
    curated = [{"prompt": world.problem_to_prompt(p), "teacher_text": world.teacher_response(p, rng)[1]} for p in problems]
    store = RunStore(tmp_path / "run")
    # a tight cap (the student base writes compact answers, shorter than the teacher's) forces cut-offs
    cfg = MixConfig(n_questions=48, length_multiple=0.6, max_continuation_tokens=400, batch_questions=16)
    funnel = run_mix(cfg, store, curated, student, teacher)
    print(summary_line(funnel))
    assert funnel["questions"] == 48 and funnel["cut_off"] > 0
    assert funnel["cut_off"] == sum(funnel["skipped"].values()) + funnel["continuations"]
    prompts = {q["prompt"]["id"]: q["prompt"] for q in curated}
    rollouts = {r["example_id"]: r for r in store.read("mix", "rollouts") if r["example_id"]}
    examples = list(store.read("mix", "examples"))
    assert len(examples) == funnel["kept"] > 0
    for ex in examples:
        r = rollouts[ex["id"]]
        content = ex["messages"][-1]["content"]
        assert content == r["student"]["text"][: ex["prefix_chars"]] + r["continuation"]["text"]
        assert check_structure(content) is None and content.startswith("<think>\n")
        assert world.verify(content, prompts[r["prompt_id"]]["answer"])
        assert ex["prefix_chars"] >= 0.5 * r["cut"]["region_chars"]
    assert "[mix] funnel" in capsys.readouterr().err


def test_prefix_too_long_for_the_teacher_is_skipped_not_an_error(mix_engines, tmp_path, capsys):
    student, teacher = mix_engines
    short = make_engine(EngineConfig(model=teacher.name, device="cpu", max_model_len=48))
    cfg = MixConfig(**{**E2E, "n_questions": 4})
    funnel = run_mix(cfg, RunStore(tmp_path / "run"), curated_set(16), student, short)
    assert funnel["cut_off"] > 0 and funnel["continuations"] == 0
    assert funnel["skipped"]["context_too_long"] == funnel["cut_off"] - funnel["skipped"]["no_cut_point"] > 0
    assert "skipped: context_too_long" in capsys.readouterr().err


def _view(store):
    """What a rollout decided (not the detail, which quotes the engine's or the server's words)."""
    return sorted((r["prompt_id"], r["student"]["text"], r["prefix_chars"], (r["continuation"] or {}).get("text"),
                   r["verdict"]) for r in store.read("mix", "rollouts"))


def _teacher_contexts(teacher, cfg, curated, rollouts) -> dict[str, int]:
    """Per cut rollout's question, the teacher tokens of its continuation context."""
    from dasd.rules.mixing import render_generation_prompt, teacher_context

    prompts = {q["prompt"]["id"]: q["prompt"] for q in curated}
    return {r["prompt_id"]: teacher.count_tokens(teacher_context(render_generation_prompt(teacher.tokenizer, prompts[r["prompt_id"]]["messages"]),
                                                                 r["student"]["text"][: r["prefix_chars"]], cfg.teacher_think_opener))
            for r in rollouts if r["prefix_chars"] is not None}


def test_a_context_the_teachers_server_refuses_as_too_long_is_skipped_and_the_rest_continued(e2e, mix_engines, tmp_path):
    """The teacher behind a server with a small context, its max_model_len unknown to the client: the
    server refuses the contexts that leave no room for max_continuation_tokens (400
    context_length_exceeded, as vLLM's server does); those questions are skipped as context_too_long
    with the server's words, exactly those a client that knows max_model_len skips without asking,
    and the others are continued; a rerun asks the server nothing. The in-process teacher with the
    same max_model_len only skips the contexts that do not fit at all (it stops at its context)."""
    from dasd.engines.server import EngineServer, ServerThread

    student, teacher = mix_engines
    cfg, _, curated, _, rollouts, _ = e2e
    size = _teacher_contexts(teacher, cfg, curated, rollouts)
    sizes = sorted(size.values())
    room = cfg.max_continuation_tokens
    limit = sizes[-1]  # the longest context does not fit; those shorter by room or more fit with a continuation
    over = {pid for pid, n in size.items() if n >= limit}
    refusable = {pid for pid, n in size.items() if n + room > limit}
    assert over and refusable - over and len(refusable) < len(size)
    short = make_engine(EngineConfig(model=teacher.name, device="cpu", batch_size=16, max_model_len=limit))
    run_mix(cfg, RunStore(tmp_path / "in-process"), curated, student, short)
    assert {r["prompt_id"] for r in RunStore.open(tmp_path / "in-process").read("mix", "rollouts")
            if r["detail"].startswith("teacher context of")} == over
    server = EngineServer(short, served_name="teacher")
    with ServerThread(server) as srv:
        remote = make_engine(EngineConfig(kind="openai", model="teacher", tokenizer=teacher.name,
                                          openai={"base_urls": [srv.base_url], "timeout_s": 30.0, "concurrency": 4}))
        got = run_mix(cfg, RunStore(tmp_path / "run"), curated, student, remote)
        store = RunStore.open(tmp_path / "run")
        assert store.stage_info("mix")["complete"] and got["continuations"] > 0
        refused = [r for r in store.read("mix", "rollouts") if "HTTP 400" in r["detail"]]
        assert {r["prompt_id"] for r in refused} == refusable and all(r["verdict"] == "context_too_long" for r in refused)
        assert all(re.search(rf"HTTP 400: .*prompt has {size[r['prompt_id']]} tokens, max_model_len is {limit}" if r["prompt_id"] in over
                             else rf"HTTP 400: .*maximum context length is {limit} tokens and your request has {size[r['prompt_id']]} input tokens",
                             r["detail"]) for r in refused)
        assert {(r["prompt_id"], r["student"]["text"], r["prefix_chars"]) for r in store.read("mix", "rollouts")} \
            == {(r["prompt_id"], r["student"]["text"], r["prefix_chars"]) for r in rollouts}
        served = server.stats["requests"]
        assert run_mix(cfg, RunStore(tmp_path / "run"), curated, student, remote)["new"] == 0
        assert server.stats["requests"] == served
        # with teacher.max_model_len known, a context that leaves no room for max_continuation_tokens
        # is skipped without asking (a vLLM server counts context + max_tokens and would refuse it)
        known = make_engine(EngineConfig(kind="openai", model="teacher", tokenizer=teacher.name, max_model_len=limit,
                                         openai={"base_urls": [srv.base_url], "timeout_s": 30.0, "concurrency": 4}))
        capped = run_mix(cfg, RunStore(tmp_path / "known"), curated, student, known)
    fits = sum(n + cfg.max_continuation_tokens <= limit for n in sizes)
    assert capped["continuations"] == fits == got["continuations"]
    assert capped["skipped"]["context_too_long"] == len(sizes) - fits
    assert {r["detail"] for r in RunStore.open(tmp_path / "known").read("mix", "rollouts") if r["verdict"] == "context_too_long"} \
        == {f"teacher context of {n} tokens + max_continuation_tokens past the teacher's max_model_len {limit}"
            for n in sizes if n + cfg.max_continuation_tokens > limit}


def _one_question_too_long_for_the_student(student):
    """Six questions, their prompts' student tokens, and a student context (``limit``) that holds
    each of them with its cap but q02, whose prompt alone does not fit."""
    curated = curated_set(6)
    curated[2]["prompt"]["messages"][-1]["content"] += " Schritt für Schritt ✓" * 12
    n = {q["prompt"]["id"]: len(student.context_ids(q["prompt"]["messages"], None, "q")) for q in curated}
    caps = {q["prompt"]["id"]: student_cap(student.count_tokens(q["teacher_text"]), MixConfig(**E2E).length_multiple) for q in curated}
    limit = max(n[k] + caps[k] for k in n if k != "q02")
    assert n["q02"] >= limit
    return curated, n, limit


def test_a_question_too_long_for_the_student_is_skipped_not_an_error(mix_engines, tmp_path, capsys):
    """A question whose prompt does not fit the student's context (in-process: max_model_len; over
    HTTP: the server's refusal) is skipped as prompt_too_long, not counted as a cut-off, and the
    other questions go on; over HTTP as in-process."""
    from dasd.engines.server import EngineServer, ServerThread

    student, teacher = mix_engines
    curated, n, limit = _one_question_too_long_for_the_student(student)
    short = make_engine(EngineConfig(model=student.name, device="cpu", batch_size=16, max_model_len=limit))
    cfg = MixConfig(**{**E2E, "n_questions": 6})
    want = run_mix(cfg, RunStore(tmp_path / "in-process"), curated, short, teacher)
    assert want["prompt_too_long"] == 1 and want["questions"] == 6
    assert want["cut_off"] == 6 - want["finished"] - 1
    (rec,) = [r for r in RunStore.open(tmp_path / "in-process").read("mix", "rollouts") if r["verdict"] == "prompt_too_long"]
    assert rec["prompt_id"] == "q02" and rec["detail"] == f"request 'q02': prompt has {n['q02']} tokens, max_model_len is {limit}"
    assert re.search(r"question too long for the student\s+1", capsys.readouterr().err)
    from dasd.report.data import mix_section
    from dasd.report.view import RunView

    html = str(mix_section(RunView(RunStore.open(tmp_path / "in-process"))))
    assert re.search(r"question too long for the student \(no rollout\)</td><td[^>]*>1<", html), html
    with ServerThread(EngineServer(short, served_name="student")) as srv:
        remote = make_engine(EngineConfig(kind="openai", model="student", tokenizer=student.name,
                                          openai={"base_urls": [srv.base_url], "timeout_s": 30.0, "concurrency": 4}))
        got = run_mix(cfg, RunStore(tmp_path / "run"), curated, remote, teacher)
    # (a sample over HTTP draws from another seed than in-process: openai.sample_seed; the verdicts on q02 agree)
    assert got["prompt_too_long"] == 1 and got["cut_off"] == 6 - got["finished"] - 1
    (rec,) = [r for r in RunStore.open(tmp_path / "run").read("mix", "rollouts") if r["verdict"] == "prompt_too_long"]
    assert rec["prompt_id"] == "q02" and re.search(rf"HTTP 400: .*prompt has {n['q02']} tokens, max_model_len is {limit}", rec["detail"])


def test_a_question_whose_prompt_and_cap_pass_the_students_context_is_too_long_not_a_cut_off(e2e, mix_engines, tmp_path):
    """A student whose context holds the question but not the question + its cap: a rollout that
    stops at the context, short of the cap, is no cut-off but prompt_too_long, and every other
    question gets the rollout an unbounded student writes. (Such a rollout counted as a cut-off,
    shorter than its cap.) Over HTTP the server refuses every question whose prompt + cap passes
    its context, as vLLM's server does: each is prompt_too_long with the server's words."""
    from dasd.engines.server import EngineServer, ServerThread

    student, teacher = mix_engines
    cfg, _, curated, _, rollouts, _ = e2e
    prompts = {q["prompt"]["id"]: q["prompt"] for q in curated}
    asked = {r["prompt_id"]: len(student.context_ids(prompts[r["prompt_id"]]["messages"], None, "q")) for r in rollouts}
    caps = {r["prompt_id"]: r["cap"] for r in rollouts}
    limit = sorted(asked[pid] + caps[pid] for pid in asked)[len(asked) // 2]
    left = {pid: limit - n for pid, n in asked.items()}  # the tokens the context leaves each rollout
    assert all(n > 0 for n in left.values()) and any(left[pid] < caps[pid] for pid in left)
    # the rollouts the context stops: those that would not finish within what it leaves
    stopped = {r["prompt_id"] for r in rollouts if left[r["prompt_id"]] < r["cap"]
               and not (r["student"]["finish_reason"] == "stop" and r["student"]["n_tokens"] <= left[r["prompt_id"]])}
    assert 0 < len(stopped) < len(rollouts)
    short = make_engine(EngineConfig(model=student.name, device="cpu", batch_size=16, max_model_len=limit))
    with ServerThread(EngineServer(short, served_name="student")) as srv:
        remote = make_engine(EngineConfig(kind="openai", model="student", tokenizer=student.name, max_model_len=limit,
                                          openai={"base_urls": [srv.base_url], "timeout_s": 30.0, "concurrency": 4}))
        for name, engine in (("in-process", short), ("http", remote)):
            funnel = run_mix(cfg, RunStore(tmp_path / name), curated, engine, teacher)
            got = {r["prompt_id"]: r for r in RunStore.open(tmp_path / name).read("mix", "rollouts")}
            assert funnel["questions"] == len(rollouts) and funnel["prompt_too_long"] > 0
            for pid, g in got.items():
                if g["verdict"] == "prompt_too_long" and name == "http":
                    assert left[pid] < caps[pid] and g["student"] == {"text": None, "finish_reason": None, "n_tokens": 0}
                    assert f"HTTP 400: 'max_tokens' or 'max_completion_tokens' is too large: {caps[pid]}." in g["detail"]
                elif g["verdict"] == "prompt_too_long":
                    assert left[pid] < caps[pid] and g["student"] == {"text": None, "finish_reason": "length", "n_tokens": left[pid]}
                    assert g["detail"] == f"the student's context (max_model_len {limit}) ended the rollout after {left[pid]} of its {caps[pid]} tokens"
                elif g["student"]["finish_reason"] == "length":
                    assert g["student"]["n_tokens"] == g["cap"]  # every cut-off is one at its cap
            if name == "in-process":  # the same seeds (over HTTP a sample draws from another: openai.sample_seed):
                # exactly the stopped rollouts are too long, the others are an unbounded student's
                assert {pid for pid, g in got.items() if g["verdict"] == "prompt_too_long"} == stopped
                assert all(got[r["prompt_id"]] == r for r in rollouts if r["prompt_id"] not in stopped)
            else:
                assert {pid for pid, g in got.items() if g["verdict"] == "prompt_too_long"} == {p for p in left if left[p] < caps[p]}


def test_a_continuation_the_teachers_context_stops_is_context_too_long_not_unfinished(e2e, mix_engines, tmp_path):
    """An hf teacher whose context holds each prefix but not every prefix + max_continuation_tokens:
    a continuation that stops at the context, short of max_continuation_tokens, is context_too_long
    (judged again once the context grows), not not_finished, which is for continuations that hit
    max_continuation_tokens; every other question is decided as with an unbounded teacher. (It was
    not_finished, and never asked again after max_model_len was raised.)"""
    student, teacher = mix_engines
    cfg, _, curated, _, rollouts, _ = e2e
    ctx = _teacher_contexts(teacher, cfg, curated, rollouts)
    limit = max(ctx.values()) + cfg.max_continuation_tokens // 2
    left = {pid: limit - n for pid, n in ctx.items()}  # the tokens the context leaves each continuation
    stopped = {r["prompt_id"] for r in rollouts if r["prompt_id"] in ctx and r["continuation"]["n_tokens"] > left[r["prompt_id"]]
               or (r["prompt_id"] in ctx and r["continuation"]["finish_reason"] == "length" and left[r["prompt_id"]] < cfg.max_continuation_tokens)}
    assert 0 < len(stopped) < len(ctx)
    short = make_engine(EngineConfig(model=teacher.name, device="cpu", batch_size=16, max_model_len=limit))
    run_mix(cfg, RunStore(tmp_path / "run"), curated, student, short)
    got = {r["prompt_id"]: r for r in RunStore.open(tmp_path / "run").read("mix", "rollouts")}
    for r in rollouts:
        g, pid = got[r["prompt_id"]], r["prompt_id"]
        if pid in stopped:
            assert g["verdict"] == "context_too_long" and g["continuation"] is None and "judged" in g
            assert g["detail"] == f"the teacher's context (max_model_len {limit}) ended the continuation after {left[pid]} " \
                                  f"of max_continuation_tokens {cfg.max_continuation_tokens}"
        else:
            assert g == r


def test_questions_too_long_are_judged_again_once_the_context_grew(e2e, mix_engines, tmp_path, capsys):
    """A rollout skipped as too long keeps the context it was judged against: rerun with the same
    contexts, nothing is asked again; with the teacher's (or the student's) max_model_len raised,
    exactly those questions are judged again, and the run ends as one made with the larger context
    from the start. (They were never judged again: the rollout ids do not hash the context.)"""
    student, teacher = mix_engines
    cfg, full_store, curated, funnel, rollouts, _ = e2e
    prompts = {q["prompt"]["id"]: q["prompt"] for q in curated}
    sizes = sorted(teacher.count_tokens(teacher_context(render_generation_prompt(teacher.tokenizer, prompts[r["prompt_id"]]["messages"]),
                                                        r["student"]["text"][: r["prefix_chars"]], cfg.teacher_think_opener))
                   for r in rollouts if r["prefix_chars"] is not None)
    short_teacher = make_engine(EngineConfig(model=teacher.name, device="cpu", batch_size=16, max_model_len=sizes[len(sizes) // 2]))
    store = RunStore(tmp_path / "run")
    first = run_mix(cfg, store, curated, student, short_teacher)
    too_long = first["skipped"]["context_too_long"]
    assert 0 < too_long < len(sizes) and first["kept"] < funnel["kept"]
    assert run_mix(cfg, store, curated, student, short_teacher)["new"] == 0  # the same context: not asked again
    capsys.readouterr()
    again = run_mix(cfg, store, curated, student, teacher)
    assert again["new"] == too_long and again["skipped"]["context_too_long"] == 0
    assert f"{too_long} question(s) skipped as too long for another context" in capsys.readouterr().err
    assert _contents(store) == _contents(full_store)
    assert {k: v for k, v in again.items() if k != "new"} == {k: v for k, v in funnel.items() if k != "new"}
    # the student's side: a question longer than its context, then the context raised
    curated, _, limit = _one_question_too_long_for_the_student(student)
    short_student = make_engine(EngineConfig(model=student.name, device="cpu", batch_size=16, max_model_len=limit))
    small = cfg.model_copy(update={"n_questions": 6})
    store, want = RunStore(tmp_path / "student"), RunStore(tmp_path / "student-want")
    assert run_mix(small, store, curated, short_student, teacher)["prompt_too_long"] == 1
    assert run_mix(small, store, curated, short_student, teacher)["new"] == 0
    again = run_mix(small, store, curated, student, teacher)
    assert again["new"] == 1 and again["prompt_too_long"] == 0
    ref = run_mix(small, want, curated, student, teacher)
    assert _contents(store) == _contents(want)
    assert {k: v for k, v in again.items() if k != "new"} == {k: v for k, v in ref.items() if k != "new"}


def test_teacher_over_openai_http_gives_the_same_data(e2e, mix_engines, tmp_path, capsys):
    """The teacher behind a real OpenAI-schema server on loopback (the `openai` engine's raw
    completions) continues the same contexts as the in-process hf teacher: same cuts, and each
    continuation (text, finish, tokens) is the one the in-process teacher writes from the seed the
    server is sent (``openai.sample_seed``, another draw than in process), with the same verdict."""
    from dasd.engines.openai import sample_seed
    from dasd.engines.server import EngineServer, ServerThread

    student, teacher = mix_engines
    cfg, _, curated, _, rollouts, _ = e2e
    with ServerThread(EngineServer(teacher, served_name="teacher")) as srv:
        remote = make_engine(EngineConfig(
            kind="openai", model="teacher", tokenizer=teacher.name,
            openai={"base_urls": [srv.base_url], "timeout_s": 30.0, "concurrency": 4},
        ))
        run_mix(cfg, RunStore(tmp_path / "run"), curated, student, remote)
        got = {r["prompt_id"]: r for r in RunStore.open(tmp_path / "run").read("mix", "rollouts")}
    prompts = {q["prompt"]["id"]: q["prompt"] for q in curated}
    continued = 0
    for r in rollouts:
        g, pid = got[r["prompt_id"]], r["prompt_id"]
        assert (g["student"], g["cut"], g["prefix_chars"]) == (r["student"], r["cut"], r["prefix_chars"])
        if r["continuation"] is None:
            assert (g["verdict"], g["detail"]) == (r["verdict"], r["detail"])
            continue
        prefix = r["student"]["text"][: r["prefix_chars"]]
        ctx = teacher_context(render_generation_prompt(teacher.tokenizer, prompts[pid]["messages"]), prefix)
        (c,) = teacher.generate([GenerateRequest(id=pid, prefix=ctx, n=1, temperature=cfg.teacher_temperature, top_p=cfg.teacher_top_p,
                                                 max_tokens=cfg.max_continuation_tokens,
                                                 seed=sample_seed(derived_seed("mix-teacher", cfg.seed, pid), 0))])[0]
        assert g["continuation"] == {"text": c.text, "finish_reason": c.finish_reason, "n_tokens": len(c.token_ids)}
        assert (g["verdict"], g["detail"]) == continuation_verdict(prompts[pid], prefix, c.text, c.finish_reason, cfg, default_grade)
        continued += c.text != r["continuation"]["text"]
    assert continued  # the seeds differ: the test compares the server's draws, not the in-process ones


def test_student_over_openai_http_counts_its_tokens(e2e, mix_engines, tmp_path):
    """An openai server sends no token ids by default: a rollout's n_tokens are its log-probs'
    count (they were 0), so a cut-off rollout has exactly ``cap`` tokens, as in-process."""
    from dasd.engines.server import EngineServer, ServerThread

    student, teacher = mix_engines
    cfg = e2e[0]
    with ServerThread(EngineServer(student, served_name="student")) as srv:
        remote = make_engine(EngineConfig(kind="openai", model="student", tokenizer=student.name,
                                          openai={"base_urls": [srv.base_url], "timeout_s": 30.0, "concurrency": 4}))
        run_mix(cfg.model_copy(update={"n_questions": 6}), RunStore(tmp_path / "run"), curated_set(16), remote, teacher)
    rollouts = list(RunStore.open(tmp_path / "run").read("mix", "rollouts"))
    assert any(r["student"]["finish_reason"] == "length" for r in rollouts)
    for r in rollouts:
        n = r["student"]["n_tokens"]
        assert n == r["cap"] if r["student"]["finish_reason"] == "length" else 0 < n < r["cap"]


@pytest.mark.slow
def test_stage3_trains_on_mix_examples_with_prefix_unmasked_or_masked(e2e, mix_engines, tmp_path):
    """The real trainer on the stage's output: masking the prefix removes exactly its targets from the loss."""
    from dasd.train.config import StageConfig
    from dasd.train.recipes import demo_recipe
    from dasd.train.trainer import run_training

    student, _ = mix_engines
    examples = e2e[5]
    want_loss = {m: sum(encode_example(student.tokenizer, ex, mask_prefix=m).n_loss_tokens for ex in examples)
                 for m in (False, True)}
    assert want_loss[True] < want_loss[False]
    for mask in (False, True):
        cfg = demo_recipe(student.name, stages=[StageConfig(name="stage3_mixed", data="mixed", init="base", epochs=1.0)],
                          mask_prefix=mask, packing=False, grad_accum=1, context=2048)
        res = run_training(cfg, tmp_path / f"mask-{mask}", {"mixed": examples})[0]
        curve = [json.loads(line) for line in open(res["curve"], encoding="utf-8")]
        assert res["examples"] == len(examples)
        assert sum(c["loss_tokens"] for c in curve) == want_loss[mask]


def test_an_interrupted_mix_never_feeds_training(e2e, mix_engines, tmp_path):
    """Issue 15, item 1: `mixed` is offered to training only once the mix finished with this config."""
    from dasd.config import load_config
    from dasd.runs import named_pools

    student, teacher = mix_engines
    cfg, full_store, curated, _, _, _ = e2e
    run_cfg = load_config(None, [f"run_dir={tmp_path / 'run'}"]).model_copy(update={"mix": cfg})
    store = RunStore(tmp_path / "run")
    with pytest.raises(Crash):
        run_mix(cfg, store, curated, student, CrashAfter(teacher, 1))
    assert 0 < store.count("mix", "examples")  # partial examples are on disk...
    assert "mixed" not in named_pools(run_cfg, store)  # ...and are not training data
    run_mix(cfg, store, curated, student, teacher)
    got = named_pools(run_cfg, store)["mixed"]
    assert sorted(e["id"] for e in got) == sorted(e["id"] for e in full_store.read("mix", "examples"))
    other = run_cfg.model_copy(update={"mix": cfg.model_copy(update={"n_questions": cfg.n_questions + 1})})
    assert "mixed" not in named_pools(other, store)  # finished, but for another config


def test_no_selected_pools_is_an_error_before_any_model_is_loaded(tmp_path):
    """A run without `dasd select` output: `dasd mix` says so at once, without loading the student
    and teacher first (here they do not even exist: the error must still be about the run)."""
    from dasd.config import load_config
    from dasd.stages.mix import run_mix_stage

    RunStore(tmp_path / "run")  # a run with a manifest and nothing selected
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"teacher.model={tmp_path / 'missing-teacher'}",
                             f"student.model={tmp_path / 'missing-student'}"])
    with pytest.raises(DasdError, match=r"no selected pools \(RUN/select/selected-\*\); run `dasd select` first"):
        run_mix_stage(cfg)


def test_a_question_whose_selected_teacher_response_changed_is_asked_again(e2e, mix_engines, tmp_path):
    """`dasd select` again picks another teacher response for some questions (it sets the student's
    cap): a rerun of mix asks exactly those again, removing their old rollouts and examples, and
    ends with what a fresh run on the new selection writes. (Rollout ids do not name the teacher
    text: the old rollouts, made under the old caps, were kept.)"""
    import shutil

    student, teacher = mix_engines
    cfg, store, curated, _, rollouts, _ = e2e
    drawn = {r["prompt_id"] for r in rollouts}
    kept = sorted(r["prompt_id"] for r in rollouts if r["verdict"] == "kept")
    changed = {kept[0], sorted(drawn - set(kept))[0]} if kept else set(sorted(drawn)[:2])
    new = [{**q, "teacher_text": q["teacher_text"] + " Nochmals: 1 + 1 = 2 ✓, und 2 + 2 = 4."} if q["prompt"]["id"] in changed
           else q for q in curated]
    shutil.copytree(store.root, tmp_path / "rerun")
    again = run_mix(cfg, RunStore.open(tmp_path / "rerun"), new, student, teacher)
    assert again["new"] == len(changed)
    fresh = run_mix(cfg, RunStore(tmp_path / "fresh"), new, student, teacher)
    assert {k: v for k, v in again.items() if k not in ("new", "stale_examples_removed")} == \
        {k: v for k, v in fresh.items() if k not in ("new", "stale_examples_removed")}
    for name in ("rollouts", "examples"):
        got = sorted(json.dumps(r, sort_keys=True) for r in RunStore.open(tmp_path / "rerun").read("mix", name))
        want = sorted(json.dumps(r, sort_keys=True) for r in RunStore.open(tmp_path / "fresh").read("mix", name))
        assert got == want, name
    caps = {r["prompt_id"]: r["cap"] for r in RunStore.open(tmp_path / "rerun").read("mix", "rollouts")}
    old = {r["prompt_id"]: r["cap"] for r in rollouts}
    assert {pid for pid in drawn if caps[pid] != old[pid]} == changed


def _graded_toy_mix(tmp_path):
    """A toy run ``tmp_path/run`` of 12 prompts with reference answers, through sample, filter, score,
    select and mix (graded); ``(rows, write(rows), cfg(run))``: the prompts, what rewrites the prompts
    file, and the config of a run folder under ``tmp_path``. Filter does not grade
    (``filter.require_correct=false``): a corrected answer changes what mix judges, not which teacher
    responses are selected, so the stages before mix, run again after it (``_resample``), keep their
    records."""
    from dasd.prompts import toy_prompts
    from dasd.stages.filter import run_filter
    from dasd.stages.mix import run_mix_stage
    from dasd.stages.sample import run_sample
    from dasd.stages.score import run_score
    from dasd.stages.select import run_select

    write, cfg = graded_toy_run(tmp_path, "sample.k=1", "sample.temperatures=[0.6]", "mix.n_questions=12",
                                "mix.length_multiple=0.6", "mix.max_continuation_tokens=400",
                                "filter.require_correct=false")

    rows = toy_prompts(12, 0, "train", None)
    write(rows)
    for stage in (run_sample, run_filter, run_score, run_select, run_mix_stage):
        stage(cfg("run"))
    return rows, write, cfg


def _resample(cfg) -> None:
    """`dasd sample` with the prompts file as it is now (a corrected answer replaces the run's prompt
    record), then filter, score and select, which read the prompt records and must have done so
    before mix reads them (``runs.require_current``): nothing else changes for them."""
    from dasd.stages.filter import run_filter
    from dasd.stages.sample import run_sample
    from dasd.stages.score import run_score
    from dasd.stages.select import run_select

    for stage in (run_sample, run_filter, run_score, run_select):
        stage(cfg)


def test_a_corrected_answer_makes_mix_judge_again_without_new_rollouts(tmp_path, caplog):
    """A toy run (sample, filter, score, select, mix); two prompts' reference answers are then
    corrected with `dasd sample` (same messages, another answer: the run's prompt record is
    replaced). A kept mixed example the new answer fails still fed training, and `dasd mix` took
    its rollouts as done, judged against the old answer. Now training takes no mixed data until
    `dasd mix` ran again, which judges again exactly those two questions' continuations, without
    asking the student or teacher anything, and ends with what a fresh mix on the corrected run writes."""
    import shutil

    from dasd.grading.grade import grade_one
    from dasd.runs import mix_not_current, named_pools
    from dasd.stages.mix import run_mix_stage

    rows, write, cfg = _graded_toy_mix(tmp_path)
    store = RunStore.open(tmp_path / "run")
    rollouts = {r["prompt_id"]: r for r in store.read("mix", "rollouts")}
    full = {pid: r["student"]["text"][: r["prefix_chars"]] + r["continuation"]["text"] for pid, r in rollouts.items()
            if r["continuation"]}
    kept = next(pid for pid in sorted(full) if rollouts[pid]["verdict"] == "kept")
    wrong = next(pid for pid in sorted(full) if rollouts[pid]["verdict"] == "incorrect")
    by_id = {p["id"]: p for p in rows}
    fixed = {kept: str((int(by_id[kept]["answer"]) + 1) % 10),  # its kept example now fails
             wrong: grade_one(by_id[wrong], full[wrong])["extracted"]}  # its dropped continuation now passes
    write([{**p, "answer": fixed.get(p["id"], p["answer"])} for p in rows])
    _resample(cfg("run"))

    store = RunStore.open(tmp_path / "run")
    assert mix_not_current(cfg("run"), store) == ("`dasd mix` judged against prompt records the run has replaced "
                                                  "since (a reference answer corrected)")
    assert "mixed" not in named_pools(cfg("run"), store)  # the example judged against the old answer is not trained on

    shutil.copytree(tmp_path / "run", tmp_path / "fresh")
    shutil.rmtree(tmp_path / "fresh" / "mix")
    fresh = RunStore(tmp_path / "fresh")
    fresh.manifest["stages"].pop("mix")
    fresh.save_manifest()
    with killed_before_the_rollouts_are_rewritten():
        run_mix_stage(cfg("run"))
    assert {e["prompt_id"] for e in RunStore.open(tmp_path / "run").read("mix", "examples")} >= {wrong}
    assert mix_not_current(cfg("run"), RunStore.open(tmp_path / "run")) == "`dasd mix` has not finished"
    caplog.clear()
    again = run_mix_stage(cfg("run"))
    assert again["new"] == 0  # no question asked again: the rollouts and continuations stand
    assert ("2 question(s) judged against another record of their prompt than the run's now (a reference answer "
            "corrected): judged again, their rollouts and continuations kept") in caplog.text
    store = RunStore.open(tmp_path / "run")
    verdicts = {r["prompt_id"]: r["verdict"] for r in store.read("mix", "rollouts")}
    assert verdicts == {**{pid: r["verdict"] for pid, r in rollouts.items()}, kept: "incorrect", wrong: "kept"}
    want = run_mix_stage(cfg("fresh"))
    assert {k: v for k, v in again.items() if k != "new"} == {k: v for k, v in want.items() if k != "new"}
    for name in ("rollouts", "examples"):
        got = sorted(json.dumps(r, sort_keys=True) for r in store.read("mix", name))
        assert got == sorted(json.dumps(r, sort_keys=True) for r in RunStore.open(tmp_path / "fresh").read("mix", name))
    assert mix_not_current(cfg("run"), store) is None
    mixed = named_pools(cfg("run"), store)["mixed"]
    assert {e["prompt_id"] for e in mixed} == {pid for pid, v in verdicts.items() if v == "kept"}
    assert kept not in {e["prompt_id"] for e in mixed} and wrong in {e["prompt_id"] for e in mixed}


def test_an_example_written_by_a_killed_rejudge_goes_when_its_rollout_is_not_kept(tmp_path):
    """`dasd mix` killed after it wrote the example of a question a corrected answer now keeps, before
    it rewrote that rollout (still judged incorrect on disk); the correction is then taken back
    (`dasd sample` with the first answer again). The rollout stands as incorrect, but its example
    stayed in RUN/mix/examples (the draw's example ids were all kept) and fed training. Now the
    examples are those of the draw's kept rollouts: what the mix before the correction wrote."""
    from dasd.grading.grade import grade_one
    from dasd.runs import named_pools
    from dasd.stages.mix import run_mix_stage

    rows, write, config = _graded_toy_mix(tmp_path)
    cfg = config("run")
    store = RunStore.open(tmp_path / "run")
    before = sorted(json.dumps(e, sort_keys=True) for e in store.read("mix", "examples"))
    rollouts = {r["prompt_id"]: r for r in store.read("mix", "rollouts")}
    wrong = next(pid for pid in sorted(rollouts) if rollouts[pid]["verdict"] == "incorrect")
    r = rollouts[wrong]
    full = r["student"]["text"][: r["prefix_chars"]] + r["continuation"]["text"]
    fixed = grade_one(next(p for p in rows if p["id"] == wrong), full)["extracted"]  # its continuation passes it
    write([{**p, "answer": fixed} if p["id"] == wrong else p for p in rows])
    _resample(cfg)
    with killed_before_the_rollouts_are_rewritten():
        run_mix_stage(cfg)
    assert wrong in {e["prompt_id"] for e in RunStore.open(tmp_path / "run").read("mix", "examples")}

    write(rows)  # the correction taken back: the rollout on disk was judged against this record
    _resample(cfg)
    run_mix_stage(cfg)
    store = RunStore.open(tmp_path / "run")
    assert {r["prompt_id"]: r["verdict"] for r in store.read("mix", "rollouts")}[wrong] == "incorrect"
    assert sorted(json.dumps(e, sort_keys=True) for e in store.read("mix", "examples")) == before
    assert wrong not in {e["prompt_id"] for e in named_pools(cfg, store)["mixed"]}


def test_a_question_asked_again_after_a_killed_rejudge_gets_the_example_of_its_new_rollout(mix_engines, tmp_path):
    """`dasd mix` killed after it wrote the example of a question a corrected answer now keeps, before
    it rewrote that rollout; then the question's selected teacher response changed (`dasd select`
    again), so the rerun asks it again. Its example on disk, of the old rollout, was not replaced by the
    new rollout's (an example id on disk is not written twice). Now the examples of the rollouts asked
    again go first: the run ends with a fresh mix's rollouts and examples."""
    student, teacher = mix_engines
    cfg = MixConfig(**{**E2E, "require_correct": True, "n_questions": 8})

    def grade(prompt, text):  # the reference decides, whatever the text
        return prompt["answer"] == "right"

    curated = [{**q, "prompt": {**q["prompt"], "answer": "wrong"}} for q in curated_set(8)]
    store = RunStore(tmp_path / "run")
    run_mix(cfg, store, curated, student, teacher, grade=grade)
    rollouts = {r["prompt_id"]: r for r in store.read("mix", "rollouts")}
    pid = next(p for p in sorted(rollouts) if rollouts[p]["verdict"] == "incorrect")
    fixed = [{**q, "prompt": {**q["prompt"], "answer": "right"}} if q["prompt"]["id"] == pid else q for q in curated]
    with killed_before_the_rollouts_are_rewritten():
        run_mix(cfg, store, fixed, student, teacher, grade=grade)
    old = {e["prompt_id"]: e for e in store.read("mix", "examples")}[pid]
    # a response three times as long: a larger cap, a longer rollout, a later cut
    final = [{**q, "teacher_text": q["teacher_text"] * 3} if q["prompt"]["id"] == pid else q for q in fixed]
    assert run_mix(cfg, store, final, student, teacher, grade=grade)["new"] == 1
    assert {r["prompt_id"]: r["verdict"] for r in store.read("mix", "rollouts")}[pid] == "kept"
    fresh = RunStore(tmp_path / "fresh")
    run_mix(cfg, fresh, final, student, teacher, grade=grade)
    assert _contents(store) == _contents(fresh)
    assert old not in list(store.read("mix", "examples"))


def test_one_mix_reads_its_rollouts_once(e2e, mix_engines, tmp_path, monkeypatch):
    """`dasd mix` read RUN/mix/rollouts three times (the stale rollouts, the done ones, the funnel):
    now once, whether the run starts fresh, resumes or has nothing left to do, with the same funnel
    and outputs. (Opening its writer reads the ids on disk besides: ``store.ShardWriter``.)"""
    import shutil

    student, teacher = mix_engines
    cfg, full_store, curated, funnel, _, _ = e2e
    reads = []
    read = RunStore.read

    def counted(self, stage, name):
        reads.append((stage, name))
        return read(self, stage, name)

    monkeypatch.setattr(RunStore, "read", counted)
    store = RunStore(tmp_path / "run")
    with pytest.raises(Crash):
        run_mix(cfg, store, curated, student, CrashAfter(teacher, 1))
    for resumed in (True, False):  # the rest of the questions, then none
        reads.clear()
        got = run_mix(cfg, store, curated, student, teacher)
        assert reads.count(("mix", "rollouts")) == 1
        assert (got["new"] > 0) == resumed
        assert {k: v for k, v in got.items() if k != "new"} == {k: v for k, v in funnel.items() if k != "new"}
    monkeypatch.undo()
    assert _contents(store) == _contents(full_store)
    shutil.rmtree(tmp_path / "run")
    monkeypatch.setattr(RunStore, "read", counted)
    reads.clear()
    assert run_mix(cfg, RunStore(tmp_path / "run"), curated, student, teacher) == funnel
    assert reads.count(("mix", "rollouts")) == 1


def test_rollouts_of_an_earlier_dasd_are_judged_once_and_not_asked_again(e2e, mix_engines, tmp_path, caplog):
    """Rollouts written before they recorded the prompt record they were judged against
    (``prompt_record_id``) cannot tell whether a reference answer was corrected since: the next
    mix judges their continuations again once (the engines are asked nothing), then takes them as
    they are."""
    import shutil

    student, teacher = mix_engines
    cfg, full_store, curated, funnel, rollouts, _ = e2e
    (tmp_path / "run" / "mix").mkdir(parents=True)
    for p in (full_store.root / "mix").glob("examples-*"):
        shutil.copy(p, tmp_path / "run" / "mix" / p.name)
    (tmp_path / "run" / "mix" / "rollouts-00000.jsonl").write_text(
        "".join(json.dumps({k: v for k, v in r.items() if k != "prompt_record_id"}) + "\n" for r in rollouts),
        encoding="utf-8")
    store = RunStore(tmp_path / "run")
    caplog.clear()
    again = run_mix(cfg, store, curated, student, teacher)
    assert again == {**funnel, "new": 0}
    assert f"{cfg.n_questions} question(s) judged against another record of their prompt" in caplog.text
    assert _contents(store) == _contents(full_store)
    caplog.clear()
    assert run_mix(cfg, store, curated, student, teacher) == {**funnel, "new": 0}
    assert "judged again" not in caplog.text


def test_a_selection_made_again_after_mix_keeps_its_examples_out_of_training_until_mix_ran(tmp_path):
    """`dasd select` run again with other settings after `dasd mix` replaces the selected teacher
    responses, which set the student's caps: `dasd train` alone took the mixed examples made under the
    old ones. Now they are not current until `dasd mix` ran again (which asks again the questions
    whose response changed), and are after it."""
    from dasd.config import load_config
    from dasd.prompts import toy_prompts
    from dasd.runs import mix_not_current, named_pools
    from dasd.stages.filter import run_filter
    from dasd.stages.mix import run_mix_stage
    from dasd.stages.sample import run_sample
    from dasd.stages.score import run_score
    from dasd.stages.select import run_select

    src = tmp_path / "prompts.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in toy_prompts(8, 0, "train", None)), encoding="utf-8")

    def cfg(*more):
        return load_config(None, [f"run_dir={tmp_path / 'run'}", f"data.prompts={src}", "student.model=toy:student",
                                  "teacher.model=toy:teacher", "sample.k=3", "sample.temperatures=[0.6]",
                                  "sample.max_tokens=320", "mix.n_questions=8", "mix.length_multiple=0.6",
                                  "mix.max_continuation_tokens=400", *more])

    for stage in (run_sample, run_filter, run_score, run_select, run_mix_stage):
        stage(cfg())
    store = RunStore.open(tmp_path / "run")
    assert mix_not_current(cfg(), store) is None
    before = {r["prompt_id"]: r["text"] for r in store.read("select", "selected-T0.6")}
    run_select(cfg("select.method=random", "select.seed=3"))
    after = {r["prompt_id"]: r["text"] for r in store.read("select", "selected-T0.6")}
    assert before != after  # the selection changed
    store = RunStore.open(tmp_path / "run")
    assert mix_not_current(cfg("select.method=random", "select.seed=3"), store) == (
        "`dasd select` wrote its selections again since `dasd mix` ran (a selected response sets the student's cap; "
        "`dasd mix` asks again only the questions whose response changed)")
    assert "mixed" not in named_pools(cfg("select.method=random", "select.seed=3"), store)
    funnel = run_mix_stage(cfg("select.method=random", "select.seed=3"))
    changed = {pid for pid in before if before[pid] != after.get(pid)}
    assert funnel["new"] == len(changed & {r["prompt_id"] for r in RunStore.open(tmp_path / "run").read("mix", "rollouts")})
    assert mix_not_current(cfg("select.method=random", "select.seed=3"), RunStore.open(tmp_path / "run")) is None


def test_mixed_examples_of_a_teacher_known_by_name_only_are_not_current_once_it_is_renamed(tmp_path):
    """A teacher with no version (a served name, a hub id) is told apart by its name: mixed examples
    made with `served/teacher-a` do not feed training once teacher.model names `served/teacher-b`
    (before, two empty versions compared equal and they did)."""
    from dasd.config import load_config
    from dasd.runs import latest_student, mix_not_current, model_version

    run = tmp_path / "run"

    def cfg(teacher):
        return load_config(None, [f"run_dir={run}", "student.model=toy:student", f"teacher.model={teacher}",
                                  "train.stages=[{name: s, data: mixed, init: base}]"])

    store = RunStore(run)
    _, student = latest_student(cfg("served/teacher-a"), store, before="s")
    assert model_version("served/teacher-a") == "" and model_version(student) != ""
    store.begin_stage("mix", {"mix": cfg("served/teacher-a").mix.model_dump(), "student": f"{student}@{model_version(student)}",
                              "teacher": "served/teacher-a@"})  # as `dasd mix` records them
    store.end_stage("mix", {})
    assert mix_not_current(cfg("served/teacher-a"), store) is None
    assert mix_not_current(cfg("served/teacher-b"), store) == (
        "`dasd mix` ran with another teacher than the teacher as it is now (retrained or replaced since)")
