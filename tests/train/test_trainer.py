"""The trainer end to end on a tiny model: resume == uninterrupted, packed == unpacked, stage chaining."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from dasd.errors import ConfigError, InputError, OutputError
from dasd.train.config import TrainConfig
from dasd.train.trainer import run_training

from .conftest import make_pool as _pool


def _cfg(base, **kw):
    values = dict(base_model=base, context=256, micro_batch=1, grad_accum=2, lr=2e-3, min_lr=2e-4, warmup_ratio=0.2,
                  report_to=[], stages=[{"name": "s1", "data": "pool", "init": "base", "max_steps": 6}])
    values.update(kw)
    return TrainConfig.model_validate(values)


def _curve(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _weights(final):
    return load_file(str(Path(final) / "model.safetensors"))


@pytest.mark.parametrize("batch", [{"micro_batch": 1, "grad_accum": 2}, {"micro_batch": 2, "grad_accum": 1}])
def test_resume_after_crash_gives_the_same_curve_and_weights(tiny_lm_dir, tmp_path, batch):
    data = {"pool": _pool()}
    cfg = _cfg(tiny_lm_dir, save_every=2, **batch)
    (ref,) = run_training(cfg, tmp_path / "a", data)

    def crash(m):
        if m["step"] == 5:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(cfg, tmp_path / "b", data, on_step=crash)
    assert not (tmp_path / "b" / "s1" / "final").exists()
    assert (tmp_path / "b" / "s1" / "checkpoints" / "step-000004").is_dir()
    seen = []
    (res,) = run_training(cfg, tmp_path / "b", data, on_step=lambda m: seen.append(m["step"]))
    assert seen == [5, 6]  # resumed after the step-4 checkpoint, not from scratch

    a, b = _curve(ref["curve"]), _curve(res["curve"])
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert a[-1]["epoch"] > 1  # the run crosses an epoch boundary (reshuffled order)
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra["lr"] == pytest.approx(rb["lr"], rel=1e-12)
        assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-6)
    wa, wb = _weights(ref["final"]), _weights(res["final"])
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=1e-5)
    # the loss went down (the run trains something)
    assert a[-1]["loss"] < a[0]["loss"]
    # the result's padding share covers the whole stage, not only the steps after the resume
    assert (ref["padding_share"] > 0) == (batch["micro_batch"] > 1)  # rows of unequal length are padded
    assert res["padding_share"] == pytest.approx(ref["padding_share"], rel=1e-12)


# Loaded by the killed run below (PYTHONPATH): accelerate's save of checkpoint $DASD_PAUSE_SAVE writes
# its files into the temporary folder, then the process says so in $DASD_PAUSED and waits to be killed.
_PAUSE_IN_SAVE = '''
import os
if os.environ.get("DASD_PAUSE_SAVE"):
    import time
    from pathlib import Path
    import accelerate
    _save = accelerate.Accelerator.save_state

    def _save_then_wait(self, output_dir=None, *a, **k):
        out = _save(self, output_dir, *a, **k)
        if str(output_dir).endswith(".step-%06d.tmp" % int(os.environ["DASD_PAUSE_SAVE"])):
            Path(os.environ["DASD_PAUSED"]).touch()
            time.sleep(3600)
        return out
    accelerate.Accelerator.save_state = _save_then_wait
'''

_TIMING = ("elapsed_s", "eta_s", "tokens_per_s")  # wall-clock fields of a curve record


@pytest.mark.slow
def test_dasd_train_killed_mid_stage_resumes_to_the_same_weights_and_curve_bit_for_bit(tiny_lm_dir, tmp_path):
    """`dasd train` killed with SIGKILL while it writes its second checkpoint (step 4: the first, step 2,
    is complete; the curve has 4 steps; the step-4 temporary folder holds model and optimizer but no
    trainer_state.json), then run again: it resumes from step 2, cuts the curve back to it, and ends
    with the uninterrupted run's final weights and curve, bit for bit (CPU: the data order is a
    function of seed and step, and model, optimizer, scheduler and RNG states are restored exactly).
    The deadlines only guard against a hang."""
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _pool()))
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_PAUSE_IN_SAVE)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "DASD_PROGRESS": "off",
           "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])}
    demo = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / "demo.yaml").read_text())

    def config(name):
        cfg = {**demo, "run_dir": str(tmp_path / name),
               "train": {"base_model": tiny_lm_dir, "context": 256, "micro_batch": 1, "grad_accum": 2, "lr": 2e-3,
                         "min_lr": 2e-4, "warmup_ratio": 0.2, "save_every": 2, "report_to": "none",
                         "stages": [{"name": "s1", "data": str(data), "init": "base", "max_steps": 6}]}}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return ["-m", "dasd", "train", "-c", str(path)]

    subprocess.run([sys.executable, *config("ref")], env=env, check=True, timeout=600, capture_output=True)

    paused = tmp_path / "paused"
    killed = subprocess.Popen([sys.executable, *config("run")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**env, "DASD_PAUSE_SAVE": "4", "DASD_PAUSED": str(paused)})
    deadline = time.monotonic() + 600
    while not paused.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=60) == -signal.SIGKILL and paused.exists()
    stage = tmp_path / "run/train/s1"
    assert (stage / "checkpoints/step-000002/trainer_state.json").is_file()
    assert (stage / "checkpoints/.step-000004.tmp").is_dir()
    assert not (stage / "checkpoints/.step-000004.tmp/trainer_state.json").exists()
    assert [r["step"] for r in _curve(stage / "curve.jsonl")] == [1, 2, 3, 4]
    assert not (stage / "done.json").exists()

    again = subprocess.run([sys.executable, *config("run")], env=env, timeout=600, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "[train] stage s1: resuming from step-000002" in again.stderr
    assert sorted(p.name for p in (stage / "checkpoints").iterdir()) == ["step-000004", "step-000006"]
    ref = tmp_path / "ref/train/s1"
    a, b = _curve(ref / "curve.jsonl"), _curve(stage / "curve.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert [{k: v for k, v in r.items() if k not in _TIMING} for r in a] == [
        {k: v for k, v in r.items() if k not in _TIMING} for r in b]
    wa, wb = _weights(ref / "final"), _weights(stage / "final")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    done = [json.loads((d / "done.json").read_text()) for d in (ref, stage)]
    assert done[0]["final_loss"] == done[1]["final_loss"] and done[0]["padding_share"] == done[1]["padding_share"]
    assert json.loads((tmp_path / "run/manifest.json").read_text())["stages"]["train"]["complete"] is True


def test_packed_training_equals_unpacked_training(tiny_lm_dir, tmp_path):
    """Every step sees all examples (one global batch): packed and one-example-per-row give the same curve."""
    data = {"pool": _pool(8)}
    stages = [{"name": "s1", "data": "pool", "init": "base", "max_steps": 3}]
    (p,) = run_training(_cfg(tiny_lm_dir, packing=True, micro_batch=8, grad_accum=1, stages=stages), tmp_path / "p", data)
    (u,) = run_training(_cfg(tiny_lm_dir, packing=False, micro_batch=8, grad_accum=1, stages=stages), tmp_path / "u", data)
    assert p["sequences"] < u["sequences"] == 8
    cp, cu = _curve(p["curve"]), _curve(u["curve"])
    assert len(cp) == len(cu) == 3
    for a, b in zip(cp, cu):
        assert a["loss_tokens"] == b["loss_tokens"]
        assert abs(a["loss"] - b["loss"]) < 1e-5


def test_grad_accumulation_equals_bigger_micro_batch(tiny_lm_dir, tmp_path):
    data = {"pool": _pool()}
    stages = [{"name": "s1", "data": "pool", "init": "base", "max_steps": 3}]
    (a,) = run_training(_cfg(tiny_lm_dir, micro_batch=1, grad_accum=2, stages=stages), tmp_path / "a", data)
    (b,) = run_training(_cfg(tiny_lm_dir, micro_batch=2, grad_accum=1, stages=stages), tmp_path / "b", data)
    ca, cb = _curve(a["curve"]), _curve(b["curve"])
    assert len(ca) == len(cb) == 3
    for ra, rb in zip(ca, cb):
        assert abs(ra["loss"] - rb["loss"]) < 1e-5


def test_stages_chain_skip_when_done_and_load_in_the_hf_engine(tiny_lm_dir, tmp_path):
    from dasd.engines import make_engine
    from dasd.engines.base import ScoreRequest
    from dasd.engines.config import EngineConfig

    pool = _pool()
    jsonl = tmp_path / "high.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in _pool(seed=1)))
    stages = [{"name": "low", "data": "pool", "init": "base", "max_steps": 4},
              {"name": "high", "data": str(jsonl), "init": "previous", "max_steps": 4},
              {"name": "mixed", "data": str(tmp_path / "missing.jsonl"), "init": "previous", "optional": True}]
    cfg = _cfg(tiny_lm_dir, stages=stages)
    res = run_training(cfg, tmp_path / "run", {"pool": pool})
    assert [r["name"] for r in res] == ["low", "high"]
    assert res[1]["init"] == res[0]["final"]
    steps = []
    again = run_training(cfg, tmp_path / "run", {"pool": pool}, on_step=lambda m: steps.append(m))
    assert steps == [] and [r["final_loss"] for r in again] == [r["final_loss"] for r in res]

    with pytest.raises(ConfigError, match="different config"):
        run_training(cfg.model_copy(update={"lr": 1e-3}), tmp_path / "run", {"pool": pool})

    ex = pool[1]["messages"]
    req = [ScoreRequest(id="q", messages=ex[:2], continuation=ex[2]["content"])]
    lp = {}
    for name, path in [("base", tiny_lm_dir), ("trained", res[1]["final"])]:
        eng = make_engine(EngineConfig(kind="hf", model=path, device="cpu", dtype="float32"))
        lp[name] = sum(eng.score(req)[0].logprobs)
    assert lp["trained"] > lp["base"]


def test_bad_training_line_names_file_line_and_field(tiny_lm_dir, tmp_path):
    bad = tmp_path / "d.jsonl"
    good = json.dumps(_pool(1)[0])
    bad.write_text(good + "\n" + json.dumps({"messages": [{"role": "robot", "content": "x"}]}) + "\n")
    cfg = _cfg(tiny_lm_dir, stages=[{"name": "s1", "data": str(bad), "init": "base", "max_steps": 1}])
    with pytest.raises(InputError, match=r"d\.jsonl:2: field 'messages\.0\.role'"):
        run_training(cfg, tmp_path / "o")


def test_a_stage_without_usable_examples_is_one_line_naming_the_stage_and_why(tiny_lm_dir, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    stages = [{"name": "s1", "data": "pool", "init": "base", "max_steps": 1},
              {"name": "s2", "data": str(empty), "max_steps": 1}]
    with pytest.raises(InputError) as err:
        run_training(_cfg(tiny_lm_dir, stages=stages), tmp_path / "a", {"pool": _pool(2)})
    assert str(err.value) == f"stage 's2' (data {str(empty)!r}): no training example to train on: it has no examples"
    with pytest.raises(InputError) as err:  # every example longer than the context
        run_training(_cfg(tiny_lm_dir, context=8), tmp_path / "b", {"pool": _pool(3)})
    assert str(err.value) == ("stage 's1' (data 'pool'): no training example to train on: all 3 examples are longer "
                              "than the context (8 tokens) and were dropped")


def test_a_moved_or_copied_run_trains_from_its_own_models(tiny_lm_dir, tmp_path):
    """Issue 15, item 3: done.json and fingerprints hold run-relative paths; a copy's next stage
    starts from the copy's model (the original is gone here), finished stages are still skipped."""
    import shutil

    pool = _pool()
    stages = [{"name": "low", "data": "pool", "init": "base", "max_steps": 2},
              {"name": "high", "data": "pool", "init": "previous", "max_steps": 2},
              {"name": "mixed", "data": "mixed", "init": "previous", "max_steps": 2, "optional": True}]
    cfg = _cfg(tiny_lm_dir, stages=stages)
    first = run_training(cfg, tmp_path / "a" / "train", {"pool": pool})
    assert [r["name"] for r in first] == ["low", "high"]
    done = json.loads((tmp_path / "a" / "train" / "high" / "done.json").read_text())
    assert (done["final"], done["init"], done["curve"]) == ("final", "../low/final", "curve.jsonl")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "a")
    steps = []
    res = run_training(cfg, tmp_path / "b" / "train", {"pool": pool, "mixed": _pool(seed=2)},
                       on_step=lambda m: steps.append(m["stage"]))
    assert steps == ["mixed", "mixed"]  # low and high were skipped: the same fingerprints after the copy
    b = (tmp_path / "b" / "train").absolute()
    assert res[1]["final"] == str(b / "high" / "final") and res[2]["init"] == str(b / "high" / "final")
    assert [r["final_loss"] for r in res[:2]] == [r["final_loss"] for r in first]


