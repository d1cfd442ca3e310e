// CUDA kernels of wsseg_fast::superpixel_pool and its max backward, with the
// semantics of the CPU kernels (csrc/cpu/superpixel_pool.cpp):
//   reduce   per (plane, block of pixels): a per-superpixel table in shared
//            memory (sums, or max) when K fits, flushed to the global table by
//            one atomic per touched superpixel; global atomics otherwise
//   argmax   the first pixel holding the max claims it by an atomicMin of its index
//   write    every pixel reads its superpixel's entry
// K (max label + 1) is read on the host to size the tables: one synchronisation,
// as in the Triton kernels. Sums are in the input's dtype and their order
// depends on scheduling (float atomics), so results match the CPU to rounding.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

namespace wsseg {
namespace {

constexpr int kThreads = 256;
constexpr int kPixelsPerBlock = 4096;
constexpr int64_t kSharedBytes = 32 * 1024;  // the shared table is used up to this size

void check_inputs(const at::Tensor& x, const at::Tensor& labels, const char* op) {
  TORCH_CHECK(x.dim() == 4, op, ": x must be [B, C, H, W], got ", x.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
                   ": x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kInt || labels.scalar_type() == at::kLong, op,
                   ": labels must be int32 or int64, got ", labels.scalar_type());
  TORCH_CHECK(
      labels.dim() == 3 && labels.size(0) == x.size(0) && labels.size(1) == x.size(2) && labels.size(2) == x.size(3),
      op, ": labels must be [B, H, W] like x, got ", labels.sizes(), " for x ", x.sizes());
  TORCH_CHECK(labels.device() == x.device(), op, ": labels are on ", labels.device(), " but x on ", x.device());
}

// Whether `value` replaces the running max `old`: a larger number, or a NaN (the max of a
// superpixel holding a NaN is NaN, as on the CPU and in torch.amax); a NaN is never replaced.
template <typename T>
__device__ __forceinline__ bool raises_max(T old, T value) {
  return !isnan(old) && (old < value || isnan(value));
}

// Atomic max of a float or double, by compare-and-swap on its bits.
__device__ __forceinline__ void atomic_max(float* address, float value) {
  int* bits = reinterpret_cast<int*>(address);
  int old = *bits;
  while (raises_max(__int_as_float(old), value)) {
    const int assumed = old;
    old = atomicCAS(bits, assumed, __float_as_int(value));
    if (old == assumed) break;
  }
}
__device__ __forceinline__ void atomic_max(double* address, double value) {
  unsigned long long* bits = reinterpret_cast<unsigned long long*>(address);
  unsigned long long old = *bits;
  while (raises_max(__longlong_as_double(static_cast<long long>(old)), value)) {
    const unsigned long long assumed = old;
    old = atomicCAS(bits, assumed, static_cast<unsigned long long>(__double_as_longlong(value)));
    if (old == assumed) break;
  }
}

template <typename T>
__device__ __forceinline__ void combine(T* address, T value, bool is_max) {
  if (is_max) {
    atomic_max(address, value);
  } else {
    atomicAdd(address, value);
  }
}

// table[plane, k] (+)= x or max= x over the pixels of one block; count[b, k] += 1 from
// the first channel (mean only, when count is not null). Labels outside [0, K) are skipped.
template <typename scalar_t, typename label_t>
__global__ void __launch_bounds__(kThreads)
    reduce_kernel(const scalar_t* __restrict__ x, const label_t* __restrict__ labels, scalar_t* __restrict__ table,
                  scalar_t* __restrict__ count, int64_t hw, int64_t channels, int64_t chunks, int64_t k, bool is_max,
                  bool shared) {
  extern __shared__ unsigned char shared_bytes[];
  scalar_t* local = reinterpret_cast<scalar_t*>(shared_bytes);
  const int64_t plane = blockIdx.x / chunks;
  const int64_t b = plane / channels;
  const scalar_t empty = is_max ? -std::numeric_limits<scalar_t>::infinity() : scalar_t(0);
  if (shared) {
    for (int64_t i = threadIdx.x; i < k; i += kThreads) local[i] = empty;
    __syncthreads();
  }
  const int64_t p0 = (blockIdx.x % chunks) * kPixelsPerBlock;
  const int64_t p1 = p0 + kPixelsPerBlock < hw ? p0 + kPixelsPerBlock : hw;
  const label_t* l = labels + b * hw;
  const scalar_t* xp = x + plane * hw;
  const bool counting = count != nullptr && plane % channels == 0;
  for (int64_t p = p0 + threadIdx.x; p < p1; p += kThreads) {
    const int64_t s = int64_t(l[p]);
    if (s < 0 || s >= k) continue;
    if (shared) {
      combine(local + s, xp[p], is_max);  // shared-memory atomics
    } else {
      combine(table + plane * k + s, xp[p], is_max);
    }
    if (counting) atomicAdd(count + b * k + s, scalar_t(1));
  }
  if (shared) {
    __syncthreads();
    for (int64_t i = threadIdx.x; i < k; i += kThreads) {
      if (local[i] != empty) combine(table + plane * k + i, local[i], is_max);
    }
  }
}

// argmax[plane, k] = min p with x[p] == max of its superpixel, or x[p] NaN when the max is
// NaN (starts at hw: none).
template <typename scalar_t, typename label_t>
__global__ void claim_argmax_kernel(const scalar_t* __restrict__ x, const label_t* __restrict__ labels,
                                    const scalar_t* __restrict__ table, unsigned long long* __restrict__ argmax,
                                    int64_t hw, int64_t channels, int64_t k, int64_t total) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const int64_t plane = idx / hw, p = idx % hw;
  const int64_t s = int64_t(labels[(plane / channels) * hw + p]);
  if (s < 0 || s >= k) return;
  const scalar_t best = table[plane * k + s];
  if (x[idx] == best || (isnan(x[idx]) && isnan(best)))
    atomicMin(argmax + plane * k + s, static_cast<unsigned long long>(p));
}

__global__ void finish_argmax_kernel(int64_t* argmax, int64_t hw, int64_t total) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx < total && argmax[idx] >= hw) argmax[idx] = -1;
}

