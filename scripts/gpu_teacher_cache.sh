#!/usr/bin/env bash
# Issue 18 item 3's acceptance on the device machine: QAD of qwen3-16m from a teacher cache against QAD with the
# live teacher, 3 seeds, the same token budget (the study's: STEPS x 32 x 512 tokens), each NVFP4 export evaluated
# for KL against the teacher, perplexity on prose_valid and arith accuracy; then step time and peak memory of
# both, measured alone (one run at a time, TIME_STEPS steps). docs/teacher_cache.md has the results table.
# Caches: runs/tcache/teacher-sN; runs: live-sN, cache-sN (trained from teacher-sN).
#   scripts/gpu_teacher_cache.sh            (env: STEPS=400 K=64 SEEDS="1 2 3" TIME_STEPS=100 QAD=build-gpu/qad)
# The live runs use the full KL (recipes/qad.yaml, loss.top_k 0): the comparison is "QAD from the cache" against
# "QAD" as the study runs it. LIVE_TOPK=1 adds live top-K runs (the cache's exact live equivalent).
# Builds build-gpu/qad unless it is there (or .device/qad.gz is); carry .shared/ as scripts/gpu_study.sh says.
# Everything small (logs, metrics, eval JSON, the summary) is packed into $OUT/teacher_cache.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-$PWD/out}; mkdir -p "$out"
t0=$(date +%s)
QAD=${QAD:-build-gpu/qad}
if [ ! -x "$QAD" ] && [ -f .device/qad.gz ]; then
  mkdir -p build-gpu && gzip -dc .device/qad.gz > "$QAD" && chmod +x "$QAD"
fi
if [ ! -x "$QAD" ]; then
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a}
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DQAD_BUILD_TESTS=OFF -DQAD_BUILD_BENCH=OFF >/dev/null \
    && ninja -C build-gpu qad > build-gpu/tc_build.log 2>&1 || { tail -20 build-gpu/tc_build.log; exit 1; }
  strip -o build-gpu/qad.stripped "$QAD" && gzip -9c build-gpu/qad.stripped > "$out/qad.gz"
  echo "[$(( $(date +%s) - t0 )) s] built $QAD"
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
S=../shared; [ -d .shared ] && S=$PWD/.shared
T=$S/models/qwen3-16m-teacher
STEPS=${STEPS:-400}; K=${K:-64}; SEEDS=${SEEDS:-"1 2 3"}; TIME_STEPS=${TIME_STEPS:-100}
dir=runs/tcache; mkdir -p $dir
[ -f runs/study/data_train/index.json ] || $QAD data prepare --tokenizer $T --out runs/study/data_train \
  --input $S/corpus/prose_train.jsonl.xz $S/tasks/arith/train.jsonl.xz 2>&1 | tail -1
[ -f runs/study/data_valid/index.json ] || $QAD data prepare --tokenizer $T --out runs/study/data_valid \
  --input $S/corpus/prose_valid.jsonl.xz 2>&1 | tail -1
common=(--config recipes/qad.yaml --teacher $T --data runs/study/data_train --valid-data runs/study/data_valid
        --batch-size 32 --seq-len 512 --lr 5e-5 --valid-every 0 --device cuda)
quality=(--steps $STEPS --valid-batches 32 --checkpoint-every 0)
# 1. One cache per seed (the data order follows data.seed).
for s in $SEEDS; do
  [ -f $dir/teacher-s$s/manifest.json ] && grep -q '"complete": true' $dir/teacher-s$s/manifest.json && continue
  /usr/bin/time -v $QAD teacher-cache --config recipes/qad.yaml --teacher $T --data runs/study/data_train \
    --valid-data runs/study/data_valid --steps $STEPS --batch-size 32 --seq-len 512 --data-seed $s --seed $s \
    --top-k $K --device cuda --out $dir/teacher-s$s > $dir/teacher-s$s.log 2>&1
  grep -E "^done|Maximum resident" $dir/teacher-s$s.log
