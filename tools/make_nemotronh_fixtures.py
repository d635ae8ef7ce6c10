#!/usr/bin/env python3
"""Tiny random NemotronH checkpoints (hybrid Mamba-2 / attention / MLP / MoE) with transformers' own outputs,
for the C++ NemotronH model's tests (tests/model/nemotronh_*_test.cc).

Run on the GPU machine (transformers 5.17, torch 2.x; no mamba_ssm / causal_conv1d) from the repo root:
    python3 tools/make_nemotronh_fixtures.py --out tests/fixtures/models --notes /tmp/nemotronh_notes
Every model is built and run on the CPU in FP32 with eager attention, eager experts and use_mamba_kernels false,
so the Mamba mixer runs transformers' torch path (torch_forward: the chunked SSD scan written in torch ops);
the number of torch_forward / cuda_kernels_forward calls is recorded in the metadata to prove it.
Folders (each < 1 MB): config.json, model.safetensors (save_pretrained), reference.safetensors with
    input_ids        I64 [2, T]   T is not a multiple of chunk_size, and T > chunk_size: the scan crosses chunks
    logits           F32 [2, T, vocab]
    hidden.embed     F32 [2, T, hidden]  the embedding output
    hidden.layers.N  F32 [2, T, hidden]  output of block N (forward hook: the residual stream)
    hidden.norm      F32 [2, T, hidden]  after norm_f
    router.layers.N  F32 [2*T, experts]  sigmoid(x W^T) of MoE block N (FP32, before the correction bias)
    router_index.layers.N I64 [2*T, k]   the experts transformers sent each token to (sorted ascending per row)
    router_weight.layers.N F32 [2*T, k]  their weights (aligned with router_index; after norm and scaling)
    generate.prompt  I64 [2, P]; generate.output I64 [2, P+N]: greedy model.generate with the hybrid cache
                     (conv + SSM states and KV); generate.output_nocache: the same with use_cache=False
    margin.*         F32 scalars: smallest routing decision gap (group and expert choice), smallest top-1/top-2
                     logit gap, smallest softplus(dt + dt_bias) seen; a fixture is redrawn with another seed
                     while a margin is below its bound, so that rounding cannot flip a decision in the C++
                     comparison and the dt lower clamp of older transformers (time_step_min) never binds
    check.*          F32 scalars: max |difference| of transformers' chunked scan against an independent
                     sequential recurrence in FP64 (this script's own reference mixer) on block 0's mixer, and
                     of the whole model with one chunk (chunk_size >= T) against the configured chunking.
                     If transformers' chunked path disagrees (the inter-chunk bug of older versions), the
                     one-chunk outputs are added as single_chunk.logits / .hidden.layers.N / .hidden.norm /
                     .generate.output (the C++ tests then compare with those).
Fixtures:
    nemotronh_hybrid          M * M - M * -  (Mamba-2, attention, relu2 MLP), config as save_pretrained writes it
    nemotronh_hybrid_pattern  the same model, config.json rewritten into the other block-type form
                              (hybrid_override_pattern <-> layers_block_type), checked to load back with
                              identical logits; reference.safetensors is the same as nemotronh_hybrid's
    nemotronh_moe             M E * M E -  with sigmoid routing, correction bias, n_group/topk_group,
                              routed_scaling_factor, a shared expert
    nemotronh_moe_nvidia      the MoE model in the layout NVIDIA's checkpoints ship: "backbone." names, per-expert
                              mixer.experts.{e}.up_proj/down_proj.weight, hybrid_override_pattern; whether
                              transformers loads it back to the same logits is recorded. (5.17's save_pretrained
                              already writes these tensor names, so there only the config form differs.)
--notes gets the transformers sources (NemotronH modeling and configuration, Zamba2's gated norm, the cache and
conversion mapping), each fixture's config.json, tensor names and shapes, and the log of what was used.
"""
import argparse
import importlib
import importlib.util
import inspect
import json
import math
import os
import shutil
import traceback

import torch
import transformers
from safetensors.torch import load_file, save_file

TOKENS = 40         # > chunk_size and not a multiple of it
PROMPT = 20         # the generation prompt also crosses a chunk boundary
NEW_TOKENS = 14
CHUNK = 16
MIN_LOGIT_MARGIN = 1e-4
MIN_ROUTER_MARGIN = 1e-4
TIME_STEP_MIN = 1e-3
MIN_DT = 1.5 * TIME_STEP_MIN

