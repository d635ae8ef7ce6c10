// TrainConfig <-> JSON through one field list per section (so to_json, merge and the unknown-key check can
// never disagree), recipe YAML → JSON, and "section.key=value" overrides.
#include "train/config.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <cmath>
#include <limits>
#include <set>
#include <type_traits>

#include "model/device.h"
#include "util/error.h"

namespace qad::train {

// Calls f(key, member) for every setting of a section (key = member name). Outside the anonymous namespace so
// that argument-dependent lookup finds them from util/config_fields.h.
template <typename F> void fields(LossConfig& c, F&& f) {
  f("kl", c.kl); f("ce", c.ce); f("cka", c.cka); f("temperature", c.temperature);
  f("top_k", c.top_k); f("top_k_tail", c.top_k_tail); f("chunk_tokens", c.chunk_tokens); f("cka_estimator", c.cka_estimator);
  f("cka_subsample_tokens", c.cka_subsample_tokens); f("cka_dynamic_balance", c.cka_dynamic_balance);
  f("cka_layers", c.cka_layers); f("cka_tf32", c.cka_tf32); f("cka_bf16_products", c.cka_bf16_products); f("log_ce", c.log_ce);
  f("router_balance", c.router_balance);
}
template <typename F> void fields(OptimConfig& c, F&& f) {
  f("lr", c.lr); f("min_lr_ratio", c.min_lr_ratio); f("schedule", c.schedule);
  f("warmup_fraction", c.warmup_fraction); f("warmup_steps", c.warmup_steps); f("weight_decay", c.weight_decay);
  f("beta1", c.beta1); f("beta2", c.beta2); f("eps", c.eps); f("grad_clip", c.grad_clip);
  f("grad_accum", c.grad_accum); f("freeze_routers", c.freeze_routers); f("offload", c.offload);
}
template <typename F> void fields(DataConfig& c, F&& f) {
  f("path", c.path); f("valid_path", c.valid_path); f("seq_len", c.seq_len); f("batch_size", c.batch_size);
  f("mode", c.mode); f("valid_fraction", c.valid_fraction); f("seed", c.seed); f("doc_end", c.doc_end); f("bos", c.bos);
}
template <typename F> void fields(QuantConfig& c, F&& f) {
  f("calib_batches", c.calib_batches); f("student", c.student); f("options", c.options);
}
template <typename F> void fields(RunConfig& c, F&& f) {
  f("teacher", c.teacher); f("out", c.out); f("name", c.name); f("device", c.device); f("steps", c.steps);
  f("log_every", c.log_every); f("valid_every", c.valid_every); f("valid_batches", c.valid_batches);
  f("checkpoint_every", c.checkpoint_every); f("keep_checkpoints", c.keep_checkpoints);
  f("max_bad_steps", c.max_bad_steps); f("seed", c.seed); f("activation_checkpointing", c.activation_checkpointing);
  f("export_bf16", c.export_bf16); f("export_nvfp4", c.export_nvfp4); f("valid_tasks", c.valid_tasks);
  f("valid_task_items", c.valid_task_items); f("valid_task_max_new_tokens", c.valid_task_max_new_tokens);
  f("best_metric", c.best_metric); f("teacher_cache", c.teacher_cache);
}
template <typename F> void fields(DebugConfig& c, F&& f) {
  f("nan_at_steps", c.nan_at_steps); f("kill_at_step", c.kill_at_step); f("kill_rank", c.kill_rank);
  f("signal_at_steps", c.signal_at_steps); f("hold_at_step", c.hold_at_step);
  f("inf_weight_at_step", c.inf_weight_at_step); f("sequential_steps", c.sequential_steps);
  f("fused_adamw_on_cpu", c.fused_adamw_on_cpu);
}

namespace {

nlohmann::json yaml_to_json(const YAML::Node& n, const std::string& where) {
  switch (n.Type()) {
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      return nullptr;
    case YAML::NodeType::Sequence: {
      auto a = nlohmann::json::array();
      for (const auto& x : n) a.push_back(yaml_to_json(x, where));
      return a;
    }
    case YAML::NodeType::Map: {
      auto o = nlohmann::json::object();
      for (const auto& kv : n) o[kv.first.as<std::string>()] = yaml_to_json(kv.second, where);
      return o;
    }
    case YAML::NodeType::Scalar:
      break;
  }
  const std::string s = n.Scalar();
  if (n.Tag() == "!") return s;  // quoted
  return parse_override("x=" + s).at("x");
}

}  // namespace

std::string method_name(Method m) {
  switch (m) {
    case Method::kPtq: return "ptq";
    case Method::kQat: return "qat";
    case Method::kQad: return "qad";
    case Method::kCkaQad: return "cka-qad";
    case Method::kPretrain: return "pretrain";
  }
  return "?";
}

Method parse_method(const std::string& s) {
  for (Method m : {Method::kPtq, Method::kQat, Method::kQad, Method::kCkaQad, Method::kPretrain}) {
    if (s == method_name(m)) return m;
  }
  if (s == "cka_qad") return Method::kCkaQad;
  fail("unknown method '{}': use ptq, qat, qad, cka-qad or pretrain", s);
}

nlohmann::json TrainConfig::to_json() const {
  nlohmann::json j;
  j["method"] = method_name(method);
  j["loss"] = config::to_json(loss);
  j["optim"] = config::to_json(optim);
  j["data"] = config::to_json(data);
  j["quant"] = config::to_json(quant);
  j["run"] = config::to_json(run);
  j["debug"] = config::to_json(debug);
  return j;
}

void TrainConfig::merge_json(const nlohmann::json& j, const std::string& label) {
  QAD_CHECK(j.is_object(), "{}: expected a mapping at the top level", label);
  for (const auto& [k, v] : j.items()) {
    const std::string where = label + ": " + k;
    if (k == "method") {
      method = parse_method(v.get<std::string>());
    } else if (k == "loss") {
      config::merge_json(loss, v, where);
    } else if (k == "optim") {
      config::merge_json(optim, v, where);
    } else if (k == "data") {
      config::merge_json(data, v, where);
    } else if (k == "quant") {
      config::merge_json(quant, v, where);
    } else if (k == "run") {
      config::merge_json(run, v, where);
    } else if (k == "debug") {
      config::merge_json(debug, v, where);
    } else {
      fail("{}: unknown section '{}' (known: method, loss, optim, data, quant, run)", label, k);
    }
  }
}

namespace {

// One rule per setting: the message names the setting, its value and the allowed range, and nothing else.
struct Checker {
  template <typename T> void range(const char* name, T v, T lo, T hi, const char* rule) const {
    if constexpr (std::is_floating_point_v<T>) {
      QAD_CHECK(std::isfinite(v), "configuration: {} = {} is not a finite number; {}", name, v, rule);
    }
    QAD_CHECK(v >= lo && v <= hi, "configuration: {} = {}: {}", name, v, rule);
  }
  void that(bool ok, const std::string& what) const { QAD_CHECK(ok, "configuration: {}", what); }
};

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr int64_t kMaxInt = std::numeric_limits<int64_t>::max();

}  // namespace

void TrainConfig::validate() const {
  const Checker c;
  c.range("loss.kl", loss.kl, 0.0, kInf, "must be >= 0");
  c.range("loss.ce", loss.ce, 0.0, kInf, "must be >= 0");
  c.range("loss.cka", loss.cka, 0.0, kInf, "must be >= 0");
  c.that(method == Method::kPtq || loss.kl + loss.ce > 0 || loss.cka > 0,
         "every loss weight is 0: set loss.kl, loss.ce or loss.cka");
  c.that(method != Method::kPretrain || (loss.kl == 0 && loss.cka == 0),
         "pretrain has no teacher: only loss.ce may be non-zero");
  c.range("loss.temperature", loss.temperature, std::numeric_limits<double>::min(), kInf, "must be > 0");
  c.range("loss.router_balance", loss.router_balance, 0.0, kInf, "must be >= 0 (0 = off)");
  c.that(loss.router_balance == 0 || !run.activation_checkpointing,
         "loss.router_balance needs the router logits' gradient, which activation checkpointing drops: set "
         "run.activation_checkpointing false or loss.router_balance 0");
  c.range<int64_t>("loss.top_k", loss.top_k, 0, kMaxInt, "must be >= 0 (0 = full vocabulary)");
  c.that(!loss.top_k_tail || loss.top_k > 0 || !run.teacher_cache.empty(),
         "loss.top_k_tail is the tail category of the top-k KL, but loss.top_k is 0 (the full KL, which has no tail): "
         "set loss.top_k (--top-k K) or train from a teacher cache, or drop --top-k-tail");
  c.range<int64_t>("loss.chunk_tokens", loss.chunk_tokens, 1, kMaxInt, "must be >= 1");
  c.range<int64_t>("loss.cka_subsample_tokens", loss.cka_subsample_tokens, 0, kMaxInt, "must be >= 0 (0 = all)");
  c.that(loss.cka_estimator == "biased" || loss.cka_estimator == "debiased",
         "loss.cka_estimator must be biased or debiased, got '" + loss.cka_estimator + "'");
  // The fused AdamW takes the learning rate as float: a larger value would overflow there, not here.
  c.range("optim.lr", optim.lr, 0.0, static_cast<double>(std::numeric_limits<float>::max()), "must be >= 0 and below 3.4e38");
  c.range("optim.min_lr_ratio", optim.min_lr_ratio, 0.0, 1.0, "must be in [0, 1]");
  c.that(optim.schedule == "cosine" || optim.schedule == "linear" || optim.schedule == "constant",
         "optim.schedule must be cosine, linear or constant, got '" + optim.schedule + "'");
  c.range("optim.warmup_fraction", optim.warmup_fraction, 0.0, 1.0, "must be in [0, 1]");
  c.range<int64_t>("optim.warmup_steps", optim.warmup_steps, -1, kMaxInt, "must be >= 0 (-1 = use warmup_fraction)");
  c.that(optim.offload == "none" || optim.offload == "optimizer",
         "optim.offload must be none or optimizer (--offload), got '" + optim.offload + "'");
  c.range<int64_t>("optim.grad_accum", optim.grad_accum, 1, kMaxInt, "must be >= 1");
  c.range("optim.grad_clip", optim.grad_clip, 0.0, kInf, "must be >= 0 (0 = off)");
  c.range("optim.weight_decay", optim.weight_decay, 0.0, kInf, "must be >= 0");
  c.range("optim.beta1", optim.beta1, 0.0, std::nextafter(1.0, 0.0), "must be in [0, 1)");
  c.range("optim.beta2", optim.beta2, 0.0, std::nextafter(1.0, 0.0), "must be in [0, 1)");
  c.range("optim.eps", optim.eps, std::numeric_limits<double>::min(), kInf, "must be > 0");
  c.range<int64_t>("data.seq_len", data.seq_len, 2, kMaxInt, "must be >= 2");
  c.range<int64_t>("data.batch_size", data.batch_size, 1, kMaxInt, "must be >= 1");
  c.that(data.bos == "auto" || data.bos == "never", "data.bos must be auto or never, got '" + data.bos + "'");
  c.that(data.mode == "pack" || data.mode == "pad", "data.mode must be pack or pad, got '" + data.mode + "'");
  c.range("data.valid_fraction", data.valid_fraction, 0.0, std::nextafter(1.0, 0.0), "must be in [0, 1)");
  QAD_CHECK(model::is_device_name(run.device), "--device {}: unknown device; choose auto, cpu, cuda or cuda:N "
            "(run.device)", run.device);
  c.that(!run.teacher.empty(), "no teacher: pass --teacher DIR (run.teacher)");
  c.that(!run.out.empty(), "no run directory: pass --out DIR (run.out)");
  c.that(method == Method::kPtq || !data.path.empty(), "no data: pass --data PATH (data.path)");
  c.range<int64_t>("run.steps", run.steps, 0, kMaxInt, "must be >= 0");
  c.range<int64_t>("run.log_every", run.log_every, 1, kMaxInt, "must be >= 1");
  c.range<int64_t>("run.valid_every", run.valid_every, 0, kMaxInt, "must be >= 0 (0 = at the start and the end only)");
  c.range<int64_t>("run.valid_batches", run.valid_batches, 0, kMaxInt, "must be >= 0");
  c.range<int64_t>("run.checkpoint_every", run.checkpoint_every, -1, kMaxInt,
                   "must be >= -1 (0 = final only, -1 = none)");
  c.range<int64_t>("run.keep_checkpoints", run.keep_checkpoints, 1, kMaxInt, "must be >= 1");
  c.range<int64_t>("run.max_bad_steps", run.max_bad_steps, 1, kMaxInt, "must be >= 1");
  c.that(method != Method::kPtq || run.steps == 0, "ptq trains nothing: run.steps must be 0");
  c.range<int64_t>("run.valid_task_items", run.valid_task_items, 1, kMaxInt, "must be >= 1");
  c.range<int64_t>("run.valid_task_max_new_tokens", run.valid_task_max_new_tokens, 1, kMaxInt, "must be >= 1");
  c.that(run.best_metric != "task_accuracy" || !run.valid_tasks.empty(),
         "run.best_metric task_accuracy needs run.valid_tasks (a task .jsonl)");
  c.that(run.best_metric.empty() || run.best_metric == "task_accuracy" || run.best_metric == "agreement" ||
             run.best_metric == "mean_cka" || run.best_metric == "ppl" || run.best_metric == "ce" || run.best_metric == "kl",
         "run.best_metric must be task_accuracy, agreement, mean_cka, ppl, ce or kl (or empty), got '" + run.best_metric + "'");
  c.range<int64_t>("quant.calib_batches", quant.calib_batches, 1, kMaxInt, "must be >= 1");
  c.that(dist.world_size >= 1 && dist.rank >= 0 && dist.rank < dist.world_size, "rank must be in [0, world_size)");
  c.range("--dist-timeout", dist.timeout_s, std::numeric_limits<double>::min(), kInf, "must be > 0 seconds");
  c.range("--bucket-mb", dist.bucket_mb, std::numeric_limits<double>::min(), kInf, "must be > 0");
}

TrainConfig defaults_for(Method m) {
  TrainConfig c;
  c.method = m;
  switch (m) {
    case Method::kPtq:
    case Method::kQad:
      break;
    case Method::kCkaQad:
      c.loss.cka = 0.1;
      break;
    case Method::kQat:
    case Method::kPretrain:
      c.loss.kl = 0;
      c.loss.ce = 1;
      break;
  }
  if (m == Method::kPtq) c.run.steps = 0;
  return c;
}

nlohmann::json load_recipe(const std::filesystem::path& path) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path.string());
  } catch (const YAML::Exception& e) {
    fail("{}: cannot read the recipe: {}", path.string(), e.what());
  }
  auto j = yaml_to_json(root, path.string());
  if (j.is_null()) return nlohmann::json::object();
  QAD_CHECK(j.is_object(), "{}: a recipe is a mapping of sections (method, loss, optim, data, quant, run)",
            path.string());
  return j;
}

