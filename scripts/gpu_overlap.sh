#!/usr/bin/env bash
# Steps overlapped on the GPU (docs/train.md, "Steps overlap"), in one device call: `qad distill` on stories260K with
# the overlap and with debug.sequential_steps (a skipped step inside a deferred read, validations between; the two
# logs' losses agree up to the GPU's own run-to-run noise, since flash attention's backward is not deterministic),
# then bench_train's overlapped steps: the CKA recipe against QAD at both shapes, and the null control.
#   mkdir -p .shared && cp -r ../shared/models/stories260K .shared/     # here; then on the device, carry [".shared"]:
#   scripts/gpu_overlap.sh                                             # writes $OUT/overlap_*.txt
# Env: B (build dir, /root/b), BUILD_S (the build's limit, 400), STEPS (the bench's overlapped steps per variant, 80),
# TESTS=1 (also build and run test_train_cuda first, into $OUT/overlap_tests.txt).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:?writes to \$OUT}
B=${B:-/root/b}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a}
start=$(date +%s)
elapsed() { echo "$(( $(date +%s) - start )) s"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/overlap_device.txt"
tests=OFF targets=(qad bench_train)
[[ ${TESTS:-0} == 1 ]] && tests=ON targets+=(test_train_cuda)
cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release -DQAD_BUILD_TESTS=$tests -DQAD_BUILD_BENCH=ON \
  >"$out/cmake.log" 2>&1 ||
  { tail -20 "$out/cmake.log"; exit 1; }
timeout "${BUILD_S:-400}" ninja -C "$B" "${targets[@]}" >"$out/build.log" 2>&1 ||
  { grep -E "error|FAILED" "$out/build.log" | head -20; tail -2 "$out/build.log"; exit 1; }
echo "build: $(elapsed)"
if [[ $tests == ON ]]; then
  timeout 120 "$B/tests/train/test_train_cuda" >"$out/overlap_tests.txt" 2>&1
  echo "test_train_cuda: rc $? ($(elapsed))"; grep -E "PASSED|FAILED|SKIPPED|OK \]" "$out/overlap_tests.txt"
fi

# The trainer: the same run overlapped and sequential.
w=/tmp/qad_overlap && rm -rf "$w" && mkdir -p "$w"
names=(Lily Tom Sue Ben Mia Max); things=(ball cat tree cake boat dog flower)
RANDOM=7
for _ in $(seq 300); do
  a=${names[RANDOM % 6]}; b=${names[RANDOM % 6]}; t=${things[RANDOM % 7]}
  echo "{\"text\": \"Once upon a time, $a had a big $t. One day, $a saw $b in the park. $b smiled and they played with the $t all day.\"}"
done >"$w/stories.jsonl"
run() {  # name, extra args
  local name=$1; shift
  "$B/qad" distill --method qad --teacher .shared/stories260K --data "$w/stories.jsonl" --out "$w/$name" --device cuda \
    --steps 12 --batch-size 8 --seq-len 64 --lr 3e-3 --valid-every 6 --valid-batches 2 --checkpoint-every 0 \
    --calib-batches 2 --debug-nan-at-steps 3 --set run.export_nvfp4=false --set data.valid_fraction=0.1 "$@" \
    >"$out/overlap_$name.txt" 2>&1
  echo "$name: rc $? ($(elapsed))"
}
run overlapped
run sequential --set debug.sequential_steps=true
grep -c "steps overlap" "$out/overlap_overlapped.txt" "$out/overlap_sequential.txt"
# step, loss, grad_norm of every train record, side by side
field() { grep '"type":"train"' "$w/$1/metrics.jsonl" | sed -E 's/.*"grad_norm":([^,]*).*"loss":([^,]*).*"step":([0-9]+).*/\3 \2 \1/'; }
compare='{ if ($2 == "null" || $5 == "null") d = ($2 == $5) ? 0 : 1; else d = ($2 - $5) / $5; if (d < 0) d = -d;
  if (d > m) m = d; print } END { printf "largest relative difference %.3g\n", m }'
{ echo "step loss grad_norm (overlapped) | step loss grad_norm (sequential)"
  paste <(field overlapped) <(field sequential) | awk "$compare"
  echo "validation: step kl (overlapped) | step kl (sequential)"
  valid() { grep '"type":"valid"' "$w/$1/metrics.jsonl" | sed -E 's/.*"kl":([^,]*).*"step":([0-9]+).*/\2 \1 -/'; }
  paste <(valid overlapped) <(valid sequential) | awk "$compare"; } | tee "$out/overlap_trainer.txt"

# The bench: the recipe against QAD and the null control, each step read after the next is queued.
steps=${STEPS:-80}
bench() {
  echo "=== $*" >>"$out/overlap_bench.txt"
  timeout 150 "$B/bench_train" --iters 1 --warmup 3 --rounds 4 --turn-warmup 0 --no-torch --overlap "$steps" "$@" \
    >>"$out/overlap_bench.txt" 2>&1
  echo "bench $*: rc $? ($(elapsed))"
}
bench --models 0.6b --variants recipe
bench --models 1.7b --variants recipe
bench --models 0.6b --variants qad-null
grep -E "^===|^overlapped" "$out/overlap_bench.txt"
