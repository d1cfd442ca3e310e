// CUDA kernel of wsseg_fast::slic, the steps of wsseg_fast/reference/slic.py
// on the whole batch at once (every image has the same grid):
//   Lab conversion       one thread per pixel (wsseg/slic.h, as the CPU kernel)
//   assignment           one thread per pixel, nearest live centre of the 3x3
//                        cells around its own, in (dy, dx) order with a strict <
//   centre update        one block per (image, centre): a segmented reduction
//                        over the 3x3 cells around the centre's cell -- the only
//                        pixels that can hold its label -- in float64, without
//                        atomics, so the result does not depend on scheduling
// All max_iter rounds run without reading anything back: when no label changes
// a round recomputes the same centres and labels, so the reference's early stop
// changes nothing but time. Connectivity (a serial breadth-first pass) and the
// raster-order renumbering then run on the host (wsseg/slic_host.h, the CPU
// kernel's code) after one copy of labels, Lab planes and centres; the labels
// are copied back. That copy synchronises the stream.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "wsseg/slic.h"
#include "wsseg/slic_host.h"

namespace wsseg {
namespace {

using slic::Grid;

constexpr int kThreads = 256;

__device__ __forceinline__ float unit_rgb(uint8_t v) {
  return float(v) / 255.0f;
}
__device__ __forceinline__ float unit_rgb(float v) {
  return v;
}

// images [B, 3, HW] -> lab [B, 3, HW].
template <typename T>
__global__ void lab_kernel(const T* __restrict__ images, float* __restrict__ lab, int64_t hw, int64_t total) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const int64_t b = idx / hw, p = idx % hw;
  const T* im = images + b * 3 * hw + p;
  float* out = lab + b * 3 * hw + p;
  slic::linear_rgb_to_lab(slic::srgb_to_linear(unit_rgb(im[0])), slic::srgb_to_linear(unit_rgb(im[hw])),
                          slic::srgb_to_linear(unit_rgb(im[2 * hw])), out, out + hw, out + 2 * hw);
}

// Every valid pixel starts in its own grid cell.
__global__ void init_labels_kernel(const bool* __restrict__ mask, int32_t* __restrict__ labels, int height, int width,
                                   int ny, int nx, int64_t total) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const int64_t p = idx % (int64_t(height) * width);
  const int y = int(p / width), x = int(p % width);
  labels[idx] = (mask == nullptr || mask[idx]) ? slic::cell_of(y, height, ny) * nx + slic::cell_of(x, width, nx) : -1;
}

// Sum of one double over the block; the result is valid in thread 0.
__device__ double block_sum(double v, double* warp_buf) {
#pragma unroll
  for (int delta = 16; delta > 0; delta >>= 1) v += __shfl_down_sync(0xffffffffu, v, delta);
  __syncthreads();  // warp_buf may still be read from the previous call
  if (threadIdx.x % 32 == 0) warp_buf[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kThreads / 32; ++w) v += warp_buf[w];
  }
  return v;
}

// Centre k of image b = mean (L, a, b, y, x) of its pixels, summed in float64.
__global__ void __launch_bounds__(kThreads)
    update_kernel(const float* __restrict__ lab, const int32_t* __restrict__ labels, float* __restrict__ centre,
                  uint8_t* __restrict__ alive, int height, int width, int ny, int nx) {
  __shared__ double warp_buf[kThreads / 32];
  const int cells = ny * nx;
  const int64_t b = blockIdx.x / cells;
  const int k = int(blockIdx.x % cells);
  const int cy = k / nx, cx = k % nx;
  const int64_t hw = int64_t(height) * width;
  const int y0 = int(slic::cell_start(max(cy - 1, 0), height, ny));
  const int y1 = int(slic::cell_start(min(cy + 2, ny), height, ny));
  const int x0 = int(slic::cell_start(max(cx - 1, 0), width, nx));
  const int x1 = int(slic::cell_start(min(cx + 2, nx), width, nx));
  const int span = x1 - x0;
  const int64_t window = int64_t(y1 - y0) * span;
  const int32_t* lbl = labels + b * hw;
  const float* im = lab + b * 3 * hw;
  double s[6] = {0, 0, 0, 0, 0, 0};
  for (int64_t i = threadIdx.x; i < window; i += kThreads) {
    const int y = y0 + int(i / span), x = x0 + int(i % span);
    const int64_t p = int64_t(y) * width + x;
    if (lbl[p] != k) continue;
    s[0] += im[p];
    s[1] += im[hw + p];
    s[2] += im[2 * hw + p];
    s[3] += double(y);
    s[4] += double(x);
    s[5] += 1.0;
  }
  for (int j = 0; j < 6; ++j) s[j] = block_sum(s[j], warp_buf);
  if (threadIdx.x == 0) {
    const double n = fmax(s[5], 1.0);
    float* c = centre + (b * cells + k) * 5;
    for (int j = 0; j < 5; ++j) c[j] = float(s[j] / n);
    alive[b * cells + k] = s[5] > 0;
  }
}

