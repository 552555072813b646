"""A second toy world where the teacher's own sentences are what the student needs: two-digit sums.

    HF_HUB_OFFLINE=1 python benchmarks/column_world.py build --out DIR [--column-share 0.4] [--prompts 600] \
        [--test 200] [--seed 0]
    HF_HUB_OFFLINE=1 python benchmarks/ablation.py --config DIR/column.yaml --arms rs_low das_low rs_high das_high \
        --no-mixed --paper-protocol --samples 4 --kl-samples 1 --set train.micro_batch=8 --out ABL --seeds 0 1
    HF_HUB_OFFLINE=1 python benchmarks/column_world.py styles --world DIR --ablation ABL --seeds 0 1

Why: in the shipped toy world the teacher's Teacher sentences (its self-checks) are learnable in
form only, and DAS, which selects them, does not help the student there (README, "The toy-world
ablation"). ``column_world_probe.py`` found a style that does help a student that never saw it:
a two-digit sum written column by column (``8 + 7 = 15, 3 + 4 + 1 = 8, so 38 + 47 = 85.``), with
digits as tokens of their own. This script builds the world around it:

- **teacher** (``TEACHER_SPEC``'s recipe: hidden 64, 4 layers, 4000 steps x 8; its own BPE of 512
  entries with digits split): answers in the column style with probability ``--column-share`` and in
  one shot (``38 + 47 = 85.``) otherwise, with 2% slips; chains of 2 to 8 steps.
- **student base** (``STUDENT_SPEC``'s recipe: hidden 64, 3 layers, 2400 steps x 8; another BPE of
  384 entries, digits split): one-shot answers only, 20% slips. It never saw a column line, so
  those are the sentences it finds unlikely and the teacher likely: DAS's Teacher sentences.
- ``DIR/train.jsonl`` (``--prompts`` training prompts, chains 2-5) and ``DIR/test.jsonl`` (``--test``
  held-out problems; a stable hash puts one spelling in ten in the test split), prompt records with
  their answers, and ``DIR/column.yaml``: the demo's pipeline settings pointed at these models and
  files (k=6 candidates per prompt and temperature, responses up to 400 tokens).

The two models train side by side, one process and one thread each (about 10 minutes on a 2-core
machine), written to a temporary directory and renamed into place; a model already built is kept.
Then both are measured once (T=0.6 and 1.0, one sample per held-out problem: accuracy and the share
of column answers) into ``DIR/manifest.json``. Results: ``benchmarks/results/column-world.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from column_world_probe import SumProblem, make_sum_problems, response, style_of  # noqa: E402

TEACHER_ERROR_RATE = 0.02
STUDENT_ERROR_RATE = 0.2
MAX_CHAIN = 8


def corpus(name: str, seed: int, n: int, column_share: float) -> list[tuple[SumProblem, str]]:
    """The training pairs of one model: ``n`` train problems (chains 2..MAX_CHAIN) answered by the
    generating process (the teacher: column with probability ``column_share``, 2% slips; the
    student: one shot only, 20% slips)."""
    rng = random.Random(f"column-world/corpus/{name}/{seed}")
    problems = make_sum_problems(n, seed, "train", 2, MAX_CHAIN)
    if name == "student":
        return [(p, response(p, "oneshot", rng, STUDENT_ERROR_RATE)) for p in problems]
    return [(p, response(p, "column" if rng.random() < column_share else "oneshot", rng, TEACHER_ERROR_RATE))
            for p in problems]


def build_one(name: str, out: str, seed: int, column_share: float) -> str:
    """Build ``name`` (teacher or student) into ``out/name`` unless it is there; one torch thread."""
    import torch

    from dasd.log import setup
    from dasd.toy import build
    from dasd.toy.model import save_model
    from dasd.toy.tokenizer import build_tokenizer

    setup()
    torch.set_num_threads(1)
    dst = Path(out) / name
    if (dst / "config.json").is_file():
        return str(dst)
    spec = replace(build.SPECS[name], max_chain=MAX_CHAIN)
    pairs = corpus(name, seed, spec.n_problems, column_share)
    byte_tok = build_tokenizer([""], build.BYTE_VOCAB)
    tok = build_tokenizer(build.tokenizer_corpus(pairs[:4000], byte_tok), build.VOCABS[name], split_digits=True)
    model = build.train_model(spec, tok, pairs, seed)
    tmp = Path(out) / f".{name}.building"
    save_model(model, tok, str(tmp))
    os.replace(tmp, dst)  # a crash leaves no half-written model where the pipeline looks
    return str(dst)


def prompt_record(p: SumProblem) -> dict:
    from dasd.records import content_id
    from dasd.toy.world import SYSTEM_PROMPT  # the system turn the models were trained under (dasd.toy.encode)

    return {"id": content_id("column-world", p.start, list(p.addends)), "domain": "math",
            "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": p.question}],
            "answer": str(p.answer), "meta": {"chain_length": len(p.addends)}}


def problem_of(question: str) -> SumProblem:
    """The problem a question (``SumProblem.question``) spells."""
    start = re.match(r"Start at (\d+)\. ", question)
    if start is None:
        raise ValueError(f"not a column-world question: {question[:80]!r}")
    return SumProblem(int(start[1]), tuple(int(a) for a in re.findall(r"Step \d+: add (\d+)\.", question)))


def config_text(out: Path, prompts: int, test: int) -> str:
    """The run config of the world: the demo's settings with this world's models and files."""
    return f"""# The column world (benchmarks/column_world.py): two-digit sums, a teacher that writes some of its
