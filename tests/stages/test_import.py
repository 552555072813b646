"""`dasd import`: the released DASD layout joined to its log-prob companion by id, and chat JSONL."""

from __future__ import annotations

import json
import math

import pytest
from transformers import AutoTokenizer

from dasd.config import load_config
from dasd.stages.import_ import run_import
from dasd.store import RunStore


def jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows), encoding="utf-8")
    return path


END, START, CHANNEL, MESSAGE, RETURN = 200007, 200006, 200005, 200008, 200002


def test_released_layout_joined_by_id_with_gpt_oss_ids(tmp_path, o200k_harmony_dir, caplog):
    """The import stage on release-shaped rows: reasoning-only ids, ids with the final channel, ids of
    another text, a missing row, an orphan, a bad line; meta as a JSON string; the source domain kept.
    The log-prob row of a response quarantined for its own fields (u5) is not counted an orphan."""
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
    ids = {"u1": enc(body["u1"]), "u2": enc(body["u2"]) + final, "u4": enc("different text"), "zz": enc("orphan"),
           "u5": enc("its row has no output")}

    def row(uuid):
        return {"sample_uuid": uuid, "token_ids": ids[uuid], "logprobs": [-0.01 * (i + 1) for i in range(len(ids[uuid]))]}

    lp = jsonl(tmp_path / "stage1-logprob.jsonl", [row("u2"), row("zz"), row("u4"), row("u1"), row("u5")])  # another order
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"import.source={data}", f"import.logprobs={lp}",
                             "import.temperature=0.6", f"teacher.model={o200k_harmony_dir}"])
    counts = run_import(cfg)
    assert counts["imported"] == 4 and counts["with_logprobs"] == 2
    assert f"{data}:5: its log-probs ({lp}:3) do not fit the text: reasoning body differs" in caplog.text
    assert counts["logprobs_missing"] == 1 and counts["logprobs_mismatched"] == 1 and counts["logprob_orphans"] == 1
    # the source's rows add up; the companion's rejected rows are counted apart
    assert (counts["read"], counts["rejected"], counts["logprob_rows_rejected"]) == (7, 3, 1)
    assert "4 responses into pool T0.6 (2 with teacher log-probs as processed, 1 missing, 1 mismatched); 3 rejected; " \
           "1 log-prob row(s) rejected (1 for no response)" in caplog.text
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
    assert "'u5'" not in reasons and len(rejects) == 4  # the bad line, no uuid, no output, the orphan
    assert [r["where"] for r in rejects if "'zz'" in r["reason"]] == [f"{lp}:2"]  # the orphan's line
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


def test_chat_jsonl_import(tmp_path, caplog):
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
    assert ("2 responses into pool T1 (no teacher log-probs: dasd score re-scores them with the teacher unless "
            "score.rescore_teacher=never); 1 rejected") in caplog.text


def test_a_chat_rows_other_fields_go_to_the_prompts_meta_not_beside_its_fields(tmp_path):
    """A chat row's fields that are not a prompt's (``model``, ``usage``, ``finish_reason``) were
    copied into the prompt record as top-level fields, beside ``id`` and ``answer``; now the prompt
    holds the documented Prompt fields, the others are in its ``meta`` (a clash with the row's own
    ``meta`` is quarantined), and ``finish_reason`` is the sample's only."""
    q, a = {"role": "user", "content": "What is 1 + 1?"}, {"role": "assistant", "content": "<think>1 + 1 = 2.</think> 2"}
    data = jsonl(tmp_path / "chat.jsonl", [
        {"id": "c1", "messages": [q, a], "finish_reason": "length", "model": "gpt-x", "usage": {"tokens": 9},
         "answer": 2, "domain": "math", "meta": {"src": "s"}, "note": None},
        {"id": "c2", "messages": [q, a], "model": "gpt-y", "meta": {"model": "gpt-z"}},
        {"id": "c3", "messages": [q, a], "model": "gpt-y", "meta": "gpt-z"},
    ])
    counts = run_import(load_config(None, [f"run_dir={tmp_path / 'run'}", f"import.source={data}", "import.format=chat"]))
    assert (counts["imported"], counts["rejected"]) == (1, 2)
    store = RunStore.open(tmp_path / "run")
    [prompt] = store.read("sample", "prompts")
    assert prompt == {"id": "c1", "domain": "math", "answer": "2", "messages": [
        {"role": "system", "content": "You are a helpful assistant."}, q],
        "meta": {"src": "s", "model": "gpt-x", "usage": {"tokens": 9}}}
    [sample] = store.read("sample", "pool-T1")
    assert (sample["finish_reason"], sample["text"], sample["prompt_id"]) == ("length", a["content"], "c1")
    assert {r["where"]: r["reason"] for r in store.read("sample", "rejects")} == {
        f"{data}:2": "field 'meta' has model 'gpt-z' but field 'model' is 'gpt-y'",
        f"{data}:3": "field 'meta' must be an object, got str"}


def test_a_chat_rows_id_0_is_its_id(tmp_path):
    """A chat row's id 0 (an integer id counted from 0) was taken for no id: the response got the
    hash of its messages as its own id while its prompt got "0", so a second row with id 0 and
    another question was imported too and joined to the first row's question."""
    data = jsonl(tmp_path / "chat.jsonl", [
        {"id": 0, "messages": [{"role": "user", "content": "Compute 1 + 1."}, {"role": "assistant", "content": "2"}]},
        {"id": 0, "messages": [{"role": "user", "content": "Compute 5 + 5."}, {"role": "assistant", "content": "10"}]},
    ])
    counts = run_import(load_config(None, [f"run_dir={tmp_path / 'run'}", f"import.source={data}", "import.format=chat"]))
    assert (counts["imported"], counts["rejected"]) == (1, 1)
    store = RunStore.open(tmp_path / "run")
    assert [(s["source_id"], s["prompt_id"], s["text"]) for s in store.read("sample", "pool-T1")] == [("0", "0", "2")]
    assert [(r["where"], r["reason"]) for r in store.read("sample", "rejects")] == [(f"{data}:2", "duplicate id '0'")]


