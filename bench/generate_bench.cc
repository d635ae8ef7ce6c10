// Generation throughput of qad's continuous-batching engine (batch x new tokens, greedy, BF16, no stop
// token so every sequence runs to the limit) against transformers `generate` on the same weights and the
// same prompts, run in the same process tree by tools/bench_generate_hf.py; the greedy outputs of the two
// are compared token for token. Models: qwen3-16m-teacher (real weights) and a Qwen3-0.6B shape (random
// weights, saved to a temporary HF directory so that transformers loads the very same tensors). Then the
// 1000-item arith eval on qwen3-16m (qad eval --tasks) with its accuracy and its generations compared
// with transformers' (the model's eval/test_generations_gpu_bf16.jsonl).
//   ./build/bench_generate [--batch 256] [--new 256] [--prompt-len 32] [--no-hf] [--python python3]
//                          [--only 16m|0.6b|arith]      (run from the repo root; ../shared or QAD_SHARED_DIR)
#include <fmt/format.h>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "eval/eval_command.h"
#include "model/batched_generate.h"
#include "bench_common.h"
#include "model/causal_lm.h"
#include "util/remove_tree.h"

namespace {
namespace fs = std::filesystem;
using nlohmann::json;

fs::path shared_dir() {
  if (const char* s = std::getenv("QAD_SHARED_DIR")) return s;
  return fs::path("..") / "shared";
}

struct Args {
  int64_t batch = 256, new_tokens = 256, prompt_len = 32;
  bool hf = true;
  std::string python = "python3", only;
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// One model: qad timed, transformers timed on the same directory and prompts, outputs compared.
void bench_model(const std::string& name, const fs::path& dir, const Args& a) {
  auto lm = qad::model::CausalLM::load(dir, torch::kCUDA, torch::kBFloat16);
  lm->eval();
  const int64_t vocab = lm->config().vocab_size;
  auto gen = torch::make_generator<at::CPUGeneratorImpl>(1234);
  auto ids = torch::randint(0, vocab, {a.batch, a.prompt_len}, gen);
  std::vector<qad::model::GenerationRequest> requests;
  json prompts = json::array();
  for (int64_t i = 0; i < a.batch; ++i) {
    std::vector<int64_t> p(ids[i].data_ptr<int64_t>(), ids[i].data_ptr<int64_t>() + a.prompt_len);
    prompts.push_back(p);
    requests.push_back({p, static_cast<uint64_t>(i), 0});
  }
  qad::model::BatchedGenerateOptions o;
  o.max_new_tokens = a.new_tokens;
  o.max_slots = a.batch;
  {  // warm-up: kernels, allocator
    auto w = o;
    w.max_new_tokens = 8;
    qad::model::generate_batched(lm, requests, w);
  }
  torch::cuda::synchronize();
  qad::model::GenerateStats stats;
  auto t0 = std::chrono::steady_clock::now();
  auto out = qad::model::generate_batched(lm, requests, o, &stats);
  torch::cuda::synchronize();
  const double qad_s = seconds_since(t0);
  const double tokens = static_cast<double>(a.batch * a.new_tokens);
  fmt::print("\n{}: batch {} x {} new tokens after {}-token prompts, greedy, BF16\n", name, a.batch, a.new_tokens,
             a.prompt_len);
  fmt::print("{:<14} {:>9} {:>12} {:>8}\n", "impl", "seconds", "tokens/s", "vs HF");
  if (!a.hf) {
    fmt::print("{:<14} {:>9.2f} {:>12.0f} {:>8}\n", "qad", qad_s, tokens / qad_s, "-");
    return;
  }
  const fs::path tmp = fs::temp_directory_path() / fmt::format("qad_bench_generate_{}", ::getpid());
  fs::create_directories(tmp);
  {
    std::ofstream(tmp / "prompts.json") << prompts.dump();
  }
  auto text = qad::bench::run_capture(fmt::format("{} tools/bench_generate_hf.py --model {} --prompts {} --new {} --out {} 2>&1",
                                      a.python, dir.string(), (tmp / "prompts.json").string(), a.new_tokens,
                                      (tmp / "hf_out.json").string()));
  double hf_s = 0;
  std::string version;
  try {
    auto j = json::parse(text.substr(text.rfind("{\"impl\"") == std::string::npos ? 0 : text.rfind("{\"impl\"")));
    hf_s = j["seconds"].get<double>();
    version = j["version"].get<std::string>();
  } catch (...) {
    fmt::print("transformers baseline failed (run tools/bench_generate_hf.py by hand):\n{}\n", text);
  }
  fmt::print("{:<14} {:>9.2f} {:>12.0f} {:>8}\n", "qad", qad_s, tokens / qad_s,
             hf_s > 0 ? fmt::format("{:.2f}x", hf_s / qad_s) : "-");
  if (hf_s > 0) {
    fmt::print("{:<14} {:>9.2f} {:>12.0f} {:>8}\n", "transformers", hf_s, tokens / hf_s, "1.00x");
    json hf_out = json::parse(std::ifstream(tmp / "hf_out.json"));
    int64_t equal = 0, first_equal = 0;
    double prefix = 0;
    for (int64_t i = 0; i < a.batch; ++i) {
      auto want = hf_out[static_cast<size_t>(i)].get<std::vector<int64_t>>();
      const auto& got = out[static_cast<size_t>(i)].new_ids;
      equal += got == want ? 1 : 0;
      size_t k = 0;
      while (k < got.size() && k < want.size() && got[k] == want[k]) ++k;
      first_equal += k > 0 ? 1 : 0;
      prefix += static_cast<double>(k);
    }
    fmt::print("greedy outputs: {}/{} sequences identical to transformers, first token equal in {}/{}, mean common "
               "prefix {:.1f} of {} tokens\n", equal, a.batch, first_equal, a.batch, prefix / static_cast<double>(a.batch),
               a.new_tokens);
    fmt::print("transformers {}; qad engine: {} slots, {} decode steps, {} prefill forwards, KV cache {:.2f} GB\n",
               version, stats.slots, stats.decode_steps, stats.prefill_forwards, stats.kv_cache_gb);
  }
  qad::remove_tree(tmp);
}

void bench_arith(const Args&) {
  const fs::path teacher = shared_dir() / "models/qwen3-16m-teacher";
  qad::eval::EvalCommandOptions o;
  o.model = teacher.string();
  o.tasks = shared_dir() / "tasks/arith/test.jsonl";
  o.device = "cuda";
  o.progress = false;
  const fs::path pred = fs::temp_directory_path() / fmt::format("qad_bench_arith_{}.jsonl", ::getpid());
  o.predictions = pred;
  qad::eval::run_eval(o);  // warm-up (and the model/tokenizer files into the page cache)
  auto t0 = std::chrono::steady_clock::now();
  auto m = qad::eval::run_eval(o);
  const double total = seconds_since(t0);
  const auto& t = m["tasks"];
  fmt::print("\narith (qwen3-16m-teacher, {} items, greedy, BF16, <= {} new tokens): {}/{} = {:.2f}%, generation {:.2f} s, "
             "whole run_eval {:.2f} s (model load included), {} tokens, {:.0f} tokens/s, {} slots, {} cut off\n",
             t["items"].get<int64_t>(), t["max_new_tokens"].get<int64_t>(), t["correct"].get<int64_t>(),
             t["items"].get<int64_t>(), 100 * t["accuracy"].get<double>(), t["seconds"].get<double>(), total,
             t["generated_tokens"].get<int64_t>(), t["tokens_per_second"].get<double>(),
             t["generation"]["slots"].get<int64_t>(), t["cut_off"].get<int64_t>());
  // The generations against transformers' BF16 GPU ones.
  std::ifstream golden(teacher / "eval/test_generations_gpu_bf16.jsonl"), ours(pred);
  std::string g, q;
  int64_t same = 0, n = 0;
  while (std::getline(golden, g) && std::getline(ours, q)) {
    same += json::parse(g)["text"] == json::parse(q)["generation"] ? 1 : 0;
    ++n;
  }
  fmt::print("arith generations identical to transformers' (eval/test_generations_gpu_bf16.jsonl): {}/{}\n", same, n);
  qad::remove_tree(pred);
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string s = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (s == "--batch") a.batch = std::stoll(next());
    else if (s == "--new") a.new_tokens = std::stoll(next());
    else if (s == "--prompt-len") a.prompt_len = std::stoll(next());
    else if (s == "--no-hf") a.hf = false;
    else if (s == "--python") a.python = next();
    else if (s == "--only") a.only = next();
    else {
      fmt::print(stderr, "usage: bench_generate [--batch N] [--new N] [--prompt-len N] [--no-hf] [--python PY] "
                 "[--only 16m|0.6b|arith]\n");
      return 2;
    }
  }
  if (!torch::cuda::is_available()) {
    fmt::print("bench_generate: no CUDA device; this benchmark is for the GPU machine\n");
    return 0;
  }
  torch::NoGradGuard no_grad;
  try {
    if (a.only.empty() || a.only == "16m") bench_model("qwen3-16m-teacher", shared_dir() / "models/qwen3-16m-teacher", a);
    if (a.only.empty() || a.only == "0.6b") {
      // Random weights (std 0.02, norms 1), saved so that transformers loads exactly these tensors.
      const fs::path dir = fs::temp_directory_path() / fmt::format("qad_bench_qwen3_0_6b_{}", ::getpid());
      {
        auto lm = qad::bench::random_cuda_model(
            qad::model::parse_config(qad::bench::qwen3_shape("0.6b"), "Qwen3-0.6B shape"), 0);
        lm->save(dir);
      }
      bench_model("Qwen3-0.6B shape (random weights)", dir, a);
      qad::remove_tree(dir);
    }
    if (a.only.empty() || a.only == "arith") bench_arith(a);
  } catch (const std::exception& e) {
    fmt::print("bench_generate failed: {}\n", e.what());
    return 1;
  }
  return 0;
}
