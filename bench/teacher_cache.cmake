# Top-k KL against the full KL (docs/teacher_cache.md): how far the KL a teacher cache gives is from the full one.
add_executable(bench_topk_kl ${CMAKE_CURRENT_LIST_DIR}/topk_kl_bench.cc)
target_link_libraries(bench_topk_kl PRIVATE qad_train qad_eval qad_warnings)
