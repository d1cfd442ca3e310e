// CPU kernels of wsseg_fast::random_walk and its backward.
//
// The walk runs on padded planes: every channel plane gets a zero halo of
// `reach` (the disc's largest |dy|, |dx|) pixels, its width rounded up to whole
// tiles, and the weights a copy in the same layout with every entry whose
// neighbour is outside the image set to 0. Then every output pixel's stencil
// is in bounds and a step is nothing but register-blocked tiles: a tile of
// kChannels x kPixels outputs accumulated over the K offsets, one weight
// vector load serving kChannels multiply-adds. The halo stays zero (its
// weights are zero), so the planes are padded once per call, not per step.
// Same sums as walk_at of wsseg/random_walk.h; memory ~(1 + 2 reach / W)^2 of
// the unpadded tensors.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <vector>

#include "wsseg/random_walk.h"
#include "wsseg/random_walk_host.h"

namespace wsseg {
namespace {

constexpr int kPixels = 8;

// The padded layout of one call.
struct Padded {
  int64_t batch, channels, height, width, n_offsets, reach, tiles, ph, pw, phw;
  std::vector<int64_t> w_at_fwd, w_at_bwd, x_at;  // per offset, relative to a pixel
  Padded(const at::Tensor& x, const Disc& disc)
      : batch(x.size(0)), channels(x.size(1)), height(x.size(2)), width(x.size(3)), n_offsets(disc.size()) {
    reach = 0;
    for (int k = 0; k < disc.size(); ++k) reach = std::max<int64_t>(reach, std::max(std::abs(disc.dy[k]), std::abs(disc.dx[k])));
    tiles = (width + kPixels - 1) / kPixels;
    ph = height + 2 * reach;
    pw = tiles * kPixels + 2 * reach;
    phw = ph * pw;
    for (int64_t k = 0; k < n_offsets; ++k) {
      x_at.push_back(int64_t(disc.dy[k]) * pw + disc.dx[k]);
      w_at_fwd.push_back(k * phw);
      w_at_bwd.push_back((n_offsets - 1 - k) * phw + x_at.back());
    }
  }
  int64_t origin() const { return reach * pw + reach; }  // pixel (0, 0) in a padded plane

  at::Tensor pad(const at::Tensor& t) const {  // [B, C, H, W] -> zero-haloed [B, C, ph, pw]
    at::Tensor out = at::zeros({t.size(0), t.size(1), ph, pw}, t.options());
    out.narrow(2, reach, height).narrow(3, reach, width).copy_(t);
    return out;
  }
  at::Tensor crop(const at::Tensor& t) const {
    return t.narrow(2, reach, height).narrow(3, reach, width).contiguous();
  }
  // The weights, padded, with the entries of out-of-image neighbours zeroed.
  at::Tensor pad_weights(const at::Tensor& w, const Disc& disc) const {
    at::Tensor valid = at::zeros({1, n_offsets, height, width}, w.options());
    for (int64_t k = 0; k < n_offsets; ++k) {
      const int64_t y0 = std::max<int64_t>(0, -disc.dy[k]), y1 = std::min<int64_t>(height, height - disc.dy[k]);
      const int64_t x0 = std::max<int64_t>(0, -disc.dx[k]), x1 = std::min<int64_t>(width, width - disc.dx[k]);
      if (y0 < y1 && x0 < x1) valid.select(1, k).narrow(1, y0, y1 - y0).narrow(2, x0, x1 - x0).fill_(1);
    }
    return pad(w * valid);
  }
};

// kC x kPixels outputs at `out` from the K weighted neighbours, in registers.
template <typename T, int kC>
inline void tile(const T* __restrict__ w, const T* __restrict__ in, T* __restrict__ out, int64_t phw,
                 const int64_t* __restrict__ w_at, const int64_t* __restrict__ x_at, int64_t n_offsets) {
  T acc[kC][kPixels] = {};
  for (int64_t k = 0; k < n_offsets; ++k) {
    const T* wk = w + w_at[k];
    const T* xk = in + x_at[k];
    for (int c = 0; c < kC; ++c)
      for (int i = 0; i < kPixels; ++i) acc[c][i] += wk[i] * xk[c * phw + i];
  }
  for (int c = 0; c < kC; ++c)
    for (int i = 0; i < kPixels; ++i) out[c * phw + i] = acc[c][i];
}

// One padded row of one image: channel blocks of 8, then 4, 2, 1.
template <typename T>
inline void step_row(const T* w, const T* in, T* out, int64_t channels, int64_t tiles, int64_t phw,
                     const int64_t* w_at, const int64_t* x_at, int64_t n) {
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t at = t * kPixels;
    int64_t c = 0;
    for (; c + 8 <= channels; c += 8) tile<T, 8>(w + at, in + c * phw + at, out + c * phw + at, phw, w_at, x_at, n);
    for (; c + 4 <= channels; c += 4) tile<T, 4>(w + at, in + c * phw + at, out + c * phw + at, phw, w_at, x_at, n);
    for (; c + 2 <= channels; c += 2) tile<T, 2>(w + at, in + c * phw + at, out + c * phw + at, phw, w_at, x_at, n);
    for (; c < channels; ++c) tile<T, 1>(w + at, in + c * phw + at, out + c * phw + at, phw, w_at, x_at, n);
  }
}

// Compiled for AVX2+FMA and for the baseline; the loader picks one.
#define WSSEG_STEP_ROW(T, NAME)                                                                                  \
  __attribute__((target_clones("avx2,fma", "default"))) void NAME(                                             \
      const T* w, const T* in, T* out, int64_t channels, int64_t tiles, int64_t phw, const int64_t* w_at,        \
      const int64_t* x_at, int64_t n) {                                                                          \
    step_row<T>(w, in, out, channels, tiles, phw, w_at, x_at, n);                                                \
  }
WSSEG_STEP_ROW(float, step_row_f)
WSSEG_STEP_ROW(double, step_row_d)
#undef WSSEG_STEP_ROW
inline void step_row_any(const float* w, const float* in, float* out, int64_t c, int64_t t, int64_t phw,
                         const int64_t* w_at, const int64_t* x_at, int64_t n) {
  step_row_f(w, in, out, c, t, phw, w_at, x_at, n);
}
inline void step_row_any(const double* w, const double* in, double* out, int64_t c, int64_t t, int64_t phw,
                         const int64_t* w_at, const int64_t* x_at, int64_t n) {
  step_row_d(w, in, out, c, t, phw, w_at, x_at, n);
}

// out = W x (kTranspose: W^T x) on padded planes, one task per image row.
template <typename T, bool kTranspose>
void step_cpu(const Padded& p, const T* w, const T* in, T* out) {
  const int64_t* w_at = kTranspose ? p.w_at_bwd.data() : p.w_at_fwd.data();
  at::parallel_for(0, p.batch * p.height, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / p.height, at = p.origin() + (r % p.height) * p.pw;
      step_row_any(w + b * p.n_offsets * p.phw + at, in + b * p.channels * p.phw + at,
                   out + b * p.channels * p.phw + at, p.channels, p.tiles, p.phw, w_at, p.x_at.data(), p.n_offsets);
    }
  });
}

