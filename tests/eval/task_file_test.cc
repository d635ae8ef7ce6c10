// Task files: both item kinds, every context form, and bad lines reported as file:line with the reason.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "eval/task_file.h"
#include "util/error.h"

namespace fs = std::filesystem;
using qad::eval::TaskItem;

namespace {

fs::path write_temp(const std::string& name, const std::string& content) {
  auto p = fs::temp_directory_path() / ("qad_eval_test_" + std::to_string(::getpid()) + "_" + name);
  std::ofstream(p) << content;
  return p;
}

std::string parse_error(const std::string& line) {
  TaskItem item;
  auto err = qad::eval::parse_task_line(line, {}, item);
  return err ? *err : std::string("<no error>");
}

}  // namespace

TEST(TaskFile, ReadsGenerativeAndMultipleChoiceItems) {
  auto p = write_temp("ok.jsonl",
                      R"({"id": "a1", "op": "add", "question": "What is 1 + 2?", "prompt": "<|im_start|>user\nWhat is 1 + 2?<|im_end|>\n<|im_start|>assistant\n", "answer": "3"})"
                      "\n\n"
                      R"({"question": "Which is larger?", "choices": ["2", "3"], "label": 1})"
                      "\n"
                      R"({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}], "answer": 12})"
                      "\n"
                      R"({"prompt": "The sky is", "choices": [" blue", " green"], "label": " blue", "op": 7})"
                      "\n");
  auto f = qad::eval::read_task_file(p);
  ASSERT_EQ(f.items.size(), 4u);
  EXPECT_EQ(f.lines, 5);
  const auto& a = f.items[0];
  EXPECT_EQ(a.kind, TaskItem::Kind::kGenerative);
  EXPECT_EQ(a.id, "a1");
  EXPECT_EQ(a.group, "add");
  ASSERT_TRUE(a.prompt.has_value());  // "prompt" wins over "question"
  EXPECT_TRUE(a.messages.empty());
  EXPECT_EQ(a.answer, "3");
  const auto& b = f.items[1];
  EXPECT_EQ(b.kind, TaskItem::Kind::kMultipleChoice);
  EXPECT_EQ(b.line, 3);
  EXPECT_EQ(b.id, p.filename().string() + ":3");
  ASSERT_EQ(b.messages.size(), 1u);
  EXPECT_EQ(b.messages[0].role, "user");
  EXPECT_EQ(b.label, 1);
  EXPECT_EQ(f.items[2].messages.size(), 2u);
  EXPECT_EQ(f.items[2].answer, "12");  // integer answers compare as their decimal text
  EXPECT_EQ(f.items[3].label, 0);      // label given as the right choice's text
  EXPECT_EQ(f.items[3].group, "7");
  fs::remove(p);
}

TEST(TaskFile, BadLinesAreReportedWithFileAndLine) {
  const std::string good = R"({"prompt": "p", "answer": "1"})";
  auto p = write_temp("bad.jsonl", good + "\n" + good + "\n{\"prompt\": \"p\", \"answer\": \n" + good + "\n" +
                                       R"({"prompt": "p", "choices": ["a", "b"], "label": 2})" + "\n");
  try {
    qad::eval::read_task_file(p);
    FAIL() << "no error";
  } catch (const qad::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(p.string() + ":3: invalid JSON"), std::string::npos) << msg;
    EXPECT_NE(msg.find("--on-bad-line skip"), std::string::npos) << msg;
  }
  qad::eval::TaskFileOptions skip;
  skip.skip_bad_lines = true;
  auto f = qad::eval::read_task_file(p, skip);
  EXPECT_EQ(f.items.size(), 3u);
  ASSERT_EQ(f.bad_lines.size(), 2u);
  EXPECT_EQ(f.bad_lines[0].rfind(p.string() + ":3: invalid JSON", 0), 0u) << f.bad_lines[0];
  EXPECT_EQ(f.bad_lines[1], p.string() + ":5: \"label\" 2 is outside [0, 2)");
  fs::remove(p);
}

TEST(TaskFile, EachKindOfBadLineSaysWhatIsWrong) {
  EXPECT_EQ(parse_error("[1]"), "not a JSON object");
  EXPECT_EQ(parse_error(R"({"answer": "1"})"),
            "missing context: give \"prompt\" (rendered text), \"question\" or \"messages\"");
  EXPECT_EQ(parse_error(R"({"prompt": 5, "answer": "1"})"), "\"prompt\" must be a string");
  EXPECT_EQ(parse_error(R"({"prompt": "p"})"),
            "neither \"answer\" (generative) nor \"choices\" + \"label\" (multiple choice)");
  EXPECT_EQ(parse_error(R"({"prompt": "p", "answer": ""})"), "\"answer\" is empty (it could never be matched)");
  EXPECT_EQ(parse_error(R"({"prompt": "p", "answer": [1]})"), "\"answer\" must be a string or an integer");
  EXPECT_EQ(parse_error(R"({"prompt": "p", "choices": ["a"], "label": 0})"),
            "\"choices\" must be an array of at least 2 strings");
  EXPECT_EQ(parse_error(R"({"prompt": "p", "choices": ["a", ""], "label": 0})"), "choices[1] must be a non-empty string");
  EXPECT_EQ(parse_error(R"({"prompt": "p", "choices": ["a", "b"]})"),
            "multiple-choice item without \"label\" (index of the right choice)");
  EXPECT_EQ(parse_error(R"({"prompt": "p", "choices": ["a", "b"], "label": "c"})"), "\"label\" \"c\" is none of the choices");
  EXPECT_EQ(parse_error(R"({"prompt": "p", "choices": ["a", "b"], "label": -1})"), "\"label\" -1 is outside [0, 2)");
  EXPECT_EQ(parse_error(R"({"messages": [{"role": "user"}], "answer": "1"})"),
            "messages[0] must be {\"role\": string, \"content\": string}");
  EXPECT_EQ(parse_error(R"({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "answer": "1"})"),
            "the last message is the assistant's: give the conversation up to the question only");
  EXPECT_EQ(parse_error(R"({"prompt": "p", "answer": "1"})"), "<no error>");
}

TEST(TaskFile, MissingAndEmptyFilesAreErrors) {
  EXPECT_THROW(qad::eval::read_task_file("/nonexistent/tasks.jsonl"), qad::Error);
  auto p = write_temp("empty.jsonl", "\n  \n");
  try {
    qad::eval::read_task_file(p);
    FAIL() << "no error";
  } catch (const qad::Error& e) {
    EXPECT_NE(std::string(e.what()).find("has no task items"), std::string::npos) << e.what();
  }
  fs::remove(p);
}
