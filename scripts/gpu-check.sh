#!/usr/bin/env bash
# The CUDA backend's checks on a machine with an NVIDIA GPU, from prebuilt binaries (no Rust needed):
#   1. the CUDA tests, ignored ones included (kernels compile, op-by-op and small-VGG parity with the CPU;
#      the NCCL gradient exchange on one rank, and on two ranks where the machine has two GPUs);
#   2. `vgg bench --backend cuda`: VGG-16, batch 32, the reference's 10 burn-in + 100 timed steps,
#      forward and forward-backward;
#   3. PyTorch's number beside it, same protocol, where `python3 -c "import torch"` works.
#
# Build the bundle where Rust is:   cargo xtask gpu-bundle .device-bin
# Then on the GPU machine:          scripts/gpu-check.sh .device-bin [--quick]
# The CUDA 13 libraries (cuBLAS, cuDNN 9, NVRTC) are taken from PyTorch's site-packages/nvidia/*/lib
# when present. Everything is printed; record the log in docs/performance.md.
set -uo pipefail
# The bundle's path as given, from where the script was called; the script then runs at the repo root.
BUNDLE=$(realpath -m "${1:-.device-bin}")
cd "$(dirname "$0")/.."

QUICK=${2:-}
PYTHON=${PYTHON:-python3}
STEPS=(--burn-in 10 --num-batches 100)
# Each step is bounded, so one hung kernel costs its own step and not the machine's whole lease.
STEP_LIMIT=${STEP_LIMIT:-240}
if [ "$QUICK" = "--quick" ]; then STEPS=(--burn-in 2 --num-batches 5); fi
status=0

echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(uname -n)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null \
  || echo "nvidia-smi: not available"

if [ ! -x "$BUNDLE/vgg" ]; then
  echo "no $BUNDLE/vgg: build the bundle first with 'cargo xtask gpu-bundle $BUNDLE'" >&2
  exit 2
fi

# PyTorch's pip wheels carry the CUDA libraries: put them where cudarc's dlopen looks.
if "$PYTHON" -c "import torch" 2>/dev/null; then
  HAVE_TORCH=1
  SITE=$("$PYTHON" -c "import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))")
  for lib in "$SITE"/nvidia/*/lib; do
    [ -d "$lib" ] && LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  done
  # The wheel's NCCL is libnccl.so.2 only; cudarc opens libnccl.so.
  if [ -e "$SITE/nvidia/nccl/lib/libnccl.so.2" ]; then
    NCCL_LINK=$(mktemp -d)
    ln -s "$SITE/nvidia/nccl/lib/libnccl.so.2" "$NCCL_LINK/libnccl.so"
    LD_LIBRARY_PATH="$NCCL_LINK:$LD_LIBRARY_PATH"
  fi
  export LD_LIBRARY_PATH
  echo "PyTorch $("$PYTHON" -c "import torch; print(torch.__version__)") at $SITE"
else
  HAVE_TORCH=0
  echo "PyTorch not importable with $PYTHON: CUDA libraries must already be on LD_LIBRARY_PATH"
fi

echo "== CUDA tests (ignored ones included)"
# NCCL allows one rank per GPU: the two-rank test needs two.
GPUS=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | wc -l)
SKIP=()
if [ "$GPUS" -lt 2 ]; then
  SKIP=(--skip two_gpus)
  echo "$GPUS GPU(s): the tests that need two GPUs are skipped"
fi
for t in "$BUNDLE"/tests/*; do
  echo "-- $t"
  timeout "$STEP_LIMIT" "$t" --include-ignored --test-threads 1 "${SKIP[@]}" || { echo "-- $t: exit $?"; status=1; }
done

echo "== vgg bench --backend cuda (VGG-16, batch 32)"
timeout "$STEP_LIMIT" "$BUNDLE/vgg" bench --backend cuda --model vgg16 --batch-size 32 "${STEPS[@]}" --mode both || status=1

if [ "$HAVE_TORCH" = 1 ]; then
  echo "== PyTorch, same protocol, on the GPU"
  timeout "$STEP_LIMIT" "$PYTHON" bench/peers/pytorch_bench.py --device cuda --batch-size 32 "${STEPS[@]}" --mode both || status=1
fi

echo "== done, status $status"
exit $status
