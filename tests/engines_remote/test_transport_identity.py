"""Transport-only and speed-only settings are not part of a stage's identity: a run sampled and scored
through loopback OpenAI-compatible servers, run again against other servers serving the same models
with other concurrency, timeouts, retries and backoff, or with other batch sizes, asks no engine
anything and redoes no stage; a setting that changes results still redoes what it must; a run an
earlier dasd recorded with those settings in its stage configs is not redone by the change of dasd."""

from __future__ import annotations

import json
from contextlib import contextmanager

import pytest

from dasd.config import load_config
from dasd.engines import EngineConfig, make_engine
from dasd.engines.server import EngineServer, ServerThread
from dasd.errors import ConfigError
from dasd.prompts import iter_prompts
from dasd.stages.filter import run_filter
from dasd.stages.sample import run_sample
from dasd.stages.score import run_score
from dasd.stages.select import run_select

RELAXED = ["filter.require_structure=false", "filter.drop_cutoff=false", "filter.repetition.enabled=false"]
LONG = "Compute 3 + 4 then times 2. " * 6
STAGES = ("sample", "filter", "score", "select")
# the same config as it travels otherwise: every transport-only setting of both engines changed (and the servers)
OTHER_TRANSPORT = ["teacher.openai.concurrency=3", "teacher.openai.timeout_s=77", "teacher.openai.max_retries=2",
                   "teacher.openai.backoff_s=0.5", "teacher.openai.backoff_max_s=9", "student.openai.concurrency=5",
                   "student.openai.timeout_s=66", "student.openai.max_retries=3"]
# every speed-only setting of the sample and score stages and of both engines changed
OTHER_SPEED = ["sample.batch_prompts=3", "score.batch=2", "teacher.batch_size=3", "teacher.score_batch_tokens=999",
               "teacher.logprob_chunk=7", "teacher.vllm.gpu_memory_utilization=0.5", "teacher.vllm.data_parallel_size=2",
               "teacher.vllm.enforce_eager=true", "student.batch_size=5", "student.score_batch_tokens=777",
               "student.logprob_chunk=9", "student.vllm.gpu_memory_utilization=0.6"]


class Counting:
    """A real engine that counts the generate and score requests it is asked (``generated``, ``scored``)."""

    def __init__(self, engine):
        self.engine, self.generated, self.scored = engine, 0, 0

    def generate(self, reqs):
        self.generated += len(reqs)
        return self.engine.generate(reqs)

    def score(self, reqs):
        self.scored += len(reqs)
        return self.engine.score(reqs)

    def __getattr__(self, name):
        return getattr(self.engine, name)


