// --doc-end parsing (see doc_end.h).
#include "tokenizer/doc_end.h"

#include <algorithm>

#include "util/error.h"

namespace qad::tokenizer {

std::optional<int32_t> resolve_doc_end(const std::string& spec, const Tokenizer& tok, std::string_view flag) {
  if (spec == "none") return std::nullopt;
  if (spec == "eos") {
    auto e = tok.eos_id();
    QAD_CHECK(e.has_value(), "{} eos: the tokenizer has no EOS token; give {} none or a token", flag, flag);
    return *e;
  }
  if (auto id = tok.token_to_id(spec)) return *id;
  if (!spec.empty() && spec.size() <= 9 && std::all_of(spec.begin(), spec.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    const long long v = std::stoll(spec);
    QAD_CHECK(v < tok.vocab_size(), "{} {}: id outside the vocabulary (size {})", flag, spec, tok.vocab_size());
    return static_cast<int32_t>(v);
  }
  fail("{} '{}': not 'eos', 'none', a token of the vocabulary or a token id", flag, spec);
}

}  // namespace qad::tokenizer
