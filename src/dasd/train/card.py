"""The model card (``final/README.md``) of a trained stage, and the opt-in upload to the Hugging Face Hub.

The card is written by the main process beside each final model when its stage finishes, and
rewritten with the evaluation table when ``dasd eval`` has evaluated that stage's model
(``refresh_card``). It says what the model is: the base model, the training stages that led to it
(each with its data, the temperature of its teacher samples, its data counts and recipe), and, when
evaluation results exist, avg@k / pass@k / maj@k per benchmark, the share of samples cut off at the
token limit, and the protocol they were sampled under. Everything comes from the stages' ``done.json`` files (followed through each stage's ``init``)
and the evaluation results, so the card can be rebuilt at any time.

``push`` uploads a final model directory (weights, tokenizer, card) with ``huggingface_hub``'s
``HfApi.create_repo`` + ``HfApi.upload_folder``.
"""

from __future__ import annotations

import json
from pathlib import Path

from dasd.errors import DasdError
from dasd.jsonl import atomic_open
from dasd.log import logger

CARD = "README.md"
_log = logger("train")


def _done(stage_dir: Path) -> dict | None:
    try:
        return json.loads((stage_dir / "done.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _stage_dir_of(model: str, near: Path) -> Path | None:
    """The stage directory whose ``final/`` is ``model`` (absolute, or relative to the stage or output dir)."""
    p = Path(model)
    for cand in ([p] if p.is_absolute() else [near / p, near.parent / p, near.parent.parent / p, Path.cwd() / p]):
        if cand.name == "final" and (cand.parent / "done.json").is_file():
            return cand.parent
    return None


def lineage(stage_dir: Path, result: dict) -> list[dict]:
    """The results of the stages that led to ``result`` (first stage first), following each ``init``."""
    chain, seen = [result], {Path(stage_dir).resolve()}
    here = Path(stage_dir)
    while True:
        prev = _stage_dir_of(str(chain[0].get("init", "")), here)
        if prev is None or prev.resolve() in seen:
            return chain
        done = _done(prev)
        if done is None:
            return chain
        seen.add(prev.resolve())
        chain.insert(0, done)
        here = prev


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.3g}"
    if isinstance(x, list):
        return ", ".join(_fmt(v) for v in x)
    return str(x)


def _hub_id(name: str) -> str | None:
    """``name`` when it looks like a Hub id (``owner/name``, not a local path), else None."""
    if name.count("/") == 1 and not Path(name).exists() and not name.startswith((".", "/", "~")):
        return name
    return None


def evaluation_table(results: list[dict]) -> list[str]:
    """Markdown lines: the scores of ``results`` (EvalResult dicts) per benchmark, then their protocols."""
    from dasd.grading.metrics import summarize

    rows = [r for r in summarize(results) if r["kind"] in ("benchmark", "all")]
    lines = ["| benchmark | problems | k | avg@k | 95% CI | pass@k | maj@k | no answer | cut off |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["avg@k_ci"]
        cut = "-" if r.get("cut_off") is None else f"{100 * r['cut_off'] / r['samples']:.1f}"
        lines.append(f"| {r['name']} | {r['problems']} | {r['k']} | {100 * r['avg@k']:.1f} | [{100 * lo:.1f}, {100 * hi:.1f}] "
                     f"| {100 * r['pass@k']:.1f} | {100 * r['maj@k']:.1f} | {100 * r['no_answer']:.1f} | {cut} |")
    protos: dict[str, dict] = {}
    for res in results:
        protos.setdefault(res.get("benchmark") or res.get("domain") or "unknown", res.get("protocol") or {})
    lines += ["", "Scores in percent; cut off = samples that stopped at the token limit (max tokens below, or the "
              "model's context): their answers were never written and are graded wrong, so the scores understate the "
              "model by up to that share (- where the results do not say how they ended).",
              "", "Protocol (how the samples were drawn; avg@k = mean fraction correct over the first k samples "
              "per problem, CI = percentile bootstrap over problems):", "",
              "| benchmark | protocol | temperature | top_p | max tokens | samples (n) | seed | system prompt |",
              "|---|---|---|---|---|---|---|---|"]
    for bench, p in sorted(protos.items()):
        sp = p.get("system_prompt")
        lines.append(f"| {bench} | {p.get('name', '?')} | {p.get('temperature', '?')} | {p.get('top_p', '?')} | "
                     f"{p.get('max_tokens', '?')} | {p.get('n', '?')} | {p.get('seed', '?')} | "
                     f"{'problem' if sp is None else repr(sp)[:60]} |")
    return lines


def render(chain: list[dict], results: list[dict] | None = None) -> str:
    """The card's Markdown (YAML front matter for the Hub first)."""
    last, first = chain[-1], chain[0]
    base = str(last.get("base_model") or first.get("init", "?"))
    front = ["---", "library_name: transformers", "tags:", "- dasd", "- distillation", "- long-cot"]
    if _hub_id(base):
        front.append(f"base_model: {base}")
    front.append("---")
    out = front + ["", f"# {last['name']}: a DASD-distilled student", "",
                   f"Base model: `{base}`. Trained with dasd (Distribution-Aligned Sequence Distillation): supervised "
                   f"fine-tuning on teacher responses in {len(chain)} stage(s), each from the previous stage's model.", "",
                   "## Training stages", "",
                   "| stage | data | teacher samples | examples | sequences | tokens | loss tokens | dropped (over context) "
                   "| steps | final loss |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in chain:
        c = r.get("data_counts") or {"examples": r.get("examples"), "sequences": r.get("sequences"), "tokens": r.get("tokens")}
        out.append(f"| {r['name']} | `{r.get('data', '?')}` | {r.get('data_note') or '-'} | {c.get('examples', '?')} | "
                   f"{c.get('sequences', '?')} | {c.get('tokens', '?')} | {c.get('loss_tokens', '?')} | "
                   f"{c.get('dropped_over_context', (r.get('dropped') or {}).get('over_context', '?'))} | {r.get('steps', '?')} | "
                   f"{_fmt(r.get('final_loss'))} |")
    out += ["", "## Recipe", "", "| stage | " + " | ".join(_RECIPE) + " |", "|---" * (len(_RECIPE) + 1) + "|"]
    for r in chain:
        rec = r.get("recipe") or {}
        out.append(f"| {r['name']} | " + " | ".join(_fmt(rec.get(k, "?")) for k in _RECIPE) + " |")
    out += ["", "Global batch and context count packed sequences of at most `context` tokens; the loss is the mean "
            "over the loss-carrying (assistant) tokens of a global batch; AdamW, linear warmup, then the schedule "
            "named (cosine to min_lr)."]
    out += ["", "## Evaluation", ""]
    out += evaluation_table(results) if results else ["Not evaluated yet (`dasd eval` rewrites this card with its results)."]
    return "\n".join(out) + "\n"


_RECIPE = ("lr", "min_lr", "warmup_ratio", "schedule", "epochs", "max_steps", "steps", "global_batch", "context",
           "packing", "mask_prefix", "weight_decay", "betas", "clip", "bf16", "seed", "processes")


def write_card(stage_dir: Path, result: dict, results: list[dict] | None = None) -> Path:
    """Write ``<stage_dir>/final/README.md`` for the stage ``result`` (and evaluation ``results``); its path."""
    path = Path(stage_dir) / "final" / CARD
    text = render(lineage(Path(stage_dir), result), results)
    with atomic_open(path) as fh:
        fh.write(text)
    return path


def refresh_card(stage_dir: Path, results: list[dict]) -> Path | None:
    """Rewrite a finished stage's card with its evaluation ``results``; None when the stage has no ``done.json``."""
    done = _done(Path(stage_dir))
    if done is None or not (Path(stage_dir) / "final").is_dir():
        return None
    return write_card(Path(stage_dir), done, results)


def push(final_dir: Path, push_cfg, stage: str) -> str:
    """Upload ``final_dir`` (weights, tokenizer, card) to ``push_cfg.repo_for(stage)``; the repo id.
    The repository is created (``private`` as configured) when it does not exist."""
    from huggingface_hub import HfApi

    repo = push_cfg.repo_for(stage)
    api = HfApi()
    try:
        api.create_repo(repo_id=repo, private=push_cfg.private, repo_type="model", exist_ok=True)
        api.upload_folder(repo_id=repo, folder_path=str(final_dir), repo_type="model",
                          commit_message=f"dasd: stage {stage} final model and model card")
    except Exception as e:  # noqa: BLE001 - any Hub failure: one clear line, the trained model stays on disk
        raise DasdError(f"push_to_hub: uploading {final_dir} to {repo} failed ({type(e).__name__}: {e}); the model is "
                        "kept on disk, re-run to try again") from e
    _log.info(f"stage {stage}: pushed {final_dir} to the Hub as {repo}")
    return repo
