"""The Slurm job scripts in configs/slurm: valid bash, valid #SBATCH lines, and commands our CLIs accept.

There is no Slurm here, so `scontrol` and `srun` are small stand-ins on PATH: `scontrol show hostnames`
splits SLURM_JOB_NODELIST on commas, `srun` records its arguments and (SRUN_EXEC=1) runs the task once, as
node 0. What the task runs is then checked with the real parsers: accelerate's `launch` parser and dasd's
typer app for the training job; for the server farm (slow) `vllm` is a stand-in that starts dasd's own
OpenAI-schema server, and the endpoints file the script writes is used by the real openai engine.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SLURM = ROOT / "configs" / "slurm"
SCRIPTS = sorted(SLURM.glob("*.sbatch"))
# sbatch options the scripts may use (sbatch(1)); anything else is a typo sbatch would reject.
SBATCH_OPTIONS = {"job-name", "nodes", "ntasks-per-node", "gpus-per-node", "cpus-per-task", "exclusive", "time",
                  "output", "error", "partition", "account", "mem", "qos", "constraint"}

RECORDER = """#!{python}
import json, os, sys
with open(os.environ["{var}"], "a") as fh:
    fh.write(json.dumps(sys.argv[1:]) + "\\n")
"""
SRUN = RECORDER + """
if os.environ.get("SRUN_EXEC") == "1":
    args = sys.argv[1:]
    while args and args[0].startswith("-"):
        args.pop(0)
    os.environ["SLURM_NODEID"] = "0"
    os.execvp(args[0], args)
"""
SCONTROL = """#!/bin/sh
[ "$1 $2" = "show hostnames" ] || exit 2
echo "$3" | tr , '\\n'
"""
VLLM = RECORDER + """
args = sys.argv[1:]
assert args[0] == "serve", args
port = args[args.index("--port") + 1]
os.execv(sys.executable, [sys.executable, "-m", "dasd.engines.server", "--model", args[1], "--served-name", args[1],
                          "--host", "127.0.0.1", "--port", port, "--device", "cpu"])