// grad_w[k, i] += sum_c g(c, i) state(c, i + off_k), on padded planes.
template <typename T>
void weight_grad_cpu(const Padded& p, const T* g, const T* state, T* grad_w) {
  const int64_t span = p.tiles * kPixels;
  at::parallel_for(0, p.batch * p.height, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / p.height, at = p.origin() + (r % p.height) * p.pw;
      for (int64_t k = 0; k < p.n_offsets; ++k) {
        T* __restrict__ gw = grad_w + (b * p.n_offsets + k) * p.phw + at;
        for (int64_t c = 0; c < p.channels; ++c) {
          const T* __restrict__ gr = g + (b * p.channels + c) * p.phw + at;
          const T* __restrict__ sr = state + (b * p.channels + c) * p.phw + at + p.x_at[k];
          for (int64_t i = 0; i < span; ++i) gw[i] += gr[i] * sr[i];
        }
      }
    }
  });
}

at::Tensor random_walk_cpu(const at::Tensor& x_in, const at::Tensor& w_in, int64_t radius, int64_t steps) {
  check_walk_input(x_in, w_in, radius, steps);
  if (x_in.numel() == 0 || steps == 0) return x_in.contiguous().clone();
  const Disc disc(static_cast<int>(radius));
  const Padded p(x_in, disc);
  const at::Tensor x = p.pad(x_in), w = p.pad_weights(w_in, disc);
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "random_walk_cpu", [&] {
    out = walk_steps(x, steps, [&](const at::Tensor& in, at::Tensor& o) {
      step_cpu<scalar_t, false>(p, w.data_ptr<scalar_t>(), in.data_ptr<scalar_t>(), o.data_ptr<scalar_t>());
    });
  });
  return p.crop(out);
}

std::tuple<at::Tensor, at::Tensor> random_walk_backward_cpu(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                            const at::Tensor& w_in, int64_t radius, int64_t steps) {
  check_walk_input(x_in, w_in, radius, steps);
  TORCH_CHECK_VALUE(grad_in.sizes() == x_in.sizes() && grad_in.scalar_type() == x_in.scalar_type(),
                    "random_walk_backward: `grad` must match `x`");
  if (x_in.numel() == 0 || w_in.numel() == 0 || steps == 0)
    return {grad_in.contiguous().clone(), at::zeros_like(w_in, at::MemoryFormat::Contiguous)};
  const Disc disc(static_cast<int>(radius));
  const Padded p(x_in, disc);
  const at::Tensor grad = p.pad(grad_in), x = p.pad(x_in), w = p.pad_weights(w_in, disc);
  std::tuple<at::Tensor, at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "random_walk_backward_cpu", [&] {
    const scalar_t* wp = w.data_ptr<scalar_t>();
    out = walk_backward(
        grad, x, w, steps,
        [&](const at::Tensor& in, at::Tensor& o) {
          step_cpu<scalar_t, false>(p, wp, in.data_ptr<scalar_t>(), o.data_ptr<scalar_t>());
        },
        [&](const at::Tensor& g, const at::Tensor& state, at::Tensor& g_out, at::Tensor& grad_w) {
          weight_grad_cpu<scalar_t>(p, g.data_ptr<scalar_t>(), state.data_ptr<scalar_t>(), grad_w.data_ptr<scalar_t>());
          step_cpu<scalar_t, true>(p, wp, g.data_ptr<scalar_t>(), g_out.data_ptr<scalar_t>());
        });
  });
  return {p.crop(std::get<0>(out)), p.crop(std::get<1>(out))};
}

}  // namespace

TORCH_LIBRARY_IMPL(wsseg_fast, CPU, m) {
  m.impl("random_walk", &random_walk_cpu);
  m.impl("random_walk_backward", &random_walk_backward_cpu);
}

}  // namespace wsseg
