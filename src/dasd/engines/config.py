"""Engine config: which backend, which model, and the knobs that trade memory for speed."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from dasd.configbase import SPEED, StrictModel, marked_settings

TRANSPORT = {"transport": True}
"""``json_schema_extra`` of a transport-only engine setting: it changes how requests travel to the model
(which server, how many at once, how long to wait, how often to retry, over which replicas), not what
comes back. Such settings are left out of a stage's identity (``transport_settings``), so a new server
address or more concurrency redoes nothing."""


class OpenAIOptions(StrictModel):
    """``kind: openai``: how to reach an OpenAI-compatible server (vLLM serve, SGLang, hosted APIs)."""

    base_urls: list[str] = Field(
        default_factory=list,
        description="Server base URLs ending in /v1, e.g. [http://10.0.0.5:8000/v1]. Several are "
        "load-balanced (fewest requests in flight); a retried request may go to another one.",
        json_schema_extra=TRANSPORT,
    )
    api_key_env: str | None = Field(
        None, description="Name of the environment variable holding the API key (sent as a Bearer "
        "token). None = no key. The key itself never goes in a config file.",
        json_schema_extra=TRANSPORT,
    )
    concurrency: int = Field(32, ge=1, description="Requests in flight at once (all URLs together).",
                             json_schema_extra=TRANSPORT)
    timeout_s: float = Field(600.0, gt=0, description="Per-request timeout in seconds; a timeout is retried.",
                             json_schema_extra=TRANSPORT)
    max_retries: int = Field(
        8, ge=0, description="Retries of one request on 429, 5xx, timeouts and dropped connections "
        "(jittered exponential backoff; a Retry-After header is honoured). Other errors fail at once.",
        json_schema_extra=TRANSPORT,
    )
    backoff_s: float = Field(1.0, gt=0, description="Backoff base: retry k waits uniform(0, backoff_s * 2^k).",
                             json_schema_extra=TRANSPORT)
    backoff_max_s: float = Field(60.0, gt=0, description="Longest wait between retries (Retry-After included).",
                                 json_schema_extra=TRANSPORT)
    top_logprobs: int = Field(0, ge=0, le=20, description="Also ask for this many top log-probs per token.")
    logprob_mode: Literal["auto", "raw", "processed"] = Field(
        "auto", description="What the server's log-probs are. auto = what the server says "
        "(dasd's own server says raw), else processed. Say raw for vLLM started with "
        "--logprobs-mode raw_logprobs.",
    )
    token_ids: bool = Field(
        False, description="Ask for token ids (vLLM's return_tokens_as_token_ids) and read token "
        "bytes from the local `tokenizer`, which must then be the server model's.",
    )
    score_api: Literal["prompt_logprobs", "echo"] = Field(
        "prompt_logprobs", description="How score() asks for teacher-forced log-probs: vLLM's "
        "prompt_logprobs extension, or echo=true with max_tokens=0 (legacy OpenAI). Scoring needs "
        "the local `tokenizer` to build token-id prompts.",
    )
    extra_body: dict = Field(
        default_factory=dict, description="Extra fields merged into every request body (e.g. "
        "chat_template_kwargs, reasoning_effort, top_k); not the fields dasd sets itself (model, "
        "messages, prompt, n, seed, temperature, top_p, max_tokens, log-prob and echo fields, stream).",
    )

    @field_validator("extra_body")
    @classmethod
    def _not_dasd_fields(cls, body: dict) -> dict:
        taken = sorted(set(body) & SET_BY_DASD)
        if taken:
            raise ValueError(
                f"{', '.join(taken)}: set by dasd on every request (from the stage's sampling settings, the "
                "sample's own seed and the other openai options); overriding them here would make the records "
                "say other settings than the server used"
            )
        return body


# Request fields the openai engine sets (engines.openai: _body, _score); extra_body may not override them.
SET_BY_DASD = frozenset({
    "model", "messages", "prompt", "n", "seed", "temperature", "top_p", "max_tokens", "logprobs", "top_logprobs",
    "echo", "prompt_logprobs", "add_special_tokens", "return_tokens_as_token_ids", "stream",
})


class VLLMOptions(StrictModel):
    """``kind: vllm``: settings passed to the offline ``vllm.LLM``."""

    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one model copy is split over.")
    data_parallel_size: int = Field(
        1, ge=1, description="Model copies inside vLLM. For many nodes prefer `ray.replicas`.", json_schema_extra=SPEED,
    )
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="Fraction of GPU memory vLLM may use.",
                                          json_schema_extra=SPEED)
    logprobs_mode: Literal["raw_logprobs", "processed_logprobs"] = Field(
        "raw_logprobs", description="raw = untempered log-softmax of the model (what dasd wants); "
        "processed = after temperature/top-p.",
    )
    enforce_eager: bool = Field(False, description="Disable CUDA graphs (less memory, slower).", json_schema_extra=SPEED)
    extra: dict = Field(default_factory=dict, description="Other keyword arguments for vllm.LLM.")


class RayOptions(StrictModel):
    """Fan records out over engine replicas with Ray (``dasd.engines.fanout``)."""

    address: str = Field(
        ..., min_length=1, description="'local' (start a Ray instance in this process), 'auto' (join "
        "the cluster this machine belongs to) or ray://HEAD:10001.",
    )
    replicas: int = Field(2, ge=1, description="Engine replicas (Ray actors), each building its own engine.")
    num_cpus: float = Field(1.0, gt=0, description="CPUs reserved per replica.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs reserved per replica (set to tensor_parallel_size for vllm).")
    chunk: int = Field(16, ge=1, description="Requests handed to a replica at a time.")


class EngineConfig(StrictModel):
    """How to build an engine (``dasd.engines.make_engine``): hf, openai or vllm."""

    kind: Literal["hf", "openai", "vllm"] = Field(
        "hf", description="Backend: hf (transformers, CPU or GPU), openai (an OpenAI-compatible "
        "server; see `openai`), vllm (offline vllm.LLM, an optional extra; see `vllm`)."
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
        8, ge=1, description="Generation rows (samples, not requests) decoded together.", json_schema_extra=SPEED,
    )
    score_batch_tokens: int = Field(
        16384, ge=1,
        description="Scoring batch budget in padded tokens (rows x longest row). A single longer "
        "sequence is still scored, alone.", json_schema_extra=SPEED,
    )
    logprob_chunk: int = Field(
        512, ge=1,
        description="Positions per chunk when the lm head turns hidden states into log-probs. "
        "Peak extra memory is about logprob_chunk x vocab x 4 bytes (0.3 GiB for a 152K "
        "vocabulary at 512); full [sequence x vocab] logits are never built.", json_schema_extra=SPEED,
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
    openai: OpenAIOptions = Field(default_factory=OpenAIOptions, description="kind: openai settings.")
    vllm: VLLMOptions = Field(default_factory=VLLMOptions, description="kind: vllm settings.")
    ray: RayOptions | None = Field(
        None, description="Fan sample/score/eval records out over engine replicas with Ray; None = one process.",
        json_schema_extra=TRANSPORT,
    )

    # The config section these settings were given in (``teacher``, ``student``: ``dasd.config.RunConfig``
    # names its own; kept by ``model_copy``), so that an engine's errors name the key a user set.
    _section: str = PrivateAttr("engine")
    # What names ``model`` in errors when no config key does (a training stage's final model, loaded
    # with the student's settings: ``student.model`` names another model); None: ``<section>.model``.
    _model_named: str | None = PrivateAttr(None)

    def named(self, section: str) -> EngineConfig:
        """These settings, as the config section ``section`` (e.g. ``student``) gives them; returns self."""
        self._section = section
        return self

    def model_named(self, what: str) -> EngineConfig:
        """These settings, loading a ``model`` that ``what`` names in errors (e.g. ``training stage
        'distill-low'``) instead of the section's ``model`` key; returns self."""
        self._model_named = what
        return self

    @property
    def section(self) -> str:
        """The config section these settings were given in (``engine`` when none said)."""
        return self._section

    def key(self, name: str) -> str:
        """The dotted config key of setting ``name``: ``student.tokenizer`` (``engine.tokenizer`` when no
        section gave these settings); for ``model``, what ``model_named`` said names it, if it did."""
        if name == "model" and self._model_named:
            return self._model_named
        return f"{self._section}.{name}"

    def tokenizer_key(self) -> tuple[str, str]:
        """``(key, value)`` of the setting that names the tokenizer: ``tokenizer``, else ``model``."""
        return (self.key("tokenizer"), self.tokenizer) if self.tokenizer else (self.key("model"), self.model)

    @model_validator(mode="after")
    def _check(self) -> EngineConfig:
        if self.model.startswith("toy:"):
            from dasd.toy import TOY_MODELS

            if self.model not in TOY_MODELS:
                raise ValueError(f"model {self.model!r}: the toy models are {', '.join(map(repr, TOY_MODELS))}")
        if self.gguf_file is not None and not self.gguf_file.endswith(".gguf"):
            raise ValueError(f"gguf_file must name a .gguf file, got {self.gguf_file!r}")
        if self.kind == "openai" and not self.openai.base_urls:
            raise ValueError("kind openai needs openai.base_urls (e.g. [http://localhost:8000/v1])")
        return self


def transport_settings(model: type[StrictModel] = EngineConfig) -> tuple[str, ...]:
    """Dotted keys of ``model``'s transport-only settings (marked ``TRANSPORT``), down its sections:
    ``("openai.base_urls", ..., "ray")`` for ``EngineConfig``."""
    return marked_settings(model, "transport")


def speed_settings(model: type[StrictModel] = EngineConfig) -> tuple[str, ...]:
    """Dotted keys of ``model``'s speed-only settings (marked ``configbase.SPEED``): ``("batch_size",
    "score_batch_tokens", "logprob_chunk", "vllm.data_parallel_size", ...)`` for ``EngineConfig``."""
    return marked_settings(model, "speed")
