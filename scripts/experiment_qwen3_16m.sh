#!/usr/bin/env bash
# The GPU acceptance experiment of the trainer (docs/train.md): qwen3-16m-teacher, PTQ vs QAT vs QAD vs CKA-QAD
# with the same token budget (STEPS x BATCH x SEQ), on the corpus prose plus the arith chats the teacher was
# post-trained on. Prints held-out KL to the teacher, perplexity, agreement, mean and per-layer CKA; task
# accuracy on $SHARED/tasks/arith/test.jsonl when this build has `qad eval`.
#   bash scripts/experiment_qwen3_16m.sh [OUT_DIR]       (repo root, GPU machine; STEPS, LR, LAMBDA, BATCH, SEQ)
set -euo pipefail
QAD=${QAD:-./build/qad}
OUT=${1:-runs/qwen3-16m}
STEPS=${STEPS:-2000}
LR=${LR:-5e-5}
LAMBDA=${LAMBDA:-0.1}
BATCH=${BATCH:-32}
SEQ=${SEQ:-512}
SHARED=${QAD_SHARED_DIR:-../shared}
T=$SHARED/models/qwen3-16m-teacher
mkdir -p "$OUT"
[ -f "$OUT/data_train/index.json" ] || "$QAD" data prepare --tokenizer "$T" --out "$OUT/data_train" \
  --input $SHARED/corpus/prose_train.jsonl.xz $SHARED/tasks/arith/train.jsonl.xz
[ -f "$OUT/data_valid/index.json" ] || "$QAD" data prepare --tokenizer "$T" --out "$OUT/data_valid" \
  --input $SHARED/corpus/prose_valid.jsonl.xz

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

# Task accuracy (greedy generation, answer after </think>) on the arith test set, each student's NVFP4 export.
for m in ptq qat qad cka-qad; do
  [ -s "$OUT/$m/arith.json" ] || "$QAD" eval --model "$OUT/$m/export/nvfp4" --tasks "$SHARED/tasks/arith/test.jsonl" \
    --json > "$OUT/$m/arith.json"
done
[ -s "$OUT/teacher_arith.json" ] || "$QAD" eval --model "$T" --tasks "$SHARED/tasks/arith/test.jsonl" --json \
  > "$OUT/teacher_arith.json"

python3 - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
rows = [(m, json.loads((out / m / "final_metrics.json").read_text())) for m in ["ptq", "qat", "qad", "cka-qad"]]
layers = sorted(rows[0][1].get("cka", {}), key=lambda s: int(s.split(".")[1]))
def arith(path):
    try:
        return json.loads(path.read_text())["tasks"]["accuracy"]
    except Exception:
        return float("nan")
print("teacher arith accuracy", arith(out / "teacher_arith.json"))
print(f"{'method':<8} {'KL':>9} {'ppl':>9} {'agree':>7} {'arith':>7} {'meanCKA':>9} " + " ".join(f"{l.split('.')[1]:>7}" for l in layers))
for m, f in rows:
    print(f"{m:<8} {f['kl']:>9.5f} {f['ppl']:>9.4f} {f['agreement']:>7.4f} {arith(out / m / 'arith.json'):>7.4f} "
          f"{f['mean_cka']:>9.5f} " +
          " ".join(f"{f['cka'][l]:>7.4f}" for l in layers))
PY