def test_a_finished_stage_is_refused_when_its_base_model_changed_under_the_same_path(tiny_lm_dir, tmp_path):
    """The base path is in the fingerprint, its contents are not: a finished stage records its init
    model's version, is skipped while it holds, and is refused in one line once the weights changed."""
    import shutil

    from safetensors.torch import save_file

    base = tmp_path / "base"
    shutil.copytree(tiny_lm_dir, base)
    data = {"pool": _pool()}
    cfg = _cfg(str(base), stages=[{"name": "s1", "data": "pool", "init": "base", "max_steps": 2}])
    (first,) = run_training(cfg, tmp_path / "run", data)
    assert json.loads((tmp_path / "run" / "s1" / "done.json").read_text())["init_version"]
    (again,) = run_training(cfg, tmp_path / "run", data)  # unchanged: skipped
    assert again["steps"] == first["steps"]
    w = load_file(str(base / "model.safetensors"))
    save_file({k: v + 1e-3 for k, v in w.items()}, str(base / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConfigError, match="another version of its init model"):
        run_training(cfg, tmp_path / "run", data)


def test_a_checkpoint_is_refused_when_the_previous_stage_was_retrained_since(tiny_lm_dir, tmp_path):
    """Stage 2 crashed after a checkpoint; stage 1 is then trained again (its folder deleted, its lr
    changed): stage 2's checkpoint started from the old stage 1 model and is refused in one line, not
    resumed on top of it (the fingerprint names the previous stage's model by its path only)."""
    import shutil

    data = {"pool": _pool()}
    stages = [{"name": "s1", "data": "pool", "init": "base", "max_steps": 2},
              {"name": "s2", "data": "pool", "max_steps": 4}]

    def crash(m):
        if m["stage"] == "s2" and m["step"] == 3:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(_cfg(tiny_lm_dir, save_every=2, stages=stages), tmp_path / "run", data, on_step=crash)
    assert (tmp_path / "run" / "s2" / "checkpoints" / "step-000002").is_dir()
    (again,) = run_training(_cfg(tiny_lm_dir, save_every=2, stages=stages[:1]), tmp_path / "run", data)
    assert again["steps"] == 2  # s1 unchanged: skipped
    shutil.rmtree(tmp_path / "run" / "s1")
    stages[0]["lr"] = 1e-3
    with pytest.raises(ConfigError) as err:
        run_training(_cfg(tiny_lm_dir, save_every=2, stages=stages), tmp_path / "run", data)
    assert str(err.value) == (f"{tmp_path / 'run' / 's2' / 'checkpoints' / 'step-000002'}: checkpoint trained from "
                              f"another version of its init model (it has changed since); delete {tmp_path / 'run' / 's2'} "
                              "to train the stage again, or use a new output directory")


def test_a_rerun_from_a_relative_directory_hands_on_the_same_init(tiny_lm_dir, tmp_path, monkeypatch):
    """Runs in relative directories, one starting from another's final model (as the ablation's mixed
    arms do): re-running both skips them (a skipped stage returns its final model spelled as a fresh
    one does, so the next stage's fingerprint is unchanged)."""
    monkeypatch.chdir(tmp_path)
    data = {"pool": _pool()}
    cfg = _cfg(tiny_lm_dir, stages=[{"name": "s1", "data": "pool", "init": "base", "max_steps": 2}])

    def both():
        (a,) = run_training(cfg, Path("runs/a"), data)
        follow = _cfg(tiny_lm_dir, stages=[{"name": "s2", "data": "pool", "init": a["final"], "max_steps": 2}])
        (b,) = run_training(follow, Path("runs/b"), data)
        return a, b

    a1, b1 = both()
    a2, b2 = both()  # refused before the fix: s2's init was absolute on the re-run, relative before
    assert a2["final"] == a1["final"] and b2["fingerprint"] == b1["fingerprint"]


def test_a_base_model_counts_by_its_contents_not_by_how_its_path_is_spelled(tiny_lm_dir, tmp_path, monkeypatch):
    """A relative base path read from another working directory, or the base model moved: the same
    model, so the finished stage is skipped (the fingerprint names a local init by its version)."""
    import shutil

    shutil.copytree(tiny_lm_dir, tmp_path / "models" / "base")
    (tmp_path / "sub").mkdir()
    data = {"pool": _pool()}
    stages = [{"name": "s1", "data": "pool", "init": "base", "max_steps": 2}]
    monkeypatch.chdir(tmp_path)
    (first,) = run_training(_cfg("models/base", stages=stages), tmp_path / "run", data)
    steps = []
    monkeypatch.chdir(tmp_path / "sub")
    (again,) = run_training(_cfg("../models/base", stages=stages), tmp_path / "run", data, on_step=steps.append)
    shutil.move(tmp_path / "models", tmp_path / "moved")
    (moved,) = run_training(_cfg("../moved/base", stages=stages), tmp_path / "run", data, on_step=steps.append)
    assert steps == [] and again["fingerprint"] == moved["fingerprint"] == first["fingerprint"]


def test_a_stage_finished_when_its_base_counted_by_path_is_still_skipped(tiny_lm_dir, tmp_path):
    """done.json and checkpoints written before init versions were in the fingerprint carry the
    path-based one; it is accepted, so upgrading dasd does not refuse a finished run."""
    import numpy as np

    from dasd.train import checkpoint as ckpt
    from dasd.train.data import StageData

    cfg = _cfg(tiny_lm_dir, stages=[{"name": "s1", "data": "pool", "init": "base", "max_steps": 2}])
    (first,) = run_training(cfg, tmp_path / "run", {"pool": _pool()})
    done_path = tmp_path / "run" / "s1" / "done.json"
    done = json.loads(done_path.read_text())
    stage_dir = tmp_path / "run" / "s1"
    key = json.loads((stage_dir / "tokens" / "meta.json").read_text())["key"]  # the stage's data key
    sd = StageData([], [], np.zeros(1, np.int64), np.zeros(0, np.int64), [], key)
    old = ckpt.path_fingerprint(cfg, cfg.stages[0], tiny_lm_dir, sd, 1, stage_dir)
    assert old != done["fingerprint"]
    done_path.write_text(json.dumps({**done, "fingerprint": old}))
    steps = []
    (again,) = run_training(cfg, tmp_path / "run", {"pool": _pool()}, on_step=steps.append)
    assert steps == [] and again["fingerprint"] == old


def test_an_init_model_that_cannot_be_loaded_is_one_line_naming_the_key(tiny_lm_dir, tmp_path):
    # a missing directory, a hub id that is not there (offline), a folder without a tokenizer, a
    # tokenizer without the weights: each was a transformers traceback
    import shutil

    with pytest.raises(ValueError, match="base_model"):
        _cfg("")
    no_weights = tmp_path / "tokenizer-only"
    shutil.copytree(tiny_lm_dir, no_weights, ignore=shutil.ignore_patterns("*.safetensors"))
    for base, where, why in [
        (str(tmp_path / "none"), "train.base_model", "no such directory"),
        ("nobody/no-such-model", "train.base_model", "couldn't"),
        (str(tmp_path), "train.base_model", ""),
        (str(no_weights), "train.base_model", ""),
    ]:
        what = "the model" if base == str(no_weights) else "a tokenizer"
        with pytest.raises(ConfigError, match=rf"^stage 's1': cannot load {what} from '{re.escape(base)}' "
                                              rf"\({where}\): .*{why}") as e:
            run_training(_cfg(base), tmp_path / "out", {"pool": _pool()})
        assert "\n" not in str(e.value)
    cfg = _cfg(tiny_lm_dir, stages=[{"name": "s1", "data": "pool", "init": "base", "max_steps": 1},
                                    {"name": "s2", "data": "pool", "init": str(tmp_path / "none"), "max_steps": 1}])
    with pytest.raises(ConfigError, match=r"^stage 's2': cannot load a tokenizer from .* \(train.stages 's2' init\): "
                                          r"no such directory"):
        run_training(cfg, tmp_path / "out2", {"pool": _pool()})


@contextmanager
def _file_size_limit(limit: int):
    """Meanwhile this process cannot write a file past ``limit`` bytes (RLIMIT_FSIZE, its SIGXFSZ
    ignored): the kernel fails the write that crosses it (EFBIG), as it fails one on a full disk."""
    was, handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, was[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, was)
        signal.signal(signal.SIGXFSZ, handler)


# the tiny model's checkpoint holds model.safetensors (~170 kB, written by safetensors) and
# optimizer.bin (~360 kB, written by torch.save); every other file of the run is under 20 kB
@pytest.mark.parametrize("limit,cause", [(100_000, "(File too large; "),
                                         (250_000, "(RuntimeError: [enforce fail at inline_container.cc")])
def test_a_checkpoint_that_cannot_be_written_is_one_line_and_leaves_no_part_of_it(tiny_lm_dir, tmp_path, capsys,
                                                                                  limit, cause):
    """A checkpoint save that fails writing (a full disk; here a file-size limit, as real a refusal of
    the write by the kernel) printed safetensors' or torch's traceback and left its temp folder. It is
    one line naming the checkpoint and the cause; nothing of it is left, nor a temp folder of a killed
    save, the checkpoints before it are kept, and the same command resumes from the last of them to
    the uninterrupted result."""
    from dasd.train.__main__ import main

    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in _pool()))
    stages = [{"name": "s1", "data": str(pool), "init": "base", "max_steps": 6}]
    cfg = _cfg(tiny_lm_dir, save_every=2, stages=stages)
    (ref,) = run_training(cfg, tmp_path / "ref")

    def crash(m):
        if m["step"] == 5:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(cfg, tmp_path / "run", on_step=crash)
    ckdir = tmp_path / "run" / "s1" / "checkpoints"
    before = {p.name: (p / "trainer_state.json").read_text() for p in ckdir.iterdir()}
    assert sorted(before) == ["step-000002", "step-000004"]
    (ckdir / ".step-000003.tmp").mkdir()  # what a save killed meanwhile leaves (under another save_every)
    (ckdir / ".step-000003.tmp" / "model.safetensors").write_bytes(b"\0" * 1000)

    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    capsys.readouterr()
    with _file_size_limit(limit):
        code = main(["--config", str(config), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.splitlines()
    assert code == 2
    assert err[-1].startswith(f"error: {ckdir / 'step-000006'}: cannot write the checkpoint of step 6 {cause}")
    assert err[-1].endswith("; nothing of it is left, a resume starts from step-000004: "
                            + ("re-run the same command once it can be written" if "File too large" in cause
                               else "free some space and re-run the same command"))
    assert not any("Traceback" in line for line in err)
    assert {p.name: (p / "trainer_state.json").read_text() for p in ckdir.iterdir()} == before  # no temp folders
    assert not (tmp_path / "run" / "s1" / "final").exists()

    seen = []
    (res,) = run_training(cfg, tmp_path / "run", on_step=lambda m: seen.append(m["step"]))
    assert seen == [5, 6]
    assert [r["loss"] for r in _curve(res["curve"])] == pytest.approx([r["loss"] for r in _curve(ref["curve"])], abs=1e-6)
    wa, wb = _weights(ref["final"]), _weights(res["final"])
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=1e-5)


def test_a_final_model_that_cannot_be_written_is_one_line_and_leaves_no_part_of_it(tiny_lm_dir, tmp_path):
    """The final save of a stage, refused a write as the checkpoint is above: one line, no '.final.tmp'
    and no 'final' (a stage is finished only by its done.json; its last checkpoint is kept)."""
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dasd.train.checkpoint import save_final
    from dasd.train.loss import LossModel

    acc = Accelerator(cpu=True)
    model = acc.prepare(LossModel(AutoModelForCausalLM.from_pretrained(tiny_lm_dir)))
    stage = tmp_path / "s1"
    stage.mkdir()
    with _file_size_limit(100_000), pytest.raises(OutputError) as err:
        save_final(acc, model, AutoTokenizer.from_pretrained(tiny_lm_dir), stage)
    msg = str(err.value)
    assert msg.startswith(f"{stage / 'final'}: cannot write the stage's final model (File too large; ")
    assert msg.endswith("nothing of it is left, a resume starts from the stage's last checkpoint: "
                        "re-run the same command once it can be written")
    assert "\n" not in msg and list(stage.iterdir()) == []


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_checkpoints_and_final_models_get_the_umasks_mode(tiny_lm_dir, tmp_path, mask):
    """safetensors wrote `model.safetensors` (of each checkpoint and of `final/`) 0600 whatever the
    umask, so on a shared filesystem the group could not load a trained model (an eval job or a
    server under another account). Every file of a checkpoint and of `final/` gets 0666 less the
    umask, as dasd's own files do."""
    import os

    cfg = _cfg(tiny_lm_dir, save_every=1, stages=[{"name": "s1", "data": "pool", "init": "base", "max_steps": 2}])
    old = os.umask(mask)
    try:
        run_training(cfg, tmp_path / "train", {"pool": _pool(4)})
    finally:
        os.umask(old)
    stage = tmp_path / "train" / "s1"
    written = [p for d in (stage / "final", *stage.glob("checkpoints/step-*")) for p in d.rglob("*") if p.is_file()]
    assert sorted(p.parent.name for p in written if p.name == "model.safetensors") == ["final", "step-000001",
                                                                                      "step-000002"]
    assert {p.name for p in written} >= {"model.safetensors", "optimizer.bin", "scheduler.pt", "trainer_state.json",
                                         "config.json", "tokenizer.json", "README.md"}
    assert {str(p.relative_to(stage)): oct(p.stat().st_mode & 0o777) for p in written} == \
        {str(p.relative_to(stage)): oct(0o666 & ~mask) for p in written}
