#!/usr/bin/env bash
# On the GPU machine, in one call: build the fused kernels (src/fused) with CUDA, run their tests (the CUDA
# kernels against the CPU references and the unfused ops; the decoder fused vs unfused), the NVFP4 GPU tests
# (whose kernel shares device_math.cuh), the CPU tests of the touched areas, and bench_fused; then, if asked,
# bench_train with the fused kernels on and off (QAD_FUSED_KERNELS=0). Logs go to $OUT (or ./out).
# Usage: scripts/gpu_perfk.sh [build] [tests] [cpu-tests] [bench] [train]   (default: build tests cpu-tests bench)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-$PWD/out}
mkdir -p "$out"
steps=${*:-build tests cpu-tests bench}
jobs=$(nproc)
[ -d .shared ] && export QAD_SHARED_DIR=$PWD/.shared
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a}
status=0
has() { [[ " $steps " == *" $1 "* ]]; }

{ echo "commit ${QAD_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}";
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader;
  python3 -c 'import torch; print("torch", torch.__version__)'; } | tee "$out/device.txt"

gpu_tests="test_fused_cuda test_fused_model_gpu test_model_gpu test_quant_gpu test_nvfp4_cuda test_nvfp4_quotient"
targets="$gpu_tests test_fused test_fused_model test_nvfp4_implementations test_model test_quant test_train bench_fused"
if has build; then
  gen=""; command -v ninja >/dev/null && gen="-G Ninja"
  cmake -S . -B build-gpu $gen -DCMAKE_BUILD_TYPE=Release -DQAD_BUILD_TESTS=ON -DQAD_BUILD_BENCH=ON >"$out/cmake.log" 2>&1 || { tail -40 "$out/cmake.log"; exit 1; }
  grep -E "qad [0-9]|CUDA kernels" "$out/cmake.log"
  # Keep going past a failing target, so that what did build still runs (make -k / ninja -k 0).
  keep="-k"; [ -n "$gen" ] && keep="-k 0"
  if ! cmake --build build-gpu -j "$jobs" --target $targets -- $keep >"$out/build.log" 2>&1; then
    grep -E "error|Error" "$out/build.log" | head -60; status=1
  else
    echo "build: ok"
  fi
  cuobjdump -lelf build-gpu/src/fused/CMakeFiles/qad_fused.dir/rms_norm_cuda.cu.o 2>/dev/null | tr '\n' ' '; echo
fi
if has tests; then
  for t in $gpu_tests; do
    [ -x build-gpu/$t ] || { echo "$t: not built"; status=1; continue; }
    build-gpu/$t --gtest_color=no >"$out/$t.log" 2>&1 || status=1
    echo "$t: $(grep -E '^\[  (PASSED|FAILED)|tests ran|SKIPPED' "$out/$t.log" | tr '\n' ' ')"
    grep -E "Failure|Expected|Which is|actual|error" "$out/$t.log" | head -30
  done
fi
if has cpu-tests; then
  for t in test_fused test_fused_model test_nvfp4_implementations test_model test_quant test_train; do
    [ -x build-gpu/$t ] || { echo "$t: not built"; status=1; continue; }
    build-gpu/$t --gtest_color=no >"$out/$t.log" 2>&1 || status=1
    echo "$t: $(grep -E '^\[  (PASSED|FAILED)|tests ran' "$out/$t.log" | tr '\n' ' ')"
    grep -E "^\[  FAILED" "$out/$t.log" | head -10
  done
fi
if has bench && [ -x build-gpu/bench_fused ]; then
  build-gpu/bench_fused 2>&1 | tee "$out/bench_fused.txt" || status=1
fi
if has train; then
  if [ -x build-gpu/bench_train ] || cmake --build build-gpu -j "$jobs" --target bench_train >"$out/build-train.log" 2>&1; then
    echo "== bench_train, fused kernels on"; build-gpu/bench_train 2>&1 | tee "$out/bench_train_fused.txt" || status=1
    echo "== bench_train, fused kernels off"; QAD_FUSED_KERNELS=0 build-gpu/bench_train 2>&1 | tee "$out/bench_train_unfused.txt" || status=1
  else
    echo "bench_train: build failed"; tail -20 "$out/build-train.log"; status=1
  fi
fi
exit $status
