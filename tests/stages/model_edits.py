"""Test helper: replace a model directory's weights by slightly different ones (as retraining would)."""

from __future__ import annotations

from pathlib import Path


def replace_weights(model_dir: Path, delta: float = 1e-3) -> None:
    from safetensors.torch import load_file, save_file

    path = Path(model_dir) / "model.safetensors"
    tensors = load_file(str(path))
    save_file({k: (v + delta if v.is_floating_point() else v) for k, v in tensors.items()}, str(path), metadata={"format": "pt"})
