// The trainer, torchtitan style: setup (run directory, ranks, data, models, optimizer, resume) → loop {step,
// log, validate, checkpoint} → finish (final validation and checkpoint, exports, final metrics). Each phase is
// one short method; the components live in their own files (config, data_source, student, step, optimizer,
// schedule, validate, metrics, distributed, run_directory, task_validation, checkpoint/training_checkpoint).
#pragma once
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "checkpoint/training_checkpoint.h"
#include "train/config.h"
#include "train/data_source.h"
#include "train/metrics.h"
#include "train/optimizer.h"
#include "train/run_directory.h"
#include "train/schedule.h"
#include "train/step.h"
#include "train/student.h"
#include "train/task_validation.h"
#include "train/teacher_cache.h"
#include "util/signals.h"

namespace qad::train {

class DataParallel;

struct RunSummary {
  std::filesystem::path run_dir;
  int64_t steps = 0, tokens = 0;
  std::optional<ValidResult> final_valid;
  double train_seconds = 0;
  int stopped_by_signal = 0;           // SIGINT / SIGTERM stopped the run before run.steps (0: it finished)
  std::filesystem::path checkpoint;    // when stopped: the checkpoint to resume from (empty if none)
};

// Runs (or with resume, continues from RUN_DIR's latest checkpoint) the job `cfg` describes. A resumed run must
// have the same configuration as the one saved in RUN_DIR/run.json (the first difference is named).
// `command` (the command line) is recorded in the run directory's lock for a second run's message. SIGINT /
// SIGTERM stop the run at the next step boundary with a checkpoint (RunSummary::stopped_by_signal).
// = Trainer(cfg, resume, command).run().
RunSummary run_training(const TrainConfig& cfg, bool resume, const std::string& command = "qad distill");

class Trainer {
 public:
  Trainer(const TrainConfig& cfg, bool resume, std::string command);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  RunSummary run();  // setup(); loop(); return finish();
  void setup();
  void loop();
  RunSummary finish();

 private:
  // setup
  void open_run_dir();  // claims --out; checks a resumed configuration against run.json; writes run.json
  void join_ranks();
  void load_models();   // data loaders, teacher, student (calibrated, or restored below), optimizer
  void restore(const std::filesystem::path& checkpoint_dir);
  // loop
  // Step `index`'s batches, queued (train/step.h's QueuedStep); `previous`: the step before, if it is still unread.
  QueuedStep queue_step(int64_t index, double lr, const QueuedStep* previous);
  bool may_queue_after(int64_t index) const;
  void log_step(const StepResult& r, double lr, double seconds, int64_t start_step, double loop_seconds);
  void stop_if_too_many_bad_steps(const StepResult& r);
  void debug_hooks() const;  // test-only fault injection after a step (config.h's DebugConfig)
  std::optional<ValidResult> validate_now();
  void save_checkpoint_now();

  const TrainConfig cfg_;
  const bool resume_;
  const std::string command_;
  const std::filesystem::path run_dir_;
  const bool writer_;
  torch::Device device_{torch::kCPU};
  torch::ScalarType dtype_ = torch::kFloat32;
  nlohmann::json config_json_;
  std::optional<RunDirectory> claim_;        // rank 0: the lock on --out; a failed start is undone
  std::optional<GracefulStop> graceful_stop_;
  std::optional<std::filesystem::path> resume_from_;  // the checkpoint a resumed run continues from
  std::unique_ptr<DataParallel> dp_;
  Loaders loaders_;
  model::CausalLM teacher_{nullptr};
  std::unique_ptr<TeacherCache> teacher_cache_;  // --teacher-cache: the teacher's targets, no teacher_
  Student student_;
  std::unique_ptr<Optimizer> optimizer_;
  Schedule schedule_;
  std::unique_ptr<MetricsLog> metrics_;
  std::optional<TaskValidation> task_validation_;  // rank 0, with run.valid_tasks
  std::optional<BestCheckpoint> best_;
  checkpoint::TrainerState state_;
  std::optional<ValidResult> last_valid_;
  int64_t last_valid_step_ = -1, last_checkpoint_step_ = -1;
  int64_t valid_batch_rows_ = 0;  // rows per validation batch: the first run's batch_size x world_size
  int stop_signal_ = 0;
};

}  // namespace qad::train
