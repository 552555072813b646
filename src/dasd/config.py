"""Run configuration: one YAML file, validated at load into pydantic models, plus dotted overrides.

    dasd sample --config configs/demo.yaml sample.k=2 teacher.batch_size=8

An unknown key or a bad value is a ``ConfigError`` naming the key, the file and what is allowed;
the CLI prints it as one line and exits with code 2. Each section is documented field by field in
the module that uses it; ``docs/config.md`` lists them.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from dasd.configbase import Seed, StrictModel, dump_config, field_marks  # noqa: F401 (re-exported)
from dasd.engines.config import EngineConfig
from dasd.errors import ConfigError
from dasd.grading.evaluate import EvalConfig
from dasd.prompts import DEFAULT_SYSTEM_PROMPT, DataConfig  # noqa: F401 (re-exported)
from dasd.rules.analysis import AnalyzeConfig
from dasd.rules.das import DASConfig, ScoreConfig, SelectConfig
from dasd.rules.importing import ImportConfig
from dasd.rules.mixing import MixConfig
from dasd.rules.sampling import SampleConfig, pool_name
from dasd.text.filters import FilterConfig
from dasd.train.config import TrainConfig
from dasd.train.recipes import paper_stages


class RunConfig(StrictModel):
    """A whole pipeline run. Each section is defined next to the rules it configures (see the imports)."""

    run_dir: str = Field("runs/default", min_length=1, pattern=r"\S", description="where every stage writes (a leading ~ is the home folder)")
    seed: Seed = Field(0, description="global seed")
    teacher: EngineConfig = Field(default_factory=lambda: EngineConfig(model="toy:teacher"))
    student: EngineConfig = Field(default_factory=lambda: EngineConfig(model="toy:student"))
    data: DataConfig = Field(default_factory=DataConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)
    import_: ImportConfig = Field(default_factory=ImportConfig, alias="import")
    filter: FilterConfig = Field(default_factory=FilterConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    das: DASConfig = Field(default_factory=DASConfig)
    select: SelectConfig = Field(default_factory=SelectConfig)
    mix: MixConfig = Field(default_factory=MixConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    analyze: AnalyzeConfig = Field(default_factory=AnalyzeConfig)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig.model_validate(_default_train({}, "toy:student")))

    @field_validator("run_dir")
    @classmethod
    def _home(cls, v: str) -> str:
        """``~/runs/x`` is under the home folder, as in a shell: taken literally, every stage would
        write into a folder named ``~`` of the working directory (and pyarrow, which expands ``~``,
        would then find no shards where they were written)."""
        return os.path.expanduser(v)

    @model_validator(mode="before")
    @classmethod
    def _default_models(cls, data):
        """An empty section (``sample:`` with every key commented out: null) means its defaults; a
        teacher/student section without `model` means the toy world's model."""
        if isinstance(data, dict):
            data = {k: {} if v is None and k in _SECTIONS else v for k, v in data.items()}
            for role in ("teacher", "student"):
                if isinstance(data.get(role), dict) and "model" not in data[role]:
                    data = {**data, role: {**data[role], "model": f"toy:{role}"}}
            train = data.get("train") or {}
            if isinstance(train, dict):
                student = data["student"].get("model") if isinstance(data.get("student"), dict) else None
                data = {**data, "train": _default_train(train, student or "toy:student")}
                data = _default_eval_models(data)
        return data


    @model_validator(mode="after")
    def _name_engines(self) -> RunConfig:
        """The teacher's and student's engine settings know their section, so an engine's error names
        the key a user set (``student.tokenizer``, not ``engine.tokenizer``)."""
        self.teacher.named("teacher")
        self.student.named("student")
        return self


_SECTIONS = {f.alias or name for name, f in RunConfig.model_fields.items()
             if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)}
"""The keys of RunConfig's sections (``import``, not ``import_``)."""


