// Argument checks of certified_commit_, shared by its CPU and CUDA kernels.
// Semantics: fastunlearn/ops/reference.py::certified_commit_.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <utility>

namespace fastunlearn {

// The sizes the checks found: d features, n rows, K classes, G Gram matrices, T result slots.
struct CommitSizes {
  int64_t d, n, K, G, T;
};

using NamedTensor = std::pair<const at::Tensor*, const char*>;

inline void check_commit_dtype(const at::Tensor& t, at::ScalarType want, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == want, "certified_commit_: argument '", name, "' must be ",
                   want, ", got ", t.scalar_type());
}

inline void check_commit_shape(const at::Tensor& t, at::IntArrayRef want, const char* name) {
  TORCH_CHECK_VALUE(t.sizes() == want, "certified_commit_: argument '", name,
                    "' must have shape ", want, ", got ", t.sizes());
}

// W, V [d, K]; Z, XV, A [n, K]; X [n, d]; removed [n] bool; gram [G, d, d] with G = 1 when
// shared_gram else K; n_rem [K]; budget_used, budget one element float64; alive one bool;
// row, slot, counter one int64; row_weights K elements; out 1-D with at least 5 elements;
// results [T, >= 5]. Everything on W's device; every written tensor contiguous.
inline CommitSizes check_commit_args(
    const at::Tensor& W, const at::Tensor& Z, const at::Tensor& A, const at::Tensor& removed,
    const at::Tensor& gram, const at::Tensor& n_rem, const at::Tensor& budget_used,
    const at::Tensor& alive, const at::Tensor& out, const at::Tensor& results,
    const at::Tensor& counter, const at::Tensor& V, const at::Tensor& XV, const at::Tensor& X,
    const at::Tensor& row, const at::Tensor& slot, const at::Tensor& row_weights,
    const at::Tensor& budget, double cg_tol, bool shared_gram) {
  const NamedTensor all[] = {
      {&W, "W"}, {&Z, "Z"}, {&A, "A"}, {&removed, "removed"}, {&gram, "gram"},
      {&n_rem, "n_rem"}, {&budget_used, "budget_used"}, {&alive, "alive"}, {&out, "out"},
      {&results, "results"}, {&counter, "counter"}, {&V, "V"}, {&XV, "XV"}, {&X, "X"},
      {&row, "row"}, {&slot, "slot"}, {&row_weights, "row_weights"}, {&budget, "budget"}};
  for (const auto& [t, name] : all) {
    TORCH_CHECK_VALUE(t->device() == W.device(), "certified_commit_: argument '", name,
                      "' is on ", t->device(), " but 'W' is on ", W.device());
    at::ScalarType want = at::kDouble;
    if (t == &removed || t == &alive) want = at::kBool;
    if (t == &row || t == &slot || t == &counter) want = at::kLong;
    check_commit_dtype(*t, want, name);
  }
  TORCH_CHECK_VALUE(W.dim() == 2, "certified_commit_: argument 'W' must be 2-D, got shape ",
                    W.sizes());
  TORCH_CHECK_VALUE(X.dim() == 2, "certified_commit_: argument 'X' must be 2-D, got shape ",
                    X.sizes());
  TORCH_CHECK_VALUE(results.dim() == 2 && results.size(1) >= 5, "certified_commit_: argument "
                    "'results' must be 2-D with at least 5 columns, got shape ", results.sizes());
  const int64_t d = W.size(0), K = W.size(1), n = X.size(0);
  const int64_t G = shared_gram ? 1 : K;
  check_commit_shape(V, {d, K}, "V");
  check_commit_shape(X, {n, d}, "X");
  for (const NamedTensor& nt : {NamedTensor{&Z, "Z"}, NamedTensor{&XV, "XV"},
                                NamedTensor{&A, "A"}}) {
    check_commit_shape(*nt.first, {n, K}, nt.second);
  }
  check_commit_shape(removed, {n}, "removed");
  TORCH_CHECK_VALUE(gram.sizes() == at::IntArrayRef({G, d, d}), "certified_commit_: argument "
                    "'gram' must have shape [", G, ", ", d, ", ", d, "] (",
                    shared_gram ? "shared_gram" : "one per class", "), got ", gram.sizes());
  check_commit_shape(n_rem, {K}, "n_rem");
  TORCH_CHECK_VALUE(row_weights.numel() == K, "certified_commit_: argument 'row_weights' must "
                    "have ", K, " elements, got shape ", row_weights.sizes());
  for (const NamedTensor& nt : {NamedTensor{&budget_used, "budget_used"},
                                NamedTensor{&budget, "budget"}, NamedTensor{&alive, "alive"},
                                NamedTensor{&row, "row"}, NamedTensor{&slot, "slot"},
                                NamedTensor{&counter, "counter"}}) {
    TORCH_CHECK_VALUE(nt.first->numel() == 1, "certified_commit_: argument '", nt.second,
                      "' must have one element, got shape ", nt.first->sizes());
  }
  TORCH_CHECK_VALUE(out.dim() == 1 && out.size(0) >= 5, "certified_commit_: argument 'out' "
                    "must be 1-D with at least 5 elements, got shape ", out.sizes());
  TORCH_CHECK_VALUE(std::isfinite(cg_tol) && cg_tol >= 0.0, "certified_commit_: argument "
                    "'cg_tol' must be finite and >= 0, got ", cg_tol);
  for (const NamedTensor& nt :
       {NamedTensor{&W, "W"}, NamedTensor{&Z, "Z"}, NamedTensor{&A, "A"},
        NamedTensor{&removed, "removed"}, NamedTensor{&gram, "gram"},
        NamedTensor{&n_rem, "n_rem"}, NamedTensor{&budget_used, "budget_used"},
        NamedTensor{&alive, "alive"}, NamedTensor{&out, "out"},
        NamedTensor{&results, "results"}, NamedTensor{&counter, "counter"}}) {
    TORCH_CHECK_VALUE(nt.first->is_contiguous(), "certified_commit_: argument '", nt.second,
                      "' must be contiguous (it is written in place)");
  }
  return CommitSizes{d, n, K, G, results.size(0)};
}

}  // namespace fastunlearn
