// CPU kernels of wsseg_fast::superpixel_pool and its max backward. Each image's
// label map is cut into runs of equal labels once (wsseg/superpixel_pool.h);
// then one task per (b, c) plane: one pass over the runs reduces the plane into
// a per-superpixel table (no [B, C, H, W] temporaries, sums in the input's
// dtype), one pass writes every pixel from the table. The backward of the mean is the mean of
// the gradient (the op is self-adjoint), so it reuses the forward.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif

#include "wsseg/superpixel_pool.h"

namespace wsseg {
namespace {

void check_inputs(const at::Tensor& x, const at::Tensor& labels) {
  TORCH_CHECK(x.dim() == 4, "superpixel_pool: x must be [B, C, H, W], got ", x.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
                   "superpixel_pool: x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kInt || labels.scalar_type() == at::kLong,
                   "superpixel_pool: labels must be int32 or int64, got ", labels.scalar_type());
  TORCH_CHECK(
      labels.dim() == 3 && labels.size(0) == x.size(0) && labels.size(1) == x.size(2) && labels.size(2) == x.size(3),
      "superpixel_pool: labels must be [B, H, W] like x, got ", labels.sizes(), " for x ", x.sizes());
}

// An uninitialised tensor like `like` whose pages are advised huge before the
// first write. The op is memory bound and a [8, 21, 256, 256] output faults in
// 11k 4 KiB pages: with 2 MiB pages its first write is several times faster.
at::Tensor empty_output(const at::Tensor& like) {
  at::Tensor out = at::empty_like(like, at::MemoryFormat::Contiguous);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(out.data_ptr());
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t last = (begin + out.nbytes()) & ~(kHuge - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);  // advice only
#endif
  return out;
}

// Number of superpixels: max label + 1 (at least 1).
template <typename label_t>
int64_t num_segments(const at::Tensor& labels) {
  const label_t* l = labels.data_ptr<label_t>();
  const int64_t n = labels.numel();
  int64_t k = 0;
  for (int64_t p = 0; p < n; ++p) k = std::max<int64_t>(k, int64_t(l[p]) + 1);
  return std::max<int64_t>(k, 1);
}

// superpixel::plane_gather, with AVX2 gathers for float32 / int32 labels when the CPU has them.
__attribute__((target("avx2"))) void plane_gather_avx2(const int32_t* labels, int64_t n, const float* table,
                                                       float* out) {
  superpixel::plane_gather(labels, n, table, out);
}
const bool kHasAvx2 = __builtin_cpu_supports("avx2");
template <typename scalar_t, typename label_t>
void plane_gather(const label_t* labels, int64_t n, const scalar_t* table, scalar_t* out) {
  if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<label_t, int32_t>) {
    if (kHasAvx2) return plane_gather_avx2(labels, n, table, out);
  }
  superpixel::plane_gather(labels, n, table, out);
}

// The runs of every image's label map, images in parallel.
template <typename label_t>
std::vector<std::vector<superpixel::Run>> image_runs(const at::Tensor& labels) {
  const int64_t batch = labels.size(0), hw = labels.size(1) * labels.size(2);
  const label_t* ld = labels.data_ptr<label_t>();
  std::vector<std::vector<superpixel::Run>> runs(batch);
  at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) runs[b] = superpixel::label_runs(ld + b * hw, hw);
  });
  return runs;
}

template <typename scalar_t, typename label_t>
void pool_mean(const at::Tensor& x, const at::Tensor& labels, int64_t k, at::Tensor& out) {
  const int64_t batch = x.size(0), channels = x.size(1), hw = x.size(2) * x.size(3);
  const scalar_t* xd = x.data_ptr<scalar_t>();
  const label_t* ld = labels.data_ptr<label_t>();
  scalar_t* od = out.data_ptr<scalar_t>();
  const auto runs = image_runs<label_t>(labels);
  // 1 / pixel count of every superpixel, once per image.
  std::vector<scalar_t> inv_count(batch * k, scalar_t(0));
  for (int64_t b = 0; b < batch; ++b) {
    std::vector<int64_t> count(k, 0);
    for (const auto& r : runs[b])
      if (r.label >= 0) count[r.label] += r.end - r.start;
    for (int64_t i = 0; i < k; ++i) inv_count[b * k + i] = count[i] ? scalar_t(1) / scalar_t(count[i]) : scalar_t(0);
  }
  at::parallel_for(0, batch * channels, 1, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> table(k + 1);  // table[0] = 0: the mean of "no superpixel"
    scalar_t* means = table.data() + 1;
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t b = plane / channels;
      std::fill(table.begin(), table.end(), scalar_t(0));
      superpixel::plane_sums(xd + plane * hw, runs[b], means);
      const scalar_t* inv = inv_count.data() + b * k;
      for (int64_t i = 0; i < k; ++i) means[i] *= inv[i];
      plane_gather(ld + b * hw, hw, means, od + plane * hw);
    }
  });
}

