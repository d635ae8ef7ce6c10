#!/usr/bin/env bash
# One device call for the whole wave: build the CUDA targets once, run every GPU test, then bench_train (qad vs
# PyTorch eager+Triton and torch.compile), bench_generate, each stage bounded so the call ends inside its limit.
# Results go to $OUT (or ./out). Usage: scripts/gpu_wave.sh [seconds available, default 540]
# The device tool sends the session's own checkout: run it from there (a copy carried in an ignored folder is
# replaced, build-gpu/ included, on every call, so put the build dir outside it when calls are chained).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-$PWD/out}; mkdir -p "$out"
budget=${1:-540}; t0=$(date +%s)
left() { echo $(( budget - ($(date +%s) - t0) )); }
[ -d .shared ] && export QAD_SHARED_DIR=$PWD/.shared
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a} PYTHONUNBUFFERED=1
{ echo "commit ${QAD_COMMIT:-unknown}"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader;
  python3 -c 'import torch, transformers, triton; print("torch", torch.__version__, "transformers", transformers.__version__, "triton", triton.__version__)'; } | tee "$out/device.txt"
gpu_tests="test_fused_cuda test_fused_model_gpu test_loss_cuda test_model_gpu test_generate_gpu test_nvfp4_cuda test_quant_gpu test_train_cuda"
targets="$gpu_tests bench_train bench_generate"
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DQAD_BUILD_TESTS=ON -DQAD_BUILD_BENCH=ON >"$out/cmake.log" 2>&1 || { tail -30 "$out/cmake.log"; exit 1; }
grep -E "CUDA kernels" "$out/cmake.log"
if ! timeout $(( $(left) - 200 )) cmake --build build-gpu -j "$(nproc)" --target $targets >"$out/build.log" 2>&1; then
  grep -E "error|Error|FAILED" "$out/build.log" | head -40
  # Build what can be built: a failing target must not hide the others.
  timeout $(( $(left) - 150 )) ninja -C build-gpu -k 0 $targets >>"$out/build.log" 2>&1
fi
echo "build done at $(( $(date +%s) - t0 )) s"
for t in $gpu_tests; do
  bin=$(find build-gpu -name "$t" -type f -perm -u+x | head -1)  # test binaries live in build-gpu/tests/<area>/
  [ -n "$bin" ] || { echo "$t: NOT BUILT"; continue; }
  timeout 60 "$bin" --gtest_color=no >"$out/gt_$t.log" 2>&1; rc=$?
  echo "$t rc=$rc: $(grep -E '^\[  (PASSED|FAILED)  \]|SKIPPED \[' "$out/gt_$t.log" | tr '\n' ' ')"
  grep -E "^\[  FAILED  \]|Failure$|Expected|Which is|error" "$out/gt_$t.log" | head -12
done 2>&1 | tee "$out/gpu_tests.txt"
echo "tests done at $(( $(date +%s) - t0 )) s"
if [ -x build-gpu/bench_train ] && [ "$(left)" -gt 150 ]; then
  timeout $(( $(left) - 70 )) build-gpu/bench_train --models 0.6b --variants qad,recipe --iters 6 --warmup 3 \
    --torch-timeout $(( $(left) - 100 )) 2>&1 | tee "$out/bench_train_06b.txt"
fi
if [ -x build-gpu/bench_generate ] && [ "$(left)" -gt 60 ]; then
  timeout $(( $(left) - 10 )) build-gpu/bench_generate 2>&1 | tee "$out/bench_generate.txt"
fi
echo "end at $(( $(date +%s) - t0 )) s"
