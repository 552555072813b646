"""Build the toy world's two models deterministically: a small teacher and a smaller student base.

Both are real ``LlamaForCausalLM``s trained from scratch with plain torch (AdamW, loss on assistant
tokens only) on responses drawn from the known generating process in ``dasd.toy.world``, and saved in
ordinary transformers format (config.json, model.safetensors, tokenizer with chat template).

- teacher: BPE tokenizer (at most ``TEACHER_VOCAB`` entries, trained on templated teacher text),
  hidden 64, 4 layers, trained on ``TEACHER_STYLE_MIX`` with a small slip rate, chains of 2..7 steps.
- student base: its own smaller BPE tokenizer (at most ``STUDENT_VOCAB`` entries, trained on
  templated student text: a different vocabulary), hidden 64, 3 layers, fewer steps and problems,
  ``STUDENT_STYLE_MIX`` and a ten times higher slip rate (``STUDENT_ERROR_RATE``).

That is the chain world (``world_name="chain"``, the demo's). ``world_name="column"`` builds the
column world's pair (``dasd.toy.column``) with the same recipes: corpora of two-digit sums from
``column.corpus`` (chains up to ``column.MAX_CHAIN``), tokenizers that give each digit a token of its own.

Run::

    python -m dasd.toy.build OUT_DIR [--seed 0] [--threads 1] [--sequential] [--no-eval] [--no-checks]
        [--world chain|column]

or ``build_toy_world(out_dir)``; ``default_toy_dir()`` finds the shipped models (or builds them once
into the cache). The same seed and thread count give the same weights on the same machine.
The two models train side by side in two processes, one thread each: 8-11 minutes on a loaded 2-core
machine, then one or two for the mechanism checks (about 2 MB of weights in all). Log lines go through
``dasd.log`` (``[toy] ...`` on stderr).
"""

from __future__ import annotations

import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from dasd.jsonl import atomic_write_json
from dasd.log import logger, setup
from dasd.toy import WORLDS, check_world, column, world
from dasd.toy.encode import encode_examples, pad_batch, render_prompts
from dasd.toy.measure import evaluate_accuracy, style_shares
from dasd.toy.model import make_model, save_model
from dasd.toy.tokenizer import build_tokenizer


def _log(msg: str) -> None:
    """The build's log lines: ``[toy] ...`` through ``dasd.log`` (stderr once ``setup`` ran)."""
    logger("toy").info(msg)


TEACHER_VOCAB = 512
STUDENT_VOCAB = 384
"""The student's BPE size. A pure byte-level student (259 entries) stayed at chance even with 3
layers and 2000 steps: it never learned to find the k-th operation across the long byte sequences."""
BYTE_VOCAB = 259  # pure byte level: no merges; used only to render chat templates for tokenizer training


@dataclass
class TrainSpec:
    """How one toy model is built. Every knob here changes the weights; the seed is passed separately.

    ``steps`` optimizer steps of ``batch_size`` examples drawn (length-bucketed, seeded order) from
    ``n_problems`` train problems with ``min_chain..max_chain`` steps, each answered once by the
    generating process with ``style_mix``, ``error_rate``, ``redo_rate`` and ``stamp_rate``
    (``world.solution_text``); AdamW at ``lr`` (linear warmup over
    ``warmup`` steps, cosine to 10%), ``weight_decay`` on matrices only, clip 1.0; weights initialised
    with std ``init_std``. ``eval_problems``: test problems measured for the manifest.
    """

    name: str
    hidden: int
    layers: int
    heads: int
    steps: int
    batch_size: int
    lr: float
    style_mix: dict[str, float]
    error_rate: float
    redo_rate: float
    stamp_rate: float
    min_chain: int = world.MIN_STEPS
    max_chain: int = world.MAX_STEPS
    warmup: int = 100
    init_std: float = 0.1
    weight_decay: float = 0.01
    n_problems: int = 40_000
    eval_problems: int = 200


TEACHER_SPEC = TrainSpec(
    name="teacher",
    hidden=64,
    layers=4,
    heads=2,
    steps=4000,  # batch 8 learns from fewer examples than batch 16: 2400 x 8 gave 81%, 4000 x 8 96%
    batch_size=8,
    lr=3e-3,
    style_mix=world.TEACHER_STYLE_MIX,
    error_rate=world.TEACHER_ERROR_RATE,
    redo_rate=world.TEACHER_REDO_RATE,
    stamp_rate=world.TEACHER_STAMP_RATE,
)

