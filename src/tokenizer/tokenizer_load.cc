// Loading tokenizer.json (+ tokenizer_config.json, config.json) into Tokenizer::Impl. Every component type
// the file may name is either built exactly or rejected with an error naming the file and the JSON path.
#include <nlohmann/json.hpp>

#include <fstream>
#include <sstream>

#include "tokenizer/tokenizer_impl.h"
#include "util/error.h"

namespace qad::tokenizer {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

struct Ctx {
  std::string file;
  [[noreturn]] void fail(const std::string& where, const std::string& what) const {
    qad::fail("{}: {}: {}", file, where, what);
  }
};

json read_json(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  QAD_CHECK(in, "{}: cannot open (check the path and permissions)", p.string());
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return json::parse(ss.str());
  } catch (const json::exception& e) {
    qad::fail("{}: not valid JSON ({}); re-download or re-save the file", p.string(), e.what());
  }
}

const json& need(const Ctx& c, const json& j, const char* key, const std::string& where) {
  if (!j.is_object() || !j.contains(key)) c.fail(where, std::string("missing key '") + key + "'");
  return j.at(key);
}

std::string get_str(const Ctx& c, const json& j, const char* key, const std::string& where) {
  const json& v = need(c, j, key, where);
  if (!v.is_string()) c.fail(where + "." + key, "expected a string");
  return v.get<std::string>();
}

bool get_bool(const json& j, const char* key, bool fallback) {
  if (!j.is_object() || !j.contains(key) || j.at(key).is_null()) return fallback;
  return j.at(key).is_boolean() ? j.at(key).get<bool>() : fallback;
}

std::optional<std::string> get_opt_str(const json& j, const char* key) {
  if (!j.is_object() || !j.contains(key) || !j.at(key).is_string()) return std::nullopt;
  return j.at(key).get<std::string>();
}

// A "pattern" object: {"String": "..."} or {"Regex": "..."}.
void read_pattern(const Ctx& c, const json& p, const std::string& where, std::string* literal,
                  std::unique_ptr<Regex>* regex) {
  if (p.is_object() && p.contains("String") && p["String"].is_string()) {
    *literal = p["String"].get<std::string>();
  } else if (p.is_object() && p.contains("Regex") && p["Regex"].is_string()) {
    try {
      *regex = std::make_unique<Regex>(p["Regex"].get<std::string>());
    } catch (const qad::Error& e) {
      c.fail(where, e.what());
    }
  } else {
    c.fail(where, "expected {\"String\": ...} or {\"Regex\": ...}");
  }
}

std::unique_ptr<Normalizer> build_normalizer(const Ctx& c, const json& j, const std::string& where) {
  if (j.is_null()) return nullptr;
  const std::string type = get_str(c, j, "type", where);
  if (type == "NFC") return make_nfc();
  if (type == "NFD") return make_nfd();
  if (type == "Prepend") return make_prepend(get_str(c, j, "prepend", where));
  if (type == "Replace") {
    std::string lit;
    std::unique_ptr<Regex> re;
    read_pattern(c, need(c, j, "pattern", where), where + ".pattern", &lit, &re);
    return make_replace(lit, std::move(re), get_str(c, j, "content", where));
  }
  if (type == "Strip") return make_strip(get_bool(j, "strip_left", true), get_bool(j, "strip_right", true));
  if (type == "Sequence") {
    const json& arr = need(c, j, "normalizers", where);
    if (!arr.is_array()) c.fail(where + ".normalizers", "expected an array");
    std::vector<std::unique_ptr<Normalizer>> parts;
    for (size_t i = 0; i < arr.size(); ++i) {
      if (auto n = build_normalizer(c, arr[i], where + ".normalizers[" + std::to_string(i) + "]")) parts.push_back(std::move(n));
    }
    return make_sequence(std::move(parts));
  }
  c.fail(where, "normalizer type '" + type +
                    "' is not supported (supported: NFC, NFD, Prepend, Replace, Strip, Sequence); see docs/tokenizer.md");
}