def did_you_mean(word: str, options: list[str]) -> str:
    """``"; did you mean 'X'?"`` for the closest of ``options`` to a misspelt ``word``, else ``""``."""
    close = difflib.get_close_matches(word, options, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def unknown_eval_label(cfg: RunConfig) -> str | None:
    """What is wrong with eval.models, or None. A bare label (no path separator) must be teacher,
    student, a training stage or an existing directory, so a misspelt stage name is refused at load,
    not after the models listed before it were evaluated; a label with a path separator is a model
    directory, looked up when it is evaluated."""
    known = ["teacher", "student", *(s.name for s in cfg.train.stages)]
    for label in cfg.eval.models:
        if label in known or "/" in label or os.sep in label or label.startswith("toy:") or Path(label).is_dir():
            continue
        return (f"{label!r} is not teacher, student, a training stage ({', '.join(known[2:])}) or a model "
                f"directory{did_you_mean(label, known)}")
    return None


def unknown_replay_source(cfg: RunConfig) -> str | None:
    """What is wrong with mix.replay.source, or None: it must name a selected pool of this run (a
    misspelt one left stage 3 without its mixed+replay data, an optional stage then skipped)."""
    pools = ["high", "low", *(pool_name(t) for t in cfg.sample.temperatures)]
    source = cfg.mix.replay.source
    if source in pools:
        return None
    return f"{source!r} is not a selected pool of this run ({', '.join(pools)}){did_you_mean(source, pools)}"


def toy_world_mismatch(cfg: RunConfig) -> tuple[tuple[str, ...], str] | None:
    """``(where, what)`` when the built-in toy models and the toy prompts or benchmarks of a config
    are from different toy worlds (e.g. the column world's models on chain-world problems, which they
    never learnt to read), else None."""
    from dasd.toy import TOY_MODELS

    models = {role: m.model for role, m in (("teacher", cfg.teacher), ("student", cfg.student)) if m.model in TOY_MODELS}
    worlds = {TOY_MODELS[m][0] for m in models.values()}
    if len(worlds) > 1:
        return ("student", "model"), (f"{models['student']!r} is another toy world's model than the teacher's "
                                      f"{models['teacher']!r}")
    if not worlds:
        return None
    (world,) = worlds
    if cfg.data.prompts == "toy" and cfg.data.toy.world != world:
        return ("data", "toy", "world"), (f"{cfg.data.toy.world!r}, but the models ({', '.join(models.values())}) are "
                                          f"the {world} world's; set data.toy.world: {world}")
    for i, b in enumerate(cfg.eval.benchmarks):
        if b.format == "toy" and b.world != world:
            return ("eval", "benchmarks", str(i), "world"), (
                f"benchmark {b.name!r} is the {b.world} world's, but the models are the {world} world's; set its "
                f"world: {world}")
    return None


def _default_eval_models(data: dict) -> dict:
    """An eval section without `models` evaluates the student base, every training stage and the teacher."""
    ev = data.get("eval") if data.get("eval") is not None else {}
    stages = data["train"].get("stages")
    if not isinstance(ev, dict) or "models" in ev or not isinstance(stages, list):
        return data
    names = [s.get("name") if isinstance(s, dict) else getattr(s, "name", None) for s in stages]
    if not all(isinstance(n, str) for n in names):
        return data  # malformed stages: their own validation says so
    return {**data, "eval": {**ev, "models": list(dict.fromkeys(["student", *names, "teacher"]))}}


def _default_train(section: dict, student_model: str) -> dict:
    """A train section without `base_model` trains the student; without `stages`, the paper's schedule."""
    out = dict(section)
    out.setdefault("base_model", student_model)
    if "stages" not in out:
        out["stages"] = [s.model_dump() for s in paper_stages(low="low", high="high", mixed="mixed+replay")]
    return out


# ---------------------------------------------------------------------------------------------
# Loading


def set_dotted(tree: dict, dotted: str, value: Any, source: str) -> None:
    """Set ``a.b.c`` of ``tree`` to ``value``; a number is an item of a list the tree holds
    (``eval.benchmarks.0.limit``), as error messages name it."""
    keys = dotted.split(".")
    if not all(keys):
        raise ConfigError(f"{source}: bad override key {dotted!r}")
    node: Any = tree
    for i, k in enumerate(keys):
        here = ".".join(keys[: i + 1])
        if isinstance(node, list):
            if not k.isdigit() or int(k) >= len(node):
                raise ConfigError(f"{source}: cannot set {dotted!r}: {'.'.join(keys[:i])} is a list of {len(node)} "
                                  f"item(s), numbered from 0")
            k = int(k)
        if i == len(keys) - 1:
            node[k] = value
            return
        nxt = node[k] if isinstance(node, list) else node.get(k)
        if nxt is None and keys[i + 1].isdigit():
            raise ConfigError(f"{source}: cannot set {dotted!r}: {here} is not given in the config file, so it has no "
                              f"item {keys[i + 1]} to change; give the whole list ({here}=[...]; `dasd config show` "
                              "prints its default)")
        if nxt is None:
            nxt = node[k] = {}
        elif not isinstance(nxt, (dict, list)):
            raise ConfigError(f"{source}: cannot set {dotted!r}: {here} is not a section")
        node = nxt


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    out = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. sample.k=2")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({e.problem})") from e
        out.append((key.strip(), value))
    return out


