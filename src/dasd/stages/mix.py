"""`dasd mix`: mixed-policy distillation data (student rollouts cut off, teacher continuations).

    from dasd.stages.mix import MixConfig, run_mix
    funnel = run_mix(MixConfig(n_questions=500), store, curated, student_engine, teacher_engine)

Per question (drawn with a seeded shuffle of the curated set, so a larger ``n_questions`` extends a
smaller draw):

1. the latest student generates one response, capped at ``ceil(length_multiple x n)`` tokens where
   ``n`` is the length of the teacher's curated response **in student tokens**;
2. only responses that were cut off (finish_reason ``length``) go on; the cut-off rate is recorded;
3. the response is cut at a random point ``u x L`` (``u ~ U[cut_low, cut_high)``, ``L`` = characters of
   the reasoning region), snapped to a sentence end (``cut_point``);
4. the teacher continues the student prefix as a raw continuation inside its own thinking: context
   = teacher chat template(question, generation prompt) + prefix (``teacher_context``);
5. the continuation must finish, not reopen ``<think>``, close the reasoning with a final answer,
   pass the repetition filter and, when the question has a reference, be correct.

Outputs: ``RUN/mix/rollouts-*.jsonl`` (one record per question: the rollout, the cut, the
continuation and its verdict; this is what makes the stage resumable) and ``RUN/mix/examples-*.jsonl``
(TrainingExample dicts: prompt messages + one assistant turn ``prefix + continuation``,
``prefix_chars = len(prefix)``, ``source = "mixed_policy"``). The funnel (questions, finished,
cut-offs and rate, cut points, continuations, drops by reason, kept) goes into the manifest and is
returned. See docs/mixed-policy.md for the rules and their reasons.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field, model_validator

from dasd.configbase import StrictModel
from dasd.engines.base import GenerateRequest
from dasd.errors import DasdError, InputError
from dasd.records import Prompt, content_id
from dasd.stages.common import Rate, chunks, derived_seed, progress
from dasd.store import RunStore, shard_paths
from dasd.text.filters import check_structure, is_repetitive
from dasd.text.repetition import RepetitionConfig
from dasd.text.sentences import segment

STAGE = "mix"
SOURCE = "mixed_policy"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

# Verdicts of a question, in funnel order. "kept" is the only one that yields an example.
DROP_REASONS = (
    "not_finished",  # the teacher's continuation hit max_continuation_tokens
    "reopens_think",  # the continuation writes <think> again
    "structure",  # prefix + continuation is not <think> reasoning </think> final answer
    "repetitive",  # the repetition filter rejected prefix + continuation
    "incorrect",  # a reference exists and the final answer is wrong
)
SKIP_REASONS = (
    "finished",  # the student finished within the cap: not a cut-off, nothing to continue
    "answered",  # cut off after </think> while answering, and after_think="skip"
    "no_cut_point",  # no sentence end in [cut_low x L, L)
    "context_too_long",  # teacher template + prefix does not fit the teacher's max_model_len
)


class MixConfig(StrictModel):
    """Knobs of the mixed-policy stage (defaults follow the paper where it gives a value)."""

    n_questions: int = Field(
        1000, ge=1,
        description="Questions drawn from the curated set (seeded shuffle of the prompt ids, then "
        "the first n; fewer if the set is smaller). The paper drew 50K for 15K cut-offs.",
    )
    length_multiple: float = Field(
        1.5, gt=0,
        description="The student's generation cap = ceil(length_multiple x length of the teacher's "
        "curated response to the same question, counted in STUDENT tokens). Paper: 1.5.",
    )
    cut_low: float = Field(
        0.5, ge=0.0, lt=1.0,
        description="Lower end of the uniform cut fraction u, and the floor of the cut: the prefix "
        "never ends before cut_low x L characters of the reasoning region (paper: past half).",
    )
    cut_high: float = Field(
        1.0, gt=0.0, le=1.0,
        description="Upper end (exclusive) of the uniform cut fraction u ~ U[cut_low, cut_high).",
    )
    after_think: Literal["cut_in_thinking", "skip"] = Field(
        "cut_in_thinking",
        description="A cut-off response that already closed </think> (cut off while answering): "
        "cut_in_thinking = the reasoning region is the text before </think> and the cut falls "
        "there (the teacher rewrites the end of the reasoning and the answer); skip = drop it.",
    )
    seed: int = Field(0, description="Seed of the question draw, the rollouts, the cut points and "
                      "the continuations (each derived per question, so resume is exact).")
    student_temperature: float = Field(
        1.0, ge=0.0, description="Sampling temperature of the student's rollouts (the paper "
        "evaluates at 1.0, so its cut-offs are the ones inference produces).",
    )
    student_top_p: float = Field(1.0, gt=0.0, le=1.0, description="Top-p of the student's rollouts.")
    teacher_temperature: float = Field(
        0.6, ge=0.0, description="Sampling temperature of the teacher's continuations (the "
        "low-temperature value of the schedule: sharper, fewer errors; the paper does not say).",
    )
    teacher_top_p: float = Field(1.0, gt=0.0, le=1.0, description="Top-p of the teacher's continuations.")
    max_continuation_tokens: int = Field(
        4096, ge=1, description="Cap on the teacher's continuation, in teacher tokens; a "
        "continuation that hits it is dropped (not_finished).",
    )
    require_structure: bool = Field(
        True, description="Drop examples whose text (prefix + continuation) is not one <think> "
        "block with non-empty reasoning, then a non-empty final answer (dasd.text.filters."
        "check_structure, the rule the teacher data passes too): reason 'structure'.",
    )
    require_correct: bool = Field(
        True, description="When the question has a reference (answer, choices or tests), drop "
        "continuations whose prefix + continuation is graded wrong (incorrect).",
    )
    repetition: RepetitionConfig = Field(
        default_factory=RepetitionConfig,
        description="The repetition filter (dasd.text.repetition) run on prefix + continuation; "
        "same defaults as for teacher data; `enabled: false` turns it off. Reason 'repetitive'.",
    )
    teacher_think_opener: str = Field(
        THINK_OPEN, description="What opens reasoning in the teacher's generation prompt. When the "
        "rendered prompt already ends with it (a template that opens thinking itself; for gpt-oss "
        "pass a template callable ending in '<|channel|>analysis<|message|>' and set this to that), "
        "the student prefix's own <think> opener is left out of the teacher's context.",
    )
    batch_questions: int = Field(
        16, ge=1, description="Questions per engine call (rollouts and continuations).",
    )

    @model_validator(mode="after")
    def _check(self) -> MixConfig:
        if self.cut_low >= self.cut_high:
            raise ValueError(f"cut_low ({self.cut_low}) must be < cut_high ({self.cut_high})")
        return self


# ------------------------------------------------------------------------------------------------
# The pieces (each tested on its own)


def student_cap(teacher_student_tokens: int, length_multiple: float) -> int:
    """The student's generation cap: ``ceil(length_multiple x teacher_student_tokens)``, at least 1.

    ``teacher_student_tokens`` is the teacher's response length counted with the **student's**
    tokenizer (``student_engine.count_tokens(teacher_text)``): the cap bounds the student's tokens.
    """
    return max(1, math.ceil(length_multiple * teacher_student_tokens - 1e-9))


def reasoning_region(text: str, after_think: str = "cut_in_thinking") -> int | None:
    """Characters of ``text`` a cut may fall in: all of it, or the part before ``</think>``.

    None when the response already closed its reasoning and ``after_think == "skip"``.
    """
    k = text.find(THINK_CLOSE)
    if k < 0:
        return len(text)
    return k if after_think == "cut_in_thinking" else None


def sentence_ends(text: str, limit: int | None = None) -> list[int]:
    """Positions where a sentence of ``text[:limit]`` ends, trailing whitespace excluded, in order.

    The segmenter attaches the whitespace after a sentence to it; a cut is placed *before* that
    whitespace so that the prefix ends on the sentence's last character and the continuation starts
    with the separator (a prefix ending in a bare space forces an unnatural token boundary on the
    teacher). The end of ``text[:limit]`` itself does not count (the response was cut off
    there, mid-sentence, or it is where the reasoning closes), nor does the end of a leading
    ``<think>`` opener (a prefix must hold at least one student sentence).
    """
    region = text if limit is None else text[:limit]
    stripped = region.lstrip()
    opener = len(region) - len(stripped) + (len(THINK_OPEN) if stripped.startswith(THINK_OPEN) else 0)
    ends = []
    for s, e in segment(region):
        if e >= len(region):
            break  # the last span: the text was cut off here, not a sentence end
        b = s + len(region[s:e].rstrip())
        if b > max(s, opener):
            ends.append(b)
    return ends


def cut_point(text: str, u: float, floor_frac: float, limit: int | None = None) -> int | None:
    """Where to cut ``text``: the first sentence end at or after ``u x L``, else the last one
    before it that is at or after ``floor_frac x L``; None when no sentence end lies in
    ``[floor_frac x L, L)``. ``L = limit`` (the reasoning region) or ``len(text)``.

    So the prefix always ends at a sentence end, never before ``floor_frac`` of the region, and
    always strictly inside it (the teacher has something to write).
    """
    L = len(text) if limit is None else limit
    target = u * L
    ends = [b for b in sentence_ends(text, L) if b >= floor_frac * L and b < L]
    if not ends:
        return None
    after = [b for b in ends if b >= target]
    return after[0] if after else ends[-1]


def render_generation_prompt(template: Any, messages: list[dict]) -> str:
    """The teacher's chat template applied to ``messages`` with the generation prompt, as text.

    ``template`` is a callable ``messages -> str`` or a tokenizer with ``apply_chat_template``.
    """
    if callable(template) and not hasattr(template, "apply_chat_template"):
        return template(messages)
    if hasattr(template, "apply_chat_template"):
        return template.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    raise DasdError("mix: teacher_tokenizer_template must be a callable or a tokenizer with a chat template")


def teacher_context(generation_prompt: str, prefix: str, opener: str = THINK_OPEN) -> str:
    """The raw context the teacher continues: its generation prompt, then the student prefix.

    The prefix (``<think>\\n...`` in our format) opens the teacher's thinking itself. If the
    teacher's generation prompt already opens its reasoning (it ends with ``opener``, e.g.
    ``<think>`` for reasoning templates that open the block themselves, or gpt-oss's
    ``<|channel|>analysis<|message|>``), the prefix's own ``<think>`` (and one newline after it,
    if the prompt ends with one or the opener is not ``<think>``) is left out of the context so
    that reasoning is not opened twice. The training example keeps the prefix as written.
    """
    head = generation_prompt.rstrip()
    body = prefix.lstrip()
    if opener and head.endswith(opener) and body.startswith(THINK_OPEN):
        rest = body[len(THINK_OPEN):]
        if (generation_prompt.endswith("\n") or opener != THINK_OPEN) and rest.startswith("\n"):
            rest = rest[1:]
        return generation_prompt + rest
    return generation_prompt + prefix


def continuation_verdict(
    prompt: dict, prefix: str, continuation: str, finish_reason: str, cfg: MixConfig,
    grade: Callable[[dict, str], bool] | None,
) -> tuple[str, str]:
    """``("kept", "")`` or the first reason (``DROP_REASONS``, in that order) to drop, with a detail.

    Checked in order: the continuation finished (not cut by ``max_continuation_tokens``); it does
    not write ``<think>`` again; prefix + continuation has the thinking/answer structure; it passes
    the repetition filter; it is graded correct when the question has a reference.
    """
    if finish_reason != "stop":
        return "not_finished", f"finish_reason {finish_reason!r}"
    if THINK_OPEN in continuation:
        return "reopens_think", "the continuation writes <think>"
    full = prefix + continuation
    if cfg.require_structure and (why := check_structure(full)):
        return "structure", why
    if why := is_repetitive(full, cfg.repetition):
        return "repetitive", why
    if cfg.require_correct and grade is not None and has_reference(prompt):
        try:
            ok = grade(prompt, full)
        except ValueError as err:  # a reference the grader cannot use: bad input, not a bad sample
            raise DasdError(f"mix: cannot grade prompt {prompt.get('id')!r}: {err}") from None
        if not ok:
            return "incorrect", "graded wrong"
    return "kept", ""


def has_reference(prompt: dict) -> bool:
    """Whether a question can be graded: it has tests, choices or an answer."""
    return bool(prompt.get("tests")) or bool(prompt.get("choices")) or prompt.get("answer") not in (None, "")


def default_grade(prompt: dict, text: str) -> bool:
    """Grade with ``dasd.grading.grade.grade_one`` (math-verify, choice, or sandboxed code tests)."""
    from dasd.grading.grade import grade_one

    return bool(grade_one(prompt, text)["correct"])


def make_example(prompt: dict, prefix: str, continuation: str, example_id: str, **extra: Any) -> dict:
    """A TrainingExample dict: the prompt's messages + one assistant turn ``prefix + continuation``."""
    return {
        "id": example_id,
        "messages": [{"role": m["role"], "content": m["content"]} for m in prompt["messages"]]
        + [{"role": "assistant", "content": prefix + continuation}],
        "prefix_chars": len(prefix),
        "source": SOURCE,
        **extra,
    }


