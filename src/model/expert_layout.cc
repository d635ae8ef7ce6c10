// Per-expert weights read out of stacked expert tensors (see expert_layout.h).
#include "model/expert_layout.h"

#include <regex>

#include "io/safetensors_torch.h"
#include "util/error.h"
#include "util/torch_format.h"

namespace qad::model {

torch::Tensor stacked_expert_weight(const io::Checkpoint& ckpt, const std::string& name, std::string* stacked_name) {
  static const std::regex kExpert(R"((.*\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight)");
  std::smatch m;
  if (!std::regex_match(name, m, kExpert)) return {};
  const std::string prefix = m[1].str(), proj = m[3].str();
  const int64_t e = std::stoll(m[2].str());
  std::string stacked = prefix + (proj == "down_proj" ? ".down_proj" : ".gate_up_proj");
  // NemotronH's experts have no gate: transformers stacks up_proj alone ([E, I, H]).
  const bool plain_up = proj == "up_proj" && ckpt.find(prefix + ".up_proj") != nullptr;
  if (plain_up) stacked = prefix + ".up_proj";
  const auto* entry = ckpt.find(stacked);
  if (entry == nullptr) return {};
  auto t = io::to_tensor(*entry);
  QAD_CHECK(t.dim() == 3 && e < t.size(0), "{}: stacked expert tensor '{}' has shape {}; expected [experts, out, in] "
            "with more than {} experts", ckpt.location().string(), stacked, shape_str(t.sizes()), e);
  if (stacked_name != nullptr) *stacked_name = stacked;
  if (proj == "down_proj" || plain_up) return t.select(0, e);
  QAD_CHECK(t.size(1) % 2 == 0, "{}: '{}' has odd size {} in dim 1; gate_up_proj stacks gate and up rows",
            ckpt.location().string(), stacked, t.size(1));
  const int64_t half = t.size(1) / 2;  // transformers: gate, up = linear(x, gate_up_proj[e]).chunk(2, dim=-1)
  return t.select(0, e).narrow(0, proj == "gate_proj" ? 0 : half, half);
}

}  // namespace qad::model
