"""The paper's post-training diagnosis: where do sentence types sit in correct vs. incorrect answers?

Input: the *distilled* model's responses, each scored by three models - the teacher, the student
base (before distillation) and the distilled student - and graded. Pure functions, plain dicts out;
plotting lives in the report.

**Types** (``classify4``), with ``delta = lp_teacher - lp_student`` (mean nats/token per sentence):
- ``teacher``: ``delta > tau``; ``student``: ``delta < -tau``;
- ``boosted``: ``|delta| <= tau`` (teacher and student base agree) **and**
  ``lp_distilled - max(lp_teacher, lp_student) > tau_boost``: distillation made the sentence much
  more likely than either source model finds it - a pattern the student over-learned, which the
  paper links to wrong answers;
- ``shared``: the rest; ``unscored``: a model has no token in the sentence (left out of shares).

Default ``tau = tau_boost = ln 2`` (twice as likely per token; see docs/das.md for why).

**Position profile** (``position_profile``): each scored sentence is placed at the relative
position of its midpoint, ``(start + end) / 2 / len(text)``, in one of ``bins`` equal buckets. Per
group (correct / incorrect) and bucket, the share of each type = its weight / the weight of all
scored sentences in that bucket, pooled over the group's responses (weight: sentence count by
default, or characters). Per type, ``area`` = mean over buckets of (share in correct - share in
incorrect) - the signed area between the two curves on a [0, 1] position axis (the paper's Delta
per type): positive means the type is more frequent in correct answers. Buckets empty in either
group are skipped (``n_bins_used`` says how many remain).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field

from dasd.configbase import StrictModel
from dasd.text.align import check_token_signal, sentence_means
from dasd.text.sentences import segment

TYPES = ("teacher", "student", "shared", "boosted")


class AnalysisConfig(StrictModel):
    """Knobs of the four-way typing and of the position profile."""

    tau: float = Field(math.log(2.0), gt=0, description="Teacher/Student threshold on |lp_T - lp_S| (nats/token).")
    tau_boost: float = Field(
        math.log(2.0), gt=0, description="Boosted: lp_D - max(lp_T, lp_S) above this (nats/token)."
    )
    bins: int = Field(10, ge=1, le=1000, description="Number of relative-position buckets over a response.")
    weight: Literal["sentences", "chars"] = Field(
        "sentences", description="What a sentence weighs in a bucket's shares: 1, or its length in characters."
    )


class AnalyzeConfig(AnalysisConfig):
    """`dasd analyze` settings (YAML section ``analyze``): the typing thresholds plus what to analyse."""

    model: str = Field("auto", description="model label whose eval responses are analysed; auto = the last "
                       "training stage that has a final model and evaluation responses")
    max_responses: int = Field(200, ge=1, description="analyse at most this many responses (first by problem, index)")
    batch: int = Field(16, ge=1, description="responses per scoring call")


def classify4(lp_t: float, lp_s: float, lp_d: float, tau: float, tau_boost: float) -> str:
    """Teacher / Student / Boosted / Shared for one sentence (see the module doc)."""
    delta = lp_t - lp_s
    if delta > tau:
        return "teacher"
    if delta < -tau:
        return "student"
    if lp_d - max(lp_t, lp_s) > tau_boost:
        return "boosted"
    return "shared"


def score_response(
    text: str,
    teacher: tuple[Sequence[Sequence[int]], Sequence[float]],
    student: tuple[Sequence[Sequence[int]], Sequence[float]],
    distilled: tuple[Sequence[Sequence[int]], Sequence[float]],
    cfg: AnalysisConfig | None = None,
) -> list[dict]:
    """Sentence rows of one response scored by three models, each ``(offsets, logprobs)``.

    Rows hold ``start, end, lp_teacher, lp_student, lp_distilled, n_teacher_tokens,
    n_student_tokens, n_distilled_tokens, type`` (``records.Sentence`` plus the distilled columns).
    """
    cfg = cfg or AnalysisConfig()
    spans = segment(text)
    cols = {}
    for name, (offsets, logprobs) in (("teacher", teacher), ("student", student), ("distilled", distilled)):
        check_token_signal(text, offsets, logprobs, name)
        cols[name] = sentence_means(text, spans, offsets, logprobs)
    rows = []
    for k, (s, e) in enumerate(spans):
        lps = {m: cols[m][0][k] for m in cols}
        row: dict[str, Any] = {"start": s, "end": e}
        for m in cols:
            row[f"lp_{m}"] = lps[m]
            row[f"n_{m}_tokens"] = cols[m][1][k]
        if any(v is None for v in lps.values()):
            row["type"] = "unscored"
        else:
            row["type"] = classify4(lps["teacher"], lps["student"], lps["distilled"], cfg.tau, cfg.tau_boost)
        rows.append(row)
    return rows


def retype(sentences: Sequence[dict], cfg: AnalysisConfig | None = None) -> list[dict]:
    """Copies of sentence rows (with ``lp_teacher``, ``lp_student``, ``lp_distilled``) re-typed with ``cfg``."""
    cfg = cfg or AnalysisConfig()
    out = []
    for r in sentences:
        r = dict(r)
        lps = (r.get("lp_teacher"), r.get("lp_student"), r.get("lp_distilled"))
        r["type"] = "unscored" if any(v is None for v in lps) else classify4(*lps, cfg.tau, cfg.tau_boost)
        out.append(r)
    return out


def position_profile(responses: Sequence[dict], cfg: AnalysisConfig | None = None) -> dict[str, Any]:
    """Share of each type per relative-position bucket, correct vs. incorrect, and the area between.

    Each response: ``{"sentences": [...typed rows...], "correct": bool}`` and optionally
    ``"text"`` (its length is the position scale; else the last sentence's ``end``). Returns
    ``{"bins", "edges", "n_responses": {group: n}, "types": {type: {"correct": [share|None]*bins,
    "incorrect": [...], "overall": {group: share|None}, "area": float|None, "abs_area": ...,
    "n_bins_used": int}}}``.
    """
    cfg = cfg or AnalysisConfig()
    groups = ("correct", "incorrect")
    w_type = {g: {t: [0.0] * cfg.bins for t in TYPES} for g in groups}
    w_all = {g: [0.0] * cfg.bins for g in groups}
    n_resp = {g: 0 for g in groups}
    for i, resp in enumerate(responses):
        if "correct" not in resp or "sentences" not in resp:
            raise ValueError(f"response {resp.get('id', i)}: needs 'correct' and 'sentences'")
        g = "correct" if resp["correct"] else "incorrect"
        n_resp[g] += 1
        sents = resp["sentences"]
        length = len(resp["text"]) if "text" in resp else (sents[-1]["end"] if sents else 0)
        if length <= 0:
            continue
        for r in sents:
            kind = r["type"]
            if kind == "unscored":
                continue
            if kind not in TYPES:
                raise ValueError(f"response {resp.get('id', i)}: unknown sentence type {kind!r}")
            pos = (r["start"] + r["end"]) / 2 / length
            b = min(max(int(pos * cfg.bins), 0), cfg.bins - 1)
            w = 1.0 if cfg.weight == "sentences" else float(r["end"] - r["start"])
            w_type[g][kind][b] += w
            w_all[g][b] += w
    out_types: dict[str, Any] = {}
    for t in TYPES:
        curves = {
            g: [w_type[g][t][b] / w_all[g][b] if w_all[g][b] > 0 else None for b in range(cfg.bins)] for g in groups
        }
        diffs = [c - i for c, i in zip(curves["correct"], curves["incorrect"]) if c is not None and i is not None]
        total = {g: sum(w_all[g]) for g in groups}
        out_types[t] = {
            **curves,
            "overall": {g: (sum(w_type[g][t]) / total[g] if total[g] > 0 else None) for g in groups},
            "area": sum(diffs) / len(diffs) if diffs else None,
            "abs_area": sum(abs(d) for d in diffs) / len(diffs) if diffs else None,
            "n_bins_used": len(diffs),
        }
    return {
        "bins": cfg.bins,
        "edges": [b / cfg.bins for b in range(cfg.bins + 1)],
        "weight": cfg.weight,
        "tau": cfg.tau,
        "tau_boost": cfg.tau_boost,
        "n_responses": n_resp,
        "types": out_types,
    }
