// CUDA kernels of the CKA passes (cka_kernels.h); the references are in cka_kernels.cc.
// centre_columns: one CTA per (layer, 8 column vectors): 32 row groups of 8 threads read 16-byte vectors of rows
// g, g + 32, ...; the column sums meet in shared memory (in a fixed order), then the same threads read the rows
// again (mostly from L2) and store them centred in FP32. pair_sums: a grid-stride pass over each layer's two
// matrices with FP64 accumulators; per-CTA partial sums go to a [L, CTAs, 3] buffer that one ATen sum reduces,
// so the result does not depend on scheduling (no atomics). centred_gram_sums and combine_kernels read the Gram
// matrices' upper block strips (GramStrips) in tiles of 128 x 128, a CTA each: the sums go to per-tile slots (FP64)
// that later kernels reduce in a fixed order (deterministic, no atomics); an entry right of the diagonal block
// counts for its transpose too (twice in the products, once in its column's row sum), and combine_kernels writes its
// mirrored value through a transposed tile in shared memory. append_column_means: the column sums in double, as
// centre_columns sums (a CTA per layer and 64 columns).
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/Exceptions.h>
#include <c10/cuda/CUDAGuard.h>
#include <cublas_v2.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "fused/cuda_util.cuh"
#include "loss/cka_kernels.h"
#include "nvfp4/dtype_dispatch.h"

