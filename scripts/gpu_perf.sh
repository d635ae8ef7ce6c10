#!/usr/bin/env bash
# On the GPU machine, in one call: build only what the step-performance work needs (python3's CUDA LibTorch), run
# its CUDA and CPU tests, then bench_train against PyTorch (eager + Triton, torch.compile) with a per-kernel profile.
# Logs go to $OUT (the device tool's result folder) or ./out. Usage:
#   scripts/gpu_perf.sh [tests] [bench[=0.6b,1.7b]] [variants=qad,recipe] [torch=eager,compile|none]
#   (default: tests bench). One call is limited to 10 minutes: the build takes ~2 min (~3.5 with tests), each
#   model ~1 min for qad and eager, and torch.compile's first compile 2-3 min per model.
# A carried .inductor-cache/ (ignored) warms torch.compile; the cache this run leaves is packed into $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-$PWD/out}
mkdir -p "$out"
steps=${*:-tests bench}
has() { [[ " $steps " == *" $1"* ]]; }
arg() { printf '%s\n' $steps | sed -n "s/^$1=//p"; }
t0=$(date +%s)
elapsed() { echo "[$(( $(date +%s) - t0 )) s]"; }
status=0
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=$PWD/.inductor-cache TORCHINDUCTOR_FX_GRAPH_CACHE=1
mkdir -p .inductor-cache

{ echo "commit ${QAD_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}";
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader;
  python3 -c 'import torch, transformers, triton; print("torch", torch.__version__, "transformers", transformers.__version__, "triton", triton.__version__)'; } | tee "$out/device.txt"

targets="bench_train"
has tests && targets="$targets test_train test_train_cuda test_loss test_loss_cuda test_quant"
gen=""; command -v ninja >/dev/null && gen="-G Ninja"
tests_flag=OFF; has tests && tests_flag=ON
cmake -S . -B build-gpu $gen -DCMAKE_BUILD_TYPE=Release -DQAD_BUILD_TESTS=$tests_flag -DQAD_BUILD_BENCH=ON >"$out/cmake.log" 2>&1 || { tail -40 "$out/cmake.log"; exit 1; }
grep -E "qad [0-9]|CUDA kernels" "$out/cmake.log"
if ! cmake --build build-gpu -j "$(nproc)" --target $targets >"$out/build.log" 2>&1; then
  grep -E "error|Error" "$out/build.log" | head -40
  # The Kineto C++ API moves between LibTorch releases: a bench_train without --profile is still worth having.
  if grep -q kernel_profile "$out/build.log"; then
    echo "retrying without the Kineto profiler"
    cmake build-gpu -DCMAKE_CXX_FLAGS=-DQAD_BENCH_NO_KINETO >>"$out/cmake.log" 2>&1
    cmake --build build-gpu -j "$(nproc)" --target $targets >>"$out/build.log" 2>&1 || exit 1
  else
    exit 1
  fi
fi
echo "build: ok $(elapsed)"

if has tests; then
  (cd build-gpu && ctest -R "Fused|FastStep|WeightCache|StepTest|ReferenceTest|AdamWTest|CheckpointTest|LossCuda|LogitLoss|KL|CrossEntropy" --output-on-failure --timeout 600 -j 4) >"$out/ctest.log" 2>&1 || status=1
  grep -E "tests passed|tests failed|Failed|\*\*\*|Skipped|Not Run" "$out/ctest.log" | tail -30
  echo "tests done $(elapsed)"
fi
if has bench; then
  models=$(arg bench); models=${models:-0.6b,1.7b}
  variants=$(arg variants); variants=${variants:-qad,recipe}
  modes=$(arg torch); modes=${modes:-eager,compile}
  torch_flag="--torch $modes"; [ "$modes" = none ] && torch_flag="--no-torch"
  build-gpu/bench_train --models "$models" --variants "$variants" $torch_flag --profile "$out/profile.txt" 2>&1 | tee "$out/bench_train.txt" || status=1
  echo "bench done $(elapsed)"
fi
size=$(du -sm .inductor-cache | cut -f1)
if [ "$size" -lt 60 ]; then tar -cf - .inductor-cache | zstd -q -3 -o "$out/inductor-cache.tar.zst" 2>/dev/null || true; fi
ls -la "$out"
exit $status
