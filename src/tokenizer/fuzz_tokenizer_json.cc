// Fuzz target for tokenizer.json loading: any byte string is either loaded (and then encodes and decodes a
// fixed mixed-script text without failing) or rejected with qad::Error; nothing else may happen. Built as a
// libFuzzer target (-DQAD_FUZZ=ON, clang) and as a bounded seeded run in ctest (tests/fuzz).
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "tokenizer/tokenizer.h"
#include "util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // The loader reads a file (tokenizer_config.json beside it is optional), so the input becomes one.
  static const std::string path = "/tmp/qad-fuzz-tokenizer-" + std::to_string(::getpid()) + ".json";
  {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  try {
    const auto tok = qad::tokenizer::Tokenizer::load(path);
    const auto ids = tok.encode("Hello, world! 123 h\xC3\xA9llo \xE6\x97\xA5\xE6\x9C\xAC <|endoftext|>\n\tend", true);
    (void)tok.decode(ids, false);
    (void)tok.decode({0, 1, 2, -1, 1 << 30}, true);  // unknown ids are skipped
  } catch (const qad::Error&) {
  }
  std::remove(path.c_str());
  return 0;
}
