"""Encoding training examples with the chat template rendered once less: ``train.encode.encode_batch``
as it is (``assistant_spans`` renders a training example twice: its generation prompt, and the whole
conversation once) against the rendering per assistant turn it replaced (three: the whole
conversation again through its last turn, kept here as ``assistant_spans_per_turn``).

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/encode_renders.py [--examples 16] [--chars 14000] [--repeat 5]

``--examples`` training examples (system, user, and an assistant turn of about ``--chars``
characters of toy-world reasoning in a think block and an answer: about 10K toy-student tokens at
14,000), encoded with the toy student's tokenizer under its ChatML template and under
``dasd.toy.tokenizer.QWEN_LIKE_TEMPLATE`` (which re-lays the whitespace around the think block).
Per configuration, interleaved ``--repeat`` times: CPU milliseconds per example of the span finding
alone (``assistant_spans``) and of all of ``encode_batch`` (render, tokenise with offsets, masks),
each both ways, the chat-template calls per example, and the ratios old / new (their range over the
repeats). Both ways are checked to give the same ids, labels and masks. Not a timed test.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale import response_text  # noqa: E402 (the toy-world reasoning of the scale benchmark)


def assistant_spans_per_turn(tokenizer, messages: list[dict], where: str = "example"):
    """``train.encode.assistant_spans`` as it was: the conversation rendered in full, then up to and
    through every assistant turn (the last one included)."""
    from dasd.errors import InputError

    def render(msgs, gen):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

    text = render(messages, False)
    spans, starts = [], []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        head, upto = render(messages[:i], True), render(messages[: i + 1], False)
        if not text.startswith(head) or not text.startswith(upto) or len(upto) < len(head):
            raise InputError(f"{where}: the chat template does not render assistant turn {i} as a prefix of the "
                             "conversation (it rewrites earlier turns); cannot locate the assistant tokens")
        spans.append((len(head), len(upto.rstrip())))
        starts.append(len(head))
    return text, spans, starts


def make_examples(n: int, chars: int, seed: int = 0) -> list[dict]:
    """``n`` training examples whose responses hold about ``chars`` characters of reasoning."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        parts: list[str] = []
        while sum(map(len, parts)) < chars:
            parts.append(response_text(rng)[0].split("<think>\n", 1)[1].split("\n</think>", 1)[0])
        reasoning = "\n".join(parts)[:chars].rstrip()
        out.append({"messages": [{"role": "system", "content": "You are a helpful assistant."},
                                 {"role": "user", "content": f"Problem {i}: apply the operations in turn."},
                                 {"role": "assistant", "content": f"<think>\n{reasoning}\n</think>\nThe answer is {i}."}]})
    return out


def measure(examples: list[dict], repeat: int) -> list[dict]:
    """Per template: CPU per example of span finding and of ``encode_batch``, old and new, ``repeat``
    times interleaved; the chat-template calls per example each way."""
    import copy

    from transformers import AutoTokenizer

    import dasd.train.encode as encode
    from dasd.toy.build import default_toy_dir
    from dasd.toy.tokenizer import QWEN_LIKE_TEMPLATE

    base = AutoTokenizer.from_pretrained(str(default_toy_dir() / "student"))
    base.model_max_length = 1 << 30  # no warning about examples longer than the toy model takes
    toks = {"chatml": base, "qwen-like": copy.deepcopy(base)}
    toks["qwen-like"].chat_template = QWEN_LIKE_TEMPLATE
    new_spans = encode.assistant_spans
    ways = {"new": new_spans, "old": assistant_spans_per_turn}

    def encode_with(tok, spans):
        encode.assistant_spans = spans  # encode_batch finds the spans through the module's name
        try:
            return encode.encode_batch(tok, examples)
        finally:
            encode.assistant_spans = new_spans

    rows = []
    for name, tok in toks.items():
        got = {way: encode_with(tok, fn) for way, fn in ways.items()}  # untimed: warm, and checked alike
        for a, b in zip(got["new"], got["old"]):
            if any(x.tolist() != y.tolist() for x, y in zip(a, b)):
                raise SystemExit(f"{name}: the two ways encode an example differently")
        calls = {}
        real = tok.apply_chat_template
        for way, fn in ways.items():
            seen = []

            def counting(*a, _seen=seen, **k):
                _seen.append(1)
                return real(*a, **k)

            tok.apply_chat_template = counting
            for ex in examples:
                fn(tok, ex["messages"])
            del tok.apply_chat_template  # the class's method again
            calls[way] = len(seen) / len(examples)
        cpu = {f"{part}_{way}": [] for part in ("spans", "encode") for way in ways}
        for _ in range(repeat):
            for way, fn in ways.items():
                c0 = time.process_time()
                for ex in examples:
                    fn(tok, ex["messages"])
                c1 = time.process_time()
                encode_with(tok, fn)
                c2 = time.process_time()
                cpu[f"spans_{way}"].append((c1 - c0) / len(examples) * 1e3)
                cpu[f"encode_{way}"].append((c2 - c1) / len(examples) * 1e3)
        rows.append({"template": name, "examples": len(examples), "tokens": sum(len(e[0]) for e in got["new"]),
                     "calls_new": calls["new"], "calls_old": calls["old"], **cpu})
    return rows


def table(rows: list[dict]) -> str:
    def span(xs):
        return f"{min(xs):.2f}-{max(xs):.2f}"

    def ratio(old, new):
        rs = [o / n for o, n in zip(old, new)]
        return f"{min(rs):.2f}-{max(rs):.2f}"

    lines = ["| template  | tokens/example | renders old/new | spans ms old | spans ms new | spans old/new "
             "| encode ms old | encode ms new | encode old/new |",
             "|-----------|----------------|-----------------|--------------|--------------|---------------"
             "|---------------|---------------|----------------|"]
    for r in rows:
        lines.append(f"| {r['template']:9s} | {r['tokens'] // r['examples']:14,d} | {r['calls_old']:.0f} / {r['calls_new']:.0f}"
                     f"           | {span(r['spans_old']):12s} | {span(r['spans_new']):12s} "
                     f"| {ratio(r['spans_old'], r['spans_new']):13s} | {span(r['encode_old']):13s} "
                     f"| {span(r['encode_new']):13s} | {ratio(r['encode_old'], r['encode_new']):14s} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=16, help="training examples (default 16)")
    ap.add_argument("--chars", type=int, default=14_000, help="characters of reasoning a response (default 14000)")
    ap.add_argument("--repeat", type=int, default=5, help="interleaved rounds (default 5)")
    args = ap.parse_args()
    print(table(measure(make_examples(args.examples, args.chars), args.repeat)))


if __name__ == "__main__":
    main()