def draw_questions(curated: list[dict], n: int, seed: int) -> list[dict]:
    """``n`` curated items, one per prompt id (the first item of each id), in a seeded order.

    The order is a seeded shuffle of the sorted prompt ids, so the first ``n`` of a larger draw are
    the draw of ``n``: raising ``n_questions`` on a finished run only adds questions.
    """
    by_id: dict[str, dict] = {}
    for i, item in enumerate(curated):
        where = f"curated[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), dict):
            raise InputError(f"{where}: field 'prompt': expected a Prompt record object")
        if not isinstance(item.get("teacher_text"), str) or not item["teacher_text"]:
            raise InputError(f"{where}: field 'teacher_text': expected a non-empty string")
        try:
            Prompt.model_validate(item["prompt"])
        except Exception as err:
            raise InputError(f"{where}: field 'prompt': {err}") from None
        by_id.setdefault(item["prompt"]["id"], item)
    ids = sorted(by_id)
    random.Random(derived_seed("mix-draw", seed)).shuffle(ids)
    return [by_id[i] for i in ids[:n]]


def curated_from_run(store: RunStore, pool_names: list[str] | None = None) -> list[dict]:
    """The curated set of a run: each selected teacher response (``RUN/select/selected-<pool>``)
    with its prompt (joined by prompt id), as ``{"prompt", "teacher_text"}`` items.

    Pools are read from the lowest temperature up (or in the order given), so when a question has
    responses in several pools, ``draw_questions`` uses the lowest-temperature one as the length
    reference.
    """
    from dasd.stages.sample import load_run_prompts
    from dasd.stages.score import pools

    names = pool_names if pool_names is not None else sorted(pools(store, "select", "selected"), key=_pool_temp)
    if not names:
        raise DasdError(f"{store.root}: no selected pools (RUN/select/selected-*); run `dasd select` first")
    prompts = load_run_prompts(store)
    out = []
    for pool in names:
        for s in store.read("select", f"selected-{pool}"):
            p = prompts.get(s["prompt_id"])
            if p is None:
                raise DasdError(f"{store.root}/select/selected-{pool}: sample {s['id']} names prompt "
                                f"{s['prompt_id']!r}, which is not in the run's prompts")
            out.append({"prompt": p, "teacher_text": s["text"]})
    return out


