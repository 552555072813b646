"""Every config key is exercised by some test, or is in the commented allow-list below; and every key
is read by the code (a key that nothing reads is a setting that silently does nothing).

"Exercised" is decided from the test sources, the way a reviewer would grep for it: the dotted key
(or its last two or more parts, e.g. ``repetition.ngram_n`` for both ``filter.`` and ``mix.``)
appears in a test, or a test that names the key's section (its model class, ``"section"`` or
``section:``) sets the key (``key=``, ``"key":`` or ``key:``). The second half of this file holds
the tests written for keys that had none (``filter.check_logprobs`` is in
tests/stages/test_stage_values.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from dasd.config import RunConfig, load_config

ROOT = Path(__file__).resolve().parents[1]

# Keys no test exercises, each with the reason. Keep it short: a key leaves the list when a test
# exercises it (the test below fails on an entry that is no longer a key).
ALLOWED = {
    # Engine options of backends that cannot run here or whose effect is on a remote server's side.
    **{f"{side}.{k}": "vLLM is not installable on CPU; the GPU check (benchmarks/gpu_check.py) runs it"
       for side in ("teacher", "student")
       for k in ("vllm.tensor_parallel_size", "vllm.data_parallel_size", "vllm.logprobs_mode", "vllm.extra")},
    **{f"{side}.ray.num_gpus": "Ray GPU placement: no GPU here (the CPU replicas are tested)" for side in ("teacher", "student")},
    **{f"{side}.trust_remote_code": "passed to from_pretrained as is; no local model ships remote code" for side in ("teacher", "student")},
    **{f"{side}.openai.{k}": "openai engine request knob; tests/engines_remote run the defaults against dasd's own server"
       for side in ("teacher", "student") for k in ("api_key_env", "top_logprobs", "token_ids", "extra_body")},
    # Sampling knobs of the mix stage's two engine calls (stages/mix.py builds the GenerateRequests).
    "mix.student_temperature": "reaches GenerateRequest in stages/mix.py; no test compares two temperatures",
    "mix.student_top_p": "as mix.student_temperature",
    "mix.teacher_temperature": "as mix.student_temperature",
    "mix.teacher_top_p": "as mix.student_temperature",
    # The analysis section: rules/analysis.py is being reworked on its own branch, with its tests.
    "analyze.tau_boost": "rules/analysis.classify4 is tested with its argument, not through the section",
    "analyze.bins": "as analyze.tau_boost (position_profile's bins)",
    "analyze.weight": "as analyze.tau_boost",
    "analyze.batch": "engine batch size of `dasd analyze`; no effect on results",
    "analyze.boosted": "tested through its base class, AnalysisConfig(boosted=...), in tests/test_analysis.py",
    "analyze.index_bins": "tested through AnalysisConfig(index_bins=...) in tests/test_analysis.py",
    # Trainer settings that reach torch directly (the trainer has its own tests and its own branch).
    "train.betas": "passed to torch.optim.AdamW by train/schedule.make_optimizer",
    "train.eps": "as train.betas",
    "train.weight_decay": "as train.betas",
    "train.clip": "passed to accelerate's clip_grad_norm_",
    "train.gradient_checkpointing": "a memory setting: the same loss either way",
    "train.attn_implementation": "passed to from_pretrained; only 'sdpa'/'eager' run on CPU",
    "train.loss_chunk": "LossModel's chunk is tested directly (tests/train/test_loss.py)",
}


def config_keys(model: type[BaseModel] = RunConfig, prefix: str = ""):
    """``(dotted key, owning model)`` for every leaf key, as docs/config.md lists them."""
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        ann = field.annotation
        sub = next((a for a in (ann, *getattr(ann, "__args__", ())) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if sub is not None and "list" not in str(ann):
            yield from config_keys(sub, key + ".")
        else:
            yield key, model


def _texts(folder: Path) -> list[str]:
    return [p.read_text(encoding="utf-8") for p in sorted(folder.rglob("*.py"))]


def exercised(key: str, model: type[BaseModel], texts: list[str]) -> bool:
    parts = key.split(".")
    leaf = parts[-1]
    for n in range(min(2, len(parts)), len(parts) + 1):
        if any(".".join(parts[-n:]) in t for t in texts):
            return True
    sets = re.compile(rf"""(\b{leaf}=|["']{leaf}["']\s*:|^\s*{leaf}:)""", re.M)
    owners = [model.__name__] + ([f'"{parts[-2]}"', f"'{parts[-2]}'", f"{parts[-2]}:"] if len(parts) > 1 else [])
    return any(any(o in t for o in owners) and sets.search(t) for t in texts)


def test_every_config_key_is_exercised_by_a_test_or_allowed():
    keys = list(config_keys())
    names = {k for k, _ in keys}
    assert len(keys) > 150
    # this file's allow-list names keys without exercising them: left out of the search
    texts = [re.sub(r"\nALLOWED = \{.*?\n\}\n", "\n", t, flags=re.S) for t in _texts(ROOT / "tests")]
    missing = sorted(k for k, m in keys if not exercised(k, m, texts) and k not in ALLOWED)
    assert missing == [], f"config keys no test exercises (write a test, or allow-list with a reason): {missing}"
    stale = sorted(set(ALLOWED) - names)
    assert stale == [], f"allow-listed keys that are not config keys: {stale}"


def test_every_config_key_is_read_by_the_code():
    """A key nothing reads does nothing (``data.toy.n_test`` did: the toy benchmark's size is
    ``eval.benchmarks[].limit``). Read = ``.key``, ``"key"`` or ``key=`` anywhere in src/dasd
    other than the key's own ``Field`` declaration."""
    src = _texts(ROOT / "src" / "dasd")
    unread = []
    for key, _ in config_keys():
        leaf = key.rsplit(".", 1)[-1]
        use = re.compile(rf"""(\.{leaf}\b|["']{leaf}["']|\b{leaf}=)""")
        if not any(use.search(re.sub(rf"^\s*{leaf}\s*:.*Field\(.*$", "", t, flags=re.M)) for t in src):
            unread.append(key)
    assert unread == []


# -- tests for keys that had none ----------------------------------------------------------------


@pytest.mark.parametrize("key,value,text", [
    # each text passes the default thresholds and fails once the key is changed
    ("repetition.paragraph_min_chars", 10, "<think>" + "Short para here.\n\n" * 4 + "ok</think> x"),
    ("repetition.sentence_min_chars", 10, "<think>" + "Add the two digits. " * 6 + "</think> x"),
    ("repetition.char_unit_max", 30, "<think>" + "abcdefghij0123456789ABCDEFGHIJ" * 12 + "</think> x"),
    ("repetition.char_min_repeats", 3, "<think>ok " + "xyz" * 5 + " and more text to read</think> x"),
    ("repetition.char_min_chars", 20, "<think>ok " + "-" * 30 + " done</think> x"),
])
@pytest.mark.parametrize("section", ["filter", "mix"])
def test_repetition_thresholds_reach_their_section(section, key, value, text):
    from dasd.rules.mixing import continuation_verdict
    from dasd.text.filters import apply_filters

    def verdict(cfg) -> str:
        if section == "filter":
            fc = cfg.filter.model_copy(update={"max_student_tokens": None})
            _, drop = apply_filters({"id": "s", "text": text, "finish_reason": "stop"}, fc)
            return drop.rule if drop else "kept"
        # mix: the same text as prefix + continuation of a question without a reference answer
        cut = text.index("</think>") // 2
        reason, _ = continuation_verdict({"id": "q", "messages": []}, text[:cut], text[cut:], "stop", cfg.mix, None)
        return reason

    extra = ["mix.require_structure=false"] if section == "mix" else []
    if key == "repetition.char_min_repeats":  # the run must also be long enough for char_min_chars
        extra.append(f"{section}.repetition.char_min_chars=10")
    assert verdict(load_config(None, extra)) == "kept"
    changed = verdict(load_config(None, [*extra, f"{section}.{key}={value}"]))
    assert changed == ("repetition" if section == "filter" else "repetitive")


def test_teacher_think_opener_decides_what_the_teacher_continues():
    from dasd.rules.mixing import teacher_context

    prefix = "<think>\nFirst, 3 + 4 = 7."
    harmony = "<|start|>assistant<|channel|>analysis<|message|>"
    default = load_config(None, []).mix
    assert teacher_context(harmony, prefix, default.teacher_think_opener) == harmony + prefix
    cfg = load_config(None, [f"mix.teacher_think_opener={json.dumps('<|channel|>analysis<|message|>')}"]).mix
    assert cfg.teacher_think_opener == "<|channel|>analysis<|message|>"
    assert teacher_context(harmony, prefix, cfg.teacher_think_opener) == harmony + "First, 3 + 4 = 7."
    # a template that opens <think> itself, with the default opener
    assert teacher_context("<|im_start|>assistant\n<think>\n", prefix, default.teacher_think_opener) == \
        "<|im_start|>assistant\n<think>\nFirst, 3 + 4 = 7."


def test_train_liger_reaches_the_loss(tmp_path, tiny_lm_dir):
    """``train.liger=on`` makes the trainer build Liger's fused loss: without liger-kernel that is an
    import error naming it; ``off`` trains with the chunked loss."""
    from dasd.train.loss import liger_available
    from dasd.train.trainer import run_training

    if liger_available():
        pytest.skip("liger-kernel is installed here: 'on' would train")
    examples = [{"id": f"e{i}", "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a b c."}],
                 "prefix_chars": 0, "source": "t"} for i in range(2)]
    base = [f"train.base_model={tiny_lm_dir}", "train.context=64", "train.packing=false", "train.micro_batch=1",
            "train.report_to=none", 'train.stages=[{"name": "s1", "data": "pool", "init": "base", "max_steps": 1}]']
    on = load_config(None, [*base, "train.liger=on"]).train
    with pytest.raises(ImportError, match="liger_kernel"):
        run_training(on, tmp_path / "on", {"pool": examples})
    off = load_config(None, [*base, "train.liger=off"]).train
    assert run_training(off, tmp_path / "off", {"pool": examples})[0]["steps"] == 1


def test_import_model_and_top_p_are_recorded_on_the_samples(tmp_path):
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "q"},
                                             {"role": "assistant", "content": "<think>a</think>b"}]}) + "\n", encoding="utf-8")
    from dasd.stages.import_ import run_import
    from dasd.store import RunStore

    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"import.source={data}", "import.format=chat",
                             "import.model=my-teacher", "import.top_p=0.95"])
    run_import(cfg)
    (s,) = RunStore.open(tmp_path / "run").read("sample", "pool-T1")
    assert (s["model"], s["top_p"]) == ("my-teacher", 0.95)
