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
  TORCH_CHECK(mask.device() == images.device(), "slic: mask is on ", mask.device(), " but images on ", images.device());
  return mask;
}

// size_limits() of the reference: factors of the mean segment size (valid pixels / cells).
inline void size_limits(int64_t valid, int cells, double min_size_factor, double max_size_factor, int64_t* min_size,
                        int64_t* max_size) {
  const double size = double(valid) / double(std::max(cells, 1));
  *min_size = int64_t(min_size_factor * size);
  *max_size = std::max<int64_t>(1, int64_t(max_size_factor * size));
}

// Components in raster order of their first pixel, 4-connected; a component is
// cut when it reaches max_size pixels in breadth-first order (up, left, right,
// down) -- the rest starts a new one; one smaller than min_size joins the
// labelled neighbour whose centre is nearest to its mean (ties: the lowest label).
// labels: centre index per pixel (-1 outside the mask); lab: [3, H*W] planar;
// centre: [cells, 5] (L, a, b, y, x). Writes labels 0..K-1 (-1 outside) to out.
//
// A component is first traced by span filling (runs of a row at a time, which
// reads memory in order and branches predictably); only one that reaches
// max_size, where the breadth-first order decides where it is cut, is undone and
// traced again breadth-first. The pixels, and so the result, are the same.
class Components {
 public:
  Components(const int32_t* labels, const float* lab, const float* centre, int64_t height, int64_t width, double weight,
             int64_t min_size, int64_t max_size, int32_t* out)
      : labels_(labels),
        lab_(lab),
        centre_(centre),
        height_(height),
        width_(width),
        hw_(height * width),
        weight_(weight),
        min_size_(min_size),
        max_size_(max_size),
        out_(out) {}

  void run() {
    // out[] starts as -(centre + 2) for a pixel still to visit (-1 outside the mask), so one
    // load tells both "same label" and "not visited yet".
    for (int64_t p = 0; p < hw_; ++p) out_[p] = labels_[p] < 0 ? -1 : -(labels_[p] + 2);
    int32_t next = 0;
    for (int64_t start = 0; start < hw_; ++start) {
      if (out_[start] >= -1) continue;  // visited, or outside the mask
      const int32_t label = labels_[start];
      const int32_t todo = out_[start];
      int64_t size = fill_spans(start, todo, next);
      if (size >= max_size_) {
        for (const Span& r : spans_) std::fill(out_ + r.y * width_ + r.x0, out_ + r.y * width_ + r.x1, todo);
        breadth_first(start, todo, next);
        size = int64_t(spans_.size());
      }
      if (size < min_size_ && !adjacent_.empty()) {
        merge_small(size);
      } else {
        source_.push_back(label);
        ++next;
      }
    }
  }

 private:
  struct Span {
    int64_t y, x0, x1;  // pixels [x0, x1) of row y
  };

  void neighbour(int32_t o, int32_t next) {
    if (o >= 0 && o != next && (adjacent_.empty() || adjacent_.back() != o)) adjacent_.push_back(o);
  }

  // Marks the run of `todo` pixels through (y, x) as `next`, records it, and notes the
  // labelled pixels just left and right of it. Returns its length.
  int64_t take_run(int64_t y, int64_t x, int32_t todo, int32_t next) {
    int32_t* row = out_ + y * width_;
    int64_t x0 = x, x1 = x + 1;
    while (x0 > 0 && row[x0 - 1] == todo) --x0;
    while (x1 < width_ && row[x1] == todo) ++x1;
    std::fill(row + x0, row + x1, next);
    if (x0 > 0) neighbour(row[x0 - 1], next);
    if (x1 < width_) neighbour(row[x1], next);
    spans_.push_back({y, x0, x1});
    return x1 - x0;
  }