namespace qad::loss::kernels {
namespace {

using fused::device::check_launch;
using fused::device::kPer;
using fused::device::load_vec;
using fused::device::sm_count;
using nvfp4::device::Io;

constexpr int kLanes = 8;    // 16-byte column vectors per CTA
constexpr int kGroups = 32;  // row groups per CTA
constexpr int kCentreThreads = kLanes * kGroups;

// Stores P centred values (P = 4 or 8) at element `at` of an FP32 or BF16 row: 16 or 32 bytes, aligned.
template <int P>
__device__ __forceinline__ void store_centred(float* out, int64_t at, const float (&v)[P]) {
  auto* o = reinterpret_cast<float4*>(out + at);
#pragma unroll
  for (int j = 0; j < P; j += 4) o[j / 4] = make_float4(v[j], v[j + 1], v[j + 2], v[j + 3]);
}
template <int P>
__device__ __forceinline__ void store_centred(__nv_bfloat16* out, int64_t at, const float (&v)[P]) {
#pragma unroll
  for (int j = 0; j < P; j += 2) *reinterpret_cast<__nv_bfloat162*>(out + at + j) = __floats2bfloat162_rn(v[j], v[j + 1]);
}

// Vector path: p % kPer<T> == 0, 16-byte aligned. grid (ceil(p / (kLanes * kPer)), L). O: float or __nv_bfloat16.
template <typename T, typename O>
__global__ void __launch_bounds__(kCentreThreads)
    centre_columns_kernel(const typename Io<T>::Raw* __restrict__ x, O* __restrict__ centred,
                          float* __restrict__ mean, int64_t n, int64_t p) {
  constexpr int P = kPer<T>;
  __shared__ float partial[kGroups][kLanes * P];
  __shared__ float col_mean[kLanes * P];
  const int lane = threadIdx.x % kLanes, group = threadIdx.x / kLanes;
  const int64_t layer = blockIdx.y, vcol = static_cast<int64_t>(blockIdx.x) * kLanes + lane;
  const bool active = vcol * P < p;
  const auto* xl = x + layer * n * p;
  float acc[P];
#pragma unroll
  for (int j = 0; j < P; ++j) acc[j] = 0.0f;
  if (active) {
    for (int64_t i = group; i < n; i += kGroups) {
      float v[P];
      load_vec<T>(xl + i * p, vcol, v);
#pragma unroll
      for (int j = 0; j < P; ++j) acc[j] += v[j];
    }
  }
#pragma unroll
  for (int j = 0; j < P; ++j) partial[group][lane * P + j] = acc[j];
  __syncthreads();
  if (threadIdx.x < kLanes * P) {
    float s = 0.0f;
    for (int g = 0; g < kGroups; ++g) s += partial[g][threadIdx.x];
    const float m = s / static_cast<float>(n);
    col_mean[threadIdx.x] = m;
    const int64_t col = static_cast<int64_t>(blockIdx.x) * kLanes * P + threadIdx.x;
    if (col < p) mean[layer * p + col] = m;
  }
  __syncthreads();
  if (!active) return;
  float m[P];
#pragma unroll
  for (int j = 0; j < P; ++j) m[j] = col_mean[lane * P + j];
  O* cl = centred + layer * n * p;
  for (int64_t i = group; i < n; i += kGroups) {
    float v[P];
    load_vec<T>(xl + i * p, vcol, v);
#pragma unroll
    for (int j = 0; j < P; ++j) v[j] -= m[j];
    store_centred<P>(cl, i * p + vcol * P, v);
  }
}

__device__ __forceinline__ void store_one(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_one(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// Any width or alignment: one thread per column (slow; hidden sizes are multiples of 8, so training never
// takes it). grid (ceil(p / 256), L).
template <typename T, typename O>
__global__ void centre_columns_scalar_kernel(const typename Io<T>::Raw* __restrict__ x, O* __restrict__ centred,
                                             float* __restrict__ mean, int64_t n, int64_t p) {
  const int64_t layer = blockIdx.y, col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= p) return;
  const auto* xl = x + layer * n * p;
  float s = 0.0f;
  for (int64_t i = 0; i < n; ++i) s += Io<T>::to_float(xl[i * p + col]);
  const float m = s / static_cast<float>(n);
  mean[layer * p + col] = m;
  for (int64_t i = 0; i < n; ++i) store_one(centred + (layer * n + i) * p + col, Io<T>::to_float(xl[i * p + col]) - m);
}

constexpr int kSumThreads = 256;

__device__ __forceinline__ void add_products(float a, float b, double& ab, double& aa, double& bb) {
  // __fmul_rn: the product is rounded to float as the tensor ops round it (no contraction into the FP64 add).
  ab += static_cast<double>(__fmul_rn(a, b));
  aa += static_cast<double>(__fmul_rn(a, a));
  bb += static_cast<double>(__fmul_rn(b, b));
}

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// grid (ctas, L); partial [L, ctas, 3].
__global__ void __launch_bounds__(kSumThreads)
    pair_sums_kernel(const float* __restrict__ a, const float* __restrict__ b, int64_t m, bool vec,
                     double* __restrict__ partial) {
  const int64_t layer = blockIdx.y;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const float* al = a + layer * m;
  const float* bl = b + layer * m;
  double ab = 0, aa = 0, bb = 0;
  if (vec) {
    const auto* a4 = reinterpret_cast<const float4*>(al);
    const auto* b4 = reinterpret_cast<const float4*>(bl);
    for (int64_t v = first; v < m / 4; v += stride) {
      const float4 x = __ldg(a4 + v), y = __ldg(b4 + v);
      add_products(x.x, y.x, ab, aa, bb);
      add_products(x.y, y.y, ab, aa, bb);
      add_products(x.z, y.z, ab, aa, bb);
      add_products(x.w, y.w, ab, aa, bb);
    }
  } else {
    for (int64_t i = first; i < m; i += stride) add_products(__ldg(al + i), __ldg(bl + i), ab, aa, bb);
  }
  __shared__ double scratch[3][kSumThreads / 32];
  ab = warp_sum(ab), aa = warp_sum(aa), bb = warp_sum(bb);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) scratch[0][warp] = ab, scratch[1][warp] = aa, scratch[2][warp] = bb;
  __syncthreads();
  if (threadIdx.x < 3) {
    double s = 0;
    for (int w = 0; w < kSumThreads / 32; ++w) s += scratch[threadIdx.x][w];
    partial[(layer * gridDim.x + blockIdx.x) * 3 + threadIdx.x] = s;
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// The strip passes (GramStrips): a CTA per tile of kTileRows rows x kTileCols columns of one strip of one layer.
// Warp w takes the tile's rows w, w + 8, ...; lane q of a warp its 4 columns (one 16-byte vector in the vector
// path, columns lane + 32 q in the scalar one). Every sum goes to a per-tile slot and is reduced in a fixed order
// by a later kernel: deterministic, no atomics.
constexpr int kTileRows = 128;
constexpr int kTileCols = 128;
constexpr int kTileWarps = 8;
constexpr int kTileThreads = kTileWarps * 32;
// Rows a warp loads before it uses the first: as many as the registers of two CTAs per SM hold without spilling.
constexpr int kSumRowsInFlight = 4;
constexpr int kCombineRowsInFlight = 3;

// a[i] through a fully unrolled select: indexing a kernel parameter's array with a run-time index makes the
// compiler copy the whole parameter to local memory first.
template <typename T, int N>
__device__ __forceinline__ T pick(const T (&a)[N], int i) {
  T v = a[0];
#pragma unroll
  for (int s = 1; s < N; ++s) v = s == i ? a[s] : v;
  return v;
}

// One side's strips: base pointers, row strides and layer strides (elements).
struct StripSet {
  const float* p[kMaxGramStrips];
  int64_t ld[kMaxGramStrips];
  int64_t layer_stride[kMaxGramStrips];
  __device__ __forceinline__ const float* layer(int b, int64_t l) const {
    return pick(p, b) + l * pick(layer_stride, b);
  }
  __device__ __forceinline__ int64_t row_stride(int b) const { return pick(ld, b); }
};

// A layer's tiles in order: strip by strip, row tile by row tile, column tile by column tile.
struct StripTiles {
  int nb = 0;
  int64_t n = 0, block = 0;
  int row_tiles = 0;                   // per strip: ceil(block / kTileRows)
  int col_tiles[kMaxGramStrips] = {};  // strip b: ceil((n - b * block) / kTileCols)
  int first[kMaxGramStrips + 1] = {};  // strip b's first tile; first[nb] = tiles per layer
  __host__ __device__ int max_col_tiles() const { return col_tiles[0]; }
  __host__ __device__ int all_row_tiles() const { return nb * row_tiles; }
};

struct Tile {
  int b;              // strip
  int64_t r0, c0;     // first row and column of the tile within the strip
  int64_t width;      // the strip's width, n - b * block
  int ct, g;          // column tile within the strip; row tile over all strips (b * row_tiles + row tile)
};

__device__ __forceinline__ Tile tile_of(const StripTiles& t, int index) {
  int b = 0;
#pragma unroll
  for (int s = 1; s < kMaxGramStrips; ++s) b = s < t.nb && index >= t.first[s] ? s : b;  // first[] ascends
  const int local = index - pick(t.first, b), cols = pick(t.col_tiles, b);
  const int rt = local / cols, ct = local % cols;
  return {b, static_cast<int64_t>(rt) * kTileRows, static_cast<int64_t>(ct) * kTileCols, t.n - b * t.block, ct,
          b * t.row_tiles + rt};
}

// Column of the strip that lane `lane`'s value q stands for, and its slot in the tile.
__device__ __forceinline__ int tile_col(bool vec, int lane, int q) { return vec ? 4 * lane + q : lane + 32 * q; }

// The lane's 4 values of one strip row (0 past the strip's width). vec: width % 4 == 0, 16-byte aligned rows.
__device__ __forceinline__ void load_four(const float* __restrict__ row, bool vec, int64_t c0, int lane, int64_t width,
                                          float (&v)[4]) {
  if (vec) {
    const int64_t c = c0 + 4 * lane;
    if (c < width) {
      const float4 x = __ldg(reinterpret_cast<const float4*>(row + c));
      v[0] = x.x, v[1] = x.y, v[2] = x.z, v[3] = x.w;
    } else {
      v[0] = v[1] = v[2] = v[3] = 0.0f;
    }
    return;
  }
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const int64_t c = c0 + lane + 32 * q;
    v[q] = c < width ? __ldg(row + c) : 0.0f;
  }
}

// Rows first, first + kTileWarps, ... (R of them, those before r_end) of two strips, each lane's four values of
// each: all issued before any is used, enough reads in flight to keep up with the memory.
template <int R>
__device__ __forceinline__ void load_rows_in_flight(const float* __restrict__ a, int64_t lda,
                                                    const float* __restrict__ b, int64_t ldb, int64_t first,
                                                    int64_t r_end, bool vec, int64_t c0, int lane, int64_t width,
                                                    float (&ra)[R][4], float (&rb)[R][4]) {
#pragma unroll
  for (int u = 0; u < R; ++u) {
    const int64_t r = first + u * kTileWarps;
    if (r < r_end) {
      load_four(a + r * lda, vec, c0, lane, width, ra[u]);
      load_four(b + r * ldb, vec, c0, lane, width, rb[u]);
    }
  }
}

// grid (tiles per layer, L). Per tile: partial [L, tiles, 3] (<K,L>, <K,K>, <L,L> over the tile, entries right of
// the diagonal block counted twice: they stand for their transposes too); for each of its rows the sums over its
// columns, row_part [L, 2, max column tiles, n] (K's, then L's); for each of its columns right of the diagonal block
// the sums over its rows, col_part [L, 2, all row tiles, n]: the row sums of the rows those columns are.
__global__ void __launch_bounds__(kTileThreads)
    strip_sums_kernel(StripSet ks, StripSet ls, StripTiles t, bool vec, double* __restrict__ partial,
                      double* __restrict__ row_part, double* __restrict__ col_part) {
  __shared__ double col_sums[2][kTileWarps][kTileCols];
  __shared__ double scratch[3][kTileWarps];
  const int64_t layer = blockIdx.y;
  const Tile tile = tile_of(t, static_cast<int>(blockIdx.x));
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t n = t.n, block = t.block, width = tile.width, row0 = tile.b * block;
  const int CT = t.max_col_tiles(), RT = t.all_row_tiles();
  const float* kb = ks.layer(tile.b, layer);
  const float* lb = ls.layer(tile.b, layer);
  const int64_t kld = ks.row_stride(tile.b), lld = ls.row_stride(tile.b);
  double kl = 0, kk = 0, ll = 0;
  double ck[4] = {0, 0, 0, 0}, cl[4] = {0, 0, 0, 0};
  const int64_t r_end = tile.r0 + kTileRows < block ? tile.r0 + kTileRows : block;
  for (int64_t first = tile.r0 + warp; first < r_end; first += kSumRowsInFlight * kTileWarps) {
    float a[kSumRowsInFlight][4], c[kSumRowsInFlight][4];
    load_rows_in_flight(kb, kld, lb, lld, first, r_end, vec, tile.c0, lane, width, a, c);
#pragma unroll
    for (int u = 0; u < kSumRowsInFlight; ++u) {
      const int64_t r = first + u * kTileWarps;
      if (r >= r_end) break;  // the same for the whole warp
      double rk = 0, rl = 0;
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const double x = a[u][q], y = c[u][q];  // float * float is exact in double, and so is twice it
        const double w = tile.c0 + tile_col(vec, lane, q) < block ? 1.0 : 2.0;
        kl += w * (x * y), kk += w * (x * x), ll += w * (y * y);
        rk += x, rl += y, ck[q] += x, cl[q] += y;
      }
      rk = warp_sum(rk), rl = warp_sum(rl);
      if (lane == 0) {
        row_part[((layer * 2) * CT + tile.ct) * n + row0 + r] = rk;
        row_part[((layer * 2 + 1) * CT + tile.ct) * n + row0 + r] = rl;
      }
    }
  }
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    col_sums[0][warp][tile_col(vec, lane, q)] = ck[q];
    col_sums[1][warp][tile_col(vec, lane, q)] = cl[q];
  }
  kl = warp_sum(kl), kk = warp_sum(kk), ll = warp_sum(ll);
  if (lane == 0) scratch[0][warp] = kl, scratch[1][warp] = kk, scratch[2][warp] = ll;
  __syncthreads();
  {
    const int side = threadIdx.x / kTileCols, slot = threadIdx.x % kTileCols;  // 256 threads: 2 sides x 128 columns
    const int64_t col = tile.c0 + slot;
    if (col >= block && col < width) {
      double s = 0;
      for (int w = 0; w < kTileWarps; ++w) s += col_sums[side][w][slot];
      col_part[((layer * 2 + side) * RT + tile.g) * n + row0 + col] = s;
    }
  }
  if (threadIdx.x < 3) {
    double s = 0;
    for (int w = 0; w < kTileWarps; ++w) s += scratch[threadIdx.x][w];
    partial[(layer * gridDim.x + blockIdx.x) * 3 + threadIdx.x] = s;
  }
}

// Sum of row i's parts in a fixed order: its strip's column tiles, then the earlier strips' row tiles (the part of
// row i left of its diagonal block, read as a column of those strips). row_part, col_part: one matrix's parts,
// [max column tiles, n] and [all row tiles, n].
__device__ __forceinline__ double row_total(const double* __restrict__ row_part, const double* __restrict__ col_part,
                                            const StripTiles& t, int64_t i) {
  const int B = static_cast<int>(i / t.block);
  double s = 0;
  for (int ct = 0; ct < pick(t.col_tiles, B); ++ct) s += row_part[ct * t.n + i];
  for (int g = 0; g < B * t.row_tiles; ++g) s += col_part[g * t.n + i];
  return s;
}

// grid (ceil(n / 256), L): row_sums [L, 2, n] from strip_sums_kernel's parts.
__global__ void strip_row_sums_kernel(const double* __restrict__ row_part, const double* __restrict__ col_part,
                                      StripTiles t, double* __restrict__ row_sums) {
  const int64_t layer = blockIdx.y, i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= t.n) return;
  const int64_t CT = t.max_col_tiles(), RT = t.all_row_tiles();
  for (int side = 0; side < 2; ++side) {
    row_sums[(layer * 2 + side) * t.n + i] =
        row_total(row_part + (layer * 2 + side) * CT * t.n, col_part + (layer * 2 + side) * RT * t.n, t, i);
  }
}

