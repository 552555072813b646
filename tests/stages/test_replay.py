"""Stage 3's off-policy replay: the mixed-policy examples plus a seeded draw of stage-2 examples
(``dasd.rules.mixing.replay_examples``), and the ``mixed+replay`` named pool of a run."""

from __future__ import annotations

import shutil

import pytest

from dasd.config import load_config
from dasd.rules.mixing import PAPER_REPLAY_RATIO, ReplayConfig, replay_examples
from dasd.runs import named_pools, resolve_model
from dasd.store import RunStore


def _ex(name: str, n: int) -> list[dict]:
    return [{"id": f"{name}{i:03d}", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": f"{name}{i}"}],
             "prefix_chars": 3 if name == "mix" else 0, "source": name} for i in range(n)]


def test_replay_counts_ratio_determinism_and_no_duplicates():
    mixed, off = _ex("mix", 10), _ex("off", 100)
    out, n = replay_examples(mixed, off, ReplayConfig())
    # the paper's ratio: 20K off-policy with 7.7K mixed -> round(2.5974 x 10) = 26
    assert PAPER_REPLAY_RATIO == pytest.approx(20 / 7.7, abs=1e-4)
    assert n == {"mixed": 10, "replay": 26, "requested": 26, "available": 100}
    assert out[:10] == mixed and len(out) == 36
    replayed = out[10:]
    assert len({e["id"] for e in replayed}) == 26 and all(e["source"] == "off" for e in replayed)
    # deterministic, independent of input order; another seed draws other examples
    assert replay_examples(mixed, list(reversed(off)), ReplayConfig())[0] == out
    other = replay_examples(mixed, off, ReplayConfig(seed=1))[0][10:]
    assert {e["id"] for e in other} != {e["id"] for e in replayed}
    # a larger ratio extends a smaller draw
    small = replay_examples(mixed, off, ReplayConfig(ratio=1.0))[0][10:]
    assert [e["id"] for e in small] == [e["id"] for e in replayed[:10]]
    # ratio 0: the mixed examples alone
    assert replay_examples(mixed, off, ReplayConfig(ratio=0))[0] == mixed


def test_replay_never_repeats_an_example_and_caps_at_the_pool():
    mixed, off = _ex("mix", 4), _ex("off", 5)
    dup = off + off[:3] + mixed[:2]  # repeated ids, and ids already among the mixed examples
    out, n = replay_examples(mixed, dup, ReplayConfig(ratio=3.0))
    assert n == {"mixed": 4, "replay": 5, "requested": 12, "available": 5}
    assert len({e["id"] for e in out}) == len(out) == 9


