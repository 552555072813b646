"""`dasd import`: the released DASD layout joined to its log-prob companion by id, and chat JSONL."""

from __future__ import annotations

import json
import math

from transformers import AutoTokenizer

from dasd.config import load_config
from dasd.stages.import_ import run_import
from dasd.store import RunStore


def jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows), encoding="utf-8")
    return path


END, START, CHANNEL, MESSAGE, RETURN = 200007, 200006, 200005, 200008, 200002


def test_released_layout_joined_by_id_with_gpt_oss_ids(tmp_path, o200k_harmony_dir):
    """The import stage on release-shaped rows: reasoning-only ids, ids with the final channel, ids of
    another text, a missing row, an orphan, a bad line; meta as a JSON string; the source domain kept."""
    tok = AutoTokenizer.from_pretrained(o200k_harmony_dir)
    enc = lambda t: tok.encode(t, add_special_tokens=False)  # noqa: E731
    body = {"u1": "We need to add 3 and 4. That is 7. Café ✓", "u2": "We need 日本語 5 - 2 = 3.",
            "u3": "no log-probs for me", "u4": "ids of another text"}
    answer = {"u1": "The answer is \\boxed{7}.", "u2": "\\boxed{3}", "u3": "\\boxed{1}", "u4": "\\boxed{2}"}
    text = {u: f"<think>\n{body[u]}\n</think>\n\n{answer[u]}" for u in body}
    data = jsonl(tmp_path / "stage1.jsonl", [
        {"uuid": "u1", "input": "What is 3 + 4?", "output": text["u1"], "domain": "math", "meta": '{"src": "x"}'},
        {"uuid": "u2", "input": "5 - 2?", "output": text["u2"], "domain": "instruction_following", "meta": ""},
        "this is not json",
        {"uuid": "u3", "input": "q3", "output": text["u3"], "domain": "math", "meta": "{}"},
        {"uuid": "u4", "input": "q4", "output": text["u4"], "domain": "math", "meta": "{}"},
        {"input": "no uuid", "output": "x"},
        {"uuid": "u5", "input": "q5", "output": ""},
    ])
    final = [END, START, *enc("assistant"), CHANNEL, *enc("final"), MESSAGE, *enc(answer["u2"]), RETURN]
    ids = {"u1": enc(body["u1"]), "u2": enc(body["u2"]) + final, "u4": enc("different text"), "zz": enc("orphan")}

    def row(uuid):
        return {"sample_uuid": uuid, "token_ids": ids[uuid], "logprobs": [-0.01 * (i + 1) for i in range(len(ids[uuid]))]}

    lp = jsonl(tmp_path / "stage1-logprob.jsonl", [row("u2"), row("zz"), row("u4"), row("u1")])  # another order
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"import.source={data}", f"import.logprobs={lp}",
                             "import.temperature=0.6", f"teacher.model={o200k_harmony_dir}"])
    counts = run_import(cfg)
    assert counts["imported"] == 4 and counts["with_logprobs"] == 2
    assert counts["logprobs_missing"] == 1 and counts["logprobs_mismatched"] == 1 and counts["logprob_orphans"] == 1
    store = RunStore.open(tmp_path / "run")
    samples = {s["source_id"]: s for s in store.read("sample", "pool-T0.6")}
    assert set(samples) == {"u1", "u2", "u3", "u4"}
    for uuid in ("u1", "u2"):
        t = samples[uuid]["teacher"]
        assert t["logprob_mode"] == "processed"  # auto: sampled at T=0.6, so not raw; dasd score re-scores
        kept = [i for i in ids[uuid] if i < 199998 and i not in enc("assistant") + enc("final")]
        assert t["token_ids"].tolist() == kept[: len(t["token_ids"])]
        spans = "".join(text[uuid][a:b] for a, b in t["offsets"])
        assert spans.startswith(body[uuid])  # every kept token is placed inside the output, in order
        assert math.isclose(t["logprobs"][0], -0.01, rel_tol=1e-6)  # stored as float32
    assert samples["u2"]["teacher_covers"] == "reasoning+final" and text["u2"].endswith(
        "".join(text["u2"][a:b] for a, b in samples["u2"]["teacher"]["offsets"][-len(enc(answer["u2"])):]))
    assert samples["u3"]["teacher"]["logprob_mode"] == "missing" and "teacher_mismatch" not in samples["u3"]
    assert samples["u4"]["teacher"]["logprob_mode"] == "missing" and "reasoning" in samples["u4"]["teacher_mismatch"]
    prompts = {p["id"]: p for p in store.read("sample", "prompts")}
    p1, p2 = prompts[samples["u1"]["prompt_id"]], prompts[samples["u2"]["prompt_id"]]
    assert p1["messages"][0] == {"role": "system", "content": "You are a helpful assistant."}
    assert p1["domain"] == "math" and p1["meta"]["src"] == "x"
    assert p2["domain"] == "instruction" and p2["meta"]["source_domain"] == "instruction_following"
    rejects = list(store.read("sample", "rejects"))
    reasons = " | ".join(r["reason"] for r in rejects)
    assert "not valid JSON" in reasons and "uuid" in reasons and "'output'" in reasons and "'zz'" in reasons
    assert any(r["where"] == f"{data}:3" for r in rejects)
    # re-running imports nothing twice
    run_import(cfg)
    assert len(list(store.read("sample", "pool-T0.6"))) == 4


