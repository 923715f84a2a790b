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
# The demo compares on the clock, predictor included: bayesian with the `probe` predictor (a
# cross-fitted linear probe on the pixels: no clean label, seconds to make), uniform, and
# full-data training (batch 128), each given the same DEMO_BUDGET seconds end to end
# (train.budget_s: the predictor's seconds, recorded in its cache, plus training's). In this
# order `make -j2` starts the probe cache and uniform first, then bayesian once the cache
# exists, then full-data on the core uniform frees.
DEMO_METHODS ?= bayesian uniform full
DEMO_PREDICTOR ?= probe
DEMO_BUDGET ?= 90
# Runs side by side, each with its share of the cores: one small-batch torch process does not
# keep 2 cores busy, two single-threaded ones do (and two with default threads fight).
DEMO_JOBS ?= 2
DEMO_THREADS ?= $(shell n=$$(( $$(nproc) / $(DEMO_JOBS) )); echo $$(( n > 0 ? n : 1 )))
# At most 100 epochs, stopped by the budget; the EMA's accuracy (recalibrated BN statistics,
# 10,000 test images) every other epoch and at the budget's epoch, not the raw weights' beside
# it. `make demo DEMO_SET=` runs the config as it is, on its epochs.
DEMO_SET ?= train.epochs=100 train.budget_s=$(DEMO_BUDGET) eval.every=2
# full-data training: every candidate of batches of 128, as in experiments/peers.py
DEMO_SET_full ?= select.n_candidates=128
# Images for the zero-shot benchmark: 128 suit a CPU (ViT-B-32 runs ~15 img/s on 2 cores).
BENCH_ZS_IMAGES ?= 128

.PHONY: install test demo data lint bench results figures clean

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

demo_needs_cache = $(filter bayesian rho_loss irreducible_loss,$(1))
# Each job's lines go out prefixed with its name (a pipe: plain lines, no live bars to mix).
demo_log = 2>&1 | sed -u 's/^/[$(1)] /'

.PHONY: demo-cache demo-run-%
.SECONDEXPANSION:
demo-cache:
	@set -o pipefail; OMP_NUM_THREADS=$(DEMO_THREADS) $(BIN)/bdsel cache-zeroshot \
		--config fashion_mnist --set zeroshot.predictor=$(DEMO_PREDICTOR) $(call demo_log,cache)
demo-run-%: $$(if $$(call demo_needs_cache,$$*),demo-cache)
	@set -o pipefail; OMP_NUM_THREADS=$(DEMO_THREADS) $(BIN)/bdsel train --config fashion_mnist \
		--set select.method=$* --set zeroshot.predictor=$(DEMO_PREDICTOR) \
		$(addprefix --set ,$(DEMO_SET) $(DEMO_SET_$*)) --run-dir $(DEMO_DIR)/$* --overwrite \
		$(call demo_log,$*)

# The evidence (docs/results/): the Bayesian score's settings tuned on a validation split (16
# runs of 30 epochs, two at a time: 43 minutes on 2 CPU cores), then the long table, every
# method x 3 seeds x 100 epochs at 20% noise and four rows at 0% and 40% (10-25 core-minutes
# a run, one run per core), then what each predictor gives mislabeled points, then the peers
# (InfoBatch, cleanlab then training, full data; experiments/peers.py), then bayesian without a
# clean hold-out set (the crossfit predictor against the hold-out one at 20% and 40% symmetric
# and 30% pairflip noise; experiments/holdout_free.py), then the probe predictor's quality and
# bayesian with it against uniform and full-data training at equal seconds end to end
# (experiments/probe_quality.py, experiments/end_to_end.py). All resume: a finished run is
# never rerun.
# The older 15-epoch table: experiments/fashion_sweep.py --noise 0,0.2,0.4 --seeds 0,1,2.
RESULTS_DIR ?= docs/results
results: install data
	$(BIN)/python experiments/fashion_sweep.py --out $(RESULTS_DIR) --phase cache
	$(BIN)/python experiments/fashion_sweep.py --out $(RESULTS_DIR) --phase tune --jobs $(DEMO_JOBS)
	$(BIN)/python experiments/offline_evidence.py --out $(RESULTS_DIR)/offline --jobs $(DEMO_JOBS)
	$(BIN)/python experiments/predictor_noise.py --out $(RESULTS_DIR)/offline/predictor_noise.md
	$(BIN)/python experiments/peers.py --out $(RESULTS_DIR)/peers --jobs $(DEMO_JOBS)
	$(BIN)/python experiments/holdout_free.py --out $(RESULTS_DIR)/holdout_free --jobs $(DEMO_JOBS)
	$(BIN)/python experiments/probe_quality.py --out $(RESULTS_DIR)/end_to_end/probe_quality.md
	$(BIN)/python experiments/end_to_end.py --out $(RESULTS_DIR)/end_to_end --jobs $(DEMO_JOBS)
	@$(MAKE) --no-print-directory figures

# Git keeps each study's tables and run records, not the figures and report.html drawn from
# them: this draws them again, beside each table.csv under RESULTS_DIR (a minute; no training).
figures: install
	$(BIN)/python experiments/figures.py --results $(RESULTS_DIR)

# Per-step cost of each method side by side, and the zero-shot cache against bare CLIP.
bench: install
	$(BIN)/python benchmarks/bench_step.py --model small_cnn --size 28 --channels 1
	$(BIN)/python benchmarks/bench_step.py --model resnet18_cifar --steps 5
	$(BIN)/python benchmarks/bench_step.py --model resnet18_cifar --classes 1000 --steps 3 --methods uniform,bayesian
	$(BIN)/python benchmarks/bench_zeroshot.py --n-images $(BENCH_ZS_IMAGES) --batch-size 64

clean:
	rm -rf $(VENV) runs cache report
