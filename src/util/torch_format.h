// Torch values in error messages: fmt cannot format torch types, so shapes go through shape_str.
#pragma once
#include <c10/util/ArrayRef.h>

#include <string>

namespace qad {

// "[2, 3, 4]"
inline std::string shape_str(c10::IntArrayRef sizes) {
  std::string s = "[";
  for (size_t i = 0; i < sizes.size(); ++i) s += (i ? ", " : "") + std::to_string(sizes[i]);
  return s + "]";
}

}  // namespace qad
