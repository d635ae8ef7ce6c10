#!/usr/bin/env python3
"""PyTorch + transformers baseline for bench_train: the same QAD step in plain PyTorch, the way a user would write
it, in one of two modes:

  eager    the model runs eagerly; NVFP4 fake quantization is a Triton kernel (ModelOpt's path)
  compile  torch.compile of the student's and the teacher's forward (and so the student's backward) and of the
           KL chunk; fake quantization written in torch ops so that Inductor fuses it with its neighbours

The step (as bench/train_bench.cc): BF16 teacher forward without gradient; the student (the teacher's weights) with
W4A4 NVFP4 fake quantization on every decoder Linear (static input amax from one calibration batch, weight amax =
max |w|, both shared over the fused groups q/k/v and gate/up; lm_head, tied to the embeddings, stays BF16) and a
straight-through estimator; KL(teacher || student) over all tokens in FP32, chunk by chunk, its gradient computed in
the forward (as qad's ChunkedKL); global-norm clipping at 1.0; AdamW (lr 1e-5, no weight decay) on FP32 master
weights copied into the BF16 model. The NVFP4 numerics mirror src/nvfp4/scales.h (../shared/docs/NVFP4.md).

    python3 tools/bench_train_torch.py --model 0.6b --mode eager [--load DIR] [--batch 4 --seq 2048] [--json]

--load DIR reads the model, batch and amaxes bench_train wrote (model.safetensors with HF names, batch.safetensors,
quantizers.safetensors), so that the step-0 loss can be compared with qad's; without it the weights are random
N(0, 0.02) and the amaxes are calibrated here. Prints one JSON object with --json (bench_train parses it)."""
import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F
import transformers

BASE = dict(vocab_size=151936, head_dim=128, max_position_embeddings=40960, rms_norm_eps=1e-6,
            tie_word_embeddings=True, hidden_act="silu", num_key_value_heads=8, num_attention_heads=16,
            num_hidden_layers=28, rope_parameters=dict(rope_type="default", rope_theta=1000000.0))
SHAPES = {"0.6b": dict(hidden_size=1024, intermediate_size=3072), "1.7b": dict(hidden_size=2048, intermediate_size=6144)}
E4M3_MIN_SUBNORMAL = 2.0 ** -9
FUSED = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "gate_proj": "gate_up", "up_proj": "gate_up"}


# ---- NVFP4 fake quantization in torch ops (the compile mode's; Inductor fuses it) ----

def e2m1_round(a):
    """|x| rounded to the E2M1 grid {0, .5, 1, 1.5, 2, 3, 4, 6}: nearest, ties to the even code, saturating."""
    return torch.where(a <= 0.25, 0.0, torch.where(a < 0.75, 0.5, torch.where(a <= 1.25, 1.0, torch.where(
        a < 1.75, 1.5, torch.where(a <= 2.5, 2.0, torch.where(a < 3.5, 3.0, torch.where(a <= 5.0, 4.0, 6.0)))))))


def fake_quant_torch(x, amax):
    xf = x.float().reshape(-1, 16)
    sg = amax / 2688.0
    bmax = xf.abs().amax(-1, keepdim=True)
    s = (bmax / (6.0 * sg)).clamp(E4M3_MIN_SUBNORMAL, 448.0)
    sb = torch.where(bmax == 0, 1.0, s.to(torch.float8_e4m3fn).float())
    q = xf / (sb * sg)
    y = (e2m1_round(q.abs()).copysign(q) * sb) * sg
    return y.to(x.dtype).reshape(x.shape)


def fake_quant_ste_torch(x, amax):
    return x + (fake_quant_torch(x, amax) - x).detach()


# ---- the same in a Triton kernel (the eager mode's) ----

