#!/usr/bin/env bash
# bench_train without its device build. One device call builds it and sends it back compressed (in parts of at most
# 15 MiB: what $OUT returns); later calls carry it in (.gl/prebuilt) and run it at once while the sources it was built
# from are unchanged. A measured call then costs the machine's start and the run, not the 200-320 s build: the CKA
# ratio has to be read on several machines (docs/benchmarks.md, sessions 24-25), and a session has 1,800 s.
#   device: scripts/gpu_prebuilt.sh export      # builds bench_train (build-gpu), writes $OUT/bench_train.<z>.NN and
#                                               # $OUT/prebuilt.meta (source hash, LibTorch version, compressor)
#   here:   scripts/gpu_prebuilt.sh store DIR   # DIR: that call's files_at; checks the hash against this tree and
#                                               # fills .gl/prebuilt
#   device: scripts/gpu_prebuilt.sh path        # with carry [".gl/prebuilt"]: prints the path of a bench_train for
#                                               # this tree: the carried one when its meta matches, else a fresh build
# A measured call with the carried binary, e.g. issue 15's ratio, the null control and the timeline:
#   b=$(scripts/gpu_prebuilt.sh path) && for v in qad-null recipe; do $b --models 0.6b,1.7b --variants $v --iters 1 \
#     --warmup 3 --rounds 120 --turn-warmup 0 --no-torch --timeline 20 > $OUT/$v.txt; done
# The source hash covers CMakeLists.txt, cmake/, src/ and bench/ (what bench_train is built from). Env: BUILD_S
# (the build's limit, 330).
set -uo pipefail
cd "$(dirname "$0")/.."
pre=.gl/prebuilt
B=${B:-build-gpu}

source_hash() {
  { echo CMakeLists.txt; find cmake src bench -type f ! -name '*.swp' ! -name '*~'; } | LC_ALL=C sort |
    xargs sha256sum | sha256sum | cut -c1-64
}
torch_version() { python3 -c 'import torch; print(torch.__version__)' 2>/dev/null || echo none; }
meta() {  # compressor
  printf 'source %s\ntorch %s\ncompressor %s\n' "$(source_hash)" "$(torch_version)" "$1"
}
build() {
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a}
  cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release -DQAD_BUILD_TESTS=OFF -DQAD_BUILD_BENCH=ON \
    >/tmp/prebuilt_cmake.log 2>&1 || { tail -20 /tmp/prebuilt_cmake.log >&2; return 1; }
  timeout "${BUILD_S:-330}" ninja -C "$B" bench_train >/tmp/prebuilt_build.log 2>&1 ||
    { grep -E "error|FAILED" /tmp/prebuilt_build.log | head -20 >&2; tail -2 /tmp/prebuilt_build.log >&2; return 1; }
}

case "${1:-}" in
  export)
    out=${OUT:?export writes to \$OUT}
    build || exit 1
    if command -v zstd >/dev/null; then z=zst; zstd -q -19 -T0 -c "$B/bench_train" > /tmp/bench_train.z
    else z=gz; gzip -9 -c "$B/bench_train" > /tmp/bench_train.z; fi
    rm -f "$out"/bench_train."$z".*
    split -b 15M -d -a 2 /tmp/bench_train.z "$out/bench_train.$z."
    meta "$z" > "$out/prebuilt.meta"
    n=$(ls "$out"/bench_train."$z".* | wc -l)
    echo "bench_train: $(stat -c %s "$B/bench_train") bytes, $(stat -c %s /tmp/bench_train.z) compressed ($z) in $n part(s)"
    [ "$n" -le 6 ] || echo "warning: $n parts; \$OUT returns at most 8 files (64 MiB)" >&2
    ;;
  store)
    dir=${2:?usage: scripts/gpu_prebuilt.sh store DIR}
    [ -f "$dir/prebuilt.meta" ] || { echo "no prebuilt.meta in $dir" >&2; exit 2; }
    want=$(source_hash); got=$(awk '$1 == "source" {print $2}' "$dir/prebuilt.meta")
    [ "$want" = "$got" ] || { echo "the binary in $dir was built from other sources than this tree's" >&2; exit 1; }
    rm -rf "$pre" && mkdir -p "$pre" && cp "$dir/prebuilt.meta" "$dir"/bench_train.* "$pre"/
    echo "stored in $pre: $(ls "$pre" | tr '\n' ' ')(carry [\"$pre\"])"
    ;;
  path)
    if [ -f "$pre/prebuilt.meta" ]; then
      z=$(awk '$1 == "compressor" {print $2}' "$pre/prebuilt.meta")
      if [ "$(meta "$z")" = "$(cat "$pre/prebuilt.meta")" ]; then
        mkdir -p /tmp/prebuilt
        if [ "$z" = zst ]; then cat "$pre"/bench_train."$z".* | zstd -q -d -c > /tmp/prebuilt/bench_train
        else cat "$pre"/bench_train."$z".* | gzip -d -c > /tmp/prebuilt/bench_train; fi
        chmod +x /tmp/prebuilt/bench_train && echo /tmp/prebuilt/bench_train && exit 0
      fi
      echo "prebuilt: the carried bench_train does not match this tree or this LibTorch; building" >&2
    fi
    build && echo "$B/bench_train"
    ;;
  *)
    echo "usage: scripts/gpu_prebuilt.sh export | store DIR | path" >&2
    exit 2
    ;;
esac
