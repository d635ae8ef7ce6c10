// libFuzzer target for the safetensors header parser: any byte string is either accepted (and then every
// tensor span lies inside the input) or rejected with qad::Error; nothing else may happen.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "io/safetensors.h"
#include "util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view file(reinterpret_cast<const char*>(data), size);
  try {
    auto h = qad::io::parse_safetensors(file, "fuzz");
    for (const auto& t : h.tensors) {
      if (h.data_offset + t.end > size || t.begin > t.end) std::abort();
      volatile unsigned char sink = 0;
      if (t.nbytes() > 0) sink = data[h.data_offset + t.end - 1];
      (void)sink;
    }
  } catch (const qad::Error&) {
  }
  return 0;
}
