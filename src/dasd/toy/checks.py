"""Checks that the toy world has the mechanisms DASD relies on, measured through the real code paths.

``world_checks(toy_dir)`` samples the teacher on a small pool of held-out ``dev`` prompts with the hf
engine (k samples per prompt at each temperature, raw log-probs), keeps the finished, correct ones
(as ``filter.require_correct`` does), scores them with the student as ``dasd score`` does (the hf
engine on the tokens training gives each response, ``dasd.train.encode.score_as_trained``) and
``dasd.rules.das.score_sample``, selects m per prompt and temperature with
``dasd.rules.das.select_grouped`` (DAS and random at the same budget), and then fine-tunes a copy of the
student base on the DAS-selected samples for a few epochs and measures it on held-out ``test``
problems beside the base and the teacher. It answers three questions, each with a pass flag:

- ``teacher_share``: is the Teacher-sentence share (mean ``frac_teacher``) of DAS-selected
  responses at least ``min_share_gap`` above that of randomly selected ones?
- ``student_sentences``: do Student sentences exist for the penalty to act on? Two conditions: at
  the highest temperature, where the teacher's tail surfaces, the share of kept responses with
  ``frac_student > 0`` is at least ``min_student_share``; and the student's habit, the rubber stamp
  ``Check: ok.`` (``world.STAMP``), is typed a Student sentence in at least ``min_stamp_student``
  of its occurrences in teacher samples (the penalty recognises the habit when it shows up).
  Why they are rare by construction: a sentence of L teacher tokens whose only surprise is one
  branch is a Student sentence only if the teacher took that branch with probability below
  p_S * exp(-L * tau), about 1/20 of the student's for a 4-token stamp at tau = ln 2.
- ``distillation``: does the fine-tuned student gain at least ``min_gain`` at T=0.6 over the base
  and stay below the teacher at every measured temperature?

``dasd.toy.build`` runs it after building the models and stores the result in the manifest.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from pathlib import Path

import torch

from dasd.rules.das import DASConfig, score_sample, select_grouped
from dasd.engines.base import GenerateRequest, ScoreRequest
from dasd.engines.config import EngineConfig
from dasd.engines.hf import HFEngine
from dasd.errors import ContextLengthError
from dasd.log import logger
from dasd.toy import world
from dasd.toy.encode import encode_examples, pad_batch
from dasd.toy.measure import evaluate_accuracy, style_shares
from dasd.train.encode import score_as_trained


def _seed(*parts) -> int:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _mean(xs) -> float | None:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def sample_pool(
    teacher: HFEngine, problems: list[world.ToyProblem], k: int, temperatures, max_tokens: int, seed: int
) -> list[dict]:
    """``k`` teacher samples per problem and temperature, as sample-like dicts with the teacher's
    raw log-probs and offsets, ``prompt_id``, ``temperature``, ``finish_reason`` and ``correct``."""
    recs = [world.problem_to_prompt(p) for p in problems]
    pool = []
    for temp in temperatures:
        reqs = [
            GenerateRequest(id=r["id"], messages=r["messages"], n=k, temperature=temp, top_p=1.0,
                            max_tokens=max_tokens, seed=_seed(seed, r["id"], temp))
            for r in recs
        ]
        for rec, gens in zip(recs, teacher.generate(reqs)):
            for g in gens:
                pool.append({
                    "id": f"{rec['id']}/T{temp}/{g.index}",
                    "prompt_id": rec["id"],
                    "temperature": temp,
                    "text": g.text,
                    "teacher": {"offsets": [list(o) for o in g.offsets], "logprobs": list(g.logprobs)},
                    "finish_reason": g.finish_reason,
                    "correct": world.verify(g.text, rec["answer"]),
                    "messages": rec["messages"],
                })
    return pool


def score_pool(student: HFEngine, samples: list[dict], cfg: DASConfig) -> list[dict]:
    """Each sample scored by the student as ``dasd score`` scores it (teacher-forced on the tokens
    training gives the response, ``score_as_trained``) and typed by DAS; a sample longer than the
    student's context stops the checks with the engine's words."""
    results, _ = score_as_trained(student, [ScoreRequest(id=s["id"], messages=s["messages"], continuation=s["text"])
                                            for s in samples])
    refused = next((r for r in results if isinstance(r, ContextLengthError)), None)
    if refused is not None:
        raise refused
    return [score_sample(s, r.offsets, r.logprobs, cfg) for s, r in zip(samples, results)]


def finetune(model, tokenizer, pairs, epochs: int, lr: float, batch_size: int, seed: int):
    """Fine-tune ``model`` in place on ``(problem, response)`` pairs (loss on the response only):
    AdamW, linear warmup over 10% of the steps, cosine to 10% of ``lr``, clip 1.0, seeded order."""
    if not pairs:
        return 0
    examples = encode_examples(tokenizer, pairs)
    gen = torch.Generator().manual_seed(seed)
    order = [i for _ in range(epochs) for i in torch.randperm(len(examples), generator=gen).tolist()]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    warm = max(1, len(batches) // 10)
    pad = tokenizer.pad_token_id
    model.train()
    for step, b in enumerate(batches):
        t = max(0.0, (step - warm) / max(1, len(batches) - warm))
        scale = (step + 1) / warm if step < warm else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))
        for g in opt.param_groups:
            g["lr"] = lr * scale
        ids, labels, mask = pad_batch([examples[i] for i in b], pad)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    return len(batches)


def world_checks(
    toy_dir: str | os.PathLike,
    *,
    n_prompts: int = 150,
    k: int = 4,
    m: int = 1,
    temperatures: tuple[float, ...] = (0.6, 1.0),
    max_tokens: int = 400,
    require_correct: bool = True,
    n_test: int = 200,
    epochs: int = 8,
    lr: float = 2e-3,
    batch_size: int = 8,
    seed: int = 0,
    min_share_gap: float = 0.10,
    min_student_share: float = 0.01,
    min_stamp_student: float = 0.5,
    min_gain: float = 0.05,
    das: DASConfig | None = None,
    log=None,
) -> dict:
    """Measure the three mechanisms (module docstring) on ``toy_dir/{teacher,student}``; return a
    JSON-able dict with the numbers, a ``pass`` flag per check and ``all_pass``.

    Knobs: the pool (``n_prompts`` dev problems x ``k`` samples x ``temperatures``, ``max_tokens``),
    ``m`` kept per prompt and temperature, ``require_correct`` (keep only finished, correct teacher
    samples before selection, as the demo's filter does; False keeps every sample), the fine-tune (``epochs``, ``lr``, ``batch_size``, on the
    DAS-selected samples of every temperature together), ``n_test`` held-out test problems measured
    with one sample each (``measure.evaluate_accuracy``), the thresholds and ``das`` (default config).
    Deterministic in its arguments and the models (one torch thread gives the same numbers again).
    Pitfall: the fine-tune must be long enough for the student to learn the real checks: on the
    shipped world, 4 epochs at lr 5e-4 or 2e-3 left them half-learned and the student fell
    (48.5% -> 16.5%, 45% -> 36%); 8 epochs at 2e-3 (the default) gained.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log = log or logger("toy").info
    t0 = time.time()
    d = Path(toy_dir)
    cfg = das or DASConfig()
    teacher = HFEngine(EngineConfig(model=str(d / "teacher"), device="cpu", batch_size=64))
    student = HFEngine(EngineConfig(model=str(d / "student"), device="cpu", batch_size=64))
    problems = world.make_problems(n_prompts, seed, "dev")
    by_id = {world.problem_to_prompt(p)["id"]: p for p in problems}
    log(f"[checks] sampling the teacher: {n_prompts} dev prompts x {k} at T={list(temperatures)}")
    pool = sample_pool(teacher, problems, k, temperatures, max_tokens, seed)
    kept = [s for s in pool if not require_correct or (s["finish_reason"] == "stop" and s["correct"])]
    log(f"[checks] scoring {len(kept)} of {len(pool)} samples with the student")
    scored = score_pool(student, kept, cfg)
    das_sel, _ = select_grouped(scored, m, "das")
    rnd_sel, _ = select_grouped(scored, m, "random", seed=seed)

    per_t = {}
    for temp in temperatures:
        at = [s for s in scored if s["temperature"] == temp]
        d_sel = [s for s in das_sel if s["temperature"] == temp]
        r_sel = [s for s in rnd_sel if s["temperature"] == temp]
        per_t[f"T={temp}"] = {
            "samples": sum(s["temperature"] == temp for s in pool),
            "kept": len(at),
            "teacher_accuracy_in_pool": _mean(s["correct"] for s in pool if s["temperature"] == temp),
            "frac_teacher_das": _mean(s["das"]["frac_teacher"] for s in d_sel),
            "frac_teacher_random": _mean(s["das"]["frac_teacher"] for s in r_sel),
            "frac_teacher_pool": _mean(s["das"]["frac_teacher"] for s in at),
            "share_with_student_sentences": _mean(s["das"]["frac_student"] > 0 for s in at),
            "share_with_caught_slip": _mean(", not " in s["text"] for s in at),
            "mean_chars": _mean(len(s["text"]) for s in at),
            "frac_student_pool": _mean(s["das"]["frac_student"] for s in at),
            "style_das": _style_shares(d_sel),
            "style_random": _style_shares(r_sel),
        }
    share_das = _mean(s["das"]["frac_teacher"] for s in das_sel)
    share_rnd = _mean(s["das"]["frac_teacher"] for s in rnd_sel)
    gap = None if share_das is None or share_rnd is None else share_das - share_rnd
    t_high = max(temperatures)
    student_share = _mean(s["das"]["frac_student"] > 0 for s in scored if s["temperature"] == t_high)
    stamps = stamp_sentences(scored)
    stamp_student = _mean(row["type"] == "student" for row in stamps)

    log(f"[checks] fine-tuning the student on {len(das_sel)} DAS-selected samples, {epochs} epochs at lr {lr:g}")
    tok = AutoTokenizer.from_pretrained(str(d / "student"))
    tuned = AutoModelForCausalLM.from_pretrained(str(d / "student"), dtype=torch.float32)
    torch.manual_seed(seed)
    steps = finetune(tuned, tok, [(by_id[s["prompt_id"]], s["text"]) for s in das_sel], epochs, lr, batch_size, seed)
    test = world.make_problems(n_test, seed, "test")
    acc: dict[str, dict[str, float]] = {}
    for temp in (0.6, 1.0):
        key = f"T={temp}"
        acc[key] = {
            "teacher": evaluate_accuracy(d / "teacher", test, temp, max_tokens, seed=seed),
            "student_base": evaluate_accuracy(d / "student", test, temp, 2 * max_tokens, seed=seed),
            "student_tuned": evaluate_accuracy(tuned, test, temp, 2 * max_tokens, seed=seed, tokenizer=tok),
        }
    gain = acc["T=0.6"]["student_tuned"] - acc["T=0.6"]["student_base"]
    below = all(a["student_tuned"] < a["teacher"] for a in acc.values())
    checks = {
        "teacher_share": {
            "das": share_das, "random": share_rnd, "gap": gap, "min_gap": min_share_gap,
            "pass": gap is not None and gap >= min_share_gap,
        },
        "student_sentences": {
            "temperature": t_high, "share_of_responses": student_share, "min_share": min_student_share,
            "stamps": len(stamps), "stamps_typed_student": stamp_student, "min_stamps_typed_student": min_stamp_student,
            "stamp_median_delta": _median(row["delta"] for row in stamps),
            "pass": student_share is not None and student_share >= min_student_share
            and stamp_student is not None and stamp_student >= min_stamp_student,
        },
        "distillation": {
            "accuracy": acc, "gain_at_0.6": gain, "min_gain": min_gain, "tuned_below_teacher": below,
            "fine_tune": {"examples": len(das_sel), "epochs": epochs, "lr": lr, "batch_size": batch_size, "steps": steps},
            "pass": gain >= min_gain and below,
        },
    }
    result = {
        "pool": {"split": "dev", "n_prompts": n_prompts, "k": k, "m": m, "max_tokens": max_tokens,
                 "require_correct": require_correct, "tau": cfg.tau, "penalty": cfg.penalty},
        "test": {"split": "test", "n": n_test, "samples_per_problem": 1},
        "by_temperature": per_t,
        "checks": checks,
        "all_pass": all(c["pass"] for c in checks.values()),
        "seconds": round(time.time() - t0, 1),
    }
    for line in format_checks(result):
        log(line)
    return result


