// CUDA kernels of certified_cg_tail_: the end of one CG step of the certified removal step
// in three launches instead of ~25 small operators (the fixed-shape step's CUDA graphs
// replay ~150 kernels per removal, most of them on K-vectors, ~2 us each on an H200).
// Semantics: fastunlearn/ops/reference.py::certified_cg_tail_.
//
//   (a) one block, a warp per class: curvature p.Hp, alpha, V, HV, R and their norms (the
//       [d, K] tensors are small: d K = 7840 at MNIST scale);
//   (b) blocks over contiguous row ranges: XV and each block's sum of A XV^2 per class;
//   (c) one block: the per-class bounds from the block sums, then the two sums into out.
// Every sum has a fixed order (warp shuffles, block sums, block partials added in order),
// so results do not change from run to run. No host synchronisation.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "certified_tail_common.h"
#include "cuda/utils.cuh"

namespace fastunlearn {
namespace {

using cuda::ceil_div;

constexpr int kRowThreads = 256;
constexpr int64_t kMaxRowBlocks = 256;
// (a)'s block: a warp per class, at most 32 warps. The bound keeps ptxas at <= 64 registers
// a thread, so that a 1024-thread block (K >= 32) can launch (56 registers on sm_80/sm_90
// without it, and nothing stopped a PTX JIT or another compiler from using more).
constexpr int kColumnThreadsMax = 1024;

// (a) scratch = [alpha (K) | ||V_k|| (K) | ||R_k|| (K) | bound_k (K)]; this writes the first
// three.
__global__ void __launch_bounds__(kColumnThreadsMax)
    tail_columns_kernel(int64_t d, int64_t K, const double* __restrict__ p,
                        const double* __restrict__ hp, const double* __restrict__ rz,
                        const bool* __restrict__ needed, const double* __restrict__ delta,
                        double* __restrict__ v, double* __restrict__ hv, double* __restrict__ r,
                        double* __restrict__ scratch, bool first) {
  const int lane = threadIdx.x & 31;
  const int warps = blockDim.x >> 5;
  const bool need = needed == nullptr || *needed;
  for (int64_t k = threadIdx.x >> 5; k < K; k += warps) {
    double curvature = 0.0;
    for (int64_t j = lane; j < d; j += 32) curvature += p[j * K + k] * hp[j * K + k];
    curvature = __shfl_sync(0xffffffffu, cuda::warp_sum(curvature), 0);
    double alpha;
    if (first) {
      alpha = curvature > 0.0 ? rz[k] / curvature : 1.0;
    } else {
      alpha = (curvature > 0.0 && need) ? rz[k] / curvature : 0.0;
    }
    double step_sq = 0.0, res_sq = 0.0;
    for (int64_t j = lane; j < d; j += 32) {
      const int64_t e = j * K + k;
      const double vk = first ? p[e] * alpha : v[e] + alpha * p[e];
      const double hvk = first ? hp[e] * alpha : hv[e] + alpha * hp[e];
      const double rk = delta[e] - hvk;
      v[e] = vk;
      hv[e] = hvk;
      r[e] = rk;
      step_sq += vk * vk;
      res_sq += rk * rk;
    }
    step_sq = cuda::warp_sum(step_sq);
    res_sq = cuda::warp_sum(res_sq);
    if (lane == 0) {
      scratch[k] = alpha;
      scratch[K + k] = sqrt(step_sq);
      scratch[2 * K + k] = sqrt(res_sq);
    }
  }
}

// (b) Block b takes rows [b * rows_per_block, ...): XV, and partials[b, k] = sum of A XV^2.
__global__ void tail_rows_kernel(int64_t n, int64_t K, int64_t rows_per_block,
                                 const double* __restrict__ xp, const double* __restrict__ a_row,
                                 const double* __restrict__ scratch, double* __restrict__ xv,
                                 double* __restrict__ partials, bool first) {
  __shared__ double warp_sums[kRowThreads / 32];
  const int64_t lo = blockIdx.x * rows_per_block;
  const int64_t hi = lo + rows_per_block < n ? lo + rows_per_block : n;
  for (int64_t k = 0; k < K; ++k) {
    const double alpha = scratch[k];
    double acc = 0.0;
    for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
      const int64_t e = i * K + k;
      const double x = first ? xp[e] * alpha : xv[e] + alpha * xp[e];
      xv[e] = x;
      acc += a_row[e] * (x * x);
    }
    acc = cuda::block_sum(acc, warp_sums);
    if (threadIdx.x == 0) partials[blockIdx.x * K + k] = acc;
  }
}

// (c) bound_k = bound_scale * spectral_k * ||V_k|| * sqrt(sum_b partials[b, k]); then out.
__global__ void tail_finish_kernel(int64_t K, int64_t blocks, const double* __restrict__ partials,
                                   const double* __restrict__ spectral, double bound_scale,
                                   double* __restrict__ scratch, double* __restrict__ out) {
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    double sum = 0.0;
    for (int64_t b = 0; b < blocks; ++b) sum += partials[b * K + k];
    scratch[3 * K + k] = bound_scale * spectral[k] * scratch[K + k] * sqrt(sum);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double residual = 0.0, bound = 0.0;
    for (int64_t k = 0; k < K; ++k) {
      residual += scratch[2 * K + k];
      bound += scratch[3 * K + k];
    }
    out[0] = residual;
    out[1] = bound;
  }
}