def _pool_temp(pool: str) -> float:
    try:
        return float(pool.lstrip("T"))
    except ValueError:
        return math.inf


# ------------------------------------------------------------------------------------------------
# The stage


def rollout_id(prompt_id: str, student: str, teacher: str, cfg: MixConfig) -> str:
    """Content hash of one question's mixed-policy attempt (everything that changes its outcome)."""
    knobs = cfg.model_dump(exclude={"n_questions", "batch_questions"})
    return content_id("mix", prompt_id, student, teacher, knobs)


def run_mix(
    cfg: MixConfig,
    store: RunStore,
    curated: list[dict],
    student_engine,
    teacher_engine,
    teacher_tokenizer_template: Any = None,
    grade: Callable[[dict, str], bool] | None = None,
) -> dict:
    """Build mixed-policy training examples; return the funnel (also saved in the manifest).

    ``curated``: ``{"prompt": Prompt dict, "teacher_text": str}`` items (the selected teacher
    responses). ``teacher_tokenizer_template``: a callable ``messages -> str`` or a tokenizer
    (default: ``teacher_engine.tokenizer``). ``grade(prompt, text) -> bool`` judges correctness
    when a question has a reference (default: ``dasd.grading``'s ``grade_one``). Re-running skips the
    questions already done (rollout ids are content hashes of question, models and config).
    """
    template = teacher_tokenizer_template if teacher_tokenizer_template is not None else getattr(teacher_engine, "tokenizer", None)
    if template is None:
        raise DasdError("mix: no teacher chat template (pass teacher_tokenizer_template or an engine with a tokenizer)")
    grade = grade if grade is not None else default_grade
    student_name, teacher_name = student_engine.name, teacher_engine.name
    questions = draw_questions(curated, cfg.n_questions, cfg.seed)
    if not questions:
        raise DasdError("mix: the curated set is empty (no {'prompt', 'teacher_text'} items)")
    store.begin_stage(STAGE, {"mix": cfg.model_dump(), "student": student_name, "teacher": teacher_name})
    rid = {q["prompt"]["id"]: rollout_id(q["prompt"]["id"], student_name, teacher_name, cfg) for q in questions}
    with store.writer(STAGE, "examples", shard_size=64, flush_seconds=20) as wx, \
         store.writer(STAGE, "rollouts", shard_size=64, flush_seconds=20) as wr:
        done = _done_rollouts(store, wx)
        todo = [q for q in questions if rid[q["prompt"]["id"]] not in done]
        rate_q, rate_t = Rate(), Rate()
        bar = progress(len(todo), "mix", "question")
        for batch in chunks(todo, cfg.batch_questions):
            records = _mix_batch(cfg, batch, rid, student_engine, teacher_engine, template, grade, rate_t)
            for rec, example in records:
                if example is not None:
                    wx.add(example)
                wr.add(rec)
            rate_q.add(len(batch))
            bar.update(len(batch))
            bar.set_postfix(q_s=f"{rate_q.per_s():.2f}", tok_s=f"{rate_t.per_s():.0f}")
        bar.close()
    want = set(rid.values())
    funnel = funnel_of(r for r in store.read(STAGE, "rollouts") if r["id"] in want)
    funnel["new"] = len(todo)
    funnel["stale_examples_removed"] = _drop_stale_examples(store, {example_id(r) for r in want})
    store.end_stage(STAGE, funnel)
    print(funnel_table(funnel))
    return funnel


