// qad eval / qad cka on the real models in ../shared: stories260K perplexity against transformers (when
// the fixture from tools/ppl_reference.py exists), the --json object's schema, CKA of the teacher with
// itself through run_cka, and the qwen3 teacher's arith generations against transformers' goldens.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "util/remove_tree.h"
#include "common/test_util.h"
#include "eval/eval_command.h"
#include "eval/layer_cka.h"
#include "eval/lm_metrics.h"
#include "checkpoint/load.h"
#include "eval/task_eval.h"
#include "eval/token_stream.h"
#include "io/safetensors_torch.h"
#include "quant/quantize_model.h"
#include "report/cka_output.h"
#include "tokenizer/tokenizer.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

fs::path stories() { return qad::testing::shared_dir() / "models/stories260K"; }
fs::path teacher16m() { return qad::testing::shared_dir() / "models/qwen3-16m-teacher"; }
fs::path heldout() { return qad::testing::source_dir() / "tests/fixtures/eval/heldout_stories.jsonl"; }
fs::path temp_path(const std::string& name) {
  return fs::temp_directory_path() / ("qad_eval_real_" + std::to_string(::getpid()) + "_" + name);
}

json read_json(const fs::path& p) {
  std::ifstream in(p);
  return json::parse(in);
}

}  // namespace

TEST(Stories260k, PerplexityMatchesTransformers) {
  const fs::path fixture = qad::testing::source_dir() / "tests/fixtures/eval/stories260k_ppl.json";
  if (!fs::exists(fixture)) {
    GTEST_SKIP() << "no " << fixture << ": run tools/ppl_reference.py on the GPU machine (docs/eval.md)";
  }
  const json ref = read_json(fixture);
  auto tok = qad::tokenizer::Tokenizer::load(stories());
  qad::eval::StreamOptions so;
  so.bos = ref["bos"] == "auto" ? qad::eval::BosMode::kAuto : qad::eval::BosMode::kNever;
  so.doc_end = qad::eval::resolve_doc_end(ref["doc_end"].get<std::string>(), tok);
  auto stream = qad::eval::read_token_stream({heldout()}, &tok, so);
  // Same tokens first: transformers' tokenizer and BOS rule against ours.
  EXPECT_EQ(std::vector<int64_t>(stream.ids.begin(), stream.ids.end()), ref["stream_ids"].get<std::vector<int64_t>>());
  EXPECT_EQ(stream.documents, ref["documents"].get<int64_t>());

  auto lm = qad::checkpoint::load_model(stories(), torch::kCPU, torch::kFloat32);
  qad::eval::LmEvalOptions o;
  o.seq_len = ref["seq_len"].get<int64_t>();
  o.progress = false;
  auto m = qad::eval::evaluate_lm(lm, nullptr, stream, o);
  EXPECT_EQ(m.scored_tokens, ref["scored_tokens"].get<int64_t>());
  EXPECT_EQ(m.windows, ref["windows"].get<int64_t>());
  const double want = ref["perplexity"].get<double>();
  const double rel = std::abs(m.perplexity - want) / want;
  std::cout << "stories260K perplexity: qad " << m.perplexity << ", transformers " << want << ", relative difference "
            << rel << "\n";
  EXPECT_LT(rel, 1e-3);
}

