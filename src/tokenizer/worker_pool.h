// Process-wide worker threads for Tokenizer::encode_batch. They persist between calls so that their
// per-thread pre-token caches stay warm (a fresh thread starts with an empty cache).
#pragma once
#include <cstddef>
#include <functional>

namespace qad::tokenizer {

// Runs `fn` on `n` threads at once (the caller plus n-1 pool workers) and returns when all have finished.
// `fn` must not throw. Safe to call from several threads concurrently; not from inside `fn`.
void run_on_workers(size_t n, const std::function<void()>& fn);

}  // namespace qad::tokenizer
