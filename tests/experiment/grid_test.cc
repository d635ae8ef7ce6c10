// Grid files: expansion into cells (order, names, exact qad distill arguments), the forms of methods, vary,
// seeds and eval, the token-budget check, and errors that name the file and the key.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "experiment/grid.h"
#include "experiment/token_budget.h"
#include "experiment_test_util.h"
#include "util/error.h"

namespace qad::experiment {
namespace {

using Args = std::vector<std::string>;

const char* kStudy = R"(
teacher: T
data: D.jsonl
valid_data: V.jsonl
base:
  run.steps: 40
  data: {batch_size: 4, seq_len: 128}
methods: [qad, cka-qad]
vary:
  loss.cka: [0.1, 1.0]
seeds: 2
)";

std::vector<std::string> names(const Grid& g) {
  std::vector<std::string> out;
  for (const auto& c : g.cells) out.push_back(c.name);
  return out;
}

// The message of the qad::Error that parsing `yaml` throws ("" when it parses).
std::string error_of(const std::string& yaml) {
  try {
    parse_grid(yaml, "exp.yaml");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Grid, CrossesMethodsVariantsAndSeedsSeedMajor) {
  const Grid g = parse_grid(kStudy, "exp.yaml");
  EXPECT_EQ(names(g), (std::vector<std::string>{
                          "qad__loss.cka=0.1__seed1", "cka-qad__loss.cka=0.1__seed1", "qad__loss.cka=1.0__seed1",
                          "cka-qad__loss.cka=1.0__seed1", "qad__loss.cka=0.1__seed2", "cka-qad__loss.cka=0.1__seed2",
                          "qad__loss.cka=1.0__seed2", "cka-qad__loss.cka=1.0__seed2"}));
  EXPECT_EQ(g.seeds, (std::vector<uint64_t>{1, 2}));
  EXPECT_EQ(g.varied_keys, (std::vector<std::string>{"loss.cka"}));
  EXPECT_EQ(g.group_of(g.cells[5]), "cka-qad__loss.cka=0.1");
  EXPECT_TRUE(g.warnings.empty()) << g.warnings.front();
  EXPECT_FALSE(g.has_eval());
}

TEST(Grid, CellArgumentsAreExactAndLaterSettingsWin) {
  const Grid g = parse_grid(kStudy, "exp.yaml");
  const Cell& c = g.cells[5];  // cka-qad, loss.cka=0.1, seed 2
  EXPECT_EQ(c.distill_args,
            (Args{"distill", "--method", "cka-qad", "--teacher", "T", "--data", "D.jsonl", "--valid-data", "V.jsonl",
                  "--name", "cka-qad__loss.cka=0.1__seed2", "--set", "run.steps=40", "--set", "data.batch_size=4",
                  "--set", "data.seq_len=128", "--set", "loss.cka=0.1", "--set", "run.seed=2", "--set",
                  "data.seed=2"}));
}

TEST(Grid, NamedMethodsNamedVariantsSeedListAndEval) {
  const Grid g = parse_grid(R"(
name: lambda-study
teacher: T
data: D
tasks: tasks/arith.jsonl
base: {recipe: recipes/qad.yaml, loss.cka_layers: [layers.0, layers.3]}
methods:
  - qad
  - {name: cka-l1, method: cka-qad, recipe: recipes/cka_qad.yaml, set: {loss.cka: 1}}
vary:
  - {name: short, run.steps: 20}
  - {run.steps: 40, optim.lr: "5e-5"}
seeds: [7, 3]
eval: {max-items: 100, teacher: true, greedy-flag: true, off-flag: false, data: [a.jsonl, b.jsonl]}
)",
                              "exp.yaml");
  EXPECT_EQ(g.name, "lambda-study");
  EXPECT_EQ(names(g), (std::vector<std::string>{"qad__short__seed7", "cka-l1__short__seed7",
                                                "qad__run.steps=40__optim.lr=5e-5__seed7",
                                                "cka-l1__run.steps=40__optim.lr=5e-5__seed7", "qad__short__seed3",
                                                "cka-l1__short__seed3", "qad__run.steps=40__optim.lr=5e-5__seed3",
                                                "cka-l1__run.steps=40__optim.lr=5e-5__seed3"}));
  EXPECT_EQ(g.cells[1].distill_args,
            (Args{"distill", "--method", "cka-qad", "--config", "recipes/cka_qad.yaml", "--teacher", "T", "--data", "D",
                  "--name", "cka-l1__short__seed7", "--set", R"(loss.cka_layers=["layers.0","layers.3"])", "--set",
                  "loss.cka=1", "--set", "run.steps=20", "--set", "run.seed=7", "--set", "data.seed=7"}));
  EXPECT_EQ(g.cells[0].distill_args[3], "--config");
  EXPECT_EQ(g.cells[0].distill_args[4], "recipes/qad.yaml");
  EXPECT_TRUE(g.has_eval());
  EXPECT_EQ(g.eval_args, (Args{"--max-items", "100", "--teacher", "T", "--greedy-flag", "--data", "a.jsonl", "b.jsonl"}));
  ASSERT_EQ(g.comparisons.size(), 1u);  // default: every method against qad
  EXPECT_EQ(g.comparisons[0].a, "cka-l1");
  EXPECT_EQ(g.comparisons[0].b, "qad");
}

TEST(Grid, DefaultsAndExplicitComparisons) {
  Grid g = parse_grid("teacher: T\ndata: D\nmethods: [ptq, cka-qad]\n", "exp.yaml");
  EXPECT_EQ(names(g), (std::vector<std::string>{"ptq__seed1", "cka-qad__seed1"}));  // one seed, no variants
  ASSERT_EQ(g.comparisons.size(), 1u);  // no qad: against the first method
  EXPECT_EQ(g.comparisons[0].a, "cka-qad");
  EXPECT_EQ(g.comparisons[0].b, "ptq");
  g = parse_grid("teacher: T\ndata: D\nmethods: [qad, cka-qad, qat]\ncompare: [[qat, cka-qad]]\nseeds: 3\n",
                 "exp.yaml");
  ASSERT_EQ(g.comparisons.size(), 1u);
  EXPECT_EQ(g.comparisons[0].a, "qat");
  EXPECT_EQ(g.comparisons[0].b, "cka-qad");
  EXPECT_EQ(g.seeds, (std::vector<uint64_t>{1, 2, 3}));
  EXPECT_EQ(g.cells.size(), 9u);
}

TEST(Grid, ErrorsNameTheFileAndTheKey) {
  const std::string ok = "teacher: T\ndata: D\nmethods: [qad]\n";
  EXPECT_EQ(error_of(ok), "");
  EXPECT_NE(error_of(ok + "sedes: 3\n").find("exp.yaml: unknown key 'sedes'"), std::string::npos);
  EXPECT_NE(error_of("data: D\nmethods: [qad]\n").find("exp.yaml: 'teacher' is missing"), std::string::npos);
  EXPECT_NE(error_of("teacher: T\ndata: D\nmethods: [qadd]\n").find("unknown method 'qadd'"), std::string::npos);
  EXPECT_NE(error_of(ok + "base: {run.seed: 3}\n").find("exp.yaml: base: run.seed: 'run.seed' is set by `seeds:`"),
            std::string::npos);
  EXPECT_NE(error_of(ok + "base: {trainer.steps: 3}\n").find("'trainer.steps' names no section"), std::string::npos);
  EXPECT_NE(error_of(ok + "base: {steps: 3}\n").find("'steps' is not a setting"), std::string::npos);
  EXPECT_NE(error_of(ok + "seeds: [1, 2, 1]\n").find("seed 1 appears twice"), std::string::npos);
  EXPECT_NE(error_of(ok + "seeds: -2\n").find("'-2' is not a seed"), std::string::npos);
  EXPECT_NE(error_of(ok + "compare: [[qad, cka-qad]]\n").find("'cka-qad' is not one of the methods (qad)"),
            std::string::npos);
  EXPECT_NE(error_of(ok + "eval: {model: x}\n").find("--model is set by the runner"), std::string::npos);
  EXPECT_NE(error_of(ok + "vary: {loss.cka: 0.1}\n").find("exp.yaml: vary: loss.cka: expected a non-empty list"),
            std::string::npos);
  EXPECT_NE(error_of("teacher: T\ndata: D\nmethods: [qad, {name: qad, method: cka-qad}]\n")
                .find("the method name 'qad' appears twice"),
            std::string::npos);
  EXPECT_NE(error_of("teacher: T\ndata: D\nmethods: [{name: x, method: qad, sett: {}}]\n")
                .find("exp.yaml: methods[0]: unknown key 'sett'"),
            std::string::npos);
  // Two values that are one directory name once made safe.
  EXPECT_NE(error_of(ok + "vary: {optim.schedule: [a/b, a_b]}\n").find("two cells would share the directory name"),
            std::string::npos);
  EXPECT_NE(error_of("teacher: [T\n").find("exp.yaml: not valid YAML"), std::string::npos);
}

TEST(Grid, LoadNamesTheMissingFile) {
  try {
    load_grid("/nonexistent/exp.yaml");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/exp.yaml: no such file"), std::string::npos) << e.what();
  }
  const auto dir = testing::fresh_dir("load");
  testing::write_text(dir / "study.yaml", "teacher: T\ndata: D\nmethods: [qad]\n");
  const Grid g = load_grid(dir / "study.yaml");
  EXPECT_EQ(g.name, "study");  // the file's stem without `name:`
  EXPECT_EQ(g.file, dir / "study.yaml");
  ::qad::remove_tree(dir);
}

TEST(TokenBudget, WarnsWhenMethodsTrainOnDifferentBudgets) {
  const Grid g = parse_grid(R"(
teacher: T
data: D
base: {run.steps: 40, data.batch_size: 4, data.seq_len: 128}
methods: [ptq, qad, {name: long, method: cka-qad, set: {run.steps: 80}}]
)",
                            "exp.yaml");
  ASSERT_EQ(g.warnings.size(), 1u);
  EXPECT_NE(g.warnings[0].find("exp.yaml: the cells do not all get the same token budget"), std::string::npos);
  EXPECT_NE(g.warnings[0].find("qad: 40 steps × 4 × 128 × default"), std::string::npos) << g.warnings[0];
  EXPECT_NE(g.warnings[0].find("long: 80 steps"), std::string::npos) << g.warnings[0];
  EXPECT_EQ(g.warnings[0].find("ptq"), std::string::npos) << "PTQ does not train: " << g.warnings[0];
  EXPECT_EQ(token_budget(g, 1, 0).describe(), "40 steps × 4 × 128 × default");
}