// Every valid pixel joins the nearest live centre of the 3x3 cells around its own.
__global__ void assign_kernel(const float* __restrict__ lab, const float* __restrict__ centre,
                              const uint8_t* __restrict__ alive, const bool* __restrict__ mask,
                              int32_t* __restrict__ labels, int height, int width, int ny, int nx, float weight,
                              int64_t total) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  if (mask != nullptr && !mask[idx]) {
    labels[idx] = -1;
    return;
  }
  const int64_t hw = int64_t(height) * width;
  const int64_t b = idx / hw, p = idx % hw;
  const int y = int(p / width), x = int(p % width);
  const float* im = lab + b * 3 * hw + p;
  const float l = im[0], a = im[hw], bb = im[2 * hw];
  const int cy = slic::cell_of(y, height, ny), cx = slic::cell_of(x, width, nx);
  const int cells = ny * nx;
  const float* cb = centre + b * cells * 5;
  const uint8_t* ab = alive + b * cells;
  float best = INFINITY;
  int32_t arg = -1;
  for (int dy = -1; dy <= 1; ++dy) {
    const int ky = cy + dy;
    if (ky < 0 || ky >= ny) continue;
    for (int dx = -1; dx <= 1; ++dx) {
      const int kx = cx + dx;
      if (kx < 0 || kx >= nx) continue;
      const int k = ky * nx + kx;
      if (!ab[k]) continue;
      const float d = slic::distance(l, a, bb, float(y), float(x), cb + 5 * k, weight);
      if (d < best) {
        best = d;
        arg = k;
      }
    }
  }
  labels[idx] = arg;
}

int64_t blocks_for(int64_t n) {
  return (n + kThreads - 1) / kThreads;
}

at::Tensor slic_cuda(const at::Tensor& images_in, const c10::optional<at::Tensor>& mask_in, int64_t n_segments,
                     double compactness, int64_t max_iter, bool enforce_connectivity, double min_size_factor,
                     double max_size_factor) {
  const at::Tensor mask = slic::check_inputs(images_in, mask_in, n_segments, compactness, max_iter);
  const c10::cuda::CUDAGuard guard(images_in.device());
  const int64_t batch = images_in.size(0), height = images_in.size(2), width = images_in.size(3), hw = height * width;
  at::Tensor out = at::empty({batch, height, width}, images_in.options().dtype(at::kInt));
  if (batch == 0 || hw == 0) return out;
  TORCH_CHECK(hw < (int64_t(1) << 31), "slic: images of more than 2^31 pixels are not supported on CUDA");
  const at::Tensor images = images_in.contiguous();
  const Grid grid(height, width, n_segments, compactness);
  const int cells = grid.cells();
  const int64_t total = batch * hw;
  const auto stream = at::cuda::getCurrentCUDAStream();
  const auto options = images.options();
  at::Tensor lab = at::empty({batch, 3, height, width}, options.dtype(at::kFloat));
  at::Tensor labels = at::empty({batch, height, width}, options.dtype(at::kInt));
  at::Tensor centre = at::empty({batch, cells, 5}, options.dtype(at::kFloat));
  at::Tensor alive = at::empty({batch, cells}, options.dtype(at::kByte));
  const bool* m = mask.defined() ? mask.data_ptr<bool>() : nullptr;
  const int H = int(height), W = int(width);

  if (images.scalar_type() == at::kByte) {
    lab_kernel<uint8_t>
        <<<blocks_for(total), kThreads, 0, stream>>>(images.data_ptr<uint8_t>(), lab.data_ptr<float>(), hw, total);
  } else {
    lab_kernel<float>
        <<<blocks_for(total), kThreads, 0, stream>>>(images.data_ptr<float>(), lab.data_ptr<float>(), hw, total);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  init_labels_kernel<<<blocks_for(total), kThreads, 0, stream>>>(m, labels.data_ptr<int32_t>(), H, W, grid.ny, grid.nx,
                                                                 total);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const auto update = [&] {
    update_kernel<<<batch * cells, kThreads, 0, stream>>>(lab.data_ptr<float>(), labels.data_ptr<int32_t>(),
                                                          centre.data_ptr<float>(), alive.data_ptr<uint8_t>(), H, W,
                                                          grid.ny, grid.nx);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  update();
  for (int64_t it = 0; it < max_iter; ++it) {
    assign_kernel<<<blocks_for(total), kThreads, 0, stream>>>(lab.data_ptr<float>(), centre.data_ptr<float>(),
                                                              alive.data_ptr<uint8_t>(), m, labels.data_ptr<int32_t>(),
                                                              H, W, grid.ny, grid.nx, float(grid.weight), total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    update();
  }

  // Host steps on copies (one synchronisation), then the labels go back to the device.
  const at::Tensor labels_h = labels.cpu(), centre_h = centre.cpu();
  const at::Tensor lab_h = enforce_connectivity ? lab.cpu() : at::Tensor();
  const at::Tensor mask_h = mask.defined() ? mask.cpu() : at::Tensor();
  at::Tensor out_h = at::empty({batch, height, width}, labels_h.options());
  at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int32_t* src = labels_h.data_ptr<int32_t>() + b * hw;
      int32_t* dst = out_h.data_ptr<int32_t>() + b * hw;
      if (enforce_connectivity) {
        const bool* mb = mask_h.defined() ? mask_h.data_ptr<bool>() + b * hw : nullptr;
        int64_t min_size, max_size;
        slic::size_limits(mb == nullptr ? hw : std::count(mb, mb + hw, true), cells, min_size_factor, max_size_factor,
                          &min_size, &max_size);
        slic::connect_components(src, lab_h.data_ptr<float>() + b * 3 * hw, centre_h.data_ptr<float>() + b * cells * 5,
                                 height, width, grid.weight, min_size, max_size, dst);
      } else {
        slic::relabel_in_raster_order(src, hw, cells, dst);
      }
    }
  });
  out.copy_(out_h);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(wsseg_fast, CUDA, m) {
  m.impl("slic", &slic_cuda);
}

}  // namespace wsseg
