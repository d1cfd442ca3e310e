// CPU kernel of wsseg_fast::slic. Follows wsseg_fast/reference/slic.py step by
// step: Lab conversion, grid init, assignment over the 3x3 neighbouring cells,
// centre update (float64 sums), then the host steps of wsseg/slic_host.h
// (connectivity by one breadth-first pass in raster order, linear time).
// Images, or the rows of a single image, are spread over the threads of
// at::parallel_for.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <vector>

#include "wsseg/slic.h"
#include "wsseg/slic_host.h"

namespace wsseg {
namespace {

using slic::Grid;

// Linear RGB of 256 pixels -> Lab. Separate from the gather of the inputs so this loop
// vectorises; compiled for AVX2 too (picked at load time where the CPU has it).
__attribute__((target_clones("avx2", "default"))) void lab_block(const float* __restrict r, const float* __restrict g,
                                                                 const float* __restrict b, int n, float* __restrict L,
                                                                 float* __restrict A, float* __restrict B) {
  for (int i = 0; i < n; ++i) slic::linear_rgb_to_lab(r[i], g[i], b[i], L + i, A + i, B + i);
}

// [3, H, W] planar Lab of one image (uint8 0..255 or float32 in [0, 1]).
void to_lab(const at::Tensor& image, float* lab, int64_t hw) {
  float lut[256];
  for (int v = 0; v < 256; ++v) lut[v] = slic::srgb_to_linear(float(v) / 255.0f);
  const bool bytes = image.scalar_type() == at::kByte;
  const uint8_t* u8 = bytes ? image.data_ptr<uint8_t>() : nullptr;
  const float* f32 = bytes ? nullptr : image.data_ptr<float>();
  constexpr int64_t kBlock = 256;
  at::parallel_for(0, (hw + kBlock - 1) / kBlock, 16, [&](int64_t begin, int64_t end) {
    float rgb[3][kBlock];
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t p0 = blk * kBlock;
      const int n = int(std::min(kBlock, hw - p0));
      for (int c = 0; c < 3; ++c) {
        for (int i = 0; i < n; ++i) {
          const int64_t p = c * hw + p0 + i;
          rgb[c][i] = bytes ? lut[u8[p]] : slic::srgb_to_linear(f32[p]);
        }
      }
      lab_block(rgb[0], rgb[1], rgb[2], n, lab + p0, lab + hw + p0, lab + 2 * hw + p0);
    }
  });
}

// One row span of pixels against one centre: keep the nearer (strict <, so
// earlier centres win ties). The body of slic::distance, written so it vectorises.
__attribute__((target_clones("avx2", "default"))) void nearer_span(const float* __restrict L, const float* __restrict A,
                                                                   const float* __restrict B, int x0, int x1,
                                                                   const float* centre, float dyy, float weight,
                                                                   int32_t k, float* __restrict best,
                                                                   int32_t* __restrict arg) {
  const float cl = centre[0], ca = centre[1], cb = centre[2], cx = centre[4];
  for (int x = x0; x < x1; ++x) {
    const float dl = L[x] - cl, da = A[x] - ca, db = B[x] - cb, dx = float(x) - cx;
    const float d = (dl * dl + da * da + db * db) + weight * (dyy + dx * dx);
    const float old = best[x];
    const int32_t nearer = -int32_t(d < old);  // all ones where the centre is nearer
    best[x] = d < old ? d : old;
    arg[x] = (k & nearer) | (arg[x] & ~nearer);
  }
}

// sums[0..2] += the float64 sums of L, A, B over [x0, x1). Four partial sums per
// channel break the add-latency chain (and let the compiler pair them into vector
// lanes) without an exact-order constraint on a long chain; inlined, as runs are short.
inline void add_run(const float* __restrict L, const float* __restrict A, const float* __restrict B, int64_t x0,
                    int64_t x1, double* sums) {
  double l[4] = {0, 0, 0, 0}, a[4] = {0, 0, 0, 0}, b[4] = {0, 0, 0, 0};
  int64_t i = x0;
  for (; i + 4 <= x1; i += 4) {
    for (int j = 0; j < 4; ++j) {
      l[j] += L[i + j];
      a[j] += A[i + j];
      b[j] += B[i + j];
    }
  }
  for (; i < x1; ++i) {
    l[0] += L[i];
    a[0] += A[i];
    b[0] += B[i];
  }
  sums[0] += (l[0] + l[1]) + (l[2] + l[3]);
  sums[1] += (a[0] + a[1]) + (a[2] + a[3]);
  sums[2] += (b[0] + b[1]) + (b[2] + b[3]);
}

struct Slic {
  int64_t height, width, hw;
  Grid grid;
  const float* lab;             // [3, HW]
  const bool* mask;             // [HW] or null
  std::vector<int32_t> labels;  // centre index per pixel, -1 outside the mask
  std::vector<float> centre;    // [cells, 5]: L, a, b, y, x
  std::vector<uint8_t> alive;   // the centre has pixels

