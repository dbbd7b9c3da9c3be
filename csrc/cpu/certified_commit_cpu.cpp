// CPU kernel of certified_commit_: the guarded commit of a pipelined run's planned step (the
// host's tests taken on the device, then weights, margins, the row's weights, flag and
// counts, the Gram downdate, the run's budget, flags and results) in one call.
// Semantics: fastunlearn/ops/reference.py::certified_commit_. Plain loops in float64: on the
// CPU this op serves the fixed-shape step's tests; the CUDA kernels are what it is for.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "certified_commit_common.h"

namespace fastunlearn {
namespace {

void certified_commit_cpu(at::Tensor& W, at::Tensor& Z, at::Tensor& A, at::Tensor& removed,
                          at::Tensor& gram, at::Tensor& n_rem, at::Tensor& budget_used,
                          at::Tensor& alive, at::Tensor& out, at::Tensor& results,
                          at::Tensor& counter, const at::Tensor& V_in, const at::Tensor& XV_in,
                          const at::Tensor& X_in, const at::Tensor& row, const at::Tensor& slot,
                          const at::Tensor& row_weights_in, const at::Tensor& budget,
                          double cg_tol, bool shared_gram) {
  const CommitSizes s =
      check_commit_args(W, Z, A, removed, gram, n_rem, budget_used, alive, out, results, counter,
                        V_in, XV_in, X_in, row, slot, row_weights_in, budget, cg_tol, shared_gram);
  const int64_t r = row.item<int64_t>(), t = slot.item<int64_t>();
  TORCH_CHECK_VALUE(0 <= r && r < s.n, "certified_commit_: argument 'row' must be in [0, ", s.n,
                    "), got ", r);
  TORCH_CHECK_VALUE(0 <= t && t < s.T, "certified_commit_: argument 'slot' must be in [0, ", s.T,
                    "), got ", t);
  double* o = out.data_ptr<double>();
  double* used = budget_used.data_ptr<double>();
  bool* alive_flag = alive.data_ptr<bool>();
  const double residual = o[0], bound = o[1], total = residual + bound;
  const bool go = *alive_flag && o[2] > 0.5 && residual <= cg_tol * bound &&
                  *used + total <= budget.item<double>();  // a NaN never commits
  if (go) {
    const int64_t d = s.d, n = s.n, K = s.K;
    const at::Tensor V = V_in.contiguous(), XV = XV_in.contiguous();
    const at::Tensor rw_t = row_weights_in.reshape({-1}).contiguous();
    const at::Tensor x_t = X_in.select(0, r).contiguous();
    const double *v = V.const_data_ptr<double>(), *xv = XV.const_data_ptr<double>();
    const double *rw = rw_t.const_data_ptr<double>(), *x = x_t.const_data_ptr<double>();
    double *w = W.data_ptr<double>(), *z = Z.data_ptr<double>(), *g = gram.data_ptr<double>();
    for (int64_t e = 0; e < d * K; ++e) w[e] += v[e];
    for (int64_t e = 0; e < n * K; ++e) z[e] += xv[e];
    for (int64_t c = 0; c < s.G; ++c) {
      const double coef = shared_gram ? 1.0 : rw[c];
      double* gc = g + c * d * d;
      for (int64_t i = 0; i < d; ++i) {
        for (int64_t j = 0; j < d; ++j) gc[i * d + j] -= coef * (x[i] * x[j]);
      }
    }
    double* a = A.data_ptr<double>() + r * K;
    double* counts = n_rem.data_ptr<double>();
    for (int64_t k = 0; k < K; ++k) {
      counts[k] -= rw[k];  // before a: row_weights may be a view of A's row
      a[k] = 0.0;
    }
    removed.data_ptr<bool>()[r] = true;
    *used += total;
  }
  *alive_flag = *alive_flag && go;
  o[4] = go ? 1.0 : 0.0;
  double* res = results.data_ptr<double>() + t * results.size(1);
  for (int64_t q = 0; q < 5; ++q) res[q] = o[q];
  counter.data_ptr<int64_t>()[0] += 1;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastunlearn, CPU, m) {
  m.impl("certified_commit_", &certified_commit_cpu);
}

}  // namespace fastunlearn