COMMON = dict(vocab_size=128, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
              intermediate_size=64, mlp_hidden_act="relu2", layer_norm_epsilon=1e-5,
              max_position_embeddings=256, tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
              use_bias=False, mamba_num_heads=8, mamba_head_dim=8, ssm_state_size=16, n_groups=2, conv_kernel=4,
              chunk_size=CHUNK, use_conv_bias=True, mamba_hidden_act="silu", time_step_min=TIME_STEP_MIN,
              time_step_max=0.1, use_mamba_kernels=False, residual_in_fp32=False, pad_token_id=0,
              bos_token_id=1, eos_token_id=2)

MOE = dict(n_routed_experts=8, num_experts_per_tok=3, moe_intermediate_size=32,
           moe_shared_expert_intermediate_size=48, n_shared_experts=1, n_group=4, topk_group=2,
           routed_scaling_factor=2.5, norm_topk_prob=True)

FIXTURES = {
    "nemotronh_hybrid": dict(pattern="M*M-M*-", extra={}),
    "nemotronh_moe": dict(pattern="ME*ME-", extra=MOE),
}

# Block-type names of both config forms. transformers 5.x names: linear_attention (Mamba-2), full_attention,
# mlp, moe; earlier 5.x releases used mamba / attention in layers_block_type.
PATTERN_CHAR = {"linear_attention": "M", "mamba": "M", "full_attention": "*", "attention": "*", "mlp": "-",
                "moe": "E"}
CHAR_NAME = {"M": "linear_attention", "*": "full_attention", "-": "mlp", "E": "moe"}


def log(msg):
    print(msg, flush=True)


# ---------------------------------------------------------------------------------------------- config / model

def make_config(pattern, extra):
    cls = transformers.NemotronHConfig
    try:
        known = set(cls().to_dict().keys())
    except Exception as e:  # noqa: BLE001
        log(f"default NemotronHConfig().to_dict() failed ({type(e).__name__}: {e}); passing every key")
        known = None
    kwargs = {}
    for k, v in {**COMMON, **extra}.items():
        if known is not None and k not in known:
            log(f"config key {k!r} not in NemotronHConfig defaults: dropped")
            continue
        kwargs[k] = v
    try:
        cfg = cls(hybrid_override_pattern=pattern, num_hidden_layers=len(pattern), attn_implementation="eager",
                  **kwargs)
    except TypeError as e:  # a config class that derives the layer count only from the pattern
        log(f"config without num_hidden_layers ({e})")
        cfg = cls(hybrid_override_pattern=pattern, attn_implementation="eager", **kwargs)
    types = block_types(cfg)
    log(f"config: layers_block_type {getattr(cfg, 'layers_block_type', None)} "
        f"hybrid_override_pattern {getattr(cfg, 'hybrid_override_pattern', None)} "
        f"num_hidden_layers {cfg.num_hidden_layers}")
    assert "".join(PATTERN_CHAR[t] for t in types) == pattern, (types, pattern)
    for k, v in {**COMMON, **extra}.items():
        got = getattr(cfg, k, "<absent>")
        if got != v:
            log(f"config {k}: asked {v!r}, config has {got!r}")
    return cfg


def block_types(cfg):
    t = getattr(cfg, "layers_block_type", None)
    if t is None:
        t = [CHAR_NAME[c] for c in cfg.hybrid_override_pattern]
    return list(t)


def layers(model):
    return model.model.layers if hasattr(model, "model") else model.backbone.layers


def mixers_of(model, kind):
    """Indices of the blocks whose mixer is a Mamba-2 mixer ("mamba") or an MoE ("moe")."""
    out = []
    for n, blk in enumerate(layers(model)):
        m = blk.mixer
        if kind == "mamba" and hasattr(m, "A_log"):
            out.append(n)
        if kind == "moe" and hasattr(m, "experts"):
            out.append(n)
    return out


def eager_experts(model):
    if hasattr(model, "set_experts_implementation"):
        try:
            model.set_experts_implementation("eager")
        except Exception as e:  # noqa: BLE001
            log(f"set_experts_implementation: {type(e).__name__}: {e}")
    log(f"experts implementation: {getattr(model.config, '_experts_implementation', 'n/a')}")
    return model


def count_mamba_paths(model, counts):
    """Counts mixer forwards and, where the version has them, torch_forward / cuda_kernels_forward calls."""
    for n in mixers_of(model, "mamba"):
        m = layers(model)[n].mixer
        m.register_forward_pre_hook(lambda *a: counts.__setitem__("forward", counts.get("forward", 0) + 1))
        for attr in ("torch_forward", "cuda_kernels_forward"):
            if hasattr(m, attr):
                orig = getattr(m, attr)

                def wrapped(*a, _orig=orig, _attr=attr, **k):
                    counts[_attr] = counts.get(_attr, 0) + 1
                    return _orig(*a, **k)
                setattr(m, attr, wrapped)


