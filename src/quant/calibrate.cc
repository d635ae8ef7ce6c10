// PTQ calibration: static input amaxes from the model's own activations on calibration batches (max), weight
// global amaxes from the weights (max, or ModelOpt's MSE multiplier sweep), shared across fused groups, and static
// weight block scales (the MSE search over E4M3 codes) where the hooks keep them.
#include <fmt/format.h>

#include <cmath>
#include <map>
#include <set>
#include <tuple>

#include "nvfp4/block_scales.h"
#include "nvfp4/quantize.h"
#include "quant/kv_quant.h"
#include "quant/linear_quant.h"
#include "quant/quantize_model.h"
#include "util/error.h"
#include "util/progress.h"

namespace qad::quant {
namespace {

struct Hooked {
  model::Linear linear;
  NvFp4LinearQuant* hook;
};

std::vector<Hooked> hooked(const model::CausalLM& lm) {
  std::vector<Hooked> out;
  for (auto l : lm->linears()) {
    if (auto* h = nvfp4_hook(l)) out.push_back({l, h});
  }
  return out;
}

// The marker of an FP8 weight quantizer in the quantizer state: ModelOpt's num_bits (4, 3), E4M3.
torch::Tensor fp8_num_bits() { return torch::tensor(std::vector<int64_t>{4, 3}, torch::kLong); }

std::vector<Fp8KvQuant*> kv_hooked(const model::CausalLM& lm) {
  std::vector<Fp8KvQuant*> out;
  for (auto* h : kv_hooks(lm)) {
    if (h != nullptr) out.push_back(h);
  }
  return out;
}

// Ends calibration mode on every hook, also when the forward throws.
struct CalibrationScope {
  std::vector<Hooked>& hooks;
  std::vector<Fp8KvQuant*>& kv;
  CalibrationScope(std::vector<Hooked>& h, std::vector<Fp8KvQuant*>& k, const std::shared_ptr<torch::Tensor>& mask)
      : hooks(h), kv(k) {
    for (auto& x : hooks) {
      x.hook->calibrating = true;
      x.hook->calib_amax = torch::Tensor();
      x.hook->calib_mask = mask;
    }
    for (auto* x : kv) {
      x->calibrating = true;
      x->k_amax = x->v_amax = torch::Tensor();
    }
  }
  ~CalibrationScope() {
    for (auto& x : hooks) {
      x.hook->calibrating = false;
      x.hook->calib_mask.reset();
    }
    for (auto* x : kv) x->calibrating = false;
  }
};

// k_scale / v_scale from the amaxes the KV hooks recorded: amax / 448, finite and positive (engines read a scale
// <= 0 as "none in the checkpoint").
void set_kv_scales(const std::vector<Fp8KvQuant*>& kv) {
  for (auto* x : kv) {
    const std::tuple<torch::Tensor*, torch::Tensor*, const char*> parts[] = {{&x->k_amax, &x->k_scale, "keys"},
                                                                           {&x->v_amax, &x->v_scale, "values"}};
    for (auto [amax, scale, what] : parts) {
      QAD_CHECK(amax->defined(), "calibrate: {} saw no {} (is it used by the forward?)", x->attention(), what);
      const float a = amax->cpu().item<float>();
      QAD_CHECK(std::isfinite(a), "calibrate: {} saw non-finite {} (amax {}); the model or the calibration data "
                "produce NaN/Inf", x->attention(), what, a);
      QAD_CHECK(a > 0.0f, "calibrate: the {} of {} are all 0 over the calibration tokens; an FP8 KV cache needs a "
                "positive scale (calibrate on more data, or quant.kv_cache: none)", what, x->attention());
      *scale = torch::full({}, fp8_kv_scale(a), torch::kFloat32);
    }
  }
}

// ModelOpt's MseCalibrator candidates: initial amax x linspace(0.25, 4.0, ceil(3.75 / 0.1) + 1); plus 1.0 itself,
// so that MSE is never worse than max calibration on the weights.
std::vector<float> mse_multipliers() {
  const double start = 0.25, stop = 4.0, step = 0.1;
  const int n = static_cast<int>(std::ceil((stop - start) / step)) + 1;
  std::vector<float> m;
  for (int i = 0; i < n; ++i) m.push_back(static_cast<float>(start + (stop - start) * i / (n - 1)));
  m.push_back(1.0f);
  return m;
}

// The shared weight amax of a group of weights minimising the summed squared fake-quantization error.
torch::Tensor mse_weight_amax(const std::vector<torch::Tensor>& weights, const torch::Tensor& initial) {
  const float a0 = initial.item<float>();
  if (!(a0 > 0.0f)) return initial;
  float best_amax = a0;
  double best_err = INFINITY;
  for (float m : mse_multipliers()) {
    const float a = a0 * m;
    auto amax = torch::full({}, a, torch::TensorOptions().dtype(torch::kFloat32).device(weights[0].device()));
    double err = 0;
    for (const auto& w : weights) {
      auto d = nvfp4::fake_quantize(w, amax).to(torch::kFloat64) - w.to(torch::kFloat64);
      err += d.pow(2).sum().item<double>();
    }
    if (err < best_err || (err == best_err && m == 1.0f)) best_err = err, best_amax = a;
  }
  return torch::full({}, best_amax, torch::kFloat32);
}

// "<p>.mlp.experts.<e>.<proj>" -> ("<p>.mlp.experts", "<proj>"); empty for modules outside an expert group.
std::pair<std::string, std::string> expert_slot(const std::string& module) {
  static const std::string kExperts = ".mlp.experts.";
  const auto at = module.find(kExperts);
  if (at == std::string::npos) return {};
  const auto dot = module.find('.', at + kExperts.size());
  if (dot == std::string::npos) return {};
  return {module.substr(0, at + kExperts.size() - 1), module.substr(dot + 1)};
}

// Experts no calibration token reached (routed calibration) get, per projection, the max input amax of the
// same layer's other experts: the largest activation any expert of that layer saw at that input.
void fill_uncalibrated_experts(std::vector<Hooked>& hooks, CalibrationReport& report) {
  std::map<std::pair<std::string, std::string>, std::pair<torch::Tensor, int>> seen;  // slot -> (max amax, experts)
  for (auto& x : hooks) {
    auto slot = expert_slot(x.hook->module());
    if (slot.first.empty() || !x.hook->calib_amax.defined()) continue;
    auto& [a, n] = seen[slot];
    a = a.defined() ? torch::maximum(a, x.hook->calib_amax) : x.hook->calib_amax;
    ++n;
  }
  for (auto& x : hooks) {
    auto slot = expert_slot(x.hook->module());
    if (slot.first.empty() || x.hook->calib_amax.defined()) continue;
    auto it = seen.find(slot);
    QAD_CHECK(it != seen.end(), "calibrate: no expert of {} saw a calibration token at {}; calibrate with more data "
              "or quant.moe_calibration: all_experts", slot.first, slot.second);
    x.hook->calib_amax = it->second.first.clone();
    report.experts_without_tokens.push_back(x.hook->module());
    report.fallback_notes.push_back(fmt::format("{}: {:.6g} (max over {} other experts)", x.hook->module(),
                                                it->second.first.item<float>(), it->second.second));
  }
  if (!report.experts_without_tokens.empty()) {
    fmt::print(stderr, "qad: warning: calibrate: {} expert projection(s) saw no calibration token; each takes the "
               "largest input amax of its layer's other experts at that projection:\n", report.experts_without_tokens.size());
    for (const auto& n : report.fallback_notes) fmt::print(stderr, "qad:   {}\n", n);
  }
}

}  // namespace

void calibrate(model::CausalLM& lm, const BatchSource& for_each_batch, const QuantConfig& cfg,
               CalibrationReport* report) {
  auto hooks = hooked(lm);
  auto kv = kv_hooked(lm);
  QAD_CHECK(!hooks.empty(), "calibrate: the model has no NVFP4-quantized Linear (call quant::apply_nvfp4 first)");
  QAD_CHECK(cfg.calib_samples > 0, "calibrate: calib_samples must be positive, got {}", cfg.calib_samples);
  const auto device = lm->model->embed_tokens->weight.device();
  // lm_head's input is every position's hidden state; only skip computing all logits when lm_head is not quantized.
  const bool head_hooked = nvfp4_hook(lm->lm_head) != nullptr;

  auto mask_slot = std::make_shared<torch::Tensor>();
  int64_t seen = 0;
  {
    CalibrationScope scope(hooks, kv, mask_slot);
    torch::NoGradGuard no_grad;
    Progress progress("calibrate", cfg.calib_samples, "samples");
    for_each_batch([&](const torch::Tensor& input_ids, const torch::Tensor& mask) {
      if (seen >= cfg.calib_samples) return;
      QAD_CHECK(input_ids.dim() == 2, "calibrate: input_ids must be [batch, tokens], got {} dims", input_ids.dim());
      const int64_t take = std::min<int64_t>(input_ids.size(0), cfg.calib_samples - seen);
      auto ids = input_ids.narrow(0, 0, take).to(device, torch::kLong);
      model::ForwardOptions o;
      if (mask.defined()) {
        QAD_CHECK(mask.sizes() == input_ids.sizes(), "calibrate: mask must have the shape of input_ids");
        *mask_slot = mask.narrow(0, 0, take).to(device).to(torch::kBool);
        o.attention_mask = mask_slot->to(torch::kLong);
      } else {
        *mask_slot = torch::Tensor();
      }
      if (!head_hooked) o.logits_to_keep = 1;
      o.calibrate_all_experts = cfg.moe_calibration == MoeCalibration::kAllExperts;
      lm->forward(ids, o);
      seen += take;
      progress.advance(take);
    });
    progress.finish();
    CalibrationReport local;
    fill_uncalibrated_experts(hooks, report != nullptr ? *report : local);
    for (auto& x : hooks) {
      QAD_CHECK(x.hook->calib_amax.defined(), "calibrate: {} saw no input (is it used by the forward?)",
                x.hook->module());
      auto a = x.hook->calib_amax.cpu();
      QAD_CHECK(std::isfinite(a.item<float>()), "calibrate: {} saw a non-finite input (amax {}); the model or the "
                "calibration data produce NaN/Inf", x.hook->module(), a.item<float>());
      x.hook->input_amax = a;
    }
    set_kv_scales(kv);
  }
  QAD_CHECK(seen > 0, "calibrate: the calibration data gave no samples");
  if (seen < cfg.calib_samples) {
    fmt::print(stderr, "qad: warning: calibration used {} samples, fewer than the {} asked for\n", seen,
               cfg.calib_samples);
  }

  // Fused groups and weights. Ungrouped modules are groups of one.
  torch::NoGradGuard no_grad;
  std::map<std::string, std::vector<Hooked*>> groups;
  for (auto& x : hooks) {
    auto g = fused_group(x.hook->module());
    groups[g.empty() ? x.hook->module() : g].push_back(&x);
  }
  for (auto& [g, members] : groups) {
    torch::Tensor in_amax, w_amax;
    std::vector<torch::Tensor> weights;
    for (auto* x : members) {
      auto w = x->linear->weight.detach();
      auto wa = nvfp4::compute_amax(w).cpu();
      QAD_CHECK(std::isfinite(wa.item<float>()), "calibrate: {}.weight has NaN or Inf", x->hook->module());
      w_amax = w_amax.defined() ? torch::maximum(w_amax, wa) : wa;
      in_amax = in_amax.defined() ? torch::maximum(in_amax, x->hook->input_amax) : x->hook->input_amax;
      weights.push_back(w);
    }
    // FP8 layers keep max calibration (the MSE search is over the NVFP4 fake quantization).
    if (cfg.method == CalibMethod::kMse && !members[0]->hook->fp8) w_amax = mse_weight_amax(weights, w_amax);
    for (auto* x : members) {
      x->hook->input_amax = in_amax.clone();
      x->hook->weight_amax = w_amax.clone();
    }
  }

  // Static block scales: the MSE search per weight, with the (shared) weight amax just fixed.
  int64_t static_hooks = 0;
  for (auto& x : hooks) static_hooks += x.hook->static_block_scales;
  if (static_hooks == 0) return;
  Progress progress("block scales", static_hooks, "Linears");
  for (auto& x : hooks) {
    if (!x.hook->static_block_scales) continue;
    auto w = x.linear->weight.detach();
    x.hook->block_scale = nvfp4::mse_block_scales(w, x.hook->weight_amax.to(w.device()));
    progress.advance(1);
  }
  progress.finish();
}

std::vector<std::pair<std::string, torch::Tensor>> quantizer_state(const model::CausalLM& lm) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& x : hooked(lm)) {
    const auto& m = x.hook->module();
    if (x.hook->input_amax.defined()) out.emplace_back(m + ".input_quantizer._amax", x.hook->input_amax.cpu().clone());
    if (x.hook->weight_amax.defined()) {
      out.emplace_back(m + ".weight_quantizer._amax", x.hook->weight_amax.cpu().clone());
    }
    if (x.hook->static_block_scales && x.hook->block_scale.defined()) {
      out.emplace_back(m + ".weight_quantizer._block_scale", x.hook->block_scale.cpu().clone());
    }
    if (x.hook->fp8) out.emplace_back(m + ".weight_quantizer._num_bits", fp8_num_bits());
  }
  for (auto* h : kv_hooked(lm)) {
    if (h->k_scale.defined()) out.emplace_back(h->k_scale_name(), h->k_scale.cpu().clone());
    if (h->v_scale.defined()) out.emplace_back(h->v_scale_name(), h->v_scale.cpu().clone());
  }
  return out;
}

