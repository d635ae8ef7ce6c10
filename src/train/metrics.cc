// metrics.jsonl writer and the progress line (see metrics.h).
#include "train/metrics.h"

#include <fmt/format.h>

#include <cmath>

#include "util/error.h"
#include "util/progress.h"

namespace qad::train {

nlohmann::json finite_or_null(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

nlohmann::json layer_object(const std::vector<std::pair<std::string, double>>& per_layer) {
  nlohmann::json o = nlohmann::json::object();
  for (const auto& [k, v] : per_layer) o[k] = finite_or_null(v);
  return o;
}

MetricsLog::MetricsLog(const std::filesystem::path& path) {
  if (path.empty()) return;
  f_ = std::fopen(path.c_str(), "ab");
  QAD_CHECK(f_ != nullptr, "{}: cannot open the metrics log for appending", path.string());
}

MetricsLog::~MetricsLog() {
  if (f_) std::fclose(f_);
}

void MetricsLog::write(const nlohmann::json& record) {
  if (!f_) return;
  const std::string line = record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  std::fwrite(line.data(), 1, line.size(), f_);
  std::fflush(f_);
}

namespace {
std::string rate(double x) {
  if (x >= 1e6) return fmt::format("{:.2f}M", x / 1e6);
  if (x >= 1e3) return fmt::format("{:.1f}k", x / 1e3);
  return fmt::format("{:.0f}", x);
}
}  // namespace

std::string format_step_line(const StepLine& s) {
  std::string out = fmt::format("step {}/{} | loss {:.5g}", s.step, s.total, s.loss);
  if (s.kl) out += fmt::format(" kl {:.5g}", *s.kl);
  if (s.ce) out += fmt::format(" ce {:.4g}", *s.ce);
  if (s.cka_term) out += fmt::format(" 1-cka {:.4g}", *s.cka_term);
  out += fmt::format(" | lr {:.3g} | gnorm {:.3g} | {} tok/s", s.lr, s.grad_norm, rate(s.tokens_per_s));
  if (s.eta_s >= 0) out += " | ETA " + Progress::format_duration(s.eta_s);
  if (s.skipped) out += " | SKIPPED (non-finite loss or gradient)";
  return out;
}

nlohmann::json step_record(const StepLine& s) {
  nlohmann::json rec = {{"type", "train"}, {"step", s.step}, {"tokens", s.tokens}, {"loss", finite_or_null(s.loss)},
                        {"lr", s.lr}, {"grad_norm", finite_or_null(s.grad_norm)}, {"tokens_per_s", s.tokens_per_s},
                        {"peak_mem_gb", s.peak_mem_gb}};
  if (s.kl) rec["kl"] = finite_or_null(*s.kl);
  if (s.ce) rec["ce"] = finite_or_null(*s.ce);
  if (s.cka_term) rec["cka_loss"] = finite_or_null(*s.cka_term);
  if (!s.cka.empty()) rec["cka"] = layer_object(s.cka);
  if (s.router_balance) rec["router_balance"] = finite_or_null(*s.router_balance);
  if (s.skipped) rec["skipped"] = true;
  return rec;
}

nlohmann::json valid_record(int64_t step, const ValidResult& v) {
  nlohmann::json j = {{"type", "valid"}, {"step", step}, {"ce", finite_or_null(v.ce)}, {"ppl", finite_or_null(v.ppl)},
                      {"tokens_evaluated", v.tokens}, {"seq_len", v.seq_len}};
  if (v.kl) j["kl"] = finite_or_null(*v.kl);
  if (v.agreement) j["agreement"] = *v.agreement;
  if (v.mean_cka) j["mean_cka"] = finite_or_null(*v.mean_cka);
  if (v.task_accuracy) j["task_accuracy"] = *v.task_accuracy;
  if (!v.cka.empty()) j["cka"] = layer_object(v.cka);
  if (v.mean_router_agreement) j["router_agreement"] = *v.mean_router_agreement;
  if (!v.router_agreement.empty()) j["router_agreement_layers"] = layer_object(v.router_agreement);
  return j;
}

std::string valid_line(int64_t step, const ValidResult& v) {
  std::string s = fmt::format("valid @ step {} (seq {}, {} tokens): ppl {:.4g}", step, v.seq_len, v.tokens, v.ppl);
  if (v.kl) s += fmt::format(" | kl {:.5g}", *v.kl);
  if (v.agreement) s += fmt::format(" | top-1 agreement {:.4f}", *v.agreement);
  if (v.mean_cka) s += fmt::format(" | mean CKA {:.5f}", *v.mean_cka);
  if (v.task_accuracy) s += fmt::format(" | task accuracy {:.2f}%", 100 * *v.task_accuracy);
  if (v.mean_router_agreement) s += fmt::format(" | router top-k overlap {:.4f}", *v.mean_router_agreement);
  return s;
}

nlohmann::json final_metrics(int64_t steps, int64_t tokens, double train_seconds, const std::optional<ValidResult>& v) {
  nlohmann::json fm = {{"steps", steps}, {"tokens", tokens}, {"train_seconds", train_seconds}};
  if (v) {
    fm["valid_seq_len"] = v->seq_len;  // the validation's settings, which its figures depend on
    fm["valid_tokens"] = v->tokens;
    fm["ppl"] = finite_or_null(v->ppl);
    fm["ce"] = finite_or_null(v->ce);
    if (v->kl) fm["kl"] = finite_or_null(*v->kl);
    if (v->agreement) fm["agreement"] = *v->agreement;
    if (v->mean_cka) fm["mean_cka"] = finite_or_null(*v->mean_cka);
    if (v->task_accuracy) fm["task_accuracy"] = *v->task_accuracy;
    if (!v->cka.empty()) fm["cka"] = layer_object(v->cka);
  }
  return fm;
}

}  // namespace qad::train
