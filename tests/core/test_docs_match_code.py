"""README.md and docs/*.md against the code they describe: mechanical checks that keep the commonest
kinds of drift from coming back.

- every relative link, and its #anchor, resolves;
- every ``dasd ...`` command shown (code blocks and inline code) names a real verb path of the CLI,
  uses only options that verb declares, and every ``KEY=VALUE`` override names a config key;
- every ``python -m dasd.<module>`` and ``benchmarks/<script>.py`` command shown uses only options
  the script's argparse parser declares;
- every ``make TARGET`` shown is a Makefile target, and every ``pip install`` installs the checkout
  (with an extra it declares) or a requirements file that exists;
- every ``RUN/<folder>/<name>`` path shown is one a stage writes (``dasd.registry`` outputs, rejects,
  the run's own files);
- every repository file named (``tests/...``, ``configs/...``, ``src/dasd/...``, ``benchmarks/*.py``,
  ``benchmarks/results/...``, ``docs/*.md``) exists.
- every dotted name in inline code that starts with a config section (``train.lr``) is a config key,
  and one that starts with a dasd module (``runs.model_version``, ``dasd.rules.das.retype``) exists;
- every test named (``test_...``) is a test function or a test file.
- every ```yaml block is a config fragment that loads (``dasd.config.load_config``).
- every ```python block parses, and what it imports from dasd exists;
- the layouts of README.md and docs/design.md name every top-level module and package;
- every default docs/config.md shows is what a run config without the key gets.
- every hand-written ``| field | default |`` table names one config section's fields and their defaults.
- the figures docs/toy-world.md quotes from the shipped models' manifests, and the ablation tables
  of the README and docs/toy-world.md, are those of the manifests and of ``benchmarks/results/*.json``.

(docs/config.md is generated from the config models: tests/core/test_config.py keeps it current.)
"""

from __future__ import annotations

import re
import shlex
import sys
import typing
from pathlib import Path

import pytest
import typer
from pydantic import BaseModel

from dasd.cli import app
from dasd.config import RunConfig

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Files a page names on purpose although they do not exist, with the reason.
NOT_FILES = {
    "src/dasd/rules/dedup.py": "docs/design.md's worked example of adding a stage",
    "src/dasd/stages/dedup.py": "docs/design.md's worked example of adding a stage",
    "benchmarks/results/ablation-pilot.md": "docs/ablation.md: the output a pilot run is told to write",
    "benchmarks/results/ablation-pilot.json": "docs/ablation.md: written beside the pilot's --results file",
}


# Commands a page shows on purpose although they do not exist, with the reason.
NOT_COMMANDS = {
    "dasd dedup [CONFIG] [KEY=VALUE...]": "docs/design.md's worked example of adding a stage",
}


def _name(p: Path) -> str:
    return p.relative_to(ROOT).as_posix()