@pytest.fixture
def world(tmp_path, tiny_lm_dir, tiny_lm_dir_other_vocab):
    """Prompts (3 short, 1 long), the teacher engine and a student engine whose context the long
    prompt's responses do not fit (their scoring is refused by its server: quarantined in score)."""
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"id": f"p{i}", "prompt": f"Say {i}."} for i in range(3)] + [{"id": "long", "prompt": LONG}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    system = load_config(None, []).data.system_prompt
    plain = make_engine(EngineConfig(model=tiny_lm_dir_other_vocab, device="cpu"))
    long_prompt = next(p for p in iter_prompts(prompts, system) if p["id"] == "long")
    limit = len(plain.context_ids(long_prompt["messages"], None, "long"))
    teacher = Counting(make_engine(EngineConfig(model=tiny_lm_dir, device="cpu")))
    student = Counting(make_engine(EngineConfig(model=tiny_lm_dir_other_vocab, device="cpu", max_model_len=limit)))

    def overrides(urls: tuple[str, str], *extra: str, teacher_name: str = "teacher") -> list[str]:
        return [f"run_dir={tmp_path / 'run'}", f"data.prompts={prompts}", "teacher.kind=openai",
                f"teacher.model={teacher_name}", f"teacher.tokenizer={tiny_lm_dir}", f"teacher.openai.base_urls=[{urls[0]}]",
                "student.kind=openai", "student.model=student", f"student.tokenizer={tiny_lm_dir_other_vocab}",
                f"student.openai.base_urls=[{urls[1]}]", "student.openai.logprob_mode=raw", "sample.k=2",
                "sample.max_tokens=12", "sample.temperatures=[1.0]", "score.batch=8", *RELAXED, *extra]

    return tmp_path / "run", teacher, student, overrides


@contextmanager
def servers(teacher, student, teacher_name: str = "teacher"):
    """A teacher and a student server on loopback (fresh ports); their base URLs."""
    with ServerThread(EngineServer(teacher, served_name=teacher_name)) as t, \
            ServerThread(EngineServer(student, served_name="student")) as s:
        yield t.base_url, s.base_url


def run_stages(cfg) -> dict:
    return {"sample": run_sample(cfg), "filter": run_filter(cfg), "score": run_score(cfg), "select": run_select(cfg)}


def state(run) -> dict:
    """Per stage: its manifest config hash, inputs fingerprint and start time, and its files (names, sizes)."""
    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    return {st: (manifest["stages"][st]["config_hash"], manifest["stages"][st].get("inputs"),
                 manifest["stages"][st]["started"], sorted((p.name, p.stat().st_size) for p in (run / st).iterdir()))
            for st in STAGES}


def stage_configs(run) -> dict:
    return {st: info["config"] for st, info in json.loads((run / "manifest.json").read_text())["stages"].items()}


FIRST = {"scored": 6, "rejected": 2, "too_long": 2, "new": 8}  # score's counts of the first run


def test_other_servers_and_concurrency_ask_nothing_and_redo_no_stage(world, capsys):
    run, teacher, student, overrides = world
    with servers(teacher, student) as urls_a:
        first = run_stages(load_config(None, overrides(urls_a)))
    assert first["sample"]["T1"]["samples"] == 8 and first["score"]["T1"] == FIRST
    asked = (teacher.generated, student.scored)
    assert asked == (8, 8)  # the server's engine: 2 samples of each of 4 prompts; 8 responses scored, 2 refused
    before = state(run)
    capsys.readouterr()
    with servers(teacher, student) as urls_b:
        assert urls_b != urls_a
        again = run_stages(load_config(None, overrides(urls_b, *OTHER_TRANSPORT)))
    assert (teacher.generated, student.scored) == asked  # no engine was asked anything
    assert again["sample"]["T1"]["new"] == 0 and again["score"]["T1"] == FIRST  # the score counts as recorded
    after = state(run)
    assert after["sample"][:2] == before["sample"][:2] and after["sample"][3] == before["sample"][3]
    for st in ("filter", "score", "select"):  # not begun again: the same entry and the same files
        assert after[st] == before[st], st
    err = capsys.readouterr().err
    for st in ("filter", "score", "select"):
        assert f"[{st}] up to date" in err
    assert "judged again" not in err
    recorded = stage_configs(run)
    assert recorded["sample"]["teacher"]["openai"] == {"top_logprobs": 0, "logprob_mode": "auto", "token_ids": False,
                                                       "score_api": "prompt_logprobs", "extra_body": {}}
    assert "ray" not in recorded["sample"]["teacher"] and "ray" not in recorded["score"]["student"]
    assert recorded["score"]["student"]["openai"]["logprob_mode"] == "raw"
    assert "base_urls" not in recorded["score"]["student"]["openai"]


def test_other_batch_sizes_ask_nothing_and_redo_no_stage(world, capsys):
    """Changing a batch size on a finished run (sample.batch_prompts, teacher.batch_size, ...) changed
    sample's and score's recorded configs, so filter, score and select began again, each going through
    every record to find nothing to do, and select wrote its selections again (mix then ran again)."""
    run, teacher, student, overrides = world
    with servers(teacher, student) as urls:
        run_stages(load_config(None, overrides(urls)))
        asked, before = (teacher.generated, student.scored), state(run)
        capsys.readouterr()
        again = run_stages(load_config(None, overrides(urls, *OTHER_SPEED)))
    assert (teacher.generated, student.scored) == asked and again["score"]["T1"] == FIRST
    after = state(run)
    assert after["sample"][:2] == before["sample"][:2]
    for st in ("filter", "score", "select"):
        assert after[st] == before[st], st
    err = capsys.readouterr().err
    assert all(f"[{st}] up to date" in err for st in ("filter", "score", "select"))
    recorded = stage_configs(run)
    assert "batch_prompts" not in recorded["sample"]["sample"] and "batch" not in recorded["score"]["score"]
    assert not {"batch_size", "score_batch_tokens", "logprob_chunk"} & set(recorded["sample"]["teacher"])
    assert not {"gpu_memory_utilization", "data_parallel_size", "enforce_eager"} & set(recorded["score"]["student"]["vllm"])


def test_settings_that_change_results_still_redo_what_they_must(world, capsys):
    run, teacher, student, overrides = world
    with servers(teacher, student) as urls:
        run_stages(load_config(None, overrides(urls)))
    asked = (teacher.generated, student.scored)
    before = state(run)
    # the student's context length: the 2 quarantined responses are judged again (its server still refuses them)
    with servers(teacher, student) as urls:
        counts = run_stages(load_config(None, overrides(urls, "student.max_model_len=4096")))
    assert counts["score"]["T1"] == {**FIRST, "new": 2}
    assert (teacher.generated, student.scored) == (asked[0], asked[1] + 2)
    assert "2 sample(s) quarantined under other settings or models: judged again" in capsys.readouterr().err
    assert state(run)["filter"] == before["filter"]
    # another teacher (the same weights served under another name): refused while its pools are there
    # (tests/engines_remote/test_renamed_models.py); with them deleted, sampled again and the new samples scored
    with servers(teacher, student, teacher_name="teacher-b") as urls:
        with pytest.raises(ConfigError, match="teacher.model 'teacher' -> 'teacher-b'"):
            run_stages(load_config(None, overrides(urls, "student.max_model_len=4096", teacher_name="teacher-b")))
        assert teacher.generated == asked[0]
        for p in (run / "sample").glob("pool-*"):
            p.unlink()
        counts = run_stages(load_config(None, overrides(urls, "student.max_model_len=4096", teacher_name="teacher-b")))
    assert counts["sample"]["T1"]["new"] == 8 and teacher.generated == 2 * asked[0]
    # the new samples scored (2 refused); the old ones' scores and verdicts went with their pool
    assert counts["score"]["T1"] == FIRST
    assert student.scored == asked[1] + 2 + 8
    after = state(run)
    assert all(after[st][2] != before[st][2] for st in STAGES)


def test_a_run_recorded_with_transport_settings_by_an_earlier_dasd_is_not_redone(world, capsys, monkeypatch):
    """A run written as dasd wrote runs before transport settings were left out (every engine setting
    in the sample and score configs, the whole teacher config in score's inputs and verdicts): run
    again with the same config, then with other servers and concurrency, it asks nothing and redoes
    nothing; the recorded configs (and so every hash later stages compare) are kept."""
    run, teacher, student, overrides = world
    with servers(teacher, student) as urls_a:
        with monkeypatch.context() as m:
            m.setattr("dasd.runs.transport_settings", lambda: (), raising=False)  # as an earlier dasd recorded them: all
            m.setattr("dasd.runs.speed_settings", lambda *a: (), raising=False)
            run_stages(load_config(None, overrides(urls_a)))
        old = stage_configs(run)
        assert old["sample"]["teacher"]["openai"]["base_urls"] == [urls_a[0]]
        assert old["score"]["student"]["openai"]["base_urls"] == [urls_a[1]]
        asked = (teacher.generated, student.scored)
        before = state(run)
        capsys.readouterr()
        run_stages(load_config(None, overrides(urls_a)))
    assert (teacher.generated, student.scored) == asked
    assert {st: v for st, v in state(run).items() if st != "sample"} == {st: v for st, v in before.items() if st != "sample"}
    assert stage_configs(run)["sample"] == old["sample"] and stage_configs(run)["score"] == old["score"]
    with servers(teacher, student) as urls_b:
        counts = run_stages(load_config(None, overrides(urls_b, *OTHER_TRANSPORT)))
    assert (teacher.generated, student.scored) == asked
    assert counts["score"]["T1"] == FIRST
    after = state(run)
    assert after["sample"][0] == before["sample"][0]
    for st in ("filter", "score", "select"):
        assert after[st] == before[st], st
    err = capsys.readouterr().err
    assert "judged again" not in err and err.count("up to date") == 6
    # a setting that changes results makes the stage record its config as dasd does now, without them
    with servers(teacher, student) as urls_b:
        run_stages(load_config(None, overrides(urls_b, "student.max_model_len=4096")))
    assert student.scored == asked[1] + 2
    assert "base_urls" not in stage_configs(run)["score"]["student"]["openai"]


def test_a_run_recorded_with_speed_settings_by_an_earlier_dasd_is_not_redone(world, capsys, monkeypatch):
    """A run written as dasd wrote runs before speed settings were left out (transport ones already
    out): run again, with the same batch sizes and then with others, it asks nothing and redoes
    nothing; the recorded configs are kept."""
    run, teacher, student, overrides = world
    with servers(teacher, student) as urls:
        with monkeypatch.context() as m:
            m.setattr("dasd.runs.speed_settings", lambda *a: (), raising=False)  # as an earlier dasd recorded them
            run_stages(load_config(None, overrides(urls)))
        old = stage_configs(run)
        assert old["sample"]["sample"]["batch_prompts"] == 16 and old["score"]["student"]["batch_size"] == 8
        assert "base_urls" not in old["sample"]["teacher"]["openai"]
        asked, before = (teacher.generated, student.scored), state(run)
        capsys.readouterr()
        run_stages(load_config(None, overrides(urls)))
        run_stages(load_config(None, overrides(urls, *OTHER_SPEED)))
    assert (teacher.generated, student.scored) == asked
    after = state(run)
    assert after["sample"][0] == before["sample"][0]
    for st in ("filter", "score", "select"):
        assert after[st] == before[st], st
    assert stage_configs(run)["sample"] == old["sample"] and stage_configs(run)["score"] == old["score"]
    err = capsys.readouterr().err
    assert "judged again" not in err and err.count("up to date") == 6


def test_transport_settings_are_those_that_change_how_requests_travel():
    from dasd.engines.config import transport_settings
    from dasd.runs import engine_identity

    assert transport_settings() == ("openai.base_urls", "openai.api_key_env", "openai.concurrency", "openai.timeout_s",
                                    "openai.max_retries", "openai.backoff_s", "openai.backoff_max_s", "ray")
    full = EngineConfig(kind="openai", model="m", tokenizer="t", dtype="bfloat16", max_model_len=4096,
                        openai={"base_urls": ["http://a/v1"], "api_key_env": "KEY", "concurrency": 3, "timeout_s": 9.0,
                                "max_retries": 1, "backoff_s": 2.0, "backoff_max_s": 5.0, "logprob_mode": "raw",
                                "top_logprobs": 2, "token_ids": True, "score_api": "echo",
                                "extra_body": {"top_k": 20}},
                        ray={"address": "local", "replicas": 4}).model_dump(mode="json")
    kept = engine_identity(full)
    speed = ("batch_size", "score_batch_tokens", "logprob_chunk", "vllm")  # speed-only (vllm's in part)
    assert kept == {k: v for k, v in full.items() if k not in ("openai", "ray", *speed)} | {
        "openai": {"logprob_mode": "raw", "top_logprobs": 2, "token_ids": True, "score_api": "echo",
                   "extra_body": {"top_k": 20}},
        "vllm": {"tensor_parallel_size": 1, "logprobs_mode": "raw_logprobs", "extra": {}}}
    assert kept["model"] == "m" and kept["tokenizer"] == "t" and kept["dtype"] == "bfloat16" and kept["max_model_len"] == 4096
    assert full["openai"]["base_urls"] == ["http://a/v1"]  # the dump itself is left as it was


def test_speed_settings_are_those_that_change_how_fast():
    from dasd.engines.config import speed_settings
    from dasd.runs import STAGE_SECTIONS, stage_identity

    assert speed_settings() == ("batch_size", "score_batch_tokens", "logprob_chunk", "vllm.data_parallel_size",
                                "vllm.gpu_memory_utilization", "vllm.enforce_eager")
    assert {k: speed_settings(m) for k, m in STAGE_SECTIONS.items()} == {"sample": ("batch_prompts",),
                                                                        "score": ("batch",)}
    cfg = load_config(None, ["teacher.batch_size=3", "sample.batch_prompts=2"])
    full = {"sample": cfg.sample.model_dump(mode="json"), "teacher": cfg.teacher.model_dump(mode="json"), "m": 1}
    kept = stage_identity(full)
    assert kept["sample"] == {k: v for k, v in full["sample"].items() if k != "batch_prompts"} and kept["m"] == 1
    assert kept["teacher"]["vllm"] == {"tensor_parallel_size": 1, "logprobs_mode": "raw_logprobs", "extra": {}}
    assert "batch_size" not in kept["teacher"] and kept["teacher"]["max_model_len"] == full["teacher"]["max_model_len"]


def test_the_config_reference_says_which_settings_are_transport_only():
    from dasd.config import TRANSPORT_NOTE, config_reference

    rows = {line.split("|")[1].strip(" `"): line for line in config_reference().splitlines() if line.startswith("| `")}
    marked = sorted(key for key, line in rows.items() if TRANSPORT_NOTE.strip().replace("|", "\\|") in line)
    assert marked == sorted(f"{role}.openai.{k}" for role in ("teacher", "student") for k in
                            ("base_urls", "api_key_env", "concurrency", "timeout_s", "max_retries", "backoff_s", "backoff_max_s"))
    sections = [line for line in config_reference().splitlines() if line.endswith(TRANSPORT_NOTE.strip())]
    assert sections == ["Fan records out over engine replicas with Ray (``dasd.engines.fanout``)." + TRANSPORT_NOTE] * 2


def test_the_config_reference_says_which_settings_are_speed_only():
    from dasd.config import SPEED_NOTE, config_reference

    rows = {line.split("|")[1].strip(" `"): line for line in config_reference().splitlines() if line.startswith("| `")}
    marked = sorted(key for key, line in rows.items() if SPEED_NOTE.strip() in line)
    assert marked == sorted(["sample.batch_prompts", "score.batch"] + [
        f"{role}.{k}" for role in ("teacher", "student") for k in ("batch_size", "score_batch_tokens", "logprob_chunk",
                                                                  "vllm.data_parallel_size", "vllm.gpu_memory_utilization",
                                                                  "vllm.enforce_eager")])
