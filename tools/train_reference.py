#!/usr/bin/env python3
"""PyTorch + transformers reference of one QAD step and one CKA-QAD step, in FP64, for tests/train/reference_test.cc.

Loads a tiny fixture model as the teacher, makes the student = teacher + seeded noise (so KL and 1 - CKA are
far from 0), builds a right-padded batch, and for each method computes
    QAD:     loss = KL(teacher || student)                               (mean over loss tokens)
    CKA-QAD: loss = KL + lambda * mean_l (1 - CKA_biased(teacher_l, student_l))   (real tokens, every layer)
then the gradients, then one AdamW step (PyTorch's torch.optim.AdamW, weight decay on >= 2-D tensors only,
global-norm clipping at 1.0). Writes everything (student weights, batch, losses, per-layer CKA, gradients,
updated weights) into one safetensors file. The C++ test loads the same weights and batch and compares.

Run on the GPU machine (transformers 5.17; CPU is enough, FP64):
  python3 tools/train_reference.py --model tests/fixtures/models/qwen3_qknorm_headdim_tied \
      --out tests/fixtures/train/reference.safetensors
"""
import argparse
import copy
import json
import pathlib

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

LAMBDA = 0.3
LR = 1e-3
WEIGHT_DECAY = 0.1
CLIP = 1.0
LENS = [16, 11, 7]
T = 16


def cka_biased(x, y):
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    return (y.T @ x).pow(2).sum() / (torch.linalg.norm(x.T @ x) * torch.linalg.norm(y.T @ y))


def layer_outputs(model):
    """Forward hooks capturing each decoder layer's output (the residual stream, before the final norm)."""
    store = {}
    hooks = []
    for i, layer in enumerate(model.model.layers):
        def hook(_m, _inp, out, i=i):
            store[f"layers.{i}"] = out[0] if isinstance(out, tuple) else out
        hooks.append(layer.register_forward_hook(hook))
    return store, hooks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=1234)
    a = ap.parse_args()

    g = torch.Generator().manual_seed(a.seed)
    teacher = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float64, attn_implementation="eager").eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student0 = copy.deepcopy(teacher)  # frozen like the teacher; each method's copy is unfrozen below
    with torch.no_grad():
        for _, p in student0.named_parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.05 * (p.std() + 1e-3))
            p.copy_(p.float().double())  # FP32-representable, so the file can store the weights in FP32 exactly
    vocab = teacher.config.vocab_size
    b = len(LENS)
    input_ids = torch.randint(vocab, (b, T), generator=g)
    targets = torch.randint(vocab, (b, T), generator=g)
    attn = torch.zeros(b, T, dtype=torch.long)
    for r, n in enumerate(LENS):
        attn[r, :n] = 1
    loss_mask = attn.to(torch.float64)

    # FP32 storage keeps the file small (< 5 MB): the weights are exact in FP32, gradients lose ~6e-8 relative (far
    # below the test's tolerance) and the AdamW step is stored as the FP32 difference from the start weights.
    start = {n: p.detach().clone() for n, p in student0.named_parameters()}
    out = {f"student.{n}": p.float() for n, p in start.items()}
    out["batch.input_ids"] = input_ids
    out["batch.targets"] = targets
    out["batch.attention_mask"] = attn
    out["batch.loss_mask"] = loss_mask

    t_store, t_hooks = layer_outputs(teacher)
    with torch.no_grad():
        t_logits = teacher(input_ids=input_ids, attention_mask=attn).logits
    for h in t_hooks:
        h.remove()
    t_hidden = dict(t_store)
    keep = attn.reshape(-1).bool()
    n_tok = loss_mask.sum()

    for method, lam in (("qad", 0.0), ("cka_qad", LAMBDA)):
        student = copy.deepcopy(student0).train()
        for p in student.parameters():  # the copy inherits the frozen teacher's requires_grad=False
            p.requires_grad_(True)
        s_store, s_hooks = layer_outputs(student)
        s_logits = student(input_ids=input_ids, attention_mask=attn).logits
        for h in s_hooks:
            h.remove()
        lt = torch.log_softmax(t_logits, -1)
        ls = torch.log_softmax(s_logits, -1)
        kl = ((lt.exp() * (lt - ls)).sum(-1) * loss_mask).sum() / n_tok
        loss = kl
        ckas = {}
        if lam > 0:
            terms = []
            for name, th in t_hidden.items():
                x = th.reshape(-1, th.shape[-1])[keep]
                y = s_store[name].reshape(-1, s_store[name].shape[-1])[keep]
                c = cka_biased(x, y)
                ckas[name] = c
                terms.append(1 - c)
            loss = loss + lam * torch.stack(terms).mean()
        loss.backward()
        out[f"{method}.loss"] = loss.detach().clone().reshape(1)  # QAD: loss is kl itself
        out[f"{method}.kl"] = kl.detach().clone().reshape(1)
        for name, c in ckas.items():
            out[f"{method}.cka.{name}"] = c.detach().clone().reshape(1)
        for n, p in student.named_parameters():
            out[f"{method}.grad.{n}"] = p.grad.detach().float()
        decay = [p for p in student.parameters() if p.dim() >= 2]
        no_decay = [p for p in student.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=LR, betas=(0.9, 0.999), eps=1e-8)
        torch.nn.utils.clip_grad_norm_(student.parameters(), CLIP)
        opt.step()
        for n, p in student.named_parameters():
            out[f"{method}.update.{n}"] = (p.detach() - start[n]).float()
        print(f"{method}: loss {loss.item():.12g} kl {kl.item():.12g} " +
              " ".join(f"{k} {v.item():.6f}" for k, v in ckas.items()))

    meta = {"format": "qad-train-reference-v1", "model": a.model, "lambda": str(LAMBDA), "lr": str(LR),
            "weight_decay": str(WEIGHT_DECAY), "clip": str(CLIP), "transformers": __import__("transformers").__version__,
            "torch": torch.__version__}
    pathlib.Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, a.out, metadata=meta)
    print(f"wrote {a.out} ({len(out)} tensors)")


if __name__ == "__main__":
    main()
