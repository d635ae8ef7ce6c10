// `qad quantize`: PTQ of an HF checkpoint to NVFP4 — apply the quantization config, calibrate on a token dataset
// (qad data prepare) or on jsonl / txt text (tokenized with the model's tokenizer), export the ModelOpt layout.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <filesystem>

#include "cli/commands.h"
#include "data/batch_tensors.h"
#include "data/dataset.h"
#include "data/document_encoder.h"
#include "data/line_reader.h"
#include "data/loader.h"
#include "data/record.h"
#include "model/causal_lm.h"
#include "quant/quantize_model.h"
#include "util/error.h"
#include "util/output_check.h"
#include "util/torch_compat.h"

namespace qad::cli {
namespace {
namespace fs = std::filesystem;

struct QuantizeArgs {
  std::string model, calib_data, out, method = "max", device = "auto", dtype = "auto", config;
  int64_t calib_samples = 512, seq_len = 512, batch_size = 8;
  std::vector<std::string> exclude, include;
};

// Batches from a prepared token dataset: packed windows of seq_len in a fixed shuffled order.
quant::BatchSource dataset_batches(const QuantizeArgs& a, int64_t vocab) {
  return [&a, vocab](const quant::BatchSink& sink) {
    data::LoaderOptions o;
    o.seq_len = a.seq_len;
    o.batch_size = a.batch_size;
    o.split = data::Split::all;
    o.drop_last = false;
    o.seed = 0;
    data::Loader loader(a.calib_data, o);
    QAD_CHECK(loader.dataset().vocab_size() <= vocab, "--calib-data {}: its tokenizer has {} ids but the model only "
              "{}; prepare the data with the model's tokenizer", a.calib_data, loader.dataset().vocab_size(), vocab);
    int64_t rows = 0;
    for (int64_t s = 0; s < loader.steps_per_epoch() && rows < a.calib_samples; ++s) {
      auto t = data::to_tensors(loader.next());
      sink(t.input_ids, t.attention_mask);
      rows += t.input_ids.size(0);
    }
  };
}

// Batches from text: documents tokenized with the model's tokenizer, joined into one stream (BOS before each
// document when the model has one) and cut into windows of seq_len.
quant::BatchSource text_batches(const QuantizeArgs& a, const model::ModelConfig& config) {
  return [&a, &config](const quant::BatchSink& sink) {
    auto encoder = data::make_tokenizer_encoder(a.model);
    std::vector<int64_t> stream, batch;
    int64_t rows = 0, in_batch = 0;
    auto flush = [&] {
      if (in_batch == 0) return;
      sink(torch::tensor(batch, torch::kLong).reshape({in_batch, a.seq_len}), {});
      batch.clear();
      in_batch = 0;
    };
    auto add = [&](const data::EncodedDocument& d) {
      if (config.bos_token_id) stream.push_back(*config.bos_token_id);
      stream.insert(stream.end(), d.ids.begin(), d.ids.end());
      while (static_cast<int64_t>(stream.size()) >= a.seq_len && rows < a.calib_samples) {
        batch.insert(batch.end(), stream.begin(), stream.begin() + a.seq_len);
        stream.erase(stream.begin(), stream.begin() + a.seq_len);
        ++rows;
        if (++in_batch == a.batch_size) flush();
      }
    };
    const fs::path path(a.calib_data);
    const auto ext = data::strip_compression_suffix(path).extension();
    if (ext == ".jsonl" || ext == ".json") {
      data::LineReader reader(path);
      std::string_view line;
      while (rows < a.calib_samples && reader.next(line)) {
        auto r = data::parse_jsonl_line(line, {});
        if (r.kind == data::Record::Kind::text) {
          add(encoder->encode_text(r.text));
        } else if (r.kind == data::Record::Kind::chat) {
          add(encoder->encode_chat(r.messages));
        } else if (r.kind == data::Record::Kind::bad) {
          fmt::print(stderr, "qad: warning: {}:{}: skipped ({}: {})\n", path.string(), reader.line_number(),
                     data::reason_name(r.reason), r.detail);
        }
      }
    } else {
      int64_t line = 0;
      auto r = data::parse_text_file(data::read_all(path), line);
      QAD_CHECK(r.kind == data::Record::Kind::text, "--calib-data {}:{}: {}", path.string(), line, r.detail);
      add(encoder->encode_text(r.text));
    }
    flush();
    QAD_CHECK(rows > 0, "--calib-data {}: not even one window of {} tokens; give more text or a smaller --seq-len",
              path.string(), a.seq_len);
  };
}

torch::ScalarType parse_dtype(const std::string& name, const model::ModelConfig& config) {
  const std::string n = name == "auto" ? config.dtype : name;
  if (n == "float32") return torch::kFloat32;
  if (n == "bfloat16") return torch::kBFloat16;
  if (n == "float16") return torch::kFloat16;
  fail("--dtype '{}' is not one of auto, float32, bfloat16, float16", n);
}

int run(const QuantizeArgs& a) {
  torch::Device device(torch::kCPU);
  if (a.device == "cuda" || (a.device == "auto" && compat::cuda_available())) {
    QAD_CHECK(compat::cuda_available(), "--device cuda: no CUDA device is visible");
    device = torch::Device(torch::kCUDA);
  } else {
    QAD_CHECK(a.device == "cpu" || a.device == "auto", "--device must be cpu, cuda or auto, got '{}'", a.device);
  }
  QAD_CHECK(fs::exists(a.calib_data), "--calib-data {}: no such file or directory", a.calib_data);
  check_output_writable(a.out, "--out");  // before an hour of calibration, not after
  QAD_CHECK(!quant::is_nvfp4_checkpoint(a.model), "--model {} is already an NVFP4 checkpoint", a.model);

  quant::QuantConfig cfg;
  if (!a.config.empty()) {
    YAML::Node root;
    try {
      root = YAML::LoadFile(a.config);
    } catch (const YAML::Exception& e) {
      fail("--config {}: {}", a.config, e.what());
    }
    cfg = quant::quant_config_from_yaml(root["quant"] ? root["quant"] : root);
  }
  cfg.method = quant::parse_calib_method(a.method);
  cfg.calib_samples = a.calib_samples;
  if (!a.include.empty()) cfg.include = a.include;
  cfg.exclude.insert(cfg.exclude.end(), a.exclude.begin(), a.exclude.end());

  const auto config = model::load_config(a.model);
  auto lm = model::CausalLM::load(a.model, device, parse_dtype(a.dtype, config));
  lm->eval();
  auto names = quant::apply_nvfp4(lm, cfg);
  QAD_CHECK(!names.empty(), "no Linear matches the quantization config (include {}, exclude {})",
            fmt::join(cfg.include, " "), fmt::join(cfg.exclude, " "));
  fmt::print(stderr, "quantizing {} Linear layers; left in high precision: {}\n", names.size(),
             fmt::join(quant::unquantized_modules(lm), ", "));
  const bool is_dataset = fs::is_directory(a.calib_data) && data::looks_like_dataset(a.calib_data);
  quant::calibrate(lm, is_dataset ? dataset_batches(a, config.vocab_size) : text_batches(a, config), cfg);
  quant::export_nvfp4(lm, a.out, a.model);
  fmt::print("wrote {} (NVFP4, {} quantized Linear layers, {} calibration)\n", a.out, names.size(), a.method);
  return 0;
}

}  // namespace

void register_quantize(CLI::App& app) {
  auto a = std::make_shared<QuantizeArgs>();
  auto* cmd = app.add_subcommand("quantize", "PTQ: calibrate an HF checkpoint and export it as NVFP4 (ModelOpt layout)");
  cmd->add_option("--model", a->model, "HF model directory (config.json, safetensors, tokenizer)")->required();
  cmd->add_option("--calib-data", a->calib_data,
                  "calibration data: a token dataset directory (qad data prepare) or a .jsonl / .txt file, optionally "
                  ".xz / .zst")->required();
  cmd->add_option("--out", a->out, "output directory (written atomically)")->required();
  cmd->add_option("--calib-samples", a->calib_samples, "calibration sequences")->check(CLI::PositiveNumber);
  cmd->add_option("--method", a->method, "weight calibration: max or mse (activations always max)")
      ->check(CLI::IsMember({"max", "mse"}));
  cmd->add_option("--exclude", a->exclude, "more module globs to leave unquantized (added to the defaults: lm_head, "
                  "*embed_tokens*, *norm*, *router*, *.gate)");
  cmd->add_option("--include", a->include, "module globs to quantize (default *)");
  cmd->add_option("--config", a->config, "YAML file with a quant: section (docs/quant.md); flags override it");
  cmd->add_option("--seq-len", a->seq_len, "tokens per calibration sequence")->check(CLI::PositiveNumber);
  cmd->add_option("--batch-size", a->batch_size, "sequences per forward")->check(CLI::PositiveNumber);
  cmd->add_option("--device", a->device, "cpu, cuda or auto");
  cmd->add_option("--dtype", a->dtype, "model dtype while calibrating and of the unquantized tensors: auto (the "
                  "checkpoint's), float32, bfloat16, float16");
  cmd->callback([a] {
    if (int rc = run(*a); rc != 0) throw CLI::RuntimeError(rc);
  });
}

QAD_REGISTER_COMMAND(150, register_quantize);

}  // namespace qad::cli
