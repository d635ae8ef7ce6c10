// Where each parameter lives in the one flat buffer that data-parallel training reduces and shards: the
// gradient buckets (all-reduced asynchronously during the backward) and the ZeRO-1 shards (each rank owns one
// contiguous 1/N of it) are both ranges of this layout. Torch-free: it works on element counts only, so the
// assignment is unit-tested in closed form. docs/dist.md.
#pragma once
#include <cstdint>
#include <vector>

namespace qad::dist {

struct Bucket {
  int64_t begin = 0, end = 0;  // element range in the flat buffer
  std::vector<int> params;     // parameter indexes, in layout order
};

struct FlatLayout {
  std::vector<int64_t> offset;  // per parameter (by its index in the input): first element in the flat buffer
  std::vector<int64_t> numel;
  std::vector<int> bucket_of;   // per parameter
  std::vector<Bucket> buckets;  // contiguous and in order; the last one also covers the padding
  int64_t padded = 0;           // buffer length: a multiple of world_size * kAlign
  int64_t shard_size() const;   // padded / world_size
  int world_size = 1;
};

// Parameters start at multiples of kAlign elements (vectorised kernels and NCCL like aligned buffers).
constexpr int64_t kAlign = 64;

// Lays the parameters out in reverse order (the backward produces the last layers' gradients first) and cuts
// buckets of at least `bucket_elements` elements at parameter boundaries (a larger parameter is a bucket of its
// own). numel: each parameter's element count, in registration order.
FlatLayout plan_flat_layout(const std::vector<int64_t>& numel, int64_t bucket_elements, int world_size);

// Rank r owns [r * S, (r + 1) * S) with S = padded / world_size.
struct Range {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};
Range shard_range(const FlatLayout& layout, int rank);

// The pieces of parameters inside a flat range: parameter p's elements [param_begin, param_begin + size) sit at
// [flat_begin, flat_begin + size). In layout order; padding is skipped.
struct Piece {
  int param = 0;
  int64_t param_begin = 0, flat_begin = 0, size = 0;
};
std::vector<Piece> pieces_in(const FlatLayout& layout, Range r);

}  // namespace qad::dist
