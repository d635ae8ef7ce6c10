#!/usr/bin/env bash
# Installs what qad needs on Debian 12 / Ubuntu 24.04 (skipped where already present) and builds it.
# Usage: scripts/setup.sh [--run] [build-dir]   (default: build; --run then runs the default job)
set -euo pipefail
cd "$(dirname "$0")/.."
run=0
if [ "${1:-}" = "--run" ]; then run=1; shift; fi
build=${1:-build}

packages=(cmake g++ make libtorch-dev nlohmann-json3-dev libcli11-dev libfmt-dev libyaml-cpp-dev
          libgtest-dev libgmock-dev libbenchmark-dev libzstd-dev xz-utils libgloo-dev
          libopenblas0-pthread)  # Debian's LibTorch calls libblas.so.3: OpenBLAS instead of the ~8x slower reference BLAS
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  # libtorch-dev exists only on the CPU machines; a CUDA machine brings LibTorch with python3's torch.
  if python3 -c 'import torch' 2>/dev/null; then missing=("${missing[@]/libtorch-dev}"); fi
  echo "setup: installing ${missing[*]}"
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends ${missing[*]} >/dev/null
fi

jobs=$(nproc)
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release
cmake --build "$build" -j "$jobs"

if [ $run -eq 1 ]; then
  # The default job: generated task -> tiny teacher -> PTQ / QAT / QAD / CKA-QAD -> comparison table (~2-3 min on
  # 2 CPU cores), then the NVFP4 numerics self-check.
  "$build/qad" demo --out qad-demo
  exec "$build/qad" selfcheck
fi
