"""``dasd plan CONFIG``: what a run costs before it starts, stage by stage.

For each stage of the pipeline (sample, filter, score, select, mix, each training stage, eval) the plan
gives the engine requests, the tokens the GPUs process, the disk the run directory gains and the
GPU-hours, from the config and a few stated :class:`Assumptions` (workload sizes and throughputs in
tokens per second per GPU). Every number is an estimate: GPU-hours = tokens / throughput, so a
measured throughput (e.g. from vLLM's own logs) in place of a default makes the estimate as good as
the measurement. Nothing is loaded or contacted.

Sample records hold the teacher's per-token log-probs; when those are not raw (``logprob_mode`` other
than ``raw`` for ``kind: openai``, ``processed_logprobs`` for ``kind: vllm``) the score stage re-scores
every kept response with the teacher, and the plan shows that row.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

from dasd.errors import ConfigError

# The paper's evaluation protocol (stages/evaluate.py Protocol.paper): tokens per domain, 64 samples.
_PAPER_MAX_TOKENS = {"aime": 102_400, "livecodebench": 81_920, "gpqa": 81_920}
_PAPER_N = 64


@dataclass(frozen=True)
class Assumptions:
    """Workload sizes and throughputs the plan assumes; each default is stated in ``help``."""

    prompts: tuple[int, ...] | None = field(default=None, metadata={"help": (
        "questions sampled at each temperature: one number for all, or one per temperature of "
        "sample.temperatures (default: sample.prompts_per_temperature when the config sets it, else every "
        "prompt of data.prompts; the prompts are counted from data.prompts (the toy world's data.toy.n_train, "
        "a file's non-empty lines or Parquet rows, data.limit applied), and a count above them is cut to "
        "them as `dasd sample` does)")})
    prompt_tokens: float = field(default=250.0, metadata={"help": "mean prompt length in tokens (system prompt and chat template included)"})
    response_tokens: float = field(default=12_000.0, metadata={"help": "mean teacher response length in tokens, capped at sample.max_tokens"})
    keep: float = field(default=0.9, metadata={"help": "fraction of teacher responses the filters keep"})
    mix_cutoff: float = field(default=0.3, metadata={"help": "fraction of mixed-policy rollouts cut off at the length cap (paper: 15K of 50K)"})
    eval_response_tokens: float | None = field(default=None, metadata={"help": "mean evaluation response length (default: response_tokens), capped by the protocol"})
    eval_problems: dict[str, int] = field(default_factory=dict, metadata={"help": (
        "problems per benchmark name, for benchmarks without a readable file or limit (a benchmark "
        "with neither and no entry here is an error)")})
    teacher_decode_tps: float = field(default=2_500.0, metadata={"help": "teacher generated tokens per second per GPU"})
    teacher_prefill_tps: float = field(default=20_000.0, metadata={"help": "teacher prompt tokens (prefill, prompt log-probs) per second per GPU"})
    student_prefill_tps: float = field(default=20_000.0, metadata={"help": "student teacher-forced scoring tokens per second per GPU"})
    student_decode_tps: float = field(default=4_000.0, metadata={"help": "student generated tokens per second per GPU (mix rollouts, eval)"})
    train_tps: float = field(default=3_000.0, metadata={"help": "training tokens per second per GPU (forward + backward)"})
    student_params: float | None = field(default=None, metadata={"help": (
        "student parameters, for checkpoint sizes (default: counted from train.base_model's safetensors "
        "when it is a local directory, else 4e9, Qwen3-4B's size)")})
    sample_bytes_per_token: float = field(default=9.0, metadata={"help": (
        "bytes per teacher token of a sample record in the columnar store (text, token ids, offsets, "
        "log-probs, zstd): benchmarks/scale.py measures 5.0 on toy text and 7.5 with uniformly random "
        "o200k ids; 9 leaves room for the compressed text of 4-character tokens")})
    filter_bytes_per_token: float = field(default=0.05, metadata={"help": (
        "bytes per teacher token filter writes for a kept sample: a reference to its row (measured 0.01); "
        "a sample whose <think> delimiters filter rewrites is stored whole instead")})
    score_bytes_per_token: float = field(default=6.0, metadata={"help": (
        "bytes per teacher token score writes: a reference, the student's offsets and log-probs, the "
        "sentences and the DAS summary (measured 5.45)")})
    text_bytes_per_token: float = field(default=4.0, metadata={"help": "bytes of text per token (training examples, evaluation responses)"})
    packing_efficiency: float = field(default=0.95, metadata={"help": "filled fraction of a packed training sequence"})

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, float) and not v > 0 and f.name != "mix_cutoff":  # no rollout cut off: none to continue
                raise ConfigError(f"plan: {option(f.name)} must be > 0, got {v:g} ({f.metadata['help']})")
        for name, low_open in (("keep", True), ("packing_efficiency", True), ("mix_cutoff", False)):
            v = getattr(self, name)
            if not (0 < v <= 1 if low_open else 0 <= v <= 1):
                raise ConfigError(f"plan: {option(name)} must be in {'(0' if low_open else '[0'}, 1], got {v:g} "
                                  f"({self.__dataclass_fields__[name].metadata['help']})")
        if self.prompts is not None and (not self.prompts or any(p < 1 for p in self.prompts)):
            raise ConfigError(f"plan: {option('prompts')} must be positive counts, got {self.prompts}")


# Assumptions that `dasd plan` takes as an option (--keep, --train-tps, ...); the others keep their defaults there
CLI_OPTIONS = {"prompts", "eval_problems", "prompt_tokens", "response_tokens", "eval_response_tokens", "keep",
               "mix_cutoff", "teacher_decode_tps", "teacher_prefill_tps", "student_prefill_tps", "student_decode_tps",
               "train_tps", "student_params"}


def option(name: str) -> str:
    """How an error names the assumption ``name``: as the `dasd plan` option that sets it (``--train-tps``),
    else by its field name."""
    return "--" + name.replace("_", "-") if name in CLI_OPTIONS else name


def parse_counts(text: str) -> tuple[int, ...]:
    """``"105000,330000"`` -> ``(105000, 330000)`` (the ``--prompts`` option)."""
    try:
        counts = tuple(int(x.replace("_", "")) for x in text.split(","))
    except ValueError:
        raise ConfigError(f"--prompts {text!r}: expected N or N,N,... (questions per temperature)") from None
    if any(c < 1 for c in counts):
        raise ConfigError(f"--prompts {text!r}: counts must be positive")
    return counts


def parse_named_counts(text: str) -> dict[str, int]:
    """``"AIME24=30,GPQA-D=198"`` -> ``{"AIME24": 30, "GPQA-D": 198}`` (the ``--eval-problems`` option)."""
    out: dict[str, int] = {}
    for part in filter(None, text.split(",")):
        name, sep, n = part.partition("=")
        if not sep or not name.strip() or not n.strip().isdigit() or int(n) < 1:
            raise ConfigError(f"--eval-problems {text!r}: expected NAME=N,NAME=N,... (problems per benchmark)")
        out[name.strip()] = int(n)
    return out


@dataclass(frozen=True)
class Row:
    """One line of the plan."""

    stage: str
    engine: str  # which model does the work ("teacher", "student", "cpu", "trainer")
    requests: int  # engine requests (one per sample: the openai engine sends each as its own HTTP request)
    tokens: float  # tokens the GPUs process (prompt + generated, or trained)
    disk_gb: float  # what the stage adds to the run directory
    gpu_hours: float
    note: str = ""


def _count_lines(path: Path) -> int:
    with path.open(encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip())


def _benchmark_size(spec, given: dict[str, int]) -> int:
    if spec.limit is not None:
        return spec.limit
    if spec.format == "toy":
        return 100  # load_benchmark's toy default
    if spec.name in given:
        return given[spec.name]
    if spec.path and Path(spec.path).is_file():
        if spec.format == "gpqa":
            with open(spec.path, newline="", encoding="utf-8") as fh:
                return max(0, sum(1 for _ in csv.reader(fh)) - 1)
        return _count_lines(Path(spec.path))
    raise ConfigError(f"eval.benchmarks {spec.name!r}: {spec.path} not found and no size given; "
                      f"pass --eval-problems {spec.name}=N")


def _prompt_counts(cfg, a: Assumptions) -> list[int]:
    temps = cfg.sample.temperatures
    if a.prompts is not None:
        if len(a.prompts) not in (1, len(temps)):
            raise ConfigError(f"plan: --prompts: {len(a.prompts)} prompt counts for {len(temps)} temperatures {temps} "
                              "(sample.temperatures); give one count for all, or one per temperature")
        return list(a.prompts) * len(temps) if len(a.prompts) == 1 else list(a.prompts)
    per = cfg.sample.prompts_per_temperature
    path = Path(cfg.data.prompts)
    if cfg.data.prompts == "toy":
        n = cfg.data.toy.n_train
    elif path.is_file() and path.suffix == ".parquet":
        import pyarrow.parquet as pq

        n = pq.ParquetFile(path).metadata.num_rows
    elif path.is_file():
        n = _count_lines(path)
    elif per is not None:
        return list(per)  # the prompts cannot be counted here: the config's counts as they are
    else:
        raise ConfigError(f"data.prompts: {cfg.data.prompts} is not a file to count; pass --prompts N "
                          "(questions per temperature) or set sample.prompts_per_temperature")
    n = min(n, cfg.data.limit) if cfg.data.limit else n
    return [n] * len(temps) if per is None else [min(c, n) for c in per]


def count_params(model: str) -> int | None:
    """Parameters in the safetensors files of a local model directory (headers only), else None."""
    from dasd.runs import resolve_model

    files = sorted(Path(resolve_model(model)).glob("*.safetensors")) if Path(resolve_model(model)).is_dir() else []
    if not files:
        return None
    from safetensors import safe_open

    total = 0
    for f in files:
        with safe_open(str(f), framework="numpy") as fh:
            for key in fh.keys():
                total += math.prod(fh.get_slice(key).get_shape())
    return total


def raw_logprobs(engine) -> bool:
    """Whether an engine config's sampling log-probs are raw (untempered), so the score stage keeps them."""
    if engine.kind == "openai":
        return engine.openai.logprob_mode == "raw"  # auto: raw only if the server says so; vLLM does not
    if engine.kind == "vllm":
        return engine.vllm.logprobs_mode == "raw_logprobs"
    return True  # hf


