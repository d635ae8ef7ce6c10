// Generation for NemotronH (hybrid Mamba-2 / attention): each sequence alone, with a KVCache for the attention
// layers and a MambaCache (conv + SSM states) for the Mamba layers; the prompt in one forward, then one token
// per step. Token selection and random streams as the continuous-batching engine's (sampling.h), so a sequence
// generates the same tokens here as it would there.
#pragma once
#include <vector>

#include "model/batched_generate.h"

namespace qad::model {

std::vector<GenerationOutput> generate_hybrid(CausalLM& lm, const std::vector<GenerationRequest>& requests,
                                              const BatchedGenerateOptions& options);

}  // namespace qad::model
