// Safetensors core without torch: every malformed-file case gives its one-line message naming the file,
// the committed corpus runs through the parser, the writer round-trips bytes, shards and indexes.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>

#include "util/remove_tree.h"
#include "io/safetensors.h"
#include "io/safetensors_writer.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace qad::io {
namespace {
namespace fs = std::filesystem;

fs::path source_dir() { return QAD_SOURCE_DIR; }

struct TempDir {
  fs::path path;
  TempDir() {
    static int n = 0;
    path = fs::temp_directory_path() / ("qad_io_test_" + std::to_string(::getpid()) + "_" + std::to_string(n++));
    ::qad::remove_tree(path);
    fs::create_directories(path);
  }
  ~TempDir() { ::qad::remove_tree(path); }
};

// Runs `f`, expects a qad::Error whose single-line message contains every one of `parts`.
template <typename F>
void expect_error(F&& f, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one containing '" << *parts.begin() << "'";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "message is not one line: " << msg;
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

TEST(SafetensorsCorpus, EveryCommittedFileGivesItsMessage) {
  const fs::path dir = source_dir() / "tests/io/corpus";
  std::ifstream tsv(dir / "expected.tsv");
  ASSERT_TRUE(tsv.good()) << "missing " << (dir / "expected.tsv");
  std::string line;
  int cases = 0, valid = 0;
  while (std::getline(tsv, line)) {
    if (line.empty() || line[0] == '#') continue;
    const auto tab = line.find('\t');
    ASSERT_NE(tab, std::string::npos) << line;
    const std::string file = line.substr(0, tab), expect = line.substr(tab + 1);
    SCOPED_TRACE(file);
    ++cases;
    if (expect == "OK") {
      EXPECT_NO_THROW(SafetensorsFile::open(dir / file));
      ++valid;
    } else {
      expect_error([&] { SafetensorsFile::open(dir / file); }, {file, expect});
    }
  }
  EXPECT_GE(cases, 20);
  EXPECT_GE(valid, 2);
}

TEST(SafetensorsHeader, ParsesShapesOffsetsAndMetadata) {
  auto f = SafetensorsFile::open(source_dir() / "tests/io/corpus/valid_two.safetensors");
  ASSERT_EQ(f->tensors().size(), 2u);
  const auto* w = f->find("w");
  const auto* b = f->find("b");
  ASSERT_TRUE(w && b);
  EXPECT_EQ(w->dtype, DType::F32);
  EXPECT_EQ(w->shape, (std::vector<int64_t>{2}));
  EXPECT_EQ(b->dtype, DType::BF16);
  EXPECT_EQ(b->shape, (std::vector<int64_t>{2, 1}));
  EXPECT_EQ(b->begin, 8u);
  EXPECT_EQ(f->header().metadata.at("format"), "pt");
  EXPECT_EQ(f->find("nope"), nullptr);
}

TEST(SafetensorsHeader, TruncatedCopiesOfAValidFileAreAllRejectedOrInBounds) {
  // Every prefix of a valid file: parse must either throw qad::Error or return spans inside the prefix.
  std::vector<float> data(6);
  std::iota(data.begin(), data.end(), 1.0f);
  std::vector<TensorRef> t = {{"x", DType::F32, {2, 3}, std::as_bytes(std::span(data))}};
  const std::string whole = safetensors_header(t, {}) + std::string(reinterpret_cast<const char*>(data.data()), 24);
  int rejected = 0;
  for (std::size_t n = 0; n < whole.size(); ++n) {
    try {
      auto h = parse_safetensors(std::string_view(whole).substr(0, n), "prefix");
      for (const auto& ti : h.tensors) EXPECT_LE(h.data_offset + ti.end, n);
    } catch (const Error&) {
      ++rejected;
    }
  }
  EXPECT_EQ(rejected, static_cast<int>(whole.size()));  // no strict prefix holds all 24 data bytes
  EXPECT_NO_THROW(parse_safetensors(whole, "whole"));
}

TEST(SafetensorsWriter, RoundTripsEveryDtypeAlignedAndAtomically) {
  TempDir tmp;
  std::vector<std::vector<std::byte>> store;
  std::vector<TensorRef> tensors;
  int k = 0;
  for (DType d : {DType::F32, DType::F16, DType::BF16, DType::F8_E4M3, DType::U8, DType::I8, DType::I32, DType::I64,
                  DType::F64, DType::BOOL, DType::I16}) {
    std::vector<int64_t> shape = {3, k % 3 + 1};  // odd sizes so that a naive layout would misalign
    std::vector<std::byte> bytes(static_cast<std::size_t>(shape[0] * shape[1]) * dtype_size(d));
    for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<std::byte>((i * 37 + k) & 0xff);
    store.push_back(std::move(bytes));
    tensors.push_back({"t" + std::string(dtype_name(d)), d, shape, store.back()});
    ++k;
  }
  const fs::path p = tmp.path / "a.safetensors";
  write_safetensors(p, tensors, {{"format", "pt"}, {"note", "x"}});
  for (const auto& e : fs::directory_iterator(tmp.path)) EXPECT_EQ(e.path().filename(), "a.safetensors");
  auto f = SafetensorsFile::open(p);
  EXPECT_EQ(f->header().data_offset % 8, 0u);
  EXPECT_EQ(f->header().metadata.at("note"), "x");
  ASSERT_EQ(f->tensors().size(), tensors.size());
  for (const auto& t : tensors) {
    const auto* info = f->find(t.name);
    ASSERT_NE(info, nullptr) << t.name;
    EXPECT_EQ(info->dtype, t.dtype);
    EXPECT_EQ(info->shape, t.shape);
    auto got = f->bytes(*info);
    ASSERT_EQ(got.size(), t.bytes.size());
    EXPECT_EQ(std::memcmp(got.data(), t.bytes.data(), got.size()), 0) << t.name;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(got.data()) % dtype_size(t.dtype), 0u) << t.name << " misaligned";
  }
}

TEST(SafetensorsWriter, RejectsInconsistentInput) {
  std::vector<float> four(4);
  TempDir tmp;
  expect_error([&] { write_safetensors(tmp.path / "x.safetensors", {{"a", DType::F32, {3}, std::as_bytes(std::span(four))}}); },
               {"'a'", "12 bytes but 16 bytes were given"});
  expect_error([&] {
    write_safetensors(tmp.path / "x.safetensors", {{"a", DType::F32, {4}, std::as_bytes(std::span(four))},
                                                   {"a", DType::F32, {4}, std::as_bytes(std::span(four))}});
  }, {"'a' given twice"});
  EXPECT_FALSE(fs::exists(tmp.path / "x.safetensors"));
}

// Eight float tensors of 64 bytes each, values tagged by tensor.
struct Sample {
  std::vector<std::vector<float>> data;
  std::vector<TensorRef> refs;
  Sample() {
    for (int i = 0; i < 8; ++i) {
      data.emplace_back(16);
      std::iota(data.back().begin(), data.back().end(), 100.0f * i);
    }
    for (int i = 0; i < 8; ++i)
      refs.push_back({"layer." + std::to_string(i) + ".w", DType::F32, {4, 4}, std::as_bytes(std::span(data[i]))});
  }
};

TEST(SafetensorsCheckpoint, ShardsRespectTheLimitAndReadBack) {
  TempDir tmp;
  Sample s;
  auto files = write_checkpoint(tmp.path, s.refs, {.max_shard_bytes = 200});
  ASSERT_EQ(files.size(), 4u);  // 3 tensors (192 B) per shard -> 3 shards, plus the index
  EXPECT_EQ(files.back().filename(), "model.safetensors.index.json");
  EXPECT_EQ(files[0].filename(), "model-00001-of-00003.safetensors");
  for (std::size_t i = 0; i + 1 < files.size(); ++i) {
    auto f = SafetensorsFile::open(files[i]);
    uint64_t bytes = 0;
    for (const auto& t : f->tensors()) bytes += t.nbytes();
    EXPECT_LE(bytes, 200u);
  }
  auto index = nlohmann::json::parse(read_file(files.back()));
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), 8u * 64u);
  auto ckpt = Checkpoint::open(tmp.path);
  ASSERT_EQ(ckpt.names().size(), 8u);
  for (int i = 0; i < 8; ++i) {
    const auto& e = ckpt.at("layer." + std::to_string(i) + ".w");
    auto b = e.file->bytes(*e.info);
    EXPECT_EQ(std::memcmp(b.data(), s.data[static_cast<std::size_t>(i)].data(), 64), 0);
  }
  expect_error([&] { ckpt.at("layer.9.w"); }, {tmp.path.string(), "'layer.9.w' is missing"});
}

