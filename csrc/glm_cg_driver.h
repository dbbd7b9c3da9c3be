// The device-agnostic parts of the GLM-curvature and CG-support families, shared by the CPU
// and CUDA kernels: argument checks, the C++ entry points the CG driver composes, and the
// conjugate-gradient loop of glm_cg itself (written with at:: ops plus the two fused kernels
// it is given, so CPU and CUDA run exactly the same algorithm).
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <optional>
#include <tuple>

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
  TORCH_CHECK(t.scalar_type() == dtype, op, ": argument '", name, "' must have dtype ", dtype,
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
    TORCH_CHECK(m.size(1) == x.size(1) || m.size(1) == 1, op,
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
  TORCH_CHECK(lam >= 0.0, op, ": argument 'lam' must be >= 0, got ", lam);
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

}  // namespace fastunlearn
