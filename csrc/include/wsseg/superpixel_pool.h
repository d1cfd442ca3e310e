// Superpixel pooling on the CPU: the per-superpixel reductions of one plane and
// the write-back. Sums and maxima go over runs of equal labels: superpixels are
// compact, so a row crosses few of them (SLIC with ~200 superpixels at 256^2:
// ~6k runs of ~11 pixels); the runs are found once per image and serve all its
// channels, and within a run the reduction is a plain contiguous loop instead
// of a table access per pixel.
#pragma once

#include <cstdint>
#include <vector>

namespace wsseg {
namespace superpixel {

struct Run {
  int64_t start, end;  // pixels [start, end) of a flattened plane
  int64_t label;       // < 0: pixels outside every superpixel (padding)
};

template <typename label_t>
inline std::vector<Run> label_runs(const label_t* labels, int64_t n) {
  std::vector<Run> runs;
  for (int64_t p = 0; p < n;) {
    int64_t q = p + 1;
    while (q < n && labels[q] == labels[p]) ++q;
    runs.push_back({p, q, labels[p] < 0 ? -1 : int64_t(labels[p])});
    p = q;
  }
  return runs;
}

// Sum of x[start, end), four partial sums (the add latency, not the loads, would bound one).
template <typename scalar_t>
inline scalar_t run_sum(const scalar_t* x, int64_t start, int64_t end) {
  scalar_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t p = start;
  for (; p + 4 <= end; p += 4) {
    s0 += x[p];
    s1 += x[p + 1];
    s2 += x[p + 2];
    s3 += x[p + 3];
  }
  for (; p < end; ++p) s0 += x[p];
  return (s0 + s1) + (s2 + s3);
}

// Sum of x per label into sums[K] (zeroed by the caller).
template <typename scalar_t>
inline void plane_sums(const scalar_t* x, const std::vector<Run>& runs, scalar_t* sums) {
  for (const Run& r : runs)
    if (r.label >= 0) sums[r.label] += run_sum(x, r.start, r.end);
}

// Max of x per label and its first position (the lowest index wins ties) into
// maxes[K], argmax[K]; argmax starts at -1 (a superpixel not seen yet). A NaN is the max (as in
// torch.amax) at its first position: the comparison alone keeps a NaN only as a run's first pixel,
// so the loop flags NaN. A run's position is searched only when it beats the superpixel's max.
template <typename scalar_t>
inline void plane_max(const scalar_t* x, const std::vector<Run>& runs, scalar_t* maxes, int64_t* argmax) {
  for (const Run& r : runs) {
    if (r.label < 0) continue;
    scalar_t m = x[r.start];
    bool nan = m != m;
    for (int64_t p = r.start + 1; p < r.end; ++p) {
      m = x[p] > m ? x[p] : m;
      nan |= x[p] != x[p];
    }
    const scalar_t best = maxes[r.label];
    if (argmax[r.label] >= 0 && (best != best || !(nan || m > best))) continue;  // earlier runs win ties
    int64_t at = r.start;
    if (nan) {
      while (x[at] == x[at]) ++at;
    } else {
      while (!(x[at] == m)) ++at;
    }
    maxes[r.label] = x[at];
    argmax[r.label] = at;
  }
}

// out[p] = table[label of p], with table[-1] == 0 for the pixels outside every
// superpixel (labels < 0). Per pixel and branch-free, not per run: SLIC's runs
// are short and of irregular length, and a fill loop per run mispredicts its
// exit (~2x slower); the compiler turns this loop into gathers.
template <typename scalar_t, typename label_t>
inline void plane_gather(const label_t* labels, int64_t n, const scalar_t* table, scalar_t* out) {
  for (int64_t p = 0; p < n; ++p) out[p] = table[labels[p] < 0 ? label_t(-1) : labels[p]];
}

}  // namespace superpixel
}  // namespace wsseg
