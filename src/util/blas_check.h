// Which BLAS this process runs its CPU matrix products on. Debian's LibTorch links libblas.so.3, which the
// alternatives system points at the reference (netlib) BLAS unless OpenBLAS is installed: single-threaded,
// unblocked loops, ~7x slower for qad's CPU training (docs/train.md, "Measured"). Torch-free; Linux only
// (reads /proc/self/maps), elsewhere it finds nothing.
#pragma once
#include <optional>
#include <string>

namespace qad {

// The path of the loaded reference BLAS library (a libblas.so* in a directory named "blas", where Debian and
// Ubuntu install it), or nothing when another BLAS (OpenBLAS, MKL, BLIS) or none is mapped.
std::optional<std::string> loaded_reference_blas();

}  // namespace qad
