"""Optimiser and learning-rate schedule of the recipe.

- AdamW with decoupled weight decay on matrices only (biases, norm weights and other 1-D
  parameters are not decayed, as in the HF Trainer that LLaMA-Factory uses).
- Schedule: linear warmup over ``ceil(warmup_ratio x total)`` steps, reaching ``lr`` at the last
  warmup step (step ``i`` of warmup uses ``lr x (i+1)/warmup``, so the first step is never wasted
  at lr 0), then cosine decay from ``lr`` to ``min_lr`` at the last step.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def lr_at(step: int, total: int, lr: float, min_lr: float, warmup_ratio: float) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of ``total``."""
    warm = math.ceil(warmup_ratio * total)
    if step < warm:
        return lr * (step + 1) / warm
    span = max(total - warm - 1, 1)
    progress = min((step - warm) / span, 1.0)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, lr: float, betas, eps: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over ``model``'s trainable parameters, weight decay on >= 2-D tensors only."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=tuple(betas), eps=eps)


def make_scheduler(optimizer, total: int, lr: float, min_lr: float, warmup_ratio: float) -> LambdaLR:
    """A ``LambdaLR`` following ``lr_at`` (its state dict is saved in checkpoints)."""
    return LambdaLR(optimizer, lambda s: lr_at(s, total, lr, min_lr, warmup_ratio) / lr)
