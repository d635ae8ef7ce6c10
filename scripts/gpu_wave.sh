#!/usr/bin/env bash
# A session's GPU work in two device calls, the second started inside the machine's 30 s warm window so that
# the build and torch.compile's cache carry over (both live in build-gpu/, which is ignored and so kept):
#   scripts/gpu_wave.sh build [seconds]  configure and build every CUDA target while a background process
#                                        compiles bench_train's PyTorch step (tools/bench_train_torch.py,
#                                        torch.compile, the models in $PREWARM, default "0.6b 1.7b"; PREWARM= none) into the
#                                        Inductor cache; then every GPU test and the CPU tests of the step, the
#                                        losses and quantization (their fast paths take CUDA when it exists)
#   scripts/gpu_wave.sh bench [seconds]  bench_train per model of $BENCH (default "0.6b:torch 1.7b:torch";
#                                        MODEL:qad skips the PyTorch baselines; $BENCH_ARGS, default "--iters 6
#                                        --warmup 3", e.g. "--iters 6 --warmup 3 --rounds 3") against PyTorch eager + Triton and
#                                        torch.compile (warm cache) with the per-kernel profile, then, unless
#                                        $EXTRA is empty, bench_generate and bench_moe ($MOE_ARGS, e.g. "--shape
#                                        nemotron-3-nano"), each bounded by what is left
#   scripts/gpu_wave.sh build,bench S    both in one call (a first compile of 0.6B alone takes ~4-6 minutes)
# bench_train runs once per model: after a Kineto profile, a second model in the same process crashed
# (LibTorch 2.11, 2026-12-02).
# The background compile runs in its own session (setsid), so a build call that ends first does not kill it;
# the bench call waits for it. Results go to $OUT (or ./out). ../shared does not travel: carry .shared/ with
# models/{stories260K,qwen3-16m-teacher} and tasks/arith. Set QAD_COMMIT to the commit being measured.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-$PWD/out}; mkdir -p "$out"
phase=${1:-build}; budget=${2:-570}; t0=$(date +%s)
left() { echo $(( budget - ($(date +%s) - t0) )); }
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
[ -d .shared ] && export QAD_SHARED_DIR=$PWD/.shared
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a} PYTHONUNBUFFERED=1
mkdir -p build-gpu
export TORCHINDUCTOR_CACHE_DIR=$PWD/build-gpu/inductor-cache TORCHINDUCTOR_FX_GRAPH_CACHE=1
prewarm_done=build-gpu/prewarm.done
logs=build-gpu/logs; mkdir -p $logs  # $OUT brings back at most 8 files: logs are gathered into gt_all.log

{ echo "commit ${QAD_COMMIT:-unknown} phase $phase"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader;
  python3 -c 'import torch, transformers, triton; print("torch", torch.__version__, "transformers", transformers.__version__, "triton", triton.__version__)'; } | tee "$out/device_${phase//,/_}.txt"

wait_prewarm() {  # the timed runs must not share the GPU with the background compile
  while [ -f build-gpu/prewarm.pid ] && [ ! -f $prewarm_done ] && [ "$(left)" -gt "$1" ]; do sleep 5; done
  [ -f $prewarm_done ] && stamp "torch.compile prewarm finished: $(cat $prewarm_done)" || stamp "torch.compile prewarm NOT finished"
}

