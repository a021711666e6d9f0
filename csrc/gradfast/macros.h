// Portability macros shared by the host compiler and nvcc.
#pragma once

#if defined(__CUDACC__)
#define GF_HD __host__ __device__ __forceinline__
#else
#define GF_HD inline
#endif
