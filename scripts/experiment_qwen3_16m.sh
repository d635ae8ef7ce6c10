#!/usr/bin/env bash
# The GPU acceptance experiment of the trainer (docs/train.md): qwen3-16m-teacher, PTQ vs QAT vs QAD vs CKA-QAD
# with the same token budget (STEPS x BATCH x SEQ), on the corpus prose plus the arith chats the teacher was
# post-trained on. Prints held-out KL to the teacher, perplexity, agreement, mean and per-layer CKA; task
# accuracy on ../shared/tasks/arith/test.jsonl when this build has `qad eval`.
#   bash scripts/experiment_qwen3_16m.sh [OUT_DIR]       (repo root, GPU machine; STEPS, LR, LAMBDA, BATCH, SEQ)
set -euo pipefail
QAD=${QAD:-./build/qad}
OUT=${1:-runs/qwen3-16m}
STEPS=${STEPS:-2000}
LR=${LR:-5e-5}
LAMBDA=${LAMBDA:-0.1}
BATCH=${BATCH:-32}
SEQ=${SEQ:-512}
T=../shared/models/qwen3-16m-teacher
mkdir -p "$OUT"
[ -f "$OUT/data_train/index.json" ] || "$QAD" data prepare --tokenizer "$T" --output "$OUT/data_train" \
  --input ../shared/corpus/prose_train.jsonl.xz ../shared/tasks/arith/train.jsonl.xz
[ -f "$OUT/data_valid/index.json" ] || "$QAD" data prepare --tokenizer "$T" --output "$OUT/data_valid" \
  --input ../shared/corpus/prose_valid.jsonl.xz

for m in ptq qat qad cka_qad; do
  name=${m/_/-}
  [ -s "$OUT/$name/final_metrics.json" ] && continue
  rm -rf "${OUT:?}/$name"
  recipe=()
  [ "$m" != ptq ] && recipe=(--config "recipes/$m.yaml")
  extra=()
  [ "$m" = cka_qad ] && extra=(--cka "$LAMBDA")
  "$QAD" distill --method "$name" "${recipe[@]}" --teacher "$T" --data "$OUT/data_train" --valid-data "$OUT/data_valid" \
    --out "$OUT/$name" --steps "$STEPS" --lr "$LR" --batch-size "$BATCH" --seq-len "$SEQ" --valid-every 200 \
    --valid-batches 32 --checkpoint-every 1000 --log-every 50 "${extra[@]}"
done

if "$QAD" eval --help >/dev/null 2>&1; then
  for m in ptq qat qad cka-qad; do
    "$QAD" eval --help | grep -q -- --task && "$QAD" eval --model "$OUT/$m/export/nvfp4" --task arith --json \
      > "$OUT/$m/arith.json" || true
  done
fi

python3 - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
rows = [(m, json.loads((out / m / "final_metrics.json").read_text())) for m in ["ptq", "qat", "qad", "cka-qad"]]
layers = sorted(rows[0][1].get("cka", {}), key=lambda s: int(s.split(".")[1]))
print(f"{'method':<8} {'KL':>9} {'ppl':>9} {'agree':>7} {'meanCKA':>9} " + " ".join(f"{l.split('.')[1]:>7}" for l in layers))
for m, f in rows:
    print(f"{m:<8} {f['kl']:>9.5f} {f['ppl']:>9.4f} {f['agreement']:>7.4f} {f['mean_cka']:>9.5f} " +
          " ".join(f"{f['cka'][l]:>7.4f}" for l in layers))
PY