SplitBehavior read_behavior(const Ctx& c, const json& j, const std::string& where) {
  const std::string b = get_str(c, j, "behavior", where);
  if (b == "Removed") return SplitBehavior::kRemoved;
  if (b == "Isolated") return SplitBehavior::kIsolated;
  if (b == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (b == "Contiguous") return SplitBehavior::kContiguous;
  c.fail(where + ".behavior", "unknown split behavior '" + b + "'");
}

// `byte_level_model`: the BPE model takes raw bytes, so a ByteLevel that is the last step does not map.
std::unique_ptr<PreTokenizer> build_pre_tokenizer(const Ctx& c, const json& j, const std::string& where,
                                                  bool byte_level_model, bool is_last) {
  if (j.is_null()) return nullptr;
  const std::string type = get_str(c, j, "type", where);
  if (type == "Split") {
    std::string lit;
    std::unique_ptr<Regex> re;
    read_pattern(c, need(c, j, "pattern", where), where + ".pattern", &lit, &re);
    const SplitBehavior b = read_behavior(c, j, where);
    const bool invert = get_bool(j, "invert", false);
    if (re) return make_split_regex(std::move(re), b, invert);
    return make_split_literal(lit, b, invert);
  }
  if (type == "ByteLevel") {
    const bool prefix = get_bool(j, "add_prefix_space", true);
    const bool use_regex = get_bool(j, "use_regex", true);
    const bool map = !(byte_level_model && is_last);
    if (!prefix && !use_regex && !map) return nullptr;  // nothing left to do
    return make_byte_level(prefix, use_regex, map);
  }
  if (type == "Metaspace") {
    std::string scheme = "always";
    if (auto s = get_opt_str(j, "prepend_scheme")) scheme = *s;
    else if (j.contains("add_prefix_space") && !get_bool(j, "add_prefix_space", true)) scheme = "never";
    if (scheme != "always" && scheme != "first" && scheme != "never") c.fail(where, "unknown prepend_scheme '" + scheme + "'");
    return make_metaspace(get_str(c, j, "replacement", where), scheme, get_bool(j, "split", true));
  }
  if (type == "Digits") return make_digits(get_bool(j, "individual_digits", false));
  if (type == "WhitespaceSplit") return make_whitespace_split();
  if (type == "Sequence") {
    const json& arr = need(c, j, "pretokenizers", where);
    if (!arr.is_array()) c.fail(where + ".pretokenizers", "expected an array");
    std::vector<std::unique_ptr<PreTokenizer>> parts;
    for (size_t i = 0; i < arr.size(); ++i) {
      auto p = build_pre_tokenizer(c, arr[i], where + ".pretokenizers[" + std::to_string(i) + "]", byte_level_model,
                                   is_last && i + 1 == arr.size());
      if (p) parts.push_back(std::move(p));
    }
    if (parts.empty()) return nullptr;
    if (parts.size() == 1) return std::move(parts[0]);
    return make_pre_sequence(std::move(parts));
  }
  c.fail(where, "pre_tokenizer type '" + type +
                    "' is not supported (supported: Split, ByteLevel, Metaspace, Digits, WhitespaceSplit, Sequence)");
}

// True when the last step of the pre-tokenizer is ByteLevel.
bool ends_with_byte_level(const json& j) {
  if (!j.is_object() || !j.contains("type")) return false;
  if (j["type"] == "ByteLevel") return true;
  if (j["type"] == "Sequence" && j.contains("pretokenizers") && j["pretokenizers"].is_array() &&
      !j["pretokenizers"].empty())
    return ends_with_byte_level(j["pretokenizers"].back());
  return false;
}

std::unique_ptr<Decoder> build_decoder(const Ctx& c, const json& j, const std::string& where) {
  if (j.is_null()) return nullptr;
  const std::string type = get_str(c, j, "type", where);
  if (type == "ByteLevel") return make_byte_level_decoder();
  if (type == "ByteFallback") return make_byte_fallback_decoder();
  if (type == "Fuse") return make_fuse_decoder();
  if (type == "Replace") {
    std::string lit;
    std::unique_ptr<Regex> re;
    read_pattern(c, need(c, j, "pattern", where), where + ".pattern", &lit, &re);
    if (re) c.fail(where, "Replace decoder with a Regex pattern is not supported");
    return make_replace_decoder(lit, get_str(c, j, "content", where));
  }
  if (type == "Strip") {
    const size_t start = j.value("start", 0), stop = j.value("stop", 0);
    return make_strip_decoder(get_str(c, j, "content", where), start, stop);
  }
  if (type == "Metaspace") {
    std::string scheme = get_opt_str(j, "prepend_scheme").value_or("always");
    if (!j.contains("prepend_scheme") && j.contains("add_prefix_space") && !get_bool(j, "add_prefix_space", true))
      scheme = "never";
    return make_metaspace_decoder(get_str(c, j, "replacement", where), scheme != "never");
  }
  if (type == "Sequence") {
    const json& arr = need(c, j, "decoders", where);
    if (!arr.is_array()) c.fail(where + ".decoders", "expected an array");
    std::vector<std::unique_ptr<Decoder>> parts;
    for (size_t i = 0; i < arr.size(); ++i) {
      if (auto d = build_decoder(c, arr[i], where + ".decoders[" + std::to_string(i) + "]")) parts.push_back(std::move(d));
    }
    return make_decoder_sequence(std::move(parts));
  }
  c.fail(where, "decoder type '" + type +
                    "' is not supported (supported: ByteLevel, ByteFallback, Fuse, Replace, Strip, Metaspace, Sequence)");
}

// Post-processors: the ids around a single sequence when add_special_tokens is true.
void build_post(const Ctx& c, const json& j, const std::string& where, PostProcessor& post) {
  if (j.is_null()) return;
  const std::string type = get_str(c, j, "type", where);
  if (type == "ByteLevel") return;  // offsets only
  if (type == "Sequence") {
    const json& arr = need(c, j, "processors", where);
    if (!arr.is_array()) c.fail(where + ".processors", "expected an array");
    for (size_t i = 0; i < arr.size(); ++i) build_post(c, arr[i], where + ".processors[" + std::to_string(i) + "]", post);
    return;
  }
  if (type == "TemplateProcessing") {
    const json& single = need(c, j, "single", where);
    const json& specials = need(c, j, "special_tokens", where);
    if (!single.is_array()) c.fail(where + ".single", "expected an array");
    PostProcessor p;
    bool seen_a = false;
    for (const json& item : single) {
      if (item.contains("Sequence")) {
        if (seen_a) c.fail(where + ".single", "more than one $A");
        seen_a = true;
      } else if (item.contains("SpecialToken")) {
        const std::string name = get_str(c, item["SpecialToken"], "id", where + ".single");
        if (!specials.contains(name)) c.fail(where + ".special_tokens", "no entry for '" + name + "'");
        const json& ids = need(c, specials[name], "ids", where + ".special_tokens." + name);
        for (const json& id : ids) (seen_a ? p.suffix : p.prefix).push_back(id.get<int32_t>());
      } else {
        c.fail(where + ".single", "expected Sequence or SpecialToken items");
      }
    }
    // A later processor in a Sequence wraps what the earlier ones produced.
    post.prefix.insert(post.prefix.begin(), p.prefix.begin(), p.prefix.end());
    post.suffix.insert(post.suffix.end(), p.suffix.begin(), p.suffix.end());
    return;
  }
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    const json& cls = need(c, j, "cls", where);
    const json& sep = need(c, j, "sep", where);
    post.prefix.insert(post.prefix.begin(), cls.at(1).get<int32_t>());
    post.suffix.push_back(sep.at(1).get<int32_t>());
    return;
  }
  c.fail(where, "post_processor type '" + type +
                    "' is not supported (supported: TemplateProcessing, ByteLevel, Sequence, Bert/RobertaProcessing)");
}

