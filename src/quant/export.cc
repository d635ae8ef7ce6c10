// export_nvfp4: the ModelOpt "unified HF" NVFP4 checkpoint (../shared/docs/NVFP4.md) written atomically: packed
// weights and scales for every quantized Linear, other tensors unchanged, hf_quant_config.json, config.json with
// quantization_config, tokenizer files. The weight is quantized with the hook's stored amax (and its static block
// scales when it has them), so the file decodes to exactly what the fake-quantized model computes with.
#include <fmt/format.h>

#include <cmath>
#include <map>
#include <set>
#include <nlohmann/json.hpp>

#include "io/safetensors_torch.h"
#include "nvfp4/block_scales.h"
#include "nvfp4/e4m3.h"
#include "nvfp4/quantize.h"
#include "nvfp4/scales.h"
#include "quant/export_json.h"
#include "quant/kv_quant.h"
#include "quant/linear_quant.h"
#include "quant/quantize_model.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace qad::quant {
namespace fs = std::filesystem;
namespace {

constexpr uint64_t kShardBytes = 5ull << 30;

// Tensors to write plus the CPU copies their bytes live in.
class TensorList {
 public:
  void add(const std::string& name, const torch::Tensor& t, std::optional<io::DType> dtype = {}) {
    auto c = t.detach().to(torch::kCPU).contiguous();
    keep_.push_back(c);
    std::vector<int64_t> shape(c.sizes().begin(), c.sizes().end());
    refs_.push_back({name, dtype ? *dtype : io::from_scalar_type(c.scalar_type()), shape,
                     std::span<const std::byte>(static_cast<const std::byte*>(c.data_ptr()), c.nbytes())});
  }
  const std::vector<io::TensorRef>& refs() const { return refs_; }
  uint64_t bytes() const {
    uint64_t n = 0;
    for (const auto& r : refs_) n += r.bytes.size();
    return n;
  }

 private:
  std::vector<torch::Tensor> keep_;
  std::vector<io::TensorRef> refs_;
};

// Files that travel with a model but are not weights or its config: tokenizer, generation and chat settings.
bool is_companion_file(const std::string& name) {
  static const char* const kNames[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                       "added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt",
                                       "generation_config.json", "chat_template.jinja", "chat_template.json",
                                       "LICENSE"};
  for (const char* n : kNames) {
    if (name == n) return true;
  }
  return false;
}

float scalar(const torch::Tensor& t) { return t.detach().cpu().to(torch::kFloat32).reshape({}).item<float>(); }

// An FP8 layer's weight as E4M3 codes (uint8, written as F8_E4M3): e4m3_encode(w / scale) per element, the rounding
// of nvfp4::fp8_fake_quantize (RNE, saturating at ±448), so the file decodes to the fake-quantized weight.
torch::Tensor fp8_codes(const torch::Tensor& w, float scale) {
  auto x = w.detach().to(torch::kCPU, torch::kFloat32).contiguous();
  auto out = torch::empty(x.sizes(), torch::kUInt8);
  const float* src = x.data_ptr<float>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  for (int64_t i = 0; i < x.numel(); ++i) dst[i] = nvfp4::e4m3_encode(src[i] / scale);
  return out;
}

// The quant_algo of a quantized Linear's hook.
std::string algo_of(const NvFp4LinearQuant& h) {
  if (h.fp8) return kFp8Algo;
  return quant_algo_name(h.quantize_inputs ? NvFp4Format::kW4A4 : NvFp4Format::kW4A16);
}

}  // namespace

NvFp4Format export_format(const model::CausalLM& lm) {
  std::set<std::string> algos;
  for (const auto& l : lm->linears()) {
    if (const auto* h = nvfp4_hook(l)) algos.insert(algo_of(*h));
  }
  if (algos.size() > 1 || algos.count(kFp8Algo)) return NvFp4Format::kMixed;
  return algos.count(quant_algo_name(NvFp4Format::kW4A16)) ? NvFp4Format::kW4A16 : NvFp4Format::kW4A4;
}