constexpr int kFinishThreads = 256;

// grid (L): the centred sums from the tiles' partials and the row sums, and the means, all in a fixed order.
__global__ void __launch_bounds__(kFinishThreads)
    gram_finish_kernel(const double* __restrict__ row_sums, const double* __restrict__ partial, int64_t n, int ctas,
                       double* __restrict__ sums, float* __restrict__ k_row_means, float* __restrict__ l_row_means,
                       float* __restrict__ k_mean, float* __restrict__ l_mean, double* __restrict__ cka,
                       float* __restrict__ cka_float) {
  const int64_t layer = blockIdx.x;
  const double dn = static_cast<double>(n);
  const double* rk = row_sums + layer * 2 * n;
  const double* rl = rk + n;
  // <rk,rl>, <rk,rk>, <rl,rl>, sum rk, sum rl, then the raw <K,L>, <K,K>, <L,L> from the partials
  double v[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t i = threadIdx.x; i < n; i += kFinishThreads) {
    const double a = rk[i], b = rl[i];
    v[0] += a * b, v[1] += a * a, v[2] += b * b, v[3] += a, v[4] += b;
    k_row_means[layer * n + i] = static_cast<float>(a / dn);
    l_row_means[layer * n + i] = static_cast<float>(b / dn);
  }
  for (int c = threadIdx.x; c < ctas; c += kFinishThreads) {
    for (int j = 0; j < 3; ++j) v[5 + j] += partial[(layer * ctas + c) * 3 + j];
  }
  __shared__ double scratch[8][kFinishThreads / 32];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    v[j] = warp_sum(v[j]);
    if (lane == 0) scratch[j][warp] = v[j];
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double t[8];
    for (int j = 0; j < 8; ++j) {
      t[j] = 0;
      for (int w = 0; w < kFinishThreads / 32; ++w) t[j] += scratch[j][w];
    }
    const double* raw = t + 5;  // <K,L>, <K,K>, <L,L>
    const double n2 = dn * dn;
    double c[3];
    c[0] = raw[0] - 2.0 / dn * t[0] + t[3] * t[4] / n2;
    c[1] = raw[1] - 2.0 / dn * t[1] + t[3] * t[3] / n2;
    c[2] = raw[2] - 2.0 / dn * t[2] + t[4] * t[4] / n2;
    for (int j = 0; j < 3; ++j) sums[layer * 3 + j] = c[j];
    k_mean[layer] = static_cast<float>(t[3] / n2);
    l_mean[layer] = static_cast<float>(t[4] / n2);
    if (cka != nullptr) {
      // sums[0] / sqrt(sums[1] * sums[2]), each operation rounded once (what the tensor ops give).
      const double value = __ddiv_rn(c[0], __dsqrt_rn(__dmul_rn(c[1], c[2])));
      cka[layer] = value;
      cka_float[layer] = __double2float_rn(value);
    }
  }
}

