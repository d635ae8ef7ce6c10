#!/usr/bin/env python3
"""Tiny random Qwen3-MoE checkpoints with transformers' own outputs, for tests/model/moe_fixtures_test.cc.

Run on the GPU machine (transformers 5.17, torch 2.11) from the repo root:
    python3 tools/make_moe_fixtures.py --out tests/fixtures/models --notes /tmp/moe_notes
Writes one folder per model (each < 1 MB): config.json, model.safetensors and reference.safetensors with,
all computed on the CPU in FP32 with eager attention and eager experts:
    input_ids        I64 [2, T]
    logits           F32 [2, T, vocab]
    hidden.layers.N  F32 [2, T, hidden]  output of decoder layer N (forward hook: the residual stream)
    hidden.norm      F32 [2, T, hidden]  after the final RMSNorm
    router.layers.N  F32 [2*T, experts]  the router's softmax probabilities of MoE layer N (FP32)
    generate.prompt  I64 [2, P]; generate.output I64 [2, P+N]: model.generate greedy, KV cache on
    margin.*         F32 scalars: smallest top-k/(k+1) router probability gap and smallest top-1/top-2 logit
                     gap seen (the fixture is redrawn with another seed while these are below 1e-4, so that
                     float rounding cannot flip a routing decision or a greedy token in the C++ comparison)
Two on-disk expert layouts are covered: "qwen3_moe_sparse_step" is written by save_pretrained as-is (what
transformers 5.17 writes), "qwen3_moe_mlp_only_per_expert" is rewritten into the per-expert layout the
published Qwen3-MoE checkpoints use (mlp.experts.{e}.gate_proj/up_proj/down_proj.weight) with its config in
the 4.x key spelling (num_experts, rope_theta, torch_dtype), and checked to load back into transformers
with identical logits. --notes gets the transformers source of the MoE classes and the tensor names, so
the C++ side can be matched against the exact version that made the fixtures.
"""
import argparse
import inspect
import json
import os
import shutil
import traceback

import torch
import transformers
from safetensors.torch import load_file, save_file

COMMON = dict(vocab_size=256, hidden_size=32, intermediate_size=64, rms_norm_eps=1e-6,
              max_position_embeddings=256, hidden_act="silu", num_attention_heads=4, num_key_value_heads=2,
              head_dim=16, tie_word_embeddings=False, attention_bias=False)