def test_released_logprobs_declared_raw_are_kept_raw(tmp_path, o200k_harmony_dir):
    tok = AutoTokenizer.from_pretrained(o200k_harmony_dir)
    out = "<think>\nWe need 2 + 2 = 4.\n</think>\n\n\\boxed{4}"
    data = jsonl(tmp_path / "d.jsonl", [{"uuid": "a", "input": "2+2?", "output": out, "domain": "math", "meta": "{}"}])
    ids = tok.encode("We need 2 + 2 = 4.", add_special_tokens=False)
    lp = jsonl(tmp_path / "lp.jsonl", [{"sample_uuid": "a", "token_ids": ids, "logprobs": [-0.5] * len(ids)}])
    base = [f"import.source={data}", f"import.logprobs={lp}", "import.temperature=0.6", f"teacher.model={o200k_harmony_dir}"]
    run_import(load_config(None, [f"run_dir={tmp_path / 'raw'}", *base, "import.logprob_mode=raw"]))
    [s] = RunStore.open(tmp_path / "raw").read("sample", "pool-T0.6")
    assert s["teacher"]["logprob_mode"] == "raw" and len(s["teacher"]["logprobs"]) == len(ids)


def test_chat_jsonl_import(tmp_path):
    data = jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<think>a</think>b"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "ok", "reasoning_content": "r"}]},
        {"messages": [{"role": "user", "content": "q"}]},
    ])
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"import.source={data}", "import.format=chat"])
    counts = run_import(cfg)
    assert counts["imported"] == 2 and counts["rejected"] == 1
    samples = list(RunStore.open(tmp_path / "run").read("sample", "pool-T1"))
    assert [s["text"] for s in samples] == ["<think>a</think>b", "ok"]
    assert samples[1]["reasoning_content"] == "r"


def _pool_files(run):
    return {p.name: p.stat().st_mtime_ns for p in (run / "sample").glob("pool-*")}


