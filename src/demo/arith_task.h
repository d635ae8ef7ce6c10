// The demo's reasoning task: addition and subtraction with worked, digit-by-digit steps, in chat form, in the
// style of ../shared/tasks/arith (the same steps, written compactly so that a CPU trains on them quickly: no
// spaces around the digits' operators, no commas). Generated from a seed, no files.
// Torch-free.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace qad::demo {

struct ArithExample {
  std::string question;  // "What is 47 + 38?"
  std::string reasoning; // "<think>\n47+38\n7+8+0=15 write 5 carry 1 result 5\n...</think>\n85"
  std::string answer;    // "85"
};

struct ArithOptions {
  int max_digits = 2;  // operand digit counts are drawn from 1..max_digits
  double sub_fraction = 0.4;
};

// Deterministic for (seed, index): example i of a stream.
ArithExample make_example(uint64_t seed, int64_t index, const ArithOptions& o = {});

// ChatML text of the prompt up to and including "<|im_start|>assistant\n".
std::string chat_prompt(const std::string& question);

}  // namespace qad::demo
