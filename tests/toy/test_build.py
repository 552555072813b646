"""Building the toy world: the corpus pipeline, a tiny parallel build (fast) and a full rebuild's determinism (rebuild marker)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import signal
import subprocess
import sys

import proctree
import pytest

from dasd.toy import build, world
from dasd.toy.tokenizer import build_tokenizer


def test_corpus_deterministic_and_per_spec():
    small = build.TrainSpec(**{**build.asdict(build.STUDENT_SPEC), "n_problems": 300})
    a, b = build.make_corpus(small, 0), build.make_corpus(small, 0)
    assert a == b and a != build.make_corpus(small, 1)
    assert {len(p.steps) for p, _ in a} == set(range(world.MIN_STEPS, world.MAX_STEPS + 1))
    assert all(world.split_of(p.canonical) == "train" for p, _ in a)
    styles = {world.detect_style(r) for _, r in a}
    assert styles == {"steps", "compact"}  # the student base never checks its work
    assert sum(" Check: ok." in r for _, r in a) > 0.5 * len(a)  # its rubber-stamp idiom
    teacher = build.TrainSpec(**{**build.asdict(build.TEACHER_SPEC), "n_problems": 300})
    t = build.make_corpus(teacher, 0)
    assert {world.detect_style(r) for _, r in t} == set(world.STYLES)
    assert any(", not " in r for _, r in t)  # caught slips


def test_encoding_masks_the_prompt_and_matches_the_chat_template():
    tok = build_tokenizer([""], build.STUDENT_VOCAB)
    p = world.make_problems(1, 0, "train")[0]
    resp = world.solution_text(p, "compact", random.Random(0))
    [(ids, labels)] = build.encode_examples(tok, [(p, resp)])
    prompt = tok.apply_chat_template(world.problem_to_prompt(p)["messages"], tokenize=False, add_generation_prompt=True)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert labels[:n_prompt] == [-100] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]
    assert tok.decode(ids) == prompt + resp + "<|im_end|>"
    assert ids[-1] == tok.eos_token_id


def test_length_bucketed_batches_cover_each_example_once():
    import torch

    lengths = [random.Random(i).randint(10, 300) for i in range(1000)]
    batches = build._length_bucketed_batches(lengths, 16, torch.Generator().manual_seed(0))
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat)) and all(len(b) == 16 for b in batches)
    assert len(flat) >= 1000 - 16 * (1000 // (16 * 50) + 1)
    again = build._length_bucketed_batches(lengths, 16, torch.Generator().manual_seed(0))
    assert again == batches


def test_default_toy_dir_prefers_shipped_then_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DASD_CACHE", str(tmp_path / "cache"))
    assert build.cache_dir() == tmp_path / "cache"
    if build._complete(build.SHIPPED_DIR):
        assert build.default_toy_dir() == build.SHIPPED_DIR
    monkeypatch.setattr(build, "SHIPPED_DIR", tmp_path / "nothing")
    fake = tmp_path / "cache" / "toy"
    for m in ("teacher", "student"):
        (fake / m).mkdir(parents=True)
        (fake / m / "config.json").write_text("{}")
        (fake / m / "model.safetensors").write_bytes(b"")
    assert build.default_toy_dir() == fake  # complete cache: used, nothing rebuilt
    # The column world has its own shipped folder and cache, never the chain world's.
    column = tmp_path / "cache" / "toy-column"
    for m in ("teacher", "student"):
        (column / m).mkdir(parents=True)
        (column / m / "config.json").write_text("{}")
        (column / m / "model.safetensors").write_bytes(b"")
    assert build.shipped_dir("column") == tmp_path / "nothing" / "column"
    assert build.default_toy_dir("column") == column and build.default_toy_dir() == fake
    with pytest.raises(ValueError, match="unknown toy world 'colum'"):
        build.default_toy_dir("colum")


def _digests(d):
    return {m: hashlib.sha256((d / m / "model.safetensors").read_bytes()).hexdigest() for m in ("teacher", "student")}


def _tiny_specs():
    kw = dict(hidden=16, layers=1, heads=1, steps=3, batch_size=2, warmup=1, n_problems=40, eval_problems=2)
    return {n: dataclasses.replace(spec, **kw) for n, spec in build.SPECS.items()}


def test_parallel_build_equals_sequential(tmp_path):
    """The two models built side by side in two processes are byte-identical to building them one
    after the other in this process; the manifest records the build."""
    specs = _tiny_specs()
    paths = build.build_toy_world(tmp_path / "par", seed=3, specs=specs, log=lambda s: None, checks=False)
    build.build_toy_world(tmp_path / "seq", seed=3, specs=specs, parallel=False, log=lambda s: None, checks=False)
    assert paths == {m: str(tmp_path / "par" / m) for m in ("teacher", "student")}
    assert _digests(tmp_path / "par") == _digests(tmp_path / "seq")
    for m in ("teacher", "student"):
        assert (tmp_path / "par" / m / "tokenizer.json").read_bytes() == (tmp_path / "seq" / m / "tokenizer.json").read_bytes()
        assert not (tmp_path / "par" / f".{m}.building").exists()
    man = json.loads((tmp_path / "par" / "manifest.json").read_text())
    assert man["parallel"] is True and man["seed"] == 3 and man["threads"] == 1
    for m in ("teacher", "student"):
        info = man["models"][m]
        assert info["spec"]["steps"] == 3 and set(info["eval"]) == {"T=0.6", "T=1.0"}
        assert 0.0 <= info["eval"]["T=0.6"]["accuracy"] <= 1.0
    assert "checks" not in man


TINY_CHECKS = dict(n_prompts=3, k=2, max_tokens=12, require_correct=False, n_test=3, epochs=1, batch_size=2)


def test_world_checks_on_tiny_models(tmp_path):
    """The mechanism checks run end to end through the hf engine and dasd.rules.das on tiny models, are
    deterministic, and their pass flags follow their numbers; the build stores them in the manifest."""
    from dasd.toy.checks import format_checks, world_checks

    lines: list[str] = []
    build.build_toy_world(tmp_path / "w", seed=1, specs=_tiny_specs(), parallel=False, log=lines.append,
                          check_kw=TINY_CHECKS)
    man = json.loads((tmp_path / "w" / "manifest.json").read_text())
    res = man["checks"]
    assert set(res["checks"]) == {"teacher_share", "student_sentences", "distillation"}
    for key in ("T=0.6", "T=1.0"):
        t = res["by_temperature"][key]
        assert t["samples"] == t["kept"] == 3 * 2  # require_correct=False keeps every sample
        assert 0.0 <= t["share_with_student_sentences"] <= 1.0
    ts, ss, di = (res["checks"][k] for k in ("teacher_share", "student_sentences", "distillation"))
    assert ts["pass"] == (ts["gap"] >= 0.10) and abs(ts["gap"] - (ts["das"] - ts["random"])) < 1e-12
    stamp_ok = ss["stamps_typed_student"] is not None and ss["stamps_typed_student"] >= 0.5
    assert ss["pass"] == (ss["share_of_responses"] >= 0.01 and stamp_ok) and ss["temperature"] == 1.0
    acc = di["accuracy"]
    assert di["pass"] == (di["gain_at_0.6"] >= 0.05 and all(a["student_tuned"] < a["teacher"] for a in acc.values()))
    assert di["fine_tune"]["examples"] == 3 * 2 and di["fine_tune"]["steps"] == 3  # m=1 per prompt and temperature
    assert res["all_pass"] == (ts["pass"] and ss["pass"] and di["pass"])
    assert [ln for ln in lines if ln.startswith("[checks] ") and ("PASS" in ln or "FAIL" in ln)] == [
        ln for ln in format_checks(res) if "PASS" in ln or "FAIL" in ln
    ]
    again = world_checks(tmp_path / "w", seed=1, log=lambda s: None, **TINY_CHECKS)
    again.pop("seconds"), res.pop("seconds")
    assert json.loads(json.dumps(again)) == res


@pytest.mark.rebuild
def test_full_rebuild_is_deterministic(tmp_path):
    paths = build.build_toy_world(tmp_path / "a", seed=0, evaluate=False)
    assert set(paths) == {"teacher", "student"}
    build.build_toy_world(tmp_path / "b", seed=0, evaluate=False)
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    for m in ("teacher", "student"):
        for f in ("tokenizer.json", "config.json"):
            assert (tmp_path / "a" / m / f).read_bytes() == (tmp_path / "b" / m / f).read_bytes()


def test_stamp_sentences_are_found_and_typed_by_their_log_probs():
    """A rubber stamp the teacher finds unlikely and the student likely is a Student sentence; the
    other sentences of the response are not stamps, whatever their type."""
    from dasd.rules.das import score_sample
    from dasd.toy.checks import stamp_sentences
    from dasd.toy.world import STAMP

    text = f"<think>\nStart at 3.\nStep 1: add 4. 3 + 4 = 7. {STAMP}\nThe final value is 7.\n</think>\nThe answer is \\boxed{{7}}."
    lo = text.index(STAMP)
    offsets = [[i, i + 1] for i in range(len(text))]
    teacher = [-2.0 if lo <= i < lo + len(STAMP) else -0.1 for i in range(len(text))]
    student = [-0.1] * len(text)
    scored = score_sample({"id": "s", "text": text, "teacher": {"offsets": offsets, "logprobs": teacher}}, offsets, student)
    rows = stamp_sentences([scored])
    assert len(rows) == 1 and rows[0]["type"] == "student" and rows[0]["delta"] < -0.693
    assert sum(r["type"] == "student" for r in scored["sentences"]) == 1


@pytest.mark.skipif(not proctree.HAS_PROC, reason="reads child processes from /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_stopped_parallel_build_ends_its_workers_and_writes_no_model(tmp_path, sig):
    """SIGTERM to `dasd toy build` while its two workers train: the command ends with exit 143 and
    its one line, the workers end with it (they used to train on for minutes, orphaned), and no
    model is written where the pipeline looks. SIGKILL (no unwinding in the command): the workers
    see their parent gone and end too (``dasd.signals.exit_with_parent``)."""
    import threading

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "w"
    proc = subprocess.Popen([sys.executable, "-m", "dasd", "toy", "build", "--world", "column", "--out", str(out)],
                            stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    training = threading.Event()

    def pump():  # a worker left alive keeps the pipe open: read it aside, never block the test on it
        for line in proc.stderr:
            lines.append(line)
            if "] step " in line:  # the first training line: both workers are up and training
                training.set()

    threading.Thread(target=pump, daemon=True).start()
    workers: set[int] = set()
    try:
        assert training.wait(timeout=300), "".join(lines)
        workers = proctree.children(proc.pid)
        assert len(workers) >= 2, workers  # two model workers (and the resource tracker)
        proc.send_signal(sig)
        code = proc.wait(timeout=120)  # the timeouts only guard against a hang
        left = proctree.left_alive(workers)
    finally:
        proctree.kill_all((proc.pid, *workers))
    rest = "".join(lines)
    assert not left, left
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL, rest
    else:
        assert code == 143, rest
        assert rest.strip().splitlines()[-1].startswith("dasd: terminated (SIGTERM)"), rest
    assert "Traceback" not in rest, rest
    assert not (out / "teacher").exists() and not (out / "student").exists()
