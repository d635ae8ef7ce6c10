// run_eval / run_cka: the bodies of `qad eval` and `qad cka` (docs/eval.md).
#include "eval/eval_command.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <chrono>
#include <fstream>
#include <sstream>

#include "checkpoint/load.h"
#include "eval/lm_metrics.h"
#include "eval/model_spec.h"
#include "eval/rolling_perplexity.h"
#include "eval/task_eval.h"
#include "eval/token_stream.h"
#include "model/device.h"
#include "tokenizer/tokenizer.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/torch_compat.h"

namespace qad::eval {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// The tokenizer for data and tasks: --tokenizer, else the first of the given model directories that has one.
tokenizer::Tokenizer load_tokenizer(const std::string& explicit_dir, const std::vector<fs::path>& candidates) {
  if (!explicit_dir.empty()) return tokenizer::Tokenizer::load(explicit_dir);
  for (const auto& d : candidates) {
    const auto dir = checkpoint::tokenizer_dir(d);  // a training checkpoint: its teacher's tokenizer
    if (fs::exists(dir / "tokenizer.json")) return tokenizer::Tokenizer::load(dir);
  }
  fail("no tokenizer.json in {}: give --tokenizer DIR", candidates.empty() ? "" : candidates.front().string());
}

StreamOptions stream_options(const std::string& bos, const std::string& doc_end, int64_t max_tokens,
                             const tokenizer::Tokenizer* tok) {
  StreamOptions so;
  QAD_CHECK(bos == "auto" || bos == "never", "--bos must be auto or never, got '{}'", bos);
  so.bos = bos == "auto" ? BosMode::kAuto : BosMode::kNever;
  if (tok != nullptr) so.doc_end = resolve_doc_end(doc_end, *tok);
  so.max_tokens = max_tokens;
  return so;
}

bool needs_tokenizer(const std::vector<fs::path>& data) {
  for (const auto& p : data) {
    if (!fs::is_directory(p)) return true;
  }
  return false;
}

std::vector<int64_t> parse_id_list(const std::string& text, const char* option) {
  std::vector<int64_t> ids;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    QAD_CHECK(used == item.size() && v >= 0, "{} '{}': not a comma-separated list of non-negative integers", option, text);
    ids.push_back(v);
  }
  return ids;
}

// A model argument that names no directory fails first, before the tokenizer search would report it as
// "no tokenizer.json".
void check_model_dir(const std::string& spec_text, const char* flag) {
  const auto spec = parse_model_spec(spec_text);
  std::error_code ec;
  QAD_CHECK(fs::is_directory(spec.dir, ec), "{} {}: no such directory; give an HF checkpoint directory (config.json "
            "and safetensors), an NVFP4 export, or a qad run directory", flag, spec.dir.string());
}

json tally_json(const Tally& t) { return {{"n", t.n}, {"correct", t.correct}, {"accuracy", t.accuracy()}}; }

json data_json(const TokenStream& s, const std::vector<fs::path>& paths, const LmMetrics& m, int64_t seq_len) {
  json p = json::array();
  for (const auto& x : paths) p.push_back(x.string());
  return {{"paths", p},
          {"documents", s.documents},
          {"stream_tokens", m.stream_tokens},
          {"scored_tokens", m.scored_tokens},
          {"windows", m.windows},
          {"seq_len", seq_len},
          {"truncated", s.truncated},
          {"skipped_lines", s.skipped.size()}};
}

void write_predictions(const fs::path& path, const TaskResults& r) {
  std::string out;
  for (const auto& ir : r.items) {
    json j = {{"id", ir.item->id}, {"line", ir.item->line}, {"correct", ir.correct}, {"prediction", ir.prediction}};
    if (!ir.item->group.empty()) j["group"] = ir.item->group;
    if (ir.item->prompt) {
      j["prompt"] = *ir.item->prompt;
    } else {
      json m = json::array();
      for (const auto& t : ir.item->messages) m.push_back({{"role", t.role}, {"content", t.content}});
      j["messages"] = m;
    }
    if (ir.item->kind == TaskItem::Kind::kGenerative) {
      j["answer"] = ir.item->answer;
      j["generation"] = ir.generation;
      j["new_tokens"] = ir.new_tokens;
      j["stopped"] = ir.stopped;
      if (ir.samples.size() > 1) {
        json samples = json::array();
        for (const auto& x : ir.samples) {
          samples.push_back({{"generation", x.generation}, {"prediction", x.prediction}, {"correct", x.correct},
                             {"new_tokens", x.new_tokens}, {"stopped", x.stopped}});
        }
        j["samples"] = samples;
      }
    } else {
      j["label"] = ir.item->label;
      j["chosen"] = ir.chosen;
      j["choice_logprobs"] = ir.choice_logprobs;
      j["choice_tokens"] = ir.choice_tokens;
    }
    out += j.dump() + "\n";
  }
  write_file_atomic(path, out);
}

}  // namespace

