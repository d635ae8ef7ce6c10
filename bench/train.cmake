# QAD / CKA-QAD training-step throughput, MFU and peak memory on Qwen3-0.6B / 1.7B-shaped random models (GPU).
add_executable(bench_train ${CMAKE_CURRENT_LIST_DIR}/train_bench.cc ${CMAKE_CURRENT_LIST_DIR}/kernel_profile.cc)
target_link_libraries(bench_train PRIVATE qad_train qad_experiment qad_warnings)
