// Argument checks of certified_cg_tail_, shared by its CPU and CUDA kernels.
// Semantics: fastunlearn/ops/reference.py::certified_cg_tail_.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <utility>

namespace fastunlearn {

// The sizes the checks found: d features, n rows, K classes.
struct CgTailSizes {
  int64_t d, n, K;
};

inline void check_tail_float64(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kDouble, "certified_cg_tail_: argument '", name,
                   "' must be float64, got ", t.scalar_type());
}

inline void check_tail_shape(const at::Tensor& t, int64_t rows, int64_t cols, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols,
                    "certified_cg_tail_: argument '", name, "' must have shape [", rows, ", ",
                    cols, "], got ", t.sizes());
}

// Every tensor float64 and on V's device; V, HV, R, P, HP, Delta [d, K]; XV, XP, A [n, K];
// rz, spectral [K]; out 1-D with at least 2 elements; needed a bool with one element; the
// written tensors (V, XV, HV, R, out) contiguous.
inline CgTailSizes check_cg_tail_args(const at::Tensor& V, const at::Tensor& XV,
                                      const at::Tensor& HV, const at::Tensor& R,
                                      const at::Tensor& out, const at::Tensor& P,
                                      const at::Tensor& XP, const at::Tensor& HP,
                                      const at::Tensor& rz, const std::optional<at::Tensor>& needed,
                                      const at::Tensor& A, const at::Tensor& Delta,
                                      const at::Tensor& spectral) {
  TORCH_CHECK_VALUE(V.dim() == 2, "certified_cg_tail_: argument 'V' must be 2-D, got shape ",
                    V.sizes());
  TORCH_CHECK_VALUE(XV.dim() == 2, "certified_cg_tail_: argument 'XV' must be 2-D, got shape ",
                    XV.sizes());
  const CgTailSizes s{V.size(0), XV.size(0), V.size(1)};
  const std::pair<const at::Tensor*, const char*> all[] = {
      {&V, "V"}, {&XV, "XV"}, {&HV, "HV"}, {&R, "R"}, {&out, "out"}, {&P, "P"}, {&XP, "XP"},
      {&HP, "HP"}, {&rz, "rz"}, {&A, "A"}, {&Delta, "Delta"}, {&spectral, "spectral"}};
  for (const auto& [t, name] : all) {
    check_tail_float64(*t, name);
    TORCH_CHECK_VALUE(t->device() == V.device(), "certified_cg_tail_: argument '", name,
                      "' is on ", t->device(), " but 'V' is on ", V.device());
  }
  for (const auto& [t, name] : {std::pair<const at::Tensor*, const char*>{&V, "V"},
                                {&HV, "HV"}, {&R, "R"}, {&P, "P"}, {&HP, "HP"},
                                {&Delta, "Delta"}}) {
    check_tail_shape(*t, s.d, s.K, name);
  }
  for (const auto& [t, name] : {std::pair<const at::Tensor*, const char*>{&XV, "XV"},
                                {&XP, "XP"}, {&A, "A"}}) {
    check_tail_shape(*t, s.n, s.K, name);
  }
  TORCH_CHECK_VALUE(rz.dim() == 1 && rz.size(0) == s.K, "certified_cg_tail_: argument 'rz' must "
                    "have shape [", s.K, "], got ", rz.sizes());
  TORCH_CHECK_VALUE(spectral.dim() == 1 && spectral.size(0) == s.K, "certified_cg_tail_: "
                    "argument 'spectral' must have shape [", s.K, "], got ", spectral.sizes());
  TORCH_CHECK_VALUE(out.dim() == 1 && out.size(0) >= 2, "certified_cg_tail_: argument 'out' must "
                    "be 1-D with at least 2 elements, got shape ", out.sizes());
  for (const auto& [t, name] : {std::pair<const at::Tensor*, const char*>{&V, "V"},
                                {&XV, "XV"}, {&HV, "HV"}, {&R, "R"}, {&out, "out"}}) {
    TORCH_CHECK_VALUE(t->is_contiguous(), "certified_cg_tail_: argument '", name,
                      "' must be contiguous (it is written in place)");
  }
  if (needed.has_value()) {
    TORCH_CHECK_TYPE(needed->scalar_type() == at::kBool, "certified_cg_tail_: argument 'needed' "
                     "must be bool, got ", needed->scalar_type());
    TORCH_CHECK_VALUE(needed->numel() == 1, "certified_cg_tail_: argument 'needed' must have "
                      "one element, got shape ", needed->sizes());
    TORCH_CHECK_VALUE(needed->device() == V.device(), "certified_cg_tail_: argument 'needed' is "
                      "on ", needed->device(), " but 'V' is on ", V.device());
  }
  return s;
}

}  // namespace fastunlearn
