"""Toy examples as token ids: the chat-templated prompt of a toy problem and a response, with labels
on the response only. Shared by the build (training the models) and the checks (fine-tuning the
student)."""

from __future__ import annotations

import torch

from dasd.toy import world
from dasd.toy.tokenizer import IM_END, IM_START


def messages(problem: world.ToyProblem) -> list[dict[str, str]]:
    return [{"role": "system", "content": world.SYSTEM_PROMPT}, {"role": "user", "content": problem.question}]


def render_prompts(tokenizer, problems: list[world.ToyProblem]) -> list[str]:
    """Chat-templated prompts (with the generation prompt). The ChatML text is rendered directly
    (jinja is slow for 10^4 prompts) and checked against ``apply_chat_template`` on the first one."""
    out = [
        f"{IM_START}system\n{world.SYSTEM_PROMPT}{IM_END}\n{IM_START}user\n{p.question}{IM_END}\n{IM_START}assistant\n"
        for p in problems
    ]
    if problems:
        ref = tokenizer.apply_chat_template(messages(problems[0]), tokenize=False, add_generation_prompt=True)
        if ref != out[0]:
            raise ValueError(f"the tokenizer's chat template renders {ref!r}, expected {out[0]!r}")
    return out


def encode_examples(tokenizer, corpus) -> list[tuple[list[int], list[int]]]:
    """Token ids of chat-templated prompt + response + end of turn, and labels (-100 on the prompt).

    Prompt and response are tokenized separately and concatenated, exactly as at generation time
    (the prompt ends with "assistant\n", a pre-tokenizer boundary, so nothing merges across it).
    """
    prompts = render_prompts(tokenizer, [p for p, _ in corpus])
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer([r + tokenizer.eos_token for _, r in corpus], add_special_tokens=False)["input_ids"]
    return [(a + b, [-100] * len(a) + b) for a, b in zip(p_ids, r_ids)]


def pad_batch(batch: list[tuple[list[int], list[int]]], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids, labels, attention_mask)`` of encoded examples, right-padded to the longest with
    ``pad`` (labels -100 and mask 0 on the padding)."""
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (x, y) in enumerate(batch):
        ids[row, : len(x)] = torch.tensor(x)
        labels[row, : len(y)] = torch.tensor(y)
        mask[row, : len(x)] = 1
    return ids, labels, mask
