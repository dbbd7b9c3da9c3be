// CUDA kernels of certified_commit_: the guarded commit of a pipelined run's planned step in
// two launches instead of ~30 small operators (the fixed-shape step's pipelined graph, one
// replay per removal; each operator is a ~2 us kernel on an H200).
// Semantics: fastunlearn/ops/reference.py::certified_commit_.
//
//   (a) grid-stride loops over W and Z and over the Gram matrices' rows: the step's updates,
//       taken where the host's tests pass (every thread evaluates them from the same
//       unchanged scalars);
//   (b) one thread: the row's weights, flag and counts, the budget, the run's flags, the
//       row's results and the counter (after (a) in stream order, so (a) read the scalars
//       before (b) writes them).
// The device cannot raise: a row out of range commits nothing (out[4] = 0); a slot out of
// range writes no results (the step is still committed where the tests pass); the counter
// advances either way. No host synchronisation.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "certified_commit_common.h"
#include "cuda/utils.cuh"

namespace fastunlearn {
namespace {

struct CommitScalars {
  const double* out;
  const double* budget_used;
  const double* budget;
  const bool* alive;
  const int64_t* row;
  double cg_tol;
  int64_t n;
};

// The host's tests of the planned step, as the reference takes them.
__device__ __forceinline__ bool commit_go(const CommitScalars& c) {
  const double residual = c.out[0], bound = c.out[1];
  const int64_t r = *c.row;
  return *c.alive && c.out[2] > 0.5 && residual <= c.cg_tol * bound &&
         *c.budget_used + (residual + bound) <= *c.budget && 0 <= r && r < c.n;  // NaN: no
}

// (a) W += V, Z += XV, gram[c] -= coef_c x x^T where the tests pass. W and Z in one
// grid-stride loop; the Gram matrices one row (m, i) per block step, threads over j, so an
// element costs no integer division (G d^2 = 6.1M elements per-class at MNIST scale).
__global__ void commit_updates_kernel(CommitScalars c, int64_t d, int64_t K, int64_t G,
                                      bool shared_gram, const double* __restrict__ v,
                                      const double* __restrict__ xv,
                                      const double* __restrict__ X,
                                      const double* __restrict__ rw, double* __restrict__ w,
                                      double* __restrict__ z, double* __restrict__ g) {
  if (!commit_go(c)) return;
  const double* x = X + (*c.row) * d;
  const int64_t wk = d * K, wz = wk + c.n * K;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < wz; e += stride) {
    if (e < wk) {
      w[e] += v[e];
    } else {
      z[e - wk] += xv[e - wk];
    }
  }
  for (int64_t gr = blockIdx.x; gr < G * d; gr += gridDim.x) {
    const int64_t m = gr / d, i = gr - m * d;
    const double coef = shared_gram ? 1.0 : rw[m];
    const double xi = x[i];
    double* g_row = g + gr * d;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) g_row[j] -= coef * (xi * x[j]);
  }
}

// (b) the row's weights, flag and counts; budget, flags, results, counter. No __restrict__:
// the scalars are read through `c` and written here, and `rw` may be a view of A's row.
__global__ void commit_scalars_kernel(CommitScalars c, int64_t K, int64_t T, int64_t result_cols,
                                      const int64_t* slot, const double* rw, double* a,
                                      bool* removed, double* n_rem, double* budget_used,
                                      bool* alive, double* out, double* results,
                                      int64_t* counter) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  const bool go = commit_go(c);
  if (go) {
    const int64_t r = *c.row;
    for (int64_t k = 0; k < K; ++k) {
      n_rem[k] -= rw[k];  // before a: row_weights may be a view of A's row
      a[r * K + k] = 0.0;
    }
    removed[r] = true;
    *budget_used += out[0] + out[1];
  }
  *alive = *alive && go;
  out[4] = go ? 1.0 : 0.0;
  const int64_t t = *slot;
  if (0 <= t && t < T) {
    for (int q = 0; q < 5; ++q) results[t * result_cols + q] = out[q];
  }
  *counter += 1;
}

void certified_commit_cuda(at::Tensor& W, at::Tensor& Z, at::Tensor& A, at::Tensor& removed,
                           at::Tensor& gram, at::Tensor& n_rem, at::Tensor& budget_used,
                           at::Tensor& alive, at::Tensor& out, at::Tensor& results,
                           at::Tensor& counter, const at::Tensor& V_in, const at::Tensor& XV_in,
                           const at::Tensor& X_in, const at::Tensor& row, const at::Tensor& slot,
                           const at::Tensor& row_weights_in, const at::Tensor& budget,
                           double cg_tol, bool shared_gram) {
  const CommitSizes s =
      check_commit_args(W, Z, A, removed, gram, n_rem, budget_used, alive, out, results, counter,
                        V_in, XV_in, X_in, row, slot, row_weights_in, budget, cg_tol, shared_gram);
  const c10::cuda::CUDAGuard guard(W.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const at::Tensor V = V_in.contiguous(), XV = XV_in.contiguous(), X = X_in.contiguous();
  const at::Tensor rw = row_weights_in.reshape({-1}).contiguous();
  const at::Tensor row_c = row.reshape({-1}).contiguous(), slot_c = slot.reshape({-1}).contiguous();
  const at::Tensor budget_c = budget.reshape({-1}).contiguous();
  const CommitScalars scalars{out.const_data_ptr<double>(), budget_used.const_data_ptr<double>(),
                              budget_c.const_data_ptr<double>(), alive.const_data_ptr<bool>(),
                              row_c.const_data_ptr<int64_t>(), cg_tol, s.n};
  const int64_t total = s.d * s.K + s.n * s.K + s.G * s.d * s.d;
  if (total > 0) {
    // enough blocks for W and Z's elements and for the Gram rows (one row per block step)
    const dim3 grid = cuda::grid_for(std::max(s.d * s.K + s.n * s.K, s.G * s.d * cuda::kThreads));
    commit_updates_kernel<<<grid, cuda::kThreads, 0, stream>>>(
        scalars, s.d, s.K, s.G, shared_gram, V.const_data_ptr<double>(),
        XV.const_data_ptr<double>(), X.const_data_ptr<double>(), rw.const_data_ptr<double>(),
        W.data_ptr<double>(), Z.data_ptr<double>(), gram.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  commit_scalars_kernel<<<1, 32, 0, stream>>>(
      scalars, s.K, s.T, results.size(1), slot_c.const_data_ptr<int64_t>(),
      rw.const_data_ptr<double>(), A.data_ptr<double>(), removed.data_ptr<bool>(),
      n_rem.data_ptr<double>(), budget_used.data_ptr<double>(), alive.data_ptr<bool>(),
      out.data_ptr<double>(), results.data_ptr<double>(), counter.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(fastunlearn, CUDA, m) {
  m.impl("certified_commit_", &certified_commit_cuda);
}

}  // namespace fastunlearn
