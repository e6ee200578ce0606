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

# The default suite (under 15 minutes on 2 CPU cores), then its float_paths tests again on another float
# path (ATEN_CPU_CAPABILITY=default: ATen's non-vectorised kernels), so that no test holds only for this
# CPU's rounding (docs/testing.md). Slow tests: `make test-all`.
test: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)
	ATEN_CPU_CAPABILITY=default $(PY) -m pytest -q -m "float_paths and not slow" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)

# The whole harness end to end on the built-in synthetic dataset, on the CPU (docs/demo.md): data, a sweep
# of CUT, FastCUT and QS-Attn (global) through submitit's local executor (a progress line every 30 s),
# translation, ground-truth scores, MLflow runs (experiment "demo" in mlruns.db), and the report
# (results/out/demo/), whose table (printed at the end) has the two scores to beat beside the methods.
demo: $(STAMP)
	$(PY) -m qsattn synthetic --out datasets/synthetic --demo
	$(PY) -m qsattn sweep experiments/demo.yaml --cluster local --max-parallel 3
	$(PY) -m qsattn report --experiment demo --out results/out/demo
	@echo "Runs: make mlflow-ui (experiment 'demo'); report: results/out/demo/table1.md and its plots."

# This project against the official code, run here (docs/faithfulness.md): `make parity OFFICIAL=PATH/query-selected-attention
# CUT=PATH/contrastive-unpaired-translation [PARITY_ARGS="--device cuda"]`. Prints one table, every row PASS.
OFFICIAL ?= .cache/official-qsattn
CUT ?= .cache/official-cut
PARITY_ARGS ?=
parity: $(STAMP)
	$(PY) -m qsattn parity --official $(OFFICIAL) $(if $(CUT),--cut $(CUT)) $(PARITY_ARGS)

.PHONY: parity

# Download, verify and prepare a dataset: `make data DATASET=horse2zebra` (see `python -m qsattn data --list`).
DATASET ?= horse2zebra
data: $(STAMP)
	$(PY) -m qsattn data $(DATASET)

# Time and peak memory of training steps (key_reuse never and always) and of the QS sampler, naive vs
# chunked, in interleaved repeats (medians), and the local steps' top ops (docs/performance.md).
# On a GPU: `make bench BENCH_ARGS="--device cuda --sizes 256,512 --dtype fp32,bf16"`.
BENCH_ARGS ?= --methods cut,fastcut,qsattn-global,qsattn-local,qsattn-global-local --sizes 128,256 --steps 3 --warmup 1 \
	--impl naive,chunked --key-reuse never,always --repeat 3 --profile --device auto
# Then the speed options (config "speed" keys), each alone and together against the plain step, labelled
# identical / rounding / changes numerics, and the data loader alone against the step (docs/performance.md,
# "Faster steps"). compile=* cases spend minutes compiling on a CPU. Packing several cells per GPU:
# `make bench BENCH_SPEED_ARGS="--tables packing --cells 1,2,4,8 --sizes 256 --device cuda"`.
BENCH_SPEED_ARGS ?= --tables options,loader --methods cut,qsattn-global --sizes 128 --steps 5 --warmup 2 --device auto
# The fast configuration (chunked sampler, key reuse, flush_denormal on the CPU) against CUT under the same
# options and against the official CUT step when .cache/official-cut is there: the targets of issue #17.
BENCH_WITH_OFFICIAL = --tables step,official --official $(CUT) --options defaults
BENCH_FAST_ARGS ?= $(if $(wildcard $(CUT)),$(BENCH_WITH_OFFICIAL),--tables step) --methods cut,qsattn-global,qsattn-local,qsattn-global-local --sizes 128,256 \
	--steps 1 --warmup 1 --impl chunked --key-reuse always --flush-denormal on --repeat 3 --device auto
bench: $(STAMP)
	$(PY) -m qsattn bench $(BENCH_ARGS)
	$(PY) -m qsattn bench $(BENCH_SPEED_ARGS)
	$(PY) -m qsattn bench $(BENCH_FAST_ARGS)

# --- results: Table 1 and plots (results/report.py) -------------------------------------------------------
# `make report EXPERIMENT=demo`: table (Markdown, CSV, LaTeX) and plots of a sweep's MLflow experiment,
# into results/out/<experiment>/. REPORT_ARGS passes more options (python -m qsattn report --help).
EXPERIMENT ?= table1
MLFLOW_URI ?= sqlite:///mlruns.db
report: $(STAMP)
	$(PY) -m qsattn report --experiment $(EXPERIMENT) --tracking-uri $(MLFLOW_URI) $(REPORT_ARGS)

