"""The `dasd` command: one verb per registered stage (``dasd.registry``), plus run, demo, config,
grade, convert, plan, toy and export.

Every verb that needs a config takes it the same way: an optional YAML path first (or
``-c/--config FILE``), then dotted ``KEY=VALUE`` overrides::

    dasd sample configs/demo.yaml sample.k=2
    dasd sample -c configs/demo.yaml sample.k=2      # the same
    dasd run configs/demo.yaml
    dasd config show configs/demo.yaml train.lr=1e-3
    dasd demo

``-q`` keeps only warnings and errors, ``-v`` adds debug lines (``dasd.log``). Errors a user can fix
(bad config, bad input, bad run directory, a run directory in use, a full disk, a path the
operating system refuses: missing, a file for a folder, no permission, read-only; unknown verb) print
one line and exit with code 2, without a traceback (``-v`` adds it as a debug line for a path). Ctrl-C (SIGINT) and SIGTERM (what Slurm and
Kubernetes send) stop the command the same way: what is complete is kept (buffered records are
flushed), one line says how to resume, and the exit code is 130 / 143.
"""

from __future__ import annotations

import errno
import logging
import shlex
import signal
import sys
from pathlib import Path
from typing import Optional

import typer

from dasd import __version__, registry
from dasd.errors import ConfigError, DasdError
from dasd.jsonl import DISK_FULL, UNWRITABLE
from dasd.signals import Stopped, on_signal