# answers column by column, a student base that never saw a column line.
run_dir: {out / 'run'}
seed: 0
teacher: {{model: {out / 'teacher'}, batch_size: 64}}
student: {{model: {out / 'student'}, batch_size: 64}}
data: {{prompts: {out / 'train.jsonl'}, limit: {prompts}}}
sample: {{temperatures: [0.6, 1.0], k: 6, max_tokens: 400, batch_prompts: 16}}
filter: {{max_student_tokens: 900, require_correct: true}}
das: {{tau: 0.693}}
select: {{method: das, m: 1}}
train: {{context: 1024, micro_batch: 1, grad_accum: 1, epochs: 8, lr: 2.0e-3, min_lr: 2.0e-4, warmup_ratio: 0.1,
        save_every: 25}}
eval:
  benchmarks: [{{name: column, format: prompts, path: {out / 'test.jsonl'}, limit: {test}}}]
  protocol: {{name: demo, temperature: 1.0, top_p: 1.0, n: 4, max_tokens: 400}}
"""


def measure(model_dir: Path, problems: list[SumProblem], seed: int, temperatures=(0.6, 1.0), by_style: bool = False) -> dict:
    """Accuracy and share of column answers at each temperature, one sample per problem;
    ``by_style``: also the accuracy of the column and of the one-shot answers (None when there are none)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dasd.toy.measure import evaluate_accuracy
    from dasd.toy.world import verify

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    out = {}
    for temp in temperatures:
        acc, texts = evaluate_accuracy(model, problems, temp, 400, seed=seed, tokenizer=tok, return_texts=True)
        styles = [style_of(t) for t in texts]
        out[f"T={temp}"] = m = {"accuracy": round(acc, 4), "column_share": round(styles.count("column") / len(texts), 4)}
        if by_style:
            for style in ("column", "oneshot"):
                solved = [verify(t, p.answer) for t, p, s in zip(texts, problems, styles) if s == style]
                m[f"{style}_accuracy"] = round(sum(solved) / len(solved), 4) if solved else None
    return out


def write_data(out: Path, seed: int, prompts: int, test: int) -> list[SumProblem]:
    """``out/train.jsonl``, ``out/test.jsonl`` and ``out/column.yaml`` (atomically); returns the
    held-out problems."""
    from dasd.jsonl import atomic_open, atomic_write_jsonl

    out = out.resolve()
    train = make_sum_problems(prompts, seed + 1, "train")
    held_out = make_sum_problems(test, seed, "test")
    atomic_write_jsonl(out / "train.jsonl", (prompt_record(p) for p in train))
    atomic_write_jsonl(out / "test.jsonl", (prompt_record(p) for p in held_out))
    with atomic_open(out / "column.yaml") as fh:
        fh.write(config_text(out, prompts, test))
    return held_out


def build_world(out: Path, seed: int = 0, column_share: float = 0.4, prompts: int = 600, test: int = 200,
                log=print) -> dict:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from dasd.jsonl import atomic_write_json
    from dasd.signals import held

    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        with held():
            futures = [pool.submit(build_one, n, str(out), seed, column_share) for n in ("teacher", "student")]
        for f in futures:
            f.result()
    held_out = write_data(out, seed, prompts, test)
    manifest = {"seed": seed, "column_share": column_share, "prompts": prompts, "test": test,
                "models": {n: measure(out / n, held_out, seed) for n in ("teacher", "student")}}
    atomic_write_json(out / "manifest.json", manifest)
    for n, m in manifest["models"].items():
        log(f"[column world] {n}: " + ", ".join(f"{t} accuracy {v['accuracy']:.3f} column {v['column_share']:.2f}"
                                               for t, v in m.items()))
    return manifest


def arm_styles(world: Path, ablation: Path, seeds: list[int], problems: int = 200, temperature: float = 1.0,
               arms: list[str] | None = None, log=print) -> dict:
    """Per ablation arm and seed: its final model sampled once per held-out problem (the first
    ``problems`` of ``world/test.jsonl``) at ``temperature``: the share of column answers and the
    accuracy of each style. Arms are found under ``ablation/seed-<s>/arms/<arm>/train/*/final``
    (``arms``: only these)."""
    import torch

    torch.set_num_threads(1)
    test = [json.loads(line) for line in (world / "test.jsonl").read_text(encoding="utf-8").splitlines()][:problems]
    held = [problem_of(r["messages"][-1]["content"]) for r in test]
    out: dict = {}
    for seed in seeds:
        for arm_dir in sorted((ablation / f"seed-{seed}" / "arms").glob("*")):
            finals = sorted(arm_dir.glob("train/*/final/config.json"))
            if not finals or (arms is not None and arm_dir.name not in arms):
                continue
            m = measure(finals[-1].parent, held, seed, temperatures=(temperature,), by_style=True)[f"T={temperature}"]
            out.setdefault(arm_dir.name, {})[seed] = m
            log(f"[column world] seed {seed} {arm_dir.name}: accuracy {m['accuracy']:.3f}, column {m['column_share']:.2f} "
                f"(solved {m['column_accuracy']}), one-shot solved {m['oneshot_accuracy']}")
    return out


