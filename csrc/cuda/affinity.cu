// CUDA kernel of wsseg_fast::local_affinity: one thread per (image, offset,
// pixel), running the core of wsseg/affinity.h.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "wsseg/affinity.h"
#include "wsseg/random_walk_host.h"

namespace wsseg {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void local_affinity_kernel(const T* __restrict__ f, T* __restrict__ out, const int* __restrict__ dy,
                                      const int* __restrict__ dx, int64_t total, int64_t depth, int height, int width,
                                      int n_offsets, bool squared) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const int64_t hw = int64_t(height) * width;
  const int64_t p = idx % hw, k = (idx / hw) % n_offsets, b = idx / (hw * n_offsets);
  const int y = int(p / width), x = int(p % width);
  int ny, nx;
  out[idx] = neighbor_inside(y, x, dy[k], dx[k], height, width, &ny, &nx)
                 ? local_affinity_at(f + b * depth * hw, depth, hw, p, int64_t(ny) * width + nx, squared)
                 : T(0);
}

at::Tensor local_affinity_cuda(const at::Tensor& features_in, int64_t radius, bool squared) {
  check_float4d(features_in, "local_affinity", "features");
  TORCH_CHECK_VALUE(radius >= 1 && radius < 1024, "local_affinity: `radius` must be in [1, 1024), got ", radius);
  TORCH_CHECK_VALUE(features_in.size(1) > 0, "local_affinity: `features` needs at least one channel");
  const c10::cuda::CUDAGuard guard(features_in.device());
  const at::Tensor features = features_in.contiguous();
  const Disc disc(static_cast<int>(radius));
  at::Tensor out = at::empty({features.size(0), disc.size(), features.size(2), features.size(3)}, features.options());
  if (out.numel() == 0) return out;
  const at::Tensor table = disc_table(disc, features.device());
  const int* dy = table.data_ptr<int>();
  const int64_t total = out.numel();
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "local_affinity_cuda", [&] {
    local_affinity_kernel<scalar_t><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        features.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), dy, dy + disc.size(), total, features.size(1),
        int(features.size(2)), int(features.size(3)), disc.size(), squared);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(wsseg_fast, CUDA, m) {
  m.impl("local_affinity", &local_affinity_cuda);
}

}  // namespace wsseg
