"""The ``hf`` engine: sampling and teacher-forced scoring with a transformers causal LM.

    from dasd.engines import EngineConfig, make_engine
    engine = make_engine(EngineConfig(model="path/to/model"))
    gens = engine.generate([GenerateRequest(id="p1", messages=[...], n=4, temperature=0.6)])
    scores = engine.score([ScoreRequest(id="p1", messages=[...], continuation=gens[0][0].text)])

What it guarantees:
- **Raw log-probs.** Every returned log-prob is ``log_softmax`` (float32) of the model's raw
  logits at that position, whatever temperature and top-p were used to sample
  (``logprob_mode="raw"``). Generate and score agree on the same tokens (tested to 1e-4).
- **No full logits.** The base model returns final hidden states; the lm head turns them into
  log-probs ``logprob_chunk`` positions at a time, so a [sequence x vocabulary] tensor never exists.
  At load, a short forward pass checks this path against the model's own ``logits``; a model that
  post-processes logits in a way this engine does not know is refused rather than mis-scored.
- **Batch-invariant seeds.** Sample ``i`` of a request with seed ``s`` draws its randomness from its
  own CPU ``torch.Generator`` seeded from ``(s, i)``: one uniform number per step, turned into a
  token by inverse CDF over the tempered probabilities (in vocabulary order, or sorted high to low
  and cut to the top-p nucleus when top_p < 1). So batching, batch size and request order do not change what is sampled (up to
  float rounding differences between batch shapes, which can flip a token only when the uniform
  lands within ~1e-6 of a boundary). Two requests with the same seed share random streams: give
  each prompt its own seed.
- **Text as vLLM returns it.** A generation's text is what its tokens add to the context (their
  bytes, decoded), so a sentencepiece model's first token '▁The' is " The" (decoding the ids on their
  own strips that space), and a generation cut inside a character ends before it, as vLLM holds
  back a trailing U+FFFD; offsets are exact on that text (``engines.offsets.generation_spans``).

Pitfalls: the stop set is the tokenizer's eos plus the model's ``generation_config.eos_token_id``
(so a chat model stops at its end-of-turn token only if one of those names it); a raw ``prefix``
is encoded without special tokens (template it first); an empty context is given the BOS token
if the tokenizer has one, else it is an error.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import torch

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
from dasd.errors import ContextLengthError, DasdError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def row_seed(seed: int, index: int) -> int:
    """The generator seed of sample ``index`` of a request seeded ``seed`` (stable across runs)."""
    digest = hashlib.sha256(f"dasd/{seed}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@dataclass
class _Row:
    """One sample being generated."""

    req: int
    index: int
    prompt: list[int]
    max_new: int
    temperature: float
    top_p: float
    generator: torch.Generator
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish: str = ""


class HFEngine:
    """A transformers ``AutoModelForCausalLM`` + ``AutoTokenizer`` behind the Engine protocol.

    Knobs (EngineConfig): device, dtype, batch_size (generation rows per batch),
    score_batch_tokens (padded tokens per scoring batch), logprob_chunk (positions per lm-head
    chunk), max_model_len, gguf_file, trust_remote_code.
    """

    def __init__(self, cfg: EngineConfig):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg
        self.name = cfg.model
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
        )
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise DasdError(f"{cfg.key('device')} is 'cuda' but no CUDA device is available")
        if cfg.dtype == "auto":
            self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        else:
            self.dtype = _DTYPES[cfg.dtype]
        _check_source(cfg.model, cfg.key("model"), cfg.gguf_file, cfg.key("gguf_file"), holds="model")
        tok_key, tok_source = cfg.tokenizer_key()
        if cfg.tokenizer:
            _check_source(cfg.tokenizer, tok_key, None, holds="tokenizer")
        gguf = {"gguf_file": cfg.gguf_file} if cfg.gguf_file else {}
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                tok_source, trust_remote_code=cfg.trust_remote_code,
                **(gguf if cfg.tokenizer is None else {}),
            )
        except Exception as err:  # transformers raises OSError/ValueError/ImportError variously, some over lines
            raise DasdError(f"{tok_key}: cannot load a tokenizer from {tok_source!r}: {' '.join(str(err).split())}")
        try:
            self.model = AutoModelForCausalLM.from_pretrained(
                cfg.model, dtype=self.dtype, trust_remote_code=cfg.trust_remote_code, **gguf
            )
        except Exception as err:
            raise DasdError(f"{cfg.key('model')}: cannot load a causal LM from {cfg.model!r}: {err}")
        self.model.to(self.device).eval()
        self.base = self.model.base_model
        self.head = self.model.get_output_embeddings()
        if self.base is self.model or self.head is None:
            raise DasdError(f"{cfg.key('model')}: {cfg.model!r} has no separate base model and lm head")
        self.softcap = getattr(self.model.config, "final_logit_softcapping", None)
        limit = cfg.max_model_len or getattr(self.model.config, "max_position_embeddings", None)
        self.max_len: int | None = limit
        self.stop_ids = _stop_ids(self.tokenizer, self.model)
        if not self.stop_ids:
            raise DasdError(f"{cfg.key('model')}: {cfg.model!r} names no eos token; cannot stop generation")
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.stop_ids)
        self._self_check()

    # ----------------------------------------------------------------- tokens
    def count_tokens(self, text: str) -> int:
        """Number of this model's tokens in ``text`` (no special tokens added)."""
        return len(self.encode(text))

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens (special-token text is still matched)."""
        return encode_text(self.tokenizer, text)

    def context_ids(self, messages, prefix: str | None, rid: str) -> list[int]:
        """Prompt ids: chat template with the generation prompt, or the raw prefix as given."""
        return build_context_ids(self.tokenizer, self.name, messages, prefix, rid)

    # --------------------------------------------------------------- log-probs
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits of final hidden states [..., H] -> [..., V] (apply to small chunks only)."""
        out = self.head(hidden).float()
        if self.softcap:
            out = out.div_(self.softcap).tanh_().mul_(self.softcap)
        return out

    def token_logprobs(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """log p(targets[i] | position i) for hidden [N, H], targets [N], ``logprob_chunk`` rows at a time."""
        out = torch.empty(targets.shape[0], dtype=torch.float32, device=hidden.device)
        step = self.cfg.logprob_chunk
        for s in range(0, targets.shape[0], step):
            logits = self.logits(hidden[s : s + step])  # a fresh float32 [chunk, V] tensor
            picked = logits.gather(1, targets[s : s + step, None]).squeeze(1)
            top = logits.amax(dim=-1, keepdim=True)
            # logsumexp in place: one [chunk, V] buffer instead of two
            lse = logits.sub_(top).exp_().sum(dim=-1).log_() + top.squeeze(1)
            out[s : s + step] = picked - lse
            del logits
        return out

    def _self_check(self) -> None:
        """Chunked log-probs from hidden states must equal log_softmax of the model's own logits."""
        ids = torch.arange(min(8, self.head.weight.shape[0]), device=self.device)[None]
        with torch.inference_mode():
            ref = torch.log_softmax(self.model(input_ids=ids).logits.float(), -1)[0, :-1]
            hidden = self.base(input_ids=ids).last_hidden_state[0, :-1]
            got = self.token_logprobs(hidden, ids[0, 1:])
        want = ref.gather(1, ids[0, 1:, None]).squeeze(1)
        tol = 1e-3 if self.dtype == torch.float32 else 5e-2
        if not torch.allclose(got, want, atol=tol, rtol=0):
            raise DasdError(
                f"{self.cfg.key('model')}: {self.name!r} post-processes its logits in a way the hf engine "
                f"does not reproduce (max diff {float((got - want).abs().max()):.3g}); unsupported"
            )

    # ---------------------------------------------------------------- generate
    def generate(self, requests: list[GenerateRequest]) -> list[list[Generation]]:
        """Per request, its ``n`` samples in index order (see the module docstring)."""
        rows: list[_Row] = []
        prompt_len: list[int] = []
        for r, req in enumerate(requests):
            prompt = self.context_ids(req.messages, req.prefix, req.id)
            prompt_len.append(len(prompt))
            max_new = req.max_tokens
            if self.max_len is not None:
                if len(prompt) >= self.max_len:
                    raise ContextLengthError(
                        f"request {req.id!r}: prompt has {len(prompt)} tokens, max_model_len is "
                        f"{self.max_len}"
                    )
                max_new = min(max_new, self.max_len - len(prompt))
            for i in range(req.n):
                g = torch.Generator(device="cpu")
                g.manual_seed(row_seed(req.seed, i))
                rows.append(_Row(r, i, prompt, max_new, req.temperature, req.top_p, g))
        order = sorted(range(len(rows)), key=lambda k: -len(rows[k].prompt))
        bs = self.cfg.batch_size
        for s in range(0, len(order), bs):
            self._generate_batch([rows[k] for k in order[s : s + bs]])
        out: list[list[Generation]] = [[] for _ in requests]
        for row in rows:
            out[row.req].append(self._generation(requests[row.req], row, prompt_len[row.req]))
        return out

    @torch.inference_mode()
    def _generate_batch(self, rows: list[_Row]) -> None:
        """Decode ``rows`` together: left-padded prompts, KV cache, finished rows dropped."""
        width = max(len(r.prompt) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for k, r in enumerate(rows):
            ids[k, width - len(r.prompt) :] = torch.tensor(r.prompt)
            mask[k, width - len(r.prompt) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        out = self.base(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        cache = out.past_key_values
        hidden = out.last_hidden_state[:, -1]
        pos = pos[:, -1]
        active = list(rows)
        while True:
            logits = self.logits(hidden)
            logp = torch.log_softmax(logits, dim=-1)
            nxt = self._sample(logits, active)
            picked = logp.gather(1, nxt[:, None]).squeeze(1).tolist()
            keep: list[int] = []
            for k, (row, tok, lp) in enumerate(zip(active, nxt.tolist(), picked)):
                if tok in self.stop_ids:
                    row.finish = "stop"
                    continue
                row.ids.append(tok)
                row.logprobs.append(lp)
                if len(row.ids) >= row.max_new:
                    row.finish = "length"
                else:
                    keep.append(k)
            if not keep:
                return
            if len(keep) < len(active):
                idx = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(idx)
                mask, pos, nxt = mask[idx], pos[idx], nxt[idx]
                active = [active[k] for k in keep]
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
            pos = pos + 1
            out = self.base(
                input_ids=nxt[:, None], attention_mask=mask, position_ids=pos[:, None],
                past_key_values=cache, use_cache=True,
            )
            cache = out.past_key_values
            hidden = out.last_hidden_state[:, -1]

    def _sample(self, logits: torch.Tensor, rows: list[_Row]) -> torch.Tensor:
        """One token per row: argmax at temperature 0, else inverse CDF of one uniform draw.

        Each row draws one uniform from its own generator per step (greedy rows too, so streams
        stay aligned). top_p = 1: CDF in vocabulary order (no sort); top_p < 1: CDF over the
        probabilities sorted high to low (stable), cut to the smallest set whose mass reaches
        top_p. The rule depends on the row alone, so batching cannot change the draw.
        """
        out = logits.argmax(dim=-1)
        u = torch.stack([torch.rand((), generator=r.generator) for r in rows]).to(logits.device)
        for nucleus in (False, True):
            sel = [k for k, r in enumerate(rows) if r.temperature > 0 and (r.top_p < 1) == nucleus]
            if not sel:
                continue
            idx = torch.tensor(sel, device=logits.device)
            temps = torch.tensor([rows[k].temperature for k in sel], device=logits.device)
            probs = torch.softmax(logits[idx] / temps[:, None], dim=-1)
            order = None
            if nucleus:
                probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
                top_p = torch.tensor([rows[k].top_p for k in sel], device=logits.device)[:, None]
                probs = probs.masked_fill(probs.cumsum(dim=-1) - probs >= top_p, 0.0)
            cum = probs.cumsum(dim=-1)
            pick = torch.searchsorted(cum, (u[idx] * cum[:, -1])[:, None], right=True)
            pick = pick.clamp(max=cum.shape[1] - 1)
            if order is not None:
                pick = order.gather(1, pick)
            out[idx] = pick.squeeze(1)
        return out

    def _generation(self, req: GenerateRequest, row: _Row, prompt_tokens: int) -> Generation:
        # The text is what the tokens add to the context (their bytes), as vLLM's detokenizer returns
        # it: decode(prompt tail + ids) less decode(prompt tail). Decoding the ids on their own is not
        # that for a sentencepiece decoder (Llama 2, Mistral), which strips the leading space of what
        # it decodes: a first token '▁The' gave "The" where vLLM gives " The", and a raw prefix + text
        # lost the space at the join. Byte-level BPE text is unchanged (its decoding is these bytes).
        # The bytes of a character cut at the end (max_tokens) are left out, as vLLM leaves them out.
        text, offsets = generation_spans(token_bytes(self.tokenizer, row.ids))
        return Generation(
            request_id=req.id, index=row.index, text=text,
            tokens=self.tokenizer.convert_ids_to_tokens(row.ids), token_ids=list(row.ids),
            offsets=offsets, logprobs=list(row.logprobs), finish_reason=row.finish,
            logprob_mode="raw", prompt_tokens=prompt_tokens,
        )

    # ------------------------------------------------------------------- score
    def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        """Per request, teacher-forced raw log-probs of its continuation's tokens."""
        items, offsets = [], []
        for req in requests:
            ctx = self.context_ids(req.messages, req.prefix, req.id)
            cont = list(req.continuation_ids) if req.continuation_ids is not None else self.encode(req.continuation)
            if self.max_len is not None and len(ctx) + len(cont) > self.max_len:
                raise ContextLengthError(
                    f"request {req.id!r}: context + continuation is {len(ctx) + len(cont)} tokens, "
                    f"max_model_len is {self.max_len}"
                )
            try:  # fail before any compute
                offsets.append(req.offsets if req.offsets is not None else token_offsets(self.tokenizer, cont, req.continuation))
            except DasdError as err:
                raise DasdError(f"request {req.id!r}: {err}") from None
            items.append((ctx, cont))
        logprobs: list[list[float]] = [[] for _ in requests]
        order = sorted((k for k in range(len(items)) if items[k][1]), key=lambda k: sum(map(len, items[k])))
        batch: list[int] = []
        for k in order:
            width = len(items[k][0]) + len(items[k][1]) - 1
            if batch and width * (len(batch) + 1) > self.cfg.score_batch_tokens:
                self._score_batch([items[j] for j in batch], batch, logprobs)
                batch = []
            batch.append(k)
        if batch:
            self._score_batch([items[j] for j in batch], batch, logprobs)
        return [
            ScoreResult(
                request_id=req.id, tokens=self.tokenizer.convert_ids_to_tokens(cont),
                token_ids=cont, offsets=offs, logprobs=lps, logprob_mode="raw",
                extra={"context_tokens": len(ctx)},
            )
            for req, (ctx, cont), offs, lps in zip(requests, items, offsets, logprobs)
        ]

    @torch.inference_mode()
    def _score_batch(self, batch: list[tuple[list[int], list[int]]], slots: list[int], out: list[list[float]]) -> None:
        """Score right-padded rows in one forward pass; write each row's log-probs to out[slot]."""
        seqs = [ctx + cont for ctx, cont in batch]
        width = max(len(s) for s in seqs) - 1
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for k, s in enumerate(seqs):
            ids[k, : len(s) - 1] = torch.tensor(s[:-1])
            mask[k, : len(s) - 1] = 1
        ids = ids.to(self.device)
        full = bool(mask.all())
        hidden = self.base(
            input_ids=ids, attention_mask=None if full else mask.to(self.device), use_cache=False
        ).last_hidden_state
        flat, targets, sizes = [], [], []
        for k, (ctx, cont) in enumerate(batch):
            start = len(ctx) - 1
            flat.append(k * width + torch.arange(start, start + len(cont)))
            targets.extend(cont)
            sizes.append(len(cont))
        rows = torch.cat(flat).to(self.device)
        lps = self.token_logprobs(
            hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows),
            torch.tensor(targets, device=self.device),
        ).tolist()
        at = 0
        for slot, size in zip(slots, sizes):
            out[slot] = lps[at : at + size]
            at += size


def _check_source(path: str, what: str, gguf_file: str | None, gguf_key: str = "", holds: str = "model") -> None:
    """A local path must exist and hold what it ``holds``: a model (``gguf_file`` in it, when given:
    the setting ``gguf_key``) or a tokenizer; anything else is taken as a hub name. ``what``: the
    config key (or training stage) named in errors."""
    local = os.path.exists(path) or os.path.isabs(path) or path.startswith((".", "~"))
    if not local:
        return
    if not os.path.isdir(path):
        raise DasdError(f"{what}: {path!r} does not exist or is not a directory")
    if gguf_file is not None:
        if not os.path.isfile(os.path.join(path, gguf_file)):
            raise DasdError(f"{gguf_key}: {gguf_file!r} not found in {path!r}")
        return
    markers = ("config.json",) if holds == "model" else ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
    if not any(os.path.isfile(os.path.join(path, m)) for m in markers):
        raise DasdError(f"{what}: {path!r} is not a transformers model directory (no {' or '.join(markers)})")


def _stop_ids(tokenizer, model) -> set[int]:
    """The tokenizer's eos id plus the generation config's eos id(s)."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None) if gen is not None else None
    if isinstance(extra, int):
        ids.add(extra)
    elif extra:
        ids.update(int(i) for i in extra)
    return ids