STUDENT_SPEC = TrainSpec(
    name="student",
    hidden=64,
    layers=3,
    heads=2,
    steps=2400,
    batch_size=8,
    lr=3e-3,
    style_mix=world.STUDENT_STYLE_MIX,
    error_rate=world.STUDENT_ERROR_RATE,
    redo_rate=0.0,  # it never writes `check`
    stamp_rate=world.STUDENT_STAMP_RATE,
    n_problems=20_000,
)


def make_corpus(spec: TrainSpec, seed: int) -> list[tuple[world.ToyProblem, str]]:
    """The training pairs ``(problem, response)`` of one model, drawn from the generating process."""
    problems = world.make_problems(spec.n_problems, seed, "train", spec.min_chain, spec.max_chain)
    rng = random.Random(f"dasd-toy-corpus/{spec.name}/{seed}")
    return [
        (p, world.teacher_response(p, rng, spec.style_mix, spec.error_rate, spec.redo_rate, spec.stamp_rate)[1])
        for p in problems
    ]


def _length_bucketed_batches(lengths: list[int], batch_size: int, gen: torch.Generator) -> list[list[int]]:
    """One epoch of batches: shuffle, sort windows of 50 batches by length (less padding), shuffle batches."""
    order = torch.randperm(len(lengths), generator=gen).tolist()
    window = batch_size * 50
    batches = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w : w + window], key=lambda i: lengths[i])
        batches += [chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size)]
    perm = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[i] for i in perm if len(batches[i]) == batch_size] or batches


def train_model(spec: TrainSpec, tokenizer, corpus, seed: int, log=_log, callback=None, every: int = 0):
    """Train one model from scratch on ``corpus``; returns the model (eval mode).

    ``callback(step, model)`` is called every ``every`` steps (model in eval mode, no grad), e.g. to
    watch accuracy while tuning a spec.
    """
    torch.manual_seed(seed)
    model = make_model(
        tokenizer, hidden=spec.hidden, layers=spec.layers, heads=spec.heads, seed=seed, init_std=spec.init_std
    )
    model.train()
    examples = encode_examples(tokenizer, corpus)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=spec.lr,
        betas=(0.9, 0.98),
    )

    def lr_at(step: int) -> float:
        if step < spec.warmup:
            return spec.lr * (step + 1) / spec.warmup
        t = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
        return spec.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    gen = torch.Generator().manual_seed(seed)
    batches: list[list[int]] = []
    pad = tokenizer.pad_token_id
    t0 = time.time()
    ema = None
    for step in range(spec.steps):
        if not batches:
            batches = _length_bucketed_batches([len(x) for x, _ in examples], spec.batch_size, gen)
        ids, labels, mask = pad_batch([examples[i] for i in batches.pop()], pad)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % 25 == 0 or step == spec.steps - 1:
            log(f"[{spec.name}] step {step + 1}/{spec.steps} loss {ema:.4f} lr {lr_at(step):.2e} {time.time() - t0:.0f}s")
        if callback is not None and every and (step + 1) % every == 0:
            model.eval()
            with torch.no_grad():
                callback(step + 1, model)
            model.train()
    model.eval()
    return model


def tokenizer_corpus(corpus, template_tokenizer) -> list[str]:
    """Texts a BPE tokenizer is trained on: chat-templated prompts followed by their responses."""
    prompts = render_prompts(template_tokenizer, [p for p, _ in corpus])
    return [q + r + template_tokenizer.eos_token + "\n" for q, (_, r) in zip(prompts, corpus)]


def _measure(model, tokenizer, problems, max_new_tokens: int, seed: int) -> dict:
    out = {}
    for temp in (0.6, 1.0):
        acc, texts = evaluate_accuracy(
            model, problems, temp, max_new_tokens, seed=seed, tokenizer=tokenizer, return_texts=True
        )
        by_len: dict[int, list[bool]] = {}
        for p, t in zip(problems, texts):
            by_len.setdefault(len(p.steps), []).append(world.verify(t, str(p.answer)))
        out[f"T={temp}"] = {
            "accuracy": round(acc, 4),
            "accuracy_by_chain_length": {k: round(sum(v) / len(v), 4) for k, v in sorted(by_len.items())},
            "style_shares": style_shares(texts),
        }
    return out


