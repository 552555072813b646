"""The paper's comparisons on the toy world at an equal budget of training samples (docs/ablation.md).

    from ablation_lib import AblationPlan, run_ablation
    report = run_ablation(AblationPlan(config="configs/demo.yaml", seeds=[0, 1, 2], out="runs/ablation"))
    print(report["markdown"])

Per seed, one shared candidate pool is built with the real stages (sample -> filter -> score) in
``OUT/seed-<s>/pool``; every arm then selects from that pool, trains the student with the real
trainer in ``OUT/seed-<s>/arms/<arm>/``, and is measured with the same held-out protocol:

- accuracy: avg@n on the benchmark(s) of ``eval.benchmarks`` under ``eval.protocol`` (seed = s);
- KL(teacher || student): mean over reference teacher responses y (sampled at T=1.0 on the held-out
  prompts) of log p_T(y) - log p_S(y), both from ``engine.score`` of the same
  text, each model through its own chat template and tokenizer (nats per response, and per
  teacher token).

Arms (budget B = 2 examples per prompt, identical optimizer steps S for every stages-1/2 arm):
``rs_low``/``das_low`` (2 of k from T_low), ``rs_high``/``das_high`` (2 of k from T_high),
``rs_low_high``/``das_low_high`` (1 of k from T_low for S/2 steps, then 1 of k from T_high for S/2
steps from that checkpoint), ``rs_high_high`` (our control: rs_high's examples in the same two
stages, to separate the temperature schedule from the two-stage learning-rate schedule),
``das_high_low`` (only when named in ``arms``: ``das_low_high``'s examples with T_high first, which
isolates the order of temperatures), and ``mixed_unmasked``/``mixed_masked`` (from ``das_low_high``: the
mixed-policy examples of ``dasd.stages.mix`` trained for the same steps, student prefix in the loss
or masked). ``student`` and ``teacher`` are measured too as references (no training).

Optional arms (off by default, each costs a training and a measurement per seed):

- ``plan.naturalness``: stronger baselines than random at the same budget (arXiv 2510.03988):
  ``gnat_high``/``gnat_low_high`` select by the student's global naturalness (mean log-prob per
  token of the response), ``lnat_high``/``lnat_low_high`` by its local naturalness (each sentence
  given only ``score.local_window`` sentences before it; the pool's score stage then makes the
  extra student passes, ``score.local_naturalness=always``);
- ``plan.replay`` (a ratio, e.g. ``PAPER_REPLAY_RATIO`` = 20/7.7): ``mixed_replay``, the unmasked
  mixed-policy stage trained on the mixed examples plus ``round(ratio x n_mixed)`` examples replayed
  from ``das_low_high``'s T_high stage (``dasd.rules.mixing.replay_examples``, seeded), for one
  epoch over that larger set: the paper's Table 5 run (7.7K mixed with 20K off-policy samples);
  and ``mixed_masked_replay``, the same examples with the student prefix masked (the replayed
  examples have none, so they train whole in both).

``plan.paper_protocol`` measures every model as the paper does (T=1.0, top_p 1.0, ``plan.samples``
samples per held-out problem). The report has, besides the arm table, the paper's Tables 1, 3 and 5
as paired contrasts with a "reproduces?" verdict (``paper_tables``), and a power table
(``power_table``: seeds needed to detect an effect / reach an interval half-width, from the
observed seed-to-seed SD of each paired difference).

Everything is resumable: the pool stages resume themselves, training skips finished stages, and
each arm's measurements are kept in ``metrics.json`` (recomputed only when the protocol changes).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dasd.jsonl import atomic_write_json, atomic_write_jsonl

ARMS = ("rs_low", "rs_high", "rs_low_high", "rs_high_high", "das_low", "das_high", "das_low_high", "mixed_unmasked", "mixed_masked")
NATURALNESS_ARMS = ("gnat_high", "gnat_low_high", "lnat_high", "lnat_low_high")
REPLAY_ARMS = ("mixed_replay", "mixed_masked_replay")
# Trained only when named in ``--arms``: das_low_high's examples with the temperatures in the other
# order (the same examples and selection depth, so the pair isolates the order of temperatures).
ORDER_ARMS = ("das_high_low",)
ALL_ARMS = (*ARMS[:7], *ORDER_ARMS, *NATURALNESS_ARMS, *ARMS[7:], *REPLAY_ARMS)
REFERENCES = ("student", "teacher")
# Differences of arms within a seed (paired), the comparisons the paper makes.
CONTRASTS = (
    ("das_low", "rs_low", "DAS vs RS at T_low"),
    ("das_high", "rs_high", "DAS vs RS at T_high"),
    ("das_low_high", "rs_low_high", "DAS vs RS, low->high"),
    ("rs_high", "rs_low", "RS: T_high vs T_low"),
    ("rs_low_high", "rs_high", "RS: low->high vs T_high"),
    ("rs_low_high", "rs_low", "RS: low->high vs T_low"),
    ("das_low_high", "das_high", "DAS: low->high vs T_high"),
    ("das_low_high", "das_high_low", "DAS: low->high vs high->low (the same examples)"),
    ("rs_low_high", "rs_high_high", "RS: low->high vs high->high (two stages both)"),
    ("rs_high_high", "rs_high", "RS at T_high: two stages vs one"),
    ("mixed_unmasked", "mixed_masked", "mixed: unmasked vs masked prefix"),
    ("mixed_unmasked", "das_low_high", "mixed (unmasked) vs its start"),
    ("das_high", "gnat_high", "DAS vs global naturalness at T_high"),
    ("das_high", "lnat_high", "DAS vs local naturalness at T_high"),
    ("das_low_high", "gnat_low_high", "DAS vs global naturalness, low->high"),
    ("das_low_high", "lnat_low_high", "DAS vs local naturalness, low->high"),
    ("lnat_low_high", "rs_low_high", "local naturalness vs RS, low->high"),
    ("mixed_replay", "mixed_unmasked", "mixed: with replay vs without"),
    ("mixed_replay", "mixed_masked_replay", "mixed+replay: unmasked vs masked prefix"),
    ("mixed_replay", "das_low_high", "mixed with replay vs its start"),
)
# The paper's AIME24 / AIME25 numbers for the matching arms (docs/method.md#reported-results).
PAPER = {
    "rs_low": "81.7 / 71.9", "rs_high": "83.1 / 76.1", "rs_low_high": "85.2 / 81.3 (RS, 2x data)",
    "rs_high_high": "- (our control)", "das_high_low": "- (our control)", "das_low": "83.3 / 74.2", "das_high": "85.0 / 79.2", "das_low_high": "-",
    "mixed_unmasked": "83.3 / 74.8", "mixed_masked": "80.8 / 72.3", "mixed_replay": "83.3 / 74.8 (7.7K mixed + 20K off-policy)",
    "mixed_masked_replay": "80.8 / 72.3 (7.7K mixed + 20K off-policy)",
}
# The paper's tables as paired contrasts (a, b, the paper's AIME24 / AIME25 difference a - b, the
# direction the paper reports or the method expects: +1, or None for our control).
_NOT_IN_PAPER = "- (not in the paper; the method expects +)"
PAPER_TABLES = (
    ("Table 1: temperature schedule vs single temperature (RS)", (
        ("rs_high", "rs_low", "+1.4 / +4.2 (50K T=1.0 vs 50K T=0.6)", 1),
        ("rs_low_high", "rs_high", "+2.1 / +2.4 (50K+50K low->high vs 100K T=1.0)", 1),
        ("rs_low_high", "rs_low", "+3.5 / +9.4 (vs 50K T=0.6: low->high had 2x data)", 1),
        ("rs_low_high", "rs_high_high", "- (our control: temperature order vs two-stage schedule)", None),
        ("das_low_high", "das_high_low", "- (our control: temperature order, the same DAS examples)", 1),
    )),
    ("Table 3: DAS vs RS at equal budget", (
        ("das_low", "rs_low", "+1.6 / +2.3 (50K each at T=0.6)", 1),
        ("das_high", "rs_high", "+1.9 / +3.1 (50K each at T=1.0)", 1),
        ("das_low_high", "rs_low_high", _NOT_IN_PAPER, 1),
        ("das_high", "gnat_high", _NOT_IN_PAPER, 1),
        ("das_high", "lnat_high", _NOT_IN_PAPER, 1),
        ("das_low_high", "gnat_low_high", _NOT_IN_PAPER, 1),
        ("das_low_high", "lnat_low_high", _NOT_IN_PAPER, 1),
    )),
    ("Table 5: mixed-policy stage, unmasked vs masked prefix", (
        ("mixed_unmasked", "mixed_masked", "+2.5 / +2.5 (the paper's run had replay)", 1),
        ("mixed_replay", "mixed_masked_replay", "+2.5 / +2.5 (7.7K mixed + 20K off-policy)", 1),
        ("mixed_replay", "mixed_unmasked", _NOT_IN_PAPER, 1),
    )),
)
PAPER_PROTOCOL_SAMPLES = 16  # the paper draws 64 per problem; 16 is the toy ablation's default

@dataclass
class AblationPlan:
    """What to run. ``overrides`` are dotted ``KEY=VALUE`` config overrides applied to every seed.

    ``per_prompt``: training examples per prompt (the budget B; the low->high arms take B/2 from
    each temperature, so it must be even). ``epochs``: passes over the B x prompts examples (sets
    the steps S, identical for every stages-1/2 arm). ``kl_samples``: reference teacher responses
    per held-out prompt. ``mixed``: run the two mixed-policy arms. ``references``: measure the base
    student and the teacher too. ``naturalness``: the four naturalness-baseline arms. ``replay``:
    the ``mixed_replay`` and ``mixed_masked_replay`` arms with this many replayed examples per mixed
    example (needs ``mixed``). ``paper_protocol``: measure every model at T=1.0, top_p 1.0 with
    ``samples`` (default ``PAPER_PROTOCOL_SAMPLES``) samples per held-out problem, whatever the
    config's ``eval.protocol`` (its ``max_tokens`` stays); ``samples`` alone sets only
    ``eval.protocol.n``. ``power_effect``/``power_halfwidth``: accuracy points of the power table
    (``power_table``). ``arms``: train only these arms (default: every arm the other knobs ask for);
    the mixed-policy arms need ``das_low_high`` (their starting point) among them.
    ``same_prompts``: every seed samples the config's own toy prompts (``data.toy.seed`` as written)
    instead of drawing them with the seed (the other random knobs still follow the seed).
    ``earlier``: results JSON files of earlier runs whose per-seed results join this run's tables
    (checked by ``load_earlier`` before any seed runs, added by ``pool_earlier``): seeds and arms not
    run here are taken from them.
    """

    config: str | None = None
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    out: str = "runs/ablation"
    overrides: list[str] = field(default_factory=list)
    per_prompt: int = 2
    epochs: float | None = None
    kl_samples: int = 2
    mixed: bool = True
    references: bool = True
    naturalness: bool = False
    replay: float | None = None
    paper_protocol: bool = False
    samples: int | None = None
    power_effect: float = 2.0
    power_halfwidth: float = 2.0
    arms: list[str] | None = None
    same_prompts: bool = False
    earlier: list[str] = field(default_factory=list)
    log: Any = print

    def __post_init__(self) -> None:
        unknown = sorted(set(self.arms or ()) - set(ALL_ARMS))
        if unknown:
            raise ValueError(f"unknown arm(s) {', '.join(unknown)}; the arms are {', '.join(ALL_ARMS)}")

    def wants(self, arm: str) -> bool:
        """Whether ``arm`` is trained: named in ``arms``, or every arm but ``ORDER_ARMS`` by default."""
        return arm not in ORDER_ARMS if self.arms is None else arm in self.arms


# ---------------------------------------------------------------------------------------------
# Statistics


def t_interval(xs: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of a two-sided Student-t interval (default 95%) over ``xs`` (seeds); one value: no CI."""
    xs = [float(x) for x in xs]
    if not xs:
        raise ValueError("t_interval of no values")
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, math.nan, math.nan
    half = t_quantile((1 + level) / 2, len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))
    return m, m - half, m + half


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on ``t_cdf``; the
    standard library has no t distribution and scipy is not a dependency)."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def seeds_needed(sd: float, effect: float, alpha: float = 0.05, power: float = 0.8) -> int | None:
    """Seeds a paired comparison needs to detect a true difference ``effect`` with probability
    ``power`` in a two-sided t-test at level ``alpha``, when the paired difference varies from seed
    to seed with standard deviation ``sd`` (same unit as ``effect``): the smallest n >= 2 with
    (t_{1-alpha/2, n-1} + t_{power, n-1})^2 sd^2 / effect^2 <= n (the usual t-based approximation of
    the noncentral-t power; None when ``sd`` is unknown)."""
    if effect <= 0 or not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"seeds_needed needs effect > 0, 0 < alpha < 1, 0 < power < 1, got {effect}, {alpha}, {power}")
    if sd is None or math.isnan(sd):
        return None
    ratio = (abs(sd) / effect) ** 2
    z = statistics.NormalDist()
    # The normal quantiles are below the t ones, so this start is never past the answer.
    n = max(2, math.ceil((z.inv_cdf(1 - alpha / 2) + z.inv_cdf(power)) ** 2 * ratio))
    while (t_quantile(1 - alpha / 2, n - 1) + t_quantile(power, n - 1)) ** 2 * ratio > n:
        n += 1
    return n


