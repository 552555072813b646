"""A minimal sampling job (run as a subprocess by test_resume.py): write each sample as it finishes.

    python sample_job.py BASE_URL OUT_DIR

This is the pattern the sample stage uses with the openai engine: ``generate_iter`` with a
``skip`` of what is already on disk, each finished sample added to a ShardWriter at once.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dasd.engines import EngineConfig, GenerateRequest, make_engine
from dasd.records import sample_id
from dasd.store import ShardWriter

N_PROMPTS, K, TEMP, TOP_P, SEED = 12, 2, 1.0, 1.0, 11


def requests() -> list[GenerateRequest]:
    return [
        GenerateRequest(id=f"q{p}", messages=[{"role": "user", "content": f"Compute {p} + {p + 1} then times 2."}],
                        n=K, temperature=TEMP, top_p=TOP_P, max_tokens=16, seed=SEED + p)
        for p in range(N_PROMPTS)
    ]


def main(base_url: str, out: str) -> None:
    eng = make_engine(EngineConfig(kind="openai", model="tiny", openai={
        "base_urls": [base_url], "concurrency": 2, "timeout_s": 10, "backoff_s": 0.01}))
    reqs = requests()
    ids = [[sample_id(r.id, "tiny", TEMP, TOP_P, SEED, i) for i in range(r.n)] for r in reqs]
    with ShardWriter(Path(out), "samples", shard_size=1) as w:
        for r, g in eng.generate_iter(reqs, skip=lambda r, i: ids[r][i] in w):
            w.add({"id": ids[r][g.index], "prompt_id": reqs[r].id, "index": g.index, "text": g.text,
                   "logprobs": g.logprobs, "offsets": [list(o) for o in g.offsets]})
    print(f"done: {w.written} new", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
