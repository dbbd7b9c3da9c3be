// CPU kernels of the GLM-curvature family: glm_hvp, glm_hvp_margins, glm_hessian, glm_cg.
// Semantics: fastunlearn/ops/reference.py.
//
// glm_hvp reads X from memory once. The rows are split into one contiguous slab per thread;
// each thread walks its slab in chunks of about 1 MB (its share of L2) and does
// Z = X_c V, Z *= S_c, out_t += X_c^T Z with single-threaded BLAS calls, so the second
// product reads the chunk from cache. The per-thread partial results are summed at the end.
// This beats both torch's two full passes and one multi-threaded GEMM per chunk: BLAS
// threading over a skinny [c, d] x [d, K] product costs more in synchronisation than the
// product itself (measured on a 2-core EPYC at n = 60000, d = 784, K = 1..64).
//
// MKL's single-threaded GEMM is much faster when the number of columns K is a multiple of 16
// (float32) or 12 (float64), its AVX-512 micro-kernel widths: for a [334, 784] x [784, K]
// float32 product plus its transpose product, K = 2..8 take ~600 us and K = 16 ~220 us;
// in float64 K = 16 takes ~500 us and K = 24 ~300 us. So with MKL, V is padded with zero
// columns up to the next such multiple; the extra flops are free in this memory-bound
// regime. K = 1 takes MKL's fast matrix-vector path and is not padded.
//
// On CPUs with AVX2 and FMA, 2 <= K <= 16 (float64) or 24 (float32) columns take the fused
// register-blocked kernel of glm_rows_avx2.h instead of the BLAS calls (measured at n = 20000,
// d = 784 on 2 cores of an AMD EPYC: 1.4-2.8x faster in float64, 1.1-1.5x in float32; K = 1
// stays on BLAS's matrix-vector path, and float32 K = 32 is faster with BLAS). The
// environment variable FASTUNLEARN_GLM_CPU_KERNEL=blas forces the BLAS path (tests compare
// the two).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>

#include "glm_cg_driver.h"
#include "glm_rows_avx2.h"

