"""A two-stage run with TensorBoard tracking and push_to_hub: the event files read back offline hold
the curve; each final model has a model card (and gets the evaluation table later); the upload is
called with the final directory, card included (the Hub itself cannot be reached from the tests)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from huggingface_hub import HfApi

from dasd.errors import ConfigError
from dasd.grading.metrics import summarize
from dasd.train import card as model_card
from dasd.train.config import TrainConfig
from dasd.train.trainer import run_training

from .conftest import make_pool


def _cfg(base, **kw):
    values = dict(base_model=base, context=256, micro_batch=1, grad_accum=2, lr=2e-3, min_lr=2e-4, warmup_ratio=0.2,
                  report_to="tensorboard",
                  push_to_hub={"repo_id": "me/dasd-{stage}", "private": True, "stages": ["s1", "s2"]},
                  stages=[{"name": "s1", "data": "low", "init": "base", "max_steps": 3},
                          {"name": "s2", "data": "high", "init": "previous", "max_steps": 2}])
    values.update(kw)
    return TrainConfig.model_validate(values)


def _scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture
def uploads(monkeypatch):
    """Record HfApi's repository creation and upload calls (and what the folder holds at upload time)."""
    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, **kw: calls.append(("create_repo", kw)))

    def upload_folder(self, **kw):
        files = sorted(p.name for p in Path(kw["folder_path"]).iterdir())
        calls.append(("upload_folder", {**kw, "files": files}))

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_tensorboard_events_card_and_push_of_a_two_stage_run(tiny_lm_dir, tmp_path, uploads):
    data = {"low": make_pool(12), "high": make_pool(8, seed=2)}
    notes = {"low": "T=0.6 teacher samples, DAS-selected", "high": "T=1 teacher samples, DAS-selected"}
    res = run_training(_cfg(tiny_lm_dir), tmp_path / "train", data, data_notes=notes)
    assert [r["name"] for r in res] == ["s1", "s2"]

    # TensorBoard: per-step loss / lr / grad norm / tokens/s of each stage, steps continuing across stages
    runs = [p.parent for p in (tmp_path / "train" / "tb" / "dasd").rglob("events.out.tfevents.*")]
    scalars = {}
    for run in runs:
        scalars.update(_scalars(run))
    for r, offset in zip(res, (0, 3)):
        curve = [json.loads(x) for x in Path(r["curve"]).read_text().splitlines()]
        name = r["name"]
        assert [s for s, _ in scalars[f"{name}/loss"]] == [offset + c["step"] for c in curve]
        assert [v for _, v in scalars[f"{name}/loss"]] == pytest.approx([c["loss"] for c in curve], rel=1e-6)
        assert [v for _, v in scalars[f"{name}/lr"]] == pytest.approx([c["lr"] for c in curve], rel=1e-6)
        assert [v for _, v in scalars[f"{name}/grad_norm"]] == pytest.approx([c["grad_norm"] for c in curve], rel=1e-5)
        assert len(scalars[f"{name}/tokens_per_s"]) == len(curve)
        for k in ("examples", "sequences", "tokens", "loss_tokens", "dropped_over_context"):
            assert scalars[f"{name}/data/{k}"] == [(offset, pytest.approx(r["data_counts"][k]))]
    assert r["data_counts"]["examples"] == 8 and res[0]["data_counts"]["examples"] == 12

    # the model card of stage 2 names the base model and both stages with their data and recipe
    text = (Path(res[1]["final"]) / "README.md").read_text()
    assert text.startswith("---\nlibrary_name: transformers\n") and "base_model:" not in text  # a local base path
    assert f"Base model: `{tiny_lm_dir}`" in text
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| (s\d) \| `.*$", text, re.M)}
    assert set(rows) == {"s1", "s2"}
    for r in res:
        c = r["data_counts"]
        assert f"| {r['name']} | `{r['data']}` | {notes[r['data']]} | {c['examples']} | {c['sequences']} | {c['tokens']} " \
               f"| {c['loss_tokens']} | 0 | {r['steps']} |" in rows[r["name"]]
    assert "| s2 | 0.002 | 0.0002 | 0.2 | cosine |" in text and "Not evaluated yet" in text
    assert "| s1 |" in (Path(res[0]["final"]) / "README.md").read_text()
    assert "| s2 |" not in (Path(res[0]["final"]) / "README.md").read_text()

    # the push: each pushed stage's final directory, card included, to its own private repository
    assert [(c[0], c[1]["repo_id"]) for c in uploads] == [("create_repo", "me/dasd-s1"), ("upload_folder", "me/dasd-s1"),
                                                         ("create_repo", "me/dasd-s2"), ("upload_folder", "me/dasd-s2")]
    assert uploads[0][1]["private"] is True and uploads[0][1]["exist_ok"] is True
    up = uploads[3][1]
    assert Path(up["folder_path"]) == Path(res[1]["final"]) and up["repo_type"] == "model"
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json"} <= set(up["files"])
    assert res[1]["pushed_to"] == "me/dasd-s2"

    # evaluation results arrive later: the card is rewritten with the table and its protocol
    proto = {"name": "demo", "temperature": 0.6, "top_p": 1.0, "max_tokens": 512, "n": 2, "seed": 0, "system_prompt": None}
    results = [{"problem_id": f"p{i}", "sample_index": j, "correct": (i + j) % 3 != 0, "extracted": str(i),
                "benchmark": "toy", "domain": "toy", "protocol": proto} for i in range(6) for j in range(2)]
    model_card.refresh_card(tmp_path / "train" / "s2", results)
    text = (Path(res[1]["final"]) / "README.md").read_text()
    row = next(r for r in summarize(results) if r["kind"] == "benchmark")
    lo, hi = row["avg@k_ci"]
    assert f"| toy | 6 | 2 | {100 * row['avg@k']:.1f} | [{100 * lo:.1f}, {100 * hi:.1f}] |" in text
    assert "| toy | demo | 0.6 | 1.0 | 512 | 2 | 0 | problem |" in text and "Not evaluated yet" not in text

    # a rerun of the finished stages trains nothing and starts no tracker: no new event file
    events = sorted((tmp_path / "train" / "tb").rglob("events.out.tfevents.*"))
    again = run_training(_cfg(tiny_lm_dir), tmp_path / "train", data, data_notes=notes)
    assert [r["steps"] for r in again] == [r["steps"] for r in res]
    assert sorted((tmp_path / "train" / "tb").rglob("events.out.tfevents.*")) == events


def test_report_to_none_writes_no_events_and_bad_trackers_are_named(tiny_lm_dir, tmp_path):
    assert _cfg(tiny_lm_dir, report_to="none").report_to == []
    assert _cfg(tiny_lm_dir, report_to="tensorboard,wandb").report_to == ["tensorboard", "wandb"]
    with pytest.raises(ValueError, match="train.tensorboard was replaced by train.report_to"):
        TrainConfig.model_validate({"base_model": "m", "tensorboard": True, "stages": [{"name": "a", "data": "d", "init": "base"}]})
    with pytest.raises(ValueError, match=r"several stages pushed need '\{stage\}'"):
        _cfg(tiny_lm_dir, push_to_hub={"repo_id": "me/x", "stages": ["s1", "s2"]})
    assert _cfg(tiny_lm_dir, push_to_hub={"repo_id": "me/x"}).pushed_stages() == ["s2"]
    from dasd.train.trainer import tracker_names

    import importlib.util

    missing = [t for t in ("wandb", "trackio") if importlib.util.find_spec(t) is None]
    if missing:
        with pytest.raises(ConfigError, match=f"train.report_to: {missing[0]} is not installed"):
            tracker_names(_cfg(tiny_lm_dir, report_to=missing[0]))
    assert tracker_names(_cfg(tiny_lm_dir, report_to="none")) == []


def test_a_failed_upload_is_one_line_and_leaves_the_stage_to_finish_on_a_rerun(tiny_lm_dir, tmp_path, monkeypatch):
    def refuse(self, **kw):
        raise OSError("network unreachable")

    monkeypatch.setattr(HfApi, "create_repo", refuse)
    cfg = _cfg(tiny_lm_dir, report_to="none", push_to_hub={"repo_id": "me/x"},
               stages=[{"name": "s1", "data": "low", "init": "base", "max_steps": 1}])
    from dasd.errors import DasdError

    with pytest.raises(DasdError, match=r"push_to_hub: uploading .*final to me/x failed \(OSError: network unreachable\)"):
        run_training(cfg, tmp_path / "t", {"low": make_pool(4)})
    assert (tmp_path / "t" / "s1" / "final" / "README.md").is_file() and not (tmp_path / "t" / "s1" / "done.json").exists()


def test_card_follows_relative_inits_and_names_a_hub_base_model(tmp_path):
    """The lineage is read from the stages' done.json files, also when ``init`` paths are relative."""
    s1 = {"name": "a", "init": "Qwen/Qwen3-4B-Base", "base_model": "Qwen/Qwen3-4B-Base", "data": "low",
          "data_counts": {"examples": 5, "sequences": 2, "tokens": 90, "loss_tokens": 40, "dropped_over_context": 1},
          "steps": 2, "final_loss": 1.5, "recipe": {"lr": 1e-4}}
    (tmp_path / "a" / "final").mkdir(parents=True)
    (tmp_path / "a" / "done.json").write_text(json.dumps(s1))
    s2 = {**s1, "name": "b", "init": "a/final", "data": "high", "data_note": "T=1 teacher samples, DAS-selected"}
    (tmp_path / "b" / "final").mkdir(parents=True)
    path = model_card.write_card(tmp_path / "b", s2)
    text = path.read_text()
    assert path == tmp_path / "b" / "final" / "README.md"
    assert "base_model: Qwen/Qwen3-4B-Base\n---" in text
    assert "| a | `low` | - | 5 | 2 | 90 | 40 | 1 | 2 | 1.5 |" in text
    assert "| b | `high` | T=1 teacher samples, DAS-selected | 5 | 2 | 90 | 40 | 1 | 2 | 1.5 |" in text
    assert model_card.refresh_card(tmp_path / "missing", []) is None


def test_every_named_pool_of_the_default_schedule_has_a_card_note():
    """The default stage 3 trains on mixed+replay: its card row says what that is, not '-'."""
    from dasd.config import load_config
    from dasd.stages.train import data_notes

    cfg = load_config(None, ["sample.temperatures=[0.6, 1.0]"])
    notes = data_notes(cfg)
    assert {s.data for s in cfg.train.stages} == {"low", "high", "mixed+replay"} <= set(notes)
    assert notes["mixed+replay"] == ("student prefixes continued by the teacher (mixed policy), with replayed "
                                     "T=1 teacher samples, DAS-selected")
    assert data_notes(load_config(None, ["mix.replay.ratio=0"]))["mixed+replay"] == notes["mixed"]


def test_the_card_of_an_evaluated_stage_shows_the_share_of_answers_cut_off(tmp_path):
    """`dasd eval` of a stage model (here the shipped toy student as stage1_low's final model) with a
    cap shorter than some of its answers rewrites the stage's card with a `cut off` column: the share
    of each benchmark's samples that stopped at the token limit, as `dasd eval`'s own table and the
    report say, and what the column means under the table."""
    import shutil

    from dasd.config import load_config
    from dasd.runs import resolve_model, results_name
    from dasd.stages.eval import run_evaluation
    from dasd.store import RunStore

    stage = tmp_path / "run" / "train" / "stage1_low"
    shutil.copytree(resolve_model("toy:student"), stage / "final")
    (stage / "done.json").write_text(json.dumps({
        "name": "stage1_low", "init": "toy:student", "base_model": "toy:student", "data": "low",
        "data_counts": {"examples": 5, "sequences": 2, "tokens": 90, "loss_tokens": 40, "dropped_over_context": 0},
        "steps": 2, "final_loss": 1.5, "recipe": {"lr": 1e-4}}))
    cfg = load_config(None, [
        f"run_dir={tmp_path / 'run'}", "eval.benchmarks=[{name: toy, format: toy, limit: 3}]",
        "eval.protocol={name: short, temperature: 1.0, n: 2, max_tokens: 60}", "eval.models=[stage1_low]",
        "eval.workers=0", "eval.batch_requests=2"])
    summary = run_evaluation(cfg)["stage1_low"]
    results = list(RunStore.open(cfg.run_dir).read("eval", results_name("stage1_low")))
    cut = sum(r["finish_reason"] == "length" for r in results)
    assert len(results) == 6 and 0 < cut < 6, [r["finish_reason"] for r in results]
    assert {r["cut_off"] for r in summary} == {cut}
    text = (stage / "final" / "README.md").read_text()
    assert "| benchmark | problems | k | avg@k | 95% CI | pass@k | maj@k | no answer | cut off |" in text
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| (toy|all) \| 3 \| 2 \| .*$", text, re.M)}
    assert set(rows) == {"toy", "all"}
    assert all(row.endswith(f" | {100 * cut / 6:.1f} |") for row in rows.values())
    assert "cut off = samples that stopped at the token limit" in text
    # results that do not say how they ended (given to `dasd grade` without finish_reason): "-"
    model_card.refresh_card(stage, [{k: v for k, v in r.items() if k != "finish_reason"} for r in results])
    text = (stage / "final" / "README.md").read_text()
    assert re.search(r"^\| toy \| 3 \| 2 \| .* \| - \|$", text, re.M)
