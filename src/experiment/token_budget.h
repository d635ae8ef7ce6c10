// The same training budget for every method: a comparison of methods means little when one of them saw more
// tokens. A cell's budget is run.steps × data.batch_size × data.seq_len × optim.grad_accum, from its recipe
// and its settings (qad distill's defaults where neither says).
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "experiment/grid.h"

namespace qad::experiment {

// The four factors of one method and variant, as written ("default" where nothing sets them), and their
// product when all four are numbers.
struct TokenBudget {
  std::string steps, batch_size, seq_len, grad_accum;
  std::optional<double> tokens;
  std::string describe() const;  // "40 steps × 4 × 128 × 1 = 20480 tokens"
};

TokenBudget token_budget(const Grid& grid, size_t method, size_t variant);

// Warnings for cells (PTQ excepted: it does not train) whose budgets differ. When `vary:` changes a budget
// setting the differences between variants are intended, and only methods within one variant are compared.
std::vector<std::string> check_token_budgets(const Grid& grid);

}  // namespace qad::experiment
