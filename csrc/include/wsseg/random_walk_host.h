// Host-side glue shared by the CPU and CUDA kernels of local_affinity and
// random_walk: input checks and the checkpointed backward, written once over
// the backend's step functions.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <tuple>
#include <utility>
#include <vector>

#include "wsseg/neighbors.h"

namespace wsseg {

inline void check_float4d(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 4, op, ": `", name, "` must be 4-D, got ", t.dim(), " dimensions");
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": `", name,
                   "` must be float32 or float64, got ", t.scalar_type());
}

inline void check_walk_input(const at::Tensor& x, const at::Tensor& w, int64_t radius, int64_t steps) {
  check_float4d(x, "random_walk", "x");
  check_float4d(w, "random_walk", "weights");
  TORCH_CHECK_VALUE(radius >= 1 && radius < 1024, "random_walk: `radius` must be in [1, 1024), got ", radius);
  TORCH_CHECK_VALUE(steps >= 0, "random_walk: `steps` must be >= 0, got ", steps);
  TORCH_CHECK_TYPE(x.scalar_type() == w.scalar_type(), "random_walk: `x` and `weights` must share a dtype");
  const int64_t k = disc_size(int(radius));
  TORCH_CHECK_VALUE(w.size(0) == x.size(0) && w.size(1) == k && w.size(2) == x.size(2) && w.size(3) == x.size(3),
                    "random_walk: `weights` must have shape [B, K, H, W] with K = ", k, " for radius ", radius,
                    ", got ", w.sizes(), " for x ", x.sizes());
}

// Offsets of the disc as two int vectors (dy, dx).
struct Disc {
  std::vector<int> dy, dx;
  explicit Disc(int radius) : dy(disc_size(radius)), dx(disc_size(radius)) {
    disc_offsets(radius, dy.data(), dx.data());
  }
  int size() const { return int(dy.size()); }
};

// The disc as one int32 tensor on `device` (for the CUDA kernels): dy in [0, K), dx in [K, 2K).
inline at::Tensor disc_table(const Disc& disc, const at::Device& device) {
  std::vector<int> values(disc.dy);
  values.insert(values.end(), disc.dx.begin(), disc.dx.end());
  return at::tensor(values, at::TensorOptions().dtype(at::kInt)).to(device);
}

// Applies `steps` forward steps: step(in, out) writes one step of `in` into `out`.
// Buffers start zeroed: the CPU kernel's padded planes rely on a zero halo.
template <typename Step>
at::Tensor walk_steps(const at::Tensor& x, int64_t steps, Step step) {
  if (steps == 0) return x.clone();
  at::Tensor cur = at::zeros_like(x), nxt = at::zeros_like(x);
  step(x, cur);
  for (int64_t s = 1; s < steps; ++s) {
    step(cur, nxt);
    std::swap(cur, nxt);
  }
  return cur;
}

// Gradients of random_walk with respect to x and the weights. The walk is
// recomputed from x: every S-th state (S = ceil(sqrt(steps))) is kept as a
// checkpoint, and one segment of S states is rebuilt at a time, so memory is
// about 2 sqrt(steps) states instead of `steps`. back_step(g, state, g_out,
// grad_w) writes W^T g into g_out and adds the weight gradient of the step
// that was applied to `state`.
template <typename Step, typename BackStep>
std::tuple<at::Tensor, at::Tensor> walk_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& w,
                                                 int64_t steps, Step step, BackStep back_step) {
  at::Tensor grad_w = at::zeros_like(w);
  if (steps == 0 || x.numel() == 0 || w.numel() == 0) return {grad.clone(), grad_w};
  const int64_t interval = int64_t(std::ceil(std::sqrt(double(steps)) - 1e-9));
  std::vector<at::Tensor> checkpoints{x};
  for (int64_t t = interval; t < steps; t += interval)
    checkpoints.push_back(walk_steps(checkpoints.back(), interval, step));
  std::vector<at::Tensor> states(interval);
  for (int64_t i = 1; i < interval; ++i) states[i] = at::zeros_like(x);
  at::Tensor g = grad.clone(), g_next = at::zeros_like(grad);
  for (int64_t seg = int64_t(checkpoints.size()) - 1; seg >= 0; --seg) {
    const int64_t n = std::min(interval, steps - seg * interval);
    states[0] = checkpoints[seg];
    for (int64_t i = 1; i < n; ++i) step(states[i - 1], states[i]);
    for (int64_t i = n - 1; i >= 0; --i) {
      back_step(g, states[i], g_next, grad_w);
      std::swap(g, g_next);
    }
  }
  return {g, grad_w};
}

}  // namespace wsseg
