#!/usr/bin/env bash
# Issue 18 item 3's acceptance on the device machine: QAD of qwen3-16m from a teacher cache against QAD with the
# live teacher, 3 seeds, the same token budget (the study's: STEPS x 32 x 512 tokens), each NVFP4 export evaluated
# for KL against the teacher, perplexity on prose_valid and arith accuracy; then step time and peak memory of
# both, measured alone (one run at a time, TIME_STEPS steps). docs/teacher_cache.md has the results table.
# Caches: runs/tcache/teacher-sN; runs: live-sN, cache-sN (trained from teacher-sN), cache-tail-sN (TAIL=1).
#   scripts/gpu_teacher_cache.sh            (env: STEPS=400 K=64 SEEDS="1 2 3" TIME_STEPS=100 QAD=build-gpu/qad)
# The live runs use the full KL (recipes/qad.yaml, loss.top_k 0): the comparison is "QAD from the cache" against
# "QAD" as the study runs it. LIVE_TOPK=1 adds live top-K runs (the cache's exact live equivalent). TAIL=1 adds
# cache-tail runs: the same caches with the top-K KL's tail category (--top-k-tail, docs/losses.md) and its cost line.
# VARIANTS overrides the list of quality variants (e.g. VARIANTS="live cache-tail" TAIL=1: only those two).
# The summary gives each variant's mean ± sd over the seeds and its paired difference from live (95 % t-interval).
# BUILD_ONLY=1 stops after the build (a call of its own when the build and the runs would not fit in one).
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
[ -n "${BUILD_ONLY:-}" ] && exit 0  # a first call that only builds (its $OUT/qad.gz, carried as .device/qad.gz)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
S=../shared; [ -d .shared ] && S=$PWD/.shared
T=$S/models/qwen3-16m-teacher
STEPS=${STEPS:-400}; K=${K:-64}; SEEDS=${SEEDS:-"1 2 3"}; TIME_STEPS=${TIME_STEPS:-100}
VARIANTS=${VARIANTS:-"live cache ${LIVE_TOPK:+live-top$K} ${TAIL:+cache-tail}"}
TIMED="live cache ${TAIL:+cache-tail}"
dir=runs/tcache; mkdir -p $dir
[ -f runs/study/data_train/index.json ] || $QAD data prepare --tokenizer $T --out runs/study/data_train \
  --input $S/corpus/prose_train.jsonl.xz $S/tasks/arith/train.jsonl.xz 2>&1 | tail -1
[ -f runs/study/data_valid/index.json ] || $QAD data prepare --tokenizer $T --out runs/study/data_valid \
  --input $S/corpus/prose_valid.jsonl.xz 2>&1 | tail -1
common=(--config recipes/qad.yaml --teacher $T --data runs/study/data_train --valid-data runs/study/data_valid
        --batch-size 32 --seq-len 512 --lr 5e-5 --valid-every 0 --device cuda)
quality=(--steps $STEPS --valid-batches 32 --checkpoint-every 0)
# 1. One cache per seed (the data order follows data.seed), all seeds at once: a 16M teacher leaves the GPU nearly
# idle, and the build's time is the host's top-k copy and zstd, one process per cache on a 16-core machine.
pids=()
for s in $SEEDS; do
  [ -f $dir/teacher-s$s/manifest.json ] && grep -q '"complete": true' $dir/teacher-s$s/manifest.json && continue
  /usr/bin/time -v $QAD teacher-cache --config recipes/qad.yaml --teacher $T --data runs/study/data_train \
    --valid-data runs/study/data_valid --steps $STEPS --batch-size 32 --seq-len 512 --data-seed $s --seed $s \
    --top-k $K --device cuda --out $dir/teacher-s$s > $dir/teacher-s$s.log 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait $p; done
for s in $SEEDS; do grep -E "^done|Maximum resident" $dir/teacher-s$s.log; done
echo "[$(( $(date +%s) - t0 )) s] caches built"; du -sh $dir/teacher-s* 2>/dev/null
# 2. Quality: live and cached runs of every seed at once (a few percent of an H200 each), then their evaluations.
pids=()
for s in $SEEDS; do
  for v in $VARIANTS; do
    run=$dir/$v-s$s
    [ -f $run/final_metrics.json ] && continue
    rm -rf $run
    extra=()
    [ $v = cache ] && extra=(--teacher-cache $dir/teacher-s$s)
    [ $v = cache-tail ] && extra=(--teacher-cache $dir/teacher-s$s --top-k-tail)
    [ $v = live-top$K ] && extra=(--top-k $K)
    $QAD distill "${common[@]}" "${quality[@]}" --seed $s --data-seed $s --out $run "${extra[@]}" > $dir/$v-s$s.log 2>&1 &
    pids+=($!)
  done
