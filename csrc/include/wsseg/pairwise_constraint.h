// The pairwise colour prior (BoxInst): neighbouring pixels of similar colour
// take the same label. Host+device.
#pragma once

#include <cmath>

#include "wsseg/common.h"

namespace wsseg {
namespace pairwise {

// Colour similarity exp(-||lab_a - lab_b|| / 2) >= threshold, computed in
// float32 as the PyTorch reference does.
WSSEG_HD bool similar(const float* lab, int64_t plane, int64_t a, int64_t b, float threshold) {
  float d2 = 0.f;
  for (int ch = 0; ch < 3; ++ch) {
    const float d = lab[ch * plane + a] - lab[ch * plane + b];
    d2 += d * d;
  }
  return expf(-sqrtf(d2) * 0.5f) >= threshold;
}

// Truth that two pixels take the same label: p q + (1 - p)(1 - q), and d/dp.
template <typename T>
WSSEG_HD T same_label(T p, T q) {
  return p * q + (T(1) - p) * (T(1) - q);
}

template <typename T>
WSSEG_HD T same_label_grad(T q) {
  return T(2) * q - T(1);
}

}  // namespace pairwise
}  // namespace wsseg