namespace fastunlearn {
namespace {

constexpr int64_t kHvpChunkBytes = 1 << 20;
constexpr int64_t kHessianChunkBytes = 4 << 20;

// Columns the GEMMs should see for K right-hand sides (see the note at the top).
int64_t padded_columns(int64_t K, at::ScalarType dtype) {
  if (K <= 1 || !at::hasMKL()) return K;
  const int64_t multiple = dtype == at::kFloat ? 16 : 12;
  return (K + multiple - 1) / multiple * multiple;
}

// Z = X_c V, Z *= S_c, out += X_c^T Z over the row chunks [begin, end) of X. V and out may
// have more (zero) columns than S; only the first S.size(1) columns of Z are scaled. With a
// defined ``margins`` [n, K], the rows of X V are also stored there before the scaling.
void hvp_rows(const at::Tensor& X, const at::Tensor& S, const at::Tensor& V, int64_t begin,
              int64_t end, int64_t rows, at::Tensor& out, const at::Tensor& margins) {
  if (begin >= end) return;  // the last slabs can be empty when n is tiny
  const int64_t K = S.size(1);
  at::Tensor Z = at::empty({std::min(rows, end - begin), V.size(1)}, V.options());
  for (int64_t start = begin; start < end; start += rows) {
    const int64_t len = std::min(rows, end - start);
    const at::Tensor chunk = X.narrow(0, start, len);
    at::Tensor z = Z.narrow(0, 0, len);
    at::mm_out(z, chunk, V);
    if (margins.defined()) margins.narrow(0, start, len).copy_(z.narrow(1, 0, K));
    z.narrow(1, 0, K).mul_(S.narrow(0, start, len));
    out.addmm_(chunk.t(), z);
  }
}

// True when the fused AVX2 kernel should compute this product (see the note at the top).
bool use_avx2_kernel(const at::Tensor& V, int64_t K) {
#if FASTUNLEARN_HAVE_AVX2_KERNELS
  if (glm_cpu_kernel_forced_blas()) return false;
  if (!cpu_has_avx2_fma()) return false;
  if (K < 2) return false;
  if (V.scalar_type() == at::kDouble) return K <= avx2_max_columns<double>();
  if (V.scalar_type() == at::kFloat) return K <= 3 * Avx2Vec<float>::lanes;
#endif
  (void)V;
  (void)K;
  return false;
}

#if FASTUNLEARN_HAVE_AVX2_KERNELS
// The fused kernel over one slab of rows per thread; returns sum_slabs X^T (S * X V), [d, K].
template <typename T>
at::Tensor hvp_avx2(const at::Tensor& X, const at::Tensor& S, const at::Tensor& V,
                    const at::Tensor& margins) {
  const int64_t n = X.size(0), d = X.size(1), K = S.size(1);
  const int64_t padded = avx2_padded_columns<T>(K);
  at::Tensor V_pad = at::zeros({d, padded}, V.options());
  V_pad.narrow(1, 0, K).copy_(V);
  // rows per slab: enough work per thread to pay for waking it
  constexpr int64_t kMinRowsPerSlab = 256;
  const int64_t slabs = std::max<int64_t>(
      1, std::min<int64_t>(at::get_num_threads(), n / kMinRowsPerSlab));
  at::Tensor partial = at::zeros({slabs, d, padded}, V.options());
  const int64_t per_slab = (n + slabs - 1) / slabs;
  const T* x = X.const_data_ptr<T>();
  const T* s = S.const_data_ptr<T>();
  const T* v = V_pad.const_data_ptr<T>();
  T* acc = partial.mutable_data_ptr<T>();
  T* m = margins.defined() ? margins.mutable_data_ptr<T>() : nullptr;
  at::parallel_for(0, slabs, 1, [&](int64_t s0, int64_t s1) {
    for (int64_t slab = s0; slab < s1; ++slab) {
      const int64_t begin = slab * per_slab, end = std::min(n, (slab + 1) * per_slab);
      if (begin < end)
        glm_rows_avx2<T>(x, d, s, K, v, d, K, begin, end, acc + slab * d * padded, m);
    }
  });
  at::Tensor total = slabs == 1 ? partial.select(0, 0) : partial.sum(0);
  return total.narrow(1, 0, K);
}
#endif

// glm_hvp, and X V into ``margins`` when it is defined ([n, K], contiguous).
at::Tensor hvp_cpu(const at::Tensor& X_in, const at::Tensor& S_in, const at::Tensor& V_in,
                   double lam, const at::Tensor& margins, const char* op) {
  check_glm_design(X_in, S_in, op);
  check_dk(V_in, X_in, S_in, op, "V");
  check_lam(lam, op);
  const int64_t n = X_in.size(0), d = X_in.size(1), K = S_in.size(1);
  const at::Tensor V = V_in.contiguous();
  at::Tensor out = at::mul(V, lam).contiguous();
  if (n == 0 || K == 0) return out;
  if (d == 0) {
    if (margins.defined()) margins.zero_();
    return out;
  }
  const at::Tensor X = X_in.contiguous(), S = S_in.contiguous();
#if FASTUNLEARN_HAVE_AVX2_KERNELS
  if (use_avx2_kernel(V, K)) {
    const at::Tensor product = V.scalar_type() == at::kDouble
                                   ? hvp_avx2<double>(X, S, V, margins)
                                   : hvp_avx2<float>(X, S, V, margins);
    return out.add_(product);
  }
#endif
  const int64_t rows = std::min(n, rows_per_chunk(X, kHvpChunkBytes));
  at::Tensor V_used = V;
  if (const int64_t columns = padded_columns(K, V.scalar_type()); columns != K) {
    V_used = at::zeros({d, columns}, V.options());
    V_used.narrow(1, 0, K).copy_(V);
  }
  // The slab count depends only on the thread count and n, so results are reproducible for
  // a fixed number of threads.
  const int64_t slabs = std::min<int64_t>(at::get_num_threads(), (n + rows - 1) / rows);
  at::Tensor partial = at::zeros({slabs, d, V_used.size(1)}, V.options());
  const int64_t per_slab = (n + slabs - 1) / slabs;
  // Inside the parallel region ATen/BLAS calls run single-threaded.
  at::parallel_for(0, slabs, 1, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      at::Tensor part = partial.select(0, s);
      hvp_rows(X, S, V_used, s * per_slab, std::min(n, (s + 1) * per_slab), rows, part,
               margins);
    }
  });
  return out.add_(partial.sum(0).narrow(1, 0, K));
}

at::Tensor glm_hvp_cpu(const at::Tensor& X, const at::Tensor& S, const at::Tensor& V,
                       double lam) {
  return hvp_cpu(X, S, V, lam, at::Tensor(), "glm_hvp");
}

std::tuple<at::Tensor, at::Tensor> glm_hvp_margins_cpu(const at::Tensor& X, const at::Tensor& S,
                                                      const at::Tensor& V, double lam) {
  check_glm_design(X, S, "glm_hvp_margins");
  at::Tensor margins = at::empty({X.size(0), S.size(1)}, X.options().dtype(V.scalar_type()));
  at::Tensor out = hvp_cpu(X, S, V, lam, margins, "glm_hvp_margins");
  return {out, margins};
}

at::Tensor glm_hessian_cpu(const at::Tensor& X, const at::Tensor& S, double lam) {
  return glm_hessian_chunked(X, S, lam, kHessianChunkBytes);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> glm_cg_cpu(
    const at::Tensor& X, const at::Tensor& S, const at::Tensor& B, double lam,
    const std::optional<at::Tensor>& x0, const std::optional<at::Tensor>& precond, double tol,
    int64_t maxiter) {
  // A convergence check costs nothing on the CPU, so check every iteration and skip the
  // hvps that a coarser check would spend on already-converged systems.
  return glm_cg_solve(X, S, B, lam, x0, precond, tol, maxiter, /*check_every=*/1, glm_hvp_cpu,
                      cg_update_cpu);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastunlearn, CPU, m) {
  m.impl("glm_hvp", &glm_hvp_cpu);
  m.impl("glm_hvp_margins", &glm_hvp_margins_cpu);
  m.impl("glm_hessian", &glm_hessian_cpu);
  m.impl("glm_cg", &glm_cg_cpu);
}

}  // namespace fastunlearn
