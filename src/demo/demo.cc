// The demo pipeline (see demo.h): task → teacher → PTQ / QAT / QAD / CKA-QAD → evaluation table.
#include "demo/demo.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "checkpoint/load.h"
#include "demo/accuracy_noise.h"
#include "demo/arith_task.h"
#include "demo/demo_tokenizer.h"
#include "eval/task_eval.h"
#include "model/causal_lm.h"
#include "model/config.h"
#include "model/device.h"
#include "report/table.h"
#include "tokenizer/tokenizer.h"
#include "train/data_source.h"
#include "train/trainer.h"
#include "util/atomic_file.h"
#include "util/blas_check.h"
#include "util/error.h"
#include "util/output_check.h"
#include "util/progress.h"
#include "util/signals.h"

namespace qad::demo {
namespace fs = std::filesystem;
namespace {

struct Size {
  int64_t hidden, layers, heads, kv_heads, intermediate, seq_len, batch, teacher_steps, student_steps, test, train_docs;
  double teacher_lr, student_lr;
  int max_digits;
  int64_t valid_batches = 8, calib_batches = 4;
};

// tiny: ~5 minutes on 2 CPU cores with OpenBLAS (docs/train.md, "Measured"): a 3 x 64 teacher learns 2-digit
// addition / subtraction to ~95 % in 500 steps of 32 x 128 tokens at lr 3e-3; 80 student steps are enough for
// QAD to halve PTQ's KL. small: a larger model and budget for a GPU. smoke: the pipeline in seconds, for tests
// only (nothing is learned).
Size size_preset(const std::string& name) {
  if (name == "tiny") return {64, 3, 4, 2, 192, 128, 32, 500, 80, 200, 20000, 3e-3, 5e-4, 2};
  if (name == "small") return {256, 6, 8, 4, 768, 256, 64, 3000, 600, 1000, 200000, 1e-3, 1e-4, 3};
  if (name == "smoke") return {32, 2, 2, 1, 64, 64, 4, 3, 2, 4, 400, 3e-3, 5e-4, 2, 2, 1};
  fail("--size must be tiny or small, got '{}'", name);
}

void write_task(const fs::path& file, uint64_t seed, int64_t first, int64_t n, const ArithOptions& ao) {
  std::string text;
  for (int64_t i = first; i < first + n; ++i) {
    auto e = make_example(seed, i, ao);
    nlohmann::json j = {{"messages", {{{"role", "user"}, {"content", e.question}},
                                      {{"role", "assistant"}, {"content", e.reasoning}}}}};
    text += j.dump() + "\n";
  }
  write_file_atomic(file, text);
}

// A randomly initialised Qwen3 (normal(0, 0.02) weights, unit norms) saved as an HF checkpoint with the tokenizer.
void write_initial_model(const fs::path& dir, const Size& s, uint64_t seed) {
  nlohmann::json c = {{"architectures", {"Qwen3ForCausalLM"}}, {"model_type", "qwen3"}, {"vocab_size", demo_vocab_size()},
                      {"hidden_size", s.hidden}, {"intermediate_size", s.intermediate},
                      {"num_hidden_layers", s.layers}, {"num_attention_heads", s.heads},
                      {"num_key_value_heads", s.kv_heads}, {"head_dim", s.hidden / s.heads},
                      {"max_position_embeddings", 2048}, {"rms_norm_eps", 1e-6}, {"rope_theta", 10000.0},
                      {"tie_word_embeddings", true}, {"attention_bias", false}, {"hidden_act", "silu"},
                      {"torch_dtype", "float32"}, {"bos_token_id", nullptr}, {"eos_token_id", kImEnd},
                      {"pad_token_id", kEndOfText}};
  auto cfg = model::parse_config(c, "demo config");
  model::CausalLM lm(cfg);
  torch::manual_seed(seed);
  {
    torch::NoGradGuard ng;
    for (auto& [name, p] : lm->hf_tensors()) {
      auto t = p;
      if (name.find("norm") != std::string::npos) {
        t.fill_(1.0);
      } else {
        t.normal_(0.0, 0.02);
      }
    }
  }
  lm->save(dir);
  write_demo_tokenizer(dir);
}

struct Eval {
  double accuracy = 0;
  nlohmann::json final_metrics;
};

// Accuracy on held-out questions exactly as `qad eval --tasks` measures it (eval::evaluate_tasks: greedy
// decoding to <|im_end|>, the after-think answer rule of ../shared/tasks/arith, exact match).
double task_accuracy(model::CausalLM& lm, const tokenizer::Tokenizer& tok, uint64_t seed, int64_t first, int64_t n,
                     const ArithOptions& ao) {
  eval::TaskFile tasks;
  for (int64_t i = first; i < first + n; ++i) {
    auto e = make_example(seed, i, ao);
    eval::TaskItem item;
    item.id = fmt::format("arith-{}", i);
    item.prompt = chat_prompt(e.question);
    item.answer = e.answer;
    tasks.items.push_back(std::move(item));
  }
  eval::TaskEvalOptions o;
  o.rule = eval::AnswerRule::kAfterThink;
  o.max_new_tokens = 32 + 16 * ao.max_digits;  // ~14 tokens a digit line, ~20 around them
  o.batch_size = 256;
  o.stop_ids = {kImEnd};
  o.progress = false;
  return eval::evaluate_tasks(lm, tok, tasks, o).all.accuracy();
}

std::string fmt_opt(const nlohmann::json& j, const char* key, const char* f) {
  if (!j.contains(key) || j[key].is_null()) return "-";
  return fmt::format(fmt::runtime(f), j[key].get<double>());
}

// One line a reader can act on: does QAD recover what PTQ lost, and does CKA-QAD keep the geometry closer? Only
// accuracy gaps beyond the evaluation's noise on n questions are stated as gaps (accuracy_noise.h). Every figure is
// one training seed, and that noise is the test's alone (another seed moves a student's accuracy further), which the
// line says, so that a gap beyond the test's noise is not read as a property of the method.
std::string verdict(const nlohmann::ordered_json& results, int64_t n) {
  auto find = [&](const std::string& m) -> const nlohmann::ordered_json& {
    for (const auto& r : results)
      if (r["method"] == m) return r;
    fail("demo: no result for {}", m);
  };
  auto metric = [](const nlohmann::ordered_json& r, const char* k) {
    const auto& m = r["metrics"];
    return m.contains(k) && m[k].is_number() ? m[k].get<double>() : std::nan("");
  };
  const auto &t = find("teacher"), &ptq = find("ptq"), &qad = find("qad"), &cka = find("cka-qad");
  const double acc_t = t["accuracy"], acc_p = ptq["accuracy"], acc_q = qad["accuracy"], acc_c = cka["accuracy"];
  const double kl_p = metric(ptq, "kl"), kl_q = metric(qad, "kl");
  std::string v = fmt::format("accuracy on {} questions: teacher vs PTQ {}; QAD vs PTQ {}; CKA-QAD vs QAD {}. ", n,
                              compare_accuracies(acc_t, acc_p, n), compare_accuracies(acc_q, acc_p, n),
                              compare_accuracies(acc_c, acc_q, n));
  v += fmt::format("QAD {} PTQ's KL to the teacher ({:.5f} → {:.5f}); mean CKA CKA-QAD {:.4f}, QAD {:.4f}. One "
                   "training seed each, and the noise above is the test's alone: another seed moves a student's "
                   "accuracy further (docs/experiments.md has the seed-to-seed spread).",
                   kl_q < kl_p ? "lowers" : "does not lower", kl_p, kl_q, metric(cka, "mean_cka"),
                   metric(qad, "mean_cka"));
  if (acc_t < 0.5) v += " The teacher has not learned the task: train it longer (--teacher-steps).";
  return v;
}

}  // namespace

namespace {
// A run that SIGINT / SIGTERM stopped ends the demo (its later stages need the finished run).
void stop_if_interrupted(const train::RunSummary& r) {
  QAD_CHECK(r.stopped_by_signal == 0, "the demo was stopped by {} in {}", GracefulStop::name(r.stopped_by_signal),
            r.run_dir.string());
}
}  // namespace

int run_demo(const DemoOptions& o) {
  const auto t_start = std::chrono::steady_clock::now();
  const Size s = size_preset(o.size);
  const int64_t teacher_steps = o.teacher_steps >= 0 ? o.teacher_steps : s.teacher_steps;
  const int64_t student_steps = o.student_steps >= 0 ? o.student_steps : s.student_steps;
  const int64_t n_test = o.test_examples >= 0 ? o.test_examples : s.test;
  const ArithOptions ao{.max_digits = s.max_digits};
  QAD_CHECK(!fs::exists(o.out / "comparison.md"), "{} already holds a finished demo; pass another --out or delete it",
            o.out.string());
  const auto device = model::parse_device(o.device);
  check_output_writable(o.out, "--out");
  fs::create_directories(o.out);
  const auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  };
  if (device.is_cpu()) {
    if (auto blas = loaded_reference_blas()) {
      fmt::print("note: torch's CPU matrix products run on the reference BLAS ({}), several times slower than "
                 "OpenBLAS: `sudo apt-get install libopenblas0-pthread` (Debian/Ubuntu) makes this demo fit ~5 "
                 "minutes on 2 cores.\n\n", *blas);
    }
  }
  nlohmann::ordered_json timings = nlohmann::ordered_json::object();
  double phase_start = 0;
  const auto end_phase = [&](const std::string& name) {
    const double now = elapsed();
    timings[name] = std::round((now - phase_start) * 10) / 10;
    phase_start = now;
  };

