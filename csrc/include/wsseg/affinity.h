// Local affinity core, host+device: the affinity of pixel p to its neighbour q
// over D feature planes of hw pixels each (wsseg_fast.ops.local_affinity).
#pragma once

#include <math.h>
#include <stdint.h>

#include "wsseg/common.h"
#include "wsseg/neighbors.h"

namespace wsseg {

WSSEG_HD float exp_of(float v) {
  return expf(v);
}
WSSEG_HD double exp_of(double v) {
  return exp(v);
}

// exp(-mean_d |f_d(p) - f_d(q)|), or the squared difference when `squared`.
template <typename T>
WSSEG_HD T local_affinity_at(const T* f, int64_t depth, int64_t hw, int64_t p, int64_t q, bool squared) {
  T acc = 0;
  for (int64_t d = 0; d < depth; ++d) {
    const T diff = f[d * hw + p] - f[d * hw + q];
    acc += squared ? diff * diff : (diff < 0 ? -diff : diff);
  }
  return exp_of(-acc / T(depth));
}

}  // namespace wsseg
