// The device-agnostic parts of the GLM-curvature and CG-support families, shared by the CPU
// and CUDA kernels: argument checks, the C++ entry points the CG driver composes, and the
// conjugate-gradient loop of glm_cg itself (written with at:: ops plus the two fused kernels
// it is given, so CPU and CUDA run exactly the same algorithm).
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <optional>
#include <tuple>
#include <utility>

#include "checks.h"

namespace fastunlearn {

// ---- entry points (defined in cpu/*_cpu.cpp and cuda/*_cuda.cu) ---------------------------

void cg_update_cpu(const at::Tensor& x, const at::Tensor& r, const at::Tensor& p,
                   const at::Tensor& Ap, const std::optional<at::Tensor>& inv_diag,
                   const at::Tensor& rz, const at::Tensor& rr, const at::Tensor& active,
                   const at::Tensor& iterations, const at::Tensor& threshold_sq);
void cg_update_cuda(const at::Tensor& x, const at::Tensor& r, const at::Tensor& p,
                    const at::Tensor& Ap, const std::optional<at::Tensor>& inv_diag,
                    const at::Tensor& rz, const at::Tensor& rr, const at::Tensor& active,
                    const at::Tensor& iterations, const at::Tensor& threshold_sq);

// ---- argument checks ---------------------------------------------------------------------

// A 1-D tensor of length K with the given dtype on `like`'s device.
inline void check_vector(const at::Tensor& t, int64_t K, at::ScalarType dtype,
                         const at::Tensor& like, const char* op, const char* name,
                         const char* like_name) {
  check_dim(t, 1, op, name);
  check_size(t, 0, K, op, name, "entries");
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, op, ": argument '", name, "' must have dtype ", dtype,
                   ", got ", t.scalar_type());
  check_same_device(t, like, op, name, like_name);
}

// A [d, K] tensor with x's dtype and device.
inline void check_like_matrix(const at::Tensor& t, const at::Tensor& x, const char* op,
                              const char* name) {
  check_dim(t, 2, op, name);
  check_size(t, 0, x.size(0), op, name, "rows");
  check_size(t, 1, x.size(1), op, name, "columns");
  check_same_dtype(t, x, op, name, "x");
  check_same_device(t, x, op, name, "x");
}

inline void check_cg_update_args(const at::Tensor& x, const at::Tensor& r, const at::Tensor& p,
                                 const at::Tensor& Ap,
                                 const std::optional<at::Tensor>& inv_diag,
                                 const at::Tensor& rz, const at::Tensor& rr,
                                 const at::Tensor& active, const at::Tensor& iterations,
                                 const at::Tensor& threshold_sq) {
  constexpr const char* op = "cg_update_";
  check_float(x, op, "x");
  check_dim(x, 2, op, "x");
  check_like_matrix(r, x, op, "r");
  check_like_matrix(p, x, op, "p");
  check_like_matrix(Ap, x, op, "Ap");
  if (inv_diag.has_value()) {
    const at::Tensor& m = *inv_diag;
    check_dim(m, 2, op, "inv_diag");
    check_size(m, 0, x.size(0), op, "inv_diag", "rows");
    TORCH_CHECK_VALUE(m.size(1) == x.size(1) || m.size(1) == 1, op,
                      ": argument 'inv_diag' must have ", x.size(1), " columns or 1, got shape ",
                      m.sizes());
    check_same_dtype(m, x, op, "inv_diag", "x");
    check_same_device(m, x, op, "inv_diag", "x");
  }
  const int64_t K = x.size(1);
  check_vector(rz, K, x.scalar_type(), x, op, "rz", "x");
  check_vector(rr, K, x.scalar_type(), x, op, "rr", "x");
  check_vector(threshold_sq, K, x.scalar_type(), x, op, "threshold_sq", "x");
  check_vector(active, K, at::kBool, x, op, "active", "x");
  check_vector(iterations, K, at::kLong, x, op, "iterations", "x");
  // The kernels read and write through raw pointers (and copy non-contiguous arguments), so
  // a written argument sharing memory with another one would silently mix inputs and
  // outputs. The one alias allowed is Ap with p (an identity operator returns its input):
  // p is written only after the last read of Ap.
  const std::pair<const at::Tensor*, const char*> written[] = {
      {&x, "x"}, {&r, "r"}, {&p, "p"}, {&rz, "rz"}, {&rr, "rr"}, {&active, "active"},
      {&iterations, "iterations"}};
  const std::pair<const at::Tensor*, const char*> all[] = {
      {&x, "x"}, {&r, "r"}, {&p, "p"}, {&Ap, "Ap"},
      {inv_diag.has_value() ? &*inv_diag : nullptr, "inv_diag"}, {&rz, "rz"}, {&rr, "rr"},
      {&active, "active"}, {&iterations, "iterations"}, {&threshold_sq, "threshold_sq"}};
  for (const auto& [w, w_name] : written) {
    // an expanded (stride-0) argument: several of its elements would be written at once
    TORCH_CHECK_VALUE(at::has_internal_overlap(*w) != at::MemOverlap::Yes, op, ": argument '",
                      w_name, "' (written in place) has elements that share memory (an ",
                      "expanded tensor?); pass a tensor with its own storage per element");
    for (const auto& [a, a_name] : all) {
      if (a == nullptr || a == w || (w == &p && a == &Ap)) continue;
      const at::MemOverlapStatus status = at::get_overlap_status(*w, *a);
      TORCH_CHECK_VALUE(
          status != at::MemOverlapStatus::Full && status != at::MemOverlapStatus::Partial, op,
          ": argument '", w_name, "' (written in place) shares memory with argument '", a_name,
          "'");
    }
  }
}

