"""Stage drivers checked on VALUES against an independent computation, not on shapes.

Each test here catches a one-line wiring bug that the shape tests let through (docs/testing.md,
"Stage values", lists which test catches which bug):

- the score stage scoring the student in the wrong context: the stored student log-probs are
  recomputed with transformers directly (the student's own chat template on the prompt's messages,
  then the response), not through the engine;
- ``select.method=random`` not reaching the random selector: the stage's selection equals
  ``select_grouped(..., "random", seed)`` on the scored pool and differs from DAS's;
- the filter's length rule counting with anything but the student's tokenizer: a response too long
  only in student tokens is dropped;
- ``filter.require_correct`` not reaching the stage: a wrong toy answer is dropped, a right one kept;
- the ``delta == tau`` boundary: such a sentence is Shared (docs/das.md: Teacher iff delta > tau).
"""

from __future__ import annotations

import json

import pytest

from dasd.columnar import REF
from dasd.config import load_config
from dasd.prompts import toy_prompts
from dasd.rules.das import DASConfig, das_summary, select_grouped, sentence_table
from dasd.stages.filter import run_filter
from dasd.stages.sample import run_sample
from dasd.stages.score import run_score
from dasd.stages.select import run_select
from dasd.store import RunStore

RELAXED = ["filter.require_structure=false", "filter.drop_cutoff=false", "filter.repetition.enabled=false"]


@pytest.fixture(scope="module")
def scored(tmp_path_factory, tiny_lm_dir, tiny_lm_dir_other_vocab):
    """sample -> filter -> score on two tiny real models with different tokenizers; prompts that differ
    in a system message and in their user turn, so a wrong context changes the student's scores."""
    tmp = tmp_path_factory.mktemp("values")
    prompts = tmp / "prompts.jsonl"
    rows = [{"id": f"p{i}", "messages": [{"role": "system", "content": f"Be brief {i}."},
                                         {"role": "user", "content": f"Say {i} and {i * 7}."}]} for i in range(4)]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    overrides = [
        f"run_dir={tmp / 'run'}", f"data.prompts={prompts}", f"teacher.model={tiny_lm_dir}",
        f"student.model={tiny_lm_dir_other_vocab}", "sample.k=4", "sample.max_tokens=16", "score.batch=5", *RELAXED,
    ]
    cfg = load_config(None, overrides)
    run_sample(cfg)
    run_filter(cfg)
    run_score(cfg)
    return cfg, overrides


def _forced_logprobs(model, tok, context_ids: list[int], text: str) -> list[float]:
    """log p(token | context, earlier tokens) of ``text``'s tokens, by one plain forward pass."""
    import torch

    cont = tok(text, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([context_ids + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits.float()[0, :-1], -1)
    n = len(context_ids)
    return [logp[n - 1 + j, t].item() for j, t in enumerate(cont)]


def test_score_stores_the_students_logprobs_in_the_prompts_own_context(scored, tiny_lm_dir_other_vocab):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg, _ = scored
    store = RunStore.open(cfg.run_dir)
    prompts = {p["id"]: p for p in store.read("sample", "prompts")}
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir_other_vocab)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir_other_vocab, torch_dtype="float32").eval()

    def context(messages):
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return tok(text, add_special_tokens=False)["input_ids"]

    checked = 0
    for pool in ("T0.6", "T1"):
        for s in store.read("score", f"pool-{pool}"):
            stored = [float(x) for x in s["student"]["logprobs"]]  # float32 in the columnar store
            if not stored:
                continue
            own = _forced_logprobs(model, tok, context(prompts[s["prompt_id"]]["messages"]), s["text"])
            assert stored == pytest.approx(own, abs=2e-4), s["id"]
            # The check can fail: another prompt's context gives other values for the same response.
            other = next(p for pid, p in prompts.items() if pid != s["prompt_id"])
            wrong = _forced_logprobs(model, tok, context(other["messages"]), s["text"])
            assert max(abs(a - b) for a, b in zip(stored, wrong)) > 1e-3
            checked += 1
    assert checked >= 8  # 4 prompts x 4 samples x 2 pools, minus what the filter dropped


