// The training loop (see trainer.h).
#include "train/trainer.h"
#include "train/task_validation.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cmath>

#include "data/batch_tensors.h"
#include "model/context_length.h"
#include "model/finite_check.h"
#include "train/checkpoint.h"
#include "train/data_source.h"
#include "train/distributed.h"
#include "train/memory.h"
#include "train/metrics.h"
#include "train/moe_training.h"
#include "train/run_directory.h"
#include "train/run_paths.h"
#include "train/schedule.h"
#include "train/step.h"
#include "train/student.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/signals.h"
#include "util/torch_compat.h"

namespace qad::train {
namespace fs = std::filesystem;
namespace {

uint64_t mix(uint64_t x) {  // SplitMix64 finaliser: per-step seeds that do not collide across steps
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// The first key whose value differs between two configs ("optim.lr: 1e-05 vs 2e-05"), ignoring debug.
std::string first_difference(const nlohmann::json& a, const nlohmann::json& b, const std::string& path = "") {
  if (a.is_object() && b.is_object()) {
    for (const auto& [k, v] : a.items()) {
      if (path.empty() && k == "debug") continue;
      const std::string p = path.empty() ? k : path + "." + k;
      if (!b.contains(k)) return p + " is missing from the saved config";
      auto d = first_difference(v, b[k], p);
      if (!d.empty()) return d;
    }
    return "";
  }
  return a == b ? "" : fmt::format("{}: {} now vs {} in the saved run", path, a.dump(), b.dump());
}

nlohmann::json valid_record(int64_t step, const ValidResult& v) {
  nlohmann::json j = {{"type", "valid"}, {"step", step}, {"ce", finite_or_null(v.ce)}, {"ppl", finite_or_null(v.ppl)},
                      {"tokens_evaluated", v.tokens}};
  if (v.kl) j["kl"] = finite_or_null(*v.kl);
  if (v.agreement) j["agreement"] = *v.agreement;
  if (v.mean_cka) j["mean_cka"] = finite_or_null(*v.mean_cka);
  if (v.task_accuracy) j["task_accuracy"] = *v.task_accuracy;
  if (!v.cka.empty()) j["cka"] = layer_object(v.cka);
  if (v.mean_router_agreement) j["router_agreement"] = *v.mean_router_agreement;
  if (!v.router_agreement.empty()) j["router_agreement_layers"] = layer_object(v.router_agreement);
  return j;
}

std::string valid_line(int64_t step, const ValidResult& v) {
  std::string s = fmt::format("valid @ step {}: ppl {:.4g}", step, v.ppl);
  if (v.kl) s += fmt::format(" | kl {:.5g}", *v.kl);
  if (v.agreement) s += fmt::format(" | top-1 agreement {:.4f}", *v.agreement);
  if (v.mean_cka) s += fmt::format(" | mean CKA {:.5f}", *v.mean_cka);
  if (v.task_accuracy) s += fmt::format(" | task accuracy {:.2f}%", 100 * *v.task_accuracy);
  if (v.mean_router_agreement) s += fmt::format(" | router top-k overlap {:.4f}", *v.mean_router_agreement);
  return s;
}

}  // namespace

torch::Device resolve_device(const std::string& name) {
  if (name == "auto") return compat::cuda_available() ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU);
  std::optional<torch::Device> parsed;
  try {
    parsed.emplace(name);
  } catch (const std::exception&) {  // c10::Error with a LibTorch trace: a user mistake, not an internal error
  }
  QAD_CHECK(parsed && (parsed->is_cpu() || parsed->is_cuda()), "--device {}: not a device qad runs on; use auto, cpu, "
            "cuda or cuda:N", name);
  const torch::Device d = *parsed;
  QAD_CHECK(!d.is_cuda() || compat::cuda_available(), "--device {}: no CUDA device is available", name);
  return d;
}

RunSummary run_training(const TrainConfig& cfg, bool resume, const std::string& command) {
  cfg.validate();
  const fs::path run_dir(cfg.run.out);
  const bool writer = is_writer(cfg.dist);
  const bool parallel = cfg.dist.world_size > 1;
  // Data parallel on CUDA: rank i computes on cuda:LOCAL_RANK (unless --device names a GPU explicitly).
  const auto device = resolve_device(parallel && (cfg.run.device == "auto" || cfg.run.device == "cuda") &&
                                             compat::cuda_available()
                                         ? fmt::format("cuda:{}", cfg.dist.local_rank)
                                         : cfg.run.device);
  const auto dtype = model::CausalLM::default_dtype(device);
  torch::manual_seed(cfg.run.seed);
  if (device.is_cuda()) compat::set_tf32_matmul(cfg.loss.cka_tf32);

  // --- the run directory and its configuration
  // Rank 0 alone writes the run directory: it claims it (lock, stale temporaries; a failed start is undone).
  std::optional<RunDirectory> claim;
  if (writer) claim.emplace(run_dir, resume, command);
  const GracefulStop graceful_stop;  // SIGINT / SIGTERM: stop at the next step boundary with a checkpoint
  fs::create_directories(run_dir);
  const auto config_json = cfg.to_json();
  const auto run_json_path = run_dir / "run.json";
  const auto ckpt = resume ? latest_checkpoint(run_dir) : std::nullopt;
  if (resume) {
    QAD_CHECK(fs::exists(run_json_path), "--resume: {} has no run.json; start the run without --resume", run_dir.string());
    auto saved = nlohmann::json::parse(read_file(run_json_path));
    // Another number of ranks with the same global batch (batch_size x world_size) continues the same run.
    auto saved_config = saved.at("config");
    reconcile_paths(cfg, saved_config, saved.value("paths", nlohmann::json::object()));
    const int64_t saved_world = saved.value("world_size", int64_t{1});
    if (saved_config.contains("data") && saved_config["data"].value("batch_size", int64_t{0}) * saved_world ==
                                             cfg.data.batch_size * cfg.dist.world_size) {
      saved_config["data"]["batch_size"] = cfg.data.batch_size;
    }
    auto diff = first_difference(config_json, saved_config);
    QAD_CHECK(diff.empty(), "--resume: the configuration differs from the saved run ({}); resume with the same "
              "command line, or start a new run in another --out directory", diff);
  } else {
    QAD_CHECK(!fs::exists(run_dir / "metrics.jsonl") && !latest_checkpoint(run_dir), "{} already holds a run; pass "
              "--resume to continue it or choose another --out", run_dir.string());
  }
  const std::string name = cfg.run.name.empty() ? fs::absolute(run_dir).lexically_normal().filename().string() : cfg.run.name;
  if (writer) {
    write_file_atomic(run_json_path,
                      nlohmann::json{{"name", name}, {"method", method_name(cfg.method)}, {"world_size", cfg.dist.world_size},
                                     {"config", config_json}, {"paths", describe_paths(cfg)}}.dump(2) + "\n");
  }
  if (writer) fmt::print("qad distill: {} → {} on {}\n{}", cfg.run.teacher, run_dir.string(), device.str(), describe(cfg));
  // Join the other ranks first: a missing rank fails here, before minutes of model loading.
  std::unique_ptr<DataParallel> dp;
  if (parallel) {
    dp = std::make_unique<DataParallel>(cfg.dist, device);
    if (writer) {
      fmt::print("data parallel: {} ranks over {}, ZeRO-1 {}, {} MB gradient buckets, global batch {} x {} rows\n",
                 cfg.dist.world_size, dp->comm().backend(), cfg.dist.zero ? "on" : "off", cfg.dist.bucket_mb,
                 cfg.dist.world_size, cfg.data.batch_size);
    }
  }

  // --- data, models, optimizer
  // Rank 0 prepares a .jsonl / .txt dataset on the fly; the others wait and then open what it wrote.
  if (dp && !writer) dp->barrier("waiting for rank 0 to prepare the data");
  auto loaders = make_loaders(cfg);
  if (dp && writer) dp->barrier("waiting for rank 0 to prepare the data");
  const bool need_teacher = cfg.method != Method::kPretrain;
  model::CausalLM teacher{nullptr};
  if (need_teacher) {
    teacher = model::CausalLM::load(cfg.run.teacher, device, dtype);
    teacher->eval();
    for (auto& p : teacher->parameters()) p.set_requires_grad(false);
    if (writer) model::warn_beyond_context(teacher->config(), cfg.data.seq_len, "--seq-len", cfg.run.teacher);
  }
  CalibSource calib = [&](const CalibSink& sink) {
    for (int64_t i = 0; i < cfg.quant.calib_batches; ++i) {
      auto b = data::to_tensors(loaders.calib->next(), device);
      sink(b.input_ids, b.attention_mask.all().item<bool>() ? torch::Tensor() : b.attention_mask);
    }
  };
  Student student = build_student(cfg, device, dtype, calib, /*calibrate=*/!ckpt);
  student.lm->train();
  const auto trainable = trainable_tensors(student.lm, cfg.optim.freeze_routers);
  std::unique_ptr<Optimizer> optimizer_ptr = dp ? dp->make_optimizer(trainable, cfg.optim)
                                                : std::make_unique<AdamW>(trainable, cfg.optim);
  Optimizer& optimizer = *optimizer_ptr;
  const auto schedule = Schedule::from_config(cfg.optim, cfg.run.steps);

  TrainerState st;
  st.config = config_json;
  st.rng = {{"seed", cfg.run.seed}, {"scheme", "splitmix64(seed ^ step) + micro-batch index, a fresh CPU generator per micro-batch"}};
  if (ckpt) {
    auto c = load_checkpoint(*ckpt);
    load_quantizer_state(student, cfg, c.quant);
    load_model_tensors(student.lm, c.model, (*ckpt / "model").string());
    optimizer.load_state(c.optimizer, c.state.adam_steps);
    loaders.train->restore(data::LoaderState::from_json(c.state.loader));
    st = c.state;
    st.config = config_json;
    if (writer) fmt::print("resumed from {} (step {})\n", ckpt->string(), st.step);
  } else if (resume) {
    fmt::print("--resume: no checkpoint in {} yet; starting from the beginning\n", run_dir.string());
  }

  MetricsLog metrics(writer ? run_dir / "metrics.jsonl" : fs::path());
  model::CausalLM* teacher_ptr = need_teacher ? &teacher : nullptr;
  // Checkpoint selection (task_validation.h): task accuracy on rank 0, the best checkpoint in RUN_DIR/best.
  std::optional<TaskValidation> task_validation;
  if (writer && !cfg.run.valid_tasks.empty()) {
    task_validation.emplace(cfg.run.valid_tasks, cfg.run.teacher, cfg.run.valid_task_items,
                            cfg.run.valid_task_max_new_tokens);
  }
  BestCheckpoint best(cfg.run.best_metric);
  auto run_validation = [&](int64_t step) -> std::optional<ValidResult> {
    if (!loaders.valid) return std::nullopt;
    auto v = validate(student.lm, teacher_ptr, *loaders.valid, cfg.run.valid_batches, cfg.loss.cka_layers, device,
                      cfg.loss.chunk_tokens);
    if (task_validation) v.task_accuracy = task_validation->accuracy(student.lm);
    metrics.write(valid_record(step, v));
    if (writer) fmt::print("{}\n", valid_line(step, v));
    if (writer && best.improves(step, v)) {
      save_checkpoint(run_dir / "best", st, student.lm, {}, quantizer_state(student), 1);
    }
    return v;
  };
  auto checkpoint = [&]() {
    // Every rank checks (the weights are replicated), so that all stop together before the collective below.
    if (auto bad = model::first_non_finite(student.lm->hf_tensors())) {
      const auto good = latest_checkpoint(run_dir);
      fail("step {}: the student's tensor '{}' holds NaN or Inf values, so no checkpoint was written (the last good "
           "one is {}); lower optim.lr or check the data", st.step, *bad, good ? good->string() : std::string("none"));
    }
    st.loader = loaders.train->state().to_json();
    st.adam_steps = optimizer.steps();
    const auto opt_state = optimizer.state();  // a collective when sharded: every rank takes part
    if (writer) save_checkpoint(run_dir, st, student.lm, opt_state, quantizer_state(student), cfg.run.keep_checkpoints);
  };

  std::optional<ValidResult> last_valid;
  int64_t last_valid_step = -1, last_ckpt_step = ckpt ? st.step : -1;
  if (!ckpt) {
    last_valid = run_validation(0);
    last_valid_step = 0;
  }

  // --- the loop
  using clock = std::chrono::steady_clock;
  const int64_t start_step = st.step;
  const auto loop_start = clock::now();
  int stop_signal = 0;
  for (int64_t step = st.step; step < cfg.run.steps; ++step) {
    // A signal stops the run between steps (all ranks at the same step: the flag is reduced over them).
    stop_signal = GracefulStop::requested();
    if (dp) stop_signal = static_cast<int>(dp->max_over_ranks(static_cast<double>(stop_signal)));
    if (stop_signal != 0) break;
    const auto t0 = clock::now();
    std::vector<data::BatchTensors> micro;
    for (int64_t i = 0; i < cfg.optim.grad_accum; ++i) micro.push_back(data::to_tensors(loaders.train->next(), device));
    const bool poison = std::find(cfg.debug.nan_at_steps.begin(), cfg.debug.nan_at_steps.end(), step + 1) !=
                        cfg.debug.nan_at_steps.end();
    const double lr = schedule.lr(step);
    auto r = train_step(student.lm, teacher_ptr, micro, optimizer,
                        {.lr = lr, .config = &cfg, .rng_seed = mix(cfg.run.seed ^ static_cast<uint64_t>(step)) & 0xffffffffffffull,
                         .inject_nan = poison, .parallel = dp.get()});
    if (device.is_cuda()) torch::cuda::synchronize();
    const double dt = std::chrono::duration<double>(clock::now() - t0).count();
    st.step = step + 1;
    if (claim) claim->started();  // a step ran: from now on a failure keeps the run directory
    st.elapsed_s += dt;
    const int64_t step_tokens = r.values.tokens;  // over all ranks (reduced in train_step)
    if (!r.skipped) st.tokens += step_tokens;
    st.bad_streak = r.skipped ? st.bad_streak + 1 : 0;

    const double done = static_cast<double>(st.step - start_step);
    const double avg = std::chrono::duration<double>(clock::now() - loop_start).count() / done;
    const auto& v = r.values;
    nlohmann::json rec = {{"type", "train"}, {"step", st.step}, {"tokens", st.tokens}, {"loss", finite_or_null(v.loss)},
                          {"lr", lr}, {"grad_norm", finite_or_null(r.grad_norm)},
                          {"tokens_per_s", static_cast<double>(step_tokens) / dt},
                          {"peak_mem_gb", peak_memory_gb(device)}};
    if (v.kl) rec["kl"] = finite_or_null(*v.kl);
    if (v.ce) rec["ce"] = finite_or_null(*v.ce);
    if (v.cka_term) rec["cka_loss"] = finite_or_null(*v.cka_term);
    if (!v.cka.empty()) rec["cka"] = layer_object(v.cka);
    if (v.router_balance) rec["router_balance"] = finite_or_null(*v.router_balance);
    if (r.skipped) rec["skipped"] = true;
    metrics.write(rec);
    if (writer && (r.skipped || st.step % cfg.run.log_every == 0 || st.step == cfg.run.steps)) {
      fmt::print("{}\n", format_step_line({.step = st.step, .total = cfg.run.steps, .loss = v.loss, .lr = lr,
                                           .grad_norm = r.grad_norm, .tokens_per_s = static_cast<double>(step_tokens) / dt,
                                           .eta_s = avg * static_cast<double>(cfg.run.steps - st.step), .kl = v.kl,
                                           .ce = v.ce, .cka_term = v.cka_term, .skipped = r.skipped}));
      std::fflush(stdout);
    }
    if (r.skipped) {
      if (writer) {
        fmt::print(stderr, "qad: warning: step {}: non-finite loss ({}) or gradient norm ({}); the update was skipped "
                   "({} in a row, the limit is {})\n", st.step, v.loss, r.grad_norm, st.bad_streak, cfg.run.max_bad_steps);
      }
      if (st.bad_streak >= cfg.run.max_bad_steps) {
        const auto good = latest_checkpoint(run_dir);
        fail("stopped after {} consecutive steps with a non-finite loss or gradient (steps {}-{}); the last good "
             "checkpoint is {}. Lower optim.lr, check the data, or raise run.max_bad_steps",
             st.bad_streak, st.step - st.bad_streak + 1, st.step,
             good ? good->string() : std::string("(none written yet)"));
      }
      continue;  // no validation or checkpoint on a skipped step: the last checkpoint stays the last good one
    }
    if (cfg.debug.kill_at_step == st.step && (cfg.debug.kill_rank < 0 || cfg.debug.kill_rank == cfg.dist.rank)) {
      std::raise(SIGKILL);  // test hook: die like a preempted job
    }
    for (const int64_t s : cfg.debug.signal_at_steps) {
      if (s == st.step) std::raise(SIGTERM);  // test hook: a stop request (twice: a second one) after this step
    }
    if (cfg.run.valid_every > 0 && st.step % cfg.run.valid_every == 0) {
      last_valid = run_validation(st.step);
      last_valid_step = st.step;
    }
    if (cfg.run.checkpoint_every > 0 && st.step % cfg.run.checkpoint_every == 0 && st.step < cfg.run.steps) {
      checkpoint();
      last_ckpt_step = st.step;
    }
  }

  // --- the end: final validation, checkpoint, exports, final metrics
  RunSummary summary;
  summary.run_dir = run_dir;
  summary.steps = st.step;
  summary.tokens = st.tokens;
  summary.train_seconds = st.elapsed_s;
  if (stop_signal != 0) {  // stopped early: a checkpoint to resume from, no final validation or export
    QAD_CHECK(st.step > 0, "stopped by {} before the first training step; nothing was trained",
              GracefulStop::name(stop_signal));
    if (claim) claim->started();
    if (last_ckpt_step != st.step) checkpoint();
    summary.stopped_by_signal = stop_signal;
    summary.checkpoint = latest_checkpoint(run_dir).value_or(fs::path());
    return summary;
  }
  if (claim) claim->started();
  if (last_valid_step != st.step) last_valid = run_validation(st.step);
  summary.final_valid = last_valid;
  if (st.step > 0 && last_ckpt_step != st.step && cfg.run.checkpoint_every >= 0) checkpoint();
  if (writer) {
    for (const auto& dir : export_student(student, cfg, cfg.run.export_nvfp4, cfg.run.export_bf16)) {
      fmt::print("exported {}\n", dir.string());
    }
    nlohmann::json fm = {{"steps", st.step}, {"tokens", st.tokens}, {"train_seconds", st.elapsed_s}};
    if (last_valid) {
      fm["ppl"] = finite_or_null(last_valid->ppl);
      fm["ce"] = finite_or_null(last_valid->ce);
      if (last_valid->kl) fm["kl"] = finite_or_null(*last_valid->kl);
      if (last_valid->agreement) fm["agreement"] = *last_valid->agreement;
      if (last_valid->mean_cka) fm["mean_cka"] = finite_or_null(*last_valid->mean_cka);
      if (last_valid->task_accuracy) fm["task_accuracy"] = *last_valid->task_accuracy;
      if (!last_valid->cka.empty()) fm["cka"] = layer_object(last_valid->cka);
    }
    if (best.enabled()) fm["best"] = best.to_json((run_dir / "best").string());
    write_file_atomic(run_dir / "final_metrics.json", fm.dump(2) + "\n");
  }
  if (claim) claim->remove_stale_temporaries();
  return summary;
}

}  // namespace qad::train
