// Random walk core, host+device (wsseg_fast.ops.random_walk). The walk takes
// the row-normalised transition W[k, i] (layout [K, H, W] per image, k over
// the disc of neighbors.h) and applies, per channel,
//   forward:    out(i) = sum_k W[k, i]         x(i + off_k)
//   transposed: out(i) = sum_k W[K-1-k, i+off_k] x(i + off_k)   (W^T: the disc
//               is symmetric and its reversed order is its negation)
// and the gradient of the weights, G[k, i] += sum_c g(c, i) y(c, i + off_k).
#pragma once

#include <stdint.h>

#include "wsseg/common.h"
#include "wsseg/neighbors.h"

namespace wsseg {

// The pixels [x0, x1) of a row whose neighbour at horizontal offset dx is inside a row of `width`.
WSSEG_HD void neighbor_span(int dx, int width, int* x0, int* x1) {
  *x0 = dx < 0 ? -dx : 0;
  *x1 = dx > 0 ? width - dx : width;
}

// One step at pixel (y, x) of one channel plane `src` (hw pixels); `w` is the
// image's [K, H, W] transition.
template <typename T, bool kTranspose>
WSSEG_HD T walk_at(const T* src, const T* w, const int* dy, const int* dx, int n_offsets, int y, int x, int height,
                   int width) {
  const int64_t hw = int64_t(height) * width;
  T acc = 0;
  for (int k = 0; k < n_offsets; ++k) {
    int ny, nx;
    if (!neighbor_inside(y, x, dy[k], dx[k], height, width, &ny, &nx)) continue;
    const int64_t q = int64_t(ny) * width + nx;
    const T weight = kTranspose ? w[(n_offsets - 1 - k) * hw + q] : w[k * hw + int64_t(y) * width + x];
    acc += weight * src[q];
  }
  return acc;
}

// sum_c g(c, p) y(c, p + off) for one pixel p and one offset, neighbour q inside.
template <typename T>
WSSEG_HD T weight_grad_at(const T* g, const T* y, int64_t channels, int64_t hw, int64_t p, int64_t q) {
  T acc = 0;
  for (int64_t c = 0; c < channels; ++c) acc += g[c * hw + p] * y[c * hw + q];
  return acc;
}

}  // namespace wsseg