def plan(cfg, assumptions: Assumptions | None = None) -> list[Row]:
    """The rows of the plan of a RunConfig (``dasd.config.RunConfig``) under ``assumptions``."""
    from dasd.runs import pool_name as _pool

    a = assumptions or Assumptions()
    temps = list(cfg.sample.temperatures)
    counts = _prompt_counts(cfg, a)
    k, pr = cfg.sample.k, a.prompt_tokens
    resp = min(a.response_tokens, cfg.sample.max_tokens)
    hours = 1 / 3600
    gb = 1e-9
    rows: list[Row] = []
    teacher_raw = raw_logprobs(cfg.teacher)

    kept, selected = {}, {}
    for t, p in zip(temps, counts):
        n = p * k
        rows.append(Row(f"sample {_pool(t)}", "teacher", n, n * (pr + resp), n * resp * a.sample_bytes_per_token * gb,
                        (n * resp / a.teacher_decode_tps + n * pr / a.teacher_prefill_tps) * hours,
                        f"{p:,} questions x k={k}; {resp:,.0f} tokens each"))
        kept[t] = n * a.keep
    total = sum(p * k for p in counts)
    rows.append(Row("filter", "cpu", 0, 0.0, sum(kept.values()) * resp * a.filter_bytes_per_token * gb, 0.0,
                    f"student-tokenizer lengths of {total:,} responses; keeps {a.keep:.0%}"))
    for t in temps:
        n = kept[t]
        rows.append(Row(f"score {_pool(t)}", "student", round(n), n * (pr + resp),
                        n * resp * a.score_bytes_per_token * gb,
                        n * (pr + resp) / a.student_prefill_tps * hours, "teacher-forced prompt log-probs"))
        if not teacher_raw:
            rows.append(Row(f"rescore {_pool(t)}", "teacher", round(n), n * (pr + resp), 0.0,
                            n * (pr + resp) / a.teacher_prefill_tps * hours,
                            "teacher log-probs not raw: every kept response re-scored"))
    for t, p in zip(temps, counts):
        selected[t] = min(p * cfg.select.m, kept[t])
    rows.append(Row("select", "cpu", 0, 0.0, sum(selected.values()) * (pr + resp) * a.text_bytes_per_token * gb, 0.0,
                    "kept per pool: " + ", ".join(f"{_pool(t)} {selected[t]:,.0f}" for t in temps)))

    pools = {_pool(t): selected[t] for t in temps} | {"low": selected[min(temps)], "high": selected[max(temps)]}
    mixed = 0.0
    if any(s.data in ("mixed", "mixed+replay") for s in cfg.train.stages):
        # draw_questions takes one response per question, and the largest pool holds every question:
        # sample asks each prompt at every temperature, or (sample.prompts_per_temperature) a smaller
        # pool's prompts are part of a larger one's
        q = min(cfg.mix.n_questions, max(selected.values()))
        cap = cfg.mix.length_multiple * resp
        roll = q * ((1 - a.mix_cutoff) * resp + a.mix_cutoff * cap)
        rows.append(Row("mix rollouts", "student", round(q), q * pr + roll, roll * a.text_bytes_per_token * gb,
                        (roll / a.student_decode_tps + q * pr / a.student_prefill_tps) * hours,
                        f"{q:,.0f} questions, cap {cfg.mix.length_multiple:g}x the teacher's length"))
        cut = q * a.mix_cutoff
        prefix = pr + (cfg.mix.cut_low + cfg.mix.cut_high) / 2 * cap
        cont = min(cfg.mix.max_continuation_tokens, resp / 2)
        mixed = cut * a.keep
        rows.append(Row("mix continue", "teacher", round(cut), cut * (prefix + cont),
                        mixed * (prefix + cont) * a.text_bytes_per_token * gb,
                        (cut * cont / a.teacher_decode_tps + cut * prefix / a.teacher_prefill_tps) * hours,
                        f"{cut:,.0f} cut-offs continued (<= {cont:,.0f} tokens), {mixed:,.0f} kept"))
    pools["mixed"] = mixed
    rc = cfg.mix.replay  # stage 3's replay: round(ratio x mixed) off-policy examples, at most the source pool
    pools["mixed+replay"] = mixed + min(round(rc.ratio * mixed), pools.get(rc.source, 0.0))

    tc = cfg.train
    params = a.student_params or count_params(tc.base_model) or 4.0e9
    seq_tokens = tc.context * (a.packing_efficiency if tc.packing else 1.0)
    for st in tc.stages:
        hp = tc.for_stage(st)
        if st.data in pools:
            ex = pools[st.data]
        elif Path(st.data).is_file():
            ex = _count_lines(Path(st.data))
        else:
            raise ConfigError(f"train.stages {st.name!r}: data {st.data!r} is neither a pool nor a file")
        if ex == 0 and st.optional:
            continue
        ex_tokens = pr + resp
        seqs = math.ceil(ex * ex_tokens / seq_tokens) if tc.packing else math.ceil(ex)
        gbatch = tc.global_batch or tc.micro_batch * tc.grad_accum
        if hp["max_steps"]:
            steps = hp["max_steps"]
        else:
            steps = math.ceil(seqs / gbatch * hp["epochs"])
        tokens = steps * gbatch * (seq_tokens if tc.packing else ex_tokens)
        weights = params * (2 if tc.bf16 else 4)
        ckpts = min(tc.keep_checkpoints, steps // tc.save_every) if tc.save_every else 0
        cache = ex * ex_tokens * 8  # the tokens/ cache: int32 ids and labels per token of every example
        disk = (weights + ckpts * params * 16 + cache) * gb  # a resumable checkpoint: weights, fp32 master, Adam m and v
        rows.append(Row(f"train {st.name}", "trainer", 0, float(tokens), disk, tokens / a.train_tps * hours,
                        f"{ex:,.0f} examples, {steps:,} steps of {gbatch} x {tc.context:,}; "
                        f"{ckpts} step checkpoint(s) kept, token cache {cache * gb:,.1f} GB"))

    ev = cfg.eval
    for model in ev.models:
        req = tok = 0.0
        for spec in ev.benchmarks:
            if ev.preset == "paper":
                n, cap = _PAPER_N, _PAPER_MAX_TOKENS.get(spec.format, 102_400)
            else:
                n, cap = ev.protocol.n, ev.protocol.max_tokens
            m = _benchmark_size(spec, a.eval_problems) * n
            req += m
            tok += m * (pr + min(a.eval_response_tokens or a.response_tokens, cap))
        who = "teacher" if model == "teacher" else "student"
        tps = a.teacher_decode_tps if who == "teacher" else a.student_decode_tps
        rows.append(Row(f"eval {model}", who, round(req), tok, tok * a.text_bytes_per_token * gb, tok / tps * hours,
                        f"{len(ev.benchmarks)} benchmark(s), " + ("paper protocol (n 64)" if ev.preset == "paper" else f"n {ev.protocol.n}")))
    return rows


def _si(x: float, unit: str = "") -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= scale:
            return f"{x / scale:.1f}{suffix}{unit}"
    return f"{x:.0f}{unit}"


def format_plan(rows: list[Row], assumptions: Assumptions | None = None) -> str:
    """A plain-text table of ``rows`` with a total line, then the assumptions when given."""
    head = ("stage", "engine", "requests", "tokens", "disk", "GPU-h", "note")
    body = [(r.stage, r.engine, _si(r.requests) if r.requests else "-", _si(r.tokens) if r.tokens else "-",
             f"{r.disk_gb:,.1f} GB", f"{r.gpu_hours:,.0f}", r.note) for r in rows]
    body.append(("total", "", _si(sum(r.requests for r in rows)), _si(sum(r.tokens for r in rows)),
                 f"{sum(r.disk_gb for r in rows):,.1f} GB", f"{sum(r.gpu_hours for r in rows):,.0f}", ""))
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head) - 1)]
    right = {2, 3, 4, 5}
    lines = []
    for i, r in enumerate([head, *body]):
        cells = [c.rjust(w) if j in right else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells + [r[-1]]).rstrip())
        if i == 0 or i == len(body) - 1:
            lines.append("  ".join("-" * w for w in widths) + "  ----")
    if assumptions is not None:
        lines.append("")
        lines.append("assumptions:")
        for f in fields(assumptions):
            v = getattr(assumptions, f.name)
            if v is None or v == {}:
                continue
            shown = ",".join(f"{k}={n}" for k, n in v.items()) if isinstance(v, dict) else (
                ",".join(str(x) for x in v) if isinstance(v, tuple) else f"{v:g}")
            lines.append(f"  {f.name} = {shown}: {f.metadata['help']}")
    return "\n".join(lines)
