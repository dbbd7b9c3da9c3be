// Argument checks of certified_woodbury_row_, shared by its CPU and CUDA kernels.
// Semantics: fastunlearn/ops/reference.py::certified_woodbury_row_.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "checks.h"

namespace fastunlearn {

// The sizes the checks found: K classes, d features, T Woodbury slots.
struct WoodburySizes {
  int64_t K, d, T;
};

// U_buf, G_buf [K, d, T]; C_buf, C_inv [K, T, T]; U_new, G_new [K, d, 1]; L21 [K, T, 1];
// out 1-D with at least 3 elements; slot one int64. Everything float64 (slot int64) on
// U_buf's device; the written tensors contiguous.
inline WoodburySizes check_woodbury_args(const at::Tensor& U_buf, const at::Tensor& G_buf,
                                         const at::Tensor& C_buf, const at::Tensor& C_inv,
                                         const at::Tensor& out, const at::Tensor& U_new,
                                         const at::Tensor& G_new, const at::Tensor& L21,
                                         const at::Tensor& slot) {
  constexpr const char* op = "certified_woodbury_row_";
  check_named_tensors({{&U_buf, "U_buf"}, {&G_buf, "G_buf"}, {&C_buf, "C_buf"},
                       {&C_inv, "C_inv"}, {&out, "out"}, {&U_new, "U_new"},
                       {&G_new, "G_new"}, {&L21, "L21"}, {&slot, "slot"}},
                      op, {&slot});
  TORCH_CHECK_VALUE(U_buf.dim() == 3, op, ": argument 'U_buf' must be 3-D, got shape ",
                    U_buf.sizes());
  const int64_t K = U_buf.size(0), d = U_buf.size(1), T = U_buf.size(2);
  check_shape_is(G_buf, {K, d, T}, op, "G_buf");
  check_shape_is(C_buf, {K, T, T}, op, "C_buf");
  check_shape_is(C_inv, {K, T, T}, op, "C_inv");
  check_shape_is(U_new, {K, d, 1}, op, "U_new");
  check_shape_is(G_new, {K, d, 1}, op, "G_new");
  check_shape_is(L21, {K, T, 1}, op, "L21");
  TORCH_CHECK_VALUE(out.dim() == 1 && out.size(0) >= 3, op, ": argument 'out' must be 1-D "
                    "with at least 3 elements, got shape ", out.sizes());
  TORCH_CHECK_VALUE(slot.numel() == 1, op, ": argument 'slot' must have one element, got "
                    "shape ", slot.sizes());
  check_written_contiguous({{&U_buf, "U_buf"}, {&G_buf, "G_buf"}, {&C_buf, "C_buf"},
                            {&C_inv, "C_inv"}, {&out, "out"}},
                           op);
  return WoodburySizes{K, d, T};
}

}  // namespace fastunlearn