nlohmann::json parse_override(const std::string& assignment) {
  const auto eq = assignment.find('=');
  QAD_CHECK(eq != std::string::npos && eq > 0, "--set expects section.key=value, got '{}'", assignment);
  const std::string key = assignment.substr(0, eq), value = assignment.substr(eq + 1);
  nlohmann::json v;
  if (value == "true" || value == "false") {
    v = value == "true";
  } else if (value == "null" || value == "~" || value.empty()) {
    v = nullptr;
  } else if (value.front() == '[' || value.front() == '{') {
    v = nlohmann::json::parse(value, nullptr, false);
    if (v.is_discarded()) v = value;
  } else {
    char* end = nullptr;
    const long long i = std::strtoll(value.c_str(), &end, 10);
    if (end && *end == '\0') {
      v = static_cast<int64_t>(i);
    } else {
      const double d = std::strtod(value.c_str(), &end);
      v = (end && *end == '\0') ? nlohmann::json(d) : nlohmann::json(value);
    }
  }
  // "a.b.c" → {"a":{"b":{"c":v}}}
  nlohmann::json out = v;
  std::string k = key;
  for (;;) {
    const auto dot = k.rfind('.');
    const std::string leaf = dot == std::string::npos ? k : k.substr(dot + 1);
    out = nlohmann::json{{leaf, out}};
    if (dot == std::string::npos) break;
    k = k.substr(0, dot);
  }
  return out;
}

std::string describe(const TrainConfig& c) {
  auto j = c.to_json();
  std::string s = fmt::format("method: {}\n", j["method"].get<std::string>());
  for (const char* sec : {"loss", "optim", "data", "quant", "run"}) {
    std::string line;
    for (const auto& [k, v] : j[sec].items()) line += fmt::format(" {}={}", k, v.dump());
    s += fmt::format("{}:{}\n", sec, line);
  }
  return s;
}

}  // namespace qad::train