// X [n, d] and S [n, K], float32/float64, same dtype and device.
inline void check_glm_design(const at::Tensor& X, const at::Tensor& S, const char* op) {
  check_float(X, op, "X");
  check_dim(X, 2, op, "X");
  check_dim(S, 2, op, "S");
  check_size(S, 0, X.size(0), op, "S", "rows");
  check_same_dtype(S, X, op, "S", "X");
  check_same_device(S, X, op, "S", "X");
}

inline void check_lam(double lam, const char* op) {
  check_finite_scalar(lam, op, "lam");
  TORCH_CHECK_VALUE(lam >= 0.0, op, ": argument 'lam' must be >= 0, got ", lam);
}

// A [d, K] right-hand side / iterate with X's dtype and device.
inline void check_dk(const at::Tensor& t, const at::Tensor& X, const at::Tensor& S,
                     const char* op, const char* name) {
  check_dim(t, 2, op, name);
  check_size(t, 0, X.size(1), op, name, "rows");
  check_size(t, 1, S.size(1), op, name, "columns");
  check_same_dtype(t, X, op, name, "X");
  check_same_device(t, X, op, name, "X");
}

// Kernels work on contiguous tensors; an in-place argument that was not contiguous gets the
// result copied back from its contiguous working copy.
inline void write_back(const at::Tensor& original, const at::Tensor& work) {
  if (!work.is_same(original)) original.copy_(work);
}

// ---- shared computations -----------------------------------------------------------------

// Rows per chunk of X so that one chunk holds about `chunk_bytes` (at least one row).
inline int64_t rows_per_chunk(const at::Tensor& X, int64_t chunk_bytes) {
  const int64_t row_bytes = std::max<int64_t>(X.size(1), 1) * X.element_size();
  return std::max<int64_t>(1, chunk_bytes / row_bytes);
}

// out[k] = X^T diag(S[:, k]) X + lam I, accumulated over row chunks of X (so the scaled copy
// of X is one chunk, not n x d) with one GEMM per chunk and class. The result is made exactly
// symmetric by averaging with its transpose.
inline at::Tensor glm_hessian_chunked(const at::Tensor& X, const at::Tensor& S, double lam,
                                      int64_t chunk_bytes) {
  constexpr const char* op = "glm_hessian";
  check_glm_design(X, S, op);
  check_lam(lam, op);
  const int64_t n = X.size(0), d = X.size(1), K = S.size(1);
  at::Tensor out = at::zeros({K, d, d}, X.options());
  if (n > 0 && d > 0 && K > 0) {
    const at::Tensor Xc = X.contiguous();
    const at::Tensor St = S.t().contiguous();  // [K, n]: class k's weights are contiguous
    const int64_t rows = std::min(n, rows_per_chunk(Xc, chunk_bytes));
    at::Tensor scaled = at::empty({rows, d}, Xc.options());
    for (int64_t start = 0; start < n; start += rows) {
      const int64_t len = std::min(rows, n - start);
      const at::Tensor chunk = Xc.narrow(0, start, len);
      at::Tensor w = scaled.narrow(0, 0, len);
      for (int64_t k = 0; k < K; ++k) {
        at::mul_out(w, chunk, St.select(0, k).narrow(0, start, len).unsqueeze(1));
        out.select(0, k).addmm_(chunk.t(), w);
      }
    }
    out = (out + out.transpose(1, 2)).mul_(0.5);
  }
  out.diagonal(0, 1, 2).add_(lam);
  return out;
}

