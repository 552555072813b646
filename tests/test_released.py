"""The released DASD rows and their -Logprob companion, aligned with gpt-oss's real tokenizer (o200k + harmony)."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from dasd.rules.released import (
    Aligned,
    Mismatch,
    align_companion,
    align_row,
    check_teacher_tokenizer,
    harmony_messages,
    map_domain,
    parse_meta,
    parse_row,
    resolve_logprob_mode,
)

END, START, CHANNEL, MESSAGE, RETURN = 200007, 200006, 200005, 200008, 200002

# Reasoning bodies: the first starts like the release's first row (whose ids begin 2167, 1309, 316, 8420, 290, 4792, 25);
# its " ≠" is two byte-level tokens that split the character, as in that row (42308, 254).
BODY1 = "We need to parse the problem: We have a function f defined as f(x) = (x^2 + a) for all x ≠ 1. So f(2) = 4 + a."
BODY2 = "We need to add 3 and 4. That is 7. Café 😀 checks out."
ANSWER2 = "The answer is \\boxed{7}."
BODY3 = "We need to count the primes below 20."
BODY5 = "We need to compare 9.11 and 9.9 carefully, digit by digit."
BODY6 = "We need to think in Japanese: 日本語の文."


def released(uuid, body, answer, domain="math", meta='{"source": "synthetic", "level": 3}'):
    return {"uuid": uuid, "input": f"Question {uuid}?", "output": f"<think>\n{body}\n</think>\n\n{answer}",
            "domain": domain, "meta": meta}


@pytest.fixture(scope="module")
def tok(o200k_harmony_dir):
    return AutoTokenizer.from_pretrained(o200k_harmony_dir)


@pytest.fixture(scope="module")
def release(tok):
    """Rows shaped like the release, and a companion in another order with every kind of row."""
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    rows = [
        released("u1", BODY1, "\\boxed{5}"),
        released("u2", BODY2, ANSWER2, domain="instruction_following"),
        released("u3", BODY3, "\\boxed{8}", domain="science"),
        released("u4", "We need nothing.", "\\boxed{0}", meta=""),
        released("u5", BODY5, "\\boxed{9.9}"),
        released("u6", BODY6, "OK", domain="code"),
    ]
    final_ids = [END, START, *enc("assistant"), CHANNEL, *enc("final"), MESSAGE, *enc(ANSWER2), RETURN]
    ids = {
        "u1": enc(BODY1),                       # the reasoning body only
        "u2": enc(BODY2) + final_ids,           # body, the final message's harmony header, the answer
        "u3": enc("We need to find the number of integer solutions."),  # another text
        "u5": enc(BODY5)[:-4],                  # cut short
        "u6": enc("\n\n" + BODY6) + [END],      # more leading whitespace than the output, a closing <|end|>
        "zz": enc("an orphan"),                 # no response row
    }
    companion = [{"sample_uuid": u, "token_ids": ids[u], "logprobs": [-(k + 1) / 64 for k in range(len(ids[u]))]}
                 for u in ("zz", "u6", "u5", "u3", "u2", "u1")]  # another order than the rows
    return rows, companion


def spans_by_decoding(tok, ids, base):
    """Expected spans computed another way: each token decoded alone; the split ' ≠' written out by hand."""
    out, pos, k = [], base, 0
    while k < len(ids):
        if ids[k : k + 2] == [42308, 254]:  # ' ≠' = b' \xe2\x89' + b'\xa0': both tokens share the '≠'
            out += [(pos, pos + 2), (pos + 1, pos + 2)]
            pos, k = pos + 2, k + 2
            continue
        piece = tok.decode([ids[k]])
        assert "\ufffd" not in piece
        out.append((pos, pos + len(piece)))
        pos, k = pos + len(piece), k + 1
    return out


def joined(text, offsets):
    """The text the spans cover, each character once (spans overlap only on a split character)."""
    parts, end = [], offsets[0][0]
    for s, e in offsets:
        parts.append(text[max(s, end) : e])
        end = max(end, e)
    return "".join(parts)


def test_the_tokenizer_is_gpt_oss(tok):
    assert tok.encode("We need to parse the problem:", add_special_tokens=False) == [2167, 1309, 316, 8420, 290, 4792, 25]
    assert tok.encode(" ≠", add_special_tokens=False) == [42308, 254]
    assert [tok.convert_ids_to_tokens(i) for i in (RETURN, CHANNEL, START, END, MESSAGE)] == [
        "<|return|>", "<|channel|>", "<|start|>", "<|end|>", "<|message|>"]


def test_the_tokenizer_encodes_like_tiktoken(tok):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    folder = __import__("pathlib").Path(tok.name_or_path).parent
    ranks = load_tiktoken_bpe(str(folder / "o200k_base.tiktoken"))
    pattern = (folder / "o200k_pattern.txt").read_text(encoding="utf-8")
    ref = tiktoken.Encoding("o200k_base", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})
    for text in (BODY1, BODY2, BODY6, "  indented\n\n\tcode {x: 1}\r\n", "IT'S ALL CAPS'LL"):
        assert tok.encode(text, add_special_tokens=False) == ref.encode(text)


def test_companion_joined_by_id_in_another_order(tok, release):
    rows, companion = release
    by_id = {c["sample_uuid"]: c for c in companion}
    results = {r["uuid"]: align_row(parse_row(r), by_id.get(r["uuid"]), tok) for r in rows}

    # reasoning-only ids: every token inside the body, exact spans and log-probs
    out1 = rows[0]["output"]
    a1 = results["u1"]
    assert isinstance(a1, Aligned) and a1.part == "reasoning" and a1.dropped == 0
    ids1 = by_id["u1"]["token_ids"]
    assert a1.token_ids == ids1 and a1.logprobs == by_id["u1"]["logprobs"]
    assert a1.offsets == spans_by_decoding(tok, ids1, len("<think>\n"))
    assert joined(out1, a1.offsets) == BODY1
    k = ids1.index(42308)
    assert [out1[s:e] for s, e in a1.offsets[k : k + 2]] == [" ≠", "≠"]

    # ids that carry the final channel: body and answer tokens kept, the 7 harmony tokens dropped
    out2 = rows[1]["output"]
    a2 = results["u2"]
    assert isinstance(a2, Aligned) and a2.part == "reasoning+final" and a2.dropped == 7
    ids2, lps2 = by_id["u2"]["token_ids"], by_id["u2"]["logprobs"]
    n_body = len(tok.encode(BODY2, add_special_tokens=False))
    answer_ids = tok.encode(ANSWER2, add_special_tokens=False)
    assert a2.token_ids == ids2[:n_body] + answer_ids
    assert a2.logprobs == lps2[:n_body] + lps2[-1 - len(answer_ids) : -1]
    assert a2.offsets == (spans_by_decoding(tok, ids2[:n_body], len("<think>\n"))
                          + spans_by_decoding(tok, answer_ids, out2.index(ANSWER2)))
    assert joined(out2, a2.offsets[:n_body]) == BODY2 and joined(out2, a2.offsets[n_body:]) == ANSWER2
    teacher = a2.teacher("processed")
    assert teacher["logprob_mode"] == "processed" and teacher["covers"] == "reasoning+final"
    assert len(teacher["offsets"]) == len(teacher["logprobs"]) == len(teacher["token_ids"])

    # ids of another text, cut short, more whitespace than the output
    assert results["u3"] == Mismatch(
        "reasoning body differs from the output at output char 19 (char 11 of the ids' text): output has "
        "'count the primes below 20.\\n</t', the ids decode to 'find the number of integer sol'")
    cut = len("<think>\n") + len(tok.decode(by_id["u5"]["token_ids"]))
    assert results["u5"] == Mismatch(
        f"reasoning body: the ids' text ends at output char {cut} but the output goes on with "
        f"{rows[4]['output'][cut:cut + 30]!r} instead of '</think>'")
    a6 = results["u6"]
    assert isinstance(a6, Aligned) and a6.part == "reasoning" and a6.dropped == 1
    assert a6.offsets[0] == (7, 8)  # the ids' "\n\n" lies on the output's one "\n" after <think>
    assert joined(rows[5]["output"], a6.offsets) == "\n" + BODY6

    # the missing row: no companion for it (the orphan 'zz' is the driver's to count)
    assert results["u4"] is None


def test_mismatch_reasons(tok):
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    out = "<think>\nStep one.\n</think>\n\nDone."
    body, answer = enc("Step one."), enc("Done.")
    lps = lambda ids: [-0.5] * len(ids)  # noqa: E731
    header = lambda ch: [END, START, *enc("assistant"), CHANNEL, *enc(ch), MESSAGE]  # noqa: E731

    def reason(ids, lp=None, text=out):
        got = align_companion(text, ids, lps(ids) if lp is None else lp, tok)
        assert isinstance(got, Mismatch), got
        return got.reason

    assert reason(body + header("final") + enc("Done!")) == (
        "final answer differs from the output at output char 32 (char 4 of the ids' text): "
        "output has '.', the ids decode to '!'")
    assert reason(body + header("final") + enc("Done")) == (
        "final answer: the ids' text ends at output char 32 but the output goes on with '.'")
    assert reason(body + header("final") + enc("Done. And more")) == (
        "final answer: the output ends at char 33 but the ids' text goes on with ' And more' (char 5 of the ids' text)")
    assert reason(body + header("commentary") + answer) == (
        "companion ids hold the messages [analysis (3 tokens), commentary (2 tokens)]; expected a non-empty "
        "analysis message (the reasoning), optionally followed by a non-empty final message")
    assert reason(body + [RETURN] + answer) == (
        "companion ids are not harmony messages: token 4 comes after <|return|>, which ends the response")
    assert reason(body + [END] + answer) == (
        "companion ids are not harmony messages: token 4 follows <|end|> but is not <|start|> (text)")
    assert reason(body + [END, START] + enc("assistant")) == (
        "companion ids are not harmony messages: the ids end inside a message header")
    assert reason(body + [MESSAGE]) == "companion ids are not harmony messages: token 3 is <|message|> inside a message"
    assert reason(body, lp=[-0.5]) == "companion: 3 token_ids but 1 logprobs"
    assert reason(body, lp=[-0.5, float("nan"), -0.5]) == "companion: logprobs[1] = nan is not a finite number"
    assert reason([*body[:2], 300000]) == (
        "companion: token_ids[2] = 300000 is not an id of the teacher tokenizer (200013 ids)")
    assert reason(body, text="Step one. Done.") == (
        "output has no <think>: the reasoning body the ids belong to cannot be found")


def test_a_literal_close_tag_inside_the_reasoning(tok):
    body = "We write </think> literally here."
    out = f"<think>\n{body}\n</think>\nOK"
    ids = tok.encode(body, add_special_tokens=False)
    got = align_companion(out, ids, [-1.0] * len(ids), tok)
    assert isinstance(got, Aligned) and joined(out, got.offsets) == body


def test_harmony_messages_from_a_leading_channel_header(tok):
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    ids = [CHANNEL, *enc("analysis"), MESSAGE, *enc("Think."), END, START, *enc("assistant"), CHANNEL, *enc("final"),
           200003, *enc("json"), MESSAGE, *enc("{}"), RETURN]
    msgs = harmony_messages(ids, tok)
    assert [(m.channel, [ids[p] for p in m.content]) for m in msgs] == [("analysis", enc("Think.")), ("final", enc("{}"))]


def test_parse_row_keeps_source_domain_and_meta():
    row = parse_row({"uuid": "a", "input": "Follow the format.", "output": "<think>\nok\n</think>\nok",
                     "domain": "instruction_following", "meta": '{"source": "ifeval-like", "n": 2}'})
    assert row.uuid == "a" and row.output == "<think>\nok\n</think>\nok"
    assert row.prompt == {"prompt": "Follow the format.", "domain": "instruction",
                          "meta": {"source": "ifeval-like", "n": 2, "source_domain": "instruction_following"}}
    chat = parse_row({"uuid": "b", "input": [{"role": "user", "content": "hi"}], "output": "x", "domain": "Physics"})
    assert chat.prompt == {"messages": [{"role": "user", "content": "hi"}], "domain": "science",
                           "meta": {"source_domain": "Physics"}}
    assert [map_domain(d) for d in ("math", "Code", "scientific-qa", "poetry", None)] == [
        "math", "code", "science", "other", "other"]


@pytest.mark.parametrize("raw, reason", [
    ({"input": "q", "output": "o"}, "missing field 'uuid' (a non-empty string)"),
    ({"uuid": "a", "input": "", "output": "o"}, "field 'input' must be a non-empty string or chat list, got an empty string"),
    ({"uuid": "a", "input": "q", "output": " "}, "field 'output' must be a non-empty string, got an empty string"),
    # a Parquet column of another type, or a null in it, is named as such (not as "missing")
    ({"uuid": 17, "input": "q", "output": "o"}, "field 'uuid' must be a non-empty string, got int"),
    ({"uuid": "a", "input": "q", "output": None}, "field 'output' must be a non-empty string, got nothing"),
    ({"uuid": "a", "input": {"q": 1}, "output": "o"}, "field 'input' must be a non-empty string or chat list, got dict"),
    ({"uuid": "a", "input": "q", "output": "o", "domain": 3}, "field 'domain' must be a string, got int"),
    ({"uuid": "a", "input": "q", "output": "o", "meta": "{bad"},
     "field 'meta' is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
    ({"uuid": "a", "input": "q", "output": "o", "meta": "[1, 2]"}, "field 'meta' must be a JSON object, got a JSON list"),
    ({"uuid": "a", "input": "q", "output": "o", "meta": 7}, "field 'meta' must be a JSON object string, got int"),
    ({"uuid": "a", "input": "q", "output": "o", "domain": "math", "meta": json.dumps({"source_domain": "code"})},
     "field 'meta' has source_domain 'code' but field 'domain' is 'math'"),
])
def test_parse_row_reasons(raw, reason):
    with pytest.raises(ValueError) as e:
        parse_row(raw)
    assert str(e.value) == reason


def test_parse_meta_forms():
    assert parse_meta(None) == {} and parse_meta("") == {} and parse_meta({"a": 1}) == {"a": 1}
    assert parse_meta('{"a": [1, "x"]}') == {"a": [1, "x"]}


def test_join_is_by_id(tok):
    row = parse_row(released("u1", BODY1, "x"))
    with pytest.raises(ValueError, match="join by id"):
        align_row(row, {"sample_uuid": "u2", "token_ids": [1], "logprobs": [0.0]}, tok)


def test_logprob_mode_resolution():
    assert resolve_logprob_mode("auto", 0.6, 1.0) == "processed"
    assert resolve_logprob_mode("auto", 1.0, 1.0) == "raw"
    assert resolve_logprob_mode("auto", 1.0, 0.95) == "processed"
    assert resolve_logprob_mode("raw", 0.6, 1.0) == "raw"
    assert resolve_logprob_mode("processed", 1.0, 1.0) == "processed"


def test_release_read_from_a_hub_layout_and_joined_through_an_index(tok, release, tmp_path):
    """The whole chain the import stage runs: rows streamed from a hub-style folder, the companion
    (another order, an orphan) looked up by id in a JSONL index, each row aligned, signals valid."""
    from dasd.records import TokenLogprobs
    from dasd.sources import KeyedRows, iter_rows

    rows, companion = release
    repo = tmp_path / "release"
    repo.mkdir()
    (repo / "README.md").write_text("---\nconfigs:\n- config_name: stage1\n  data_files: stage1.jsonl\n---\n", encoding="utf-8")
    (repo / "stage1.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    lp = tmp_path / "stage1-logprob.jsonl"
    lp.write_text("".join(json.dumps(c) + "\n" for c in companion), encoding="utf-8")

    index = KeyedRows(lp, "sample_uuid")
    counts = {"aligned": 0, "missing": 0, "mismatched": 0}
    seen = set()
    for where, raw in iter_rows(f"hf:{repo}:stage1@train"):
        row = parse_row(raw)
        seen.add(row.uuid)
        hit = index.get(row.uuid)
        got = align_row(row, hit[1] if hit else None, tok)
        if got is None:
            counts["missing"] += 1
        elif isinstance(got, Mismatch):
            counts["mismatched"] += 1
            assert where in (f"{repo}:stage1[train][2]", f"{repo}:stage1[train][4]")  # u3, u5
        else:
            counts["aligned"] += 1
            teacher = TokenLogprobs.model_validate(got.teacher(resolve_logprob_mode("auto", 0.6, 1.0)))
            assert teacher.logprob_mode == "processed" and teacher.offsets[-1][1] <= len(row.output)
    assert counts == {"aligned": 3, "missing": 1, "mismatched": 2}
    assert sorted(set(index.keys()) - seen) == ["zz"]  # the orphan


def test_a_tokenizer_without_harmony_tokens_is_a_config_error(tiny_lm_dir):
    from dasd.errors import ConfigError

    other = AutoTokenizer.from_pretrained(tiny_lm_dir)
    with pytest.raises(ConfigError, match=r"the teacher tokenizer '.+' \(teacher.tokenizer, else teacher.model\) has no harmony tokens \['<\|start\|>'"):
        check_teacher_tokenizer(other)
    with pytest.raises(ConfigError):
        align_companion("<think>\nx\n</think>\ny", [1, 2], [-1.0, -1.0], other)


@pytest.mark.parametrize("layout", ["<think>\n{b}\n</think>\n\n{a}", "<think>{b}</think>{a}", "<think>\n\n{b}\n</think>\n{a}"])
def test_aligned_release_samples_pass_the_filters_with_their_spans(tok, layout):
    """Downstream use: the filter normalises the layout and remaps the spans; they still cover the body and answer."""
    from dasd.text.filters import FilterConfig, apply_filters

    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    ids = enc(BODY2) + [END, START, *enc("assistant"), CHANNEL, *enc("final"), MESSAGE, *enc(ANSWER2), RETURN]
    text = layout.format(b=BODY2, a=ANSWER2)
    got = align_companion(text, ids, [-0.25] * len(ids), tok)
    assert isinstance(got, Aligned), got
    sample = {"id": "s", "prompt_id": "p", "model": "gpt-oss-120b", "temperature": 0.6, "text": text,
              "teacher": got.teacher("raw")}
    out, drop = apply_filters(sample, FilterConfig(max_student_tokens=None))
    assert drop is None
    n_body = len(enc(BODY2))
    offs = out["teacher"]["offsets"]
    assert joined(out["text"], offs[:n_body]) == BODY2 and joined(out["text"], offs[n_body:]) == ANSWER2
