# Loss benchmarks: CKA loss (fwd+bwd) against a BF16 matmul of the same hidden size; chunked KL against the
# naive FP32 KL. CPU here, CUDA where LibTorch has it.
add_executable(bench_loss ${CMAKE_CURRENT_LIST_DIR}/loss_bench.cc)
target_link_libraries(bench_loss PRIVATE qad_loss qad_warnings)
