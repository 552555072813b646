"""Traced Python peak of `dasd sample` (run_sample) over N ~3 KB prompts from a JSONL file, 2 temperatures, k 1, all but one prompt quarantined as too long by an earlier run (so only the prompt passes, ranking and bookkeeping are measured; the toy teacher samples one). Usage: python benchmarks/sample_memory.py N SCRATCH_DIR.
Measured (2 interleaved repeats, identical within 10 KB), N = 5000 / 25000 (15 / 76 MB of prompts):  before (the stage held every prompt): 46.8 / 134.4 MB  after (ids only, prompts streamed):    28.0 / 37.7 MB"""
import json
import pathlib
import shutil
import sys
import tracemalloc

from dasd.config import load_config
from dasd.runs import open_engine
from dasd.stages.sample import run_sample, _context_key
from dasd.store import RunStore
n = int(sys.argv[1])
root = pathlib.Path(sys.argv[2])
shutil.rmtree(root, ignore_errors=True)
root.mkdir(parents=True)
src = root / "p.jsonl"
with open(src, "w") as f:
    for i in range(n):
        f.write(json.dumps({"id": f"p{i:06d}", "prompt": f"Problem {i}. " + "Let x be a real number such that " * 90, "answer": str(i)}) + "\n")
    f.write(json.dumps({"id": "s0", "prompt": "Compute 3 + 4."}) + "\n")
cfg = load_config(None, [f"run_dir={root/'run'}", f"data.prompts={src}", "teacher.model=toy:teacher", "sample.temperatures=[0.6, 1.0]", "sample.k=1", "sample.max_tokens=4"])
store = RunStore(cfg.run_dir)
store.write_rejects("sample", [{"id": f"too-long-p{i:06d}", "where": "x", "reason": "too long", "context": _context_key(cfg)} for i in range(n)])
eng = open_engine(cfg.teacher)
tracemalloc.start()
base = tracemalloc.get_traced_memory()[0]
tracemalloc.reset_peak()
run_sample(cfg, store, engine=eng)
print(n, src.stat().st_size, tracemalloc.get_traced_memory()[1] - base)
