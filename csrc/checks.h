// Argument checks shared by the CPU and CUDA kernels. Every message names the argument.
#pragma once

#include <ATen/ATen.h>

#include <string>

namespace fastunlearn {

// A floating tensor of float32 or float64.
inline void check_float(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": argument '",
              name, "' must be float32 or float64, got ", t.scalar_type());
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* op, const char* name) {
  TORCH_CHECK(t.dim() == dim, op, ": argument '", name, "' must be ", dim, "-D, got shape ",
              t.sizes());
}

inline void check_size(const at::Tensor& t, int64_t axis, int64_t expected, const char* op,
                       const char* name, const char* what) {
  TORCH_CHECK(t.size(axis) == expected, op, ": argument '", name, "' has ", t.size(axis), " ",
              what, " (dimension ", axis, ") but ", expected, " were expected; shape ",
              t.sizes());
}

inline void check_same_dtype(const at::Tensor& a, const at::Tensor& b, const char* op,
                             const char* name_a, const char* name_b) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), op, ": arguments '", name_a, "' (",
              a.scalar_type(), ") and '", name_b, "' (", b.scalar_type(),
              ") must have the same dtype");
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* op,
                              const char* name_a, const char* name_b) {
  TORCH_CHECK(a.device() == b.device(), op, ": arguments '", name_a, "' (", a.device(),
              ") and '", name_b, "' (", b.device(), ") must be on the same device");
}

inline void check_finite_scalar(double v, const char* op, const char* name) {
  TORCH_CHECK(std::isfinite(v), op, ": argument '", name, "' must be finite, got ", v);
}

}  // namespace fastunlearn
