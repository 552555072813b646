"""A dasd export read by LLaMA-Factory 0.9.5 itself: its argument parser and its data loading (slow).

LLaMA-Factory's pins cannot sit beside dasd's, so it runs in its own environment, named by
DASD_LLAMAFACTORY_PYTHON (built from requirements-llamafactory.txt; the test is skipped without it).
The export's stage YAML goes through ``get_train_args`` (which refuses unknown keys) and
``get_dataset`` with the ``chatml`` template, which renders exactly the toy student's chat template:
unpacked, every example's token ids must equal dasd's own encoding; packed, nothing may be truncated.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from dasd.runs import resolve_model
from dasd.train.data import load_examples, prepare
from dasd.train.encode import encode_batch
from dasd.train.export_llamafactory import export
from dasd.train.recipes import paper_recipe

from .conftest import make_pool

LF_PYTHON = os.environ.get("DASD_LLAMAFACTORY_PYTHON", "")

LOAD = r'''
import json, sys, types
import transformers.training_args  # noqa: F401  (finds torchaudio absent before the stub below)
sys.modules["torchaudio"] = types.ModuleType("torchaudio")  # imported by LLaMA-Factory, unused for text
import yaml
from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
from llamafactory.hparams import get_train_args
from llamafactory.model import load_tokenizer

args = yaml.safe_load(open(sys.argv[1]))
args.update(json.loads(sys.argv[3]))
model_args, data_args, training_args, finetuning_args, _ = get_train_args(args)
tm = load_tokenizer(model_args)
template = get_template_and_fix_tokenizer(tm["tokenizer"], data_args)
ds = get_dataset(template, model_args, data_args, training_args, stage="sft", **tm)["train_dataset"]
json.dump({
    "input_ids": [list(map(int, r["input_ids"])) for r in ds],
    "attention_mask": [list(map(int, r["attention_mask"])) for r in ds],
    "parsed": {"model": model_args.model_name_or_path, "disable_gc": model_args.disable_gradient_checkpointing,
               "lr": training_args.learning_rate, "scheduler": getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type),
               "min_lr": training_args.lr_scheduler_kwargs.get("min_lr"), "warmup_ratio": training_args.warmup_ratio,
               "grad_accum": training_args.gradient_accumulation_steps, "epochs": training_args.num_train_epochs,
               "finetuning": finetuning_args.finetuning_type, "cutoff_len": data_args.cutoff_len},
}, open(sys.argv[2], "w"))
'''


def _lf_ready() -> bool:
    if not LF_PYTHON or not os.access(LF_PYTHON, os.X_OK):
        return False
    return subprocess.run([LF_PYTHON, "-c", "import llamafactory"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _lf_ready(), reason="set DASD_LLAMAFACTORY_PYTHON to a Python with llamafactory==0.9.5 "
                    "(requirements-llamafactory.txt)")
def test_llamafactory_reads_the_export_as_dasd_trains_it(tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model("toy:student"))
    low = make_pool(12)
    items = load_examples("das_low", {"das_low": low})
    lengths = [len(e[0]) for e in encode_batch(tok, [ex for _, ex in items])]
    context = sorted(lengths)[8]  # an example of exactly `context` tokens is kept, longer ones are left out
    cfg = paper_recipe(base_model="toy:student", context=context, bf16=False, gradient_checkpointing=False,
                       attn_implementation="sdpa", global_batch=4)
    out = tmp_path / "export"
    summary = export(cfg, out, {"das_low": low, "das_high": make_pool(4, seed=1)}, template="chatml", gpus=2,
                     deepspeed="none", tokenizer=tok)
    stage = summary["stages"][0]
    kept = [ex for (_, ex), n in zip(items, lengths) if n <= context]
    assert stage["examples"] == len(kept) and stage["dropped_over_context"] == len(items) - len(kept) > 0

    def load(**override) -> dict:
        result = tmp_path / f"lf-{len(override)}.json"
        over = {"output_dir": str(tmp_path / "saves"), "preprocessing_num_workers": None, **override}
        proc = subprocess.run([LF_PYTHON, "-c", LOAD, stage["yaml"], str(result), json.dumps(over)], cwd=tmp_path,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}, capture_output=True,
                              text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-4000:]
        return json.loads(result.read_text())

    packed = load()  # the YAML as exported
    p = packed["parsed"]
    y = yaml.safe_load(Path(stage["yaml"]).read_text())
    assert p["model"] == resolve_model("toy:student") and p["finetuning"] == "full"
    assert (p["lr"], p["min_lr"], p["warmup_ratio"], p["epochs"]) == (5e-5, 1e-5, 0.1, 6.0)
    assert p["scheduler"] == "cosine_with_min_lr" and p["grad_accum"] == 2 == y["gradient_accumulation_steps"]
    assert p["disable_gc"] is True and p["cutoff_len"] == context  # LLaMA-Factory packs cutoff_len - 1
    ours = prepare(tok, [(f"x{i}", ex) for i, ex in enumerate(kept)], context, False, True)
    real = [sum(1 for m in mask if m) for mask in packed["attention_mask"]]
    assert sum(real) == ours.n_tokens  # every kept token is there: nothing truncated
    assert max(real) <= context and all(len(r) == context + 1 for r in packed["input_ids"])

    plain = load(packing=False, neat_packing=False)
    want = [list(map(int, e[0])) for e in encode_batch(tok, kept)]
    assert plain["input_ids"] == want  # LLaMA-Factory's tokens of each example are exactly dasd's
