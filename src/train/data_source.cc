// Data resolution and loaders (see data_source.h).
#include "train/data_source.h"

#include <fmt/format.h>

#include "data/calibration_rows.h"
#include "data/dataset.h"
#include "data/document_encoder.h"
#include "data/prepare.h"
#include "tokenizer/doc_end.h"
#include "util/error.h"

namespace qad::train {
namespace fs = std::filesystem;

fs::path resolve_dataset(const std::string& path, const fs::path& tokenizer_dir, const fs::path& run_dir,
                         const std::string& label, double valid_fraction, const std::string& doc_end,
                         const std::string& bos) {
  const fs::path p(path);
  if (fs::is_directory(p)) {
    QAD_CHECK(data::looks_like_dataset(p), "{}: a directory, but not a prepared dataset (no index.json); run `qad "
              "data prepare` or pass a .jsonl / .txt file", path);
    return p;
  }
  QAD_CHECK(fs::exists(p), "{}: no such data file or dataset directory", path);
  const fs::path out = run_dir / "data" / label;
  if (data::looks_like_dataset(out)) return out;  // prepared by an earlier (interrupted) run
  QAD_CHECK(fs::exists(tokenizer_dir / "tokenizer.json"), "{}: cannot prepare {} without a tokenizer; prepare it with "
            "`qad data prepare` and pass the dataset directory", (tokenizer_dir / "tokenizer.json").string(), path);
  fs::create_directories(out.parent_path());
  auto encoder = data::make_tokenizer_encoder(tokenizer_dir, data::parse_bos(bos, "data.bos"));
  data::PrepareOptions o;
  o.output = out;
  o.valid_fraction = valid_fraction;
  o.progress = false;
  o.doc_end = tokenizer::resolve_doc_end(doc_end, tokenizer::Tokenizer::load(tokenizer_dir), "data.doc_end");
  auto summary = data::prepare_dataset({p}, *encoder, o);
  fmt::print("prepared {} → {}: {} documents, {} tokens\n", path, out.string(), summary.documents, summary.tokens);
  return out;
}

Loaders make_loaders(const TrainConfig& cfg, int64_t valid_batch_rows) {
  const fs::path teacher(cfg.run.teacher), run_dir(cfg.run.out);
  const auto& d = cfg.data;
  const bool separate_valid = !d.valid_path.empty();
  const auto train_dir = resolve_dataset(d.path, teacher, run_dir, "train", separate_valid ? 0.0 : d.valid_fraction,
                                         d.doc_end, d.bos);
  std::string fingerprint;
  if (fs::exists(teacher / "tokenizer.json")) fingerprint = data::make_tokenizer_encoder(teacher)->fingerprint();

  data::LoaderOptions o;
  o.seq_len = d.seq_len;
  o.batch_size = d.batch_size;
  o.mode = d.mode == "pad" ? data::PackMode::pad : data::PackMode::pack;
  o.seed = d.seed;
  o.split = separate_valid ? data::Split::all : data::Split::train;
  o.valid_fraction = separate_valid ? 0.0 : d.valid_fraction;
  o.rank = cfg.dist.rank;
  o.world_size = cfg.dist.world_size;
  o.expected_fingerprint = fingerprint;
  auto train_ds = std::make_shared<const data::TokenDataset>(train_dir);
  Loaders l;
  l.train = std::make_unique<data::Loader>(train_ds, o);
  QAD_CHECK(l.train->steps_per_epoch() > 0, "{}: the training split has fewer than one batch ({} x {} tokens); use "
            "more data or a smaller data.batch_size / data.seq_len", train_dir.string(), d.batch_size, d.seq_len);
  // Calibration and validation see the same rows on every rank, the rows a one-process run of the same global
  // batch sees (each rank computes them all: the quantizer's scales and the figures agree across ranks).
  auto whole = o;
  whole.rank = 0;
  whole.world_size = 1;
  whole.batch_size = d.batch_size * cfg.dist.world_size;
  l.calib = std::make_unique<data::Loader>(train_ds, data::calibration_loader_options(o));  // the PTQ rows

  auto vo = whole;
  vo.shuffle = false;
  if (valid_batch_rows > 0) vo.batch_size = valid_batch_rows;
  if (separate_valid) {
    const auto valid_dir = resolve_dataset(d.valid_path, teacher, run_dir, "valid", 0.0, d.doc_end, d.bos);
    l.valid = std::make_unique<data::Loader>(std::make_shared<const data::TokenDataset>(valid_dir), vo);
  } else if (d.valid_fraction > 0) {
    vo.split = data::Split::valid;
    l.valid = std::make_unique<data::Loader>(train_ds, vo);
  }
  if (l.valid && l.valid->steps_per_epoch() == 0) {
    fmt::print(stderr, "qad: warning: the validation split has fewer than one batch; validation is off\n");
    l.valid.reset();
  }
  return l;
}

}  // namespace qad::train
