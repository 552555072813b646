"""`dasd sample` opens its prompts file once: the first bytes that tell a Parquet file under another
name from JSON Lines are read from the handle the rows are then read from, not from an open of their
own. Opens are counted by the interpreter's audit hook (``test_eval_benchmark_reads.Opens``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from dasd.config import load_config
from dasd.prompts import load_prompts
from dasd.stages.sample import run_sample
from dasd.store import RunStore

sys.path.insert(0, str(Path(__file__).parent))
from test_eval_benchmark_reads import Opens  # noqa: E402

ROWS = [{"id": f"p{i}", "prompt": f"Compute {i} + {i + 1}."} for i in range(3)]


def test_the_sample_stage_opens_its_jsonl_prompts_once(tmp_path, tiny_lm_dir):
    p = tmp_path / "prompts.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"data.prompts={p}", f"teacher.model={tiny_lm_dir}",
                             "sample.k=1", "sample.max_tokens=4", "sample.temperatures=[1.0]"])
    with Opens(p) as opened:
        counts = run_sample(cfg)
    assert opened[p] == 1
    assert counts["T1"]["prompts"] == 3 and counts["T1"]["new"] == 3
    assert [r["id"] for r in RunStore(cfg.run_dir).read("sample", "prompts")] == ["p0", "p1", "p2"]


def test_a_parquet_file_under_a_jsonl_name_is_opened_once(tmp_path):
    p = tmp_path / "prompts.jsonl"
    pq.write_table(pa.Table.from_pylist(ROWS), p)
    with Opens(p) as opened:
        prompts, rejects = load_prompts(p, None)
    assert opened[p] == 1
    assert [(x["id"], x["messages"][-1]["content"]) for x in prompts] == [(r["id"], r["prompt"]) for r in ROWS]
    assert rejects == []