void certified_cg_tail_cuda(at::Tensor& V, at::Tensor& XV, at::Tensor& HV, at::Tensor& R,
                            at::Tensor& out, const at::Tensor& P_in, const at::Tensor& XP_in,
                            const at::Tensor& HP_in, const at::Tensor& rz_in,
                            const std::optional<at::Tensor>& needed, const at::Tensor& A_in,
                            const at::Tensor& Delta_in, const at::Tensor& spectral_in,
                            double bound_scale, bool first) {
  const CgTailSizes s = check_cg_tail_args(V, XV, HV, R, out, P_in, XP_in, HP_in, rz_in, needed,
                                           A_in, Delta_in, spectral_in);
  const c10::cuda::CUDAGuard guard(V.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t d = s.d, n = s.n, K = s.K;
  if (K == 0) {
    out.narrow(0, 0, 2).zero_();
    return;
  }
  const at::Tensor P = P_in.contiguous(), XP = XP_in.contiguous(), HP = HP_in.contiguous();
  const at::Tensor rz = rz_in.contiguous(), A = A_in.contiguous();
  const at::Tensor Delta = Delta_in.contiguous(), spectral = spectral_in.contiguous();
  const at::Tensor need = needed.has_value() ? needed->contiguous() : at::Tensor();
  const int64_t blocks = std::clamp<int64_t>(ceil_div(n, kRowThreads), 1, kMaxRowBlocks);
  const int64_t rows_per_block = std::max<int64_t>(ceil_div(n, blocks), 1);
  at::Tensor work = at::empty({4 * K + blocks * K}, V.options());
  double* scratch = work.data_ptr<double>();
  double* partials = scratch + 4 * K;
  const int column_threads =
      32 * static_cast<int>(std::min<int64_t>(K, kColumnThreadsMax / 32));
  tail_columns_kernel<<<1, column_threads, 0, stream>>>(
      d, K, P.const_data_ptr<double>(), HP.const_data_ptr<double>(),
      rz.const_data_ptr<double>(), need.defined() ? need.const_data_ptr<bool>() : nullptr,
      Delta.const_data_ptr<double>(), V.data_ptr<double>(), HV.data_ptr<double>(),
      R.data_ptr<double>(), scratch, first);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  tail_rows_kernel<<<static_cast<unsigned>(blocks), kRowThreads, 0, stream>>>(
      n, K, rows_per_block, XP.const_data_ptr<double>(), A.const_data_ptr<double>(), scratch,
      XV.data_ptr<double>(), partials, first);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  tail_finish_kernel<<<1, 256, 0, stream>>>(K, blocks, partials,
                                            spectral.const_data_ptr<double>(), bound_scale,
                                            scratch, out.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(fastunlearn, CUDA, m) {
  m.impl("certified_cg_tail_", &certified_cg_tail_cuda);
}

}  // namespace fastunlearn
