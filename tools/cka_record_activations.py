#!/usr/bin/env python3
"""Record decoder-layer hidden states of a teacher and a perturbed 'student' with transformers, for the CKA
fixture (tests/fixtures/cka). Runs on the GPU machine (torch + transformers); writes the format that
tools/cka_reference.py reads, then run `cka_reference.py expected` on the same folder.

  python3 tools/cka_record_activations.py --model ../shared/models/qwen3-16m-teacher --out tests/fixtures/cka
  python3 tools/cka_reference.py expected tests/fixtures/cka

The student is the teacher with every decoder Linear weight rounded to an NVFP4-like grid (E2M1 values, one
unrounded scale per 16 weights): a realistic-size perturbation, not qad's quantizer. Layer l's features are
the output of model.model.layers[l] (forward hook), for `--tokens` tokens of the first prose_valid document.
"""
import argparse
import json
import lzma
import pathlib
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from cka_reference import write_activations  # noqa: E402

E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def nvfp4_like(w: torch.Tensor) -> torch.Tensor:
    out, k = w.shape
    b = w.float().reshape(out, k // 16, 16)
    scale = b.abs().amax(-1, keepdim=True).clamp_min(1e-12) / 6.0
    v = (b / scale).abs()
    grid = E2M1.to(w.device)
    q = grid[(v.unsqueeze(-1) - grid).abs().argmin(-1)] * b.sign()
    return (q * scale).reshape(out, k).to(w.dtype)


def record(model, ids, layers):
    got = {}
    hooks = [model.model.layers[l].register_forward_hook(
        lambda m, i, o, l=l: got.__setitem__(l, (o[0] if isinstance(o, tuple) else o).detach()))
        for l in layers]
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    return {l: got[l][0].double().cpu().numpy() for l in layers}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=pathlib.Path, required=True)
    ap.add_argument("--out", type=pathlib.Path, required=True)
    ap.add_argument("--corpus", type=pathlib.Path, default=pathlib.Path("../shared/corpus/prose_valid.jsonl.xz"))
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--layers", default="0,3,7")
    ap.add_argument("--minibatch-rows", type=int, default=32)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    layers = [int(s) for s in a.layers.split(",")]
    tok = AutoTokenizer.from_pretrained(a.model)
    with lzma.open(a.corpus, "rt") as f:
        text = json.loads(f.readline())["text"]
    ids = tok(text, return_tensors="pt").input_ids[:, : a.tokens].to(a.device)
    if ids.shape[1] < a.tokens:
        sys.exit(f"the first document has only {ids.shape[1]} tokens; ask for fewer with --tokens")
    teacher = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16).to(a.device).eval()
    xs = record(teacher, ids, layers)
    with torch.no_grad():
        for layer in teacher.model.layers:
            for m in layer.modules():
                if isinstance(m, torch.nn.Linear) and m.in_features % 16 == 0:
                    m.weight.copy_(nvfp4_like(m.weight))
    ys = record(teacher, ids, layers)  # the same model object, now the student
    write_activations(a.out, [(f"model.layers.{l}", xs[l], ys[l]) for l in layers], "float32", a.minibatch_rows,
                      f"cka_record_activations.py {a.model.name} tokens={a.tokens} layers={a.layers} "
                      f"torch={torch.__version__}")


if __name__ == "__main__":
    main()
