#!/usr/bin/env python3
"""Tiny random HF checkpoints with transformers' own outputs, for tests/model/fixtures_test.cc.

Run on the GPU machine (transformers 5.17, torch 2.11) from the repo root:
    python3 tools/make_model_fixtures.py --out tests/fixtures/models
Writes one folder per model: config.json, model.safetensors (or shards + model.safetensors.index.json)
and reference.safetensors with, all computed on the CPU in FP32 with eager attention:
    input_ids      I64 [2, T]
    logits         F32 [2, T, vocab]
    hidden.layers.N F32 [2, T, hidden]  output of decoder layer N (forward hook: the residual stream)
    hidden.norm    F32 [2, T, hidden]  after the final RMSNorm (= output_hidden_states[-1])
Weights are re-drawn with larger scales than HF's init (std 0.02 would make every logit ~0 and the test
weak). Deterministic for a given seed. Total size stays well under 5 MB.
"""
import argparse
import json
import os
import shutil

import torch
import transformers
from safetensors.torch import save_file

COMMON = dict(vocab_size=256, hidden_size=64, intermediate_size=128, rms_norm_eps=1e-6,
              max_position_embeddings=256, hidden_act="silu")

FIXTURES = {
    # Llama 3 style: llama3 RoPE scaling (original_max_position_embeddings small so that all three
    # frequency bands - scaled, smoothed, untouched - occur at head_dim 16), GQA 4:2, untied.
    "llama3_rope_gqa_untied": ("llama", dict(num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                             tie_word_embeddings=False,
                                             rope_parameters=dict(rope_type="llama3", rope_theta=10000.0, factor=8.0,
                                                                  low_freq_factor=1.0, high_freq_factor=4.0,
                                                                  original_max_position_embeddings=32)), None),
    # Llama, tied embeddings, plain multi-head attention, saved in shards with an index.
    "llama_tied_mha_sharded": ("llama", dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                             tie_word_embeddings=True,
                                             rope_parameters=dict(rope_type="default", rope_theta=500000.0)),
                               "60KB"),
    # Qwen2: q/k/v bias, GQA 4:1, untied.
    "qwen2_bias_gqa_untied": ("qwen2", dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                                            tie_word_embeddings=False,
                                            rope_parameters=dict(rope_type="default", rope_theta=1000000.0)), None),
    # Qwen3: q_norm/k_norm, explicit head_dim 32 (q width 128 != hidden 64), GQA 4:2, tied.
    "qwen3_qknorm_headdim_tied": ("qwen3", dict(num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                                head_dim=32, tie_word_embeddings=True,
                                                rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
                                  None),
}

CLASSES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
}


def redraw(model, gen):
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=gen)
            p.copy_(1 + 0.1 * r if name.endswith("norm.weight") else (0.1 if name.endswith("bias") else 0.2) * r)


def make(name, family, extra, shard, out, seed, tokens):
    cfg_cls, model_cls = CLASSES[family]
    config = cfg_cls(**COMMON, **extra, attn_implementation="eager")
    torch.manual_seed(seed)
    model = model_cls(config).to(torch.float32).eval()
    gen = torch.Generator().manual_seed(seed)
    redraw(model, gen)
    if config.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    d = os.path.join(out, name)
    shutil.rmtree(d, ignore_errors=True)
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(d, **kwargs)
    for extra_file in ("generation_config.json",):
        if os.path.exists(os.path.join(d, extra_file)):
            os.remove(os.path.join(d, extra_file))

    ids = torch.randint(0, config.vocab_size, (2, tokens), generator=gen)
    captured = {}
    hooks = [layer.register_forward_hook(
        lambda m, i, o, n=n: captured.__setitem__(n, (o[0] if isinstance(o, tuple) else o).detach().clone()))
        for n, layer in enumerate(model.model.layers)]
    with torch.no_grad():
        res = model(input_ids=ids, output_hidden_states=True, use_cache=False)
    for h in hooks:
        h.remove()
    ref = {"input_ids": ids.to(torch.int64).contiguous(), "logits": res.logits.float().contiguous(),
           "hidden.norm": res.hidden_states[-1].float().contiguous()}
    for n, t in captured.items():
        ref[f"hidden.layers.{n}"] = t.float().contiguous()
    # Cross-check the hooks against output_hidden_states for every layer but the last (which is normed there).
    for n in range(config.num_hidden_layers - 1):
        assert torch.equal(ref[f"hidden.layers.{n}"], res.hidden_states[n + 1]), n
    # transformers' own BF16 error on the GPU against this FP32 reference: the yardstick for qad's BF16
    # check (tests/model/fixtures_test.cc allows 1.5x it). Same metric as the test: max |diff| / max(1, max |ref|).
    if torch.cuda.is_available():
        m16 = model_cls(config).eval()
        m16.load_state_dict(model.state_dict())
        m16.set_attn_implementation("sdpa")
        m16 = m16.to("cuda", torch.bfloat16)
        cap16 = {}
        hooks = [layer.register_forward_hook(
            lambda m, i, o, n=n: cap16.__setitem__(n, (o[0] if isinstance(o, tuple) else o).detach().float().cpu()))
            for n, layer in enumerate(m16.model.layers)]
        with torch.no_grad():
            r16 = m16(input_ids=ids.cuda(), output_hidden_states=True, use_cache=False)
        for h in hooks:
            h.remove()
        def rel(got, want):
            return ((got.double() - want.double()).abs().max() / max(1.0, want.abs().max().item())).reshape(()).float()
        ref["hf_bf16_rel_err.logits"] = rel(r16.logits.float().cpu(), ref["logits"])
        ref["hf_bf16_rel_err.norm"] = rel(r16.hidden_states[-1].float().cpu(), ref["hidden.norm"])
        for n, t in cap16.items():
            ref[f"hf_bf16_rel_err.layers.{n}"] = rel(t, ref[f"hidden.layers.{n}"])
    meta = {"transformers": transformers.__version__, "torch": torch.__version__, "seed": str(seed),
            "attn_implementation": "eager", "dtype": "float32", "device": "cpu"}
    save_file(ref, os.path.join(d, "reference.safetensors"), metadata=meta)
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    print(f"{name}: {sorted(os.listdir(d))}, {size / 1024:.0f} KiB, max |logit| {ref['logits'].abs().max():.2f}")
    return size


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures/models")
    ap.add_argument("--seed", type=int, default=20261123)
    ap.add_argument("--tokens", type=int, default=40)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    total = sum(make(n, f, e, s, a.out, a.seed + i, a.tokens) for i, (n, (f, e, s)) in enumerate(FIXTURES.items()))
    print(f"total {total / 1e6:.2f} MB (limit 5 MB)")
    assert total < 5e6


if __name__ == "__main__":
    main()