def test_chat_rows_of_odd_shapes_are_quarantined_with_line_and_reason(tmp_path):
    """Chat rows a user meets in the wild: each bad one is quarantined with file:line and the field at
    fault (a non-string content or finish_reason, an id of no usable type, a turn of the wrong shape:
    they were a traceback that left the import unfinished, or a prompt under the id "{'a': 1}"); a
    system turn and a multi-turn chat are imported, the earlier turns as the prompt."""
    q = {"role": "user", "content": "q"}
    data = jsonl(tmp_path / "chat.jsonl", [
        {"messages": [q, {"role": "assistant", "content": ""}]},                               # 1
        {"id": "nomessages"},                                                                  # 2
        {"messages": [q, {"role": "assistant", "content": 5}]},                                # 3
        {"messages": [q, {"role": "assistant", "content": [{"type": "text", "text": "a"}]}]},  # 4
        {"messages": [{"role": "user", "content": 7}, {"role": "assistant", "content": "a"}]},  # 5
        {"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]},  # 6
        {"messages": [q, {"role": "assistant", "content": None, "reasoning_content": 3}]},     # 7
        {"messages": [q, {"role": "assistant", "content": "a"}], "finish_reason": 5},         # 8
        {"messages": [q, {"role": "assistant", "content": "a"}], "id": {"a": 1}},             # 9
        {"messages": [q, {"role": "assistant", "content": " ", "reasoning_content": " "}]},   # 10
        {"messages": [q, {"role": "user", "content": "a"}]},                                   # 11
        {"messages": [{"role": "system", "content": "s"}, q, {"role": "assistant", "content": "one"}]},  # 12
        {"messages": [q, {"role": "assistant", "content": "one"}, {"role": "user", "content": "and?"},
                      {"role": "assistant", "content": "two"}], "finish_reason": "length"},     # 13
        {"messages": [q, {"role": "assistant", "content": None, "reasoning_content": "r"}]},  # 14
    ])
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"import.source={data}", "import.format=chat"])
    counts = run_import(cfg)
    assert (counts["read"], counts["imported"], counts["rejected"]) == (14, 3, 11)
    store = RunStore.open(tmp_path / "run")
    assert store.stage_info("import")["complete"]
    reasons = {r["where"]: r["reason"] for r in store.read("sample", "rejects")}
    assert reasons == {
        f"{data}:1": "field 'messages': the assistant response is empty",
        f"{data}:2": "field 'messages' must be a chat list ending with the assistant's response",
        f"{data}:3": "field 'messages': the assistant turn's 'content' must be a string, got int",
        f"{data}:4": "field 'messages': the assistant turn's 'content' must be a string, got list",
        f"{data}:5": "field 'messages.1.content': Input should be a valid string",
        f"{data}:6": "field 'messages': Value error, needs at least one user message",
        f"{data}:7": "field 'messages': the assistant turn's 'reasoning_content' must be a string, got int",
        f"{data}:8": "field 'finish_reason' must be a string, got int",
        f"{data}:9": "field 'id' must be a non-empty string or an integer, got {'a': 1}",
        f"{data}:10": "field 'messages': the assistant response is empty",
        f"{data}:11": "field 'messages': the last turn must be role 'assistant'",
    }
    prompts = {p["id"]: p["messages"] for p in store.read("sample", "prompts")}
    got = [(s["text"], s["finish_reason"], s.get("reasoning_content"), prompts[s["prompt_id"]])
           for s in store.read("sample", "pool-T1")]
    system = {"role": "system", "content": "You are a helpful assistant."}
    assert got == [
        ("one", "stop", None, [{"role": "system", "content": "s"}, q]),
        ("two", "length", None, [system, q, {"role": "assistant", "content": "one"}, {"role": "user", "content": "and?"}]),
        ("", "stop", "r", [system, q]),
    ]


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


def _released(path, n, body, mismatched=(), missing=()):
    """``n`` release rows (all with the reasoning ``body``), and their companion rows: the ids of
    another text for the indices in ``mismatched``, none for those in ``missing``."""
    rows = [{"uuid": f"u{i:04d}", "input": f"Question {i}?", "output": f"<think>\n{body}\n</think>\n\n\\boxed{{{i}}}",
             "domain": "math", "meta": "{}"} for i in range(n)]
    return jsonl(path / "data.jsonl", rows)


def _companion(path, tok, n, body, mismatched=(), missing=()):
    ids = tok.encode(body, add_special_tokens=False)
    other = tok.encode("another text", add_special_tokens=False)
    rows = [{"sample_uuid": f"u{i:04d}", "token_ids": other if i in mismatched else ids,
             "logprobs": [-0.5] * len(other if i in mismatched else ids)} for i in range(n) if i not in missing]
    return jsonl(path / "logprob.jsonl", rows)


def test_an_interrupted_import_resumes_without_reading_or_aligning_what_it_wrote(tmp_path, o200k_harmony_dir, monkeypatch):
    """Killed after two of its three shards were written: the re-run looks up and aligns only the rows
    of the lost shard, writes each record once, and counts as an uninterrupted import does."""
    from dasd.columnar import plain
    from dasd.sources import KeyedRows

    tok = AutoTokenizer.from_pretrained(o200k_harmony_dir)
    body = "We need to add 3 and 4. That is 7."
    data = _released(tmp_path, 600, body)
    lp = _companion(tmp_path, tok, 600, body, mismatched={3, 300, 550}, missing={5, 590})
    run = tmp_path / "run"
    cfg = load_config(None, [f"run_dir={run}", f"import.source={data}", f"import.logprobs={lp}",
                             f"teacher.model={o200k_harmony_dir}"])
    whole = run_import(cfg)
    assert whole["with_logprobs"] == 595 and whole["logprobs_mismatched"] == 3 and whole["logprobs_missing"] == 2
    before = {s["id"]: s for s in RunStore.open(run).read("sample", "pool-T1")}
    # the state a kill -9 leaves: the stage began, did not end, its third shard never written
    store = RunStore(run, lock=False)
    info = store.manifest["stages"]["import"]
    info["complete"] = False
    info.pop("pools")
    store.save_manifest()
    (run / "sample" / "pool-T1-00002.parquet").unlink()

    looked_up = []
    real_get = KeyedRows.get
    monkeypatch.setattr(KeyedRows, "get", lambda self, key: looked_up.append(key) or real_get(self, key))
    assert run_import(cfg) == whole
    assert sorted(looked_up) == [f"u{i:04d}" for i in range(512, 600)]  # only the lost shard's rows
    after = list(RunStore.open(run).read("sample", "pool-T1"))
    assert len(after) == 600 and {s["id"] for s in after} == set(before)
    for s in after:
        want = before[s["id"]]
        assert s["text"] == want["text"] and s.get("teacher_mismatch") == want.get("teacher_mismatch")
        assert plain(s["teacher"]) == plain(want["teacher"])