std::unique_ptr<BpeModel> build_model(const Ctx& c, const json& m) {
  const std::string type = get_str(c, m, "type", "model");
  if (type != "BPE") c.fail("model.type", "'" + type + "' is not supported (only BPE)");
  if (m.contains("dropout") && m["dropout"].is_number() && m["dropout"].get<double>() > 0)
    c.fail("model.dropout", "BPE dropout is not supported (encoding would be random)");
  BpeConfig cfg;
  const json& vocab = need(c, m, "vocab", "model");
  if (!vocab.is_object()) c.fail("model.vocab", "expected an object {token: id}");
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer()) c.fail("model.vocab", "id of '" + it.key() + "' is not an integer");
    const int64_t id = it.value().get<int64_t>();
    if (id < 0 || id > 50'000'000) c.fail("model.vocab", "id " + std::to_string(id) + " out of range");
    if (static_cast<size_t>(id) >= cfg.vocab.size()) cfg.vocab.resize(static_cast<size_t>(id) + 1);
    cfg.vocab[static_cast<size_t>(id)] = it.key();
  }
  const json& merges = need(c, m, "merges", "model");
  if (!merges.is_array()) c.fail("model.merges", "expected an array");
  cfg.merges.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const json& e = merges[i];
    if (e.is_string()) {
      const std::string s = e.get<std::string>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
        c.fail("model.merges[" + std::to_string(i) + "]", "'" + s + "' is not of the form \"a b\"");
      cfg.merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      cfg.merges.emplace_back(e[0].get<std::string>(), e[1].get<std::string>());
    } else {
      c.fail("model.merges[" + std::to_string(i) + "]", "expected \"a b\" or [\"a\", \"b\"]");
    }
  }
  cfg.unk_token = get_opt_str(m, "unk_token");
  cfg.continuing_subword_prefix = get_opt_str(m, "continuing_subword_prefix");
  cfg.end_of_word_suffix = get_opt_str(m, "end_of_word_suffix");
  if (cfg.continuing_subword_prefix && cfg.continuing_subword_prefix->empty()) cfg.continuing_subword_prefix.reset();
  if (cfg.end_of_word_suffix && cfg.end_of_word_suffix->empty()) cfg.end_of_word_suffix.reset();
  cfg.byte_fallback = get_bool(m, "byte_fallback", false);
  cfg.fuse_unk = get_bool(m, "fuse_unk", false);
  cfg.ignore_merges = get_bool(m, "ignore_merges", false);
  try {
    return std::make_unique<BpeModel>(std::move(cfg));
  } catch (const qad::Error& e) {
    c.fail("model", e.what());
  }
}