def example_id(rollout: str) -> str:
    """The id of the example a kept rollout yields."""
    return content_id("mix-example", rollout)


def _drop_stale_examples(store: RunStore, keep: set[str]) -> int:
    """Make ``RUN/mix/examples`` hold only this draw's examples; return how many were removed.

    Examples of an earlier config, student or larger draw would otherwise be trained on silently.
    The kept ones are copied to a new output, then the old shards are deleted and the new ones
    renamed. A crash in between only loses examples whose rollouts then count as unfinished, so
    the next run regenerates them (same seeds, same examples).
    """
    folder = store.stage_dir(STAGE)
    for leftover in shard_paths(folder, "examples.next"):
        leftover.unlink()
    stale = sum(1 for r in store.read(STAGE, "examples") if r["id"] not in keep)
    if not stale:
        return 0
    old = shard_paths(folder, "examples")
    with store.writer(STAGE, "examples.next", shard_size=256, flush_seconds=1e9) as w:
        for r in store.read(STAGE, "examples"):
            if r["id"] in keep:
                w.add(r)
    for path in old:
        path.unlink()
    for path in shard_paths(folder, "examples.next"):
        path.rename(folder / path.name.replace("examples.next-", "examples-", 1))
    print(f"[mix] removed {stale} example(s) of an earlier draw or config from {folder}/examples-*.jsonl")
    return stale


