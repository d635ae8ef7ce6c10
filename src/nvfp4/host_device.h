// QAD_HD marks scalar functions that the CPU reference and the CUDA kernels share, so the NVFP4
// semantics are written once. Only plain arithmetic lives behind it: no torch, no std containers.
#pragma once
#if defined(__CUDACC__)
#define QAD_HD __host__ __device__ __forceinline__
#else
#define QAD_HD inline
#endif
