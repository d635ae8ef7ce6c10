// Evaluation task files (JSON Lines): generative items {"prompt"|"question"|"messages", "answer"} and
// multiple-choice items {"prompt"|"question"|"messages", "choices", "label"}. Every bad line is reported
// as file:line with what is wrong. Field definitions: docs/eval.md "Task files".
#pragma once
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace qad::eval {

struct TaskMessage {
  std::string role, content;
};

struct TaskItem {
  enum class Kind { kGenerative, kMultipleChoice } kind = Kind::kGenerative;
  std::string id;     // "id" field, else "file:line"
  std::string group;  // the group field's value ("op" for tasks/arith), empty if absent
  int64_t line = 0;   // 1-based line in the task file
  // The context: a rendered prompt ("prompt", used verbatim) or chat messages ("question" = one user
  // message, or "messages") that the model's chat template renders with the generation prompt.
  std::optional<std::string> prompt;
  std::vector<TaskMessage> messages;
  std::string answer;                // generative
  std::vector<std::string> choices;  // multiple choice
  int64_t label = -1;                // multiple choice: index into choices
};

struct TaskFileOptions {
  std::string group_field = "op";  // per-group accuracy when items carry this field
  bool skip_bad_lines = false;     // false: the first bad line is an error; true: report and skip
};

struct TaskFile {
  std::vector<TaskItem> items;
  std::vector<std::string> bad_lines;  // "file:line: what is wrong" (skip mode)
  int64_t lines = 0;
};

// Reads a .jsonl task file (optionally .xz/.zst). Throws qad::Error "file:line: ..." on the first bad line
// unless options.skip_bad_lines; an unreadable file or a file without items is an error either way.
TaskFile read_task_file(const std::filesystem::path& path, const TaskFileOptions& options = {});

// Parses one line; returns an error message (without the "file:line: " prefix) or nothing.
std::optional<std::string> parse_task_line(std::string_view line, const TaskFileOptions& options, TaskItem& item);

}  // namespace qad::eval
