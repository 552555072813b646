"""Fixtures of the training tests: small chat pools in the training-example format."""

from __future__ import annotations

import pytest


def make_pool(n: int = 12, seed: int = 0) -> list[dict]:
    """``n`` arithmetic chat examples of varying length; every third one is a mixed-policy example."""
    out = []
    for i in range(n):
        a, b = i + 2, (i * 7) % 11 + 1
        steps = " ".join(f"{a} + {k} = {a + k}." for k in range(1 + (i + seed) % 4))
        out.append({"messages": [{"role": "system", "content": "You are a helpful assistant."},
                                 {"role": "user", "content": f"Compute {a} + {b}."},
                                 {"role": "assistant", "content": f"<think>{steps}</think> So \\boxed{{{a + b}}}."}],
                    "prefix_chars": 7 if i % 3 == 0 else 0})
    return out


@pytest.fixture
def pool_factory():
    return make_pool
