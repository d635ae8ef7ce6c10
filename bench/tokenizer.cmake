# Tokenizer encode throughput (single thread) on the shared corpus, against HF tokenizers when asked (--hf).
add_executable(bench_tokenizer ${CMAKE_CURRENT_SOURCE_DIR}/tokenizer_bench.cc)
target_link_libraries(bench_tokenizer PRIVATE qad_tokenizer nlohmann_json::nlohmann_json qad_warnings)
target_compile_definitions(bench_tokenizer PRIVATE QAD_SOURCE_DIR="${PROJECT_SOURCE_DIR}" QAD_BINARY_DIR="${PROJECT_BINARY_DIR}")