def halfwidth_seeds(sd: float, h: float, level: float = 0.95) -> int | None:
    """Seeds for a paired ``level`` t-interval of half-width at most ``h``: the smallest n >= 2 with
    t_{(1+level)/2, n-1} sd / sqrt(n) <= h (at the true ``sd``; None when ``sd`` is unknown)."""
    if h <= 0:
        raise ValueError(f"halfwidth_seeds needs h > 0, got {h}")
    if sd is None or math.isnan(sd):
        return None
    q = (1 + level) / 2
    n = max(2, math.ceil((statistics.NormalDist().inv_cdf(q) * abs(sd) / h) ** 2))
    while t_quantile(q, n - 1) * abs(sd) / math.sqrt(n) > h:
        n += 1
    return n


def aggregate(per_seed: dict[int, dict[str, dict]]) -> dict[str, dict]:
    """Per arm: mean and 95% t-interval over seeds of accuracy, KL per response and KL per token."""
    out: dict[str, dict] = {}
    labels = [a for a in (*REFERENCES, *ALL_ARMS) if any(a in arms for arms in per_seed.values())]
    for label in labels:
        rows = [arms[label] for arms in per_seed.values() if label in arms]
        entry = {"seeds": len(rows)}
        for key in ("accuracy", "kl", "kl_per_token"):
            vals = [r[key] for r in rows if r.get(key) is not None]
            entry[key] = t_interval(vals) if vals else None
        entry["examples"] = statistics.fmean(r.get("examples", 0) or 0 for r in rows)
        entry["steps"] = statistics.fmean(r.get("steps", 0) or 0 for r in rows)
        out[label] = entry
    return out


