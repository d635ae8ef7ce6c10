# Finds LibTorch and decides whether the CUDA kernels are built.
# Order: an explicit Torch_DIR / CMAKE_PREFIX_PATH; else python3's torch (the GPU machine's LibTorch 2.x
# with CUDA); else the system's (Debian's libtorch-dev 1.13, CPU only).
if(NOT Torch_DIR)
  find_package(Python3 COMPONENTS Interpreter QUIET)
  if(Python3_Interpreter_FOUND)
    execute_process(
      COMMAND ${Python3_EXECUTABLE} -c "import torch; print(torch.utils.cmake_prefix_path)"
      OUTPUT_VARIABLE _qad_py_torch OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE _qad_rc)
    if(_qad_rc EQUAL 0 AND EXISTS "${_qad_py_torch}")
      list(APPEND CMAKE_PREFIX_PATH "${_qad_py_torch}")
      message(STATUS "qad: using python3's LibTorch at ${_qad_py_torch}")
    endif()
  endif()
endif()

# LibTorch's CUDA setup ignores CMAKE_CUDA_ARCHITECTURES and adds -gencode flags to CMAKE_CUDA_FLAGS from
# TORCH_CUDA_ARCH_LIST (without it, it probes the local GPU). So the architectures are named there:
# sm_90a (Hopper) always, sm_100a (Blackwell) when nvcc knows it. Override with TORCH_CUDA_ARCH_LIST.
set(QAD_CUDA_ARCH_LIST "" CACHE STRING "TORCH_CUDA_ARCH_LIST for the qad kernels (default: 9.0a[;10.0a])")

# A CUDA LibTorch ships libc10_cuda next to libtorch; decide before find_package(Torch) so that the CUDA
# language is enabled first (Torch's config expects it for CUDA builds).
set(QAD_HAS_CUDA OFF)
set(_qad_torch_lib_hint "")
foreach(_p IN LISTS CMAKE_PREFIX_PATH Torch_DIR)
  if(EXISTS "${_p}/../../lib/libc10_cuda.so" OR EXISTS "${_p}/../../../lib/libc10_cuda.so")
    set(_qad_torch_lib_hint "${_p}")
  endif()
endforeach()
if(QAD_ENABLE_CUDA AND _qad_torch_lib_hint)
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(CMAKE_CUDA_ARCHITECTURES OFF)  # LibTorch's -gencode flags decide (see above)
    # Share LibTorch's libcudart rather than linking a second, static copy.
    set(CMAKE_CUDA_RUNTIME_LIBRARY Shared)
    enable_language(CUDA)
    set(CMAKE_CUDA_STANDARD 20)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    if(QAD_CUDA_ARCH_LIST)
      set(ENV{TORCH_CUDA_ARCH_LIST} "${QAD_CUDA_ARCH_LIST}")
    elseif(NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
      if(CMAKE_CUDA_COMPILER_VERSION VERSION_GREATER_EQUAL 12.8)
        set(ENV{TORCH_CUDA_ARCH_LIST} "9.0a;10.0a")
      else()
        set(ENV{TORCH_CUDA_ARCH_LIST} "9.0a")
      endif()
    endif()
    message(STATUS "qad: CUDA kernels for TORCH_CUDA_ARCH_LIST=$ENV{TORCH_CUDA_ARCH_LIST}")
    set(QAD_HAS_CUDA ON)
  endif()
endif()

find_package(Torch REQUIRED)
if(QAD_HAS_CUDA)
  find_package(CUDAToolkit REQUIRED)
  # What every library's kernels compile with: line info for profiles, and ptxas warnings for register spills and
  # local memory, so that a kernel that spills, or copies a parameter it indexes at run time to a stack frame,
  # shows in the build log.
  set(QAD_CUDA_OPTIONS -lineinfo --expt-relaxed-constexpr -Xptxas=-warn-spills,-warn-lmem-usage)
endif()

# The CUDA headers (cuda_fp4.h, cuda_fp8.h) are the oracle for E2M1/E4M3 in the CPU tests; they are
# plain host code, so find them even where no kernel is compiled.
find_path(QAD_CUDA_FP_HEADERS cuda_fp4.h
  HINTS ${CUDAToolkit_INCLUDE_DIRS} $ENV{CUDA_HOME}/include /usr/local/cuda/include /usr/include)
