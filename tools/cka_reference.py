#!/usr/bin/env python3
"""Independent NumPy (FP64) reference for qad's linear CKA, on recorded activations.

Reads DIR/activations.json + the raw little-endian rows it names (format in docs/losses.md) and writes
DIR/expected.json with, per layer, the biased and debiased CKA (feature form, checked against the Gram form)
and Nguyen et al.'s minibatch CKA over consecutive chunks of `minibatch_rows` rows. The C++ test
tests/loss/cka_fixture_test.cc compares qad's values with these.

  python3 tools/cka_reference.py expected tests/fixtures/cka
  python3 tools/cka_reference.py synth tests/fixtures/cka      # synthetic activations, NumPy only

Needs only numpy. The formulas follow Google's representation_similarity demo (Kornblith et al. 2019;
Nguyen, Raghu & Kornblith 2021) and Song et al. (2012) for the unbiased HSIC.
"""
import argparse
import json
import pathlib
import sys

import numpy as np

FORMAT = "qad-cka-activations-v1"


def read_activations(d: pathlib.Path):
    meta = json.loads((d / "activations.json").read_text())
    if meta.get("format") != FORMAT:
        sys.exit(f"{d}/activations.json: format is {meta.get('format')!r}, expected {FORMAT!r}")
    dtype = {"float32": "<f4", "float64": "<f8"}[meta["dtype"]]
    raw = (d / meta["data"]).read_bytes()
    layers = []
    for l in meta["layers"]:
        def take(off, cols):
            n = l["rows"] * cols
            return np.frombuffer(raw, dtype=dtype, count=n, offset=off).reshape(l["rows"], cols).astype(np.float64)
        layers.append((l["name"], take(l["x_offset"], l["x_cols"]), take(l["y_offset"], l["y_cols"])))
    return meta, layers


# --- feature form (Google's feature_space_linear_cka) ---------------------------------------------------
def _debiased_dps(xty, ssr_x, ssr_y, sq_x, sq_y, n):
    return xty - n / (n - 2.0) * ssr_x.dot(ssr_y) + sq_x * sq_y / ((n - 1) * (n - 2))


def feature_cka(x, y, debiased):
    x = x - x.mean(0, keepdims=True)
    y = y - y.mean(0, keepdims=True)
    dot = np.linalg.norm(x.T @ y) ** 2
    nx = np.linalg.norm(x.T @ x)
    ny = np.linalg.norm(y.T @ y)
    if debiased:
        n = x.shape[0]
        sx, sy = np.einsum("ij,ij->i", x, x), np.einsum("ij,ij->i", y, y)
        qx, qy = sx.sum(), sy.sum()
        dot = _debiased_dps(dot, sx, sy, qx, qy, n)
        nx = np.sqrt(_debiased_dps(nx**2, sx, sx, qx, qx, n))
        ny = np.sqrt(_debiased_dps(ny**2, sy, sy, qy, qy, n))
    return dot / (nx * ny)


# --- Gram form --------------------------------------------------------------------------------------------
def hsic(k, l, debiased):
    """Biased: tr(KHLH)/(n-1)^2. Debiased: Song et al.'s unbiased HSIC with zeroed diagonals."""
    n = k.shape[0]
    if not debiased:
        h = np.eye(n) - 1.0 / n
        return np.trace(k @ h @ l @ h) / (n - 1) ** 2
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    return (np.sum(kt * lt) + kt.sum() * lt.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * kt.sum(0).dot(lt.sum(1))) / (
        n * (n - 3))


def gram_hsic_terms(x, y, debiased):
    # centring first changes no HSIC estimate and keeps FP64 cancellation small
    x = x - x.mean(0, keepdims=True)
    y = y - y.mean(0, keepdims=True)
    k, l = x @ x.T, y @ y.T
    return hsic(k, l, debiased), hsic(k, k, debiased), hsic(l, l, debiased)


def gram_cka(x, y, debiased):
    xy, xx, yy = gram_hsic_terms(x, y, debiased)
    return xy / np.sqrt(xx * yy)


def minibatch_cka(x, y, rows, debiased):
    """Nguyen et al.: HSIC terms averaged over consecutive batches, then normalised. Batches with fewer rows
    than the estimator needs (2 biased, 4 debiased) are left out, as CkaAccumulator does."""
    sums = np.zeros(3)
    for b in range(0, x.shape[0], rows):
        xb, yb = x[b:b + rows], y[b:b + rows]
        if xb.shape[0] < (4 if debiased else 2):
            continue
        sums += gram_hsic_terms(xb, yb, debiased)
    return sums[0] / np.sqrt(sums[1] * sums[2])


