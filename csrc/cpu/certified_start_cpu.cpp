// CPU kernel of certified_start_: what the certified removal step computes for the removed
// row before its Woodbury extension (the row's weights, Delta, the weights and curvature
// weights after the removal, the per-class regularisation and spectral bounds) in one call.
// Semantics: fastunlearn/ops/reference.py::certified_start_. Plain loops in float64: on the
// CPU this op serves the fixed-shape step's tests; the CUDA kernels are what it is for.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

#include "certified_start_common.h"

namespace fastunlearn {
namespace {

void certified_start_cpu(at::Tensor& row_weights, at::Tensor& Delta, at::Tensor& A_after,
                         at::Tensor& S, at::Tensor& lam_k, at::Tensor& spectral,
                         const at::Tensor& X_in, const at::Tensor& Y_in, const at::Tensor& Z_in,
                         const at::Tensor& A_in, const at::Tensor& W_in, const at::Tensor& row,
                         const at::Tensor& n_rem_in, const at::Tensor& eig_in,
                         const at::Tensor& row_sq_in, double lam) {
  const StartSizes s = check_start_args(row_weights, Delta, A_after, S, lam_k, spectral, X_in,
                                        Y_in, Z_in, A_in, W_in, row, n_rem_in, eig_in, row_sq_in,
                                        lam);
  const int64_t d = s.d, n = s.n, K = s.K;
  const int64_t r = row.item<int64_t>();
  TORCH_CHECK_VALUE(0 <= r && r < n, "certified_start_: argument 'row' must be in [0, ", n,
                    "), got ", r);
  const at::Tensor X = X_in.contiguous(), Y = Y_in.contiguous(), Z = Z_in.contiguous();
  const at::Tensor A = A_in.contiguous(), W = W_in.contiguous(), n_rem = n_rem_in.contiguous();
  const at::Tensor eig = eig_in.contiguous(), row_sq = row_sq_in.contiguous();
  const double *x = X.const_data_ptr<double>(), *y = Y.const_data_ptr<double>();
  const double *z = Z.const_data_ptr<double>(), *a = A.const_data_ptr<double>();
  const double *w = W.const_data_ptr<double>(), *counts = n_rem.const_data_ptr<double>();
  const double *e = eig.const_data_ptr<double>(), *sq = row_sq.const_data_ptr<double>();
  double *rw = row_weights.data_ptr<double>(), *delta = Delta.data_ptr<double>();
  double *after = A_after.data_ptr<double>(), *curv = S.data_ptr<double>();
  double *lk = lam_k.data_ptr<double>(), *spec = spectral.data_ptr<double>();

  std::vector<double> weight(K), grad(K), trace(K, 0.0);
  for (int64_t k = 0; k < K; ++k) {
    const double ak = a[r * K + k], yk = y[r * K + k], zk = z[r * K + k];
    weight[k] = ak;
    grad[k] = ak * (-yk * start_sigmoid(-yk * zk));
  }
  for (int64_t j = 0; j < d; ++j) {
    for (int64_t k = 0; k < K; ++k) {
      delta[j * K + k] = x[r * d + j] * grad[k] + (lam * weight[k]) * w[j * K + k];
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t k = 0; k < K; ++k) {
      const int64_t q = i * K + k;
      const double v = i == r ? 0.0 : a[q];
      after[q] = v;
      curv[q] = v * (start_sigmoid(z[q]) * start_sigmoid(-z[q]));
      trace[k] += sq[i] * v;
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    rw[k] = weight[k];
    lk[k] = (counts[k] - weight[k]) * lam;
    spec[k] = start_spectral(e[s.E == 1 ? 0 : k], trace[k]);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(fastunlearn, CPU, m) {
  m.impl("certified_start_", &certified_start_cpu);
}

}  // namespace fastunlearn
