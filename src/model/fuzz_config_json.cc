// Fuzz target for config.json: any byte string is either parsed into a ModelConfig (then with positive sizes)
// or rejected with qad::Error; nothing else may happen. No model is built (a fuzzed size may be huge). Built as
// a libFuzzer target (-DQAD_FUZZ=ON, clang) and as a bounded seeded run in ctest (tests/fuzz).
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "model/config.h"
#include "util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/tmp/qad-fuzz-config-" + std::to_string(::getpid()) + ".json";
  {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  try {
    const auto c = qad::model::load_config(path);
    if (c.vocab_size <= 0 || c.hidden_size <= 0 || c.num_layers <= 0 || c.num_heads <= 0 || c.num_kv_heads <= 0 ||
        c.head_dim <= 0 || c.num_heads % c.num_kv_heads != 0) {
      std::abort();  // accepted, but a model could not be built from it: the parser must have rejected it
    }
  } catch (const qad::Error&) {
  }
  std::remove(path.c_str());
  return 0;
}