class _Loader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (YAML says keys
    are unique; PyYAML would silently keep the last one, so half of a section could vanish)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden key by key
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    line = first.setdefault(key, key_node.start_mark.line)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if line != key_node.start_mark.line:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} given twice (first on line {line + 1})", key_node.start_mark)
        return super().construct_mapping(node, deep)


def _key_lines(node, path: tuple[str, ...] = (), out: dict | None = None) -> dict[tuple[str, ...], int]:
    """The 1-based line of each key path (and list item) of a composed YAML document."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key_node, value in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                sub = (*path, str(key_node.value))
                out.setdefault(sub, key_node.start_mark.line + 1)
                _key_lines(value, sub, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            sub = (*path, str(i))
            out.setdefault(sub, item.start_mark.line + 1)
            _key_lines(item, sub, out)
    return out


def read_yaml(path: str | Path, lines: dict | None = None) -> dict:
    """The top-level mapping of a YAML config file; ``ConfigError`` (file, line) when it cannot be one.

    ``lines``, when given, receives the line of each key path (``_key_lines``) for error messages.
    """
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{p}: is a directory, not a YAML config file (to use a run directory, give "
                          f"run_dir={p} as an override)")
    if not p.is_file():
        hint = (f" (an override needs '=': {p}=VALUE)" if p.suffix not in (".yaml", ".yml") and re.fullmatch(r"[A-Za-z_]\w*(\.\w+)+", str(p))
                else "")
        raise ConfigError(f"{p}: config file not found{hint}")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not a YAML text file: not valid UTF-8 (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the config file ({e.strerror})") from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        raise ConfigError(f"{where}: invalid YAML ({getattr(e, 'problem', None) or e})") from None
    finally:
        loader.dispose()
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping of sections, got {type(data).__name__}")
    if lines is not None:
        lines.update(_key_lines(node))
    return data


def load_config(
    path: str | Path | None, overrides: list[str] | None = None, model: type[BaseModel] = RunConfig
) -> Any:
    """Read YAML (or start from defaults), apply ``KEY=VALUE`` overrides, validate.

    Each error names where the bad value came from: ``FILE:LINE`` of its key in the YAML, or the
    ``KEY=VALUE`` override that set it.
    """
    source = str(path) if path else "<defaults>"
    lines: dict[tuple[str, ...], int] = {}
    tree = read_yaml(path, lines) if path else {}
    origins: dict[tuple[str, ...], str] = {}
    for (key, value), item in zip(parse_overrides(overrides or []), overrides or []):
        set_dotted(tree, key, value, f"override {item}")
        origins[tuple(key.split("."))] = f"override {key}={item.partition('=')[2]}"
    try:
        cfg = model.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, model, source, lines, origins)) from None
    if isinstance(cfg, RunConfig) and (problem := unknown_eval_label(cfg)):
        raise ConfigError(f"{_origin(('eval', 'models'), source, lines, origins)}: eval.models: {problem}")
    if isinstance(cfg, RunConfig) and (problem := unknown_replay_source(cfg)):
        raise ConfigError(f"{_origin(('mix', 'replay', 'source'), source, lines, origins)}: mix.replay.source: {problem}")
    if isinstance(cfg, RunConfig) and (found := toy_world_mismatch(cfg)):
        loc, problem = found
        raise ConfigError(f"{_origin(loc, source, lines, origins)}: {'.'.join(loc)}: {problem}")
    return cfg


def _origin(loc: tuple[str, ...], source: str, lines: dict, origins: dict) -> str:
    """Where the value at ``loc`` came from: the override that set it (or a section holding it);
    else ``FILE:LINE`` of the nearest key the YAML file has, and the overrides of keys inside it
    (a section-wide rule may fail on both); else ``source``."""
    for n in range(len(loc), 0, -1):
        if loc[:n] in origins:
            return origins[loc[:n]]
    line = next((f"{source}:{lines[loc[:n]]}" for n in range(len(loc), 0, -1) if loc[:n] in lines), None)
    below = sorted({o for k, o in origins.items() if k[: len(loc)] == loc})
    return "; ".join(([line] if line else []) + below) or source


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str] | None:
    """The allowed keys of the section at ``loc`` (for 'did you mean' messages)."""
    cur: Any = model
    for part in loc:
        if part.isdigit():  # an item of a list section: ``cur`` is already the item's model
            continue
        if not (isinstance(cur, type) and issubclass(cur, BaseModel)):
            return None
        field = next((f for n, f in cur.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return None
        ann = field.annotation
        cur = next((a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)), ann)
    if isinstance(cur, type) and issubclass(cur, BaseModel):
        return [f.alias or n for n, f in cur.model_fields.items()]
    return None


def _keys_named(name: str, model: type[BaseModel], prefix: str = "") -> list[str]:
    """The dotted keys of ``model``'s sections (not the items of a list) whose last part is ``name``:
    where a key given in the wrong section belongs (``lr`` -> ``train.lr``)."""
    out = []
    for field_name, field in model.model_fields.items():
        key = field.alias or field_name
        if key == name:
            out.append(prefix + key)
        ann = field.annotation
        sub = next((a for a in (ann, *getattr(ann, "__args__", ())) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if sub is not None and "list" not in str(ann):
            out += _keys_named(name, sub, f"{prefix}{key}.")
    return out


# pydantic's prefix of a message raised by a validator (``ValueError``, ``assert``): noise on a config error line
_VALIDATOR_PREFIX = re.compile(r"^(?:Value error|Assertion failed), ")


def format_validation_error(err: ValidationError, model: type[BaseModel], source: str,
                            lines: dict | None = None, origins: dict | None = None) -> str:
    """One line per problem: ``WHERE: key.path: what is wrong (allowed: ...)``, ``WHERE`` being
    ``FILE:LINE`` or the override that set the key (``_origin``). An unknown key is offered the
    closest allowed one, else the keys of that name in other sections (``lr`` -> ``train.lr``)."""
    out = []
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"])
        key = ".".join(loc) or "<top>"
        where = _origin(loc, source, lines or {}, origins or {})
        if e["type"] == "extra_forbidden":
            allowed = _fields_at(model, loc[:-1]) or []
            hint = did_you_mean(loc[-1], allowed)
            if not hint and (elsewhere := [k for k in _keys_named(loc[-1], model) if k != key]):
                hint = f"; did you mean {' or '.join(repr(k) for k in elsewhere[:3])}?"
            out.append(f"{where}: unknown key '{key}' (allowed here: {', '.join(allowed)}){hint}")
        elif e["type"] == "too_short" and e.get("input") == []:  # the stage (or push) would do nothing
            out.append(f"{where}: {key}: empty, so nothing would be done; give at least one item, or leave the key "
                       "out for its default (`dasd config show` prints it)")
        else:
            got = e.get("input")
            got_s = "" if isinstance(got, dict) else f" (got {got!r})"
            out.append(f"{where}: {key}: {_VALIDATOR_PREFIX.sub('', e['msg'])}{got_s}")
    return "\n".join(out)


def _cell(text: str) -> str:
    """``text`` for a Markdown table cell: a ``|`` splits the cell (in a code span too, on GitHub)."""
    return text.replace("|", "\\|")


def _run_defaults(names: tuple[str, ...], keys: tuple[str, ...]) -> tuple[Any, Any] | None:
    """The value of a key (its field names ``names``, its config spelling ``keys``) in a run config that
    leaves the key out, and in one that gives the key's section without it; None under a section that is
    off by default (``teacher.ray``). They differ from the field's default where a section's default is
    not its keys' (``eval.protocol``: the demo's) or the run config fills a key in (``teacher.model``)."""
    def section(cfg: Any) -> Any:
        for n in names[:-1]:
            cfg = getattr(cfg, n)
            if cfg is None:
                return None
        return cfg

    omitted = section(RunConfig())
    if omitted is None:
        return None
    tree: dict = {}
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    return getattr(omitted, names[-1]), getattr(section(RunConfig.model_validate(tree)), names[-1])


def _shown(value: Any) -> str:
    """A default as docs/config.md shows it: as JSON data (a tuple as the list a YAML file gives)."""
    return repr(value.model_dump(mode="json") if isinstance(value, BaseModel) else
                [x.model_dump(mode="json") if isinstance(x, BaseModel) else x for x in value]
                if isinstance(value, (list, tuple)) else value)


TRANSPORT_NOTE = " Transport only: not part of a stage's identity, so changing it redoes nothing (docs/scale-out.md)."
"""What docs/config.md adds to a setting marked transport-only (``engines.config.TRANSPORT``)."""


SPEED_NOTE = " Speed only: not part of a stage's identity, so changing it on a finished run redoes nothing."
"""What docs/config.md adds to a setting marked speed-only (``configbase.SPEED``)."""


def _note(field) -> str:
    """``TRANSPORT_NOTE`` or ``SPEED_NOTE`` for a field marked so (``engines.config.TRANSPORT``,
    ``configbase.SPEED``), else ""."""
    marks = field_marks(field)
    return TRANSPORT_NOTE if marks.get("transport") else SPEED_NOTE if marks.get("speed") else ""


def config_reference(model: type[BaseModel] = RunConfig, prefix: str = "", names: tuple[str, ...] | None = None,
                     note: str = "") -> str:
    """Markdown reference of every config key: type, default and description (docs/config.md). A default
    is what a run config that leaves the key out gets (``names``: the field names down from RunConfig);
    ``note`` follows the section's description."""
    lines = []
    if names is None and model is RunConfig:
        names = ()
    if not prefix:
        lines += ["# Config reference", "",
                  "Generated from the pydantic models by `python -m dasd.config` (a test keeps it in sync).",
                  "A default is the value a config that leaves the key out gets (`dasd config show` prints them all).",
                  "Override any key on the command line: `dasd sample -c configs/demo.yaml sample.k=2`; an item of a",
                  "list the file gives, by its number from 0: `dasd eval -c configs/demo.yaml eval.benchmarks.0.limit=10`.",
                  ""]
    simple = []
    nested = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        ann = field.annotation
        sub = next((a for a in (ann, *getattr(ann, "__args__", ())) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if sub is not None and "list" not in str(ann):
            nested.append((key, sub, field, name))
            continue
        run = _run_defaults((*names, name), tuple(key.split("."))) if names is not None else None
        given = ""
        if run is not None:
            default = _shown(run[0])
            if _shown(run[1]) != default:
                given = f" (`{_shown(run[1])}` when the `{prefix[:-1]}` section is given without it.)"
        elif field.is_required():
            default = "required"
        else:
            try:
                default = _shown(field.get_default(call_default_factory=True))
            except Exception:  # pragma: no cover - a factory needing context
                default = "(computed)"
        typ = str(ann).replace("typing.", "").replace("<class '", "").replace("'>", "")
        typ = re.sub(r"Annotated\[(\w+), [^\]]*\)\]", r"\1", typ)  # a validated str (e.g. a source spec) reads as str
        desc = ((field.description or "") + given + _note(field)).replace("|", "\\|").replace("\n", " ")
        simple.append(f"| `{key}` | `{_cell(typ)}` | `{_cell(default)}` | {desc} |")
    if simple:
        doc = ((model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else "") + note
        lines += [f"## `{prefix[:-1] or 'top level'}`", "", doc, "", "| key | type | default | description |", "|---|---|---|---|", *simple, ""]
    for key, sub, field, name in nested:
        lines.append(config_reference(sub, key + ".", (*names, name) if names is not None else None,
                                      _note(field)))
    return "\n".join(lines)


if __name__ == "__main__":
    print(config_reference())