// bos_token etc. are a string or an AddedToken object {"content": ...}.
std::optional<std::string> config_token(const json& cfg, const char* key) {
  if (!cfg.is_object() || !cfg.contains(key)) return std::nullopt;
  const json& v = cfg[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return std::nullopt;
}

std::optional<int32_t> config_id(const json& cfg, const char* key) {
  if (!cfg.is_object() || !cfg.contains(key)) return std::nullopt;
  const json& v = cfg[key];
  if (v.is_number_integer()) return v.get<int32_t>();
  if (v.is_array() && !v.empty() && v[0].is_number_integer()) return v[0].get<int32_t>();
  return std::nullopt;
}

ChatFamily chat_family_of(const json& cfg) {
  std::string tmpl;
  if (cfg.is_object() && cfg.contains("chat_template")) {
    const json& t = cfg["chat_template"];
    if (t.is_string()) {
      tmpl = t.get<std::string>();
    } else if (t.is_array()) {  // [{"name": "default", "template": ...}, ...]
      for (const json& e : t)
        if (e.is_object() && e.value("name", "") == "default") tmpl = e.value("template", "");
      if (tmpl.empty() && !t.empty() && t[0].is_object()) tmpl = t[0].value("template", "");
    }
  }
  if (tmpl.find("<|im_start|>") != std::string::npos) return ChatFamily::kQwen;
  if (tmpl.find("<|start_header_id|>") != std::string::npos) return ChatFamily::kLlama3;
  return ChatFamily::kNone;
}

}  // namespace

namespace {
std::shared_ptr<Tokenizer::Impl> load_unchecked(const fs::path& dir_or_file);
}  // namespace

std::shared_ptr<Tokenizer::Impl> load_tokenizer_impl(const fs::path& dir_or_file) {
  // The builders check the types they branch on; a value of another type deeper down (an id that is an array,
  // found by fuzzing) still gets a one-line error instead of nlohmann's exception.
  try {
    return load_unchecked(dir_or_file);
  } catch (const json::exception& e) {
    qad::fail("{}: a value has the wrong type or range ({}); re-download or re-save the tokenizer", dir_or_file.string(),
              e.what());
  }
}