TEST(SafetensorsCheckpoint, SingleFileWhenUnlimited) {
  TempDir tmp;
  Sample s;
  auto files = write_checkpoint(tmp.path, s.refs);
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(files[0].filename(), "model.safetensors");
  EXPECT_EQ(Checkpoint::open(tmp.path).names().size(), 8u);
  EXPECT_EQ(Checkpoint::open(files[0]).names().size(), 8u);
}

TEST(SafetensorsCheckpoint, MalformedIndexesAndShards) {
  Sample s;
  auto sharded = [&](TempDir& tmp) { write_checkpoint(tmp.path, s.refs, {.max_shard_bytes = 200}); };
  auto edit_index = [](const fs::path& dir, auto&& edit) {
    auto j = nlohmann::json::parse(read_file(dir / "model.safetensors.index.json"));
    edit(j);
    write_file_atomic(dir / "model.safetensors.index.json", j.dump());
  };
  {
    TempDir tmp;
    sharded(tmp);
    fs::remove(tmp.path / "model-00002-of-00003.safetensors");
    expect_error([&] { Checkpoint::open(tmp.path); },
                 {"model.safetensors.index.json", "shard 'model-00002-of-00003.safetensors'", "is missing"});
  }
  {
    TempDir tmp;
    sharded(tmp);
    edit_index(tmp.path, [](auto& j) { j["weight_map"]["ghost.w"] = "model-00001-of-00003.safetensors"; });
    expect_error([&] { Checkpoint::open(tmp.path); }, {"'ghost.w' is listed for shard", "does not contain it"});
  }
  {
    TempDir tmp;
    sharded(tmp);
    edit_index(tmp.path, [](auto& j) { j["weight_map"].erase("layer.0.w"); });
    expect_error([&] { Checkpoint::open(tmp.path); }, {"the shards hold 8 tensors but weight_map lists 7"});
  }
  {
    TempDir tmp;
    sharded(tmp);
    edit_index(tmp.path, [](auto& j) { j["weight_map"]["layer.0.w"] = "../etc/passwd"; });
    expect_error([&] { Checkpoint::open(tmp.path); }, {"not a file in this directory"});
  }
  {
    TempDir tmp;
    sharded(tmp);
    write_file_atomic(tmp.path / "model.safetensors.index.json", "{\"weight_map\": ");
    expect_error([&] { Checkpoint::open(tmp.path); }, {"model.safetensors.index.json", "not valid JSON"});
  }
  {
    TempDir tmp;
    // The same tensor name in two shards.
    write_safetensors(tmp.path / "a.safetensors", {s.refs[0]});
    write_safetensors(tmp.path / "b.safetensors", {s.refs[0]});
    nlohmann::json j = {{"weight_map", {{"layer.0.w", "a.safetensors"}, {"x", "b.safetensors"}}}};
    write_file_atomic(tmp.path / "model.safetensors.index.json", j.dump());
    expect_error([&] { Checkpoint::open(tmp.path); }, {"tensor 'layer.0.w' is in both a.safetensors and b.safetensors"});
  }
  {
    TempDir tmp;
    expect_error([&] { Checkpoint::open(tmp.path); }, {"neither model.safetensors nor model.safetensors.index.json"});
    expect_error([&] { Checkpoint::open(tmp.path / "none"); }, {"no such checkpoint"});
  }
}

}  // namespace
}  // namespace qad::io
