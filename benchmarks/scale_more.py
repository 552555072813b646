"""Memory and cost of the stages ``benchmarks/scale.py`` does not measure, as the record count grows.

Builds synthetic inputs of N records of realistic length (2-8K characters of distinct toy-world
reasoning, ``scale.response_text``), runs each stage in its own process and prints per stage:
records, tokens, wall seconds, peak RSS, the bytes the stage wrote per token and CPU microseconds
per token, and the stage's own peak (the peak RSS above what the process held once torch and
transformers were loaded: a whole-process peak hides tens of MB under the libraries' load). Stages:

- ``import``: ``dasd import`` of release-shaped rows (``uuid``, ``input``, ``output``, ``domain``,
  ``meta``) joined by id to a JSONL ``-Logprob`` companion (``sample_uuid``, ``token_ids``,
  ``logprobs``) of gpt-oss ids (o200k + the harmony tokens, built offline from the ``bpe-openai``
  wheel), written in another order than the rows; tokens = companion ids.
- ``train-data``: what ``dasd train`` does before the model loads: the named pool ``low``
  (``dasd.runs.named_pools``, a finished ``select`` with N training examples), validated examples
  (``train.data.load_examples``), tokenised into the ``tokens/`` cache and packed
  (``train.data.prepare``, toy student tokenizer, context 16384); tokens = student tokens.
- ``mix-draw``: what ``dasd mix`` reads before its engines work: the curated set of a finished
  ``select`` (``stages.mix.curated_from_run``) and the draw of ``mix.n_questions`` (default)
  questions (``rules.mixing.draw_questions``); tokens = teacher tokens of the sample pool.
- ``report``: ``dasd report`` of that run (``stages.report.run_report``: one pass over the sample,
  score and select outputs, the page written); tokens = teacher tokens of the sample pool.

``mix-draw`` and ``report`` share one synthetic run: ``scale.build_run``'s sample pool of N
responses (4 per prompt), then ``filter``, ``score`` (``scale.StandInStudent``) and ``select``.

``--chars`` shortens the responses of ``import`` and ``train-data`` (e.g. ``--chars 200``) so that a
run of many records shows what a stage holds per record rather than per token.

``--prompts N1,N2`` measures instead the stages that look a response's prompt up, as the number of
PROMPTS grows: questions of 200-3000 characters, every third a code question with 1-4 KB of test
cases (``question``), ``--k`` responses each (cut with ``--chars``); ``sample`` (`dasd sample` of those
prompts, one temperature, k 1, through the real openai engine and HTTP against ``StandInServer``, a
loopback server that answers every request at once with a fixed 5-token answer: what the stage holds,
not what a teacher costs), then ``filter``, ``score``, ``select`` and ``mix-draw`` with each of ``--lookups``: ``dict`` (every
prompt held, ``runs.load_run_prompts``, as before) and ``lazy`` (``runs.RunPrompts``), ``--repeats``
times interleaved. Measured (``--prompts 2000,10000 --k 1 --chars 200 --repeats 2``, shared 2-core
machine; range over the repeats), the stage's own peak MB at 2K / 10K prompts and CPU us per response
at 10K:

==============  ===========================  ===========================
stage           dict (before)                lazy (after)
==============  ===========================  ===========================
sample          (see below)
filter          177 / 205 (+3.6 KB); 1190-1206  169 / 166-167 (flat); 1194-1223
score           96 / 127 (+4.0 KB); 1281-1317   89 / 89 (flat); 1324-1396
select          103 / 135-137 (+4.2 KB); 589-678  95 / 94-97 (flat); 736-751
mix-draw        100-101 / 126-127 (+3.3 KB); 563-589  96 / 88 (flat); 605-674
==============  ===========================  ===========================

Before the fix (the dasd of then, ``--prompts 5000,25000 --k 1``): filter +4.5, score +4.0, select
+5.7, mix-draw +4.1 KB a prompt.

``sample`` before / after streaming its prompts (``--prompts 5000,25000 --k 1 --chars 200 --lookups ''``,
the dasd of before and of after run alternately, 2 repeats; range over the repeats), the stage's own
peak MB at 5K / 25K prompts and CPU us per response at 25K: before 95 / 188-189 (+4.8 KB a prompt),
3329-3538; after 77 / 101-102 (+1.3 KB: the ids of prompts and samples the stage, its writers and
its pool counts keep), 3602-3922 (the source is read twice and the asked prompts read back; noisy on
the shared machine).

``sample`` before / after holding those ids as digests (``dasd.idset.IdSet``) and reading the source
once (same command, 2 repeats each, range over the repeats): before 77-78 / 104-106 MB (+1.42 KB a
prompt), CPU 3617-3902 / 3927-3947 us a response; after 74 / 86 MB (+0.64 KB), CPU 3811-3813 /
3940-4016. The Python memory the stage holds (tracemalloc) grows by about 0.15 KB a prompt now (the
list of ids, then 16-20 bytes an id in each digest set); the rest of the RSS slope at these sizes is
glibc's heap kept after large blocks were freed (with ``MALLOC_MMAP_THRESHOLD_=65536``, one repeat:
73 / 78 MB, +0.26 KB).

Run::

    HF_HUB_OFFLINE=1 python benchmarks/scale_more.py [--records 1000,4000] [--stages import,train-data]
    HF_HUB_OFFLINE=1 python benchmarks/scale_more.py --prompts 2000,10000 --k 1 --chars 200 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scale  # noqa: E402 (the same synthetic run as the other scale benchmark)
from o200k import save_harmony_tokenizer  # noqa: E402
from scale import response_text  # noqa: E402

STAGES = ("import", "train-data", "mix-draw", "report")
CONTEXT = 16384
# ``--prompts``: the stages that look a response's prompt up, and the lookups compared
PROMPT_STAGES = ("sample", "filter", "score", "select", "mix-draw")
LOOKUPS = ("dict", "lazy")

def reasoning(rng: random.Random, chars: int | None) -> tuple[str, str]:
    """A reasoning body and its answer (``chars``: cut the body to about that many characters)."""
    text, x = response_text(rng)
    body = text.split("<think>\n", 1)[1].split("\n</think>", 1)[0]
    if chars:
        body = body[:chars].rstrip()
    return body, f"The answer is \\boxed{{{x}}}."


# -- building the inputs ----------------------------------------------------------------------------


def build_import(root: Path, n: int, chars: int | None, seed: int = 0) -> dict:
    """Release rows and a JSONL companion of n responses (the companion in reverse order)."""
    import numpy as np
    from transformers import AutoTokenizer

    rng, nprng = random.Random(seed), np.random.default_rng(seed)
    tok = AutoTokenizer.from_pretrained(save_harmony_tokenizer(root.parent / "o200k"))
    root.mkdir(parents=True)
    tokens, lines = 0, []
    with (root / "rows.jsonl").open("w", encoding="utf-8") as rows:
        for i in range(n):
            body, answer = reasoning(rng, chars)
            uuid = f"u{i:07d}"
            rows.write(json.dumps({"uuid": uuid, "input": f"Problem {i}: apply the operations.",
                                   "output": f"<think>\n{body}\n</think>\n\n{answer}", "domain": "math",
                                   "meta": json.dumps({"i": i})}) + "\n")
            ids = tok.encode(body, add_special_tokens=False)
            lps = np.round(-nprng.exponential(0.3, len(ids)), 4).tolist()
            lines.append(json.dumps({"sample_uuid": uuid, "token_ids": ids, "logprobs": lps}))
            tokens += len(ids)
            if len(lines) == 512 or i == n - 1:  # the companion in another order than the rows
                with (root / "companion.jsonl").open("a", encoding="utf-8") as fh:
                    fh.write("\n".join(reversed(lines)) + "\n")
                lines = []
    return {"records": n, "tokens": tokens}


def build_train(root: Path, n: int, chars: int | None, seed: int = 0) -> dict:
    """A run whose finished ``select`` holds n training examples of pool T0.6."""
    from dasd.store import RunStore

    rng = random.Random(seed)
    store = RunStore(root)
    with store.writer("select", "train-T0.6") as w:
        for i in range(n):
            body, answer = reasoning(rng, chars)
            w.add({"id": f"t{i:07d}", "source": "T0.6", "prefix_chars": 0, "messages": [
                {"role": "user", "content": f"Problem {i}: apply the operations."},
                {"role": "assistant", "content": f"<think>\n{body}\n</think>\n\n{answer}"}]})
    store.begin_stage("select", {"synthetic": n})
    store.end_stage("select", {"T0.6": {"selected": n}})
    return {"records": n}


def build_pipeline(root: Path, n: int, chars: int | None) -> dict:
    """``scale.build_run``'s sample pool of n responses, filtered, scored and selected (not measured)."""
    import logging

    from dasd.stages.filter import run_filter
    from dasd.stages.score import run_score
    from dasd.stages.select import run_select
    from dasd.store import RunStore

    if (root / "built.json").exists():
        return json.loads((root / "built.json").read_text())
    logging.disable(logging.INFO)
    built = scale.build_run(root / "run", n)
    cfg, store = scale.config(root / "run"), RunStore.open(root / "run")
    run_filter(cfg, store)
    run_score(cfg, store, student=scale.StandInStudent())
    run_select(cfg, store, grade=None)
    logging.disable(logging.NOTSET)
    out = {"records": n, "tokens": built["teacher_tokens"]}
    (root / "built.json").write_text(json.dumps(out))
    return out


