"""Divergence-aware sampling (DAS): sentence tables, the DAS score, and budgeted selection.

See docs/das.md for the method, the formula and why the defaults are what they are.

- ``sentence_table(text, teacher_offsets, teacher_logprobs, student_offsets, student_logprobs, cfg)``
  -> list of ``records.Sentence`` dicts (+ ``delta``).
- ``das_summary(sentences, cfg)`` -> dict with token-weighted type fractions, mean delta, ``score``;
  ``retype(sentences, cfg)`` -> stored rows typed again under other settings.
- ``das_score(sentences, cfg)`` -> the score alone (``None`` when nothing could be scored).
- ``score_sample(sample, student_offsets, student_logprobs, cfg)`` -> a ScoredSample dict (the
  student signal as numpy arrays: offsets ``(n, 2)``, log-probs float64).
- ``select_das(candidates, m)`` / ``select_random(candidates, m, seed)`` /
  ``select_naturalness(candidates, m, kind)`` -> ``(selected, rejected)``, and ``select_grouped`` to
  apply one per prompt and temperature pool.
- ``local_windows(text, window)`` / ``local_sentence_lp(...)`` / ``local_naturalness(...)``: the
  requests and the score of the local-naturalness baseline (the score driver runs the engine).

All functions are pure: no I/O, inputs are not modified.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import Field

from dasd.configbase import SPEED, Seed, StrictModel
from dasd.text.align import classify, score_sentences, sentence_means
from dasd.text.sentences import segment

DEFAULT_TAU = math.log(2.0)


class DASConfig(StrictModel):
    """Knobs of sentence typing and of the DAS score (docs/das.md explains each default)."""

    tau: float = Field(
        DEFAULT_TAU,
        gt=0,
        description=(
            "Threshold on delta = mean teacher log-prob - mean student log-prob of a sentence, in "
            "nats/token. Teacher sentence: delta > tau; Student sentence: delta < -tau; else Shared. "
            "Default ln 2 = 0.693: one model finds the sentence at least twice as likely per token "
            "(geometric mean) as the other."
        ),
    )
    penalty: float = Field(
        1.0,
        ge=0,
        description="lambda in score = frac_teacher - lambda * frac_student (0 ignores Student sentences).",
    )
    weight: Literal["student_tokens", "teacher_tokens", "chars"] = Field(
        "student_tokens",
        description=(
            "What a sentence weighs in the fractions: its student token count (default: its share of "
            "the student's SFT loss), its teacher token count, or its length in characters."
        ),
    )
    min_tokens: int = Field(
        1,
        ge=1,
        description="A sentence with fewer tokens than this on either side is 'unscored' (not typed).",
    )
    unit: Literal["token", "char"] = Field(
        "token",
        description=(
            "What a sentence's log-prob is normalised by: token = the paper's mean log-prob per token "
            "of each model's own tokens (nats/token, threshold tau); char = the tokenizer-neutral sum "
            "of log-probs over the sentence's characters, in bits per character (threshold tau_char). "
            "Per-token means favour the model with the finer tokenizer; per character they do not."
        ),
    )
    tau_char: float = Field(
        0.25,
        gt=0,
        description=(
            "Threshold on delta when unit = char, in bits/character. Default 0.25: tau = ln 2 nats "
            "(1 bit) per token at about 4 characters per token."
        ),
    )

    @property
    def threshold(self) -> float:
        """The threshold in the unit ``delta`` is measured in (``tau`` or ``tau_char``)."""
        return self.tau if self.unit == "token" else self.tau_char


def sentence_table(
    text: str,
    teacher_offsets: Sequence[Sequence[int]],
    teacher_logprobs: Sequence[float],
    student_offsets: Sequence[Sequence[int]],
    student_logprobs: Sequence[float],
    cfg: DASConfig | None = None,
) -> list[dict]:
    """Segment ``text`` and score each sentence under both models (``text.align`` for the rules).

    Offsets are character spans into ``text`` (each model's own tokenisation). Raises ``ValueError``
    naming the side and token index for out-of-range offsets, length mismatches or non-finite
    log-probs.
    """
    cfg = cfg or DASConfig()
    return score_sentences(
        text,
        segment(text),
        teacher_offsets,
        teacher_logprobs,
        student_offsets,
        student_logprobs,
        tau=cfg.threshold,
        min_tokens=cfg.min_tokens,
        unit=cfg.unit,
    )


def retype(sentences: Sequence[dict], cfg: DASConfig | None = None) -> list[dict]:
    """Copies of stored sentence rows with ``delta`` and ``type`` recomputed under ``cfg`` from their
    log-probs and token counts, exactly as ``sentence_table`` computes them (``unit``, threshold,
    ``min_tokens``), so a scored response is ranked by the current ``das`` settings without its models.

    Raises ``ValueError`` naming the sentence and field when a scored row lacks a log-prob.
    """
    cfg = cfg or DASConfig()
    keys = ("lp_teacher", "lp_student") if cfg.unit == "token" else ("lpc_teacher", "lpc_student")
    out = []
    for i, row in enumerate(sentences):
        row = dict(row)
        scored = (row["n_teacher_tokens"] >= cfg.min_tokens and row["n_student_tokens"] >= cfg.min_tokens
                  and (cfg.unit == "token" or row["end"] > row["start"]))
        if scored:
            missing = [k for k in keys if row.get(k) is None]
            if missing:
                raise ValueError(f"sentences[{i}]: no {missing[0]!r} (scored before das.unit {cfg.unit!r} existed; "
                                 "score the pool again)")
            row["delta"] = row[keys[0]] - row[keys[1]]
            row["type"] = classify(row["delta"], cfg.threshold)
        else:
            row["delta"], row["type"] = None, "unscored"
        out.append(row)
    return out


def _weight(row: dict, how: str) -> float:
    if how == "student_tokens":
        return float(row["n_student_tokens"])
    if how == "teacher_tokens":
        return float(row["n_teacher_tokens"])
    return float(row["end"] - row["start"])


def das_summary(sentences: Sequence[dict], cfg: DASConfig | None = None) -> dict[str, Any]:
    """Weighted type fractions, weighted mean delta and the DAS score of one response.

    Fractions are over the total weight of *all* sentences (unscored ones included, so a response
    that is mostly unscorable cannot look good); ``frac_unscored`` says how much was left out.
    ``score = frac_teacher - penalty * frac_student``; ``score`` and ``mean_delta`` are ``None``
    when no sentence is scored.
    """
    cfg = cfg or DASConfig()
    totals = {"teacher": 0.0, "student": 0.0, "shared": 0.0, "unscored": 0.0}
    counts = {"teacher": 0, "student": 0, "shared": 0, "unscored": 0}
    delta_sum = 0.0
    for row in sentences:
        kind = row["type"]
        if kind not in totals:
            raise ValueError(f"sentence type {kind!r} cannot be used for DAS (teacher, student, shared, unscored)")
        w = _weight(row, cfg.weight)
        totals[kind] += w
        counts[kind] += 1
        if kind != "unscored":
            delta = row.get("delta")
            delta_sum += w * (delta if delta is not None else row["lp_teacher"] - row["lp_student"])
    total = sum(totals.values())
    scored = total - totals["unscored"]
    frac = {k: (v / total if total > 0 else 0.0) for k, v in totals.items()}
    has_score = scored > 0
    return {
        "n_sentences": len(sentences),
        "n_teacher": counts["teacher"],
        "n_student": counts["student"],
        "n_shared": counts["shared"],
        "n_unscored": counts["unscored"],
        "frac_teacher": frac["teacher"],
        "frac_student": frac["student"],
        "frac_shared": frac["shared"],
        "frac_unscored": frac["unscored"],
        "mean_delta": delta_sum / scored if has_score else None,
        "score": frac["teacher"] - cfg.penalty * frac["student"] if has_score else None,
        "weight": cfg.weight,
        "tau": cfg.threshold,
        "unit": cfg.unit,
        "penalty": cfg.penalty,
    }


def das_score(sentences: Sequence[dict], cfg: DASConfig | None = None) -> float | None:
    """``frac_teacher - penalty * frac_student`` (see ``das_summary``); ``None`` if nothing is scored."""
    return das_summary(sentences, cfg)["score"]


def score_sample(
    sample: dict,
    student_offsets: Sequence[Sequence[int]],
    student_logprobs: Sequence[float],
    cfg: DASConfig | None = None,
) -> dict:
    """A ScoredSample dict: ``sample`` + ``student`` + ``sentences`` + ``das`` (``sample`` is not modified).

    ``sample["teacher"]`` must hold ``offsets`` and ``logprobs`` into ``sample["text"]``;
    errors name the sample id.
    """
    sid = sample.get("id", "?")
    teacher = sample.get("teacher") or {}
    if "offsets" not in teacher or "logprobs" not in teacher:
        raise ValueError(f"sample {sid}: no teacher offsets/logprobs to score (field 'teacher')")
    try:
        rows = sentence_table(
            sample["text"], teacher["offsets"], teacher["logprobs"], student_offsets, student_logprobs, cfg
        )
    except ValueError as e:
        raise ValueError(f"sample {sid}: {e}") from e
    out = dict(sample)
    out["student"] = {
        "offsets": np.asarray(student_offsets, dtype=np.int64).reshape(-1, 2),
        "logprobs": np.asarray(student_logprobs, dtype=np.float64),
    }
    out["sentences"] = rows
    out["das"] = das_summary(rows, cfg)
    out["naturalness"] = {"global": global_naturalness(student_logprobs)}
    return out


def _das_key(c: dict) -> tuple:
    das = c.get("das")
    if not isinstance(das, dict) or "score" not in das:
        raise ValueError(f"candidate {c.get('id', '?')}: no 'das' summary (run the score stage first)")
    score = das["score"]
    # Unscorable candidates (score None) go last; then score descending; then id ascending.
    return (score is None, -(score if score is not None else 0.0), str(c.get("id", "")))


def select_das(candidates: Sequence[dict], m: int) -> tuple[list[dict], list[dict]]:
    """Keep the ``m`` candidates with the highest DAS score; ties broken by sample id (ascending).

    Deterministic and independent of input order. Candidates whose score is ``None`` (nothing
    scorable) rank below all others. Returns ``(selected, rejected)``, both in rank order.
    """
    if m < 0:
        raise ValueError(f"m must be >= 0, got {m}")
    ranked = sorted(candidates, key=_das_key)
    return ranked[:m], ranked[m:]


def _random_key(seed: int, c: dict) -> tuple[str, str]:
    sid = str(c.get("id", ""))
    return hashlib.sha256(f"{seed}:{sid}".encode()).hexdigest(), sid


def select_random(candidates: Sequence[dict], m: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Keep ``m`` candidates chosen uniformly at random (the RS baseline, same budget as DAS).

    The draw ranks candidates by ``sha256(seed:id)``, so it depends only on the seed and the ids:
    not on input order, and one prompt's draw does not change when other prompts are added.
    """
    if m < 0:
        raise ValueError(f"m must be >= 0, got {m}")
    ranked = sorted(candidates, key=lambda c: _random_key(seed, c))
    return ranked[:m], ranked[m:]


# -- naturalness baselines (arXiv 2510.03988) ---------------------------------------------------------

NATURALNESS = ("global_naturalness", "local_naturalness")


def global_naturalness(student_logprobs: Sequence[float]) -> float | None:
    """Global naturalness: the student's mean log-prob per token of the whole response (nats/token);
    ``None`` for no token. (``math.fsum`` is exact: an array is summed as its list of Python floats,
    the same values, without a numpy scalar made for each.)"""
    if isinstance(student_logprobs, np.ndarray):
        student_logprobs = student_logprobs.tolist()
    return math.fsum(student_logprobs) / len(student_logprobs) if len(student_logprobs) else None


def local_windows(text: str, window: int) -> list[tuple[int, int, int]]:
    """The local-naturalness requests of one response: per sentence ``k`` of ``segment(text)``,
    ``(context_start, start, end)``, where ``context_start`` is the start of sentence
    ``max(0, k - window)``. The student scores ``text[context_start:end]`` after the prompt (its
    chat template) and only the tokens of ``text[start:end]`` count: each sentence is seen with the
    ``window`` sentences before it, not the whole response before it.
    """
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    spans = segment(text)
    return [(spans[max(0, k - window)][0], s, e) for k, (s, e) in enumerate(spans)]


def local_sentence_lp(
    continuation: str, sentence_start: int, offsets: Sequence[Sequence[int]], logprobs: Sequence[float]
) -> float | None:
    """Mean log-prob (nats/token) of the tokens of ``continuation[sentence_start:]`` (a scored local
    window, offsets into ``continuation``); the token rule of ``text.align`` decides which tokens
    are the sentence's. ``None`` when the sentence holds no token."""
    spans = [(0, sentence_start), (sentence_start, len(continuation))] if sentence_start > 0 else [(0, len(continuation))]
    means, _ = sentence_means(continuation, spans, offsets, logprobs)
    return means[-1]


def local_naturalness(sentence_lps: Sequence[float | None]) -> float | None:
    """Local naturalness of a response: the mean over its sentences (each counted once, whatever its
    length) of the student's mean log-prob per token of the sentence given its local window;
    sentences without a token are left out; ``None`` when none is left."""
    xs = [x for x in sentence_lps if x is not None]
    return math.fsum(xs) / len(xs) if xs else None


def _naturalness_value(c: dict, kind: str) -> float | None:
    nat = c.get("naturalness") or {}
    key = kind.split("_")[0]  # "global" / "local"
    if key in nat:
        return nat[key]
    if key == "global" and isinstance(c.get("student"), dict) and "logprobs" in c["student"]:
        return global_naturalness(c["student"]["logprobs"])
    hint = ("run the score stage with score.local_naturalness: always (or select.method: local_naturalness) "
            "before selecting") if key == "local" else "run the score stage first"
    raise ValueError(f"candidate {c.get('id', '?')}: no {key} naturalness ({hint})")


def select_naturalness(candidates: Sequence[dict], m: int, kind: str) -> tuple[list[dict], list[dict]]:
    """Keep the ``m`` candidates the student finds most natural: ``kind`` = ``global_naturalness``
    (mean student log-prob per token of the response) or ``local_naturalness`` (see
    ``local_naturalness``). Highest first, ``None`` last, ties by id; independent of input order."""
    if m < 0:
        raise ValueError(f"m must be >= 0, got {m}")
    if kind not in NATURALNESS:
        raise ValueError(f"kind must be one of {NATURALNESS}, got {kind!r}")

    def key(c: dict) -> tuple:
        v = _naturalness_value(c, kind)
        return (v is None, -(v if v is not None else 0.0), str(c.get("id", "")))

    ranked = sorted(candidates, key=key)
    return ranked[:m], ranked[m:]


METHODS = ("das", "random", *NATURALNESS)


def select_grouped(
    candidates: Sequence[dict],
    m: int,
    method: Literal["das", "random", "global_naturalness", "local_naturalness"],
    seed: int = 0,
    key: Callable[[dict], Any] = lambda c: (c.get("prompt_id"), c.get("temperature")),
) -> tuple[list[dict], list[dict]]:
    """Apply ``select_das``, ``select_random`` or ``select_naturalness`` with budget ``m`` within each group.

    Groups default to (prompt, temperature pool), as in docs/design.md#cross-tokenizer-sentence-scores. Output order: groups in order of
    first appearance, rank order within a group.
    """
    groups: dict[Any, list[dict]] = {}
    for c in candidates:
        groups.setdefault(key(c), []).append(c)
    selected: list[dict] = []
    rejected: list[dict] = []
    for members in groups.values():
        if method == "das":
            s, r = select_das(members, m)
        elif method == "random":
            s, r = select_random(members, m, seed)
        elif method in NATURALNESS:
            s, r = select_naturalness(members, m, method)
        else:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        selected += s
        rejected += r
    return selected, rejected


# -- the stages' sections (the score and select drivers apply the rules above) ------------------------


class ScoreConfig(StrictModel):
    """`dasd score` settings (YAML section ``score``)."""

    batch: int = Field(16, ge=1, description="Responses per engine call.", json_schema_extra=SPEED)
    rescore_teacher: Literal["auto", "always", "never"] = Field(
        "auto",
        description="re-score responses with the teacher engine: auto = only those whose teacher "
        "log-probs are missing or not raw; never = quarantine those instead",
    )
    local_naturalness: Literal["auto", "always", "never"] = Field(
        "auto",
        description="also score each response's local naturalness (the student's log-probs of each sentence "
        "given only the prompt and the local_window sentences before it; one extra student pass per "
        "sentence): auto = when select.method is local_naturalness",
    )
    local_window: int = Field(
        2, ge=0, description="sentences of the response before a sentence that its local-naturalness "
        "score sees (0: the sentence alone after the prompt)",
    )


class SelectConfig(StrictModel):
    """`dasd select` settings (YAML section ``select``)."""

    method: Literal["das", "random", "global_naturalness", "local_naturalness"] = Field(
        "das",
        description="das (divergence-aware), random (the RS baseline), global_naturalness (highest mean student "
        "log-prob per token of the response) or local_naturalness (highest mean over sentences of the student's "
        "log-prob given a local window, score.local_window; arXiv 2510.03988)",
    )
    m: int = Field(1, ge=1, description="responses kept per prompt and pool (the sampling budget)")
    seed: Seed = Field(0, description="seed of random selection")
