#!/usr/bin/env python3
"""transformers baseline for bench_model: forward tokens/s of a Qwen3-0.6B-shaped model with random
weights in BF16 on CUDA, attn_implementation="sdpa", no KV cache, all logits computed (as qad does).

    python3 tools/bench_forward_hf.py --batch 8 --seq 2048 --iters 10 [--json]

Prints one JSON object with --json (bench_model runs this script itself and parses it)."""
import argparse
import json
import statistics
import time

import torch
import transformers

QWEN3_0_6B = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                  rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu",
                  rope_parameters=dict(rope_type="default", rope_theta=1000000.0))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.manual_seed(0)
    config = transformers.Qwen3Config(**QWEN3_0_6B, attn_implementation="sdpa")
    with torch.device("cuda"):
        model = transformers.Qwen3ForCausalLM(config).to(torch.bfloat16).eval()
    ids = torch.randint(0, config.vocab_size, (a.batch, a.seq), device="cuda")
    times = []
    with torch.inference_mode():
        for i in range(a.warmup + a.iters):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(input_ids=ids, use_cache=False)
            torch.cuda.synchronize()
            if i >= a.warmup:
                times.append(time.perf_counter() - t0)
    ms = statistics.median(times) * 1e3
    out = {"impl": "transformers", "version": transformers.__version__, "torch": torch.__version__,
           "batch": a.batch, "seq": a.seq, "median_ms": ms, "tokens_per_s": a.batch * a.seq / (ms / 1e3),
           "device": torch.cuda.get_device_name()}
    print(json.dumps(out) if a.json else f"transformers {out['version']} sdpa: {ms:.1f} ms, "
                                         f"{out['tokens_per_s']:.0f} tokens/s on {out['device']}")


if __name__ == "__main__":
    main()