done
for p in "${pids[@]}"; do wait $p; done
echo "[$(( $(date +%s) - t0 )) s] quality runs done"
for s in $SEEDS; do
  for v in $VARIANTS; do
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
for v in $TIMED; do
  run=$dir/time-$v
  rm -rf $run
  extra=()
  [ $v = cache ] && extra=(--teacher-cache $dir/teacher-s$s1)
  [ $v = cache-tail ] && extra=(--teacher-cache $dir/teacher-s$s1 --top-k-tail)
  $QAD distill "${common[@]}" --steps $TIME_STEPS --valid-batches 0 --seed $s1 --data-seed $s1 --out $run \
    --set run.export_nvfp4=false --checkpoint-every -1 "${extra[@]}" > $dir/time-$v.log 2>&1
done
# 4. The table: eval KL / perplexity / arith accuracy per seed, the cost lines.
summary=$out/teacher_cache_summary.txt
{
  echo "qwen3-16m QAD, $STEPS steps x 32 x 512 tokens, cache top-$K; eval: KL vs teacher and ppl on prose_valid (256k tokens), arith test accuracy"
  printf "%-14s %-6s %10s %10s %10s\n" variant seed eval.kl ppl arith
  rows=$dir/eval_rows.txt; : > $rows
  for v in $VARIANTS; do
    for s in $SEEDS; do
      e=$dir/$v-s$s/eval.json
      num() { grep -o "\"$1\": *[0-9.eE+-]*" "$e" 2>/dev/null | head -1 | sed 's/.*: *//'; }
      printf "%-14s %-6s %10s %10s %10s\n" $v $s "$(num kl)" "$(num perplexity)" "$(num accuracy)"
      echo "$v $s $(num kl) $(num perplexity) $(num accuracy)" >> $rows
    done
  done
  # Mean ± sd over the seeds, and each variant's paired difference from live (same seed = same data order), with
  # a 95 % t-interval over the seeds (rows with a missing value are left out).
  awk 'NF == 5 { if (!($1 in seen)) { seen[$1] = 1; order[++nv] = $1 }
                 for (m = 1; m <= 3; m++) { x[$1, $2, m] = $(m + 2) }; if (!($2 in sseen)) { sseen[$2] = 1; seed[++ns] = $2 } }
       function stats(a, n,   i, mu, ss) { mu = 0; for (i = 1; i <= n; i++) mu += a[i]; mu /= n; ss = 0
                                            for (i = 1; i <= n; i++) ss += (a[i] - mu) ^ 2
                                            M = mu; SD = n > 1 ? sqrt(ss / (n - 1)) : 0 }
       END { split("12.706 4.303 3.182 2.776 2.571 2.447 2.365 2.306 2.262", tq, " "); split("eval.kl ppl arith", nm, " ")
             for (i = 1; i <= nv; i++) { v = order[i]; line = sprintf("%-14s mean ± sd:", v)
               for (m = 1; m <= 3; m++) { n = 0; for (j = 1; j <= ns; j++) if ((v, seed[j], m) in x) a[++n] = x[v, seed[j], m]
                 if (n) { stats(a, n); line = line sprintf("  %s %.5g ± %.2g", nm[m], M, SD) } }
               print line
               if (v == "live" || !("live" in seen)) continue
               line = sprintf("%-14s - live, paired:", v)
               for (m = 1; m <= 3; m++) { n = 0; base = 0
                 for (j = 1; j <= ns; j++) if ((v, seed[j], m) in x && ("live", seed[j], m) in x) {
                   a[++n] = x[v, seed[j], m] - x["live", seed[j], m]; base += x["live", seed[j], m] }
                 if (!n) continue
                 stats(a, n); half = n > 1 ? (n <= 10 ? tq[n - 1] : 2) * SD / sqrt(n) : 0
                 line = line sprintf("  %s %+.5g ± %.2g (%+.2f %%)", nm[m], M, half, 100 * M / (base / n)) }
               print line } }' $rows
  for v in $TIMED; do
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
