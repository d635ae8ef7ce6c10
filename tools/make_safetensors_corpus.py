#!/usr/bin/env python3
"""Writes tests/io/corpus/: small malformed (and a few valid) safetensors files, each with the part of
the one-line error qad must give, in expected.tsv. Stdlib only; deterministic. Seeds the fuzzer too."""
import json, os, struct, sys

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "io", "corpus")

def st(header, data=b"", length=None):
    text = header if isinstance(header, (bytes, str)) else json.dumps(header, separators=(",", ":"))
    if isinstance(text, str):
        text = text.encode()
    n = len(text) if length is None else length
    return struct.pack("<Q", n) + text + data

f32 = lambda shape, b, e: {"dtype": "F32", "shape": shape, "data_offsets": [b, e]}
CASES = [
    # name, bytes, expected message part ("OK" = must parse)
    ("too_short", b"\x05\x00\x00", "too short for a safetensors header"),
    ("header_len_beyond_file", st({"a": f32([1], 0, 4)}, b"\0" * 4, length=4096), "runs past the end of the file"),
    ("header_len_huge", st({}, b"", length=2**63 + 5), "runs past the end of the file"),
    ("invalid_json", st('{"a": {"dtype": "F32",'), "header is not valid JSON"),
    ("json_trailing_garbage", st('{} xx'), "header is not valid JSON"),
    ("not_an_object", st("[1,2,3]"), "header must be a JSON object"),
    ("entry_not_object", st({"a": 5}), "header entry must be an object"),
    ("offsets_past_data", st({"a": f32([2], 0, 8)}, b"\0" * 4), "run past the data section"),
    ("offsets_end_before_begin", st({"a": f32([0], 8, 4)}, b"\0" * 8), "end before begin"),
    ("offsets_overlap", st({"a": f32([2], 0, 8), "b": f32([2], 4, 12)}, b"\0" * 12), "overlap"),
    ("offsets_negative", st({"a": f32([1], -4, 0)}, b"\0" * 4), "must be [begin, end] with non-negative integers"),
    ("offsets_three", st({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}}, b"\0" * 8),
     "must be [begin, end]"),
    ("dtype_shape_mismatch", st({"a": f32([3], 0, 8)}, b"\0" * 8), "needs 12 bytes but data_offsets span 8"),
    ("dtype_unknown", st({"a": {"dtype": "Q4_K", "shape": [1], "data_offsets": [0, 1]}}, b"\0"),
     "unsupported dtype 'Q4_K'"),
    ("dtype_missing", st({"a": {"shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4), "missing or non-string \"dtype\""),
    ("shape_negative", st({"a": f32([-1], 0, 4)}, b"\0" * 4), "not a non-negative integer"),
    ("shape_float", st({"a": f32([1.5], 0, 4)}, b"\0" * 4), "not a non-negative integer"),
    ("shape_overflow", st({"a": f32([2**62, 2**62], 0, 4)}, b"\0" * 4), "overflows 64 bits"),
    ("duplicate_tensor", st('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                            '"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', b"\0" * 8),
     "tensor 'a' appears twice"),
    ("metadata_not_string", st({"__metadata__": {"format": 1}}), "__metadata__ entry 'format' must be a string"),
    ("unknown_field", st({"a": dict(f32([1], 0, 4), extra=1)}, b"\0" * 4), "unknown header field 'extra'"),
    ("valid_empty", st({}), "OK"),
    ("valid_two", st({"__metadata__": {"format": "pt"}, "w": f32([2], 0, 8),
                      "b": {"dtype": "BF16", "shape": [2, 1], "data_offsets": [8, 12]}}, b"\0" * 12), "OK"),
    ("valid_scalar_and_empty", st({"s": f32([], 0, 4), "e": f32([0, 3], 4, 4)}, b"\0" * 4), "OK"),
]

def main():
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "expected.tsv"), "w") as tsv:
        tsv.write("# file\texpected part of the error message (OK = must parse); written by "
                  "tools/make_safetensors_corpus.py\n")
        for name, data, expect in CASES:
            with open(os.path.join(OUT, name + ".safetensors"), "wb") as f:
                f.write(data)
            tsv.write(f"{name}.safetensors\t{expect}\n")
    print(f"wrote {len(CASES)} files to {os.path.normpath(OUT)}")

if __name__ == "__main__":
    sys.exit(main())