def expected(d: pathlib.Path):
    meta, layers = read_activations(d)
    out = {"reference": "tools/cka_reference.py (numpy FP64)", "numpy": np.__version__,
           "minibatch_rows": meta["minibatch_rows"], "layers": []}
    print(f"{'layer':<24} {'rows':>6} {'biased':>10} {'debiased':>10} {'mb_biased':>10} {'mb_debiased':>11}")
    for name, x, y in layers:
        rec = {"name": name, "rows": int(x.shape[0])}
        for key, deb in (("biased", False), ("debiased", True)):
            f, g = feature_cka(x, y, deb), gram_cka(x, y, deb)
            if abs(f - g) > 1e-8:
                sys.exit(f"layer {name}: feature form {f} and Gram form {g} disagree ({key}); the reference is broken")
            rec[key] = float(f)
            rec["gram_" + key] = float(g)
            rec["minibatch_" + key] = float(minibatch_cka(x, y, meta["minibatch_rows"], deb))
        out["layers"].append(rec)
        print(f"{name:<24} {x.shape[0]:>6} {rec['biased']:>10.6f} {rec['debiased']:>10.6f} "
              f"{rec['minibatch_biased']:>10.6f} {rec['minibatch_debiased']:>11.6f}")
    (d / "expected.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {d / 'expected.json'}")


def write_activations(d: pathlib.Path, layers, dtype: str, minibatch_rows: int, source: str):
    """layers: [(name, x [rows, p1], y [rows, p2])] -> activations.json + activations.bin."""
    d.mkdir(parents=True, exist_ok=True)
    np_dtype = {"float32": "<f4", "float64": "<f8"}[dtype]
    meta = {"format": FORMAT, "dtype": dtype, "byte_order": "little", "data": "activations.bin",
            "minibatch_rows": minibatch_rows, "source": source, "layers": []}
    off = 0
    with open(d / "activations.bin", "wb") as f:
        for name, x, y in layers:
            entry = {"name": name, "rows": int(x.shape[0]), "x_cols": int(x.shape[1]), "y_cols": int(y.shape[1])}
            for key, m in (("x_offset", x), ("y_offset", y)):
                b = np.ascontiguousarray(m, dtype=np_dtype).tobytes()
                entry[key] = off
                f.write(b)
                off += len(b)
            meta["layers"].append(entry)
    (d / "activations.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {d / 'activations.json'} and activations.bin ({off} bytes)")


def synth(d: pathlib.Path, rows: int, cols: int, n_layers: int, seed: int, minibatch_rows: int):
    """Teacher-like features with a few large-magnitude channels and a non-zero mean; the 'student' is a
    perturbed linear image, more perturbed in deeper layers."""
    rng = np.random.default_rng(seed)
    layers = []
    for i in range(n_layers):
        x = rng.standard_normal((rows, cols)) @ rng.standard_normal((cols, cols)) / np.sqrt(cols)
        x[:, :2] *= 20.0
        x += rng.standard_normal(cols)
        y = x @ (np.eye(cols) + 0.1 * rng.standard_normal((cols, cols))) + (0.2 + 0.3 * i) * rng.standard_normal((rows, cols))
        layers.append((f"synthetic.{i}", x.astype(np.float32), y.astype(np.float32)))
    write_activations(d, layers, "float32", minibatch_rows, f"cka_reference.py synth seed={seed}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("expected", help="compute DIR/expected.json from DIR/activations.{json,bin}")
    e.add_argument("dir", type=pathlib.Path)
    s = sub.add_parser("synth", help="write synthetic activations into DIR (then run `expected`)")
    s.add_argument("dir", type=pathlib.Path)
    s.add_argument("--rows", type=int, default=256)
    s.add_argument("--cols", type=int, default=48)
    s.add_argument("--layers", type=int, default=3)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--minibatch-rows", type=int, default=60)
    a = ap.parse_args()
    if a.cmd == "synth":
        synth(a.dir, a.rows, a.cols, a.layers, a.seed, a.minibatch_rows)
    else:
        expected(a.dir)


if __name__ == "__main__":
    main()
