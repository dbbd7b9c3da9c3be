// Argument checks of certified_commit_, shared by its CPU and CUDA kernels.
// Semantics: fastunlearn/ops/reference.py::certified_commit_.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>

#include "checks.h"

namespace fastunlearn {

// The sizes the checks found: d features, n rows, K classes, G Gram matrices, T result slots.
struct CommitSizes {
  int64_t d, n, K, G, T;
};

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
  constexpr const char* op = "certified_commit_";
  check_named_tensors(
      {{&W, "W"}, {&Z, "Z"}, {&A, "A"}, {&removed, "removed"}, {&gram, "gram"},
       {&n_rem, "n_rem"}, {&budget_used, "budget_used"}, {&alive, "alive"}, {&out, "out"},
       {&results, "results"}, {&counter, "counter"}, {&V, "V"}, {&XV, "XV"}, {&X, "X"},
       {&row, "row"}, {&slot, "slot"}, {&row_weights, "row_weights"}, {&budget, "budget"}},
      op, {&row, &slot, &counter}, {&removed, &alive});
  TORCH_CHECK_VALUE(W.dim() == 2, op, ": argument 'W' must be 2-D, got shape ", W.sizes());
  TORCH_CHECK_VALUE(X.dim() == 2, op, ": argument 'X' must be 2-D, got shape ", X.sizes());
  TORCH_CHECK_VALUE(results.dim() == 2 && results.size(1) >= 5, op, ": argument 'results' "
                    "must be 2-D with at least 5 columns, got shape ", results.sizes());
  const int64_t d = W.size(0), K = W.size(1), n = X.size(0);
  const int64_t G = shared_gram ? 1 : K;
  check_shape_is(V, {d, K}, op, "V");
  check_shape_is(X, {n, d}, op, "X");
  for (const NamedTensor& nt : {NamedTensor{&Z, "Z"}, NamedTensor{&XV, "XV"},
                                NamedTensor{&A, "A"}}) {
    check_shape_is(*nt.first, {n, K}, op, nt.second);
  }
  check_shape_is(removed, {n}, op, "removed");
  TORCH_CHECK_VALUE(gram.sizes() == at::IntArrayRef({G, d, d}), op, ": argument 'gram' must "
                    "have shape [", G, ", ", d, ", ", d, "] (",
                    shared_gram ? "shared_gram" : "one per class", "), got ", gram.sizes());
  check_shape_is(n_rem, {K}, op, "n_rem");
  TORCH_CHECK_VALUE(row_weights.numel() == K, op, ": argument 'row_weights' must have ", K,
                    " elements, got shape ", row_weights.sizes());
  for (const NamedTensor& nt : {NamedTensor{&budget_used, "budget_used"},
                                NamedTensor{&budget, "budget"}, NamedTensor{&alive, "alive"},
                                NamedTensor{&row, "row"}, NamedTensor{&slot, "slot"},
                                NamedTensor{&counter, "counter"}}) {
    TORCH_CHECK_VALUE(nt.first->numel() == 1, op, ": argument '", nt.second,
                      "' must have one element, got shape ", nt.first->sizes());
  }
  TORCH_CHECK_VALUE(out.dim() == 1 && out.size(0) >= 5, op, ": argument 'out' must be 1-D with "
                    "at least 5 elements, got shape ", out.sizes());
  TORCH_CHECK_VALUE(std::isfinite(cg_tol) && cg_tol >= 0.0, op, ": argument 'cg_tol' must be "
                    "finite and >= 0, got ", cg_tol);
  check_written_contiguous({{&W, "W"}, {&Z, "Z"}, {&A, "A"}, {&removed, "removed"},
                            {&gram, "gram"}, {&n_rem, "n_rem"}, {&budget_used, "budget_used"},
                            {&alive, "alive"}, {&out, "out"}, {&results, "results"},
                            {&counter, "counter"}},
                           op);
  return CommitSizes{d, n, K, G, results.size(0)};
}

}  // namespace fastunlearn
