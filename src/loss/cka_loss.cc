// cka_loss: selects the valid (optionally subsampled) token rows once, then one batched CKA over all layers.
#include "loss/cka_loss.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <numeric>
#include <vector>

#include "loss/stacked_rows.h"
#include "loss/token_rows.h"
#include "util/error.h"

namespace qad::loss {
namespace {

const torch::Tensor* find_layer(const NamedHidden& hidden, const std::string& name) {
  for (const auto& [n, t] : hidden) {
    if (n == name) return &t;
  }
  return nullptr;
}

std::string layer_names(const NamedHidden& hidden) {
  std::string s;
  for (const auto& [n, t] : hidden) {
    if (!s.empty()) s.append(", ");
    s.append(n);
  }
  return s.empty() ? "(none)" : s;
}

// k distinct positions of [0, n) in ascending order: a partial Fisher-Yates shuffle, k draws from the
// generator (the default CPU generator when null). It runs on the host at the start of a training step while
// the GPU waits for the forward's first kernels; randperm(n) + sort took ~10x longer there. (j = i + r mod (n - i):
// the modulo bias is below (n - i) / 2^64.)
std::vector<int64_t> sample_positions(int64_t n, int64_t k, torch::Generator* gen) {
  at::Generator g = gen != nullptr ? *gen : at::detail::getDefaultCPUGenerator();
  auto* impl = g.get<at::CPUGeneratorImpl>();
  std::vector<int64_t> p(static_cast<size_t>(n));
  std::iota(p.begin(), p.end(), int64_t{0});
  {
    std::lock_guard<std::mutex> lock(g.mutex());
    for (int64_t i = 0; i < k; ++i) {
      const auto j = i + static_cast<int64_t>(impl->random64() % static_cast<uint64_t>(n - i));
      std::swap(p[static_cast<size_t>(i)], p[static_cast<size_t>(j)]);
    }
  }
  p.resize(static_cast<size_t>(k));
  std::sort(p.begin(), p.end());
  return p;
}

}  // namespace

CkaTokens select_cka_tokens(const torch::Tensor& mask, int64_t batch, int64_t tokens, const CkaLossOptions& options,
                            torch::Generator* gen, torch::Device device) {
  QAD_CHECK(options.subsample_tokens >= 0, "cka_loss: subsample_tokens must be >= 0 (0 = all), got {}",
            options.subsample_tokens);
  const int64_t n_rows = batch * tokens;
  auto keep = detail::mask_to_keep(mask, {batch, tokens}, "cka_loss");
  if (keep.defined()) keep = keep.to(device);
  auto rows = detail::select_rows(keep, n_rows);
  torch::Tensor slots;
  if (options.subsample_tokens > 0 && options.subsample_tokens < rows.count) {
    const int64_t k = options.subsample_tokens;
    const auto positions = sample_positions(rows.count, k, gen);
    // Without a mask the positions are the rows themselves, and their slot map is built here too. Both go in one
    // pinned buffer, copied without blocking: a plain copy of a pageable CPU tensor waits for the GPU to drain its
    // queue, once per training step. (int64 index first: the int32 map after it stays aligned.)
    const bool with_slots = !rows.index.defined();
    const int64_t map_rows = with_slots ? n_rows : 0;
    auto staged = torch::empty({k * 8 + map_rows * 4},
                               torch::TensorOptions().dtype(torch::kByte).pinned_memory(device.is_cuda()));
    std::memcpy(staged.data_ptr(), positions.data(), positions.size() * sizeof(int64_t));
    if (with_slots) {
      auto* slot = reinterpret_cast<int32_t*>(staged.data_ptr<uint8_t>() + k * 8);
      std::fill(slot, slot + n_rows, -1);
      for (int64_t i = 0; i < k; ++i) slot[positions[static_cast<size_t>(i)]] = static_cast<int32_t>(i);
    }
    staged = device.is_cuda() ? staged.to(device, /*non_blocking=*/true) : staged.to(device);
    auto pick = staged.narrow(0, 0, k * 8).view(torch::kLong);
    if (with_slots) slots = staged.narrow(0, k * 8, map_rows * 4).view(torch::kInt);
    rows.index = rows.index.defined() ? rows.index.index_select(0, pick) : pick;
    rows.count = k;
  }
  const int64_t need = options.estimator == CkaEstimator::kDebiased ? 4 : 2;
  QAD_CHECK(rows.count >= need, "cka_loss: only {} valid tokens in this batch; CKA needs at least {}", rows.count,
            need);
  return {rows.index, rows.count, slots};
}

CkaLossResult cka_loss(const NamedHidden& teacher_hidden, const NamedHidden& student_hidden, const torch::Tensor& mask,
                       const CkaLossOptions& options, torch::Generator* gen, std::optional<double> kl_value) {
  QAD_CHECK(!student_hidden.empty(), "cka_loss: no layers to compare (the student produced no hidden states)");
  const auto& first = student_hidden.front().second;
  QAD_CHECK(first.dim() == 3, "cka_loss: hidden states must be [batch, tokens, hidden], got {} for '{}'",
            detail::shape_str(first.sizes()), student_hidden.front().first);
  auto tokens = select_cka_tokens(mask, first.size(0), first.size(1), options, gen, first.device());
  detail::TokenRows rows{tokens.index, tokens.count};
  auto take = [&](const NamedHidden& hidden) {
    NamedHidden out;
    for (const auto& [n, t] : hidden) {
      out.emplace_back(n, t.dim() == 3 ? rows.take(t.reshape({-1, t.size(2)}), 0, rows.count) : t);
    }
    return out;
  };
  return cka_loss_on_tokens(take(teacher_hidden), take(student_hidden), options, kl_value);
}

CkaLossResult cka_loss_on_tokens(const NamedHidden& teacher_rows, const NamedHidden& student_rows,
                                 const CkaLossOptions& options, std::optional<double> kl_value) {
  QAD_CHECK(!options.dynamic_balance || kl_value.has_value(),
            "cka_loss: dynamic balancing needs this step's KL value (pass kl_value)");
  QAD_CHECK(options.balance_max_factor > 0, "cka_loss: balance_max_factor must be > 0, got {}",
            options.balance_max_factor);
  std::vector<std::string> layers = options.layers;
  if (layers.empty()) {
    for (const auto& [n, t] : student_rows) layers.push_back(n);
  }
  QAD_CHECK(!layers.empty(), "cka_loss: no layers to compare (the student produced no hidden states)");

  // Resolve and check all layers before computing anything. [B, T, H] (every token) is read as [B*T, H].
  auto rows_of = [](const torch::Tensor& t) { return t.dim() == 3 ? t.reshape({-1, t.size(2)}) : t; };
  std::vector<torch::Tensor> xs, ys;
  for (const auto& name : layers) {
    const torch::Tensor* t = find_layer(teacher_rows, name);
    const torch::Tensor* s = find_layer(student_rows, name);
    QAD_CHECK(t != nullptr, "cka_loss: layer '{}' is missing from the teacher's hidden states (have: {})", name,
              layer_names(teacher_rows));
    QAD_CHECK(s != nullptr, "cka_loss: layer '{}' is missing from the student's hidden states (have: {})", name,
              layer_names(student_rows));
    auto x = rows_of(t->detach()), y = rows_of(*s);
    QAD_CHECK(x.dim() == 2 && y.dim() == 2 && x.size(0) == y.size(0),
              "cka_loss: layer '{}': teacher {} and student {} must hold the same tokens", name,
              detail::shape_str(t->sizes()), detail::shape_str(s->sizes()));
    QAD_CHECK(xs.empty() || (x.size(0) == xs[0].size(0) && x.size(1) == xs[0].size(1) && y.size(1) == ys[0].size(1)),
              "cka_loss: layer '{}' has teacher {} / student {} rows x features where the first layer has {} / {}",
              name, detail::shape_str(x.sizes()), detail::shape_str(y.sizes()), detail::shape_str(xs[0].sizes()),
              detail::shape_str(ys[0].sizes()));
    xs.push_back(x);
    ys.push_back(y);
  }
  const int64_t need = options.estimator == CkaEstimator::kDebiased ? 4 : 2;
  QAD_CHECK(xs[0].size(0) >= need, "cka_loss: only {} valid tokens in this batch; CKA needs at least {}",
            xs[0].size(0), need);

  // One batched CKA over all layers and the term of them: a few large kernels instead of a dozen small ones per
  // layer. Dynamic balancing weighs the term once its value is known.
  QAD_CHECK(options.read_values || !options.dynamic_balance,
            "cka_loss: dynamic balancing reads the values (read_values must be true)");
  auto t = cka_term_batched(stack_rows(xs), stack_rows(ys), options.dynamic_balance ? 1.0 : options.weight,
                            options.estimator, options.bf16_products, options.scratch_rows);
  CkaLossResult result;
  result.per_layer = t.per_layer;
  result.term = t.term;
  result.layers = layers;
  result.loss = t.loss;
  if (!options.read_values) return result;
  auto host = result.per_layer.to(torch::kCPU);

  double term_value = 0;
  for (size_t i = 0; i < layers.size(); ++i) {
    const double v = host[static_cast<int64_t>(i)].item<double>();
    result.per_layer_cka.emplace_back(layers[i], v);
    term_value += (1 - v) / static_cast<double>(layers.size());
  }
  if (options.dynamic_balance) {
    const double kl = std::max(0.0, *kl_value);
    result.balance_factor = kl == 0           ? 0.0
                            : term_value > 0  ? std::min(kl / term_value, options.balance_max_factor)
                                              : options.balance_max_factor;
  }
  if (options.dynamic_balance) result.loss = t.loss * (options.weight * result.balance_factor);
  return result;
}

}  // namespace qad::loss