TEST(Stories260k, PerplexityFromTransformersGoldenLogits) {
  // ../shared/models/stories260K/golden_logits.safetensors holds transformers 5.17's FP32 logits for a
  // hand-written text and a 200-token generation: their perplexity, computed here from those logits, is a
  // transformers reference available without the GPU machine. One window covers each sequence, so qad
  // sees exactly the contexts transformers saw. The text also goes through read_token_stream (BOS auto).
  auto golden = qad::io::read_tensors(stories() / "golden_logits.safetensors");
  std::map<std::string, torch::Tensor> g(golden.begin(), golden.end());
  auto lm = qad::checkpoint::load_model(stories(), torch::kCPU, torch::kFloat32);
  auto tok = qad::tokenizer::Tokenizer::load(stories());
  for (const std::string name : {"bytes_digits_newline", "bos_greedy200"}) {
    auto ids = g.at(name + ".input_ids").to(torch::kInt64);
    auto logits = g.at(name + ".logits").to(torch::kFloat64);
    const int64_t t = ids.size(0);
    auto lp = torch::log_softmax(logits.narrow(0, 0, t - 1), -1).gather(1, ids.narrow(0, 1, t - 1).unsqueeze(1));
    const double want = std::exp(-lp.mean().item<double>());

    qad::eval::TokenStream stream;
    if (name == "bytes_digits_newline") {
      const fs::path txt = temp_path("golden.txt");
      std::ofstream(txt) << "Tom saw a \xF0\x9F\x90\xB6 dog.\nIt was 3 years old!";
      qad::eval::StreamOptions so;  // BOS auto, no document end
      stream = qad::eval::read_token_stream({txt}, &tok, so);
      fs::remove(txt);
    } else {
      auto acc = ids.accessor<int64_t, 1>();
      for (int64_t i = 0; i < t; ++i) stream.ids.push_back(static_cast<int32_t>(acc[i]));
      stream.mask.assign(stream.ids.size(), 1);
    }
    ASSERT_EQ(std::vector<int64_t>(stream.ids.begin(), stream.ids.end()),
              std::vector<int64_t>(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + t)) << name;
    qad::eval::LmEvalOptions o;
    o.seq_len = 512;
    o.progress = false;
    auto m = qad::eval::evaluate_lm(lm, nullptr, stream, o);
    EXPECT_EQ(m.scored_tokens, t - 1);
    std::cout << name << ": perplexity qad " << m.perplexity << ", from transformers' logits " << want << "\n";
    EXPECT_NEAR(m.perplexity, want, 1e-5 * want) << name;
  }
}

TEST(ModelLoading, Nvfp4ExportEvaluatesLikeTheQuantizedModel) {
  // PTQ of stories260K with src/quant (max calibration on the held-out stories), exported in the ModelOpt
  // layout, then read back through checkpoint::load_model: the export must compute what the in-memory quantized
  // model computes (quant: "bit-identical logits"), so perplexity, KL and agreement against it are exact.
  auto tok = qad::tokenizer::Tokenizer::load(stories());
  qad::eval::StreamOptions so;
  auto stream = qad::eval::read_token_stream({heldout()}, &tok, so);
  auto lm = qad::checkpoint::load_model(stories(), torch::kCPU, torch::kFloat32);
  qad::quant::QuantConfig cfg;
  cfg.calib_samples = 4;
  qad::quant::apply_nvfp4(lm, cfg);
  auto ids = torch::tensor(std::vector<int64_t>(stream.ids.begin(), stream.ids.begin() + 512), torch::kInt64)
                 .reshape({4, 128});
  qad::quant::calibrate(lm, [&](const qad::quant::BatchSink& sink) { sink(ids, torch::Tensor()); }, cfg);
  const fs::path out = temp_path("nvfp4");
  qad::quant::export_nvfp4(lm, out, stories());
  EXPECT_EQ(qad::checkpoint::detect(out), qad::checkpoint::Kind::kNvfp4Export);
  auto back = qad::checkpoint::load_model(out, torch::kCPU, torch::kFloat32);
  qad::eval::LmEvalOptions o;
  o.progress = false;
  auto mine = qad::eval::evaluate_lm(lm, nullptr, stream, o);
  auto theirs = qad::eval::evaluate_lm(back, &lm, stream, o);
  EXPECT_EQ(theirs.perplexity, mine.perplexity);
  EXPECT_EQ(*theirs.kl, 0.0);
  EXPECT_EQ(*theirs.top1_agreement, 1.0);
  auto bf = qad::checkpoint::load_model(stories(), torch::kCPU, torch::kFloat32);
  auto fp32 = qad::eval::evaluate_lm(bf, nullptr, stream, o);
  std::cout << "stories260K held-out perplexity: FP32 " << fp32.perplexity << ", NVFP4 PTQ export " << theirs.perplexity
            << "\n";
  EXPECT_GT(theirs.perplexity, fp32.perplexity);  // 4 bits cost something
  ::qad::remove_tree(out);

  // The trainer's checkpoint layout (docs/train.md): a run directory whose checkpoints/latest names
  // step-N/ with model/ (HF), quantizer.safetensors (every amax) and trainer_state.json.
  const fs::path run = temp_path("run");
  const fs::path step = run / "checkpoints" / "step-00000007";
  fs::create_directories(step);
  lm->save(step / "model");
  qad::io::write_tensors(step / "quantizer.safetensors", qad::quant::quantizer_state(lm));
  std::ofstream(step / "quantizer.json") << R"({"quantized": true})";
  std::ofstream(step / "trainer_state.json") << R"({"step": 7, "config": {"quant": {"quantize_inputs": true}}})";
  std::ofstream(run / "checkpoints" / "latest") << "step-00000007\n";
  for (const fs::path& dir : {run, step}) {
    EXPECT_EQ(qad::checkpoint::detect(dir), qad::checkpoint::Kind::kTrainingCheckpoint) << dir;
    auto ckpt = qad::checkpoint::load_model(dir, torch::kCPU, torch::kFloat32);
    auto c = qad::eval::evaluate_lm(ckpt, &lm, stream, o);
    EXPECT_EQ(c.perplexity, mine.perplexity) << dir;
    EXPECT_EQ(*c.kl, 0.0) << dir;
  }
  ::qad::remove_tree(run);
}