def _split(text: str) -> tuple[list[str], list[str]]:
    """``(lines inside fenced code blocks, lines of prose)``."""
    code, prose, fenced = [], [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        (code if fenced else prose).append(line)
    return code, prose


def _inline_code(lines: list[str]) -> list[str]:
    return [span for line in lines for span in re.findall(r"`([^`\n]+)`", line)]


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    _, prose = _split(page.read_text(encoding="utf-8"))
    out: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose:
        m = re.match(r"#{1,6}\s+(.+)", line)
        if m:
            slug = github_slug(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_github_slug():
    assert github_slug("Results: the paper's protocol on the current toy world") == \
        "results-the-papers-protocol-on-the-current-toy-world"
    assert github_slug("2a. Per character: `das.unit: char` (tokenizer-neutral)") == \
        "2a-per-character-dasunit-char-tokenizer-neutral"


@pytest.mark.parametrize("page", DOCS, ids=_name)
def test_relative_links_and_anchors_resolve(page):
    _, prose = _split(page.read_text(encoding="utf-8"))
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", "\n".join(prose)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, mailto:, ...
            continue
        path, _, frag = target.partition("#")
        dest = (page.parent / path) if path else page
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif frag and dest.suffix == ".md" and frag not in anchors(dest):
            bad.append(f"{target}: no heading with anchor #{frag} in {_name(dest)}")
    assert not bad, f"{_name(page)}: " + "; ".join(bad)


# -- dasd commands ---------------------------------------------------------------------------------


def dasd_commands(page: Path) -> list[str]:
    """The ``dasd ...`` command lines a page shows, each cut at a comment, pipe or shell operator."""
    code, prose = _split(page.read_text(encoding="utf-8"))
    found = []
    for line in code:
        for m in re.finditer(r"(?:^|[\s|;(])(dasd\s+\S.*)", line):
            found.append(m.group(1))
    for span in _inline_code(prose):
        if span.startswith("dasd "):
            found.append(span)
    out = []
    for cmd in found:
        cmd = re.split(r"\s+#|\s+\||\s*;|\s+&&", cmd)[0].rstrip(",. ")
        if cmd not in out and cmd not in NOT_COMMANDS:
            out.append(cmd)
    return out


def nested_model(annotation) -> type[BaseModel] | None:
    """The config model inside a field's annotation (through lists and optionals), or None."""
    stack = [annotation]
    while stack:
        a = stack.pop()
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
        stack.extend(typing.get_args(a))
    return None


def config_key_exists(dotted: str) -> bool:
    """Whether ``dotted`` names a field of RunConfig (through nested models, lists and optionals)."""
    model: typing.Any = RunConfig
    for part in dotted.split("."):
        if part.isdigit():  # an item of a list (the model is already the item's)
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return False
        fields = {(f.alias or name): f for name, f in model.model_fields.items()}  # `import` is import_
        if part not in fields:
            return False
        ann = fields[part].annotation
        model = nested_model(ann) or ann
    return True


def check_command(cmd: str) -> list[str]:
    """What is wrong with one shown ``dasd`` command line (empty when nothing)."""
    try:
        words = shlex.split(cmd)
    except ValueError as e:
        return [f"{cmd!r}: not a shell line ({e})"]
    command = typer.main.get_command(app)
    path = ["dasd"]
    problems = []
    i = 1
    while i < len(words):
        w = words[i]
        if w == "--help":
            pass
        elif w.startswith("-") and w != "-":
            name = w.split("=", 1)[0]
            opt = next((p for p in command.params
                        if p.param_type_name == "option" and name in p.opts + p.secondary_opts), None)
            if opt is None:
                problems.append(f"{cmd!r}: {' '.join(path)} has no option {name}")
            elif not opt.is_flag and "=" not in w:
                i += 1  # its value
        elif hasattr(command, "commands"):  # a group (typer's own click: no isinstance)
            sub = command.commands.get(w)
            if sub is None:
                if re.fullmatch(r"[a-z][a-z_]*", w):
                    problems.append(f"{cmd!r}: {' '.join(path)} has no command {w!r}")
                break  # a placeholder in prose (dasd <verb>): nothing more to check
            command, path = sub, path + [w]
        elif "=" in w and not w.startswith(("[", "$")):
            key = w.split("=", 1)[0]
            if not key.isupper() and not config_key_exists(key):  # KEY=VALUE is the placeholder
                problems.append(f"{cmd!r}: {key} is not a config key")
        i += 1
    return problems


def test_check_command_sees_drift():
    assert check_command("dasd sample configs/demo.yaml sample.k=8") == []
    assert check_command("dasd -q run configs/demo.yaml") == []
    assert check_command("dasd export llamafactory configs/demo.yaml --deepspeed zero3") == []
    assert check_command("dasd smaple configs/demo.yaml")
    assert check_command("dasd toy build --threads 2")
    assert check_command("dasd select configs/demo.yaml select.methd=random")
    assert check_command("dasd export llamafactory --gpu 8")


@pytest.mark.parametrize("page", DOCS, ids=_name)
def test_every_dasd_command_shown_exists_with_its_options_and_keys(page):
    commands = dasd_commands(page)
    problems = [p for cmd in commands for p in check_command(cmd)]
    assert not problems, f"{_name(page)}:\n" + "\n".join(problems)


def shipped_config_and_overrides(cmd: str) -> tuple[str, list[str]] | None:
    """``(configs/X.yaml, [KEY=VALUE, ...])`` of a shown ``dasd`` command that names a shipped config
    (first argument or ``-c/--config``), or None; overrides with shell expansions (``$(cat ...)``) are left out."""
    try:
        words = shlex.split(cmd)
    except ValueError:
        return None
    config = next((w for w in words if re.fullmatch(r"configs/[\w./-]+\.yaml", w) and (ROOT / w).is_file()), None)
    if config is None:
        return None
    overrides = [w for w in words if re.fullmatch(r"[a-z_][\w.]*=\S*", w) and "$" not in w]
    return config, overrides


def test_shipped_config_and_overrides():
    assert shipped_config_and_overrides("dasd config show configs/demo.yaml train.lr=1e-3") == \
        ("configs/demo.yaml", ["train.lr=1e-3"])
    assert shipped_config_and_overrides("dasd sample -c configs/dasd-4b.yaml teacher.openai.base_urls=\"$(cat x)\"") == \
        ("configs/dasd-4b.yaml", [])
    assert shipped_config_and_overrides("dasd import my.yaml import.temperature=0.6") is None


@pytest.mark.parametrize("page", DOCS, ids=_name)
def test_every_shipped_config_shown_loads_with_the_overrides_shown(page):
    """A shown command on a shipped config (`dasd config show configs/demo.yaml train.lr=...`) is
    one the config accepts: each key exists (checked above) and the values pass its validation too
    (demo.yaml's `min_lr` 2e-4 refuses `train.lr=1e-4`)."""
    from dasd.config import load_config
    from dasd.errors import DasdError

    problems = []
    for cmd in dasd_commands(page):
        found = shipped_config_and_overrides(cmd)
        if found is None:
            continue
        try:
            load_config(ROOT / found[0], found[1])
        except DasdError as e:
            problems.append(f"{cmd!r}: {e}")
    assert not problems, f"{_name(page)}:\n" + "\n".join(problems)


def test_the_readme_shows_the_verbs():
    shown = {shlex.split(c)[1] for c in dasd_commands(ROOT / "README.md") if not shlex.split(c)[1].startswith("-")}
    assert {"run", "sample", "select", "report", "config", "grade", "import", "toy", "plan", "export"} <= shown


def test_the_readme_shows_how_dasd_run_ends():
    # the demo's output block in the README: the closing lines of `dasd run` (pipeline.closing_lines),
    # its last line included
    from dasd.config import load_config
    from dasd.pipeline import closing_lines

    cfg = load_config(ROOT / "configs" / "demo.yaml")
    lines = closing_lines(cfg, {"eval": {}, "report": "runs/demo/report.html", "seconds": 133.0,
                                "run_dir": "runs/demo"}).strip().splitlines()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```\n(.*?)```", readme, re.S) if b.startswith(lines[0]))
    assert block.splitlines()[1] == lines[1]  # the table's header
    assert block.splitlines()[-2:] == lines[-2:]


# -- python -m dasd.<module> and benchmarks/<script>.py commands -----------------------------------


def script_options(path: Path) -> set[str]:
    """The option strings (``--repeats``, ``-h``) a script's argparse parser declares (its ``add_argument`` calls)."""
    import ast

    opts = {"-h", "--help"}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            opts |= {a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("-")}
    return opts


def script_path(name: str) -> Path | None:
    """The file ``python -m dasd.x.y`` or ``[benchmarks/]name.py`` runs, or None when it is not ours."""
    if name.startswith("dasd."):
        p = ROOT / "src" / Path(*name.split("."))
        return next((c for c in (p.with_suffix(".py"), p / "__main__.py") if c.is_file()), None)
    p = ROOT / "benchmarks" / Path(name).name
    return p if p.is_file() else None


SCRIPT_RE = re.compile(r"(?:-m\s+(dasd\.[\w.]+)|(?<![\w/.-])((?:benchmarks/)?\w+\.py))(.*)")


def check_script_command(cmd: str) -> list[str]:
    """What is wrong with the options of a shown ``python -m dasd.<module>`` or benchmark script command."""
    problems = []
    for m in SCRIPT_RE.finditer(cmd):
        name, args = m.group(1) or m.group(2), re.split(r"\s+#|\s+\||\s*;|\s+&&|\s+>", m.group(3))[0]
        path = script_path(name)
        if path is None:
            continue
        known = script_options(path)
        for opt in re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", args):
            if opt not in known:
                problems.append(f"{cmd!r}: {path.relative_to(ROOT).as_posix()} has no option {opt}")
    return problems


def test_check_script_command_sees_drift():
    assert check_script_command("HF_HUB_OFFLINE=1 python benchmarks/scale.py --records 1000,4000") == []
    assert check_script_command("`scale_more.py --prompts 5000 --k 1 --lookups ''`") == []
    assert check_script_command("python -m dasd.toy.build OUT_DIR [--seed 0] [--world chain|column]") == []
    assert check_script_command("accelerate launch --num_processes 2 -m dasd.train --config t.yaml --out DIR") == []
    assert check_script_command("python benchmarks/scale.py --recs 1000")
    assert check_script_command("python -m dasd.engines.server --model m --prot 8000")
    assert check_script_command("python -m dasd.train --config t.yaml --output DIR")


def script_commands(page: Path) -> list[str]:
    """The lines of a page's code blocks (a line ending in ``\\`` joined with the next) and its inline code."""
    code, prose = _split(page.read_text(encoding="utf-8"))
    return [*re.sub(r"\\\n", " ", "\n".join(code)).splitlines(), *_inline_code(prose)]


@pytest.mark.parametrize("page", DOCS, ids=_name)
def test_every_script_command_shown_uses_options_the_script_has(page):
    problems = [p for cmd in script_commands(page) for p in check_script_command(cmd)]
    assert not problems, f"{_name(page)}:\n" + "\n".join(problems)


# -- pip install -----------------------------------------------------------------------------------


def check_pip_install(cmd: str) -> list[str]:
    """What is wrong with a shown ``pip install``: dasd is installed from the checkout (``-e .``,
    ``.[extra]`` with an extra pyproject.toml declares), everything else from a pinned requirements
    file that exists or at requirements.txt's exact pin (``torch==2.13.0`` from the CPU index); a
    bare name (``'dasd[deepspeed]'``) would fetch whatever an index has."""
    import tomllib

    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"])
    pinned = set((ROOT / "requirements.txt").read_text(encoding="utf-8").split())
    problems = []
    for m in re.finditer(r"pip install((?:\s+[^\s;&|#]+)*)", cmd):
        try:
            words = shlex.split(m.group(1))
        except ValueError:
            words = m.group(1).split()
        i = 0
        while i < len(words):
            w = words[i]
            if w in ("-r", "--requirement", "--report", "--index-url", "--extra-index-url"):
                if w in ("-r", "--requirement") and not (ROOT / words[i + 1]).is_file():
                    problems.append(f"{cmd!r}: no requirements file {words[i + 1]}")
                i += 2
                continue
            if re.fullmatch(r"[\w.-]+==[\w.+-]+", w):  # one package at requirements.txt's exact pin
                if w not in pinned:
                    problems.append(f"{cmd!r}: {w} is not requirements.txt's pin")
                i += 1
                continue
            if not w.startswith("-"):
                spec = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", w)
                if spec is None:
                    problems.append(f"{cmd!r}: {w} is not the checkout (., .[extra]) or a requirements file")
                elif spec.group(1) and not set(spec.group(1).split(",")) <= extras:
                    problems.append(f"{cmd!r}: pyproject.toml has no extra {spec.group(1)}")
            i += 1
    return problems


def test_check_pip_install_sees_drift():
    assert check_pip_install("pip install -r requirements.txt && pip install --no-deps -e .") == []
    assert check_pip_install("pip install -e '.[deepspeed]'") == []
    assert check_pip_install("`pip install --dry-run --report`") == []
    assert check_pip_install("pip install 'dasd[deepspeed]'")
    assert check_pip_install("pip install -e '.[vllm]'")
    assert check_pip_install("pip install -r requirements-nope.txt")
    assert check_pip_install("pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu") == []
    assert check_pip_install("pip install torch==2.12.0 --index-url https://download.pytorch.org/whl/cpu")


@pytest.mark.parametrize("page", DOCS, ids=_name)
def test_every_pip_install_shown_installs_the_checkout_or_a_requirements_file(page):
    problems = [p for cmd in script_commands(page) for p in check_pip_install(cmd)]
    assert not problems, f"{_name(page)}:\n" + "\n".join(problems)


# -- what the README says of written files ---------------------------------------------------------

def test_the_readme_says_training_writes_every_file_with_the_umasks_mode(tiny_lm_dir, tmp_path):
    """The README says files get the mode a plain `open` gives, trained models' files included: it
    named `model.safetensors` as the exception (safetensors writes weights 0600 whatever the umask)
    until training gave them the umask's mode. A training stage with a checkpoint writes every kind of
    file a run holds that dasd does not write itself (weights, optimizer, tokenizer, card)."""
    import os

    from dasd.train.config import TrainConfig
    from dasd.train.trainer import run_training

    pool = [{"messages": [{"role": "user", "content": f"Compute {i} + 1."},
                          {"role": "assistant", "content": f"<think>{i} + 1 = {i + 1}.</think> \\boxed{{{i + 1}}}"}]}
            for i in range(4)]
    cfg = TrainConfig.model_validate({"base_model": tiny_lm_dir, "context": 256, "lr": 1e-3, "report_to": [],
                                      "save_every": 1, "stages": [{"name": "s1", "data": "pool", "init": "base",
                                                                   "max_steps": 1}]})
    old = os.umask(0o022)
    try:
        run_training(cfg, tmp_path / "train", {"pool": pool})
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "train").rglob("*") if p.is_file()]
    assert {"model.safetensors", "optimizer.bin", "trainer_state.json", "curve.jsonl", "done.json", "README.md"} <= \
        {p.name for p in files}
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in files}
    assert modes == dict.fromkeys(modes, "0o644")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    said = readme[readme.index("Files are written with the mode a plain `open` gives"):].split("\n\n")[0]
    assert "`model.safetensors`" in said and "except" not in said, said