def test_a_mistyped_companion_or_tokenizer_leaves_the_earlier_import_in_place(tmp_path, o200k_harmony_dir, tiny_lm_dir):
    """Re-importing with a companion path that does not exist, or a tokenizer without the harmony
    tokens, fails before anything is removed: the pool keeps its import and stays up to date."""
    from dasd.errors import ConfigError, InputError

    tok = AutoTokenizer.from_pretrained(o200k_harmony_dir)
    body = "We need to add 3 and 4. That is 7."
    data, lp = _released(tmp_path, 3, body), _companion(tmp_path, tok, 3, body)
    run = tmp_path / "run"
    base = [f"run_dir={run}", f"import.source={data}", f"teacher.model={o200k_harmony_dir}"]
    first = run_import(load_config(None, [*base, f"import.logprobs={lp}"]))
    files = _pool_files(run)
    with pytest.raises(InputError, match="no such file"):
        run_import(load_config(None, [*base, f"import.logprobs={tmp_path / 'logprobs.jsonl'}"]))
    with pytest.raises(ConfigError, match="no harmony tokens"):
        run_import(load_config(None, [*base, f"import.logprobs={lp}", f"teacher.tokenizer={tiny_lm_dir}"]))
    with pytest.raises(InputError, match="no such file"):
        run_import(load_config(None, [f"run_dir={run}", f"import.source={tmp_path / 'dat.jsonl'}"]))
    assert _pool_files(run) == files and RunStore.open(run).stage_info("import")["complete"]
    assert run_import(load_config(None, [*base, f"import.logprobs={lp}"])) == first and _pool_files(run) == files


def test_a_tokenizer_that_cannot_be_loaded_on_a_new_run_leaves_no_run_folder_and_names_the_key_set(
        tmp_path, o200k_harmony_dir):
    """On a run directory that does not exist yet, a teacher tokenizer that cannot be loaded (or a
    mistyped companion or source) fails before the run folder is made (it was left holding only
    manifest.json), and the one-line error names the key the user set: teacher.model when only it is
    given (it used to say teacher.tokenizer), teacher.tokenizer when that is given, with its path."""
    from dasd.errors import ConfigError, InputError

    tok = AutoTokenizer.from_pretrained(o200k_harmony_dir)
    body = "We need to add 3 and 4. That is 7."
    data, lp = _released(tmp_path, 3, body), _companion(tmp_path, tok, 3, body)
    run = tmp_path / "run"
    base = [f"run_dir={run}", f"import.source={data}", f"import.logprobs={lp}"]
    missing, not_a_tokenizer = tmp_path / "no-such-model", tmp_path  # a folder of data files
    with pytest.raises(ConfigError) as err:
        run_import(load_config(None, [*base, f"teacher.model={missing}"]))
    assert str(err.value).startswith(f"teacher.model: cannot load a tokenizer from {str(missing)!r} to align the "
                                     "imported token ids (import.logprobs): ")
    with pytest.raises(ConfigError) as err:
        run_import(load_config(None, [*base, f"teacher.model={o200k_harmony_dir}", f"teacher.tokenizer={not_a_tokenizer}"]))
    assert str(err.value).startswith(f"teacher.tokenizer: cannot load a tokenizer from {str(not_a_tokenizer)!r} ")
    assert "\n" not in str(err.value)  # transformers' own message spans several lines
    with pytest.raises(InputError, match="no such file"):
        run_import(load_config(None, [*base[:2], f"import.logprobs={tmp_path / 'logprobs.jsonl'}",
                                      f"teacher.model={o200k_harmony_dir}"]))
    with pytest.raises(InputError, match="no such file"):
        run_import(load_config(None, [base[0], f"import.source={tmp_path / 'dat.jsonl'}"]))
    assert not run.exists()
    counts = run_import(load_config(None, [*base, f"teacher.model={o200k_harmony_dir}"]))
    assert (counts["imported"], counts["with_logprobs"]) == (3, 3)


def test_a_reimport_after_an_interrupted_one_writes_shards_under_new_names(tmp_path, tiny_lm_dir, monkeypatch):
    """A re-import with another source was killed after it removed the earlier import's shards: the
    next run still names its shards after those, so `dasd filter` sees the pool changed (a shard of
    the same name and size would pass for the old one) and keeps the new responses. The names come
    from the store's rule (``next_shard``, kept in the manifest before a shard is removed), the one
    every output follows, not from a count of the import's own."""
    from dasd.stages.filter import run_filter

    def chat(a):
        return [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": f"<think>{a}.</think> one"}]}]

    run = tmp_path / "run"
    data = jsonl(tmp_path / "chat.jsonl", chat("a"))
    cfg = load_config(None, [f"run_dir={run}", f"import.source={data}", "import.format=chat",
                             f"teacher.model={tiny_lm_dir}", f"student.model={tiny_lm_dir}",
                             "filter.require_structure=false", "filter.drop_cutoff=false", "filter.repetition.enabled=false"])
    run_import(cfg)
    run_filter(cfg)
    jsonl(data, chat("b"))  # the same length: the same shard size

    def killed(*args, **kwargs):  # the re-import killed right after it removed the earlier shards
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(RunStore, "drop_records", killed)
        with pytest.raises(KeyboardInterrupt):
            run_import(cfg)
    assert not _pool_files(run) and RunStore.open(run).manifest["next_shard"] == {"sample/pool-T1": 1}
    run_import(cfg)
    assert sorted(_pool_files(run)) == ["pool-T1-00001.parquet"]
    run_filter(cfg)
    assert [s["text"] for s in RunStore.open(run).read("filter", "kept-T1")] == ["<think>b.</think> one"]


def test_an_import_buffers_the_teacher_signal_as_arrays_not_python_lists(tmp_path, o200k_harmony_dir, monkeypatch):
    """A shard's 256 records wait in memory until it is written: their token ids, spans and
    log-probs are held as numpy arrays (16 bytes a token), not Python lists (about 200), so the
    import's memory stays small with long responses (256 of 10K tokens: 0.5 GB as lists)."""
    import tracemalloc

    import dasd.stages.import_ as import_
    from dasd.rules.released import check_teacher_tokenizer

    tok = AutoTokenizer.from_pretrained(o200k_harmony_dir)
    check_teacher_tokenizer(tok)
    monkeypatch.setattr(import_, "_teacher_tokenizer", lambda cfg: tok)  # loaded before measuring
    body = " ".join(f"step {i % 10}: we add {i} to the sum" for i in range(70))
    n_tokens = len(tok.encode(body, add_special_tokens=False))
    data, lp = _released(tmp_path, 256, body), _companion(tmp_path, tok, 256, body)
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"import.source={data}", f"import.logprobs={lp}",
                             f"teacher.model={o200k_harmony_dir}"])
    warm = tmp_path / "warm"
    warm.mkdir()
    run_import(load_config(None, [f"run_dir={warm / 'run'}", f"import.source={_released(warm, 1, body)}",
                                  f"import.logprobs={_companion(warm, tok, 1, body)}", f"teacher.model={o200k_harmony_dir}"]))
    tracemalloc.start()  # the modules an import uses are loaded by now
    try:
        base = tracemalloc.get_traced_memory()[0]
        assert run_import(cfg)["with_logprobs"] == 256
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < 256 * n_tokens * 100, f"{peak / 1e6:.0f} MB for {256 * n_tokens} tokens"
    [s] = [s for s in RunStore.open(tmp_path / "run").read("sample", "pool-T1") if s["source_id"] == "u0007"]
    assert s["teacher"]["token_ids"].tolist() == tok.encode(body, add_special_tokens=False)


