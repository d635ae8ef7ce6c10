// `qad quantize`: PTQ of an HF checkpoint to NVFP4 — apply the quantization config, calibrate on a token dataset
// (qad data prepare) or on jsonl / txt text (prepared the same way on the fly), export the ModelOpt layout. The
// calibration rows are data/calibration_rows.h's, the ones `qad distill --method ptq` uses.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <unistd.h>

#include <filesystem>

#include "checkpoint/load.h"
#include "cli/commands.h"
#include "data/batch_tensors.h"
#include "data/calibration_rows.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "util/remove_tree.h"
#include "model/causal_lm.h"
#include "model/device.h"
#include "quant/quantize_model.h"
#include "train/config.h"
#include "train/data_source.h"
#include "util/error.h"
#include "util/output_check.h"
#include "util/torch_compat.h"

namespace qad::cli {
namespace {
namespace fs = std::filesystem;

struct QuantizeArgs {
  std::string model, calib_data, out, method = "max", device = "auto", dtype = "auto", config;
  int64_t calib_samples = 512, seq_len = 512, batch_size = 8;
  uint64_t seed = 0;
  std::string doc_end = "eos", bos = "auto";
  std::vector<std::string> exclude, include, fp8;
  bool weight_only = false;
  std::string kv_cache;  // empty: the --config's quant.kv_cache (default none)
  std::string block_scales;  // empty: the --config's quant.block_scales (default dynamic)
};

// The token dataset to calibrate on: --calib-data itself, or .jsonl / .txt text prepared exactly as `qad distill`
// prepares its data (train::resolve_dataset: the model's tokenizer, --bos, --doc-end) into a scratch directory
// removed afterwards.
class CalibrationDataset {
 public:
  explicit CalibrationDataset(const QuantizeArgs& a)
      : scratch_(fs::temp_directory_path() / fmt::format("qad-calib-{}", ::getpid())) {
    remove_tree(scratch_);
    dir_ = train::resolve_dataset(a.calib_data, a.model, scratch_, "calib", 0.0, a.doc_end, a.bos);
  }
  ~CalibrationDataset() {
    std::error_code ec;
    remove_tree(scratch_, ec);
  }
  CalibrationDataset(const CalibrationDataset&) = delete;
  CalibrationDataset& operator=(const CalibrationDataset&) = delete;
  const fs::path& dir() const { return dir_; }

