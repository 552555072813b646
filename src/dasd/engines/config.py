"""Engine config: which backend, which model, and the knobs that trade memory for speed."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from dasd.configbase import StrictModel


class EngineConfig(StrictModel):
    """How to build an engine (``dasd.engines.make_engine``). Only ``kind="hf"`` runs today."""

    kind: Literal["hf", "openai", "vllm"] = Field(
        "hf", description="Backend: hf (transformers, CPU or GPU), openai (an OpenAI-compatible "
        "server), vllm (offline vllm.LLM). openai and vllm are not implemented yet."
    )
    model: str = Field(
        ..., min_length=1,
        description="Model directory (transformers format, or one holding `gguf_file`) or hub "
        "name. Recorded as the engine's name in every Sample.",
    )
    tokenizer: str | None = Field(
        None, description="Tokenizer directory or hub name; defaults to `model`."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights and activations dtype. auto = float32 on CPU, bfloat16 on "
        "CUDA. Log-probs are always computed in float32 from the final hidden states.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto = cuda if available, else cpu."
    )
    batch_size: int = Field(
        8, ge=1, description="Generation rows (samples, not requests) decoded together."
    )
    score_batch_tokens: int = Field(
        16384, ge=1,
        description="Scoring batch budget in padded tokens (rows x longest row). A single longer "
        "sequence is still scored, alone.",
    )
    logprob_chunk: int = Field(
        512, ge=1,
        description="Positions per chunk when the lm head turns hidden states into log-probs. "
        "Peak extra memory is about 2 x logprob_chunk x vocab x 4 bytes (0.6 GB for a 152K "
        "vocabulary at 512); full [sequence x vocab] logits are never built.",
    )
    max_model_len: int | None = Field(
        None, ge=2,
        description="Longest prompt + generation (or context + continuation) allowed, in tokens. "
        "None = the model config's max_position_embeddings, if it has one. Generation stops at "
        "this length with finish_reason 'length'; longer inputs are an error.",
    )
    gguf_file: str | None = Field(
        None, description="Load this GGUF file (name inside `model`'s directory) with "
        "transformers' gguf_file= (dequantised to `dtype`). Needs the `gguf` package.",
    )
    trust_remote_code: bool = Field(
        False, description="Allow model repos to run their own Python code. Off by default."
    )

    @model_validator(mode="after")
    def _check(self) -> EngineConfig:
        if self.gguf_file is not None and not self.gguf_file.endswith(".gguf"):
            raise ValueError(f"gguf_file must name a .gguf file, got {self.gguf_file!r}")
        return self