# -- make targets and files ------------------------------------------------------------------------


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return {m.group(1) for m in re.finditer(r"^([A-Za-z][\w-]*):", text, re.MULTILINE)}


@pytest.mark.parametrize("page", DOCS, ids=_name)
def test_every_make_target_shown_exists(page):
    code, prose = _split(page.read_text(encoding="utf-8"))
    shown = {m.group(1) for line in code + _inline_code(prose) for m in re.finditer(r"(?:^|\s)make\s+([a-z][\w-]*)", line)}
    assert shown <= make_targets(), f"{_name(page)}: no Makefile target {sorted(shown - make_targets())}"


FILE_RE = re.compile(r"(?<![\w./-])((?:tests|configs|src/dasd|benchmarks/results)/[\w./*{},-]*[\w*}]"
                     r"|benchmarks/[\w-]+\.py|docs/[\w-]+\.md)")


@pytest.mark.parametrize("page", DOCS, ids=_name)
def test_every_repository_file_named_exists(page):
    code, prose = _split(page.read_text(encoding="utf-8"))
    missing = []
    for line in code + _inline_code(prose):
        for path in FILE_RE.findall(line):
            if path in NOT_FILES:
                continue
            names = [path]
            m = re.search(r"\{([^}]*)\}", path)
            if m:
                names = [path[: m.start()] + alt + path[m.end():] for alt in m.group(1).split(",")]
            for name in names:
                if not (list(ROOT.glob(name)) if "*" in name else (ROOT / name).exists()):
                    missing.append(name)
    assert not missing, f"{_name(page)} names files that do not exist: {sorted(set(missing))}"


