// Argument checks shared by the CPU and CUDA kernels. Every message names the argument.
#pragma once

#include <ATen/ATen.h>

#include <initializer_list>
#include <string>
#include <utility>

namespace fastunlearn {

// A floating tensor of float32 or float64.
inline void check_float(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op,
                   ": argument '", name, "' must be float32 or float64, got ", t.scalar_type());
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == dim, op, ": argument '", name, "' must be ", dim, "-D, got shape ",
                    t.sizes());
}

inline void check_size(const at::Tensor& t, int64_t axis, int64_t expected, const char* op,
                       const char* name, const char* what) {
  TORCH_CHECK_VALUE(t.size(axis) == expected, op, ": argument '", name, "' has ", t.size(axis), " ",
                    what, " (dimension ", axis, ") but ", expected, " were expected; shape ",
                    t.sizes());
}

inline void check_same_dtype(const at::Tensor& a, const at::Tensor& b, const char* op,
                             const char* name_a, const char* name_b) {
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), op, ": arguments '", name_a, "' (",
                   a.scalar_type(), ") and '", name_b, "' (", b.scalar_type(),
                   ") must have the same dtype");
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* op,
                              const char* name_a, const char* name_b) {
  TORCH_CHECK_VALUE(a.device() == b.device(), op, ": arguments '", name_a, "' (", a.device(),
                    ") and '", name_b, "' (", b.device(), ") must be on the same device");
}

inline void check_finite_scalar(double v, const char* op, const char* name) {
  TORCH_CHECK_VALUE(std::isfinite(v), op, ": argument '", name, "' must be finite, got ", v);
}

// Like the Python wrappers, every op raises TypeError for a dtype and ValueError for a device,
// shape, layout or value (TORCH_CHECK_TYPE / TORCH_CHECK_VALUE).
using NamedTensor = std::pair<const at::Tensor*, const char*>;

// Every tensor on `first`'s device with dtype float64, except those listed in `int64` (int64)
// and `boolean` (bool).
inline void check_named_tensors(std::initializer_list<NamedTensor> all, const char* op,
                                std::initializer_list<const at::Tensor*> int64 = {},
                                std::initializer_list<const at::Tensor*> boolean = {}) {
  const NamedTensor& first = *all.begin();
  for (const auto& [t, name] : all) {
    TORCH_CHECK_VALUE(t->device() == first.first->device(), op, ": argument '", name,
                      "' is on ", t->device(), " but '", first.second, "' is on ",
                      first.first->device());
    at::ScalarType want = at::kDouble;
    for (const at::Tensor* p : int64) want = p == t ? at::kLong : want;
    for (const at::Tensor* p : boolean) want = p == t ? at::kBool : want;
    TORCH_CHECK_TYPE(t->scalar_type() == want, op, ": argument '", name, "' must be ", want,
                     ", got ", t->scalar_type());
  }
}

inline void check_shape_is(const at::Tensor& t, at::IntArrayRef want, const char* op,
                           const char* name) {
  TORCH_CHECK_VALUE(t.sizes() == want, op, ": argument '", name, "' must have shape ", want,
                    ", got ", t.sizes());
}

// The tensors an op writes in place must be contiguous.
inline void check_written_contiguous(std::initializer_list<NamedTensor> written, const char* op) {
  for (const auto& [t, name] : written) {
    TORCH_CHECK_VALUE(t->is_contiguous(), op, ": argument '", name,
                      "' must be contiguous (it is written in place)");
  }
}

}  // namespace fastunlearn