// One thread per layer: the backward's factors (BackwardFactors in cka_kernels.h), each double operation rounded
// once in the tensor ops' order.
__global__ void backward_factors_kernel(const double* __restrict__ cka, const double* __restrict__ f_own,
                                        const double* __restrict__ fxx, const double* __restrict__ fyy,
                                        const void* __restrict__ go, bool go_double, int64_t L, int64_t s_cka,
                                        int64_t s_own, int64_t s_xx, int64_t s_yy, int64_t s_go,
                                        double go_scale, float* __restrict__ beta, float* __restrict__ alpha) {
  const int64_t l = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (l >= L) return;
  const double g = __dmul_rn(go_double ? static_cast<const double*>(go)[l * s_go]
                                       : static_cast<double>(static_cast<const float*>(go)[l * s_go]),
                             go_scale);
  beta[l] = __double2float_rn(__dmul_rn(__ddiv_rn(__dmul_rn(-2.0, cka[l * s_cka]), f_own[l * s_own]), g));
  const double root = __dsqrt_rn(__dmul_rn(fxx[l * s_xx], fyy[l * s_yy]));
  alpha[l] = __double2float_rn(__dmul_rn(__ddiv_rn(2.0, root), g));
}

// One thread: the CKA-QAD term (CkaTerm in cka_kernels.h), the sum in layer order.
template <typename Loss>
__global__ void cka_term_kernel(const double* __restrict__ cka, int64_t L, int64_t stride, double weight,
                                double* __restrict__ term, Loss* __restrict__ loss) {
  double sum = 0;
  for (int64_t l = 0; l < L; ++l) sum = __dadd_rn(sum, __dsub_rn(1.0, cka[l * stride]));
  const double t = __ddiv_rn(sum, static_cast<double>(L));
  *term = t;
  *loss = static_cast<Loss>(__dmul_rn(t, weight));
}

// The centred kernel's element and its share of the combination, each operation rounded to float (no contraction).
__device__ __forceinline__ float centred_element(float k, float row_i, float row_j, float mean) {
  return __fadd_rn(__fsub_rn(__fsub_rn(k, row_i), row_j), mean);
}
__device__ __forceinline__ float combine_one(float own, float other, float beta, float alpha) {
  return __fadd_rn(__fmul_rn(own, beta), __fmul_rn(other, alpha));
}

struct KernelSide {
  StripSet gram;
  const float* row_means;  // [L, n]
  const float* mean;       // [L]
};

