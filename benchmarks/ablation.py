"""The paper's comparisons on the toy world at an equal budget of training samples.

    HF_HUB_OFFLINE=1 python benchmarks/ablation.py                       # 3 seeds, configs/demo.yaml
    HF_HUB_OFFLINE=1 python benchmarks/ablation.py --quick --seeds 0     # a fast look
    HF_HUB_OFFLINE=1 python benchmarks/ablation.py --set sample.k=6 --prompts 64
    HF_HUB_OFFLINE=1 python benchmarks/ablation.py --paper-protocol --samples 16 --test 200 --replay --seeds 0 1 2 3 4
    python benchmarks/ablation.py --power-only benchmarks/results/ablation.json   # size the next run

Arms: random sampling (RS) and DAS at T_low, at T_high and on the low->high schedule, and the
mixed-policy stage with the student prefix masked vs unmasked; optionally (``--naturalness``) the
student's global and local naturalness as selectors at the same budget, and (``--replay``) the
mixed-policy stage with off-policy replay, prefix unmasked and masked; per arm and seed the held-out
accuracy and KL(teacher || student) on teacher samples; mean and 95% t-interval over seeds; the
paper's Tables 1, 3 and 5 as paired contrasts with a "reproduces?" verdict, and a power table (seeds
needed). ``--paper-protocol`` measures at T=1.0 with ``--samples`` per problem. Writes
``benchmarks/results/ablation.md`` and ``ablation.json`` and prints the tables. Resumable: re-running
the same command skips what is finished (run directories under ``--out``). ``--power-only JSON``
prints the power table of an earlier run (a pilot) without running anything. Method: docs/ablation.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ablation_lib import (  # noqa: E402
    ALL_ARMS, PAPER_PROTOCOL_SAMPLES, AblationPlan, load_results, power_markdown, power_table, relative_path, run_ablation,
)

from dasd.rules.mixing import PAPER_REPLAY_RATIO  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["sample.k=3", "data.toy.n_train=24", "eval.protocol.n=2"]
QUICK_TEST = 20


def toy_benchmark(config: str, limit: int) -> str:
    """The override that evaluates on ``limit`` held-out problems of the config's toy world (its first
    toy benchmark's name, else ``toy``)."""
    from dasd.config import load_config

    cfg = load_config(config)
    name = next((b.name for b in cfg.eval.benchmarks if b.format == "toy"), "toy")
    return f"eval.benchmarks=[{{name: {name}, format: toy, world: {cfg.data.toy.world}, limit: {limit}}}]"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"), help="base run config (default: the demo's)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--prompts", type=int, default=None, help="training prompts per seed (data.toy.n_train; for a prompts file: --set data.limit=N)")
    ap.add_argument("--test", type=int, default=None, help="held-out problems of the config's toy world (eval benchmark limit)")
    ap.add_argument("--same-prompts", action="store_true",
                    help="every seed samples the config's own toy prompts (data.toy.seed as written), not prompts drawn with the seed")
    ap.add_argument("--per-prompt", type=int, default=2, help="training examples per prompt (even; low->high takes half from each T)")
    ap.add_argument("--epochs", type=float, default=None, help="passes over the budget (default: train.epochs of the config)")
    ap.add_argument("--kl-samples", type=int, default=2, help="reference teacher samples per held-out prompt")
    ap.add_argument("--no-mixed", action="store_true", help="skip the mixed-policy arms (and with them the replay arms)")
    ap.add_argument("--no-references", action="store_true", help="do not measure the base student and the teacher")
    ap.add_argument("--naturalness", action="store_true",
                    help="add the global/local naturalness baseline arms (gnat_*, lnat_*; the pool is scored with local naturalness)")
    ap.add_argument("--replay", type=float, nargs="?", const=PAPER_REPLAY_RATIO, default=None, metavar="RATIO",
                    help="add the mixed_replay and mixed_masked_replay arms (prefix unmasked / masked): RATIO "
                         f"off-policy examples per mixed one (default {PAPER_REPLAY_RATIO}: 20K/7.7K)")
    ap.add_argument("--paper-protocol", action="store_true",
                    help="measure every model as the paper does: T=1.0, top_p 1.0, --samples per held-out problem "
                         "(the config's max_tokens stays); wins over --quick and --set")
    ap.add_argument("--samples", type=int, default=None, metavar="N",
                    help=f"samples per held-out problem, eval.protocol.n (default {PAPER_PROTOCOL_SAMPLES} with "
                         "--paper-protocol, else the config's)")
    ap.add_argument("--effect", type=float, default=2.0, metavar="POINTS",
                    help="power table: the accuracy difference to detect (80%% power, alpha 0.05; default 2 points)")
    ap.add_argument("--halfwidth", type=float, default=2.0, metavar="POINTS",
                    help="power table: the wanted half-width of the 95%% interval (default 2 points)")
    ap.add_argument("--power-only", default=None, metavar="JSON",
                    help="only print the power table of an earlier run's ablation.json (to size the next run)")
    ap.add_argument("--quick", action="store_true", help=f"k=3, 24 prompts, {QUICK_TEST} held-out problems, n=2 (a fast, noisy look)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "ablation"), help="run directories (resumable)")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "ablation.md"), help="markdown output (JSON beside it)")
    ap.add_argument("--arms", nargs="+", default=None, choices=ALL_ARMS, metavar="ARM",
                    help="train only these arms (default: all that the other options ask for): " + ", ".join(ALL_ARMS))
    ap.add_argument("--with", dest="earlier", nargs="+", default=[], metavar="JSON",
                    help="pool the per-seed results of earlier runs (their results JSON) into this run's tables: seeds "
                         "and arms not run here come from them; refused unless they measured the same way with the "
                         "same models")
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    a = ap.parse_args(argv)
    if a.power_only:
        from dasd.errors import DasdError

        try:
            return power_only(Path(a.power_only), a.effect, a.halfwidth)
        except DasdError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    overrides = list(QUICK if a.quick else [])
    if a.prompts is not None:
        overrides.append(f"data.toy.n_train={a.prompts}")
    if a.test is not None or a.quick:
        overrides.append(toy_benchmark(a.config, a.test if a.test is not None else QUICK_TEST))
    overrides += a.overrides
    plan = AblationPlan(config=a.config, seeds=a.seeds, out=a.out, overrides=overrides, per_prompt=a.per_prompt,
                        epochs=a.epochs, kl_samples=a.kl_samples, mixed=not a.no_mixed, references=not a.no_references,
                        naturalness=a.naturalness, replay=a.replay, paper_protocol=a.paper_protocol, samples=a.samples,
                        power_effect=a.effect, power_halfwidth=a.halfwidth, arms=a.arms, same_prompts=a.same_prompts, earlier=a.earlier)
    from dasd.errors import DasdError

    try:
        report = run_ablation(plan)
    except DasdError as e:  # one line, not a traceback (e.g. an earlier result that cannot be pooled)
        print(f"error: {e}", file=sys.stderr)
        return 2
    from dasd.jsonl import atomic_write_json, atomic_open

    md = Path(a.results)
    md.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(md) as fh:
        fh.write(f"# Ablation: the paper's comparisons with {relative_path(a.config)}\n\nMethod: docs/ablation.md. Command: `python benchmarks/ablation.py "
                 + " ".join(_relative_arg(x) for x in (argv if argv is not None else sys.argv[1:])) + "`\n\n" + report["markdown"])
    atomic_write_json(md.with_suffix(".json"), _jsonable(report))
    print(report["markdown"])
    print(f"written: {md} and {md.with_suffix('.json')}")
    return 0


def power_only(path: Path, effect: float, halfwidth: float) -> int:
    """Print the power table of the per-seed results in ``path`` (an ``ablation.json``)."""
    data = load_results(path)
    per_seed = data["per_seed"]
    info = data.get("info") or {}
    print(f"Pilot {path}: seeds {info.get('seeds', list(per_seed))}, protocol {info.get('protocol', '?')}, "
          f"eval {info.get('eval protocol', '?')}, {info.get('held-out problems', '?')} held-out problems\n")
    print(power_markdown(power_table(per_seed, effect, halfwidth)), end="")
    return 0


def _relative_arg(arg: str) -> str:
    """A command-line argument with a path inside the repository written relative to it."""
    key, eq, value = arg.rpartition("=") if "=" in arg and not arg.startswith("-") else ("", "", arg)
    if value.startswith("/"):
        value = relative_path(value)
    return key + eq + value


def _jsonable(x):
    """NaN (no interval with one seed) as null, tuples as lists, int keys as strings."""
    import math

    if isinstance(x, float):
        return None if math.isnan(x) else x
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


if __name__ == "__main__":
    sys.exit(main())