try:
    import triton
    import triton.language as tl

    # IEEE-rounded divisions as the CUDA kernels (scales.h); older Triton lacks div_rn and gets plain division.
    _PRECISE = hasattr(tl.math, "div_rn")

    @triton.jit
    def _div(a, b, PRECISE: tl.constexpr):
        if PRECISE:
            return tl.math.div_rn(a, b)
        else:
            return a / b

    @triton.jit
    def _fake_quant_kernel(x_ptr, y_ptr, amax_ptr, n_blocks, BLOCKS: tl.constexpr, PRECISE: tl.constexpr):
        b = tl.program_id(0) * BLOCKS + tl.arange(0, BLOCKS)
        offs = b[:, None] * 16 + tl.arange(0, 16)[None, :]
        inside = b[:, None] < n_blocks
        x = tl.load(x_ptr + offs, mask=inside, other=0.0).to(tl.float32)
        sg = _div(tl.load(amax_ptr), 2688.0, PRECISE)
        bmax = tl.max(tl.abs(x), axis=1)
        s = _div(bmax, 6.0 * sg, PRECISE)
        s = tl.minimum(tl.maximum(s, 0.001953125), 448.0)
        sb = tl.where(bmax == 0.0, 1.0, s.to(tl.float8e4nv).to(tl.float32))
        denom = sb * sg
        q = _div(x, denom[:, None], PRECISE)
        a = tl.abs(q)
        r = tl.where(a <= 0.25, 0.0, tl.where(a < 0.75, 0.5, tl.where(a <= 1.25, 1.0, tl.where(
            a < 1.75, 1.5, tl.where(a <= 2.5, 2.0, tl.where(a < 3.5, 3.0, tl.where(a <= 5.0, 4.0, 6.0)))))))
        r = tl.where(q < 0.0, -r, r)
        y = (r * sb[:, None]) * sg
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=inside)

    def fake_quant_triton(x, amax):
        x = x.contiguous()
        y = torch.empty_like(x)
        n_blocks = x.numel() // 16
        blocks = 64
        _fake_quant_kernel[(triton.cdiv(n_blocks, blocks),)](x, y, amax, n_blocks, BLOCKS=blocks, PRECISE=_PRECISE)
        return y
except ImportError:  # pragma: no cover - the GPU machine has triton
    triton = None


class FakeQuantSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, amax):
        return fake_quant_triton(x, amax)

    @staticmethod
    def backward(ctx, g):
        return g, None


class QuantLinear(torch.nn.Module):
    """nn.Linear with W4A4 NVFP4 fake quantization (static amaxes, STE), as ModelOpt's QuantLinear."""

    def __init__(self, linear, name, fq):
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias
        self.name = name
        self.fq = fq
        self.register_buffer("input_amax", torch.zeros((), device=linear.weight.device))
        self.register_buffer("weight_amax", torch.zeros((), device=linear.weight.device))
        self.calibrating = False

    def forward(self, x):
        if self.calibrating:
            self.input_amax.copy_(torch.maximum(self.input_amax, x.detach().abs().amax().float()))
            return F.linear(x, self.weight, self.bias)
        return F.linear(self.fq(x, self.input_amax), self.fq(self.weight, self.weight_amax), self.bias)


def quantize_model(model, fq):
    qls = []
    for name, mod in list(model.named_modules()):
        if isinstance(mod, torch.nn.Linear) and name != "lm_head":
            q = QuantLinear(mod, name, fq)
            model.set_submodule(name, q)
            qls.append(q)
    return qls


def share_fused_groups(qls):
    groups = {}
    for q in qls:
        prefix, leaf = q.name.rsplit(".", 1)
        groups.setdefault(prefix + "." + FUSED.get(leaf, leaf), []).append(q)
    for members in groups.values():
        ia = torch.stack([q.input_amax for q in members]).max()
        wa = torch.stack([q.weight.detach().abs().amax().float() for q in members]).max()
        for q in members:
            q.input_amax.copy_(ia)
            q.weight_amax.copy_(wa)


# ---- chunked KL(teacher || student) with the gradient computed in the forward (qad's ChunkedKL) ----

def kl_chunk(s, t, inv_n):
    log_ps = torch.log_softmax(s.float(), -1)
    log_pt = torch.log_softmax(t.float(), -1)
    pt = log_pt.exp()
    kl = (pt * (log_pt - log_ps)).sum()
    grad = ((log_ps.exp() - pt) * inv_n).to(s.dtype)
    return kl, grad


class ChunkedKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s_logits, t_logits, chunk, chunk_fn):
        s2 = s_logits.reshape(-1, s_logits.shape[-1])
        t2 = t_logits.reshape(-1, t_logits.shape[-1])
        n = s2.shape[0]
        grad = torch.empty_like(s2)
        total = torch.zeros((), dtype=torch.float32, device=s2.device)
        for b in range(0, n, chunk):
            kl, g = chunk_fn(s2[b:b + chunk], t2[b:b + chunk], 1.0 / n)
            total = total + kl
            grad[b:b + chunk] = g
        ctx.grad = grad.view(s_logits.shape)
        return total / n

    @staticmethod
    def backward(ctx, g):
        grad = ctx.grad
        return grad * g.to(grad.dtype), None, None, None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=sorted(SHAPES), default="0.6b")
    ap.add_argument("--mode", choices=["eager", "compile"], default="eager")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=4096)
    ap.add_argument("--load", default="")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(1)
    config = transformers.Qwen3Config(**BASE, **SHAPES[a.model], attn_implementation="sdpa")
    with torch.device(dev):
        teacher = transformers.Qwen3ForCausalLM(config).to(torch.bfloat16)
    with torch.no_grad():
        if a.load:
            from safetensors.torch import load_file
            sd = load_file(os.path.join(a.load, "model.safetensors"), device="cuda")
            missing, unexpected = teacher.load_state_dict(sd, strict=False)
            assert not unexpected and all(k == "lm_head.weight" for k in missing), (missing, unexpected)
            batch = load_file(os.path.join(a.load, "batch.safetensors"), device="cuda")
            ids = batch["input_ids"]
        else:
            for n, p in teacher.named_parameters():
                p.fill_(1.0) if "norm" in n else p.normal_(0.0, 0.02)
            ids = torch.randint(config.vocab_size, (a.batch, a.seq), device=dev)
    with torch.device(dev):
        student = transformers.Qwen3ForCausalLM(config).to(torch.bfloat16)
    for m in (teacher, student):
        if m.lm_head.weight.data_ptr() != m.model.embed_tokens.weight.data_ptr():
            m.lm_head.weight = m.model.embed_tokens.weight  # tied, as qad's (and Qwen3-0.6B / 1.7B's)
    student.load_state_dict(teacher.state_dict())
    teacher.eval().requires_grad_(False)
    student.train()
    fq = FakeQuantSTE.apply if a.mode == "eager" else fake_quant_ste_torch
    qls = quantize_model(student, fq)

    # Calibration: one batch, max |x| per Linear input, max |w|; shared over the fused groups.
    with torch.no_grad():
        for q in qls:
            q.calibrating = True
        student(input_ids=ids, use_cache=False, logits_to_keep=1)
        for q in qls:
            q.calibrating = False
        share_fused_groups(qls)
    amax_rel_diff = None
    if a.load:
        from safetensors.torch import load_file
        ref = load_file(os.path.join(a.load, "quantizers.safetensors"), device="cuda")
        diffs = []
        with torch.no_grad():
            for q in qls:
                for kind, buf in (("input", q.input_amax), ("weight", q.weight_amax)):
                    r = ref[f"{q.name}.{kind}_quantizer._amax"].float().reshape(())
                    diffs.append(((buf - r).abs() / r).item())
                    buf.copy_(r)  # qad's amaxes, so that the step-0 losses compare the step alone
        amax_rel_diff = max(diffs)

    params = [p for p in student.parameters() if p.requires_grad]
    masters = [p.detach().float().clone().requires_grad_(True) for p in params]
    opt = torch.optim.AdamW(masters, lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                            fused=a.mode == "compile", foreach=None if a.mode == "compile" else True)

    def fwd(m, x):
        return m(input_ids=x, use_cache=False).logits

    t_fwd, s_fwd, chunk_fn = fwd, fwd, kl_chunk
    if a.mode == "compile":
        t_fwd = torch.compile(fwd)
        s_fwd = torch.compile(fwd)
        chunk_fn = torch.compile(kl_chunk)

    def step():
        with torch.no_grad():
            t_logits = t_fwd(teacher, ids)
        s_logits = s_fwd(student, ids)
        loss = ChunkedKL.apply(s_logits, t_logits, a.chunk, chunk_fn)
        del t_logits, s_logits
        loss.backward()
        for m, p in zip(masters, params):
            m.grad = p.grad.float()
            p.grad = None
        torch.nn.utils.clip_grad_norm_(masters, 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for p, m in zip(params, masters):
                p.copy_(m)
        return loss.detach()

    times, first_loss = [], None
    t_compile = time.perf_counter()
    for i in range(a.warmup + a.iters):
        if i == a.warmup:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = step()
        torch.cuda.synchronize()
        if i == 0:
            first_loss = loss.item()
            t_compile = time.perf_counter() - t_compile
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    ms = statistics.median(times) * 1e3
    out = {"impl": f"torch-{a.mode}", "model": a.model, "torch": torch.__version__,
           "transformers": transformers.__version__, "triton": getattr(triton, "__version__", None),
           "batch": ids.shape[0], "seq": ids.shape[1], "median_ms": ms,
           "peak_gb": torch.cuda.max_memory_allocated() / 1e9, "loss0": first_loss,
           "first_step_s": t_compile, "amax_rel_diff": amax_rel_diff, "device": torch.cuda.get_device_name()}
    print(json.dumps(out) if a.json else out)


if __name__ == "__main__":
    main()
