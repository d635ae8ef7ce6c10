#include "data/dataset.h"

#include <algorithm>

#include "util/atomic_file.h"
#include "util/error.h"

namespace qad::data {
namespace fs = std::filesystem;

bool looks_like_dataset(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_regular_file(dir / kIndexFile, ec)) return false;
  try {
    auto j = nlohmann::json::parse(read_file(dir / kIndexFile));
    return j.is_object() && j.value("format", "") == kDatasetFormat;
  } catch (const std::exception&) {
    return false;
  }
}

TokenDataset::TokenDataset(const fs::path& dir) : dir_(dir) {
  const fs::path index_path = dir / kIndexFile;
  QAD_CHECK(fs::is_directory(dir), "dataset {} does not exist or is not a directory; create it with `qad data "
            "prepare`", dir.string());
  QAD_CHECK(fs::is_regular_file(index_path), "{} has no {}: not a prepared dataset (run `qad data prepare`)",
            dir.string(), kIndexFile);
  try {
    index_ = nlohmann::json::parse(read_file(index_path));
    QAD_CHECK(index_.is_object() && index_.value("format", "") == kDatasetFormat,
              "{} is not a qad token dataset index (format is not \"{}\")", index_path.string(), kDatasetFormat);
    const int version = index_.at("version").get<int>();
    QAD_CHECK(version == kDatasetVersion, "{} has dataset format version {}; this build reads version {}",
              index_path.string(), version, kDatasetVersion);
    for (const auto& in : index_.at("inputs")) inputs_.push_back(in.at("path").get<std::string>());
    for (const auto& s : index_.at("shards")) {
      const auto file = s.at("file").get<std::string>();
      QAD_CHECK(file.find('/') == std::string::npos && file.find("..") == std::string::npos,
                "{}: shard name '{}' must be a plain file name", index_path.string(), file);
      auto shard = std::make_unique<MappedShard>(dir / file);
      QAD_CHECK(shard->num_documents() == s.at("documents").get<uint64_t>() &&
                    shard->num_tokens() == s.at("tokens").get<uint64_t>(),
                "shard {} holds {} documents / {} tokens but the index says {} / {}: the dataset is damaged",
                shard->path().string(), shard->num_documents(), shard->num_tokens(), s.at("documents").dump(),
                s.at("tokens").dump());
      num_tokens_ += shard->num_tokens();
      doc_starts_.push_back(doc_starts_.back() + shard->num_documents());
      shards_.push_back(std::move(shard));
    }
  } catch (const nlohmann::json::exception& e) {
    fail("cannot read {}: {}; the index is damaged, prepare the dataset again", index_path.string(), e.what());
  }
  QAD_CHECK(num_documents() == index_.at("documents").get<uint64_t>() &&
                num_tokens_ == index_.at("tokens").get<uint64_t>(),
            "{}: the shards hold {} documents / {} tokens but the index says {} / {}", index_path.string(),
            num_documents(), num_tokens_, index_.at("documents").dump(), index_.at("tokens").dump());
  // Token ids index embedding tables downstream: check them once here rather than trust the file.
  const auto vocab = static_cast<uint64_t>(vocab_size());
  for (const auto& shard : shards_) {
    const uint32_t* t = shard->tokens();
    const uint32_t top = shard->num_tokens() ? *std::max_element(t, t + shard->num_tokens()) : 0;
    QAD_CHECK(shard->num_tokens() == 0 || top < vocab, "shard {} holds token id {} >= vocab_size {}",
              shard->path().string(), top, vocab);
    for (uint64_t d = 0; d < shard->num_documents(); ++d) {
      QAD_CHECK(shard->sources()[d].input_index < inputs_.size(),
                "shard {}: document {} names input {} but the index lists {} inputs", shard->path().string(), d,
                shard->sources()[d].input_index, inputs_.size());
    }
  }
}

std::string TokenDataset::fingerprint() const { return index_.at("encoder").at("fingerprint").get<std::string>(); }
int64_t TokenDataset::vocab_size() const { return index_.at("encoder").at("vocab_size").get<int64_t>(); }
std::optional<int32_t> TokenDataset::eos_id() const {
  const auto& e = index_.at("encoder").at("eos_id");
  if (e.is_null()) return std::nullopt;
  return e.get<int32_t>();
}
double TokenDataset::valid_fraction() const { return index_.value("valid_fraction", 0.0); }
uint64_t TokenDataset::split_seed() const { return index_.value("split_seed", uint64_t{0}); }
const std::string& TokenDataset::input_path(uint32_t input_index) const { return inputs_.at(input_index); }

DocumentView TokenDataset::document(uint64_t i) const {
  QAD_CHECK(i < num_documents(), "document {} is out of range: {} has {} documents", i, dir_.string(),
            num_documents());
  size_t s = static_cast<size_t>(std::upper_bound(doc_starts_.begin(), doc_starts_.end(), i) - doc_starts_.begin()) - 1;
  const MappedShard& shard = *shards_[s];
  const uint64_t local = i - doc_starts_[s];
  DocumentView d;
  d.shard = &shard;
  d.first = shard.offsets()[local];
  d.size = shard.offsets()[local + 1] - d.first;
  d.source = shard.sources()[local];
  return d;
}

}  // namespace qad::data