def stamp_sentences(scored: list[dict]) -> list[dict]:
    """The sentence rows of ``scored`` samples whose text is the rubber stamp (``world.STAMP``)."""
    return [row for s in scored for row in s["sentences"] if s["text"][row["start"] : row["end"]].strip() == world.STAMP]


def _median(xs) -> float | None:
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def _style_shares(samples: list[dict]) -> dict[str, float]:
    return style_shares([s["text"] for s in samples])


def _pct(x: float | None) -> str:
    return "  n/a" if x is None else f"{100 * x:5.1f}"


def format_checks(result: dict) -> list[str]:
    """The checks as printable lines (what the toy build prints)."""
    c = result["checks"]
    ts, ss, di = c["teacher_share"], c["student_sentences"], c["distillation"]
    ok = {True: "PASS", False: "FAIL"}
    lines = [
        f"[checks] {ok[ts['pass']]} Teacher-sentence share of selected responses: DAS {_pct(ts['das'])}% vs "
        f"random {_pct(ts['random'])}% (gap {_pct(ts['gap'])} points, need >= {100 * ts['min_gap']:.0f})",
        f"[checks] {ok[ss['pass']]} responses with Student sentences at T={ss['temperature']}: "
        f"{_pct(ss['share_of_responses'])}% (need >= {100 * ss['min_share']:.0f}%); rubber stamps typed Student: "
        f"{_pct(ss['stamps_typed_student'])}% of {ss['stamps']} (need >= {100 * ss['min_stamps_typed_student']:.0f}%)",
    ]
    for key, v in result["by_temperature"].items():
        lines.append(
            f"[checks]      {key}: kept {v['kept']}/{v['samples']}, Teacher share DAS {_pct(v['frac_teacher_das'])}% "
            f"random {_pct(v['frac_teacher_random'])}%, with Student sentences {_pct(v['share_with_student_sentences'])}%"
        )
    lines.append(
        f"[checks] {ok[di['pass']]} distillation on {di['fine_tune']['examples']} DAS-selected samples "
        f"({di['fine_tune']['epochs']} epochs): gain {_pct(di['gain_at_0.6'])} points at T=0.6 "
        f"(need >= {100 * di['min_gain']:.0f}), below the teacher: {di['tuned_below_teacher']}"
    )
    for key, a in di["accuracy"].items():
        lines.append(
            f"[checks]      {key}: student base {_pct(a['student_base'])}% -> tuned {_pct(a['student_tuned'])}%, "
            f"teacher {_pct(a['teacher'])}% ({result['test']['n']} test problems)"
        )
    return lines