def test_an_imported_row_under_a_prompt_id_the_run_keeps_with_other_messages_is_quarantined(tmp_path, tiny_lm_dir):
    """Chat rows carry their own ids, which become prompt ids: a row whose id the run already keeps
    (RUN/sample/prompts, from an earlier import or from sampling) with another question was imported
    and joined to that other question (the prompts output keeps an id's first record); now it is
    quarantined with file:line and why, and a row asking the same question under that id is imported.
    Sampling into a pool that holds imported responses does not count their prompts as not asked."""
    from dasd.stages.sample import run_sample

    run = tmp_path / "run"

    def chat(name, rows):
        return jsonl(tmp_path / name, [{"id": i, "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
                                       for i, q, a in rows])

    first = chat("a.jsonl", [("c0", "Compute 1 + 1.", "2"), ("c1", "Compute 2 + 2.", "4")])
    assert run_import(load_config(None, [f"run_dir={run}", f"import.source={first}", "import.format=chat"]))["imported"] == 2
    prompts = jsonl(tmp_path / "prompts.jsonl", [{"id": "p0", "prompt": "Compute 3 + 4."}, {"id": "p1", "prompt": "Compute 5 + 6."}])
    counts = run_sample(load_config(None, [f"run_dir={run}", f"data.prompts={prompts}", f"teacher.model={tiny_lm_dir}",
                                           "sample.k=1", "sample.max_tokens=4", "sample.temperatures=[1.0]"]))["T1"]
    assert (counts["samples"], counts["prompts"], counts["asked"], counts["not_asked"]) == (4, 4, 2, 0)

    second = chat("b.jsonl", [("c0", "Compute 9 + 9.", "18"), ("p0", "Compute 3 + 4.", "7"), ("p1", "Compute 7 + 7.", "14"),
                              ("c2", "Compute 1 + 2.", "3")])
    counts = run_import(load_config(None, [f"run_dir={run}", f"import.source={second}", "import.format=chat",
                                           "import.temperature=0.6"]))
    assert (counts["imported"], counts["rejected"]) == (2, 2)
    store = RunStore.open(run)
    reasons = {r["where"]: r["reason"] for r in store.read("sample", "rejects") if r.get("import_pool") == "T0.6"}
    assert set(reasons) == {f"{second}:1", f"{second}:3"}
    assert reasons[f"{second}:1"].startswith("prompt id 'c0' is in the run with other messages (")
    assert reasons[f"{second}:3"].endswith("this response would be joined to that text; give the row another id")
    questions = {p["id"]: p["messages"][-1]["content"] for p in store.read("sample", "prompts")}
    assert sorted((s["prompt_id"], questions[s["prompt_id"]], s["text"]) for s in store.read("sample", "pool-T0.6")) == [
        ("c2", "Compute 1 + 2.", "3"), ("p0", "Compute 3 + 4.", "7")]


def test_a_logprob_companion_with_chat_rows_is_refused_when_the_config_loads(tmp_path):
    """import.logprobs is joined to released (dasd layout) rows only: with import.format chat it was
    read (its rows all counted as orphans, or the harmony tokenizer demanded) and never joined."""
    from dasd.errors import ConfigError

    with pytest.raises(ConfigError, match=r"import.logprobs \(the -Logprob companion\) is joined to import.format dasd "
                                          r"rows only, not 'chat': unset it"):
        load_config(None, ["import.source=a.jsonl", "import.format=chat", "import.logprobs=lp.jsonl"])
    assert load_config(None, ["import.source=a.jsonl", "import.logprobs=lp.jsonl"]).import_.format == "dasd"


def test_the_two_released_temperatures_sharing_uuids_are_distinct_records_through_score_and_select(
        tmp_path, o200k_harmony_dir, tiny_lm_dir):
    """stage1 (T=0.6, log-probs processed) and stage2 (T=1.0, raw) imported into one run, with uuids
    in common: each pool's record had the id ``content_id("import", model, uuid)``, the same in both,
    so `dasd score` with rescore_teacher=never (no teacher engine) quarantined the T0.6 records and
    then skipped the T1 records of the same ids as already judged: none scored, none selected. Ids
    now name the pool, and every stage counts each pool's responses."""
    from dasd.stages.filter import run_filter
    from dasd.stages.score import run_score
    from dasd.stages.select import run_select

    tok = AutoTokenizer.from_pretrained(o200k_harmony_dir)
    body = "We need to add 3 and 4. That is 7."
    for stage in ("stage1", "stage2"):
        (tmp_path / stage).mkdir()
        _released(tmp_path / stage, 3, body)
    lp = _companion(tmp_path / "stage2", tok, 3, body)
    run = tmp_path / "run"
    base = [f"run_dir={run}", f"teacher.model={o200k_harmony_dir}", f"student.model={tiny_lm_dir}",
            "score.rescore_teacher=never", "select.m=1"]
    low = run_import(load_config(None, [*base, f"import.source={tmp_path / 'stage1' / 'data.jsonl'}", "import.temperature=0.6"]))
    cfg = load_config(None, [*base, f"import.source={tmp_path / 'stage2' / 'data.jsonl'}", f"import.logprobs={lp}",
                             "import.temperature=1.0"])
    high = run_import(cfg)
    assert (low["imported"], high["imported"], high["with_logprobs"]) == (3, 3, 3)
    store = RunStore.open(run)
    low_ids, high_ids = store.ids("sample", "pool-T0.6"), store.ids("sample", "pool-T1")
    assert len(low_ids) == len(high_ids) == 3 and not low_ids & high_ids
    assert {k: v["out"] for k, v in run_filter(cfg).items() if k in ("T0.6", "T1")} == {"T0.6": 3, "T1": 3}
    scored = run_score(cfg)
    assert (scored["T0.6"]["scored"], scored["T0.6"]["rejected"]) == (0, 3)  # processed log-probs, no re-scoring
    assert (scored["T1"]["scored"], scored["T1"]["rejected"]) == (3, 0)
    selected = run_select(cfg)
    assert "T0.6" not in selected and selected["T1"]["selected"]["n"] == 3


def _as_earlier_dasd(monkeypatch):
    """Imports from here on write ids as dasd did before ids named the pool."""
    import dasd.stages.import_ as import_
    from dasd.records import content_id

    monkeypatch.setattr(import_, "imported_id", lambda model, pool, uuid: content_id("import", model, uuid),
                        raising=False)  # (what dasd wrote before this function existed)


def test_pools_imported_by_an_earlier_dasd_keep_their_ids_unless_they_clash(tmp_path, monkeypatch, caplog):
    """Runs imported before ids named the pool: a finished pool import stays as it is (up to date,
    its ids kept: later stages made their records from them); one whose ids another pool holds too
    is imported again under ids that name the pool, the other pool keeping its own."""
    for stage in ("stage1", "stage2", "other"):
        (tmp_path / stage).mkdir()
        _released(tmp_path / stage, 3 if stage != "other" else 2, "We need 2 + 2 = 4.")
    (tmp_path / "other" / "data.jsonl").write_text((tmp_path / "other" / "data.jsonl").read_text().replace('"u0', '"v0'))
    run = tmp_path / "run"

    def cfg(stage, temperature):
        return load_config(None, [f"run_dir={run}", f"import.source={tmp_path / stage / 'data.jsonl'}",
                                  f"import.temperature={temperature}"])

    with monkeypatch.context() as m:
        _as_earlier_dasd(m)
        for stage, t in (("stage1", 0.6), ("stage2", 1.0), ("other", 0.8)):
            run_import(cfg(stage, t))
    store = RunStore.open(run)
    old = {p: store.ids("sample", f"pool-{p}") for p in ("T0.6", "T1", "T0.8")}
    assert old["T0.6"] == old["T1"] and len(old["T1"]) == 3  # the clash
    files = _pool_files(run)

    run_import(cfg("other", 0.8))  # no clash: up to date, nothing rewritten
    assert _pool_files(run) == files
    counts = run_import(cfg("stage2", 1.0))
    assert counts["imported"] == 3
    assert "pool T1: 3 of its records, imported by an earlier dasd under ids that do not name the pool" in caplog.text
    store = RunStore.open(run)
    now = {p: store.ids("sample", f"pool-{p}") for p in ("T0.6", "T1", "T0.8")}
    assert now["T0.6"] == old["T0.6"] and now["T0.8"] == old["T0.8"] and not now["T1"] & old["T1"]
    assert sorted(s["source_id"] for s in store.read("sample", "pool-T1")) == ["u0000", "u0001", "u0002"]
    assert sorted(n for n in _pool_files(run) if n.startswith("pool-T1-")) == ["pool-T1-00001.parquet"]
    files = _pool_files(run)
    assert run_import(cfg("stage1", 0.6))["imported"] == 3 and _pool_files(run) == files  # no clash left: kept


def test_an_interrupted_import_of_an_earlier_dasd_is_not_resumed_under_two_id_schemes(tmp_path, monkeypatch, caplog):
    """An import begun by an earlier dasd (ids without the pool) and killed: the new dasd does not
    add the lost rows under new ids beside the old ones (the same response twice), nor mix the two
    schemes in one pool; the earlier shards are removed and the pool imported again, once."""
    data = _released(tmp_path, 600, "We need 2 + 2 = 4.")
    run = tmp_path / "run"
    cfg = load_config(None, [f"run_dir={run}", f"import.source={data}"])
    with monkeypatch.context() as m:
        _as_earlier_dasd(m)
        run_import(cfg)
    store = RunStore(run, lock=False)  # the state a kill -9 leaves: the third shard never written
    store.manifest["stages"]["import"]["complete"] = False
    store.manifest["stages"]["import"].pop("pools")
    store.save_manifest()
    (run / "sample" / "pool-T1-00002.parquet").unlink()
    old = store.ids("sample", "pool-T1")

    assert run_import(cfg)["imported"] == 600
    assert "pool T1: 2 shard(s) imported by an earlier dasd, whose ids do not name the pool, removed" in caplog.text
    samples = list(RunStore.open(run).read("sample", "pool-T1"))
    assert len(samples) == len({s["source_id"] for s in samples}) == 600 and not {s["id"] for s in samples} & old
    assert sorted(_pool_files(run)) == [f"pool-T1-0000{i}.parquet" for i in (2, 3, 4)]



def _graded_chat(path, c1="2", c3="7"):
    """Three chat rows (ids c1, c2, c3) with reference answers, each answered 2, 5 and 9."""
    rows = [("c1", "What is 1 + 1?", c1, "<think>1 + 1 = 2.</think> \\boxed{2}"),
            ("c2", "What is 2 + 3?", "5", "<think>2 + 3 = 5.</think> \\boxed{5}"),
            ("c3", "What is 4 + 5?", c3, "<think>4 + 5 = 9.</think> \\boxed{9}")]
    return jsonl(path, [{"id": i, "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": r}],
                         "answer": a} for i, q, a, r in rows])