# -- run directory paths ---------------------------------------------------------------------------

# What a run directory holds besides the registered stages' outputs, with where it is written.
RUN_EXTRAS = {
    "train/tb": "the trackers' files (train.report_to), dasd.train.trainer: out_dir / 'tb'",
    "sample/import-digests.json": "the import sources' digest cache, dasd.stages.import_.DIGESTS",
}


def run_outputs() -> dict[str, set[str]]:
    """``{folder under RUN: the names written there}``: each stage's outputs (``dasd.registry``), the
    rejects any stage quarantines (``RunStore.write_rejects``), the run's own files at the top."""
    from dasd import registry
    from dasd.lock import LOCK
    from dasd.stages.report import FINGERPRINT
    from dasd.store import MANIFEST

    out: dict[str, set[str]] = {".": {MANIFEST, LOCK, FINGERPRINT}}
    for st in registry.STAGES:
        out.setdefault(st.directory, set()).update(st.outputs, () if st.directory == "." else ("rejects",))
    for path in RUN_EXTRAS:
        folder, _, name = path.rpartition("/")
        out.setdefault(folder or ".", set()).add(name)
    return out


def check_run_path(path: str, outputs: dict[str, set[str]]) -> list[str]:
    """What is wrong with one ``RUN/...`` path a page shows (``RUN/select/{selected,rejected}-T0.6-*.parquet``):
    its folder is one a stage writes, and its name starts as one of that folder's outputs does (up to the
    output's ``<placeholder>``; ``*`` and ``<...>`` in the path are wildcards)."""
    m = re.search(r"\{([^}]*)\}", path)
    if m:
        return [p for alt in m.group(1).split(",") for p in check_run_path(path[: m.start()] + alt + path[m.end():], outputs)]
    parts = path.removeprefix("RUN/").rstrip("/").split("/")
    folder, name = (".", parts[0]) if len(parts) == 1 and parts[0] not in outputs else (parts[0], parts[1] if len(parts) > 1 else "")
    if folder.startswith("<"):
        return []  # RUN/<stage>/...: any stage's
    if folder not in outputs:
        return [f"{path}: no stage writes RUN/{folder}"]
    shown, wild = re.match(r"([^*<{]*)(.?)", name).groups()
    if not shown and (wild or not name):
        return []
    for out in outputs[folder]:
        known, placeholder = re.match(r"([^<]*)(<?)", out.split("/")[0]).groups()
        rest = shown.removeprefix(known)
        if shown.startswith(known) and (placeholder or rest == "" or rest[0] in "-./"):
            return []
        if wild and known.startswith(shown):
            return []
    return [f"{path}: RUN/{folder} holds {', '.join(sorted(outputs[folder]))}, not {name!r}"]


def test_check_run_path_sees_drift():
    outputs = run_outputs()
    for path in ("RUN/manifest.json", "RUN/.lock", "RUN/report.html", "RUN/score", "RUN/sample/pool-T0.6-*.parquet",
                 "RUN/sample/pool-*", "RUN/select/{selected,rejected}-T0.6-*.parquet", "RUN/mix/examples",
                 "RUN/train/<stage>/final/README.md", "RUN/train/tb/", "RUN/<stage>/rejects-NNNNN.jsonl",
                 "RUN/eval/results-<model>-*.jsonl", "RUN/sample/rejects"):
        assert check_run_path(path, outputs) == [], path
    for path in ("RUN/scored/pool-T0.6", "RUN/filter/filtered-T0.6-*.parquet", "RUN/mix/example",
                 "RUN/select/{selected,dropped}-T0.6", "RUN/manifest.yaml"):
        assert check_run_path(path, outputs), path


@pytest.mark.parametrize("page", DOCS, ids=_name)
def test_every_run_path_shown_is_one_a_stage_writes(page):
    outputs = run_outputs()
    shown = {p.rstrip(".,") for p in re.findall(r"(?<![\w/])RUN/[\w./<>{},*+-]*", page.read_text(encoding="utf-8"))}
    problems = [p for path in sorted(shown) for p in check_run_path(path, outputs)]
    assert not problems, f"{_name(page)}:\n" + "\n".join(problems)


def test_the_readmes_stage_table_has_every_stage_and_what_it_writes():
    """The README's table of stages: one row per registered stage, in pipeline order, and each output it
    names in the `writes` column is one that stage writes (in its folder: `import` writes `sample`'s)."""
    from dasd import registry

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("| stage | reads | writes"):].split("\n\n")[0].splitlines()[2:]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table]
    assert [r[0] for r in rows] == [s.name for s in registry.STAGES]
    outputs = run_outputs()
    problems = []
    for stage, _, writes, _ in rows:
        folder = registry.get(stage).directory
        for name in re.findall(r"`([^`]+)`", writes):
            problems += check_run_path(f"RUN/{name}" if folder == "." else f"RUN/{folder}/{name}", outputs)
    assert not problems, "\n".join(problems)


# -- config snippets -------------------------------------------------------------------------------


def yaml_blocks(page: Path) -> list[str]:
    return re.findall(r"^```ya?ml\n(.*?)^```", page.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)


@pytest.mark.parametrize("page", [p for p in DOCS if yaml_blocks(p)], ids=_name)
def test_every_yaml_config_snippet_loads(page, tmp_path):
    """A ```yaml block of a page is a run config fragment: it parses and validates as one."""
    from dasd.config import load_config

    for i, block in enumerate(yaml_blocks(page)):
        path = tmp_path / f"block{i}.yaml"
        path.write_text(block, encoding="utf-8")
        load_config(path, [])  # a YAML or config error names the block's file and key


