# Data pipeline throughput: prepare (threads 1 vs all) against plain line reading, and the loader against
# a copy of the same bytes. Uses the tests' byte-level encoder (the real tokenizer lives elsewhere).
add_executable(bench_data ${CMAKE_CURRENT_LIST_DIR}/data_bench.cc)
target_include_directories(bench_data PRIVATE ${PROJECT_SOURCE_DIR}/tests/data)
target_link_libraries(bench_data PRIVATE qad_data qad_warnings)
