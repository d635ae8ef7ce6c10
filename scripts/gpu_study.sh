#!/usr/bin/env bash
# The qwen3-16m study grid (recipes/experiment_qwen3_16m_gpu.yaml) on one GPU within a time budget, on the device
# machine: builds build-gpu/qad unless it is there (~5 minutes on 16 cores; a build dir survives only into a call
# started within 30 s of the last one), prepares the data once, runs the grid with
# $CELLS cells at once (default 5), stops it (cells checkpoint; a later call resumes) when the budget runs out,
# writes the summary and packs every cell's small files (metrics, logs, eval, summary; no weights) into
# $OUT/study.tgz. ../shared does not travel: carry .shared/ with models/qwen3-16m-teacher, tasks/arith and
# corpus/prose_{train,valid}.jsonl.xz.
#   scripts/gpu_study.sh [seconds]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-$PWD/out}; mkdir -p "$out"
budget=${1:-560}; t0=$(date +%s)
left() { echo $(( budget - ($(date +%s) - t0) )); }
QAD=${QAD:-build-gpu/qad}
if [ ! -x "$QAD" ]; then
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a}
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DQAD_BUILD_TESTS=OFF -DQAD_BUILD_BENCH=OFF >/dev/null \
    && ninja -C build-gpu qad > build-gpu/study_build.log 2>&1 || { tail -20 build-gpu/study_build.log; exit 1; }
  echo "[$(( $(date +%s) - t0 )) s] built $QAD"
fi
S=../shared; [ -d .shared ] && S=$PWD/.shared
dir=runs/study; mkdir -p $dir
cfg=$dir/study.yaml
sed "s#\.\./shared#$S#g" recipes/experiment_qwen3_16m_gpu.yaml > $cfg
T=$S/models/qwen3-16m-teacher
[ -f $dir/data_train/index.json ] || $QAD data prepare --tokenizer $T --out $dir/data_train \
  --input $S/corpus/prose_train.jsonl.xz $S/tasks/arith/train.jsonl.xz 2>&1 | tail -2
[ -f $dir/data_valid/index.json ] || $QAD data prepare --tokenizer $T --out $dir/data_valid \
  --input $S/corpus/prose_valid.jsonl.xz 2>&1 | tail -2
echo "[$(( $(date +%s) - t0 )) s] data ready"
timeout -s TERM $(( $(left) - 45 )) $QAD experiment --config $cfg --out $dir/grid --gpus 0 --cells-per-gpu ${CELLS:-5} \
  2>&1 | tail -40
sleep 3
$QAD experiment --config $cfg --out $dir/grid --summarize-only 2>&1 | tail -60 | tee "$out/study_summary.txt"
$QAD eval --model $T --tasks $S/tasks/arith/test.jsonl --json > $dir/grid/teacher_arith.json 2>/dev/null
tar czf "$out/study.tgz" --exclude='*.safetensors' --exclude='checkpoints' --exclude='*.bin' -C $dir grid
echo "[$(( $(date +%s) - t0 )) s] end"