  // 1. The task: train / valid chats and held-out test questions (disjoint index ranges of one stream),
  // tokenized once into datasets that every run reads.
  fmt::print("== 1/4 task: {} training chats, addition and subtraction with worked steps ({} digits max)\n",
             s.train_docs, s.max_digits);
  const int64_t n_valid = std::max<int64_t>(s.train_docs / 40, 50);
  write_task(o.out / "task_train.jsonl", o.seed, 0, s.train_docs, ao);
  write_task(o.out / "task_valid.jsonl", o.seed, s.train_docs, n_valid, ao);
  const int64_t test_first = s.train_docs + n_valid;
  const fs::path init = o.out / "init";
  write_initial_model(init, s, o.seed);
  const auto train_dir = train::resolve_dataset((o.out / "task_train.jsonl").string(), init, o.out, "train", 0.0);
  const auto valid_dir = train::resolve_dataset((o.out / "task_valid.jsonl").string(), init, o.out, "valid", 0.0);
  end_phase("task");

  auto base = [&](train::Method m, const fs::path& out, const fs::path& teacher, int64_t steps, double lr) {
    auto c = train::defaults_for(m);
    c.run.teacher = teacher.string();
    c.run.out = out.string();
    c.run.device = o.device;
    c.run.steps = steps;
    c.run.valid_every = 0;
    c.run.valid_batches = s.valid_batches;
    c.run.checkpoint_every = 0;
    c.run.log_every = std::max<int64_t>(1, steps / 10);
    c.run.seed = o.seed;
    c.data.path = train_dir.string();
    c.data.valid_path = valid_dir.string();
    c.data.seq_len = s.seq_len;
    c.data.batch_size = s.batch;
    c.data.seed = o.seed;
    c.optim.lr = lr;
    c.quant.calib_batches = s.calib_batches;
    c.loss.cka_subsample_tokens = 1024;
    return c;
  };