def contrast(per_seed: dict, a: str, b: str) -> dict | None:
    """The paired difference a - b within each seed that has both arms: {a, b, seeds, accuracy, kl}
    (95% t-intervals over seeds) and ``accuracy_diffs`` (per seed); None when no seed has both."""
    seeds = [s for s, arms in per_seed.items() if a in arms and b in arms]
    if not seeds:
        return None
    row = {"a": a, "b": b, "seeds": len(seeds)}
    for key in ("accuracy", "kl"):
        d = [per_seed[s][a][key] - per_seed[s][b][key] for s in seeds
             if per_seed[s][a].get(key) is not None and per_seed[s][b].get(key) is not None]
        row[key] = t_interval(d) if d else None
        if key == "accuracy":
            row["accuracy_diffs"] = d
    return row


def paired(per_seed: dict[int, dict[str, dict]]) -> list[dict]:
    """Paired differences (a - b within each seed) of the CONTRASTS, with 95% t-intervals."""
    rows = []
    for a, b, name in CONTRASTS:
        row = contrast(per_seed, a, b)
        if row is not None:
            rows.append({"contrast": name, **row})
    return rows


def reproduces(ci, direction: int | None) -> str:
    """Verdict on one contrast: "yes" when the 95% interval excludes 0 on the side of ``direction``
    (+1: a > b), "opposite" when it excludes 0 on the other side, "not resolved" otherwise (also
    with one seed: no interval); "-" when there is no direction (a control)."""
    if direction is None:
        return "-"
    if ci is None or math.isnan(ci[1]):
        return "not resolved"
    _, lo, hi = ci
    if lo > 0:
        return "yes" if direction > 0 else "opposite"
    if hi < 0:
        return "opposite" if direction > 0 else "yes"
    return "not resolved"


def paper_tables(per_seed: dict) -> list[dict]:
    """The paper's Tables 1, 3 and 5 (``PAPER_TABLES``) as paired accuracy contrasts over seeds:
    [{title, rows: [contrast(...) + {paper, direction, reproduces}]}], rows whose arms ran only,
    tables without a row left out."""
    out = []
    for title, spec in PAPER_TABLES:
        rows = []
        for a, b, paper, direction in spec:
            row = contrast(per_seed, a, b)
            if row is not None:
                rows.append({**row, "paper": paper, "direction": direction,
                             "reproduces": reproduces(row["accuracy"], direction)})
        if rows:
            out.append({"title": title, "rows": rows})
    return out


def power_table(per_seed: dict, effect: float = 2.0, halfwidth: float = 2.0, alpha: float = 0.05,
                power: float = 0.8) -> dict:
    """Per contrast of the paper's tables: the observed SD over seeds of the paired accuracy
    difference (points), the seeds ``seeds_needed`` to detect ``effect`` points with ``power``, the
    seeds ``halfwidth_seeds`` for a 95% interval of +-``halfwidth`` points; and the same from the
    root-mean-square of those SDs (``pooled_*``). {effect, halfwidth, alpha, power, seeds (the
    run's), rows, pooled_sd, pooled_detect, pooled_interval}."""
    rows, seen = [], set()
    for table in paper_tables(per_seed):
        for r in table["rows"]:
            if (r["a"], r["b"]) in seen:
                continue
            seen.add((r["a"], r["b"]))
            d = [100 * x for x in r["accuracy_diffs"]]
            sd = statistics.stdev(d) if len(d) >= 2 else None
            rows.append({"a": r["a"], "b": r["b"], "seeds": len(d), "sd": sd,
                         "detect": seeds_needed(sd, effect, alpha, power) if sd is not None else None,
                         "interval": halfwidth_seeds(sd, halfwidth) if sd is not None else None})
    known = [r["sd"] for r in rows if r["sd"] is not None]
    pooled = math.sqrt(statistics.fmean(sd**2 for sd in known)) if known else None
    return {"effect": effect, "halfwidth": halfwidth, "alpha": alpha, "power": power, "seeds": len(per_seed),
            "rows": rows, "pooled_sd": pooled,
            "pooled_detect": seeds_needed(pooled, effect, alpha, power) if known else None,
            "pooled_interval": halfwidth_seeds(pooled, halfwidth) if known else None}


def _enough(n: int, need: int | None) -> str:
    if need is None:
        return "?"
    return "yes" if n >= need else f"no ({need - n} short)"


