// CPU kernel of cg_update_: one fused (preconditioned) CG step on the K columns of [d, K]
// tensors. Semantics: fastunlearn/ops/reference.py::cg_update_.
//
// Three passes over the rows, each parallel over fixed row blocks with one partial sum per
// block and column (summed in block order afterwards, so the result does not depend on the
// thread count): (1) pAp = p.Ap, (2) x += alpha p, r -= alpha Ap, and the sums r.z and r.r,
// (3) p = z + beta p. Every dot product accumulates in double, also for float32 inputs.
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "glm_cg_driver.h"

namespace fastunlearn {
namespace {

// Row block size for the partial sums: about 16K elements, so blocks are worth a thread.
int64_t rows_per_block(int64_t K) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(K, 1)); }

// Sums f(i, k, acc) over row blocks in parallel; returns [K] sums in double. `f` adds the
// contributions of row i into acc[0..K) (it may also write row i of the in-place tensors).
template <typename F>
std::vector<double> blocked_column_sums(int64_t d, int64_t K, int64_t n_sums, const F& f) {
  const int64_t block = rows_per_block(K);
  const int64_t n_blocks = (d + block - 1) / block;
  std::vector<double> partial(static_cast<size_t>(n_blocks * K * n_sums), 0.0);
  at::parallel_for(0, n_blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      double* acc = partial.data() + b * K * n_sums;
      const int64_t end = std::min(d, (b + 1) * block);
      for (int64_t i = b * block; i < end; ++i) f(i, acc);
    }
  });
  std::vector<double> total(static_cast<size_t>(K * n_sums), 0.0);
  for (int64_t b = 0; b < n_blocks; ++b) {
    for (int64_t j = 0; j < K * n_sums; ++j) total[j] += partial[b * K * n_sums + j];
  }
  return total;
}

template <typename scalar_t>
void cg_update_kernel(int64_t d, int64_t K, scalar_t* x, scalar_t* r, scalar_t* p,
                      const scalar_t* Ap, const scalar_t* inv, int64_t inv_cols, scalar_t* rz,
                      scalar_t* rr, bool* active, int64_t* iterations,
                      const scalar_t* threshold_sq) {
  // Pass 1: pAp per column.
  const std::vector<double> pAp = blocked_column_sums(d, K, 1, [&](int64_t i, double* acc) {
    const scalar_t* pi = p + i * K;
    const scalar_t* Api = Ap + i * K;
    for (int64_t k = 0; k < K; ++k) acc[k] += double(pi[k]) * double(Api[k]);
  });

  // Column k takes a step when it is active and pAp is positive and finite (breakdown
  // otherwise: the column is left unchanged and made inactive).
  std::vector<char> going(K);
  std::vector<double> alpha(K, 0.0);
  for (int64_t k = 0; k < K; ++k) {
    going[k] = active[k] && pAp[k] > 0.0 && pAp[k] <= std::numeric_limits<double>::max();
    if (going[k]) alpha[k] = double(rz[k]) / pAp[k];
  }
  // inv_cols == 1 broadcasts one preconditioner column to all K.
  auto inv_at = [&](int64_t i, int64_t k) { return double(inv[i * inv_cols + (inv_cols == 1 ? 0 : k)]); };

  // Pass 2: x += alpha p, r -= alpha Ap; sums r.z (acc[k]) and r.r (acc[K + k]).
  const std::vector<double> sums = blocked_column_sums(d, K, 2, [&](int64_t i, double* acc) {
    for (int64_t k = 0; k < K; ++k) {
      if (!going[k]) continue;
      const int64_t e = i * K + k;
      const double r_new = double(r[e]) - alpha[k] * double(Ap[e]);
      const double z = inv ? inv_at(i, k) * r_new : r_new;
      x[e] = static_cast<scalar_t>(double(x[e]) + alpha[k] * double(p[e]));
      r[e] = static_cast<scalar_t>(r_new);
      acc[k] += r_new * z;
      acc[K + k] += r_new * r_new;
    }
  });

  std::vector<double> beta(K, 0.0);
  for (int64_t k = 0; k < K; ++k) {
    if (going[k] && double(rz[k]) != 0.0) beta[k] = sums[k] / double(rz[k]);
  }

  // Pass 3: p = z + beta p (z recomputed from the stored r).
  at::parallel_for(0, d, rows_per_block(K), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      for (int64_t k = 0; k < K; ++k) {
        if (!going[k]) continue;
        const int64_t e = i * K + k;
        const double z = inv ? inv_at(i, k) * double(r[e]) : double(r[e]);
        p[e] = static_cast<scalar_t>(z + beta[k] * double(p[e]));
      }
    }
  });

  for (int64_t k = 0; k < K; ++k) {
    if (going[k]) {
      rz[k] = static_cast<scalar_t>(sums[k]);
      rr[k] = static_cast<scalar_t>(sums[K + k]);
      iterations[k] += 1;
      active[k] = rr[k] > threshold_sq[k];
    } else {
      active[k] = false;
    }
  }
}

}  // namespace

void cg_update_cpu(const at::Tensor& x, const at::Tensor& r, const at::Tensor& p,
                   const at::Tensor& Ap, const std::optional<at::Tensor>& inv_diag,
                   const at::Tensor& rz, const at::Tensor& rr, const at::Tensor& active,
                   const at::Tensor& iterations, const at::Tensor& threshold_sq) {
  check_cg_update_args(x, r, p, Ap, inv_diag, rz, rr, active, iterations, threshold_sq);
  for (const at::Tensor* t : {&x, &r, &p, &rz, &rr, &active, &iterations}) {
    at::assert_no_internal_overlap(*t);
  }
  const int64_t d = x.size(0), K = x.size(1);
  if (K == 0) return;

  // Work on contiguous tensors; non-contiguous in-place arguments get their results copied
  // back at the end.
  const at::Tensor xc = x.contiguous(), rc = r.contiguous(), pc = p.contiguous();
  const at::Tensor Apc = Ap.contiguous();
  const at::Tensor rzc = rz.contiguous(), rrc = rr.contiguous(), thc = threshold_sq.contiguous();
  const at::Tensor ac = active.contiguous(), itc = iterations.contiguous();
  at::Tensor invc;
  if (inv_diag.has_value()) invc = inv_diag->contiguous();

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cg_update_cpu", [&] {
    cg_update_kernel<scalar_t>(d, K, xc.data_ptr<scalar_t>(), rc.data_ptr<scalar_t>(),
                               pc.data_ptr<scalar_t>(), Apc.const_data_ptr<scalar_t>(),
                               invc.defined() ? invc.const_data_ptr<scalar_t>() : nullptr,
                               invc.defined() ? invc.size(1) : 0, rzc.data_ptr<scalar_t>(),
                               rrc.data_ptr<scalar_t>(), ac.data_ptr<bool>(),
                               itc.data_ptr<int64_t>(), thc.const_data_ptr<scalar_t>());
  });

  write_back(x, xc);
  write_back(r, rc);
  write_back(p, pc);
  write_back(rz, rzc);
  write_back(rr, rrc);
  write_back(active, ac);
  write_back(iterations, itc);
}

TORCH_LIBRARY_IMPL(fastunlearn, CPU, m) { m.impl("cg_update_", &cg_update_cpu); }

}  // namespace fastunlearn