  Slic(int64_t h, int64_t w, const Grid& g, const float* lab_, const bool* mask_)
      : height(h),
        width(w),
        hw(h * w),
        grid(g),
        lab(lab_),
        mask(mask_),
        labels(hw),
        centre(5 * g.cells()),
        alive(g.cells()) {}

  bool valid(int64_t p) const { return mask == nullptr || mask[p]; }

  void init_labels() {
    std::vector<int32_t> column(width);  // cell column of every x, once (no division per pixel)
    for (int64_t x = 0; x < width; ++x) column[x] = slic::cell_of(x, width, grid.nx);
    at::parallel_for(0, height, 16, [&](int64_t begin, int64_t end) {
      for (int64_t y = begin; y < end; ++y) {
        const int32_t first = slic::cell_of(y, height, grid.ny) * grid.nx;
        for (int64_t x = 0; x < width; ++x) {
          const int64_t p = y * width + x;
          labels[p] = valid(p) ? first + column[x] : -1;
        }
      }
    });
  }

  // Centres = mean (L, a, b, y, x) of their pixels: per-chunk float64 sums, then one reduction.
  void update() {
    const int cells = grid.cells();
    const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), height));
    std::vector<double> sums(chunks * cells * 6, 0.0);
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        double* s = sums.data() + c * cells * 6;
        for (int64_t y = height * c / chunks; y < height * (c + 1) / chunks; ++y) {
          // Runs of one label along the row are summed at once (add_run), then added.
          const int32_t* row = labels.data() + y * width;
          const float* L = lab + y * width;
          const float* A = lab + hw + y * width;
          const float* B = lab + 2 * hw + y * width;
          for (int64_t x = 0; x < width;) {
            const int32_t k = row[x];
            const int64_t x0 = x;
            while (x < width && row[x] == k) ++x;
            if (k < 0) continue;
            const double n = double(x - x0);
            double* t = s + k * 6;
            add_run(L, A, B, x0, x, t);
            t[3] += double(y) * n;
            t[4] += 0.5 * double(x0 + x - 1) * n;  // x0 + ... + (x - 1)
            t[5] += n;
          }
        }
      }
    });
    for (int k = 0; k < cells; ++k) {
      double total[6] = {0, 0, 0, 0, 0, 0};
      for (int64_t c = 0; c < chunks; ++c)
        for (int i = 0; i < 6; ++i) total[i] += sums[(c * cells + k) * 6 + i];
      alive[k] = total[5] > 0;
      for (int i = 0; i < 5; ++i) centre[k * 5 + i] = float(total[i] / std::max(total[5], 1.0));
    }
  }

  // Every valid pixel joins the nearest live centre of the 3x3 cells around its own.
  // Row by row, each centre of the three cell rows around the row's own is tried on
  // the whole span of pixels whose cell column is within one of its column: one
  // long vectorised span per centre instead of three short ones. Centres go in
  // increasing index, which for any one pixel is its candidates' (dy, dx) order;
  // with a strict < ties go to the first, as in the reference. Returns how many
  // labels changed.
  int64_t assign() {
    const float weight = float(grid.weight);
    std::vector<int32_t> span(grid.nx + 1);  // span of centre column kx: [span[kx-1], span[kx+2])
    for (int cx = 0; cx <= grid.nx; ++cx) span[cx] = int32_t(slic::cell_start(cx, width, grid.nx));
    std::atomic<int64_t> changed{0};
    at::parallel_for(0, height, 8, [&](int64_t begin, int64_t end) {
      std::vector<float> best(width);
      std::vector<int32_t> arg(width);
      int64_t local_changed = 0;
      for (int64_t y = begin; y < end; ++y) {
        const int cy = slic::cell_of(y, height, grid.ny);
        const float fy = float(y);
        const float* L = lab + y * width;
        const float* A = lab + hw + y * width;
        const float* B = lab + 2 * hw + y * width;
        std::fill(best.begin(), best.end(), std::numeric_limits<float>::infinity());
        std::fill(arg.begin(), arg.end(), -1);
        for (int ky = std::max(cy - 1, 0); ky <= std::min(cy + 1, grid.ny - 1); ++ky) {
          for (int kx = 0; kx < grid.nx; ++kx) {
            const int k = ky * grid.nx + kx;
            if (!alive[k]) continue;
            const float* c = centre.data() + 5 * k;
            nearer_span(L, A, B, span[std::max(kx - 1, 0)], span[std::min(kx + 2, grid.nx)], c,
                        (fy - c[3]) * (fy - c[3]), weight, k, best.data(), arg.data());
          }
        }
        int32_t* row = labels.data() + y * width;
        for (int64_t x = 0; x < width; ++x) {
          const int32_t k = valid(y * width + x) ? arg[x] : -1;
          local_changed += row[x] != k;
          row[x] = k;
        }
      }
      changed += local_changed;
    });
    return changed.load();
  }

  void run(int64_t max_iter) {
    init_labels();
    update();
    for (int64_t it = 0; it < max_iter; ++it) {
      if (assign() == 0) break;
      update();
    }
  }
};

