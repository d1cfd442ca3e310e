// SLIC steps that run on the host for both the CPU and the CUDA kernel: the
// connectivity enforcement (one breadth-first pass in raster order, linear
// time, inherently serial) and the raster-order renumbering without it. The
// CUDA kernel copies its labels, Lab planes and centres to the host for these.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include <ATen/ATen.h>

#include "wsseg/slic.h"

namespace wsseg {
namespace slic {

// The checks both kernels make; returns the mask, contiguous (undefined when absent).
inline at::Tensor check_inputs(const at::Tensor& images, const c10::optional<at::Tensor>& mask_in, int64_t n_segments,
                               double compactness, int64_t max_iter) {
  TORCH_CHECK(images.dim() == 4 && images.size(1) == 3, "slic: images must be [B, 3, H, W], got ", images.sizes());
  TORCH_CHECK_TYPE(images.scalar_type() == at::kByte || images.scalar_type() == at::kFloat,
                   "slic: images must be uint8 or float32, got ", images.scalar_type());
  TORCH_CHECK(n_segments >= 1, "slic: n_segments must be >= 1, got ", n_segments);
  TORCH_CHECK(compactness > 0, "slic: compactness must be > 0, got ", compactness);
  TORCH_CHECK(max_iter >= 0, "slic: max_iter must be >= 0, got ", max_iter);
  if (!mask_in.has_value()) return at::Tensor();
  const at::Tensor mask = mask_in->contiguous();
  TORCH_CHECK_TYPE(mask.scalar_type() == at::kBool, "slic: mask must be bool, got ", mask.scalar_type());
  TORCH_CHECK(mask.dim() == 3 && mask.size(0) == images.size(0) && mask.size(1) == images.size(2) &&
                  mask.size(2) == images.size(3),
              "slic: mask must be [B, H, W] like images, got ", mask.sizes());
  TORCH_CHECK(mask.device() == images.device(), "slic: mask is on ", mask.device(), " but images on ",
              images.device());
  return mask;
}

// size_limits() of the reference: factors of the mean segment size (valid pixels / cells).
inline void size_limits(int64_t valid, int cells, double min_size_factor, double max_size_factor, int64_t* min_size,
                        int64_t* max_size) {
  const double size = double(valid) / double(std::max(cells, 1));
  *min_size = int64_t(min_size_factor * size);
  *max_size = std::max<int64_t>(1, int64_t(max_size_factor * size));
}

// Breadth-first components in raster order (up, left, right, down); a component
// reaching max_size is cut there; one smaller than min_size joins the labelled
// neighbour whose centre is nearest to its mean (ties: the lowest label).
// labels: centre index per pixel (-1 outside the mask); lab: [3, H*W] planar;
// centre: [cells, 5] (L, a, b, y, x). Writes labels 0..K-1 (-1 outside) to out.
inline void connect_components(const int32_t* labels, const float* lab, const float* centre, int64_t height,
                               int64_t width, double weight, int64_t min_size, int64_t max_size, int32_t* out) {
  const int64_t hw = height * width;
  // out[] starts as -(centre + 2) for a pixel still to visit (-1 outside the mask), so one
  // load tells both "same label" and "not visited yet".
  for (int64_t p = 0; p < hw; ++p) out[p] = labels[p] < 0 ? -1 : -(labels[p] + 2);
  struct Pixel {
    int32_t y, x;  // kept apart: no division per visited pixel
  };
  std::vector<Pixel> component;  // doubles as the queue
  std::vector<int32_t> adjacent;
  std::vector<int32_t> source;  // centre index of each final label
  component.reserve(std::min<int64_t>(hw, max_size + 1));
  int32_t next = 0;
  for (int64_t start = 0; start < hw; ++start) {
    if (out[start] >= -1) continue;  // visited, or outside the mask
    const int32_t label = labels[start];
    const int32_t todo = out[start];
    component.clear();
    adjacent.clear();
    out[start] = next;
    component.push_back({int32_t(start / width), int32_t(start % width)});
    for (size_t head = 0; head < component.size() && int64_t(component.size()) < max_size; ++head) {
      const Pixel px = component[head];
      const int64_t p = int64_t(px.y) * width + px.x;
      const int64_t nbr[4] = {p - width, p - 1, p + 1, p + width};
      const Pixel at[4] = {{px.y - 1, px.x}, {px.y, px.x - 1}, {px.y, px.x + 1}, {px.y + 1, px.x}};
      const bool ok[4] = {px.y > 0, px.x > 0, px.x < width - 1, px.y < height - 1};
      for (int i = 0; i < 4; ++i) {
        if (!ok[i]) continue;
        const int64_t q = nbr[i];
        const int32_t o = out[q];
        if (o == todo) {
          out[q] = next;
          component.push_back(at[i]);
          if (int64_t(component.size()) >= max_size) break;
        } else if (o >= 0 && o != next && (adjacent.empty() || adjacent.back() != o)) {
          adjacent.push_back(o);
        }
      }
    }
    if (int64_t(component.size()) < min_size && !adjacent.empty()) {
      double mean[5] = {0, 0, 0, 0, 0};
      for (const Pixel& px : component) {
        const int64_t p = int64_t(px.y) * width + px.x;
        mean[0] += lab[p];
        mean[1] += lab[hw + p];
        mean[2] += lab[2 * hw + p];
        mean[3] += double(px.y);
        mean[4] += double(px.x);
      }
      for (double& m : mean) m /= double(component.size());
      std::sort(adjacent.begin(), adjacent.end());
      int32_t best = -1;
      double best_d = std::numeric_limits<double>::infinity();
      for (size_t i = 0; i < adjacent.size(); ++i) {
        if (i > 0 && adjacent[i] == adjacent[i - 1]) continue;
        const float* c = centre + 5 * source[adjacent[i]];
        double d2[5];
        for (int j = 0; j < 5; ++j) d2[j] = (double(c[j]) - mean[j]) * (double(c[j]) - mean[j]);
        const double d = (d2[0] + d2[1] + d2[2]) + weight * (d2[3] + d2[4]);
        if (d < best_d) {
          best_d = d;
          best = adjacent[i];
        }
      }
      for (const Pixel& px : component) out[int64_t(px.y) * width + px.x] = best;
    } else {
      source.push_back(label);
      ++next;
    }
  }
}

// Without connectivity: centre indices renumbered by the raster order of their first pixel.
inline void relabel_in_raster_order(const int32_t* labels, int64_t hw, int cells, int32_t* out) {
  std::vector<int32_t> id(cells, -1);
  int32_t next = 0;
  for (int64_t p = 0; p < hw; ++p) {
    const int32_t k = labels[p];
    if (k < 0) {
      out[p] = -1;
      continue;
    }
    if (id[k] < 0) id[k] = next++;
    out[p] = id[k];
  }
}

}  // namespace slic
}  // namespace wsseg
