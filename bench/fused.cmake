# Fused elementwise kernels (src/fused) against the unfused LibTorch op sequences, per op and per decoder layer.
add_executable(bench_fused ${CMAKE_CURRENT_LIST_DIR}/fused_bench.cc)
target_link_libraries(bench_fused PRIVATE qad_fused qad_model qad_quant qad_warnings)
