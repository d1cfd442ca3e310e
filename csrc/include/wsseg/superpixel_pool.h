// Superpixel pooling, host+device pieces shared by the kernels: the number of
// superpixels of a label map, and the per-superpixel reductions of one plane.
#pragma once

#include <cstdint>

#include "wsseg/common.h"

namespace wsseg {
namespace superpixel {

// Sum of x per label over one plane of n pixels, into sums[K] (zeroed by the
// caller). Four interleaved accumulators break the add-latency chain that
// neighbouring pixels of one superpixel would otherwise form.
template <typename scalar_t, typename label_t>
inline void plane_sums(const scalar_t* x, const label_t* labels, int64_t n, int64_t k, scalar_t* sums4) {
  scalar_t* s0 = sums4;
  scalar_t* s1 = sums4 + k;
  scalar_t* s2 = sums4 + 2 * k;
  scalar_t* s3 = sums4 + 3 * k;
  int64_t p = 0;
  for (; p + 4 <= n; p += 4) {
    const label_t l0 = labels[p], l1 = labels[p + 1], l2 = labels[p + 2], l3 = labels[p + 3];
    if (l0 >= 0) s0[l0] += x[p];
    if (l1 >= 0) s1[l1] += x[p + 1];
    if (l2 >= 0) s2[l2] += x[p + 2];
    if (l3 >= 0) s3[l3] += x[p + 3];
  }
  for (; p < n; ++p)
    if (labels[p] >= 0) s0[labels[p]] += x[p];
  for (int64_t i = 0; i < k; ++i) s0[i] = (s0[i] + s1[i]) + (s2[i] + s3[i]);
}

// Max of x per label and its first position (strict >, so the lowest index wins
// ties); argmax[] starts at -1. Branch-free: random activations would make the
// comparison a coin toss for the branch predictor.
template <typename scalar_t, typename label_t>
inline void plane_max(const scalar_t* x, const label_t* labels, int64_t n, scalar_t* maxes, int64_t* argmax) {
  for (int64_t p = 0; p < n; ++p) {
    const label_t l = labels[p];
    if (l < 0) continue;
    const scalar_t m = maxes[l];
    const int64_t a = argmax[l];
    const bool take = (x[p] > m) | (a < 0);
    maxes[l] = take ? x[p] : m;
    argmax[l] = take ? p : a;
  }
}

}  // namespace superpixel
}  // namespace wsseg
