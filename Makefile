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

.PHONY: demo preprocess-demo test test-heavy venv benchmark-preprocess benchmark-scann benchmark-ml1m notebook clean

venv: $(STAMP)

$(STAMP): requirements.lock setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-deps -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

# The TFX pipeline (LocalDagRunner) on the embedded synthetic log: preprocessing -> statistics,
# schema, validation -> T2Diff and the mean-pooled two-tower -> full-corpus evaluation with 95% CIs
# -> push of the blessed model with its top-K and ScaNN indexes. Prints the metrics table.
demo: $(STAMP)
	$(BIN)/t2diff run --model t2diff --baseline-model mean_pool_two_tower --epochs 3 \
		--output-root outputs/demo

preprocess-demo: $(STAMP)
	$(BIN)/t2diff preprocess --source synthetic --output outputs/preprocess-demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-heavy: $(STAMP)
	$(BIN)/python -m pytest -q -m heavy

benchmark-preprocess: $(STAMP)
	$(BIN)/python benchmarks/preprocess_ml1m.py --data-dir $(ML1M)

benchmark-scann: $(STAMP)
	$(BIN)/python benchmarks/scann_index.py

benchmark-ml1m: $(STAMP)
	$(BIN)/python benchmarks/ml1m.py --data-dir $(ML1M) --preset table2

# Re-executes the ablation notebook in place on every benchmarks/results/ml1m*.json.
notebook: $(STAMP)
	cd notebooks && ../$(BIN)/jupyter-execute --inplace ablations.ipynb

clean:
	rm -rf outputs
