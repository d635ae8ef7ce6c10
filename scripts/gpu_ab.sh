#!/usr/bin/env bash
# A/B of the CKA-QAD cost on one GPU machine in one device call: bench_train's QAD-vs-recipe ratio for the working
# tree and for a base commit, built in turn in one build directory (the base incrementally, only the files that
# differ), so that both readings come from the same machine. (Readings of the same code on different machines
# differ by more than their per-round intervals: docs/benchmarks.md, session 24.)
#   here:   scripts/gpu_ab.sh prepare BASE     # writes .gl/ab/: BASE's version of every file under src/ and bench/
#                                              # that differs, and the list of files BASE does not have
#   device: scripts/gpu_ab.sh run              # with carry [".gl/ab"]; results in $OUT (cka_tree.txt, cka_base.txt)
# Env for run: MODELS (0.6b), ROUNDS (100), BUILD_S (each build's limit, 300), BUDGET (s, 570).
set -uo pipefail
cd "$(dirname "$0")/.."
ab=.gl/ab

if [ "${1:-}" = prepare ]; then
  base=${2:?usage: scripts/gpu_ab.sh prepare BASE}
  rm -rf "$ab" && mkdir -p "$ab/base"
  git rev-parse --short "$base" > "$ab/base_commit"
  : > "$ab/added"
  for f in $(git diff --name-only "$base" -- src bench); do
    if git cat-file -e "$base:$f" 2>/dev/null; then
      mkdir -p "$ab/base/$(dirname "$f")" && git show "$base:$f" > "$ab/base/$f"
    else
      echo "$f" >> "$ab/added"
    fi
  done
  echo "$(find "$ab/base" -type f | wc -l) file(s) differ from $(cat "$ab/base_commit"), $(wc -l < "$ab/added") added since"
  exit 0
fi
[ "${1:-}" = run ] || { echo "usage: scripts/gpu_ab.sh prepare BASE | run" >&2; exit 2; }
[ -d "$ab/base" ] || { echo "no $ab/base: run 'scripts/gpu_ab.sh prepare BASE' here and carry .gl/ab" >&2; exit 2; }

out=${OUT:-$PWD/out}; mkdir -p "$out"; t0=$(date +%s); B=build-gpu
el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
left() { echo $(( ${BUDGET:-570} - ($(date +%s) - t0) )); }
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/device.txt"
cmake -S . -B $B -G Ninja -DCMAKE_BUILD_TYPE=Release -DQAD_BUILD_BENCH=ON >/tmp/cmake.log 2>&1 || { tail -20 /tmp/cmake.log; exit 1; }

build() {  # label
  timeout "${BUILD_S:-300}" ninja -C $B bench_train > "$out/build_$1.log" 2>&1 ||
    { grep -E "error|FAILED" "$out/build_$1.log" | head -20; el "$1: build failed or ran past BUILD_S"; return 1; }
  el "$1 built"
}
bench() {  # label
  local models=${MODELS:-0.6b} rounds=${ROUNDS:-100} limit
  limit=$(( $(left) - 5 )); [ "$1" = tree ] && limit=$(( limit / 3 ))  # leave the base its build and bench
  timeout "$limit" $B/bench_train --models "$models" --variants qad,recipe --iters 1 --warmup 3 --rounds "$rounds" \
    --turn-warmup 0 --no-torch 2>&1 | grep -v -E "^ +[0-9]+ +[0-9.]+ +[0-9.]+% " > "$out/cka_$1.txt"
  echo "== $1"; grep -E "^(QAD|CKA-QAD).*[0-9]x" "$out/cka_$1.txt"; grep "per-round" "$out/cka_$1.txt" | sed 's/.*per-round/  per-round/'
}

build tree && bench tree
files=$(cd "$ab/base" && find . -type f | sed 's|^\./||')
mkdir -p "$ab/tree"
for f in $files; do mkdir -p "$ab/tree/$(dirname "$f")"; cp "$f" "$ab/tree/$f"; cp "$ab/base/$f" "$f"; done
while read -r f; do [ -n "$f" ] && mkdir -p "$ab/tree/$(dirname "$f")" && mv "$f" "$ab/tree/$f.added"; done < "$ab/added"
build "base_$(cat "$ab/base_commit")" && bench base
for f in $files; do cp "$ab/tree/$f" "$f"; done
while read -r f; do [ -n "$f" ] && mv "$ab/tree/$f.added" "$f"; done < "$ab/added"
el end