def test_mixed_replay_named_pool_of_a_run(tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", "sample.temperatures=[0.6, 1.0]", "mix.replay.ratio=2.0"])
    store = RunStore(cfg.run_dir)
    store.begin_stage("select", {})
    for pool, name in (("T0.6", "low"), ("T1", "high")):
        with store.writer("select", f"train-{pool}") as w:
            for e in _ex(name, 8):
                w.add(e)
    store.end_stage("select", {})
    assert "mixed+replay" not in named_pools(cfg, store)  # no mixed-policy examples yet
    store.begin_stage("mix", {"mix": cfg.mix.model_dump()})  # as `dasd mix` records it (mixed needs a finished mix)
    with store.writer("mix", "examples") as w:
        for e in _ex("mix", 3):
            w.add(e)
    store.end_stage("mix", {})
    data = named_pools(cfg, store)
    got = data["mixed+replay"]
    assert [e["source"] for e in got] == ["mix"] * 3 + ["high"] * 6
    assert {e["id"] for e in got[3:]} <= {e["id"] for e in data["high"]}
    assert named_pools(cfg, store)["mixed+replay"] == got
    low = load_config(None, [f"run_dir={tmp_path / 'run'}", "sample.temperatures=[0.6, 1.0]", "mix.replay.source=low"])
    assert [e["source"] for e in named_pools(low, store)["mixed+replay"]][3:] == ["low"] * 8
    # the default schedule's stage 3 trains on it
    assert [s.data for s in cfg.train.stages] == ["low", "high", "mixed+replay"]


def _replay_held(mixed, off_policy, cfg):
    """The draw as it was when the whole off-policy pool was held and sorted (the reference)."""
    import hashlib

    taken = {e["id"] for e in mixed}
    unique = {}
    for e in off_policy:
        if e["id"] not in taken:
            unique.setdefault(e["id"], e)
    requested = round(cfg.ratio * len(mixed))
    ranked = sorted(unique.values(), key=lambda e: hashlib.sha256(f"{cfg.seed}:{e['id']}".encode()).hexdigest())
    return [*mixed, *ranked[:requested]], {"mixed": len(mixed), "replay": len(ranked[:requested]),
                                            "requested": requested, "available": len(unique)}


def test_the_streamed_draw_equals_the_held_one_and_reads_the_pool_once():
    """The off-policy pool is read once as a stream (a generator here) and only the drawn examples are
    kept; the draw is the one the sort of the whole pool gave, repeated ids and mixed ids included."""
    import random

    rng = random.Random(3)
    for trial in range(20):
        mixed = _ex("mix", rng.randint(0, 12))
        off = _ex("off", rng.randint(0, 80))
        pool = off + rng.sample(off, min(len(off), 7)) + mixed[:3]  # repeats (a later copy differs) and mixed ids
        pool = [{**e, "copy": k} for k, e in enumerate(pool)]
        rng.shuffle(pool)
        cfg = ReplayConfig(ratio=rng.choice([0, 0.5, 1.0, 2.5, 20.0]), seed=trial)
        assert replay_examples(mixed, (e for e in pool), cfg) == _replay_held(mixed, pool, cfg)


def test_mixed_data_of_another_student_is_not_offered_to_training(tmp_path, caplog):
    """Stage 3 trains on rollouts of the model before it: once stage 2 is retrained (or its model
    deleted, to be retrained by this very `dasd train`), the stored mix is another policy's."""
    from dasd.runs import model_key, model_version

    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", "sample.temperatures=[0.6, 1.0]"])
    store = RunStore(cfg.run_dir)
    store.begin_stage("select", {})
    for pool in ("T0.6", "T1"):
        with store.writer("select", f"train-{pool}") as w:
            for e in _ex(pool, 4):
                w.add(e)
    store.end_stage("select", {})
    finals = {}
    for stage in ("stage1_low", "stage2_high"):  # two trained stages, as `dasd train` leaves them
        final = store.root / "train" / stage / "final"
        final.mkdir(parents=True)
        (final / "config.json").write_text("{}")
        (final.parent / "done.json").write_text(f'{{"stage": "{stage}", "final_loss": 1.0}}')
        finals[stage] = final
    teacher = resolve_model(cfg.teacher.model)
    # as `dasd mix` records its models: NAME@VERSION of the newest student before stage 3, and the teacher
    store.begin_stage("mix", {"mix": cfg.mix.model_dump(),
                              "student": f"{model_key(store, str(finals['stage2_high']))}@{model_version(str(finals['stage2_high']))}",
                              "teacher": f"teacher@{model_version(teacher)}"})
    with store.writer("mix", "examples") as w:
        for e in _ex("mix", 3):
            w.add(e)
    store.end_stage("mix", {})
    assert [e["id"] for e in named_pools(cfg, store)["mixed"]] == ["mix000", "mix001", "mix002"]

    (finals["stage2_high"].parent / "done.json").write_text('{"stage": "stage2_high", "final_loss": 0.5}')  # retrained
    with caplog.at_level("INFO", logger="dasd.train"):
        data = named_pools(cfg, store)
    assert "mixed" not in data and "mixed+replay" not in data
    assert "another student than stage2_high as it is now" in caplog.text and "run `dasd mix`" in caplog.text

    shutil.rmtree(finals["stage2_high"].parent)  # deleted, to be trained again by this `dasd train`
    assert "mixed" not in named_pools(cfg, store)  # stage1_low's model is not the one that wrote the rollouts