def _graded_cfg(run, source, temperature, tiny_lm_dir):
    return load_config(None, [f"run_dir={run}", f"import.source={source}", "import.format=chat",
                              f"import.temperature={temperature}", f"teacher.model={tiny_lm_dir}",
                              f"student.model={tiny_lm_dir}", "filter.require_correct=true",
                              "filter.require_structure=false", "filter.drop_cutoff=false",
                              "filter.repetition.enabled=false"])


def _kept_prompts(run):
    store = RunStore.open(run)
    return {p: sorted(s["prompt_id"] for s in store.read("filter", f"kept-{p}")) for p in ("T0.6", "T1")}


CORRECTED = ("{source}: 2 prompt(s) have the same messages and other fields than the run kept under their id: answer (2) "
             "(e.g. id 'c1': answer '2' -> '3'); the run's prompts now hold the new records, and `dasd filter` judges "
             "their responses again")


def test_a_reimport_with_a_corrected_answer_takes_effect_and_filter_judges_the_responses_again(
        tmp_path, tiny_lm_dir, caplog):
    """A source re-imported with reference answers corrected under the same ids and questions kept
    the run's old prompt records (the prompts output skips an id it has), so filter went on grading
    every pool against the old answers, silently. Now the import replaces the records as `dasd
    sample` does (one warning: how many, which fields, an example), and `dasd filter` judges the
    responses to the corrected prompts again, in the other pool too, and only those: one the new
    answer fails is dropped, one it passes is kept; the verdicts of a fresh run that imported the
    corrected source last."""
    from dasd.stages.filter import run_filter

    low, high, run = _graded_chat(tmp_path / "low.jsonl"), _graded_chat(tmp_path / "high.jsonl"), tmp_path / "run"
    run_import(_graded_cfg(run, low, 0.6, tiny_lm_dir))
    run_import(_graded_cfg(run, high, 1.0, tiny_lm_dir))
    run_filter(_graded_cfg(run, high, 1.0, tiny_lm_dir))
    assert _kept_prompts(run) == {"T0.6": ["c1", "c2"], "T1": ["c1", "c2"]}  # c3's responses fail its answer 7

    _graded_chat(low, c1="3", c3="9")  # c1's responses fail its answer now, c3's pass
    cfg = _graded_cfg(run, low, 0.6, tiny_lm_dir)
    caplog.clear()
    counts = run_import(cfg)
    prompts = list(RunStore.open(run).read("sample", "prompts"))
    assert {p["id"]: p["answer"] for p in prompts} == {"c1": "3", "c2": "5", "c3": "9"}
    assert caplog.text.count(CORRECTED.format(source=low)) == 1
    assert (counts["imported"], counts["rejected"], counts["disagreeing"]) == (3, 0, 0)
    assert run_import(cfg) == counts  # up to date
    caplog.clear()
    run_filter(cfg)
    assert _kept_prompts(run) == {"T0.6": ["c2", "c3"], "T1": ["c2", "c3"]}
    # only the responses to c1 and c3 judged again, in each pool; the kept outputs re-linked, not made again
    assert RunStore.open(run).stage_info("filter")["judged"] == {"T0.6": 2, "T1": 2}
    assert "dropped by the rules now" not in caplog.text

    fresh = tmp_path / "fresh"  # the corrected source imported last, from the start
    run_import(_graded_cfg(fresh, high, 1.0, tiny_lm_dir))
    assert run_import(_graded_cfg(fresh, low, 0.6, tiny_lm_dir)) == counts
    run_filter(_graded_cfg(fresh, low, 0.6, tiny_lm_dir))
    assert _kept_prompts(fresh) == _kept_prompts(run)
    assert list(RunStore.open(fresh).read("sample", "prompts")) == prompts


