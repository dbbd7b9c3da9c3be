// CPU kernel of certified_woodbury_row_: the removed row's Woodbury column written into its
// slot (U, G, the factor's row and the inverse's row) with the factor's positivity check,
// in one call. Semantics: fastunlearn/ops/reference.py::certified_woodbury_row_. Plain loops
// in float64: on the CPU this op serves the fixed-shape step's tests; the CUDA kernel is what
// it is for.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "certified_woodbury_common.h"

namespace fastunlearn {
namespace {

void certified_woodbury_row_cpu(at::Tensor& U_buf, at::Tensor& G_buf, at::Tensor& C_buf,
                                at::Tensor& C_inv, at::Tensor& out, const at::Tensor& U_new_in,
                                const at::Tensor& G_new_in, const at::Tensor& L21_in,
                                const at::Tensor& slot) {
  const WoodburySizes s =
      check_woodbury_args(U_buf, G_buf, C_buf, C_inv, out, U_new_in, G_new_in, L21_in, slot);
  const int64_t K = s.K, d = s.d, T = s.T;
  const int64_t t = slot.item<int64_t>();
  TORCH_CHECK_VALUE(0 <= t && t < T, "certified_woodbury_row_: argument 'slot' must be in [0, ",
                    T, "), got ", t);
  const at::Tensor U_new = U_new_in.contiguous(), G_new = G_new_in.contiguous();
  const at::Tensor L21 = L21_in.contiguous();
  const double *u = U_new.const_data_ptr<double>(), *g = G_new.const_data_ptr<double>();
  const double* l = L21.const_data_ptr<double>();
  double *ub = U_buf.data_ptr<double>(), *gb = G_buf.data_ptr<double>();
  double *cb = C_buf.data_ptr<double>(), *ci = C_inv.data_ptr<double>();
  const double tiny = std::numeric_limits<double>::min();

  bool ok = true;
  std::vector<double> inv_row(T);
  for (int64_t k = 0; k < K; ++k) {
    double ug = 0.0, ll = 0.0;
    for (int64_t j = 0; j < d; ++j) ug += u[k * d + j] * g[k * d + j];
    for (int64_t q = 0; q < T; ++q) ll += l[k * T + q] * l[k * T + q];
    const double s22 = 1.0 - ug - ll;
    ok = ok && s22 > 0.0;
    const double l22 = std::sqrt(std::isnan(s22) ? s22 : (s22 < tiny ? tiny : s22));
    const double* inv_k = ci + k * T * T;
    for (int64_t c = 0; c < T; ++c) {
      double dot = 0.0;
      for (int64_t q = 0; q < T; ++q) dot += l[k * T + q] * inv_k[q * T + c];
      inv_row[c] = ((c == t ? 1.0 : 0.0) - dot) / l22;
    }
    for (int64_t c = 0; c < T; ++c) {
      ci[k * T * T + t * T + c] = inv_row[c];
      cb[k * T * T + t * T + c] = l[k * T + c] + l22 * (c == t ? 1.0 : 0.0);
    }
    for (int64_t j = 0; j < d; ++j) {
      ub[(k * d + j) * T + t] = u[k * d + j];
      gb[(k * d + j) * T + t] = g[k * d + j];
    }
  }
  out.data_ptr<double>()[2] = ok ? 1.0 : 0.0;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastunlearn, CPU, m) {
  m.impl("certified_woodbury_row_", &certified_woodbury_row_cpu);
}

}  // namespace fastunlearn
