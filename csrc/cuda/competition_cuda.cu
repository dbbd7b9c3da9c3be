// CUDA kernel of fastunlearn::competition_epsilons: the per-example epsilon of the NeurIPS
// 2023 unlearning competition (algorithm in csrc/competition_common.h).
//
// Both groups are sorted per example with torch (segmented sort of [S, N] and [S, M] rows
// in float64). Then one block per example (grid-stride over examples):
//  1. the block merges the two sorted rows into the pooled sorted values and the prefix
//     count of retrained values (each thread places its elements by binary search in the
//     other row; retrained first among equal values), in a global scratch row;
//  2. every thread derives the same plan (medians, peaky rule, peakier group, right edges);
//  3. threads split the single-family gaps and the interval family's right edges;
//  4. a block max reduction gives the example's epsilon.
// Rounding: the grids' products and sums use __dmul_rn / __dadd_rn, so nvcc never fuses
// them into an FMA and every threshold is the float64 number numpy computes. No host
// synchronisation besides the argument checks.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>

#include "competition_common.h"
#include "utils.cuh"

namespace fastunlearn {
namespace {

namespace comp = competition;

constexpr int kBlock = 256;

__device__ __forceinline__ float block_max(float v, float* shared) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1)
    v = comp::max_f(v, __shfl_down_sync(0xffffffffu, v, offset));
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = threadIdx.x < (blockDim.x >> 5) ? shared[lane] : -INFINITY;
  if (warp == 0) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1)
      v = comp::max_f(v, __shfl_down_sync(0xffffffffu, v, offset));
  }
  __syncthreads();
  return v;
}

__global__ void __launch_bounds__(kBlock)
    competition_kernel(const double* __restrict__ rs, const double* __restrict__ us, int64_t S,
                       int64_t N, int64_t M, const double* __restrict__ grid,
                       const int64_t* __restrict__ offsets, const float* __restrict__ table_r,
                       const float* __restrict__ table_u, double* __restrict__ vals_all,
                       int32_t* __restrict__ rcount_all, double* __restrict__ out) {
  __shared__ float shared[kBlock / 32];
  const int64_t K = N + M;
  for (int64_t s = blockIdx.x; s < S; s += gridDim.x) {
    const double* r = rs + s * N;
    const double* u = us + s * M;
    const comp::Plan plan =
        comp::make_plan(r[0], r[N - 1], comp::sorted_median(r, N), u[0], u[M - 1],
                        comp::sorted_median(u, M));
    if (plan.peaky) {  // uniform over the block
      if (threadIdx.x == 0) out[s] = comp::kCap;
      continue;
    }
    double* vals = vals_all + s * K;
    int32_t* rcount = rcount_all + s * (K + 1);
    for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {
      const int64_t p = i + comp::lower_bound(u, 0, M, r[i]);
      vals[p] = r[i];
      rcount[p + 1] = static_cast<int32_t>(i + 1);
    }
    for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
      const int64_t p = j + comp::upper_bound(r, 0, N, u[j]);
      vals[p] = u[j];
      rcount[p + 1] = static_cast<int32_t>(p - j);
    }
    if (threadIdx.x == 0) rcount[0] = 0;
    __syncthreads();
    const comp::Example ex{vals, rcount, K, N, M, table_r, table_u, grid + offsets[s],
                           offsets[s + 1] - offsets[s]};
    float best = comp::max_f(comp::single_family(ex, plan, threadIdx.x, blockDim.x),
                             comp::double_family(ex, plan, threadIdx.x, blockDim.x));
    best = block_max(best, shared);
    if (threadIdx.x == 0) out[s] = comp::finish(plan, best);
  }
}

at::Tensor competition_epsilons_cuda(const at::Tensor& retrained, const at::Tensor& unlearned,
                                     const at::Tensor& grid, const at::Tensor& grid_offsets,
                                     const at::Tensor& table_r, const at::Tensor& table_u) {
  comp::check_args(retrained, unlearned, grid, grid_offsets, table_r, table_u);
  const c10::cuda::CUDAGuard guard(retrained.device());
  const int64_t S = retrained.size(0), N = retrained.size(1), M = unlearned.size(1);
  at::Tensor out = at::empty({S}, retrained.options().dtype(at::kDouble));
  if (S == 0) return out;
  const at::Tensor rs =
      std::get<0>(at::sort(retrained.detach().to(at::kDouble), /*dim=*/1)).contiguous();
  const at::Tensor us =
      std::get<0>(at::sort(unlearned.detach().to(at::kDouble), /*dim=*/1)).contiguous();
  const at::Tensor g = grid.contiguous();
  const at::Tensor o = grid_offsets.contiguous();
  const at::Tensor tr = table_r.contiguous();
  const at::Tensor tu = table_u.contiguous();
  at::Tensor vals = at::empty({S, N + M}, out.options());
  at::Tensor rcount = at::empty({S, N + M + 1}, out.options().dtype(at::kInt));
  const int64_t blocks = std::min<int64_t>(S, int64_t(1) << 20);
  competition_kernel<<<static_cast<unsigned>(blocks), kBlock, 0,
                       at::cuda::getCurrentCUDAStream()>>>(
      rs.const_data_ptr<double>(), us.const_data_ptr<double>(), S, N, M,
      g.const_data_ptr<double>(), o.const_data_ptr<int64_t>(), tr.const_data_ptr<float>(),
      tu.const_data_ptr<float>(), vals.mutable_data_ptr<double>(),
      rcount.mutable_data_ptr<int32_t>(), out.mutable_data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace
}  // namespace fastunlearn

TORCH_LIBRARY_IMPL(fastunlearn, CUDA, m) {
  m.impl("competition_epsilons", &fastunlearn::competition_epsilons_cuda);
}