def test_a_reimport_with_a_corrected_answer_killed_ends_as_an_uninterrupted_one(tmp_path, tiny_lm_dir, monkeypatch, caplog):
    """Killed before it rewrote the run's prompts, the re-import is unfinished (filter waits for
    it) and the next run replaces them; killed while it rewrote them (the old shard back beside the
    new one: read first, the old answers), the next run finishes the job. Both end with the counts,
    prompts and filter verdicts of the uninterrupted re-import."""
    from dasd.errors import DasdError
    from dasd.prompt_edits import EditedPrompts
    from dasd.stages.filter import run_filter

    old, new, high = (_graded_chat(tmp_path / "old.jsonl"), _graded_chat(tmp_path / "new.jsonl", c1="3", c3="9"),
                      _graded_chat(tmp_path / "high.jsonl"))

    def prepared(name):
        run = tmp_path / name
        run_import(_graded_cfg(run, old, 0.6, tiny_lm_dir))
        run_import(_graded_cfg(run, high, 1.0, tiny_lm_dir))
        run_filter(_graded_cfg(run, high, 1.0, tiny_lm_dir))
        return run, _graded_cfg(run, new, 0.6, tiny_lm_dir)

    run, cfg = prepared("run")
    counts = run_import(cfg)
    run_filter(cfg)
    prompts = list(RunStore.open(run).read("sample", "prompts"))

    killed, cfg = prepared("killed")

    def kill(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(EditedPrompts, "update", kill)
        with pytest.raises(KeyboardInterrupt):
            run_import(cfg)
    assert {p["id"]: p["answer"] for p in RunStore.open(killed).read("sample", "prompts")}["c1"] == "2"
    with pytest.raises(DasdError, match="import"):
        run_filter(cfg)
    caplog.clear()
    assert run_import(cfg) == counts and caplog.text.count(CORRECTED.format(source=new)) == 1
    assert list(RunStore.open(killed).read("sample", "prompts")) == prompts
    run_filter(cfg)
    assert _kept_prompts(killed) == _kept_prompts(run)

    torn, cfg = prepared("torn")
    old_shards = {p.name: p.read_bytes() for p in (torn / "sample").glob("prompts-*")}
    pools = RunStore.open(torn).stage_info("import")["pools"]
    run_import(cfg)
    for name, data in old_shards.items():  # killed before the old shard went, and so before the import ended
        (torn / "sample" / name).write_bytes(data)
    store = RunStore(torn, lock=False)
    store.manifest["stages"]["import"].update(complete=False, pools=pools)
    store.save_manifest()
    assert {p["id"]: p["answer"] for p in RunStore.open(torn).read("sample", "prompts")}["c1"] == "2"
    assert run_import(cfg) == counts
    assert list(RunStore.open(torn).read("sample", "prompts")) == prompts
    assert len(list((torn / "sample").glob("prompts-*"))) == 1
    run_filter(cfg)
    assert _kept_prompts(torn) == _kept_prompts(run)


def test_rows_of_one_prompt_that_disagree_in_its_reference_answer_are_quarantined(tmp_path, caplog):
    """Several responses to one question (chat rows without ids): the run keeps one record of the
    prompt, the first row's, and grades every response against it; a later row with another answer
    (or none) was imported silently under the first row's answer. Now it is quarantined with
    file:line, the field and its value, and counted (``disagreeing``); rows that differ only in
    fields of their own (``usage``, in the prompt's meta) are imported."""
    q1, q2 = {"role": "user", "content": "What is 1 + 1?"}, {"role": "user", "content": "What is 2 + 2?"}

    def row(q, answer, text, **extra):
        return {"messages": [q, {"role": "assistant", "content": text}], **({"answer": answer} if answer else {}), **extra}

    data = jsonl(tmp_path / "chat.jsonl", [
        row(q1, "2", "<think>1 + 1 = 2.</think> \\boxed{2}", usage={"tokens": 5}),
        row(q2, "4", "<think>2 + 2 = 4.</think> \\boxed{4}"),
        row(q1, "2", "<think>One and one.</think> \\boxed{2}", usage={"tokens": 7}),
        row(q1, "3", "<think>1 + 1 = 3.</think> \\boxed{3}"),
        row(q2, "4", "<think>Four.</think> \\boxed{4}"),
        row(q1, None, "<think>Two.</think> \\boxed{2}"),
    ])
    counts = run_import(load_config(None, [f"run_dir={tmp_path / 'run'}", f"import.source={data}", "import.format=chat"]))
    assert (counts["read"], counts["imported"], counts["rejected"]) == (6, 4, 2) and counts["disagreeing"] == 2
    store = RunStore.open(tmp_path / "run")
    prompts = {p["messages"][-1]["content"]: p for p in store.read("sample", "prompts")}
    p1 = prompts[q1["content"]]
    assert (p1["answer"], p1["meta"], prompts[q2["content"]]["answer"]) == ("2", {"usage": {"tokens": 5}}, "4")
    assert sorted((s["prompt_id"], s["text"]) for s in store.read("sample", "pool-T1")) == sorted([
        (p1["id"], "<think>1 + 1 = 2.</think> \\boxed{2}"), (p1["id"], "<think>One and one.</think> \\boxed{2}"),
        (prompts[q2["content"]]["id"], "<think>2 + 2 = 4.</think> \\boxed{4}"),
        (prompts[q2["content"]]["id"], "<think>Four.</think> \\boxed{4}")])
    reason = (f"prompt {p1['id']!r}: another answer than an earlier row of it in this source (here answer {{}}); the run "
              "keeps one record of a prompt and grades all its responses against it: make the prompt's rows agree")
    assert {r["where"]: r["reason"] for r in store.read("sample", "rejects")} == {
        f"{data}:4": reason.format("'3'"), f"{data}:6": reason.format("None")}
    assert (f"2 row(s) quarantined for disagreeing with an earlier row of their prompt (e.g. {data}:4: "
            f"{reason.format(repr('3'))}); see {tmp_path / 'run' / 'sample'}/rejects-*.jsonl") in caplog.text


# -- sources by their whole content ----------------------------------------------------------------


def _unsampled(size):
    """The byte ranges of a file of ``size`` bytes that ``runs.file_digest`` never reads (the sampled
    digest an earlier dasd keyed import sources by)."""
    from dasd.runs import BLOCK, BLOCKS

    starts = [(size - BLOCK) * i // (BLOCKS - 1) for i in range(BLOCKS)]
    return [(a + BLOCK, b) for a, b in zip(starts, starts[1:]) if b > a + BLOCK]


def _edit_unsampled(path, pattern, edit):
    """Rewrite in place (the same file, the same size) the first match of ``pattern`` that lies where
    ``runs.file_digest`` reads nothing, as ``edit(match)``; return the record of its line, before and
    after."""
    import re

    data = path.read_bytes()
    gaps = _unsampled(len(data))
    for m in re.finditer(pattern, data):
        if any(a <= m.start() and m.end() <= b for a, b in gaps):
            new = edit(m.group())
            assert len(new) == len(m.group()) and new != m.group()
            with open(path, "r+b") as fh:
                fh.seek(m.start())
                fh.write(new)
            line = slice(data.rfind(b"\n", 0, m.start()) + 1, data.index(b"\n", m.start()))
            return json.loads(data[line]), json.loads(path.read_bytes()[line])
    raise AssertionError(f"{path}: no match of {pattern!r} outside the sampled blocks")


def _bump(b: bytes) -> bytes:
    """The last digit of ``b`` (before a closing brace) plus one, mod 10: "1501}" -> "1502}"."""
    i = max(i for i, c in enumerate(b) if chr(c).isdigit())
    return b[:i] + str((int(chr(b[i])) + 1) % 10).encode() + b[i + 1:]


@pytest.mark.parametrize("edited", ["source", "logprobs"])
def test_a_source_over_2_mib_edited_in_place_at_the_same_size_is_imported_again(tmp_path, request, edited):
    """A released file is GBs: one answer corrected in place ("1501" -> "1502"), or one log-prob of the
    companion, at the same size and where the sampled digest an earlier dasd used never read, left
    the import "up to date" with the old value. The sources are now hashed whole: the pool is
    imported again and takes the new value."""
    run = tmp_path / "run"
    if edited == "source":  # 150 rows of 20 KB, no companion
        data = _released(tmp_path, 150, "We need to count the primes below 20. " * 530)
        args = []
    else:  # a companion of 220 rows of about 1,000 ids
        tokdir = request.getfixturevalue("o200k_harmony_dir")
        body = "We need to count the primes below 20. " * 110
        data = _released(tmp_path, 220, body)
        lp = _companion(tmp_path, AutoTokenizer.from_pretrained(tokdir), 220, body)
        args = [f"import.logprobs={lp}", f"teacher.model={tokdir}"]
    cfg = load_config(None, [f"run_dir={run}", f"import.source={data}", *args])
    first = run_import(cfg)
    files = _pool_files(run)
    assert run_import(cfg) == first and _pool_files(run) == files  # unchanged: up to date
    if edited == "source":
        assert data.stat().st_size > 2 * 2**20
        old, row = _edit_unsampled(data, rb"boxed\{\d+\}", _bump)
        n = int(row["uuid"][1:])
        assert old["output"].endswith(f"\\boxed{{{n}}}") and row["output"] == old["output"][:-2] + f"{(n + 1) % 10}}}"
    else:
        assert lp.stat().st_size > 2 * 2**20
        old, row = _edit_unsampled(lp, rb'"logprobs": \[-0\.5', lambda b: b[:-1] + b"7")
        assert (old["logprobs"][:2], row["logprobs"][:2]) == ([-0.5, -0.5], [-0.7, -0.5])

    again = run_import(cfg)
    assert again["imported"] == first["imported"]
    assert not set(files) & set(_pool_files(run))  # imported again into new shards
    samples = {s["source_id"]: s for s in RunStore.open(run).read("sample", "pool-T1")}
    assert len(samples) == first["imported"]
    uuid = row["uuid"] if edited == "source" else row["sample_uuid"]
    if edited == "source":
        assert samples[uuid]["text"] == row["output"]
    else:
        assert samples[uuid]["teacher"]["logprobs"][:2].tolist() == pytest.approx([-0.7, -0.5])
        assert again["with_logprobs"] == first["with_logprobs"] == 220


def test_an_unchanged_source_is_not_read_again_and_a_changed_stat_reads_it(tmp_path):
    """The sources' sha256 is kept in RUN/sample/import-digests.json by each file's stat (path, size,
    mtime_ns, inode): an import whose source kept its stat does not read it again (shown by an
    edit in place that restores size and mtime_ns, the documented pitfall: it is not seen, where
    earlier dasd, reading this small file whole, saw it); a touch reads it again; a copy elsewhere
    with the same content (another path and inode) is read and is the same source."""
    import hashlib
    import os
    import shutil

    data = _released(tmp_path, 3, "We need to add 3 and 4.")
    hour_ago = data.stat().st_mtime_ns - 3600 * 10**9  # older than the racy window (runs.RACY_NS)
    os.utime(data, ns=(hour_ago, hour_ago))
    run = tmp_path / "run"

    def imported(source):
        return run_import(load_config(None, [f"run_dir={run}", f"import.source={source}"]))

    first = imported(data)
    files = _pool_files(run)
    text = data.read_bytes()
    st = data.stat()
    with open(data, "r+b") as fh:  # \boxed{0} -> \boxed{5} in the first row, at the same size
        fh.seek(text.index(b"boxed{0}"))
        fh.write(b"boxed{5}")
    os.utime(data, ns=(hour_ago, hour_ago))
    assert data.stat().st_ino == st.st_ino and data.stat().st_size == st.st_size
    assert imported(data) == first and _pool_files(run) == files  # the stat as recorded: not read again
    sha = hashlib.sha256(text).hexdigest()  # of the file as the first import read it
    cache = run / "sample" / "import-digests.json"
    assert json.loads(cache.read_text(encoding="utf-8")) == {
        str(data.resolve()): {"stat": [st.st_size, hour_ago, st.st_ino], "sha256": sha}}
    assert RunStore.open(run).stage_info("import")["config"]["sources"] == {"source": f"sha256:{sha}", "logprobs": None}

    os.utime(data, ns=(hour_ago + 10**9, hour_ago + 10**9))  # touched: read again, and the edit is seen
    assert imported(data) == first and not set(files) & set(_pool_files(run))
    samples = {s["source_id"]: s["text"] for s in RunStore.open(run).read("sample", "pool-T1")}
    assert samples["u0000"].endswith("\\boxed{5}")
    files = _pool_files(run)

    copy = tmp_path / "elsewhere" / "data.jsonl"
    copy.parent.mkdir()
    shutil.copy2(data, copy)  # the same content and mtime, another path and inode
    assert imported(copy) == first and _pool_files(run) == files
    assert set(json.loads(cache.read_text(encoding="utf-8"))) == {str(data.resolve()), str(copy.resolve())}


def test_file_digests_hash_whole_files_and_trust_a_stat_only_once_it_is_older_than_the_racy_window(tmp_path):
    """``runs.FileDigests``: the sha256 of the whole file (an edit between the blocks the sampled
    ``file_digest`` reads is seen); a digest is reused while the file's stat is the one it was read
    with, except for a file modified within ``RACY_NS`` of its reading (an edit in the same tick of
    the filesystem's clock may keep the stat), which is read again; an unreadable cache starts afresh."""
    import hashlib
    import os

    from dasd.runs import RACY_NS, FileDigests, file_digest

    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * (3 * 2**20 // 256))
    a, _ = _unsampled(big.stat().st_size)[5]
    sampled = file_digest(big)
    digests = FileDigests(tmp_path / "cache.json")
    assert digests.digest(big) == hashlib.sha256(big.read_bytes()).hexdigest()

    def edit(at, byte):
        ns = big.stat().st_mtime_ns
        with open(big, "r+b") as fh:
            fh.seek(at)
            fh.write(byte)
        os.utime(big, ns=(ns, ns))  # the stat as it was

    edit(a, b"\xff")
    assert file_digest(big) == sampled  # the sampled digest misses it
    fresh = digests.digest(big)  # modified just now: not trusted, read again
    assert fresh == hashlib.sha256(big.read_bytes()).hexdigest()
    digests.save()
    assert json.loads((tmp_path / "cache.json").read_text(encoding="utf-8")) == {}

    old = big.stat().st_mtime_ns - RACY_NS - 10**9
    os.utime(big, ns=(old, old))
    assert digests.digest(big) == fresh
    digests.save()
    edit(a + 1, b"\xfe")  # the stat restored: the pitfall, not seen
    assert FileDigests(tmp_path / "cache.json").digest(big) == fresh
    (tmp_path / "cache.json").write_text("{not json", encoding="utf-8")
    assert FileDigests(tmp_path / "cache.json").digest(big) == hashlib.sha256(big.read_bytes()).hexdigest() != fresh


def test_a_datasets_folder_counts_each_of_its_files_whole(tmp_path):
    """A source folder (``save_to_disk``, or hub-like after ``hf:``): one byte of one of its files
    changed between the blocks the sampled digest reads gives another ``source_version``."""
    from dasd.stages.import_ import source_version

    folder = tmp_path / "saved"
    folder.mkdir()
    (folder / "dataset_info.json").write_text("{}", encoding="utf-8")
    arrow = folder / "data-00000-of-00001.arrow"
    arrow.write_bytes(bytes(range(256)) * (3 * 2**20 // 256))
    before = source_version(str(folder))
    a, _ = _unsampled(arrow.stat().st_size)[5]
    with open(arrow, "r+b") as fh:
        fh.seek(a)
        fh.write(b"\xff")
    assert source_version(str(folder)) != before


def test_a_second_pool_whose_rows_differ_only_in_their_own_fields_keeps_the_runs_prompt_records(tmp_path, tiny_lm_dir,
                                                                                               caplog):
    """Two chat sources of the same questions and answers, one per temperature, whose rows carry their
    own `usage` (it lands in the prompt's meta): importing the second replaced every prompt record
    as a correction, with a warning, and made filter judge every pool again. Meta is not graded
    against: the run keeps its records (one line counts them) and the prompts output is not
    rewritten, while a corrected answer with another usage is still a correction."""
    from dasd.runs import read_shards

    def chat(path, usage, c1="2"):
        jsonl(path, [{**r, "usage": {"tokens": usage}} for r in
                     (json.loads(line) for line in _graded_chat(path, c1=c1).read_text(encoding="utf-8").splitlines())])
        return path

    low, high, run = chat(tmp_path / "low.jsonl", 5), chat(tmp_path / "high.jsonl", 9), tmp_path / "run"
    run_import(_graded_cfg(run, low, 0.6, tiny_lm_dir))
    before = read_shards(RunStore.open(run), ("sample",))["sample/prompts"]
    caplog.clear()
    run_import(_graded_cfg(run, high, 1.0, tiny_lm_dir))
    store = RunStore.open(run)
    assert read_shards(store, ("sample",))["sample/prompts"] == before  # not rewritten
    assert {p["id"]: p["meta"] for p in store.read("sample", "prompts")} == {f"c{i}": {"usage": {"tokens": 5}} for i in (1, 2, 3)}
    assert "other fields than the run kept" not in caplog.text
    assert ("3 prompt(s) of the source differ from the run's record only in meta (e.g. a chat row's own usage or "
            "model): the run keeps its records") in caplog.text
    chat(high, 9, c1="3")  # now c1's answer is corrected too: its record is replaced, usage and all
    caplog.clear()
    run_import(_graded_cfg(run, high, 1.0, tiny_lm_dir))
    prompts = {p["id"]: p for p in RunStore.open(run).read("sample", "prompts")}
    assert (prompts["c1"]["answer"], prompts["c1"]["meta"], prompts["c2"]["meta"]) == ("3", {"usage": {"tokens": 9}},
                                                                                        {"usage": {"tokens": 5}})
    assert "1 prompt(s) have the same messages and other fields than the run kept under their id: answer (1), meta (1)" \
        in caplog.text
