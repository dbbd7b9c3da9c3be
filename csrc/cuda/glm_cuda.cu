// CUDA kernels of the GLM-curvature family: glm_hvp, glm_hessian, glm_cg.
// Semantics: fastunlearn/ops/reference.py.
//
// glm_hvp is two cuBLAS GEMMs through at::mm_out / addmm_ on the current stream (Z = X V, then
// out += X^T Z), a small elementwise kernel doing Z *= S between them and another
// initialising out = lam V. Rows are processed in chunks of at most 1 GB (a single chunk at
// MNIST scale). A first version used 16 MB chunks so the second GEMM would read each chunk
// from L2; on an H200 (2026-11-28, n = 60000, d = 784, float32) that ran 0.40-0.72 ms
// against 0.10-0.33 ms for torch's two full GEMMs: the 12 chunks' 36 launches and skinny
// GEMMs cost more than the second read of X saves. One chunk is torch's expression plus
// two small kernels (not yet re-measured on a GPU).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/utils.cuh"
#include "glm_cg_driver.h"

namespace fastunlearn {
namespace {

constexpr int64_t kHvpChunkBytes = int64_t(1) << 30;
constexpr int64_t kHessianChunkBytes = 16 << 20;
// Host convergence checks of glm_cg: one stream synchronisation per 16 iterations.
constexpr int64_t kCheckEvery = 16;

// z[e] *= s[e] (same shape, contiguous): Z *= S_c between the two GEMMs.
template <typename T>
__global__ void multiply_in_place_kernel(int64_t numel, T* __restrict__ z,
                                         const T* __restrict__ s) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < numel;
       e += int64_t(gridDim.x) * blockDim.x) {
    z[e] *= s[e];
  }
}

// out[e] = lam * v[e].
template <typename T>
__global__ void scale_kernel(int64_t numel, T* __restrict__ out, const T* __restrict__ v,
                             T lam) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < numel;
       e += int64_t(gridDim.x) * blockDim.x) {
    out[e] = lam * v[e];
  }
}

void multiply_into(at::Tensor& z, const at::Tensor& s, cudaStream_t stream) {
  const int64_t numel = z.numel();
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "glm_hvp_scale_rows", [&] {
    multiply_in_place_kernel<scalar_t><<<cuda::grid_for(numel), cuda::kThreads, 0, stream>>>(
        numel, z.data_ptr<scalar_t>(), s.const_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// glm_hvp, and X V into ``margins`` when it is defined ([n, K], contiguous, any contents).
// The first GEMM writes the margins in place and the scaling by S goes to a workspace (one
// elementwise kernel, no copy of the margins); with lam == 0 (the certified removal step's
// call) the second GEMM of the first chunk initialises ``out`` itself (beta = 0, so nothing
// is read from it), so no kernel writes lam V first. The one difference this makes: an
// infinite entry of V with lam == 0 can give +-inf where the oracle's 0 * inf gives NaN.
at::Tensor hvp_cuda(const at::Tensor& X_in, const at::Tensor& S_in, const at::Tensor& V_in,
                    double lam, const at::Tensor& margins, const char* op) {
  check_glm_design(X_in, S_in, op);
  check_dk(V_in, X_in, S_in, op, "V");
  check_lam(lam, op);
  const c10::cuda::CUDAGuard guard(X_in.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t n = X_in.size(0), K = S_in.size(1);
  const at::Tensor V = V_in.contiguous();
  at::Tensor out = at::empty_like(V, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) {  // d == 0 or K == 0: X V is an empty sum (or has no columns)
    if (margins.defined()) margins.zero_();
    return out;
  }
  const bool gemm_initialises = lam == 0.0 && n > 0;
  if (!gemm_initialises) {
    AT_DISPATCH_FLOATING_TYPES(V.scalar_type(), "glm_hvp_init", [&] {
      scale_kernel<scalar_t><<<cuda::grid_for(V.numel()), cuda::kThreads, 0, stream>>>(
          V.numel(), out.data_ptr<scalar_t>(), V.const_data_ptr<scalar_t>(),
          static_cast<scalar_t>(lam));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  if (n == 0) return out;

  const at::Tensor X = X_in.contiguous(), S = S_in.contiguous();
  const int64_t rows = std::min(n, rows_per_chunk(X, kHvpChunkBytes));
  at::Tensor Z = at::empty({rows, K}, V.options());
  for (int64_t start = 0; start < n; start += rows) {
    const int64_t len = std::min(rows, n - start);
    const at::Tensor chunk = X.narrow(0, start, len);
    const at::Tensor s = S.narrow(0, start, len);
    at::Tensor z = Z.narrow(0, 0, len);
    if (margins.defined()) {
      at::Tensor m = margins.narrow(0, start, len);
      at::mm_out(m, chunk, V);
      at::mul_out(z, m, s);
    } else {
      at::mm_out(z, chunk, V);
      multiply_into(z, s, stream);
    }
    if (start == 0 && gemm_initialises) {
      at::mm_out(out, chunk.t(), z);
    } else {
      out.addmm_(chunk.t(), z);
    }
  }
  return out;
}

at::Tensor glm_hvp_cuda(const at::Tensor& X, const at::Tensor& S, const at::Tensor& V,
                        double lam) {
  return hvp_cuda(X, S, V, lam, at::Tensor(), "glm_hvp");
}

std::tuple<at::Tensor, at::Tensor> glm_hvp_margins_cuda(const at::Tensor& X,
                                                       const at::Tensor& S,
                                                       const at::Tensor& V, double lam) {
  check_glm_design(X, S, "glm_hvp_margins");
  const c10::cuda::CUDAGuard guard(X.device());
  at::Tensor margins = at::empty({X.size(0), S.size(1)}, X.options().dtype(V.scalar_type()));
  at::Tensor out = hvp_cuda(X, S, V, lam, margins, "glm_hvp_margins");
  return {out, margins};
}

at::Tensor glm_hessian_cuda(const at::Tensor& X, const at::Tensor& S, double lam) {
  const c10::cuda::CUDAGuard guard(X.device());
  return glm_hessian_chunked(X, S, lam, kHessianChunkBytes);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> glm_cg_cuda(
    const at::Tensor& X, const at::Tensor& S, const at::Tensor& B, double lam,
    const std::optional<at::Tensor>& x0, const std::optional<at::Tensor>& precond, double tol,
    int64_t maxiter) {
  const c10::cuda::CUDAGuard guard(X.device());
  return glm_cg_solve(X, S, B, lam, x0, precond, tol, maxiter, kCheckEvery, glm_hvp_cuda,
                      cg_update_cuda);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastunlearn, CUDA, m) {
  m.impl("glm_hvp", &glm_hvp_cuda);
  m.impl("glm_hvp_margins", &glm_hvp_margins_cuda);
  m.impl("glm_hessian", &glm_hessian_cuda);
  m.impl("glm_cg", &glm_cg_cuda);
}

}  // namespace fastunlearn
