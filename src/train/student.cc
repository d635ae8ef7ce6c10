// The student and every call into the quantization library (see student.h).
#include "train/student.h"

#include <fmt/format.h>

#include <map>

#include "checkpoint/load.h"
#include "io/safetensors_torch.h"
#include "model/config.h"
#include "model/param_count.h"
#include "util/atomic_file.h"
#include "util/error.h"

#include "quant/linear_quant.h"
#include "quant/quantize_model.h"

namespace qad::train {
namespace fs = std::filesystem;

bool method_quantizes(Method m) { return m != Method::kPretrain; }

int64_t fake_quantized_weight_elements(const model::ModelConfig& config, const TrainConfig& cfg) {
  if (!method_quantizes(cfg.method)) return 0;
  const auto& q = cfg.quant.options;
  auto any = [](const std::vector<std::string>& globs, const std::string& name) {
    for (const auto& g : globs) {
      if (quant::glob_match(g, name)) return true;
    }
    return false;
  };
  std::vector<std::string> kept;
  for (int64_t b : quant::kept_blocks(config, q.keep_blocks)) kept.push_back(fmt::format("backbone.layers.{}.mixer.*", b));
  int64_t n = 0;
  for (const auto& l : model::linear_shapes(config)) {
    if (l.tied || any(kept, l.name)) continue;
    bool on = any(q.include, l.name) && !any(q.exclude, l.name);
    for (const auto& ov : q.overrides) {
      if (ov.quantize && quant::glob_match(ov.pattern, l.name)) on = *ov.quantize;
    }
    const bool fp8 = any(q.fp8_layers, l.name);
    if (fp8 || (on && l.in_features % 16 == 0)) n += l.in_features * l.out_features;
  }
  return n;
}

int64_t calibration_samples(const TrainConfig& cfg) {
  // calib_batches global batches (batch_size x world_size x grad_accum rows each), read on every rank
  // (data_source.cc): W ranks and one process with W micro-batches calibrate on the same rows.
  return cfg.quant.options.calib_samples > 0
             ? cfg.quant.options.calib_samples
             : cfg.quant.calib_batches * cfg.data.batch_size * cfg.dist.world_size * cfg.optim.grad_accum;
}

namespace {
quant::QuantConfig quant_config(const TrainConfig& cfg) {
  auto qc = cfg.quant.options;
  qc.calib_samples = calibration_samples(cfg);
  return qc;
}
}  // namespace

Student build_student(const TrainConfig& cfg, torch::Device device, torch::ScalarType dtype, const CalibSource& calib,
                      bool calibrate) {
  Student s;
  if (!method_quantizes(cfg.method)) {
    s.lm = checkpoint::load_model(cfg.run.teacher, device, dtype);
    return s;
  }
  const auto qc = quant_config(cfg);
  s.lm = checkpoint::load_model(cfg.quant.student.empty() ? cfg.run.teacher : cfg.quant.student, device, dtype);
  if (!cfg.quant.student.empty() && !quant::quantized_modules(s.lm).empty()) {
    quant::enable_weight_fake_quant(s.lm, true);  // an NVFP4 export's weights are trained from here on
    // The checkpoint's format against the run's setting, so that run.json says what is trained: a weight-only
    // checkpoint has no input scales to train W4A4 with; a W4A4 one trained --weight-only drops its input scales.
    bool quantizes_inputs = false;
    for (const auto& l : s.lm->linears()) {
      if (auto* h = quant::nvfp4_hook(l); h != nullptr && h->quantize_inputs && !h->fp8) quantizes_inputs = true;
    }
    QAD_CHECK(quantizes_inputs || !qc.quantize_inputs, "--student {} is weight-only (W4A16_NVFP4: no input scales); "
              "add --weight-only (quant.options.quantize_inputs=false) to train it as such", cfg.quant.student);
    if (!qc.quantize_inputs) {
      for (const auto& l : s.lm->linears()) {
        if (auto* h = quant::nvfp4_hook(l); h != nullptr && !h->fp8) h->quantize_inputs = false;  // FP8 stays W8A8
      }
    }
    // The KV cache likewise: a checkpoint without k_scale / v_scale cannot train an FP8 KV cache (nothing here
    // calibrates it); one with them trained with kv_cache none drops them.
    const bool fp8_kv = quant::has_fp8_kv_cache(s.lm);
    QAD_CHECK(fp8_kv || qc.kv_cache == quant::KvCacheQuant::kNone, "--student {} has no FP8 KV-cache scales "
              "(kv_cache_quant_algo null); train it with quant.options.kv_cache=none, or quantize the teacher with "
              "--kv-cache fp8 instead of starting from this checkpoint", cfg.quant.student);
    if (fp8_kv && qc.kv_cache == quant::KvCacheQuant::kNone) {
      fmt::print(stderr, "qad: warning: --student {} has an FP8 KV cache; this run has quant.options.kv_cache none, "
                 "so it trains and exports the KV cache in high precision (--kv-cache fp8 keeps it)\n",
                 cfg.quant.student);
      quant::remove_kv_cache_quant(s.lm);
    }
    // Block scales: an NVFP4 export's weight_scale trains frozen with block_scales static_mse (they are the
    // student's static scales, not searched again); with dynamic ones (the default) they follow the live weights.
    if (qc.block_scales == quant::BlockScales::kDynamic) quant::use_dynamic_block_scales(s.lm);
  } else {
    quant::apply_nvfp4(s.lm, qc);
    if (calibrate) quant::calibrate(s.lm, calib, qc);
  }
  s.quantized = true;
  s.quantized_modules = quant::quantized_modules(s.lm);
  return s;
}

Student quantize_student(model::CausalLM lm, const TrainConfig& cfg, const CalibSource& calib) {
  Student s;
  s.lm = std::move(lm);
  const auto qc = quant_config(cfg);
  quant::apply_nvfp4(s.lm, qc);
  quant::calibrate(s.lm, calib, qc);
  s.quantized = true;
  s.quantized_modules = quant::quantized_modules(s.lm);
  return s;
}

checkpoint::QuantizerSnapshot quantizer_state(const Student& s) {
  checkpoint::QuantizerSnapshot q;
  q.meta["quantized"] = s.quantized;
  q.meta["modules"] = s.quantized_modules;
  if (s.quantized) q.tensors = quant::quantizer_state(s.lm);
  return q;
}

void load_quantizer_state(Student& s, const TrainConfig& cfg, const checkpoint::QuantizerSnapshot& snap) {
  if (!s.quantized) return;
  quant::load_quantizer_state(s.lm, snap.tensors, quant_config(cfg));
  s.quantized_modules = quant::quantized_modules(s.lm);
}

namespace {
void copy_tokenizer_files(const fs::path& from, const fs::path& to) {
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"}) {
    if (fs::exists(from / f)) fs::copy_file(from / f, to / f, fs::copy_options::overwrite_existing);
  }
}
}  // namespace

