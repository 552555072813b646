"""The trainer's pieces one by one: the plan's counts, the stage files (fingerprint, curve, done,
checkpoints), the Liger choice, the recipe's methods driven by hand, and what it logs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from dasd.errors import ConfigError
from dasd.train import checkpoint as ckpt
from dasd.train.config import TrainConfig
from dasd.train.data import StageData, load_examples
from dasd.train.encode import IGNORE
from dasd.train.loss import liger_available
from dasd.train.plan import Plan
from dasd.train.trainer import StageTrainer, _make_accelerator, liger_choice, run_training

from .conftest import make_pool


def _cfg(base="m", **kw):
    values = dict(base_model=base, context=256, micro_batch=1, grad_accum=2, lr=2e-3, min_lr=2e-4, warmup_ratio=0.2,
                  report_to=[], stages=[{"name": "s1", "data": "pool", "init": "base", "max_steps": 6}])
    values.update(kw)
    return TrainConfig.model_validate(values)


def _stage_data(lengths, n_loss, sequences, key="k"):
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = np.arange(starts[-1], dtype=np.int32)
    return StageData([ids], [ids.copy()], starts, np.array(n_loss, np.int64), sequences, key, {"over_context": 0})


# --- plan -------------------------------------------------------------------------------------------


def test_plan_counts_tokens_and_loss_tokens_of_rows_and_fills_short_batches():
    sd = _stage_data([3, 5, 2, 4], [1, 4, 0, 2], [[0, 1], [2], [3]])
    plan = Plan(sd, _cfg(micro_batch=2, grad_accum=1), processes=1, seed=0)
    assert plan.G == 2 and plan.steps_per_epoch == 2
    rows = [[0, 1], None, [3]]
    assert plan.tokens(rows) == 3 + 5 + 4
    assert plan.loss_tokens(rows) == 1 + 4 + 2
    last = plan.rows(1)  # 3 sequences, 2 a step: the epoch's second step has one real row and one filler
    assert sum(r is None for r in last) == 1 and len(last) == 2
    pieces = plan.pieces([[0, 1], None], pad_id=7)
    assert [len(p.input_ids) for p in pieces[0]] == [3, 5]
    assert pieces[1][0].input_ids.tolist() == [7] and pieces[1][0].labels.tolist() == [IGNORE]


def test_plan_total_steps_is_max_steps_or_epochs_rounded_up_and_at_least_one():
    sd = _stage_data([1] * 5, [1] * 5, [[i] for i in range(5)])
    plan = Plan(sd, _cfg(micro_batch=2, grad_accum=1), processes=1, seed=0)  # 3 steps an epoch
    assert plan.total_steps(epochs=2, max_steps=None) == 6
    assert plan.total_steps(epochs=0.5, max_steps=None) == 2
    assert plan.total_steps(epochs=0.01, max_steps=None) == 1
    assert plan.total_steps(epochs=2, max_steps=4) == 4


# --- stage files ------------------------------------------------------------------------------------


def test_fingerprint_ignores_the_free_settings_and_the_split_of_the_global_batch():
    cfg = _cfg()  # micro_batch 1 x grad_accum 2
    stage = cfg.stages[0]
    sd = _stage_data([1], [1], [[0]])
    fp = ckpt.fingerprint(cfg, stage, "m", sd, 1)
    free = cfg.model_copy(update={"save_every": 7, "keep_checkpoints": 5, "log_every": 3, "report_to": ["tensorboard"],
                                  "dist_timeout_s": 99, "push_to_hub": {"repo_id": "me/m"}})
    assert ckpt.fingerprint(free, stage, "m", sd, 1) == fp
    # the same global batch of 2 sequences on 2 processes, or as one micro-batch of 2
    assert ckpt.fingerprint(cfg.model_copy(update={"grad_accum": 1}), stage, "m", sd, 2) == fp
    assert ckpt.fingerprint(cfg.model_copy(update={"grad_accum": 1, "micro_batch": 2}), stage, "m", sd, 1) == fp
    assert ckpt.fingerprint(cfg, stage, "m", sd, 2) != fp  # global batch 4
    assert ckpt.fingerprint(cfg.model_copy(update={"lr": 1e-3}), stage, "m", sd, 1) != fp
    assert ckpt.fingerprint(cfg, stage.model_copy(update={"max_steps": 7}), "m", sd, 1) != fp
    assert ckpt.fingerprint(cfg, stage, "other", sd, 1) != fp
    assert ckpt.fingerprint(cfg, stage, "m", _stage_data([1], [1], [[0]], key="k2"), 1) != fp


def test_a_checkpoint_resumes_on_another_process_count_only_when_it_can():
    ck = Path("ck")
    ddp2 = {"processes": 2, "distributed_type": "MULTI_CPU", "global_batch": 4}
    ckpt.check_geometry(ck, ddp2, {"processes": 1, "distributed_type": "NO", "global_batch": 4}, True)
    ckpt.check_geometry(ck, {}, ddp2, True)  # written before the geometry was recorded: taken as this run's
    with pytest.raises(ConfigError) as e:
        ckpt.check_geometry(ck, ddp2, {"processes": 4, "distributed_type": "MULTI_CPU", "global_batch": 8}, False)
    msg = str(e.value)
    assert "\n" not in msg and "written by 2 process(es) with a global batch of 4" in msg
    assert "this run has 4 with 8" in msg and "global_batch: 4" in msg
    z3 = {"processes": 8, "distributed_type": "DEEPSPEED", "global_batch": 64}
    with pytest.raises(ConfigError, match=r"^ck: written by 8 process\(es\) \(DEEPSPEED\), this run has 16 \(DEEPSPEED\)"):
        ckpt.check_geometry(ck, z3, {**z3, "processes": 16}, True)
    ckpt.check_geometry(ck, z3, z3, True)


def test_final_models_are_saved_in_the_training_dtype(tiny_lm_dir, tmp_path):
    from accelerate import Accelerator
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dasd.train.loss import LossModel

    assert ckpt.final_dtype(bf16=True, cpu=False) == torch.bfloat16
    assert ckpt.final_dtype(bf16=True, cpu=True) == ckpt.final_dtype(bf16=False, cpu=False) == torch.float32
    # the GPU path forced on CPU: float32 training weights written as bf16
    lm = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, dtype=torch.float32)
    acc = Accelerator(cpu=True)
    for dtype, name in ((torch.bfloat16, "bf16"), (torch.float32, "fp32")):
        final = ckpt.save_final(acc, LossModel(lm, chunk=64, use_liger=False), AutoTokenizer.from_pretrained(tiny_lm_dir),
                                tmp_path / name, dtype)
        with safe_open(str(final / "model.safetensors"), "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {dtype}
        assert json.loads((final / "config.json").read_text())["dtype"] == name.replace("bf16", "bfloat16").replace("fp32", "float32")
        back = AutoModelForCausalLM.from_pretrained(str(final))
        assert back.dtype == dtype
        for (k, a), (_, b) in zip(lm.state_dict().items(), back.state_dict().items()):
            assert torch.equal(a.to(dtype), b), k


def test_curve_read_stops_at_a_cut_line_and_truncate_keeps_steps_up_to_the_resume_point(tmp_path):
    path = tmp_path / "curve.jsonl"
    assert ckpt.read_curve(path, 10) == []
    for step in (1, 2, 3):
        ckpt.append_curve(path, {"step": step, "loss": 1.0 / step})
    with path.open("a") as fh:
        fh.write('{"step": 4, "lo')  # cut by a crash
    assert [r["step"] for r in ckpt.read_curve(path, 10)] == [1, 2, 3]
    assert [r["step"] for r in ckpt.read_curve(path, 2)] == [1, 2]
    ckpt.truncate_curve(path, 2)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2]


def test_done_file_is_returned_when_the_fingerprint_matches_and_refused_otherwise(tmp_path):
    assert ckpt.read_done(tmp_path, "fp", "s1") is None
    ckpt.write_done(tmp_path, {"name": "s1", "steps": 3, "fingerprint": "fp"})
    assert ckpt.read_done(tmp_path, "fp", "s1")["steps"] == 3
    with pytest.raises(ConfigError, match="different config"):
        ckpt.read_done(tmp_path, "other", "s1")


def test_latest_checkpoint_is_the_highest_complete_one(tmp_path):
    ckdir = tmp_path / "checkpoints"
    assert ckpt.latest_checkpoint(ckdir) is None
    for name, complete in [("step-000002", True), ("step-000004", True), ("step-000006", False), (".step-000008.tmp", True)]:
        (ckdir / name).mkdir(parents=True)
        if complete:
            (ckdir / name / "trainer_state.json").write_text("{}")
    assert ckpt.latest_checkpoint(ckdir).name == "step-000004"


def test_save_then_load_checkpoint_restores_weights_optimizer_and_schedule(tmp_path):
    from accelerate import Accelerator

    from dasd.train.schedule import make_optimizer, make_scheduler

    acc = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = make_optimizer(model, 1e-2, (0.9, 0.95), 1e-8, 0.1)
    sched = make_scheduler(opt, 10, 1e-2, 1e-3, 0.2)
    model, opt = acc.prepare(model, opt)
    try:
        for step in (1, 2, 3):
            model(torch.ones(2, 4)).sum().backward()
            opt.step()
            opt.zero_grad()
            sched.step()
            ckpt.save_checkpoint(acc, sched, tmp_path, step, "fp", keep=2)
        names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
        assert names == ["step-000002", "step-000003"]  # the last two, no temporary directory left
        saved = {k: v.clone() for k, v in model.state_dict().items()}
        saved_lr = opt.param_groups[0]["lr"]
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        sched.step()
        ck = ckpt.latest_checkpoint(tmp_path / "checkpoints")
        with pytest.raises(ConfigError, match="different config"):
            ckpt.load_checkpoint(acc, sched, ck, "other")
        assert ckpt.load_checkpoint(acc, sched, ck, "fp") == 3
        for k, v in model.state_dict().items():
            torch.testing.assert_close(v, saved[k], atol=0, rtol=0)
        assert sched.last_epoch == 3 and opt.param_groups[0]["lr"] == saved_lr
        assert opt.state_dict()["state"][0]["step"].item() == 3
    finally:
        acc.free_memory()


# --- Liger choice -----------------------------------------------------------------------------------


def test_liger_choice_follows_the_setting_and_is_off_under_zero3():
    assert liger_choice("off", zero3=False) == (False, None)
    assert liger_choice("on", zero3=False) == (True, None)
    use, note = liger_choice("on", zero3=True)
    assert use is False and "ZeRO-3" in note
    assert liger_choice("auto", zero3=False) == (torch.cuda.is_available() and liger_available(), None)


# --- the recipe -------------------------------------------------------------------------------------


def test_recipe_methods_driven_by_hand_reproduce_run_training(tiny_lm_dir, tmp_path):
    """setup_data / setup_model / setup_optimizer / load_checkpoint / train_step, called one by one,
    give the fingerprint and the first steps' records of a whole run."""
    cfg = _cfg(tiny_lm_dir)
    pool = make_pool()
    (ref,) = run_training(cfg, tmp_path / "ref", {"pool": pool})
    curve = [json.loads(x) for x in (tmp_path / "ref" / "s1" / "curve.jsonl").read_text().splitlines()]

    acc = _make_accelerator(cfg, tmp_path / "by-hand")
    rec = StageTrainer(cfg, 0, cfg.stages[0], tiny_lm_dir, tmp_path / "by-hand" / "s1", acc)
    rec.setup_data(load_examples("pool", {"pool": pool}))
    assert rec.fp == ref["fingerprint"] and rec.total == ref["steps"] == 6
    assert len(rec.sd.sequences) == ref["sequences"]
    rec.setup_model()
    rec.setup_optimizer()
    assert rec.load_checkpoint() == 0
    rec.model.train()
    steps = [rec.train_step(s) for s in range(2)]
    acc.free_memory()
    assert len(steps) == 2
    for mine, theirs in zip(steps, curve[:2]):
        assert mine["step"] == theirs["step"] and mine["tokens"] == theirs["tokens"]
        assert mine["lr"] == theirs["lr"]
        assert mine["loss"] == pytest.approx(theirs["loss"], abs=1e-6)


