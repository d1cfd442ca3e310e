// Box constraint geometry, host+device: which pixels a box covers and which
// boxes of an image share a class (the OUT truth is computed once per class,
// by its first valid box, the "representative").
#pragma once

#include <cmath>
#include <cstdint>

#include "wsseg/common.h"

namespace wsseg {
namespace box {

struct Bounds {
  int x0, y0, x1, y1;  // pixel (y, x) inside when x0 <= x < x1 and y0 <= y < y1
  WSSEG_HD bool empty() const { return x0 >= x1 || y0 >= y1; }
  WSSEG_HD bool covers_row(int y) const { return y0 <= y && y < y1; }
};

WSSEG_HD int clip(double v, int limit) {
  return v < 0 ? 0 : (v > limit ? limit : int(v));
}

// (x0, y0, x1, y1) in pixels -> floor/ceil bounds clipped to the image.
WSSEG_HD Bounds pixel_bounds(const double* box, int height, int width) {
  return {clip(floor(box[0]), width), clip(floor(box[1]), height), clip(ceil(box[2]), width),
          clip(ceil(box[3]), height)};
}

// A box takes part when it is not padding (label >= 0) and covers a pixel.
WSSEG_HD bool is_valid(const double* boxes, const int64_t* labels, int k, int height, int width) {
  return labels[k] >= 0 && !pixel_bounds(boxes + 4 * k, height, width).empty();
}

// Box k is the first valid box of its class in its image.
WSSEG_HD bool is_representative(const double* boxes, const int64_t* labels, int k, int height, int width) {
  if (!is_valid(boxes, labels, k, height, width)) return false;
  for (int j = 0; j < k; ++j)
    if (labels[j] == labels[k] && is_valid(boxes, labels, j, height, width)) return false;
  return true;
}

}  // namespace box
}  // namespace wsseg