template <typename scalar_t, typename label_t>
void pool_max(const at::Tensor& x, const at::Tensor& labels, int64_t k, at::Tensor& out, at::Tensor& argmax) {
  const int64_t channels = x.size(1), hw = x.size(2) * x.size(3);
  const scalar_t* xd = x.data_ptr<scalar_t>();
  const label_t* ld = labels.data_ptr<label_t>();
  scalar_t* od = out.data_ptr<scalar_t>();
  int64_t* ad = argmax.data_ptr<int64_t>();
  const auto runs = image_runs<label_t>(labels);
  at::parallel_for(0, x.size(0) * channels, 1, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> table(k + 1, scalar_t(0));  // table[0] = 0: the max of "no superpixel"
    scalar_t* maxes = table.data() + 1;
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t b = plane / channels;
      int64_t* arg = ad + plane * k;
      std::fill(arg, arg + k, -1);
      superpixel::plane_max(xd + plane * hw, runs[b], maxes, arg);
      plane_gather(ld + b * hw, hw, maxes, od + plane * hw);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> superpixel_pool_cpu(const at::Tensor& x_in, const at::Tensor& labels_in,
                                                       c10::string_view reduce) {
  check_inputs(x_in, labels_in);
  const bool is_max = reduce == "max";
  TORCH_CHECK(is_max || reduce == "mean", "superpixel_pool: reduce must be 'mean' or 'max', got '", reduce, "'");
  const at::Tensor x = x_in.contiguous(), labels = labels_in.contiguous();
  at::Tensor out = empty_output(x);
  int64_t k = 1;
  if (labels.numel()) {
    k = AT_DISPATCH_INDEX_TYPES(labels.scalar_type(), "superpixel_pool", [&] {
      return num_segments<index_t>(labels);
    });
  }
  at::Tensor argmax = is_max ? at::empty({x.size(0), x.size(1), k}, x.options().dtype(at::kLong))
                             : at::empty({0}, x.options().dtype(at::kLong));
  if (x.numel() == 0) {
    if (is_max) argmax.fill_(-1);
    return {out, argmax};
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "superpixel_pool", [&] {
    using scalar = scalar_t;
    AT_DISPATCH_INDEX_TYPES(labels.scalar_type(), "superpixel_pool", [&] {
      if (is_max) {
        pool_max<scalar, index_t>(x, labels, k, out, argmax);
      } else {
        pool_mean<scalar, index_t>(x, labels, k, out);
      }
    });
  });
  return {out, argmax};
}

// grad_x[argmax of a superpixel] = the superpixel's summed grad_out; 0 elsewhere.
at::Tensor superpixel_pool_max_backward_cpu(const at::Tensor& grad_in, const at::Tensor& labels_in,
                                            const at::Tensor& argmax_in) {
  check_inputs(grad_in, labels_in);
  TORCH_CHECK(argmax_in.dim() == 3 && argmax_in.size(0) == grad_in.size(0) && argmax_in.size(1) == grad_in.size(1),
              "superpixel_pool_max_backward: argmax must be [B, C, K], got ", argmax_in.sizes());
  const at::Tensor grad = grad_in.contiguous(), labels = labels_in.contiguous(), argmax = argmax_in.contiguous();
  at::Tensor out = empty_output(grad);
  const int64_t channels = grad.size(1), hw = grad.size(2) * grad.size(3), k = argmax.size(2);
  if (grad.numel() == 0) return out;
  const int64_t labels_k = AT_DISPATCH_INDEX_TYPES(labels.scalar_type(), "superpixel_pool_max_backward", [&] {
    return num_segments<index_t>(labels);
  });
  TORCH_CHECK(labels_k <= k, "superpixel_pool_max_backward: labels go up to ", labels_k - 1, " but argmax has ", k,
              " superpixels");
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "superpixel_pool_max_backward", [&] {
    using scalar = scalar_t;
    AT_DISPATCH_INDEX_TYPES(labels.scalar_type(), "superpixel_pool_max_backward", [&] {
      const scalar* gd = grad.data_ptr<scalar>();
      const int64_t* ad = argmax.data_ptr<int64_t>();
      scalar* od = out.data_ptr<scalar>();
      const auto runs = image_runs<index_t>(labels);
      at::parallel_for(0, grad.size(0) * channels, 1, [&](int64_t begin, int64_t end) {
        std::vector<scalar> sums(k);
        for (int64_t plane = begin; plane < end; ++plane) {
          std::fill(sums.begin(), sums.end(), scalar(0));
          superpixel::plane_sums(gd + plane * hw, runs[plane / channels], sums.data());
          std::fill(od + plane * hw, od + (plane + 1) * hw, scalar(0));
          for (int64_t i = 0; i < k; ++i) {
            const int64_t p = ad[plane * k + i];
            if (p >= 0 && p < hw) od[plane * hw + p] = sums[i];
          }
        }
      });
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(wsseg_fast, CPU, m) {
  m.impl("superpixel_pool", &superpixel_pool_cpu);
  m.impl("superpixel_pool_max_backward", &superpixel_pool_max_backward_cpu);
}

}  // namespace wsseg
