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


def test_released_layout_joined_by_id_not_position(tmp_path, tiny_lm_dir):
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    texts = {
        "u1": "<think>\n3 + 4 = 7. Café ✓\n</think>\nThe answer is \\boxed{7}.",
        "u2": "<think>\n日本語 5 - 2 = 3.\n</think>\n\\boxed{3}",
        "u3": "<think>\nno log-probs for me\n</think>\n\\boxed{1}",
        "u4": "<think>\nids of another text\n</think>\n\\boxed{2}",
    }
    data = jsonl(tmp_path / "stage1.jsonl", [
        {"uuid": "u1", "input": "What is 3 + 4?", "output": texts["u1"], "domain": "math", "meta": {"src": "x"}},
        {"uuid": "u2", "input": [{"role": "user", "content": "5 - 2?"}], "output": texts["u2"], "domain": "math"},
        "this is not json",
        {"uuid": "u3", "input": "q3", "output": texts["u3"], "domain": "math"},
        {"uuid": "u4", "input": "q4", "output": texts["u4"], "domain": "math"},
        {"input": "no uuid", "output": "x"},
        {"uuid": "u5", "input": "q5", "output": ""},
    ])
    def row(uuid, text):
        ids = tok.encode(text, add_special_tokens=False)
        return {"sample_uuid": uuid, "token_ids": ids, "logprobs": [-0.01 * (i + 1) for i in range(len(ids))]}
    # companion rows in a different order than the data, one orphan, one whose ids are another text's
    lp = jsonl(tmp_path / "stage1-logprob.jsonl", [row("u2", texts["u2"]), row("zz", "orphan"), row("u4", "different text"), row("u1", texts["u1"])])
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"import.source={data}", f"import.logprobs={lp}",
                             "import.temperature=0.6", f"teacher.model={tiny_lm_dir}"])
    counts = run_import(cfg)
    assert counts["imported"] == 4 and counts["with_logprobs"] == 2
    assert counts["logprobs_missing"] == 1 and counts["logprobs_mismatched"] == 1 and counts["logprob_orphans"] == 1
    store = RunStore.open(tmp_path / "run")
    samples = {s["source_id"]: s for s in store.read("sample", "pool-T0.6")}
    assert set(samples) == {"u1", "u2", "u3", "u4"}
    for uuid in ("u1", "u2"):
        t = samples[uuid]["teacher"]
        assert t["logprob_mode"] == "raw"
        ids = tok.encode(texts[uuid], add_special_tokens=False)
        assert t["token_ids"].tolist() == ids  # joined by id: u2's row was first in the companion file
        offs = t["offsets"]
        assert offs[0][0] == 0 and offs[-1][1] == len(texts[uuid])
        assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(offs, offs[1:]))
        assert math.isclose(t["logprobs"][0], -0.01, rel_tol=1e-6)  # stored as float32
    assert samples["u3"]["teacher"]["logprob_mode"] == "missing"
    assert samples["u4"]["teacher"]["logprob_mode"] == "missing"
    prompts = {p["id"]: p for p in store.read("sample", "prompts")}
    p1 = prompts[samples["u1"]["prompt_id"]]
    assert p1["messages"][0] == {"role": "system", "content": "You are a helpful assistant."}
    assert p1["domain"] == "math" and p1["meta"] == {"src": "x"}
    rejects = list(store.read("sample", "rejects"))
    reasons = " | ".join(r["reason"] for r in rejects)
    assert "not valid JSON" in reasons and "uuid" in reasons and "'output'" in reasons and "'zz'" in reasons
    assert any(r["where"] == f"{data}:3" for r in rejects)
    # re-running imports nothing twice
    run_import(cfg)
    assert len(list(store.read("sample", "pool-T0.6"))) == 4


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
