// Placeholder for make_tokenizer_encoder until qad_tokenizer is merged: the lead replaces this file with
// one that wraps qad::tokenizer::Tokenizer (load, encode, encode_chat, eos_id).
#include "data/document_encoder.h"
#include "util/error.h"

namespace qad::data {

std::unique_ptr<DocumentEncoder> make_tokenizer_encoder(const std::filesystem::path& dir) {
  fail("cannot load the tokenizer in {}: the Hugging Face tokenizer is not in this build (qad_tokenizer is "
       "not linked into qad_data yet)",
       dir.string());
}

}  // namespace qad::data