if [[ ",$phase," == *,build,* ]]; then
  rm -f $prewarm_done
  # Shapes alone decide the compiled graphs, so random weights warm the cache for bench_train's own run.
  setsid bash -c "for m in ${PREWARM-0.6b 1.7b}; do python3 tools/bench_train_torch.py --model \$m --mode compile --iters 1 --warmup 1 \
      || echo \"prewarm \$m failed\"; done > build-gpu/prewarm.log 2>&1; date +%T > $prewarm_done" </dev/null &
  echo $! > build-gpu/prewarm.pid
  gpu_tests="test_fused_cuda test_fused_model_gpu test_loss_cuda test_model_gpu test_generate_gpu test_nvfp4_cuda test_nvfp4_quotient test_quant_gpu test_train_cuda"
  targets=${TARGETS:-$gpu_tests test_train test_loss test_quant bench_train bench_generate bench_moe qad}
  rm -f $logs/gt_*.log
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DQAD_BUILD_TESTS=ON -DQAD_BUILD_BENCH=ON >"$logs/cmake.log" 2>&1 || { tail -30 "$logs/cmake.log"; exit 1; }
  grep -E "CUDA kernels" "$logs/cmake.log"
  # -k 0: a failing target must not hide the others.
  timeout $(( $(left) - 120 )) ninja -C build-gpu -k 0 $targets >"$logs/build.log" 2>&1 \
    || grep -E "error|FAILED" "$logs/build.log" | head -40 | tee "$out/build_errors.txt"
  stamp "build done"
  for t in $gpu_tests; do
    bin=$(find build-gpu/tests -name "$t" -type f -perm -u+x | head -1)
    [ -n "$bin" ] || { echo "$t: NOT BUILT"; continue; }  # (or not asked for in $TARGETS)
    timeout 90 "$bin" --gtest_color=no >"$logs/gt_$t.log" 2>&1; rc=$?
    echo "$t rc=$rc: $(grep -E '^\[  (PASSED|FAILED)  \]|SKIPPED \[' "$logs/gt_$t.log" | tr '\n' ' ')"
    grep -E "^\[  FAILED  \]|Failure$|Expected|Which is|error|rel err" "$logs/gt_$t.log" | head -12
  done 2>&1 | tee "$out/gpu_tests.txt"
  # CPU-labelled step tests whose fast paths switch to CUDA kernels when a GPU is visible.
  for spec in "test_loss:*" "test_train:*Fast*:*WeightCache*:*AdamW*:*Step*" "test_quant:${QUANT_FILTER:-*}"; do
    t=${spec%%:*}; filter=${spec#*:}
    bin=$(find build-gpu/tests -name "$t" -type f -perm -u+x | head -1)
    [ -n "$bin" ] && [ "$(left)" -gt 60 ] || { echo "$t: skipped (not built or no time)"; continue; }
    timeout $(( $(left) - 40 < 150 ? $(left) - 40 : 150 )) "$bin" --gtest_color=no --gtest_filter="$filter" >"$logs/gt_$t.log" 2>&1; rc=$?
    echo "$t rc=$rc: $(grep -E '^\[  (PASSED|FAILED)  \]' "$logs/gt_$t.log" | tr '\n' ' ')"
    grep -E "^\[  FAILED  \]" "$logs/gt_$t.log" | head -12
  done 2>&1 | tee -a "$out/gpu_tests.txt"
  grep -h -B2 -A30 "test crashed with signal" $logs/gt_*.log | head -60
  for f in $logs/gt_*.log; do echo "===== $f"; cat "$f"; done > "$out/gt_all.log"
  if [[ ",$phase," != *,bench,* ]]; then
    wait_prewarm 10
    cp build-gpu/prewarm.log "$out/" 2>/dev/null
    stamp "end"
    exit 0
  fi
fi

# phase bench
wait_prewarm 120
grep -E "median_ms|failed|Error" build-gpu/prewarm.log | cut -c1-300
for spec in ${BENCH:-0.6b:torch 1.7b:torch}; do
  m=${spec%%:*}; torch_flag="--torch eager,compile --torch-timeout 240"; [ "${spec#*:}" = qad ] && torch_flag=--no-torch
  [ -x build-gpu/bench_train ] && [ "$(left)" -gt 60 ] || { echo "bench_train $m: skipped (not built or no time)"; continue; }
  timeout $(( $(left) - 20 )) build-gpu/bench_train --models "$m" --variants qad,recipe ${BENCH_ARGS:---iters 6 --warmup 3} \
    $torch_flag --profile "$out/profile_$m.txt" 2>&1 | grep -v -E "^ +[0-9]+ +[0-9.]+ +[0-9.]+% " | tee "$out/bench_train_$m.txt"
  stamp "bench_train $m done"
done
[ -n "${EXTRA-x}" ] || { stamp "end"; exit 0; }
if [ -x build-gpu/bench_generate ] && [ "$(left)" -gt 60 ]; then
  timeout $(( $(left) - 75 )) build-gpu/bench_generate 2>&1 | tee "$out/bench_generate.txt"
  stamp "bench_generate done"
fi
if [ -x build-gpu/bench_moe ] && [ "$(left)" -gt 40 ]; then
  timeout $(( $(left) - 10 )) build-gpu/bench_moe ${MOE_ARGS:-} 2>&1 | tee "$out/bench_moe.txt"
fi
stamp "end"