// grid (tiles per layer, L). Each entry (i, j) of a tile gives out[i, j] and, right of the diagonal block, the
// mirrored out[j, i] (K[j, i] = K[i, j], centred in row j's order), staged transposed in shared memory and stored
// row by row. vec: 16-byte aligned strips, n, block and cols multiples of 4, 8-byte aligned out; pairs: cols and
// block even (the mirrored rows stored two BF16 at a time). correct (cols > n): the rounded values' sums in double,
// per row of the tile into row_part [L, max column tiles, n] and per mirrored row into col_part [L, all row tiles,
// n], for correction_column_kernel. At most 128 registers a thread (two CTAs per SM; ptxas wants 152 otherwise and
// then fits one CTA per SM, too few loads in flight: 0.135 ms at the 0.6B shape on an H100, where the plain full-matrix
// combination took 0.094).
__global__ void __launch_bounds__(kTileThreads, 2)
    strip_combine_kernel(KernelSide own, KernelSide other, const float* __restrict__ beta,
                         const float* __restrict__ alpha, StripTiles t, bool vec, bool pairs,
                         __nv_bfloat16* __restrict__ out, int64_t cols, bool correct, double* __restrict__ row_part,
                         double* __restrict__ col_part) {
  __shared__ __nv_bfloat16 mirror[kTileCols][kTileRows + 2];  // 65 words a row: column-wise stores spread over banks
  __shared__ double col_sums[kTileWarps][kTileCols];
  const int64_t layer = blockIdx.y;
  const Tile tile = tile_of(t, static_cast<int>(blockIdx.x));
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t n = t.n, block = t.block, width = tile.width, row0 = tile.b * block;
  const float b = beta[layer], a = alpha[layer];
  const float om = own.mean[layer], tm = other.mean[layer];
  const float* orow = own.row_means + layer * n;
  const float* trow = other.row_means + layer * n;
  const float* ob = own.gram.layer(tile.b, layer);
  const float* tb = other.gram.layer(tile.b, layer);
  const int64_t own_ld = own.gram.row_stride(tile.b), tld = other.gram.row_stride(tile.b);
  // The lane's columns: their row means and whether they lie right of the diagonal block (mirrored).
  float oj[4], tj[4];
  bool in[4], off[4];
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const int64_t col = tile.c0 + tile_col(vec, lane, q);
    in[q] = col < width;
    off[q] = in[q] && col >= block;
    oj[q] = in[q] ? __ldg(orow + row0 + col) : 0.0f;
    tj[q] = in[q] ? __ldg(trow + row0 + col) : 0.0f;
  }
  const bool mirrored = tile.c0 + kTileCols > block && tile.c0 < width;  // the same for the whole CTA
  double cs[4] = {0, 0, 0, 0};
  const int64_t r_end = tile.r0 + kTileRows < block ? tile.r0 + kTileRows : block;
  constexpr int R = kCombineRowsInFlight;
  for (int64_t first = tile.r0 + warp; first < r_end; first += R * kTileWarps) {
    float xs[R][4], ys[R][4], ois[R], tis[R];
    load_rows_in_flight(ob, own_ld, tb, tld, first, r_end, vec, tile.c0, lane, width, xs, ys);
#pragma unroll
    for (int u = 0; u < R; ++u) {
      const int64_t r = first + u * kTileWarps;
      if (r < r_end) ois[u] = __ldg(orow + row0 + r), tis[u] = __ldg(trow + row0 + r);
    }
#pragma unroll
    for (int u = 0; u < R; ++u) {
      const int64_t r = first + u * kTileWarps;
      if (r >= r_end) break;  // the same for the whole warp
      const int64_t i = row0 + r;
      const float(&x)[4] = xs[u];
      const float(&y)[4] = ys[u];
      const float oi = ois[u], ti = tis[u];
      __nv_bfloat16 d[4];
      double rs = 0;
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        d[q] = __float2bfloat16_rn(combine_one(centred_element(x[q], oi, oj[q], om),
                                               centred_element(y[q], ti, tj[q], tm), b, a));
        if (in[q]) rs += static_cast<double>(__bfloat162float(d[q]));
        if (mirrored && off[q]) {
          const __nv_bfloat16 m = __float2bfloat16_rn(combine_one(centred_element(x[q], oj[q], oi, om),
                                                                  centred_element(y[q], tj[q], ti, tm), b, a));
          mirror[tile_col(vec, lane, q)][r - tile.r0] = m;
          cs[q] += static_cast<double>(__bfloat162float(m));
        }
      }
      __nv_bfloat16* dst = out + (layer * n + i) * cols + row0 + tile.c0;
      if (vec) {
        if (in[0]) {
          auto* d2 = reinterpret_cast<__nv_bfloat162*>(dst + 4 * lane);
          d2[0] = __halves2bfloat162(d[0], d[1]);
          d2[1] = __halves2bfloat162(d[2], d[3]);
        }
      } else {
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          if (in[q]) dst[lane + 32 * q] = d[q];
        }
      }
      if (correct) {
        rs = warp_sum(rs);
        if (lane == 0) row_part[(layer * t.max_col_tiles() + tile.ct) * n + i] = rs;
      }
    }
  }
  if (!mirrored) return;
  if (correct) {
#pragma unroll
    for (int q = 0; q < 4; ++q) col_sums[warp][tile_col(vec, lane, q)] = cs[q];
  }
  __syncthreads();
  // The mirrored rows j = row0 + col: the tile's rows as their columns row0 + r0 ...
  const int64_t rows_here = r_end - tile.r0;
  for (int slot = warp; slot < kTileCols; slot += kTileWarps) {
    const int64_t col = tile.c0 + slot;
    if (col < block || col >= width) continue;
    __nv_bfloat16* dst = out + (layer * n + row0 + col) * cols + row0 + tile.r0;
    for (int64_t rr = 2 * lane; rr < rows_here; rr += 64) {
      if (pairs && rr + 1 < rows_here) {
        *reinterpret_cast<__nv_bfloat162*>(dst + rr) = __halves2bfloat162(mirror[slot][rr], mirror[slot][rr + 1]);
      } else {
        dst[rr] = mirror[slot][rr];
        if (rr + 1 < rows_here) dst[rr + 1] = mirror[slot][rr + 1];
      }
    }
  }
  if (correct && threadIdx.x < kTileCols) {
    const int64_t col = tile.c0 + threadIdx.x;
    if (col >= block && col < width) {
      double s = 0;
      for (int w = 0; w < kTileWarps; ++w) s += col_sums[w][threadIdx.x];
      col_part[(layer * t.all_row_tiles() + tile.g) * n + row0 + col] = s;
    }
  }
}