def power_markdown(pw: dict) -> str:
    """The power table of ``power_table`` and a line saying whether the run had the seeds."""
    e, h = pw["effect"], pw["halfwidth"]
    lines = [f"Power (paired accuracy differences; SD over seeds, in points; two-sided alpha {pw['alpha']:g}):", "",
             f"| a - b | seeds | paired SD | seeds to detect {e:g} points ({pw['power']:.0%} power) | "
             f"seeds for a ±{h:g}-point 95% CI | enough to detect? | enough for the CI? |",
             "|---|---|---|---|---|---|---|"]
    for r in pw["rows"]:
        sd = "n/a" if r["sd"] is None else f"{r['sd']:.2f}"
        lines.append(f"| {r['a']} - {r['b']} | {r['seeds']} | {sd} | {r['detect'] or 'n/a'} | {r['interval'] or 'n/a'} | "
                     f"{_enough(r['seeds'], r['detect'])} | {_enough(r['seeds'], r['interval'])} |")
    known = [r for r in pw["rows"] if r["sd"] is not None]
    if not known:
        lines += ["", f"No paired SD with {pw['seeds']} seed(s): the power analysis needs at least 2 seeds."]
    else:
        detect, interval = max(r["detect"] for r in known), max(r["interval"] for r in known)
        ok_d = sum(r["seeds"] >= r["detect"] for r in known)
        ok_i = sum(r["seeds"] >= r["interval"] for r in known)
        lines += ["", f"This run had {pw['seeds']} seeds: enough to detect a {e:g}-point effect with {pw['power']:.0%} power "
                  f"on {ok_d} of {len(known)} contrasts and for a ±{h:g}-point interval on {ok_i} of {len(known)}; "
                  f"all of them need {detect} seeds (detection) and {interval} (interval), "
                  f"at this run's held-out problems and samples per problem."]
        lines += ["", f"Pooled over the {len(known)} contrasts (root-mean-square SD {pw['pooled_sd']:.2f} points, steadier "
                  f"than each SD from few seeds): {pw['pooled_detect']} seeds to detect {e:g} points, "
                  f"{pw['pooled_interval']} for ±{h:g}."]
    return "\n".join(lines) + "\n"


