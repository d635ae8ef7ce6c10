#!/usr/bin/env python3
"""Times HF `tokenizers` encoding the same corpus text as bench/tokenizer_bench.cc (single thread by default).

Run on the GPU machine (tokenizers 0.23); bench_tokenizer --hf calls it and prints the ratio:
  python3 tools/bench_hf_tokenizer.py --tokenizer DIR --shared .shared [--split valid] [--repeats 3] [--threads 1]
Prints a last line "HF_RESULT {json}" with MB/s, tokens/s, the token count and the same order-sensitive
checksum of all ids as the C++ side.
"""
import argparse
import json
import lzma
import os
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True, help="folder with tokenizer.json, or the file")
    ap.add_argument("--shared", default=os.environ.get("QAD_SHARED_DIR", "../shared"))
    ap.add_argument("--split", default="valid")
    ap.add_argument("--max-mb", type=float, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    # Must be set before tokenizers starts its rayon pool.
    os.environ["RAYON_NUM_THREADS"] = str(a.threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if a.threads > 1 else "false"
    import tokenizers

    path = a.tokenizer
    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    tok = tokenizers.Tokenizer.from_file(path)

    docs, nbytes = [], 0
    for name in ("prose", "python", "go"):
        with lzma.open(os.path.join(a.shared, "corpus", f"{name}_{a.split}.jsonl.xz"), "rt", encoding="utf-8") as f:
            for line in f:
                if a.max_mb > 0 and nbytes >= a.max_mb * 1e6:
                    break
                t = json.loads(line)["text"]
                docs.append(t)
                nbytes += len(t.encode("utf-8"))

    mod = (1 << 61) - 1
    best, first, total, h = 1e30, None, 0, 0
    for r in range(max(1, a.repeats)):
        t0 = time.perf_counter()
        if a.threads == 1:
            encs = [tok.encode(d, add_special_tokens=False) for d in docs]
        else:
            encs = tok.encode_batch(docs, add_special_tokens=False)
        dt = time.perf_counter() - t0
        first = dt if first is None else first
        best = min(best, dt)
        h, total = 0, 0
        for e in encs:
            for i in e.ids:
                h = (h * 1000003 + i + 1) % mod
            total += len(e.ids)
    res = {"version": tokenizers.__version__, "threads": a.threads, "docs": len(docs), "bytes": nbytes,
           "tokens": total, "checksum": h, "mb_per_s": nbytes / 1e6 / best, "tokens_per_s": total / best,
           "first_mb_per_s": nbytes / 1e6 / first}
    print(f"HF tokenizers {tokenizers.__version__}: {res['mb_per_s']:.2f} MB/s, {res['tokens_per_s']:.0f} tokens/s, "
          f"{total} tokens", file=sys.stderr)
    print("HF_RESULT " + json.dumps(res))


if __name__ == "__main__":
    main()
