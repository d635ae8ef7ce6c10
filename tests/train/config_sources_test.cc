// Where settings come from (train/config_sources.h): method defaults → recipe → flags → --set, and the
// warnings a user gets when a recipe and --method disagree or the loss weights contradict the method label.
#include <gtest/gtest.h>

#include <string>

#include "train/config.h"
#include "train/config_sources.h"
#include "util/error.h"

namespace qad::train {
namespace {

ConfigSources sources(const std::string& recipe, const std::string& method, nlohmann::json flags = nullptr) {
  ConfigSources s;
  s.recipe_path = recipe;
  if (!recipe.empty()) s.recipe = load_recipe(recipe);
  s.method = method;
  if (!flags.is_null()) s.flags = flags;
  return s;
}

bool any_contains(const std::vector<std::string>& ws, const std::string& what) {
  for (const auto& w : ws) {
    if (w.find(what) != std::string::npos) return true;
  }
  return false;
}

TEST(ConfigSources, MethodWithoutRecipeGetsItsDocumentedLossWeights) {
  const struct {
    const char* method;
    double kl, ce, cka;
  } cases[] = {{"qad", 1, 0, 0}, {"cka-qad", 1, 0, 0.1}, {"qat", 0, 1, 0}};
  for (const auto& c : cases) {
    const auto a = assemble_config(sources("", c.method));
    EXPECT_EQ(method_name(a.config.method), c.method);
    EXPECT_EQ(a.config.loss.kl, c.kl) << c.method;
    EXPECT_EQ(a.config.loss.ce, c.ce) << c.method;
    EXPECT_EQ(a.config.loss.cka, c.cka) << c.method;
    EXPECT_TRUE(a.warnings.empty()) << c.method << ": " << a.warnings.front();
  }
}

TEST(ConfigSources, ARecipeForAnotherMethodKeepsItsSettingsButNotItsLossWeights) {
  // recipes/qad.yaml says method qad with cka 0: --method cka-qad must train with cka-qad's CKA term.
  auto a = assemble_config(sources("recipes/qad.yaml", "cka-qad"));
  EXPECT_EQ(a.config.method, Method::kCkaQad);
  EXPECT_EQ(a.config.loss.cka, 0.1);
  EXPECT_EQ(a.config.loss.kl, 1.0);
  EXPECT_EQ(a.config.optim.lr, 1e-5) << "the recipe's other settings stay";
  EXPECT_EQ(a.config.data.seq_len, 512);
  ASSERT_EQ(a.warnings.size(), 1u);
  EXPECT_TRUE(any_contains(a.warnings, "--method cka-qad overrides the method of the recipe recipes/qad.yaml (qad)"))
      << a.warnings.front();
  EXPECT_TRUE(any_contains(a.warnings, "kl=1, ce=0, cka=0.1")) << a.warnings.front();

  // --method qat with the QAD recipe: cross-entropy only, no KL.
  a = assemble_config(sources("recipes/qad.yaml", "qat"));
  EXPECT_EQ(a.config.loss.kl, 0.0);
  EXPECT_EQ(a.config.loss.ce, 1.0);
  EXPECT_EQ(a.config.loss.cka, 0.0);
  EXPECT_TRUE(any_contains(a.warnings, "--method qat overrides"));
  EXPECT_FALSE(any_contains(a.warnings, "labelled qat")) << "the weights now match the label";

  // A weight set by a flag beats both the recipe and the method's default.
  a = assemble_config(sources("recipes/qad.yaml", "cka-qad", {{"loss", {{"cka", 0.5}}}}));
  EXPECT_EQ(a.config.loss.cka, 0.5);
  EXPECT_TRUE(any_contains(a.warnings, "except cka set by flags"));
}

TEST(ConfigSources, TheRecipesOwnMethodIsUsedWithoutWarning) {
  const auto a = assemble_config(sources("recipes/cka_qad.yaml", ""));
  EXPECT_EQ(a.config.method, Method::kCkaQad);
  EXPECT_GT(a.config.loss.cka, 0);
  EXPECT_TRUE(a.warnings.empty());
  const auto same = assemble_config(sources("recipes/cka_qad.yaml", "cka-qad"));
  EXPECT_TRUE(same.warnings.empty()) << "--method equal to the recipe's method is no disagreement";
}

TEST(ConfigSources, FlagsBeatTheRecipe) {
  const auto a = assemble_config(sources("recipes/qad.yaml", "", {{"optim", {{"lr", 3e-4}}}, {"data", {{"seq_len", 64}}}}));
  EXPECT_EQ(a.config.optim.lr, 3e-4);
  EXPECT_EQ(a.config.data.seq_len, 64);
}

TEST(ConfigSources, WeightsThatContradictTheLabelAreWarnedAbout) {
  auto a = assemble_config(sources("", "qad", {{"loss", {{"cka", 0.2}}}}));
  EXPECT_TRUE(any_contains(a.warnings, "labelled qad but has a CKA term (loss.cka=0.2)"));
  a = assemble_config(sources("", "cka-qad", {{"loss", {{"cka", 0}}}}));
  EXPECT_TRUE(any_contains(a.warnings, "labelled cka-qad but loss.cka is 0"));
  a = assemble_config(sources("", "qat", {{"loss", {{"kl", 1}}}}));
  EXPECT_TRUE(any_contains(a.warnings, "labelled qat but learns from the teacher"));
  a = assemble_config(sources("", "qad", {{"loss", {{"kl", 0}, {"ce", 1}}}}));
  EXPECT_TRUE(any_contains(a.warnings, "labelled qad but loss.kl is 0"));
}

TEST(ConfigSources, PtqIgnoresStepsWithAWarning) {
  const auto a = assemble_config(sources("", "ptq", {{"run", {{"steps", 50}}}}));
  EXPECT_EQ(a.config.run.steps, 0);
  EXPECT_TRUE(any_contains(a.warnings, "--steps 50 is ignored"));
}

// --top-k-tail without a top-k would be silently ignored by the full KL: refused, naming the fix; with a top-k or a
// teacher cache (whose k is the default) it is valid.
TEST(ConfigSources, TheTailCategoryNeedsATopK) {
  auto c = defaults_for(Method::kQad);
  c.run.teacher = "T", c.run.out = "O", c.data.path = "D";
  EXPECT_NO_THROW(c.validate());
  c.loss.top_k_tail = true;
  try {
    c.validate();
    ADD_FAILURE() << "loss.top_k_tail with loss.top_k 0 was accepted";
  } catch (const qad::Error& e) {
    EXPECT_NE(std::string(e.what()).find("set loss.top_k (--top-k K) or train from a teacher cache"), std::string::npos)
        << e.what();
  }
  c.loss.top_k = 64;
  EXPECT_NO_THROW(c.validate());
  c.loss.top_k = 0;
  c.run.teacher_cache = "runs/tcache";
  EXPECT_NO_THROW(c.validate());
}

}  // namespace
}  // namespace qad::train
