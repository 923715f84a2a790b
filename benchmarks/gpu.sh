#!/usr/bin/env bash
# The project's GPU checks, for one CUDA machine with the package registries only (about
# 15 minutes): install, the CUDA-marked tests, bench_step for resnet18_cifar at 320 -> 32
# (every method but SVP, bf16 candidate forward, compile off and on), and the time of the
# paper's CIFAR-10 run (200 epochs of 25,000 training images = 15,600 steps) projected from
# the measured per-step cost. Everything lands under $OUT (default runs/gpu).
#
#   bash benchmarks/gpu.sh             # on the GPU machine
#   bash benchmarks/gpu.sh --dry-run   # on a CPU: every step, tiny, up to the first CUDA call
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; fi
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu.log") 2>&1
step() { echo "== $(date +%H:%M:%S) $*"; }
PY=.venv/bin/python

step "install (make install: the pinned torch wheels are CUDA builds)"
make install

step "device"
$PY - "$DRY" <<'EOF' | tee "$OUT/device.txt"
import sys, torch
dry = sys.argv[1] == "1"
print(f"torch {torch.__version__}, CUDA build {torch.version.cuda}")
if not torch.cuda.is_available():
    print("no CUDA device visible" + (" (dry run: the steps below run tiny on the CPU)" if dry else ""))
    sys.exit(0 if dry else 1)
print(torch.cuda.get_device_name(), f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
EOF

step "CUDA-marked tests"
if [[ $DRY == 1 ]]; then
    $PY -m pytest -m cuda --collect-only -q tests/test_cuda.py | tee "$OUT/tests.txt"
else
    $PY -m pytest -m cuda -rA tests/test_cuda.py | tee "$OUT/tests.txt"
fi

step "bench_step: resnet18_cifar, 320 -> 32"
METHODS=uniform,train_loss,grad_norm,grad_norm_is,irreducible_loss,rho_loss,bayesian
ARGS=(--model resnet18_cifar --classes 10 --n-candidates 320 --n-selected 32 --steps 30 --warmup 5)
DEVICE=cuda
if [[ $DRY == 1 ]]; then
    METHODS=uniform,bayesian
    ARGS=(--model resnet18_cifar --classes 10 --n-train 400 --n-candidates 64 --n-selected 8 --steps 1 --warmup 1)
    DEVICE=cpu
fi
for mode in eager compile; do
    flag=()
    if [[ $mode == compile ]]; then
        flag=(--compile)
        if [[ $DRY == 1 ]]; then continue; fi  # compiling resnet18 on a CPU takes minutes
    fi
    $PY benchmarks/bench_step.py "${ARGS[@]}" --device $DEVICE --methods $METHODS "${flag[@]}" \
        --json "$OUT/bench_resnet18_cifar_$mode.json" | tee "$OUT/bench_resnet18_cifar_$mode.txt"
done

step "projection: the paper's CIFAR-10 run (200 epochs x 78 steps of 320 -> 32)"
$PY - "$OUT" <<'EOF' | tee "$OUT/cifar10_200_epochs.md"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
steps = 200 * (25_000 // 320)
print(f"| method | mode | ms/step | {steps:,} steps (training only) |")
print("|---|---|---|---|")
for path in sorted(out.glob("bench_resnet18_cifar_*.json")):
    mode = path.stem.rsplit("_", 1)[1]
    for method, ms in json.loads(path.read_text())["ms"].items():
        hours = ms["step"] * steps / 3.6e6
        print(f"| {method} | {mode} | {ms['step']:.1f} | {hours:.2f} h |")
EOF
step "done: $OUT"
