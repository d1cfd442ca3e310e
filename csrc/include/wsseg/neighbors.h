// Neighbourhood stencils for the local ops, host+device. The order matches
// wsseg_fast.ops.neighbors.neighbor_offsets (dy ascending, then dx); the tests
// check that the two agree.
#pragma once

#include "wsseg/common.h"

namespace wsseg {

// Number of offsets (dy, dx) with dy^2 + dx^2 < radius^2.
WSSEG_HD int disc_size(int radius) {
  int k = 0;
  for (int dy = -radius + 1; dy < radius; ++dy)
    for (int dx = -radius + 1; dx < radius; ++dx) k += dy * dy + dx * dx < radius * radius;
  return k;
}

// Fills dy[K], dx[K] in the canonical order; returns K.
WSSEG_HD int disc_offsets(int radius, int* dy, int* dx) {
  int k = 0;
  for (int y = -radius + 1; y < radius; ++y) {
    for (int x = -radius + 1; x < radius; ++x) {
      if (y * y + x * x < radius * radius) {
        dy[k] = y;
        dx[k] = x;
        ++k;
      }
    }
  }
  return k;
}

// The neighbour of (y, x) at offset (dy, dx) when it lies inside H x W.
WSSEG_HD bool neighbor_inside(int y, int x, int dy, int dx, int height, int width, int* ny, int* nx) {
  *ny = y + dy;
  *nx = x + dx;
  return *ny >= 0 && *ny < height && *nx >= 0 && *nx < width;
}

}  // namespace wsseg
