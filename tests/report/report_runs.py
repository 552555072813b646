"""Build a complete, realistic run directory for report tests, without models.

Records go through ``RunStore`` writers and the manifest through ``begin_stage``/``end_stage``,
shaped exactly as the stages write them; the numbers come from the real functions where they exist
(``das.score_sample`` for sentence tables, ``das.select_grouped``, ``text.filters.Funnel``,
``grading.metrics.summarize``, ``stages.mix.funnel_of``, the trainer's curve keys).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from dasd.rules.analysis import AnalysisConfig, position_profile
from dasd.rules.das import DASConfig, score_sample, select_grouped
from dasd.grading.metrics import summarize
from dasd.jsonl import dumps
from dasd.records import content_id, sample_id
from dasd.runs import model_version
from dasd.rules.mixing import funnel_of
from dasd.stages.select import _stats, candidate, training_example
from dasd.store import RunStore
from dasd.text.filters import Drop, Funnel

PLANT = '<script>document.title="PWNED"</script><img src=x onerror=alert(1)>'
TEACHER, STUDENT = "toy:teacher", "toy:student"
TEMPS = (0.6, 1.0)
TRAIN_STAGES = ("stage1_low", "stage2_high", "stage3_mixed")
CURVE_KEYS = ("step", "epoch", "loss", "lr", "tokens", "loss_tokens", "tokens_per_s", "grad_norm", "padding", "elapsed_s", "eta_s")


def _pool(t: float) -> str:
    return f"T{t:g}"


def _text(rng: random.Random, i: int, plant: bool) -> str:
    steps = " ".join(f"Step {j}: {rng.randint(1, 9)} + {rng.randint(1, 9)} = {rng.randint(2, 18)}." for j in range(rng.randint(3, 7)))
    extra = f" Note {PLANT}." if plant else ""
    return f"<think>\nLet me add the numbers. {steps}{extra}\n</think>\nThe answer is \\boxed{{{i}}}."


def _tokens(text: str, width: int) -> list[list[int]]:
    return [[a, min(a + width, len(text))] for a in range(0, len(text), width)]


def _sample(rng: random.Random, prompt_id: str, t: float, index: int, plant: bool = False) -> dict:
    text = _text(rng, index, plant)
    offs = _tokens(text, 4)
    spread = 0.5 if t < 1 else 1.4
    lps = [-(rng.random() * spread) ** 2 for _ in offs]
    if plant:
        lps = [-0.01 for _ in offs]
    return {
        "id": sample_id(prompt_id, TEACHER, t, 1.0, 0, index), "prompt_id": prompt_id, "model": TEACHER,
        "temperature": t, "top_p": 1.0, "seed": 0, "index": index, "text": text,
        "finish_reason": "length" if rng.random() < 0.1 else "stop",
        "teacher": {"tokens": [text[a:b] for a, b in offs], "token_ids": list(range(len(offs))), "offsets": offs,
                    "logprobs": lps, "logprob_mode": "raw"},
    }


def build_run(root: Path, upto: str = "analyze", n_prompts: int = 12, k: int = 4, seed: int = 0,
              benchmarks: tuple[str, ...] = ("toy",)) -> Path:
    """A run that went through every stage up to ``upto`` (pipeline order); returns its directory.

    Each benchmark gets 10 problems x 4 samples per model; a benchmark named ``*-long`` gets its own
    protocol (max_tokens 640), like the paper preset's per-domain token caps.
    """
    order = ["sample", "filter", "score", "select", "train", "mix", "eval", "analyze"]
    last = order.index(upto)
    rng = random.Random(seed)
    store = RunStore(root)
    store.manifest["config"] = {"run_dir": str(root), "teacher": {"model": TEACHER}, "student": {"model": STUDENT},
                                "sample": {"temperatures": list(TEMPS), "k": k},
                                "train": {"stages": [{"name": s} for s in TRAIN_STAGES]},
                                "eval": {"models": ["student", *TRAIN_STAGES, "teacher"]}}
    store.save_manifest()

    prompts = [{"id": f"p{i}", "domain": "toy", "messages": [{"role": "user", "content": f"Add numbers #{i}"}],
                "answer": str(i), "meta": {}} for i in range(n_prompts)]
    store.begin_stage("sample", {"sample": {"temperatures": list(TEMPS), "k": k, "top_p": 1.0, "max_tokens": 320, "seed": 0},
                                 "teacher": {"model": TEACHER}})
    with store.writer("sample", "prompts") as w:
        for p in prompts:
            w.add(p)
    pools: dict[str, list[dict]] = {}
    counts = {}
    for t in TEMPS:
        recs = [_sample(rng, p["id"], t, j, plant=(t == TEMPS[0] and i == 0 and j == 0))
                for i, p in enumerate(prompts) for j in range(k)]
        pools[_pool(t)] = recs
        with store.writer("sample", f"pool-{_pool(t)}") as w:
            for r in recs:
                w.add(r)
        toks = sum(len(r["teacher"]["logprobs"]) for r in recs)
        counts[_pool(t)] = {"samples": len(recs), "prompts": n_prompts, "cut_off": sum(r["finish_reason"] == "length" for r in recs),
                            "tokens": toks, "mean_token_logprob": sum(sum(r["teacher"]["logprobs"]) for r in recs) / toks, "new": len(recs)}
    store.end_stage("sample", counts)
    if last < 1:
        return root

    store.begin_stage("filter", {"drop_cutoff": True})
    funnel = Funnel()
    kept: dict[str, list[dict]] = {}
    with store.writer("filter", "rejects") as rej:
        for pool, recs in pools.items():
            kept[pool] = []
            for r in recs:
                drop = None
                if r["finish_reason"] == "length":
                    drop = Drop("cutoff", "finish_reason is 'length'")
                elif rng.random() < 0.08:
                    drop = Drop("repetition", f"a sentence repeats 5 times: {PLANT}")
                funnel.add(pool, drop)
                if drop is None:
                    kept[pool].append(r)
                else:
                    rej.add({"id": r["id"], "pool": pool, "rule": drop.rule, "reason": str(drop),
                             "where": f"{root / 'sample'} pool-{pool} sample {r['id']}", "sample": r})
            with store.writer("filter", f"kept-{pool}") as w:
                for r in kept[pool]:
                    w.add(r)
    store.end_stage("filter", funnel.to_dict())
    if last < 2:
        return root

    das_cfg = DASConfig()
    store.begin_stage("score", {"das": das_cfg.model_dump()})
    scored: dict[str, list[dict]] = {}
    counts = {}
    for pool, recs in kept.items():
        scored[pool] = []
        for r in recs:
            offs = _tokens(r["text"], 3)
            slp = [-(rng.random() * 1.2) ** 2 for _ in offs]
            if PLANT in r["text"]:
                slp = [-3.0 for _ in offs]
            scored[pool].append(score_sample(r, offs, slp, das_cfg))
        with store.writer("score", f"pool-{pool}") as w:
            for s in scored[pool]:
                w.add(s)
        counts[pool] = {"scored": len(scored[pool]), "rejected": 0}
    store.end_stage("score", counts)
    if last < 3:
        return root

    store.begin_stage("select", {"select": {"method": "das", "m": 1, "seed": 0}, "das": das_cfg.model_dump()})
    summary = {}
    by_id = {p["id"]: p for p in prompts}
    for pool, cands in scored.items():
        sel, rej = select_grouped(cands, 1, "das")
        correct = {s["id"]: rng.random() < 0.6 for s in cands}
        for name, items in (("selected", sel), ("rejected", rej)):
            with store.writer("select", f"{name}-{pool}") as w:
                for s in items:
                    w.add(s)
        with store.writer("select", f"train-{pool}") as w:
            for s in sel:
                w.add(training_example(by_id[s["prompt_id"]], s, f"das:{pool}"))
        summary[pool] = {"selected": _stats([candidate(s) for s in sel], correct),
                         "rejected": _stats([candidate(s) for s in rej], correct)}
    store.end_stage("select", summary)
    if last < 4:
        return root

    store.begin_stage("train", {"stages": [{"name": s, "data": d} for s, d in zip(TRAIN_STAGES, ("low", "high", "mixed"))]})
    tcounts = {}
    for si, name in enumerate(TRAIN_STAGES):
        d = root / "train" / name
        (d / "final").mkdir(parents=True)  # (no weights: the report reads none)
        steps = 20
        loss = 3.0 - si
        lines = []
        for step in range(1, steps + 1):
            loss *= 0.93
            rec = {"step": step, "epoch": round(step / 10, 4), "loss": loss + 0.05 * rng.random(),
                   "lr": 1e-3 * min(1.0, step / 3) * (1 - step / (steps + 1)), "tokens": 900, "loss_tokens": 600,
                   "tokens_per_s": 1500 + 100 * rng.random(), "grad_norm": 1.0, "padding": 0.1, "elapsed_s": 0.6 * step,
                   "eta_s": 0.6 * (steps - step)}
            assert tuple(rec) == CURVE_KEYS
            lines.append(dumps(rec))
        (d / "curve.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        done = {"name": name, "final": str(d / "final"), "steps": steps, "final_loss": loss, "curve": str(d / "curve.jsonl"),
                "examples": 24, "sequences": 12, "tokens": 18000, "dropped": {"over_context": 0},
                "init": "toy:student" if si == 0 else str(root / "train" / TRAIN_STAGES[si - 1] / "final"),
                "fingerprint": "f" * 16, "padding_share": 0.1}
        (d / "done.json").write_text(json.dumps(done), encoding="utf-8")
        tcounts[name] = {k: done[k] for k in ("steps", "final_loss", "final", "examples", "tokens")}
    store.end_stage("train", tcounts)
    if last < 5:
        return root

    from dasd.rules.mixing import MixConfig

    store.begin_stage("mix", {"mix": MixConfig().model_dump()})  # as `dasd mix` records it, with a default config
    verdicts = ["finished", "kept", "kept", "no_answer", "kept", "incorrect", "no_cut_point", "kept"]
    rollouts = []
    with store.writer("mix", "examples") as wx, store.writer("mix", "rollouts") as wr:
        for i, p in enumerate(prompts):
            v = verdicts[i % len(verdicts)]
            rec = {"id": content_id("mix", p["id"]), "prompt_id": p["id"], "verdict": v, "example_id": None}
            if v == "kept":
                prefix = "<think>\nStudent steps. " * (1 + i % 3)
                cont = "Teacher continues.\n</think>\nThe answer is 3."
                ex = {"id": content_id("example", p["id"]), "messages": [*p["messages"], {"role": "assistant", "content": prefix + cont}],
                      "prefix_chars": len(prefix), "source": "mixed_policy"}
                wx.add(ex)
                rec["example_id"] = ex["id"]
            wr.add(rec)
            rollouts.append(rec)
    store.end_stage("mix", {**funnel_of(rollouts), "new": len(rollouts)})
    if last < 6:
        return root

    protocol = {"name": "demo", "temperature": 0.6, "top_p": 1.0, "max_tokens": 320, "n": 4, "seed": 0,
                "system_prompt": None, "chat_template": "model default"}
    labels = ["student", *TRAIN_STAGES, "teacher"]
    store.begin_stage("eval", {"models": labels, "protocol": protocol, "preset": "none"})
    ecounts = {}
    for li, label in enumerate(labels):
        skill = 0.15 + 0.17 * li
        results = []
        with store.writer("eval", f"results-{label}") as w:
            for bench in benchmarks:
                proto = {**protocol, "model": f"/models/{label}"}
                if bench.endswith("-long"):
                    proto["max_tokens"] = 640
                for pi in range(10):
                    for j in range(4):
                        ok = rng.random() < skill
                        r = {"problem_id": f"{bench}-{pi}", "sample_index": j, "correct": ok, "detail": {},
                             "extracted": str(pi) if ok else ("7" if rng.random() < 0.8 else None),
                             "protocol": proto, "domain": "toy", "benchmark": bench,
                             "text": f"<think>hm</think> {PLANT}", "model_label": label}
                        r["finish_reason"] = "length" if r["extracted"] is None else "stop"
                        r["id"] = content_id("eval", label, bench, r["problem_id"], j, r["protocol"])
                        w.add(r)
                        results.append(r)
        ecounts[label] = summarize(results, n_boot=200)
    # as `dasd eval` keeps them: each label's key and each training stage's model version
    store.end_stage("eval", ecounts, keys={label: f"key-{label}" for label in labels},
                    versions={s: model_version(str(root / "train" / s / "final")) for s in TRAIN_STAGES})
    if last < 7:
        return root

    store.begin_stage("analyze", {"analyze": {"tau": 0.693}, "model": "stage3_mixed"})
    responses = []
    for i in range(40):
        correct = i % 3 != 0
        sents = []
        for j in range(10):
            u = rng.random()
            if correct:
                kind = "teacher" if u < 0.3 + 0.02 * j else "boosted" if u < 0.4 else "student" if u < 0.45 else "shared"
            else:
                kind = "teacher" if u < 0.15 else "boosted" if u < 0.3 + 0.02 * j else "student" if u < 0.4 else "shared"
            sents.append({"start": 10 * j, "end": 10 * j + 10, "type": "unscored" if u > 0.97 else kind})
        responses.append({"id": f"r{i}", "correct": correct, "text": "x" * 100, "sentences": sents})
    profile = position_profile(responses, AnalysisConfig())
    profile["model"] = "stage3_mixed"
    profile["eval_key"] = "key-stage3_mixed"
    store.end_stage("analyze", profile)
    return root
