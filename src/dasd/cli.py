"""The `dasd` command: one verb per pipeline stage, plus run, demo, report and toy.

Every verb takes ``--config FILE`` (YAML) and dotted ``KEY=VALUE`` overrides::

    dasd sample --config configs/demo.yaml sample.k=2
    dasd run configs/demo.yaml
    dasd demo

Errors a user can fix (bad config, bad input, bad run directory, unknown verb) print one line and
exit with code 2, without a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from dasd.errors import DasdError

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

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file (defaults apply when omitted).")
OverridesArg = typer.Argument(None, help="Dotted overrides KEY=VALUE, e.g. sample.k=2 teacher.batch_size=8.")


def _load(config: Optional[Path], overrides: Optional[list[str]]):
    from dasd.config import load_config

    return load_config(config, overrides or [])


@app.command()
def sample(config: Optional[Path] = ConfigOpt, overrides: Optional[list[str]] = OverridesArg) -> None:
    """Sample k teacher responses per prompt at each temperature of the schedule (one pool each)."""
    from dasd.stages.sample import run_sample

    run_sample(_load(config, overrides))


@app.command(name="import")
def import_(config: Optional[Path] = ConfigOpt, overrides: Optional[list[str]] = OverridesArg) -> None:
    """Bring existing teacher responses into a run (released DASD layout or chat JSONL)."""
    from dasd.stages.importer import run_import

    run_import(_load(config, overrides))


@app.command(name="filter")
def filter_(config: Optional[Path] = ConfigOpt, overrides: Optional[list[str]] = OverridesArg) -> None:
    """Normalise delimiters and drop bad teacher responses; prints the funnel per pool."""
    from dasd.stages.filter import run_filter

    run_filter(_load(config, overrides))


@app.command()
def score(config: Optional[Path] = ConfigOpt, overrides: Optional[list[str]] = OverridesArg) -> None:
    """Student teacher-forced log-probs and per-sentence teacher/student scores of kept responses."""
    from dasd.stages.score import run_score

    run_score(_load(config, overrides))


@app.command()
def select(config: Optional[Path] = ConfigOpt, overrides: Optional[list[str]] = OverridesArg) -> None:
    """Keep m of k candidates per prompt and pool, by DAS or by random sampling."""
    from dasd.pipeline import grade_fn
    from dasd.stages.select import run_select

    run_select(_load(config, overrides), grade=grade_fn)


@app.command()
def train(config: Optional[Path] = ConfigOpt, overrides: Optional[list[str]] = OverridesArg) -> None:
    """Staged SFT: stage 1 (low temperature), stage 2 (high temperature), stage 3 (mixed policy)."""
    from dasd.stages.training import run_train

    run_train(_load(config, overrides))


@app.command()
def mix(config: Optional[Path] = ConfigOpt, overrides: Optional[list[str]] = OverridesArg) -> None:
    """Mixed-policy data: student prefixes that were cut off, continued by the teacher."""
    from dasd.pipeline import run_mix_stage

    run_mix_stage(_load(config, overrides))


@app.command(name="eval")
def eval_(config: Optional[Path] = ConfigOpt, overrides: Optional[list[str]] = OverridesArg) -> None:
    """Generate k samples per benchmark problem with a recorded protocol, grade, and summarise."""
    from dasd.stages.evaluation import run_evaluation

    run_evaluation(_load(config, overrides))


@app.command()
def grade(
    problems: Path = typer.Option(..., "--problems", help="Problems JSONL (Prompt records with answers/tests)."),
    responses: Path = typer.Option(..., "--responses", help="Responses JSONL: {problem_id, text} per line."),
    out: Path = typer.Option(..., "--out", help="Where to write one result per response (JSONL)."),
) -> None:
    """Grade given responses without a model; prints a summary table."""
    from dasd.stages.evaluate import run_grade

    typer.echo(run_grade(problems, responses, out))


@app.command()
def analyze(config: Optional[Path] = ConfigOpt, overrides: Optional[list[str]] = OverridesArg) -> None:
    """Sentence-type diagnosis (Teacher/Student/Shared/Boosted) of the distilled model's responses."""
    from dasd.stages.analyze import run_analyze

    run_analyze(_load(config, overrides))


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    out: Optional[Path] = typer.Option(None, "--out", help="HTML file to write (default: RUN/report.html)."),
) -> None:
    """Write a self-contained HTML report of a run (plots embedded, no network)."""
    from dasd.report.build import write_report

    typer.echo(f"report: {write_report(run_dir, out)}")


@app.command()
def run(
    config: Path = typer.Argument(..., help="YAML config of the run."),
    overrides: Optional[list[str]] = OverridesArg,
) -> None:
    """Run every stage in order in one run directory; finished stages are skipped, partial ones resumed."""
    from dasd.pipeline import run_pipeline

    run_pipeline(_load(config, overrides))


@app.command()
def demo(overrides: Optional[list[str]] = OverridesArg) -> None:
    """The whole pipeline on the toy world (configs/demo.yaml), on CPU, in minutes."""
    from dasd.pipeline import demo_config_path, run_pipeline

    run_pipeline(_load(demo_config_path(), overrides))


@toy_app.command("build")
def toy_build(
    out: Path = typer.Option(None, "--out", help="Where to write the models (default: $DASD_CACHE/toy, "
                             "i.e. ~/.cache/dasd/toy; the shipped models are never overwritten)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Deterministically build the toy teacher and student base (ordinary transformers format, ~5 min on 2 cores)."""
    from dasd.toy.build import build_toy_world, cache_dir

    paths = build_toy_world(out or cache_dir() / "toy", seed=seed)
    for role, path in paths.items():
        typer.echo(f"{role}: {path}")


@export_app.command("llamafactory")
def export_llamafactory(
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[list[str]] = OverridesArg,
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: RUN/export/llamafactory)."),
    template: str = typer.Option("qwen3_nothink", "--template", help="LLaMA-Factory chat template of the student."),
    gpus: int = typer.Option(8, "--gpus", help="GPUs of the target run (sets gradient accumulation)."),
) -> None:
    """Selected data as LLaMA-Factory data files, dataset_info.json and stage YAMLs (the paper's settings)."""
    from dasd.stages.training import named_pools
    from dasd.store import RunStore
    from dasd.train.export_llamafactory import export

    cfg = _load(config, overrides)
    store = RunStore.open(cfg.run_dir)
    target = out or store.root / "export" / "llamafactory"
    summary = export(cfg.train, target, named_pools(cfg, store), template=template, gpus=gpus)
    for st in summary.get("stages", []):
        typer.echo(f"{st['name']}: {st['examples']} examples -> {st['yaml']}")
    typer.echo(f"dataset_info.json and data files in {target}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `dasd` console script. Returns the exit code."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # dasd's stages show their own progress
    command = typer.main.get_command(app)
    try:
        rv = command.main(args=argv if argv is not None else sys.argv[1:], prog_name="dasd", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except DasdError as e:
        lines = str(e).splitlines() or [type(e).__name__]
        for line in lines:
            print(f"dasd: error: {line}", file=sys.stderr)
        return 2
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        print("dasd: aborted", file=sys.stderr)
        return 130
    except typer.TyperException as e:  # usage errors: unknown verb, bad option
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        print(f"dasd: error: {message} (see dasd --help)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dasd: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
