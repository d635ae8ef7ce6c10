#!/usr/bin/env bash
# Builds (if needed) and runs the test suite. GPU tests skip with a reason on machines without a GPU.
# Usage: scripts/test.sh [ctest args...]   e.g. scripts/test.sh -L gpu
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f build/CMakeCache.txt ] || scripts/setup.sh build >/dev/null
cmake --build build -j "$(nproc)"
cd build && ctest --output-on-failure -j "$(nproc)" --timeout 1200 "$@"
