// CPU kernels of wsseg_fast::random_walk and its backward.
//
// The walk runs on padded planes: every channel plane gets a zero halo of
// `reach` (the disc's largest |dy|, |dx|) pixels, its width rounded up to whole
// tiles, and the weights a copy in the same layout with every entry whose
// neighbour is outside the image set to 0. Then every output pixel's stencil
// is in bounds and a step is nothing but register-blocked tiles: a tile of
// (up to) kChannelBlock x kPixels outputs accumulated over the K offsets, one
// weight vector load serving kChannelBlock multiply-adds (AVX2+FMA intrinsics
// for float when the CPU has them, portable loops otherwise). The halo stays zero (its
// weights are zero), so the planes are padded once per call, not per step.
// Same sums as walk_at of wsseg/random_walk.h; memory ~(1 + 2 reach / W)^2 of
// the unpadded tensors.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <vector>

#include "wsseg/random_walk.h"
#include "wsseg/random_walk_host.h"

namespace wsseg {
namespace {

constexpr int kPixels = 16;  // output pixels per tile: two 8-float AVX2 vectors

// The padded layout of one call.
struct Padded {
  int64_t batch, channels, height, width, n_offsets, reach, tiles, ph, pw, phw;
  std::vector<int64_t> x_at;  // per offset, relative to a pixel
  Padded(const at::Tensor& x, const Disc& disc)
      : batch(x.size(0)), channels(x.size(1)), height(x.size(2)), width(x.size(3)), n_offsets(disc.size()) {
    reach = 0;
    for (int k = 0; k < disc.size(); ++k)
      reach = std::max<int64_t>(reach, std::max(std::abs(disc.dy[k]), std::abs(disc.dx[k])));
    tiles = (width + kPixels - 1) / kPixels;
    ph = height + 2 * reach;
    pw = tiles * kPixels + 2 * reach;
    phw = ph * pw;
    for (int64_t k = 0; k < n_offsets; ++k) {
      x_at.push_back(int64_t(disc.dy[k]) * pw + disc.dx[k]);
    }
  }
  int64_t origin() const { return reach * pw + reach; }  // pixel (0, 0) in a padded plane

  at::Tensor pad(const at::Tensor& t) const {  // [B, C, H, W] -> zero-haloed [B, C, ph, pw]
    at::Tensor out = at::zeros({t.size(0), t.size(1), ph, pw}, t.options());
    out.narrow(2, reach, height).narrow(3, reach, width).copy_(t);
    return out;
  }
  at::Tensor crop(const at::Tensor& t) const { return t.narrow(2, reach, height).narrow(3, reach, width).contiguous(); }
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
  // W^T in the same padded layout: entry k of pixel i is entry K-1-k (the
  // opposite offset) of the neighbour i + offset_k. `w` is pad_weights' output.
  at::Tensor transposed(const at::Tensor& w, const Disc& disc) const {
    at::Tensor out = at::zeros_like(w);
    for (int64_t k = 0; k < n_offsets; ++k)
      out.select(1, k)
          .narrow(1, reach, height)
          .narrow(2, reach, width)
          .copy_(w.select(1, n_offsets - 1 - k)
                     .narrow(1, reach + disc.dy[k], height)
                     .narrow(2, reach + disc.dx[k], width));
    return out;
  }
  // Padded weights -> tiles [B, H, tiles, K, kPixels]: the K x kPixels weights
  // one output tile reads are one contiguous block (one stream for the
  // prefetcher instead of K).
  at::Tensor tiled(const at::Tensor& w) const {
    return w.narrow(2, reach, height)
        .narrow(3, reach, tiles * kPixels)
        .reshape({batch, n_offsets, height, tiles, kPixels})
        .permute({0, 2, 3, 1, 4})
        .contiguous();
  }
};

// kC x kPixels outputs at `out` from the K weighted neighbours, in registers;
// `w` is the tile's [K, kPixels] weight block. Portable version: doubles, and
// floats on CPUs without AVX2+FMA.
template <typename T, int kC>
inline void tile(const T* __restrict__ w, const T* __restrict__ in, T* __restrict__ out, int64_t phw,
                 const int64_t* __restrict__ x_at, int64_t n_offsets) {
  T acc[kC][kPixels] = {};
  for (int64_t k = 0; k < n_offsets; ++k) {
    const T* wk = w + k * kPixels;
    const T* xk = in + x_at[k];
    for (int c = 0; c < kC; ++c)
      for (int i = 0; i < kPixels; ++i) acc[c][i] += wk[i] * xk[c * phw + i];
  }
  for (int c = 0; c < kC; ++c)
    for (int i = 0; i < kPixels; ++i) out[c * phw + i] = acc[c][i];
}

// The float tile with AVX2 intrinsics: kC x 2 accumulators + 2 weight vectors
// fill the 16 ymm registers at kC = 7 (GCC's auto-vectorised loop above spills
// them, ~3x slower).
#define WSSEG_AVX2 __attribute__((target("avx2,fma")))
template <int kC>
WSSEG_AVX2 inline void tile_avx2(const float* __restrict__ w, const float* __restrict__ in, float* __restrict__ out,
                                 int64_t phw, const int64_t* __restrict__ x_at, int64_t n_offsets) {
  __m256 acc[kC][2];
#pragma GCC unroll 8
  for (int c = 0; c < kC; ++c) acc[c][0] = acc[c][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < n_offsets; ++k) {
    const float* xk = in + x_at[k];
    const __m256 w0 = _mm256_loadu_ps(w + k * kPixels), w1 = _mm256_loadu_ps(w + k * kPixels + 8);
#pragma GCC unroll 8
    for (int c = 0; c < kC; ++c) {
      acc[c][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xk + c * phw), acc[c][0]);
      acc[c][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xk + c * phw + 8), acc[c][1]);
    }
  }
#pragma GCC unroll 8
  for (int c = 0; c < kC; ++c) {
    _mm256_storeu_ps(out + c * phw, acc[c][0]);
    _mm256_storeu_ps(out + c * phw + 8, acc[c][1]);
  }
}

