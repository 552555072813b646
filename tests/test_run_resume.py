"""`dasd run` killed with SIGKILL at several points (mid-sampling, mid-training, mid-evaluation), or
stopped with SIGTERM / kill -9 at random moments of sampling, training, mixing and evaluation, and
re-run ends with the same data sets as an uninterrupted run, and no record twice. A second writer
on the same run is refused while the first runs."""

from __future__ import annotations

import glob
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import proctree
import pyarrow.parquet as pq
import pytest
import yaml

OUTPUTS = [  # (stage folder, output name prefix) compared between runs
    ("sample", "pool-"), ("sample", "prompts"), ("filter", "kept-"), ("filter", "rejects"), ("score", "pool-"),
    ("select", "selected-"), ("select", "train-"), ("mix", "examples"), ("mix", "rollouts"), ("eval", "results-"),
    ("analyze", "responses"),
]


def write_config(tmp: Path, run: str, teacher: str, student: str, n_prompts: int = 6, mix: dict | None = None) -> Path:
    prompts = tmp / "prompts.jsonl"
    if not prompts.exists():
        prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Say {i}.", "answer": str(i)}) + "\n"
                                   for i in range(n_prompts)), encoding="utf-8")
    cfg = {
        "run_dir": str(tmp / run), "teacher": {"model": teacher}, "student": {"model": student},
        "data": {"prompts": str(prompts)},
        "sample": {"k": 2, "max_tokens": 12, "batch_prompts": 2},
        "filter": {"require_structure": False, "drop_cutoff": False, "repetition": {"enabled": False}},
        "train": {"context": 256, "packing": False, "epochs": 1, "micro_batch": 1, "save_every": 1, "lr": 1e-3, "min_lr": 1e-4},
        "mix": {"n_questions": 4, "max_continuation_tokens": 6, "require_structure": False, "require_correct": False,
                "batch_questions": 2},
        "eval": {"benchmarks": [{"name": "tiny", "format": "prompts", "path": str(prompts)}],
                 "protocol": {"n": 2, "max_tokens": 6, "temperature": 1.0}, "batch_requests": 2,
                 "models": ["student", "stage2_high", "stage3_mixed"]},
        "analyze": {"max_responses": 4},
    }
    cfg["mix"].update(mix or {})
    path = tmp / f"{run}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def dasd_run(config: Path, kill_when=None, timeout: float = 300, sig: int = signal.SIGKILL, delay: float = 0.0):
    """Run `dasd run`; with ``kill_when`` (a glob, or a function that says when), send ``sig``
    ``delay`` seconds after that path exists. SIGTERM must end it with exit 143 and one line saying
    how to resume. Either way no process it started may outlive it (grading workers, the fork server:
    they used to hold its output open after a SIGKILL, so reading that output never ended)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dasd", "run", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env, text=True)
    t0 = time.monotonic()
    if kill_when is not None:
        ready = kill_when if callable(kill_when) else lambda: glob.glob(kill_when)
        while proc.poll() is None and time.monotonic() - t0 < timeout:
            if ready():
                time.sleep(delay)
                if proc.poll() is not None:
                    break
                tree = proctree.descendants(proc.pid)
                os.kill(proc.pid, sig)
                out, _ = proc.communicate(timeout=timeout)
                assert not proctree.left_alive(tree), f"processes outlived dasd after signal {sig}"
                if proc.returncode == 0 and "[run] done in" in out:
                    return "finished"  # it ended between poll() and kill(): the signal found a finished process
                if sig == signal.SIGTERM:
                    assert proc.returncode == 143, out[-3000:]
                    assert out.strip().splitlines()[-1].startswith("dasd: terminated (SIGTERM); what was complete is kept; "
                                                                   f"resume with: dasd run {config}"), out[-3000:]
                    assert "Traceback" not in out, out[-3000:]
                return "killed"
            time.sleep(0.02)
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def in_stage(run: Path, stage: str):
    """A ``kill_when`` that is true while ``stage`` has begun and not finished (from the manifest)."""
    def ready() -> bool:
        try:
            info = json.loads((run / "manifest.json").read_text(encoding="utf-8"))["stages"].get(stage)
        except (OSError, ValueError, KeyError):
            return False
        return bool(info) and not info.get("complete")

    return ready


def records(run: Path) -> dict[str, Counter]:
    """Per output: a Counter of (id, content) over every shard on disk (duplicates would show).

    JSONL shards are read line by line; a Parquet output is read joined through the store, each
    record counted as many times as its id is on disk."""
    from dasd.columnar import plain
    from dasd.store import RunStore

    store = RunStore.open(run)
    out: dict[str, Counter] = {}
    for stage, prefix in OUTPUTS:
        for path in sorted((run / stage).glob(f"{prefix}*.jsonl")):
            name = f"{stage}/{path.name.rsplit('-', 1)[0]}"
            c = out.setdefault(name, Counter())
            for line in path.read_text(encoding="utf-8").splitlines():
                r = json.loads(line)
                r.pop("where", None)
                c[json.dumps(r, sort_keys=True)] += 1
        for output in sorted({p.name.rsplit("-", 1)[0] for p in (run / stage).glob(f"{prefix}*.parquet")}):
            on_disk = Counter(i for p in (run / stage).glob(f"{output}-*.parquet")
                              for i in pq.read_table(p, columns=["id"])["id"].to_pylist())
            c = out.setdefault(f"{stage}/{output}", Counter())
            for r in store.read(stage, output):
                c[json.dumps(plain(r), sort_keys=True)] += on_disk[r["id"]]
    return out


def keys(name: str, c: Counter) -> list:
    """What identifies a record of a post-training output independently of the run directory."""
    recs = [json.loads(k) for k in c]
    if name.startswith("eval/"):
        return sorted((r["model_label"], r["problem_id"], r["sample_index"]) for r in recs)
    if name.startswith("mix/"):
        return sorted((r.get("prompt_id") or r["messages"][-2]["content"]) for r in recs)
    return sorted((r["problem_id"], r["correct"]) for r in recs)


@pytest.mark.slow
def test_kill_9_at_several_points_then_rerun_equals_uninterrupted(tmp_path, tiny_lm_dir, tiny_lm_dir_other_vocab):
    ref_cfg = write_config(tmp_path, "ref", tiny_lm_dir, tiny_lm_dir_other_vocab)
    dasd_run(ref_cfg)
    cfg = write_config(tmp_path, "killed", tiny_lm_dir, tiny_lm_dir_other_vocab)
    run = tmp_path / "killed"
    kill_points = [
        f"{run}/sample/pool-T0.6-00000.parquet",                       # mid-sampling
        f"{run}/train/stage1_low/checkpoints/step-000002",             # mid-training, stage 1
        f"{run}/train/stage2_high/checkpoints/step-000001",            # mid-training, stage 2
        f"{run}/eval/results-student-*.jsonl",                         # mid-evaluation
    ]
    outcomes = [dasd_run(cfg, kill_when=k) for k in kill_points]
    assert outcomes.count("killed") >= 3, outcomes
    final = dasd_run(cfg)
    ref, got = records(tmp_path / "ref"), records(run)
    assert set(got) == set(ref)
    for name in ref:
        assert all(n == 1 for n in got[name].values()), f"{name}: a record was written twice"
        if name.startswith(("sample/", "filter/", "score/", "select/")):
            assert got[name] == ref[name], name  # data sets before training: identical
        else:  # after training: the same records by key (ids embed model paths, which differ per run dir)
            assert keys(name, got[name]) == keys(name, ref[name]), name
    for stage in ("stage1_low", "stage2_high"):
        a = json.loads((tmp_path / "ref" / "train" / stage / "done.json").read_text())
        b = json.loads((run / "train" / stage / "done.json").read_text())
        assert a["steps"] == b["steps"] and abs(a["final_loss"] - b["final_loss"]) < 1e-4
    assert "[run] report:" in final
    # a second re-run has nothing left to do
    again = dasd_run(cfg)
    assert "samples graded" not in again and records(run) == got


# Models whose mixed-policy stage keeps examples: a teacher nudged towards its end-of-turn token (its
# answers and continuations end), a student nudged towards sentence ends (its rollouts have cut points).
MIX_CORPUS = [
    "<think>\nStep one: 3 + 4 = 7.\nThen 7 * 2 = 14.\nCheck it.\n</think>\nThe answer is \\boxed{14}.",
    "<think>\nStart at 5. 5 - 2 = 3.\nCheck: 3 is right.\n</think>\nSo \\boxed{3}.",
    "<think>\nLet me think. First, 12 / 4 = 3.\nThen 3 + 9 = 12! Done.\n</think>\nThe answer is \\boxed{12}.",
]


@pytest.mark.slow
def test_sigterm_and_kill_9_at_random_moments_including_mix_then_rerun_equals_uninterrupted(tmp_path, nudged_lm):
    seed = int(os.environ.get("DASD_FAULT_SEED", "0"))
    rng = random.Random(seed)
    teacher = nudged_lm(tmp_path / "teacher", list(reversed(MIX_CORPUS)) * 30, 420, 4, {"<|im_end|>"}, 1.3)
    student = nudged_lm(tmp_path / "student", MIX_CORPUS * 20, 360, 3, {"\n", "."}, 1.6)
    mix = {"n_questions": 12, "max_continuation_tokens": 40, "batch_questions": 2}
    ref_cfg = write_config(tmp_path, "ref", teacher, student, n_prompts=12, mix=mix)
    dasd_run(ref_cfg)
    ref_mixed = json.loads((tmp_path / "ref" / "train" / "stage3_mixed" / "done.json").read_text())
    assert ref_mixed["examples"] >= 2  # the mixed stage really trains (on more than one step)
    cfg = write_config(tmp_path, "stopped", teacher, student, n_prompts=12, mix=mix)
    run = tmp_path / "stopped"
    plan = [
        (signal.SIGTERM, in_stage(run, "sample")),
        (signal.SIGKILL, f"{run}/train/stage1_low/checkpoints/step-000001"),
        (signal.SIGTERM, in_stage(run, "mix")),   # partial mixed set flushed: must not feed stage 3
        (signal.SIGKILL, in_stage(run, "mix")),
        (signal.SIGTERM, f"{run}/train/stage3_mixed/checkpoints/step-000001"),
        (signal.SIGTERM, in_stage(run, "eval")),
    ]
    outcomes = [dasd_run(cfg, kill_when=when, sig=sig, delay=rng.uniform(0.0, 0.5)) for sig, when in plan]
    assert outcomes.count("killed") >= 4, (seed, outcomes)
    # two writers: while one `dasd run` works, a second one on the same run is refused, naming the first
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen([sys.executable, "-m", "dasd", "run", str(cfg)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, env=env, text=True)
    t0 = time.monotonic()
    while f'"pid": {first.pid}' not in (run / ".lock").read_text() and time.monotonic() - t0 < 120:
        time.sleep(0.05)
    second = subprocess.run([sys.executable, "-m", "dasd", "run", str(cfg)], capture_output=True, text=True, env=env)
    final, _ = first.communicate(timeout=600)
    assert first.returncode == 0, final[-3000:]
    assert second.returncode == 2 and f"run directory in use by pid {first.pid}" in second.stderr, second.stderr
    ref, got = records(tmp_path / "ref"), records(run)
    assert set(got) == set(ref)
    for name in ref:
        assert all(n == 1 for n in got[name].values()), f"{name}: a record was written twice"
        if name.startswith(("sample/", "filter/", "score/", "select/")):
            assert got[name] == ref[name], name
        else:
            assert keys(name, got[name]) == keys(name, ref[name]), name
    for stage in ("stage1_low", "stage2_high", "stage3_mixed"):
        a = json.loads((tmp_path / "ref" / "train" / stage / "done.json").read_text())
        b = json.loads((run / "train" / stage / "done.json").read_text())
        assert a["steps"] == b["steps"] and a["examples"] == b["examples"], stage  # stage 3: the whole mixed set
        assert abs(a["final_loss"] - b["final_loss"]) < 1e-4, stage
    assert "[run] report:" in final


def test_changed_filter_and_score_settings_redo_their_records_as_a_fresh_run_would(tmp_path, tiny_lm_dir,
                                                                                  tiny_lm_dir_other_vocab, capsys):
    """sample -> filter -> score -> select, then again with another filter threshold and DAS threshold:
    the data sets equal a fresh run's with the new settings. Resuming by id used to keep what the old
    settings made (samples the new filter drops, scores with the old tau), and select then found its
    inputs unchanged and kept its old selection. A setting that changes only speed (batch sizes)
    still resumes. Score keeps the scores of the samples the new filter still keeps (each scored in
    a batch of its own here, so a fresh run's log-probs are the same to the last bit) with the
    sentence types they were scored under: select types them again under the new tau
    (docs/pipeline.md), so those types and the stored DAS summary are left out of the comparison."""
    from dasd.config import load_config
    from dasd.stages.filter import run_filter
    from dasd.stages.sample import run_sample
    from dasd.stages.score import run_score
    from dasd.stages.select import run_select

    def up_to_select(path, overrides=()):
        cfg = load_config(path, ["student.score_batch_tokens=1", *overrides])
        for stage in (run_sample, run_filter, run_score, run_select):
            stage(cfg)

    def untyped(run):
        out = {}
        for name, c in records(run).items():
            out[name] = Counter()
            for k, n in c.items():
                r = json.loads(k)
                if name.startswith(("score/pool-", "select/selected-", "select/rejected-")):
                    r.pop("das")
                    for row in r["sentences"]:
                        row.pop("type")
                out[name][json.dumps(r, sort_keys=True)] += n
        return out

    changed = write_config(tmp_path, "changed", tiny_lm_dir, tiny_lm_dir_other_vocab)
    up_to_select(changed)
    before = records(tmp_path / "changed")
    new = ["filter.max_student_tokens=21", "das.tau=0.05"]
    fresh = write_config(tmp_path, "fresh", tiny_lm_dir, tiny_lm_dir_other_vocab)
    up_to_select(fresh, new)
    ref = untyped(tmp_path / "fresh")
    capsys.readouterr()
    up_to_select(changed, new)
    err = capsys.readouterr().err
    got = untyped(tmp_path / "changed")
    assert 0 < len(ref["filter/kept-T0.6"]) < len(before["filter/kept-T0.6"])  # the new filter drops some
    assert set(got) == set(ref)
    for name in ref:
        assert got[name] == ref[name], name
    assert "[filter] max_student_tokens changed since this stage last ran: its 2 stored output(s) dropped" in err
    assert "[score] das.tau changed" not in err  # score was redone for its rewritten inputs, not for das.tau
    kept = len(ref["score/pool-T0.6"]) + len(ref["score/pool-T1"])
    assert f"made from them keep the {kept} record(s) whose input is there unchanged" in err  # none scored again
    scored = {(p.name, p.stat().st_mtime_ns) for p in (tmp_path / "changed" / "score").iterdir()}
    up_to_select(changed, [*new, "score.batch=1", "student.batch_size=1"])
    assert "changed since" not in capsys.readouterr().err
    assert {(p.name, p.stat().st_mtime_ns) for p in (tmp_path / "changed" / "score").iterdir()} == scored
    assert untyped(tmp_path / "changed") == ref


def test_a_das_setting_changed_after_scoring_reranks_without_scoring_again(tmp_path, tiny_lm_dir,
                                                                          tiny_lm_dir_other_vocab, capsys):
    """das.tau changed on a scored run: score resumes (no student pass, its shards untouched) and
    select keeps what a fresh run with the new tau selects, with the same summary."""
    from dasd.config import load_config
    from dasd.stages.filter import run_filter
    from dasd.stages.sample import run_sample
    from dasd.stages.score import run_score
    from dasd.stages.select import run_select

    def up_to_select(path, overrides=()):
        cfg = load_config(path, list(overrides))
        out = None
        for stage in (run_sample, run_filter, run_score, run_select):
            out = stage(cfg)
        return out

    changed = write_config(tmp_path, "changed", tiny_lm_dir, tiny_lm_dir_other_vocab)
    up_to_select(changed)
    scored = {(p.name, p.stat().st_mtime_ns) for p in (tmp_path / "changed" / "score").iterdir()}
    fresh = write_config(tmp_path, "fresh", tiny_lm_dir, tiny_lm_dir_other_vocab)
    want = up_to_select(fresh, ["das.tau=0.05"])
    capsys.readouterr()
    got = up_to_select(changed, ["das.tau=0.05"])
    assert "changed since" not in capsys.readouterr().err
    assert {(p.name, p.stat().st_mtime_ns) for p in (tmp_path / "changed" / "score").iterdir()} == scored
    assert got == want
    got_sel, want_sel = records(tmp_path / "changed"), records(tmp_path / "fresh")
    sel = [n for n in want_sel if n.startswith("select/selected-")]
    assert sel and all(sorted(r["id"] for r in map(json.loads, got_sel[n])) ==
                       sorted(r["id"] for r in map(json.loads, want_sel[n])) for n in sel)
