# Forward throughput of a Qwen3-0.6B-shaped decoder (random BF16 weights) against transformers, same run.
add_executable(bench_model ${CMAKE_CURRENT_LIST_DIR}/model_bench.cc)
target_link_libraries(bench_model PRIVATE qad_model qad_warnings)
