// One QAD training step (BF16 teacher forward + NVFP4 fake-quantized student forward/backward + chunked KL +
// AdamW with FP32 master weights) on Qwen3-0.6B- and 1.7B-shaped random models: tokens/s and MFU; then the same
// step with the CKA term in several settings (all tokens FP32, TF32, token subsampling) as ratios of step time
// and peak memory against QAD measured in the same run (goals: <= 1.01x time, <= 1.03x memory). Then the same QAD
// step in PyTorch (tools/bench_train_torch.py, run here in a child process once qad's memory is freed): eager with a
// Triton fake-quant kernel, and torch.compile; side by side with ratios, and the step-0 losses compared (the child
// loads the model, batch and amaxes this process wrote into a temporary directory).
//   ./build/bench_train [--models 0.6b,1.7b] [--batch 4] [--seq 2048] [--iters 8] [--warmup 3] [--rounds 1] [--ckpt]
//                       [--variants qad,recipe,...] [--torch eager,compile | --no-torch] [--python python3]
//                       [--offload]        (FP32 master + moments in pinned host memory: OffloadAdamW; 8b fits one H200)
//                       [--profile FILE]   (one QAD step and one step of the first CKA variant under the Kineto
//                                           profiler: per-kernel GPU time, top 30, and the longest GPU idle gaps)
//                       [--profile-steps N] (N profiled steps of each, taking turns; the difference per step)
//                       [--timeline N]     (N more steps of QAD and the first other variant, taking turns, timed at
//                                           the step's points (train/step_marks.h): where the host was and when the
//                                           device had done the work queued before each, medians; no profiler)
//                       [--overlap N]      (N more steps of QAD and the first other variant, taking turns, each read
//                                           after the next is queued, as qad distill runs them: their ratio)
// --rounds R: the variants take turns R times (iters timed steps each per round); the medians are over all timed
// steps, and each CKA variant's ratio to QAD is also printed per round (the spread of the ratio). Later rounds
// start each turn with --turn-warmup untimed steps (default 1); `--iters 1 --rounds 20 --turn-warmup 0`
// alternates the variants step by step, which cancels drifts of the GPU's clocks between them. Odd rounds take the
// variants in reverse order, and the ratios are also printed by order (after QAD's step / before it); the variant
// qad-null (QAD again) measures the bench's own bias, a ratio that should read 1.
// --chain C: each timed step is the mean of C steps taken back to back (the bench's sync only before and after
// them). Each step still ends with its one read of the values (train_step), which waits for the device, so the host
// work at a step's start does not overlap the previous step's kernels in either mode; C > 1 only leaves out the
// bench's own syncs. A step's host work before its first kernel counts in full, as in `qad distill`.
// Beside each measured peak: `qad distill --plan`'s prediction for the same configuration (train/memory_plan.h) and
// the relative error; the plan's table is printed once per model.
// MFU: 6 * (student matmul params) * tokens + 2 * (teacher matmul params) * tokens, plus causal attention
// (x3 for the student's forward+backward, x1 for the teacher), over the H100 SXM dense BF16 peak (989 TFLOP/s).
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "bench_common.h"
#include "data/batch_tensors.h"
#include "experiment/stats.h"
#include "io/safetensors_torch.h"
#include "kernel_profile.h"
#include "loss/stacked_rows.h"
#include "model/causal_lm.h"
#include "model/device_memory.h"
#include "model/hidden_rows.h"
#include "train/memory.h"
#include "train/memory_plan.h"
#include "train/offload_adamw.h"
#include "train/optimizer.h"
#include "train/step.h"
#include "train/step_marks.h"
#include "train/student.h"
#include "util/remove_tree.h"
#include "util/torch_compat.h"

#ifdef QAD_HAS_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace {

namespace fs = std::filesystem;
constexpr double kPeakBf16Flops = 989e12;

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  for (size_t b = 0; b < s.size();) {
    size_t e = s.find(',', b);
    if (e == std::string::npos) e = s.size();
    if (e > b) out.push_back(s.substr(b, e - b));
    b = e + 1;
  }
  return out;
}

struct Measured {
  double ms = 0, peak_gb = 0;
};

struct Variant {
  std::string key, label;
  double cka = 0;
  int64_t subsample = 0;
  bool tf32 = false;
  bool bf16_products = false;  // loss.cka_bf16_products
};

// Which of two variants takes turn k when they alternate A B, B A, A B, ... (the timeline and the overlapped steps).
size_t abba_turn(int64_t k) { return static_cast<size_t>((k % 2) ^ ((k / 2) % 2)); }