TEST(EvalCommand, JsonObjectSchemaAndSelfTeacher) {
  const fs::path tasks = temp_path("tasks.jsonl");
  {
    std::ofstream f(tasks);
    f << R"({"id": "g1", "op": "story", "prompt": "Once upon a time", "answer": "never matches this"})" << "\n";
    f << R"({"id": "g2", "op": "story", "prompt": "Lily and Tom", "answer": "x"})" << "\n";
    f << R"({"id": "m1", "op": "mc", "prompt": "Once upon a time, there was a little", "choices": [" girl", " zebra kite"], "label": 0})" << "\n";
    f << R"({"id": "m2", "op": "mc", "prompt": "The dog said", "choices": [" qqq", " hello"], "label": 1})" << "\n";
  }
  qad::eval::EvalCommandOptions o;
  o.model = "S=" + stories().string();
  o.teacher = stories().string();
  o.data = {heldout()};
  o.tasks = tasks;
  o.seq_len = 128;
  o.max_new_tokens = 8;
  o.stop_ids = "1,2";
  o.answer_rule = "full";
  o.device = "cpu";
  o.predictions = temp_path("pred.jsonl");
  o.progress = false;
  const json m = qad::eval::run_eval(o);

  for (const char* k : {"model", "model_dir", "device", "dtype"}) EXPECT_TRUE(m[k].is_string()) << k;
  EXPECT_EQ(m["model"], "S");
  EXPECT_EQ(m["fake_quant"], false);
  EXPECT_EQ(m["dtype"], "float32");
  for (const char* k : {"nll", "perplexity", "teacher_nll", "teacher_perplexity", "kl", "top1_agreement", "seconds"}) {
    EXPECT_TRUE(m[k].is_number()) << k;
  }
  EXPECT_EQ(m["kl"].get<double>(), 0.0);  // the model against itself
  EXPECT_EQ(m["top1_agreement"].get<double>(), 1.0);
  EXPECT_EQ(m["perplexity"].get<double>(), m["teacher_perplexity"].get<double>());
  EXPECT_NEAR(std::log(m["perplexity"].get<double>()), m["nll"].get<double>(), 1e-12);
  const auto& d = m["data"];
  for (const char* k : {"documents", "stream_tokens", "scored_tokens", "windows", "seq_len", "skipped_lines"}) {
    EXPECT_TRUE(d[k].is_number_integer()) << k;
  }
  EXPECT_EQ(d["documents"], 5);
  EXPECT_EQ(d["scored_tokens"].get<int64_t>(), d["stream_tokens"].get<int64_t>() - 1);  // text: every target
  EXPECT_EQ(d["windows"].get<int64_t>(), (d["scored_tokens"].get<int64_t>() + 127) / 128);

  const auto& t = m["tasks"];
  EXPECT_EQ(t["items"], 4);
  EXPECT_EQ(t["generative"]["n"], 2);
  EXPECT_EQ(t["generative"]["correct"], 0);
  EXPECT_EQ(t["multiple_choice"]["n"], 2);
  EXPECT_EQ(t["multiple_choice"]["correct"], 2);  // " girl" and " hello" are the obvious continuations
  EXPECT_EQ(t["by_group"]["mc"]["correct"], 2);
  EXPECT_EQ(t["answer_rule"], "full");
  EXPECT_EQ(t["stop_ids"], json::array({1, 2}));
  EXPECT_TRUE(t["accuracy"].is_number());
  EXPECT_DOUBLE_EQ(t["accuracy"].get<double>(), 0.5);

  std::ifstream pred(o.predictions);
  std::string line;
  int lines = 0;
  while (std::getline(pred, line)) {
    auto p = json::parse(line);
    ++lines;
    if (p.contains("choice_logprobs")) {
      auto lp = p["choice_logprobs"].get<std::vector<double>>();
      EXPECT_EQ(p["chosen"].get<int64_t>(), qad::eval::argmax_first(lp));
    } else {
      EXPECT_LE(p["new_tokens"].get<int64_t>(), 8);
      EXPECT_TRUE(p["generation"].is_string());
    }
  }
  EXPECT_EQ(lines, 4);
  fs::remove(tasks);
  fs::remove(o.predictions);
}

