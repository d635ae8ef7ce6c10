// The help texts and the docs against the binary (see CMakeLists.txt). Torch-free: runs the qad binary.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace {
namespace fs = std::filesystem;

struct Result {
  int status = -1;
  std::string out;  // stdout and stderr
};

// Runs a shell command line (stderr merged into stdout).
Result sh(const std::string& command) {
  Result r;
  FILE* p = ::popen((command + " 2>&1").c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int st = ::pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

std::string qad() { return QAD_BINARY; }

// The subcommand names listed in a CLI11 help text ("Subcommands:" then "  name  description" lines).
std::vector<std::string> subcommands(const std::string& help) {
  std::vector<std::string> names;
  std::istringstream in(help);
  std::string line;
  bool inside = false;
  const std::regex entry(R"(^\s+([a-z][a-z0-9-]*)\s{2,}.*$|^\s+([a-z][a-z0-9-]*)\s*$)");
  while (std::getline(in, line)) {
    std::string lower = line;
    for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (lower.rfind("subcommands:", 0) == 0) {
      inside = true;
      continue;
    }
    if (!inside) continue;
    std::smatch m;
    if (!std::regex_match(line, m, entry)) break;
    names.push_back(m[1].matched ? m[1].str() : m[2].str());
  }
  return names;
}

// The example command lines of a help text: the lines after "Examples:" that start with "qad ".
std::vector<std::string> examples(const std::string& help) {
  std::vector<std::string> out;
  std::istringstream in(help);
  std::string line;
  bool inside = false;
  while (std::getline(in, line)) {
    if (line.rfind("Examples:", 0) == 0) {
      inside = true;
      continue;
    }
    const auto at = line.find_first_not_of(' ');
    if (inside && at != std::string::npos && line.compare(at, 4, "qad ") == 0) {
      out.push_back(line.substr(at));
    } else if (inside) {
      inside = false;
    }
  }
  return out;
}

// Every command path ("distill", "data prepare") with its help text.
std::map<std::string, std::string> all_help() {
  std::map<std::string, std::string> help;
  std::vector<std::string> todo = {""};
  while (!todo.empty()) {
    const std::string path = todo.back();
    todo.pop_back();
    const auto r = sh(qad() + (path.empty() ? "" : " " + path) + " --help");
    EXPECT_EQ(r.status, 0) << "qad " << path << " --help\n" << r.out;
    EXPECT_NE(r.out.find("Usage"), std::string::npos) << "qad " << path << " --help\n" << r.out;
    help[path] = r.out;
    for (const auto& s : subcommands(r.out)) todo.push_back(path.empty() ? s : path + " " + s);
  }
  return help;
}

TEST(Usage, EveryHelpWorksAndListsTheCommands) {
  const auto help = all_help();
  std::set<std::string> top;
  for (const auto& [path, text] : help) {
    if (!path.empty() && path.find(' ') == std::string::npos) top.insert(path);
  }
  // The commands the README documents (an independent list: a command that disappears from --help fails here).
  for (const char* c : {"demo", "distill", "report", "eval", "cka", "data", "quantize", "generate", "selfcheck",
                        "tokenize", "teacher-cache"}) {
    EXPECT_TRUE(top.count(c)) << "qad --help does not list " << c;
  }
  EXPECT_TRUE(help.count("data prepare") && help.count("data inspect"));
}

TEST(Usage, EveryHelpExampleParses) {
  const auto help = all_help();
  const fs::path tmp = fs::temp_directory_path() / ("qad_usage_" + std::to_string(::getpid()));
  fs::create_directories(tmp);
  int checked = 0;
  for (const auto& [path, text] : help) {
    for (const auto& example : examples(text)) {
      ASSERT_EQ(example.rfind("qad " + path, 0), 0u) << "an example in qad " << path << " --help runs another command: "
                                                     << example;
      const std::string args = example.substr(4);
      // `qad report` checks that its run directories exist: give it empty ones (in a scratch directory).
      if (path == "report") {
        std::istringstream in(args);
        std::string word;
        in >> word;  // "report"
        while (in >> word && word.rfind("-", 0) != 0) fs::create_directories(tmp / word);
      }
      const auto r = sh("cd " + tmp.string() + " && QAD_PARSE_ONLY=1 " + qad() + " " + args);
      EXPECT_EQ(r.status, 0) << "does not parse: " << example << "\n" << r.out;
      ++checked;
      if (path == "distill") {  // also every setting it names: --print-config assembles the whole configuration
        const auto c = sh("cd " + std::string(QAD_SOURCE_DIR) + " && " + qad() + " " + args + " --print-config");
        EXPECT_EQ(c.status, 0) << example << " --print-config\n" << c.out;
        EXPECT_NE(c.out.find("method:"), std::string::npos) << c.out;
      }
    }
  }
  EXPECT_GE(checked, 12) << "fewer examples than the help texts carry";
  // The "e.g. --set section.key=value" hints in distill's option help name settings that exist.
  const std::regex hint(R"(e\.g\. (--set [a-z_.]+=[^ );,]+))");
  int hints = 0;
  const auto& d = help.at("distill");
  for (auto it = std::sregex_iterator(d.begin(), d.end(), hint); it != std::sregex_iterator(); ++it, ++hints) {
    const auto r = sh(qad() + " distill " + (*it)[1].str() + " --print-config");
    EXPECT_EQ(r.status, 0) << (*it)[1].str() << "\n" << r.out;
  }
  EXPECT_GE(hints, 1);
  fs::remove_all(tmp);
}

// The checks above can fail: a misspelt setting, an unknown flag and a bad device are each refused with exit 1
// and one line naming what to do.
TEST(Usage, BadLinesAreRefusedInOneLine) {
  auto r = sh(qad() + " distill --set loss.kl_top_k=1024 --print-config");
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("unknown setting 'kl_top_k'"), std::string::npos) << r.out;
  r = sh("QAD_PARSE_ONLY=1 " + qad() + " generate --model m --no-such-flag");
  EXPECT_NE(r.status, 0) << r.out;
  const fs::path out = fs::temp_directory_path() / ("qad_usage_tpu_" + std::to_string(::getpid()));
  r = sh(qad() + " distill --device tpu --teacher t --data d --out " + out.string());
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_EQ(r.out, "qad: error: --device tpu: unknown device; choose auto, cpu, cuda or cuda:N (run.device)\n");
  EXPECT_FALSE(fs::exists(out)) << "a bad setting must fail before the run directory is made";
  r = sh(qad() + " generate --model " + std::string(QAD_SOURCE_DIR) + "/../shared/models/stories260K --prompt-ids 1 "
         "--device tpu");
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_EQ(r.out, "qad: error: --device tpu: unknown device; choose auto, cpu, cuda or cuda:N\n");
}

// The line of a help text that documents `flag` (its first occurrence at the start of an option line).
std::string help_line(const std::string& help, const std::string& flag) {
  std::istringstream in(help);
  for (std::string line; std::getline(in, line);) {
    const auto at = line.find_first_not_of(' ');
    if (at != std::string::npos && line.compare(at, flag.size() + 1, flag + " ") == 0) return line;
  }
  return "";
}

// Issue #22: numbers are shown as numbers with their defaults, choices as choices (never CLI11's BOOLEAN maps).
TEST(Usage, HelpShowsTypesAndDefaults) {
  const auto help = all_help();
  const auto& distill = help.at("distill");
  EXPECT_NE(help_line(distill, "--lr").find("FLOAT=1e-05"), std::string::npos) << help_line(distill, "--lr");
  EXPECT_NE(help_line(distill, "--steps").find("INT=1000"), std::string::npos) << help_line(distill, "--steps");
  EXPECT_NE(help_line(distill, "--warmup-steps").find("INT=-1"), std::string::npos) << distill;
  EXPECT_NE(help_line(distill, "--warmup-ratio").find("FLOAT=0.05"), std::string::npos) << distill;
  EXPECT_NE(help_line(distill, "--teacher").find("PATH"), std::string::npos) << help_line(distill, "--teacher");
  EXPECT_EQ(help_line(distill, "--warmup"), "") << "the ambiguous --warmup is hidden";
  EXPECT_NE(help_line(help.at("eval"), "--on-bad-line").find("=skip"), std::string::npos) << help.at("eval");
  EXPECT_NE(help_line(help.at("data prepare"), "--on-bad-line").find("=skip"), std::string::npos);
  EXPECT_NE(help_line(help.at("data prepare"), "--out"), "") << "every command writes to --out";
  EXPECT_EQ(help_line(help.at("data prepare"), "--out").find("Excludes"), std::string::npos);
  EXPECT_NE(help_line(help.at("tokenize"), "--out"), "");
  for (const auto& [path, text] : help) {
    EXPECT_EQ(text.find("BOOLEAN:value"), std::string::npos) << "qad " << path << " --help:\n" << text;
    const auto device = help_line(text, "--device");
    if (!device.empty()) {
      EXPECT_NE(device.find("cuda:N"), std::string::npos) << "qad " << path << ": " << device;
    }
  }
}

TEST(Usage, AnUnknownCommandGetsTheNearestOne) {
  auto r = sh(qad() + " distil --teacher t");
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.out, "qad: error: unknown command 'distil'; did you mean 'distill'? (qad --help lists the commands)\n");
  r = sh(qad() + " evl");
  EXPECT_NE(r.out.find("did you mean 'eval'?"), std::string::npos) << r.out;
  r = sh(qad() + " frobnicate");
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.out, "qad: error: unknown command 'frobnicate' (qad --help lists the commands)\n");
}

