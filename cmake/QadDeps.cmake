# Third-party libraries: all from the distribution (Debian 12 here, Ubuntu 24.04 on the GPU machine);
# nothing is downloaded at build time.
find_package(nlohmann_json 3.10 REQUIRED)
find_package(CLI11 REQUIRED)
find_package(fmt REQUIRED)
find_package(yaml-cpp REQUIRED)
find_package(zstd QUIET)
find_package(Threads REQUIRED)
if(QAD_BUILD_TESTS)
  find_package(GTest REQUIRED)
  include(GoogleTest)
endif()
if(QAD_BUILD_BENCH)
  find_package(benchmark QUIET)
endif()

# fmt header-only: LibTorch 2.x ships its own fmt headers (v12) on its include path, which shadow the
# system's (v9); compiled against them, code must not link the system's libfmt. Header-only mode works
# with whichever fmt headers a file sees. Link qad_fmt, never fmt::fmt.
add_library(qad_fmt INTERFACE)
target_link_libraries(qad_fmt INTERFACE fmt::fmt-header-only)

# yaml-cpp's exported target name differs between 0.7 (yaml-cpp) and 0.8 (yaml-cpp::yaml-cpp).
if(TARGET yaml-cpp::yaml-cpp)
  set(QAD_YAML_TARGET yaml-cpp::yaml-cpp)
else()
  set(QAD_YAML_TARGET yaml-cpp)
endif()
if(TARGET zstd::libzstd_shared)
  set(QAD_ZSTD_TARGET zstd::libzstd_shared)
elseif(TARGET zstd::libzstd_static)
  set(QAD_ZSTD_TARGET zstd::libzstd_static)
endif()