NvFp4Format export_nvfp4(const model::CausalLM& lm, const fs::path& out_dir, const fs::path& source_dir) {
  std::error_code ec;
  if (!source_dir.empty() && fs::exists(out_dir, ec) && fs::exists(source_dir, ec)) {
    QAD_CHECK(!fs::equivalent(out_dir, source_dir, ec), "export: --out {} is the source model directory; choose "
              "another directory", out_dir.string());
  }
  if (fs::exists(out_dir, ec)) {
    QAD_CHECK(fs::is_directory(out_dir, ec), "export: {} exists and is not a directory", out_dir.string());
    const bool empty = fs::directory_iterator(out_dir, ec) == fs::directory_iterator();
    QAD_CHECK(empty || fs::exists(out_dir / "hf_quant_config.json", ec),
              "export: {} exists and is not an NVFP4 export (no hf_quant_config.json); remove it or choose a new "
              "directory", out_dir.string());
  }

  // Every quantized module must be exportable as the engines read it. The format is the hooks': all quantize their
  // inputs (W4A4, "NVFP4"), none does (weight-only W4A16, "W4A16_NVFP4"), or a mix, or FP8 layers: ModelOpt's
  // MIXED_PRECISION with a quant_algo per Linear.
  std::map<std::string, NvFp4LinearQuant*> hooks;
  std::map<std::string, std::string> algos;                     // module -> quant_algo
  std::map<std::string, std::string> group_algo;                // fused group -> quant_algo
  std::map<std::string, std::pair<float, float>> group_scales;  // group -> (input amax or 0, weight amax)
  for (const auto& l : lm->linears()) {
    auto* h = nvfp4_hook(l);
    if (h == nullptr) continue;
    const auto& m = l->name();
    QAD_CHECK(h->fp8 || l->in_features() % 16 == 0, "export: {} has input size {}, not a multiple of 16; NVFP4 "
              "engines cannot load it (apply_nvfp4 leaves such Linears unquantized)", m, l->in_features());
    QAD_CHECK(!h->fp8 || h->quantize_inputs, "export: {} is FP8 without input quantization; FP8 layers are W8A8 with "
              "a static input_scale", m);
    algos[m] = algo_of(*h);
    if (auto g = fused_group(m); !g.empty()) {
      auto [it, fresh] = group_algo.emplace(g, algos[m]);
      QAD_CHECK(fresh || it->second == algos[m], "export: fused group {} mixes quant_algo {} ({}) and {}; engines run "
                "it as one GEMM, so its modules need one format", g, algos[m], m, it->second);
    }
    QAD_CHECK(h->weight_amax.defined() && (!h->quantize_inputs || h->input_amax.defined()) &&
                  (!h->static_block_scales || h->block_scale.defined()),
              "export: {} is not calibrated (run quant::calibrate or load a quantizer state first)", m);
    const float ia = h->quantize_inputs ? scalar(h->input_amax) : 0.0f, wa = scalar(h->weight_amax);
    QAD_CHECK(std::isfinite(ia) && std::isfinite(wa) && ia >= 0 && wa >= 0, "export: {} has amaxes input {} weight {}; "
              "they must be finite", m, ia, wa);
    if (auto g = fused_group(m); !g.empty()) {
      auto [it, fresh] = group_scales.emplace(g, std::make_pair(ia, wa));
      QAD_CHECK(fresh || (it->second.first == ia && it->second.second == wa),
                "export: fused group {} has different scales across its modules ({}: input amax {} weight amax {} vs "
                "{} {}); engines need them shared: run quant::calibrate", g, m, ia, wa, it->second.first,
                it->second.second);
    }
    hooks[m] = h;
  }
  QAD_CHECK(!hooks.empty(), "export: the model has no NVFP4-quantized Linear (call quant::apply_nvfp4 and "
            "quant::calibrate first)");
  const auto format = export_format(lm);

  // The FP8 KV cache: all attention layers or none, each with both scales calibrated (engines read a scale <= 0
  // as missing and fall back to 1.0, which would not be the model that was trained).
  const auto kv = kv_hooks(lm);
  const bool fp8_kv = has_fp8_kv_cache(lm);
  if (fp8_kv) {
    for (size_t i = 0; i < kv.size(); ++i) {
      QAD_CHECK(kv[i] != nullptr, "export: attention layer {} has no FP8 KV-cache quantizer but others have; an "
                "FP8 KV cache covers every layer (quant::apply_nvfp4 with kv_cache fp8 installs them all)", i);
      QAD_CHECK(kv[i]->k_scale.defined() && kv[i]->v_scale.defined(), "export: {}'s FP8 KV-cache scales are not "
                "calibrated (run quant::calibrate or load a quantizer state first)", kv[i]->attention());
      for (const auto* s : {&kv[i]->k_scale, &kv[i]->v_scale}) {
        const float v = scalar(*s);
        QAD_CHECK(std::isfinite(v) && v > 0.0f, "export: {} has a KV-cache scale of {}; it must be finite and > 0",
                  kv[i]->attention(), v);
      }
    }
  }

  TensorList out;
  torch::NoGradGuard no_grad;
  for (const auto& [name, t] : lm->hf_tensors()) {
    const std::string module = name.ends_with(".weight") ? name.substr(0, name.size() - 7) : std::string();
    auto it = hooks.find(module);
    if (it == hooks.end()) {
      out.add(name, t);
      continue;
    }
    auto* h = it->second;
    QAD_CHECK(torch::isfinite(t).all().item<bool>(), "export: tensor '{}' has NaN or Inf; refusing to write it",
              name);
    if (h->fp8) {  // FP8 E4M3 weight, per-tensor weight_scale and static input_scale (ModelOpt's FP8 names)
      const float ws = fp8_kv_scale(scalar(h->weight_amax)), is = fp8_kv_scale(scalar(h->input_amax));
      out.add(module + ".weight", fp8_codes(t, ws), io::DType::F8_E4M3);
      out.add(module + ".weight_scale", torch::full({}, ws, torch::kFloat32), io::DType::F32);
      out.add(module + ".input_scale", torch::full({}, is, torch::kFloat32), io::DType::F32);
      continue;
    }
    const auto amax = h->weight_amax.to(t.device(), torch::kFloat32).reshape({});
    auto q = h->static_block_scales ? nvfp4::quantize_with_block_scales(t.detach(), h->block_scale.to(t.device()), amax)
                                    : nvfp4::quantize(t.detach(), amax);
    out.add(module + ".weight", q.packed, io::DType::U8);
    out.add(module + ".weight_scale", q.block_scales, io::DType::F8_E4M3);
    out.add(module + ".weight_scale_2", q.global_scale.reshape({}), io::DType::F32);
    if (!h->quantize_inputs) continue;  // weight-only: the engine runs the activations as they are
    const float in_scale = nvfp4::global_decode_scale(scalar(h->input_amax));
    out.add(module + ".input_scale", torch::full({}, in_scale, torch::kFloat32), io::DType::F32);
  }
  if (fp8_kv) {
    for (const auto* h : kv) {
      out.add(h->k_scale_name(), torch::full({}, scalar(h->k_scale), torch::kFloat32), io::DType::F32);
      out.add(h->v_scale_name(), torch::full({}, scalar(h->v_scale), torch::kFloat32), io::DType::F32);
    }
  }

  const auto exclude = unquantized_modules(lm);
  const auto dtype = lm->model->embed_tokens->weight.scalar_type();
  auto config = model::config_json_for_save(lm->config(), model::dtype_config_name(dtype));
  const bool mixed = format == NvFp4Format::kMixed;
  config["quantization_config"] = mixed ? mixed_config_quantization_json(algos, exclude, fp8_kv)
                                        : config_quantization_json(exclude, format, fp8_kv);
  const auto hf_quant = mixed ? mixed_hf_quant_config_json(algos, exclude, fp8_kv)
                              : hf_quant_config_json(exclude, format, fp8_kv);

  std::vector<fs::path> companions;
  if (!source_dir.empty()) {
    for (const auto& e : fs::directory_iterator(source_dir)) {
      if (e.is_regular_file() && is_companion_file(e.path().filename().string())) companions.push_back(e.path());
    }
    if (companions.empty()) {
      fmt::print(stderr, "qad: warning: {} has no tokenizer files; the export has none either\n", source_dir.string());
    }
  }
  write_directory_atomic(out_dir, [&](const fs::path& tmp) {
    // One model.safetensors up to HF's 5 GB shard size, shards plus an index above it.
    io::write_checkpoint(tmp, out.refs(), {.max_shard_bytes = out.bytes() > kShardBytes ? kShardBytes : 0});
    for (const auto& c : companions) {
      fs::copy_file(c, tmp / c.filename());
      // Sources may be read-only (a shared model store); the export is the user's to edit.
      fs::permissions(tmp / c.filename(), fs::perms::owner_read | fs::perms::owner_write, fs::perm_options::add);
    }
    write_file_atomic(tmp / "config.json", model::dump_json_nonfinite(config) + "\n");
    // Written last: its presence marks a complete export.
    write_file_atomic(tmp / "hf_quant_config.json", hf_quant.dump(2) + "\n");
  });
  return format;
}

}  // namespace qad::quant
