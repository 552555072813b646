"""Next-token cross-entropy without full logits: a model wrapper that returns (loss sum, token count).

``LossModel(lm)`` runs the decoder for hidden states, keeps only the positions that carry a label,
and computes ``lm_head`` + cross-entropy over chunks of ``chunk`` positions, each chunk under
``torch.utils.checkpoint`` so that backward recomputes its logits instead of holding them all: peak
logits memory is ``chunk x vocab`` whatever the sequence length. On CUDA with ``liger-kernel``
installed, Liger's fused linear+CE kernel does the same in one kernel.

It returns the **sum** of token losses; the trainer divides by the number of loss tokens of the
whole global batch (per-token mean over the global batch). Logits are computed in float32.
Pitfall: models that post-process logits (soft-capping, logit scaling, e.g. Gemma) are not handled.
Wrapping the full causal LM in one module keeps DDP/FSDP/DeepSpeed hooks working (the forward goes
through the wrapped root).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from dasd.train.encode import IGNORE


def _ce_chunk(head: nn.Module, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = head(h).float()
    return F.cross_entropy(logits, y, reduction="sum")


def liger_available() -> bool:
    try:
        import liger_kernel.transformers  # noqa: F401
    except ImportError:
        return False
    return True


class LossModel(nn.Module):
    """Wrap a transformers causal LM; ``forward(input_ids, position_ids, labels) -> (loss_sum, n_tokens)``."""

    def __init__(self, lm: nn.Module, chunk: int = 4096, use_liger: bool = False):
        super().__init__()
        self.lm = lm
        self.chunk = chunk
        self.use_liger = use_liger
        self._liger = None
        if use_liger:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

            self._liger = LigerFusedLinearCrossEntropyLoss(reduction="sum", ignore_index=IGNORE)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, labels: torch.Tensor):
        out = self.lm.get_decoder()(input_ids=input_ids, position_ids=position_ids, attention_mask=None, use_cache=False)
        hidden = out.last_hidden_state
        y = labels.reshape(-1)
        keep = y != IGNORE
        h = hidden.reshape(-1, hidden.shape[-1])[keep]
        y = y[keep]
        head = self.lm.get_output_embeddings()
        n = torch.tensor(int(y.numel()), device=h.device)
        if self._liger is not None and h.is_cuda and y.numel():
            return self._liger(head.weight, h, y) + 0.0 * hidden.sum(), n
        # 0 x (head on one position): every parameter joins the graph even in a loss-free micro-batch (DDP needs that)
        total = 0.0 * head(hidden[:1, :1]).float().sum()
        for i in range(0, y.numel(), self.chunk):
            hi, yi = h[i : i + self.chunk], y[i : i + self.chunk]
            if torch.is_grad_enabled():
                total = total + checkpoint(_ce_chunk, head, hi, yi, use_reentrant=False)
            else:
                total = total + _ce_chunk(head, hi, yi)
        return total, n