done
echo "[$(( $(date +%s) - t0 )) s] caches built"; du -sh $dir/teacher-s* 2>/dev/null
# 2. Quality: live and cached runs of every seed at once (a few percent of an H200 each), then their evaluations.
pids=()
for s in $SEEDS; do
  for v in live cache ${LIVE_TOPK:+live-top$K}; do
    run=$dir/$v-s$s
    [ -f $run/final_metrics.json ] && continue
    rm -rf $run
    extra=()
    [ $v = cache ] && extra=(--teacher-cache $dir/teacher-s$s)
    [ $v = live-top$K ] && extra=(--top-k $K)
    $QAD distill "${common[@]}" "${quality[@]}" --seed $s --data-seed $s --out $run "${extra[@]}" > $dir/$v-s$s.log 2>&1 &
    pids+=($!)
  done
done
for p in "${pids[@]}"; do wait $p; done
echo "[$(( $(date +%s) - t0 )) s] quality runs done"
for s in $SEEDS; do
  for v in live cache ${LIVE_TOPK:+live-top$K}; do
    run=$dir/$v-s$s
    [ -s $run/eval.json ] && continue
    $QAD eval --model $run/export/nvfp4 --teacher $T --data $S/corpus/prose_valid.jsonl.xz --max-tokens 262144 \
      --tasks $S/tasks/arith/test.jsonl --device cuda --json > $run/eval.json 2> $run/eval.log &
  done
done
wait
echo "[$(( $(date +%s) - t0 )) s] evaluations done"
# 3. Cost: one run at a time, TIME_STEPS steps (the seed-1 cache serves a shorter run).
s1=${SEEDS%% *}
for v in live cache; do
  run=$dir/time-$v
  rm -rf $run
  extra=()
  [ $v = cache ] && extra=(--teacher-cache $dir/teacher-s$s1)
  $QAD distill "${common[@]}" --steps $TIME_STEPS --valid-batches 0 --seed $s1 --data-seed $s1 --out $run \
    --set run.export_nvfp4=false --checkpoint-every -1 "${extra[@]}" > $dir/time-$v.log 2>&1
done
# 4. The table: eval KL / perplexity / arith accuracy per seed, the cost lines.
summary=$out/teacher_cache_summary.txt
{
  echo "qwen3-16m QAD, $STEPS steps x 32 x 512 tokens, cache top-$K; eval: KL vs teacher and ppl on prose_valid (256k tokens), arith test accuracy"
  printf "%-14s %-6s %10s %10s %10s\n" variant seed eval.kl ppl arith
  for v in live cache ${LIVE_TOPK:+live-top$K}; do
    for s in $SEEDS; do
      e=$dir/$v-s$s/eval.json
      num() { grep -o "\"$1\": *[0-9.eE+-]*" "$e" | head -1 | sed 's/.*: *//'; }
      printf "%-14s %-6s %10s %10s %10s\n" $v $s "$(num kl)" "$(num perplexity)" "$(num accuracy)"
    done
  done
  for v in live cache; do
    f=$dir/time-$v/metrics.jsonl
    mem=$(grep -o '"peak_mem_gb": *[0-9.eE+-]*' $f | sed 's/.*: *//' | sort -g | tail -1)
    secs=$(grep -o '"train_seconds": *[0-9.eE+-]*' $dir/time-$v/final_metrics.json | sed 's/.*: *//')
    echo "cost $v: $TIME_STEPS steps in $secs s ($(awk "BEGIN{printf \"%.1f\", 1000*$secs/$TIME_STEPS}") ms/step), peak GPU memory $mem GB"
  done
  for s in $SEEDS; do grep -h "^done" $dir/teacher-s$s.log; done
  du -sh $dir/teacher-s* 2>/dev/null
} | tee $summary
tar czf $out/teacher_cache.tgz --exclude='*.safetensors' --exclude='*.bin' --exclude='checkpoints' --exclude='export' \
  --exclude='data' -C runs tcache
echo "[$(( $(date +%s) - t0 )) s] end"