def redraw(model, gen, cfg):
    """Weights larger than the init's (std 0.02 would make logits and routing nearly flat), Mamba parameters in
    the ranges trained checkpoints have: A = -exp(A_log) in [-8, -1], softplus(dt_bias) in [0.01, 0.5]."""
    nh = cfg.mamba_num_heads
    with torch.no_grad():
        tensors = list(model.named_parameters())
        tensors += [(n, b) for n, b in model.named_buffers() if n.endswith("e_score_correction_bias")]
        for name, p in tensors:
            r = torch.randn(p.shape, generator=gen)
            u = torch.rand(p.shape, generator=gen)
            if name.endswith("A_log"):
                p.copy_(torch.log(1 + 7 * u))
            elif name.endswith("dt_bias"):
                dt = torch.exp(math.log(0.01) + u * (math.log(0.5) - math.log(0.01)))
                p.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1
            elif name.endswith(".D"):
                p.copy_(1 + 0.3 * r)
            elif name.endswith("e_score_correction_bias"):
                p.copy_(0.1 * r)
            elif name.endswith("norm.weight") or name.endswith("norm_f.weight"):
                p.copy_(1 + 0.1 * r)
            elif name.endswith("conv1d.weight"):
                p.copy_(0.3 * r)
            elif name.endswith("conv1d.bias"):
                p.copy_(0.1 * r)
            elif name.endswith("in_proj.weight"):
                w = 0.2 * r
                w[-nh:] = 0.05 * r[-nh:]  # the dt rows: keep softplus(dt) away from the time_step_min clamp
                p.copy_(w)
            elif name.endswith("mixer.gate.weight"):
                p.copy_(0.5 * r)
            elif p.dtype.is_floating_point:
                p.copy_(0.2 * r)


# ---------------------------------------------------------------------------------------------- capture

