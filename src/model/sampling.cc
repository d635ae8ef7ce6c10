// Counter-based sampling (sampling.h). The hash is the "lowbias32" integer mixer (Wellons, hash-prospector)
// on 32-bit lanes held in int64 tensors; products are split into 16-bit halves so that no int64 overflows.
#include "model/sampling.h"

#include <limits>

#include "util/error.h"
#include "util/torch_format.h"

namespace qad::model {
namespace {

constexpr uint32_t kMul1 = 0x7feb352d, kMul2 = 0x846ca68b;
constexpr uint32_t kLane2 = 0x5bd1e995;  // separates the second 32-bit draw from the first

uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= kMul1;
  x ^= x >> 15;
  x *= kMul2;
  x ^= x >> 16;
  return x;
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// (x * c) mod 2^32 for int64 tensors holding values in [0, 2^32): two products below 2^49.
torch::Tensor mul32(const torch::Tensor& x, uint32_t c) {
  const int64_t lo = c & 0xffffu, hi = c >> 16;
  auto low = x * lo;
  auto high = (x * hi).bitwise_and(0xffff) * 65536;
  return (low + high).bitwise_and(int64_t{0xffffffff});
}

torch::Tensor shr(const torch::Tensor& x, int64_t bits) { return x.div(int64_t{1} << bits, "floor"); }

torch::Tensor mix32(torch::Tensor x) {
  x = x.bitwise_xor(shr(x, 16));
  x = mul32(x, kMul1);
  x = x.bitwise_xor(shr(x, 15));
  x = mul32(x, kMul2);
  return x.bitwise_xor(shr(x, 16));
}

// The index each row's draw `u` selects from the (unnormalised, non-negative) weights [B, V]: the first
// index whose cumulative weight exceeds u * total. Zero-weight indices are never selected (u > 0).
torch::Tensor inverse_cdf(const torch::Tensor& weights, const torch::Tensor& u) {
  auto cdf = weights.to(torch::kFloat64).cumsum(-1);
  auto target = u.unsqueeze(1) * cdf.narrow(1, cdf.size(1) - 1, 1);
  return (cdf < target).sum(-1).clamp_max(weights.size(1) - 1);
}

}  // namespace

void check_sampling_options(const SamplingOptions& o) {
  if (o.greedy) return;
  QAD_CHECK(o.temperature > 0, "--temperature must be > 0 for sampling (use greedy decoding instead of 0), got {}",
            o.temperature);
  QAD_CHECK(o.top_p > 0 && o.top_p <= 1, "--top-p must be in (0, 1], got {}", o.top_p);
  QAD_CHECK(o.top_k >= 0, "--top-k must be >= 0, got {}", o.top_k);
}

uint64_t stream_key(uint64_t seed, uint64_t item, uint64_t sample) {
  return splitmix64(splitmix64(splitmix64(seed) ^ item) ^ sample);
}

double stream_uniform(uint64_t key, int64_t step) {
  const auto lo = static_cast<uint32_t>(key), hi = static_cast<uint32_t>(key >> 32);
  const uint32_t a = mix32(lo ^ mix32(static_cast<uint32_t>(step)));
  const uint32_t b = mix32(hi ^ mix32(a ^ kLane2));
  const uint64_t bits = (static_cast<uint64_t>(a >> 5) << 26) | (b >> 6);  // 27 + 26 = 53 bits
  return (static_cast<double>(bits) + 0.5) / 9007199254740992.0;           // / 2^53, never 0 or 1
}

torch::Tensor stream_uniforms(const torch::Tensor& keys, const torch::Tensor& steps) {
  QAD_CHECK(keys.scalar_type() == torch::kLong && steps.scalar_type() == torch::kLong && keys.sizes() == steps.sizes(),
            "stream_uniforms: keys and steps must be int64 of one shape, got {} and {}", shape_str(keys.sizes()),
            shape_str(steps.sizes()));
  const int64_t mask32 = 0xffffffff;
  auto lo = keys.bitwise_and(mask32);
  auto hi = shr(keys, 32).bitwise_and(mask32);  // floor division keeps the two's-complement high bits
  auto a = mix32(lo.bitwise_xor(mix32(steps.bitwise_and(mask32))));
  auto b = mix32(hi.bitwise_xor(mix32(a.bitwise_xor(static_cast<int64_t>(kLane2)))));
  auto bits = shr(a, 5) * (int64_t{1} << 26) + shr(b, 6);
  return (bits.to(torch::kFloat64) + 0.5) / 9007199254740992.0;
}

torch::Tensor select_tokens(const torch::Tensor& logits, const SamplingOptions& o, const torch::Tensor& keys,
                            const torch::Tensor& steps) {
  QAD_CHECK(logits.dim() == 2, "select_tokens: logits must be [batch, vocab], got {}", shape_str(logits.sizes()));
  if (o.greedy) return logits.argmax(-1);
  check_sampling_options(o);
  const int64_t vocab = logits.size(1);
  const float neg_inf = -std::numeric_limits<float>::infinity();
  auto l = logits.to(torch::kFloat32) / o.temperature;
  if (o.top_k > 0 && o.top_k < vocab) {
    auto kth = std::get<0>(l.topk(o.top_k, -1)).narrow(-1, o.top_k - 1, 1);
    l = l.masked_fill(l < kth, neg_inf);  // ties with the k-th value stay
  }
  auto u = stream_uniforms(keys.to(l.device()), steps.to(l.device()));
  if (o.top_p >= 1) return inverse_cdf(l.softmax(-1), u);
  // Nucleus: most likely first (stable, so ties keep vocabulary order); a token goes when the mass of the
  // tokens before it already reaches top_p (the most likely token always stays).
  auto [sorted, order] = l.sort(/*stable=*/true, -1, /*descending=*/true);
  auto probs = sorted.softmax(-1);
  auto drop = (probs.cumsum(-1) - probs) >= o.top_p;
  auto picked = inverse_cdf(probs.masked_fill(drop, 0.0), u);
  return order.gather(1, picked.unsqueeze(1)).squeeze(1);
}

}  // namespace qad::model
