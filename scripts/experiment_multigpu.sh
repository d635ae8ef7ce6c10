#!/usr/bin/env bash
# The multi-GPU acceptance experiment (docs/dist.md, issue 8) on nvidia-h200-x2, after
# `bash scripts/gpu_check.sh build`: QAD of a random Qwen3-1.7B-shaped model (the qwen3-16m tokenizer, prose
# corpus) with the same global batch on 1 rank and on 2 ranks (ZeRO-1 on, and off), printing tokens/s, the
# 2-vs-1 throughput ratio (goal >= 1.85x), per-GPU peak memory against the prediction, and both loss curves.
#   bash scripts/experiment_multigpu.sh [OUT_DIR]     (repo root; STEPS, BATCH (global rows), SEQ; ~6-8 min)
# Results: OUT_DIR/summary.txt and summary.json, and each run's metrics.jsonl.
set -euo pipefail
QAD=${QAD:-./build/qad}
MAKE_MODEL=${MAKE_MODEL:-./build/make_random_model}
OUT=${1:-${OUT:-runs/multigpu}}
STEPS=${STEPS:-30}
BATCH=${BATCH:-16}   # global rows per step: 1 rank x 16, or 2 ranks x 8
SEQ=${SEQ:-2048}
SHARED=${QAD_SHARED_DIR:-../shared}
TOK=$SHARED/models/qwen3-16m-teacher
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpus.txt"

[ -f "$OUT/teacher/config.json" ] || "$MAKE_MODEL" --shape qwen3-1.7b --out "$OUT/teacher" --tokenizer-from "$TOK"
[ -f "$OUT/data/index.json" ] || "$QAD" data prepare --tokenizer "$TOK" --out "$OUT/data" \
  --input $SHARED/corpus/prose_train.jsonl.xz --valid-fraction 0.01

common=(distill --method qad --teacher "$OUT/teacher" --data "$OUT/data" --steps "$STEPS" --seq-len "$SEQ"
        --lr 1e-5 --warmup-ratio 0.1 --valid-every 0 --valid-batches 1 --calib-batches 2 --log-every 5
        --set run.checkpoint_every=-1 --set run.export_nvfp4=false)
run() {  # name, then extra flags
  local name=$1; shift
  [ -s "$OUT/$name/metrics.jsonl" ] && [ "$(grep -c '"type":"train"' "$OUT/$name/metrics.jsonl")" -ge "$STEPS" ] && return
  rm -rf "${OUT:?}/$name"
  local t0=$SECONDS
  "$QAD" "${common[@]}" --out "$OUT/$name" "$@" 2>&1 | tee "$OUT/$name.log" | grep -E "^step|data parallel|error" || true
  echo "$name: $((SECONDS - t0)) s wall"
}
# One H200 cannot hold 16 x 2048 rows of a 1.7B QAD step: the 1-rank run takes the same global batch as two
# micro-batches of 8 (gradient accumulation), the per-GPU micro-batch of the 2-rank runs.
run one_rank  --batch-size $((BATCH / 2)) --grad-accum 2 --device cuda:0
run two_ranks --batch-size $((BATCH / 2)) --nproc-per-node 2
run two_ranks_nozero --batch-size $((BATCH / 2)) --nproc-per-node 2 --zero 0

python3 - "$OUT" "$STEPS" <<'PY'
import json, sys, pathlib
out, steps = pathlib.Path(sys.argv[1]), int(sys.argv[2])
def load(name):
    recs = [json.loads(l) for l in (out / name / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if r.get("type") == "train"]
runs = {n: load(n) for n in ["one_rank", "two_ranks", "two_ranks_nozero"]}
skip = max(3, steps // 5)  # warm-up steps left out of the throughput
def tps(recs):
    xs = [r["tokens_per_s"] for r in recs[skip:]]
    return sum(xs) / len(xs)
def peak(recs):
    return max(r["peak_mem_gb"] for r in recs)
# Prediction (docs/dist.md): P = 1.7206e9 parameters; teacher BF16 2 + student BF16 2 + gradients BF16 2 bytes
# per parameter, plus FP32 master + two moments 12 bytes (ZeRO-1 over N ranks: 12 / N).
P = 1.7206e9
pred = {"one_rank": 18 * P / 1e9, "two_ranks": (6 + 12 / 2) * P / 1e9, "two_ranks_nozero": 18 * P / 1e9}
lines = []
for n, recs in runs.items():
    lines.append(f"{n:<18} {tps(recs):>10.0f} tok/s   peak {peak(recs):6.2f} GB   predicted weights+grads+optimizer "
                 f"{pred[n]:6.2f} GB   activations etc. {peak(recs) - pred[n]:6.2f} GB")
ratio = tps(runs["two_ranks"]) / tps(runs["one_rank"])
ratio_nz = tps(runs["two_ranks_nozero"]) / tps(runs["one_rank"])
drop = peak(runs["two_ranks_nozero"]) - peak(runs["two_ranks"])
lines.append(f"throughput 2 ranks / 1 rank: {ratio:.3f}x with ZeRO-1, {ratio_nz:.3f}x without (goal >= 1.85x)")
lines.append(f"peak memory drop from ZeRO-1 (2 ranks): {drop:.2f} GB measured, {6 * P / 1e9:.2f} GB predicted "
             f"(6 bytes/param: half of 12)")
lines.append("step   loss 1 rank   loss 2 ranks   rel diff   loss 2 ranks no ZeRO")
worst = 0.0
for a, b, c in zip(runs["one_rank"], runs["two_ranks"], runs["two_ranks_nozero"]):
    d = abs(a["loss"] - b["loss"]) / max(abs(a["loss"]), 1e-12)
    worst = max(worst, d)
    lines.append(f"{a['step']:>4}   {a['loss']:.6f}      {b['loss']:.6f}       {d:.2e}   {c['loss']:.6f}")
lines.append(f"max relative loss difference 2 ranks vs 1 rank: {worst:.2e}")
text = "\n".join(lines)
print(text)
(out / "summary.txt").write_text(text + "\n")
(out / "summary.json").write_text(json.dumps({
    "tokens_per_s": {n: tps(r) for n, r in runs.items()}, "peak_gb": {n: peak(r) for n, r in runs.items()},
    "predicted_state_gb": pred, "ratio_2v1": ratio, "ratio_2v1_nozero": ratio_nz, "zero_drop_gb": drop,
    "max_rel_loss_diff": worst}, indent=2) + "\n")
PY