TEST(TokenBudget, VaryingABudgetKeyIsIntendedButMethodsStillAgreeWithinAVariant) {
  Grid g = parse_grid("teacher: T\ndata: D\nbase: {optim.grad_accum: 2, data.batch_size: 4, data.seq_len: 8}\n"
                      "methods: [qad, cka-qad]\nvary: {run.steps: [10, 20]}\n",
                      "exp.yaml");
  EXPECT_TRUE(g.warnings.empty());
  EXPECT_EQ(*token_budget(g, 0, 1).tokens, 20.0 * 4 * 8 * 2);
  g = parse_grid("teacher: T\ndata: D\nmethods: [qad, {name: c, method: cka-qad, set: {data.seq_len: 64}}]\n"
                 "vary: {run.steps: [10, 20]}\n",
                 "exp.yaml");
  EXPECT_EQ(g.warnings.size(), 2u);  // one per variant
}

TEST(TokenBudget, ReadsTheRecipe) {
  const auto dir = testing::fresh_dir("recipe");
  testing::write_text(dir / "r.yaml", "method: qad\nrun:\n  steps: 100\ndata:\n  batch_size: 8\n  seq_len: 64\n");
  const std::string r = (dir / "r.yaml").string();
  const Grid g = parse_grid("teacher: T\ndata: D\nbase: {recipe: " + r + "}\nmethods: [qad, {name: b, method: "
                            "cka-qad, set: {run.steps: 100, data.batch_size: 8, data.seq_len: 64}}]\n",
                            "exp.yaml");
  EXPECT_TRUE(g.warnings.empty()) << g.warnings.front();
  EXPECT_EQ(token_budget(g, 0, 0).describe(), "100 steps × 8 × 64 × default");
  EXPECT_NE(error_of("teacher: T\ndata: D\nbase: {recipe: /nonexistent/r.yaml}\nmethods: [qad, cka-qad]\n")
                .find("recipe /nonexistent/r.yaml: cannot read it"),
            std::string::npos);
  ::qad::remove_tree(dir);
}

TEST(Grid, SafeName) {
  EXPECT_EQ(safe_name("loss.cka=0.1"), "loss.cka=0.1");
  EXPECT_EQ(safe_name("a/b c*"), "a_b_c_");
}

}  // namespace
}  // namespace qad::experiment
