// CUDA kernels of certified_start_: the removed row's quantities of the certified removal
// step in three launches instead of ~30 small operators (the fixed-shape step's graphs, one
// replay per removal; each operator is a ~2 us kernel on an H200).
// Semantics: fastunlearn/ops/reference.py::certified_start_.
//
//   (a) one thread per entry of Delta ([d, K]: d K = 7840 at MNIST scale), block 0 also
//       writes the row's weights and lam_k;
//   (b) blocks over contiguous row ranges: A_after, S and each block's sum of row_sq A_after
//       per class;
//   (c) one warp per class: the trace from the block sums in a fixed order, then the spectral
//       bound.
// Every sum has a fixed order, so results do not change from run to run. The device cannot
// raise: a row out of range zeroes no row and makes Delta, the row's weights and lam_k NaN
// (a step planned from them fails the host's tests). No host synchronisation.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "certified_start_common.h"
#include "cuda/utils.cuh"

namespace fastunlearn {
namespace {

using cuda::ceil_div;

constexpr int kStartThreads = 256;
constexpr int64_t kMaxStartBlocks = 256;

// (a) the row's weights, lam_k and Delta.
__global__ void start_row_kernel(int64_t n, int64_t d, int64_t K, const int64_t* __restrict__ row,
                                 const double* __restrict__ x, const double* __restrict__ y,
                                 const double* __restrict__ z, const double* __restrict__ a,
                                 const double* __restrict__ w,
                                 const double* __restrict__ counts, double lam,
                                 double* __restrict__ rw, double* __restrict__ delta,
                                 double* __restrict__ lam_k) {
  const int64_t r = *row;
  const bool valid = 0 <= r && r < n;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < d * K;
       e += stride) {
    const int64_t j = e / K, k = e % K;
    if (!valid) {
      delta[e] = nan;
      continue;
    }
    const double ak = a[r * K + k], yk = y[r * K + k], zk = z[r * K + k];
    const double grad = ak * (-yk * start_sigmoid(-yk * zk));
    delta[e] = x[r * d + j] * grad + (lam * ak) * w[e];
  }
  if (blockIdx.x != 0) return;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    const double ak = valid ? a[r * K + k] : nan;
    rw[k] = ak;
    lam_k[k] = (counts[k] - ak) * lam;
  }
}

// (b) Block b takes rows [b * rows_per_block, ...): A_after, S, and partials[b, k] = sum of
// row_sq A_after.
__global__ void start_rows_kernel(int64_t n, int64_t K, int64_t rows_per_block,
                                  const int64_t* __restrict__ row, const double* __restrict__ z,
                                  const double* __restrict__ a, const double* __restrict__ sq,
                                  double* __restrict__ after, double* __restrict__ curv,
                                  double* __restrict__ partials) {
  __shared__ double warp_sums[kStartThreads / 32];
  const int64_t r = *row;
  const int64_t lo = blockIdx.x * rows_per_block;
  const int64_t hi = lo + rows_per_block < n ? lo + rows_per_block : n;
  for (int64_t k = 0; k < K; ++k) {
    double acc = 0.0;
    for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
      const int64_t q = i * K + k;
      const double v = i == r ? 0.0 : a[q];
      after[q] = v;
      curv[q] = v * (start_sigmoid(z[q]) * start_sigmoid(-z[q]));
      acc += sq[i] * v;
    }
    acc = cuda::block_sum(acc, warp_sums);
    if (threadIdx.x == 0) partials[blockIdx.x * K + k] = acc;
  }
}

// (c) Block k (one warp): spectral_k = sqrt(max(min(eig_k, sum_b partials[b, k]), 0)). Lane
// l adds the blocks b = l, l + 32, ... in order, then the warp adds the lanes in a fixed order.
__global__ void start_finish_kernel(int64_t K, int64_t blocks, int64_t eig_size,
                                    const double* __restrict__ partials,
                                    const double* __restrict__ eig,
                                    double* __restrict__ spectral) {
  const int64_t k = blockIdx.x;
  double trace = 0.0;
  for (int64_t b = threadIdx.x; b < blocks; b += 32) trace += partials[b * K + k];
  trace = cuda::warp_sum(trace);
  if (threadIdx.x == 0) spectral[k] = start_spectral(eig[eig_size == 1 ? 0 : k], trace);
}

void certified_start_cuda(at::Tensor& row_weights, at::Tensor& Delta, at::Tensor& A_after,
                          at::Tensor& S, at::Tensor& lam_k, at::Tensor& spectral,
                          const at::Tensor& X_in, const at::Tensor& Y_in, const at::Tensor& Z_in,
                          const at::Tensor& A_in, const at::Tensor& W_in, const at::Tensor& row,
                          const at::Tensor& n_rem_in, const at::Tensor& eig_in,
                          const at::Tensor& row_sq_in, double lam) {
  const StartSizes s = check_start_args(row_weights, Delta, A_after, S, lam_k, spectral, X_in,
                                        Y_in, Z_in, A_in, W_in, row, n_rem_in, eig_in, row_sq_in,
                                        lam);
  const c10::cuda::CUDAGuard guard(X_in.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t d = s.d, n = s.n, K = s.K;
  if (K == 0) return;
  const at::Tensor X = X_in.contiguous(), Y = Y_in.contiguous(), Z = Z_in.contiguous();
  const at::Tensor A = A_in.contiguous(), W = W_in.contiguous(), n_rem = n_rem_in.contiguous();
  const at::Tensor eig = eig_in.contiguous(), row_sq = row_sq_in.contiguous();
  const at::Tensor row_c = row.reshape({-1}).contiguous();
  const int64_t* r = row_c.const_data_ptr<int64_t>();
  const int64_t row_blocks = std::clamp<int64_t>(ceil_div(d * K, kStartThreads), 1, 1024);
  start_row_kernel<<<static_cast<unsigned>(row_blocks), kStartThreads, 0, stream>>>(
      n, d, K, r, X.const_data_ptr<double>(), Y.const_data_ptr<double>(),
      Z.const_data_ptr<double>(), A.const_data_ptr<double>(), W.const_data_ptr<double>(),
      n_rem.const_data_ptr<double>(), lam, row_weights.data_ptr<double>(),
      Delta.data_ptr<double>(), lam_k.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t blocks = std::clamp<int64_t>(ceil_div(n, kStartThreads), 1, kMaxStartBlocks);
  const int64_t rows_per_block = std::max<int64_t>(ceil_div(n, blocks), 1);
  at::Tensor partials = at::empty({blocks * K}, X.options());
  start_rows_kernel<<<static_cast<unsigned>(blocks), kStartThreads, 0, stream>>>(
      n, K, rows_per_block, r, Z.const_data_ptr<double>(), A.const_data_ptr<double>(),
      row_sq.const_data_ptr<double>(), A_after.data_ptr<double>(), S.data_ptr<double>(),
      partials.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  start_finish_kernel<<<static_cast<unsigned>(K), 32, 0, stream>>>(K, blocks, s.E, partials.const_data_ptr<double>(),
                                            eig.const_data_ptr<double>(),
                                            spectral.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(fastunlearn, CUDA, m) {
  m.impl("certified_start_", &certified_start_cuda);
}

}  // namespace fastunlearn
