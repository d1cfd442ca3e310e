// Macros shared by the host+device algorithm cores in this folder.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define WSSEG_HD __host__ __device__ __forceinline__
#else
#define WSSEG_HD inline
#endif
