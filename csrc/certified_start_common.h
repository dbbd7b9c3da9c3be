// Argument checks and scalar helpers of certified_start_, shared by its CPU and CUDA kernels.
// Semantics: fastunlearn/ops/reference.py::certified_start_.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>

#include "checks.h"

#ifdef __CUDACC__
#define FU_HOST_DEVICE __host__ __device__
#else
#define FU_HOST_DEVICE
#endif

namespace fastunlearn {

// The sizes the checks found: d features, n rows, K classes, E entries of eig (1 or K).
struct StartSizes {
  int64_t d, n, K, E;
};

// sigma(x) = 1 / (1 + exp(-x)), as torch.sigmoid computes it in float64.
FU_HOST_DEVICE inline double start_sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

// sqrt(max(min(e, t), 0)) with NaN propagated as torch.minimum / clamp_min / sqrt do.
FU_HOST_DEVICE inline double start_spectral(double e, double t) {
  const double m = (e != e || t != t) ? e + t : (e < t ? e : t);
  return sqrt(m < 0.0 ? 0.0 : m);
}

// X [n, d]; Y, Z, A, A_after, S [n, K]; W, Delta [d, K]; row_weights K elements; lam_k,
// n_rem, spectral [K]; eig [1] or [K]; row_sq [n]; row one int64. Everything float64 (row
// int64) on X's device; the written tensors contiguous; lam finite and >= 0.
inline StartSizes check_start_args(const at::Tensor& row_weights, const at::Tensor& Delta,
                                   const at::Tensor& A_after, const at::Tensor& S,
                                   const at::Tensor& lam_k, const at::Tensor& spectral,
                                   const at::Tensor& X, const at::Tensor& Y, const at::Tensor& Z,
                                   const at::Tensor& A, const at::Tensor& W,
                                   const at::Tensor& row, const at::Tensor& n_rem,
                                   const at::Tensor& eig, const at::Tensor& row_sq, double lam) {
  constexpr const char* op = "certified_start_";
  check_named_tensors({{&X, "X"}, {&row_weights, "row_weights"}, {&Delta, "Delta"},
                       {&A_after, "A_after"}, {&S, "S"}, {&lam_k, "lam_k"},
                       {&spectral, "spectral"}, {&Y, "Y"}, {&Z, "Z"}, {&A, "A"}, {&W, "W"},
                       {&row, "row"}, {&n_rem, "n_rem"}, {&eig, "eig"}, {&row_sq, "row_sq"}},
                      op, {&row});
  TORCH_CHECK_VALUE(X.dim() == 2, op, ": argument 'X' must be 2-D, got shape ", X.sizes());
  TORCH_CHECK_VALUE(W.dim() == 2, op, ": argument 'W' must be 2-D, got shape ", W.sizes());
  const int64_t n = X.size(0), d = X.size(1), K = W.size(1);
  check_shape_is(W, {d, K}, op, "W");
  check_shape_is(Delta, {d, K}, op, "Delta");
  for (const NamedTensor& nt : {NamedTensor{&Y, "Y"}, NamedTensor{&Z, "Z"}, NamedTensor{&A, "A"},
                                NamedTensor{&A_after, "A_after"}, NamedTensor{&S, "S"}}) {
    check_shape_is(*nt.first, {n, K}, op, nt.second);
  }
  for (const NamedTensor& nt : {NamedTensor{&lam_k, "lam_k"}, NamedTensor{&n_rem, "n_rem"},
                                NamedTensor{&spectral, "spectral"}}) {
    check_shape_is(*nt.first, {K}, op, nt.second);
  }
  TORCH_CHECK_VALUE(eig.dim() == 1 && (eig.size(0) == 1 || eig.size(0) == K), op,
                    ": argument 'eig' must have shape [1] or [", K, "], got ", eig.sizes());
  check_shape_is(row_sq, {n}, op, "row_sq");
  TORCH_CHECK_VALUE(row_weights.numel() == K, op, ": argument 'row_weights' must have ", K,
                    " elements, got shape ", row_weights.sizes());
  TORCH_CHECK_VALUE(row.numel() == 1, op, ": argument 'row' must have one element, got shape ",
                    row.sizes());
  TORCH_CHECK_VALUE(std::isfinite(lam) && lam >= 0.0, op, ": argument 'lam' must be finite and "
                    ">= 0, got ", lam);
  check_written_contiguous({{&row_weights, "row_weights"}, {&Delta, "Delta"},
                            {&A_after, "A_after"}, {&S, "S"}, {&lam_k, "lam_k"},
                            {&spectral, "spectral"}},
                           op);
  return StartSizes{d, n, K, eig.size(0)};
}

}  // namespace fastunlearn