def test_an_import_is_redone_when_its_teacher_tokenizer_changed_and_skipped_otherwise(tmp_path, o200k_harmony_dir):
    """The stored alignment belongs to the tokenizer that made it: a re-run with the same tokenizer
    does nothing; changed tokenizer files redo the pool's import, with no stale or duplicate record."""
    import shutil

    tokdir = tmp_path / "teacher"
    shutil.copytree(o200k_harmony_dir, tokdir)
    tok = AutoTokenizer.from_pretrained(tokdir)
    body = "We need to add 3 and 4. That is 7."
    ids = tok.encode(body, add_special_tokens=False)
    spec = json.loads((tokdir / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    a, b = tok.convert_ids_to_tokens(ids[:2])  # "We", " need"
    vocab[a], vocab[b] = vocab[b], vocab[a]
    good = (tokdir / "tokenizer.json").read_text(encoding="utf-8")
    (tokdir / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")  # two ids swapped

    data = jsonl(tmp_path / "d.jsonl", [
        {"uuid": "u1", "input": "3 + 4?", "output": f"<think>\n{body}\n</think>\n\n\\boxed{{7}}", "domain": "math", "meta": "{}"},
        {"uuid": "u2", "input": "no ids", "output": "<think>\nx\n</think>\n\n\\boxed{1}", "domain": "math", "meta": "{}"},
    ])
    lp = jsonl(tmp_path / "lp.jsonl", [{"sample_uuid": "u1", "token_ids": ids, "logprobs": [-0.1] * len(ids)}])
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"import.source={data}", f"import.logprobs={lp}",
                             f"teacher.model={tokdir}"])
    run = tmp_path / "run"
    first = run_import(cfg)
    assert first["logprobs_mismatched"] == 1 and first["with_logprobs"] == 0
    files = _pool_files(run)
    assert run_import(cfg) == first and _pool_files(run) == files  # the same tokenizer: up to date, nothing written
    version = RunStore.open(run).stage_info("import")["config"]["models"]["teacher_tokenizer"]

    (tokdir / "tokenizer.json").write_text(good, encoding="utf-8")  # the tokenizer fixed under the same path
    again = run_import(cfg)
    assert again["with_logprobs"] == 1 and again["logprobs_mismatched"] == 0
    store = RunStore.open(run)
    assert store.stage_info("import")["config"]["models"]["teacher_tokenizer"] != version
    samples = list(store.read("sample", "pool-T1"))
    assert sorted(s["source_id"] for s in samples) == ["u1", "u2"]  # redone: no stale or duplicate record
    u1 = next(s for s in samples if s["source_id"] == "u1")
    assert "teacher_mismatch" not in u1 and u1["teacher"]["token_ids"].tolist() == ids
    assert not set(files) & set(_pool_files(run))  # the earlier import's shards are gone, new names written


def test_a_changed_source_replaces_its_imported_records_only_and_later_stages_follow(tmp_path, tiny_lm_dir):
    """Sampled and imported responses in one pool: a changed chat source replaces the imported ones
    (and their rejects), the sampled ones stay, and `dasd filter` drops what it made from the
    removed records instead of keeping references to them (the other pool's output stays)."""
    from dasd.stages.filter import run_filter
    from dasd.stages.sample import run_sample

    def chat(q, a=None):
        return {"messages": [{"role": "user", "content": q}] + ([{"role": "assistant", "content": a}] if a else [])}

    prompts = jsonl(tmp_path / "prompts.jsonl", [{"id": f"p{i}", "prompt": f"Say {i}."} for i in range(3)])
    data = jsonl(tmp_path / "chat.jsonl", [chat("q1", "<think>a.</think> one"), chat("q2", "<think>b.</think> two"),
                                           chat("q3")])
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"data.prompts={prompts}", f"import.source={data}",
                             "import.format=chat", f"teacher.model={tiny_lm_dir}", f"student.model={tiny_lm_dir}",
                             "sample.k=2", "sample.max_tokens=8", "sample.temperatures=[0.5, 1.0]",
                             "filter.require_structure=false", "filter.drop_cutoff=false",
                             "filter.repetition.enabled=false"])
    run_sample(cfg)
    assert run_import(cfg)["rejected"] == 1
    assert run_filter(cfg)["T1"]["out"] == 8
    other_pool = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run" / "filter").glob("kept-T0.5-*")}
    store = RunStore.open(tmp_path / "run")
    sampled = {s["id"]: s["text"] for s in store.read("sample", "pool-T1") if "source_id" not in s}
    assert len(sampled) == 6

    jsonl(data, [chat("q1", "<think>a.</think> one, again"), chat("q4", "<think>d.</think> four")])
    counts = run_import(cfg)
    assert counts["imported"] == 2 and counts["rejected"] == 0
    store = RunStore.open(tmp_path / "run")
    pool = list(store.read("sample", "pool-T1"))
    assert {s["id"]: s["text"] for s in pool if "source_id" not in s} == sampled  # sampled responses untouched
    assert sorted(s["text"] for s in pool if "source_id" in s) == ["<think>a.</think> one, again",
                                                                   "<think>d.</think> four"]
    assert not list(store.read("sample", "rejects"))  # the earlier import's reject went with it
    assert run_filter(cfg)["T1"]["out"] == 8
    kept = {s["id"]: s["text"] for s in RunStore.open(tmp_path / "run").read("filter", "kept-T1")}
    assert kept == {s["id"]: s["text"] for s in pool}  # every kept record is one of the pool's, read whole
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run" / "filter").glob("kept-T0.5-*")} == other_pool
    assert run_import(cfg) == counts  # unchanged since: up to date


def test_an_import_counts_its_source_by_content_not_by_how_its_path_is_spelled(tmp_path, monkeypatch):
    """The same file named relative to another working directory, or copied elsewhere: up to date."""
    import shutil

    (tmp_path / "data").mkdir()
    (tmp_path / "sub").mkdir()
    jsonl(tmp_path / "data" / "chat.jsonl", [{"messages": [{"role": "user", "content": "q"},
                                                           {"role": "assistant", "content": "<think>a</think>b"}]}])
    run = tmp_path / "run"

    def imported(source):
        return run_import(load_config(None, [f"run_dir={run}", f"import.source={source}", "import.format=chat"]))

    monkeypatch.chdir(tmp_path)
    first = imported("data/chat.jsonl")
    files = _pool_files(run)
    monkeypatch.chdir(tmp_path / "sub")
    assert imported("../data/chat.jsonl") == first and _pool_files(run) == files
    shutil.copy(tmp_path / "data" / "chat.jsonl", tmp_path / "copy.jsonl")
    assert imported(tmp_path / "copy.jsonl") == first and _pool_files(run) == files
