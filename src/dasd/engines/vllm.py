"""The ``vllm`` engine: offline ``vllm.LLM`` (tensor / data parallel) behind the Engine protocol.

    # vLLM pins its own torch (0.33.0: torch 2.14.0), so no pinned dasd set includes it: install it by
    # hand into dasd's environment on a GPU machine at your own risk, or (recommended) run `vllm serve`
    # from requirements-vllm.txt and use kind: openai (docs/scale-out.md).
    engine: {kind: vllm, model: /models/gpt-oss-120b, vllm: {tensor_parallel_size: 4}}

What it guarantees, the same way as the hf and openai engines:
- **Raw log-probs** with ``vllm.logprobs_mode: raw_logprobs`` (the default): vLLM returns the
  log-softmax of the untempered logits, ``logprob_mode="raw"``. With ``processed_logprobs`` the
  samples say ``"processed"``.
- **Per-sample seeds**: sample ``i`` of a request is its own vLLM request with
  ``seed=sample_seed(seed, i)`` (the value the openai engine sends), so a resumed job, an
  ``openai`` run against ``vllm serve`` and this engine draw the same streams on the same build.
- **Scoring** uses ``prompt_logprobs=0`` on the token-id prompt context + continuation, built
  exactly as the hf engine builds it (chat template with generation prompt; continuation encoded
  on its own).
- Text is what the token ids add to the context (their bytes, special tokens kept), with exact
  offsets (``engines.offsets``), exactly as the hf engine does. The token that ended the turn
  (vLLM lists it in ``token_ids`` and its log-probs, not in its text) is left out, as the hf
  engine never keeps it: a stopped sample's tokens, log-probs and text are the hf engine's.

Knobs: EngineConfig.model / tokenizer / dtype / max_model_len / trust_remote_code, and ``vllm``:
tensor_parallel_size, data_parallel_size, gpu_memory_utilization, logprobs_mode, enforce_eager,
extra (any other ``vllm.LLM`` keyword). Pitfall: vllm is imported lazily; a missing install is a
DasdError naming the extra to install.
"""

from __future__ import annotations

from dasd.engines.base import (
    GenerateRequest,
    Generation,
    ScoreRequest,
    ScoreResult,
    build_context_ids,
    encode_text,
)
from dasd.engines.config import EngineConfig
from dasd.engines.offsets import generation_spans, token_bytes, token_offsets
from dasd.engines.openai import sample_seed
from dasd.errors import DasdError

MISSING = (
    "{key} 'vllm' needs vLLM in dasd's environment, which no pinned set provides (vLLM 0.33.0 pins "
    "torch 2.14.0): use kind: openai against `vllm serve` (requirements-vllm.txt, docs/scale-out.md), "
    "or kind: hf without a GPU"
)


def import_vllm(key: str = "engine.kind"):
    """``vllm`` itself, or a DasdError saying how to install it, naming the config ``key`` that asked
    for it (``teacher.kind``: ``EngineConfig.key``)."""
    try:
        import vllm
    except ImportError as err:
        raise DasdError(f"{MISSING.format(key=key)} ({err})") from err
    return vllm