void load_quantizer_state(model::CausalLM& lm, const std::vector<std::pair<std::string, torch::Tensor>>& state,
                          const QuantConfig& cfg) {
  static const std::string kIn = ".input_quantizer._amax", kW = ".weight_quantizer._amax";
  static const std::string kK = ".k_proj.k_scale", kV = ".v_proj.v_scale";
  static const std::string kB = ".weight_quantizer._block_scale", kN = ".weight_quantizer._num_bits";
  std::map<std::string, model::Linear> by_name;
  for (const auto& l : lm->linears()) by_name.emplace(l->name(), l);
  std::map<std::string, std::pair<torch::Tensor, torch::Tensor>> amaxes;  // module -> (input, weight)
  std::map<std::string, std::pair<torch::Tensor, torch::Tensor>> kv_scales;  // "<layer>.self_attn" -> (k, v)
  std::map<std::string, torch::Tensor> block_scales;  // module -> uint8 E4M3 codes [out, in/16]
  std::set<std::string> fp8;                          // modules whose quantizers are FP8 E4M3
  for (const auto& [name, t] : state) {
    if (name.ends_with(kN)) {
      const auto module = name.substr(0, name.size() - kN.size());
      QAD_CHECK(by_name.count(module), "quantizer state: '{}' names no Linear of this model", name);
      QAD_CHECK(t.numel() == 2 && !t.is_floating_point() && t.to(torch::kLong).equal(fp8_num_bits()),
                "quantizer state: '{}' must be the int64 pair (4, 3) (FP8 E4M3, ModelOpt's num_bits); other formats "
                "are not supported", name);
      fp8.insert(module);
      continue;
    }
    if (name.ends_with(kB)) {
      const auto module = name.substr(0, name.size() - kB.size());
      auto it = by_name.find(module);
      QAD_CHECK(it != by_name.end(), "quantizer state: '{}' names no Linear of this model", name);
      const std::vector<int64_t> shape = {it->second->out_features(), it->second->in_features() / 16};
      QAD_CHECK(t.scalar_type() == torch::kUInt8 && t.sizes() == torch::IntArrayRef(shape) &&
                    it->second->in_features() % 16 == 0,
                "quantizer state: '{}' must be uint8 E4M3 codes of shape [{}, {}], got {} {}", name, shape[0],
                shape[1], c10::toString(t.scalar_type()), c10::str(t.sizes()));
      auto codes = t.detach().to(torch::kCPU).contiguous().clone();
      QAD_CHECK(!codes.bitwise_and(0x7F).eq(0x7F).any().item<bool>(), "quantizer state: '{}' holds the E4M3 NaN "
                "code", name);
      block_scales[module] = codes;
      continue;
    }
    if (name.ends_with(kK) || name.ends_with(kV)) {
      const bool is_k = name.ends_with(kK);
      const auto attention = name.substr(0, name.size() - kK.size());  // both suffixes have one length
      QAD_CHECK(t.numel() == 1 && t.is_floating_point(), "quantizer state: '{}' must be one float, got {} elements",
                name, t.numel());
      auto v = t.detach().reshape({}).to(torch::kCPU, torch::kFloat32).clone();
      QAD_CHECK(std::isfinite(v.item<float>()) && v.item<float>() > 0, "quantizer state: '{}' = {} is not a valid "
                "KV-cache scale (finite, > 0)", name, v.item<float>());
      (is_k ? kv_scales[attention].first : kv_scales[attention].second) = v;
      continue;
    }
    const bool is_in = name.ends_with(kIn), is_w = name.ends_with(kW);
    QAD_CHECK(is_in || is_w, "quantizer state: '{}' is not '<module>{}', '<module>{}', '<module>{}', "
              "'<layer>.self_attn{}' or '<layer>.self_attn{}'", name, kIn, kW, kB, kK, kV);
    const auto module = name.substr(0, name.size() - (is_in ? kIn.size() : kW.size()));
    QAD_CHECK(by_name.count(module), "quantizer state: '{}' names no Linear of this model", name);
    QAD_CHECK(t.numel() == 1 && t.is_floating_point(), "quantizer state: '{}' must be one float, got {} elements",
              name, t.numel());
    auto v = t.detach().reshape({}).to(torch::kCPU, torch::kFloat32).clone();
    QAD_CHECK(std::isfinite(v.item<float>()) && v.item<float>() >= 0, "quantizer state: '{}' = {} is not a valid amax",
              name, v.item<float>());
    (is_in ? amaxes[module].first : amaxes[module].second) = v;
  }
  for (auto l : lm->linears()) {
    auto it = amaxes.find(l->name());
    if (it == amaxes.end()) {
      if (nvfp4_hook(l) != nullptr) l->quant.reset();
      continue;
    }
    QAD_CHECK(it->second.second.defined(), "quantizer state: {} has an input amax but no '{}{}'", l->name(),
              l->name(), kW);
    auto hook = std::make_shared<NvFp4LinearQuant>(l->name());
    hook->input_amax = it->second.first;
    hook->weight_amax = it->second.second;
    if (fp8.erase(l->name())) {
      hook->fp8 = true;
      hook->quantize_inputs = hook->input_amax.defined();  // W8A8; an FP8 state always has the input amax
      QAD_CHECK(hook->quantize_inputs, "quantizer state: FP8 module {} has no '{}.input_quantizer._amax'", l->name(),
                l->name());
    }
    if (auto b = block_scales.find(l->name()); b != block_scales.end()) {
      hook->static_block_scales = true;
      hook->block_scale = b->second;
      block_scales.erase(b);
    }
    hook->ste = cfg.ste;
    if (!hook->fp8) {  // FP8 layers are W8A8 whatever quantize_inputs says
      hook->quantize_inputs = cfg.quantize_inputs && hook->input_amax.defined();
      for (const auto& ov : cfg.overrides) {
        if (ov.quantize_inputs && glob_match(ov.pattern, l->name())) hook->quantize_inputs = *ov.quantize_inputs;
      }
    }
    l->quant = hook;
  }
  QAD_CHECK(fp8.empty(), "quantizer state: '{}{}' has no '{}{}'", fp8.empty() ? "" : *fp8.begin(), kN,
            fp8.empty() ? "" : *fp8.begin(), kW);
  QAD_CHECK(block_scales.empty(), "quantizer state: '{}{}' has no '{}{}' (block scales belong to a weight quantizer)",
            block_scales.empty() ? "" : block_scales.begin()->first, kB,
            block_scales.empty() ? "" : block_scales.begin()->first, kW);
  // The KV cache: every attention layer has both scales, or the state has none.
  remove_kv_cache_quant(lm);
  if (kv_scales.empty()) return;
  std::set<std::string> known;
  for (size_t i = 0; i < lm->model->layer_list.size(); ++i) {
    const auto attention = fmt::format("model.layers.{}.self_attn", i);
    known.insert(attention);
    auto it = kv_scales.find(attention);
    QAD_CHECK(it != kv_scales.end() && it->second.first.defined() && it->second.second.defined(),
              "quantizer state: has FP8 KV-cache scales but not '{}{}' and '{}{}' (every attention layer needs both)",
              attention, kK, attention, kV);
    auto hook = std::make_shared<Fp8KvQuant>(attention);
    hook->k_scale = it->second.first;
    hook->v_scale = it->second.second;
    hook->ste = cfg.ste;
    lm->model->layer_list[i]->self_attn->kv_quant = hook;
  }
  for (const auto& [attention, scales] : kv_scales) {
    QAD_CHECK(known.count(attention), "quantizer state: '{}{}' names no attention layer of this model", attention,
              scales.first.defined() ? kK : kV);
  }
}

}  // namespace qad::quant