json run_eval(const EvalCommandOptions& o) {
  QAD_CHECK(!o.data.empty() || !o.tasks.empty(), "qad eval: give --data (perplexity) and/or --tasks");
  check_model_dir(o.model, "--model");
  if (!o.teacher.empty()) check_model_dir(o.teacher, "--teacher");
  const auto start = std::chrono::steady_clock::now();
  const auto device = model::parse_device(o.device);
  const auto dtype = model::parse_dtype(o.dtype, model::CausalLM::default_dtype(device));
  const auto spec = parse_model_spec(o.model);
  std::optional<ModelSpec> teacher_spec;
  if (!o.teacher.empty()) teacher_spec = parse_model_spec(o.teacher);
  // Read the inputs before loading weights, so that a bad task line fails fast.
  std::optional<TaskFile> tasks;
  if (!o.tasks.empty()) {
    TaskFileOptions to;
    to.group_field = o.group_field;
    to.skip_bad_lines = o.skip_bad_lines;
    tasks = read_task_file(o.tasks, to);
    for (size_t i = 0; i < tasks->bad_lines.size() && i < 20; ++i) {  // --on-bad-line skip: said, never silent
      fmt::print(stderr, "qad: warning: skipped {}\n", tasks->bad_lines[i]);
    }
    if (tasks->bad_lines.size() > 20) {
      fmt::print(stderr, "qad: warning: ... {} bad task lines in all (tasks.skipped_lines in --json)\n",
                 tasks->bad_lines.size());
    }
    if (o.max_items > 0 && static_cast<int64_t>(tasks->items.size()) > o.max_items) tasks->items.resize(static_cast<size_t>(o.max_items));
  }
  std::optional<tokenizer::Tokenizer> tok;
  if (tasks || needs_tokenizer(o.data)) {
    std::vector<fs::path> dirs{spec.dir};
    if (teacher_spec) dirs.push_back(teacher_spec->dir);
    tok = load_tokenizer(o.tokenizer, dirs);
  }

  json out = {{"model", spec.label}, {"model_dir", spec.dir.string()}, {"fake_quant", spec.fake_quant},
              {"teacher", teacher_spec ? json(teacher_spec->dir.string()) : json(nullptr)},
              {"device", device.str()}, {"dtype", model::dtype_config_name(dtype)}};
  auto lm = load_model_spec(spec, device, dtype);
  TokenStream stream;
  if (!o.data.empty()) {
    stream = read_token_stream(o.data, tok ? &*tok : nullptr,
                               stream_options(o.bos, o.doc_end, o.max_tokens, tok ? &*tok : nullptr));
    for (size_t i = 0; i < stream.skipped.size() && i < 20; ++i) fmt::print(stderr, "skipped {}\n", stream.skipped[i]);
    QAD_CHECK(o.ppl_mode == "packed" || o.ppl_mode == "rolling", "--ppl-mode must be packed or rolling, got '{}'",
              o.ppl_mode);
    if (o.ppl_mode == "rolling") {
      QAD_CHECK(!teacher_spec, "--ppl-mode rolling scores the model alone: drop --teacher (KL and agreement use the "
                "packed stream)");
      QAD_CHECK(tok.has_value(), "--ppl-mode rolling needs raw text files and a tokenizer");
      RollingOptions ro;
      ro.seq_len = o.seq_len;
      ro.batch_size = o.batch_size;
      ro.progress = o.progress;
      ro.bos_id = tok->bos_id();
      // lm-eval's prefix_token_id: the tokenizer's BOS, else its EOS.
      if (auto p = tok->bos_id() ? tok->bos_id() : tok->eos_id()) ro.prefix_id = static_cast<int32_t>(*p);
      auto m = evaluate_rolling(lm, stream, ro);
      out["data"] = data_json(stream, o.data, LmMetrics{}, o.seq_len);
      out["data"]["bos"] = o.bos;
      out["data"]["ppl_mode"] = "rolling";
      out["rolling"] = {{"documents", m.documents}, {"windows", m.windows}, {"tokens", m.tokens}, {"words", m.words},
                        {"bytes", m.bytes}, {"prefix_id", ro.prefix_id}, {"nll", m.nll}, {"perplexity", m.perplexity},
                        {"word_perplexity", m.word_perplexity}, {"byte_perplexity", m.byte_perplexity},
                        {"bits_per_byte", m.bits_per_byte}};
      out["nll"] = m.nll;
      out["perplexity"] = m.perplexity;
      out["lm_seconds"] = m.seconds;
    }
  }
  if (!o.data.empty() && o.ppl_mode == "packed") {
    std::optional<model::CausalLM> teacher;
    if (teacher_spec) teacher = load_model_spec(*teacher_spec, device, dtype);
    LmEvalOptions lo;
    lo.seq_len = o.seq_len;
    lo.batch_size = o.batch_size;
    lo.progress = o.progress;
    auto m = evaluate_lm(lm, teacher ? &*teacher : nullptr, stream, lo);
    // NaN propagates into every mean (and makes argmax agree on nothing): a wrong figure must not look like one.
    QAD_CHECK(std::isfinite(m.nll), "model {}: its log-likelihood on the data is not finite (nll = {}); its logits "
              "hold NaN or Inf (activations overflow in {}: try --dtype float32)", spec.label, m.nll,
              model::dtype_config_name(dtype));
    QAD_CHECK(!m.teacher_nll || (std::isfinite(*m.teacher_nll) && m.kl && std::isfinite(*m.kl)), "teacher {}: its "
              "log-likelihood or the KL is not finite; its logits hold NaN or Inf (activations overflow in {}: try "
              "--dtype float32)", teacher_spec ? teacher_spec->label : "", model::dtype_config_name(dtype));
    out["data"] = data_json(stream, o.data, m, o.seq_len);
    out["data"]["bos"] = o.bos;
    out["data"]["doc_end"] = o.doc_end;
    out["nll"] = m.nll;
    out["perplexity"] = m.perplexity;
    if (teacher) {
      out["teacher_nll"] = *m.teacher_nll;
      out["teacher_perplexity"] = *m.teacher_perplexity;
      out["kl"] = *m.kl;
      out["top1_agreement"] = *m.top1_agreement;
    }
    out["lm_seconds"] = m.seconds;
  }
  if (tasks) {
    TaskEvalOptions to;
    to.rule = parse_answer_rule(o.answer_rule);
    to.max_new_tokens = o.max_new_tokens;
    to.batch_size = o.task_batch_size;
    to.check.check = parse_answer_check(o.answer_check);
    to.check.abs_tol = o.abs_tol;
    to.check.rel_tol = o.rel_tol;
    to.samples = o.samples;
    to.pass_k = parse_id_list(o.pass_k, "--pass-k");
    QAD_CHECK(o.temperature >= 0, "--temperature must be >= 0 (0 = greedy), got {}", o.temperature);
    to.sampling.greedy = o.temperature == 0;
    to.sampling.temperature = o.temperature > 0 ? o.temperature : 1.0;
    to.sampling.top_p = o.top_p;
    to.sampling.top_k = o.top_k;
    to.sampling.seed = o.seed;
    to.mc_norm = parse_mc_norm(o.mc_norm);
    to.stop_ids = parse_id_list(o.stop_ids, "--stop-ids");
    to.progress = o.progress;
    auto r = evaluate_tasks(lm, *tok, *tasks, to);
    json groups = json::object();
    for (const auto& [g, t] : r.by_group) groups[g] = tally_json(t);
    json bad = json::array();
    for (const auto& b : tasks->bad_lines) bad.push_back(b);
    out["tasks"] = {{"path", o.tasks.string()},
                    {"items", r.all.n},
                    {"correct", r.all.correct},
                    {"accuracy", r.all.accuracy()},
                    {"generative", tally_json(r.generative)},
                    {"multiple_choice", tally_json(r.multiple_choice)},
                    {"by_group", groups},
                    {"group_field", o.group_field},
                    {"answer_rule", std::string(answer_rule_name(to.rule))},
                    {"mc_norm", o.mc_norm},
                    {"max_new_tokens", o.max_new_tokens},
                    {"stop_ids", r.stop_ids},
                    {"generated_tokens", r.generated_tokens},
                    {"skipped_lines", bad},
                    {"seconds", r.seconds},
                    {"tokens_per_second", r.seconds > 0 ? static_cast<double>(r.generated_tokens) / r.seconds : 0.0}};
    auto estimate = [](const Estimate& e) { return json{{"value", e.value}, {"stderr", e.standard_error}, {"items", e.items}}; };
    if (r.generative.n > 0) {
      json pass = json::object(), maj = json::object();
      for (const auto& [k, e] : r.pass_at_k) pass[std::to_string(k)] = estimate(e);
      for (const auto& [k, e] : r.maj_at_k) maj[std::to_string(k)] = estimate(e);
      out["tasks"]["answer_check"] = std::string(answer_check_name(to.check.check));
      out["tasks"]["samples"] = o.samples;
      out["tasks"]["sampling"] = {{"greedy", to.sampling.greedy}, {"temperature", o.temperature}, {"top_p", o.top_p},
                                  {"top_k", o.top_k}, {"seed", o.seed}};
      out["tasks"]["avg_at_k"] = estimate(r.avg_at_k);
      out["tasks"]["pass_at_k"] = pass;
      out["tasks"]["maj_at_k"] = maj;
      out["tasks"]["cut_off"] = r.cut_off;
      out["tasks"]["generation"] = {{"slots", r.generation.slots}, {"capacity", r.generation.capacity},
                                    {"decode_steps", r.generation.decode_steps},
                                    {"prefill_forwards", r.generation.prefill_forwards},
                                    {"kv_cache_gb", r.generation.kv_cache_gb}};
    }
    if (!o.predictions.empty()) write_predictions(o.predictions, r);
  }
  out["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return out;
}

std::string format_eval_text(const json& m) {
  std::string s = fmt::format("model      {}{}\n", m["model"].get<std::string>(),
                              m["teacher"].is_null() ? "" : fmt::format("   teacher {}", m["teacher"].get<std::string>()));
  if (m.contains("rolling")) {
    const auto& r = m["rolling"];
    s += fmt::format("data       {} documents scored each on its own (rolling windows of {}): {} tokens, {} words, {} "
                     "bytes\n", r["documents"].get<int64_t>(), m["data"]["seq_len"].get<int64_t>(),
                     r["tokens"].get<int64_t>(), r["words"].get<int64_t>(), r["bytes"].get<int64_t>());
    s += fmt::format("perplexity {:.6g}   word perplexity {:.6g}   byte perplexity {:.6g}   bits per byte {:.6g}\n",
                     r["perplexity"].get<double>(), r["word_perplexity"].get<double>(),
                     r["byte_perplexity"].get<double>(), r["bits_per_byte"].get<double>());
  } else if (m.contains("perplexity")) {
    const auto& d = m["data"];
    s += fmt::format("data       {} documents, {} tokens, {} scored in {} windows of {}{}\n", d["documents"].get<int64_t>(),
                     d["stream_tokens"].get<int64_t>(), d["scored_tokens"].get<int64_t>(), d["windows"].get<int64_t>(),
                     d["seq_len"].get<int64_t>(), d["truncated"].get<bool>() ? " (truncated at --max-tokens)" : "");
    s += fmt::format("perplexity {:.6g}   (nll {:.6f} nats/token)\n", m["perplexity"].get<double>(), m["nll"].get<double>());
    if (m.contains("kl")) {
      s += fmt::format("teacher    perplexity {:.6g}\n", m["teacher_perplexity"].get<double>());
      s += fmt::format("KL(teacher||model) {:.6g} nats/token   top-1 agreement {:.2f}%\n", m["kl"].get<double>(),
                       100 * m["top1_agreement"].get<double>());
    }
  }
  if (m.contains("tasks")) {
    const auto& t = m["tasks"];
    s += fmt::format("tasks      {}: {}/{} correct = {:.2f}%  (answer rule {}, {} generated tokens, {:.1f} tok/s)\n",
                     t["path"].get<std::string>(), t["correct"].get<int64_t>(), t["items"].get<int64_t>(),
                     100 * t["accuracy"].get<double>(), t["answer_rule"].get<std::string>(),
                     t["generated_tokens"].get<int64_t>(), t["tokens_per_second"].get<double>());
    if (t.contains("samples") && t["samples"].get<int64_t>() > 1) {
      s += fmt::format("  samples {}: avg@{} {:.2f}% ± {:.2f}", t["samples"].get<int64_t>(), t["samples"].get<int64_t>(),
                       100 * t["avg_at_k"]["value"].get<double>(), 100 * t["avg_at_k"]["stderr"].get<double>());
      for (const auto& [k, v] : t["pass_at_k"].items()) {
        s += fmt::format("   pass@{} {:.2f}% ± {:.2f}   maj@{} {:.2f}% ± {:.2f}", k, 100 * v["value"].get<double>(),
                         100 * v["stderr"].get<double>(), k, 100 * t["maj_at_k"][k]["value"].get<double>(),
                         100 * t["maj_at_k"][k]["stderr"].get<double>());
      }
      s += "\n";
    }
    if (t.contains("cut_off") && t["cut_off"].get<int64_t>() > 0) {
      s += fmt::format("  {} generations cut off at --max-new-tokens {} (no stop token; answer taken from what was "
                       "written, none if a <think> was still open)\n", t["cut_off"].get<int64_t>(),
                       t["max_new_tokens"].get<int64_t>());
    }
    for (const char* kind : {"generative", "multiple_choice"}) {
      if (t[kind]["n"].get<int64_t>() > 0) {
        s += fmt::format("  {:<16} {}/{} = {:.2f}%\n", kind, t[kind]["correct"].get<int64_t>(), t[kind]["n"].get<int64_t>(),
                         100 * t[kind]["accuracy"].get<double>());
      }
    }
    for (const auto& [g, v] : t["by_group"].items()) {
      s += fmt::format("  {}={:<12} {}/{} = {:.2f}%\n", t["group_field"].get<std::string>(), g, v["correct"].get<int64_t>(),
                       v["n"].get<int64_t>(), 100 * v["accuracy"].get<double>());
    }
  }
  return s;
}

CkaEvalResult run_cka(const CkaCommandOptions& o, std::ostream& out) {
  QAD_CHECK(!o.teacher.empty(), "qad cka: give --teacher DIR");
  QAD_CHECK(!o.models.empty(), "qad cka: give at least one --model DIR");
  QAD_CHECK(!o.data.empty(), "qad cka: give --data");
  check_model_dir(o.teacher, "--teacher");
  for (const auto& m : o.models) check_model_dir(m, "--model");
  const auto format = report::parse_cka_format(o.format);
  report::CkaVariant variant = report::CkaVariant::kBiased;
  if (o.plot_variant == "debiased") variant = report::CkaVariant::kDebiased;
  else if (o.plot_variant == "minibatch-biased") variant = report::CkaVariant::kMinibatchBiased;
  else if (o.plot_variant == "minibatch-debiased") variant = report::CkaVariant::kMinibatchDebiased;
  else QAD_CHECK(o.plot_variant == "biased", "--plot-variant must be biased, debiased, minibatch-biased or "
                 "minibatch-debiased, got '{}'", o.plot_variant);
  const auto device = model::parse_device(o.device);
  const auto dtype = model::parse_dtype(o.dtype, model::CausalLM::default_dtype(device));
  const auto teacher_spec = parse_model_spec(o.teacher);
  std::vector<ModelSpec> specs;
  for (const auto& m : o.models) specs.push_back(parse_model_spec(m));

  std::optional<tokenizer::Tokenizer> tok;
  if (needs_tokenizer(o.data)) tok = load_tokenizer(o.tokenizer, {teacher_spec.dir});
  auto stream = read_token_stream(o.data, tok ? &*tok : nullptr,
                                  stream_options(o.bos, o.doc_end, o.tokens > 0 ? std::max<int64_t>(o.tokens - 1, 1) : 0,
                                                 tok ? &*tok : nullptr));
  auto teacher = load_model_spec(teacher_spec, device, dtype);
  std::vector<model::CausalLM> models;
  std::vector<NamedModel> named;
  models.reserve(specs.size());
  for (const auto& s : specs) models.push_back(load_model_spec(s, device, dtype));
  for (size_t i = 0; i < specs.size(); ++i) named.push_back({specs[i].label, &models[i]});
  CkaEvalOptions co;
  co.seq_len = o.seq_len;
  co.batch_size = o.batch_size;
  co.include_norm = o.include_norm;
  co.progress = o.progress;
  auto r = layer_cka(teacher, named, stream, co);
  report::write_cka_outputs(r.models, format, o.plot, out, variant);
  if (o.progress) {
    fmt::print(stderr, "cka: {} tokens per layer in {} batches of up to {} x {} tokens, {:.1f} s\n", r.tokens,
               r.batches, o.batch_size, o.seq_len, r.seconds);
  }
  return r;
}

}  // namespace qad::eval