@pytest.fixture
def dasd_log():
    """The lines logged under ``dasd`` at INFO (whatever the CLI's setup did before)."""
    lines: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record):
            lines.append(f"{record.name}: {record.getMessage()}")

    root = logging.getLogger("dasd")
    handler, level = _Keep(level=logging.INFO), root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield lines
    root.removeHandler(handler)
    root.setLevel(level)


def test_trainer_logs_its_messages_and_progress_lines_off_a_terminal(tiny_lm_dir, tmp_path, monkeypatch, dasd_log):
    monkeypatch.setenv("DASD_PROGRESS", "lines")
    cfg = _cfg(tiny_lm_dir, save_every=2, log_every=1,
               stages=[{"name": "s1", "data": "pool", "init": "base", "max_steps": 10},
                       {"name": "s2", "data": str(tmp_path / "missing.jsonl"), "init": "previous", "optional": True}])
    data = {"pool": make_pool()}

    def crash(m):
        if m["step"] == 5:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError):
        run_training(cfg, tmp_path / "o", data, on_step=crash)
    first = list(dasd_log)
    assert any(x.startswith("dasd.train: stage s1: 12 examples (0 over context dropped)") for x in first)
    bar = [x for x in first if x.startswith("dasd: train s1: ")]
    assert [x.split()[3] for x in bar] == ["1/10", "2/10", "3/10", "4/10", "5/10"]  # a line every 10%
    assert "(10%)" in bar[0] and "loss " in bar[0]

    dasd_log.clear()
    run_training(cfg, tmp_path / "o", data)
    assert "dasd.train: stage s1: resuming from step-000004" in dasd_log
    assert [x.split()[3] for x in dasd_log if x.startswith("dasd: train s1: ")] == [f"{k}/10" for k in range(5, 11)]
    assert any(x.startswith("dasd.train: stage s1: done, 10 steps, final loss ") for x in dasd_log)
    assert any("stage s2: data" in x and "optional stage skipped" in x for x in dasd_log)

    dasd_log.clear()
    run_training(cfg, tmp_path / "o", data)
    assert "dasd.train: stage s1: already finished (10 steps), skipped" in dasd_log
    assert not any(x.startswith("dasd: train s1: ") for x in dasd_log)


