#!/usr/bin/env python3
"""Perplexity reference for `qad eval` (docs/eval.md "Perplexity"), computed with transformers.

Runs on the GPU machine (transformers 5.17, tokenizers 0.23). Implements qad's protocol independently:
each {"text"} line of a .jsonl file is one document, encoded with the tokenizer's template
(add_special_tokens=True, i.e. BOS for Llama-2 tokenizers) when --bos auto, followed by the --doc-end
token; documents are concatenated into one stream; windows of seq_len+1 tokens at stride seq_len (the last
window may be shorter) give seq_len targets each, every stream token after the first being a target
exactly once; perplexity = exp(mean NLL over all targets), NLL from FP32 logits summed in FP64.

Default (the committed fixture):
  python3 tools/ppl_reference.py --model ../shared/models/stories260K \
      --data tests/fixtures/eval/heldout_stories.jsonl --seq-len 512 --bos auto --doc-end none \
      --out tests/fixtures/eval/stories260k_ppl.json
"""
import argparse
import json
import math
import os

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="../shared/models/stories260K")
    ap.add_argument("--data", default="tests/fixtures/eval/heldout_stories.jsonl")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--bos", choices=["auto", "never"], default="auto")
    ap.add_argument("--doc-end", default="none", help="none, eos, or a token string")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="tests/fixtures/eval/stories260k_ppl.json")
    a = ap.parse_args()

    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).to(a.device).eval()
    doc_end = None
    if a.doc_end == "eos":
        doc_end = tok.eos_token_id
    elif a.doc_end != "none":
        doc_end = tok.convert_tokens_to_ids(a.doc_end)

    ids, documents = [], 0
    with open(a.data, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            text = json.loads(line)["text"]
            doc = tok(text, add_special_tokens=(a.bos == "auto"))["input_ids"]
            if doc_end is not None:
                doc.append(doc_end)
            ids.extend(doc)
            documents += 1

    nll, scored, windows = 0.0, 0, 0
    with torch.no_grad():
        for begin in range(0, len(ids) - 1, a.seq_len):
            w = ids[begin:begin + a.seq_len + 1]
            x = torch.tensor([w[:-1]], device=a.device)
            y = torch.tensor(w[1:], device=a.device)
            logits = model(input_ids=x).logits[0].float()
            lp = torch.log_softmax(logits, dim=-1).gather(1, y[:, None])[:, 0]
            nll -= lp.double().sum().item()
            scored += len(w) - 1
            windows += 1

    out = {
        "model": os.path.basename(os.path.normpath(a.model)),
        "data": a.data,
        "seq_len": a.seq_len,
        "bos": a.bos,
        "doc_end": a.doc_end,
        "documents": documents,
        "stream_tokens": len(ids),
        "scored_tokens": scored,
        "windows": windows,
        "nll": nll / scored,
        "perplexity": math.exp(nll / scored),
        "stream_ids": ids,
        "device": a.device,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"{a.out}: perplexity {out['perplexity']:.6f} over {scored} tokens ({windows} windows, {documents} documents)")


if __name__ == "__main__":
    main()
