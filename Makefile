# Two commands on a fresh Debian 12 / Python 3.11 machine:
#   make demo   - the main job on the embedded synthetic data
#   make test   - the test suite (what CI runs)
# Both create .venv from requirements.lock when it is missing or older than the lock.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ML1M ?= ../shared/data/ml-1m
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: demo test test-heavy venv benchmark-preprocess clean

venv: $(STAMP)

$(STAMP): requirements.lock setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-deps -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/t2diff preprocess --source synthetic --output outputs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-heavy: $(STAMP)
	$(BIN)/python -m pytest -q -m heavy

benchmark-preprocess: $(STAMP)
	$(BIN)/python benchmarks/preprocess_ml1m.py --data-dir $(ML1M)

clean:
	rm -rf outputs
