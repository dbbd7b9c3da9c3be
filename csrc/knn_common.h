// Argument checks of knn_extreme, shared by its CPU and CUDA kernels.
#pragma once

#include <ATen/ATen.h>

#include "checks.h"

namespace fastunlearn {

// Q[m, d] and P[n, d]: 2-D, float32/float64, same dtype and device, same d; 0 <= k <= n.
inline void check_knn_args(const at::Tensor& Q, const at::Tensor& P, int64_t k) {
  constexpr const char* op = "knn_extreme";
  check_dim(Q, 2, op, "Q");
  check_dim(P, 2, op, "P");
  check_float(Q, op, "Q");
  check_float(P, op, "P");
  check_same_dtype(Q, P, op, "Q", "P");
  check_same_device(Q, P, op, "Q", "P");
  check_size(P, 1, Q.size(1), op, "P", "columns");
  TORCH_CHECK_VALUE(k >= 0 && k <= P.size(0), op, ": argument 'k' must satisfy 0 <= k <= n = ",
                    P.size(0), " (rows of 'P'), got ", k);
}

}  // namespace fastunlearn