def route_reference(probs, bias, cfg):
    """NemotronH's group-limited top-k choice from sigmoid scores [N, E]: (indices sorted [N, k], margin)."""
    e, g, tg, k = cfg.n_routed_experts, cfg.n_group, cfg.topk_group, cfg.num_experts_per_tok
    choice = probs + bias
    grouped = choice.view(-1, g, e // g)
    gscore = grouped.topk(min(2, e // g), dim=-1).values.sum(-1)  # [N, g]
    margin = float("inf")
    gs = gscore.sort(dim=-1, descending=True).values
    if tg < g:
        margin = min(margin, (gs[:, tg - 1] - gs[:, tg]).min().item())
    gidx = gscore.topk(tg, dim=-1).indices
    gmask = torch.zeros_like(gscore).scatter_(1, gidx, 1).bool()
    emask = gmask[:, :, None].expand(-1, g, e // g).reshape(-1, e)
    masked = choice.masked_fill(~emask, float("-inf"))
    ms = masked.sort(dim=-1, descending=True).values
    if k < tg * (e // g):
        margin = min(margin, (ms[:, k - 1] - ms[:, k]).min().item())
    idx = masked.topk(k, dim=-1).indices.sort(dim=-1).values
    return idx, margin


def capture(model, ids, cfg, use_cache=False):
    """Runs the model: (output, hidden per block, extras dict with embed/norm, router data, min dt)."""
    blocks = layers(model)
    hidden, routers, extras = {}, {}, {"min_dt": float("inf")}
    hooks = []
    for n, blk in enumerate(blocks):
        hooks.append(blk.register_forward_hook(
            lambda m, i, o, n=n: hidden.__setitem__(n, (o[0] if isinstance(o, tuple) else o).detach().clone())))
    base = model.model if hasattr(model, "model") else model.backbone
    hooks.append(base.embeddings.register_forward_hook(
        lambda m, i, o: extras.__setitem__("embed", o.detach().clone())))
    hooks.append(base.norm_f.register_forward_hook(
        lambda m, i, o: extras.__setitem__("norm", o.detach().clone())))
    nh = cfg.mamba_num_heads
    for n in mixers_of(model, "mamba"):
        mixer = blocks[n].mixer

        def dt_hook(m, i, o, mixer=mixer):
            dt = torch.nn.functional.softplus(o[..., -nh:].float() + mixer.dt_bias.float())
            extras["min_dt"] = min(extras["min_dt"], dt.min().item())
        hooks.append(mixer.in_proj.register_forward_hook(dt_hook))
        if n == mixers_of(model, "mamba")[0]:
            hooks.append(mixer.register_forward_hook(
                lambda m, i, o: extras.__setitem__("mixer0", (i[0].detach().clone(), o.detach().clone()))))
    for n in mixers_of(model, "moe"):
        moe = blocks[n].mixer
        rec = routers.setdefault(n, {})

        def gate_hook(m, i, o, rec=rec):
            x = i[0].reshape(-1, i[0].shape[-1]).float()
            rec["probs"] = torch.sigmoid(torch.nn.functional.linear(x, m.weight.float())).detach().clone()
            rec["bias"] = m.e_score_correction_bias.detach().float().clone()
        hooks.append(moe.gate.register_forward_hook(gate_hook))

        def experts_pre(m, args, kwargs, rec=rec):
            idx = args[1] if len(args) > 1 else kwargs.get("top_k_index")
            w = args[2] if len(args) > 2 else kwargs.get("top_k_weights")
            rec["index"], rec["weight"] = idx.detach().clone(), w.detach().float().clone()
        try:
            hooks.append(moe.experts.register_forward_pre_hook(experts_pre, with_kwargs=True))
        except TypeError:  # torch without with_kwargs
            hooks.append(moe.experts.register_forward_pre_hook(lambda m, a, rec=rec: experts_pre(m, a, {}, rec)))
    with torch.no_grad():
        res = model(input_ids=ids, use_cache=use_cache)
    for h in hooks:
        h.remove()
    return res, hidden, routers, extras


def router_margin_and_check(routers, cfg):
    margin, match = float("inf"), True
    for n, rec in routers.items():
        idx, m = route_reference(rec["probs"], rec["bias"], cfg)
        margin = min(margin, m)
        if "index" in rec:
            got = rec["index"].sort(dim=-1).values
            if not torch.equal(got.to(idx.dtype), idx):
                match = False
                log(f"router block {n}: this script's group top-k disagrees with transformers' choice")
    return margin, match


def logit_margin(logits):
    top = torch.topk(logits.reshape(-1, logits.shape[-1]).float(), 2, dim=-1).values
    return (top[:, 0] - top[:, 1]).min().item()


def sorted_routing(rec):
    idx, w = rec["index"], rec["weight"]
    order = idx.argsort(dim=-1)
    return idx.gather(1, order).to(torch.int64).contiguous(), w.gather(1, order).float().contiguous()


# ---------------------------------------------------------------------------------------------- FP64 reference

def sequential_mixer(mixer, x, cfg):
    """An independent Mamba-2 mixer in FP64 with the SSM as a plain per-token recurrence: the math the chunked
    SSD scan must reproduce. x [B, T, H] (the mixer's input, after the block norm)."""
    d = torch.float64
    b, t, _ = x.shape
    nh, hd, ns, ng, k = (cfg.mamba_num_heads, cfg.mamba_head_dim, cfg.ssm_state_size, cfg.n_groups,
                         cfg.conv_kernel)
    inner = nh * hd
    proj = torch.nn.functional.linear(x.to(d), mixer.in_proj.weight.to(d),
                                      None if mixer.in_proj.bias is None else mixer.in_proj.bias.to(d))
    extra = proj.shape[-1] - (2 * inner + 2 * ng * ns + nh)
    proj = proj[..., extra:]  # d_mlp columns (none in these fixtures) are dropped as transformers does
    gate, xbc, dt = proj.split([inner, inner + 2 * ng * ns, nh], dim=-1)
    w = mixer.conv1d.weight.to(d)[:, 0, :]  # [C, K]
    pad = torch.nn.functional.pad(xbc, (0, 0, k - 1, 0))
    conv = sum(pad[:, j:j + t, :] * w[:, j] for j in range(k))
    if mixer.conv1d.bias is not None:
        conv = conv + mixer.conv1d.bias.to(d)
    conv = torch.nn.functional.silu(conv)
    xs, bm, cm = conv.split([inner, ng * ns, ng * ns], dim=-1)
    lo, hi = getattr(mixer, "time_step_limit", (0.0, float("inf")))
    dt = torch.nn.functional.softplus(dt + mixer.dt_bias.to(d)).clamp(min=lo, max=hi)
    a = -torch.exp(mixer.A_log.to(d))
    xs = xs.view(b, t, nh, hd)
    rep = nh // ng
    bm = bm.view(b, t, ng, ns).repeat_interleave(rep, dim=2)
    cm = cm.view(b, t, ng, ns).repeat_interleave(rep, dim=2)
    state = torch.zeros(b, nh, hd, ns, dtype=d)
    ys = []
    for i in range(t):
        da = torch.exp(dt[:, i] * a)  # [B, nh]
        state = state * da[:, :, None, None] + (dt[:, i, :, None, None] * xs[:, i, :, :, None]
                                                * bm[:, i, :, None, :])
        ys.append((state * cm[:, i, :, None, :]).sum(-1) + mixer.D.to(d)[:, None] * xs[:, i])
    y = torch.stack(ys, dim=1).reshape(b, t, inner)
    y = y * torch.nn.functional.silu(gate)
    gs = inner // ng
    yg = y.view(b, t, ng, gs)
    yg = yg * torch.rsqrt(yg.pow(2).mean(-1, keepdim=True) + mixer.norm.variance_epsilon)
    y = yg.reshape(b, t, inner) * mixer.norm.weight.to(d)
    return torch.nn.functional.linear(y, mixer.out_proj.weight.to(d),
                                      None if mixer.out_proj.bias is None else mixer.out_proj.bias.to(d))


def set_chunk(model, chunk):
    for n in mixers_of(model, "mamba"):
        layers(model)[n].mixer.chunk_size = chunk


# ---------------------------------------------------------------------------------------------- fixtures

def generate(model, prompt, use_cache):
    with torch.no_grad():
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW_TOKENS,
                              do_sample=False, use_cache=use_cache, pad_token_id=0, eos_token_id=None)


def write_notes(d, name, notes, model):
    shutil.copy(os.path.join(d, "config.json"), os.path.join(notes, f"{name}.config.json"))
    sd = load_file(os.path.join(d, "model.safetensors"))
    with open(os.path.join(notes, f"{name}.saved_tensors.txt"), "w") as f:
        f.write("".join(f"{k} {tuple(v.shape)} {v.dtype}\n" for k, v in sorted(sd.items())))
    if model is not None:
        with open(os.path.join(notes, f"{name}.state_dict.txt"), "w") as f:
            f.write("".join(f"{k} {tuple(v.shape)}\n" for k, v in model.state_dict().items()))
            f.write("".join(f"(buffer) {k} {tuple(v.shape)}\n" for k, v in model.named_buffers()))


def folder_size(d):
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    if size >= 1_000_000:
        log(f"WARNING: {d} is {size} bytes (>= 1 MB)")
    return size


def make(name, spec, out, seed, notes):
    cfg = make_config(spec["pattern"], spec["extra"])
    is_moe = bool(spec["extra"])
    counts = {}
    for attempt in range(60):
        s = seed + 1000 * attempt
        torch.manual_seed(s)
        model = transformers.NemotronHForCausalLM(cfg).to(torch.float32).eval()
        if is_moe:
            eager_experts(model)
        gen = torch.Generator().manual_seed(s)
        redraw(model, gen, cfg)
        ids = torch.randint(0, cfg.vocab_size, (2, TOKENS), generator=gen)
        prompt = torch.randint(0, cfg.vocab_size, (2, PROMPT), generator=gen)
        res, hidden, routers, extras = capture(model, ids, cfg)
        rm, match = router_margin_and_check(routers, cfg)
        lm = logit_margin(res.logits)
        min_dt = extras["min_dt"]
        gen_out = gen_nocache = None
        try:
            gen_out = generate(model, prompt, use_cache=True)
            res_g, _, routers_g, extras_g = capture(model, gen_out, cfg)
            rm_g, match_g = router_margin_and_check(routers_g, cfg)
            rm, match = min(rm, rm_g), match and match_g
            lm = min(lm, logit_margin(res_g.logits[:, PROMPT - 1:-1]))
            min_dt = min(min_dt, extras_g["min_dt"])
        except Exception:  # noqa: BLE001 - the forward references stay useful without generation
            traceback.print_exc()
        log(f"{name}: seed {s} router margin {rm:.2e} logit margin {lm:.2e} min dt {min_dt:.3e} "
            f"router check {match}")
        if rm >= MIN_ROUTER_MARGIN and lm >= MIN_LOGIT_MARGIN and min_dt >= MIN_DT:
            break
    else:
        raise RuntimeError(f"{name}: no seed with margins above their bounds")

    # Which Mamba path ran, from here on (the forward below and generation are counted).
    count_mamba_paths(model, counts)
    res, hidden, routers, extras = capture(model, ids, cfg)
    try:
        gen_out = generate(model, prompt, use_cache=True)
        gen_nocache = generate(model, prompt, use_cache=False)
        log(f"{name}: cached generate == uncached: {torch.equal(gen_out, gen_nocache)}")
    except Exception:  # noqa: BLE001
        traceback.print_exc()
    log(f"{name}: mamba path calls {counts}")

    ref = {"input_ids": ids.to(torch.int64).contiguous(), "logits": res.logits.float().contiguous(),
           "hidden.embed": extras["embed"].float().contiguous(), "hidden.norm": extras["norm"].float().contiguous(),
           "margin.router": torch.tensor(rm if is_moe else 1.0, dtype=torch.float32),
           "margin.logits": torch.tensor(lm, dtype=torch.float32),
           "margin.min_dt": torch.tensor(min_dt, dtype=torch.float32)}
    for n, t in hidden.items():
        ref[f"hidden.layers.{n}"] = t.float().contiguous()
    for n, rec in routers.items():
        ref[f"router.layers.{n}"] = rec["probs"].float().contiguous()
        if "index" in rec:
            i, w = sorted_routing(rec)
            ref[f"router_index.layers.{n}"], ref[f"router_weight.layers.{n}"] = i, w
    if gen_out is not None:
        ref["generate.prompt"] = prompt.to(torch.int64).contiguous()
        ref["generate.output"] = gen_out.to(torch.int64).contiguous()
    if gen_nocache is not None:
        ref["generate.output_nocache"] = gen_nocache.to(torch.int64).contiguous()

    # The chunked scan against the FP64 sequential recurrence (block 0's mixer, its captured input/output).
    meta_checks = {}
    try:
        mixer_n = mixers_of(model, "mamba")[0]
        x_in, y_hf = extras["mixer0"]
        y_seq = sequential_mixer(layers(model)[mixer_n].mixer, x_in, cfg)
        diff = (y_hf.double() - y_seq).abs().max().item()
        ref["check.scan_vs_sequential"] = torch.tensor(diff, dtype=torch.float32)
        log(f"{name}: block {mixer_n} mixer, transformers' chunked scan vs FP64 sequential: max |diff| {diff:.3e} "
            f"(max |y| {y_seq.abs().max().item():.3e})")
    except Exception:  # noqa: BLE001
        traceback.print_exc()
    # The whole model with one chunk per sequence: equal to the chunked result where transformers is right.
    try:
        set_chunk(model, TOKENS)
        res1, hidden1, _, extras1 = capture(model, ids, cfg)
        gen1 = generate(model, prompt, use_cache=True) if gen_out is not None else None
        set_chunk(model, cfg.chunk_size)
        diff = (res1.logits - res.logits).abs().max().item()
        scale = max(1.0, res.logits.abs().max().item())
        ref["check.single_chunk_logits"] = torch.tensor(diff, dtype=torch.float32)
        log(f"{name}: logits with one chunk vs chunk_size {cfg.chunk_size}: max |diff| {diff:.3e}")
        meta_checks["single_chunk_agrees"] = str(diff / scale < 1e-5)
        if diff / scale >= 1e-5:
            log(f"{name}: transformers' chunked path DISAGREES with one chunk: storing single_chunk.* too")
            ref["single_chunk.logits"] = res1.logits.float().contiguous()
            ref["single_chunk.hidden.norm"] = extras1["norm"].float().contiguous()
            if gen1 is not None:
                ref["single_chunk.generate.output"] = gen1.to(torch.int64).contiguous()
            for n, t in hidden1.items():
                ref[f"single_chunk.hidden.layers.{n}"] = t.float().contiguous()
    except Exception:  # noqa: BLE001
        traceback.print_exc()

    d = os.path.join(out, name)
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d)
    for extra_file in ("generation_config.json",):
        if os.path.exists(os.path.join(d, extra_file)):
            os.remove(os.path.join(d, extra_file))
    write_notes(d, name, notes, model)

    bf16_errors(model, cfg, ids, ref)
    # transformers 5.17's mixer has one forward() that calls kernel functions with reference torch fallbacks
    # (mamba2_chunk_scan, mamba2_selective_state_update, causal_conv1d_fn/_update); older ones had torch_forward.
    mixer0 = layers(model)[mixers_of(model, "mamba")[0]].mixer
    mixer_type = type(mixer0)
    src = inspect.getsource(getattr(mixer_type, "torch_forward", mixer_type))
    try:
        src += inspect.getsource(importlib.import_module(mixer_type.__module__))
    except Exception:  # noqa: BLE001
        pass
    kernels = {m: importlib.util.find_spec(m) is not None for m in ("mamba_ssm", "causal_conv1d")}
    meta = {"transformers": transformers.__version__, "torch": torch.__version__, "seed": str(s),
            "attn_implementation": "eager", "dtype": "float32", "device": "cpu",
            "layers_block_type": json.dumps(block_types(cfg)), "pattern": spec["pattern"],
            "mamba_torch_forward_calls": str(counts.get("torch_forward", 0)),
            "mamba_cuda_kernels_forward_calls": str(counts.get("cuda_kernels_forward", 0)),
            "mamba_forward_calls": str(counts.get("forward", 0)),
            "mamba_kernels_installed": json.dumps(kernels),
            "hf_time_step_limit": repr(tuple(getattr(mixer0, "time_step_limit", ()))),
            "hf_interchunk_fixed": str("transpose(1, 3)" in src),
            "moe_layers": json.dumps(mixers_of(model, "moe")), "mamba_layers": json.dumps(mixers_of(model, "mamba")),
            **meta_checks}
    log(f"{name}: meta {meta}")
    save_file(ref, os.path.join(d, "reference.safetensors"), metadata=meta)
    size = folder_size(d)
    log(f"{name}: {sorted(os.listdir(d))}, {size / 1024:.0f} KiB, generated "
        f"{None if gen_out is None else gen_out[:, PROMPT:].tolist()}")
    return dict(model=model, cfg=cfg, ids=ids, logits=res.logits, dir=d, meta=meta)


def bf16_errors(model, cfg, ids, ref):
    """transformers' own BF16 error on the GPU against the FP32 reference (the yardstick for qad's BF16 path)."""
    if not torch.cuda.is_available():
        return
    try:
        m16 = transformers.NemotronHForCausalLM(cfg).eval()
        m16.load_state_dict(model.state_dict())
        m16 = m16.to("cuda", torch.bfloat16)
        if mixers_of(m16, "moe"):
            eager_experts(m16)
        res16, hid16, _, ex16 = capture(m16, ids.cuda(), cfg)

        def rel(got, want):
            return ((got.double().cpu() - want.double()).abs().max() / max(1.0, want.abs().max().item())).reshape(()).float()
        ref["hf_bf16_rel_err.logits"] = rel(res16.logits.float(), ref["logits"])
        ref["hf_bf16_rel_err.norm"] = rel(ex16["norm"].float(), ref["hidden.norm"])
        for n, t in hid16.items():
            ref[f"hf_bf16_rel_err.layers.{n}"] = rel(t.float(), ref[f"hidden.layers.{n}"])
        log(f"bf16 rel err logits {ref['hf_bf16_rel_err.logits'].item():.3e}")
    except Exception as e:  # noqa: BLE001
        log(f"bf16 reference FAILED: {type(e).__name__}: {e}")


def reload_logits(d, ids):
    back = transformers.NemotronHForCausalLM.from_pretrained(d, dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    if mixers_of(back, "moe"):
        eager_experts(back)
    with torch.no_grad():
        return back(input_ids=ids, use_cache=False).logits, back


def other_form(base, name, out, notes):
    """The same model with config.json in the other block-type form; references copied."""
    d = os.path.join(out, name)
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(base["dir"], d)
    form = rewrite_block_form(os.path.join(d, "config.json"), base)
    log(f"{name}: config rewritten to the {form} form")
    info = check_reload(d, base)
    rewrite_meta(d, {"derived_from": os.path.basename(base["dir"]), "config_form": form, **info})
    write_notes(d, name, notes, None)
    folder_size(d)


def nvidia_layout(base, name, out, notes):
    """The MoE model as NVIDIA's checkpoints store it: "backbone." names, one tensor per expert
    (mixer.experts.{e}.up_proj/down_proj.weight), hybrid_override_pattern. transformers 5.17's save_pretrained
    already writes these tensor names (its conversion mapping reversed), so in 5.17 only the config form changes."""
    d = os.path.join(out, name)
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(base["dir"], d)
    sd = load_file(os.path.join(d, "model.safetensors"))
    new = {}
    for k, v in sd.items():
        nk = "backbone." + k[len("model."):] if k.startswith("model.") else k
        if nk.endswith("mixer.experts.up_proj") or nk.endswith("mixer.experts.down_proj"):
            proj = nk.rsplit(".", 1)[1]
            stem = nk[: -len(proj)]
            for e in range(v.shape[0]):
                new[f"{stem}{e}.{proj}.weight"] = v[e].clone().contiguous()
        else:
            new[nk] = v.contiguous()
    os.remove(os.path.join(d, "model.safetensors"))
    save_file(new, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    path = os.path.join(d, "config.json")
    with open(path) as f:
        c = json.load(f)
    if "layers_block_type" in c and c["layers_block_type"]:
        types = c.pop("layers_block_type")
        c["hybrid_override_pattern"] = "".join(PATTERN_CHAR[t] for t in types)
        c["num_hidden_layers"] = len(types)
    with open(path, "w") as f:
        json.dump(c, f, indent=2)
    info = check_reload(d, base)
    rewrite_meta(d, {"derived_from": os.path.basename(base["dir"]), "layout": "nvidia", **info})
    write_notes(d, name, notes, None)
    folder_size(d)


def rewrite_block_form(path, base):
    with open(path) as f:
        c = json.load(f)
    if "layers_block_type" in c and c["layers_block_type"]:
        types = c.pop("layers_block_type")
        c["hybrid_override_pattern"] = "".join(PATTERN_CHAR[t] for t in types)
        c["num_hidden_layers"] = len(types)
        form = "hybrid_override_pattern"
    else:
        pattern = c.pop("hybrid_override_pattern")
        names = block_types(base["cfg"])
        c["layers_block_type"] = names if len(names) == len(pattern) else [CHAR_NAME[ch] for ch in pattern]
        form = "layers_block_type"
    with open(path, "w") as f:
        json.dump(c, f, indent=2)
    return form


def check_reload(d, base):
    try:
        logits, back = reload_logits(d, base["ids"])
        diff = (logits - base["logits"]).abs().max().item()
        same_types = block_types(back.config) == block_types(base["cfg"])
        log(f"{os.path.basename(d)}: reloaded by transformers, max |logit diff| {diff:.3e}, "
            f"same block types {same_types}")
        return {"hf_reload_max_abs_logit_diff": repr(diff), "hf_reload_same_block_types": str(same_types)}
    except Exception as e:  # noqa: BLE001 - recorded; the fixture stays valid for the C++ side
        traceback.print_exc()
        return {"hf_reload_max_abs_logit_diff": f"FAILED: {type(e).__name__}: {e}"[:500]}


def rewrite_meta(d, extra):
    from safetensors import safe_open
    p = os.path.join(d, "reference.safetensors")
    with safe_open(p, framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta.update(extra)
    save_file(tensors, p, metadata=meta)


def write_sources(notes):
    for mod in ("transformers.models.nemotron_h.modeling_nemotron_h",
                "transformers.models.nemotron_h.configuration_nemotron_h",
                "transformers.models.zamba2.modeling_zamba2", "transformers.models.mamba2.modeling_mamba2",
                "transformers.cache_utils", "transformers.conversion_mapping", "transformers.masking_utils"):
        try:
            src = inspect.getsource(importlib.import_module(mod))
        except Exception as e:  # noqa: BLE001
            src = f"unavailable: {type(e).__name__}: {e}\n"
        with open(os.path.join(notes, mod.split(".")[-1] + ".py.txt"), "w") as f:
            f.write(src)
    with open(os.path.join(notes, "versions.txt"), "w") as f:
        f.write(f"transformers {transformers.__version__}\ntorch {torch.__version__}\n")
        try:
            f.write(f"NemotronHConfig defaults: {json.dumps(transformers.NemotronHConfig().to_dict(), default=str)}\n")
        except Exception as e:  # noqa: BLE001
            f.write(f"NemotronHConfig defaults unavailable: {e}\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures/models")
    ap.add_argument("--notes", default=None, help="folder for transformers sources and tensor-name lists")
    ap.add_argument("--seed", type=int, default=20261717)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    notes = a.notes or os.path.join(a.out, "_notes")
    os.makedirs(notes, exist_ok=True)
    torch.set_num_threads(min(8, os.cpu_count() or 1))
    log(f"transformers {transformers.__version__} torch {torch.__version__}")
    try:
        write_sources(notes)
    except Exception:  # noqa: BLE001
        traceback.print_exc()
    made, failed = {}, []
    for i, (n, spec) in enumerate(FIXTURES.items()):
        try:
            made[n] = make(n, spec, a.out, a.seed + i, notes)
        except Exception:  # noqa: BLE001 - the other fixtures and the notes still come back
            traceback.print_exc()
            failed.append(n)
    for n, base, fn in (("nemotronh_hybrid_pattern", "nemotronh_hybrid", other_form),
                        ("nemotronh_moe_nvidia", "nemotronh_moe", nvidia_layout)):
        if base not in made:
            failed.append(n)
            continue
        try:
            fn(made[base], n, a.out, notes)
        except Exception:  # noqa: BLE001
            traceback.print_exc()
            failed.append(n)
    log(f"failed {failed}")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
