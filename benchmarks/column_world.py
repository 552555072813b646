"""What the column world's ablation arms learnt: the share of column answers DAS and random
sampling pick, and each arm's final model's styles.

    HF_HUB_OFFLINE=1 python benchmarks/ablation.py --config configs/column.yaml --arms rs_low das_low rs_high \
        das_high --no-mixed --paper-protocol --samples 4 --kl-samples 1 --set train.micro_batch=8 --out ABL --seeds 0 1
    HF_HUB_OFFLINE=1 python benchmarks/column_world.py styles --ablation ABL --seeds 0 1

The column world itself (``dasd.toy.column``: two-digit sums; a teacher that writes 40% of its
answers column by column, ``8 + 7 = 15, 3 + 4 + 1 = 8, so 38 + 47 = 85.``; a student base that saw
only one-shot answers) ships with the package (``toy:column-teacher``, ``toy:column-student``,
``configs/column.yaml``); ``dasd toy build --world column --out DIR`` rebuilds its models (about 12
minutes on 2 cores). Why it exists: in the chain world the teacher's Teacher sentences (its
self-checks) are learnable in form only, and DAS, which selects them, does not help the student
there (README, "The toy-world ablation"); ``column_world_probe.py`` found a style that does help a
student that never saw it.

``styles`` writes ``ABL/column-styles.json``: per seed, the share of column answers among each
pool's candidates and among those random sampling and DAS select (``selections``), and per arm and
seed, its final model sampled once per held-out problem (the config's 200 test problems) at T=1.0:
the share of column answers and the accuracy of each style (``arms``).
Results: ``benchmarks/results/column-world.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dasd.toy.column import make_sum_problems, measure, style_of  # noqa: E402


def arm_styles(ablation: Path, seeds: list[int], problems: int = 200, temperature: float = 1.0,
               arms: list[str] | None = None, log=print) -> dict:
    """Per ablation arm and seed: its final model sampled once per held-out problem (the first
    ``problems`` of the column world's test split, seed 0: ``configs/column.yaml``'s benchmark) at
    ``temperature``: the share of column answers and the accuracy of each style. Arms are found under
    ``ablation/seed-<s>/arms/<arm>/train/*/final`` (``arms``: only these)."""
    import torch

    torch.set_num_threads(1)
    held = make_sum_problems(problems, 0, "test")
    out: dict = {}
    for seed in seeds:
        for arm_dir in sorted((ablation / f"seed-{seed}" / "arms").glob("*")):
            finals = sorted(arm_dir.glob("train/*/final/config.json"))
            if not finals or (arms is not None and arm_dir.name not in arms):
                continue
            m = measure(finals[-1].parent, None, held, seed, temperatures=(temperature,), by_style=True)[f"T={temperature}"]
            out.setdefault(arm_dir.name, {})[seed] = m
            log(f"[column world] seed {seed} {arm_dir.name}: accuracy {m['accuracy']:.3f}, column {m['column_share']:.2f} "
                f"(solved {m['column_accuracy']}), one-shot solved {m['oneshot_accuracy']}")
    return out


def column_shares(pools: dict[str, list[dict]], per_prompt: int, seed: int) -> dict[str, dict[str, float]]:
    """Per pool, the share of column answers among the candidates of the prompts the ablation trains
    on (those with ``per_prompt`` candidates in every pool) and among those random sampling and DAS
    select there (``per_prompt`` each; the ablation's ``select``)."""
    from ablation_lib import eligible_prompts, select

    prompts = eligible_prompts(pools, per_prompt)
    keep = set(prompts)

    def share(cands: list[dict]) -> float:
        return round(sum(style_of(c["text"]) == "column" for c in cands) / max(1, len(cands)), 4)

    return {pool: {"all": share([c for c in cands if c["prompt_id"] in keep]),
                   **{m: share(select(cands, prompts, m, per_prompt, seed)) for m in ("random", "das")}}
            for pool, cands in pools.items()}


def selection_styles(ablation: Path, seeds: list[int], per_prompt: int = 2, log=print) -> dict:
    """``column_shares`` of each seed's scored pool (``ablation/seed-<s>/pool``, read only; the
    temperatures of ``column.yaml``)."""
    from ablation_lib import read_pools

    from dasd.store import RunStore

    out = {}
    for seed in seeds:
        pools = read_pools(RunStore.open(ablation / f"seed-{seed}" / "pool"), (0.6, 1.0))
        out[seed] = column_shares(pools, per_prompt, seed)
        log(f"[column world] seed {seed} column share of candidates / random picks / DAS picks: " + "; ".join(
            f"{pool} {v['all']:.2f} / {v['random']:.2f} / {v['das']:.2f}" for pool, v in out[seed].items()))
    return out


def merge_styles(old: dict | None, selections: dict, arms: dict) -> dict:
    """``column-styles.json``'s content: ``old`` (an earlier run's, or None) updated with this run's
    per-seed ``selections`` and per-arm, per-seed ``arms``; what was not measured again is kept.
    Seeds are keys as JSON writes them (strings)."""
    out = json.loads(json.dumps(old)) if old else {"selections": {}, "arms": {}}
    out["selections"].update({str(k): v for k, v in selections.items()})
    for arm, by_seed in arms.items():
        out["arms"].setdefault(arm, {}).update({str(k): v for k, v in by_seed.items()})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("styles", help="the column share and per-style accuracy of each ablation arm's final model")
    st.add_argument("--ablation", required=True,
                    help="the ablation's --out (seed-<s>/pool, seed-<s>/arms/<arm>); column-styles.json is written there")
    st.add_argument("--seeds", type=int, nargs="+", default=[0])
    st.add_argument("--problems", type=int, default=200)
    st.add_argument("--temperature", type=float, default=1.0)
    st.add_argument("--per-prompt", type=int, default=2, help="the ablation's --per-prompt (selection budget)")
    st.add_argument("--arms", nargs="+", default=None, help="measure only these arms (others already in the JSON are kept)")
    a = ap.parse_args(argv)
    from dasd.jsonl import atomic_write_json

    path = Path(a.ablation) / "column-styles.json"
    old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    selections = selection_styles(Path(a.ablation), a.seeds, a.per_prompt)
    arms = arm_styles(Path(a.ablation), a.seeds, a.problems, a.temperature, a.arms)
    atomic_write_json(path, merge_styles(old, selections, arms))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
