#!/usr/bin/env bash
# The qwen3-16m study grid (recipes/experiment_qwen3_16m_gpu.yaml) on one GPU within a time budget, on the device
# machine: builds build-gpu/qad unless it is there (~5 minutes on 16 cores; a build dir survives only into a call
# started within 30 s of the last one), prepares the data once, runs the grid with
# $CELLS cells at once (default 8), stops it (cells checkpoint; a later call resumes) when the budget runs out,
# writes the summary and packs every cell's small files (metrics, logs, eval, summary; no weights) into
# $OUT/study.tgz. ../shared does not travel: carry .shared/ with models/qwen3-16m-teacher, tasks/arith and
# corpus/prose_{train,valid}.jsonl.xz.
# Across calls: a binary built here comes back as $OUT/qad.gz (the device has no zstd); carried as
# .device/qad.gz it saves the next call its build. The grid's small files unpacked from study.tgz into
# runs/study/grid and carried let the next call go on with the cells that are not finished (finished ones are
# never rerun; a cell with final_metrics.json but no eval.json must be deleted first: its export stays behind).
# Another grid over the same data: RECIPE=recipes/experiment_formats_qwen3_16m_gpu.yaml GRID=formats (its cells go
# to runs/study/formats, packed into $OUT/formats.tgz).
#   scripts/gpu_study.sh [seconds]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-$PWD/out}; mkdir -p "$out"
budget=${1:-560}; t0=$(date +%s)
left() { echo $(( budget - ($(date +%s) - t0) )); }
QAD=${QAD:-build-gpu/qad}
if [ ! -x "$QAD" ] && [ -f .device/qad.gz ]; then
  mkdir -p build-gpu && gzip -dc .device/qad.gz > "$QAD" && chmod +x "$QAD" && echo "qad from .device/qad.gz"
fi
if [ ! -x "$QAD" ]; then
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a}
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DQAD_BUILD_TESTS=OFF -DQAD_BUILD_BENCH=OFF >/dev/null \
    && ninja -C build-gpu qad > build-gpu/study_build.log 2>&1 || { tail -20 build-gpu/study_build.log; exit 1; }
  echo "[$(( $(date +%s) - t0 )) s] built $QAD"
  strip -o build-gpu/qad.stripped "$QAD" && gzip -9c build-gpu/qad.stripped > "$out/qad.gz" && ls -la "$out/qad.gz"
fi
# Several cells share the 16 cores: a few threads each keeps them from oversubscribing the CPU.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
S=../shared; [ -d .shared ] && S=$PWD/.shared
dir=runs/study; mkdir -p $dir
grid=$dir/${GRID:-grid}
cfg=$dir/study.yaml
sed "s#\.\./shared#$S#g" ${RECIPE:-recipes/experiment_qwen3_16m_gpu.yaml} > $cfg
T=$S/models/qwen3-16m-teacher
[ -f $dir/data_train/index.json ] || $QAD data prepare --tokenizer $T --out $dir/data_train \
  --input $S/corpus/prose_train.jsonl.xz $S/tasks/arith/train.jsonl.xz 2>&1 | tail -2
[ -f $dir/data_valid/index.json ] || $QAD data prepare --tokenizer $T --out $dir/data_valid \
  --input $S/corpus/prose_valid.jsonl.xz 2>&1 | tail -2
mkdir -p $grid
[ -s $grid/teacher_arith.json ] || $QAD eval --model $T --tasks $S/tasks/arith/test.jsonl --json > $grid/teacher_arith.json 2>$dir/teacher_eval.log
echo "[$(( $(date +%s) - t0 )) s] data ready, teacher evaluated"
timeout -s TERM $(( $(left) - 45 )) $QAD experiment --config $cfg --out $grid --gpus 0 --cells-per-gpu ${CELLS:-8} \
  2>&1 | tail -40
sleep 3
$QAD experiment --config $cfg --out $grid --summarize-only 2>&1 | tail -60 | tee "$out/${GRID:-study}_summary.txt"
tar czf "$out/${GRID:-study}.tgz" --exclude='*.safetensors' --exclude='checkpoints' --exclude='export' --exclude='*.bin' -C $dir ${GRID:-grid}
echo "[$(( $(date +%s) - t0 )) s] end"