def test_the_standalone_training_config_shown_loads_as_python_m_dasd_train_reads_it(tmp_path):
    """docs/training.md's `train.yaml` for `python -m dasd.train` names its base model and stage data
    files, which that entry point trains on (the shipped run configs' stages train on a run's named
    pools, which exist only inside `dasd train -c CONFIG`)."""
    import yaml

    from dasd.train.__main__ import load_config as load_train_config

    blocks = [b for b in yaml_blocks(ROOT / "docs" / "training.md") if "stages" in (yaml.safe_load(b).get("train") or {})]
    assert blocks
    for i, block in enumerate(blocks):
        path = tmp_path / f"train{i}.yaml"
        path.write_text(block, encoding="utf-8")
        cfg = load_train_config(path)
        assert not cfg.base_model.startswith("toy:") and all(s.data.endswith(".jsonl") for s in cfg.stages)


# -- Python snippets -------------------------------------------------------------------------------

# Modules a page's example creates itself.
EXAMPLE_MODULES = {"dasd.rules.dedup": "docs/design.md's worked example of adding a stage"}


def python_blocks(page: Path) -> list[str]:
    blocks = re.finditer(r"^( *)```python\n(.*?)^\1```", page.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)
    return ["\n".join(line[len(m.group(1)):] for line in m.group(2).splitlines()) for m in blocks]


@pytest.mark.parametrize("page", [p for p in DOCS if python_blocks(p)], ids=_name)
def test_every_python_snippet_parses_and_imports_what_exists(page):
    import ast
    import importlib

    problems = []
    for block in python_blocks(page):
        tree = ast.parse(block)  # a SyntaxError names the line
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dasd"):
                if node.module in EXAMPLE_MODULES:
                    continue
                module = importlib.import_module(node.module)
                problems += [f"from {node.module} import {a.name}" for a in node.names if not hasattr(module, a.name)]
    assert not problems, f"{_name(page)}: names that do not exist: {problems}"


def test_the_engines_page_example_runs_on_the_shipped_toy_teacher(monkeypatch):
    """docs/engines.md's first example as it is written (the shipped toy teacher, from the repository
    root): four samples, then the first one scored on its own ids gives its sampling log-probs back
    (the raw log-prob guarantee the page states)."""
    import numpy as np

    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    exec(python_blocks(ROOT / "docs" / "engines.md")[0], namespace)  # noqa: S102 - the page's own example
    gens, res = namespace["gens"], namespace["res"]
    assert len(gens) == 1 and [g.index for g in gens[0]] == [0, 1, 2, 3]
    assert len(res.logprobs) == len(gens[0][0].token_ids) > 0
    np.testing.assert_allclose(res.logprobs, gens[0][0].logprobs, atol=1e-4)


def test_the_design_pages_scored_sample_names_every_field_of_a_sentence_row():
    """docs/design.md's record table lists the fields of a scored sample's sentence rows: those
    `rules.das.sentence_table` gives (it once left out `delta` and the per-character `lpc_*`)."""
    from dasd.rules.das import sentence_table

    text = "One. Two."
    rows = sentence_table(text, [(0, 4), (4, 9)], [-0.1, -0.2], [(0, 4), (4, 9)], [-0.3, -0.4])
    row = (ROOT / "docs" / "design.md").read_text(encoding="utf-8").split("\n| scored sample |")[1].split("\n")[0]
    listed = set(re.findall(r"`(\w+)`", row.split("`sentences` (")[1].split(")")[0]))
    assert listed == set(rows[0]), f"docs/design.md lists {sorted(listed)}, a sentence row has {sorted(rows[0])}"


# -- hand-written tables of a section's fields ----------------------------------------------------

# Default cells of those tables that say in words what the default is, with what the code has.
DESCRIBED_DEFAULTS = {
    "(required)": "no default (EngineConfig.model), or required once kind is openai (openai.base_urls)",
    "`model`": "EngineConfig.tokenizer None: the model's own tokenizer",
    "model's `max_position_embeddings`": "EngineConfig.max_model_len None: the model's context",
    "filters' defaults": "MixConfig.repetition: a RepetitionConfig with its defaults",
}


def config_models() -> list[type[BaseModel]]:
    """Every config model reachable from RunConfig (its sections and their nested models)."""
    seen: list[type[BaseModel]] = []
    stack: list[typing.Any] = [RunConfig]
    while stack:
        model = stack.pop()
        if model in seen:
            continue
        seen.append(model)
        stack += [m for f in model.model_fields.values() if (m := nested_model(f.annotation)) is not None]
    return seen


def field_tables(page: Path) -> list[list[tuple[str, str]]]:
    """The ``| field | default | ...`` tables of a page, as ``[(field, default cell)]``: a row naming
    several fields (`` `cut_low`, `cut_high` | 0.5, 1.0 ``) gives one pair a field."""
    tables = []
    text = page.read_text(encoding="utf-8")
    for m in re.finditer(r"^\| field \| default \|.*\n\|[-| ]+\|\n((?:\|.*\n)+)", text, re.MULTILINE):
        pairs = []
        for line in m.group(1).splitlines():
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
            names = re.findall(r"`([^`]+)`", cells[0])
            defaults = [d.strip() for d in cells[1].split(", ")] if len(names) > 1 else [cells[1]]
            pairs += list(zip(names, defaults))
        tables.append(pairs)
    return tables


def check_field_table(pairs: list[tuple[str, str]]) -> list[str]:
    """What is wrong with one table: its fields are those of one config model, and each default cell
    (its first code span, else its first word; ``none`` is None) is that field's default."""
    import yaml

    names = {n for n, _ in pairs}
    owners = [m for m in config_models() if names <= set(m.model_fields)]
    if not owners:
        return [f"no config model has the fields {sorted(names)}"]
    by_model = []
    for model in owners:  # the table is right when it is one of them (a few fields can fit several)
        problems = []
        for name, cell in pairs:
            if cell in DESCRIBED_DEFAULTS:
                continue
            code = re.findall(r"`([^`]*)`", cell)
            shown = yaml.safe_load(code[0] if code else cell.split()[0])
            shown = None if shown in ("none", "None") else shown
            default = model.model_fields[name].get_default(call_default_factory=True)
            if not (shown == default or (isinstance(shown, float) and isinstance(default, float)
                                         and abs(shown - default) <= 5e-4 * abs(default))):
                problems.append(f"{model.__name__}.{name}: the table says {cell!r}, the default is {default!r}")
        if not problems:
            return []
        by_model.append(problems)
    return by_model[0]