// A recipe for one method with --method naming another: the run gets the named method's loss weights, and a
// warning says so (issue #22: reports group runs by the label, so it must match what was trained).
TEST(Usage, ARecipeAndMethodThatDisagreeAreWarnedAbout) {
  const std::string cd = "cd " + std::string(QAD_SOURCE_DIR) + " && ";
  auto r = sh(cd + qad() + " distill --config recipes/qad.yaml --method cka-qad --print-config");
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("qad: warning: --method cka-qad overrides the method of the recipe recipes/qad.yaml (qad)"),
            std::string::npos) << r.out;
  EXPECT_NE(r.out.find("method: cka-qad"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(" cka=0.1 "), std::string::npos) << r.out;
  r = sh(cd + qad() + " distill --config recipes/qad.yaml --method qat --print-config");
  EXPECT_NE(r.out.find(" ce=1.0 "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(" kl=0.0"), std::string::npos) << r.out;
  r = sh(cd + qad() + " distill --config recipes/cka_qad.yaml --print-config");
  EXPECT_EQ(r.out.find("warning"), std::string::npos) << r.out;
  r = sh(qad() + " distill --warmup 100 --print-config");
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("--warmup-steps"), std::string::npos) << r.out;
  r = sh(qad() + " distill --warmup 0.1 --print-config");
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("warmup_fraction=0.1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("deprecated"), std::string::npos) << r.out;
}

// Every `qad <command>` named in README.md and docs/*.md (in code spans and code blocks) is a command of the binary.
TEST(Usage, EveryCommandTheDocsNameExists) {
  const auto help = all_help();
  std::vector<fs::path> files = {fs::path(QAD_SOURCE_DIR) / "README.md"};
  for (const auto& e : fs::directory_iterator(fs::path(QAD_SOURCE_DIR) / "docs")) {
    if (e.path().extension() == ".md") files.push_back(e.path());
  }
  const std::regex code_span("`([^`]*)`");
  const std::regex command(R"((?:^|[\s(|$])qad ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?)");
  int named = 0;
  for (const auto& f : files) {
    std::ifstream in(f);
    std::string line, code;
    bool fenced = false;
    while (std::getline(in, line)) {
      if (line.rfind("```", 0) == 0) {
        fenced = !fenced;
        continue;
      }
      if (fenced) {
        code += line + "\n";
      } else {
        for (auto it = std::sregex_iterator(line.begin(), line.end(), code_span); it != std::sregex_iterator(); ++it) {
          code += (*it)[1].str() + "\n";
        }
      }
    }
    for (auto it = std::sregex_iterator(code.begin(), code.end(), command); it != std::sregex_iterator(); ++it) {
      const std::string cmd = (*it)[1].str();
      EXPECT_TRUE(help.count(cmd)) << f.filename().string() << " names `qad " << cmd << "`, which qad does not have";
      // "qad data prepare": the second word must be one of data's subcommands.
      if (help.count(cmd) && !subcommands(help.at(cmd)).empty() && (*it)[2].matched) {
        EXPECT_TRUE(help.count(cmd + " " + (*it)[2].str()))
            << f.filename().string() << " names `qad " << cmd << " " << (*it)[2].str() << "`";
      }
      ++named;
    }
  }
  EXPECT_GE(named, 15) << "README.md and docs/ name fewer commands than they do";
}

// README.md's Layout section links every document in docs/ (so a new doc cannot go unlisted).
TEST(Usage, ReadmeLinksEveryDoc) {
  std::ifstream in(fs::path(QAD_SOURCE_DIR) / "README.md");
  const std::string readme((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto layout = readme.find("## Layout");
  ASSERT_NE(layout, std::string::npos);
  int docs = 0;
  for (const auto& e : fs::directory_iterator(fs::path(QAD_SOURCE_DIR) / "docs")) {
    if (e.path().extension() != ".md") continue;
    const std::string link = "](docs/" + e.path().filename().string() + ")";
    EXPECT_NE(readme.find(link, layout), std::string::npos) << "README.md's Layout does not link " << link;
    ++docs;
  }
  EXPECT_GE(docs, 10);
}

}  // namespace
