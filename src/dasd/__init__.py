"""dasd: Distribution-Aligned Sequence Distillation.

Distil long chain-of-thought reasoning from a teacher model into a small student with
temperature-scheduled learning, divergence-aware sampling and mixed-policy distillation.
"""

__version__ = "0.1.0"
