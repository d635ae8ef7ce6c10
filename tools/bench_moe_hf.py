#!/usr/bin/env python3
"""transformers baseline for bench_moe: a Qwen3-30B-A3B-shaped Qwen3MoeForCausalLM or (--shape nemotron-3-nano) a
Nemotron-3-Nano-30B-A3B-shaped NemotronHForCausalLM (random BF16 weights, the first --layers layers / blocks) on
CUDA, sdpa attention (NemotronH's Mamba-2 mixer on transformers' torch path: mamba_ssm and causal_conv1d are not
installed, use_mamba_kernels=False), measured the way bench_moe measures qad:
  forward: no KV cache, all logits, torch.inference_mode(), once with the eager expert loop and once with
           transformers' default experts kernel when that is another one (5.x: grouped_mm on CUDA);
  QAD step: teacher forward (no grad) + student forward + KL(teacher || student) in FP32 + backward + AdamW
           (foreach, FP32 moments on BF16 weights), WITHOUT fake quantization: a lower bound of the cost of a real
           QAD step, which qad pays in full (every expert NVFP4).

    python3 tools/bench_moe_hf.py [--shape qwen3-30b-a3b|nemotron-3-nano] --layers 8 --batch 4 --seq 2048 --iters 5 [--json]

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


NEMOTRON_PATTERN = "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME"


def nemotron_config(layers):
    """Nemotron 3 Nano 30B-A3B's config.json values, cut to the first `layers` blocks (as bench_moe.cc)."""
    pattern = NEMOTRON_PATTERN[:layers]
    kwargs = dict(vocab_size=131072, hidden_size=2688, num_attention_heads=32, num_key_value_heads=2, head_dim=128,
                  intermediate_size=1856, mlp_hidden_act="relu2", mamba_num_heads=64, mamba_head_dim=64,
                  ssm_state_size=128, n_groups=8, conv_kernel=4, chunk_size=128, expand=2, use_conv_bias=True,
                  mamba_proj_bias=False, mamba_hidden_act="silu", layer_norm_epsilon=1e-5, n_routed_experts=128,
                  num_experts_per_tok=6, moe_intermediate_size=1856, moe_shared_expert_intermediate_size=3712,
                  n_shared_experts=1, n_group=1, topk_group=1, routed_scaling_factor=2.5, norm_topk_prob=True,
                  max_position_embeddings=262144, tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
                  use_mamba_kernels=False)
    cls = transformers.NemotronHConfig
    known = set(cls().to_dict().keys())
    kwargs = {k: v for k, v in kwargs.items() if k in known}
    try:
        return cls(hybrid_override_pattern=pattern, num_hidden_layers=layers, attn_implementation="sdpa", **kwargs)
    except TypeError:  # a config class that derives the layer count from the pattern
        return cls(hybrid_override_pattern=pattern, attn_implementation="sdpa", **kwargs)


def build(config, seed):
    torch.manual_seed(seed)
    cls = transformers.NemotronHForCausalLM if config.model_type == "nemotron_h" else transformers.Qwen3MoeForCausalLM
    with torch.device("cuda"):
        model = cls(config).to(torch.bfloat16)
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
    ap.add_argument("--shape", default="qwen3-30b-a3b", choices=["qwen3-30b-a3b", "nemotron-3-nano"])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.shape == "nemotron-3-nano":
        config = nemotron_config(a.layers)
    else:
        config = transformers.Qwen3MoeConfig(**shape(a.layers), attn_implementation="sdpa")
    ids = torch.randint(0, config.vocab_size, (a.batch, a.seq), device="cuda")
    meta = {"version": transformers.__version__, "torch": torch.__version__, "device": torch.cuda.get_device_name(),
            "shape": a.shape, "layers": a.layers, "batch": a.batch, "seq": a.seq}

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