  // 2. The teacher: plain cross-entropy training with qad itself, saved as an HF checkpoint.
  fmt::print("\n== 2/4 teacher: Qwen3 {}x{} trained {} steps with cross-entropy (no quantization)\n", s.layers,
             s.hidden, teacher_steps);
  auto tc = base(train::Method::kPretrain, o.out / "teacher", init, teacher_steps, s.teacher_lr);
  tc.run.export_bf16 = false;
  tc.optim.weight_decay = 0.01;
  stop_if_interrupted(train::run_training(tc, false));
  const fs::path teacher = o.out / "teacher" / "export" / "hf";
  end_phase("teacher");

  // 3. The students, same data and budget each.
  fmt::print("\n== 3/4 students: PTQ, QAT, QAD, CKA-QAD ({} steps each)\n", student_steps);
  struct Job {
    std::string label;
    train::Method method;
  };
  const std::vector<Job> jobs = {{"PTQ", train::Method::kPtq}, {"QAT", train::Method::kQat},
                                 {"QAD", train::Method::kQad}, {"CKA-QAD", train::Method::kCkaQad}};
  for (const auto& j : jobs) {
    fmt::print("\n-- {}\n", j.label);
    auto c = base(j.method, o.out / train::method_name(j.method), teacher,
                  j.method == train::Method::kPtq ? 0 : student_steps, s.student_lr);
    stop_if_interrupted(train::run_training(c, false));
  }
  end_phase("students");