# `make reproduce-table1`: print the bill (GPU-hours, checkpoint disk), fetch the datasets that can be
# fetched, run experiments/table1.yaml, write the report. CLUSTER=local (default: processes here) or
# CLUSTER=slurm PROFILE=<slurm/NAME.yaml> (waits for the job array). On CLUSTER=local without a GPU it
# stops at once, with the bill and the command for a cluster, unless ALLOW_CPU=1. Cityscapes' zips are
# fetched by hand (`python -m qsattn data --list`); until then its cells are left out. The sweep's
# preflight stops it before anything runs if a cell lacks its data or evaluation weights (docs/sweeps.md).
# FROM=released: the same table from the official released generators (checkpoints/released/, see
# eval/released.py), scored with the same protocol.
CLUSTER ?= local
PROFILE ?=
FROM ?= sweep
ALLOW_CPU ?=
TABLE1_SWEEP = $(PY) -m qsattn sweep experiments/table1.yaml --cluster $(CLUSTER) $(if $(PROFILE),--profile $(PROFILE)) \
	$(if $(filter 1 yes true,$(ALLOW_CPU)),--allow-cpu)
reproduce-table1: $(STAMP)
ifeq ($(FROM),released)
	$(PY) -m qsattn data horse2zebra
	$(PY) -m qsattn data cat2dog
	$(PY) -m qsattn data cityscapes || echo "Cityscapes is not prepared (see above); its generators are skipped."
	test -d checkpoints/released/horse2zebra_cut_pretrained || { mkdir -p checkpoints/released && \
		curl -fL -o checkpoints/released/pretrained_models.tar http://efrosgans.eecs.berkeley.edu/CUT/pretrained_models.tar && \
		tar -xf checkpoints/released/pretrained_models.tar -C checkpoints/released && rm checkpoints/released/pretrained_models.tar; }
	$(PY) -m results.released --out results/out/released
	$(PY) -m qsattn report --released results/out/released --out results/out/table1-released $(REPORT_ARGS)
else
	$(TABLE1_SWEEP) --estimate
	$(PY) -m qsattn data horse2zebra
	$(PY) -m qsattn data cat2dog
	if $(PY) -m qsattn data cityscapes; then only=""; else \
		echo "Cityscapes is not prepared (see above): its cells are left out of this sweep."; \
		only="--only dataset=horse2zebra --only dataset=cat2dog"; fi; \
	$(TABLE1_SWEEP) $(if $(filter slurm,$(CLUSTER)),--wait) $$only; rc=$$?; \
	if [ $$rc -eq 2 ]; then exit 2; fi  # stopped before running anything (preflight): no report
	$(PY) -m qsattn report --experiment table1 --tracking-uri $(MLFLOW_URI) $(REPORT_ARGS)
endif

# `make mlflow-ui`: the MLflow UI on the project's store (http://127.0.0.1:5000). It first prints, per
# experiment (one per sweep), the link to its comparison view: the runs with method, dataset, seed,
# variant and the primary metrics as columns (docs/tracking.md).
mlflow-ui: $(STAMP)
	$(PY) -m qsattn mlflow ui --tracking-uri $(MLFLOW_URI) --host 127.0.0.1 --port 5000

.PHONY: report reproduce-table1 mlflow-ui

# `make sweep GRID=experiments/demo.yaml [CLUSTER=local|slurm|debug] [PROFILE=local] [ONLY="method=cut"]`:
# run (or resume) every cell of a grid; `make sweep ... SWEEP_ARGS=--dry-run` lists them.
GRID ?= experiments/demo.yaml
sweep: $(STAMP)
	$(PY) -m qsattn sweep $(GRID) --cluster $(CLUSTER) $(if $(PROFILE),--profile $(PROFILE)) \
		$(foreach o,$(ONLY),--only $(o)) $(SWEEP_ARGS)
	$(PY) -m qsattn status $(GRID)

# The single-node SLURM cluster on this machine (needs root and: apt-get install -y slurm-wlm munge).
# Then: export SLURM_CONF=/tmp/qsattn-slurm/slurm.conf; make sweep CLUSTER=slurm PROFILE=local
slurm-up:
	slurm/local-cluster.sh start

slurm-down:
	slurm/local-cluster.sh stop

.PHONY: sweep slurm-up slurm-down

# `make check-released`: the self-check. Scores the released CUT and FastCUT generators on Horse->Zebra and
# Cat->Dog in both FID modes and compares each FID with its published reproduction
# (results/released_model_fids.csv, clean-fid's leaderboard); fails where one differs by more than 0.02 or
# cannot be scored. Needs the datasets (make data), checkpoints/released/ (make reproduce-table1 FROM=released
# fetches it) and the Inception files; EVAL_ARGS passes more `qsattn eval` options (--inception-weights ...).
EVAL_ARGS ?=
check-released: $(STAMP)
	$(PY) -m results.released --expect results/released_model_fids.csv --out results/out/released \
		$(if $(EVAL_ARGS),-- $(EVAL_ARGS))

.PHONY: check-released