def _replace_dir(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(src, dst)


def world_specs(world_name: str) -> dict[str, "TrainSpec"]:
    """The model recipes of a world (``dasd.toy.WORLDS``): the chain world's ``SPECS``; the column
    world's are the same recipes with chains of up to ``column.MAX_CHAIN`` steps (its corpora come
    from ``column.corpus``)."""
    if check_world(world_name) == "column":
        return {n: replace(s, max_chain=column.MAX_CHAIN) for n, s in SPECS.items()}
    return dict(SPECS)


def _build_in_worker(*args) -> dict:
    """``build_model`` in a spawned worker process, which sets up its own logging first."""
    setup()
    return build_model(*args)

SPECS = {"teacher": TEACHER_SPEC, "student": STUDENT_SPEC}
VOCABS = {"teacher": TEACHER_VOCAB, "student": STUDENT_VOCAB}


def build_model(
    name: str,
    out_dir: str | os.PathLike,
    seed: int = 0,
    threads: int = 1,
    evaluate: bool = True,
    log=_log,
    spec: TrainSpec | None = None,
    world_name: str = "chain",
) -> dict:
    """Build one toy model (``"teacher"`` or ``"student"``) of ``world_name`` (``WORLDS``) into
    ``out_dir/name``; return its manifest entry.

    Its BPE tokenizer is trained on its own corpus (the column world's splits digits into tokens of
    their own), then the model (``spec``, default ``world_specs(world_name)[name]``) with ``threads``
    torch intra-op threads (restored afterwards). The model is written to a temp dir and renamed into
    place, so a crash never leaves a half-written model.
    """
    spec = spec or world_specs(world_name)[name]
    out = Path(out_dir)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t0 = time.time()
        corpus = column.corpus(spec, seed) if world_name == "column" else make_corpus(spec, seed)
        byte_tok = build_tokenizer([""], BYTE_VOCAB)
        tok = build_tokenizer(tokenizer_corpus(corpus[:4000], byte_tok), VOCABS[name], split_digits=world_name == "column")
        model = train_model(spec, tok, corpus, seed, log=log)
        tmp = out / f".{name}.building"
        if tmp.exists():
            shutil.rmtree(tmp)
        save_model(model, tok, str(tmp))
        _replace_dir(tmp, out / name)
        recipe = asdict(spec)
        if world_name == "column":  # the chain world's style knobs do not apply; the column share does
            recipe = {k: v for k, v in recipe.items() if k not in ("style_mix", "redo_rate", "stamp_rate")}
            recipe["column_share"] = column.COLUMN_SHARE if name == "teacher" else 0.0
        info = {
            "spec": recipe,
            "vocab_size": len(tok),
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_seconds": round(time.time() - t0, 1),
        }
        if evaluate:
            t1 = time.time()
            if world_name == "column":
                test = column.make_sum_problems(spec.eval_problems, seed, "test")
                log(f"[{name}] measuring accuracy on {len(test)} test problems")
                info["eval"] = column.measure(model, tok, test, seed)
            else:
                test = world.make_problems(spec.eval_problems, seed, "test")
                log(f"[{name}] measuring accuracy on {len(test)} test problems")
                info["eval"] = _measure(model, tok, test, 400 if name == "teacher" else 800, seed)
            info["eval_seconds"] = round(time.time() - t1, 1)
            log(f"[{name}] " + ", ".join(f"{k}: acc {v['accuracy']:.3f}" for k, v in info["eval"].items()))
        return info
    finally:
        torch.set_num_threads(old_threads)


def build_toy_world(
    out_dir: str | os.PathLike,
    seed: int = 0,
    threads: int = 1,
    evaluate: bool = True,
    parallel: bool = True,
    log=_log,
    specs: dict[str, TrainSpec] | None = None,
    checks: bool = True,
    check_kw: dict | None = None,
    world_name: str = "chain",
) -> dict[str, str]:
    """Build the teacher and the student base of ``world_name`` (``WORLDS``: ``chain``, the demo's, or
    ``column``) into ``out_dir/{teacher,student}``; return their paths.

    Knobs: ``seed`` (problems, corpora, init, data order, sampling in the measurements), ``threads``
    (torch intra-op threads per model; part of the recipe: float sums, hence the weights, can differ
    with another thread count or CPU), ``evaluate`` (measure accuracy and style shares at T=0.6 and
    T=1.0 on 200 held-out test problems into ``manifest.json``), ``parallel`` (build the two models at
    once in two processes, one core each; the weights are the same either way, since each model's
    recipe, thread count included, is unchanged; worker processes log through ``dasd.log`` too), ``specs``
    (replace ``SPECS``, e.g. tiny ones in tests), ``checks`` (after the models are built, run
    ``dasd.toy.checks.world_checks`` on them, with ``check_kw`` as its keyword arguments, print its
    lines and store its result under ``checks`` in the manifest; needs ``evaluate``; the chain world's
    checks, not run for the column world).
    8-11 minutes on a loaded 2-core machine (the teacher's training dominates), plus one or two for the checks.

    Pitfall: one model with two intra-op threads is only ~1.4x faster than with one on an idle
    machine and several times slower on a busy one (the threads spin-wait on each other), so the two
    models run side by side instead, one thread each.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    specs = specs or world_specs(world_name)
    names = list(SPECS)
    if parallel:
        import multiprocessing

        from dasd.signals import exit_with_parent, held

        pool = None
        try:
            with held():  # a stop while the workers start waits until they have (dasd.signals)
                pool = multiprocessing.get_context("spawn").Pool(len(names), initializer=exit_with_parent)
                results = {n: pool.apply_async(_build_in_worker, (n, str(out), seed, threads, evaluate, _log, specs[n],
                                                                  world_name))
                           for n in names}
            manifest_models = {n: r.get() for n, r in results.items()}
        finally:
            # A stop (SIGTERM, Ctrl-C) or one model's error ends the other worker too: a pool that
            # waited for it would keep training for minutes after the command said it stopped.
            if pool is not None:
                pool.terminate()
                pool.join()
    else:
        manifest_models = {n: build_model(n, out, seed, threads, evaluate, log, specs[n], world_name) for n in names}
    t_models = time.time() - t_start
    check_result = None
    if evaluate and checks and world_name == "chain":
        from dasd.toy.checks import world_checks

        old_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            check_result = world_checks(out, seed=seed, log=log, **(check_kw or {}))
        finally:
            torch.set_num_threads(old_threads)
    manifest = {
        "world": world_name,
        "seed": seed,
        "threads": threads,
        "parallel": parallel,
        "torch": torch.__version__,
        "build_seconds": round(time.time() - t_start, 1),
        "models_seconds": round(t_models, 1),
        "eval_protocol": {"split": "test", "n": specs["teacher"].eval_problems, "top_p": 1.0, "samples_per_problem": 1},
        "models": manifest_models,
    }
    if check_result is not None:
        manifest["checks"] = check_result
    atomic_write_json(out / "manifest.json", manifest)
    log(f"built toy world in {manifest['build_seconds']:.0f}s -> {out}")
    return {n: str(out / n) for n in names}


SHIPPED_DIR = Path(__file__).resolve().parent.parent / "data" / "toy"


def _complete(d: Path) -> bool:
    return all((d / m / f).is_file() for m in ("teacher", "student") for f in ("config.json", "model.safetensors"))


def cache_dir() -> Path:
    """Where dasd caches built things: ``$DASD_CACHE`` or ``~/.cache/dasd``."""
    return Path(os.environ.get("DASD_CACHE") or Path.home() / ".cache" / "dasd")


def shipped_dir(world_name: str = "chain") -> Path:
    """Where the package ships a world's models: ``data/toy`` (chain) or ``data/toy/column``."""
    return SHIPPED_DIR if check_world(world_name) == "chain" else SHIPPED_DIR / world_name


def cached_dir(world_name: str = "chain") -> Path:
    """Where a world's models are built when not shipped: ``cache_dir()/toy`` (chain) or ``toy-column``."""
    return cache_dir() / ("toy" if check_world(world_name) == "chain" else f"toy-{world_name}")


def default_toy_dir(world_name: str = "chain") -> Path:
    """The directory holding a world's ``teacher/`` and ``student/``: the shipped models when present,
    else ``cached_dir(world_name)``, built there once on first use (chain: about 17 minutes on 2 CPU
    cores, checks included; column: about 12)."""
    shipped = shipped_dir(world_name)
    if _complete(shipped):
        return shipped
    cached = cached_dir(world_name)
    if not _complete(cached):
        build_toy_world(cached, world_name=world_name)
    return cached


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Build the toy world's teacher and student base.")
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per model")
    ap.add_argument("--sequential", action="store_true", help="build one model after the other in this process")
    ap.add_argument("--no-eval", action="store_true", help="skip the accuracy measurements and the checks")
    ap.add_argument("--no-checks", action="store_true", help="skip the mechanism checks (dasd.toy.checks)")
    ap.add_argument("--world", choices=WORLDS, default="chain", help="which world's models (default: chain)")
    a = ap.parse_args(argv)
    setup()
    build_toy_world(a.out_dir, seed=a.seed, threads=a.threads, evaluate=not a.no_eval, parallel=not a.sequential,
                    checks=not a.no_checks, world_name=a.world)
    return 0


if __name__ == "__main__":
    sys.exit(main())