def test_random_selection_reaches_the_random_selector(scored):
    cfg, overrides = scored
    store = RunStore.open(cfg.run_dir)
    seed, differs = 5, False
    rs_cfg = load_config(None, [*overrides, "select.method=random", f"select.seed={seed}", "select.m=2"])
    run_select(rs_cfg)
    for pool in ("T0.6", "T1"):
        cands = list(store.read("score", f"pool-{pool}"))
        want_rs, _ = select_grouped(cands, 2, "random", seed=seed)
        want_das, _ = select_grouped(cands, 2, "das")
        got = [s["id"] for s in store.read("select", f"selected-{pool}")]
        assert got == [s["id"] for s in want_rs]
        assert {e["source"] for e in store.read("select", f"train-{pool}")} == {f"random:{pool}"}
        differs |= set(got) != {s["id"] for s in want_das}
    assert differs, "the random draw equals DAS's choice on every pool: pick another seed"
    # and DAS through the stage picks DAS's choice
    run_select(load_config(None, [*overrides, "select.m=2"]))
    for pool in ("T0.6", "T1"):
        cands = list(store.read("score", f"pool-{pool}"))
        assert [s["id"] for s in store.read("select", f"selected-{pool}")] == [s["id"] for s in select_grouped(cands, 2, "das")[0]]


def _write_samples(root, prompts: list[dict], texts: list[tuple[str, str]], pool: str = "T0.6") -> None:
    """A run whose sample stage holds ``prompts`` and one sample per ``(prompt_id, text)``."""
    store = RunStore(root)
    with store.writer("sample", "prompts") as w:
        for p in prompts:
            w.add(p)
    with store.writer("sample", f"pool-{pool}") as w:
        for i, (pid, text) in enumerate(texts):
            w.add({"id": f"s{i}", "prompt_id": pid, "model": "hand", "temperature": 0.6, "top_p": 1.0, "seed": 0,
                   "index": i, "text": text, "finish_reason": "stop"})


def test_filter_counts_length_in_student_tokens(tmp_path, tiny_lm_dir, tiny_lm_dir_other_vocab):
    """The student here is the smaller-vocabulary model: its tokens are more than the teacher's."""
    from transformers import AutoTokenizer

    teacher_dir, student_dir = tiny_lm_dir_other_vocab, tiny_lm_dir
    teacher_tok, student_tok = (AutoTokenizer.from_pretrained(d) for d in (teacher_dir, student_dir))

    def counts(text):
        return (len(teacher_tok(text, add_special_tokens=False)["input_ids"]),
                len(student_tok(text, add_special_tokens=False)["input_ids"]))

    long_text = "<think>Café naïve résumé, 日本語の文. 12 / 4 = 3.</think> The answer is \\boxed{14}."
    short_text = "<think>5.</think> 3"
    (t_long, s_long), (t_short, s_short) = counts(long_text), counts(short_text)
    limit = t_long  # over the limit in student tokens only
    assert t_long <= limit < s_long and max(t_short, s_short) <= limit, (t_long, s_long, t_short, s_short)
    prompt = {"id": "p0", "domain": "other", "messages": [{"role": "user", "content": "q"}]}
    _write_samples(tmp_path / "run", [prompt], [("p0", long_text), ("p0", short_text)])
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"teacher.model={teacher_dir}",
                             f"student.model={student_dir}", f"filter.max_student_tokens={limit}", *RELAXED])
    funnel = run_filter(cfg)
    store = RunStore.open(cfg.run_dir)
    rejects = {r["id"]: r for r in store.read("filter", "rejects")}
    assert set(rejects) == {"s0"} and rejects["s0"]["rule"] == "length"
    assert f"{s_long} student tokens > {limit}" in rejects["s0"]["reason"]
    assert [s["id"] for s in store.read("filter", "kept-T0.6")] == ["s1"]
    assert funnel["T0.6"] == {"in": 2, "dropped": {"length": 1}, "out": 1}