// grid (ceil(n / 256), L): the correction column, out[i, n] = bf16(-(row i's sum)), and zeros after it.
__global__ void correction_column_kernel(const double* __restrict__ row_part, const double* __restrict__ col_part,
                                         StripTiles t, __nv_bfloat16* __restrict__ out, int64_t cols) {
  const int64_t layer = blockIdx.y, i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= t.n) return;
  const double total = row_total(row_part + layer * t.max_col_tiles() * t.n,
                                 col_part + layer * t.all_row_tiles() * t.n, t, i);
  __nv_bfloat16* r = out + (layer * t.n + i) * cols;
  r[t.n] = __float2bfloat16_rn(static_cast<float>(-total));
  for (int64_t j = t.n + 1; j < cols; ++j) r[j] = __float2bfloat16_rn(0.0f);
}

constexpr int kMeanLanes = 8;    // 16-byte column vectors (8 BF16 columns each) per CTA
constexpr int kMeanGroups = 32;  // row groups per CTA

// append_column_means, vector path (p % 8 == 0, 16-byte aligned rows): grid (ceil(p / 64), L); 32 row groups of 8
// threads sum 16-byte vectors in double; the groups meet in shared memory. Scalar path: one thread per column.
__global__ void __launch_bounds__(kMeanLanes * kMeanGroups)
    append_column_means_kernel(__nv_bfloat16* __restrict__ rows, int64_t layer_stride, int64_t n, int64_t extra,
                               int64_t p) {
  __shared__ double partial[kMeanGroups][kMeanLanes * 8];
  const int lane = threadIdx.x % kMeanLanes, group = threadIdx.x / kMeanLanes;
  const int64_t vcol = static_cast<int64_t>(blockIdx.x) * kMeanLanes + lane;
  __nv_bfloat16* rl = rows + blockIdx.y * layer_stride;
  double acc[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) acc[j] = 0.0;
  if (vcol * 8 < p) {
    for (int64_t i = group; i < n; i += kMeanGroups) {
      const uint4 bits = __ldg(reinterpret_cast<const uint4*>(rl + i * p) + vcol);
      const auto* e = reinterpret_cast<const __nv_bfloat16*>(&bits);
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[j] += static_cast<double>(__bfloat162float(e[j]));
    }
  }
#pragma unroll
  for (int j = 0; j < 8; ++j) partial[group][lane * 8 + j] = acc[j];
  __syncthreads();
  for (int c = threadIdx.x; c < kMeanLanes * 8; c += blockDim.x) {
    const int64_t col = static_cast<int64_t>(blockIdx.x) * kMeanLanes * 8 + c;
    if (col >= p) continue;
    double s = 0.0;
    for (int g = 0; g < kMeanGroups; ++g) s += partial[g][c];
    rl[n * p + col] = __float2bfloat16_rn(static_cast<float>(s / static_cast<double>(n)));
    for (int64_t r = 1; r < extra; ++r) rl[(n + r) * p + col] = __float2bfloat16_rn(0.0f);
  }
}

__global__ void append_column_means_scalar_kernel(__nv_bfloat16* __restrict__ rows, int64_t layer_stride, int64_t n,
                                                  int64_t extra, int64_t p) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= p) return;
  __nv_bfloat16* rl = rows + blockIdx.y * layer_stride;
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(__bfloat162float(rl[i * p + col]));
  rl[n * p + col] = __float2bfloat16_rn(static_cast<float>(s / static_cast<double>(n)));
  for (int64_t r = 1; r < extra; ++r) rl[(n + r) * p + col] = __float2bfloat16_rn(0.0f);
}

}  // namespace

