// CPU kernel of certified_cg_tail_: the end of one CG step of the certified removal step
// (step length, the step's updates, residual and data-dependent bound) in one call.
// Semantics: fastunlearn/ops/reference.py::certified_cg_tail_. Plain loops in float64: on
// the CPU this op serves the fixed-shape step's tests (the CPU's fast path is the compiled
// certified_cg_step); the CUDA kernel is what it is for.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "certified_tail_common.h"

namespace fastunlearn {
namespace {

void certified_cg_tail_cpu(at::Tensor& V, at::Tensor& XV, at::Tensor& HV, at::Tensor& R,
                           at::Tensor& out, const at::Tensor& P_in, const at::Tensor& XP_in,
                           const at::Tensor& HP_in, const at::Tensor& rz_in,
                           const std::optional<at::Tensor>& needed, const at::Tensor& A_in,
                           const at::Tensor& Delta_in, const at::Tensor& spectral_in,
                           double bound_scale, bool first) {
  const CgTailSizes s = check_cg_tail_args(V, XV, HV, R, out, P_in, XP_in, HP_in, rz_in, needed,
                                           A_in, Delta_in, spectral_in);
  const int64_t d = s.d, n = s.n, K = s.K;
  const at::Tensor P = P_in.contiguous(), XP = XP_in.contiguous(), HP = HP_in.contiguous();
  const at::Tensor rz = rz_in.contiguous(), A = A_in.contiguous();
  const at::Tensor Delta = Delta_in.contiguous(), spectral = spectral_in.contiguous();
  const bool need = !needed.has_value() || needed->item<bool>();
  const double *p = P.const_data_ptr<double>(), *xp = XP.const_data_ptr<double>();
  const double *hp = HP.const_data_ptr<double>(), *a_row = A.const_data_ptr<double>();
  const double *delta = Delta.const_data_ptr<double>();
  double *v = V.data_ptr<double>(), *xv = XV.data_ptr<double>();
  double *hv = HV.data_ptr<double>(), *r = R.data_ptr<double>();

  std::vector<double> alpha(K), step_sq(K, 0.0), res_sq(K, 0.0), proj_sq(K, 0.0);
  for (int64_t k = 0; k < K; ++k) {
    double curvature = 0.0;
    for (int64_t j = 0; j < d; ++j) curvature += p[j * K + k] * hp[j * K + k];
    const double rzk = rz.const_data_ptr<double>()[k];
    if (first) {
      alpha[k] = curvature > 0.0 ? rzk / curvature : 1.0;
    } else {
      alpha[k] = (curvature > 0.0 && need) ? rzk / curvature : 0.0;
    }
  }
  for (int64_t j = 0; j < d; ++j) {
    for (int64_t k = 0; k < K; ++k) {
      const int64_t e = j * K + k;
      const double vk = first ? p[e] * alpha[k] : v[e] + alpha[k] * p[e];
      const double hvk = first ? hp[e] * alpha[k] : hv[e] + alpha[k] * hp[e];
      const double rk = delta[e] - hvk;
      v[e] = vk;
      hv[e] = hvk;
      r[e] = rk;
      step_sq[k] += vk * vk;
      res_sq[k] += rk * rk;
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t k = 0; k < K; ++k) {
      const int64_t e = i * K + k;
      const double x = first ? xp[e] * alpha[k] : xv[e] + alpha[k] * xp[e];
      xv[e] = x;
      proj_sq[k] += a_row[e] * (x * x);
    }
  }
  double residual = 0.0, bound = 0.0;
  for (int64_t k = 0; k < K; ++k) {
    residual += std::sqrt(res_sq[k]);
    bound += bound_scale * spectral.const_data_ptr<double>()[k] * std::sqrt(step_sq[k]) *
             std::sqrt(proj_sq[k]);
  }
  double* o = out.data_ptr<double>();
  o[0] = residual;
  o[1] = bound;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastunlearn, CPU, m) {
  m.impl("certified_cg_tail_", &certified_cg_tail_cpu);
}

}  // namespace fastunlearn
