#!/usr/bin/env bash
# On the GPU machine: regenerate the reference fixtures that need transformers (tools/*.py), check the C++
# side against them, and pack them into $OUT/fixtures.tar for committing. Needs .shared/ (corpus, models).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-$PWD/out}; mkdir -p "$out"
export QAD_SHARED_DIR=$PWD/.shared PYTHONUNBUFFERED=1
status=0
python3 tools/make_model_fixtures.py --out tests/fixtures/models >"$out/fixtures_models.log" 2>&1 || { status=1; tail -20 "$out/fixtures_models.log"; }
python3 tools/cka_record_activations.py --model .shared/models/qwen3-16m-teacher --out tests/fixtures/cka \
  --corpus .shared/corpus/prose_valid.jsonl.xz >"$out/fixtures_cka.log" 2>&1 &&
  python3 tools/cka_reference.py expected tests/fixtures/cka >>"$out/fixtures_cka.log" 2>&1 || { status=1; tail -20 "$out/fixtures_cka.log"; }
tar cf "$out/fixtures.tar" tests/fixtures
du -sh tests/fixtures/*
exit $status
