// Task-file parsing with file:line errors (docs/eval.md "Task files").
#include "eval/task_file.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "data/line_reader.h"
#include "util/error.h"
#include "util/message.h"

namespace qad::eval {
namespace {

using nlohmann::json;

bool blank(std::string_view s) {
  for (char c : s) {
    if (c != ' ' && c != '\t' && c != '\r' && c != '\n') return false;
  }
  return true;
}

// A JSON scalar as the string an exact match compares against: strings as they are, integers in decimal.
std::optional<std::string> scalar_text(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
  if (v.is_number_unsigned()) return std::to_string(v.get<uint64_t>());
  return std::nullopt;
}

}  // namespace

std::optional<std::string> parse_task_line(std::string_view line, const TaskFileOptions& options, TaskItem& item) {
  json j;
  try {
    j = json::parse(line);
  } catch (const json::exception& e) {  // parse_error, and out_of_range for a number like 1e309
    return fmt::format("invalid JSON: {}", clip_for_message(e.what()));
  }
  if (!j.is_object()) return std::string("not a JSON object");

  // Context: "prompt" (rendered text) wins over "messages" and "question" (chat, rendered by the template).
  if (j.contains("prompt")) {
    if (!j["prompt"].is_string()) return std::string("\"prompt\" must be a string");
    item.prompt = j["prompt"].get<std::string>();
  } else if (j.contains("messages")) {
    const auto& m = j["messages"];
    if (!m.is_array() || m.empty()) return std::string("\"messages\" must be a non-empty array of {\"role\", \"content\"}");
    for (size_t i = 0; i < m.size(); ++i) {
      if (!m[i].is_object() || !m[i].contains("role") || !m[i].contains("content") || !m[i]["role"].is_string() ||
          !m[i]["content"].is_string()) {
        return fmt::format("messages[{}] must be {{\"role\": string, \"content\": string}}", i);
      }
      item.messages.push_back({m[i]["role"].get<std::string>(), m[i]["content"].get<std::string>()});
    }
    if (item.messages.back().role == "assistant") {
      return std::string("the last message is the assistant's: give the conversation up to the question only");
    }
  } else if (j.contains("question")) {
    if (!j["question"].is_string()) return std::string("\"question\" must be a string");
    item.messages.push_back({"user", j["question"].get<std::string>()});
  } else {
    return std::string("missing context: give \"prompt\" (rendered text), \"question\" or \"messages\"");
  }

  if (j.contains("choices")) {
    item.kind = TaskItem::Kind::kMultipleChoice;
    const auto& c = j["choices"];
    if (!c.is_array() || c.size() < 2) return std::string("\"choices\" must be an array of at least 2 strings");
    for (size_t i = 0; i < c.size(); ++i) {
      if (!c[i].is_string() || c[i].get<std::string>().empty()) {
        return fmt::format("choices[{}] must be a non-empty string", i);
      }
      item.choices.push_back(c[i].get<std::string>());
    }
    if (!j.contains("label")) return std::string("multiple-choice item without \"label\" (index of the right choice)");
    const auto& l = j["label"];
    if (l.is_number_integer()) {
      item.label = l.get<int64_t>();
    } else if (l.is_string()) {  // the right choice's text
      for (size_t i = 0; i < item.choices.size(); ++i) {
        if (item.choices[i] == l.get<std::string>()) item.label = static_cast<int64_t>(i);
      }
      if (item.label < 0) return fmt::format("\"label\" \"{}\" is none of the choices", l.get<std::string>());
    } else {
      return std::string("\"label\" must be an integer index or the right choice's text");
    }
    if (item.label < 0 || item.label >= static_cast<int64_t>(item.choices.size())) {
      return fmt::format("\"label\" {} is outside [0, {})", item.label, item.choices.size());
    }
  } else if (j.contains("answer")) {
    item.kind = TaskItem::Kind::kGenerative;
    auto a = scalar_text(j["answer"]);
    if (!a) return std::string("\"answer\" must be a string or an integer");
    if (a->empty()) return std::string("\"answer\" is empty (it could never be matched)");
    item.answer = *a;
  } else {
    return std::string("neither \"answer\" (generative) nor \"choices\" + \"label\" (multiple choice)");
  }

  if (j.contains("id")) {
    if (auto id = scalar_text(j["id"])) item.id = *id;
  }
  if (!options.group_field.empty() && j.contains(options.group_field)) {
    if (auto g = scalar_text(j[options.group_field])) item.group = *g;
  }
  return std::nullopt;
}

TaskFile read_task_file(const std::filesystem::path& path, const TaskFileOptions& options) {
  QAD_CHECK(std::filesystem::is_regular_file(path), "task file {} does not exist (or is not a file)", path.string());
  TaskFile out;
  data::LineReader reader(path);
  std::string_view line;
  while (reader.next(line)) {
    out.lines = reader.line_number();
    if (blank(line)) continue;
    TaskItem item;
    item.line = reader.line_number();
    if (auto err = parse_task_line(line, options, item)) {
      auto msg = fmt::format("{}:{}: {}", path.string(), reader.line_number(), *err);
      if (!options.skip_bad_lines) fail("{} (fix the line, or pass --on-bad-line skip)", msg);
      out.bad_lines.push_back(std::move(msg));
      continue;
    }
    if (item.id.empty()) item.id = fmt::format("{}:{}", path.filename().string(), item.line);
    out.items.push_back(std::move(item));
  }
  QAD_CHECK(!out.items.empty(), "task file {} has no task items ({} lines, {} bad)", path.string(), out.lines,
            out.bad_lines.size());
  return out;
}

}  // namespace qad::eval