// ---- the CG driver of glm_cg ---------------------------------------------------------------

// Column-wise dot products of two [d, K] tensors -> [K].
inline at::Tensor column_dots(const at::Tensor& a, const at::Tensor& b) {
  return (a * b).sum(0);
}

// One CG step with a preconditioner that is not elementwise (Cholesky factors), written with
// at:: ops; same semantics as cg_update_ (a column steps iff it is active and p.Ap is
// positive and finite; other columns are left unchanged).
inline void cg_step_unfused(at::Tensor& x, at::Tensor& r, at::Tensor& p, const at::Tensor& Ap,
                            at::Tensor& rz, at::Tensor& rr, at::Tensor& active,
                            at::Tensor& iterations, const at::Tensor& threshold_sq,
                            const std::function<at::Tensor(const at::Tensor&)>& precondition) {
  const at::Tensor pAp = column_dots(p, Ap);
  const at::Tensor go = active & (pAp > 0) & at::isfinite(pAp);
  const at::Tensor alpha = at::where(go, rz / pAp, 0);
  x = at::where(go, x + alpha * p, x);
  r = at::where(go, r - alpha * Ap, r);
  const at::Tensor z = precondition(r);
  const at::Tensor rz_new = column_dots(r, z);
  const at::Tensor beta = at::where(go & (rz != 0), rz_new / rz, 0);
  p = at::where(go, z + beta * p, p);
  rz = at::where(go, rz_new, rz);
  rr = at::where(go, column_dots(r, r), rr);
  iterations.add_(go);
  active = go & (rr > threshold_sq);
}

