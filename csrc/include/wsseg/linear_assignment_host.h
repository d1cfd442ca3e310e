// Host-side glue shared by the CPU and CUDA kernels of batch_linear_assignment:
// input checks, the orientation of each problem, and the error for a bad one.
#pragma once

#include <ATen/ATen.h>

#include "wsseg/linear_assignment.h"

namespace wsseg {

inline void check_assignment_input(const at::Tensor& cost) {
  TORCH_CHECK_VALUE(cost.dim() == 3, "batch_linear_assignment: `cost` must have shape [B, W, T], got ", cost.dim(),
                    " dimensions");
  const auto dt = cost.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kDouble || dt == at::kLong,
                   "batch_linear_assignment: the kernel takes `cost` as float32, float64 or int64, got ", dt,
                   " (wsseg_fast.ops.batch_linear_assignment promotes other real dtypes)");
  TORCH_CHECK_VALUE(cost.size(1) < (int64_t(1) << 31) && cost.size(2) < (int64_t(1) << 31),
                    "batch_linear_assignment: W and T must be below 2^31");
}

// Each problem is solved with rows <= columns: when W > T the solver takes the
// transposed problem. The strides read the problem in that orientation.
struct ProblemShape {
  int64_t batch, workers, tasks, nr, nc;
  int64_t batch_stride, row_stride, col_stride;
  bool transposed;
  explicit ProblemShape(const at::Tensor& cost)
      : batch(cost.size(0)), workers(cost.size(1)), tasks(cost.size(2)), batch_stride(cost.stride(0)) {
    transposed = workers > tasks;
    nr = transposed ? tasks : workers;
    nc = transposed ? workers : tasks;
    row_stride = transposed ? cost.stride(2) : cost.stride(1);
    col_stride = transposed ? cost.stride(1) : cost.stride(2);
  }
};

inline void raise_for_status(int32_t status, int64_t b, bool maximize) {
  TORCH_CHECK_VALUE(status != lsap::kInvalid, "batch_linear_assignment: cost[", b, "] contains NaN or ",
                    maximize ? "+inf (with maximize=True, -inf marks a forbidden pair)" : "-inf");
  TORCH_CHECK_VALUE(status != lsap::kInfeasible, "batch_linear_assignment: cost[", b,
                    "] is infeasible: no matching of size min(W, T) avoids the forbidden (", maximize ? "-inf" : "+inf",
                    ") entries");
}

}  // namespace wsseg
