#!/usr/bin/env bash
# On the GPU machine, in one call: build qad with CUDA, run the GPU tests, the CPU tests and the benchmarks.
# Logs go to $OUT (the device tool's result folder) or ./out. Usage:
#   scripts/gpu_check.sh [build] [gpu-tests] [cpu-tests] [bench[=name,...]] [selfcheck]   (default: all)
# ../shared does not travel to the GPU machine: copy what tests need into .shared/ (ignored) and carry it;
# QAD_SHARED_DIR points the tests there.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-$PWD/out}
mkdir -p "$out"
steps=${*:-build gpu-tests cpu-tests bench selfcheck}
jobs=$(nproc)
[ -d .shared ] && export QAD_SHARED_DIR=$PWD/.shared
status=0
has() { [[ " $steps " == *" $1"* ]]; }

{ echo "commit ${QAD_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}";
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader;
  python3 -c 'import torch; print("torch", torch.__version__)'; } | tee "$out/device.txt"

if has build; then
  gen=""; command -v ninja >/dev/null && gen="-G Ninja"
  cmake -S . -B build-gpu $gen -DCMAKE_BUILD_TYPE=Release -DQAD_BUILD_TESTS=ON -DQAD_BUILD_BENCH=ON >"$out/cmake.log" 2>&1 || { tail -40 "$out/cmake.log"; exit 1; }
  grep -E "qad [0-9]|CUDA kernels" "$out/cmake.log"
  if ! cmake --build build-gpu -j "$jobs" >"$out/build.log" 2>&1; then
    grep -E "error|Error" "$out/build.log" | head -40; exit 1
  fi
  echo "build: ok"
  # The kernels must carry Hopper machine code, not only PTX for a default architecture.
  cuobjdump -lelf build-gpu/src/nvfp4/CMakeFiles/qad_nvfp4.dir/kernels_cuda.cu.o 2>/dev/null | tr '\n' ' '; echo
fi
if has gpu-tests; then
  (cd build-gpu && ctest -L gpu --output-on-failure --timeout 900) >"$out/ctest-gpu.log" 2>&1 || status=1
  grep -E "tests passed|tests failed|Failed|\*\*\*" "$out/ctest-gpu.log" | tail -15
fi
if has cpu-tests; then
  (cd build-gpu && ctest -L cpu -j "$jobs" --output-on-failure --timeout 900) >"$out/ctest-cpu.log" 2>&1 || status=1
  grep -E "tests passed|tests failed|Failed|\*\*\*" "$out/ctest-cpu.log" | tail -15
fi
if has bench; then
  sel=$(printf '%s\n' $steps | sed -n 's/^bench=//p' | tr ',' ' ')
  for b in build-gpu/bench_*; do
    name=${b#build-gpu/bench_}
    [ -n "$sel" ] && [[ " $sel " != *" $name "* ]] && continue
    echo "== bench_$name"; "$b" 2>&1 | tee "$out/bench_$name.txt" || status=1
  done
fi
if has selfcheck; then
  build-gpu/qad selfcheck --device cuda 2>&1 | tee "$out/selfcheck.txt" || status=1
fi
exit $status
