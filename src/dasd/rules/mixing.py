"""Mixed-policy distillation rules (pure: no files, no engines): config, cut points, the teacher's
context, verdicts, example records and the funnel.

The stage that applies them is ``dasd.stages.mix``. Per question (drawn with a seeded shuffle of the
curated set, so a larger ``n_questions`` extends a smaller draw):

1. the latest student generates one response, capped at ``ceil(length_multiple x n)`` tokens where
   ``n`` is the length of the teacher's curated response **in student tokens** (``student_cap``);
2. only responses that were cut off (finish_reason ``length``) go on; the cut-off rate is recorded;
3. the response is cut at a random point ``u x L`` (``u ~ U[cut_low, cut_high)``, ``L`` = characters of
   the reasoning region), snapped to a sentence end (``cut_point``);
4. the teacher continues the student prefix as a raw continuation inside its own thinking: context
   = teacher chat template(question, generation prompt) + prefix (``teacher_context``);
5. the continuation must finish, not reopen ``<think>``, close the reasoning with a final answer,
   pass the repetition filter and, when the question has a reference, be correct
   (``continuation_verdict``).

Stage 3 trains on these examples together with off-policy examples replayed from a selected pool
(the named pool ``mixed+replay``; ``ReplayConfig``, ``replay_examples``): the paper's Table 5 run
used 7.7K mixed-policy samples with 20K off-policy ones.

See docs/mixed-policy.md for the rules and their reasons.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

from pydantic import Field, model_validator

from dasd.configbase import Seed, StrictModel
from dasd.errors import DasdError, InputError
from dasd.records import Prompt, content_id
from dasd.rules.sampling import derived_seed
from dasd.text.filters import check_structure, is_repetitive
from dasd.text.repetition import RepetitionConfig
from dasd.text.sentences import segment

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
    "context_too_long",  # teacher template + prefix (+ max_continuation_tokens, for a server) does not fit the teacher's context,
    # or the context stopped the continuation short of max_continuation_tokens
    "prompt_too_long",  # the question + cap does not fit the student's context: no rollout, or one its context stopped (not a cut-off)
)
# The verdicts that depend on a model's context, and whose: a rollout keeps the context it was judged
# against (``judged``) and is judged again when that context changed (``stages.mix``).
TOO_LONG = {"prompt_too_long": "student", "context_too_long": "teacher"}


PAPER_REPLAY_RATIO = round(20 / 7.7, 4)  # 20K off-policy with 7.7K mixed-policy samples (Table 5)


class ReplayConfig(StrictModel):
    """Off-policy replay in the mixed-policy stage (the named pool ``mixed+replay``)."""

    ratio: float = Field(
        PAPER_REPLAY_RATIO, ge=0,
        description="Off-policy examples replayed per mixed-policy example: round(ratio x mixed) of them, "
        "at most all of the source pool. Default 2.5974: the paper's 20K off-policy with 7.7K mixed samples. "
        "0 = the mixed examples alone.",
    )
    source: str = Field(
        "high", min_length=1,
        description="The named pool the replayed examples come from: high (stage 2's data, default), low "
        "or T<temp>.",
    )
    seed: Seed = Field(0, description="Seed of the draw: the examples with the lowest sha256(seed:id) are "
                      "replayed, so the draw depends only on the seed and the ids.")


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
    seed: Seed = Field(0, description="Seed of the question draw, the rollouts, the cut points and "
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
    replay: ReplayConfig = Field(
        default_factory=ReplayConfig,
        description="Off-policy examples trained with the mixed-policy ones when a stage's data is "
        "mixed+replay (the paper's stage 3; docs/mixed-policy.md, 'Training').",
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


def draw_questions(curated: Iterable[dict], n: int, seed: int) -> list[dict]:
    """``n`` curated items, one per prompt id (the first item of each id), in a seeded order.

    The order is a seeded shuffle of the sorted prompt ids, so the first ``n`` of a larger draw are
    the draw of ``n``: raising ``n_questions`` on a finished run only adds questions. ``curated``
    (a list, or anything iterable again, e.g. ``stages.mix.curated_from_run``'s) is read twice: to
    check every item and collect the prompt ids, then to take the drawn items; only the ids and the
    ``n`` drawn items are held.
    """
    if isinstance(curated, Iterator):  # a one-pass iterator cannot be read twice
        curated = list(curated)
    ids: set[str] = set()
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
        ids.add(item["prompt"]["id"])
    order = sorted(ids)
    random.Random(derived_seed("mix-draw", seed)).shuffle(order)
    drawn: dict[str, dict | None] = dict.fromkeys(order[:n])
    for item in curated:
        pid = item["prompt"]["id"]
        if pid in drawn and drawn[pid] is None:
            drawn[pid] = item
    return list(drawn.values())


def rollout_id(prompt_id: str, student: str, teacher: str, cfg: MixConfig) -> str:
    """Content hash of one question's mixed-policy attempt (everything that changes its outcome)."""
    knobs = cfg.model_dump(exclude={"n_questions", "batch_questions", "replay"})
    return content_id("mix", prompt_id, student, teacher, knobs)


def teacher_text_id(text: str) -> str:
    """The hash a rollout keeps of the selected teacher response that set its cap: a question whose
    selected response changed since (``dasd select`` again) is asked again (``stages.mix``)."""
    return content_id("mix-teacher-text", text)


def prompt_record_id(prompt: dict) -> str:
    """The hash a rollout keeps of the prompt record its verdict was judged against (its reference
    answer, choices or tests): a question whose record the run has replaced since (`dasd sample`
    with a corrected answer) is judged again, its rollout and continuation kept (``stages.mix``)."""
    return content_id("mix-prompt", prompt)


def example_id(rollout: str) -> str:
    """The id of the example a kept rollout yields."""
    return content_id("mix-example", rollout)


def replay_examples(mixed: list[dict], off_policy: Iterable[dict], cfg: ReplayConfig) -> tuple[list[dict], dict]:
    """The mixed-policy examples followed by ``round(cfg.ratio x len(mixed))`` off-policy ones.

    The off-policy examples are ranked by ``sha256(f"{seed}:{id}")`` and taken from the top: the draw
    is deterministic, independent of input order, and a larger ratio extends a smaller one. An id is
    replayed at most once (its first example) and never one that is already among the mixed
    examples. ``off_policy`` is read once and only the drawn examples are kept (plus the ids seen, to
    count them): a whole selected pool is never held. Returns ``(examples, counts)`` with counts
    ``mixed``, ``replay``, ``requested``, ``available``.
    """
    taken = {e["id"] for e in mixed}
    requested = round(cfg.ratio * len(mixed))
    seen: set[str] = set()
    best: list[tuple[int, int, dict]] = []  # the ``requested`` lowest ranks so far, negated (a max-heap)
    for n, e in enumerate(off_policy):
        if e["id"] in taken or e["id"] in seen:
            continue
        seen.add(e["id"])
        rank = int.from_bytes(hashlib.sha256(f"{cfg.seed}:{e['id']}".encode()).digest(), "big")
        if len(best) < requested:
            heapq.heappush(best, (-rank, n, e))
        elif requested and rank < -best[0][0]:
            heapq.heapreplace(best, (-rank, n, e))
    chosen = [e for _, _, e in sorted(best, key=lambda x: -x[0])]
    counts = {"mixed": len(mixed), "replay": len(chosen), "requested": requested, "available": len(seen)}
    return [*mixed, *chosen], counts


# ------------------------------------------------------------------------------------------------
# The funnel


def funnel_of(rollouts) -> dict:
    """Counts of each step from rollout records: questions, cut-offs (and rate), cuts, kept, drops."""
    verdicts = Counter(r["verdict"] for r in rollouts)
    questions = sum(verdicts.values())
    cut_off = questions - verdicts["finished"] - verdicts["prompt_too_long"]
    continuations = sum(verdicts[v] for v in DROP_REASONS) + verdicts["kept"]
    return {
        "questions": questions,
        "finished": verdicts["finished"],
        "prompt_too_long": verdicts["prompt_too_long"],
        "cut_off": cut_off,
        "cut_off_rate": cut_off / questions if questions else 0.0,
        "skipped": {v: verdicts[v] for v in SKIP_REASONS if v not in ("finished", "prompt_too_long")},
        "continuations": continuations,
        "dropped": {v: verdicts[v] for v in DROP_REASONS},
        "kept": verdicts["kept"],
        "keep_rate": verdicts["kept"] / cut_off if cut_off else 0.0,
    }


def funnel_table(funnel: dict) -> str:
    """The funnel as an aligned text table (printed at the end of the stage)."""
    rows = [("questions", funnel["questions"], "")]
    rows.append(("student finished (not used)", funnel["finished"], ""))
    if funnel.get("prompt_too_long"):
        rows.append(("question too long for the student", funnel["prompt_too_long"], ""))
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
    lines = ["funnel"] + [f"  {name:<{w}}  {n:>7}  {note}".rstrip() for name, n, note in rows]
    return "\n".join(lines)


def summary_line(funnel: dict) -> str:
    """One line for logs and the demo: questions -> cut-offs -> continuations -> kept."""
    return (
        f"[mix] {funnel['questions']} questions -> {funnel['cut_off']} cut off "
        f"({100 * funnel['cut_off_rate']:.1f}%) -> {funnel['continuations']} teacher continuations -> "
        f"{funnel['kept']} kept ({100 * funnel['keep_rate']:.1f}% of cut-offs)"
    )