// --timeline: `steps` steps of the first two variants, taking turns (A B, B A, ..), each timed at the step's points
// (train/step_marks.h) and at its end: the host's time since the step began, and the device's (a CUDA event recorded
// at the point, read once the step is done: when the device had finished the work queued before it). Medians per
// point; where host and device times meet, the device waited for the host there. The two variants' device times
// between points locate where the second one's extra time goes.
std::string step_timeline(const std::vector<Variant>& variants, int64_t steps,
                          const std::function<void(const Variant&, int64_t)>& run_step) {
#ifdef QAD_HAS_CUDA
  struct Point {
    std::string name;
    double host_ms;
    std::shared_ptr<at::cuda::CUDAEvent> event;
  };
  std::map<std::string, std::map<std::string, std::vector<double>>> host_ms, device_ms;  // variant -> point -> ms
  std::vector<std::string> order;                                                      // points as first seen
  for (int64_t k = 0; k < 2 * steps; ++k) {
    const Variant& v = variants[abba_turn(k)];
    std::vector<Point> points;
    torch::cuda::synchronize();
    auto stream = c10::cuda::getCurrentCUDAStream();
    at::cuda::CUDAEvent start(cudaEventDefault);
    const auto t0 = std::chrono::steady_clock::now();
    start.record(stream);
    auto mark = [&](const char* name) {
      auto e = std::make_shared<at::cuda::CUDAEvent>(cudaEventDefault);
      e->record(stream);
      points.push_back({name, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count(),
                        std::move(e)});
    };
    qad::train::set_step_mark_sink(mark);
    try {
      run_step(v, k);
    } catch (...) {
      qad::train::set_step_mark_sink(nullptr);
      throw;
    }
    qad::train::set_step_mark_sink(nullptr);
    mark("end (step returned)");
    torch::cuda::synchronize();
    for (const auto& p : points) {
      if (std::find(order.begin(), order.end(), p.name) == order.end()) order.push_back(p.name);
      host_ms[v.key][p.name].push_back(p.host_ms);
      device_ms[v.key][p.name].push_back(start.elapsed_time(*p.event));
    }
  }
  const auto& a = variants[0];
  const auto& b = variants[1];
  auto med = [](std::vector<double> x) {
    if (x.empty()) return std::nan("");
    std::sort(x.begin(), x.end());
    return x[x.size() / 2];
  };
  std::string out = fmt::format(
      "timeline ({} steps each, medians, ms since the step began: the host at the point / the device done with the "
      "work queued before it)\n{:<22} {:>9} {:>9} {:>9} {:>9} {:>11}\n",
      steps, "point", "A host", "A device", "B host", "B device", "B-A device");
  for (const auto& name : order) {
    const double ad = med(device_ms[a.key][name]), bd = med(device_ms[b.key][name]);
    out += fmt::format("{:<22} {:>9.2f} {:>9.2f} {:>9.2f} {:>9.2f} {:>+11.3f}\n", name, med(host_ms[a.key][name]), ad,
                       med(host_ms[b.key][name]), bd, bd - ad);
  }
  return out + fmt::format("(A: {}; B: {})\n", a.label, b.label);
#else
  (void)variants;
  (void)steps;
  (void)run_step;
  return "timeline: needs qad's CUDA build (CUDA events)\n";
#endif
}

// --overlap: `steps` steps of each of the first two variants, taking turns (A B, B A, ..), run as `qad distill` runs
// them: each step's values read only after the next step is queued (train/step.h's QueuedStep), so that the device
// goes from step to step without waiting for the host. A step's time is the device's: a CUDA event recorded at the end
// of each step's queue, and the time between consecutive events (the device runs the steps back to back, so this is
// the step's work and whatever gaps it has inside). The host's reads cannot time it: with the device's launch queue
// full the host finishes queueing step N+1 (and then reads step N) only when the device is well into step N+1, so an
// interval between reads straddles two steps, of both variants. The ratio is B / A within each pair of steps.
std::string overlapped_steps(const std::vector<Variant>& variants, int64_t steps,
                             const std::function<qad::train::QueuedStep(const Variant&, int64_t,
                                                                        const qad::train::QueuedStep*)>& queue,
                             const std::function<void(qad::train::QueuedStep&)>& read) {
#ifdef QAD_HAS_CUDA
  std::optional<qad::train::QueuedStep> previous;
  std::vector<std::unique_ptr<at::cuda::CUDAEvent>> ended;  // ended[k]: after step k's work
  const int64_t total = 2 * steps + 2;  // the first pair warms the pipeline and is left out
  for (int64_t k = 0; k < total; ++k) {
    auto q = queue(variants[abba_turn(k)], k, previous ? &*previous : nullptr);
    ended.push_back(std::make_unique<at::cuda::CUDAEvent>(cudaEventDefault));
    ended.back()->record(c10::cuda::getCurrentCUDAStream());
    if (previous) read(*previous);
    previous = std::move(q);
  }
  read(*previous);
  torch::cuda::synchronize();
  std::vector<double> ms[2], ratios;
  for (int64_t p = 2; p + 1 < total; p += 2) {  // the pair (p, p + 1): one step of each variant
    double t[2];
    for (int64_t k = p; k <= p + 1; ++k) {
      const double step_ms = ended[static_cast<size_t>(k - 1)]->elapsed_time(*ended[static_cast<size_t>(k)]);
      t[abba_turn(k)] = step_ms;
      ms[abba_turn(k)].push_back(step_ms);
    }
    ratios.push_back(t[1] / t[0]);
  }
  auto med = [](std::vector<double> x) {
    std::sort(x.begin(), x.end());
    return x[x.size() / 2];
  };
  const auto s = qad::experiment::describe(ratios);
  return fmt::format(
      "overlapped ({} steps each, each read after the next is queued, as qad distill runs them): {} {:.2f} ms, {} "
      "{:.2f} ms (medians of the device's time from the end of one step to the end of the next); B / A per pair: "
      "mean {:.4f}{}\n",
      steps, variants[0].label, med(ms[0]), variants[1].label, med(ms[1]), s.mean,
      s.ci_low && s.ci_high ? fmt::format(", 95 % interval {:.4f} .. {:.4f}", *s.ci_low, *s.ci_high) : std::string());
#else
  (void)variants;
  (void)steps;
  (void)queue;
  (void)read;
  return "overlapped steps: needs qad's CUDA build (CUDA events)\n";
#endif
}

