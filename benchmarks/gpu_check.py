"""The GPU paths in one short run: prints a table of checks (CI has no GPU; run this where one is lent).

Checks, each against a reference computed in the same run:

1. ``score fp32``: hf-engine log-probs of toy-teacher samples on DEVICE vs on CPU (max abs diff).
2. ``generate == score``: log-probs returned by ``generate`` on DEVICE vs ``score`` of the same ids.
3. ``score bf16``: the same scoring in bfloat16 vs float32 (max and mean |diff|; bf16 is lossy).
4. ``train bf16+ckpt``: one real training stage (``run_training``) of the toy student with bf16 and
   gradient checkpointing vs the same stage in fp32 without checkpointing: first-step loss difference,
   last losses, tokens/s ratio.
5. ``long score memory``: peak extra memory of scoring one ``--tokens`` continuation with Qwen's
   151,936-entry vocabulary (random tiny Llama), as a ratio to the full float32 logits.
6. ``vllm == hf``: when vllm is installed, vllm's sampled raw log-probs vs hf's scores of the same ids.

Run::

    HF_HUB_OFFLINE=1 python benchmarks/gpu_check.py                 # on a CUDA machine
    HF_HUB_OFFLINE=1 python benchmarks/gpu_check.py --device cpu --tokens 2048 --steps 4   # dry run

Each row ends ``passed``, ``FAILED`` or ``skipped (why)``: a skipped check (vllm not installed, no
CUDA, ``--skip``) is never counted as passed. Exit status 0 when every check that ran met its target
and at least one ran, 1 otherwise, 2 when the device is missing.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

import torch

from dasd.engines import EngineConfig, GenerateRequest, ScoreRequest, make_engine
from dasd.toy import world
from dasd.toy.build import SHIPPED_DIR
from dasd.toy.model import save_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from score_memory import QWEN_VOCAB, PeakRSS, long_case  # noqa: E402
ROWS: list[tuple[str, str, str, str]] = []  # (check, measured, target, result)
PASSED, FAILED = "passed", "FAILED"


def row(check: str, value: str, target: str, ok: bool) -> None:
    """A check that ran: passed when ``ok``, else FAILED."""
    ROWS.append((check, value, target, PASSED if ok else FAILED))
    print(f"[gpu_check] {check}: {value} (target {target}) {'ok' if ok else 'FAILED'}", flush=True)


def skipped(check: str, why: str, target: str = "-") -> None:
    """A check that did not run: its row says so (and why), and it never counts as passed."""
    ROWS.append((check, "not run", target, f"skipped ({why})"))
    print(f"[gpu_check] {check}: skipped ({why})", flush=True)


def summary(rows: list[tuple[str, str, str, str]]) -> tuple[str, int]:
    """The markdown table of ``rows`` with a count line, and the exit status: 0 when nothing failed
    and something passed, else 1."""
    n_pass = sum(r[3] == PASSED for r in rows)
    n_fail = sum(r[3] == FAILED for r in rows)
    n_skip = len(rows) - n_pass - n_fail
    width = max((len(r[0]) for r in rows), default=5)
    lines = ["| check | measured | target | result |", "|---|---|---|---|"]
    lines += [f"| {check:<{width}} | {value} | {target} | {result} |" for check, value, target, result in rows]
    lines.append(f"\n{n_pass} passed, {n_fail} failed, {n_skip} skipped")
    return "\n".join(lines), 0 if n_fail == 0 and n_pass > 0 else 1


def max_diff(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b), (len(a), len(b))
    return max((abs(x - y) for x, y in zip(a, b)), default=0.0)


def toy_samples(engine, n: int = 6):
    msgs = [world.problem_to_prompt(p)["messages"] for p in world.make_problems(n, 0, "test")]
    reqs = [GenerateRequest(id=f"p{i}", messages=m, n=1, temperature=1.0, max_tokens=160, seed=i) for i, m in enumerate(msgs)]
    return msgs, [gs[0] for gs in engine.generate(reqs)]


def check_scoring(device: str) -> None:
    teacher = str(SHIPPED_DIR / "teacher")
    dev = make_engine(EngineConfig(model=teacher, device=device, dtype="float32"))
    msgs, gens = toy_samples(dev)
    reqs = [ScoreRequest(id=f"s{i}", messages=m, continuation=g.text, continuation_ids=g.token_ids) for i, (m, g) in enumerate(zip(msgs, gens))]
    on_dev = dev.score(reqs)
    d = max(max_diff(g.logprobs, s.logprobs) for g, s in zip(gens, on_dev))
    row("generate == score", f"max abs diff {d:.2e} over {sum(len(g.token_ids) for g in gens)} tokens", "<= 1e-4", d <= 1e-4)
    cpu = make_engine(EngineConfig(model=teacher, device="cpu", dtype="float32")).score(reqs)
    d = max(max_diff(a.logprobs, b.logprobs) for a, b in zip(on_dev, cpu))
    row("score fp32 vs cpu", f"max abs diff {d:.2e}", "<= 1e-3", d <= 1e-3)
    bf = make_engine(EngineConfig(model=teacher, device=device, dtype="bfloat16")).score(reqs)
    diffs = [abs(x - y) for a, b in zip(bf, on_dev) for x, y in zip(a.logprobs, b.logprobs)]
    mean = sum(diffs) / len(diffs)
    row("score bf16 vs fp32", f"max abs diff {max(diffs):.3f}, mean {mean:.4f}", "mean <= 0.05", mean <= 0.05)


def check_training(device: str, steps: int, out: Path) -> None:
    from dasd.train.config import StageConfig, TrainConfig
    from dasd.train.trainer import run_training

    rng = random.Random(0)
    examples = [
        {"messages": [*world.problem_to_prompt(p)["messages"], {"role": "assistant", "content": world.teacher_response(p, rng)[1]}],
         "prefix_chars": 0}
        for p in world.make_problems(64 * steps, 1, "train")
    ]
    results = {}
    for name, bf16, ckpt in (("fp32", False, False), ("bf16_ckpt", True, True)):
        cfg = TrainConfig(base_model=str(SHIPPED_DIR / "student"), stages=[StageConfig(name=name, data="toy", init="base", max_steps=steps)],
                          context=1024, micro_batch=4, lr=1e-4, min_lr=1e-5, warmup_ratio=0.0, bf16=bf16,
                          gradient_checkpointing=ckpt, attn_implementation="sdpa", report_to=[], save_every=0)
        (res,) = run_training(cfg, out / name, {"toy": examples})
        rows = [json.loads(line) for line in Path(res["curve"]).read_text().splitlines() if line.strip()]
        tps = sum(r["tokens"] for r in rows) / max(rows[-1]["elapsed_s"], 1e-9)
        results[name] = ([r["loss"] for r in rows], tps)
    (c32, tps32), (c16, tps16) = results["fp32"], results["bf16_ckpt"]
    d0 = abs(c32[0] - c16[0])
    finite = all(x == x and abs(x) < 1e6 for x in c16)
    row("train bf16+ckpt step 1", f"loss {c16[0]:.4f} vs fp32 {c32[0]:.4f} (abs diff {d0:.4f})", "abs diff <= 0.05, finite",
        d0 <= 0.05 and finite)
    row("train bf16+ckpt speed", f"{tps16 / max(tps32, 1e-9):.2f}x fp32 tokens/s; last loss {c16[-1]:.4f} vs {c32[-1]:.4f}", "report", True)


def check_long_memory(device: str, tokens: int) -> None:
    tok, model, ids, text = long_case(tokens)
    full = tokens * QWEN_VOCAB * 4
    with tempfile.TemporaryDirectory() as d:
        save_model(model, tok, d)
        engine = make_engine(EngineConfig(model=d, device=device, logprob_chunk=512, score_batch_tokens=tokens + 64))
        req = ScoreRequest(id="long", prefix="the answer is", continuation=text, continuation_ids=ids)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            (res,) = engine.score([req])
            torch.cuda.synchronize()
            extra = torch.cuda.max_memory_allocated() - base
        else:
            with PeakRSS() as mem:
                (res,) = engine.score([req])
            extra = mem.increase
    ok = len(res.logprobs) == tokens and extra < 2**30
    row("long score memory", f"{tokens} tokens: +{extra / 2**20:.0f} MiB = {extra / full:.3f}x full logits "
        f"({full / 2**30:.2f} GiB)", "< 1 GiB", ok)


def check_vllm(device: str) -> None:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        skipped("vllm == hf", "vllm not installed", "<= 2e-3")
        return
    if not device.startswith("cuda"):
        skipped("vllm == hf", f"needs CUDA, device is {device}", "<= 2e-3")
        return
    teacher = str(SHIPPED_DIR / "teacher")
    hf = make_engine(EngineConfig(model=teacher, device=device, dtype="float32"))
    vl = make_engine(EngineConfig(kind="vllm", model=teacher, dtype="float32",
                                  vllm={"gpu_memory_utilization": 0.3, "enforce_eager": True}))
    msgs, gens = toy_samples(vl, 4)
    refs = hf.score([ScoreRequest(id=f"v{i}", messages=m, continuation=g.text, continuation_ids=g.token_ids)
                     for i, (m, g) in enumerate(zip(msgs, gens))])
    d = max(max_diff(g.logprobs, r.logprobs) for g, r in zip(gens, refs))
    row("vllm == hf", f"max abs diff {d:.2e}", "<= 2e-3", d <= 2e-3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a dry run")
    ap.add_argument("--tokens", type=int, default=16384, help="length of the long-sequence scoring check")
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps of each training run")
    ap.add_argument("--skip", default="", help="comma-separated checks to skip: scoring,training,memory,vllm")
    a = ap.parse_args()
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (use --device cpu for a dry run)", file=sys.stderr)
        return 2
    skip = set(filter(None, a.skip.split(",")))
    print(f"[gpu_check] device {a.device}"
          + (f" ({torch.cuda.get_device_name(a.device)})" if a.device.startswith("cuda") else "")
          + f", torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory() as out:
        for name, fn in (("scoring", lambda: check_scoring(a.device)), ("training", lambda: check_training(a.device, a.steps, Path(out))),
                         ("memory", lambda: check_long_memory(a.device, a.tokens)), ("vllm", lambda: check_vllm(a.device))):
            if name in skip:
                skipped(name, "--skip")
                continue
            try:
                fn()
            except Exception as e:  # one failing path must not hide the others
                row(name, f"error: {type(e).__name__}: {str(e)[:200]}", "runs", False)
    text, status = summary(ROWS)
    print("\n" + text)
    return status


if __name__ == "__main__":
    sys.exit(main())