app = typer.Typer(
    help="Distribution-Aligned Sequence Distillation: sample, filter, score, select, train, mix, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
toy_app = typer.Typer(help="The built-in toy world (task, tiny teacher and student).", no_args_is_help=True)
app.add_typer(toy_app, name="toy")
export_app = typer.Typer(help="Export selected data for other trainers.", no_args_is_help=True)
app.add_typer(export_app, name="export")
config_app = typer.Typer(help="Inspect configs: the resolved values, with defaults and overrides.", no_args_is_help=True)
app.add_typer(config_app, name="config")

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file (or give it as the first argument).")
ArgsArg = typer.Argument(None, help="[CONFIG] then dotted overrides KEY=VALUE, e.g. sample.k=2 teacher.batch_size=8.",
                         show_default=False)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dasd {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also debug lines."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Distribution-Aligned Sequence Distillation: sample, filter, score, select, train, mix, evaluate."""
    from dasd.log import setup

    setup(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)


def split_args(config: Optional[Path], args: Optional[list[str]]) -> tuple[Optional[Path], list[str]]:
    """``(config path, overrides)`` from ``-c`` and the positional arguments (the first one is the
    config when it is not a ``KEY=VALUE`` override)."""
    args = list(args or [])
    if config is None and args and "=" not in args[0]:
        config = Path(args.pop(0))
    elif config is not None and args and "=" not in args[0]:
        raise ConfigError(f"two configs given: --config {config} and {args[0]}")
    for arg in args:  # a config file after an override, or a second one: not an override without '='
        if "=" not in arg and Path(arg).suffix in (".yaml", ".yml"):
            raise ConfigError(f"{arg}: a config file after {'the config ' + str(config) if config else 'an override'}; "
                              "give one config, first, then the KEY=VALUE overrides")
    return config, args


def load(config: Optional[Path], args: Optional[list[str]]):
    """The validated RunConfig of a verb's arguments."""
    from dasd.config import load_config

    path, overrides = split_args(config, args)
    return load_config(path, overrides)


def _stage_verb(stage: registry.Stage):
    def verb(args: Optional[list[str]] = ArgsArg, config: Optional[Path] = ConfigOpt) -> None:
        cfg = load(config, args)
        if stage.name == "eval":
            _eval_needs_run(cfg)
        stage.load()(cfg)

    verb.__doc__ = stage.help
    return verb


def _eval_needs_run(cfg) -> None:
    """Refuse `dasd eval` of a training stage's model where there is no run (a mistyped ``run_dir``),
    before its driver makes the run directory: no stage can have been trained there. Base models
    (``student``, ``teacher``) and model directories alone may be evaluated in a new run."""
    from dasd.runs import require_run

    trained = [label for label in cfg.eval.models if label in {s.name for s in cfg.train.stages}]
    if trained:
        require_run(cfg.run_dir, "eval", f"no trained model of eval.models {', '.join(map(repr, trained))}",
                    " (or leave them out of eval.models)")


for _stage in registry.STAGES:
    if _stage.name != "report":
        app.command(name=_stage.name, help=_stage.help)(_stage_verb(_stage))


@app.command()
def report(
    args: Optional[list[str]] = typer.Argument(None, help="A run directory, or [CONFIG] [KEY=VALUE...] naming one (run_dir).",
                                               show_default=False),
    config: Optional[Path] = ConfigOpt,
    out: Optional[Path] = typer.Option(None, "--out", help="HTML file to write (default: RUN/report.html)."),
) -> None:
    """Write a self-contained HTML report of a run (plots embedded, no network)."""
    from dasd.report.build import write_report

    args = list(args or [])
    if config is None and args and "=" not in args[0] and Path(args[0]).suffix not in (".yaml", ".yml"):
        if len(args) > 1:
            raise ConfigError(f"dasd report {args[0]}: overrides need a config, not a run directory")
        run_dir = Path(args[0])
    else:
        run_dir = Path(load(config, args).run_dir)
    typer.echo(f"report: {write_report(run_dir, out)}")


@app.command()
def run(args: Optional[list[str]] = ArgsArg, config: Optional[Path] = ConfigOpt) -> None:
    """Run every stage in order in one run directory; finished stages are skipped, partial ones resumed."""
    from dasd.pipeline import closing_lines, run_pipeline

    cfg = load(config, args)
    typer.echo(closing_lines(cfg, run_pipeline(cfg)))


@app.command()
def demo(
    overrides: Optional[list[str]] = typer.Argument(None, help="Dotted overrides KEY=VALUE.", show_default=False),
    world: str = typer.Option("chain", "--world", help="chain: configs/demo.yaml, the chain world (minutes); "
                              "column: configs/column.yaml, the column world, where the paper's effects show."),
) -> None:
    """The whole pipeline on a toy world (configs/demo.yaml, or configs/column.yaml with --world column), on CPU."""
    from dasd.config import load_config
    from dasd.pipeline import closing_lines, demo_config_path, run_pipeline

    cfg = load_config(demo_config_path(world), overrides or [])
    typer.echo(closing_lines(cfg, run_pipeline(cfg)))


@config_app.command("show")
def config_show(args: Optional[list[str]] = ArgsArg, config: Optional[Path] = ConfigOpt) -> None:
    """Print the resolved config (YAML: defaults, the file and the overrides applied)."""
    import yaml

    from dasd.config import dump_config

    typer.echo(yaml.safe_dump(dump_config(load(config, args)), sort_keys=False, allow_unicode=True).rstrip())


@app.command()
def grade(
    problems: Path = typer.Option(..., "--problems", help="Problems JSONL: Prompt records with answer, choices or "
                                  "tests (unique ids)."),
    responses: Path = typer.Option(..., "--responses", help="Responses JSONL: {problem_id, text} per line."),
    out: Path = typer.Option(..., "--out", help="Where to write one result per response (JSONL)."),
) -> None:
    """Grade given responses without a model; prints a summary table."""
    from dasd.grading.evaluate import run_grade

    typer.echo(run_grade(problems, responses, out))


@toy_app.command("build")
def toy_build(
    out: Path = typer.Option(None, "--out", help="Where to write the models (default: $DASD_CACHE/toy, "
                             "i.e. ~/.cache/dasd/toy; the shipped models are never overwritten)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the problems, corpora, initial weights, data order and checks."),
    world: str = typer.Option("chain", "--world", help="chain (the demo's world) or column (default --out: "
                              "$DASD_CACHE/toy-column)."),
) -> None:
    """Deterministically build a toy world's teacher and student base (ordinary transformers format). The chain
    world also runs its mechanism checks: minutes on 2 CPU cores (8-11 for the models and one or two for the checks
    on a loaded machine); the column world's models take 12-15."""
    from dasd.toy import WORLDS
    from dasd.toy.build import build_toy_world, cached_dir

    if world not in WORLDS:
        raise typer.BadParameter(f"{world!r}: the toy worlds are {', '.join(WORLDS)}", param_hint="--world")
    paths = build_toy_world(out or cached_dir(world), seed=seed, world_name=world)
    for role, path in paths.items():
        typer.echo(f"{role}: {path}")


@export_app.command("llamafactory")
def export_llamafactory(
    args: Optional[list[str]] = ArgsArg,
    config: Optional[Path] = ConfigOpt,
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: RUN/export/llamafactory)."),
    template: str = typer.Option("qwen3_nothink", "--template", help="LLaMA-Factory chat template of the student."),
    gpus: int = typer.Option(8, "--gpus", help="GPUs of the target run (sets gradient accumulation)."),
    deepspeed: str = typer.Option("zero3", "--deepspeed", help="DeepSpeed config the stage YAMLs name: none, zero2, "
                                  "zero3 (written to OUT/deepspeed/) or the path of a DeepSpeed JSON as the training "
                                  "machines see it."),
    report_to: str = typer.Option("none", "--report-to", help="The HF Trainer's report_to in the stage YAMLs: none, "
                                  "tensorboard, wandb, ... (comma-separated)."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="Tokenizer that counts example lengths "
                                             "(default: train.base_model's); examples over train.context tokens are "
                                             "left out, as dasd's trainer drops them."),
) -> None:
    """Selected data as LLaMA-Factory data files, dataset_info.json and stage YAMLs (the paper's settings)."""
    from dasd.runs import named_pools, require_ran
    from dasd.store import RunStore
    from dasd.train.export_llamafactory import export

    cfg = load(config, args)
    store = RunStore.open(cfg.run_dir)
    if any(not s.optional and not Path(s.data).exists() for s in cfg.train.stages):  # a named pool: select's output
        require_ran(store, ("select",), "export llamafactory")
    target = out or store.root / "export" / "llamafactory"
    summary = export(cfg.train, target, named_pools(cfg, store), template=template, gpus=gpus, deepspeed=deepspeed,
                     report_to=report_to, tokenizer=str(tokenizer) if tokenizer else None)
    for st in summary.get("stages", []):
        typer.echo(f"{st['name']}: {st['examples']} examples ({st['dropped_over_context']} over the context left "
                   f"out) -> {st['yaml']}")
    typer.echo(f"dataset_info.json and data files in {target}")


@app.command()
def convert(run_dir: Path = typer.Argument(..., help="Run directory written by an earlier (JSONL-only) dasd.")) -> None:
    """Rewrite a run's token-carrying outputs (sample, kept, scored, selected/rejected pools) as Parquet."""
    from dasd.convert import convert_run

    done = convert_run(run_dir)
    typer.echo(f"converted {sum(done.values())} records in {len(done)} outputs" if done else "nothing to convert")


@app.command(name="plan")
def plan_(
    args: Optional[list[str]] = ArgsArg,
    config: Optional[Path] = ConfigOpt,
    prompts: Optional[str] = typer.Option(None, "--prompts", help="Questions sampled at each temperature: N, or N,N,... "
                                          "one per sample.temperatures (default: sample.prompts_per_temperature "
                                          "when the config sets it, else every prompt of data.prompts, counted: the "
                                          "toy world's data.toy.n_train, a file's non-empty lines or Parquet rows, "
                                          "data.limit applied; a count above them is cut to them)."),
    eval_problems: Optional[str] = typer.Option(None, "--eval-problems", help="Problems per benchmark that has no "
                                                "readable file or limit: NAME=N,NAME=N,..."),
    prompt_tokens: float = typer.Option(250.0, "--prompt-tokens", help="Mean prompt length in tokens."),
    response_tokens: float = typer.Option(12000.0, "--response-tokens", help="Mean teacher response length in "
                                          "tokens (capped at sample.max_tokens)."),
    eval_response_tokens: Optional[float] = typer.Option(None, "--eval-response-tokens", help="Mean evaluation "
                                                         "response length (default: --response-tokens)."),
    keep: float = typer.Option(0.9, "--keep", help="Fraction of teacher responses the filters keep."),
    mix_cutoff: float = typer.Option(0.3, "--mix-cutoff", help="Fraction of mixed-policy rollouts cut off "
                                     "(paper: 15K of 50K)."),
    teacher_decode_tps: float = typer.Option(2500.0, "--teacher-decode-tps", help="Teacher generated tokens/s per GPU."),
    teacher_prefill_tps: float = typer.Option(20000.0, "--teacher-prefill-tps", help="Teacher prompt tokens/s per "
                                              "GPU (prefill, prompt log-probs)."),
    student_prefill_tps: float = typer.Option(20000.0, "--student-prefill-tps", help="Student teacher-forced "
                                              "scoring tokens/s per GPU."),
    student_decode_tps: float = typer.Option(4000.0, "--student-decode-tps", help="Student generated tokens/s per "
                                             "GPU (mix rollouts, eval)."),
    train_tps: float = typer.Option(3000.0, "--train-tps", help="Training tokens/s per GPU."),
    student_params: Optional[float] = typer.Option(None, "--student-params", help="Student parameters, for "
                                                   "checkpoint sizes (default: counted from train.base_model when it "
                                                   "is a local directory, else 4e9)."),
) -> None:
    """Requests, tokens, disk and GPU-hours of each stage of a run, before it starts (docs/scale-out.md)."""
    from dasd.plan import Assumptions, format_plan, parse_counts, parse_named_counts, plan

    a = Assumptions(
        prompts=parse_counts(prompts) if prompts else None,
        eval_problems=parse_named_counts(eval_problems) if eval_problems else {},
        prompt_tokens=prompt_tokens, response_tokens=response_tokens, eval_response_tokens=eval_response_tokens,
        keep=keep, mix_cutoff=mix_cutoff, teacher_decode_tps=teacher_decode_tps,
        teacher_prefill_tps=teacher_prefill_tps, student_prefill_tps=student_prefill_tps,
        student_decode_tps=student_decode_tps, train_tps=train_tps, student_params=student_params,
    )
    typer.echo(format_plan(plan(load(config, args), a), a))


def _stopped(why: str, argv: list[str], code: int) -> int:
    """The one line printed when a command is stopped by a signal; its exit code."""
    print(f"dasd: {why}; what was complete is kept; resume with: dasd {shlex.join(argv)}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `dasd` console script. Returns the exit code."""
    import click

    argv = list(argv if argv is not None else sys.argv[1:])
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if _main_thread() else {}
    try:
        from transformers.utils import logging as hf_logging  # a second or more: a Ctrl-C meanwhile is one line too

        hf_logging.disable_progress_bar()  # dasd's stages show their own progress
        command = typer.main.get_command(app)
        rv = command.main(args=argv, prog_name="dasd", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except Stopped as e:
        if e.signum == signal.SIGTERM:
            return _stopped("terminated (SIGTERM)", argv, 143)
        return _stopped("interrupted (Ctrl-C)", argv, 130)
    except (KeyboardInterrupt, click.exceptions.Abort, typer.Abort):
        return _stopped("interrupted (Ctrl-C)", argv, 130)
    except OSError as e:
        if e.errno in DISK_FULL:
            print(f"dasd: error: {e.filename or 'a file'}: no space left on device ({e.strerror}); free some space "
                  f"and re-run: dasd {shlex.join(argv)}", file=sys.stderr)
            return 2
        if e.errno in _PATH_ERRORS and e.filename:  # a path the user gave: missing, a file for a folder, no permission
            import traceback

            from dasd.log import logger

            logger("cli").debug("".join(traceback.format_exception(e)).rstrip())  # shown with -v
            target = f" -> {e.filename2}" if e.filename2 else ""
            print(f"dasd: error: {e.filename}{target}: {e.strerror}", file=sys.stderr)
            return 2
        raise
    except DasdError as e:
        lines = str(e).splitlines() or [type(e).__name__]
        for line in lines:
            print(f"dasd: error: {line}", file=sys.stderr)
        return 2
    except typer.Exit as e:
        return e.exit_code
    except typer.TyperException as e:  # usage errors: unknown verb, bad option; a group given no verb
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        if type(e).__name__ == "NoArgsIsHelpError":
            print(message, file=sys.stderr)  # `dasd`, `dasd toy`: the help, not an error line
            return 2
        ctx = getattr(e, "ctx", None)
        print(f"dasd: error: {message} (see {ctx.command_path if ctx else 'dasd'} --help)", file=sys.stderr)
        return 2
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# errno values of an operating-system error about a path the user can fix (one line, exit 2): a
# missing path, or one that cannot be written (dasd.jsonl.UNWRITABLE)
_PATH_ERRORS = (errno.ENOENT, *UNWRITABLE)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