// What one PyTorch baseline run reported (tools/bench_train_torch.py --json).
struct TorchRun {
  std::string mode, label;
  std::optional<Measured> m;
  double loss0 = 0, first_step_s = 0;
  std::string error;
};

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> models = {"0.6b", "1.7b"};
  std::vector<std::string> torch_modes = {"eager", "compile"};
  std::vector<std::string> variant_keys;  // empty = all
  int64_t batch = 4, seq = 2048, iters = 8, warmup = 3, rounds = 1, turn_warmup = 1, chain = 1;
  bool ckpt = false, offload = false;
  std::string python = "python3", profile_path;
  int64_t profile_steps = 1, timeline_steps = 0, overlap_steps = 0;
  int64_t torch_timeout_s = 420;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (a == "--models") models = split_list(next());
    else if (a == "--batch") batch = std::stoll(next());
    else if (a == "--seq") seq = std::stoll(next());
    else if (a == "--iters") iters = std::stoll(next());
    else if (a == "--warmup") warmup = std::stoll(next());
    else if (a == "--rounds") rounds = std::stoll(next());
    else if (a == "--turn-warmup") turn_warmup = std::stoll(next());
    else if (a == "--chain") chain = std::stoll(next());
    else if (a == "--ckpt") ckpt = true;
    else if (a == "--offload") offload = true;
    else if (a == "--variants") variant_keys = split_list(next());
    else if (a == "--torch") torch_modes = split_list(next());
    else if (a == "--no-torch") torch_modes.clear();
    else if (a == "--python") python = next();
    else if (a == "--profile") profile_path = next();
    else if (a == "--profile-steps") profile_steps = std::stoll(next());
    else if (a == "--timeline") timeline_steps = std::stoll(next());
    else if (a == "--overlap") overlap_steps = std::stoll(next());
    else if (a == "--torch-timeout") torch_timeout_s = std::stoll(next());
    else {
      fmt::print(stderr, "usage: bench_train [--models 0.6b,1.7b] [--batch N] [--seq T] [--iters K] [--warmup W] [--rounds R] [--turn-warmup N] [--chain C] [--ckpt] [--offload] "
                 "[--variants qad,qad-null,cka-fp32,cka-tf32,cka-2048,cka-1024-tf32,recipe,cka-512] [--torch eager,compile | --no-torch] "
                 "[--python PY] [--torch-timeout S] [--profile FILE] [--profile-steps N] [--timeline N] [--overlap N]\n");
      return 2;
    }
  }
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // progress shows through a pipe (tee) as it happens
  if (iters < 1 || warmup < 1 || rounds < 1 || turn_warmup < 0 || chain < 1 || profile_steps < 1 || timeline_steps < 0 ||
      overlap_steps < 0) {
    fmt::print(stderr, "bench_train: --iters, --warmup, --rounds, --chain and --profile-steps must be at least 1, --timeline and --overlap "
                       "at least 0\n");
    return 2;
  }
  if (!torch::cuda::is_available()) {
    fmt::print("bench_train: no CUDA device; this benchmark is for the GPU machine\n");
    return 0;
  }
  if (!profile_path.empty() && !qad::bench::kernel_profiler_available()) {
    fmt::print(stderr, "bench_train: --profile needs LibTorch >= 2.0 (the Kineto C++ API); measuring without it\n");
    profile_path.clear();
  }
  const torch::Device dev(torch::kCUDA, 0);
  std::vector<Variant> variants = {
      {"qad", "QAD (baseline)", 0, 0, false},
      // The null control: QAD once more, as a variant of its own. Its ratio to QAD is the bench's own bias (the
      // variants' places in a round, the allocator's state after the other variant); it should read 1.
      {"qad-null", "QAD again (null control)", 0, 0, false},
      {"cka-fp32", "CKA-QAD all tokens, FP32", 0.1, 0, false},
      {"cka-tf32", "CKA-QAD all tokens, TF32", 0.1, 0, true},
      {"cka-2048", "CKA-QAD 2048 tokens, TF32", 0.1, 2048, true},
      {"recipe", "CKA-QAD 1024 tokens, BF16 products (recipe)", 0.1, 1024, true, true},
      {"cka-1024-tf32", "CKA-QAD 1024 tokens, TF32", 0.1, 1024, true},
      {"cka-512", "CKA-QAD 512 tokens, TF32", 0.1, 512, true},
  };
  if (!variant_keys.empty()) {
    std::vector<Variant> chosen = {variants.front()};  // QAD is every ratio's denominator
    for (const auto& k : variant_keys) {
      auto it = std::find_if(variants.begin(), variants.end(), [&](const Variant& v) { return v.key == k; });
      if (it == variants.end()) {
        fmt::print(stderr, "bench_train: unknown variant '{}' (qad, qad-null, cka-fp32, cka-tf32, cka-2048, cka-1024-tf32, recipe, cka-512)\n", k);
        return 2;
      }
      if (it != variants.begin()) chosen.push_back(*it);
    }
    variants = chosen;
  }
  const fs::path tmp_root = fs::temp_directory_path() / fmt::format("qad_bench_train_{}", getpid());
  fmt::print("bench_train: batch {} x seq {} = {} tokens/step, BF16 teacher + NVFP4 student, AdamW FP32 master{}{}\n",
             batch, seq, batch * seq, ckpt ? ", activation checkpointing" : "",
             offload ? ", optimizer state offloaded to pinned host memory" : "");
  std::string profile_text;
  for (const auto& name : models) {
    auto config = qad::model::parse_config(qad::bench::qwen3_shape(name), "Qwen3-" + name + " shape");
    double matmul_params = 0;
    Measured base;
    double qad_loss0 = 0;
    const fs::path dump = tmp_root / name;
    const double tokens = static_cast<double>(batch * seq);
    double flops = 0;
    {
      auto teacher = qad::bench::random_cuda_model(config, 1);
      teacher->eval();
      for (auto& p : teacher->parameters()) p.set_requires_grad(false);
      auto gen = torch::make_generator<at::CPUGeneratorImpl>(7);
      qad::data::BatchTensors b;
      b.input_ids = torch::randint(config.vocab_size, {batch, seq}, gen, torch::kLong).to(dev);
      b.targets = torch::randint(config.vocab_size, {batch, seq}, gen, torch::kLong).to(dev);
      b.loss_mask = torch::ones({batch, seq}, torch::TensorOptions().dtype(torch::kFloat32).device(dev));
      b.attention_mask = torch::ones({batch, seq}, torch::TensorOptions().dtype(torch::kBool).device(dev));
      b.host = qad::data::read_host_facts(b);  // as to_tensors gives the trainer's batches: no device read per step

      qad::train::TrainConfig cfg;
      cfg.run.activation_checkpointing = ckpt;
      cfg.loss.log_ce = false;
      cfg.quant.calib_batches = 1;
      cfg.data.batch_size = batch;
      cfg.data.seq_len = seq;
      cfg.optim.offload = offload ? "optimizer" : "none";
      auto student_lm = qad::bench::random_cuda_model(config, 1);  // the teacher's weights
      auto student = qad::train::quantize_student(student_lm, cfg, [&](const qad::train::CalibSink& sink) {
        sink(b.input_ids, torch::Tensor());
      });
      student.lm->train();
      if (!torch_modes.empty()) {
        // The PyTorch baseline loads exactly these weights, tokens and amaxes.
        fs::create_directories(dump);
        qad::io::write_tensors(dump / "model.safetensors", student.lm->hf_tensors());
        qad::io::write_tensors(dump / "batch.safetensors", {{"input_ids", b.input_ids}});
        qad::io::write_tensors(dump / "quantizers.safetensors", qad::train::quantizer_state(student).tensors);
      }
      auto opt_ptr = qad::train::make_adamw(student.lm->hf_tensors(), cfg.optim);
      auto& opt = *opt_ptr;
      auto* offloaded = dynamic_cast<qad::train::OffloadAdamW*>(opt_ptr.get());
      if (offloaded != nullptr) fmt::print("{}\n", offloaded->describe());
      qad::train::PlanSettings plan_settings;
      plan_settings.quantized_weight_elements = qad::train::fake_quantized_weight_elements(config, cfg);
      for (const auto& l : student.lm->linears()) matmul_params += static_cast<double>(l->weight.numel());
      const double attn_fwd = 2.0 * 2.0 * static_cast<double>(config.num_layers) * tokens * static_cast<double>(seq) *
                              static_cast<double>(config.num_heads * config.head_dim) / 2.0;
      flops = 6.0 * matmul_params * tokens + 3.0 * attn_fwd + 2.0 * matmul_params * tokens + attn_fwd;

      fmt::print("\nQwen3-{} shape: {:.0f}M matmul params, {} layers, hidden {}; {} NVFP4 Linears\n", name,
                 matmul_params / 1e6, config.num_layers, config.hidden_size, student.quantized_modules.size());
      // The device's own size, so that the plan's fit line names this GPU (not "device: unknown").
      std::optional<double> device_bytes;
      if (auto total = qad::model::total_device_bytes(dev)) device_bytes = static_cast<double>(*total);
      fmt::print("{}", qad::train::format_plan(qad::train::plan_memory(config, cfg, plan_settings), config, cfg,
                                               plan_settings, device_bytes, std::nullopt));
      fmt::print("{:<36} {:>9} {:>10} {:>7} {:>9} {:>8} {:>8} {:>9} {:>8}\n", "variant", "ms/step", "tokens/s", "MFU",
                 "peak GB", "time x", "mem x", "plan GB", "plan err");
      // When the host had queued the step's last work (train_step's on_queued): the host's share of the step.
      std::chrono::steady_clock::time_point queued_at;
      auto step = [&](int64_t it) {
        return qad::train::train_step(student.lm, &teacher, {b}, opt,
                                      {.lr = 1e-5, .config = &cfg, .rng_seed = static_cast<uint64_t>(it),
                                       .on_queued = [&] { queued_at = std::chrono::steady_clock::now(); }});
      };
      // The variant's loss settings, for the timed rounds, the profile and the timeline alike.
      auto use = [&](const Variant& v) {
        cfg.loss.kl = 1;
        cfg.loss.cka = v.cka;
        cfg.loss.cka_subsample_tokens = v.subsample;
        cfg.loss.cka_bf16_products = v.bf16_products;
        qad::compat::set_tf32_matmul(v.tf32);
      };
      // Rounds: every variant runs `iters` timed steps per round, the variants taking turns, so that slow drifts
      // of the machine (clocks, temperature) fall on all of them alike; the first round starts each with `warmup`
      // steps, later rounds with --turn-warmup (the step's shapes change with the variant). Odd rounds take the
      // variants in the reverse order (A B, B A, A B, ...): a cost that comes with a place in the round (following
      // the other variant's step, its allocator state) falls on each variant in half of the rounds, and the
      // per-round ratios are also reported by order.
      std::map<std::string, std::vector<double>> times;       // every timed step, per variant
      std::map<std::string, std::vector<double>> round_median;  // per round, per variant
      std::map<std::string, std::vector<double>> queued_ms;     // per timed step (--chain 1): host time to queue it
      std::map<std::string, double> peak_gb;
      std::map<std::string, int64_t> step_no;
      std::set<std::string> failed;
      for (int64_t round = 0; round < rounds; ++round) {
        std::vector<const Variant*> order;
        for (const auto& v : variants) order.push_back(&v);
        if (round % 2 == 1) std::reverse(order.begin(), order.end());
        for (const Variant* vp : order) {
          const Variant& v = *vp;
          if (failed.count(v.key)) continue;
          use(v);
          const int64_t w = round == 0 ? warmup : turn_warmup;
          std::vector<double> ms;
          try {
            for (int64_t it = 0; it < w + iters; ++it) {
              if (it == w) {
                torch::cuda::synchronize();
                qad::train::reset_peak_memory(dev);
              }
              torch::cuda::synchronize();
              const auto t0 = std::chrono::steady_clock::now();
              auto r = step(step_no[v.key]++);
              const double queued = std::chrono::duration<double, std::milli>(queued_at - t0).count();
              if (round == 0 && it == 0 && &v == &variants.front() && opt.steps() == 1) qad_loss0 = r.values.loss;
              // A timed step with --chain C: C steps with no wait between them.
              const int64_t chained = it >= w ? chain : 1;
              for (int64_t c = 1; c < chained; ++c) step(step_no[v.key]++);
              torch::cuda::synchronize();
              if (it >= w) {
                ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() /
                             static_cast<double>(chained));
                if (chained == 1) queued_ms[v.key].push_back(queued);
              }
            }
          } catch (const std::exception& e) {
            fmt::print("{:<36} failed: {}\n", v.label, std::string(e.what()).substr(0, 200));
            failed.insert(v.key);
            continue;
          }
          if (w > 0 || round == 0) peak_gb[v.key] = std::max(peak_gb[v.key], qad::train::peak_memory_gb(dev));
          times[v.key].insert(times[v.key].end(), ms.begin(), ms.end());
          std::sort(ms.begin(), ms.end());
          round_median[v.key].push_back(ms[ms.size() / 2]);
        }
      }
      auto median = [](std::vector<double> x) {
        std::sort(x.begin(), x.end());
        return x[x.size() / 2];
      };
      std::map<std::string, double> measured_ms;
      for (const auto& v : variants) {
        if (failed.count(v.key) || !times.count(v.key)) continue;
        Measured m{median(times[v.key]), peak_gb[v.key]};
        if (&v == &variants.front()) base = m;
        measured_ms[v.key] = m.ms;
        cfg.loss.cka = v.cka;
        cfg.loss.cka_subsample_tokens = v.subsample;
        const double plan_gb = qad::train::plan_memory(config, cfg, plan_settings).peak / 1e9;
        fmt::print("{:<36} {:>9.1f} {:>10.0f} {:>6.1f}% {:>9.2f} {:>7.3f}x {:>7.3f}x {:>9.2f} {:>+7.1f}%\n", v.label,
                   m.ms, tokens / (m.ms / 1e3), 100.0 * flops / (m.ms / 1e3) / kPeakBf16Flops, m.peak_gb,
                   m.ms / base.ms, m.peak_gb / base.peak_gb, plan_gb, 100.0 * (plan_gb - m.peak_gb) / m.peak_gb);
      }
      // The spread: each round's time ratio against QAD's in the same round, and the timed steps' range.
      if (rounds > 1 || iters >= 4) {
        fmt::print("spread ({} round(s) x {} timed steps per variant{}):\n", rounds, iters,
                   chain > 1 ? fmt::format(", each the mean of {} steps back to back", chain) : std::string());
        for (const auto& v : variants) {
          if (!measured_ms.count(v.key)) continue;
          const auto& t = times[v.key];
          std::string per_round;
          if (&v != &variants.front() && measured_ms.count(variants.front().key)) {
            const auto& mine = round_median[v.key];
            const auto& theirs = round_median[variants.front().key];
            std::vector<double> ratios, after, before;  // all rounds; those where this variant ran after QAD, before
            for (size_t r = 0; r < mine.size() && r < theirs.size(); ++r) {
              ratios.push_back(mine[r] / theirs[r]);
              // Entry r is round r (a variant that fails stops for good); QAD goes first in even rounds.
              (r % 2 == 0 ? after : before).push_back(ratios.back());
            }
            if (!ratios.empty() && ratios.size() <= 6) {
              per_round = fmt::format("; ratio to QAD per round {:.4f}", fmt::join(ratios, " "));
            }
            if (!ratios.empty()) {
              std::sort(ratios.begin(), ratios.end());
              const auto q = [&](double f) { return ratios[static_cast<size_t>(f * static_cast<double>(ratios.size() - 1) + 0.5)]; };
              per_round += fmt::format("; per-round ratio median {:.4f}, quartiles {:.4f} .. {:.4f} over {} rounds",
                                       q(0.5), q(0.25), q(0.75), ratios.size());
              // The mean of the per-round ratios with its Student-t 95 % interval, taking the rounds as independent
              // draws: how far this call's estimate may sit from the cost itself. (Not an interval of the "time x"
              // column, which is a ratio of medians over all timed steps.)
              const auto s = qad::experiment::describe(ratios);
              if (s.ci_low && s.ci_high) {
                per_round += fmt::format("; mean {:.4f}, 95 % interval {:.4f} .. {:.4f}", s.mean, *s.ci_low,
                                         *s.ci_high);
              }
              // By order: a difference between the two is the place in the round, which the mean over both cancels.
              if (!after.empty() && !before.empty()) {
                const auto a = qad::experiment::describe(after), b = qad::experiment::describe(before);
                per_round += fmt::format("; mean after QAD's step {:.4f} ({} rounds), before it {:.4f} ({} rounds)",
                                         a.mean, after.size(), b.mean, before.size());
              }
            }
          }
          fmt::print("  {:<34} steps {:.1f} .. {:.1f} ms, median {:.1f}{}\n", v.label,
                     *std::min_element(t.begin(), t.end()), *std::max_element(t.begin(), t.end()), measured_ms[v.key],
                     per_round);
        }
        // Host-bound or not: how long the host took to queue a step, and how long the device ran on after that. A
        // small remainder means the host sets the pace there, and host work a variant adds costs its full time.
        for (const auto& v : variants) {
          const auto& q = queued_ms[v.key];
          const auto& t = times[v.key];
          if (!measured_ms.count(v.key) || q.size() != t.size() || q.empty()) continue;
          std::vector<double> after(q.size());
          for (size_t i = 0; i < q.size(); ++i) after[i] = t[i] - q[i];
          fmt::print("  {:<34} host queued the step in {:.2f} ms (median; {:.2f} .. {:.2f}), the device ran {:.2f} ms "
                     "after (median; {:.2f} .. {:.2f})\n", v.label, median(q), *std::min_element(q.begin(), q.end()),
                     *std::max_element(q.begin(), q.end()), median(after),
                     *std::min_element(after.begin(), after.end()), *std::max_element(after.begin(), after.end()));
        }
      }
      if (offloaded != nullptr) {
        fmt::print("offloaded optimizer update: {:.1f} ms of GPU time in the last step ({:.1f} GB each way, {:.1f} GB/s "
                   "per direction)\n", offloaded->last_update_ms(), offloaded->host_bytes() / 1e9,
                   offloaded->host_bytes() / 1e9 / (offloaded->last_update_ms() / 1e3));
      }
      const auto taps = qad::model::tap_rows_backward_counts();
      if (taps.in_place + taps.copied > 0) {
        fmt::print("CKA rows' gradient added into the residual stream's gradient: {} times in place, {} into a copy\n",
                   taps.in_place, taps.copied);
        const auto stacks = qad::loss::stack_rows_counts();
        fmt::print("CKA rows of all layers stacked: {} times as a view of the rows buffer, {} times copied\n",
                   stacks.views, stacks.copies);
      }
      // The profile of the QAD step, and of the first CKA variant measured (what the CKA term adds, kernel by kernel):
      // --profile-steps N steps of each, the two variants taking turns step by step (one profiler session a step);
      // the first step's table is printed, the difference is over all of them, per step.
      qad::bench::KernelTotals profiled[2];
      bool profile_failed = false;
      for (int64_t ps = 0; ps < profile_steps && !profile_path.empty() && !profile_failed; ++ps) {
        for (size_t vi = 0; vi < std::min<size_t>(2, variants.size()); ++vi) {
          const auto& v = variants[vi];
          if (!measured_ms.count(v.key)) continue;  // it failed (e.g. out of memory)
          use(v);
          try {
            qad::bench::KernelTotals one;
            auto table = qad::bench::profile_kernels(
                [&] {
                  step(warmup + iters + 2 * ps + static_cast<int64_t>(vi));
                  torch::cuda::synchronize();
                },
                30, &one);
            qad::bench::add_totals(profiled[vi], one, /*first=*/ps == 0);
            if (ps > 0) continue;
            profile_text += fmt::format("== Qwen3-{} {} step, batch {} x {}, {:.1f} ms/step unprofiled\n{}\n", name,
                                        v.label, batch, seq, measured_ms[v.key], table);
            // Written now, not at exit: on the H200 (LibTorch 2.11) a process that profiled and then ran the PyTorch
            // child crashed on its way out, which lost the file.
            std::ofstream(profile_path) << profile_text;
          } catch (const std::exception& e) {
            profile_text += fmt::format("== Qwen3-{} {}: profile failed: {}\n", name, v.label, e.what());
            profile_failed = true;
          }
        }
      }
      if (!profiled[0].by_name.empty() && !profiled[1].by_name.empty()) {
        // Kernel by kernel, what the second variant (the CKA term) adds to the QAD step.
        auto diff = qad::bench::kernel_difference(profiled[0], profiled[1]);
        profile_text += fmt::format("== Qwen3-{}: {} (B) against {} (A)\n{}\n", name, variants[1].label,
                                    variants[0].label, diff);
        fmt::print("{}", diff.substr(0, diff.find('\n') + 1));
        std::ofstream(profile_path) << profile_text;
      }
      if (overlap_steps > 0 && variants.size() >= 2 && measured_ms.count(variants[0].key) &&
          measured_ms.count(variants[1].key)) {
        try {
          int64_t next_step = warmup + iters + 2 * profile_steps + 2 * timeline_steps;
          fmt::print("{}", overlapped_steps(
                               variants, overlap_steps,
                               [&](const Variant& v, int64_t, const qad::train::QueuedStep* previous) {
                                 use(v);
                                 return qad::train::queue_train_step(
                                     student.lm, &teacher, {b}, opt,
                                     {.lr = 1e-5, .config = &cfg, .rng_seed = static_cast<uint64_t>(next_step++)},
                                     previous);
                               },
                               [&](qad::train::QueuedStep& q) { qad::train::read_train_step(q, opt); }));
        } catch (const std::exception& e) {
          fmt::print("overlapped steps failed: {}\n", std::string(e.what()).substr(0, 200));
        }
      }
      if (timeline_steps > 0 && variants.size() >= 2 && measured_ms.count(variants[0].key) &&
          measured_ms.count(variants[1].key)) {
        try {
          fmt::print("{}", step_timeline(variants, timeline_steps, [&](const Variant& v, int64_t k) {
                       use(v);
                       step(warmup + iters + 2 * profile_steps + k);
                     }));
        } catch (const std::exception& e) {
          fmt::print("timeline failed: {}\n", std::string(e.what()).substr(0, 200));
        }
      }
      qad::compat::set_tf32_matmul(false);
    }  // qad's models, optimizer state and batch are freed here: the baseline gets the whole GPU
    qad::train::release_cached_memory(dev);

    std::vector<TorchRun> runs;
    for (const auto& mode : torch_modes) {
      TorchRun r;
      r.mode = mode;
      r.label = mode == "compile" ? "PyTorch torch.compile" : "PyTorch eager + Triton FQ";
      // A time limit: torch.compile of a whole model can take minutes, and a stuck child must not hang the bench.
      const auto cmd = fmt::format("timeout {} {} tools/bench_train_torch.py --model {} --mode {} --iters {} --warmup {} "
                                   "--load {} --json 2>&1", torch_timeout_s, python, name, mode, iters, warmup,
                                   dump.string());
      fmt::print("running the PyTorch baseline ({}) ...\n", r.label);
      const auto t_start = std::chrono::steady_clock::now();
      const auto text = qad::bench::run_capture(cmd);
      const auto brace = text.rfind("\n{");
      try {
        auto j = nlohmann::json::parse(text.substr(brace == std::string::npos ? 0 : brace + 1));
        r.m = Measured{j["median_ms"].get<double>(), j["peak_gb"].get<double>()};
        r.loss0 = j["loss0"].get<double>();
        r.first_step_s = j["first_step_s"].get<double>();
        if (!j["amax_rel_diff"].is_null() && j["amax_rel_diff"].get<double>() > 1e-2) {
          fmt::print("note: PyTorch's own calibration differs from qad's amaxes by up to {:.2g} (relative); "
                     "the step uses qad's\n", j["amax_rel_diff"].get<double>());
        }
      } catch (const std::exception&) {
        r.error = text.size() > 1500 ? text.substr(text.size() - 1500) : text;
      }
      fmt::print("  ... {} in {:.0f} s\n", r.m ? "done" : "failed",
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count());
      runs.push_back(r);
    }
    if (!torch_modes.empty()) {
      fmt::print("\nQwen3-{} QAD step against PyTorch, same machine, same run (speedup = their time / qad's time)\n", name);
      fmt::print("{:<28} {:>9} {:>10} {:>7} {:>9} {:>9} {:>9} {:>12}\n", "implementation", "ms/step", "tokens/s",
                 "MFU", "peak GB", "speedup", "mem x", "step-0 loss");
      auto row = [&](const std::string& label, const Measured& m, double loss0) {
        fmt::print("{:<28} {:>9.1f} {:>10.0f} {:>6.1f}% {:>9.2f} {:>8.3f}x {:>8.3f}x {:>12.6g}\n", label, m.ms,
                   tokens / (m.ms / 1e3), 100.0 * flops / (m.ms / 1e3) / kPeakBf16Flops, m.peak_gb, m.ms / base.ms,
                   m.peak_gb / base.peak_gb, loss0);
      };
      row("qad", base, qad_loss0);
      for (const auto& r : runs) {
        if (!r.m) {
          fmt::print("{:<28} failed (run tools/bench_train_torch.py --model {} --mode {} by hand):\n{}\n", r.label, name,
                     r.mode, r.error);
          continue;
        }
        row(r.label, *r.m, r.loss0);
      }
      for (const auto& r : runs) {
        if (!r.m) continue;
        fmt::print("step-0 loss {}: qad {:.6g}, PyTorch {:.6g}, relative difference {:.2e}; first step {:.1f} s\n",
                   r.mode, qad_loss0, r.loss0, std::abs(r.loss0 - qad_loss0) / std::max(std::abs(qad_loss0), 1e-30),
                   r.first_step_s);
      }
    }
    std::error_code ec;
    qad::remove_tree(dump, ec);
  }
  std::error_code ec;
  qad::remove_tree(tmp_root, ec);
  if (!profile_path.empty()) {
    std::ofstream(profile_path) << profile_text;
    fmt::print("\n{}", profile_text);
  }
  return 0;
}
