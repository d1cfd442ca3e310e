// SLIC superpixels, host+device pieces: sRGB -> CIELAB as scikit-image converts,
// the grid of initial centres and the pixel-to-centre distance. The algorithm
// and its exact definition are in wsseg_fast/reference/slic.py; the CPU kernel
// (csrc/cpu/slic.cpp) follows it step by step.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "wsseg/common.h"

namespace wsseg {
namespace slic {

// sRGB component in [0, 1] -> linear RGB.
WSSEG_HD float srgb_to_linear(float c) {
  return c > 0.04045f ? powf((c + 0.055f) / 1.055f, 2.4f) : c / 12.92f;
}

// Bits of a float and back (memcpy: defined behaviour, free after optimisation).
WSSEG_HD int32_t float_bits(float f) {
  int32_t i;
  memcpy(&i, &f, sizeof(i));
  return i;
}
WSSEG_HD float bits_float(int32_t i) {
  float f;
  memcpy(&f, &i, sizeof(f));
  return f;
}

// The CIELAB companding f(t), with a cube root by three Newton steps from a
// bit-level guess (exponent / 3): float-accurate. Written without branches or
// integer division so that a loop over pixels vectorises.
WSSEG_HD float lab_f(float t) {
  float y = bits_float(int32_t(float(float_bits(t)) * (1.0f / 3.0f)) + 709921077);
  y = y - (y * y * y - t) / (3.0f * y * y);
  y = y - (y * y * y - t) / (3.0f * y * y);
  y = y - (y * y * y - t) / (3.0f * y * y);
  const float linear = 7.787f * t + 16.0f / 116.0f;
  const int32_t cube = -int32_t(t > 0.008856f);  // all ones where the cube root applies
  return bits_float((float_bits(y) & cube) | (float_bits(linear) & ~cube));
}

// Linear RGB -> L*a*b* (D65 white, 2 degree observer; scikit-image's matrices).
WSSEG_HD void linear_rgb_to_lab(float r, float g, float b, float* L, float* A, float* B) {
  const float x = (0.412453f * r + 0.357580f * g + 0.180423f * b) / 0.95047f;
  const float y = 0.212671f * r + 0.715160f * g + 0.072169f * b;
  const float z = (0.019334f * r + 0.119193f * g + 0.950227f * b) / 1.08883f;
  const float fx = lab_f(x), fy = lab_f(y), fz = lab_f(z);
  *L = 116.0f * fy - 16.0f;
  *A = 500.0f * (fx - fy);
  *B = 200.0f * (fy - fz);
}

// The initial grid: ny x nx cells of side about sqrt(HW / n_segments), as
// grid_shape() in the reference (round half to even, like Python's round).
struct Grid {
  int ny, nx;
  double weight;  // (compactness / S)^2, S = the larger side of a cell

  Grid(int64_t height, int64_t width, int64_t n_segments, double compactness) {
    const double step = std::sqrt(double(height * width) / double(n_segments));
    ny = int(std::fmin(double(height), std::fmax(1.0, std::nearbyint(double(height) / step))));
    nx = int(std::fmin(double(width), std::fmax(1.0, std::nearbyint(double(width) / step))));
    const double s = std::fmax(double(height) / ny, double(width) / nx);
    weight = (compactness / s) * (compactness / s);
  }
  int cells() const { return ny * nx; }
};

// Cell index along one axis of a pixel coordinate, and the first coordinate of a cell.
WSSEG_HD int cell_of(int64_t coord, int64_t size, int cells) {
  return int(coord * cells / size);
}
WSSEG_HD int64_t cell_start(int cell, int64_t size, int cells) {
  return (int64_t(cell) * size + cells - 1) / cells;
}

// Squared distance of a pixel to a centre (L, a, b, y, x), in the reference's order of operations.
WSSEG_HD float distance(float l, float a, float b, float y, float x, const float* c, float weight) {
  const float dl = l - c[0], da = a - c[1], db = b - c[2], dy = y - c[3], dx = x - c[4];
  const float colour = dl * dl + da * da + db * db;
  const float space = dy * dy + dx * dx;
  return colour + weight * space;
}

}  // namespace slic
}  // namespace wsseg
