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
