"""The paper's post-training diagnosis: where do sentence types sit in correct vs. incorrect answers?

Input: the *distilled* model's responses, each scored by three models - the teacher, the student
base (before distillation) and the distilled student - and graded. Pure functions, plain dicts out;
plotting lives in the report.

**Types** (``classify4``), with ``delta = lp_teacher - lp_student`` (mean nats/token per sentence):
- ``teacher``: ``delta > tau``; ``student``: ``delta < -tau``;
- ``boosted``: ``|delta| <= tau`` (teacher and student base agree) **and** the distilled model's
  log-prob differs from both by more than ``tau_boost``. The paper: p_D "differs significantly
  (typically higher)". ``boosted: two_sided`` (default) counts both directions:
  ``lp_distilled - max(lp_teacher, lp_student) > tau_boost`` or
  ``min(lp_teacher, lp_student) - lp_distilled > tau_boost``; ``boosted: higher`` only the first
  (distillation made the sentence much likelier than either source model finds it). The paper
  links Boosted sentences to wrong answers;
- ``shared``: the rest; ``unscored``: a model has no token in the sentence (left out of shares).

Default ``tau = tau_boost = ln 2`` (twice as likely per token; see docs/das.md for why).

**Profiles** (``position_profile``), per group (correct / incorrect) and bucket: the share of each
type = its weight / the weight of all scored sentences in that bucket, pooled over the group's
responses (weight: sentence count by default, or characters). Two bucketings:

- **by sentence index** (``by_index``, the paper's Fig. 6): bucket ``k`` holds the ``k``-th
  sentence of each response (0-based, counting every sentence of ``segment(text)``, unscored ones
  included, so the index is the sentence's place in the response); scored sentences at index
  ``>= index_bins`` are left out (``n_beyond`` counts them);
- **by relative position** (the top-level ``types``; our addition, which puts responses of
  different lengths on one axis): a sentence goes to the bucket of its midpoint
  ``(start + end) / 2 / len(text)`` among ``bins`` equal buckets of [0, 1].

Per type, ``area`` = mean over buckets of (share in correct - share in incorrect), the signed area
between the two curves (Delta per type): positive means the type is more frequent in correct
answers. Buckets empty in either group are skipped (``n_bins_used`` says how many remain).
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
        math.log(2.0), gt=0, description="Boosted threshold (nats/token): lp_D - max(lp_T, lp_S) above it, or, with "
        "boosted two_sided (the default), min(lp_T, lp_S) - lp_D above it too."
    )
    boosted: Literal["two_sided", "higher"] = Field(
        "two_sided",
        description="Boosted = teacher and base agree and the distilled model's lp differs from both by more than "
        "tau_boost: in either direction (two_sided; the paper: 'differs significantly, typically higher') or only "
        "higher (lp_D - max(lp_T, lp_S) > tau_boost).",
    )
    bins: int = Field(10, ge=1, le=1000, description="Number of relative-position buckets over a response.")
    index_bins: int = Field(
        50, ge=1, le=100000,
        description="Sentence indices of the by-index profile (the paper's Fig. 6): sentences 0 .. index_bins-1 "
        "of each response; later scored ones are counted in n_beyond, not plotted.",
    )
    weight: Literal["sentences", "chars"] = Field(
        "sentences", description="What a sentence weighs in a bucket's shares: 1, or its length in characters."
    )


class AnalyzeConfig(AnalysisConfig):
    """`dasd analyze` settings (YAML section ``analyze``): the typing thresholds plus what to analyse."""

    model: str = Field("auto", description="model label whose eval responses are analysed; auto = the last "
                       "training stage that has a final model and evaluation responses")
    max_responses: int = Field(200, ge=1, description="analyse at most this many responses (first by problem, index)")
    batch: int = Field(16, ge=1, description="responses per scoring call")


def classify4(lp_t: float, lp_s: float, lp_d: float, tau: float, tau_boost: float, boosted: str = "two_sided") -> str:
    """Teacher / Student / Boosted / Shared for one sentence (see the module doc)."""
    if boosted not in ("two_sided", "higher"):
        raise ValueError(f"boosted must be 'two_sided' or 'higher', got {boosted!r}")
    delta = lp_t - lp_s
    if delta > tau:
        return "teacher"
    if delta < -tau:
        return "student"
    if lp_d - max(lp_t, lp_s) > tau_boost:
        return "boosted"
    if boosted == "two_sided" and min(lp_t, lp_s) - lp_d > tau_boost:
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
            row["type"] = classify4(lps["teacher"], lps["student"], lps["distilled"], cfg.tau, cfg.tau_boost, cfg.boosted)
        rows.append(row)
    return rows


def retype(sentences: Sequence[dict], cfg: AnalysisConfig | None = None) -> list[dict]:
    """Copies of sentence rows (with ``lp_teacher``, ``lp_student``, ``lp_distilled``) re-typed with ``cfg``."""
    cfg = cfg or AnalysisConfig()
    out = []
    for r in sentences:
        r = dict(r)
        lps = (r.get("lp_teacher"), r.get("lp_student"), r.get("lp_distilled"))
        r["type"] = "unscored" if any(v is None for v in lps) else classify4(*lps, cfg.tau, cfg.tau_boost, cfg.boosted)
        out.append(r)
    return out


def position_profile(responses: Sequence[dict], cfg: AnalysisConfig | None = None) -> dict[str, Any]:
    """Share of each type per bucket, correct vs. incorrect, and the area between: by relative
    position (top level) and by sentence index (``by_index``, the paper's Fig. 6).

    Each response: ``{"sentences": [...typed rows, in order...], "correct": bool}`` and optionally
    ``"text"`` (its length is the position scale; else the last sentence's ``end``). Returns
    ``{"bins", "edges", "n_responses": {group: n}, "types": {type: {"correct": [share|None]*bins,
    "incorrect": [...], "overall": {group: share|None}, "area": float|None, "abs_area": ...,
    "n_bins_used": int}}, "by_index": {"index_bins", "n_beyond": {group: n}, "types": {...same...}}}``.
    """
    cfg = cfg or AnalysisConfig()
    groups = ("correct", "incorrect")
    rel = _Buckets(cfg.bins)
    idx = _Buckets(cfg.index_bins)
    n_resp = {g: 0 for g in groups}
    beyond = {g: 0 for g in groups}
    for i, resp in enumerate(responses):
        if "correct" not in resp or "sentences" not in resp:
            raise ValueError(f"response {resp.get('id', i)}: needs 'correct' and 'sentences'")
        g = "correct" if resp["correct"] else "incorrect"
        n_resp[g] += 1
        sents = resp["sentences"]
        length = len(resp["text"]) if "text" in resp else (sents[-1]["end"] if sents else 0)
        for k, r in enumerate(sents):
            kind = r["type"]
            if kind == "unscored":
                continue
            if kind not in TYPES:
                raise ValueError(f"response {resp.get('id', i)}: unknown sentence type {kind!r}")
            w = 1.0 if cfg.weight == "sentences" else float(r["end"] - r["start"])
            if length > 0:
                pos = (r["start"] + r["end"]) / 2 / length
                rel.add(g, kind, min(max(int(pos * cfg.bins), 0), cfg.bins - 1), w)
            if k < cfg.index_bins:
                idx.add(g, kind, k, w)
            else:
                beyond[g] += 1
    return {
        "bins": cfg.bins,
        "edges": [b / cfg.bins for b in range(cfg.bins + 1)],
        "weight": cfg.weight,
        "tau": cfg.tau,
        "tau_boost": cfg.tau_boost,
        "boosted": cfg.boosted,
        "n_responses": n_resp,
        "types": rel.shares(),
        "by_index": {"index_bins": cfg.index_bins, "n_beyond": beyond, "types": idx.shares()},
    }


class _Buckets:
    """Weights per (group, type, bucket) and per (group, bucket); ``shares()`` turns them into curves."""

    def __init__(self, n: int):
        self.n = n
        self.w_type = {g: {t: [0.0] * n for t in TYPES} for g in ("correct", "incorrect")}
        self.w_all = {g: [0.0] * n for g in ("correct", "incorrect")}

    def add(self, group: str, kind: str, b: int, w: float) -> None:
        self.w_type[group][kind][b] += w
        self.w_all[group][b] += w

    def shares(self) -> dict[str, Any]:
        groups = ("correct", "incorrect")
        total = {g: sum(self.w_all[g]) for g in groups}
        out: dict[str, Any] = {}
        for t in TYPES:
            curves = {g: [self.w_type[g][t][b] / self.w_all[g][b] if self.w_all[g][b] > 0 else None
                          for b in range(self.n)] for g in groups}
            diffs = [c - i for c, i in zip(curves["correct"], curves["incorrect"]) if c is not None and i is not None]
            out[t] = {
                **curves,
                "overall": {g: (sum(self.w_type[g][t]) / total[g] if total[g] > 0 else None) for g in groups},
                "area": sum(diffs) / len(diffs) if diffs else None,
                "abs_area": sum(abs(d) for d in diffs) / len(diffs) if diffs else None,
                "n_bins_used": len(diffs),
            }
        return out