def test_check_field_table_sees_drift():
    assert check_field_table([("tau", "`0.693` (ln 2)"), ("unit", "`token`"), ("penalty", "1.0")]) == []
    assert check_field_table([("cut_low", "0.5"), ("after_think", "cut_in_thinking"), ("require_correct", "true")]) == []
    assert check_field_table([("tau", "0.5")])
    assert check_field_table([("n_questions", "500")])
    assert check_field_table([("tau", "0.693"), ("no_such_field", "1")])


@pytest.mark.parametrize("page", [p for p in DOCS if field_tables(p)], ids=_name)
def test_every_field_table_shows_the_fields_defaults(page):
    """A page's own ``| field | default | meaning |`` table of a config section (docs/das.md's
    `DASConfig`, docs/mixed-policy.md's `MixConfig`, ...) names that section's fields and their defaults."""
    problems = [p for pairs in field_tables(page) for p in check_field_table(pairs)]
    assert not problems, f"{_name(page)}:\n" + "\n".join(problems)


# -- figures quoted from the shipped models and the published results ---------------------------


def shows(cell: str, value: float) -> bool:
    """Whether a number as a page prints it (``0.90``, ``77.1``, ``+1.8``) is ``value`` rounded to the
    digits it shows."""
    digits = len(cell.split(".")[1]) if "." in cell else 0
    return abs(float(cell) - value) <= 0.5 * 10 ** -digits + 1e-9


def numbers(cell: str) -> list[str]:
    return re.findall(r"[-+]?\d+(?:\.\d+)?", cell)


def test_shows():
    assert shows("0.90", 0.9032) and shows("77.1", 77.0833) and shows("+1.8", 1.79) and shows("0", 0.0)
    assert not shows("0.90", 0.9064) and not shows("77.1", 77.2)


def table_rows(text: str, header: str) -> list[list[str]]:
    """The cells of the rows of the table whose header line starts with ``header``."""
    block = text[text.index(header):].split("\n\n")[0].splitlines()[2:]
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in block]


def test_the_toy_world_page_shows_the_shipped_models_measurements():
    """docs/toy-world.md's table of the shipped chain-world models, its `[checks]` block and its
    column-world figures are those of the manifests the models ship with: a rebuild that changes
    them makes the page say so (das.md and filters.md once quoted a world the models had left)."""
    import json

    from dasd.toy.checks import format_checks

    page = (ROOT / "docs" / "toy-world.md").read_text(encoding="utf-8")
    chain = json.loads((ROOT / "src" / "dasd" / "data" / "toy" / "manifest.json").read_text(encoding="utf-8"))
    wrong = [line for line in format_checks(chain["checks"]) if line not in page]
    for model, temp, acc, by_length, styles in table_rows(page, "| model | T | accuracy |"):
        ev = chain["models"][model]["eval"][f"T={temp}"]
        expected = [ev["accuracy"], *(ev["accuracy_by_chain_length"][str(n)] for n in range(2, 8)),
                    *(ev["style_shares"][s] for s in ("steps", "compact", "check", "none"))]
        shown = [acc, *by_length.split(" / "), *styles.split(" / ")]
        if len(shown) != len(expected) or not all(map(shows, shown, expected)):
            wrong.append(f"{model} T={temp}: the page says {shown}, the manifest {expected}")
    column = json.loads((ROOT / "src" / "dasd" / "data" / "toy" / "column" / "manifest.json").read_text(encoding="utf-8"))
    said = page[page.index("Measured after the build (`src/dasd/data/toy/column/manifest.json`"):].split("\n\n")[0]
    m = re.search(r"teacher ([\d.]+)% / ([\d.]+)% at T=0.6 / 1.0, writing columns in ([\d.]+)% / ([\d.]+)%.*?"
                  r"student base ([\d.]+)% / ([\d.]+)%", said, re.DOTALL)
    ev = {who: column["models"][who]["eval"] for who in ("teacher", "student")}
    expected = [100 * ev["teacher"]["T=0.6"]["accuracy"], 100 * ev["teacher"]["T=1.0"]["accuracy"],
                100 * ev["teacher"]["T=0.6"]["column_share"], 100 * ev["teacher"]["T=1.0"]["column_share"],
                100 * ev["student"]["T=0.6"]["accuracy"], 100 * ev["student"]["T=1.0"]["accuracy"]]
    if not m or not all(map(shows, m.groups(), expected)):
        wrong.append(f"the column world's models: the page says {m and m.groups()}, the manifest {expected}")
    assert not wrong, "\n".join(wrong)


# The arms of the README's and docs/toy-world.md's ablation tables, by the label those tables give them.
ARM_LABELS = {
    "student base (untrained)": ["student"], "student base": ["student"], "teacher": ["teacher"],
    "RS, T=0.6": ["rs_low"], "RS, T=1.0": ["rs_high"], "RS, 0.6 -> 1.0": ["rs_low_high"],
    "RS, 1.0 -> 1.0 (control: two stages)": ["rs_high_high"],
    "DAS, T=0.6": ["das_low"], "DAS, T=1.0": ["das_high"], "DAS, 0.6 -> 1.0": ["das_low_high"],
    "DAS, 1.0 -> 0.6 (control: the same examples, the other order)": ["das_high_low"],
    "+ mixed policy, prefix unmasked / masked": ["mixed_unmasked", "mixed_masked"],
    "+ mixed policy with replay, unmasked / masked": ["mixed_replay", "mixed_masked_replay"],
    "+ mixed policy, prefix masked": ["mixed_masked"], "+ mixed policy, prefix unmasked": ["mixed_unmasked"],
}

# The README's contrasts of the paper's directions, by label: (a, b).
CONTRAST_LABELS = {
    "RS T=1.0 - RS T=0.6": ("rs_high", "rs_low"), "RS 0.6->1.0 - RS T=1.0": ("rs_low_high", "rs_high"),
    "control: RS 0.6->1.0 - RS 1.0->1.0 (two stages both)": ("rs_low_high", "rs_high_high"),
    "DAS - RS at T=0.6": ("das_low", "rs_low"), "DAS - RS at T=1.0": ("das_high", "rs_high"),
    "mixed policy: unmasked - masked prefix": ("mixed_unmasked", "mixed_masked"),
    "the same with replay": ("mixed_replay", "mixed_masked_replay"),
}