def _done_rollouts(store: RunStore, examples) -> set[str]:
    """Rollout ids whose work is complete on disk (a kept one also needs its example on disk)."""
    return {
        r["id"] for r in store.read(STAGE, "rollouts")
        if r["verdict"] != "kept" or r.get("example_id") in examples
    }


def _mix_batch(cfg, batch, rid, student, teacher, template, grade, rate_t) -> list[tuple[dict, dict | None]]:
    """Rollouts, cuts and continuations of one batch of questions: ``(rollout record, example)``."""
    reqs = []
    caps = []
    for q in batch:
        p = q["prompt"]
        n = student.count_tokens(q["teacher_text"])
        cap = student_cap(n, cfg.length_multiple)
        caps.append((n, cap))
        reqs.append(GenerateRequest(
            id=p["id"], messages=p["messages"], n=1, temperature=cfg.student_temperature,
            top_p=cfg.student_top_p, max_tokens=cap, seed=derived_seed("mix-student", cfg.seed, p["id"]),
        ))
    gens = [g[0] for g in student.generate(reqs)]
    rate_t.add(sum(len(g.token_ids) for g in gens))
    recs: list[dict] = []
    cont_reqs: list[GenerateRequest] = []
    cont_of: list[int] = []
    max_len = getattr(teacher, "max_len", None)
    for k, (q, g, (n, cap)) in enumerate(zip(batch, gens, caps)):
        p = q["prompt"]
        rec = {
            "id": rid[p["id"]], "prompt_id": p["id"], "student_model": student.name, "teacher_model": teacher.name,
            "cap": cap, "teacher_student_tokens": n,
            "student": {"text": g.text, "finish_reason": g.finish_reason, "n_tokens": len(g.token_ids)},
            "cut": None, "prefix_chars": None, "continuation": None, "verdict": None, "detail": "", "example_id": None,
        }
        recs.append(rec)
        if g.finish_reason != "length":
            rec["verdict"] = "finished"
            rec["student"]["text"] = None  # not needed downstream; long-CoT texts are large
            continue
        limit = reasoning_region(g.text, cfg.after_think)
        if limit is None:
            rec["verdict"] = "answered"
            continue
        u = random.Random(derived_seed("mix-cut", cfg.seed, p["id"])).uniform(cfg.cut_low, cfg.cut_high)
        at = cut_point(g.text, u, cfg.cut_low, limit)
        rec["cut"] = {"u": u, "target": u * limit, "region_chars": limit, "at": at}
        if at is None:
            rec["verdict"] = "no_cut_point"
            continue
        prefix = g.text[:at]
        rec["prefix_chars"] = at
        ctx = teacher_context(render_generation_prompt(template, p["messages"]), prefix, cfg.teacher_think_opener)
        if max_len is not None and teacher.count_tokens(ctx) >= max_len:
            rec["verdict"] = "context_too_long"
            continue
        cont_reqs.append(GenerateRequest(
            id=p["id"], prefix=ctx, n=1, temperature=cfg.teacher_temperature, top_p=cfg.teacher_top_p,
            max_tokens=cfg.max_continuation_tokens, seed=derived_seed("mix-teacher", cfg.seed, p["id"]),
        ))
        cont_of.append(k)
    out: list[tuple[dict, dict | None]] = [(r, None) for r in recs]
    if not cont_reqs:
        return out
    conts = [g[0] for g in teacher.generate(cont_reqs)]
    rate_t.add(sum(len(c.token_ids) for c in conts))
    for k, c in zip(cont_of, conts):
        rec, q = recs[k], batch[k]
        prefix = rec["student"]["text"][: rec["prefix_chars"]]
        rec["continuation"] = {"text": c.text, "finish_reason": c.finish_reason, "n_tokens": len(c.token_ids)}
        rec["verdict"], rec["detail"] = continuation_verdict(q["prompt"], prefix, c.text, c.finish_reason, cfg, grade)
        if rec["verdict"] == "kept":
            rec["example_id"] = example_id(rec["id"])
            out[k] = (rec, make_example(q["prompt"], prefix, c.text, rec["example_id"], prompt_id=q["prompt"]["id"]))
    return out


