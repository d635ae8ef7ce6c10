// The demo's word-piece tokenizer files (see demo_tokenizer.h).
#include "demo/demo_tokenizer.h"

#include <nlohmann/json.hpp>
#include <set>

#include "util/atomic_file.h"

namespace qad::demo {
namespace {

// GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the others to U+0100 upwards.
std::string byte_char(int b) {
  auto printable = [](int c) { return (c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF); };
  int cp = b;
  if (!printable(b)) {
    int n = 0;
    for (int c = 0; c < b; ++c) n += printable(c) ? 0 : 1;
    cp = 256 + n;
  }
  std::string s;
  if (cp < 0x80) {
    s.push_back(static_cast<char>(cp));
  } else {
    s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return s;
}

// The word in GPT-2's byte alphabet, one entry per byte ("Ġ" for the space).
std::vector<std::string> byte_symbols(const std::string& word) {
  std::vector<std::string> s;
  for (unsigned char c : word) s.push_back(byte_char(c));
  return s;
}

const char* const kAdded[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"};
constexpr int kNumAdded = 5;

struct Vocab {
  nlohmann::ordered_json vocab = nlohmann::ordered_json::object();
  nlohmann::ordered_json merges = nlohmann::ordered_json::array();
};

// Each word is merged left to right ("Ġ r" → "Ġr", "Ġr e" → "Ġre", ...). Words with a leading space come
// first: their merges all start with "Ġ…", so they outrank the few merges of bare words ("u s" of "user") that
// could otherwise split them ("Ġplus" must not become "Ġpl" + "us"). tests/demo checks every word is one token.
Vocab build_vocab() {
  Vocab v;
  int32_t id = 0;
  for (const char* a : kAdded) v.vocab[a] = id++;
  for (int b = 0; b < 256; ++b) v.vocab[byte_char(b)] = id++;
  std::set<std::string> seen_merges;
  for (const auto& word : demo_words()) {
    const auto sym = byte_symbols(word);
    std::string left = sym[0];
    for (size_t i = 1; i < sym.size(); ++i) {
      const std::string merged = left + sym[i];
      if (seen_merges.insert(left + " " + sym[i]).second) {
        v.merges.push_back(left + " " + sym[i]);
        if (!v.vocab.contains(merged)) v.vocab[merged] = id++;
      }
      left = merged;
    }
  }
  return v;
}

}  // namespace

const std::vector<std::string>& demo_words() {
  static const std::vector<std::string> words = [] {
    std::vector<std::string> w = {" is", " plus", " minus", " write", " carry", " borrow", " result", " drop",
                                  " leading", " zeros", " +", " -", " ="};
    for (char d = '0'; d <= '9'; ++d) w.push_back(std::string(" ") + d);
    for (const char* bare : {"What", "Compute", "assistant", "user", "carry", "drop"}) w.push_back(bare);
    return w;
  }();
  return words;
}

int64_t demo_vocab_size() { return static_cast<int64_t>(build_vocab().vocab.size()); }

void write_demo_tokenizer(const std::filesystem::path& dir) {
  auto v = build_vocab();
  nlohmann::ordered_json added = nlohmann::ordered_json::array();
  for (int i = 0; i < kNumAdded; ++i) {
    const bool special = i < 3;  // <think> / </think> are ordinary added tokens, as in Qwen3
    added.push_back({{"id", i}, {"content", kAdded[i]}, {"single_word", false}, {"lstrip", false},
                     {"rstrip", false}, {"normalized", false}, {"special", special}});
  }
  const nlohmann::ordered_json byte_level = {
      {"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  nlohmann::ordered_json tok = {
      {"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr}, {"added_tokens", added},
      {"normalizer", nullptr}, {"pre_tokenizer", byte_level}, {"post_processor", byte_level},
      {"decoder", byte_level},
      {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
                 {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false},
                 {"ignore_merges", false}, {"vocab", v.vocab}, {"merges", v.merges}}}};
  nlohmann::ordered_json cfg = {
      {"tokenizer_class", "PreTrainedTokenizerFast"}, {"bos_token", nullptr}, {"eos_token", "<|im_end|>"},
      {"pad_token", "<|endoftext|>"}, {"model_max_length", 4096},
      {"chat_template",
       "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
       "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"}};
  write_file_atomic(dir / "tokenizer.json", tok.dump(2) + "\n");
  write_file_atomic(dir / "tokenizer_config.json", cfg.dump(2) + "\n");
}

}  // namespace qad::demo
