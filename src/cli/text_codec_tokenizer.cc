// Installs the Hugging Face tokenizer (qad::tokenizer) as the CLI's text codec, so `qad generate
// --prompt TEXT` encodes with the model directory's tokenizer.json and decodes the generated ids.
#include <map>
#include <mutex>

#include "cli/text_codec.h"
#include "tokenizer/tokenizer.h"

namespace qad::cli {
namespace {

const tokenizer::Tokenizer& tokenizer_for(const std::filesystem::path& dir) {
  static std::mutex mu;
  static std::map<std::filesystem::path, tokenizer::Tokenizer> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(dir);
  if (it == cache.end()) it = cache.emplace(dir, tokenizer::Tokenizer::load(dir)).first;
  return it->second;
}

const bool installed = [] {
  text_codec().encode = [](const std::filesystem::path& dir, const std::string& text) {
    auto ids = tokenizer_for(dir).encode(text, true);
    return std::vector<int64_t>(ids.begin(), ids.end());
  };
  text_codec().encode_chat = [](const std::filesystem::path& dir, const std::string& text) {
    auto t = tokenizer::encode_chat(tokenizer_for(dir), {{"user", text}}, /*add_generation_prompt=*/true);
    return std::vector<int64_t>(t.ids.begin(), t.ids.end());
  };
  text_codec().decode = [](const std::filesystem::path& dir, const std::vector<int64_t>& ids) {
    return tokenizer_for(dir).decode(std::vector<int32_t>(ids.begin(), ids.end()), true);
  };
  return true;
}();

}  // namespace
}  // namespace qad::cli
