// CUDA kernels of the per-sample-gradient ops: the two fused reductions of
// per_sample_common.h. A group of threads (one warp for short rows, one block for long
// ones) reduces one row (or one segment of a row) in float64.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/utils.cuh"
#include "per_sample_common.h"

namespace fastunlearn::per_sample {
namespace {

using fastunlearn::cuda::kThreads;

// Rows at least this long are reduced by a whole block instead of a warp.
constexpr int64_t kBlockRowLength = 1024;
// A row is split into segments of at least this many elements when rows are too few to
// fill the GPU.
constexpr int64_t kMinSegment = 8192;

template <int kGroup>
__device__ __forceinline__ double group_sum(double v, double* shared) {
  if constexpr (kGroup == 32) {
    return fastunlearn::cuda::warp_sum(v);
  } else {
    return fastunlearn::cuda::block_sum(v, shared);
  }
}

// item = row * segments + segment; a group sums X[row, k] * Y[row, k] over its segment.
// With segments == 1 the sum goes to out[row], otherwise to partial[item] (float64).
template <typename scalar_t, int kGroup>
__global__ void rowwise_dot_kernel(const scalar_t* __restrict__ X, const scalar_t* __restrict__ Y,
                                   int64_t R, int64_t L, int64_t segments, int64_t seg_len,
                                   scalar_t* __restrict__ out, double* __restrict__ partial) {
  __shared__ double shared[kThreads / 32];
  constexpr int kGroupsPerBlock = kThreads / kGroup;
  const int lane = threadIdx.x % kGroup;
  const int64_t items = R * segments;
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * kGroupsPerBlock + threadIdx.x / kGroup;
       item < items; item += static_cast<int64_t>(gridDim.x) * kGroupsPerBlock) {
    const int64_t row = item / segments;
    const int64_t first = (item - row * segments) * seg_len;
    const int64_t last = first + seg_len < L ? first + seg_len : L;
    const scalar_t* x = X + row * L;
    const scalar_t* y = Y + row * L;
    double acc = 0.0;
    for (int64_t k = first + lane; k < last; k += kGroup) {
      acc += static_cast<double>(x[k]) * static_cast<double>(y[k]);
    }
    acc = group_sum<kGroup>(acc, shared);
    if (lane == 0) {
      if (segments == 1) {
        out[row] = static_cast<scalar_t>(acc);
      } else {
        partial[item] = acc;
      }
    }
  }
}

// out[b] = (||A[b]||^2 + bias_term) * ||G[b]||^2, one group per sample.
template <typename scalar_t, int kGroup>
__global__ void ghost_sq_norm_kernel(const scalar_t* __restrict__ A, const scalar_t* __restrict__ G,
                                     int64_t B, int64_t n_in, int64_t n_out, double bias_term,
                                     scalar_t* __restrict__ out) {
  __shared__ double shared[kThreads / 32];
  constexpr int kGroupsPerBlock = kThreads / kGroup;
  const int lane = threadIdx.x % kGroup;
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * kGroupsPerBlock + threadIdx.x / kGroup;
       b < B; b += static_cast<int64_t>(gridDim.x) * kGroupsPerBlock) {
    const scalar_t* a = A + b * n_in;
    const scalar_t* g = G + b * n_out;
    double a_sq = 0.0, g_sq = 0.0;
    for (int64_t k = lane; k < n_in; k += kGroup) a_sq += static_cast<double>(a[k]) * a[k];
    for (int64_t k = lane; k < n_out; k += kGroup) g_sq += static_cast<double>(g[k]) * g[k];
    a_sq = group_sum<kGroup>(a_sq, shared);
    g_sq = group_sum<kGroup>(g_sq, shared);
    if (lane == 0) out[b] = static_cast<scalar_t>((a_sq + bias_term) * g_sq);
  }
}

