// eval.json reader (see eval_reader.h; the object's schema is docs/eval.md "--json object").
#include "report/eval_reader.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "report/ticks.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace qad::report {
namespace {

using json = nlohmann::ordered_json;

// Typed access that turns a wrong type into a warning instead of an exception: eval.json may come from an
// older or newer qad, and one odd field must not hide the rest.
class Fields {
 public:
  Fields(const std::filesystem::path& file, std::vector<std::string>& warnings) : file_(file), warnings_(warnings) {}

  // null counts as absent: qad eval writes null for "not available".
  static const json* at(const json& j, const char* key) {
    if (!j.is_object()) return nullptr;
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return nullptr;
    return &*it;
  }
  std::optional<double> number(const json& j, const std::string& where, const char* key) {
    const json* v = at(j, key);
    if (!v) return std::nullopt;
    if (v->is_number()) return v->get<double>();
    warn(where, key, "a number");
    return std::nullopt;
  }
  std::optional<std::string> text(const json& j, const std::string& where, const char* key) {
    const json* v = at(j, key);
    if (!v) return std::nullopt;
    if (v->is_string()) return v->get<std::string>();
    if (v->is_number() || v->is_boolean()) return v->dump();
    warn(where, key, "a string");
    return std::nullopt;
  }
  const json* object(const json& j, const std::string& where, const char* key) {
    const json* v = at(j, key);
    if (!v) return nullptr;
    if (v->is_object()) return v;
    warn(where, key, "an object");
    return nullptr;
  }

 private:
  void warn(const std::string& where, const char* key, const char* expected) {
    warnings_.push_back(fmt::format("{}: \"{}{}\" is not {}; left out of the evaluation table", file_.string(), where,
                                    key, expected));
  }
  std::filesystem::path file_;
  std::vector<std::string>& warnings_;
};

std::string integer_text(double v) { return format_number(v, 15); }

}  // namespace

EvalResult read_eval_json(const std::filesystem::path& file, std::vector<std::string>& warnings) {
  const std::string text = read_file(file);
  const json j = json::parse(text, nullptr, false);
  QAD_CHECK(!j.is_discarded(), "{}: not valid JSON; write it with qad eval --model DIR ... --out {}", file.string(),
            file.string());
  QAD_CHECK(j.is_object() && j.contains("model"), "{}: not a qad eval result (a JSON object with \"model\"); write it "
            "with qad eval --model DIR ... --out {}", file.string(), file.string());
  Fields f(file, warnings);
  EvalResult r;
  r.file = file;
  r.model = f.text(j, "", "model").value_or("");
  r.model_dir = f.text(j, "", "model_dir").value_or("");
  r.perplexity = f.number(j, "", "perplexity");
  r.kl = f.number(j, "", "kl");
  r.agreement = f.number(j, "", "top1_agreement");
  r.teacher_perplexity = f.number(j, "", "teacher_perplexity");

  auto add = [&](const char* name, std::optional<std::string> value, bool defines = true) {
    if (value) r.settings.push_back({name, *value, defines});
  };
  if (auto fq = j.find("fake_quant"); fq != j.end() && fq->is_boolean() && fq->get<bool>()) {
    add("model", std::string("fq: dynamic NVFP4 fake quantization"), false);
  }
  add("KL against", f.text(j, "", "teacher"));
  add("device", f.text(j, "", "device"), false);
  add("dtype", f.text(j, "", "dtype"), false);
  if (const json* d = f.object(j, "", "data")) {
    if (auto p = d->find("paths"); p != d->end() && p->is_array()) {
      std::string paths;
      for (const auto& x : *p) paths += (paths.empty() ? "" : ", ") + (x.is_string() ? x.get<std::string>() : x.dump());
      add("data", paths);
    }
    add("ppl mode", f.text(*d, "data.", "ppl_mode").value_or("packed"));
    if (auto v = f.number(*d, "data.", "seq_len")) add("seq len", integer_text(*v));
    std::optional<double> scored = f.number(*d, "data.", "scored_tokens");
    if (const json* rolling = f.object(j, "", "rolling")) scored = f.number(*rolling, "rolling.", "tokens");
    if (scored && *scored > 0) add("scored tokens", integer_text(*scored));
    add("bos", f.text(*d, "data.", "bos"));
    add("doc end", f.text(*d, "data.", "doc_end"));
  }
  if (const json* t = f.object(j, "", "tasks")) {
    add("tasks", f.text(*t, "tasks.", "path"));
    r.task_accuracy = f.number(*t, "tasks.", "accuracy");
    if (auto v = f.number(*t, "tasks.", "items")) r.task_items = static_cast<int64_t>(*v);
    if (auto v = f.number(*t, "tasks.", "correct")) r.task_correct = static_cast<int64_t>(*v);
    if (r.task_items) add("task items", std::to_string(*r.task_items));
    const auto samples = f.number(*t, "tasks.", "samples");
    if (samples) add("samples per item", integer_text(*samples));
    if (samples && *samples > 1) {
      if (const json* a = f.object(*t, "tasks.", "avg_at_k")) r.avg_at_k = f.number(*a, "tasks.avg_at_k.", "value");
    }
    add("answer rule", f.text(*t, "tasks.", "answer_rule"));
    add("answer check", f.text(*t, "tasks.", "answer_check"));
    if (auto v = f.number(*t, "tasks.", "max_new_tokens")) add("max new tokens", integer_text(*v));
    add("mc norm", f.text(*t, "tasks.", "mc_norm"));
    if (const json* s = f.object(*t, "tasks.", "sampling")) {
      if (auto v = f.number(*s, "tasks.sampling.", "temperature")) add("temperature", format_number(*v, 6));
    }
  }
  return r;
}

}  // namespace qad::report