_WORDS = ("the", "array", "integer", "given", "value", "return", "each", "query", "modulo", "sum", "of", "find",
          "minimum", "graph", "edge", "vertex", "string", "prime", "number", "triangle", "probability", "expected")


def question(i: int, rng: random.Random, base: str) -> dict:
    """Prompt ``i`` as a prompts file holds it: a question of 200-3000 characters; every third a code
    question with test cases (1-4 KB of inputs and outputs), the others math with a reference answer."""
    def text(n: int) -> str:
        at = rng.randrange(len(base) - n)
        return base[at : at + n]

    rec = {"id": f"p{i:06d}", "prompt": f"Problem {i}. " + text(rng.randint(200, 3000))}
    if i % 3 == 0:
        tests = [text(rng.randint(50, 400)) for _ in range(rng.randint(4, 10))]
        rec.update(domain="code", tests={"inputs": tests[::2], "outputs": tests[1::2]})
    else:
        rec.update(domain="math", answer=str(rng.randint(0, 999)))
    return rec


def build_prompt_run(root: Path, n: int, k: int, chars: int | None, seed: int = 0) -> dict:
    """``root/prompts.jsonl`` (n questions, ``question``) and ``root/run``: those prompts as
    `dasd sample` saves them and a sample pool of k responses to each (``scale.build_run``)."""
    from dasd.prompts import DEFAULT_SYSTEM_PROMPT, to_prompt

    if (root / "built.json").exists():
        return json.loads((root / "built.json").read_text())
    rng = random.Random(seed)
    base = " ".join(rng.choice(_WORDS) for _ in range(200_000))
    root.mkdir(parents=True)
    with (root / "prompts.jsonl").open("w", encoding="utf-8") as fh:
        def prompt(i: int) -> dict:
            raw = question(i, rng, base)
            fh.write(json.dumps(raw) + "\n")
            return to_prompt(raw, DEFAULT_SYSTEM_PROMPT)

        built = scale.build_run(root / "run", n * k, k=k, prompt=prompt, chars=chars)
    out = {"prompts": n, "records": n * k, "tokens": built["teacher_tokens"],
           "prompt_bytes": folder_bytes(root / "run" / "sample", "prompts-")}
    (root / "built.json").write_text(json.dumps(out))
    return out