TEST(CkaCommand, TeacherAgainstItselfIsOneAndFakeQuantIsBelow) {
  qad::eval::CkaCommandOptions o;
  o.teacher = stories().string();
  o.models = {"self=" + stories().string(), "PTQ=fq:" + stories().string()};
  o.data = {heldout()};
  o.tokens = 0;
  o.seq_len = 64;
  o.batch_size = 4;
  o.format = "json";
  o.plot = temp_path("cka.svg");
  o.device = "cpu";
  o.progress = false;
  std::ostringstream out;
  auto r = qad::eval::run_cka(o, out);
  EXPECT_GT(r.tokens, 500);
  auto parsed = qad::report::parse_cka_json(out.str());
  ASSERT_EQ(parsed.size(), 2u);
  ASSERT_EQ(parsed[0].layers.size(), 5u);  // stories260K: 5 decoder layers
  for (const auto& l : parsed[0].layers) {
    EXPECT_NEAR(l.biased, 1.0, 1e-9) << l.layer;
    EXPECT_NEAR(l.debiased, 1.0, 1e-9) << l.layer;
    EXPECT_NEAR(l.minibatch_biased, 1.0, 1e-9) << l.layer;
    EXPECT_NEAR(l.minibatch_debiased, 1.0, 1e-9) << l.layer;
  }
  EXPECT_EQ(parsed[1].model, "PTQ");
  for (const auto& l : parsed[1].layers) {
    EXPECT_LT(l.biased, 0.9999) << l.layer;  // 4-bit weights and activations change the representation
    EXPECT_GT(l.biased, 0.5) << l.layer;     // but not beyond recognition
  }
  std::ifstream svg(*o.plot);
  std::stringstream ss;
  ss << svg.rdbuf();
  EXPECT_NE(ss.str().find("<svg"), std::string::npos);
  EXPECT_NE(ss.str().find("PTQ"), std::string::npos);
  fs::remove(*o.plot);
}