  // The whole component of `todo` pixels through start (stops early at max_size);
  // spans_ holds its runs, adjacent_ the labels next to it. Returns its size.
  int64_t fill_spans(int64_t start, int32_t todo, int32_t next) {
    spans_.clear();
    adjacent_.clear();
    int64_t size = take_run(start / width_, start % width_, todo, next);
    for (size_t head = 0; head < spans_.size() && size < max_size_; ++head) {
      const Span r = spans_[head];
      for (int64_t ny = r.y - 1; ny <= r.y + 1; ny += 2) {
        if (ny < 0 || ny >= height_) continue;
        const int32_t* row = out_ + ny * width_;
        for (int64_t x = r.x0; x < r.x1; ++x) {
          const int32_t o = row[x];
          if (o == todo) {
            size += take_run(ny, x, todo, next);
            x = spans_.back().x1;  // past the run and its right neighbour, which take_run noted
          } else {
            neighbour(o, next);
          }
        }
      }
    }
    return size;
  }

  // The breadth-first trace, cut at max_size; spans_ then holds its pixels as runs of one.
  void breadth_first(int64_t start, int32_t todo, int32_t next) {
    spans_.clear();
    adjacent_.clear();
    out_[start] = next;
    spans_.push_back({start / width_, start % width_, start % width_ + 1});
    for (size_t head = 0; head < spans_.size() && int64_t(spans_.size()) < max_size_; ++head) {
      const int64_t y = spans_[head].y, x = spans_[head].x0, p = y * width_ + x;
      const int64_t nbr[4] = {p - width_, p - 1, p + 1, p + width_};
      const int64_t ys[4] = {y - 1, y, y, y + 1}, xs[4] = {x, x - 1, x + 1, x};
      const bool ok[4] = {y > 0, x > 0, x < width_ - 1, y < height_ - 1};
      for (int i = 0; i < 4; ++i) {
        if (!ok[i]) continue;
        const int32_t o = out_[nbr[i]];
        if (o == todo) {
          out_[nbr[i]] = next;
          spans_.push_back({ys[i], xs[i], xs[i] + 1});
          if (int64_t(spans_.size()) >= max_size_) break;
        } else {
          neighbour(o, next);
        }
      }
    }
  }

  // The component in spans_ joins the adjacent label whose centre is nearest to its mean.
  void merge_small(int64_t size) {
    double mean[5] = {0, 0, 0, 0, 0};
    for (const Span& r : spans_) {
      const int64_t p = r.y * width_;
      for (int64_t x = r.x0; x < r.x1; ++x) {
        mean[0] += lab_[p + x];
        mean[1] += lab_[hw_ + p + x];
        mean[2] += lab_[2 * hw_ + p + x];
        mean[4] += double(x);
      }
      mean[3] += double(r.y) * double(r.x1 - r.x0);
    }
    for (double& m : mean) m /= double(size);
    std::sort(adjacent_.begin(), adjacent_.end());
    int32_t best = -1;
    double best_d = std::numeric_limits<double>::infinity();
    for (size_t i = 0; i < adjacent_.size(); ++i) {
      if (i > 0 && adjacent_[i] == adjacent_[i - 1]) continue;
      const float* c = centre_ + 5 * source_[adjacent_[i]];
      double d2[5];
      for (int j = 0; j < 5; ++j) d2[j] = (double(c[j]) - mean[j]) * (double(c[j]) - mean[j]);
      const double d = (d2[0] + d2[1] + d2[2]) + weight_ * (d2[3] + d2[4]);
      if (d < best_d) {
        best_d = d;
        best = adjacent_[i];
      }
    }
    for (const Span& r : spans_) std::fill(out_ + r.y * width_ + r.x0, out_ + r.y * width_ + r.x1, best);
  }

  const int32_t* labels_;
  const float* lab_;
  const float* centre_;
  const int64_t height_, width_, hw_;
  const double weight_;
  const int64_t min_size_, max_size_;
  int32_t* out_;
  std::vector<Span> spans_;        // the current component, as runs; doubles as the queue
  std::vector<int32_t> adjacent_;  // labels next to it (repeats possible)
  std::vector<int32_t> source_;    // centre index of each final label
};

inline void connect_components(const int32_t* labels, const float* lab, const float* centre, int64_t height,
                               int64_t width, double weight, int64_t min_size, int64_t max_size, int32_t* out) {
  Components(labels, lab, centre, height, width, weight, min_size, max_size, out).run();
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
