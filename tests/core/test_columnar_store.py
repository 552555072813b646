"""The columnar run store: schemas checked on write and read, references instead of copies, resume
without duplicates after kill -9, `datasets` loading, and JSONL runs converted record for record."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dasd.columnar import plain
from dasd.convert import convert_run
from dasd.errors import DasdError
from dasd.jsonl import atomic_write_jsonl, read_jsonl
from dasd.rules.das import score_sample, select_grouped
from dasd.store import RunStore, shard_paths
from dasd.text.filters import FilterConfig, apply_filters


def make_sample(rng: random.Random, i: int, pool: str = "T1") -> dict:
    """A sample record as `dasd sample` writes it (JSON-shaped: lists)."""
    words = [rng.choice(["First", " we", " add", " 3", ".", " Then", " 4", "\n\n", " so", " 7", "!"]) for _ in range(rng.randint(5, 40))]
    body = "".join(words)
    text = f"<think>{body}</think>The answer is {i}."
    offsets, pos = [], 0
    for piece in ["<think>", *words, "</think>", "The answer is ", str(i), "."]:
        offsets.append([pos, pos + len(piece)])
        pos += len(piece)
    return {
        "id": f"s{pool}{i:04d}", "prompt_id": f"p{i // 2}", "model": "toy:teacher", "temperature": float(pool[1:]),
        "top_p": 1.0, "seed": 0, "index": i % 2, "text": text, "finish_reason": "stop",
        "teacher": {"token_ids": [rng.randrange(50000) for _ in offsets], "offsets": offsets,
                    "logprobs": [-rng.random() * 3 for _ in offsets], "logprob_mode": "raw"},
    }


def f32(x):
    """JSON-shaped records ``x`` with token log-probs rounded to float32 (what a columnar shard keeps)."""
    if isinstance(x, list):
        return [f32(v) for v in x]
    out = dict(x)
    for side in ("teacher", "student"):
        if isinstance(out.get(side), dict) and out[side].get("logprobs") is not None:
            out[side] = {**out[side], "logprobs": [float(np.float32(v)) for v in out[side]["logprobs"]]}
    return out


def test_sample_records_round_trip_with_typed_columns(tmp_path):
    rng = random.Random(0)
    recs = [make_sample(rng, i) for i in range(7)]
    recs[3]["teacher"]["tokens"] = ["t"] * len(recs[3]["teacher"]["offsets"])
    recs[4] = {**recs[4], "source_id": "uuid-4", "meta": {"k": [1, 2]}}  # metadata goes to 'extra'
    store = RunStore(tmp_path / "run")
    with store.writer("sample", "pool-T1", shard_size=3) as w:
        for r in recs:
            w.add(r)
    paths = shard_paths(store.root / "sample", "pool-T1")
    assert [p.name for p in paths] == [f"pool-T1-0000{i}.parquet" for i in range(3)]
    schema = pq.read_schema(paths[0])
    assert schema.field("teacher_logprobs").type == pa.list_(pa.float32())
    assert schema.field("teacher_offsets").type == pa.list_(pa.int32())
    assert pq.ParquetFile(paths[0]).metadata.row_group(0).column(0).compression == "ZSTD"
    got = list(store.read("sample", "pool-T1"))
    t = got[0]["teacher"]
    assert t["offsets"].dtype == np.int32 and t["offsets"].shape == (len(recs[0]["teacher"]["offsets"]), 2)
    assert t["logprobs"].dtype == np.float32
    assert [plain(r) for r in got] == f32(recs)


def test_write_checks_the_schema_and_names_record_and_field(tmp_path):
    store = RunStore(tmp_path / "run")
    rec = make_sample(random.Random(1), 0)
    with store.writer("sample", "pool-T1") as w:
        bad = {**rec, "teacher": {**rec["teacher"], "offsets": [[0.5, 2]] * len(rec["teacher"]["offsets"])}}
        with pytest.raises(ValueError, match=r"record sT10000: teacher.offsets: expected integers"):
            w.add(bad)
        with pytest.raises(ValueError, match=r"record sT10000: teacher.logprobs\[1\] = .*nan.*not a finite"):
            w.add({**rec, "teacher": {**rec["teacher"], "logprobs": [0.0, float("nan")] + rec["teacher"]["logprobs"][2:]}})
        with pytest.raises(ValueError, match=r"record sT10000: field 'temperature' does not fit"):
            w.add({**rec, "temperature": "hot"})
        with pytest.raises(ValueError, match=r"'teacher' has fields with no column: surprise"):
            w.add({**rec, "teacher": {**rec["teacher"], "surprise": 1}})
        assert w.add(rec)  # nothing half-added before
    assert [r["id"] for r in store.read("sample", "pool-T1")] == ["sT10000"]


def test_read_checks_the_schema_and_names_file_and_field(tmp_path):
    store = RunStore(tmp_path / "run")
    d = store.stage_dir("score")
    bad = d / "pool-T1-00000.parquet"
    pq.write_table(pa.table({"id": ["a"], "das": [1.5]}), bad)
    with pytest.raises(DasdError, match=r"pool-T1-00000.parquet: does not match the scored schema \(field '"):
        list(store.read("score", "pool-T1"))
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(DasdError, match=r"pool-T1-00000.parquet: corrupt run file"):
        list(store.read("score", "pool-T1"))


def test_a_damaged_byte_in_a_shard_is_an_error_naming_the_file_never_other_data(tmp_path):
    """Flip each byte of the text column's pages in turn (a disk or copy error): every read gives the
    records as written or one line naming the shard; without page checksums, a byte inside a
    compressed page came back as other text, silently."""
    store = RunStore(tmp_path / "run")
    recs = [make_sample(random.Random(5), i) for i in range(3)]
    with store.writer("sample", "pool-T1") as w:
        for r in recs:
            w.add(r)
    [path] = shard_paths(store.root / "sample", "pool-T1")
    orig = path.read_bytes()
    meta = pq.ParquetFile(path).metadata.row_group(0)
    col = meta.column(pq.read_schema(path).get_field_index("text"))
    start = min(o for o in (col.dictionary_page_offset, col.data_page_offset) if o is not None)
    outcomes = set()
    for off in range(start, start + col.total_compressed_size):
        damaged = bytearray(orig)
        damaged[off] ^= 0x10
        path.write_bytes(bytes(damaged))
        try:
            got = [plain(r) for r in RunStore.open(store.root).read("sample", "pool-T1")]
        except DasdError as e:
            assert str(e).startswith(f"{path}: corrupt run file (") and "\n" not in str(e), (off, str(e))
            outcomes.add("error")
            continue
        assert got == f32(recs), f"byte {off} changed: read other data without an error"
        outcomes.add("same")
    assert "error" in outcomes
    path.write_bytes(orig)
    assert [plain(r) for r in RunStore.open(store.root).read("sample", "pool-T1")] == f32(recs)


def test_a_shard_whose_values_cannot_be_decoded_is_an_error_naming_the_file(tmp_path):
    """Schema-valid shards that hold what dasd never writes: 'extra' that is not JSON, a column made
    non-nullable (names and types equal): one line naming the file, not a traceback."""
    from dasd.columnar import KINDS, to_table

    store = RunStore(tmp_path / "run")
    d = store.stage_dir("sample")
    good = to_table(KINDS["sample"], [make_sample(random.Random(6), 0)])
    bad_extra = good.set_column(good.schema.get_field_index("extra"), good.schema.field("extra"),
                                pa.array(['{"source_id": "cut off'], pa.string()))
    pq.write_table(bad_extra, d / "pool-T1-00000.parquet")
    with pytest.raises(DasdError, match=r"pool-T1-00000.parquet: corrupt run file \(JSONDecodeError: "):
        list(store.read("sample", "pool-T1"))
    i = good.schema.get_field_index("model")
    strict = good.cast(good.schema.set(i, good.schema.field(i).with_nullable(False)))
    pq.write_table(strict, d / "pool-T1-00000.parquet")
    with pytest.raises(DasdError, match=r"pool-T1-00000.parquet: does not match the sample schema "
                                        r"\(expected pyarrow.Field<model: string>, found pyarrow.Field<model: string not null>\)"):
        list(store.read("sample", "pool-T1"))

def test_kept_scored_chosen_refer_upstream_instead_of_copying(tmp_path):
    """filter -> score -> select through the store: rows hold references and new columns only,
    and read back as whole records, equal to the in-memory ones."""
    rng = random.Random(2)
    store = RunStore(tmp_path / "run")
    with store.writer("sample", "pool-T1", shard_size=4) as w:
        for i in range(10):
            w.add(make_sample(rng, i))
    fc = FilterConfig(max_student_tokens=None, repetition={"enabled": False})
    kept_mem = []
    with store.writer("filter", "kept-T1", shard_size=3) as w:
        for s in store.read("sample", "pool-T1"):
            out, drop = apply_filters(s, fc)
            assert drop is None
            kept_mem.append(out)
            w.add(out)
    scored_mem = []
    with store.writer("score", "pool-T1", shard_size=3) as w:
        for s in store.read("filter", "kept-T1"):
            n = len(s["text"])
            offs = [(a, min(a + 4, n)) for a in range(0, n, 4)]
            scored = score_sample(s, offs, [-rng.random() for _ in offs])
            scored_mem.append(scored)
            w.add(scored)
    sel, rej = select_grouped(list(store.read("score", "pool-T1")), 1, "das")
    with store.writer("select", "selected-T1") as w:
        for s in sel:
            w.add(s)
    def nulls(stage, name, columns):
        t = pq.read_table(shard_paths(store.root / stage, name)[0])
        return all(t[c].null_count == t.num_rows for c in columns) and t["ref_shard"].null_count == 0

    copied = ["text", "teacher_offsets", "teacher_logprobs", "teacher_token_ids"]
    assert nulls("filter", "kept-T1", copied)  # no copy of the text or the token arrays
    assert nulls("score", "pool-T1", copied) and nulls("select", "selected-T1", copied + ["student_logprobs", "sentences"])
    assert pq.read_table(shard_paths(store.root / "filter", "kept-T1")[0])["ref_shard"][0].as_py() == "pool-T1-00000.parquet"
    assert [plain(r) for r in store.read("filter", "kept-T1")] == [plain(r) for r in kept_mem]
    got = [plain(r) for r in store.read("score", "pool-T1")]
    want = [plain(r) for r in scored_mem]
    assert [g["id"] for g in got] == [w_["id"] for w_ in want]
    for g, w_ in zip(got, want):
        assert g["student"]["offsets"] == w_["student"]["offsets"] and g["sentences"] == w_["sentences"]
        assert g["das"] == w_["das"] and g["teacher"] == w_["teacher"] and g["text"] == w_["text"]
    assert [plain(r) for r in store.read("select", "selected-T1")] == [plain(s) for s in sel]
    # a record that was changed (a rescored teacher) is written with its new columns
    s0 = next(store.read("score", "pool-T1"))
    redone = {**s0, "teacher": {**s0["teacher"], "logprobs": s0["teacher"]["logprobs"] * 0 - 1.0, "rescored": True}}
    with store.writer("select", "rejected-T1") as w:
        w.add(redone)
    back = next(store.read("select", "rejected-T1"))
    assert back["teacher"]["rescored"] is True and set(back["teacher"]["logprobs"].tolist()) == {-1.0}


def test_loads_with_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    rng = random.Random(3)
    store = RunStore(tmp_path / "run")
    recs = [make_sample(rng, i) for i in range(5)]
    with store.writer("sample", "pool-T1", shard_size=2) as w:
        for r in recs:
            w.add(r)
    files = [str(p) for p in shard_paths(store.root / "sample", "pool-T1")]
    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf"))
    assert ds["id"] == [r["id"] for r in recs]
    assert ds[2]["teacher_offsets"] == [x for o in recs[2]["teacher"]["offsets"] for x in o]


def jsonl_records(folder, name) -> list[dict]:
    """The records of a JSONL output as the old store read them: shards in order, each id once."""
    seen, out = set(), []
    for path in shard_paths(folder, name):
        for r in read_jsonl(path):
            if r["id"] not in seen:
                seen.add(r["id"])
                out.append(r)
    return out


def test_jsonl_run_fails_in_one_line_and_converts_to_the_same_records(tmp_path):
    """A run in the JSONL layout of earlier versions: one-line error naming the command; after
    `convert_run`, every output holds exactly the records it held (log-probs as float32)."""
    rng = random.Random(4)
    root = tmp_path / "old"
    store = RunStore(root)
    samples = [make_sample(rng, i) for i in range(9)]
    kept = [s for s in samples if s["index"] == 0]
    scored = [score_sample(s, [(0, len(s["text"]))], [-0.5]) for s in kept]
    scored_json = [plain(s) for s in scored]
    atomic_write_jsonl(root / "sample" / "pool-T1-00000.jsonl", samples[:5])
    atomic_write_jsonl(root / "sample" / "pool-T1-00001.jsonl", samples[3:])  # a duplicate from a resume
    atomic_write_jsonl(root / "sample" / "prompts-00000.jsonl", [{"id": "p0", "messages": []}])
    atomic_write_jsonl(root / "filter" / "kept-T1-00000.jsonl", kept)
    atomic_write_jsonl(root / "score" / "pool-T1-00000.jsonl", scored_json)
    atomic_write_jsonl(root / "select" / "selected-T1-00000.jsonl", scored_json[:2])
    atomic_write_jsonl(root / "select" / "train-T1-00000.jsonl", [{"id": "e0", "messages": []}])
    with pytest.raises(DasdError) as e:
        list(store.read("sample", "pool-T1"))
    msg = str(e.value)
    assert "\n" not in msg and f"dasd convert {root}" in msg and "pool-T1-00000.jsonl" in msg
    with pytest.raises(DasdError, match="dasd convert"):
        store.writer("score", "pool-T1")
    before = {(st, n): f32(jsonl_records(root / st, n)) for st in ("sample", "filter", "score", "select")
              for n in store.outputs(st) if n.startswith(("pool", "kept", "selected"))}
    done = convert_run(root)
    assert done == {"sample/pool-T1": 9, "filter/kept-T1": 5, "score/pool-T1": 5, "select/selected-T1": 2}
    assert sorted(p.name for p in root.glob("*/*.jsonl")) == ["prompts-00000.jsonl", "train-T1-00000.jsonl"]
    after = RunStore.open(root)
    for (st, n), recs in before.items():
        assert [plain(r) for r in after.read(st, n)] == recs, (st, n)
    assert convert_run(root) == {}  # nothing left to do


WRITER = textwrap.dedent(
    """
    import random, sys, time
    sys.path.insert(0, sys.argv[3])
    from test_columnar_store import make_sample
    from dasd.store import RunStore
    store = RunStore(sys.argv[1])
    rng = random.Random(5)
    recs = [make_sample(rng, i) for i in range(40)]
    with store.writer("sample", "pool-T1", shard_size=3) as w:
        for i, r in enumerate(recs):
            if r["id"] in w:
                continue
            w.add(r)
            if i == int(sys.argv[2]):
                print("ready", flush=True)
                time.sleep(60)
    """
)


def test_kill_9_mid_shard_then_resume_equals_uninterrupted(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER, encoding="utf-8")
    here = os.path.dirname(__file__)
    ref = tmp_path / "ref"
    subprocess.run([sys.executable, str(script), str(ref), "-1", here], check=True)
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(script), str(run), "17", here], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = RunStore.open(run).ids("sample", "pool-T1")
    assert 0 < len(partial) < 40  # complete shards survived, the buffer was lost
    assert not [p for p in (run / "sample").iterdir() if not p.name.endswith(".parquet")]  # no half-written file
    subprocess.run([sys.executable, str(script), str(run), "-1", here], check=True)
    on_disk = [i for p in shard_paths(run / "sample", "pool-T1") for i in pq.read_table(p, columns=["id"])["id"].to_pylist()]
    assert sorted(on_disk) == sorted(set(on_disk)) and len(on_disk) == 40  # every record exactly once
    got = sorted((plain(r) for r in RunStore.open(run).read("sample", "pool-T1")), key=lambda r: r["id"])
    want = sorted((plain(r) for r in RunStore.open(ref).read("sample", "pool-T1")), key=lambda r: r["id"])
    assert json.dumps(got) == json.dumps(want)
