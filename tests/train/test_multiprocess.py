"""Two CPU processes (gloo): the same losses as one process with the same global batch; only rank 0
writes run files; a 2-process checkpoint resumes on one process."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .conftest import make_pool as _pool


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(path: Path, base: str, data: Path, micro_batch: int, grad_accum: int) -> Path:
    cfg = {"base_model": base, "context": 256, "micro_batch": micro_batch, "grad_accum": grad_accum, "lr": 2e-3,
           "min_lr": 2e-4, "report_to": "none",
           "stages": [{"name": "s1", "data": str(data), "init": "base", "max_steps": 3}]}
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_two_processes_equal_one_process_with_same_global_batch(tiny_lm_dir, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _pool()))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    one = _config(tmp_path / "one.yaml", tiny_lm_dir, data, micro_batch=1, grad_accum=2)
    two = _config(tmp_path / "two.yaml", tiny_lm_dir, data, micro_batch=1, grad_accum=1)
    subprocess.run([sys.executable, "-m", "dasd.train", "--config", str(one), "--out", str(tmp_path / "o1")],
                   check=True, env=env, timeout=600)
    subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                    "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                    "--main_process_port", str(_free_port()),
                    "-m", "dasd.train", "--config", str(two), "--out", str(tmp_path / "o2")],
                   check=True, env=env, timeout=600)
    c1 = [json.loads(x) for x in (tmp_path / "o1/s1/curve.jsonl").read_text().splitlines()]
    c2 = [json.loads(x) for x in (tmp_path / "o2/s1/curve.jsonl").read_text().splitlines()]
    assert [r["step"] for r in c1] == [r["step"] for r in c2] == [1, 2, 3]
    for a, b in zip(c1, c2):
        assert a["tokens"] == b["tokens"] and a["loss_tokens"] == b["loss_tokens"]
        assert abs(a["loss"] - b["loss"]) < 1e-5


# Loaded by every process of the launch below (PYTHONPATH): records each file a process opens for
# writing, creates or renames into place under $DASD_WATCH, with its rank, in $DASD_WRITES.<pid>.
# Files written from C++ (torch.save's zip writer, safetensors) are not seen: checkpoints are checked on disk.
_RECORDER = '''
import builtins, io, os
_watch, _log = os.environ["DASD_WATCH"], os.environ["DASD_WRITES"] + "." + str(os.getpid())
_open, _os_open, _replace, _rename = builtins.open, os.open, os.replace, os.rename

def _note(path):
    p = os.path.abspath(os.fsdecode(path)) if isinstance(path, (str, bytes, os.PathLike)) else None
    if p and p.startswith(_watch) and not p.startswith(_log):
        with _open(_log, "a") as fh:
            fh.write(os.environ.get("RANK", "0") + "\\t" + os.path.relpath(p, _watch) + "\\n")

def _opened(file, mode="r", *a, **k):
    if any(c in mode for c in "wax+"):
        _note(file)
    return _open(file, mode, *a, **k)

def _os_opened(path, flags, *a, **k):
    if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
        _note(path)
    return _os_open(path, flags, *a, **k)

def _replaced(src, dst, *a, **k):
    _note(dst)
    return _replace(src, dst, *a, **k)

def _renamed(src, dst, *a, **k):
    _note(dst)
    return _rename(src, dst, *a, **k)

builtins.open = io.open = _opened
os.open, os.replace, os.rename = _os_opened, _replaced, _renamed

if os.environ.get("RANK") == "1" and os.environ.get("DASD_LATE_RANK1"):  # rank 1 saves its checkpoint share late
    import time
    import accelerate.accelerator as _acc
    _save = _acc.save_accelerator_state

    def _late(*a, **k):
        time.sleep(float(os.environ["DASD_LATE_RANK1"]))
        return _save(*a, **k)
    _acc.save_accelerator_state = _late
'''


@pytest.mark.slow
def test_dasd_train_on_two_processes_only_rank0_writes_run_files_and_one_process_resumes(tiny_lm_dir, tmp_path):
    """`dasd train` under a 2-process gloo launch: rank 1 writes only its share of the token cache and
    its RNG state in checkpoints (no manifest, curve, done.json, model, card, events); then the run,
    cut back to its step-2 checkpoint, resumes on ONE process (same global batch) and repeats the
    2-process curve; another global batch is refused in one line naming both process counts."""
    from dasd.config import load_config
    from dasd.errors import ConfigError
    from dasd.train.trainer import run_training

    run = tmp_path / "run"
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _pool()))
    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / "demo.yaml").read_text())
    cfg["run_dir"] = str(run)
    cfg["train"] = {"base_model": tiny_lm_dir, "context": 256, "micro_batch": 1, "global_batch": 2, "lr": 2e-3,
                    "min_lr": 2e-4, "save_every": 2, "report_to": "tensorboard",
                    "stages": [{"name": "s1", "data": str(data), "init": "base", "max_steps": 4}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_RECORDER)
    writes = tmp_path / "writes"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "DASD_WATCH": str(run), "DASD_LATE_RANK1": "3",
           "DASD_WRITES": str(writes), "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                    "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                    "--main_process_port", str(_free_port()), "-m", "dasd", "train", "-c", str(tmp_path / "c.yaml")],
                   check=True, env=env, timeout=600)

    by_rank: dict[str, set[str]] = {}
    for f in tmp_path.glob("writes.*"):
        for line in f.read_text().splitlines():
            rank, path = line.split("\t")
            by_rank.setdefault(rank, set()).add(path)
    rank1 = {re.sub(r"\d{6}", "N", re.sub(r"tmp-[0-9a-f]+", "tmp-K", p)) for p in by_rank["1"]}
    assert rank1 == {"train/s1/.tokens.tmp-K/part-00001/ids.bin", "train/s1/.tokens.tmp-K/part-00001/labels.bin",
                     "train/s1/.tokens.tmp-K/part-00001/starts.npy", "train/s1/.tokens.tmp-K/part-00001/n_loss.npy"}
    # accelerate: each process's RNG state, rank 1's too though it saved later than rank 0 (DASD_LATE_RANK1)
    assert sorted(p.name for p in (run / "train/s1/checkpoints/step-000004").glob("random_states_*")) == [
        "random_states_0.pkl", "random_states_1.pkl"]
    assert not list((run / "train/s1/checkpoints").glob(".*.tmp"))
    rank0 = by_rank["0"]
    for path in ("manifest.json", "train/s1/done.json", "train/s1/curve.jsonl", "train/s1/final/README.md",
                 "train/s1/.tokens.tmp-{}/meta.json"):
        assert any(re.fullmatch(re.escape(path).replace(r"\{\}", "[0-9a-f]+"), p) for p in rank0), path
    assert any(p.startswith("train/tb/dasd/events.out.tfevents.") for p in rank0)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["train"]["complete"] is True and manifest["stages"]["train"]["counts"]["s1"]["steps"] == 4
    two = [json.loads(x) for x in (run / "train/s1/curve.jsonl").read_text().splitlines()]
    assert json.loads((run / "train/s1/tokens/meta.json").read_text())["parts"] == 2

    # cut back to the step-2 checkpoint (as a crash after it would leave the run) and resume on one process
    for p in ("done.json", "final", "checkpoints/step-000004"):
        shutil.rmtree(run / "train/s1" / p) if (run / "train/s1" / p).is_dir() else (run / "train/s1" / p).unlink()
    tcfg = load_config(tmp_path / "c.yaml").train.model_copy(update={"report_to": []})
    seen = []
    (res,) = run_training(tcfg, run / "train", on_step=lambda m: seen.append(m["step"]))
    assert seen == [3, 4]
    one = [json.loads(x) for x in Path(res["curve"]).read_text().splitlines()]
    assert [r["step"] for r in one] == [1, 2, 3, 4]
    for a, b in zip(two, one):
        assert a["tokens"] == b["tokens"] and abs(a["loss"] - b["loss"]) < 1e-5

    # a resume from the 2-process step-2 checkpoint that changes the global batch says why in one line
    for p in ("final", "checkpoints/step-000004"):
        shutil.rmtree(run / "train/s1" / p)
    (run / "train/s1/done.json").unlink()
    with pytest.raises(ConfigError) as e:
        run_training(tcfg.model_copy(update={"global_batch": 4}), run / "train")
    assert "written by 2 process(es) with a global batch of 2 sequences, this run has 1 with 4" in str(e.value)
    assert "\n" not in str(e.value)


# What each process of the launches below runs: `python -m dasd.train`, except that a process does not
# exit when dasd returns: it records its exit code in $DASD_EXITS/exit.<rank> and waits there to be let
# go, as a process whose peers cannot see it exit (NCCL, a process on another node) keeps them waiting.
_STAY = '''
import os, sys, time, traceback
from pathlib import Path
from dasd.train.__main__ import main
try:
    code = main(sys.argv[1:])
except BaseException:
    traceback.print_exc()
    code = 1
here = Path(os.environ["DASD_EXITS"])
(here / ("exit." + os.environ["RANK"])).write_text(str(code))
while not (here / "go").exists():
    time.sleep(0.1)
sys.exit(code)
'''

# Loaded by rank 0 (PYTHONPATH): its final model, and only that, meets a file-size limit (RLIMIT_FSIZE).
_LIMIT_FINAL = '''
import os
if os.environ.get("RANK") == "0":
    import resource
    from transformers import modeling_utils
    _save = modeling_utils.PreTrainedModel.save_pretrained

    def _limited(self, *a, **k):
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        return _save(self, *a, **k)
    modeling_utils.PreTrainedModel.save_pretrained = _limited
'''


def _limit_files(limit: int):
    """For ``preexec_fn``: the process cannot write a file past ``limit`` bytes (the kernel refuses the
    write that crosses it, as it does one on a full disk; Python ignores the SIGXFSZ that comes with it)."""
    import resource

    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return apply


def _let_go(exits, procs, logs) -> list[str]:
    """Let the processes held at their exit go on (``exits/go``), wait for them (killed after 60 s)
    and return their logs."""
    (exits / "go").touch()
    for p in procs:
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return [log.read_text() for log in logs]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["checkpoint", "final", "share"])
def test_a_write_that_fails_on_one_process_stops_both_processes_at_once_with_one_line_each(tiny_lm_dir, tmp_path,
                                                                                           case):
    """Two gloo processes started as a cluster scheduler starts them (RANK, WORLD_SIZE, MASTER_ADDR; no
    launcher to kill the others when one fails). A write only rank 0 does failed (the step-2 checkpoint
    under a file-size limit, the final model under one set for rank 0 alone), or rank 1's share of the
    tokenising did (an example past its message in its half): that process raised, the other waited for
    it at the next barrier until train.dist_timeout_s (here an hour), then died of a gloo timeout.
    Now both stop at once, each with one line: the failed one's own error, the other's naming it; no
    temporary folder is left. The subprocess deadline only guards against the hang."""
    data = tmp_path / "data.jsonl"
    pool = _pool()
    if case == "share":
        pool[8]["prefix_chars"] = 10_000  # rank 1 tokenises examples 6..11
    data.write_text("".join(json.dumps(r) + "\n" for r in pool))
    cfg = yaml.safe_load(_config(tmp_path / "c.yaml", tiny_lm_dir, data, micro_batch=1, grad_accum=1).read_text())
    cfg.update(dist_timeout_s=3600, stages=[{**cfg["stages"][0], "max_steps": 2}])
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    hook, exits, out = tmp_path / "hook", tmp_path / "exits", tmp_path / "out"
    hook.mkdir()
    exits.mkdir()
    (hook / "sitecustomize.py").write_text(_LIMIT_FINAL if case == "final" else "")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "DASD_EXITS": str(exits),
           "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
    procs, logs = [], [tmp_path / f"rank{r}.log" for r in range(2)]
    for r in range(2):
        with logs[r].open("w") as fh:
            procs.append(subprocess.Popen(
                [sys.executable, "-c", _STAY, "--config", str(tmp_path / "c.yaml"), "--out", str(out)],
                env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=fh, stderr=subprocess.STDOUT,
                preexec_fn=_limit_files(100_000) if case == "checkpoint" else None))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not all((exits / f"exit.{r}").exists() for r in range(2)):
        time.sleep(0.2)
    waiting = [r for r in range(2) if not (exits / f"exit.{r}").exists()]  # before either is let go
    text = _let_go(exits, procs, logs)
    assert waiting == [], f"rank(s) {waiting} still waiting at a barrier after 300 s"
    assert [(exits / f"exit.{r}").read_text() for r in range(2)] == ["2", "2"], text
    last = [t.splitlines()[-1] for t in text]
    stage = out / "s1"
    if case == "checkpoint":
        assert last[0].startswith(f"error: {stage / 'checkpoints/step-000002'}: cannot write the checkpoint of step 2 "
                                  "(File too large; ")
        assert last[1] == (f"error: the main process could not write the checkpoint of step 2 "
                           f"({stage / 'checkpoints/step-000002'}): see its error")
        assert list((stage / "checkpoints").iterdir()) == []
    elif case == "final":
        assert last[0].startswith(f"error: {stage / 'final'}: cannot write the stage's final model (File too large; ")
        assert last[1] == f"error: the main process could not write the stage's final model ({stage / 'final'}): see its error"
        assert [p.name for p in (stage / "checkpoints").iterdir()] == ["step-000002"]
        assert not (stage / "final").exists() and not (stage / ".final.tmp").exists()
    else:
        assert last[1].startswith(f"error: {data}:9: prefix_chars=10000 is longer than the last assistant message")
        assert last[0] == f"error: process 1 could not tokenise its share of stage 's1' (data {str(data)!r}): see its error"
        assert not (stage / "tokens").exists()
    assert not any("Traceback" in t for t in text)


# Loaded by every process of the launches below (PYTHONPATH): $DASD_FAIL picks a failure outside the
# blocks that end where the processes meet. "step": process 1 runs out of memory in the forward of step 2
# (the other is then waiting in that step's gradient all-reduce); "hook": the main process's on_step
# hook fails after step 1 (the other goes on into step 2 and waits there).
_FAIL_ONE = '''
import os
_rank, _case = os.environ.get("RANK"), os.environ.get("DASD_FAIL", "")
if _case == "step" and _rank == "1":
    import torch
    from dasd.train import loss
    _forward, _calls = loss.LossModel.forward, []

    def _forward_or_oom(self, *a, **k):
        _calls.append(1)
        if len(_calls) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")
        return _forward(self, *a, **k)
    loss.LossModel.forward = _forward_or_oom
if _case == "hook" and _rank == "0":
    from dasd.train import trainer
    _run = trainer.run_training

    def _hook(metrics):
        if metrics["step"] == 1:
            raise RuntimeError("the progress hook failed (simulated)")

    def _with_hook(*a, **k):
        return _run(*a, **k, on_step=_hook)
    trainer.run_training = _with_hook
'''

_OOM = "OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB (simulated)"


def _fail_env(tmp_path: Path, case: str) -> dict:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_FAIL_ONE)
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "DASD_FAIL": case,
            "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.slow
def test_accelerate_launch_ends_the_run_when_one_process_fails_inside_a_step(tiny_lm_dir, tmp_path):
    """How multi-process training is launched (`accelerate launch`, which runs torchrun's agent): when
    process 1 runs out of memory inside a step, the agent stops the other process (SIGTERM) and the
    launch ends with a non-zero exit naming process 1 as the root cause, its error in the output
    (the other process, which learnt of the failure through the store, leaves the stopping to the
    agent: ``ranks.LAUNCHER_GRACE_S``). The subprocess deadline only guards against a hang."""
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _pool()))
    cfg = _config(tmp_path / "c.yaml", tiny_lm_dir, data, micro_batch=1, grad_accum=1)
    run = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                          "--main_process_port", str(_free_port()),
                          "-m", "dasd.train", "--config", str(cfg), "--out", str(tmp_path / "out")],
                         env=_fail_env(tmp_path, "step"), capture_output=True, text=True, timeout=600)
    text = run.stdout + run.stderr
    assert run.returncode == 1, text
    assert f"[rank1]: torch.{_OOM}" in text
    root = text.split("Root Cause (first observed failure):")[1]
    assert re.search(r"rank\s+: 1 \(local_rank: 1\)\s+exitcode\s+: 1 ", root), root
    assert re.search(r"rank\s+: 0 \(local_rank: 0\)\s+exitcode\s+: -15 ", text), text  # stopped by the agent
    assert [r["step"] for r in map(json.loads, (tmp_path / "out/s1/curve.jsonl").read_text().splitlines())] == [1]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["step", "hook"])
def test_a_failure_inside_a_step_or_a_hook_on_one_process_stops_the_other_at_once(tiny_lm_dir, tmp_path, case):
    """Two gloo processes started as a cluster scheduler starts them (no launcher to stop the others),
    the failed one kept alive as NCCL keeps its peers unaware of it. Process 1 runs out of memory in
    step 2 ("step"), or the main process's on_step hook fails after step 1 ("hook"): outside any block
    that ends where the processes meet, so the other one waited in step 2's collectives until
    train.dist_timeout_s (here an hour). Now it learns of the failure through the process group's
    store (``ranks.stop_together``) and exits with code 2 and one line naming the failed process and
    its error; the failed one ends with its own error. The deadline only guards against the hang."""
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _pool()))
    cfg = yaml.safe_load(_config(tmp_path / "c.yaml", tiny_lm_dir, data, micro_batch=1, grad_accum=1).read_text())
    cfg.update(dist_timeout_s=3600)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    exits = tmp_path / "exits"
    exits.mkdir()
    env = {**_fail_env(tmp_path, case), "DASD_EXITS": str(exits), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
    procs, logs = [], [tmp_path / f"rank{r}.log" for r in range(2)]
    for r in range(2):
        with logs[r].open("w") as fh:
            procs.append(subprocess.Popen(
                [sys.executable, "-c", _STAY, "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "out")],
                env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=fh, stderr=subprocess.STDOUT))
    failed, other = (1, 0) if case == "step" else (0, 1)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not ((exits / f"exit.{failed}").exists() and procs[other].poll() is not None):
        time.sleep(0.2)
    still = procs[other].poll() is None  # before the failed one is let go
    text = _let_go(exits, procs, logs)
    assert not still, f"process {other} still waiting in a collective after 300 s: {text}"
    assert procs[other].returncode == 2 and not (exits / f"exit.{other}").exists(), text
    assert (exits / f"exit.{failed}").read_text() == "1", text
    if case == "step":
        assert text[1].splitlines()[-1] == f"torch.{_OOM}"
        assert text[0].splitlines()[-1] == f"[train] error: process 1 failed while training ({_OOM}): see its error"
    else:
        assert text[0].splitlines()[-1] == "RuntimeError: the progress hook failed (simulated)"
        assert text[1].splitlines()[-1] == ("[train] error: the main process failed while training (RuntimeError: the "
                                           "progress hook failed (simulated)): see its error")
    assert "Traceback" not in text[other]