def _ci(v, scale: float = 1.0, digits: int = 1) -> str:
    if v is None:
        return "n/a"
    m, lo, hi = (x * scale for x in v)
    if math.isnan(lo):
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def markdown(agg: dict[str, dict], diffs: list[dict], shares: dict, plan_info: dict, tables: list[dict] | None = None,
             power: dict | None = None) -> str:
    """The ablation's markdown: the arm table, the paper's tables (``paper_tables``), the power
    table (``power_table``), the paired differences and the Teacher-sentence shares."""
    lines = [
        "| arm | accuracy % (mean [95% CI]) | KL(T‖S) nats/response | KL nats/teacher token | train examples | steps | seeds | paper AIME24 / AIME25 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, e in agg.items():
        lines.append(
            f"| {label} | {_ci(e['accuracy'], 100)} | {_ci(e['kl'], 1, 2)} | {_ci(e['kl_per_token'], 1, 4)} | "
            f"{e['examples']:.0f} | {e['steps']:.0f} | {e['seeds']} | {PAPER.get(label, '-')} |"
        )
    trained = {a: e["accuracy"][0] for a, e in agg.items() if a not in REFERENCES and e.get("accuracy")}
    if trained and (agg.get("teacher") or {}).get("accuracy"):
        best = max(trained, key=trained.get)
        top = agg["teacher"]["accuracy"][0]
        lines += ["", f"Ceiling: teacher {100 * top:.1f}%, best trained arm {best} {100 * trained[best]:.1f}% "
                  f"({100 * (top - trained[best]):.1f} points below; arms at the ceiling cannot show the paper's effects)."]
    for t in tables or ():
        lines += ["", f"{t['title']} (accuracy points, a - b within each seed; 95% t-interval over seeds):", "",
                  "| a - b | accuracy points | seeds | paper AIME24 / AIME25 (a - b) | paper direction | reproduces? |",
                  "|---|---|---|---|---|---|"]
        for r in t["rows"]:
            sign = "none" if r["direction"] is None else ("+" if r["direction"] > 0 else "-")
            lines.append(f"| {r['a']} - {r['b']} | {_ci(r['accuracy'], 100)} | {r['seeds']} | {r['paper']} | {sign} | "
                         f"{r['reproduces']} |")
    if power is not None:
        lines += ["", power_markdown(power).rstrip("\n")]
    lines += ["", "Paired differences (a - b within each seed; 95% t-interval over seeds):", "",
              "| contrast | a - b | accuracy points | KL nats/response | seeds |", "|---|---|---|---|---|"]
    for r in diffs:
        lines.append(f"| {r['contrast']} | {r['a']} - {r['b']} | {_ci(r['accuracy'], 100)} | {_ci(r['kl'], 1, 2)} | {r['seeds']} |")
    if shares:
        methods = [m for m in SHARE_METHODS if any(m in e for e in shares.values())]
        lines += ["", "Share of Teacher sentences (token-weighted, mean over responses) in the selected responses:", "",
                  "| pool | all candidates | " + " | ".join(f"{SHARE_LABELS[m]}-selected" for m in methods) + " | seeds |",
                  "|---|---|" + "---|" * len(methods) + "---|"]
        for pool, e in shares.items():
            cells = " | ".join(_ci(e.get(m), 100) for m in methods)
            lines.append(f"| {pool} | {_ci(e['all'], 100)} | {cells} | {e['seeds']} |")
    lines += ["", "Setup: " + ", ".join(f"{k} {v}" for k, v in plan_info.items())]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# One seed


SHARE_METHODS = ("random", "das", "global_naturalness", "local_naturalness")
SHARE_LABELS = {"random": "random", "das": "DAS", "global_naturalness": "global-naturalness",
                "local_naturalness": "local-naturalness"}


def seed_config(plan: AblationPlan, seed: int):
    """The run config of one seed: every random knob set from ``seed`` (the toy prompts too, unless
    ``plan.same_prompts``); the held-out set stays fixed.

    With ``plan.naturalness`` the pool's score stage also computes local naturalness (a pool scored
    before without it must be re-scored: remove ``OUT/seed-<s>/pool/score``)."""
    from dasd.config import load_config

    root = Path(plan.out) / f"seed-{seed}"
    over = [*plan.overrides, *protocol_overrides(plan), f"run_dir={root / 'pool'}", f"seed={seed}", f"sample.seed={seed}",
            *([] if plan.same_prompts else [f"data.toy.seed={seed}"]), f"select.seed={seed}", f"train.seed={seed}", f"mix.seed={seed}", f"mix.replay.seed={seed}",
            f"eval.protocol.seed={seed}"]
    if plan.naturalness:
        over.append("score.local_naturalness=always")
    return load_config(plan.config, over)


def protocol_overrides(plan: AblationPlan) -> list[str]:
    """The ``eval.protocol`` overrides of ``plan.paper_protocol`` / ``plan.samples`` (applied after
    ``plan.overrides``, so they win over the config and over ``--set``)."""
    if plan.samples is not None and plan.samples < 1:
        raise ValueError(f"samples per held-out problem must be >= 1, got {plan.samples}")
    if plan.paper_protocol:
        n = plan.samples if plan.samples is not None else PAPER_PROTOCOL_SAMPLES
        return ["eval.protocol.name=paper", "eval.protocol.temperature=1.0", "eval.protocol.top_p=1.0", f"eval.protocol.n={n}"]
    return [] if plan.samples is None else [f"eval.protocol.n={plan.samples}"]


def build_pool(cfg) -> dict[str, list[dict]]:
    """Sample, filter and score the candidate pool (real stages); return scored candidates by 'low'/'high'."""
    from dasd.stages.filter import run_filter
    from dasd.stages.sample import run_sample
    from dasd.stages.score import run_score
    from dasd.store import RunStore

    if len(cfg.sample.temperatures) != 2:
        raise ValueError(f"the ablation needs exactly two sampling temperatures, got {cfg.sample.temperatures}")
    store = RunStore(cfg.run_dir)
    run_sample(cfg, store)
    run_filter(cfg, store)
    run_score(cfg, store)
    return read_pools(store, cfg.sample.temperatures)


def read_pools(store, temperatures) -> dict[str, list[dict]]:
    """The scored candidates of a pool's run store by 'low'/'high' (the two ``temperatures``)."""
    from dasd.runs import pool_name

    lo, hi = sorted(temperatures)
    return {"low": list(store.read("score", f"pool-{pool_name(lo)}")),
            "high": list(store.read("score", f"pool-{pool_name(hi)}"))}


def eligible_prompts(pools: dict[str, list[dict]], per_prompt: int) -> list[str]:
    """Prompts with at least ``per_prompt`` candidates in both pools (so every arm has the same budget)."""
    counts = [{} for _ in pools]
    for c, cands in zip(counts, pools.values()):
        for s in cands:
            c[s["prompt_id"]] = c.get(s["prompt_id"], 0) + 1
    ids = set.intersection(*({p for p, n in c.items() if n >= per_prompt} for c in counts))
    return sorted(ids)


def select(cands: list[dict], prompts: list[str], method: str, m: int, seed: int) -> list[dict]:
    """``m`` candidates per prompt (of ``prompts``) by ``method`` (das, random, global_naturalness,
    local_naturalness: dasd.rules.das.select_grouped)."""
    from dasd.rules.das import select_grouped

    keep = set(prompts)
    chosen, _ = select_grouped([c for c in cands if c["prompt_id"] in keep], m, method, seed=seed)
    return chosen


def arm_data(pools: dict[str, list[dict]], prompts: list[str], per_prompt: int, seed: int,
             naturalness: bool = False) -> dict[str, list[list[dict]]]:
    """Per arm (stages 1-2 only): the selected candidates of each of its training stages, in order.
    ``naturalness`` adds the naturalness-baseline arms (``NATURALNESS_ARMS``)."""
    half = per_prompt // 2
    out = {}
    methods = [("random", "rs"), ("das", "das")]
    if naturalness:
        methods += [("global_naturalness", "gnat"), ("local_naturalness", "lnat")]
    for method, tag in methods:
        if tag in ("rs", "das"):
            out[f"{tag}_low"] = [select(pools["low"], prompts, method, per_prompt, seed)]
        out[f"{tag}_high"] = [select(pools["high"], prompts, method, per_prompt, seed)]
        out[f"{tag}_low_high"] = [select(pools["low"], prompts, method, half, seed),
                                  select(pools["high"], prompts, method, half, seed)]
    out["das_high_low"] = out["das_low_high"][::-1]  # ORDER_ARMS: trained only when asked for
    # Control for the two-stage schedule itself (two warmup + cosine cycles, a checkpoint hand-over):
    # the same RS T_high examples as rs_high, split by rank into two stages of half the steps each.
    first, second = _split_by_rank(out["rs_high"][0], half)
    out["rs_high_high"] = [first, second]
    return {arm: out[arm] for arm in ALL_ARMS if arm in out}


def _split_by_rank(selected: list[dict], half: int) -> tuple[list[dict], list[dict]]:
    """Per prompt, the first ``half`` selected (in rank order) and the rest."""
    seen: dict[str, int] = {}
    first, second = [], []
    for s in selected:
        i = seen[s["prompt_id"]] = seen.get(s["prompt_id"], 0) + 1
        (first if i <= half else second).append(s)
    return first, second


def teacher_shares(pools: dict[str, list[dict]], prompts: list[str], per_prompt: int, seed: int,
                   naturalness: bool = False) -> dict[str, dict]:
    """Mean share of Teacher sentences among all candidates and those each method selects, per pool."""
    def mean(xs):
        xs = [x["das"]["frac_teacher"] for x in xs if x.get("das", {}).get("frac_teacher") is not None]
        return statistics.fmean(xs) if xs else None

    keep = set(prompts)
    methods = SHARE_METHODS if naturalness else SHARE_METHODS[:2]
    return {pool: {"all": mean([c for c in cands if c["prompt_id"] in keep]),
                   **{m: mean(select(cands, prompts, m, per_prompt, seed)) for m in methods}}
            for pool, cands in pools.items()}


def replay_data(mixed: list[dict], off_policy: list[dict], ratio: float, seed: int) -> list[dict]:
    """The replay arms' examples (``mixed_replay``, ``mixed_masked_replay``): the mixed ones plus
    ``round(ratio x len(mixed))`` of ``off_policy`` (training examples), drawn as the pipeline's
    ``mixed+replay`` pool draws them."""
    from dasd.rules.mixing import ReplayConfig, replay_examples

    return replay_examples(mixed, off_policy, ReplayConfig(ratio=ratio, seed=seed))[0]


def examples_of(selected: list[dict], prompts_by_id: dict[str, dict], source: str) -> list[dict]:
    from dasd.stages.select import training_example

    return [training_example(prompts_by_id[s["prompt_id"]], s, source) for s in selected]


def steps_for(n_examples: int, epochs: float, batch: int) -> int:
    """Optimizer steps for ``epochs`` passes over ``n_examples`` unpacked examples, ``batch`` per step."""
    return max(1, round(epochs * n_examples / batch))


def train_arm(cfg, arm_dir: Path, stages: list[tuple[str, list[dict], int]], init: str = "base",
              mask_prefix: bool = False, schedule: dict | None = None) -> dict:
    """Train one arm with the real trainer: ``stages`` = [(name, examples, max_steps)], chained.

    ``schedule``: learning-rate fields of ``StageConfig`` (``lr``, ``min_lr``, ``warmup_ratio``,
    ``constant_at_min_lr``) for every stage of the arm, e.g. the config's mixed stage's (``mixed_schedule``).
    Unpacked sequences (``packing: false``) so that a step is the same number of examples in every
    arm, whatever the response lengths. Returns {final, steps, examples, final_loss}.
    """
    from dasd.runs import resolve_model
    from dasd.train.config import StageConfig
    from dasd.train.trainer import run_training

    data, specs = {}, []
    for i, (name, examples, steps) in enumerate(stages):
        data[name] = examples
        specs.append(StageConfig(name=name, data=name, init=(init if i == 0 else "previous"), max_steps=steps,
                                 mask_prefix=mask_prefix, **(schedule or {})))
    base = resolve_model(cfg.train.base_model)
    # epochs is irrelevant (every stage has max_steps); fixed so the trainer's resume fingerprint
    # does not depend on the config's value.
    tcfg = cfg.train.model_copy(update={"base_model": base, "stages": specs, "packing": False, "save_every": 0, "epochs": 1.0,
                                        "report_to": [], "mask_prefix": mask_prefix,
                                        "log_every": max(cfg.train.log_every, 50)})
    results = run_training(tcfg, arm_dir / "train", data)
    return {"final": results[-1]["final"], "steps": sum(r["steps"] for r in results),
            "examples": sum(r["examples"] for r in results), "final_loss": results[-1]["final_loss"],
            "over_context": sum(r["dropped"].get("over_context", 0) for r in results)}


def held_out(cfg) -> list[dict]:
    from dasd.grading.loaders import load_benchmark

    out = []
    for spec in cfg.eval.benchmarks:
        out += load_benchmark(spec)
    return out


def accuracy(engine, problems: list[dict], protocol) -> float:
    """avg@n of ``engine`` on ``problems`` under ``protocol`` (the real eval loop and graders)."""
    from dasd.grading.evaluate import run_eval

    results: list[dict] = []
    run_eval(engine, problems, protocol, done=set(), write=results.append, progress=False, workers=0)
    return statistics.fmean(float(r["correct"]) for r in results)


def kl_reference(cfg, problems: list[dict], n: int, seed: int, path: Path) -> list[dict]:
    """Reference teacher responses for the KL estimate: ``n`` per problem at T=1.0, with the
    teacher's own log p_T(text) from ``engine.score``. Cached in ``path``.

    Responses cut off at ``max_tokens`` are kept: on them the estimate is the KL between the two
    models' distributions of the first ``max_tokens`` teacher tokens, still an unbiased estimate of
    a (slightly smaller) divergence; dropping them would bias towards short responses."""
    from dasd.engines.base import GenerateRequest
    from dasd.rules.sampling import derived_seed
    from dasd.runs import open_engine
    from dasd.jsonl import iter_jsonl

    key = {"n": n, "seed": seed, "max_tokens": cfg.eval.protocol.max_tokens, "problems": [p["id"] for p in problems]}
    if path.is_file():
        recs = [r for _, r in iter_jsonl(path)]
        if recs and recs[0].get("key") == key:
            return recs[1:]
    teacher = open_engine(cfg.teacher)
    reqs = [GenerateRequest(id=p["id"], messages=p["messages"], n=n, temperature=1.0, top_p=1.0,
                            max_tokens=cfg.eval.protocol.max_tokens, seed=derived_seed("kl", seed, p["id"]))
            for p in problems]
    refs = []
    for p, gens in zip(problems, teacher.generate(reqs)):
        refs += [{"problem_id": p["id"], "messages": p["messages"], "text": g.text, "finish_reason": g.finish_reason}
                 for g in gens]
    for r, s in zip(refs, _score(teacher, refs)):
        r["teacher_logp"], r["teacher_tokens"] = s
    atomic_write_jsonl(path, [{"key": key}, *refs])
    return refs


def _score(engine, refs: list[dict]) -> list[tuple[float, int]]:
    from dasd.engines.base import ScoreRequest

    out = []
    for i in range(0, len(refs), 16):
        batch = refs[i : i + 16]
        res = engine.score([ScoreRequest(id=f"kl{i + j}", messages=r["messages"], continuation=r["text"])
                            for j, r in enumerate(batch)])
        out += [(math.fsum(x.logprobs), len(x.logprobs)) for x in res]
    return out


def kl_estimate(engine, refs: list[dict]) -> tuple[float, float]:
    """(nats per response, nats per teacher token) of KL(teacher || model) on the reference responses."""
    scores = _score(engine, refs)
    diff = math.fsum(r["teacher_logp"] - s for r, (s, _) in zip(refs, scores))
    return diff / len(refs), diff / sum(r["teacher_tokens"] for r in refs)


def measure(cfg, model_cfg, problems: list[dict], refs: list[dict], path: Path, extra: dict) -> dict:
    """Accuracy and KL of one model (cached in ``path`` with the protocol it was measured under)."""
    from dasd.runs import open_engine

    key = {"protocol": cfg.eval.protocol.model_dump(), "problems": [p["id"] for p in problems],
           "refs": len(refs), "model": model_cfg.model}
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old.get("key") == key:
            return old["metrics"]
    engine = open_engine(model_cfg)
    t0 = time.monotonic()
    acc = accuracy(engine, problems, cfg.eval.protocol)
    kl, klt = kl_estimate(engine, refs)
    metrics = {"accuracy": acc, "kl": kl, "kl_per_token": klt, **extra, "measure_s": round(time.monotonic() - t0, 1)}
    atomic_write_json(path, {"key": key, "metrics": metrics})
    return metrics


def run_seed(plan: AblationPlan, seed: int) -> tuple[dict[str, dict], dict]:
    """Every arm of one seed; returns ({label: metrics}, teacher-sentence shares)."""
    from dasd.grading.grade import is_correct
    from dasd.runs import open_engine
    from dasd.stages.mix import run_mix
    from dasd.runs import load_run_prompts
    from dasd.store import RunStore

    log = plan.log
    cfg = seed_config(plan, seed)
    root = Path(plan.out) / f"seed-{seed}"
    if plan.per_prompt < 2 or plan.per_prompt % 2:
        raise ValueError(f"per_prompt must be an even number >= 2, got {plan.per_prompt}")
    if cfg.sample.k <= plan.per_prompt:
        raise ValueError(f"sample.k ({cfg.sample.k}) must exceed the budget per prompt ({plan.per_prompt}): "
                         "otherwise every selection keeps every candidate and DAS equals RS")
    pools = build_pool(cfg)
    store = RunStore(cfg.run_dir)
    prompts_by_id = load_run_prompts(store)
    prompts = eligible_prompts(pools, plan.per_prompt)
    if not prompts:
        raise RuntimeError(f"seed {seed}: no prompt has {plan.per_prompt} usable candidates in both pools")
    log(f"[ablation] seed {seed}: {len(prompts)} of {len(prompts_by_id)} prompts have >= {plan.per_prompt} candidates per pool")
    batch = cfg.train.micro_batch * cfg.train.grad_accum
    epochs = plan.epochs if plan.epochs is not None else cfg.train.epochs
    total = steps_for(plan.per_prompt * len(prompts), epochs, batch)
    total += total % 2  # split evenly between the two stages of the low->high arms
    problems = held_out(cfg)
    refs = kl_reference(cfg, problems, plan.kl_samples, seed, root / "kl-reference.jsonl")
    results: dict[str, dict] = {}
    if plan.references:
        for label, mcfg in (("student", cfg.student), ("teacher", cfg.teacher)):
            results[label] = measure(cfg, mcfg, problems, refs, root / "references" / f"{label}.json", {"examples": 0, "steps": 0})
            log(f"[ablation] seed {seed} {label}: {_fmt(results[label])}")
    finals = {}
    selections = arm_data(pools, prompts, plan.per_prompt, seed, naturalness=plan.naturalness)
    for arm, stages in selections.items():
        if not plan.wants(arm):
            continue
        arm_dir = root / "arms" / arm
        steps = [total] if len(stages) == 1 else [total // 2, total // 2]
        names = ["single"] if len(stages) == 1 else ["stage1", "stage2"]
        spec = [(n, examples_of(sel, prompts_by_id, arm), st) for n, sel, st in zip(names, stages, steps)]
        tr = train_arm(cfg, arm_dir, spec)
        finals[arm] = tr["final"]
        results[arm] = measure(cfg, cfg.student.model_copy(update={"model": tr["final"]}), problems, refs,
                               arm_dir / "metrics.json", {k: tr[k] for k in ("examples", "steps", "over_context", "final_loss")})
        log(f"[ablation] seed {seed} {arm}: {_fmt(results[arm])}")
    if plan.mixed and "das_low_high" not in finals:
        log(f"[ablation] seed {seed}: no mixed-policy arms (they start from das_low_high, which --arms leaves out)")
    elif plan.mixed and any(plan.wants(a) for a in ("mixed_unmasked", "mixed_masked", *REPLAY_ARMS)):
        mix_store = RunStore(root / "mix")
        curated = [{"prompt": prompts_by_id[s["prompt_id"]], "teacher_text": s["text"]}
                   for sel in selections["das_low_high"] for s in sel]
        student = open_engine(cfg.student.model_copy(update={"model": finals["das_low_high"]}))
        funnel = run_mix(cfg.mix, mix_store, curated, student, open_engine(cfg.teacher), grade=is_correct)
        mixed = list(mix_store.read("mix", "examples"))
        log(f"[ablation] seed {seed}: {len(mixed)} mixed-policy examples (funnel {json.dumps(funnel)[:300]})")
        if mixed:
            steps = steps_for(len(mixed), mixed_epochs(cfg), batch)
            for arm, masked in (("mixed_unmasked", False), ("mixed_masked", True)):
                if not plan.wants(arm):
                    continue
                arm_dir = root / "arms" / arm
                tr = train_arm(cfg, arm_dir, [("stage3_mixed", mixed, steps)], init=finals["das_low_high"],
                               mask_prefix=masked, schedule=mixed_schedule(cfg))
                results[arm] = measure(cfg, cfg.student.model_copy(update={"model": tr["final"]}), problems, refs,
                                       arm_dir / "metrics.json", {k: tr[k] for k in ("examples", "steps", "over_context", "final_loss")})
                log(f"[ablation] seed {seed} {arm}: {_fmt(results[arm])}")
            if plan.replay is not None:
                off = examples_of(selections["das_low_high"][1], prompts_by_id, "das_low_high")
                data = replay_data(mixed, off, plan.replay, seed)
                # The same examples twice: the student prefix of the mixed ones in the loss or masked.
                # The replayed examples have no student prefix (prefix_chars 0): masking leaves them whole.
                for arm, masked in (("mixed_replay", False), ("mixed_masked_replay", True)):
                    if not plan.wants(arm):
                        continue
                    arm_dir = root / "arms" / arm
                    tr = train_arm(cfg, arm_dir, [("stage3_mixed", data, steps_for(len(data), mixed_epochs(cfg), batch))],
                                   init=finals["das_low_high"], mask_prefix=masked, schedule=mixed_schedule(cfg))
                    results[arm] = measure(cfg, cfg.student.model_copy(update={"model": tr["final"]}), problems, refs,
                                           arm_dir / "metrics.json",
                                           {k: tr[k] for k in ("examples", "steps", "over_context", "final_loss")})
                    log(f"[ablation] seed {seed} {arm}: {len(mixed)} mixed + {len(data) - len(mixed)} replayed; "
                        f"{_fmt(results[arm])}")
    return results, teacher_shares(pools, prompts, plan.per_prompt, seed, naturalness=plan.naturalness)


def mixed_schedule(cfg) -> dict:
    """The learning-rate overrides of the config's stage reading ``mixed`` or ``mixed+replay``
    (recipe default: constant at ``min_lr``, no warmup), so the mixed arms train as the pipeline's
    stage 3 does."""
    from dasd.runs import MIXED_POOLS

    for st in cfg.train.stages:
        if st.data in MIXED_POOLS:
            return st.model_dump(include={"lr", "min_lr", "warmup_ratio", "constant_at_min_lr"}, exclude_none=True)
    return {}


def mixed_epochs(cfg) -> float:
    """Epochs of the mixed-policy stage: the config's stage reading ``mixed`` or ``mixed+replay``
    (recipe default 1.0)."""
    from dasd.runs import MIXED_POOLS

    for st in cfg.train.stages:
        if st.data in MIXED_POOLS:
            return st.epochs if st.epochs is not None else cfg.train.epochs
    return 1.0


def _fmt(m: dict) -> str:
    return (f"accuracy {100 * m['accuracy']:.1f}%, KL {m['kl']:.2f} nats/response ({m['kl_per_token']:.4f}/token), "
            f"{m.get('examples', 0)} examples, {m.get('steps', 0)} steps")


ROOT = Path(__file__).resolve().parents[1]


def training_prompts(cfg) -> int | str:
    """The training prompts a config asks for: ``data.toy.n_train`` toy problems, or the first
    ``data.limit`` (or all) of a prompts file."""
    if cfg.data.prompts == "toy":
        return cfg.data.toy.n_train
    return f"{cfg.data.limit or 'all'} of {relative_path(cfg.data.prompts)}"


def relative_path(path: str | Path) -> str:
    """``path`` relative to the repository (the results record no machine's absolute paths); a path
    outside it is kept (then it names something this repository does not hold)."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _model_id(path: str) -> str:
    """A model directory (relative to the repository) and a short hash of its weights (which build
    of the toy world was measured)."""
    import hashlib

    w = Path(path) / "model.safetensors"
    digest = hashlib.sha256(w.read_bytes()).hexdigest()[:10] if w.is_file() else "?"
    return f"{relative_path(path)} (weights sha256 {digest})"


def run_info(plan: AblationPlan) -> dict:
    """What the results' ``info`` says of the run: models, protocol, budget, training settings."""
    cfg = seed_config(plan, plan.seeds[0])
    p = cfg.eval.protocol
    from dasd.runs import resolve_model

    protocol = (f"the paper's (T=1.0, top_p 1.0, {p.n} samples per held-out problem, avg@{p.n})" if plan.paper_protocol
                else f"the config's {p.name!r}")
    info = {
        "protocol": protocol,
        "teacher": _model_id(resolve_model(cfg.teacher.model)), "student": _model_id(resolve_model(cfg.student.model)),
        "seeds": plan.seeds, "budget per prompt": plan.per_prompt, "k": cfg.sample.k,
        "temperatures": cfg.sample.temperatures,
        "training prompts": f"{training_prompts(cfg)} (the same in every seed)" if plan.same_prompts else training_prompts(cfg),
        "held-out problems": len(held_out(cfg)), "eval protocol": f"T={p.temperature} top_p={p.top_p} n={p.n} max_tokens={p.max_tokens}",
        "KL reference": f"{plan.kl_samples} teacher samples per held-out prompt at T=1.0", "CI": "Student t over seeds",
        "training": f"lr {cfg.train.lr}, batch {cfg.train.micro_batch * cfg.train.grad_accum}, "
                    f"epochs {plan.epochs if plan.epochs is not None else cfg.train.epochs}, unpacked",
    }
    if plan.naturalness:
        info["naturalness arms"] = f"global and local (window {cfg.score.local_window} sentences)"
    if plan.replay is not None and plan.mixed:
        info["replay"] = (f"{plan.replay:g} off-policy (das_low_high's T_high examples) per mixed example, "
                          "prefix unmasked (mixed_replay) and masked (mixed_masked_replay)")
    return info


def run_ablation(plan: AblationPlan) -> dict:
    """Run every seed (resumably); return {per_seed, aggregate, paired, tables, power, shares, info, markdown}."""
    info = run_info(plan)
    earlier = load_earlier(info, plan.earlier)  # refused before the hours of work, not after
    per_seed, shares_seed = {}, {}
    for seed in plan.seeds:
        per_seed[seed], shares_seed[seed] = run_seed(plan, seed)
    shares = {}
    for pool in ("low", "high"):
        keys = [k for k in ("all", *SHARE_METHODS) if any(k in s[pool] for s in shares_seed.values())]
        vals = {k: [s[pool][k] for s in shares_seed.values() if s[pool].get(k) is not None] for k in keys}
        shares[pool] = {k: (t_interval(v) if v else None) for k, v in vals.items()}
        shares[pool]["seeds"] = len(shares_seed)
    if earlier:
        per_seed = pool_earlier(per_seed, earlier)
        info["seeds"] = sorted(per_seed)
        info["earlier results"] = (f"{', '.join(relative_path(e) for e in plan.earlier)} (per-seed accuracy and KL; "
                                   f"the Teacher-sentence shares are this run's seeds {plan.seeds} only)")
    agg, diffs = aggregate(per_seed), paired(per_seed)
    tables = paper_tables(per_seed)
    power = power_table(per_seed, plan.power_effect, plan.power_halfwidth)
    return {"per_seed": per_seed, "aggregate": agg, "paired": diffs, "tables": tables, "power": power, "shares": shares,
            "info": info, "markdown": markdown(agg, diffs, shares, info, tables, power)}


# What must be equal for two runs' per-seed results to be pooled (keys of the results' info).
POOLED_INFO = ("protocol", "eval protocol", "held-out problems", "budget per prompt", "k", "temperatures",
               "KL reference", "training")


def load_results(path: str | Path) -> dict:
    """An ablation results JSON (what ``--results`` writes beside its markdown); an ``InputError``
    naming the file when it is not one."""
    import json

    from dasd.errors import InputError

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data["per_seed"], dict):
            raise TypeError("per_seed is not an object")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: not an ablation results JSON with a 'per_seed' field ({type(e).__name__}: {e})") from None
    return data


def _weights(model_id: str) -> str:
    """The weights hash of a ``_model_id`` ("sha256 ..."), or the whole text when it has none."""
    return model_id.partition("weights ")[2].rstrip(")") or model_id


def load_earlier(info: dict, paths: list[str]) -> list[dict]:
    """The results JSON files ``paths`` of earlier runs, checked against this run's ``info``: they
    must have measured the same way (``POOLED_INFO``) with the same teacher and student weights; an
    ``InputError`` names the file and what differs. Training prompts are not compared (a prompt file
    then, the same toy prompts now, can be the same records): say so when pooling."""
    from dasd.errors import InputError

    out = []
    for path in paths:
        data = load_results(path)
        theirs = data.get("info") or {}
        for key in POOLED_INFO:
            if key in theirs and str(theirs[key]) != str(info.get(key)):
                raise InputError(f"{path}: its {key!r} is {theirs[key]!r}, this run's {info.get(key)!r}: "
                                 "results measured differently cannot be pooled")
        for key in ("teacher", "student"):
            if key in theirs and _weights(str(theirs[key])) != _weights(str(info.get(key))):
                raise InputError(f"{path}: its {key} is {theirs[key]!r}, this run's {info.get(key)!r}: "
                                 "results of other models cannot be pooled")
        out.append(data)
    return out


def pool_earlier(per_seed: dict, earlier: list[dict]) -> dict:
    """``per_seed`` with the per-seed results of ``earlier`` runs (``load_earlier``) added: every seed
    and arm this run did not measure (this run's win where both did), ordered by seed."""
    out = {seed: dict(arms) for seed, arms in per_seed.items()}
    for data in earlier:
        for seed, arms in data["per_seed"].items():
            mine = out.setdefault(int(seed), {})
            for arm, m in arms.items():
                mine.setdefault(arm, m)
    return dict(sorted(out.items()))