class VLLMEngine:
    """A ``vllm.LLM`` behind the Engine protocol (see the module docstring)."""

    def __init__(self, cfg: EngineConfig):
        vllm = import_vllm(cfg.key("kind"))
        self.cfg = cfg
        self.name = cfg.model
        v = cfg.vllm
        kwargs = dict(
            model=cfg.model, tokenizer=cfg.tokenizer or cfg.model, dtype=cfg.dtype,
            tensor_parallel_size=v.tensor_parallel_size, gpu_memory_utilization=v.gpu_memory_utilization,
            trust_remote_code=cfg.trust_remote_code, enforce_eager=v.enforce_eager,
            logprobs_mode=v.logprobs_mode,
        )
        if v.data_parallel_size > 1:
            kwargs["data_parallel_size"] = v.data_parallel_size
        if cfg.max_model_len:
            kwargs["max_model_len"] = cfg.max_model_len
        if cfg.gguf_file:
            kwargs["model"] = f"{cfg.model.rstrip('/')}/{cfg.gguf_file}"
        kwargs.update(v.extra)
        try:
            self.llm = vllm.LLM(**kwargs)
        except Exception as err:  # vLLM raises many kinds at load
            raise DasdError(f"{cfg.key('model')}: vllm cannot load {cfg.model!r}: {type(err).__name__}: {err}")
        self.tokenizer = self.llm.get_tokenizer()
        self.mode = "raw" if v.logprobs_mode == "raw_logprobs" else "processed"
        self._SamplingParams = vllm.SamplingParams

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def encode(self, text: str) -> list[int]:
        return encode_text(self.tokenizer, text)

    def context_ids(self, messages, prefix: str | None, rid: str) -> list[int]:
        """Prompt ids: chat template with the generation prompt, or the raw prefix as given."""
        return build_context_ids(self.tokenizer, self.name, messages, prefix, rid)

    def generate(self, requests: list[GenerateRequest]) -> list[list[Generation]]:
        """Per request, its ``n`` samples in index order; one vLLM request per sample."""
        prompts, params, slots = [], [], []
        ctx = [self.context_ids(r.messages, r.prefix, r.id) for r in requests]
        for k, req in enumerate(requests):
            for i in range(req.n):
                prompts.append({"prompt_token_ids": ctx[k]})
                params.append(self._SamplingParams(
                    n=1, temperature=req.temperature, top_p=req.top_p, max_tokens=req.max_tokens,
                    seed=sample_seed(req.seed, i), logprobs=0, skip_special_tokens=False,
                ))
                slots.append((k, i))
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        result: list[list[Generation]] = [[] for _ in requests]
        for (k, i), out in zip(slots, outs):
            c = out.outputs[0]
            ids = list(c.token_ids)
            lps = [float(step[t].logprob) for step, t in zip(c.logprobs or [], ids)]
            if len(lps) != len(ids):
                raise DasdError(f"request {requests[k].id!r}: vllm returned {len(lps)} log-probs for {len(ids)} tokens")
            if c.finish_reason == "stop" and ids and not isinstance(getattr(c, "stop_reason", None), str):
                # vLLM lists the token that ended the turn (eos, or a stop token id: stop_reason), and
                # its log-prob, but leaves it out of its text: not a text token, as in the hf engine
                ids, lps = ids[:-1], lps[:-1]
            # what the tokens add to the context, as vLLM's own detokenizer and the hf engine give it (a
            # sentencepiece first token '▁The' is " The"; decoding the ids on their own strips the space)
            text, offsets = generation_spans(token_bytes(self.tokenizer, ids))
            result[k].append(Generation(
                request_id=requests[k].id, index=i, text=text,
                tokens=self.tokenizer.convert_ids_to_tokens(ids), token_ids=ids, offsets=offsets,
                logprobs=lps, finish_reason="length" if c.finish_reason == "length" else "stop",
                logprob_mode=self.mode, prompt_tokens=len(ctx[k]),
            ))
        return result

    def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        """Per request, teacher-forced log-probs of its continuation via ``prompt_logprobs``."""
        items = []
        for req in requests:
            ctx = self.context_ids(req.messages, req.prefix, req.id)
            cont = list(req.continuation_ids) if req.continuation_ids is not None else self.encode(req.continuation)
            items.append((ctx, cont))
        todo = [k for k, (_, cont) in enumerate(items) if cont]
        params = self._SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        outs = self.llm.generate(
            [{"prompt_token_ids": items[k][0] + items[k][1]} for k in todo], params, use_tqdm=False
        ) if todo else []
        lps: dict[int, list[float]] = {}
        for k, out in zip(todo, outs):
            ctx, cont = items[k]
            plp = out.prompt_logprobs or []
            lps[k] = [float(plp[len(ctx) + j][t].logprob) for j, t in enumerate(cont)]
        return [
            ScoreResult(
                request_id=req.id, tokens=self.tokenizer.convert_ids_to_tokens(cont), token_ids=cont,
                offsets=req.offsets if req.offsets is not None else token_offsets(self.tokenizer, cont, req.continuation),
                logprobs=lps.get(k, []),
                logprob_mode=self.mode, extra={"context_tokens": len(ctx)},
            )
            for k, (req, (ctx, cont)) in enumerate(zip(requests, items))
        ]
