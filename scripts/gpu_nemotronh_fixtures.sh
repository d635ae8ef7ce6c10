#!/usr/bin/env bash
# On the GPU machine (transformers 5.17): make the NemotronH fixtures (tools/make_nemotronh_fixtures.py) and pack
# them, with the transformers sources they were made against, into $OUT/nemotronh_fixtures.tar for committing
# (unpack into tests/fixtures/models: the tar holds fixtures/nemotronh_* and notes/).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-$PWD/out}; mkdir -p "$out"
work=$(mktemp -d); mkdir -p "$work/fixtures" "$work/notes"
PYTHONUNBUFFERED=1 timeout 300 python3 tools/make_nemotronh_fixtures.py --out "$work/fixtures" --notes "$work/notes" \
  >"$work/notes/make_nemotronh_fixtures.log" 2>&1
status=$?
tar cf "$out/nemotronh_fixtures.tar" -C "$work" fixtures notes
tail -60 "$work/notes/make_nemotronh_fixtures.log"
du -sh "$work"/fixtures/* 2>/dev/null
exit $status
