// The top-k KL a teacher cache gives against the full KL (docs/teacher_cache.md), on a teacher and a student
// (e.g. its NVFP4 PTQ export, or fq:TEACHER for dynamic NVFP4 fake quantization) over a dataset (a prepared
// directory, or .jsonl / .txt prepared with the teacher's tokenizer into a temporary directory): per k, the mean top-k KL, the full KL, their relative
// difference, the teacher's probability mass inside the top k, and the cosine between the two losses' gradients
// with respect to the student's logits (what training follows) and the gradient's relative error |g - g_full| /
// |g_full| (direction and size); the same for the top-k KL with the tail category (loss.top_k_tail: the rest of the
// vocabulary as one category, the teacher's true probabilities).
//   bench_topk_kl TEACHER STUDENT DATA [rows=64] [seq_len=256] [ks=8,32,64,256,1024] [device=cpu]
#include <fmt/format.h>
#include <torch/torch.h>

#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

#include <filesystem>

#include "data/batch_tensors.h"
#include "data/loader.h"
#include "eval/model_spec.h"
#include "loss/logit_losses.h"
#include "model/causal_lm.h"
#include "train/data_source.h"
#include "util/remove_tree.h"

int main(int argc, char** argv) {
  using namespace qad;
  if (argc < 4) {
    fmt::print(stderr, "usage: bench_topk_kl TEACHER STUDENT|fq:TEACHER DATA [rows=64] [seq_len=256] "
               "[ks=8,32,64,256,1024] [device=cpu]\n");
    return 2;
  }
  const int64_t rows = argc > 4 ? std::stoll(argv[4]) : 64;
  const int64_t seq_len = argc > 5 ? std::stoll(argv[5]) : 256;
  std::vector<int64_t> ks;
  {
    std::stringstream in(argc > 6 ? argv[6] : "8,32,64,256,1024");
    std::string item;
    while (std::getline(in, item, ',')) ks.push_back(std::stoll(item));
  }
  const torch::Device device(argc > 7 ? argv[7] : "cpu");
  const auto dtype = model::CausalLM::default_dtype(device);
  auto teacher = eval::load_model_spec(eval::parse_model_spec(argv[1]), device, dtype);
  auto student = eval::load_model_spec(eval::parse_model_spec(argv[2]), device, dtype);
  const auto tmp = std::filesystem::temp_directory_path() / fmt::format("bench_topk_kl_{}", ::getpid());
  const auto dataset = train::resolve_dataset(argv[3], argv[1], tmp, "data", 0.0);
  teacher->eval();
  student->eval();
  data::LoaderOptions o;
  o.seq_len = seq_len;
  o.batch_size = 8;
  o.shuffle = false;
  o.split = data::Split::all;
  o.valid_fraction = 0;
  data::Loader loader(dataset, o);
  const int64_t batches = std::max<int64_t>(1, std::min(rows / o.batch_size, loader.steps_per_epoch()));
  double full = 0;
  std::vector<double> topk(ks.size()), mass(ks.size()), cosine(ks.size()), tail(ks.size()), tail_cosine(ks.size()),
      error(ks.size()), tail_error(ks.size());
  for (int64_t b = 0; b < batches; ++b) {
    auto x = data::to_tensors(loader.next(), device);
    torch::Tensor t, s;
    {
      torch::NoGradGuard ng;
      t = teacher->forward(x.input_ids).logits;
      s = student->forward(x.input_ids).logits;
    }
    auto grad_of = [&](int64_t k, bool with_tail, double* value) {
      auto leaf = s.detach().to(torch::kFloat32).requires_grad_(true);
      auto kl = loss::kl_divergence(leaf, t.to(torch::kFloat32), x.loss_mask, {.top_k = k, .top_k_tail = with_tail});
      kl.backward();
      *value = kl.item<double>();
      return leaf.grad().reshape({-1});
    };
    double f = 0;
    const auto g_full = grad_of(0, false, &f);
    full += f / static_cast<double>(batches);
    auto lse = torch::logsumexp(t.to(torch::kFloat32), -1, true);
    for (size_t i = 0; i < ks.size(); ++i) {
      double v = 0;
      const auto g = grad_of(ks[i], false, &v);
      topk[i] += v / static_cast<double>(batches);
      cosine[i] += torch::cosine_similarity(g, g_full, 0).item<double>() / static_cast<double>(batches);
      auto relative_error = [&](const torch::Tensor& x) {
        return ((x - g_full).norm() / g_full.norm()).item<double>() / static_cast<double>(batches);
      };
      error[i] += relative_error(g);
      const auto g_tail = grad_of(ks[i], true, &v);
      tail[i] += v / static_cast<double>(batches);
      tail_cosine[i] += torch::cosine_similarity(g_tail, g_full, 0).item<double>() / static_cast<double>(batches);
      tail_error[i] += relative_error(g_tail);
      auto top = std::get<0>(t.to(torch::kFloat32).topk(ks[i], -1));
      auto m = (top - lse).exp().sum(-1);
      mass[i] += ((m * x.loss_mask).sum() / x.loss_mask.sum()).item<double>() / static_cast<double>(batches);
    }
  }
  fmt::print("teacher {} / student {}: {} rows x {} tokens, full KL {:.5f} nats/token\n", argv[1], argv[2],
             batches * o.batch_size, seq_len, full);
  fmt::print("{:>6} {:>12} {:>10} {:>12} {:>12} {:>10} {:>12} {:>10} {:>12} {:>10}\n", "k", "top-k KL", "vs full",
             "top-k mass", "grad cosine", "grad err", "tail KL", "vs full", "tail cosine", "tail err");
  for (size_t i = 0; i < ks.size(); ++i) {
    fmt::print("{:>6} {:>12.5f} {:>+9.1f}% {:>12.4f} {:>12.4f} {:>10.4f} {:>12.5f} {:>+9.2f}% {:>12.5f} {:>10.4f}\n",
               ks[i], topk[i], 100 * (topk[i] / full - 1), mass[i], cosine[i], error[i], tail[i],
               100 * (tail[i] / full - 1), tail_cosine[i], tail_error[i]);
  }
  remove_tree(tmp);
  return 0;
}
