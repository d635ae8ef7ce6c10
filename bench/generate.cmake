# Generation throughput (continuous batching) against transformers generate in the same run, and the
# 1000-item arith eval time (GPU).
add_executable(bench_generate ${CMAKE_CURRENT_LIST_DIR}/generate_bench.cc)
target_link_libraries(bench_generate PRIVATE qad_eval qad_model nlohmann_json::nlohmann_json qad_warnings)
