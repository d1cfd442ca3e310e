// Rectangular linear sum assignment: the shortest augmenting path method
// (Jonker & Volgenant 1987; Crouse 2016, the algorithm behind SciPy's
// linear_sum_assignment), split into phases that are host+device functions.
//
// One problem has nr <= nc (callers transpose otherwise). Every row gets a
// column; the total cost is minimal.
//
// The CPU kernel runs each phase serially (for floating costs with the row
// reduction and the column scan vectorised, csrc/cpu, same choices). The CUDA
// kernel runs the same phases with the column scan spread over the threads of
// a block and merged with `better`, a total order on candidates, so both pick
// the same column at every step and return the same matching -- ties included.
#pragma once

#include <cmath>
#include <cstdint>

#include "wsseg/common.h"

namespace wsseg {
namespace lsap {

enum Status : int32_t { kOk = 0, kInfeasible = 1, kInvalid = 2 };

// Shortest-path distances are exact in the accumulator: int64 for integer
// costs, double for floating costs (as SciPy does).
template <typename acc_t>
struct Acc;

template <>
struct Acc<double> {
  static constexpr bool kFloat = true;  // inf arithmetic is safe
  WSSEG_HD static double inf() { return INFINITY; }
  WSSEG_HD static bool finite(double c) { return c < INFINITY && c > -INFINITY; }  // false for NaN too
};

// For integer costs the largest int64 is "+inf": a forbidden pair. reduce_row
// must flag it, else the square start (init_jv) would subtract from it and overflow.
template <>
struct Acc<int64_t> {
  static constexpr bool kFloat = false;
  WSSEG_HD static int64_t inf() { return 0x7fffffffffffffffLL; }
  WSSEG_HD static bool finite(int64_t c) { return c != inf(); }
};

// A row-major problem: cost(i, j) = data[i * row_stride + j], read as acc_t.
// Callers transpose (W > T) and negate (maximize) before solving.
template <typename scalar_t, typename acc_t>
struct CostView {
  const scalar_t* data;
  int64_t row_stride;
  WSSEG_HD const scalar_t* row(int64_t i) const { return data + i * row_stride; }
  WSSEG_HD acc_t operator()(int64_t i, int64_t j) const { return static_cast<acc_t>(data[i * row_stride + j]); }
};

// Per-problem scratch. Sizes: u, col4row, visited_row: nr; the rest: nc.
template <typename acc_t>
struct Workspace {
  acc_t* u;
  acc_t* v;
  acc_t* shortest;
  int32_t* path;
  int32_t* col4row;
  int32_t* row4col;
  int32_t* remaining;
  uint8_t* visited_row;
  uint8_t* visited_col;
};

// A column reached by the shortest-path search: its tentative distance,
// whether it is still unassigned (reaching a free column ends the search),
// its index, and its position in `remaining`.
template <typename acc_t>
struct Candidate {
  acc_t dist;
  int32_t col;
  int32_t pos;
  bool free;
};

// Total order: shorter first, then a free column, then the lower index.
template <typename acc_t>
WSSEG_HD bool better(const Candidate<acc_t>& a, const Candidate<acc_t>& b) {
  if (a.dist != b.dist) return a.dist < b.dist;
  if (a.free != b.free) return a.free;
  return a.col < b.col;
}

template <typename acc_t>
WSSEG_HD Candidate<acc_t> no_candidate() {
  return Candidate<acc_t>{Acc<acc_t>::inf(), 0x7fffffff, -1, false};
}

// --- phase 0: validate, initial duals and matching -----------------------------

template <typename acc_t>
WSSEG_HD void reset_col(const Workspace<acc_t>& ws, int32_t j) {
  ws.v[j] = acc_t(0);
  ws.row4col[j] = -1;
}

// Two ways to start, both leaving a dual-feasible state (reduced costs
// c - u - v >= 0, zero on matched pairs, v <= 0 on free columns) in which
// every matched row sits on a column of least reduced cost:
//
// (a) any shape, any costs: row reduction u[i] = min_j c(i, j), v = 0, and a
//     greedy match of each row to its argmin column while that column is free.
// (b) square and finite (most of the work in practice): Jonker-Volgenant's
//     column reduction and reduction transfer. Their augmenting row reduction
//     is left out: measured on random float32 problems it cost more than it
//     saved (300x300, one thread: 4.5 -> 2.0 ms per problem without it).

// What reduce_row saw in a row, as bits.
enum RowFlags : int32_t { kRowHasForbidden = 1, kRowHasInvalid = 2 };

// (a) u[i] = min_j c(i, j); col4row[i] temporarily holds the (lowest) argmin.
// The same pass validates the row: returns RowFlags (NaN or -inf is invalid,
// +inf is a forbidden pair).
template <typename scalar_t, typename acc_t>
WSSEG_HD int32_t reduce_row(const CostView<scalar_t, acc_t>& cost, const Workspace<acc_t>& ws, int32_t nc, int32_t i) {
  const scalar_t* row = cost.row(i);
  acc_t best = Acc<acc_t>::inf();
  int32_t arg = -1;
  bool all_finite = true;
  for (int32_t j = 0; j < nc; ++j) {
    const acc_t c = row[j];
    all_finite &= Acc<acc_t>::finite(c);
    if (c < best) {
      best = c;
      arg = j;
    }
  }
  // A row without a finite entry keeps u = 0; the search reports it infeasible.
  ws.u[i] = arg < 0 ? acc_t(0) : best;
  ws.col4row[i] = arg;
  if (all_finite) return 0;
  int32_t flags = 0;
  for (int32_t j = 0; j < nc; ++j) {
    const acc_t c = row[j];
    flags |= c == Acc<acc_t>::inf() ? kRowHasForbidden : Acc<acc_t>::finite(c) ? 0 : kRowHasInvalid;
  }
  return flags;
}

// (a) serially: a row takes its argmin column when it is still free.
template <typename acc_t>
WSSEG_HD void greedy_assign(const Workspace<acc_t>& ws, int32_t nr) {
  for (int32_t i = 0; i < nr; ++i) {
    const int32_t j = ws.col4row[i];
    if (j >= 0 && ws.row4col[j] < 0) {
      ws.row4col[j] = i;
    } else {
      ws.col4row[i] = -1;
    }
  }
}

// (b) v[j] = min_i c(i, j); row4col[j] temporarily holds the (lowest) argmin.
template <typename scalar_t, typename acc_t>
WSSEG_HD void reduce_col(const CostView<scalar_t, acc_t>& cost, const Workspace<acc_t>& ws, int32_t n, int32_t j) {
  acc_t best = cost(0, j);
  int32_t arg = 0;
  for (int32_t i = 1; i < n; ++i) {
    const acc_t c = cost(i, j);
    if (c < best) {
      best = c;
      arg = i;
    }
  }
  ws.v[j] = best;
  ws.row4col[j] = arg;
}

// (b) all columns at once, row by row (cache friendly on a CPU); the same
// result as reduce_col for every j.
template <typename scalar_t, typename acc_t>
WSSEG_HD void reduce_cols(const CostView<scalar_t, acc_t>& cost, const Workspace<acc_t>& ws, int32_t n) {
  for (int32_t j = 0; j < n; ++j) {
    ws.v[j] = Acc<acc_t>::inf();
    ws.row4col[j] = 0;
  }
  for (int32_t i = 0; i < n; ++i) {
    const scalar_t* row = cost.row(i);
    for (int32_t j = 0; j < n; ++j) {
      const acc_t c = row[j];
      if (c < ws.v[j]) {
        ws.v[j] = c;
        ws.row4col[j] = i;
      }
    }
  }
}

// (b) serially: a row gets the last column (in reverse order) it is the
// argmin of; visited_row[i] marks rows that are the argmin of one column only.
template <typename acc_t>
WSSEG_HD void match_column_minima(const Workspace<acc_t>& ws, int32_t n) {
  for (int32_t i = 0; i < n; ++i) {
    ws.col4row[i] = -1;
    ws.visited_row[i] = 1;
  }
  for (int32_t j = n - 1; j >= 0; --j) {
    const int32_t i = ws.row4col[j];
    if (ws.col4row[i] < 0) {
      ws.col4row[i] = j;
    } else {
      ws.visited_row[i] = 0;
      ws.row4col[j] = -1;
    }
  }
}

// (b) min over columns j != skip in [begin, end) step `stride` of c(i, j) - v[j].
template <typename scalar_t, typename acc_t>
WSSEG_HD acc_t min_reduced(const CostView<scalar_t, acc_t>& cost, const Workspace<acc_t>& ws, int32_t i, int32_t skip,
                           int32_t begin, int32_t end, int32_t stride) {
  const scalar_t* row = cost.row(i);
  acc_t best = Acc<acc_t>::inf();
  for (int32_t j = begin; j < end; j += stride) {
    const acc_t r = acc_t(row[j]) - ws.v[j];
    if (j != skip && r < best) best = r;
  }
  return best;
}

// (a) or (b) done: u[i] = least reduced cost of row i, attained at its column.
template <typename scalar_t, typename acc_t>
WSSEG_HD void settle_row_dual(const CostView<scalar_t, acc_t>& cost, const Workspace<acc_t>& ws, int32_t nc,
                              int32_t i) {
  const int32_t j = ws.col4row[i];
  ws.u[i] = j >= 0 ? cost(i, j) - ws.v[j] : min_reduced(cost, ws, i, -1, 0, nc, 1);
}

// --- phase 1: shortest augmenting path from an unassigned row ---------------

template <typename acc_t>
WSSEG_HD void start_search_col(const Workspace<acc_t>& ws, int32_t j) {
  ws.remaining[j] = j;
  ws.visited_col[j] = 0;
  ws.shortest[j] = Acc<acc_t>::inf();
}

// Relax the edges of row i to the unvisited columns remaining[pos] for pos in
// [begin, num_remaining) step `stride`, and return the best of them. The
// distance test comes first: ties are rare, so `better` seldom runs.
template <typename scalar_t, typename acc_t>
WSSEG_HD Candidate<acc_t> scan_row(const CostView<scalar_t, acc_t>& cost, const Workspace<acc_t>& ws, int32_t i,
                                   acc_t min_val, int32_t begin, int32_t num_remaining, int32_t stride) {
  const scalar_t* row = cost.row(i);
  Candidate<acc_t> best = no_candidate<acc_t>();
  const acc_t base = min_val - ws.u[i];
  for (int32_t pos = begin; pos < num_remaining; pos += stride) {
    const int32_t j = ws.remaining[pos];
    const acc_t c = row[j];
    // A forbidden edge (+inf) never relaxes; also keeps int64 sums from overflowing.
    if (Acc<acc_t>::kFloat || c != Acc<acc_t>::inf()) {
      const acc_t r = base + c - ws.v[j];
      if (r < ws.shortest[j]) {
        ws.path[j] = i;
        ws.shortest[j] = r;
      }
    }
    if (ws.shortest[j] <= best.dist) {
      const Candidate<acc_t> cand{ws.shortest[j], j, pos, ws.row4col[j] < 0};
      if (better(cand, best)) best = cand;
    }
  }
  return best;
}

// Accept the chosen column: mark it, drop it from `remaining`, and return the
// next row to scan (or -1 when the column is free: the path ends there).
template <typename acc_t>
WSSEG_HD int32_t take_column(const Workspace<acc_t>& ws, const Candidate<acc_t>& chosen, int32_t* num_remaining) {
  ws.visited_col[chosen.col] = 1;
  ws.remaining[chosen.pos] = ws.remaining[--(*num_remaining)];
  return ws.row4col[chosen.col];
}

// --- phase 2: dual update and augmentation -----------------------------------

template <typename acc_t>
WSSEG_HD void update_row_dual(const Workspace<acc_t>& ws, int32_t i, int32_t cur_row, acc_t min_val) {
  if (i == cur_row) {
    ws.u[i] += min_val;
  } else if (ws.visited_row[i]) {
    ws.u[i] += min_val - ws.shortest[ws.col4row[i]];
  }
}

template <typename acc_t>
WSSEG_HD void update_col_dual(const Workspace<acc_t>& ws, int32_t j, acc_t min_val) {
  if (ws.visited_col[j]) ws.v[j] -= min_val - ws.shortest[j];
}

// Flip the matching along the path that ends at the free column `sink`.
template <typename acc_t>
WSSEG_HD void augment(const Workspace<acc_t>& ws, int32_t cur_row, int32_t sink) {
  int32_t j = sink;
  while (true) {
    const int32_t i = ws.path[j];
    ws.row4col[j] = i;
    const int32_t prev = ws.col4row[i];
    ws.col4row[i] = j;
    j = prev;
    if (i == cur_row) break;
  }
}

// --- the whole solve, serially -------------------------------------------------

// (b) for an n x n finite problem.
template <typename scalar_t, typename acc_t>
WSSEG_HD void init_jv(const CostView<scalar_t, acc_t>& cost, const Workspace<acc_t>& ws, int32_t n) {
  reduce_cols(cost, ws, n);
  match_column_minima(ws, n);
  for (int32_t i = 0; i < n; ++i) {
    const int32_t j = ws.col4row[i];
    if (j >= 0 && ws.visited_row[i]) ws.v[j] -= min_reduced(cost, ws, i, j, 0, n, 1);  // reduction transfer
  }
  for (int32_t i = 0; i < n; ++i) settle_row_dual(cost, ws, n, i);
}

// Phase 0 serially, after every row's reduce_row (`flags`: their RowFlags,
// or'ed): the initial duals and matching.
template <typename scalar_t, typename acc_t>
WSSEG_HD Status start_matching(const CostView<scalar_t, acc_t>& cost, const Workspace<acc_t>& ws, int32_t nr,
                               int32_t nc, int32_t flags) {
  if (flags & kRowHasInvalid) return kInvalid;
  for (int32_t j = 0; j < nc; ++j) reset_col(ws, j);
  if (nr == nc && nc > 1 && !(flags & kRowHasForbidden)) {
    init_jv(cost, ws, nr);
  } else {
    greedy_assign(ws, nr);
  }
  return kOk;
}

// Phase 0 serially: validate, then the initial duals and matching.
template <typename scalar_t, typename acc_t>
WSSEG_HD Status initialise(const CostView<scalar_t, acc_t>& cost, const Workspace<acc_t>& ws, int32_t nr, int32_t nc) {
  int32_t flags = 0;
  for (int32_t i = 0; i < nr; ++i) flags |= reduce_row(cost, ws, nc, i);
  return start_matching(cost, ws, nr, nc, flags);
}

template <typename scalar_t, typename acc_t>
WSSEG_HD Status solve(const CostView<scalar_t, acc_t>& cost, const Workspace<acc_t>& ws, int32_t nr, int32_t nc) {
  const Status status = initialise(cost, ws, nr, nc);
  if (status != kOk) return status;
  for (int32_t cur_row = 0; cur_row < nr; ++cur_row) {
    if (ws.col4row[cur_row] >= 0) continue;
    for (int32_t j = 0; j < nc; ++j) start_search_col(ws, j);
    for (int32_t i = 0; i < nr; ++i) ws.visited_row[i] = 0;
    int32_t num_remaining = nc;
    acc_t min_val = acc_t(0);
    int32_t i = cur_row;
    int32_t sink = -1;
    while (sink < 0) {
      ws.visited_row[i] = 1;
      const Candidate<acc_t> best = scan_row(cost, ws, i, min_val, 0, num_remaining, 1);
      if (best.pos < 0 || best.dist == Acc<acc_t>::inf()) return kInfeasible;
      min_val = best.dist;
      const int32_t next = take_column(ws, best, &num_remaining);
      if (next < 0) {
        sink = best.col;
      } else {
        i = next;
      }
    }
    for (int32_t r = 0; r < nr; ++r) update_row_dual(ws, r, cur_row, min_val);
    for (int32_t j = 0; j < nc; ++j) update_col_dual(ws, j, min_val);
    augment(ws, cur_row, sink);
  }
  return kOk;
}

}  // namespace lsap
}  // namespace wsseg