def check_arm_cell(cell: str, arms: list[str], aggregate: dict, key: str, scale: float) -> bool:
    """An arm table's cell: ``mean [lo, hi]`` of one arm, or ``mean / mean`` of several."""
    shown = numbers(cell)
    if len(arms) == 1 and len(shown) == 3 and key == "accuracy":
        return all(map(shows, shown, [scale * x for x in aggregate[arms[0]][key]]))
    return len(shown) == len(arms) and all(shows(s, scale * aggregate[a][key][0]) for s, a in zip(shown, arms))


@pytest.mark.parametrize("page, header, results, columns", [
    ("README.md", "| arm | toy accuracy % |", "ablation-paper.json", ("accuracy", "kl")),
    ("docs/toy-world.md", "| arm | accuracy % | paper", "column-world-ablation.json", ("accuracy",)),
])
def test_the_ablation_tables_shown_are_the_published_results(page, header, results, columns):
    """The arm tables the README (chain world) and docs/toy-world.md (column world) show are the
    results files' numbers (accuracy in points with its interval, KL in nats per response)."""
    import json

    aggregate = json.loads((ROOT / "benchmarks" / "results" / results).read_text(encoding="utf-8"))["aggregate"]
    wrong = []
    for row in table_rows((ROOT / page).read_text(encoding="utf-8"), header):
        arms = ARM_LABELS[row[0]]
        for key, cell in zip(columns, row[1:]):
            if not check_arm_cell(cell, arms, aggregate, key, 100 if key == "accuracy" else 1):
                wrong.append(f"{row[0]} ({'/'.join(arms)}), {key}: the page says {cell!r}")
    assert not wrong, f"{page} vs benchmarks/results/{results}:\n" + "\n".join(wrong)


def test_the_readmes_contrasts_are_the_published_results():
    import json

    paired = json.loads((ROOT / "benchmarks" / "results" / "ablation-paper.json").read_text(encoding="utf-8"))["paired"]
    by_pair = {(p["a"], p["b"]): [100 * x for x in p["accuracy"]] for p in paired}
    wrong = []
    for row in table_rows((ROOT / "README.md").read_text(encoding="utf-8"), "| paper's table | contrast |"):
        shown, expected = numbers(row[2]), by_pair[CONTRAST_LABELS[row[1]]]
        if len(shown) != 3 or not all(map(shows, shown, expected)):
            wrong.append(f"{row[1]}: the README says {row[2]!r}, the results {[round(x, 2) for x in expected]}")
    assert not wrong, "\n".join(wrong)


# -- config descriptions ---------------------------------------------------------------------------

# Leaf keys whose description is still missing, each with where it is to be added. Empty this set, do
# not grow it: docs/config.md shows the description as the key's only documentation.
UNDESCRIBED: dict[str, str] = {}


def config_leaves(model: type[BaseModel] = RunConfig, prefix: str = "") -> dict[str, str]:
    """``{dotted key: description}`` for every leaf key of RunConfig (sections are described by their docstring)."""
    out = {}
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        nested = nested_model(field.annotation)
        if nested is not None and nested is not model:
            out |= config_leaves(nested, key + ".")
        if nested is None or (field.description or "").strip():
            out[key] = (field.description or "").strip()
    return out


