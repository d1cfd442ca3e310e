// CPU kernel of wsseg_fast::local_affinity: the core of wsseg/affinity.h for
// every (image, offset, row), rows spread over the OpenMP threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "wsseg/affinity.h"
#include "wsseg/random_walk_host.h"

namespace wsseg {
namespace {

template <typename T>
void local_affinity_rows(const at::Tensor& f, at::Tensor& out, const Disc& disc, bool squared) {
  const int64_t batch = f.size(0), depth = f.size(1), height = f.size(2), width = f.size(3);
  const int64_t hw = height * width, n_offsets = disc.size();
  const T* src = f.data_ptr<T>();
  T* dst = out.data_ptr<T>();
  at::parallel_for(0, batch * n_offsets * height, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / (n_offsets * height), k = (r / height) % n_offsets, y = r % height;
      const T* fb = src + b * depth * hw;
      T* row = dst + (b * n_offsets + k) * hw + y * width;
      for (int64_t x = 0; x < width; ++x) {
        int ny, nx;
        const bool inside = neighbor_inside(int(y), int(x), disc.dy[k], disc.dx[k], int(height), int(width), &ny, &nx);
        row[x] = inside ? local_affinity_at(fb, depth, hw, y * width + x, int64_t(ny) * width + nx, squared) : T(0);
      }
    }
  });
}

at::Tensor local_affinity_cpu(const at::Tensor& features_in, int64_t radius, bool squared) {
  check_float4d(features_in, "local_affinity", "features");
  TORCH_CHECK_VALUE(radius >= 1 && radius < 1024, "local_affinity: `radius` must be in [1, 1024), got ", radius);
  TORCH_CHECK_VALUE(features_in.size(1) > 0, "local_affinity: `features` needs at least one channel");
  const at::Tensor features = features_in.contiguous();
  const Disc disc(static_cast<int>(radius));
  at::Tensor out = at::empty({features.size(0), disc.size(), features.size(2), features.size(3)}, features.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "local_affinity_cpu", [&] {
    local_affinity_rows<scalar_t>(features, out, disc, squared);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(wsseg_fast, CPU, m) {
  m.impl("local_affinity", &local_affinity_cpu);
}

}  // namespace wsseg
