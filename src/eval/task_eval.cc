// Generative and multiple-choice task evaluation (docs/eval.md "Tasks").
#include "eval/task_eval.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <numeric>
#include <optional>

#include "model/generate.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/progress.h"

namespace qad::eval {
namespace {

using Ids = std::vector<int64_t>;

Ids widen(const std::vector<int32_t>& v) { return Ids(v.begin(), v.end()); }

std::string where(const TaskItem& item) { return fmt::format("task {} (line {})", item.id, item.line); }

// Continuation tokens of `choice` after `context`: for a rendered prompt, the tokens of prompt+choice past
// the context when the context is their prefix (so a space that merges into the choice's first token is
// tokenized as in running text), else the choice encoded on its own; for chat contexts, the choice as the
// assistant's text.
Ids encode_choice(const TaskItem& item, const Ids& context, const std::string& choice, const tokenizer::Tokenizer& tok) {
  if (item.prompt) {
    TaskItem joined = item;
    joined.prompt = *item.prompt + choice;
    Ids whole = encode_context(joined, tok);
    if (whole.size() > context.size() && std::equal(context.begin(), context.end(), whole.begin())) {
      return Ids(whole.begin() + static_cast<std::ptrdiff_t>(context.size()), whole.end());
    }
  }
  return widen(tok.encode(choice, false));
}

void tally(TaskResults& r, const ItemResult& ir) {
  auto add = [&](Tally& t) {
    ++t.n;
    t.correct += ir.correct ? 1 : 0;
  };
  add(ir.item->kind == TaskItem::Kind::kGenerative ? r.generative : r.multiple_choice);
  add(r.all);
  if (!ir.item->group.empty()) add(r.by_group[ir.item->group]);
}

void run_generative(model::CausalLM& lm, const tokenizer::Tokenizer& tok, const std::vector<size_t>& idx,
                    const std::vector<Ids>& contexts, const TaskEvalOptions& o, TaskResults& r) {
  if (idx.empty()) return;
  QAD_CHECK(o.samples >= 1, "--samples must be >= 1, got {}", o.samples);
  QAD_CHECK(o.samples == 1 || !o.sampling.greedy, "--samples {} with greedy decoding gives {} equal generations: "
            "set --temperature > 0 to sample", o.samples, o.samples);
  // Longest prompts first, so that prefill groups pad little. Sample j of item i draws from the random
  // stream (seed, i, j) whatever its slot or batch.
  std::vector<size_t> order = idx;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return contexts[a].size() > contexts[b].size(); });
  std::vector<model::GenerationRequest> requests;
  for (size_t i : order) {
    for (int64_t j = 0; j < o.samples; ++j) requests.push_back({contexts[i], i, static_cast<uint64_t>(j)});
  }
  model::BatchedGenerateOptions g;
  g.max_new_tokens = o.max_new_tokens;
  g.sampling = o.sampling;
  g.stop_ids = r.stop_ids;
  g.max_slots = o.batch_size;
  std::optional<Progress> progress;
  if (o.progress) progress.emplace("generate", static_cast<int64_t>(requests.size()), "sequences");
  g.on_progress = [&](int64_t done, int64_t) {
    if (progress) progress->set(done);
  };
  auto outputs = model::generate_batched(lm, requests, g, &r.generation);
  if (progress) progress->finish();
  std::vector<std::vector<SampleOutcome>> outcomes;
  for (size_t q = 0; q < requests.size(); ++q) {
    auto& ir = r.items[requests[q].item];
    const auto& ids = outputs[q].new_ids;
    SampleResult s;
    s.new_tokens = static_cast<int64_t>(ids.size());
    s.stopped = outputs[q].stopped;
    r.generated_tokens += s.new_tokens;
    r.cut_off += s.stopped ? 0 : 1;
    auto end = std::find_if(ids.begin(), ids.end(), [&](int64_t t) {
      return std::find(r.stop_ids.begin(), r.stop_ids.end(), t) != r.stop_ids.end();
    });
    s.generation = tok.decode(std::vector<int32_t>(ids.begin(), end), false);
    // after-think is the whole rule; the others look only after a thinking block (answer_region).
    s.prediction = o.rule == AnswerRule::kAfterThink ? extract_answer(s.generation, o.rule)
                                                     : extract_answer(answer_region(s.generation), o.rule);
    s.correct = answer_matches(s.prediction, ir.item->answer, o.check);
    if (ir.samples.empty()) {
      ir.generation = s.generation;
      ir.prediction = s.prediction;
      ir.new_tokens = s.new_tokens;
      ir.stopped = s.stopped;
      ir.correct = s.correct;
    }
    ir.samples.push_back(std::move(s));
  }
  for (size_t i : order) {
    std::vector<SampleOutcome> v;
    for (const auto& s : r.items[i].samples) v.push_back({vote_key(s.prediction, o.check), s.correct});
    outcomes.push_back(std::move(v));
  }
  r.avg_at_k = avg_at_k(outcomes);
  std::vector<int64_t> ks = o.pass_k;
  if (ks.empty()) ks = o.samples > 1 ? std::vector<int64_t>{1, o.samples} : std::vector<int64_t>{1};
  for (int64_t k : ks) {
    QAD_CHECK(k >= 1 && k <= o.samples, "--pass-k {}: each k must be in [1, --samples {}]", k, o.samples);
    r.pass_at_k[k] = pass_at(outcomes, k);
    r.maj_at_k[k] = maj_at(outcomes, k);
  }
}