at::Tensor slic_cpu(const at::Tensor& images_in, const c10::optional<at::Tensor>& mask_in, int64_t n_segments,
                    double compactness, int64_t max_iter, bool enforce_connectivity, double min_size_factor,
                    double max_size_factor) {
  const at::Tensor mask = slic::check_inputs(images_in, mask_in, n_segments, compactness, max_iter);
  const int64_t batch = images_in.size(0), height = images_in.size(2), width = images_in.size(3), hw = height * width;
  at::Tensor out = at::empty({batch, height, width}, images_in.options().dtype(at::kInt));
  if (batch == 0 || hw == 0) return out;
  const at::Tensor images = images_in.contiguous();
  const Grid grid(height, width, n_segments, compactness);
  // Images in parallel when there are several (the rows of each then run serially); one image
  // spreads its rows over the threads instead.
  at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> lab(3 * hw);
    for (int64_t b = b0; b < b1; ++b) {
      to_lab(images[b], lab.data(), hw);
      const bool* m = mask.defined() ? mask.data_ptr<bool>() + b * hw : nullptr;
      Slic s(height, width, grid, lab.data(), m);
      s.run(max_iter);
      int32_t* dst = out.data_ptr<int32_t>() + b * hw;
      if (enforce_connectivity) {
        int64_t min_size, max_size;
        slic::size_limits(m == nullptr ? hw : std::count(m, m + hw, true), grid.cells(), min_size_factor,
                          max_size_factor, &min_size, &max_size);
        slic::connect_components(s.labels.data(), lab.data(), s.centre.data(), height, width, grid.weight, min_size,
                                 max_size, dst);
      } else {
        slic::relabel_in_raster_order(s.labels.data(), hw, grid.cells(), dst);
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(wsseg_fast, CPU, m) {
  m.impl("slic", &slic_cpu);
}

}  // namespace wsseg
