// Helpers of the experiment tests: fresh temporary directories, small files, and a FAKE qad: a shell script
// that logs each command line and writes what qad distill / qad eval would, with numbers derived from the
// method and the seed, so that the summary's statistics can be checked against hand-computed values.
#pragma once
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "util/remove_tree.h"

namespace qad::experiment::testing {
namespace fs = std::filesystem;

inline fs::path fresh_dir(const std::string& name) {
  auto d = fs::temp_directory_path() / ("qad_test_experiment_" + name + "_" + std::to_string(::getpid()));
  ::qad::remove_tree(d);
  fs::create_directories(d);
  return d;
}

inline void write_text(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << text;
}

inline std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline std::vector<std::string> read_lines(const fs::path& p) {
  std::vector<std::string> lines;
  std::ifstream in(p);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// The fake qad. Environment:
//   FAKE_QAD_LOG                 every invocation appends "CVD=<CUDA_VISIBLE_DEVICES> <argv...>"
//   FAKE_QAD_FAIL=CELL           that cell's distill exits 3 (after a line on stderr)
//   FAKE_QAD_KILL_RUNNER=CELL    that cell's distill writes a checkpoint, then SIGKILLs the runner and itself
//   FAKE_QAD_TERM_RUNNER=CELL    that cell's distill writes a checkpoint, sends SIGTERM to the runner and waits
//                                for the forwarded signal (exit 143)
// distill's final_metrics.json, for seed s (c = 1 for cka-qad, else 0):
//   kl = 0.1 + 0.01 s + c (0.001 s² − 0.005), agreement = 0.8 + 0.01 s + c (0.01 + 0.001 s),
//   mean_cka = 0.9 + 0.01 s + c (0.005 s² + 0.01 − 0.01 s), cka.layers.0 = mean_cka − 0.01, layers.1 = + 0.01
// eval prints {"kl": 0.05, "tasks": {"accuracy": s / 10}} (s from the model path's "__seedN/").
inline fs::path write_fake_qad(const fs::path& dir) {
  const fs::path script = dir / "fake_qad.sh";
  write_text(script, R"SH(#!/bin/sh
printf 'CVD=%s %s\n' "$CUDA_VISIBLE_DEVICES" "$*" >> "$FAKE_QAD_LOG"
cmd=$1; shift
out=; seed=0; method=; model=
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift ;;
    --method) method=$2; shift ;;
    --model) model=$2; shift ;;
    --set) case "$2" in run.seed=*) seed=${2#run.seed=} ;; esac; shift ;;
  esac
  shift
done
is_cell() { [ -n "$1" ] && case "$out/" in */"$1"/*) return 0 ;; esac; return 1; }
if [ "$cmd" = eval ]; then
  seed=$(printf '%s' "$model" | sed -n 's/.*__seed\([0-9]*\)\/.*/\1/p')
  echo "fake eval of $model" >&2
  awk -v s="$seed" 'BEGIN { printf "{\"kl\": 0.05, \"tasks\": {\"accuracy\": %.17g}}\n", s / 10 }'
  exit 0
fi
echo "fake distill $method seed $seed into $out"
if is_cell "$FAKE_QAD_FAIL"; then echo "fake: cannot load the teacher" >&2; exit 3; fi
mkdir -p "$out/checkpoints/step-00000001"
echo step-00000001 > "$out/checkpoints/latest"
if is_cell "$FAKE_QAD_KILL_RUNNER"; then kill -KILL "$PPID"; kill -KILL $$; fi
if is_cell "$FAKE_QAD_TERM_RUNNER"; then
  sleep 30 & sleeper=$!
  trap 'kill $sleeper 2>/dev/null; echo "fake: stopped by SIGTERM" >&2; exit 143' TERM
  kill -TERM "$PPID"
  wait $sleeper
  exit 0
fi
mkdir -p "$out/export/nvfp4"
awk -v s="$seed" -v m="$method" 'BEGIN {
  c = (m == "cka-qad") ? 1 : 0
  kl = 0.1 + 0.01 * s + c * (0.001 * s * s - 0.005)
  ag = 0.8 + 0.01 * s + c * (0.01 + 0.001 * s)
  ck = 0.9 + 0.01 * s + c * (0.005 * s * s + 0.01 - 0.01 * s)
  printf "{\"steps\": 2, \"tokens\": 64, \"train_seconds\": 1.5, \"kl\": %.17g, \"ppl\": null, \"agreement\": %.17g, \"mean_cka\": %.17g, \"cka\": {\"layers.0\": %.17g, \"layers.1\": %.17g}}\n", kl, ag, ck, ck - 0.01, ck + 0.01
}' > "$out/.final.tmp"
mv "$out/.final.tmp" "$out/final_metrics.json"
)SH");
  ::chmod(script.c_str(), 0755);
  return script;
}

// Lines of the fake's log that trained (distill) or evaluated (eval) the named cell.
inline std::vector<std::string> invocations(const std::vector<std::string>& log, const std::string& cmd,
                                            const std::string& cell) {
  std::vector<std::string> out;
  for (const auto& line : log) {
    const auto space = line.find(' ');
    if (line.compare(space + 1, cmd.size() + 1, cmd + " ") != 0) continue;
    if (line.find("/cells/" + cell + "/") != std::string::npos) out.push_back(line);
  }
  return out;
}

}  // namespace qad::experiment::testing