def use_lookup(lookup: str) -> None:
    """Make filter, score, select and mix look prompts up with ``dict`` (``runs.load_run_prompts``:
    every prompt of the run held, as they did before ``runs.RunPrompts``) or ``lazy`` (their own,
    ``runs.RunPrompts``). ``dict`` on a dasd without ``RunPrompts`` is that dasd's own code."""
    import dasd.runs as runs
    from dasd.stages import filter, mix, score, select

    if lookup == "lazy":
        if not hasattr(runs, "RunPrompts"):
            raise SystemExit("this dasd has no lazy prompt lookup (runs.RunPrompts); use --lookups dict")
        return
    for module in (runs, filter, score, select, mix):
        if hasattr(module, "RunPrompts"):
            module.RunPrompts = runs.load_run_prompts


def config(root: Path, extra: list[str]):
    from dasd.config import load_config

    return load_config(None, [f"run_dir={root / 'run'}", "student.model=toy:student", "teacher.model=toy:teacher",
                              "sample.temperatures=[0.6]", *extra])


# -- one stage in its own process -------------------------------------------------------------------


def _status(field: str) -> int:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in bytes. Not ``getrusage``: a
    child's ``ru_maxrss`` starts at its parent's RSS at the fork and keeps it across ``exec``, so it
    reports the benchmark's own size, not the stage's."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def run_stage(stage: str, root: Path) -> dict:
    """Run ``stage`` on the inputs at ``root`` in this process: tokens, CPU, wall time, peak RSS, and
    the stage's own peak: the peak RSS above what the process held once its libraries were loaded
    (Linux: the peak is reset through ``/proc/self/clear_refs`` before the stage starts)."""
    import torch  # noqa: F401 (loaded before the baseline, as every stage loads it)
    import transformers  # noqa: F401

    import dasd.config  # noqa: F401
    import dasd.runs  # noqa: F401
    from dasd.report import build  # noqa: F401
    from dasd.stages import import_, mix, report  # noqa: F401
    from dasd.train import data  # noqa: F401

    stage, _, lookup = stage.partition("@")
    if lookup:
        use_lookup(lookup)
    if stage in ("filter", "score", "select"):
        return scale.run_stage(stage, root / "run")
    base, loaded = _status("VmRSS"), _status("VmHWM")
    Path("/proc/self/clear_refs").write_text("5")
    t0, c0 = time.monotonic(), time.process_time()
    if stage == "sample":  # `dasd sample` through the openai engine, against an instant stand-in server
        from dasd.stages.sample import run_sample

        with StandInServer() as url:
            cfg = config(root, [f"data.prompts={root.parent / 'prompts.jsonl'}", "teacher.kind=openai",
                                "teacher.model=stand-in", f"teacher.openai.base_urls=[{url}]", "sample.k=1",
                                "sample.max_tokens=8", "teacher.openai.concurrency=16"])
            counts = run_sample(cfg)
        assert counts["T0.6"]["samples"] == counts["T0.6"]["asked"], counts
        out = {"written": folder_bytes(root / "run" / "sample")}
    elif stage == "import":
        from dasd.stages.import_ import run_import

        tok = str(root.parent / "o200k" / "tokenizer")
        cfg = config(root, [f"import.source={root / 'rows.jsonl'}", f"import.logprobs={root / 'companion.jsonl'}",
                            "import.temperature=0.6", f"teacher.model={tok}"])
        counts = run_import(cfg)
        assert counts["with_logprobs"] == counts["imported"], counts
        out = {"written": folder_bytes(root / "run" / "sample")}
    elif stage == "mix-draw":
        from dasd.rules.mixing import draw_questions
        from dasd.stages.mix import curated_from_run
        from dasd.store import RunStore

        cfg = scale.config(root / "run")
        drawn = draw_questions(curated_from_run(RunStore.open(root / "run")), cfg.mix.n_questions, cfg.mix.seed)
        out = {"drawn": len(drawn), "written": 0}
    elif stage == "report":
        from dasd.stages.report import run_report

        page = run_report(scale.config(root / "run"))
        out = {"written": page.stat().st_size}
    else:
        from transformers import AutoTokenizer

        from dasd.runs import named_pools
        from dasd.store import RunStore
        from dasd.toy.build import default_toy_dir
        from dasd.train.data import load_examples, prepare

        cfg = config(root, [])
        tok = AutoTokenizer.from_pretrained(str(default_toy_dir() / "student"))
        items = load_examples("low", named_pools(cfg, RunStore.open(root / "run")))
        sd = prepare(tok, items, CONTEXT, False, True, cache_dir=root / "tokens")
        out = {"tokens": sd.n_tokens, "sequences": len(sd.sequences), "written": folder_bytes(root / "tokens")}
    return {**out, "wall_s": time.monotonic() - t0, "cpu_s": time.process_time() - c0,
            "peak_rss": max(loaded, _status("VmHWM")), "stage_peak": _status("VmHWM") - base}


