// CUDA kernel of wsseg_fast::batch_linear_assignment: one thread block per
// problem. The block runs the phases of wsseg/linear_assignment.h in the
// order of lsap::solve; every scan over the columns of a row is spread over
// the threads and merged by a total order, so the block makes the same
// choices as the serial CPU kernel and returns the same matching, ties
// included. Nothing is copied to the host unless check=true asks for errors to
// be raised.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "wsseg/linear_assignment.h"
#include "wsseg/linear_assignment_host.h"

namespace wsseg {
namespace {

using lsap::Candidate;

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;

// __shfl_down_sync of a trivially copyable struct, 32 bits at a time.
template <typename T>
__device__ T shfl_down(const T& value, int delta) {
  static_assert(sizeof(T) % 4 == 0, "shuffle works on 32-bit words");
  union Words {
    T value;
    int32_t words[sizeof(T) / 4];
  } in, out;
  in.value = value;
#pragma unroll
  for (int k = 0; k < int(sizeof(T) / 4); ++k) out.words[k] = __shfl_down_sync(0xffffffffu, in.words[k], delta);
  return out.value;
}

// Reduce one value per thread with `merge` (associative, commutative: a min
// under a total order). The result is valid in thread 0.
template <typename T, typename Merge>
__device__ T block_reduce(T x, Merge merge, T* warp_buf) {
#pragma unroll
  for (int delta = 16; delta > 0; delta >>= 1) x = merge(x, shfl_down(x, delta));
  if (threadIdx.x % 32 == 0) warp_buf[threadIdx.x / 32] = x;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kWarps; ++w) x = merge(x, warp_buf[w]);
  }
  return x;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    lsap_kernel(const scalar_t* __restrict__ cost, int32_t nr, int32_t nc, bool transposed, int64_t workers,
                acc_t* u_all, acc_t* v_all, acc_t* shortest_all, int32_t* ints_all, uint8_t* flags_all, int64_t* out,
                int32_t* status) {
  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x;
  const lsap::CostView<scalar_t, acc_t> view{cost + b * nr * nc, nc};
  int32_t* ints = ints_all + b * (int64_t(nr) + 3 * nc);
  uint8_t* bytes = flags_all + b * (int64_t(nr) + nc);
  const lsap::Workspace<acc_t> ws{u_all + b * nr, v_all + b * nc, shortest_all + b * nc, ints,
                                  ints + nc,      ints + nc + nr, ints + 2 * nc + nr,    bytes,
                                  bytes + nr};

  __shared__ Candidate<acc_t> warp_cand[kWarps];
  __shared__ acc_t warp_min[kWarps];
  __shared__ int32_t s_flags, s_ok, s_row, s_sink, s_remaining;
  __shared__ acc_t s_min_val;

  const auto min_acc = [](acc_t a, acc_t c) {
    return c < a ? c : a;
  };
  const auto min_cand = [](const Candidate<acc_t>& a, const Candidate<acc_t>& c) {
    return lsap::better(c, a) ? c : a;
  };

  // Row reduction, which also validates the entries.
  if (tid == 0) s_flags = 0;
  __syncthreads();
  int32_t flags = 0;
  for (int32_t i = tid; i < nr; i += kThreads) flags |= lsap::reduce_row(view, ws, nc, i);
  if (flags) atomicOr(&s_flags, flags);
  for (int32_t j = tid; j < nc; j += kThreads) lsap::reset_col(ws, j);
  __syncthreads();
  if (s_flags & lsap::kRowHasInvalid) {
    if (tid == 0) status[b] = lsap::kInvalid;
    return;
  }

  if (nr == nc && nc > 1 && !(s_flags & lsap::kRowHasForbidden)) {
    // Jonker-Volgenant start, as lsap::init_jv.
    const int32_t n = nr;
    for (int32_t j = tid; j < n; j += kThreads) lsap::reduce_col(view, ws, n, j);
    __syncthreads();
    if (tid == 0) lsap::match_column_minima(ws, n);
    __syncthreads();
    for (int32_t i = 0; i < n; ++i) {  // reduction transfer, row by row
      const int32_t j = ws.col4row[i];
      if (j < 0 || !ws.visited_row[i]) continue;  // the same in every thread
      acc_t m = lsap::min_reduced(view, ws, i, j, tid, n, kThreads);
      m = block_reduce(m, min_acc, warp_min);
      if (tid == 0) ws.v[j] -= m;
      __syncthreads();
    }
    for (int32_t i = tid; i < n; i += kThreads) lsap::settle_row_dual(view, ws, n, i);
  } else {
    if (tid == 0) lsap::greedy_assign(ws, nr);
  }
  __syncthreads();

  // Shortest augmenting paths for the rows still free, as lsap::solve.
  if (tid == 0) s_ok = 1;
  for (int32_t cur_row = 0; cur_row < nr; ++cur_row) {
    if (ws.col4row[cur_row] >= 0) continue;  // the same in every thread
    for (int32_t j = tid; j < nc; j += kThreads) lsap::start_search_col(ws, j);
    for (int32_t i = tid; i < nr; i += kThreads) ws.visited_row[i] = 0;
    if (tid == 0) {
      s_row = cur_row;
      s_sink = -1;
      s_remaining = nc;
      s_min_val = acc_t(0);
    }
    __syncthreads();
    while (s_sink < 0 && s_ok) {
      const int32_t i = s_row;
      if (tid == 0) ws.visited_row[i] = 1;
      Candidate<acc_t> best = lsap::scan_row(view, ws, i, s_min_val, tid, s_remaining, kThreads);
      best = block_reduce(best, min_cand, warp_cand);
      if (tid == 0) {
        if (best.pos < 0 || best.dist == lsap::Acc<acc_t>::inf()) {
          s_ok = 0;
        } else {
          s_min_val = best.dist;
          int32_t remaining = s_remaining;
          const int32_t next = lsap::take_column(ws, best, &remaining);
          s_remaining = remaining;
          if (next < 0) {
            s_sink = best.col;
          } else {
            s_row = next;
          }
        }
      }
      __syncthreads();
    }
    if (!s_ok) {
      if (tid == 0) status[b] = lsap::kInfeasible;
      return;
    }
    for (int32_t r = tid; r < nr; r += kThreads) lsap::update_row_dual(ws, r, cur_row, s_min_val);
    for (int32_t j = tid; j < nc; j += kThreads) lsap::update_col_dual(ws, j, s_min_val);
    __syncthreads();
    if (tid == 0) lsap::augment(ws, cur_row, s_sink);
    __syncthreads();
  }

  int64_t* row_out = out + b * workers;
  for (int32_t i = tid; i < nr; i += kThreads) {
    if (transposed) {
      row_out[ws.col4row[i]] = i;
    } else {
      row_out[i] = ws.col4row[i];
    }
  }
  if (tid == 0) status[b] = lsap::kOk;
}

template <typename scalar_t, typename acc_t>
void launch(const at::Tensor& cost, const ProblemShape& shape, at::Tensor& out, at::Tensor& status) {
  const auto acc_opts = cost.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  at::Tensor u = at::empty({shape.batch, shape.nr}, acc_opts);
  at::Tensor v = at::empty({shape.batch, shape.nc}, acc_opts);
  at::Tensor shortest = at::empty({shape.batch, shape.nc}, acc_opts);
  at::Tensor ints = at::empty({shape.batch, shape.nr + 3 * shape.nc}, cost.options().dtype(at::kInt));
  at::Tensor bytes = at::empty({shape.batch, shape.nr + shape.nc}, cost.options().dtype(at::kByte));
  lsap_kernel<scalar_t, acc_t><<<shape.batch, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      cost.data_ptr<scalar_t>(), int32_t(shape.nr), int32_t(shape.nc), shape.transposed, shape.workers,
      u.data_ptr<acc_t>(), v.data_ptr<acc_t>(), shortest.data_ptr<acc_t>(), ints.data_ptr<int32_t>(),
      bytes.data_ptr<uint8_t>(), out.data_ptr<int64_t>(), status.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor batch_linear_assignment_cuda(const at::Tensor& cost_in, bool maximize, bool check) {
  check_assignment_input(cost_in);
  const c10::cuda::CUDAGuard guard(cost_in.device());
  at::Tensor out = at::full({cost_in.size(0), cost_in.size(1)}, -1, cost_in.options().dtype(at::kLong));
  if (cost_in.numel() == 0) return out;
  TORCH_CHECK_VALUE(cost_in.size(0) <= 0x7fffffff, "batch_linear_assignment: B must be below 2^31 on CUDA");
  const ProblemShape shape(cost_in);
  // Each block reads its problem row-major with rows <= columns: orient (and
  // negate for maximize) on the device first.
  at::Tensor cost = shape.transposed ? cost_in.transpose(1, 2) : cost_in;
  cost = (maximize ? cost.neg() : cost).contiguous();
  at::Tensor status = at::zeros({shape.batch}, cost.options().dtype(at::kInt));
  switch (cost.scalar_type()) {
    case at::kFloat: launch<float, double>(cost, shape, out, status); break;
    case at::kDouble: launch<double, double>(cost, shape, out, status); break;
    case at::kLong: launch<int64_t, int64_t>(cost, shape, out, status); break;
    default: TORCH_CHECK_TYPE(false, "unreachable: dtype was checked");
  }
  if (check) {
    const at::Tensor bad = status.nonzero();  // the one host synchronisation, asked for by check=true
    if (bad.size(0) > 0) {
      const int64_t b = bad[0][0].item<int64_t>();
      raise_for_status(status[b].item<int32_t>(), b, maximize);
    }
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(wsseg_fast, CUDA, m) {
  m.impl("batch_linear_assignment", &batch_linear_assignment_cuda);
}

}  // namespace wsseg