// out[plane, p] = table[plane, label] (times 1 / count for the mean), 0 for no label.
template <typename scalar_t, typename label_t>
__global__ void write_kernel(const label_t* __restrict__ labels, const scalar_t* __restrict__ table,
                             const scalar_t* __restrict__ count, scalar_t* __restrict__ out, int64_t hw,
                             int64_t channels, int64_t k, int64_t total) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const int64_t plane = idx / hw, p = idx % hw, b = plane / channels;
  const int64_t s = int64_t(labels[b * hw + p]);
  scalar_t v = scalar_t(0);
  if (s >= 0 && s < k) {
    v = table[plane * k + s];
    if (count != nullptr) v = v / count[b * k + s];
  }
  out[idx] = v;
}

// grad_x[plane, argmax[plane, k]] = summed grad of superpixel k (out starts at 0).
template <typename scalar_t>
__global__ void scatter_kernel(const scalar_t* __restrict__ sums, const int64_t* __restrict__ argmax,
                               scalar_t* __restrict__ out, int64_t hw, int64_t k, int64_t total) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const int64_t plane = idx / k, p = argmax[idx];
  if (p >= 0 && p < hw) out[plane * hw + p] = sums[idx];
}

int64_t blocks_for(int64_t n) {
  return (n + kThreads - 1) / kThreads;
}

