#!/usr/bin/env python3
"""transformers baseline for bench_moe: a Qwen3-30B-A3B-shaped Qwen3MoeForCausalLM (random BF16 weights, the first
--layers layers) on CUDA, sdpa attention, measured the way bench_moe measures qad:
  forward: no KV cache, all logits, torch.inference_mode(), once with the eager expert loop and once with
           transformers' default experts kernel when that is another one (5.x: grouped_mm on CUDA);
  QAD step: teacher forward (no grad) + student forward + KL(teacher || student) in FP32 + backward + AdamW
           (foreach, FP32 moments on BF16 weights), WITHOUT fake quantization: a lower bound of the cost of a real
           QAD step, which qad pays in full (every expert NVFP4).

    python3 tools/bench_moe_hf.py --layers 8 --batch 4 --seq 2048 --iters 5 [--json]

With --json, one JSON object per measurement and line (bench_moe parses them)."""
import argparse
import gc
import json
import statistics
import time

import torch
import torch.nn.functional as F
import transformers


def shape(layers):
    return dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=layers,
                num_attention_heads=32, num_key_value_heads=4, head_dim=128, max_position_embeddings=40960,
                rms_norm_eps=1e-6, tie_word_embeddings=False, hidden_act="silu", num_experts=128,
                num_experts_per_tok=8, moe_intermediate_size=768, norm_topk_prob=True, decoder_sparse_step=1,
                mlp_only_layers=[], rope_parameters=dict(rope_type="default", rope_theta=1000000.0))


def build(config, seed):
    torch.manual_seed(seed)
    with torch.device("cuda"):
        model = transformers.Qwen3MoeForCausalLM(config).to(torch.bfloat16)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    return model


def set_experts(model, impl):
    if impl is None:
        return True
    if not hasattr(model, "set_experts_implementation"):
        return impl == "eager"
    try:
        model.set_experts_implementation(impl)
        return True
    except Exception as e:  # noqa: BLE001
        print(f"experts implementation {impl}: {e}")
        return False


def median_ms(warmup, iters, f):
    times = []
    for i in range(warmup + iters):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        f()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    config = transformers.Qwen3MoeConfig(**shape(a.layers), attn_implementation="sdpa")
    ids = torch.randint(0, config.vocab_size, (a.batch, a.seq), device="cuda")
    meta = {"version": transformers.__version__, "torch": torch.__version__, "device": torch.cuda.get_device_name(),
            "layers": a.layers, "batch": a.batch, "seq": a.seq}

    def report(what, label, ms):
        out = dict(impl="transformers", what=what, label=label, median_ms=ms,
                   tokens_per_s=a.batch * a.seq / (ms / 1e3), **meta)
        print(json.dumps(out) if a.json else f"{label}: {ms:.1f} ms, {out['tokens_per_s']:.0f} tokens/s", flush=True)

    model = build(config, 1).eval()
    default_impl = getattr(model.config, "_experts_implementation", None)
    for impl in ["eager"] + ([default_impl] if default_impl not in (None, "eager") else []):
        if not set_experts(model, impl):
            continue
        with torch.inference_mode():
            ms = median_ms(a.warmup, a.iters, lambda: model(input_ids=ids, use_cache=False))
        report("forward", f"transformers {transformers.__version__} {impl} experts", ms)

    # QAD step without fake quantization, eager experts.
    set_experts(model, "eager")
    teacher = model
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = build(config, 1).train()
    set_experts(student, "eager")
    opt = torch.optim.AdamW(student.parameters(), lr=1e-5, foreach=True)

    def step():
        with torch.no_grad():
            t = teacher(input_ids=ids, use_cache=False).logits
        s = student(input_ids=ids, use_cache=False).logits
        kl = F.kl_div(F.log_softmax(s.float(), -1), F.log_softmax(t.float(), -1), log_target=True,
                      reduction="batchmean") / a.seq
        kl.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    try:
        ms = median_ms(a.warmup, a.iters, step)
        report("qad_step", "QAD step, transformers eager, no fake quant", ms)
    except torch.OutOfMemoryError as e:
        print(f"QAD step, transformers: out of memory ({str(e)[:200]}); try fewer --layers", flush=True)
    del student, opt
    gc.collect()


if __name__ == "__main__":
    main()