std::string export_format_label(const Student& s) {
  if (!s.quantized) return "unquantized";
  return quant::format_label(quant::export_format(s.lm), quant::has_fp8_kv_cache(s.lm));
}

std::vector<fs::path> export_student(const Student& s, const TrainConfig& cfg, bool nvfp4, bool bf16) {
  std::vector<fs::path> out;
  const fs::path root = fs::path(cfg.run.out) / "export";
  const fs::path source = checkpoint::model_dir(cfg.run.teacher);  // config.json and tokenizer files
  fs::create_directories(root);
  if (nvfp4 && s.quantized) {
    quant::export_nvfp4(s.lm, root / "nvfp4", source);
    out.push_back(root / "nvfp4");
  }
  if (!s.quantized) {
    s.lm->save(root / "hf");
    copy_tokenizer_files(source, root / "hf");
    out.push_back(root / "hf");
  }
  if (bf16) {
    torch::NoGradGuard ng;
    io::NamedTensors tensors;
    std::map<std::string, model::Linear> by_weight;
    for (const auto& l : s.lm->linears()) by_weight.emplace(l->name() + ".weight", l);
    for (const auto& [name, t] : s.lm->hf_tensors()) {
      auto w = t;
      auto it = by_weight.find(name);
      if (it != by_weight.end() && it->second->quant) w = it->second->quant->weight(t);
      tensors.emplace_back(name, w.to(torch::kCPU, torch::kBFloat16).contiguous());
    }
    const auto config = model::config_json_for_save(s.lm->config(), "bfloat16");
    write_directory_atomic(root / "bf16", [&](const fs::path& tmp) {
      write_file_atomic(tmp / "config.json", model::dump_json_nonfinite(config) + "\n");
      io::write_tensors_checkpoint(tmp, tensors);
      copy_tokenizer_files(source, tmp);
    });
    out.push_back(root / "bf16");
  }
  return out;
}

}  // namespace qad::train