void run_multiple_choice(model::CausalLM& lm, const tokenizer::Tokenizer& tok, const std::vector<size_t>& idx,
                         const std::vector<Ids>& contexts, const TaskEvalOptions& o, TaskResults& r) {
  if (idx.empty()) return;
  std::vector<std::pair<Ids, Ids>> pairs;
  for (size_t i : idx) {
    auto& ir = r.items[i];
    for (const auto& c : ir.item->choices) {
      Ids cont = encode_choice(*ir.item, contexts[i], c, tok);
      QAD_CHECK(!cont.empty(), "{}: choice '{}' encodes to no tokens", where(*ir.item), c);
      ir.choice_tokens.push_back(static_cast<int64_t>(cont.size()));
      pairs.emplace_back(contexts[i], std::move(cont));
    }
  }
  std::optional<Progress> progress;
  if (o.progress) progress.emplace("multiple choice", static_cast<int64_t>(pairs.size()), "choices");
  std::vector<double> scores;
  const int64_t batch = o.batch_size > 0 ? o.batch_size : 32;
  for (size_t first = 0; first < pairs.size(); first += static_cast<size_t>(batch)) {
    const size_t count = std::min(static_cast<size_t>(batch), pairs.size() - first);
    std::vector<std::pair<Ids, Ids>> part(pairs.begin() + static_cast<std::ptrdiff_t>(first),
                                          pairs.begin() + static_cast<std::ptrdiff_t>(first + count));
    auto s = score_continuations(lm, part, batch);
    scores.insert(scores.end(), s.begin(), s.end());
    if (progress) progress->advance(static_cast<int64_t>(count));
  }
  if (progress) progress->finish();
  size_t at = 0;
  for (size_t i : idx) {
    auto& ir = r.items[i];
    std::vector<double> normed;
    for (size_t c = 0; c < ir.item->choices.size(); ++c, ++at) {
      ir.choice_logprobs.push_back(scores[at]);
      double v = scores[at];
      if (o.mc_norm == McNorm::kPerToken) v /= static_cast<double>(ir.choice_tokens[c]);
      if (o.mc_norm == McNorm::kPerByte) v /= static_cast<double>(ir.item->choices[c].size());
      normed.push_back(v);
    }
    ir.chosen = argmax_first(normed);
    ir.prediction = ir.item->choices[static_cast<size_t>(ir.chosen)];
    ir.correct = ir.chosen == ir.item->label;
  }
}

}  // namespace

McNorm parse_mc_norm(const std::string& name) {
  if (name == "sum") return McNorm::kSum;
  if (name == "token") return McNorm::kPerToken;
  if (name == "byte") return McNorm::kPerByte;
  fail("--mc-norm '{}': choose sum, token or byte", name);
}

std::vector<int64_t> default_stop_ids(const model::CausalLM& lm, const tokenizer::Tokenizer& tok) {
  const char* chat_end = nullptr;
  if (tok.chat_family() == tokenizer::ChatFamily::kQwen) chat_end = "<|im_end|>";
  if (tok.chat_family() == tokenizer::ChatFamily::kLlama3) chat_end = "<|eot_id|>";
  if (chat_end != nullptr) {
    if (auto id = tok.token_to_id(chat_end)) return {*id};
  }
  Ids ids = lm->config().eos_token_ids;
  if (auto e = tok.eos_id(); e && std::find(ids.begin(), ids.end(), *e) == ids.end()) ids.push_back(*e);
  QAD_CHECK(!ids.empty(), "no stop token: the tokenizer has no chat template and the model no eos_token_id; give "
            "--stop-ids");
  return ids;
}

std::vector<int64_t> encode_context(const TaskItem& item, const tokenizer::Tokenizer& tok) {
  if (item.prompt) {
    Ids ids = widen(tok.encode(*item.prompt, true));
    const auto bos = tok.bos_id();
    if (bos && ids.size() >= 2 && ids[0] == *bos && ids[1] == *bos) ids.erase(ids.begin());
    QAD_CHECK(!ids.empty(), "{}: the prompt encodes to no tokens", where(item));
    return ids;
  }
  std::vector<tokenizer::ChatMessage> m;
  for (const auto& t : item.messages) m.push_back({t.role, t.content});
  try {
    return widen(tokenizer::encode_chat(tok, m, /*add_generation_prompt=*/true).ids);
  } catch (const Error& e) {
    fail("{}: {} (give a rendered \"prompt\" instead of \"question\"/\"messages\")", where(item), e.what());
  }
}