void centre_columns_cuda(CentreColumns& a) {
  const auto& x = a.x;
  const int64_t L = x.size(0), n = x.size(1), p = x.size(2);
  if (L == 0 || p == 0) return;
  c10::cuda::CUDAGuard guard(x.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  nvfp4::dispatch_float_types(x.scalar_type(), "loss::centre_columns_cuda", [&](auto tag) {
    using T = decltype(tag);
    const auto* xs = reinterpret_cast<const typename Io<T>::Raw*>(x.data_ptr<T>());
    float* ms = a.mean.data_ptr<float>();
    auto launch = [&](auto* cs) {
      // A BF16 output vector of 8 elements is 16 bytes, an FP32 one of 4 or 8 elements 16 or 32 bytes.
      if (p % kPer<T> == 0 && aligned16(xs) && aligned16(cs)) {
        const dim3 grid(static_cast<unsigned>((p / kPer<T> + kLanes - 1) / kLanes), static_cast<unsigned>(L));
        centre_columns_kernel<T><<<grid, kCentreThreads, 0, stream>>>(xs, cs, ms, n, p);
      } else {
        const dim3 grid(static_cast<unsigned>((p + 255) / 256), static_cast<unsigned>(L));
        centre_columns_scalar_kernel<T><<<grid, 256, 0, stream>>>(xs, cs, ms, n, p);
      }
    };
    if (a.centred.scalar_type() == torch::kBFloat16) {
      launch(reinterpret_cast<__nv_bfloat16*>(a.centred.data_ptr<at::BFloat16>()));
    } else {
      launch(a.centred.data_ptr<float>());
    }
  });
  check_launch();
}

void pair_sums_cuda(PairSums& s) {
  const int64_t L = s.a.size(0), m = s.a.size(1) * s.a.size(2);
  if (L == 0) return;
  if (m == 0) {
    s.out.zero_();
    return;
  }
  c10::cuda::CUDAGuard guard(s.a.device());
  const float* as = s.a.data_ptr<float>();
  const float* bs = s.b.data_ptr<float>();
  const bool vec = m % 4 == 0 && aligned16(as) && aligned16(bs);
  // About four CTAs per SM over all layers, and no more than the work needs.
  const int64_t work = ((vec ? m / 4 : m) + kSumThreads - 1) / kSumThreads;
  const int64_t ctas = std::max<int64_t>(1, std::min<int64_t>(work, (4 * sm_count() + L - 1) / L));
  auto partial = torch::empty({L, ctas, 3}, s.out.options());
  pair_sums_kernel<<<dim3(static_cast<unsigned>(ctas), static_cast<unsigned>(L)), kSumThreads, 0,
                     at::cuda::getCurrentCUDAStream()>>>(as, bs, m, vec, partial.data_ptr<double>());
  check_launch();
  s.out.copy_(partial.sum(1));
}

namespace {

// The tile order of a strip layout, and the strips' base pointers (vec: every strip 16-byte aligned).
StripTiles strip_tiles(const GramStrips& g) {
  StripTiles t;
  t.nb = static_cast<int>(g.strips.size());
  t.n = g.n();
  t.block = g.block();
  t.row_tiles = static_cast<int>((t.block + kTileRows - 1) / kTileRows);
  for (int b = 0; b < t.nb; ++b) {
    t.col_tiles[b] = static_cast<int>((t.n - b * t.block + kTileCols - 1) / kTileCols);
    t.first[b + 1] = t.first[b] + t.row_tiles * t.col_tiles[b];
  }
  return t;
}

StripSet strip_set(const GramStrips& g, bool& aligned) {
  StripSet s{};
  for (size_t b = 0; b < g.strips.size(); ++b) {
    const auto& t = g.strips[b];
    s.p[b] = t.data_ptr<float>();
    s.ld[b] = t.stride(1);
    s.layer_stride[b] = t.stride(0);
    aligned = aligned && aligned16(s.p[b]) && s.ld[b] % 4 == 0 && s.layer_stride[b] % 4 == 0;
  }
  return s;
}

}  // namespace

bool gram_blocks_cuda_supports(const torch::Tensor& x, const torch::Tensor& y, int64_t block) {
  auto rows_ok = [](const torch::Tensor& t) {
    return t.is_cuda() && t.scalar_type() == torch::kBFloat16 && t.dim() == 3 && t.stride(2) == 1 &&
           t.stride(1) == t.size(2) && t.size(2) % 8 == 0 && t.stride(0) % 8 == 0 && aligned16(t.data_ptr());
  };
  return rows_ok(x) && rows_ok(y) && x.device() == y.device() && x.size(0) == y.size(0) && x.size(1) == y.size(1) &&
         block >= 8 && block % 8 == 0 && x.size(1) % block == 0;
}

void gram_blocks_cuda(const torch::Tensor& x, const torch::Tensor& y, int64_t block, torch::Tensor& k,
                      torch::Tensor& l) {
  TORCH_CHECK(gram_blocks_cuda_supports(x, y, block) && k.is_contiguous() && l.is_contiguous() &&
                  k.scalar_type() == torch::kFloat32 && l.scalar_type() == torch::kFloat32,
              "gram_blocks_cuda: unsupported rows or outputs");
  const int64_t L = x.size(0), n = x.size(1), nb = n / block;
  c10::cuda::CUDAGuard guard(x.device());
  // Row-major C = A B^T of two blocks of rows is, to column-major cuBLAS, C^T = op_T(B rows) op_N(A rows) with
  // ld = the feature width: so the "A" pointers are the column blocks' rows and the "B" pointers the row blocks'.
  struct Side {
    const torch::Tensor* rows;
    torch::Tensor* gram;
  };
  std::vector<std::vector<Side>> calls;  // sides sharing a feature width go into one call
  if (x.size(2) == y.size(2)) {
    calls.push_back({{&x, &k}, {&y, &l}});
  } else {
    calls.push_back({{&x, &k}});
    calls.push_back({{&y, &l}});
  }
  const float one = 1.0f, zero = 0.0f;
  for (const auto& sides : calls) {
    const int64_t p = sides[0].rows->size(2);
    const int64_t per_side = L * nb * (nb + 1) / 2, count = per_side * static_cast<int64_t>(sides.size());
    // The pointer arrays (A, B, C, each `count` long) from pinned memory, copied without blocking.
    auto host = torch::empty({3 * count}, torch::TensorOptions().dtype(torch::kLong).pinned_memory(true));
    auto* h = reinterpret_cast<uintptr_t*>(host.data_ptr<int64_t>());
    int64_t at = 0;
    for (const auto& side : sides) {
      const auto* xs = reinterpret_cast<const at::BFloat16*>(side.rows->data_ptr<at::BFloat16>());
      float* ks = side.gram->data_ptr<float>();
      const int64_t layer_rows = side.rows->stride(0);
      for (int64_t layer = 0; layer < L; ++layer) {
        for (int64_t bi = 0; bi < nb; ++bi) {
          for (int64_t bj = bi; bj < nb; ++bj, ++at) {
            h[at] = reinterpret_cast<uintptr_t>(xs + layer * layer_rows + bj * block * p);
            h[count + at] = reinterpret_cast<uintptr_t>(xs + layer * layer_rows + bi * block * p);
            h[2 * count + at] = reinterpret_cast<uintptr_t>(ks + (layer * n + bi * block) * n + bj * block);
          }
        }
      }
    }
    auto device = host.to(x.device(), /*non_blocking=*/true);
    auto* d = reinterpret_cast<void**>(device.data_ptr<int64_t>());
    cublasHandle_t handle = at::cuda::getCurrentCUDABlasHandle();
    TORCH_CUDABLAS_CHECK(cublasGemmBatchedEx(
        handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(block), static_cast<int>(block), static_cast<int>(p), &one,
        const_cast<const void* const*>(d), CUDA_R_16BF, static_cast<int>(p), const_cast<const void* const*>(d + count),
        CUDA_R_16BF, static_cast<int>(p), &zero, d + 2 * count, CUDA_R_32F, static_cast<int>(n),
        static_cast<int>(count), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
}

void centred_gram_sums_cuda(GramSums& g) {
  const int64_t L = g.k.strips[0].size(0), n = g.k.n();
  if (L == 0) return;
  c10::cuda::CUDAGuard guard(g.k.strips[0].device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const StripTiles t = strip_tiles(g.k);
  bool aligned = true;
  const StripSet ks = strip_set(g.k, aligned), ls = strip_set(g.l, aligned);
  const bool vec = n % 4 == 0 && t.block % 4 == 0 && aligned;
  const int tiles = t.first[t.nb];
  auto f64 = g.sums.options();
  auto partial = torch::empty({L, tiles, 3}, f64);
  auto row_part = torch::empty({L, 2, t.max_col_tiles(), n}, f64);
  auto col_part = torch::empty({L, 2, t.all_row_tiles(), n}, f64);
  auto row_sums = torch::empty({L, 2, n}, f64);
  strip_sums_kernel<<<dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(L)), kTileThreads, 0, stream>>>(
      ks, ls, t, vec, partial.data_ptr<double>(), row_part.data_ptr<double>(), col_part.data_ptr<double>());
  check_launch();
  strip_row_sums_kernel<<<dim3(static_cast<unsigned>((n + 255) / 256), static_cast<unsigned>(L)), 256, 0, stream>>>(
      row_part.data_ptr<double>(), col_part.data_ptr<double>(), t, row_sums.data_ptr<double>());
  check_launch();
  gram_finish_kernel<<<static_cast<unsigned>(L), kFinishThreads, 0, stream>>>(
      row_sums.data_ptr<double>(), partial.data_ptr<double>(), n, tiles, g.sums.data_ptr<double>(),
      g.k_row_means.data_ptr<float>(), g.l_row_means.data_ptr<float>(), g.k_mean.data_ptr<float>(),
      g.l_mean.data_ptr<float>(), g.cka.defined() ? g.cka.data_ptr<double>() : nullptr,
      g.cka.defined() ? g.cka_float.data_ptr<float>() : nullptr);
  check_launch();
}

void backward_factors_cuda(BackwardFactors& b) {
  const int64_t L = b.cka.size(0);
  if (L == 0) return;
  c10::cuda::CUDAGuard guard(b.cka.device());
  const bool go_double = b.go.scalar_type() == torch::kFloat64;
  constexpr int kThreads = 128;
  backward_factors_kernel<<<static_cast<unsigned>((L + kThreads - 1) / kThreads), kThreads, 0,
                            at::cuda::getCurrentCUDAStream()>>>(
      b.cka.data_ptr<double>(), b.f_own.data_ptr<double>(), b.fxx.data_ptr<double>(), b.fyy.data_ptr<double>(),
      b.go.data_ptr(), go_double, L, b.cka.stride(0), b.f_own.stride(0), b.fxx.stride(0), b.fyy.stride(0),
      b.go.stride(0), b.go_scale, b.beta.data_ptr<float>(), b.alpha.data_ptr<float>());
  check_launch();
}

void cka_term_cuda(CkaTerm& t) {
  c10::cuda::CUDAGuard guard(t.cka.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t L = t.cka.size(0), stride = t.cka.stride(0);
  if (t.loss.scalar_type() == torch::kFloat64) {
    cka_term_kernel<<<1, 1, 0, stream>>>(t.cka.data_ptr<double>(), L, stride, t.weight, t.term.data_ptr<double>(),
                                         t.loss.data_ptr<double>());
  } else {
    cka_term_kernel<<<1, 1, 0, stream>>>(t.cka.data_ptr<double>(), L, stride, t.weight, t.term.data_ptr<double>(),
                                         t.loss.data_ptr<float>());
  }
  check_launch();
}

void combine_kernels_cuda(CombineKernels& c) {
  const int64_t L = c.own.gram.strips[0].size(0), n = c.own.gram.n(), cols = c.out.size(2);
  if (L == 0 || n == 0) return;
  c10::cuda::CUDAGuard guard(c.own.gram.strips[0].device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const StripTiles t = strip_tiles(c.own.gram);
  bool aligned = true;
  auto side = [&](const GramKernel& k) {
    return KernelSide{strip_set(k.gram, aligned), k.row_means.data_ptr<float>(), k.mean.data_ptr<float>()};
  };
  const KernelSide own = side(c.own), other = side(c.other);
  auto* rs = reinterpret_cast<__nv_bfloat16*>(c.out.data_ptr<at::BFloat16>());
  const bool vec = aligned && n % 4 == 0 && t.block % 4 == 0 && cols % 4 == 0 &&
                   reinterpret_cast<uintptr_t>(rs) % 8 == 0;
  const bool pairs = cols % 2 == 0 && t.block % 2 == 0 && reinterpret_cast<uintptr_t>(rs) % 4 == 0;
  const bool correct = cols > n;
  const int tiles = t.first[t.nb];
  auto f64 = c.beta.options().dtype(torch::kFloat64);
  torch::Tensor row_part, col_part;
  if (correct) {
    row_part = torch::empty({L, t.max_col_tiles(), n}, f64);
    col_part = torch::empty({L, t.all_row_tiles(), n}, f64);
  }
  strip_combine_kernel<<<dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(L)), kTileThreads, 0, stream>>>(
      own, other, c.beta.data_ptr<float>(), c.alpha.data_ptr<float>(), t, vec, pairs, rs, cols, correct,
      correct ? row_part.data_ptr<double>() : nullptr, correct ? col_part.data_ptr<double>() : nullptr);
  check_launch();
  if (correct) {
    correction_column_kernel<<<dim3(static_cast<unsigned>((n + 255) / 256), static_cast<unsigned>(L)), 256, 0,
                               stream>>>(row_part.data_ptr<double>(), col_part.data_ptr<double>(), t, rs, cols);
    check_launch();
  }
}

void append_column_means_cuda(AppendColumnMeans& a) {
  const int64_t L = a.rows.size(0), extra = a.rows.size(1) - a.n, p = a.rows.size(2);
  if (L == 0) return;
  c10::cuda::CUDAGuard guard(a.rows.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  auto* rs = reinterpret_cast<__nv_bfloat16*>(a.rows.data_ptr<at::BFloat16>());
  const int64_t stride = a.rows.stride(0);
  if (p % 8 == 0 && stride % 8 == 0 && aligned16(rs)) {
    const dim3 grid(static_cast<unsigned>((p / 8 + kMeanLanes - 1) / kMeanLanes), static_cast<unsigned>(L));
    append_column_means_kernel<<<grid, kMeanLanes * kMeanGroups, 0, stream>>>(rs, stride, a.n, extra, p);
  } else {
    const dim3 grid(static_cast<unsigned>((p + 255) / 256), static_cast<unsigned>(L));
    append_column_means_scalar_kernel<<<grid, 256, 0, stream>>>(rs, stride, a.n, extra, p);
  }
  check_launch();
}

}  // namespace qad::loss::kernels
