#!/usr/bin/env bash
# On the GPU machine (transformers 5.17): make the Qwen3-MoE fixtures (tools/make_moe_fixtures.py) and pack
# them, with the transformers sources they were made against, into $OUT/moe_fixtures.tar for committing.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-$PWD/out}; mkdir -p "$out"
work=$(mktemp -d); mkdir -p "$work/fixtures" "$work/notes"
PYTHONUNBUFFERED=1 python3 tools/make_moe_fixtures.py --out "$work/fixtures" --notes "$work/notes" \
  >"$work/notes/make_moe_fixtures.log" 2>&1
status=$?
tar cf "$out/moe_fixtures.tar" -C "$work" fixtures notes
tail -40 "$work/notes/make_moe_fixtures.log"
du -sh "$work"/fixtures/* 2>/dev/null
exit $status