// K independent CG solves of (X^T diag(S_k) X + lam I) x_k = B[:, k], matrix-free.
//
// `hvp(X, S, V, lam)` is the device's glm_hvp kernel and `update(...)` its cg_update_ kernel;
// everything else is at:: ops, so CPU and CUDA run the same loop. The loop never waits for
// the device inside an iteration: inactive columns are masked inside the update kernel, and
// the host only asks whether any column is still active every `check_every` iterations (one
// host synchronisation per check; on CPU a check is free, on CUDA it stalls the stream).
// After the loop the TRUE residual norms ||B - H x|| are recomputed with one more hvp.
template <typename Hvp, typename Update>
std::tuple<at::Tensor, at::Tensor, at::Tensor> glm_cg_solve(
    const at::Tensor& X_in, const at::Tensor& S_in, const at::Tensor& B, double lam,
    const std::optional<at::Tensor>& x0, const std::optional<at::Tensor>& precond, double tol,
    int64_t maxiter, int64_t check_every, const Hvp& hvp, const Update& update) {
  constexpr const char* op = "glm_cg";
  check_glm_design(X_in, S_in, op);
  check_dk(B, X_in, S_in, op, "B");
  check_lam(lam, op);
  check_finite_scalar(tol, op, "tol");
  TORCH_CHECK_VALUE(tol >= 0.0, op, ": argument 'tol' must be >= 0, got ", tol);
  TORCH_CHECK_VALUE(maxiter >= 0, op, ": argument 'maxiter' must be >= 0, got ", maxiter);
  if (x0.has_value()) check_dk(*x0, X_in, S_in, op, "x0");
  const int64_t d = X_in.size(1), K = S_in.size(1);

  std::optional<at::Tensor> jacobi;  // [d, K] or [d, 1]: elementwise, fused update kernel
  at::Tensor cholesky;               // [K, d, d] lower factors: unfused at:: update
  if (precond.has_value()) {
    const at::Tensor& m = *precond;
    check_same_dtype(m, X_in, op, "precond", "X");
    check_same_device(m, X_in, op, "precond", "X");
    if (m.dim() == 2) {
      check_size(m, 0, d, op, "precond", "rows");
      TORCH_CHECK_VALUE(m.size(1) == K || m.size(1) == 1, op,
                        ": argument 'precond' (Jacobi inverse diagonal) must have ", K,
                        " columns or 1, got shape ", m.sizes());
      // an inverse diagonal that is zero, negative or not finite is no preconditioner: CG
      // would stop at once (or run on NaN) and return the start as if it had converged
      TORCH_CHECK_VALUE(at::logical_and(m > 0, at::isfinite(m)).all().item<bool>(), op,
                        ": argument 'precond' (Jacobi inverse diagonal) must be finite and > 0 ",
                        "everywhere");
      jacobi = m.contiguous();
    } else {
      TORCH_CHECK_VALUE(m.dim() == 3 && m.size(0) == K && m.size(1) == d && m.size(2) == d, op,
                        ": argument 'precond' must be a [d, K] Jacobi inverse diagonal or ",
                        "[K, d, d] lower Cholesky factors (d = ", d, ", K = ", K, "), got shape ",
                        m.sizes());
      // the triangular solves read the lower triangle only: it must be finite, its
      // diagonal > 0 (the factor of a positive definite preconditioner)
      TORCH_CHECK_VALUE(at::isfinite(m.tril()).all().item<bool>() &&
                            (m.diagonal(0, -2, -1) > 0).all().item<bool>(),
                        op, ": argument 'precond' (lower Cholesky factors) must be finite with ",
                        "a diagonal > 0");
      cholesky = m.contiguous();
    }
  }
  auto precondition = [&](const at::Tensor& r) -> at::Tensor {
    if (jacobi.has_value()) return *jacobi * r;
    if (!cholesky.defined()) return r;
    // Solve L_k L_k^T z_k = r_k for every column k with two batched triangular solves.
    // at::cholesky_solve would clone all K factors into column-major order on every call
    // (49 MB at d = 784, K = 10: 7x slower on CPU); the triangular solves borrow them.
    const at::Tensor rhs = r.t().unsqueeze(-1);
    const at::Tensor y = at::linalg_solve_triangular(cholesky, rhs, /*upper=*/false);
    return at::linalg_solve_triangular(cholesky.mH(), y, /*upper=*/true)
        .squeeze(-1)
        .t()
        .contiguous();
  };

  // CG is invariant to scaling a column of B (and of x0), its dot products are not: r.r of a
  // float32 column of size ~1e-22 underflows to 0 (the column "converges" at once to x = 0)
  // and of one of ~1e20 overflows to inf. A column whose largest entry is far from 1
  // (2^(e-1) <= max|B[:, k]| < 2^e with |e| > kExponentBand) is solved for B[:, k] 2^-e and
  // its solution and residual norm are scaled back. Powers of two scale exactly; other
  // columns are multiplied by 1, so their results are unchanged bit for bit.
  const at::Tensor B_raw = B.contiguous();
  const int64_t band = B_raw.scalar_type() == at::kFloat ? 30 : 250;
  at::Tensor down = at::ones({K}, B_raw.options().dtype(at::kDouble));
  if (d > 0 && K > 0) {
    const at::Tensor amax = B_raw.abs().amax(0).to(at::kDouble);
    const at::Tensor e = std::get<1>(at::frexp(amax)).to(at::kDouble).clamp(-1000, 1000);
    const at::Tensor rescale = at::isfinite(amax) & (amax > 0) & (e.abs() > band);
    down = at::where(rescale, at::exp2(-e), down);
  }
  const at::Tensor up = down.reciprocal();
  auto rescaled = [](const at::Tensor& t, const at::Tensor& factor) {
    return (t.to(at::kDouble) * factor).to(t.scalar_type()).contiguous();
  };
  const at::Tensor X = X_in.contiguous(), S = S_in.contiguous();
  const at::Tensor Bc = rescaled(B_raw, down);
  at::Tensor x = x0.has_value() ? rescaled(*x0, down) : at::zeros_like(Bc);
  at::Tensor r = x0.has_value() ? (Bc - hvp(X, S, x, lam)).contiguous() : Bc.clone();
  at::Tensor z = precondition(r);
  at::Tensor p = z.clone(at::MemoryFormat::Contiguous);
  at::Tensor rz = column_dots(r, z), rr = column_dots(r, r);
  const at::Tensor threshold_sq = column_dots(Bc, Bc).mul_(tol * tol);
  at::Tensor active = rr > threshold_sq;  // a zero column of B with x0 = None never starts
  at::Tensor iterations = at::zeros({K}, Bc.options().dtype(at::kLong));

  for (int64_t it = 0; it < maxiter; ++it) {
    if (it % check_every == 0 && !active.any().item<bool>()) break;
    const at::Tensor Ap = hvp(X, S, p, lam);
    if (cholesky.defined()) {
      cg_step_unfused(x, r, p, Ap, rz, rr, active, iterations, threshold_sq, precondition);
    } else {
      update(x, r, p, Ap, jacobi, rz, rr, active, iterations, threshold_sq);
    }
  }
  const at::Tensor residual = Bc - hvp(X, S, x, lam);
  const at::Tensor residual_norms = column_dots(residual, residual).sqrt_();
  return {rescaled(x, up), iterations, rescaled(residual_norms, up)};
}

}  // namespace fastunlearn
