// CPU kernels of the fused pairwise colour prior
// (wsseg_fast/ops/pairwise_constraint.py): the similar-neighbour edges of each
// image are found once (one byte per pixel and offset), then one pass per
// (image, class) sums the pMeanError terms, and one pass gathers each pixel's
// gradient from the edges that start and end at it.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "wsseg/fuzzy.h"
#include "wsseg/neighbors.h"
#include "wsseg/pairwise_constraint.h"

namespace wsseg {
namespace {

void check_pairwise_inputs(const at::Tensor& probs, const at::Tensor& lab, const at::Tensor& offsets) {
  TORCH_CHECK_VALUE(probs.dim() == 4, "pairwise_constraint: `probs` must have shape [B, C, H, W], got ", probs.sizes());
  TORCH_CHECK_TYPE(probs.scalar_type() == at::kFloat || probs.scalar_type() == at::kDouble,
                   "pairwise_constraint: `probs` must be float32 or float64, got ", probs.scalar_type());
  TORCH_CHECK_VALUE(lab.dim() == 4 && lab.size(0) == probs.size(0) && lab.size(1) == 3 &&
                        lab.size(2) == probs.size(2) && lab.size(3) == probs.size(3),
                    "pairwise_constraint: `lab` must have shape [B, 3, H, W] matching `probs`, got ", lab.sizes());
  TORCH_CHECK_TYPE(lab.scalar_type() == at::kFloat, "pairwise_constraint: `lab` must be float32, got ",
                   lab.scalar_type());
  TORCH_CHECK_VALUE(offsets.dim() == 2 && offsets.size(1) == 2, "pairwise_constraint: `offsets` must be [K, 2]");
  TORCH_CHECK_TYPE(offsets.scalar_type() == at::kLong, "pairwise_constraint: `offsets` must be int64");
}

// edges[b, k, y, x] = 1 when the neighbour (y + dy_k, x + dx_k) is inside and similar.
at::Tensor similar_edges(const at::Tensor& lab, const at::Tensor& offsets, double threshold) {
  const int64_t batch = lab.size(0), height = lab.size(2), width = lab.size(3), k_n = offsets.size(0);
  at::Tensor edges = at::zeros({batch, k_n, height, width}, lab.options().dtype(at::kByte));
  const float* l = lab.data_ptr<float>();
  const int64_t* off = offsets.data_ptr<int64_t>();
  uint8_t* e = edges.data_ptr<uint8_t>();
  const int64_t plane = height * width;
  at::parallel_for(0, batch * k_n * height, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t y = r % height, k = (r / height) % k_n, b = r / (height * k_n);
      const float* image = l + b * 3 * plane;
      for (int64_t x = 0; x < width; ++x) {
        int ny, nx;
        if (!neighbor_inside(int(y), int(x), int(off[2 * k]), int(off[2 * k + 1]), int(height), int(width), &ny, &nx))
          continue;
        e[r * width + x] = pairwise::similar(image, plane, y * width + x, int64_t(ny) * width + nx, float(threshold));
      }
    }
  });
  return edges;
}