class StandInServer:
    """``with StandInServer() as url:`` an OpenAI-schema HTTP server on loopback (its own thread) that
    answers every chat completion at once with one fixed short answer and its per-token log-probs:
    the real openai engine and HTTP, no model (what `dasd sample` holds, not what a teacher costs)."""

    TOKENS = ["The", " answer", " is", " 4", "."]

    def __enter__(self) -> str:
        import http.server
        import threading

        body = json.dumps({"id": "x", "object": "chat.completion", "model": "stand-in", "choices": [{
            "index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "".join(self.TOKENS)},
            "logprobs": {"content": [{"token": t, "logprob": -0.5, "bytes": list(t.encode()), "top_logprobs": []}
                                     for t in self.TOKENS]}}]}).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def folder_bytes(root: Path, prefix: str = "") -> int:
    return sum(p.stat().st_size for p in root.rglob(f"{prefix}*") if p.is_file())


def child(stage: str, root: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, __file__, "--stage", stage, "--run", str(root)], env=env,
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{stage} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_prompts(n: int, k: int, chars: int | None, lookups: list[str], repeat: int, workdir: Path) -> list[dict]:
    """One pass of the prompt-heavy stages over a run of n prompts (k responses each) per lookup:
    ``sample`` once, then filter, score, select and mix's draw on a fresh copy of the sample
    stage (hard links) for each lookup in turn."""
    root = workdir / f"prompts-{n}"
    built = build_prompt_run(root, n, k, chars)
    rows = []

    def row(stage: str, lookup: str, m: dict) -> dict:
        r = {"stage": stage, "lookup": lookup, "repeat": repeat, **built, **m}
        print(prompt_table([r], header=not rows), flush=True)
        rows.append(r)
        return r

    shutil.rmtree(root / "sp", ignore_errors=True)
    row("sample", "-", child("sample", root / "sp"))
    shutil.rmtree(root / "sp")
    work = workdir / f"prompts-{n}-work"
    shutil.rmtree(work, ignore_errors=True)
    for lookup in lookups:
        shutil.copytree(root / "run", work / "run", copy_function=os.link)
        for stage in PROMPT_STAGES[1:]:
            row(stage, lookup, child(f"{stage}@{lookup}", work))
        shutil.rmtree(work)
    return rows


