"""Cost of the non-model work of filter, score and select as the pool grows (issue 14's targets).

Builds a synthetic run of N teacher responses of realistic length (2-8K characters of toy-world
reasoning, every one distinct), tokenised with the toy teacher's tokenizer (ids, offsets) and
log-probs drawn at random, then runs each stage in its own process and prints per stage: records,
teacher tokens, wall seconds, peak RSS (the stage process's own, ``VmHWM``), the stage's own peak
(above what the process held once torch and transformers were loaded), the bytes the stage wrote
per teacher token, and CPU microseconds per teacher token. ``score`` gets a stand-in student engine
(``StandInStudent``) with the toy student's tokenizer and ChatML chat template, so the stage scores
each response on the tokens training gives it (``train.encode.score_as_trained``: the conversation
rendered and tokenised, the response's tokens cut out of it) as it does with a real student; the
engine answers with random log-probs, and the CPU it spends (tokenising a response given as text,
the offsets of one given as ids without them) is measured, printed apart (``engine us/tok``) and left
out, so the score line is the stage's own work. ``--without-cut`` also scores each pool with the stand-in's chat
template taken away, each response on its own tokens (row ``score (alone)``: what score did before it
scored the training tokens), interleaved with the other ``--repeat`` times.
``--response-tokens`` times ``train.encode.response_tokens`` alone on long responses (``cut_cost``).
Targets (issue 14): peak RSS at 16K within 1.2x of 1K; <= 12 bytes per teacher token in the sample
pool and <= 25 in the score pool; <= 1 us of CPU per teacher token per stage. Figures: README, Scale.

Run::

    HF_HUB_OFFLINE=1 python benchmarks/scale.py [--records 1000,4000] [--workdir DIR] [--without-cut] [--repeat 2]
    HF_HUB_OFFLINE=1 python benchmarks/scale.py --response-tokens --repeat 5
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PAPER_RESPONSES, PAPER_TOKENS = 448_000, 10_000
STAGES = ("filter", "score", "select")
ALONE = "score (alone)"  # score without the cut: each response on its own tokens (``--without-cut``)
OPS = [("+", lambda a, b: a + b), ("-", lambda a, b: a - b), ("*", lambda a, b: a * b)]
LINKS = ["First,", "Then", "Next,", "Now", "After that,", "So", "Checking:", "We get", "Carry on:", "Again,"]


def _columnar() -> bool:
    """Whether this dasd has the columnar store (the benchmark also runs on the JSONL-only one)."""
    import importlib.util

    return importlib.util.find_spec("dasd.columnar") is not None


def response_text(rng: random.Random) -> tuple[str, int]:
    """A distinct toy-world reasoning of 2-8K characters and its answer."""
    target = rng.randint(2000, 8000)
    x = rng.randint(1, 9)
    lines = ["<think>", f"We start from {x} and apply each operation in turn."]
    n = sum(len(s) + 1 for s in lines)
    step = 0
    while n < target - 60:
        step += 1
        sym, fn = rng.choice(OPS)
        a = rng.randint(1, 9)
        y = fn(x, a) % 1000
        s = f"{rng.choice(LINKS)} step {step}: {x} {sym} {a} = {y}, keep {y} mod 1000."
        if rng.random() < 0.2:
            s += f" Double-check: {y} is {'even' if y % 2 == 0 else 'odd'} and has {len(str(y))} digit(s)."
        lines.append(s)
        n += len(s) + 1
        x = y
    lines += ["</think>", f"The answer is \\boxed{{{x}}}."]
    return "\n".join(lines), x


def short(response: tuple[str, int], chars: int | None) -> str:
    """A ``response_text`` with its reasoning cut to about ``chars`` characters (None: whole)."""
    text, x = response
    if not chars:
        return text
    body = text.split("<think>\n", 1)[1].split("\n</think>", 1)[0][:chars].rstrip()
    return f"<think>\n{body}\n</think>\nThe answer is \\boxed{{{x}}}."


# -- building the synthetic run ---------------------------------------------------------------------


def build_run(root: Path, n: int, seed: int = 0, k: int = 4, prompt=None, chars: int | None = None) -> dict:
    """Prompts and one sample pool (T0.6) of ``n`` responses, ``k`` to a prompt, written through the
    run store. ``prompt(i)``: prompt ``i``'s record (default: a one-line question); ``chars``: cut
    each response's reasoning to about that many characters."""
    import numpy as np
    from tokenizers import Tokenizer

    from dasd.store import RunStore
    from dasd.toy.build import default_toy_dir

    rng = random.Random(seed)
    nprng = np.random.default_rng(seed)
    tok = Tokenizer.from_file(str(default_toy_dir() / "teacher" / "tokenizer.json"))
    store = RunStore(root)
    n_prompts = (n + k - 1) // k
    with store.writer("sample", "prompts") as w:
        for i in range(n_prompts):
            w.add(prompt(i) if prompt else {"id": f"p{i:06d}", "domain": "toy", "meta": {},
                  "messages": [{"role": "user", "content": f"Problem {i}: apply the operations."}]})
    t0 = time.process_time()
    tokens = 0
    arrays = (lambda a: a) if _columnar() else (lambda a: a.tolist())  # the JSONL store needs lists
    with store.writer("sample", "pool-T0.6", shard_size=256) as w:
        for start in range(0, n, 256):
            texts = [short(response_text(rng), chars) for _ in range(start, min(n, start + 256))]
            for j, (text, enc) in enumerate(zip(texts, tok.encode_batch(texts, add_special_tokens=False))):
                i = start + j
                ids = np.asarray(enc.ids, dtype=np.int32)
                w.add({
                    "id": f"s{i:07d}", "prompt_id": f"p{i // k:06d}", "model": "toy:teacher", "temperature": 0.6,
                    "top_p": 1.0, "seed": 0, "index": i % k, "text": text, "finish_reason": "stop",
                    "teacher": {"token_ids": arrays(ids), "offsets": arrays(np.asarray(enc.offsets, dtype=np.int32)),
                                "logprobs": arrays(-nprng.exponential(0.3, len(ids)).astype(np.float32)),
                                "logprob_mode": "raw"},
                })
                tokens += len(ids)
    store.begin_stage("sample", {"synthetic": n})
    store.end_stage("sample", {"T0.6": {"samples": n, "tokens": tokens}})
    return {"records": n, "teacher_tokens": tokens, "build_cpu_s": time.process_time() - t0}