template <typename scalar_t>
void stats_kernel(const at::Tensor& probs, const at::Tensor& edges, const at::Tensor& offsets, double p_forall,
                  bool stable, at::Tensor& sums) {
  const int64_t classes = probs.size(1), height = probs.size(2), width = probs.size(3), k_n = offsets.size(0);
  const int64_t plane = height * width;
  const scalar_t* p = probs.data_ptr<scalar_t>();
  const uint8_t* e = edges.data_ptr<uint8_t>();
  const int64_t* off = offsets.data_ptr<int64_t>();
  scalar_t* out = sums.data_ptr<scalar_t>();
  at::parallel_for(0, sums.numel(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t bc = begin; bc < end; ++bc) {
      const int64_t b = bc / classes;
      const scalar_t* pp = p + bc * plane;
      double acc = 0.0;
      for (int64_t k = 0; k < k_n; ++k) {
        const int64_t shift = off[2 * k] * width + off[2 * k + 1];
        const uint8_t* ek = e + (b * k_n + k) * plane;
        for (int64_t i = 0; i < plane; ++i) {
          if (!ek[i]) continue;
          const double s = pairwise::same_label<double>(pp[i], pp[i + shift]);
          acc += fuzzy::error_power<double>(s, p_forall, stable);
        }
      }
      out[bc] = scalar_t(acc);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> pairwise_constraint_stats_cpu(const at::Tensor& probs_in, const at::Tensor& lab_in,
                                                                 const at::Tensor& offsets_in, double threshold,
                                                                 double p_forall, bool stable) {
  check_pairwise_inputs(probs_in, lab_in, offsets_in);
  const at::Tensor probs = probs_in.contiguous(), lab = lab_in.contiguous(), offsets = offsets_in.contiguous();
  at::Tensor sums = at::zeros({probs.size(0), probs.size(1)}, probs.options());
  const at::Tensor edges = similar_edges(lab, offsets, threshold);
  const at::Tensor counts = edges.sum({1, 2, 3}).to(probs.scalar_type());
  if (sums.numel() == 0 || probs.numel() == 0) return {sums, counts};
  AT_DISPATCH_FLOATING_TYPES(probs.scalar_type(), "pairwise_constraint_stats", [&] {
    stats_kernel<scalar_t>(probs, edges, offsets, p_forall, stable, sums);
  });
  return {sums, counts};
}

template <typename scalar_t>
void grad_kernel(const at::Tensor& grad_sums, const at::Tensor& probs, const at::Tensor& edges,
                 const at::Tensor& offsets, double p_forall, bool stable, at::Tensor& grad) {
  const int64_t classes = probs.size(1), height = probs.size(2), width = probs.size(3), k_n = offsets.size(0);
  const int64_t plane = height * width;
  const scalar_t* p = probs.data_ptr<scalar_t>();
  const scalar_t* gs = grad_sums.data_ptr<scalar_t>();
  const uint8_t* e = edges.data_ptr<uint8_t>();
  const int64_t* off = offsets.data_ptr<int64_t>();
  scalar_t* g = grad.data_ptr<scalar_t>();
  at::parallel_for(0, probs.size(0) * classes * height, 8, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t bc = r / height, y = r % height, b = bc / classes;
      const scalar_t* pp = p + bc * plane;
      const double scale = gs[bc];
      for (int64_t x = 0; x < width; ++x) {
        const int64_t i = y * width + x;
        const double pi = pp[i];
        double acc = 0.0;
        for (int64_t k = 0; k < k_n; ++k) {
          const int dy = int(off[2 * k]), dx = int(off[2 * k + 1]);
          const uint8_t* ek = e + (b * k_n + k) * plane;
          int ny, nx;
          if (ek[i]) {  // the edge i -> i + offset
            neighbor_inside(int(y), int(x), dy, dx, int(height), int(width), &ny, &nx);
            const double q = pp[int64_t(ny) * width + nx];
            acc += fuzzy::error_power_grad<double>(pairwise::same_label(pi, q), p_forall, stable) *
                   pairwise::same_label_grad(q);
          }
          if (neighbor_inside(int(y), int(x), -dy, -dx, int(height), int(width), &ny, &nx)) {
            const int64_t j = int64_t(ny) * width + nx;  // the edge j -> i
            if (ek[j]) {
              const double q = pp[j];
              acc += fuzzy::error_power_grad<double>(pairwise::same_label(q, pi), p_forall, stable) *
                     pairwise::same_label_grad(q);
            }
          }
        }
        g[bc * plane + i] = scalar_t(scale * acc);
      }
    }
  });
}

at::Tensor pairwise_constraint_grad_cpu(const at::Tensor& grad_sums, const at::Tensor& probs_in,
                                        const at::Tensor& lab_in, const at::Tensor& offsets_in, double threshold,
                                        double p_forall, bool stable) {
  check_pairwise_inputs(probs_in, lab_in, offsets_in);
  const at::Tensor probs = probs_in.contiguous(), lab = lab_in.contiguous(), offsets = offsets_in.contiguous();
  TORCH_CHECK_VALUE(grad_sums.dim() == 2 && grad_sums.size(0) == probs.size(0) && grad_sums.size(1) == probs.size(1),
                    "pairwise_constraint_grad: `grad_sums` must be [B, C]");
  at::Tensor grad = at::zeros_like(probs);
  if (probs.numel() == 0) return grad;
  const at::Tensor edges = similar_edges(lab, offsets, threshold);
  const at::Tensor gs = grad_sums.to(probs.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES(probs.scalar_type(), "pairwise_constraint_grad", [&] {
    grad_kernel<scalar_t>(gs, probs, edges, offsets, p_forall, stable, grad);
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(wsseg_fast, CPU, m) {
  m.impl("pairwise_constraint_stats", &pairwise_constraint_stats_cpu);
  m.impl("pairwise_constraint_grad", &pairwise_constraint_grad_cpu);
}

}  // namespace wsseg