def test_filter_require_correct_drops_a_wrong_toy_answer(tmp_path, tiny_lm_dir, tiny_lm_dir_other_vocab):
    prompts = toy_prompts(2, 0, "train", None)
    right = [str(p["answer"]) for p in prompts]
    wrong = [str((int(a) + 1) % 10) for a in right]
    texts = [(p["id"], f"<think>Working it out.</think> The answer is \\boxed{{{a}}}.")
             for p, r, w in zip(prompts, right, wrong) for a in (r, w)]
    _write_samples(tmp_path / "run", prompts, texts)
    base = [f"teacher.model={tiny_lm_dir}", f"student.model={tiny_lm_dir_other_vocab}", *RELAXED]
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", "filter.require_correct=true", *base])
    funnel = run_filter(cfg)
    store = RunStore.open(cfg.run_dir)
    assert [s["id"] for s in store.read("filter", "kept-T0.6")] == ["s0", "s2"]
    assert {r["id"]: r["rule"] for r in store.read("filter", "rejects")} == {"s1": "correctness", "s3": "correctness"}
    assert funnel["T0.6"] == {"in": 4, "dropped": {"correctness": 2}, "out": 2}
    # off (the default): the same samples are all kept
    _write_samples(tmp_path / "run-off", prompts, texts)
    assert run_filter(load_config(None, [f"run_dir={tmp_path / 'run-off'}", *base]))["T0.6"]["out"] == 4


@pytest.mark.parametrize("tau", [0.5, 0.25, 1.0])
def test_delta_equal_to_tau_is_shared(tau):
    """Teacher iff delta > tau, Student iff delta < -tau (docs/das.md): both boundaries are Shared."""
    text = "Aa bb. Cc dd. Ee ff. Gg hh."
    spans = [(0, 6), (6, 13), (13, 20), (20, 27)]
    student = [-1.0, -1.0, -1.0, -1.0]
    # one token per sentence and side, values exact in binary: delta = tau, -tau, tau + 2^-10, -(tau + 2^-10)
    step = 2.0 ** -10
    teacher = [-1.0 + tau, -1.0 - tau, -1.0 + tau + step, -1.0 - tau - step]
    cfg = DASConfig(tau=tau)
    rows = sentence_table(text, spans, teacher, spans, student, cfg)
    assert [r["delta"] for r in rows] == [tau, -tau, tau + step, -(tau + step)]
    assert [r["type"] for r in rows] == ["shared", "shared", "teacher", "student"]
    summary = das_summary(rows, cfg)
    assert (summary["n_shared"], summary["n_teacher"], summary["n_student"]) == (2, 1, 1)
    assert summary["score"] == 0.0


def test_filter_check_logprobs_drops_an_unusable_teacher_signal(tmp_path, tiny_lm_dir, tiny_lm_dir_other_vocab):
    """On (the default) the filter drops a sample whose teacher offsets run past its text; off, it is
    kept and the score stage quarantines it instead (the sentence table refuses such offsets)."""
    text = "<think>Add 3 and 4.</think> 7"
    good = {"offsets": [[0, 7], [7, 19], [19, 27], [27, len(text)]], "logprobs": [-0.1, -0.2, -0.3, -0.4],
            "logprob_mode": "raw"}
    bad = {**good, "offsets": [*good["offsets"][:3], [27, len(text) + 5]]}
    prompt = {"id": "p0", "domain": "other", "messages": [{"role": "user", "content": "q"}]}
    base = [f"teacher.model={tiny_lm_dir}", f"student.model={tiny_lm_dir_other_vocab}", *RELAXED]
    for name, flag in (("on", []), ("off", ["filter.check_logprobs=false"])):
        _write_samples(tmp_path / name, [prompt], [("p0", text), ("p0", text)])
        store = RunStore.open(tmp_path / name)
        # give the two samples their teacher signals (the writer above has none)
        rows = [{k: v for k, v in r.items() if k != REF} for r in store.read("sample", "pool-T0.6")]  # plain copies
        for old in store.stage_dir("sample").glob("pool-T0.6-*.*"):
            old.unlink()
        with store.writer("sample", "pool-T0.6") as w:
            for row, sig in zip(rows, (good, bad)):
                w.add({**row, "teacher": sig})
        cfg = load_config(None, [f"run_dir={tmp_path / name}", *base, *flag])
        funnel = run_filter(cfg)
        if name == "on":
            assert funnel["T0.6"] == {"in": 2, "dropped": {"logprobs": 1}, "out": 1}
            (rej,) = store.read("filter", "rejects")
            assert rej["id"] == "s1" and f"teacher.offsets[3] = [27, {len(text) + 5}] is outside the text" in rej["reason"]
        else:
            assert funnel["T0.6"] == {"in": 2, "dropped": {}, "out": 2}
            assert run_score(cfg)["T0.6"] == {"scored": 1, "rejected": 1, "new": 2}
            (rej,) = store.read("score", "rejects")
            assert rej["id"] == "s1" and rej["reason"].startswith("sample s1:")