def config(root: Path):
    from dasd.config import load_config

    return load_config(None, [f"run_dir={root}", "student.model=toy:student", "teacher.model=toy:teacher",
                              "sample.temperatures=[0.6]", "filter.max_student_tokens=65536"])


@dataclass
class StandInStudent:
    """A student engine for ``score``: the toy student's tokenizer (``tokenizer``, with its ChatML chat
    template, so ``score`` scores each response on the tokens training gives it:
    ``train.encode.score_as_trained``) and random log-probs. ``cut=False`` takes the chat template
    away, so each response is scored on its own tokens, as ``score`` did before it scored the tokens
    training gives.

    Like the hf engine, it encodes a continuation given as text, returns the offsets a request gives
    with its ids (``ScoreRequest.offsets``: what ``score_as_trained`` asks with) and takes those of
    ids given without them from ``engines.offsets.token_offsets``; ``cpu_s`` is the CPU it spent, so
    the caller can leave it out of the stage's own work."""

    cut: bool = True
    cpu_s: float = 0.0

    def __post_init__(self):
        import numpy as np
        from transformers import AutoTokenizer

        from dasd.toy.build import default_toy_dir

        self.np = np
        self.tokenizer = AutoTokenizer.from_pretrained(str(default_toy_dir() / "student"))
        if not self.cut:
            self.tokenizer.chat_template = None
        self.rng = np.random.default_rng(1)
        self.arrays = (lambda a: a) if _columnar() else (lambda a: a.tolist())

    def score(self, reqs):
        from dasd.engines.base import ScoreResult
        from dasd.engines.offsets import token_offsets

        t0 = time.process_time()
        np = self.np
        texts = [r.continuation for r in reqs if r.continuation_ids is None]
        encoded = iter(self.tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False))
        out = []
        for r in reqs:
            if r.continuation_ids is None:
                enc = next(encoded)
                ids, offs = enc.ids, enc.offsets
            elif getattr(r, "offsets", None) is not None:  # (a dasd with ScoreRequest.offsets)
                ids, offs = list(r.continuation_ids), r.offsets
            else:
                ids, offs = list(r.continuation_ids), token_offsets(self.tokenizer, r.continuation_ids, r.continuation)
            offs = np.asarray(offs, dtype=np.int64).reshape(-1, 2)
            out.append(ScoreResult(request_id=r.id, tokens=[], token_ids=ids, offsets=self.arrays(offs),
                                   logprobs=self.arrays(-self.rng.exponential(0.4, len(offs)))))
        self.cpu_s += time.process_time() - t0
        return out


