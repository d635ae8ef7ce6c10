// The parts of a loaded tokenizer (internal to src/tokenizer): the HF pipeline
// added tokens -> normalizer -> pre-tokenizer -> BPE model -> post-processor, and the decoder.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "tokenizer/added_vocab.h"
#include "tokenizer/bpe.h"
#include "tokenizer/decoder.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/tokenizer.h"

namespace qad::tokenizer {

// TemplateProcessing's "single" template (also used for Bert/Roberta processors): the ids to put before and
// after the sequence when add_special_tokens is true.
struct PostProcessor {
  std::vector<int32_t> prefix, suffix;
};

struct Tokenizer::Impl {
  std::vector<AddedToken> added;
  std::unordered_map<int32_t, size_t> added_by_id;           // id -> index in `added`
  std::unordered_map<std::string, int32_t> added_by_content;
  AddedTokenMatcher raw_matcher;         // tokens with normalized=false, matched in the raw text
  AddedTokenMatcher normalized_matcher;  // tokens with normalized=true, matched in normalized text
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  std::unique_ptr<BpeModel> model;
  PostProcessor post;
  std::unique_ptr<Decoder> decoder;
  int64_t vocab_size = 0;
  std::optional<int32_t> bos, eos, pad;
  ChatFamily chat = ChatFamily::kNone;

  // Appends the ids of plain text (no added-token extraction at the raw level; the normalized-token pass and
  // the rest of the pipeline run). `at_origin`: the text starts at offset 0 of the user's input.
  void encode_text(std::string_view text, bool at_origin, std::vector<int32_t>& out) const;
  // The whole pipeline without the post-processor, on valid UTF-8.
  void encode_raw(std::string_view text, std::vector<int32_t>& out) const;
};

// Parses tokenizer.json (and tokenizer_config.json / config.json next to it). Throws naming the file.
std::shared_ptr<Tokenizer::Impl> load_tokenizer_impl(const std::filesystem::path& dir_or_file);

}  // namespace qad::tokenizer