def prompt_table(rows: list[dict], header: bool = True) -> str:
    head = (f"| {'stage':14s} | {'lookup':6s} | {'prompts':>7s} | {'responses':>9s} | {'wall s':>6s} | "
            f"{'stage peak MB':>13s} | {'CPU us/resp':>11s} |")
    lines = [head, "|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|"] if header else []
    for r in rows:
        lines.append(f"| {r['stage']:14s} | {r['lookup']:6s} | {r['prompts']:7d} | {r['records']:9d} | "
                     f"{r['wall_s']:6.1f} | {r['stage_peak'] / 2**20:13.1f} | {r['cpu_s'] / r['records'] * 1e6:11.1f} |")
    return "\n".join(lines)


def prompts_main(a) -> None:
    workdir = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="dasd-scale-prompts-"))
    counts, lookups = [int(x) for x in a.prompts.split(",")], [x for x in a.lookups.split(",") if x]
    rows = []
    for repeat in range(a.repeats):  # repeats interleaved: every size and lookup once, then again
        for n in counts:
            rows += measure_prompts(n, a.k, a.chars, lookups, repeat, workdir)
    print()
    print(f"the stage's own peak MB (range over {a.repeats} repeat(s)) and CPU us per response, by prompts:")
    for stage in PROMPT_STAGES:
        for lookup in ("-", *lookups):
            got = {n: [r for r in rows if (r["stage"], r["lookup"], r["prompts"]) == (stage, lookup, n)] for n in counts}
            if not all(got.values()):
                continue

            def rng(vals, fmt):
                return f"{min(vals):{fmt}}-{max(vals):{fmt}}" if len(vals) > 1 else f"{vals[0]:{fmt}}"
            peaks = {n: [r["stage_peak"] / 2**20 for r in rs] for n, rs in got.items()}
            cpu = {n: [r["cpu_s"] / r["records"] * 1e6 for r in rs] for n, rs in got.items()}
            lo, hi = min(counts), max(counts)
            per = (sum(peaks[hi]) / len(peaks[hi]) - sum(peaks[lo]) / len(peaks[lo])) * 1024 / max(1, hi - lo)
            print(f"  {stage:14s} {lookup:6s} " + " / ".join(f"{n}: {rng(peaks[n], '.0f')} MB" for n in counts)
                  + f" (+{per:.2f} KB per prompt); CPU " + " / ".join(rng(cpu[n], ".0f") for n in counts) + " us/resp")