 private:
  fs::path scratch_, dir_;
};

// data/calibration_rows.h: the rows `qad distill --method ptq` calibrates on for the same data, --seq-len,
// --batch-size and --seed (its data.seed).
quant::BatchSource calibration_batches(const QuantizeArgs& a, const fs::path& dataset, int64_t vocab,
                                       torch::Device device) {
  return [&a, dataset, vocab, device](const quant::BatchSink& sink) {
    data::LoaderOptions o;
    o.seq_len = a.seq_len;
    o.batch_size = a.batch_size;
    o.seed = a.seed;
    data::Loader loader(dataset, data::calibration_loader_options(o));
    QAD_CHECK(loader.dataset().vocab_size() <= vocab, "--calib-data {}: its tokenizer has {} ids but the model only "
              "{}; prepare the data with the model's tokenizer", a.calib_data, loader.dataset().vocab_size(), vocab);
    data::for_each_calibration_batch(loader, a.calib_samples, device, [&](const data::BatchTensors& b) {
      sink(b.input_ids, b.attention_mask.all().item<bool>() ? torch::Tensor() : b.attention_mask);
    });
  };
}

int run(const QuantizeArgs& a) {
  const auto device = model::parse_device(a.device);
  QAD_CHECK(fs::exists(a.calib_data), "--calib-data {}: no such file or directory", a.calib_data);
  check_output_writable(a.out, "--out");  // before an hour of calibration, not after
  // PTQ starts from high-precision weights: an HF checkpoint (an unquantized run's is RUN/export/hf).
  const auto kind = checkpoint::detect(a.model);
  QAD_CHECK(kind != checkpoint::Kind::kNvfp4Export, "--model {} is already an NVFP4 checkpoint", a.model);
  QAD_CHECK(kind != checkpoint::Kind::kTrainingCheckpoint, "--model {} is a training checkpoint; its NVFP4 export is "
            "RUN/export/nvfp4 (an unquantized run's model is RUN/export/hf, which qad quantize takes)", a.model);

  quant::QuantConfig cfg;
  if (!a.config.empty()) {
    const auto root = train::load_recipe(a.config);  // YAML as JSON, read like a distill recipe
    // The quant: section's keys, or a distill recipe's quant.options (one recipe file serves both commands).
    const bool options = root.contains("quant") && root["quant"].is_object() && root["quant"].contains("options");
    cfg = quant::quant_config_from_json(options ? root["quant"]["options"] : root.contains("quant") ? root["quant"] : root,
                                        a.config + (options ? ": quant.options" : ": quant"));
  }
  cfg.method = quant::parse_calib_method(a.method);
  cfg.calib_samples = a.calib_samples;
  if (a.weight_only) cfg.quantize_inputs = false;
  if (!a.kv_cache.empty()) cfg.kv_cache = quant::parse_kv_cache(a.kv_cache);
  if (!a.block_scales.empty()) cfg.block_scales = quant::parse_block_scales(a.block_scales);
  if (!a.include.empty()) cfg.include = a.include;
  cfg.exclude.insert(cfg.exclude.end(), a.exclude.begin(), a.exclude.end());
  cfg.fp8_layers.insert(cfg.fp8_layers.end(), a.fp8.begin(), a.fp8.end());

  const auto config = model::load_config(a.model);
  // auto = the checkpoint's own dtype (config.json).
  auto lm = model::CausalLM::load(a.model, device, model::parse_dtype(a.dtype == "auto" ? config.dtype : a.dtype, torch::kFloat32));
  lm->eval();
  auto names = quant::apply_nvfp4(lm, cfg);
  QAD_CHECK(!names.empty(), "no Linear matches the quantization config (include {}, exclude {})",
            fmt::join(cfg.include, " "), fmt::join(cfg.exclude, " "));
  fmt::print(stderr, "quantizing {} Linear layers; left in high precision: {}\n", names.size(),
             fmt::join(quant::unquantized_modules(lm), ", "));
  const CalibrationDataset dataset(a);
  quant::calibrate(lm, calibration_batches(a, dataset.dir(), config.vocab_size, device), cfg);
  const auto format = quant::export_nvfp4(lm, a.out, a.model);  // --config may make it weight-only too
  fmt::print("wrote {} ({}, {} quantized Linear layers, {} calibration{})\n", a.out,
             quant::format_label(format, quant::has_fp8_kv_cache(lm)), names.size(), a.method,
             quant::has_static_block_scales(lm) ? ", static MSE block scales" : "");
  return 0;
}

}  // namespace

void register_quantize(CLI::App& app) {
  auto a = std::make_shared<QuantizeArgs>();
  auto* cmd = app.add_subcommand("quantize", "PTQ: calibrate an HF checkpoint and export it as NVFP4 (ModelOpt layout)");
  cmd->footer("Examples:\n  qad quantize --model ../shared/models/qwen3-16m-teacher --calib-data ../shared/corpus/prose_train.jsonl.xz --out qwen3-16m-nvfp4 --method mse\n"
              "  qad quantize --model ../shared/models/qwen3-16m-teacher --calib-data ../shared/corpus/prose_train.jsonl.xz --out qwen3-16m-w4a16 --weight-only\n"
              "  qad quantize --model ../shared/models/qwen3-16m-teacher --calib-data ../shared/corpus/prose_train.jsonl.xz --out qwen3-16m-nvfp4-kv-fp8 --config recipes/nvfp4_kv_fp8.yaml\n"
              "  qad quantize --model ../shared/models/qwen3-16m-teacher --calib-data ../shared/corpus/prose_train.jsonl.xz --out qwen3-16m-nvfp4-static --block-scales static_mse");  // each one is run by tests/usage
  cmd->add_option("--model", a->model, "HF model directory (config.json, safetensors, tokenizer)")->required();
  cmd->add_option("--calib-data", a->calib_data,
                  "calibration data: a token dataset directory (qad data prepare) or a .jsonl / .txt file, optionally "
                  ".xz / .zst")->required();
  cmd->add_option("--out", a->out, "output directory (written atomically)")->required();
  cmd->add_option("--calib-samples", a->calib_samples, "calibration rows of --seq-len tokens (docs/quant.md, \"The PTQ "
                  "baseline\")")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--seed", a->seed, "order of the calibration rows (the data.seed of qad distill)")->capture_default_str();
  cmd->add_option("--bos", a->bos, "text --calib-data: documents start with the tokenizer template's special "
                  "tokens (auto) or nothing (never)")->capture_default_str();
  cmd->add_option("--doc-end", a->doc_end, "text --calib-data: documents end with eos, none, a token or an id")
      ->capture_default_str();
  cmd->add_option("--method", a->method, "weight calibration: max or mse (activations always max)")
      ->check(CLI::IsMember({"max", "mse"}));
  cmd->add_option("--exclude", a->exclude, "more module globs to leave unquantized (added to the defaults: lm_head, "
                  "*embed_tokens*, *norm*, *router*, *.gate)");
  cmd->add_option("--include", a->include, "module globs to quantize (default *)");
  cmd->add_option("--fp8", a->fp8, "module globs quantized to FP8 (W8A8, per-tensor scales) instead of NVFP4 or high "
                  "precision, also excluded ones (e.g. lm_head); the export is MIXED_PRECISION (docs/quant.md)");
  cmd->add_flag("--weight-only", a->weight_only, "NVFP4 weights, activations left in the model's dtype: exports "
                "W4A16_NVFP4 (no input_scale), what Hopper GPUs serve");
  cmd->add_option("--kv-cache", a->kv_cache, "KV cache: none, or fp8 (FP8 E4M3 with a calibrated per-layer k_scale / "
                  "v_scale, kv_cache_quant_algo FP8; ModelOpt's nvfp4_default-kv_fp8). Default: --config's "
                  "quant.kv_cache, else none")->check(CLI::IsMember({"none", "fp8"}));
  cmd->add_option("--block-scales", a->block_scales, "weight block scales: dynamic (from the weight, as the engines "
                  "derive them), or static_mse (each block's E4M3 scale chosen by an MSE search over all 126 codes, "
                  "exported as weight_scale; ModelOpt's static NVFP4 with its FP8 scale sweep). Default: --config's "
                  "quant.block_scales, else dynamic")->check(CLI::IsMember({"dynamic", "static_mse"}));
  cmd->add_option("--config", a->config, "YAML file with a quant: section (docs/quant.md); flags override it");
  cmd->add_option("--seq-len", a->seq_len, "tokens per calibration row")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--batch-size", a->batch_size, "rows per forward")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--device", a->device, "auto, cpu, cuda or cuda:N")->capture_default_str();
  cmd->add_option("--dtype", a->dtype, "model dtype while calibrating and of the unquantized tensors: auto (the "
                  "checkpoint's), float32, bfloat16, float16");
  cmd->callback([a] {
    if (int rc = run(*a); rc != 0) throw CLI::RuntimeError(rc);
  });
}

QAD_REGISTER_COMMAND(150, register_quantize);

}  // namespace qad::cli
