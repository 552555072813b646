"""A teacher or student known only by the name its server serves it under (``kind: openai``: no
``runs.model_version``) and renamed in the config is another model to dasd. `dasd sample` refuses
in one line, before any request, to add a renamed teacher's samples to the pools of the old one;
`dasd score` scores every kept response again with a renamed student, as it does for a student
whose version changed. Real loopback servers, real tiny models; the requests each server's engine
answered are counted."""

from __future__ import annotations

import json
from contextlib import contextmanager

import pytest

from dasd.config import load_config
from dasd.engines import EngineConfig, make_engine
from dasd.engines.server import EngineServer, ServerThread
from dasd.errors import ConfigError
from dasd.stages.filter import run_filter
from dasd.stages.sample import run_sample
from dasd.stages.score import run_score
from dasd.store import RunStore
from .test_transport_identity import RELAXED, Counting


@pytest.fixture
def world(tmp_path, tiny_lm_dir, tiny_lm_dir_other_vocab):
    """3 prompts; a counted teacher engine and a counted student engine (each served by a loopback
    server under the name a test gives); ``overrides(urls, teacher=..., student=...)``."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Say {i}."}) + "\n" for i in range(3)),
                       encoding="utf-8")
    teacher = Counting(make_engine(EngineConfig(model=tiny_lm_dir, device="cpu")))
    student = Counting(make_engine(EngineConfig(model=tiny_lm_dir_other_vocab, device="cpu")))

    def overrides(urls: tuple[str, str], teacher_name: str = "teacher-a", student_name: str = "student-a") -> list[str]:
        return [f"run_dir={tmp_path / 'run'}", f"data.prompts={prompts}", "teacher.kind=openai",
                f"teacher.model={teacher_name}", f"teacher.tokenizer={tiny_lm_dir}", f"teacher.openai.base_urls=[{urls[0]}]",
                "student.kind=openai", f"student.model={student_name}", f"student.tokenizer={tiny_lm_dir_other_vocab}",
                f"student.openai.base_urls=[{urls[1]}]", "student.openai.logprob_mode=raw", "sample.k=2",
                "sample.max_tokens=12", "sample.temperatures=[1.0]", "score.batch=8", *RELAXED]

    return tmp_path / "run", teacher, student, overrides


@contextmanager
def servers(teacher, student, teacher_name: str = "teacher-a", student_name: str = "student-a"):
    """A teacher and a student server on loopback (fresh ports), serving under the names given; their base URLs."""
    with ServerThread(EngineServer(teacher, served_name=teacher_name)) as t, \
            ServerThread(EngineServer(student, served_name=student_name)) as s:
        yield t.base_url, s.base_url


def pool(run) -> list[dict]:
    return list(RunStore.open(run).read("sample", "pool-T1"))


def test_a_renamed_served_teacher_is_refused_before_any_request(world):
    run, teacher, student, overrides = world
    with servers(teacher, student, teacher_name="teacher-a") as urls:
        assert run_sample(load_config(None, overrides(urls)))["T1"]["samples"] == 6
    assert teacher.generated == 6  # the server's engine: 2 samples of each of 3 prompts
    files = sorted((p.name, p.stat().st_size) for p in (run / "sample").iterdir())
    manifest = (run / "manifest.json").read_text(encoding="utf-8")
    # another model served under another name: nothing tells dasd it is not the same one but the name
    with servers(teacher, student, teacher_name="teacher-b") as urls:
        with pytest.raises(ConfigError) as err:
            run_sample(load_config(None, overrides(urls, teacher_name="teacher-b")))
    msg = str(err.value)
    assert "\n" not in msg
    assert "teacher.model 'teacher-a' -> 'teacher-b'" in msg
    for choice in ("set it back", f"delete {run / 'sample'}/pool-*", "another run_dir"):
        assert choice in msg
    assert teacher.generated == 6  # no request
    assert sorted((p.name, p.stat().st_size) for p in (run / "sample").iterdir()) == files  # nothing written
    assert (run / "manifest.json").read_text(encoding="utf-8") == manifest
    assert {r["model"] for r in pool(run)} == {"teacher-a"} and len(pool(run)) == 6
    # the choices the line gives: set it back (nothing to ask), or delete the pools (sampled again)
    with servers(teacher, student, teacher_name="teacher-a") as urls:
        assert run_sample(load_config(None, overrides(urls)))["T1"]["new"] == 0
    assert teacher.generated == 6
    for p in (run / "sample").glob("pool-*"):
        p.unlink()
    with servers(teacher, student, teacher_name="teacher-b") as urls:
        counts = run_sample(load_config(None, overrides(urls, teacher_name="teacher-b")))
    assert counts["T1"]["samples"] == counts["T1"]["new"] == 6 and teacher.generated == 12
    assert {r["model"] for r in pool(run)} == {"teacher-b"}


def test_a_renamed_served_student_scores_every_kept_response_again(world, capsys):
    """A student served under another name is another student: its scores are not resumed by
    sample id (scores of the old one would be selected on beside the new one's), as for a student
    whose files changed (``runs.drop_if_models_changed``). The same name again resumes."""
    run, teacher, student, overrides = world
    with servers(teacher, student) as urls:
        cfg = load_config(None, overrides(urls))
        run_sample(cfg)
        run_filter(cfg)
        first = run_score(cfg)
    assert first["T1"] == {"scored": 6, "rejected": 0, "new": 6} and student.scored == 6
    shards = sorted(p.name for p in (run / "score").glob("pool-*"))
    capsys.readouterr()
    with servers(teacher, student, student_name="student-b") as urls:
        counts = run_score(load_config(None, overrides(urls, student_name="student-b")))
    assert "[score] the student model changed since this stage last ran: its 1 stored output(s) dropped" \
        in capsys.readouterr().err
    assert counts["T1"] == {"scored": 6, "rejected": 0, "new": 6}
    assert student.scored == 12  # every kept response scored again by the renamed student
    assert not set(shards) & {p.name for p in (run / "score").glob("pool-*")}  # the old student's scores are gone
    assert teacher.generated == 6
    with servers(teacher, student, student_name="student-b") as urls:
        assert run_score(load_config(None, overrides(urls, student_name="student-b"))) == counts  # up to date
    assert student.scored == 12