"""


def shims(tmp_path: Path, **scripts: str) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in scripts.items():
        p = bin_dir / name
        p.write_text(text.replace("{python}", sys.executable))
        p.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT / "src"),
               VLLM_VENV=str(tmp_path / "no-venv"), DASD_VENV=str(tmp_path / "no-venv"))
    return env


def records(path: Path) -> list[list[str]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_is_valid_bash_with_sbatch_header(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    lines = script.read_text().splitlines()
    assert lines[0] == "#!/bin/bash" and os.access(script, os.X_OK)
    header = []
    for line in lines[1:]:  # sbatch reads #SBATCH lines until the first command
        if line.startswith("#SBATCH"):
            header.append(line)
        elif line.strip() and not line.startswith("#"):
            break
    assert header and len(header) == sum(1 for line in lines if line.startswith("#SBATCH"))
    for line in header:
        m = re.fullmatch(r"#SBATCH --([a-z-]+)(?:=(\S+))?", line)
        assert m and m.group(1) in SBATCH_OPTIONS, f"{script.name}: {line!r}"
    opts = dict(re.fullmatch(r"#SBATCH --([a-z-]+)(?:=(\S+))?", line).groups() for line in header)
    assert opts["ntasks-per-node"] == "1" and int(opts["nodes"]) >= 1  # one launcher/server per node
    assert re.fullmatch(r"\d+:\d\d:\d\d", opts["time"])


def test_training_job_runs_accelerate_and_dasd_train_as_they_parse(tmp_path):
    from accelerate.commands.launch import launch_command_parser
    from typer.main import get_command

    from dasd.cli import app, load

    env = shims(tmp_path, srun=SRUN.replace("{var}", "SRUN_LOG"), scontrol=SCONTROL,
                accelerate=RECORDER.replace("{var}", "ACCEL_LOG"))
    env.update(SRUN_LOG=str(tmp_path / "srun.jsonl"), ACCEL_LOG=str(tmp_path / "accel.jsonl"), SRUN_EXEC="1",
               SLURM_JOB_NODELIST="node-a,node-b,node-c,node-d", SLURM_JOB_NUM_NODES="4", SLURM_GPUS_ON_NODE="8")
    proc = subprocess.run(["bash", str(SLURM / "train_multinode.sbatch"), "configs/dasd-4b.yaml", "train.epochs=2"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    (srun,) = records(tmp_path / "srun.jsonl")
    assert "--nodes=4" in srun and "--ntasks-per-node=1" in srun
    (argv,) = records(tmp_path / "accel.jsonl")
    assert argv[0] == "launch"
    args = launch_command_parser().parse_args(argv[1:])  # accelerate's own parser: every option is real
    assert (args.num_machines, args.num_processes, args.machine_rank) == (4, 32, 0)
    assert (args.main_process_ip, args.main_process_port, args.rdzv_backend) == ("node-a", 29500, "c10d")
    assert Path(ROOT / args.config_file).is_file() and args.module and args.training_script == "dasd"

    verb, *rest = args.training_script_args
    group = get_command(app)
    ctx = group.make_context("dasd", [verb, *rest])
    cmd = group.get_command(ctx, verb)
    assert cmd is not None and verb == "train"
    params = cmd.make_context(verb, list(rest)).params  # dasd train's own options
    cfg = load(params["config"], params["args"])  # as the verb reads them
    assert cfg.train.epochs == 2 and cfg.train.resolve_batch(args.num_processes).grad_accum == 2  # 64 = 1 x 32 GPUs x 2


def test_farm_reports_servers_that_exit_and_writes_no_endpoints(tmp_path):
    env = shims(tmp_path, srun=SRUN.replace("{var}", "SRUN_LOG"), scontrol=SCONTROL)
    endpoints = tmp_path / "endpoints" / "teacher.yaml"
    env.update(SRUN_LOG=str(tmp_path / "srun.jsonl"), SLURM_JOB_NODELIST="gpu1,gpu2", POLL="0.1", TP="2")
    proc = subprocess.run(["bash", str(SLURM / "vllm_farm.sbatch"), "openai/gpt-oss-120b", str(endpoints),
                           "--max-model-len", "131072"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "the servers exited before gpu1:8000 answered" in proc.stderr
    assert not endpoints.exists()
    (srun,) = records(tmp_path / "srun.jsonl")
    cmd = srun[srun.index("vllm"):]
    assert cmd[:3] == ["vllm", "serve", "openai/gpt-oss-120b"] and "--nodes=2" in srun
    pairs = dict(zip(cmd[3::2], cmd[4::2]))
    assert pairs == {"--host": "0.0.0.0", "--port": "8000", "--tensor-parallel-size": "2",
                     "--data-parallel-size": "4", "--logprobs-mode": "raw_logprobs", "--max-model-len": "131072"}


@pytest.mark.slow  # starts dasd's server (a torch cold start) behind the farm script: ~15-30 s on 2 cores
def test_farm_writes_endpoints_the_openai_engine_uses(tmp_path, tiny_lm_dir):
    import yaml

    from dasd.engines import EngineConfig, GenerateRequest, make_engine

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = shims(tmp_path, srun=SRUN.replace("{var}", "SRUN_LOG"), scontrol=SCONTROL, vllm=VLLM.replace("{var}", "VLLM_LOG"))
    endpoints = tmp_path / "endpoints" / "student.yaml"
    env.update(SRUN_LOG=str(tmp_path / "srun.jsonl"), VLLM_LOG=str(tmp_path / "vllm.jsonl"), SRUN_EXEC="1",
               SLURM_JOB_NODELIST="127.0.0.1", PORT=str(port), POLL="0.2", READY_TIMEOUT="300")
    proc = subprocess.Popen(["bash", str(SLURM / "vllm_farm.sbatch"), tiny_lm_dir, str(endpoints)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not endpoints.exists():
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the farm did not write its endpoints file"
            time.sleep(0.2)
        urls = yaml.safe_load(endpoints.read_text())
        assert urls == [f"http://127.0.0.1:{port}/v1"]
        # as in configs/dasd-4b.yaml's comment: the file's text is the base_urls override's value
        from dasd.config import load_config

        cfg = load_config(ROOT / "configs" / "dasd-4b.yaml", [f"student.openai.base_urls={endpoints.read_text()}"])
        assert cfg.student.openai.base_urls == urls
        eng = make_engine(EngineConfig(kind="openai", model=tiny_lm_dir, tokenizer=tiny_lm_dir,
                                       openai={"base_urls": urls, "timeout_s": 60}))
        (gens,) = eng.generate([GenerateRequest(id="a", messages=[{"role": "user", "content": "3 + 4?"}], n=1,
                                                max_tokens=5, seed=1)])
        assert gens[0].finish_reason in ("stop", "length") and len(gens[0].logprobs) == len(gens[0].offsets) > 0
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # what scancel does
        out = proc.communicate(timeout=60)[0]
    assert not endpoints.exists(), out  # removed when the job ends
    (serve,) = records(tmp_path / "vllm.jsonl")
    assert serve[serve.index("--logprobs-mode") + 1] == "raw_logprobs"
