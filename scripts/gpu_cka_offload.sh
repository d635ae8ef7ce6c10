#!/usr/bin/env bash
# One device call (nvidia-h200, ~9 min): build qad, bench_train and the GPU tests of the losses and the optimizers;
# run them; then issue 15's CKA measurement (QAD, the recipe's CKA-QAD with BF16 products, and CKA-QAD with TF32
# products, alternating step by step, ROUNDS rounds (20), with the kernel-by-kernel difference) and issue 18's 8B offload run
# (`qad distill --plan` for a Qwen3-8B shape with and without offload, then bench_train --models 8b --offload:
# tokens/s, peak memory and the plan's error). Results go to $OUT. Env: BUDGET (s), BUILD_S (build limit),
# TESTS (GPU test binaries to build and run; default test_loss_cuda test_train_cuda), NO_8B=1 skips the 8B part,
# VARIANTS (bench_train's, default qad,recipe,cka-1024-tf32), MODELS (default 1.7b; e.g. 0.6b,1.7b),
# CHAIN (bench_train --chain: steps back to back per timed step, default 1).
# Tests that read ../shared (test_fsdp_gpu: stories260K) find it in .shared/ when it is carried.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-$PWD/out}; mkdir -p "$out"; t0=$(date +%s)
left() { echo $(( ${BUDGET:-560} - ($(date +%s) - t0) )); }
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a} PYTHONUNBUFFERED=1
B=build-gpu
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; git log --oneline -1 2>/dev/null; } | tee "$out/device.txt"
cmake -S . -B $B -G Ninja -DCMAKE_BUILD_TYPE=Release -DQAD_BUILD_TESTS=ON -DQAD_BUILD_BENCH=ON >/tmp/cmake.log 2>&1 || { tail -20 /tmp/cmake.log; exit 1; }
TESTS=${TESTS:-test_loss_cuda test_train_cuda}
[ -d .shared ] && export QAD_SHARED_DIR=$PWD/.shared
timeout ${BUILD_S:-380} ninja -C $B -k 0 $([ -z "${NO_8B:-}" ] && echo qad) bench_train $TESTS >"$out/build.log" 2>&1 || grep -E "error|FAILED" "$out/build.log" | head -30
echo "[$(( $(date +%s) - t0 )) s] build done"
grep "ptxas warning" "$out/build.log" | sort -u | cut -c1-220 | head -20  # spills and stack frames (QAD_CUDA_OPTIONS)
for t in $TESTS; do
  bin=$(find $B/tests -name $t -type f | head -1); [ -n "$bin" ] || { echo "$t NOT BUILT"; continue; }
  timeout 120 $bin --gtest_color=no > "$out/$t.log" 2>&1; echo "$t rc=$?: $(grep -E '^\[  (PASSED|FAILED)  \]' "$out/$t.log" | tr '\n' ' ')"
  grep -E "^\[  FAILED  \]|Failure$" "$out/$t.log" | head -8
done
[ -x $B/bench_train ] || exit 1
timeout $(( 40 + ${ROUNDS:-20} * 3 * ${CHAIN:-1} * $(echo ${MODELS:-1.7b} | tr ',' ' ' | wc -w) )) $B/bench_train --models ${MODELS:-1.7b} --variants ${VARIANTS:-qad,recipe,cka-1024-tf32} --iters 1 --warmup 3 --rounds ${ROUNDS:-20} --turn-warmup 0 --chain ${CHAIN:-1} \
  --no-torch --profile "$out/profile_cka.txt" 2>&1 | grep -v -E "^ +[0-9]+ +[0-9.]+ +[0-9.]+% " > "$out/cka.txt"
grep -A14 "^variant\|Qwen3-.* shape" "$out/cka.txt" | head -60; grep -A14 "against QAD" "$out/profile_cka.txt" | head -34
[ -z "${NO_8B:-}" ] && [ "$(left)" -gt 60 ] && [ -x $B/qad ] || { echo "[$(( $(date +%s) - t0 )) s] no time / no qad binary for the 8B runs"; exit 0; }
mkdir -p /tmp/q8 && python3 -c 'import json;json.dump(dict(architectures=["Qwen3ForCausalLM"],model_type="qwen3",vocab_size=151936,hidden_size=4096,intermediate_size=12288,num_hidden_layers=36,num_attention_heads=32,num_key_value_heads=8,head_dim=128,max_position_embeddings=40960,rms_norm_eps=1e-6,tie_word_embeddings=False,rope_theta=1e6,torch_dtype="bfloat16"),open("/tmp/q8/config.json","w"))'
{ $B/qad distill --teacher /tmp/q8 --batch-size 4 --seq-len 2048 --plan; $B/qad distill --teacher /tmp/q8 --batch-size 4 --seq-len 2048 --offload optimizer --plan; } > "$out/plan_8b.txt" 2>&1
tail -12 "$out/plan_8b.txt"
timeout $(( $(left) - 5 )) $B/bench_train --models 8b --batch 4 --seq 2048 --iters 3 --warmup 2 --variants qad --no-torch --offload 2>&1 | tee "$out/b8.txt" | tail -22
echo "[$(( $(date +%s) - t0 )) s] end"
