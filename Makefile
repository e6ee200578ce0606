# Every target creates .venv and installs the project (pinned in pyproject.toml) when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-all demo bench clean-venv data

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The default suite (under 15 minutes on 2 CPU cores). Slow tests: `make test-all`.
test: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)

# Download, verify and prepare a dataset: `make data DATASET=horse2zebra` (see `python -m qsattn data --list`).
DATASET ?= horse2zebra
data: $(STAMP)
	$(PY) -m qsattn data $(DATASET)

# Time and peak memory of training steps and of the QS sampler, naive vs chunked (README, "Performance").
# On a GPU: `make bench BENCH_ARGS="--device cuda --sizes 256,512 --dtype fp32,bf16"`.
BENCH_ARGS ?= --methods cut,fastcut,qsattn-global,qsattn-local,qsattn-global-local --sizes 128,256 --steps 5 --warmup 2 --impl naive,chunked --device auto
bench: $(STAMP)
	$(PY) -m qsattn bench $(BENCH_ARGS)
