// Tokenizer: encode (added tokens -> normalizer -> pre-tokenizer -> BPE -> post-processor), batched encode
// over threads, and decode. Mirrors HF tokenizers' Tokenizer::encode / decode.
#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <thread>

#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/utf8.h"
#include "tokenizer/worker_pool.h"

namespace qad::tokenizer {

void Tokenizer::Impl::encode_text(std::string_view text, bool at_origin, std::vector<int32_t>& out) const {
  std::string normalized;
  std::string_view norm = text;
  if (normalizer && normalizer->normalize(text, normalized)) norm = normalized;

  std::vector<Segment> segments;
  if (!normalized_matcher.empty()) normalized_matcher.split(norm, segments);
  else segments.push_back({0, norm.size(), -1});
  PieceStore store;
  thread_local std::vector<Piece> pieces;
  for (const Segment& s : segments) {
    if (s.id >= 0) {
      out.push_back(s.id);
      continue;
    }
    if (s.end == s.start) continue;
    const Piece piece{norm.substr(s.start, s.end - s.start), at_origin && s.start == 0};
    pieces.clear();
    if (pre_tokenizer) pre_tokenizer->split(piece, pieces, store);
    else pieces.push_back(piece);
    for (const Piece& p : pieces) model->tokenize(p.text, out);
  }
}

void Tokenizer::Impl::encode_raw(std::string_view text, std::vector<int32_t>& out) const {
  if (raw_matcher.empty()) {
    if (!text.empty()) encode_text(text, true, out);
    return;
  }
  std::vector<Segment> segs;
  raw_matcher.split(text, segs);
  for (const Segment& s : segs) {
    if (s.id >= 0) out.push_back(s.id);
    else if (s.end > s.start) encode_text(text.substr(s.start, s.end - s.start), s.start == 0, out);
  }
}

Tokenizer Tokenizer::load(const std::filesystem::path& dir_or_file) { return Tokenizer(load_tokenizer_impl(dir_or_file)); }

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  std::string repaired;
  if (utf8::valid_prefix(text) != text.size()) {
    repaired = utf8::lossy(text);
    text = repaired;
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (add_special_tokens) ids.insert(ids.end(), impl_->post.prefix.begin(), impl_->post.prefix.end());
  impl_->encode_raw(text, ids);
  if (add_special_tokens) ids.insert(ids.end(), impl_->post.suffix.begin(), impl_->post.suffix.end());
  return ids;
}

std::vector<std::vector<int32_t>> Tokenizer::encode_batch(const std::vector<std::string>& texts, bool add_special_tokens,
                                                          int threads) const {
  std::vector<std::vector<int32_t>> out(texts.size());
  size_t n_threads = threads > 0 ? static_cast<size_t>(threads) : std::max(1u, std::thread::hardware_concurrency());
  n_threads = std::min(n_threads, texts.size());
  if (n_threads <= 1) {
    for (size_t i = 0; i < texts.size(); ++i) out[i] = encode(texts[i], add_special_tokens);
    return out;
  }
  std::atomic<size_t> next{0};
  std::exception_ptr error;
  std::mutex error_mu;
  auto work = [&] {
    try {
      for (size_t i = next++; i < texts.size(); i = next++) out[i] = encode(texts[i], add_special_tokens);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mu);
      if (!error) error = std::current_exception();
      next = texts.size();
    }
  };
  run_on_workers(n_threads, work);
  if (error) std::rethrow_exception(error);
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    auto it = impl_->added_by_id.find(id);
    if (it != impl_->added_by_id.end()) {
      const AddedToken& t = impl_->added[it->second];
      if (skip_special_tokens && t.special) continue;
      tokens.push_back(t.content);
      continue;
    }
    if (const std::string* t = impl_->model->id_to_token(id)) tokens.push_back(*t);
  }
  if (!impl_->decoder) {
    std::string joined;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i) joined += ' ';
      joined += tokens[i];
    }
    return joined;
  }
  impl_->decoder->decode_chain(tokens);
  std::string joined;
  for (const std::string& t : tokens) joined += t;
  return joined;
}

int64_t Tokenizer::vocab_size() const { return impl_->vocab_size; }

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  auto it = impl_->added_by_content.find(std::string(token));
  if (it != impl_->added_by_content.end()) return it->second;
  return impl_->model->token_to_id(token);
}

std::optional<std::string> Tokenizer::id_to_token(int32_t id) const {
  auto it = impl_->added_by_id.find(id);
  if (it != impl_->added_by_id.end()) return impl_->added[it->second].content;
  if (const std::string* t = impl_->model->id_to_token(id)) return *t;
  return std::nullopt;
}

bool Tokenizer::is_special(int32_t id) const {
  auto it = impl_->added_by_id.find(id);
  return it != impl_->added_by_id.end() && impl_->added[it->second].special;
}

std::optional<int32_t> Tokenizer::bos_id() const { return impl_->bos; }
std::optional<int32_t> Tokenizer::eos_id() const { return impl_->eos; }
std::optional<int32_t> Tokenizer::pad_id() const { return impl_->pad; }
ChatFamily Tokenizer::chat_family() const { return impl_->chat; }

}  // namespace qad::tokenizer