int64_t argmax_first(const std::vector<double>& scores) {
  int64_t best = 0;
  for (size_t i = 1; i < scores.size(); ++i) {
    if (scores[i] > scores[static_cast<size_t>(best)]) best = static_cast<int64_t>(i);
  }
  return best;
}

std::vector<double> score_continuations(model::CausalLM& lm, const std::vector<std::pair<Ids, Ids>>& pairs,
                                        int64_t batch_size) {
  torch::NoGradGuard no_grad;
  const auto device = lm->lm_head->weight.device();
  const int64_t vocab = lm->config().vocab_size;
  std::vector<double> out;
  for (size_t first = 0; first < pairs.size(); first += static_cast<size_t>(batch_size)) {
    const size_t count = std::min(static_cast<size_t>(batch_size), pairs.size() - first);
    int64_t t_max = 0;
    for (size_t k = 0; k < count; ++k) {
      const auto& [ctx, cont] = pairs[first + k];
      QAD_CHECK(!ctx.empty() && !cont.empty(), "scoring needs a non-empty context and continuation");
      t_max = std::max<int64_t>(t_max, static_cast<int64_t>(ctx.size() + cont.size()) - 1);
    }
    // Inputs: context + continuation minus its last token, right-padded (causal attention never looks
    // ahead, so padding after a sequence does not change it). Scored: the continuation's positions.
    auto ids = torch::zeros({static_cast<int64_t>(count), t_max}, torch::kInt64);
    auto acc = ids.accessor<int64_t, 2>();
    std::vector<int64_t> rows, targets, owner;
    for (size_t k = 0; k < count; ++k) {
      const auto& [ctx, cont] = pairs[first + k];
      Ids seq = ctx;
      seq.insert(seq.end(), cont.begin(), cont.end());
      for (size_t t = 0; t + 1 < seq.size(); ++t) {
        QAD_CHECK(seq[t] >= 0 && seq[t] < vocab, "token id {} outside the model's vocabulary ({})", seq[t], vocab);
        acc[static_cast<int64_t>(k)][static_cast<int64_t>(t)] = seq[t];
      }
      for (size_t j = 0; j < cont.size(); ++j) {
        const size_t t = ctx.size() - 1 + j;  // position whose logits predict cont[j]
        rows.push_back(static_cast<int64_t>(k) * t_max + static_cast<int64_t>(t));
        targets.push_back(cont[j]);
        owner.push_back(static_cast<int64_t>(k));
      }
    }
    auto logits = lm->forward(ids.to(device)).logits.reshape({-1, vocab});
    auto rows_t = torch::tensor(rows, torch::kInt64).to(device);
    auto picked = logits.index_select(0, rows_t).to(torch::kFloat32);
    auto lp = torch::log_softmax(picked, -1)
                  .gather(1, torch::tensor(targets, torch::kInt64).to(device).unsqueeze(1))
                  .squeeze(1)
                  .to(torch::kFloat64)
                  .cpu();
    std::vector<double> sums(count, 0.0);
    auto lpa = lp.accessor<double, 1>();
    for (size_t i = 0; i < owner.size(); ++i) sums[static_cast<size_t>(owner[i])] += lpa[static_cast<int64_t>(i)];
    out.insert(out.end(), sums.begin(), sums.end());
  }
  return out;
}

TaskResults evaluate_tasks(model::CausalLM& lm, const tokenizer::Tokenizer& tok, const TaskFile& tasks,
                           const TaskEvalOptions& o) {
  QAD_CHECK(o.batch_size >= 0, "--task-batch-size must be >= 0 (0 = planned from memory), got {}", o.batch_size);
  const auto start = std::chrono::steady_clock::now();
  TaskResults r;
  r.stop_ids = o.stop_ids.empty() ? default_stop_ids(lm, tok) : o.stop_ids;
  std::vector<Ids> contexts;
  std::vector<size_t> gen, mc;
  for (size_t i = 0; i < tasks.items.size(); ++i) {
    ItemResult ir;
    ir.item = &tasks.items[i];
    r.items.push_back(std::move(ir));
    contexts.push_back(encode_context(tasks.items[i], tok));
    (tasks.items[i].kind == TaskItem::Kind::kGenerative ? gen : mc).push_back(i);
  }
  run_generative(lm, tok, gen, contexts, o, r);
  run_multiple_choice(lm, tok, mc, contexts, o, r);
  for (const auto& ir : r.items) tally(r, ir);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

}  // namespace qad::eval
