# Set-up and the two commands the README promises:
#   make demo   installs everything, then runs the offline Fashion-MNIST job end to end
#   make test   installs everything, then runs the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch and torchvision releases that pip finds on this machine kind's disk (no GPU needed).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
DEMO_DIR ?= runs/demo
# A demo run's name is its method, or <method>_crossfit for the crossfit predictor. In this
# order `make -j2` starts both caches first, then each run as soon as its cache and a core
# are free; uniform, which needs no cache, last.
DEMO_METHODS ?= bayesian_crossfit bayesian rho_loss uniform
# Runs side by side, each with its share of the cores: one small-batch torch process does not
# keep 2 cores busy, two single-threaded ones do (and two with default threads fight).
DEMO_JOBS ?= 2
DEMO_THREADS ?= $(shell n=$$(( $$(nproc) / $(DEMO_JOBS) )); echo $$(( n > 0 ? n : 1 )))
# The demo's budget: 8 minutes on 2 cores after the install (7 min 41 s from a fresh clone on
# 2026-12-04, the crossfit cache 6 of them on one core; the same machine kind took 16 minutes
# on 2026-12-03, its speed varies 2x between sessions): 10 of the config's 30 epochs,
# the EMA's accuracy (with recalibrated BN statistics, on 10,000 test images) every other
# epoch and not the raw weights' beside it (half of each evaluation). Training is the config's;
# `make demo DEMO_SET=` runs the config as it is.
DEMO_SET ?= train.epochs=10 eval.every=2 eval.other_weights=false
# Images for the zero-shot benchmark: 128 suit a CPU (ViT-B-32 runs ~15 img/s on 2 cores).
BENCH_ZS_IMAGES ?= 128

.PHONY: install test demo data lint bench results clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e ".[dev]"
	@touch $@

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Fashion-MNIST comes from the Debian package dataset-fashion-mnist.
data:
	@if ls $(FMNIST_DIR)/train-images-idx3-ubyte* >/dev/null 2>&1; then \
		echo "Fashion-MNIST found in $(FMNIST_DIR)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing the Debian package dataset-fashion-mnist"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "Fashion-MNIST is missing from $(FMNIST_DIR). Install it with:"; \
		echo "    sudo apt-get install dataset-fashion-mnist"; \
		echo "or put the four idx files in a folder and pass --set data.root=FOLDER"; \
		exit 1; \
	fi

# Caches and runs go through one `make -j`: a run starts as soon as its cache exists and a
# core is free (uniform needs none).
demo: install data
	@$(MAKE) --no-print-directory -j$(DEMO_JOBS) $(addprefix demo-run-,$(DEMO_METHODS))
	$(BIN)/bdsel report $(DEMO_DIR) --out $(DEMO_DIR)/report

# bayesian_crossfit -> crossfit; anything else -> holdout (the config's predictor)
demo_predictor = $(if $(findstring _crossfit,$(1)),crossfit,holdout)
demo_method = $(patsubst %_crossfit,%,$(1))
demo_needs_cache = $(filter bayesian rho_loss irreducible_loss,$(call demo_method,$(1)))
# Each job's lines go out prefixed with its name (a pipe: plain lines, no live bars to mix).
demo_log = 2>&1 | sed -u 's/^/[$(1)] /'

.PHONY: demo-cache-% demo-run-%
.SECONDEXPANSION:
demo-cache-%:
	@set -o pipefail; OMP_NUM_THREADS=$(DEMO_THREADS) $(BIN)/bdsel cache-zeroshot \
		--config fashion_mnist --set zeroshot.predictor=$* $(call demo_log,$*)
demo-run-%: $$(if $$(call demo_needs_cache,$$*),demo-cache-$$(call demo_predictor,$$*))
	@set -o pipefail; OMP_NUM_THREADS=$(DEMO_THREADS) $(BIN)/bdsel train --config fashion_mnist \
		--set select.method=$(call demo_method,$*) --set zeroshot.predictor=$(call demo_predictor,$*) \
		$(addprefix --set ,$(DEMO_SET)) --run-dir $(DEMO_DIR)/$* --overwrite $(call demo_log,$*)

# The evidence (docs/results/): the Bayesian score's settings tuned on a validation split (16
# runs of 30 epochs, two at a time: 43 minutes on 2 CPU cores), then the long table, every
# method x 3 seeds x 100 epochs at 20% noise and four rows at 0% and 40% (10-25 core-minutes
# a run, one run per core), then what each predictor gives mislabeled points, then the peers
# (InfoBatch, cleanlab then training, full data; benchmarks/peers.py), then bayesian without a
# clean hold-out set (the crossfit predictor against the hold-out one at 20% and 40% symmetric
# and 30% pairflip noise; benchmarks/holdout_free.py). All resume: a finished run is never
# rerun.
# The older 15-epoch table: benchmarks/fashion_sweep.py --noise 0,0.2,0.4 --seeds 0,1,2.
RESULTS_DIR ?= docs/results
results: install data
	$(BIN)/python benchmarks/fashion_sweep.py --out $(RESULTS_DIR) --phase cache
	$(BIN)/python benchmarks/fashion_sweep.py --out $(RESULTS_DIR) --phase tune --jobs $(DEMO_JOBS)
	$(BIN)/python benchmarks/offline_evidence.py --out $(RESULTS_DIR)/offline --jobs $(DEMO_JOBS)
	$(BIN)/python benchmarks/predictor_noise.py --out $(RESULTS_DIR)/offline/predictor_noise.md
	$(BIN)/python benchmarks/peers.py --out $(RESULTS_DIR)/peers --jobs $(DEMO_JOBS)
	$(BIN)/python benchmarks/holdout_free.py --out $(RESULTS_DIR)/holdout_free --jobs $(DEMO_JOBS)

# Per-step cost of each method side by side, and the zero-shot cache against bare CLIP.
bench: install
	$(BIN)/python benchmarks/bench_step.py --model small_cnn --size 28 --channels 1
	$(BIN)/python benchmarks/bench_step.py --model resnet18_cifar --steps 5
	$(BIN)/python benchmarks/bench_step.py --model resnet18_cifar --classes 1000 --steps 3 --methods uniform,bayesian
	$(BIN)/python benchmarks/bench_zeroshot.py --n-images $(BENCH_ZS_IMAGES) --batch-size 64

clean:
	rm -rf $(VENV) runs cache report
