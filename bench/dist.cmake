# Multi-GPU experiment helper: writes a random Qwen3-shaped HF model directory for scripts/experiment_multigpu.sh.
add_executable(make_random_model ${CMAKE_CURRENT_LIST_DIR}/make_random_model.cc)
target_link_libraries(make_random_model PRIVATE qad_model qad_fmt qad_warnings)
