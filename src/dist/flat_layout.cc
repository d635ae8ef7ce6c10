// Flat buffer layout, buckets and shard ranges (see flat_layout.h).
#include "dist/flat_layout.h"

#include <algorithm>

#include "util/error.h"

namespace qad::dist {

int64_t FlatLayout::shard_size() const { return padded / world_size; }

FlatLayout plan_flat_layout(const std::vector<int64_t>& numel, int64_t bucket_elements, int world_size) {
  QAD_CHECK(world_size >= 1, "world size {} < 1", world_size);
  QAD_CHECK(bucket_elements >= 1, "bucket size {} elements < 1", bucket_elements);
  const int n = static_cast<int>(numel.size());
  FlatLayout l;
  l.world_size = world_size;
  l.offset.assign(n, 0);
  l.numel = numel;
  l.bucket_of.assign(n, 0);
  int64_t at = 0;
  Bucket cur;
  for (int i = n - 1; i >= 0; --i) {
    QAD_CHECK(numel[i] >= 0, "parameter {} has {} elements", i, numel[i]);
    l.offset[i] = at;
    if (cur.params.empty()) cur.begin = at;
    cur.params.push_back(i);
    l.bucket_of[i] = static_cast<int>(l.buckets.size());
    at += (numel[i] + kAlign - 1) / kAlign * kAlign;
    if (at - cur.begin >= bucket_elements) {
      cur.end = at;
      l.buckets.push_back(std::move(cur));
      cur = Bucket{};
    }
  }
  const int64_t quantum = kAlign * world_size;
  l.padded = std::max<int64_t>((at + quantum - 1) / quantum * quantum, quantum);
  if (!cur.params.empty()) {
    cur.end = l.padded;
    l.buckets.push_back(std::move(cur));
  } else if (l.buckets.empty()) {
    l.buckets.push_back(Bucket{0, l.padded, {}});
  } else {
    l.buckets.back().end = l.padded;
  }
  return l;
}

Range shard_range(const FlatLayout& layout, int rank) {
  QAD_CHECK(rank >= 0 && rank < layout.world_size, "rank {} outside [0, {})", rank, layout.world_size);
  const int64_t s = layout.shard_size();
  return {rank * s, (rank + 1) * s};
}

std::vector<Piece> pieces_in(const FlatLayout& layout, Range r) {
  std::vector<Piece> out;
  for (const auto& b : layout.buckets) {
    if (b.end <= r.begin || b.begin >= r.end) continue;
    for (int p : b.params) {
      const int64_t lo = std::max(r.begin, layout.offset[p]);
      const int64_t hi = std::min(r.end, layout.offset[p] + layout.numel[p]);
      if (hi > lo) out.push_back({p, lo - layout.offset[p], lo, hi - lo});
    }
  }
  return out;
}

}  // namespace qad::dist
