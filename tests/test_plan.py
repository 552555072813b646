"""`dasd plan`: per-stage requests, tokens, disk and GPU-hours from a config and stated assumptions."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from dasd.config import load_config
from dasd.errors import ConfigError
from dasd.plan import Assumptions, format_plan, parse_counts, parse_named_counts, plan

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "configs" / "dasd-4b.yaml"
# The assumptions of the table in docs/scale-out.md (benchmark sizes; the paper's stage sizes are the
# config's sample.prompts_per_temperature).
DOC_ASSUMPTIONS = Assumptions(eval_problems={"AIME24": 30, "AIME25": 30, "LCB-v6": 175, "GPQA-D": 198})


def small(tmp_path, teacher_mode="raw", **over):
    cfg = load_config(PAPER, [f"teacher.openai.logprob_mode={teacher_mode}", "sample.k=2", "select.m=1",
                              "mix.n_questions=4", *[f"{k}={v}" for k, v in over.items()]])
    a = Assumptions(prompts=(10, 20), prompt_tokens=10.0, response_tokens=100.0, keep=0.5, mix_cutoff=0.5,
                    teacher_decode_tps=2.0, teacher_prefill_tps=4.0, student_prefill_tps=8.0, student_decode_tps=5.0,
                    train_tps=10.0, sample_bytes_per_token=50.0, filter_bytes_per_token=0.5, score_bytes_per_token=30.0, text_bytes_per_token=4.0,
                    eval_problems={"AIME24": 3, "AIME25": 3, "LCB-v6": 2, "GPQA-D": 1}, student_params=1e9)
    return cfg, a


def by_stage(rows):
    return {r.stage: r for r in rows}


def test_sampling_filtering_scoring_by_hand(tmp_path):
    cfg, a = small(tmp_path)
    rows = by_stage(plan(cfg, a))
    s6, s1 = rows["sample T0.6"], rows["sample T1"]
    assert (s6.requests, s1.requests) == (20, 40)  # questions x k, one request per sample
    assert s6.tokens == 20 * (10 + 100)
    assert s6.gpu_hours == pytest.approx((20 * 100 / 2 + 20 * 10 / 4) / 3600)
    assert s6.disk_gb == pytest.approx(20 * 100 * 50 * 1e-9)
    assert rows["filter"].gpu_hours == 0 and rows["filter"].disk_gb == pytest.approx(30 * 100 * 0.5 * 1e-9)
    sc = rows["score T1"]
    assert sc.requests == 20 and sc.tokens == 20 * 110  # kept = 40 x 0.5
    assert sc.gpu_hours == pytest.approx(20 * 110 / 8 / 3600)
    assert sc.disk_gb == pytest.approx(20 * 100 * 30 * 1e-9)  # references and the student signal, not a copy
    assert "rescore T1" not in rows  # raw teacher log-probs are kept as they are
    assert "T0.6 10, T1 20" in rows["select"].note  # m=1 per question, at most the kept ones


def test_tempered_teacher_logprobs_add_a_rescore(tmp_path):
    cfg, a = small(tmp_path, teacher_mode="auto")  # vLLM does not announce its mode: auto means processed
    rows = by_stage(plan(cfg, a))
    re6 = rows["rescore T0.6"]
    assert re6.engine == "teacher" and re6.requests == 10
    assert re6.gpu_hours == pytest.approx(10 * 110 / 4 / 3600)


def test_training_and_eval_rows(tmp_path):
    cfg, a = small(tmp_path, **{"train.context": 1000, "train.global_batch": 2, "train.epochs": 3,
                                "train.save_every": 1, "train.keep_checkpoints": 2, "train.bf16": True})
    rows = by_stage(plan(cfg, a))
    low = rows["train stage1_low"]
    # 10 examples x 110 tokens in sequences of 950 tokens -> 2 sequences -> 1 step per epoch of 2 x 1000
    assert "3 steps" in low.note and low.tokens == 3 * 2 * 950
    assert low.gpu_hours == pytest.approx(3 * 2 * 950 / 10 / 3600)
    # final bf16 weights, 2 resumable checkpoints of 16 bytes a parameter, the token cache (int32 ids + labels)
    assert low.disk_gb == pytest.approx((1e9 * 2 + 2 * 1e9 * 16 + 10 * 110 * 8) * 1e-9)
    mixed = rows["train stage3_mixed"]
    # mix: 4 questions, half cut off, half of those kept -> 1 mixed example, and stage 3 trains on
    # mixed+replay: + round(2.5974 x 1) = 3 replayed stage-2 examples -> 4 examples
    assert "4 examples" in mixed.note
    ev = rows["eval stage2_high"]
    assert ev.requests == (3 + 3 + 2 + 1) * 64  # the paper protocol: 64 samples per problem
    assert ev.tokens == pytest.approx(ev.requests * 110)
    assert ev.gpu_hours == pytest.approx(ev.tokens / 5 / 3600)


def test_prompt_counts_from_the_prompts_file(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join('{"id": "%d", "messages": [{"role": "user", "content": "q"}]}\n' % i for i in range(7)))
    cfg, a = small(tmp_path, **{"data.prompts": str(prompts)})
    a = replace(a, prompts=None)
    assert by_stage(plan(cfg, a))["sample T0.6"].requests == 7 * 2
    cfg_missing = load_config(PAPER, [f"data.prompts={tmp_path / 'none.jsonl'}", "sample.prompts_per_temperature=null"])
    with pytest.raises(ConfigError, match="not a file to count; pass --prompts"):
        plan(cfg_missing, Assumptions(eval_problems=DOC_ASSUMPTIONS.eval_problems))
    with pytest.raises(ConfigError, match="3 prompt counts for 2 temperatures"):
        plan(cfg, Assumptions(prompts=(1, 2, 3)))
    with pytest.raises(ConfigError, match="--eval-problems AIME24=N"):
        plan(cfg, Assumptions(prompts=(1,)))


def test_the_paper_config_scores_through_vllm_with_raw_logprobs():
    cfg = load_config(PAPER)
    assert cfg.teacher.kind == cfg.student.kind == "openai"
    assert cfg.teacher.openai.logprob_mode == cfg.student.openai.logprob_mode == "raw"
    assert cfg.student.openai.score_api == "prompt_logprobs" and cfg.student.tokenizer
    rows = plan(cfg, DOC_ASSUMPTIONS)
    assert not any(r.stage.startswith("rescore") for r in rows)


def test_docs_show_the_plan_of_the_paper_config():
    text = format_plan(plan(load_config(PAPER), DOC_ASSUMPTIONS), DOC_ASSUMPTIONS)
    total = text.splitlines()[[i for i, line in enumerate(text.splitlines()) if line.startswith("total")][0]]
    rows = plan(load_config(PAPER), DOC_ASSUMPTIONS)
    assert re.search(r"\b%s\s*$" % f"{sum(r.gpu_hours for r in rows):,.0f}", total)
    doc = (ROOT / "docs" / "scale-out.md").read_text()
    assert text in doc, "docs/scale-out.md: the plan table is out of date; paste format_plan's output"


def test_prompt_counts_default_to_the_configs_prompts_per_temperature(tmp_path):
    cfg = load_config(PAPER)
    assert cfg.sample.prompts_per_temperature == [105_000, 330_000]  # the paper's stage sizes
    rows = by_stage(plan(cfg, DOC_ASSUMPTIONS))  # data/prompts.jsonl is not here: the counts as they are
    assert (rows["sample T0.6"].requests, rows["sample T1"].requests) == (105_000 * 4, 330_000 * 4)
    assert "T0.6 105,000, T1 330,000" in rows["select"].note
    assert rows["train stage1_low"].note.startswith("105,000 examples")
    # --prompts still overrides, one count for all or one per temperature
    rows = by_stage(plan(cfg, replace(DOC_ASSUMPTIONS, prompts=(7,))))
    assert (rows["sample T0.6"].requests, rows["sample T1"].requests) == (28, 28)
    # counted prompts cap the config's counts, as `dasd sample` asks at most every prompt
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join('{"id": "%d", "messages": [{"role": "user", "content": "q"}]}\n' % i for i in range(7)))
    cfg = load_config(PAPER, [f"data.prompts={prompts}", "sample.prompts_per_temperature=[3, 100]"])
    rows = by_stage(plan(cfg, DOC_ASSUMPTIONS))
    assert (rows["sample T0.6"].requests, rows["sample T1"].requests) == (3 * 4, 7 * 4)
    # the largest pool holds every question a smaller one holds: mix draws from 7 questions
    assert rows["mix rollouts"].requests == 7
    cfg = load_config(ROOT / "configs" / "demo.yaml", ["sample.prompts_per_temperature=[60, 200]", "data.limit=150"])
    rows = by_stage(plan(cfg))
    assert (rows["sample T0.6"].requests, rows["sample T1"].requests) == (60 * cfg.sample.k, 150 * cfg.sample.k)


def test_option_parsers():
    assert parse_counts("105000,330_000") == (105_000, 330_000) and parse_counts("7") == (7,)
    assert parse_named_counts("AIME24=30,GPQA-D=198") == {"AIME24": 30, "GPQA-D": 198}
    for bad in ("", "1,x", "0"):
        with pytest.raises(ConfigError, match="--prompts"):
            parse_counts(bad)
    for bad in ("AIME24", "AIME24=x", "=3", "A=0"):
        with pytest.raises(ConfigError, match="--eval-problems"):
            parse_named_counts(bad)


def test_demo_config_counts_toy_prompts_and_needs_no_assumption():
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    rows = by_stage(plan(cfg))
    n = cfg.data.toy.n_train * cfg.sample.k
    assert [rows[f"sample T{t:g}"].requests for t in cfg.sample.temperatures] == [n] * len(cfg.sample.temperatures)
    assert rows["rescore T0.6"] if cfg.teacher.kind == "openai" else not any(r.startswith("rescore") for r in rows)
    assert rows["eval student"].requests == 50 * cfg.eval.protocol.n  # the toy benchmark's limit


def test_student_parameters_are_counted_from_a_local_model():
    from transformers import AutoModelForCausalLM

    from dasd.plan import count_params
    from dasd.runs import resolve_model

    model = AutoModelForCausalLM.from_pretrained(resolve_model("toy:student"))
    assert count_params("toy:student") == sum(p.numel() for p in model.parameters())
    assert count_params("Qwen/Qwen3-4B-Instruct-2507") is None  # a hub name: the 4e9 default applies


def test_mix_draws_each_question_once_though_every_pool_holds_it():
    # the demo samples its 200 toy prompts at both temperatures; dasd mix draws one response per
    # question (draw_questions), so mix.n_questions=1000 means 200 rollouts, not 400 (one per pool)
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    assert cfg.mix.n_questions >= 2 * cfg.data.toy.n_train
    rows = by_stage(plan(cfg))
    assert rows["mix rollouts"].requests == cfg.data.toy.n_train
    assert rows["mix continue"].requests == round(cfg.data.toy.n_train * Assumptions().mix_cutoff)


def test_a_bad_assumption_is_named_by_the_option_that_set_it():
    # "plan: keep and packing_efficiency must be in (0, 1], mix_cutoff in [0, 1]" for `--keep 2`: neither
    # the option nor the value; and `--mix-cutoff 0` was refused as "mix_cutoff must be > 0" though [0, 1]
    with pytest.raises(ConfigError, match=r"^plan: --keep must be in \(0, 1\], got 2 \(fraction of teacher responses"):
        Assumptions(keep=2.0)
    with pytest.raises(ConfigError, match=r"^plan: --mix-cutoff must be in \[0, 1\], got 1.5 \("):
        Assumptions(mix_cutoff=1.5)
    with pytest.raises(ConfigError, match=r"^plan: --train-tps must be > 0, got 0 \(training tokens per second"):
        Assumptions(train_tps=0.0)
    with pytest.raises(ConfigError, match=r"^plan: packing_efficiency must be in \(0, 1\], got 1.5 \("):
        Assumptions(packing_efficiency=1.5)  # no option sets it: its field name
    with pytest.raises(ConfigError, match=r"^plan: --prompts: 3 prompt counts for 2 temperatures \[0.6, 1.0\] "
                                          r"\(sample.temperatures\); give one count for all, or one per temperature$"):
        plan(load_config(ROOT / "configs" / "demo.yaml"), Assumptions(prompts=(1, 2, 3)))
    rows = by_stage(plan(load_config(ROOT / "configs" / "demo.yaml"), Assumptions(mix_cutoff=0.0)))
    assert rows["mix continue"].requests == 0 and "train stage3_mixed" not in rows  # no cut-off: no mixed data


def test_the_assumptions_errors_name_as_options_are_the_options_of_dasd_plan():
    import typer

    from dasd.cli import app
    from dasd.plan import CLI_OPTIONS, option

    command = typer.main.get_command(app).commands["plan"]
    opts = {o for p in command.params if p.param_type_name == "option" for o in p.opts}
    assert {option(n) for n in CLI_OPTIONS} <= opts
    assert {o for o in opts if o.startswith("--") and o != "--config"} == {option(n) for n in CLI_OPTIONS}