TEST(CkaCommand, RotatedAndScaledTeacherHasCkaOne) {
  // A copy of stories260K whose residual stream is s * h * Q for a random orthogonal Q and s = 4: input-side
  // norm weights folded into the next Linears (W' = W diag(w) Q, norm weight 1), output-side Linears and the
  // embedding rotated and scaled (o' = s Q^T o, down' = s Q^T down, E' = s E Q). RMSNorm is rotation- and
  // (up to eps) scale-invariant, so every layer's hidden state is exactly the teacher's rotated and scaled:
  // linear CKA must be 1 for all four estimators, end to end through layer_cka.
  auto teacher = qad::checkpoint::load_model(stories(), torch::kCPU, torch::kFloat32);
  auto rotated = qad::checkpoint::load_model(stories(), torch::kCPU, torch::kFloat32);
  const int64_t h = teacher->config().hidden_size;
  auto gen = qad::testing::seeded_generator(7);
  auto q = std::get<0>(torch::linalg_qr(torch::randn({h, h}, gen, torch::kFloat64)))
               .to(torch::kFloat32);
  const double s = 4.0;
  {
    torch::NoGradGuard g;
    std::map<std::string, torch::Tensor> p;
    for (auto& [name, t] : rotated->hf_tensors()) p[name] = t;
    p.at("model.embed_tokens.weight").copy_(s * p.at("model.embed_tokens.weight").matmul(q));
    for (int64_t l = 0; l < teacher->config().num_layers; ++l) {
      const std::string pre = "model.layers." + std::to_string(l) + ".";
      auto fold = [&](const std::string& norm, const std::vector<std::string>& linears) {
        auto w = p.at(pre + norm + ".weight").clone();
        for (const auto& lin : linears) {
          auto& W = p.at(pre + lin + ".weight");
          W.copy_((W * w.unsqueeze(0)).matmul(q));
        }
        p.at(pre + norm + ".weight").fill_(1.0);
      };
      fold("input_layernorm", {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"});
      fold("post_attention_layernorm", {"mlp.gate_proj", "mlp.up_proj"});
      for (const char* out : {"self_attn.o_proj", "mlp.down_proj"}) {
        auto& W = p.at(pre + out + ".weight");
        W.copy_(s * q.t().matmul(W));
      }
    }
  }
  auto tok = qad::tokenizer::Tokenizer::load(stories());
  qad::eval::StreamOptions so;
  so.doc_end.reset();
  auto stream = qad::eval::read_token_stream({heldout()}, &tok, so);
  qad::eval::CkaEvalOptions o;
  o.seq_len = 128;
  o.batch_size = 2;
  o.progress = false;
  auto r = qad::eval::layer_cka(teacher, {{"rotated", &rotated}}, stream, o);
  ASSERT_EQ(r.models[0].layers.size(), 5u);
  for (const auto& l : r.models[0].layers) {
    EXPECT_NEAR(l.biased, 1.0, 1e-4) << l.layer;
    EXPECT_NEAR(l.debiased, 1.0, 1e-4) << l.layer;
    EXPECT_NEAR(l.minibatch_biased, 1.0, 1e-4) << l.layer;
    EXPECT_NEAR(l.minibatch_debiased, 1.0, 1e-4) << l.layer;
  }
  // The transformation really changed the features: they are not the teacher's.
  {
    torch::NoGradGuard g;
    auto ids = torch::tensor(std::vector<int64_t>(stream.ids.begin(), stream.ids.begin() + 16)).unsqueeze(0);
    qad::model::ForwardOptions fo;
    fo.return_hidden = true;
    auto a = teacher->forward(ids, fo).hidden[2].second;
    auto b = rotated->forward(ids, fo).hidden[2].second;
    EXPECT_GT((a - b).abs().max().item<double>(), 1.0);
    EXPECT_LT((b - s * a.matmul(q)).abs().max().item<double>(), 1e-3 * s * a.abs().max().item<double>());
  }
}

TEST(ArithTask, QuestionThroughTheChatTemplateEqualsTheRenderedPrompt) {
  // test.jsonl gives both the rendered "prompt" and the raw "question": the model's chat template
  // (encode_chat with the generation prompt) must produce exactly the prompt's tokens.
  auto tasks = qad::eval::read_task_file(qad::testing::shared_dir() / "tasks/arith/test.jsonl");
  auto tok = qad::tokenizer::Tokenizer::load(teacher16m());
  std::ifstream in(qad::testing::shared_dir() / "tasks/arith/test.jsonl");
  std::string line;
  for (size_t i = 0; i < 50 && std::getline(in, line); ++i) {
    auto j = json::parse(line);
    qad::eval::TaskItem chat;
    chat.messages.push_back({"user", j["question"].get<std::string>()});
    const auto& rendered = tasks.items[i];
    ASSERT_TRUE(rendered.prompt.has_value());
    EXPECT_EQ(qad::eval::encode_context(chat, tok), qad::eval::encode_context(rendered, tok)) << rendered.id;
  }
}

TEST(ArithTask, TeacherGenerationsMatchTransformersGoldens) {
  // The first 8 test questions: our batched, left-padded, KV-cached greedy generation in FP32 on CPU
  // against transformers' BF16 GPU generations (the task README's CPU FP32 reference reproduces all of
  // them), then the after-think rule's verdicts against the goldens' "ok".
  const fs::path goldens = teacher16m() / "eval/test_generations_gpu_bf16.jsonl";
  qad::eval::TaskFile tasks = qad::eval::read_task_file(qad::testing::shared_dir() / "tasks/arith/test.jsonl");
  tasks.items.resize(8);
  auto tok = qad::tokenizer::Tokenizer::load(teacher16m());
  auto lm = qad::checkpoint::load_model(teacher16m(), torch::kCPU, torch::kFloat32);
  qad::eval::TaskEvalOptions o;
  o.batch_size = 8;
  o.progress = false;
  auto r = qad::eval::evaluate_tasks(lm, tok, tasks, o);
  EXPECT_EQ(r.stop_ids, std::vector<int64_t>{8191});  // <|im_end|>, the chat end token
  std::ifstream in(goldens);
  std::string line;
  int checked = 0, ok = 0;
  for (size_t i = 0; i < r.items.size() && std::getline(in, line); ++i) {
    auto g = json::parse(line);
    ASSERT_EQ(g["id"], r.items[i].item->id);
    EXPECT_EQ(r.items[i].generation, g["text"].get<std::string>()) << g["id"];
    EXPECT_EQ(r.items[i].prediction, g["pred"].get<std::string>()) << g["id"];
    EXPECT_EQ(r.items[i].correct, g["ok"].get<bool>()) << g["id"];
    EXPECT_TRUE(r.items[i].stopped);
    ok += r.items[i].correct ? 1 : 0;
    ++checked;
  }
  EXPECT_EQ(checked, 8);
  EXPECT_EQ(r.generative.correct, ok);
}