// Launch reduce_kernel over every plane: table [B*C, K] must hold the empty value.
template <typename scalar_t, typename label_t>
void reduce(const at::Tensor& x, const at::Tensor& labels, at::Tensor& table, scalar_t* count, int64_t k, bool is_max) {
  const int64_t planes = x.size(0) * x.size(1), hw = x.size(2) * x.size(3);
  const int64_t chunks = (hw + kPixelsPerBlock - 1) / kPixelsPerBlock;  // blocks per plane
  const int64_t bytes = k * int64_t(sizeof(scalar_t));
  const bool shared = bytes <= kSharedBytes;
  reduce_kernel<scalar_t, label_t><<<planes * chunks, kThreads, shared ? bytes : 0, at::cuda::getCurrentCUDAStream()>>>(
      x.data_ptr<scalar_t>(), labels.data_ptr<label_t>(), table.data_ptr<scalar_t>(), count, hw, x.size(1), chunks, k,
      is_max, shared);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> superpixel_pool_cuda(const at::Tensor& x_in, const at::Tensor& labels_in,
                                                        c10::string_view reduce_name) {
  check_inputs(x_in, labels_in, "superpixel_pool");
  const bool is_max = reduce_name == "max";
  TORCH_CHECK(is_max || reduce_name == "mean", "superpixel_pool: reduce must be 'mean' or 'max', got '", reduce_name,
              "'");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), labels = labels_in.contiguous();
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  // K = max label + 1 (at least 1): the one host synchronisation.
  const int64_t k = labels.numel() ? std::max<int64_t>(labels.max().item<int64_t>() + 1, 1) : 1;
  const int64_t planes = x.size(0) * x.size(1), hw = x.size(2) * x.size(3), total = x.numel();
  at::Tensor argmax = is_max ? at::full({x.size(0), x.size(1), k}, hw, x.options().dtype(at::kLong))
                             : at::empty({0}, x.options().dtype(at::kLong));
  if (total == 0) {
    if (is_max) argmax.fill_(-1);
    return {out, argmax};
  }
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "superpixel_pool_cuda", [&] {
    using scalar = scalar_t;
    AT_DISPATCH_INDEX_TYPES(labels.scalar_type(), "superpixel_pool_cuda", [&] {
      at::Tensor table = is_max ? at::full({planes, k}, -std::numeric_limits<scalar>::infinity(), x.options())
                                : at::zeros({planes, k}, x.options());
      at::Tensor count = is_max ? at::Tensor() : at::zeros({x.size(0), k}, x.options());
      scalar* count_ptr = is_max ? nullptr : count.data_ptr<scalar>();
      reduce<scalar, index_t>(x, labels, table, count_ptr, k, is_max);
      if (is_max) {
        claim_argmax_kernel<scalar, index_t><<<blocks_for(total), kThreads, 0, stream>>>(
            x.data_ptr<scalar>(), labels.data_ptr<index_t>(), table.data_ptr<scalar>(),
            reinterpret_cast<unsigned long long*>(argmax.data_ptr<int64_t>()), hw, x.size(1), k, total);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        finish_argmax_kernel<<<blocks_for(argmax.numel()), kThreads, 0, stream>>>(argmax.data_ptr<int64_t>(), hw,
                                                                                  argmax.numel());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      write_kernel<scalar, index_t>
          <<<blocks_for(total), kThreads, 0, stream>>>(labels.data_ptr<index_t>(), table.data_ptr<scalar>(), count_ptr,
                                                       out.data_ptr<scalar>(), hw, x.size(1), k, total);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {out, argmax};
}

// grad_x[argmax of a superpixel] = the superpixel's summed grad; 0 elsewhere. Labels
// outside [0, K) of argmax are skipped (no synchronisation to check them).
at::Tensor superpixel_pool_max_backward_cuda(const at::Tensor& grad_in, const at::Tensor& labels_in,
                                             const at::Tensor& argmax_in) {
  check_inputs(grad_in, labels_in, "superpixel_pool_max_backward");
  TORCH_CHECK(argmax_in.dim() == 3 && argmax_in.size(0) == grad_in.size(0) && argmax_in.size(1) == grad_in.size(1),
              "superpixel_pool_max_backward: argmax must be [B, C, K], got ", argmax_in.sizes());
  TORCH_CHECK_TYPE(argmax_in.scalar_type() == at::kLong, "superpixel_pool_max_backward: argmax must be int64, got ",
                   argmax_in.scalar_type());
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const at::Tensor grad = grad_in.contiguous(), labels = labels_in.contiguous(), argmax = argmax_in.contiguous();
  at::Tensor out = at::zeros_like(grad, at::MemoryFormat::Contiguous);
  const int64_t planes = grad.size(0) * grad.size(1), hw = grad.size(2) * grad.size(3), k = argmax.size(2);
  if (grad.numel() == 0 || k == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "superpixel_pool_max_backward_cuda", [&] {
    using scalar = scalar_t;
    AT_DISPATCH_INDEX_TYPES(labels.scalar_type(), "superpixel_pool_max_backward_cuda", [&] {
      at::Tensor sums = at::zeros({planes, k}, grad.options());
      reduce<scalar, index_t>(grad, labels, sums, nullptr, k, false);
      scatter_kernel<scalar><<<blocks_for(planes * k), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          sums.data_ptr<scalar>(), argmax.data_ptr<int64_t>(), out.data_ptr<scalar>(), hw, k, planes * k);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(wsseg_fast, CUDA, m) {
  m.impl("superpixel_pool", &superpixel_pool_cuda);
  m.impl("superpixel_pool_max_backward", &superpixel_pool_max_backward_cuda);
}

}  // namespace wsseg
