// What ends each raw text document in a token stream: the one parser of --doc-end (qad data prepare, qad eval,
// qad cka) and data.doc_end (qad distill's on-the-fly preparation), so that the same spelling gives the same
// tokens everywhere and perplexities computed by different commands are comparable.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "tokenizer/tokenizer.h"

namespace qad::tokenizer {

// "eos" (the tokenizer's EOS token, the default everywhere), "none", a token of the vocabulary
// ("<|endoftext|>") or a token id. nullopt = nothing is appended. Throws naming `flag` otherwise.
std::optional<int32_t> resolve_doc_end(const std::string& spec, const Tokenizer& tok,
                                       std::string_view flag = "--doc-end");

}  // namespace qad::tokenizer