FIXTURES = {
    # Every second layer MoE (decoder_sparse_step 2: layers 1 and 3), no top-k renormalisation (the
    # Qwen3MoeConfig default), 8 experts top-2. Saved by save_pretrained unchanged.
    "qwen3_moe_sparse_step": dict(num_hidden_layers=4, decoder_sparse_step=2, mlp_only_layers=[],
                                  num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16,
                                  norm_topk_prob=False,
                                  rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
    # Layer 1 dense through mlp_only_layers, the others MoE; renormalised top-3 of 6 experts (Qwen3-30B-A3B
    # sets norm_topk_prob true). Rewritten to the per-expert layout and the 4.x config keys.
    "qwen3_moe_mlp_only_per_expert": dict(num_hidden_layers=3, decoder_sparse_step=1, mlp_only_layers=[1],
                                          num_experts=6, num_experts_per_tok=3, moe_intermediate_size=16,
                                          norm_topk_prob=True,
                                          rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
}
PER_EXPERT = {"qwen3_moe_mlp_only_per_expert"}
MIN_MARGIN = 1e-4


def make_config(extra):
    try:
        cfg = transformers.Qwen3MoeConfig(**COMMON, **extra, attn_implementation="eager")
    except TypeError as e:  # a strict config class without head_dim: fall back to hidden / heads
        print(f"config without head_dim ({e})")
        common = {k: v for k, v in COMMON.items() if k != "head_dim"}
        cfg = transformers.Qwen3MoeConfig(**common, **extra, attn_implementation="eager")
    print(f"head_dim {getattr(cfg, 'head_dim', None)}")
    assert cfg.num_experts == extra["num_experts"]
    return cfg


def eager_experts(model):
    """Selects transformers' reference expert loop where the version has a choice of kernels."""
    if hasattr(model, "set_experts_implementation"):
        try:
            model.set_experts_implementation("eager")
        except Exception as e:  # noqa: BLE001
            print(f"set_experts_implementation: {type(e).__name__}: {e}")
    print(f"experts implementation: {getattr(model.config, '_experts_implementation', 'n/a')}")
    return model


def redraw(model, gen):
    """Larger-than-init weights (std 0.02 would make every logit and router probability nearly flat)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=gen)
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * r)
            elif ".mlp.gate." in name or name.endswith("mlp.gate.weight"):
                p.copy_(0.5 * r)  # router: spread probabilities so that top-k gaps are not tiny
            else:
                p.copy_(0.2 * r)


def moe_layers(model):
    return [n for n, layer in enumerate(model.model.layers) if hasattr(layer.mlp, "experts")]


def capture(model, ids):
    """Runs the model, returning (output, per-layer hidden, per-MoE-layer router probabilities FP32)."""
    hidden, router = {}, {}
    hooks = []
    for n, layer in enumerate(model.model.layers):
        hooks.append(layer.register_forward_hook(
            lambda m, i, o, n=n: hidden.__setitem__(n, (o[0] if isinstance(o, tuple) else o).detach().clone())))
    for n in moe_layers(model):
        gate = model.model.layers[n].mlp.gate
        def hook(m, i, o, n=n):
            x = i[0].reshape(-1, i[0].shape[-1])
            w = m.weight
            router[n] = torch.softmax(torch.nn.functional.linear(x, w).float(), dim=-1).detach().clone()
        hooks.append(gate.register_forward_hook(hook))
    with torch.no_grad():
        res = model(input_ids=ids, output_hidden_states=True, use_cache=False)
    for h in hooks:
        h.remove()
    return res, hidden, router


def router_margin(probs, k):
    top = torch.topk(probs, k + 1, dim=-1).values
    return (top[:, k - 1] - top[:, k]).min().item()


def logit_margin(logits):
    top = torch.topk(logits.reshape(-1, logits.shape[-1]), 2, dim=-1).values
    return (top[:, 0] - top[:, 1]).min().item()


def per_expert_state_dict(model, cfg):
    """The state dict in the published on-disk layout: one gate/up/down weight per expert."""
    out = {}
    inter = cfg.moe_intermediate_size
    for k, v in model.state_dict().items():
        v = v.detach().contiguous()
        if k.endswith("mlp.experts.gate_up_proj"):  # [E, 2I, H]: gate rows first (chunk(2, dim=-1) of x W^T)
            assert v.shape == (cfg.num_experts, 2 * inter, cfg.hidden_size), v.shape
            p = k[: -len("gate_up_proj")]
            for e in range(cfg.num_experts):
                out[f"{p}{e}.gate_proj.weight"] = v[e, :inter].clone()
                out[f"{p}{e}.up_proj.weight"] = v[e, inter:].clone()
        elif k.endswith("mlp.experts.down_proj"):  # [E, H, I]
            assert v.shape == (cfg.num_experts, cfg.hidden_size, inter), v.shape
            p = k[: -len("down_proj")]
            for e in range(cfg.num_experts):
                out[f"{p}{e}.down_proj.weight"] = v[e].clone()
        else:
            out[k] = v.clone()
    return out


def old_style_config(d):
    """Rewrites config.json with the transformers 4.x key spelling Qwen3-30B-A3B's own config uses."""
    path = os.path.join(d, "config.json")
    with open(path) as f:
        c = json.load(f)
    if "num_local_experts" in c:
        c["num_experts"] = c.pop("num_local_experts")
    rp = c.pop("rope_parameters", None)
    if rp is not None:
        c["rope_theta"] = rp.get("rope_theta", 10000.0)
        c["rope_scaling"] = None
    if "dtype" in c:
        c["torch_dtype"] = c.pop("dtype")
    c["transformers_version"] = "4.51.0"
    with open(path, "w") as f:
        json.dump(c, f, indent=2)


def make(name, extra, out, seed, tokens, notes):
    cfg = make_config(extra)
    k = cfg.num_experts_per_tok
    for attempt in range(50):
        s = seed + 1000 * attempt
        torch.manual_seed(s)
        model = eager_experts(transformers.Qwen3MoeForCausalLM(cfg).to(torch.float32).eval())
        gen = torch.Generator().manual_seed(s)
        redraw(model, gen)
        ids = torch.randint(0, cfg.vocab_size, (2, tokens), generator=gen)
        prompt = torch.randint(0, cfg.vocab_size, (2, 6), generator=gen)
        res, hidden, router = capture(model, ids)
        rm = min(router_margin(p, k) for p in router.values())
        lm = logit_margin(res.logits)
        try:
            with torch.no_grad():
                gen_out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=14,
                                         do_sample=False, use_cache=True, pad_token_id=0, eos_token_id=None)
            res_g, _, router_g = capture(model, gen_out)
            rm = min([rm] + [router_margin(p, k) for p in router_g.values()])
            lm = min(lm, logit_margin(res_g.logits[:, prompt.shape[1] - 1:-1]))
        except Exception:  # noqa: BLE001 - the forward references stay useful without generation
            traceback.print_exc()
            gen_out = None
        print(f"{name}: seed {s} router margin {rm:.2e} logit margin {lm:.2e}")
        if rm >= MIN_MARGIN and lm >= MIN_MARGIN:
            break
    else:
        raise RuntimeError(f"{name}: no seed with margins >= {MIN_MARGIN}")

    d = os.path.join(out, name)
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d)
    for extra_file in ("generation_config.json",):
        if os.path.exists(os.path.join(d, extra_file)):
            os.remove(os.path.join(d, extra_file))
    saved_names = sorted(load_file(os.path.join(d, "model.safetensors")).keys())
    with open(os.path.join(notes, f"{name}.saved_tensor_names.txt"), "w") as f:
        f.write("\n".join(saved_names) + "\n")
    with open(os.path.join(notes, f"{name}.state_dict_names.txt"), "w") as f:
        f.write("\n".join(f"{n} {tuple(t.shape)}" for n, t in model.state_dict().items()) + "\n")
    if name in PER_EXPERT:
        sd = per_expert_state_dict(model, cfg)
        os.remove(os.path.join(d, "model.safetensors"))
        save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
        old_style_config(d)
        # transformers must read the per-expert layout back to the same model.
        try:
            back = transformers.Qwen3MoeForCausalLM.from_pretrained(d, dtype=torch.float32,
                                                                     attn_implementation="eager").eval()
            with torch.no_grad():
                lb = back(input_ids=ids, use_cache=False).logits
            diff = (lb - res.logits).abs().max().item()
            print(f"{name}: per-expert layout reloaded by transformers, max |logit diff| {diff:.3e}")
            assert diff < 1e-5, diff
        except Exception as e:  # noqa: BLE001 - recorded for the notes, the fixture stays valid
            print(f"{name}: per-expert reload by transformers FAILED: {type(e).__name__}: {e}")

    ref = {"input_ids": ids.to(torch.int64).contiguous(), "logits": res.logits.float().contiguous(),
           "hidden.norm": res.hidden_states[-1].float().contiguous(),
           "margin.router": torch.tensor(rm, dtype=torch.float32),
           "margin.logits": torch.tensor(lm, dtype=torch.float32)}
    if gen_out is not None:
        ref["generate.prompt"] = prompt.to(torch.int64).contiguous()
        ref["generate.output"] = gen_out.to(torch.int64).contiguous()
    for n, t in hidden.items():
        ref[f"hidden.layers.{n}"] = t.float().contiguous()
    for n, t in router.items():
        ref[f"router.layers.{n}"] = t.float().contiguous()
    for n in range(cfg.num_hidden_layers - 1):
        assert torch.equal(ref[f"hidden.layers.{n}"], res.hidden_states[n + 1]), n
    # transformers' load-balancing loss (Switch eq. 4-6 over all MoE layers), for comparison with qad's.
    try:
        with torch.no_grad():
            aux = model(input_ids=ids, use_cache=False, output_router_logits=True).aux_loss
        ref["aux_loss"] = torch.as_tensor(aux, dtype=torch.float32).reshape(()).contiguous()
        print(f"{name}: aux_loss {ref['aux_loss'].item():.6f}")
    except Exception as e:  # noqa: BLE001
        print(f"{name}: aux_loss FAILED: {type(e).__name__}: {e}")
    # transformers' own BF16 error on the GPU against this FP32 reference (same metric as the dense fixtures).
    if torch.cuda.is_available():
        try:
            m16 = eager_experts(transformers.Qwen3MoeForCausalLM(cfg).eval())
            m16.load_state_dict(model.state_dict())
            m16 = m16.to("cuda", torch.bfloat16)
            res16, hid16, _ = capture(m16, ids.cuda())

            def rel(got, want):
                return ((got.double() - want.double()).abs().max() / max(1.0, want.abs().max().item())).reshape(()).float()
            ref["hf_bf16_rel_err.logits"] = rel(res16.logits.float().cpu(), ref["logits"])
            ref["hf_bf16_rel_err.norm"] = rel(res16.hidden_states[-1].float().cpu(), ref["hidden.norm"])
            for n, t in hid16.items():
                ref[f"hf_bf16_rel_err.layers.{n}"] = rel(t.float().cpu(), ref[f"hidden.layers.{n}"])
            print(f"{name}: bf16 rel err logits {ref['hf_bf16_rel_err.logits'].item():.3e}")
        except Exception as e:  # noqa: BLE001
            print(f"{name}: bf16 reference FAILED: {type(e).__name__}: {e}")
    meta = {"transformers": transformers.__version__, "torch": torch.__version__, "seed": str(s),
            "attn_implementation": "eager", "dtype": "float32", "device": "cpu", "moe_layers": json.dumps(moe_layers(model))}
    save_file(ref, os.path.join(d, "reference.safetensors"), metadata=meta)
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    print(f"{name}: {sorted(os.listdir(d))}, {size / 1024:.0f} KiB, moe layers {moe_layers(model)}, "
          f"max |logit| {ref['logits'].abs().max():.2f}, generated "
          f"{None if gen_out is None else gen_out[:, prompt.shape[1]:].tolist()}")
    assert size < 1_000_000, size
    return size