def test_checkpoint_of_a_tied_model_is_quiet_and_restores_the_tie(tmp_path, tiny_lm_dir, caplog):
    """accelerate's "Removed shared tensor" warning is not printed at each checkpoint of a model whose
    output embedding is tied to its input one, and loading restores the trained (tied) weights."""
    import logging

    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    from dasd.train.schedule import make_optimizer, make_scheduler

    class Wrapper(torch.nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

    acc = Accelerator(cpu=True)
    lm = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    assert lm.config.tie_word_embeddings
    model = Wrapper(lm)
    opt = make_optimizer(model, 1e-2, (0.9, 0.95), 1e-8, 0.0)
    sched = make_scheduler(opt, 10, 1e-2, 1e-3, 0.2)
    model, opt = acc.prepare(model, opt)
    try:
        out = model.lm(input_ids=torch.tensor([[1, 2, 3, 4]]), labels=torch.tensor([[1, 2, 3, 4]]))
        out.loss.backward()
        opt.step()
        with caplog.at_level(logging.WARNING):
            ckpt.save_checkpoint(acc, sched, tmp_path, 1, "fp", keep=1, tied=True)
        assert "Removed shared tensor" not in caplog.text
        trained = model.lm.get_input_embeddings().weight.detach().clone()
        with torch.no_grad():
            model.lm.get_input_embeddings().weight.add_(1.0)
        ckpt.load_checkpoint(acc, sched, ckpt.latest_checkpoint(tmp_path / "checkpoints"), "fp")
        torch.testing.assert_close(model.lm.get_input_embeddings().weight, trained, atol=0, rtol=0)
        assert model.lm.get_output_embeddings().weight.data_ptr() == model.lm.get_input_embeddings().weight.data_ptr()
    finally:
        acc.free_memory()


def test_an_error_every_process_raised_at_a_meeting_is_not_posted_to_the_others_again():
    """``ranks.stop_together`` posts a failure for the other processes only when they cannot know of
    it: an error in a ``fail_together`` block (every process raises there), also once a save turned
    it into its one-line error (``raise ... from err``), is not posted (the failed process would
    wait for readers that have stopped); an error inside a step is, summed up in one line."""
    from dasd.errors import DasdError, DiskFullError
    from dasd.train.ranks import _known_everywhere, _summary, fail_together

    flags = []

    def agree(flag):  # one process's view of the meeting: the flags it sends; process 1 failed there
        flags.append(flag)
        return 0 if flag else 1

    with pytest.raises(OSError) as own:
        with fail_together(agree, "write the checkpoint of step 2"):
            raise OSError(28, "No space left on device")
    with pytest.raises(DasdError, match="^process 1 could not write the checkpoint of step 2: see its error$") as other:
        with fail_together(agree, "write the checkpoint of step 2"):
            pass
    assert flags == [True, False]
    try:
        raise DiskFullError("step-000002: cannot write the checkpoint of step 2") from own.value
    except DiskFullError as e:
        wrapped = e
    assert _known_everywhere(own.value) and _known_everywhere(other.value) and _known_everywhere(wrapped)
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore detail")
    assert not _known_everywhere(oom) and not _known_everywhere(RuntimeError("hook"))
    assert _summary(oom) == "OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB"
    assert _summary(KeyError()) == "KeyError" and len(_summary(ValueError("x" * 1000))) == 300