# ------------------------------------------------------------------------------------------------
# The funnel


def funnel_of(rollouts) -> dict:
    """Counts of each step from rollout records: questions, cut-offs (and rate), cuts, kept, drops."""
    verdicts = Counter(r["verdict"] for r in rollouts)
    questions = sum(verdicts.values())
    cut_off = questions - verdicts["finished"]
    continuations = sum(verdicts[v] for v in DROP_REASONS) + verdicts["kept"]
    return {
        "questions": questions,
        "finished": verdicts["finished"],
        "cut_off": cut_off,
        "cut_off_rate": cut_off / questions if questions else 0.0,
        "skipped": {v: verdicts[v] for v in SKIP_REASONS if v != "finished"},
        "continuations": continuations,
        "dropped": {v: verdicts[v] for v in DROP_REASONS},
        "kept": verdicts["kept"],
        "keep_rate": verdicts["kept"] / cut_off if cut_off else 0.0,
    }


def funnel_table(funnel: dict) -> str:
    """The funnel as an aligned text table (printed at the end of the stage)."""
    rows = [("questions", funnel["questions"], "")]
    rows.append(("student finished (not used)", funnel["finished"], ""))
    rows.append(("cut off", funnel["cut_off"], f"{100 * funnel['cut_off_rate']:.1f}% of questions"))
    for why, n in funnel["skipped"].items():
        if n:
            rows.append((f"  skipped: {why}", n, ""))
    rows.append(("teacher continuations", funnel["continuations"], ""))
    for why, n in funnel["dropped"].items():
        if n:
            rows.append((f"  dropped: {why}", n, ""))
    rows.append(("kept (mixed-policy examples)", funnel["kept"], f"{100 * funnel['keep_rate']:.1f}% of cut-offs"))
    w = max(len(r[0]) for r in rows)
    lines = ["[mix] funnel"] + [f"  {name:<{w}}  {n:>7}  {note}".rstrip() for name, n, note in rows]
    return "\n".join(lines)


def summary_line(funnel: dict) -> str:
    """One line for logs and the demo: questions -> cut-offs -> continuations -> kept."""
    return (
        f"[mix] {funnel['questions']} questions -> {funnel['cut_off']} cut off "
        f"({100 * funnel['cut_off_rate']:.1f}%) -> {funnel['continuations']} teacher continuations -> "
        f"{funnel['kept']} kept ({100 * funnel['keep_rate']:.1f}% of cut-offs)"
    )