def measure(stage: str, n: int, chars: int | None, workdir: Path) -> dict:
    if stage in ("mix-draw", "report"):
        root = workdir / f"pipeline-{n}"
        built = build_pipeline(root, n, chars)
    else:
        root = workdir / f"{stage}-{n}"
        shutil.rmtree(root, ignore_errors=True)
        built = (build_import if stage == "import" else build_train)(root if stage == "import" else root / "run", n, chars)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, __file__, "--stage", stage, "--run", str(root)], env=env,
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{stage} failed:\n{out.stderr[-3000:]}")
    m = {**built, **json.loads(out.stdout.strip().splitlines()[-1])}
    if stage not in ("mix-draw", "report"):
        shutil.rmtree(root, ignore_errors=True)
    return {"stage": stage, **m, "bytes_per_token": m["written"] / m["tokens"], "cpu_us_per_token": m["cpu_s"] / m["tokens"] * 1e6}


def table(rows: list[dict]) -> str:
    head = (f"| {'stage':10s} | {'records':>7s} | {'tokens':>12s} | {'wall s':>7s} | {'peak RSS MB':>11s} | "
            f"{'stage peak MB':>13s} | {'bytes/tok':>9s} | {'CPU us/tok':>10s} |")
    lines = [head, "|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|"]
    for r in rows:
        lines.append(f"| {r['stage']:10s} | {r['records']:7d} | {r['tokens']:12,d} | {r['wall_s']:7.1f} | "
                     f"{r['peak_rss'] / 2**20:11.0f} | {r['stage_peak'] / 2**20:13.1f} | {r['bytes_per_token']:9.2f} | {r['cpu_us_per_token']:10.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", default="1000,4000", help="comma-separated record counts")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {', '.join(STAGES)}")
    ap.add_argument("--chars", type=int, default=None, help="cut each reasoning to about this many characters")
    ap.add_argument("--workdir", default=None, help="where the synthetic inputs go (default: a temp dir)")
    ap.add_argument("--prompts", default=None, help="comma-separated prompt counts: measure the stages that look "
                    f"prompts up ({', '.join(PROMPT_STAGES)}) instead, as the prompts grow")
    ap.add_argument("--k", type=int, default=2, help="--prompts: responses per prompt")
    ap.add_argument("--lookups", default=",".join(LOOKUPS), help="--prompts: the prompt lookups to compare: dict "
                    "(every prompt held, as before), lazy (runs.RunPrompts); '' = the sample stage alone")
    ap.add_argument("--repeats", type=int, default=1, help="--prompts: interleaved repeats")
    a = scale.parse_or_run_child(ap, run_stage)
    if a is None:
        return
    if a.prompts:
        prompts_main(a)
        return
    workdir = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="dasd-scale-more-"))
    rows = []
    for n in (int(x) for x in a.records.split(",")):
        for stage in a.stages.split(","):
            rows.append(measure(stage, n, a.chars, workdir))
            print(table(rows[-1:]), flush=True)
        shutil.rmtree(workdir / f"pipeline-{n}", ignore_errors=True)
    rows.sort(key=lambda r: (STAGES.index(r["stage"]), r["records"]))
    print()
    print(table(rows))
    for stage in a.stages.split(","):
        rss = {r["records"]: r["peak_rss"] for r in rows if r["stage"] == stage}
        own = {r["records"]: r["stage_peak"] for r in rows if r["stage"] == stage}
        lo, hi = min(rss), max(rss)
        print(f"{stage}: peak RSS at {hi} records / at {lo} = {rss[hi] / rss[lo]:.2f}; the stage's own peak "
              f"{own[lo] / 2**20:.1f} -> {own[hi] / 2**20:.1f} MB (+{(own[hi] - own[lo]) / max(1, hi - lo) / 1024:.1f} KB "
              "per record)")


if __name__ == "__main__":
    main()
