// The CPU reference of the fused SwiGLU (+ NVFP4 fake quantization of down_proj's input): silu(gate) * up in
// the model dtype as torch computes it (silu in float, rounded to the dtype, then the product rounded), and
// autograd's backward of those ops.
#include <ATen/Parallel.h>

#include "fused/cpu_util.h"
#include "fused/kernels.h"
#include "fused/row_math.h"
#include "nvfp4/dtype_dispatch.h"
#include "nvfp4/kernels.h"

namespace qad::fused::kernels {
namespace {

using cpu::round_to;

template <typename T>
float swiglu_value(T g, T u) {
  return round_to<T>(round_to<T>(silu(static_cast<float>(g))) * static_cast<float>(u));
}

}  // namespace

void swiglu_forward_cpu(const torch::Tensor& gate, const torch::Tensor& up, const OutputQuant& q, torch::Tensor& y) {
  nvfp4::dispatch_float_types(gate.scalar_type(), "fused::swiglu_cpu", [&](auto tag) {
    using T = decltype(tag);
    const T* g = gate.data_ptr<T>();
    const T* u = up.data_ptr<T>();
    T* out = y.data_ptr<T>();
    at::parallel_for(0, gate.numel(), 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) out[i] = static_cast<T>(swiglu_value(g[i], u[i]));
    });
  });
  if (q.enabled()) nvfp4::kernels::fake_quantize_cpu(y, q.amax, y);
}

void swiglu_backward_cpu(const torch::Tensor& grad_y, const torch::Tensor& gate, const torch::Tensor& up,
                         const OutputQuant& q, torch::Tensor& grad_gate, torch::Tensor& grad_up) {
  const bool clipped = q.enabled() && q.clipped;
  const float amax = clipped ? q.amax.item<float>() : 0.0f;
  nvfp4::dispatch_float_types(gate.scalar_type(), "fused::swiglu_backward_cpu", [&](auto tag) {
    using T = decltype(tag);
    const T* gy = grad_y.data_ptr<T>();
    const T* g = gate.data_ptr<T>();
    const T* u = up.data_ptr<T>();
    T* gg = grad_gate.data_ptr<T>();
    T* gu = grad_up.data_ptr<T>();
    at::parallel_for(0, gate.numel(), 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const float gf = static_cast<float>(g[i]), uf = static_cast<float>(u[i]);
        const float s = round_to<T>(silu(gf));
        const float gp = cpu::ste(static_cast<float>(gy[i]), clipped ? round_to<T>(s * uf) : 0.0f, clipped, amax);
        gu[i] = static_cast<T>(gp * s);                                 // mul backward, in T
        gg[i] = static_cast<T>(silu_backward(round_to<T>(gp * uf), gf));  // mul backward, then silu's
      }
    });
  });
}

}  // namespace qad::fused::kernels
