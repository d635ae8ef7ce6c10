// `--model [LABEL=][fq:]DIR` (see model_spec.h).
#include "eval/model_spec.h"

#include "checkpoint/load.h"
#include "eval/dynamic_fake_quant.h"
#include "util/error.h"

namespace qad::eval {

ModelSpec parse_model_spec(const std::string& spec) {
  ModelSpec s;
  std::string rest = spec;
  if (auto eq = rest.find('='); eq != std::string::npos && rest.substr(0, eq).find('/') == std::string::npos) {
    s.label = rest.substr(0, eq);
    rest = rest.substr(eq + 1);
  }
  if (rest.rfind("fq:", 0) == 0) {
    s.fake_quant = true;
    rest = rest.substr(3);
  }
  QAD_CHECK(!rest.empty(), "--model '{}': no directory (syntax: [LABEL=][fq:]DIR)", spec);
  s.dir = rest;
  if (s.label.empty()) s.label = s.fake_quant ? rest + " (fq)" : rest;
  return s;
}

model::CausalLM load_model_spec(const ModelSpec& spec, torch::Device device, torch::ScalarType dtype) {
  auto lm = checkpoint::load_model(spec.dir, device, dtype);
  if (spec.fake_quant) apply_dynamic_fake_quant(lm);
  return lm;
}

}  // namespace qad::eval