void rowwise_dot_cuda(const at::Tensor& X, const at::Tensor& Y, const at::Tensor& out) {
  const int64_t R = X.size(0), L = X.size(1);
  if (R == 0) return;
  const c10::cuda::CUDAGuard guard(X.device());
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const bool block_rows = L >= kBlockRowLength;
  // Only block-per-row reductions are split: warp rows are short, and then R warps suffice.
  const int64_t segments = block_rows ? row_segments(R, L, 2 * sms, kMinSegment) : 1;
  const int64_t seg_len = ceil_div(L, segments);
  at::Tensor partial;
  if (segments > 1) partial = at::empty({R, segments}, X.options().dtype(at::kDouble));
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "rowwise_dot_cuda", [&] {
    FU_BOOL_SWITCH(block_rows, kBlockRows, [&] {
      constexpr int kGroup = kBlockRows ? kThreads : 32;
      const dim3 grid = fastunlearn::cuda::grid_for(R * segments, kThreads / kGroup);
      rowwise_dot_kernel<scalar_t, kGroup><<<grid, kThreads, 0, stream>>>(
          X.const_data_ptr<scalar_t>(), Y.const_data_ptr<scalar_t>(), R, L, segments, seg_len,
          out.mutable_data_ptr<scalar_t>(),
          segments > 1 ? partial.mutable_data_ptr<double>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  if (segments > 1) out.copy_(partial.sum(1));
}

void ghost_sq_norm_cuda(const at::Tensor& A, const at::Tensor& G, bool bias,
                        const at::Tensor& out) {
  const int64_t B = A.size(0), n_in = A.size(1), n_out = G.size(1);
  if (B == 0) return;
  const c10::cuda::CUDAGuard guard(A.device());
  const bool block_rows = n_in + n_out >= kBlockRowLength;
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "ghost_sq_norm_cuda", [&] {
    FU_BOOL_SWITCH(block_rows, kBlockRows, [&] {
      constexpr int kGroup = kBlockRows ? kThreads : 32;
      const dim3 grid = fastunlearn::cuda::grid_for(B, kThreads / kGroup);
      ghost_sq_norm_kernel<scalar_t, kGroup><<<grid, kThreads, 0, stream>>>(
          A.const_data_ptr<scalar_t>(), G.const_data_ptr<scalar_t>(), B, n_in, n_out,
          bias ? 1.0 : 0.0, out.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

constexpr Kernels kCudaKernels{&rowwise_dot_cuda, &ghost_sq_norm_cuda};

// Each op validates first (the checks name the argument), then guards A's device.

at::Tensor per_sample_grad_cuda(const at::Tensor& A, const at::Tensor& G) {
  check_pair(A, G, "per_sample_grad");
  const c10::cuda::CUDAGuard guard(A.device());
  return per_sample_grad(A, G);
}

at::Tensor per_sample_sq_norm_cuda(const at::Tensor& A, const at::Tensor& G, bool bias) {
  check_pair(A, G, "per_sample_sq_norm");
  const c10::cuda::CUDAGuard guard(A.device());
  return per_sample_sq_norm(A, G, bias, kCudaKernels);
}

at::Tensor per_sample_dot_cuda(const at::Tensor& A, const at::Tensor& G, const at::Tensor& W,
                               const c10::optional<at::Tensor>& bias) {
  check_pair(A, G, "per_sample_dot");
  const c10::cuda::CUDAGuard guard(A.device());
  return per_sample_dot(A, G, W, bias, kCudaKernels);
}

at::Tensor per_sample_weighted_sum_cuda(const at::Tensor& A, const at::Tensor& G,
                                        const at::Tensor& w) {
  check_pair(A, G, "per_sample_weighted_sum");
  const c10::cuda::CUDAGuard guard(A.device());
  return per_sample_weighted_sum(A, G, w);
}

}  // namespace
}  // namespace fastunlearn::per_sample

TORCH_LIBRARY_IMPL(fastunlearn, CUDA, m) {
  using namespace fastunlearn::per_sample;
  m.impl("per_sample_grad", &per_sample_grad_cuda);
  m.impl("per_sample_sq_norm", &per_sample_sq_norm_cuda);
  m.impl("per_sample_dot", &per_sample_dot_cuda);
  m.impl("per_sample_weighted_sum", &per_sample_weighted_sum_cuda);
}
