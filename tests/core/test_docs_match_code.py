"""README.md and docs/*.md against the code they describe: mechanical checks that keep the commonest
kinds of drift from coming back.

- every relative link, and its #anchor, resolves;
- every ``dasd ...`` command shown (code blocks and inline code) names a real verb path of the CLI,
  uses only options that verb declares, and every ``KEY=VALUE`` override names a config key;
- every ``make TARGET`` shown is a Makefile target;
- every repository file named (``tests/...``, ``configs/...``, ``src/dasd/...``, ``benchmarks/*.py``)
  exists.
- every ```yaml block is a config fragment that loads (``dasd.config.load_config``).
- every ```python block parses, and what it imports from dasd exists.

(docs/config.md against the config models: tests/core/test_config.py.)
"""

from __future__ import annotations

import re
import shlex
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


# -- make targets and files ------------------------------------------------------------------------


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return {m.group(1) for m in re.finditer(r"^([A-Za-z][\w-]*):", text, re.MULTILINE)}


@pytest.mark.parametrize("page", DOCS, ids=_name)
def test_every_make_target_shown_exists(page):
    code, prose = _split(page.read_text(encoding="utf-8"))
    shown = {m.group(1) for line in code + _inline_code(prose) for m in re.finditer(r"(?:^|\s)make\s+([a-z][\w-]*)", line)}
    assert shown <= make_targets(), f"{_name(page)}: no Makefile target {sorted(shown - make_targets())}"


FILE_RE = re.compile(r"(?<![\w./-])((?:tests|configs|src/dasd)/[\w./*{},-]*[\w*}]|benchmarks/[\w-]+\.py)")


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


def test_every_config_key_has_a_description():
    leaves = config_leaves()
    assert len(leaves) > 80
    missing = {k for k, d in leaves.items() if not d}
    assert missing - set(UNDESCRIBED) == set(), "describe these keys (Field(description=...))"
    assert set(UNDESCRIBED) - missing == set(), "described now: remove them from UNDESCRIBED"
