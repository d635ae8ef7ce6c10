#!/usr/bin/env python3
"""transformers baseline for bench_generate: greedy `generate` of a batch of equal-length prompts for
exactly --new tokens (no stop token), BF16 on CUDA, attn_implementation="sdpa", the default (dynamic) KV cache.

    python3 tools/bench_generate_hf.py --model DIR --prompts prompts.json --new 256 --out hf_out.json

prompts.json is a list of token-id lists (all of one length, so no padding is involved); hf_out.json gets
the generated ids per prompt. The last stdout line is one JSON object (bench_generate parses it)."""
import argparse
import json
import time

import torch
import transformers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    prompts = json.load(open(a.prompts))
    model = transformers.AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16,
                                                              attn_implementation="sdpa").to("cuda").eval()
    ids = torch.tensor(prompts, dtype=torch.long, device="cuda")
    mask = torch.ones_like(ids)
    # No stop token at all (qad runs without one too): every sequence generates exactly --new tokens.
    for cfg in (model.config, model.generation_config):
        cfg.eos_token_id = None
    model.generation_config.pad_token_id = 0
    kw = dict(attention_mask=mask, do_sample=False, temperature=None, top_p=None, top_k=None)
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=8, **kw)  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=a.new, **kw)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    new = out[:, ids.shape[1]:].tolist()
    json.dump(new, open(a.out, "w"))
    print(json.dumps({"impl": "transformers", "version": transformers.__version__, "torch": torch.__version__,
                      "batch": len(prompts), "new": a.new, "seconds": seconds,
                      "tokens_per_s": len(prompts) * a.new / seconds, "device": torch.cuda.get_device_name()}))


if __name__ == "__main__":
    main()