constexpr int kChannelBlock = 7;

template <typename T>
struct PortableTile {
  template <int kC>
  static void run(const T* w, const T* in, T* out, int64_t phw, const int64_t* x_at, int64_t n) {
    tile<T, kC>(w, in, out, phw, x_at, n);
  }
};
struct Avx2Tile {
  template <int kC>
  WSSEG_AVX2 static void run(const float* w, const float* in, float* out, int64_t phw, const int64_t* x_at, int64_t n) {
    tile_avx2<kC>(w, in, out, phw, x_at, n);
  }
};

// One row of one image: its tiles, channels in blocks of kChannelBlock (the
// last block with the remainder). `w` is the row's [tiles, K, kPixels] weights,
// `in`/`out` the padded planes at the row's first pixel.
template <typename Tile, typename T>
inline void step_row(const T* w, const T* in, T* out, int64_t channels, int64_t tiles, int64_t phw, const int64_t* x_at,
                     int64_t n) {
  for (int64_t t = 0; t < tiles; ++t) {
    const T* wt = w + t * n * kPixels;
    for (int64_t c = 0; c < channels; c += kChannelBlock) {
      const T* i = in + c * phw + t * kPixels;
      T* o = out + c * phw + t * kPixels;
      switch (std::min<int64_t>(kChannelBlock, channels - c)) {
        case 7: Tile::template run<7>(wt, i, o, phw, x_at, n); break;
        case 6: Tile::template run<6>(wt, i, o, phw, x_at, n); break;
        case 5: Tile::template run<5>(wt, i, o, phw, x_at, n); break;
        case 4: Tile::template run<4>(wt, i, o, phw, x_at, n); break;
        case 3: Tile::template run<3>(wt, i, o, phw, x_at, n); break;
        case 2: Tile::template run<2>(wt, i, o, phw, x_at, n); break;
        default: Tile::template run<1>(wt, i, o, phw, x_at, n); break;
      }
    }
  }
}

WSSEG_AVX2 void step_row_avx2(const float* w, const float* in, float* out, int64_t channels, int64_t tiles, int64_t phw,
                              const int64_t* x_at, int64_t n) {
  step_row<Avx2Tile, float>(w, in, out, channels, tiles, phw, x_at, n);
}
const bool kHasAvx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");

inline void step_row_any(const float* w, const float* in, float* out, int64_t c, int64_t t, int64_t phw,
                         const int64_t* x_at, int64_t n) {
  if (kHasAvx2) return step_row_avx2(w, in, out, c, t, phw, x_at, n);
  step_row<PortableTile<float>, float>(w, in, out, c, t, phw, x_at, n);
}
inline void step_row_any(const double* w, const double* in, double* out, int64_t c, int64_t t, int64_t phw,
                         const int64_t* x_at, int64_t n) {
  step_row<PortableTile<double>, double>(w, in, out, c, t, phw, x_at, n);
}

// out = W x on padded planes, with `w_tiles` the weights as Padded::tiled lays
// them out (W^T x: pass the tiles of Padded::transposed). One task per image row.
template <typename T>
void step_cpu(const Padded& p, const T* w_tiles, const T* in, T* out) {
  const int64_t row_weights = p.tiles * p.n_offsets * kPixels;
  at::parallel_for(0, p.batch * p.height, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / p.height, at = p.origin() + (r % p.height) * p.pw;
      step_row_any(w_tiles + r * row_weights, in + b * p.channels * p.phw + at, out + b * p.channels * p.phw + at,
                   p.channels, p.tiles, p.phw, p.x_at.data(), p.n_offsets);
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
  const at::Tensor x = p.pad(x_in), w = p.tiled(p.pad_weights(w_in, disc));
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "random_walk_cpu", [&] {
    out = walk_steps(x, steps, [&](const at::Tensor& in, at::Tensor& o) {
      step_cpu<scalar_t>(p, w.data_ptr<scalar_t>(), in.data_ptr<scalar_t>(), o.data_ptr<scalar_t>());
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
  const at::Tensor grad = p.pad(grad_in), x = p.pad(x_in), w_padded = p.pad_weights(w_in, disc);
  const at::Tensor w = p.tiled(w_padded), w_t = p.tiled(p.transposed(w_padded, disc));
  std::tuple<at::Tensor, at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "random_walk_backward_cpu", [&] {
    const scalar_t *wp = w.data_ptr<scalar_t>(), *wp_t = w_t.data_ptr<scalar_t>();
    out = walk_backward(
        grad, x, w_padded, steps,
        [&](const at::Tensor& in, at::Tensor& o) {
          step_cpu<scalar_t>(p, wp, in.data_ptr<scalar_t>(), o.data_ptr<scalar_t>());
        },
        [&](const at::Tensor& g, const at::Tensor& state, at::Tensor& g_out, at::Tensor& grad_w) {
          weight_grad_cpu<scalar_t>(p, g.data_ptr<scalar_t>(), state.data_ptr<scalar_t>(), grad_w.data_ptr<scalar_t>());
          step_cpu<scalar_t>(p, wp_t, g.data_ptr<scalar_t>(), g_out.data_ptr<scalar_t>());
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
