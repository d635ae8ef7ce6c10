# Qwen3-30B-A3B-shaped MoE (random BF16 weights, as many layers as fit one H200): forward tokens/s and the QAD
# step against transformers (tools/bench_moe_hf.py) in the same run.
add_executable(bench_moe ${CMAKE_CURRENT_LIST_DIR}/moe_bench.cc)
target_link_libraries(bench_moe PRIVATE qad_train qad_warnings)
