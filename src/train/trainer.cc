// The trainer's phases (see trainer.h).
#include "train/trainer.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <limits>
#include <thread>

#include "checkpoint/load.h"
#include "data/batch_tensors.h"
#include "data/calibration_rows.h"
#include "model/context_length.h"
#include "model/device.h"
#include "model/finite_check.h"
#include "train/distributed.h"
#include "train/memory.h"
#include "train/moe_training.h"
#include "train/offload_adamw.h"
#include "train/run_paths.h"
#include "train/validate.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/torch_compat.h"

namespace qad::train {
namespace fs = std::filesystem;
namespace {

using clock = std::chrono::steady_clock;

uint64_t mix(uint64_t x) {  // SplitMix64 finaliser: per-step seeds that do not collide across steps
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// The first key whose value differs between two configs ("optim.lr: 1e-05 vs 2e-05"), ignoring debug. A key
// the saved run lacks (a setting added after it was written) matches when it has its default value now, which
// is the behaviour the run had (`defaults`: the default config, same layout).
std::string first_difference(const nlohmann::json& a, const nlohmann::json& b, const nlohmann::json& defaults,
                             const std::string& path = "") {
  if (a.is_object() && b.is_object()) {
    for (const auto& [k, v] : a.items()) {
      if (path.empty() && k == "debug") continue;
      const std::string p = path.empty() ? k : path + "." + k;
      const bool has_default = defaults.is_object() && defaults.contains(k);
      if (!b.contains(k)) {
        if (has_default && defaults[k] == v) continue;
        return p + " is missing from the saved config";
      }
      auto d = first_difference(v, b[k], has_default ? defaults[k] : nlohmann::json(), p);
      if (!d.empty()) return d;
    }
    return "";
  }
  return a == b ? "" : fmt::format("{}: {} now vs {} in the saved run", path, a.dump(), b.dump());
}

// Data parallel on CUDA: rank i computes on cuda:LOCAL_RANK (unless --device names a GPU explicitly); so does one
// fully sharded process, whose NCCL group needs a device index.
torch::Device training_device(const TrainConfig& cfg) {
  const bool per_rank_gpu = (cfg.dist.world_size > 1 || cfg.dist.fully_sharded) &&
                            (cfg.run.device == "auto" || cfg.run.device == "cuda") && compat::cuda_available();
  return model::parse_device(per_rank_gpu ? fmt::format("cuda:{}", cfg.dist.local_rank) : cfg.run.device);
}

std::string checkpoint_name(const std::optional<fs::path>& p, const char* none) {
  return p ? p->string() : std::string(none);
}

}  // namespace

RunSummary run_training(const TrainConfig& cfg, bool resume, const std::string& command) {
  return Trainer(cfg, resume, command).run();
}

Trainer::Trainer(const TrainConfig& cfg, bool resume, std::string command)
    : cfg_(cfg), resume_(resume), command_(std::move(command)), run_dir_(cfg.run.out), writer_(is_writer(cfg.dist)) {}

Trainer::~Trainer() = default;

RunSummary Trainer::run() {
  setup();
  loop();
  return finish();
}

// --- setup

void Trainer::setup() {
  cfg_.validate();
  device_ = training_device(cfg_);
  dtype_ = model::CausalLM::default_dtype(device_);
  torch::manual_seed(cfg_.run.seed);
  if (device_.is_cuda()) compat::set_tf32_matmul(cfg_.loss.cka_tf32);
  open_run_dir();
  join_ranks();
  load_models();
  state_.config = config_json_;
  state_.rng = {{"seed", cfg_.run.seed},
                {"scheme", "splitmix64(seed ^ step) + micro-batch index, a fresh CPU generator per micro-batch"}};
  if (resume_from_) {
    restore(*resume_from_);
  } else if (resume_) {
    fmt::print("--resume: no checkpoint in {} yet; starting from the beginning\n", run_dir_.string());
  }
  metrics_ = std::make_unique<MetricsLog>(writer_ ? run_dir_ / "metrics.jsonl" : fs::path());
  // Checkpoint selection (task_validation.h): task accuracy on rank 0, the best checkpoint in RUN_DIR/best.
  if (writer_ && !cfg_.run.valid_tasks.empty()) {
    task_validation_.emplace(cfg_.run.valid_tasks, cfg_.run.teacher, cfg_.run.valid_task_items,
                             cfg_.run.valid_task_max_new_tokens);
  }
  best_.emplace(cfg_.run.best_metric);
  last_checkpoint_step_ = resume_from_ ? state_.step : -1;
  if (!resume_from_) {
    last_valid_ = validate_now();
    last_valid_step_ = 0;
  }
}

void Trainer::open_run_dir() {
  // Rank 0 alone writes the run directory: it claims it (lock, stale temporaries; a failed start is undone).
  if (writer_) claim_.emplace(run_dir_, resume_, command_);
  graceful_stop_.emplace();  // SIGINT / SIGTERM: stop at the next step boundary with a checkpoint
  fs::create_directories(run_dir_);
  config_json_ = cfg_.to_json();
  const auto run_json_path = run_dir_ / "run.json";
  if (resume_) {
    resume_from_ = checkpoint::latest_checkpoint(run_dir_);
    QAD_CHECK(fs::exists(run_json_path), "--resume: {} has no run.json; start the run without --resume",
              run_dir_.string());
    auto saved = nlohmann::json::parse(read_file(run_json_path));
    auto saved_config = saved.at("config");
    reconcile_paths(cfg_, saved_config, saved.value("paths", nlohmann::json::object()));
    // Another split of the same global batch (batch_size x world_size x grad_accum rows per step) continues the
    // same run: another number of ranks, rows per rank or micro-batches per step (the loader resumes at the same
    // row; docs/dist.md, "Checkpoints and resume").
    const int64_t saved_world = saved.value("world_size", int64_t{1});
    const auto section = [&](const char* key) {
      return saved_config.contains(key) && saved_config[key].is_object() ? saved_config[key] : nlohmann::json::object();
    };
    const int64_t saved_batch = section("data").value("batch_size", int64_t{0});
    const int64_t saved_accum = section("optim").value("grad_accum", int64_t{1});
    const int64_t saved_rows = saved_batch * saved_world * saved_accum;
    const int64_t rows = cfg_.data.batch_size * cfg_.dist.world_size * cfg_.optim.grad_accum;
    if (saved_rows == rows && saved_config.contains("data")) {
      saved_config["data"]["batch_size"] = cfg_.data.batch_size;
      if (saved_config.contains("optim")) saved_config["optim"]["grad_accum"] = cfg_.optim.grad_accum;
    }
    // Validation keeps the batches it started with (their rows, and the per-batch CKA it averages), whatever the
    // new split: the first run's batch_size x world_size rows (run.json records them).
    valid_batch_rows_ = saved.value("valid_batch_rows", saved_batch * saved_world);
    // Offloading the optimizer state changes where it lives, not the arithmetic: a run may resume with or without.
    if (saved_config.contains("optim")) saved_config["optim"]["offload"] = cfg_.optim.offload;
    QAD_CHECK(saved_rows == rows || saved_batch <= 0, "--resume: the global batch differs from the saved run's ({} "
              "rows per step: batch_size {} x {} rank(s) x grad_accum {}; now {} x {} x {} = {}); another number of "
              "ranks resumes when batch_size x ranks x grad_accum stays {}, or start a new run in another --out "
              "directory",
              saved_rows, saved_batch, saved_world, saved_accum, cfg_.data.batch_size, cfg_.dist.world_size,
              cfg_.optim.grad_accum, rows, saved_rows);
    auto diff = first_difference(config_json_, saved_config, TrainConfig{}.to_json());
    QAD_CHECK(diff.empty(), "--resume: the configuration differs from the saved run ({}); resume with the same "
              "command line, or start a new run in another --out directory", diff);
  } else {
    QAD_CHECK(!fs::exists(run_dir_ / "metrics.jsonl") && !checkpoint::latest_checkpoint(run_dir_),
              "{} already holds a run; pass --resume to continue it or choose another --out", run_dir_.string());
  }
  if (valid_batch_rows_ <= 0) valid_batch_rows_ = cfg_.data.batch_size * cfg_.dist.world_size;
  if (!writer_) return;
  const std::string name =
      cfg_.run.name.empty() ? fs::absolute(run_dir_).lexically_normal().filename().string() : cfg_.run.name;
  write_file_atomic(run_json_path, nlohmann::json{{"name", name}, {"method", method_name(cfg_.method)},
                                                  {"world_size", cfg_.dist.world_size},
                                                  {"valid_batch_rows", valid_batch_rows_},
                                                  {"device", device_.str()},  // what --device auto resolved to
                                                  {"config", config_json_},
                                                  {"paths", describe_paths(cfg_)}}
                                           .dump(2) + "\n");
  fmt::print("qad distill: {} → {} on {}\n{}", cfg_.run.teacher, run_dir_.string(), device_.str(), describe(cfg_));
}

// Joins the other ranks first: a missing rank fails here, before minutes of model loading.
void Trainer::join_ranks() {
  if (cfg_.dist.world_size <= 1 && !cfg_.dist.fully_sharded) return;
  dp_ = std::make_unique<DataParallel>(cfg_.dist, device_);
  if (writer_ && cfg_.dist.fully_sharded) {
    fmt::print("data parallel: {} ranks over {}, fully sharded (ZeRO-3: student and teacher gathered layer by "
               "layer), global batch {} x {} rows\n", cfg_.dist.world_size, dp_->comm().backend(),
               cfg_.dist.world_size, cfg_.data.batch_size);
  } else if (writer_) {
    fmt::print("data parallel: {} ranks over {}, ZeRO-1 {}, {} MB gradient buckets, global batch {} x {} rows\n",
               cfg_.dist.world_size, dp_->comm().backend(), cfg_.dist.zero ? "on" : "off", cfg_.dist.bucket_mb,
               cfg_.dist.world_size, cfg_.data.batch_size);
  }
}

void Trainer::load_models() {
  // Rank 0 prepares a .jsonl / .txt dataset on the fly; the others wait and then open what it wrote.
  if (dp_ && !writer_) dp_->barrier("waiting for rank 0 to prepare the data");
  loaders_ = make_loaders(cfg_, valid_batch_rows_);
  if (dp_ && writer_) dp_->barrier("waiting for rank 0 to prepare the data");
  if (!cfg_.run.teacher_cache.empty()) {
    teacher_cache_ = std::make_unique<TeacherCache>(cfg_.run.teacher_cache);
    teacher_cache_->check_run(cfg_, *loaders_.train);
    if (writer_) {
      fmt::print("teacher: from the cache {} (top-{} of its {} logits{}; no teacher model)\n", cfg_.run.teacher_cache,
                 cfg_.loss.top_k > 0 ? cfg_.loss.top_k : teacher_cache_->manifest().layout.top_k,
                 teacher_cache_->manifest().layout.top_k, cfg_.loss.top_k_tail ? ", KL with the tail category" : "");
    }
  } else if (cfg_.method != Method::kPretrain) {
    teacher_ = checkpoint::load_model(cfg_.run.teacher, device_, dtype_);
    teacher_->eval();
    for (auto& p : teacher_->parameters()) p.set_requires_grad(false);
    if (writer_) model::warn_beyond_context(teacher_->config(), cfg_.data.seq_len, "--seq-len", cfg_.run.teacher);
  }
  CalibSource calib = [&](const CalibSink& sink) {  // data/calibration_rows.h: the same rows as qad quantize's
    const auto batch = [&](const data::BatchTensors& b) {
      sink(b.input_ids, b.attention_mask.all().item<bool>() ? torch::Tensor() : b.attention_mask);
    };
    data::for_each_calibration_batch(*loaders_.calib, calibration_samples(cfg_), device_, batch);
  };
  student_ = build_student(cfg_, device_, dtype_, calib, /*calibrate=*/!resume_from_);
  student_.lm->train();
  const auto trainable = trainable_tensors(student_.lm, cfg_.optim.freeze_routers);
  optimizer_ = dp_ ? dp_->make_optimizer(trainable, cfg_.optim, &student_.lm, teacher_ ? &teacher_ : nullptr)
                   : make_adamw(trainable, cfg_.optim);
  if (auto* adamw = dynamic_cast<AdamW*>(optimizer_.get()); adamw != nullptr && cfg_.debug.fused_adamw_on_cpu) {
    adamw->set_fused(true);
  }
  if (auto* off = dynamic_cast<OffloadAdamW*>(optimizer_.get()); off != nullptr && writer_) {
    fmt::print("{}\n", off->describe());
  }
  schedule_ = Schedule::from_config(cfg_.optim, cfg_.run.steps);
}

void Trainer::restore(const fs::path& dir) {
  auto c = checkpoint::load_checkpoint(dir);
  const auto full = dp_ ? dp_->full_parameters() : nullptr;  // fully sharded: the weights are loaded whole
  load_quantizer_state(student_, cfg_, c.quant);
  checkpoint::load_model_tensors(student_.lm, c.model, (dir / "model").string());
  optimizer_->load_state(c.optimizer, c.state.adam_steps);
  loaders_.train->restore(data::LoaderState::from_json(c.state.loader));
  state_ = c.state;
  state_.config = config_json_;
  if (writer_) fmt::print("resumed from {} (step {})\n", dir.string(), state_.step);
}

// --- the loop

void Trainer::loop() {
  const int64_t start_step = state_.step;
  const auto loop_start = clock::now();
  auto last_read = loop_start;  // a step's time runs from the later of its queueing and the previous step's read
  struct Queued {
    QueuedStep step;
    int64_t index;
    double lr;
    clock::time_point queued_at;
  };
  std::optional<Queued> queued;  // queued and not read yet: its values, log line, validation and checkpoint follow
  int64_t overlapped = 0;        // steps read after the next one was queued
  if (writer_ && start_step < cfg_.run.steps && may_queue_after(start_step)) {
    fmt::print("steps overlap: each step's values are read after the next step is queued, so the device does not wait "
               "for the host between steps\n");
  }
  auto complete = [&](Queued& q) {
    const auto r = read_train_step(q.step, *optimizer_);
    const bool more_queued = queued.has_value() && &*queued != &q;
    if (device_.is_cuda() && !more_queued) torch::cuda::synchronize();
    const auto now = clock::now();
    const double seconds = std::chrono::duration<double>(now - std::max(q.queued_at, last_read)).count();
    last_read = now;
    state_.step = q.index + 1;
    if (claim_) claim_->started();  // a step ran: from now on a failure keeps the run directory
    state_.elapsed_s += seconds;
    if (!r.skipped) state_.tokens += r.values.tokens;  // over all ranks (reduced in train_step)
    state_.bad_streak = r.skipped ? state_.bad_streak + 1 : 0;
    log_step(r, q.lr, seconds, start_step, std::chrono::duration<double>(now - loop_start).count());
    if (r.skipped) {
      stop_if_too_many_bad_steps(r);
      return;  // no validation or checkpoint on a skipped step: the last checkpoint stays the last good one
    }
    debug_hooks();
    if (cfg_.run.valid_every > 0 && state_.step % cfg_.run.valid_every == 0) {
      last_valid_ = validate_now();
      last_valid_step_ = state_.step;
    }
    if (cfg_.run.checkpoint_every > 0 && state_.step % cfg_.run.checkpoint_every == 0 && state_.step < cfg_.run.steps) {
      save_checkpoint_now();
    }
  };
  for (int64_t s = state_.step; s < cfg_.run.steps; ++s) {
    // A signal stops the run between steps (all ranks at the same step: the flag is reduced over them); a step
    // still unread is read below, so the run stops after it.
    stop_signal_ = GracefulStop::requested();
    if (dp_) stop_signal_ = static_cast<int>(dp_->max_over_ranks(static_cast<double>(stop_signal_)));
    if (stop_signal_ != 0) break;
    const double lr = schedule_.lr(s);
    const auto t0 = clock::now();
    std::optional<Queued> next;
    try {
      next.emplace(Queued{queue_step(s, lr, queued ? &queued->step : nullptr), s, lr, t0});
    } catch (...) {
      // Step s failed while step s - 1 is unread: log step s - 1 first (its update has run; a fresh run directory
      // with a step done is kept), then report the failure.
      if (queued) {
        try {
          complete(*queued);
        } catch (...) {
        }
      }
      throw;
    }
    std::optional<Queued> previous = std::move(queued);
    queued = std::move(next);
    if (previous) {
      complete(*previous);  // step s - 1, while the device runs step s
      ++overlapped;
    }
    if (!may_queue_after(s)) {
      complete(*queued);
      queued.reset();
    }
  }
  if (queued) {
    auto last = std::move(*queued);
    queued.reset();
    complete(last);
  }
  if (writer_ && overlapped > 0) {
    fmt::print("steps overlap: {} of {} steps were read after the next one was queued\n", overlapped,
               state_.step - start_step);
  }
}

// Whether step s + 1 may be queued before step s is read: not where step s is followed by anything that looks at the
// weights or the run's state (validation, a checkpoint, the end, a test's fault injection), and only where the step
// itself does not read the device (one process, a device-side optimizer step).
bool Trainer::may_queue_after(int64_t s) const {
  const int64_t done = s + 1;  // state_.step once step s is read
  const auto& r = cfg_.run;
  const auto& d = cfg_.debug;
  // On the CPU "queueing" a step runs it: nothing to overlap (and the step times would shift by one step), except
  // for the tests' way onto this path.
  if (!device_.is_cuda() && !d.fused_adamw_on_cpu) return false;
  if (dp_ || !optimizer_->device_step_available() || d.sequential_steps || done >= r.steps) return false;
  if (r.valid_every > 0 && done % r.valid_every == 0) return false;
  if (r.checkpoint_every > 0 && done % r.checkpoint_every == 0) return false;
  const bool signal = std::find(d.signal_at_steps.begin(), d.signal_at_steps.end(), done) != d.signal_at_steps.end();
  return !signal && d.kill_at_step != done && d.hold_at_step != done && d.inf_weight_at_step != done;
}

QueuedStep Trainer::queue_step(int64_t index, double lr, const QueuedStep* previous) {
  std::vector<data::BatchTensors> micro;
  for (int64_t i = 0; i < cfg_.optim.grad_accum; ++i) {
    const auto batch = loaders_.train->next();
    micro.push_back(data::to_tensors(batch, device_));
    if (teacher_cache_) {  // the teacher's targets of these rows, read from the cache
      const auto& l = cfg_.loss;
      const auto layers = l.cka > 0 ? (l.cka_layers.empty() ? default_cka_layers(student_.lm->config()) : l.cka_layers)
                                    : std::vector<std::string>{};
      micro.back().teacher = teacher_cache_->targets(batch, loaders_.train->options(), device_, l.top_k, layers);
    }
  }
  const auto& nan_steps = cfg_.debug.nan_at_steps;
  const bool poison = std::find(nan_steps.begin(), nan_steps.end(), index + 1) != nan_steps.end();
  return queue_train_step(student_.lm, teacher_ ? &teacher_ : nullptr, micro, *optimizer_,
                          {.lr = lr, .config = &cfg_,
                           .rng_seed = mix(cfg_.run.seed ^ static_cast<uint64_t>(index)) & 0xffffffffffffull,
                           .inject_nan = poison, .parallel = dp_.get()},
                          previous);
}

void Trainer::log_step(const StepResult& r, double lr, double seconds, int64_t start_step, double loop_seconds) {
  const auto& v = r.values;
  const double avg = loop_seconds / static_cast<double>(state_.step - start_step);
  StepLine line{.step = state_.step, .total = cfg_.run.steps, .loss = v.loss, .lr = lr, .grad_norm = r.grad_norm,
                .tokens_per_s = static_cast<double>(v.tokens) / seconds,
                .eta_s = avg * static_cast<double>(cfg_.run.steps - state_.step), .kl = v.kl, .ce = v.ce,
                .cka_term = v.cka_term, .router_balance = v.router_balance, .skipped = r.skipped,
                .tokens = state_.tokens, .peak_mem_gb = peak_memory_gb(device_), .cka = v.cka};
  metrics_->write(step_record(line));
  if (writer_ && (r.skipped || state_.step % cfg_.run.log_every == 0 || state_.step == cfg_.run.steps)) {
    fmt::print("{}\n", format_step_line(line));
    std::fflush(stdout);
  }
}

void Trainer::stop_if_too_many_bad_steps(const StepResult& r) {
  if (writer_) {
    fmt::print(stderr, "qad: warning: step {}: non-finite loss ({}) or gradient norm ({}); the update was skipped ({} "
               "in a row, the limit is {})\n", state_.step, r.values.loss, r.grad_norm, state_.bad_streak,
               cfg_.run.max_bad_steps);
  }
  if (state_.bad_streak < cfg_.run.max_bad_steps) return;
  fail("stopped after {} consecutive steps with a non-finite loss or gradient (steps {}-{}); the last good checkpoint "
       "is {}. Lower optim.lr, check the data, or raise run.max_bad_steps", state_.bad_streak,
       state_.step - state_.bad_streak + 1, state_.step,
       checkpoint_name(checkpoint::latest_checkpoint(run_dir_), "(none written yet)"));
}

void Trainer::debug_hooks() const {
  const auto& d = cfg_.debug;
  if (d.kill_at_step == state_.step && (d.kill_rank < 0 || d.kill_rank == cfg_.dist.rank)) {
    std::raise(SIGKILL);  // die like a preempted job
  }
  for (const int64_t s : d.signal_at_steps) {
    if (s == state_.step) std::raise(SIGTERM);  // a stop request (a step listed twice: a second one) after this step
  }
  if (d.inf_weight_at_step == state_.step) {
    torch::NoGradGuard ng;
    student_.lm->parameters().front().view(-1)[0].fill_(std::numeric_limits<float>::infinity());
  }
  if (d.hold_at_step == state_.step) {  // stay a live run until a stop request comes
    const auto until = clock::now() + std::chrono::minutes(10);
    while (GracefulStop::requested() == 0) {
      QAD_CHECK(clock::now() < until, "debug.hold_at_step: no SIGINT / SIGTERM came within 10 minutes");
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
}

std::optional<ValidResult> Trainer::validate_now() {
  // run.valid_batches 0 turns validation off: no "ppl 0" over zero tokens in the log or in final_metrics.json.
  if (!loaders_.valid || cfg_.run.valid_batches == 0) return std::nullopt;
  const auto full = dp_ ? dp_->full_parameters() : nullptr;  // fully sharded: the student whole meanwhile
  auto v = validate(student_.lm, teacher_ ? &teacher_ : nullptr, *loaders_.valid, cfg_.run.valid_batches,
                    cfg_.loss.cka_layers, device_, cfg_.loss.chunk_tokens);
  if (task_validation_) v.task_accuracy = task_validation_->accuracy(student_.lm);
  metrics_->write(valid_record(state_.step, v));
  if (writer_) fmt::print("{}\n", valid_line(state_.step, v));
  if (writer_ && best_->improves(state_.step, v)) {
    checkpoint::save_checkpoint(run_dir_ / "best", state_, student_.lm, {}, quantizer_state(student_), 1);
  }
  return v;
}

void Trainer::save_checkpoint_now() {
  // Every rank checks (the weights are replicated), so that all stop together before the collective below.
  const auto full = dp_ ? dp_->full_parameters() : nullptr;  // fully sharded: the student whole meanwhile
  if (auto bad = model::first_non_finite(student_.lm->hf_tensors())) {
    fail("step {}: the student's tensor '{}' holds NaN or Inf values, so no checkpoint was written (the last good one "
         "is {}); lower optim.lr or check the data", state_.step, *bad,
         checkpoint_name(checkpoint::latest_checkpoint(run_dir_), "none"));
  }
  state_.loader = loaders_.train->state().to_json();
  state_.adam_steps = optimizer_->steps();
  const auto opt_state = optimizer_->state();  // a collective when sharded: every rank takes part
  if (writer_) {
    checkpoint::save_checkpoint(run_dir_, state_, student_.lm, opt_state, quantizer_state(student_),
                                cfg_.run.keep_checkpoints);
  }
  last_checkpoint_step_ = state_.step;
}

// --- the end: final validation, checkpoint, exports, final metrics

RunSummary Trainer::finish() {
  RunSummary summary{.run_dir = run_dir_, .steps = state_.step, .tokens = state_.tokens,
                     .train_seconds = state_.elapsed_s};
  if (stop_signal_ != 0) {  // stopped early: a checkpoint to resume from, no final validation or export
    QAD_CHECK(state_.step > 0, "stopped by {} before the first training step; nothing was trained",
              GracefulStop::name(stop_signal_));
    if (claim_) claim_->started();
    if (last_checkpoint_step_ != state_.step) save_checkpoint_now();
    summary.stopped_by_signal = stop_signal_;
    summary.checkpoint = checkpoint::latest_checkpoint(run_dir_).value_or(fs::path());
    return summary;
  }
  if (claim_) claim_->started();
  if (last_valid_step_ != state_.step) last_valid_ = validate_now();
  summary.final_valid = last_valid_;
  if (state_.step > 0 && last_checkpoint_step_ != state_.step && cfg_.run.checkpoint_every >= 0) save_checkpoint_now();
  const auto full = dp_ ? dp_->full_parameters() : nullptr;  // fully sharded: the exports read whole tensors
  if (writer_) {
    for (const auto& dir : export_student(student_, cfg_, cfg_.run.export_nvfp4, cfg_.run.export_bf16)) {
      const bool nvfp4 = student_.quantized && dir.filename() == "nvfp4";
      fmt::print("exported {}{}\n", dir.string(), nvfp4 ? " (" + export_format_label(student_) + ")" : "");
    }
    auto fm = final_metrics(state_.step, state_.tokens, state_.elapsed_s, last_valid_);
    if (best_->enabled()) fm["best"] = best_->to_json((run_dir_ / "best").string());
    write_file_atomic(run_dir_ / "final_metrics.json", fm.dump(2) + "\n");
  }
  if (claim_) claim_->remove_stale_temporaries();
  return summary;
}

}  // namespace qad::train