# -- the cut alone: train.encode.response_tokens on long responses --------------------------------

def cut_cost(repeat: int, chars: int = 40_000, n: int = 8, k: int = 4, seed: int = 0) -> list[dict]:
    """CPU of ``train.encode.response_tokens`` alone (what ``score`` spends cutting each response out
    of its rendered conversation): ``n`` responses of about ``chars`` characters of toy-world
    reasoning, ``k`` to each prompt of about 2K characters, under the ChatML template and
    ``dasd.toy.tokenizer.QWEN_LIKE_TEMPLATE`` (``relays-think``: it re-lays the whitespace around the
    think block, so the response is found through ``_align_nonspace`` rather than verbatim), with two
    byte-level BPE tokenizers: the toy student's (about 1.4 characters a token) and one of 2,000
    entries trained here on toy-world reasoning (about 3). Each call is timed
    ``repeat`` times, the configurations interleaved, and beside it two of its parts done again on
    their own: tokenising the rendered conversations (``tokenise``) and the ``engines.offsets`` rule
    on the cut tokens (``offsets``: ``token_spans``, as ``response_tokens`` calls it, or
    ``token_offsets`` in a dasd without it); microseconds per token of that tokenizer."""
    from transformers import AutoTokenizer

    from dasd.engines import offsets
    from dasd.toy.build import default_toy_dir
    from dasd.toy.tokenizer import QWEN_LIKE_TEMPLATE, build_tokenizer
    from dasd.train.encode import assistant_spans, response_tokens

    rule = getattr(offsets, "token_spans", offsets.token_offsets)

    rng = random.Random(seed)

    def reasoning(size: int) -> str:
        parts: list[str] = []
        while sum(map(len, parts)) < size:
            parts.append(response_text(rng)[0].split("<think>\n", 1)[1].split("\n</think>", 1)[0])
        return "\n".join(parts)[:size].rstrip()

    prompts = [[{"role": "system", "content": reasoning(1500)}, {"role": "user", "content": f"Problem {i}: apply the operations."}]
               for i in range(max(1, n // k))]
    pairs = [(prompts[i // k % len(prompts)], f"<think>\n{reasoning(chars)}\n</think>\nThe answer is \\boxed{{{i}}}.")
             for i in range(n)]
    toks = {"toy student": AutoTokenizer.from_pretrained(str(default_toy_dir() / "student")),
            "BPE 2000": build_tokenizer([response_text(rng)[0] for _ in range(200)], vocab_size=2000)}
    runs = {}
    for tname, tok in toks.items():
        for template in ("chatml", "relays-think"):
            t = copy.deepcopy(tok)
            if template == "relays-think":
                t.chat_template = QWEN_LIKE_TEMPLATE
            runs[(tname, template)] = t
    cpu: dict[tuple, dict[str, list[float]]] = {key: {"all": [], "tokenise": [], "offsets": []} for key in runs}
    tokens = {}
    for _ in range(repeat):
        for key, t in runs.items():
            c0 = time.process_time()
            got = response_tokens(t, pairs)
            cpu[key]["all"].append(time.process_time() - c0)
            if None in got:
                raise SystemExit(f"{key}: a response was not cut out of its conversation")
            tokens[key] = sum(len(r.ids) for r in got)
            texts = [assistant_spans(t, [*m, {"role": "assistant", "content": r}])[0] for m, r in pairs]
            c0 = time.process_time()
            t(texts, add_special_tokens=False, return_offsets_mapping=True)
            c1 = time.process_time()
            for r in got:
                rule(t, r.ids, r.text)
            cpu[key]["tokenise"].append(c1 - c0)
            cpu[key]["offsets"].append(time.process_time() - c1)
    return [{"tokenizer": key[0], "template": key[1], "responses": n, "chars": sum(len(r) for _, r in pairs),
             "tokens": tokens[key], **{f"us_per_token_{part}": [c / tokens[key] * 1e6 for c in cs] for part, cs in cpu[key].items()}}
            for key in runs]


def cut_table(rows: list[dict]) -> str:
    def span(us):
        return f"{min(us):.2f}-{max(us):.2f}"

    lines = ["| tokenizer   | template     | responses | characters | tokens  | us/token  | tokenise  | offsets   |",
             "|-------------|--------------|-----------|------------|---------|-----------|-----------|-----------|"]
    for r in rows:
        lines.append(f"| {r['tokenizer']:11s} | {r['template']:12s} | {r['responses']:9d} | {r['chars']:10,d} | "
                     f"{r['tokens']:7,d} | {span(r['us_per_token_all']):9s} | {span(r['us_per_token_tokenise']):9s} | "
                     f"{span(r['us_per_token_offsets']):9s} |")
    return "\n".join(lines)


# -- one stage in its own process -------------------------------------------------------------------


def run_stage(stage: str, root: Path) -> dict:
    """Run ``stage`` on the run at ``root`` in this process; its own CPU, wall time, peak RSS and
    ``stage_peak``: the peak RSS above what the process held once its libraries were loaded (the
    peak is reset through ``/proc/self/clear_refs`` before the stage starts)."""
    import torch  # noqa: F401 (loaded before the baseline: the stages' engines and rules load it)
    import transformers  # noqa: F401

    from dasd.stages.filter import run_filter
    from dasd.stages.score import run_score
    from dasd.stages.select import run_select
    from dasd.store import RunStore

    cfg = config(root)
    store = RunStore.open(root)
    if stage in ("score", ALONE):  # scored afresh, not resumed from an earlier repeat (``--repeat``)
        shutil.rmtree(root / "score", ignore_errors=True)
        store.manifest["stages"].pop("score", None)
        store.save_manifest()
    engine = StandInStudent(cut=stage != ALONE) if stage in ("score", ALONE) else None
    base, loaded = _status("VmRSS"), _status("VmHWM")
    Path("/proc/self/clear_refs").write_text("5")
    t0, c0 = time.monotonic(), time.process_time()
    if stage == "filter":
        run_filter(cfg, store)
    elif stage in ("score", ALONE):
        run_score(cfg, store, student=engine)
    else:
        run_select(cfg, store, grade=None)
    cpu = time.process_time() - c0 - (engine.cpu_s if engine else 0.0)
    return {"wall_s": time.monotonic() - t0, "cpu_s": cpu, "engine_cpu_s": engine.cpu_s if engine else 0.0,
            "peak_rss": max(loaded, _status("VmHWM")), "stage_peak": _status("VmHWM") - base}


def _status(field: str) -> int:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in bytes (Linux). Not
    ``getrusage``: a child's ``ru_maxrss`` starts at its parent's RSS at the fork and keeps it across
    ``exec``, so it reported the size of this benchmark's parent process (which builds the run)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def folder_bytes(root: Path, stage: str, prefix: str) -> int:
    return sum(p.stat().st_size for p in (root / stage).glob(f"{prefix}*") if p.is_file())


def measure(n: int, workdir: Path, without_cut: bool = False, repeat: int = 1) -> list[dict]:
    """The rows of a run of ``n`` records: filter, then ``score`` ``repeat`` times (each time after
    ``score (alone)`` with ``without_cut``: interleaved), then select."""
    root = workdir / f"run-{n}"
    shutil.rmtree(root, ignore_errors=True)
    built = build_run(root, n)
    tokens = built["teacher_tokens"]
    rows = [{"stage": "sample (built)", "records": n, "teacher_tokens": tokens,
             "bytes_per_token": folder_bytes(root, "sample", "pool-") / tokens}]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    scores = ((ALONE, "score") if without_cut else ("score",)) * repeat
    for stage in ("filter", *scores, "select"):
        out = subprocess.run([sys.executable, __file__, "--stage", stage, "--run", str(root)], env=env,
                             capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"{stage} failed:\n{out.stderr[-3000:]}")
        m = json.loads(out.stdout.strip().splitlines()[-1])
        written = {"filter": ("filter", "kept-"), "score": ("score", "pool-"), "select": ("select", ""),
                   ALONE: ("score", "pool-")}[stage]
        rows.append({"stage": stage, "records": n, "teacher_tokens": tokens, **m,
                     "bytes_per_token": folder_bytes(root, *written) / tokens,
                     "cpu_us_per_token": m["cpu_s"] / tokens * 1e6,
                     "engine_us_per_token": m["engine_cpu_s"] / tokens * 1e6})
    shutil.rmtree(root, ignore_errors=True)
    return rows


def table(rows: list[dict]) -> str:
    head = (f"| {'stage':14s} | {'records':>7s} | {'teacher tokens':>14s} | {'wall s':>7s} | {'peak RSS MB':>11s} | "
            f"{'stage peak MB':>13s} | {'bytes/tok':>9s} | {'CPU us/tok':>10s} | {'engine us/tok':>13s} |")
    lines = [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
    for r in rows:
        def f(key, fmt):
            return format(r[key], fmt) if key in r else "-"
        rss = format(r["peak_rss"] / 2**20, ".0f") if "peak_rss" in r else "-"
        own = format(r["stage_peak"] / 2**20, ".1f") if "stage_peak" in r else "-"
        lines.append(f"| {r['stage']:14s} | {r['records']:7d} | {r['teacher_tokens']:14,d} | {f('wall_s', '7.1f')} | "
                     f"{rss:>11s} | {own:>13s} | {f('bytes_per_token', '9.2f')} | {f('cpu_us_per_token', '10.2f')} | "
                     f"{f('engine_us_per_token', '13.2f') if r.get('engine_cpu_s') else '-':>13s} |")
    return "\n".join(lines)


def extrapolate(rows: list[dict]) -> str:
    """Disk, RAM and CPU-hours at the paper's scale, from the largest run measured."""
    n_max = max(r["records"] for r in rows)
    last = {r["stage"]: r for r in rows if r["records"] == n_max and r["stage"] != ALONE}
    total = PAPER_RESPONSES * PAPER_TOKENS
    disk = sum(r["bytes_per_token"] for r in last.values()) * total
    cpu_h = sum(r.get("cpu_us_per_token", 0) for r in last.values()) * total / 1e6 / 3600
    ram = max(r.get("peak_rss", 0) for r in last.values())
    return (f"at {PAPER_RESPONSES:,} responses x {PAPER_TOKENS:,} teacher tokens ({total / 1e9:.2f}B tokens): "
            f"disk {disk / 1e9:,.0f} GB (sample pool + filter + score + select outputs), peak RAM per stage "
            f"{ram / 2**30:.1f} GiB (flat in the pool size), non-model CPU {cpu_h:,.1f} CPU-hours (filter + score + select)")


def parse_or_run_child(ap: argparse.ArgumentParser, run_stage) -> argparse.Namespace | None:
    """Parse the command line. In a child process (the hidden ``--stage`` and ``--run``: one stage of a
    run, in its own process so that its peak memory is its own), run that stage, print its numbers as
    JSON on the last line and return None; else return the arguments."""
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--run", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if not a.stage:
        return a
    import logging

    logging.disable(logging.INFO)
    print(json.dumps(run_stage(a.stage, Path(a.run))))
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", default="1000,4000", help="comma-separated pool sizes")
    ap.add_argument("--workdir", default=None, help="where the synthetic runs go (default: a temp dir)")
    ap.add_argument("--without-cut", action="store_true", help="also score each pool on each response's own "
                    "tokens (the stand-in student without its chat template), as score did before it scored "
                    "the tokens training gives: row 'score (alone)'")
    ap.add_argument("--repeat", type=int, default=1, help="score each pool this many times (interleaved with "
                    "--without-cut's runs); with --response-tokens, time each configuration this many times")
    ap.add_argument("--response-tokens", action="store_true", help="only time train.encode.response_tokens on "
                    "long responses (cut_cost), no stages")
    a = parse_or_run_child(ap, run_stage)
    if a is None:
        return
    if a.response_tokens:
        print(cut_table(cut_cost(a.repeat)))
        return
    workdir = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="dasd-scale-"))
    rows = []
    for n in (int(x) for x in a.records.split(",")):
        rows += measure(n, workdir, a.without_cut, a.repeat)
        print(table([r for r in rows if r["records"] == n]), flush=True)
    print()
    print(table(rows))
    for stage in STAGES:
        rss = {r["records"]: r["peak_rss"] for r in rows if r["stage"] == stage}
        own = {r["records"]: r["stage_peak"] for r in rows if r["stage"] == stage}
        lo, hi = min(rss), max(rss)
        print(f"{stage}: peak RSS at {hi} records / at {lo} = {rss[hi] / rss[lo]:.2f}; the stage's own peak "
              f"{own[lo] / 2**20:.1f} -> {own[hi] / 2**20:.1f} MB")
    print(extrapolate(rows))


if __name__ == "__main__":
    main()
