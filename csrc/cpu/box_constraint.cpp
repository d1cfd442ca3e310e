// CPU kernels of the fused box constraint (wsseg_fast/ops/box_constraint.py):
// one pass over the pixels of each (image, class) with a box gathers every
// quantifier's sum; one pass scatters the gradient of those sums back to the
// pixels. No [B, C, H, W] intermediate besides the gradient itself.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "wsseg/box_constraint.h"
#include "wsseg/fuzzy.h"

namespace wsseg {
namespace {

void check_box_inputs(const at::Tensor& probs, const at::Tensor& boxes, const at::Tensor& labels) {
  TORCH_CHECK_VALUE(probs.dim() == 4, "box_constraint: `probs` must have shape [B, C, H, W], got ", probs.sizes());
  TORCH_CHECK_TYPE(probs.scalar_type() == at::kFloat || probs.scalar_type() == at::kDouble,
                   "box_constraint: `probs` must be float32 or float64, got ", probs.scalar_type());
  TORCH_CHECK_VALUE(boxes.dim() == 3 && boxes.size(0) == probs.size(0) && boxes.size(2) == 4,
                    "box_constraint: `boxes` must have shape [B, N, 4], got ", boxes.sizes());
  TORCH_CHECK_TYPE(boxes.scalar_type() == at::kDouble, "box_constraint: `boxes` must be float64, got ",
                   boxes.scalar_type());
  TORCH_CHECK_VALUE(labels.dim() == 2 && labels.size(0) == boxes.size(0) && labels.size(1) == boxes.size(1),
                    "box_constraint: `labels` must have shape [B, N] = ", boxes.sizes().slice(0, 2), ", got ",
                    labels.sizes());
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kLong, "box_constraint: `labels` must be int64, got ",
                   labels.scalar_type());
  const int64_t classes = probs.size(1);
  const double* box = boxes.data_ptr<double>();
  const int64_t* label = labels.data_ptr<int64_t>();
  for (int64_t i = 0; i < labels.numel(); ++i) {
    TORCH_CHECK_VALUE(label[i] >= -1 && label[i] < classes, "box_constraint: `labels` must be class ids in [0, ",
                      classes, ") or -1 for padding, got ", label[i]);
    if (label[i] < 0) continue;
    const double* b = box + 4 * i;
    for (int j = 0; j < 4; ++j)
      TORCH_CHECK_VALUE(!std::isnan(b[j]), "box_constraint: `boxes` contain NaN (box ", i, ")");
    TORCH_CHECK_VALUE(b[2] >= b[0] && b[3] >= b[1],
                      "box_constraint: `boxes` must have x1 >= x0 and y1 >= y0 (label -1 marks padding); box [",
                      i / boxes.size(1), ", ", i % boxes.size(1), "] is [", b[0], ", ", b[1], ", ", b[2], ", ", b[3],
                      "]");
  }
}

// The boxes of class c in one image, as pixel bounds, and its representative.
struct ClassBoxes {
  std::vector<int> index;
  std::vector<box::Bounds> bounds;
  int representative = -1;
};

ClassBoxes class_boxes(const double* boxes, const int64_t* labels, int n, int c, int height, int width) {
  ClassBoxes out;
  for (int k = 0; k < n; ++k) {
    if (labels[k] != c || !box::is_valid(boxes, labels, k, height, width)) continue;
    if (out.representative < 0) out.representative = k;
    out.index.push_back(k);
    out.bounds.push_back(box::pixel_bounds(boxes + 4 * k, height, width));
  }
  return out;
}

template <typename scalar_t>
void stats_kernel(const at::Tensor& probs, const at::Tensor& boxes, const at::Tensor& labels, double p_forall,
                  double p_exists, bool stable, at::Tensor& lines, at::Tensor& outside, at::Tensor& count) {
  const int64_t batch = probs.size(0), classes = probs.size(1), height = probs.size(2), width = probs.size(3);
  const int64_t n = boxes.size(1), line_len = height + width;
  const scalar_t* p = probs.data_ptr<scalar_t>();
  scalar_t* line_out = lines.data_ptr<scalar_t>();
  scalar_t* out_sum = outside.data_ptr<scalar_t>();
  scalar_t* out_count = count.data_ptr<scalar_t>();
  at::parallel_for(0, batch * classes, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> col_acc, row_acc;
    std::vector<uint8_t> inside(width);
    for (int64_t bc = begin; bc < end; ++bc) {
      const int64_t b = bc / classes, c = bc % classes;
      const ClassBoxes cb = class_boxes(boxes.data_ptr<double>() + b * n * 4, labels.data_ptr<int64_t>() + b * n,
                                        int(n), int(c), int(height), int(width));
      if (cb.representative < 0) continue;
      const size_t nb = cb.index.size();
      col_acc.assign(nb * width, 0.0);
      row_acc.assign(nb, 0.0);
      double out_acc = 0.0;
      int64_t out_n = 0;
      const scalar_t* plane = p + bc * height * width;
      for (int64_t y = 0; y < height; ++y) {
        const scalar_t* row = plane + y * width;
        std::fill(inside.begin(), inside.end(), 0);
        for (size_t i = 0; i < nb; ++i) {
          const box::Bounds& bd = cb.bounds[i];
          if (!bd.covers_row(int(y))) continue;
          double acc = 0.0;
          double* cols = col_acc.data() + i * width;
          for (int x = bd.x0; x < bd.x1; ++x) {
            const double v = fuzzy::lifted_power<double>(row[x], p_exists, stable);
            acc += v;
            cols[x] += v;
            inside[x] = 1;
          }
          line_out[(b * n + cb.index[i]) * line_len + y] = scalar_t(acc);
        }
        for (int64_t x = 0; x < width; ++x) {
          if (inside[x]) continue;
          out_acc += fuzzy::lifted_power<double>(row[x], p_forall, stable);
          ++out_n;
        }
      }
      for (size_t i = 0; i < nb; ++i) {
        scalar_t* dst = line_out + (b * n + cb.index[i]) * line_len + height;
        for (int x = cb.bounds[i].x0; x < cb.bounds[i].x1; ++x) dst[x] = scalar_t(col_acc[i * width + x]);
      }
      out_sum[b * n + cb.representative] = scalar_t(out_acc);
      out_count[b * n + cb.representative] = scalar_t(out_n);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> box_constraint_stats_cpu(const at::Tensor& probs_in,
                                                                        const at::Tensor& boxes_in,
                                                                        const at::Tensor& labels_in, double p_forall,
                                                                        double p_exists, bool stable) {
  const at::Tensor boxes = boxes_in.contiguous(), labels = labels_in.contiguous();
  check_box_inputs(probs_in, boxes, labels);
  const at::Tensor probs = probs_in.contiguous();
  const int64_t batch = probs.size(0), n = boxes.size(1);
  at::Tensor lines = at::zeros({batch, n, probs.size(2) + probs.size(3)}, probs.options());
  at::Tensor outside = at::zeros({batch, n}, probs.options());
  at::Tensor count = at::zeros({batch, n}, probs.options());
  if (probs.numel() == 0 || n == 0) return {lines, outside, count};
  AT_DISPATCH_FLOATING_TYPES(probs.scalar_type(), "box_constraint_stats", [&] {
    stats_kernel<scalar_t>(probs, boxes, labels, p_forall, p_exists, stable, lines, outside, count);
  });
  return {lines, outside, count};
}

template <typename scalar_t>
void grad_kernel(const at::Tensor& grad_lines, const at::Tensor& grad_outside, const at::Tensor& probs,
                 const at::Tensor& boxes, const at::Tensor& labels, double p_forall, double p_exists, bool stable,
                 at::Tensor& grad) {
  const int64_t batch = probs.size(0), classes = probs.size(1), height = probs.size(2), width = probs.size(3);
  const int64_t n = boxes.size(1), line_len = height + width;
  const scalar_t* p = probs.data_ptr<scalar_t>();
  const scalar_t* g_lines = grad_lines.data_ptr<scalar_t>();
  const scalar_t* g_out = grad_outside.data_ptr<scalar_t>();
  scalar_t* g = grad.data_ptr<scalar_t>();
  at::parallel_for(0, batch * classes, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> coef(width);
    std::vector<uint8_t> inside(width);
    for (int64_t bc = begin; bc < end; ++bc) {
      const int64_t b = bc / classes, c = bc % classes;
      scalar_t* gplane = g + bc * height * width;
      const ClassBoxes cb = class_boxes(boxes.data_ptr<double>() + b * n * 4, labels.data_ptr<int64_t>() + b * n,
                                        int(n), int(c), int(height), int(width));
      if (cb.representative < 0) {
        std::fill(gplane, gplane + height * width, scalar_t(0));
        continue;
      }
      const double g_outside = g_out[b * n + cb.representative];
      const scalar_t* plane = p + bc * height * width;
      for (int64_t y = 0; y < height; ++y) {
        std::fill(coef.begin(), coef.end(), 0.0);
        std::fill(inside.begin(), inside.end(), 0);
        for (size_t i = 0; i < cb.index.size(); ++i) {
          const box::Bounds& bd = cb.bounds[i];
          if (!bd.covers_row(int(y))) continue;
          const scalar_t* gl = g_lines + (b * n + cb.index[i]) * line_len;
          for (int x = bd.x0; x < bd.x1; ++x) {
            coef[x] += double(gl[y]) + double(gl[height + x]);
            inside[x] = 1;
          }
        }
        const scalar_t* row = plane + y * width;
        scalar_t* grow = gplane + y * width;
        for (int64_t x = 0; x < width; ++x) {
          grow[x] = inside[x] ? scalar_t(coef[x] * fuzzy::lifted_power_grad<double>(row[x], p_exists, stable))
                              : scalar_t(g_outside * fuzzy::lifted_power_grad<double>(row[x], p_forall, stable));
        }
      }
    }
  });
}

at::Tensor box_constraint_grad_cpu(const at::Tensor& grad_lines, const at::Tensor& grad_outside,
                                   const at::Tensor& probs_in, const at::Tensor& boxes_in, const at::Tensor& labels_in,
                                   double p_forall, double p_exists, bool stable) {
  const at::Tensor boxes = boxes_in.contiguous(), labels = labels_in.contiguous();
  check_box_inputs(probs_in, boxes, labels);
  const at::Tensor probs = probs_in.contiguous();
  const int64_t batch = probs.size(0), n = boxes.size(1);
  TORCH_CHECK_VALUE(grad_lines.sizes() == at::IntArrayRef({batch, n, probs.size(2) + probs.size(3)}) &&
                        grad_outside.sizes() == at::IntArrayRef({batch, n}),
                    "box_constraint_grad: gradients of the wrong shape");
  at::Tensor grad = at::zeros_like(probs);
  if (probs.numel() == 0 || n == 0) return grad;
  const at::Tensor gl = grad_lines.to(probs.scalar_type()).contiguous();
  const at::Tensor go = grad_outside.to(probs.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES(probs.scalar_type(), "box_constraint_grad", [&] {
    grad_kernel<scalar_t>(gl, go, probs, boxes, labels, p_forall, p_exists, stable, grad);
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(wsseg_fast, CPU, m) {
  m.impl("box_constraint_stats", &box_constraint_stats_cpu);
  m.impl("box_constraint_grad", &box_constraint_grad_cpu);
}

}  // namespace wsseg
