// `qad demo`: the default job on a fresh machine (docs/train.md, "qad demo").
#include <memory>

#include "cli/commands.h"
#include "demo/demo.h"

namespace qad::cli {
namespace {

void register_demo(CLI::App& app) {
  auto o = std::make_shared<demo::DemoOptions>();
  auto* cmd = app.add_subcommand("demo", "Train a tiny teacher on a generated arithmetic task, then compare PTQ, QAT, "
                                         "QAD and CKA-QAD on it (no downloads)");
  cmd->footer("Examples:\n  qad demo\n  qad demo --size small --device cuda --out qad-demo-gpu");  // each one is run by tests/usage
  auto* out = cmd->add_option("--out", o->out, "output directory");
  out->default_str("qad-demo");
  cmd->add_option("--device", o->device, "auto, cpu, cuda or cuda:N")->capture_default_str();
  cmd->add_option("--size", o->size, "tiny (CPU, ~5 min with OpenBLAS) or small (GPU)")
      ->check(CLI::IsMember({"tiny", "small"}));
  // The whole pipeline on a 2-layer, 32-wide model in seconds: for tests, nothing is learned.
  cmd->add_flag_callback("--smoke", [o] { o->size = "smoke"; })->group("");
  cmd->add_option("--teacher-steps", o->teacher_steps, "teacher training steps (default: the size's)");
  cmd->add_option("--steps", o->student_steps, "training steps of each student (default: the size's)");
  cmd->add_option("--test-examples", o->test_examples, "held-out questions for the accuracy column");
  cmd->add_option("--seed", o->seed, "seed of the task, the initial weights and the data order");
  cmd->callback([o] { demo::run_demo(*o); });
}

}  // namespace

QAD_REGISTER_COMMAND(150, register_demo);

}  // namespace qad::cli
