// The CPU reference for the NVFP4 kernels: plain loops over 16-element blocks, simple enough to check
// by eye against docs/nvfp4.md. The CUDA kernels must reproduce these bytes exactly.
#include <ATen/Parallel.h>

#include <cmath>
#include <limits>

#include "nvfp4/dtype_dispatch.h"
#include "nvfp4/kernels.h"
#include "nvfp4/scales.h"

namespace qad::nvfp4::kernels {
namespace {

int64_t rows_of(const torch::Tensor& x) { return x.numel() / x.size(-1); }
int64_t blocks_per_row(int64_t k) { return (k + kBlockSize - 1) / kBlockSize; }

// The block's amax and whether all its elements are finite.
template <typename T>
void block_amax(const T* xb, int n, float& amax, bool& finite) {
  amax = 0.0f;
  finite = true;
  for (int i = 0; i < n; ++i) {
    float v = static_cast<float>(xb[i]);
    finite = finite && is_finite(v);
    amax = std::max(amax, std::fabs(v));
  }
}

template <typename T>
void fake_quantize_rows(const T* x, T* y, int64_t rows, int64_t k, float amax) {
  const float sg = global_decode_scale(amax);
  const int64_t nb = blocks_per_row(k);
  at::parallel_for(0, rows * nb, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t r = b / nb, j = b % nb;
      const int n = static_cast<int>(std::min<int64_t>(kBlockSize, k - j * kBlockSize));
      const T* xb = x + r * k + j * kBlockSize;
      T* yb = y + r * k + j * kBlockSize;
      float a;
      bool finite;
      block_amax(xb, n, a, finite);
      if (!finite || !is_finite(sg)) {
        for (int i = 0; i < n; ++i) yb[i] = static_cast<T>(std::numeric_limits<float>::quiet_NaN());
        continue;
      }
      const float sb = e4m3_decode(block_scale_code(a, sg));
      for (int i = 0; i < n; ++i) {
        uint8_t q = quantize_element(static_cast<float>(xb[i]), sb, sg);
        yb[i] = static_cast<T>(dequantize_element(q, sb, sg));
      }
    }
  });
}

template <typename T>
void quantize_rows(const T* x, uint8_t* packed, uint8_t* scales, int64_t rows, int64_t k, float amax) {
  const float sg = global_decode_scale(amax);
  const int64_t nb = blocks_per_row(k);
  const int64_t packed_row = (k + 1) / 2;
  at::parallel_for(0, rows * nb, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t r = b / nb, j = b % nb;
      const int n = static_cast<int>(std::min<int64_t>(kBlockSize, k - j * kBlockSize));
      const T* xb = x + r * k + j * kBlockSize;
      uint8_t* pb = packed + r * packed_row + j * (kBlockSize / 2);
      float a;
      bool finite;
      block_amax(xb, n, a, finite);
      const uint8_t code = block_scale_code(a, sg);
      scales[b] = code;
      const float sb = e4m3_decode(code);
      for (int i = 0; i < n; i += 2) {
        uint8_t lo = quantize_element(static_cast<float>(xb[i]), sb, sg);
        uint8_t hi = i + 1 < n ? quantize_element(static_cast<float>(xb[i + 1]), sb, sg) : 0;
        pb[i / 2] = static_cast<uint8_t>(lo | (hi << 4));
      }
    }
  });
}

template <typename T>
void dequantize_rows(const uint8_t* packed, const uint8_t* scales, float sg, int64_t rows, int64_t k, T* y) {
  const int64_t nb = blocks_per_row(k);
  const int64_t packed_row = (k + 1) / 2;
  at::parallel_for(0, rows * nb, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t r = b / nb, j = b % nb;
      const int n = static_cast<int>(std::min<int64_t>(kBlockSize, k - j * kBlockSize));
      const uint8_t* pb = packed + r * packed_row + j * (kBlockSize / 2);
      const float sb = e4m3_decode(scales[b]);
      T* yb = y + r * k + j * kBlockSize;
      for (int i = 0; i < n; ++i) {
        uint8_t q = (i % 2 == 0) ? (pb[i / 2] & 0xF) : (pb[i / 2] >> 4);
        yb[i] = static_cast<T>(dequantize_element(q, sb, sg));
      }
    }
  });
}

}  // namespace

void amax_cpu(const torch::Tensor& x, torch::Tensor& out) {
  float result = 0.0f;
  dispatch_float_types(x.scalar_type(), "nvfp4_amax_cpu", [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* p = x.data_ptr<scalar_t>();
    const int64_t n = x.numel();
    for (int64_t i = 0; i < n; ++i) {
      float v = std::fabs(static_cast<float>(p[i]));
      if (v != v) {
        result = v;
        break;
      }
      result = std::max(result, v);
    }
  });
  out.fill_(result);
}

void fake_quantize_cpu(const torch::Tensor& x, const torch::Tensor& amax, torch::Tensor& y) {
  const float a = amax.item<float>();
  dispatch_float_types(x.scalar_type(), "nvfp4_fake_quantize_cpu", [&](auto tag) {
    using scalar_t = decltype(tag);
    fake_quantize_rows(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), rows_of(x), x.size(-1), a);
  });
}

void quantize_cpu(const torch::Tensor& x, const torch::Tensor& amax, torch::Tensor& packed,
                  torch::Tensor& scales, torch::Tensor& global_scale) {
  const float a = amax.item<float>();
  dispatch_float_types(x.scalar_type(), "nvfp4_quantize_cpu", [&](auto tag) {
    using scalar_t = decltype(tag);
    quantize_rows(x.data_ptr<scalar_t>(), packed.data_ptr<uint8_t>(), scales.data_ptr<uint8_t>(), rows_of(x),
                  x.size(-1), a);
  });
  global_scale.fill_(global_decode_scale(a));
}

void dequantize_cpu(const torch::Tensor& packed, const torch::Tensor& scales, const torch::Tensor& global_scale,
                    int64_t k, torch::Tensor& y) {
  const float sg = global_scale.item<float>();
  dispatch_float_types(y.scalar_type(), "nvfp4_dequantize_cpu", [&](auto tag) {
    using scalar_t = decltype(tag);
    dequantize_rows(packed.data_ptr<uint8_t>(), scales.data_ptr<uint8_t>(), sg, y.numel() / k, k,
                    y.data_ptr<scalar_t>());
  });
}

}  // namespace qad::nvfp4::kernels