namespace {
std::shared_ptr<Tokenizer::Impl> load_unchecked(const fs::path& dir_or_file) {
  fs::path file = dir_or_file;
  std::error_code ec;
  if (fs::is_directory(dir_or_file, ec)) file = dir_or_file / "tokenizer.json";
  QAD_CHECK(fs::is_regular_file(file, ec), "{}: tokenizer.json not found (pass a directory holding tokenizer.json, or its path)",
            file.string());
  const json j = read_json(file);
  Ctx c{file.string()};
  if (!j.is_object()) c.fail("top level", "expected a JSON object");
  auto impl = std::make_shared<Tokenizer::Impl>();

  impl->model = build_model(c, need(c, j, "model", "top level"));

  // Added tokens.
  if (j.contains("added_tokens") && !j["added_tokens"].is_null()) {
    const json& arr = j["added_tokens"];
    if (!arr.is_array()) c.fail("added_tokens", "expected an array");
    for (size_t i = 0; i < arr.size(); ++i) {
      const std::string where = "added_tokens[" + std::to_string(i) + "]";
      const json& t = arr[i];
      AddedToken a;
      a.content = get_str(c, t, "content", where);
      if (!need(c, t, "id", where).is_number_integer()) c.fail(where + ".id", "expected an integer");
      a.id = t["id"].get<int32_t>();
      a.special = get_bool(t, "special", false);
      a.lstrip = get_bool(t, "lstrip", false);
      a.rstrip = get_bool(t, "rstrip", false);
      a.single_word = get_bool(t, "single_word", false);
      a.normalized = get_bool(t, "normalized", !a.special);
      if (a.content.empty()) c.fail(where, "empty content");
      impl->added_by_id[a.id] = impl->added.size();
      impl->added_by_content[a.content] = a.id;
      impl->added.push_back(a);
    }
  }

  const json null_json;
  const json& pre = j.contains("pre_tokenizer") ? j["pre_tokenizer"] : null_json;
  const bool byte_level = ends_with_byte_level(pre) && impl->model->can_use_byte_level();
  impl->model->set_byte_level(byte_level);
  impl->normalizer = build_normalizer(c, j.contains("normalizer") ? j["normalizer"] : null_json, "normalizer");
  impl->pre_tokenizer = build_pre_tokenizer(c, pre, "pre_tokenizer", byte_level, true);
  impl->decoder = build_decoder(c, j.contains("decoder") ? j["decoder"] : null_json, "decoder");

  // Matchers: raw tokens as written; normalized ones in their normalized form (HF AddedVocabulary).
  {
    std::vector<AddedToken> raw, norm;
    std::vector<std::string> raw_p, norm_p;
    for (const AddedToken& a : impl->added) {
      if (a.normalized) {
        std::string n;
        norm.push_back(a);
        norm_p.push_back(impl->normalizer && impl->normalizer->normalize(a.content, n) ? n : a.content);
      } else {
        raw.push_back(a);
        raw_p.push_back(a.content);
      }
    }
    impl->raw_matcher = AddedTokenMatcher(raw, raw_p);
    impl->normalized_matcher = AddedTokenMatcher(norm, norm_p);
  }

  build_post(c, j.contains("post_processor") ? j["post_processor"] : null_json, "post_processor", impl->post);

  // Distinct token strings of the model vocab and the added tokens, as HF get_vocab_size(true).
  impl->vocab_size = impl->model->size();
  for (const auto& [content, id] : impl->added_by_content)
    if (!impl->model->token_to_id(content)) ++impl->vocab_size;

  // tokenizer_config.json (BOS/EOS/pad names, chat template), then config.json ids as a fallback.
  const fs::path dir = file.parent_path();
  json cfg, model_cfg;
  if (fs::is_regular_file(dir / "tokenizer_config.json", ec)) cfg = read_json(dir / "tokenizer_config.json");
  if (fs::is_regular_file(dir / "config.json", ec)) model_cfg = read_json(dir / "config.json");
  auto resolve = [&](const char* tok_key, const char* id_key) -> std::optional<int32_t> {
    if (auto name = config_token(cfg, tok_key)) {
      auto it = impl->added_by_content.find(*name);
      if (it != impl->added_by_content.end()) return it->second;
      if (auto id = impl->model->token_to_id(*name)) return id;
      qad::fail("{}: {} '{}' is not in the vocabulary of {}", (dir / "tokenizer_config.json").string(), tok_key, *name,
                file.string());
    }
    if (cfg.is_object() && cfg.contains(tok_key)) return std::nullopt;  // explicitly null
    return config_id(model_cfg, id_key);
  };
  impl->bos = resolve("bos_token", "bos_token_id");
  impl->eos = resolve("eos_token", "eos_token_id");
  impl->pad = resolve("pad_token", "pad_token_id");
  impl->chat = chat_family_of(cfg);
  return impl;
}
}  // namespace

}  // namespace qad::tokenizer
