// CUDA kernels of wsseg_fast::random_walk and its backward: one launch per
// step, one thread per (image, channel, pixel) running walk_at of
// wsseg/random_walk.h; the checkpointed backward loop is the host code of
// wsseg/random_walk_host.h, shared with the CPU kernel.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "wsseg/random_walk.h"
#include "wsseg/random_walk_host.h"

namespace wsseg {
namespace {

constexpr int kThreads = 256;

struct DeviceDisc {
  at::Tensor table;  // dy in [0, K), dx in [K, 2K)
  int n;
  DeviceDisc(const Disc& disc, const at::Device& device) : table(disc_table(disc, device)), n(disc.size()) {}
  const int* dy() const { return table.data_ptr<int>(); }
  const int* dx() const { return table.data_ptr<int>() + n; }
};

template <typename T, bool kTranspose>
__global__ void step_kernel(const T* __restrict__ w, const T* __restrict__ in, T* __restrict__ out,
                            const int* __restrict__ dy, const int* __restrict__ dx, int64_t total, int64_t channels,
                            int height, int width, int n_offsets) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const int64_t hw = int64_t(height) * width;
  const int64_t p = idx % hw, plane = idx / hw, b = plane / channels;
  out[idx] = walk_at<T, kTranspose>(in + plane * hw, w + b * n_offsets * hw, dy, dx, n_offsets, int(p / width),
                                    int(p % width), height, width);
}

template <typename T>
__global__ void weight_grad_kernel(const T* __restrict__ g, const T* __restrict__ state, T* __restrict__ grad_w,
                                   const int* __restrict__ dy, const int* __restrict__ dx, int64_t total,
                                   int64_t channels, int height, int width, int n_offsets) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const int64_t hw = int64_t(height) * width;
  const int64_t p = idx % hw, k = (idx / hw) % n_offsets, b = idx / (hw * n_offsets);
  int ny, nx;
  if (!neighbor_inside(int(p / width), int(p % width), dy[k], dx[k], height, width, &ny, &nx)) return;
  grad_w[idx] +=
      weight_grad_at(g + b * channels * hw, state + b * channels * hw, channels, hw, p, int64_t(ny) * width + nx);
}

inline int64_t blocks_for(int64_t total) {
  return (total + kThreads - 1) / kThreads;
}

template <typename T, bool kTranspose>
void step(const DeviceDisc& disc, const at::Tensor& w, const at::Tensor& in, at::Tensor& out) {
  const int64_t total = in.numel();
  step_kernel<T, kTranspose><<<blocks_for(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      w.data_ptr<T>(), in.data_ptr<T>(), out.data_ptr<T>(), disc.dy(), disc.dx(), total, in.size(1), int(in.size(2)),
      int(in.size(3)), disc.n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor random_walk_cuda(const at::Tensor& x_in, const at::Tensor& w_in, int64_t radius, int64_t steps) {
  check_walk_input(x_in, w_in, radius, steps);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), w = w_in.contiguous();
  if (x.numel() == 0) return x.clone();
  const DeviceDisc disc(Disc(static_cast<int>(radius)), x.device());
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "random_walk_cuda", [&] {
    out = walk_steps(x, steps, [&](const at::Tensor& in, at::Tensor& o) {
      step<scalar_t, false>(disc, w, in, o);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> random_walk_backward_cuda(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                             const at::Tensor& w_in, int64_t radius, int64_t steps) {
  check_walk_input(x_in, w_in, radius, steps);
  TORCH_CHECK_VALUE(grad_in.sizes() == x_in.sizes() && grad_in.scalar_type() == x_in.scalar_type(),
                    "random_walk_backward: `grad` must match `x`");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor grad = grad_in.contiguous(), x = x_in.contiguous(), w = w_in.contiguous();
  const DeviceDisc disc(Disc(static_cast<int>(radius)), x.device());
  std::tuple<at::Tensor, at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "random_walk_backward_cuda", [&] {
    out = walk_backward(
        grad, x, w, steps,
        [&](const at::Tensor& in, at::Tensor& o) {
          step<scalar_t, false>(disc, w, in, o);
        },
        [&](const at::Tensor& g, const at::Tensor& state, at::Tensor& g_out, at::Tensor& grad_w) {
          const int64_t total = grad_w.numel();
          weight_grad_kernel<scalar_t><<<blocks_for(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
              g.data_ptr<scalar_t>(), state.data_ptr<scalar_t>(), grad_w.data_ptr<scalar_t>(), disc.dy(), disc.dx(),
              total, g.size(1), int(g.size(2)), int(g.size(3)), disc.n);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          step<scalar_t, true>(disc, w, g, g_out);
        });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(wsseg_fast, CUDA, m) {
  m.impl("random_walk", &random_walk_cuda);
  m.impl("random_walk_backward", &random_walk_backward_cuda);
}

}  // namespace wsseg
