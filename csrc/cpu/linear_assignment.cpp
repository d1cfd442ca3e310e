// CPU kernel of wsseg_fast::batch_linear_assignment: the shortest augmenting
// path core of wsseg/lsap.h, one problem per task, problems spread over the
// OpenMP threads of at::parallel_for.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "wsseg/lsap_host.h"
#include "wsseg/lsap.h"

namespace wsseg {
namespace {

using lsap::Status;

// Scratch for one problem of at most nr x nc, reused across the problems of a
// thread. The cost is copied row-major (transposed and negated as needed) in
// its own dtype -- float32 stays float32, half the memory traffic of float64 --
// and widened to the accumulator on every read.
template <typename scalar_t, typename acc_t>
struct CpuScratch {
  std::vector<scalar_t> cost;
  std::vector<acc_t> u, v, shortest;
  std::vector<int32_t> path, col4row, row4col, remaining, free_rows;
  std::vector<uint8_t> visited_row, visited_col;
  CpuScratch(int64_t nr, int64_t nc)
      : cost(nr * nc), u(nr), v(nc), shortest(nc), path(nc), col4row(nr), row4col(nc), remaining(nc),
        free_rows(nr), visited_row(nr), visited_col(nc) {}
  lsap::Workspace<acc_t> workspace() {
    return {u.data(),         v.data(),         shortest.data(),    path.data(),
            col4row.data(),   row4col.data(),   remaining.data(),   free_rows.data(),
            visited_row.data(), visited_col.data()};
  }
};

template <typename scalar_t, typename acc_t>
void solve_batch(const at::Tensor& cost, bool maximize, at::Tensor& out, std::vector<int32_t>& status) {
  const ProblemShape shape(cost);
  const scalar_t* data = cost.data_ptr<scalar_t>();
  int64_t* result = out.data_ptr<int64_t>();
  at::parallel_for(0, shape.batch, 1, [&](int64_t begin, int64_t end) {
    CpuScratch<scalar_t, acc_t> scratch(shape.nr, shape.nc);
    auto ws = scratch.workspace();
    for (int64_t b = begin; b < end; ++b) {
      const scalar_t* src = data + b * shape.batch_stride;
      for (int64_t i = 0; i < shape.nr; ++i) {
        for (int64_t j = 0; j < shape.nc; ++j) {
          const scalar_t c = src[i * shape.row_stride + j * shape.col_stride];
          scratch.cost[i * shape.nc + j] = maximize ? -c : c;
        }
      }
      const lsap::CostView<scalar_t, acc_t> view{scratch.cost.data(), shape.nc};
      status[b] = lsap::solve(view, ws, int32_t(shape.nr), int32_t(shape.nc));
      int64_t* row = result + b * shape.workers;
      if (status[b] != lsap::kOk) continue;  // the row stays -1
      for (int64_t i = 0; i < shape.nr; ++i) {
        if (shape.transposed) {
          row[ws.col4row[i]] = i;
        } else {
          row[i] = ws.col4row[i];
        }
      }
    }
  });
}

at::Tensor batch_linear_assignment_cpu(const at::Tensor& cost_in, bool maximize, bool check) {
  check_assignment_input(cost_in);
  const at::Tensor cost = cost_in.contiguous();
  at::Tensor out = at::full({cost.size(0), cost.size(1)}, -1, cost.options().dtype(at::kLong));
  if (cost.numel() == 0) return out;
  std::vector<int32_t> status(cost.size(0), lsap::kOk);
  switch (cost.scalar_type()) {
    case at::kFloat: solve_batch<float, double>(cost, maximize, out, status); break;
    case at::kDouble: solve_batch<double, double>(cost, maximize, out, status); break;
    case at::kLong: solve_batch<int64_t, int64_t>(cost, maximize, out, status); break;
    default: TORCH_CHECK_TYPE(false, "unreachable: dtype was checked");
  }
  if (check) {
    for (int64_t b = 0; b < int64_t(status.size()); ++b) raise_for_status(status[b], b, maximize);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(wsseg_fast, CPU, m) {
  m.impl("batch_linear_assignment", &batch_linear_assignment_cpu);
}

}  // namespace wsseg
