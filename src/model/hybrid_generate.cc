// NemotronH generation, one sequence at a time (see hybrid_generate.h).
#include "model/hybrid_generate.h"

#include <algorithm>

#include "model/mamba2.h"
#include "model/sampling.h"

namespace qad::model {

std::vector<GenerationOutput> generate_hybrid(CausalLM& lm, const std::vector<GenerationRequest>& requests,
                                              const BatchedGenerateOptions& o) {
  torch::NoGradGuard no_grad;
  const auto& w = lm->model->embed_tokens->weight;
  const auto device = w.device();
  const auto lo = torch::TensorOptions().device(device).dtype(torch::kLong);
  std::vector<GenerationOutput> out(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    const auto& r = requests[i];
    const int64_t prompt_len = static_cast<int64_t>(r.prompt.size());
    KVCache cache(lm->config(), 1, prompt_len + o.max_new_tokens, device, w.scalar_type());
    MambaCache mamba;
    ForwardOptions f;
    f.cache = &cache;
    f.mamba_cache = &mamba;
    f.attention = o.attention;
    f.logits_to_keep = 1;
    const auto key = torch::full({1}, static_cast<int64_t>(stream_key(o.sampling.seed, r.item, r.sample)), lo);
    auto ids = torch::tensor(r.prompt, torch::kLong).to(device).unsqueeze(0);
    for (int64_t step = 0; step < o.max_new_tokens; ++step) {
      auto logits = lm->forward(ids, f).logits.select(1, 0);  // [1, V]
      auto next = select_tokens(logits, o.sampling, key, torch::full({1}, step, lo));
      const int64_t id = next.item<int64_t>();
      out[i].new_ids.push_back(id);
      if (std::find(o.stop_ids.begin(), o.stop_ids.end(), id) != o.stop_ids.end()) {
        out[i].stopped = true;
        break;
      }
      ids = next.view({1, 1});
    }
  }
  return out;
}

}  // namespace qad::model
