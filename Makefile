# One entry point for every stage. DATASET picks the dataset (and its profile in configs/).
DATASET ?= toy
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup data test test-all bench lint clean

## setup: create .venv with $(PYTHON) and install the pinned requirements (once; again when they change)
setup: $(STAMP)

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $(STAMP)

## data: generate (toy, flash-mnist) or fetch (ucf101, hmdb51, kinetics400) the dataset into data/$(DATASET)
data: $(STAMP)
	$(PY) cli.py data get $(DATASET) --out data/$(DATASET)

## test: the CPU test suite (fast cases; `make test-all` adds the heavy ones)
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest -q

## bench: every benchmark, JSON on stdout
bench: $(STAMP)
	$(PY) bench/decode.py --json

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf features runs bench/out .pytest_cache .ruff_cache