  // 4. Evaluation: task accuracy by greedy generation; KL / ppl / CKA from each run's final validation.
  fmt::print("\n== 4/4 evaluation: {} held-out questions, greedy decoding\n", n_test);
  const auto tok = tokenizer::Tokenizer::load(teacher);
  const auto dtype = model::CausalLM::default_dtype(device);
  report::Table table;
  table.columns = {"method", "accuracy", "KL", "ppl", "agreement", "mean CKA"};
  std::vector<std::string> layers;
  nlohmann::ordered_json results = nlohmann::ordered_json::array();
  Progress progress("evaluate", static_cast<int64_t>(jobs.size()) + 1, "models");
  {
    auto t = checkpoint::load_model(teacher, device, dtype);
    const double acc = task_accuracy(t, tok, o.seed, test_first, n_test, ao);
    auto fm = nlohmann::json::parse(read_file(o.out / "teacher" / "final_metrics.json"));
    for (int64_t l = 0; l < t->config().num_layers; ++l) layers.push_back(fmt::format("layers.{}", l));
    for (const auto& l : layers) table.columns.push_back(l);
    std::vector<std::string> row = {"teacher (FP32)", fmt::format("{:.3f}", acc), "0", fmt_opt(fm, "ppl", "{:.4f}"),
                                    "1", "1"};
    for (size_t l = 0; l < layers.size(); ++l) row.push_back("1");
    table.rows.push_back(row);
    results.push_back({{"method", "teacher"}, {"accuracy", acc}, {"metrics", fm}});
    progress.advance(1, fmt::format("teacher {:.3f}", acc));
  }
  for (const auto& j : jobs) {
    const fs::path run = o.out / train::method_name(j.method);
    auto lm = checkpoint::load_model(run / "export" / "nvfp4", device, dtype);  // what an engine would serve
    const double acc = task_accuracy(lm, tok, o.seed, test_first, n_test, ao);
    auto fm = nlohmann::json::parse(read_file(run / "final_metrics.json"));
    std::vector<std::string> row = {j.label, fmt::format("{:.3f}", acc), fmt_opt(fm, "kl", "{:.5f}"),
                                    fmt_opt(fm, "ppl", "{:.4f}"), fmt_opt(fm, "agreement", "{:.4f}"),
                                    fmt_opt(fm, "mean_cka", "{:.5f}")};
    for (const auto& l : layers) row.push_back(fm.contains("cka") ? fmt_opt(fm["cka"], l.c_str(), "{:.5f}") : "-");
    table.rows.push_back(row);
    results.push_back({{"method", train::method_name(j.method)}, {"accuracy", acc}, {"metrics", fm}});
    progress.advance(1, fmt::format("{} {:.3f}", j.label, acc));
  }
  progress.finish();
  end_phase("evaluation");

  const std::string text = report::to_text(table);
  fmt::print("\n{}\n", text);
  fmt::print("KL = KL(teacher || student) in nats/token and ppl on {}; CKA = linear CKA of each decoder layer's output "
             "against the teacher's (1 = same geometry).\n", (o.out / "task_valid.jsonl").string());
  const std::string v = verdict(results, n_test);
  fmt::print("verdict: {}\n", v);
  fmt::print("{:.0f} s in all (task {}, teacher {}, students {}, evaluation {} s).\n", elapsed(),
             timings["task"].get<double>(), timings["teacher"].get<double>(), timings["students"].get<double>(),
             timings["evaluation"].get<double>());
  fmt::print("HTML report: qad report {0}/teacher {0}/ptq {0}/qat {0}/qad {0}/cka-qad --out {0}/report.html\n",
             o.out.string());
  nlohmann::ordered_json summary = {{"size", o.size}, {"teacher_steps", teacher_steps},
                                    {"student_steps", student_steps}, {"test_examples", n_test},
                                    {"seconds", timings}, {"results", results}, {"verdict", v}};
  write_file_atomic(o.out / "comparison.json", summary.dump(2) + "\n");
  write_file_atomic(o.out / "comparison.md", report::to_markdown(table) + "\nverdict: " + v + "\n");
  return 0;
}

}  // namespace qad::demo
