#!/usr/bin/env bash
# On the GPU machine, in one call: build the generation / evaluation targets with CUDA (python3's LibTorch,
# as scripts/gpu_check.sh), run their CPU and GPU tests, bench_generate (qad vs transformers generate, and
# the 1000-item arith eval), and the arith eval with k = 4 samples. Results go to $OUT (or ./out).
# ../shared does not travel: carry .shared/ holding models/qwen3-16m-teacher, models/stories260K (optional)
# and tasks/arith; QAD_SHARED_DIR is set from it (or kept when already set).
#   scripts/gpu_evalgen.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-$PWD/out}
mkdir -p "$out"
[ -z "${QAD_SHARED_DIR:-}" ] && [ -d .shared ] && export QAD_SHARED_DIR=$PWD/.shared
shared=${QAD_SHARED_DIR:-../shared}
jobs=$(nproc)
status=0
{ echo "commit ${QAD_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}";
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader;
  python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)';
  echo "shared $shared"; } | tee "$out/device.txt"

gen=""; command -v ninja >/dev/null && gen="-G Ninja"
cmake -S . -B build-gpu $gen -DCMAKE_BUILD_TYPE=Release -DQAD_BUILD_TESTS=ON -DQAD_BUILD_BENCH=ON >"$out/cmake.log" 2>&1 \
  || { tail -40 "$out/cmake.log"; exit 1; }
grep -E "qad [0-9]|CUDA kernels" "$out/cmake.log"
if ! cmake --build build-gpu -j "$jobs" --target qad test_model test_generate_gpu test_eval_core test_eval bench_generate \
    >"$out/build.log" 2>&1; then
  grep -E "error|Error" "$out/build.log" | head -40; exit 1
fi
echo "build: ok"

# Tests: generation on the GPU; the CPU generation, sampling, checker and arith-golden tests.
for t in tests/model/test_generate_gpu "tests/model/test_model --gtest_filter=BatchedGenerate*:Sampling*:Stories260K*:Decoder*" \
         tests/eval/test_eval_core "tests/eval/test_eval --gtest_filter=ArithTask*:*Task*"; do
  name=$(basename "${t%% *}")
  (cd build-gpu && eval "./$t") >"$out/$name.log" 2>&1 || status=1
  echo "$name: $(grep -E '^\[  (PASSED|FAILED)  \]|tests? skipped' "$out/$name.log" | tr '\n' ' ')"
done

# Benchmarks: qad vs transformers generate (qwen3-16m, Qwen3-0.6B shape), arith 1000 items.
build-gpu/bench_generate 2>&1 | tee "$out/bench_generate.txt" || status=1

# The arith eval with 4 samples per item (temperature 0.7, top-p 0.95): avg@4, pass@1/4, maj@4 and the jsonl.
build-gpu/qad eval --model "$shared/models/qwen3-16m-teacher" --tasks "$shared/tasks/arith/test.jsonl" --device cuda \
  --samples 4 --temperature 0.7 --top-p 0.95 --seed 1 --predictions "$out/arith_k4_predictions.jsonl" --json \
  >"$out/arith_k4.json" 2>"$out/arith_k4.log" || status=1
python3 -c "import json,sys; t=json.load(open(sys.argv[1]))['tasks']; print('arith k=4:', {k: t[k] for k in ('accuracy','avg_at_k','pass_at_k','maj_at_k','cut_off','seconds','generation')})" "$out/arith_k4.json"
# Greedy arith through the CLI, twice with different slot counts: identical predictions expected.
for slots in 0 64; do
  build-gpu/qad eval --model "$shared/models/qwen3-16m-teacher" --tasks "$shared/tasks/arith/test.jsonl" --device cuda \
    --task-batch-size $slots --predictions "$out/arith_greedy_slots$slots.jsonl" --json >"$out/arith_greedy_slots$slots.json" \
    2>/dev/null || status=1
  python3 -c "import json,sys; t=json.load(open(sys.argv[1]))['tasks']; print('arith greedy slots=$slots:', t['correct'], '/', t['items'], 'in', round(t['seconds'],2), 's', t['generation'])" "$out/arith_greedy_slots$slots.json"
done
cmp -s "$out/arith_greedy_slots0.jsonl" "$out/arith_greedy_slots64.jsonl" && echo "greedy predictions identical for 1024-ish and 64 slots" \
  || echo "greedy predictions DIFFER between slot counts (see $out/arith_greedy_slots*.jsonl)"
exit $status