def column_shares(pools: dict[str, list[dict]], per_prompt: int, seed: int) -> dict[str, dict[str, float]]:
    """Per pool, the share of column answers among the candidates of the prompts the ablation trains
    on (those with ``per_prompt`` candidates in every pool) and among those random sampling and DAS
    select there (``per_prompt`` each; the ablation's ``select``)."""
    from ablation_lib import eligible_prompts, select

    prompts = eligible_prompts(pools, per_prompt)
    keep = set(prompts)

    def share(cands: list[dict]) -> float:
        return round(sum(style_of(c["text"]) == "column" for c in cands) / max(1, len(cands)), 4)

    return {pool: {"all": share([c for c in cands if c["prompt_id"] in keep]),
                   **{m: share(select(cands, prompts, m, per_prompt, seed)) for m in ("random", "das")}}
            for pool, cands in pools.items()}


def selection_styles(ablation: Path, seeds: list[int], per_prompt: int = 2, log=print) -> dict:
    """``column_shares`` of each seed's scored pool (``ablation/seed-<s>/pool``, read only; the
    temperatures of ``column.yaml``)."""
    from dasd.runs import pool_name
    from dasd.store import RunStore

    out = {}
    for seed in seeds:
        store = RunStore.open(ablation / f"seed-{seed}" / "pool")
        pools = {tag: list(store.read("score", f"pool-{pool_name(t)}")) for tag, t in (("low", 0.6), ("high", 1.0))}
        out[seed] = column_shares(pools, per_prompt, seed)
        log(f"[column world] seed {seed} column share of candidates / random picks / DAS picks: " + "; ".join(
            f"{pool} {v['all']:.2f} / {v['random']:.2f} / {v['das']:.2f}" for pool, v in out[seed].items()))
    return out


def merge_styles(old: dict | None, selections: dict, arms: dict) -> dict:
    """``column-styles.json``'s content: ``old`` (an earlier run's, or None) updated with this run's
    per-seed ``selections`` and per-arm, per-seed ``arms``; what was not measured again is kept.
    Seeds are keys as JSON writes them (strings)."""
    out = json.loads(json.dumps(old)) if old else {"selections": {}, "arms": {}}
    out["selections"].update({str(k): v for k, v in selections.items()})
    for arm, by_seed in arms.items():
        out["arms"].setdefault(arm, {}).update({str(k): v for k, v in by_seed.items()})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the world's models, prompt files and run config into --out")
    b.add_argument("--out", required=True, help="where the world is built (models already there are kept)")
    b.add_argument("--column-share", type=float, default=0.4, help="share of the teacher's answers written in columns")
    b.add_argument("--prompts", type=int, default=600, help="training prompts written to DIR/train.jsonl")
    b.add_argument("--test", type=int, default=200, help="held-out problems written to DIR/test.jsonl")
    b.add_argument("--seed", type=int, default=0)
    st = sub.add_parser("styles", help="the column share and per-style accuracy of each ablation arm's final model")
    st.add_argument("--world", required=True, help="the built world (its test.jsonl)")
    st.add_argument("--ablation", required=True,
                    help="the ablation's --out (seed-<s>/pool, seed-<s>/arms/<arm>); column-styles.json is written there")
    st.add_argument("--seeds", type=int, nargs="+", default=[0])
    st.add_argument("--problems", type=int, default=200)
    st.add_argument("--temperature", type=float, default=1.0)
    st.add_argument("--per-prompt", type=int, default=2, help="the ablation's --per-prompt (selection budget)")
    st.add_argument("--arms", nargs="+", default=None, help="measure only these arms (others already in the JSON are kept)")
    a = ap.parse_args(argv)
    if a.cmd == "build":
        if not 0 < a.column_share < 1:
            ap.error(f"--column-share must be strictly between 0 and 1, got {a.column_share}")
        build_world(Path(a.out), a.seed, a.column_share, a.prompts, a.test)
    else:
        from dasd.jsonl import atomic_write_json

        path = Path(a.ablation) / "column-styles.json"
        old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        selections = selection_styles(Path(a.ablation), a.seeds, a.per_prompt)
        arms = arm_styles(Path(a.world), Path(a.ablation), a.seeds, a.problems, a.temperature, a.arms)
        atomic_write_json(path, merge_styles(old, selections, arms))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
