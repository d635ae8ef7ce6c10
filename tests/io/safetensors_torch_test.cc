// The torch adapter: zero-copy views that keep the mapping alive, copy-on-write, dtype mapping, and the
// real stories260K checkpoint.
#include <unistd.h>

#include "common/test_util.h"
#include "io/safetensors_torch.h"
#include "util/torch_compat.h"

namespace qad::io {
namespace {
namespace fs = std::filesystem;

fs::path temp_file(const std::string& name) {
  return fs::temp_directory_path() / ("qad_io_torch_" + std::to_string(::getpid()) + "_" + name);
}

TEST(SafetensorsTorch, ViewsAreZeroCopyAndOutliveTheFileHandle) {
  auto gen = qad::testing::seeded_generator();
  const auto p = temp_file("view.safetensors");
  auto a = torch::randn({5, 7}, gen);
  auto b = torch::randn({3}, gen).to(torch::kBFloat16);
  write_tensors(p, {{"a", a}, {"b", b}});
  torch::Tensor va;
  const std::byte* mapped = nullptr;
  {
    auto f = SafetensorsFile::open(p);
    va = to_tensor(f, *f->find("a"));
    mapped = f->bytes(*f->find("a")).data();
  }  // the file handle is gone; the view keeps the mapping
  EXPECT_EQ(static_cast<const void*>(va.data_ptr()), static_cast<const void*>(mapped));
  EXPECT_TRUE(qad::testing::same_bits(va, a));
  va.mul_(2);  // private copy-on-write pages: the file stays as written
  auto again = read_tensors(p);
  ASSERT_EQ(again.size(), 2u);
  EXPECT_EQ(again[0].first, "a");
  EXPECT_TRUE(qad::testing::same_bits(again[0].second, a));
  EXPECT_TRUE(qad::testing::same_bits(again[1].second, b));
  fs::remove(p);
}

TEST(SafetensorsTorch, EveryDtypeRoundTrips) {
  auto gen = qad::testing::seeded_generator(1);
  const auto p = temp_file("dtypes.safetensors");
  NamedTensors in;
  for (auto t : {torch::kFloat32, torch::kFloat16, torch::kBFloat16, torch::kFloat64}) {
    in.emplace_back(std::string("f_") + c10::toString(t), torch::randn({3, 5}, gen).to(t));
  }
  for (auto t : {torch::kInt64, torch::kInt32, torch::kInt8, torch::kUInt8}) {
    in.emplace_back(std::string("i_") + c10::toString(t), torch::randint(0, 100, {7}, gen).to(t));
  }
  in.emplace_back("strided", torch::randn({4, 6}, gen).t());  // non-contiguous input is written contiguous
  write_tensors(p, in);
  auto f = SafetensorsFile::open(p);
  for (const auto& [name, t] : in) {
    auto got = to_tensor(f, *f->find(name));
    EXPECT_TRUE(qad::testing::same_bits(got, t.contiguous())) << name;
  }
  fs::remove(p);
}

TEST(SafetensorsTorch, Float8MapsToTheTorchType) {
  EXPECT_EQ(to_scalar_type(DType::F8_E4M3), compat::float8_e4m3_type());
  EXPECT_EQ(to_scalar_type(DType::U8), torch::kUInt8);
  if (compat::kHasFloat8) {
    EXPECT_EQ(from_scalar_type(compat::float8_e4m3_type()), DType::F8_E4M3);
  }
  // 0x38 is 1.0 in E4M3; read through the mapping it keeps its bits.
  const auto p = temp_file("f8.safetensors");
  std::vector<std::byte> bytes = {std::byte{0x38}, std::byte{0xC0}, std::byte{0x00}};
  write_safetensors(p, {{"s", DType::F8_E4M3, {3}, bytes}});
  auto f = SafetensorsFile::open(p);
  auto t = to_tensor(f, *f->find("s"));
  EXPECT_EQ(t.scalar_type(), compat::float8_e4m3_type());
  auto raw = t.view(torch::kUInt8);
  EXPECT_EQ(raw[0].item<int>(), 0x38);
  EXPECT_EQ(raw[1].item<int>(), 0xC0);
  fs::remove(p);
}

TEST(SafetensorsTorch, ReadsTheRealStories260K) {
  const auto dir = qad::testing::shared_dir() / "models/stories260K";
  if (!fs::exists(dir)) GTEST_SKIP() << dir << " not present";
  auto tensors = read_tensors(dir);
  ASSERT_EQ(tensors.size(), 47u);
  int64_t params = 0;
  for (const auto& [name, t] : tensors) {
    EXPECT_EQ(t.scalar_type(), torch::kFloat32) << name;
    params += t.numel();
  }
  EXPECT_EQ(params, 260032);
  EXPECT_EQ(tensors.front().first, "model.embed_tokens.weight");
  EXPECT_EQ(tensors.front().second.sizes(), (std::vector<int64_t>{512, 64}));
}

}  // namespace
}  // namespace qad::io
