"""Measuring a toy model: one-sample accuracy on toy problems with transformers ``generate``, and the
share of each solution style in its responses. Shared by the build (the manifest's numbers) and the
checks."""

from __future__ import annotations

import os

import torch

from dasd.toy import world
from dasd.toy.encode import messages


@torch.no_grad()
def evaluate_accuracy(
    model_dir,
    problems: list[world.ToyProblem],
    temperature: float = 0.6,
    max_new_tokens: int = 512,
    seed: int = 0,
    batch_size: int = 32,
    tokenizer=None,
    return_texts: bool = False,
):
    """Fraction of ``problems`` solved by one sample each at ``temperature`` (top-p 1), via ``generate``.

    ``model_dir`` is a directory in transformers format, or a loaded model passed with ``tokenizer``.
    Sampling is seeded with ``seed`` (temperature 0 means greedy). With ``return_texts`` it returns
    ``(accuracy, texts)``. Pitfall: the result depends on ``batch_size`` too (padding changes the
    float sums), so compare runs with equal settings.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(model_dir, (str, os.PathLike)):
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    else:
        model = model_dir
        if tokenizer is None:
            raise ValueError("pass tokenizer= with a loaded model")
    model.eval()
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    torch.manual_seed(seed)
    texts: list[str] = []
    try:
        for i in range(0, len(problems), batch_size):
            chunk = problems[i : i + batch_size]
            prompts = [
                tokenizer.apply_chat_template(messages(p), tokenize=False, add_generation_prompt=True) for p in chunk
            ]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            kw = dict(do_sample=True, temperature=temperature, top_p=1.0, top_k=0) if temperature > 0 else dict(do_sample=False)
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                **kw,
            )
            texts += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = old_side
    acc = sum(world.verify(t, str(p.answer)) for t, p in zip(texts, problems)) / max(1, len(problems))
    return (acc, texts) if return_texts else acc


def style_shares(texts: list[str]) -> dict[str, float]:
    """Fraction of ``texts`` in each style (``None`` = unrecognised format), for reports."""
    counts = {s: 0 for s in (*world.STYLES, "none")}
    for t in texts:
        counts[world.detect_style(t) or "none"] += 1
    return {s: round(c / max(1, len(texts)), 4) for s, c in counts.items()}
