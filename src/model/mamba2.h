// The Mamba-2 mixer of NemotronH ("model.layers.N.mixer"), as transformers' NemotronHMamba2Mixer.torch_forward
// computes it: in_proj -> [gate | x B C | dt], causal depthwise conv1d + SiLU over x B C, the SSD scan with
// dt = max(softplus(dt + dt_bias), time_step_min), A = -exp(A_log), B/C shared by the heads of a group, the D
// skip, the gated RMSNorm (x * silu(gate), normalised per group of inner / n_groups channels) and out_proj.
// The scan runs chunked in LibTorch ops (CPU and GPU); ssd_scan_sequential is the per-token recurrence it must
// equal, the reference for tests and for a future CUDA kernel.
#pragma once
#include <torch/torch.h>

#include <string>
#include <vector>

#include "model/config.h"
#include "model/linear.h"

namespace qad::model {

struct SsdScanOutput {
  torch::Tensor y;            // [B, T, H, P] FP32: C_t . S_t, without the D skip
  torch::Tensor final_state;  // [B, H, P, N] FP32: S after the last token
};

// S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_t^T, y_t = S_t C_t, per head; x [B, T, H, P], dt [B, T, H] (after
// softplus and clamp), a [H] (A, negative), b / c [B, T, H, N] (already repeated per head), initial_state [B, H, P,
// N] or undefined (zeros). Everything in FP32 (the inputs are converted).
// Chunked: within each chunk of `chunk` tokens the quadratic (attention-like) form, between chunks the state
// recurrence; T need not be a multiple of chunk.
SsdScanOutput ssd_scan_chunked(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& a,
                               const torch::Tensor& b, const torch::Tensor& c, int64_t chunk,
                               const torch::Tensor& initial_state = {});
// The same, one token at a time (the recurrence as written): the reference of the chunked form and of kernels.
SsdScanOutput ssd_scan_sequential(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& a,
                                  const torch::Tensor& b, const torch::Tensor& c,
                                  const torch::Tensor& initial_state = {});

// Zamba2RMSNormGated with norm_before_gate = false: h = x * silu(gate) in FP32, RMS-normalised over each group of
// group_size channels, then weight * h (h kept in FP32 when x is FP32, cast to x's dtype otherwise).
torch::Tensor gated_rms_norm(const torch::Tensor& x, const torch::Tensor& gate, const torch::Tensor& weight,
                             int64_t group_size, double eps);

// The recurrent state of one Mamba-2 mixer while generating.
struct MambaState {
  torch::Tensor conv;  // [B, conv_dim, conv_kernel]: the last conv_kernel inputs of the conv (zeros before the start)
  torch::Tensor ssm;   // [B, H, P, N] FP32
};

// Holders that give the mixer's raw parameters their HF paths ("conv1d.weight", "norm.weight").
class Conv1dParamsImpl : public torch::nn::Module {
 public:
  Conv1dParamsImpl(int64_t channels, int64_t kernel, bool bias);
  torch::Tensor weight, bias;  // [C, 1, K], [C] or undefined
};
TORCH_MODULE(Conv1dParams);

class GatedRMSNormImpl : public torch::nn::Module {
 public:
  GatedRMSNormImpl(int64_t dim, int64_t group_size, double eps);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& gate) {
    return gated_rms_norm(x, gate, weight, group_size, eps);
  }
  torch::Tensor weight;
  int64_t group_size;
  double eps;
};
TORCH_MODULE(GatedRMSNorm);

// The Mamba states of a whole NemotronH model, indexed by layer (entries of other block types stay empty): what
// generation keeps beside the KV cache of the attention layers (ForwardOptions::mamba_cache).
struct MambaCache {
  std::vector<MambaState> layers;
};

class Mamba2MixerImpl : public torch::nn::Module {
 public:
  Mamba2MixerImpl(const ModelConfig& c, const std::string& prefix);
  // x [B, T, hidden] (after the block's norm) -> [B, T, hidden]. token_mask [B, T] (1 = real) zeroes padding
  // as transformers does (input and conv output), or undefined. state: null = a whole sequence from its start;
  // otherwise its conv/ssm are read (when defined) and replaced by the state after these tokens.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& token_mask = {}, MambaState* state = nullptr);

  Linear in_proj{nullptr}, out_proj{nullptr};
  Conv1dParams conv1d{nullptr};
  GatedRMSNorm norm{nullptr};
  torch::Tensor dt_bias, A_log, D;  // [H] each
  const MambaConfig& config() const { return cfg_; }

 private:
  MambaConfig cfg_;
};
TORCH_MODULE(Mamba2Mixer);

}  // namespace qad::model