def write_sources(notes):
    """The transformers source the fixtures came from: router, experts, decoder layer, weight conversion."""
    import importlib
    for mod in ("transformers.models.qwen3_moe.modeling_qwen3_moe",
                "transformers.models.qwen3_moe.configuration_qwen3_moe",
                "transformers.conversion_mapping", "transformers.core_model_loading",
                "transformers.integrations.moe"):
        try:
            src = inspect.getsource(importlib.import_module(mod))
        except Exception as e:  # noqa: BLE001
            src = f"unavailable: {type(e).__name__}: {e}\n"
        with open(os.path.join(notes, mod.split(".")[-1] + ".py.txt"), "w") as f:
            f.write(src)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures/models")
    ap.add_argument("--notes", default=None, help="folder for transformers sources and tensor-name lists")
    ap.add_argument("--seed", type=int, default=20261202)
    ap.add_argument("--tokens", type=int, default=40)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    notes = a.notes or os.path.join(a.out, "_notes")
    os.makedirs(notes, exist_ok=True)
    print(f"transformers {transformers.__version__} torch {torch.__version__}")
    write_sources(notes)
    total, failed = 0, []
    for i, (n, e) in enumerate(FIXTURES.items()):
        try:
            total += make(n, e, a.out, a.seed + i, a.tokens, notes)
        except Exception:  # noqa: BLE001 - the other fixture and the notes still come back
            traceback.print_exc()
            failed.append(n)
    print(f"total {total / 1e6:.2f} MB, failed {failed}")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