def test_every_default_docs_config_md_shows_is_what_a_config_without_the_key_gets():
    """A key's default in docs/config.md is its value in a run config that leaves the key out (what
    `dasd config show` prints), not only the default of its field: a config without `eval.protocol`
    evaluates with the demo's protocol (T 0.6, n 4, 512 tokens, not the field's 1.0, 1, 4096), and
    `teacher.model`, `train.base_model`, `train.stages` are filled in, not required. Keys under a
    section that is off by default (`teacher.ray`, `train.push_to_hub`) show their field's default."""
    import ast

    from dasd.config import dump_config

    run = dump_config(RunConfig())
    rows = re.findall(r"^\| `([^`]+)` \| `.*?` \| `(.*?)` \| ", (ROOT / "docs" / "config.md").read_text(encoding="utf-8"),
                      re.MULTILINE)
    assert len(rows) > 80
    wrong = []
    for key, cell in rows:
        value: typing.Any = run
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        parent = run
        for part in key.split(".")[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if parent is None:  # an optional section, off by default
            continue
        shown = cell.replace("\\|", "|")
        if shown == "required" or ast.literal_eval(shown) != value:
            wrong.append(f"{key}: docs/config.md says {shown}, a config without it gets {value!r}")
    assert not wrong, "\n".join(wrong)


def test_every_config_key_has_a_description():
    leaves = config_leaves()
    assert len(leaves) > 80
    missing = {k for k, d in leaves.items() if not d}
    assert missing - set(UNDESCRIBED) == set(), "describe these keys (Field(description=...))"
    assert set(UNDESCRIBED) - missing == set(), "described now: remove them from UNDESCRIBED"


# -- dotted names: config keys and dasd's own names -------------------------------------------------

# Dotted names a page shows that start with a config section or a dasd module but are neither a
# config key nor a dasd name, each with what it is.
NOT_NAMES = {
    "das.frac_teacher": "a field of a scored sample's DAS summary (docs/ablation.md)",
    "stages.mix.counts": "a key of manifest.json (docs/mixed-policy.md)",
    "stages.import.pools": "a key of manifest.json (docs/pipeline.md)",
    "data.toy.n_test": "a config key that was removed, named as such (docs/testing.md)",
    "train.tensorboard": "the config key replaced by train.report_to, named as such (docs/training.md)",
}

# Where a short module name (``checkpoint.read_done``, ``sandbox.isolation()``) is looked up; not in
# dasd.engines, whose modules share their names with the libraries they wrap (``vllm.LLM``).
PACKAGES = ("dasd", "dasd.train", "dasd.grading")
DOTTED_RE = re.compile(r"[a-z_][a-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+(?:\(\))?")
FILE_SUFFIX_RE = re.compile(r"\.(?:py|jsonl?|ya?ml|md|npy|bin|pt|txt|html|pkl|csv|parquet)$")


def dasd_module(head: str) -> str | None:
    """The dasd module a name's first part names (``runs`` -> ``dasd.runs``), or None."""
    import importlib.util

    if head == "dasd":
        return "dasd"
    if head in sys.stdlib_module_names:  # math.fsum is Python's, not dasd.grading.math
        return None
    for package in PACKAGES:
        if importlib.util.find_spec(f"{package}.{head}") is not None:
            return f"{package}.{head}"
    return None


def dasd_name_exists(module: str, rest: list[str]) -> bool:
    """Whether ``module`` then the attributes (or submodules) ``rest`` resolve."""
    import importlib

    obj = importlib.import_module(module)
    for part in rest:
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        try:
            obj = importlib.import_module(f"{obj.__name__}.{part}")
        except (ImportError, AttributeError):
            return False
    return True


def check_dotted(name: str) -> str | None:
    """What is wrong with one dotted name shown in inline code (None when nothing, or not ours)."""
    if name in NOT_NAMES or FILE_SUFFIX_RE.search(name):
        return None
    parts = name.removesuffix("()").split(".")
    sections = {f.alias or n for n, f in RunConfig.model_fields.items()}
    module = dasd_module(parts[0])
    if parts[0] not in sections and module is None:
        return None  # torch.save, engine.score, ...: not a name of dasd's
    if parts[0] in sections and config_key_exists(".".join(parts)):
        return None
    if module is not None and dasd_name_exists(module, parts[1:]):
        return None
    return f"{name}: " + ("not a config key" if module is None else "not a config key or dasd name" if parts[0] in sections
                         else f"no such name in {module}")


def test_check_dotted_sees_drift():
    assert check_dotted("train.lr") is None
    assert check_dotted("mix.replay.ratio") is None
    assert check_dotted("runs.model_version") is None
    assert check_dotted("dasd.rules.das.retype") is None
    assert check_dotted("checkpoint.read_done") is None
    assert check_dotted("recipes.paper_stages()") is None
    assert check_dotted("torch.save") is None and check_dotted("runs.py") is None
    assert check_dotted("train.lrate") and check_dotted("select.methd")
    assert check_dotted("runs.no_such_helper") and check_dotted("dasd.rules.das.no_such")


@pytest.mark.parametrize("page", DOCS, ids=_name)
def test_every_config_key_and_dasd_name_shown_exists(page):
    _, prose = _split(page.read_text(encoding="utf-8"))
    shown = sorted({s for s in _inline_code(prose) if DOTTED_RE.fullmatch(s)})
    problems = [p for p in map(check_dotted, shown) if p]
    assert not problems, f"{_name(page)}:\n" + "\n".join(problems)


def test_every_section_named_is_a_config_section():
    """A page's "the `X` section" (`eval.protocol`, `mix`, an engine's `ray`) names a config model:
    a key of RunConfig, or a field that holds a model in one of its sections."""
    sections = {f.alias or n for m in config_models() for n, f in m.model_fields.items() if nested_model(f.annotation)}
    problems = []
    for page in DOCS:
        _, prose = _split(page.read_text(encoding="utf-8"))
        for name in re.findall(r"`([a-z_][\w.]*)` section", "\n".join(prose)):
            if not (config_key_exists(name) and nested_model(_annotation(name))) and name not in sections:
                problems.append(f"{_name(page)}: `{name}` section: no such config section")
    assert not problems, "\n".join(problems)


def _annotation(dotted: str):
    """The annotation of the config key ``dotted`` (which exists)."""
    model: typing.Any = RunConfig
    ann = None
    for part in dotted.split("."):
        fields = {(f.alias or n): f for n, f in model.model_fields.items()}
        ann = fields[part].annotation
        model = nested_model(ann) or ann
    return ann


# -- tests named -----------------------------------------------------------------------------------


def test_names() -> set[str]:
    """Every test function and test file name (without .py) under tests/."""
    names = {p.stem for p in (ROOT / "tests").rglob("test_*.py")}
    for p in (ROOT / "tests").rglob("*.py"):
        names |= set(re.findall(r"^\s*(?:async\s+)?def (test_\w+)", p.read_text(encoding="utf-8"), re.MULTILINE))
    return names


test_names.__test__ = False  # a helper, not a test


def missing_tests(lines: list[str], names: set[str]) -> set[str]:
    """The ``test_...`` names in ``lines`` that are neither in ``names`` nor, for ``test_x_...``, a prefix of one."""
    missing = set()
    for line in lines:
        for m in re.finditer(r"(?<![\w/])(test_\w+?)(\.\.\.|\.py\b|\b)", line):
            name, tail = m.groups()
            if tail == "...":
                if not any(n.startswith(name) for n in names):
                    missing.add(name + "...")
            elif name not in names:
                missing.add(name)
    return missing


def test_missing_tests_sees_drift():
    names = test_names()
    assert missing_tests(["`tests/core/test_config.py`", "`test_score_stores_...`", "test_github_slug"], names) == set()
    assert missing_tests(["`test_no_such_thing` and `test_nowhere_...`", "`test_gone.py`"], names) == \
        {"test_no_such_thing", "test_nowhere_...", "test_gone"}


@pytest.mark.parametrize("page", DOCS, ids=_name)
def test_every_test_named_exists(page):
    """A ``test_...`` name a page cites is a test function or a test file (``test_x_...``: a prefix of one)."""
    code, prose = _split(page.read_text(encoding="utf-8"))
    missing = missing_tests(code + _inline_code(prose), test_names())
    assert not missing, f"{_name(page)} names tests that do not exist: {sorted(missing)}"


# -- package layout --------------------------------------------------------------------------------


@pytest.mark.parametrize("page, heading", [("docs/design.md", "## Package layout"), ("README.md", "## Layout")])
def test_the_layout_names_every_module_and_package(page, heading):
    """The layout block of a page names every top-level module (``store.py``) and package (``rules/``)."""
    text = (ROOT / page).read_text(encoding="utf-8")
    block = re.search(r"```\n(src/dasd/.*?)```", text[text.index(heading):], re.DOTALL).group(1)
    src = ROOT / "src" / "dasd"
    modules = {p.name for p in src.glob("*.py") if not p.name.startswith("__")}
    packages = {p.name + "/" for p in src.iterdir() if p.is_dir() and any(p.glob("*.py"))}
    missing = sorted(n for n in modules | packages if not re.search(rf"(?<![\w/]){re.escape(n)}", block))
    assert not missing, f"{page}, {heading!r}: not in the layout: {missing}"
