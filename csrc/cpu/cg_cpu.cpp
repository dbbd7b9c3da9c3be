// CPU kernel of cg_update_: one fused (preconditioned) CG step on the K columns of [d, K]
// tensors. Semantics: fastunlearn/ops/reference.py::cg_update_.
//
// Three passes over the rows: (1) pAp = p.Ap, (2) x += alpha p, r -= alpha Ap, and the sums
// r.z and r.r, (3) p = z + beta p. Each pass is parallel over fixed blocks of rows, with
// partial sums per block added in block order afterwards, so the result does not depend on
// the thread count. Every dot product accumulates in double, also for float32 inputs.
//
// Inside a block the loops take one of two shapes, chosen so the compiler vectorises them
// without -ffast-math:
//  * by rows (inner loop over the K contiguous columns of a row, one accumulator per column)
//    when K > 1 and every column steps: no per-element tests, independent accumulators;
//  * by columns otherwise (one column at a time; the "does column k step" test is outside
//    the loop, and an `omp simd` reduction gives a vectorised, fixed summation order). With
//    K = 1, the network-CG case, this loop is contiguous.
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <limits>
#include <type_traits>
#include <vector>

#include "glm_cg_driver.h"

namespace fastunlearn {
namespace {

// Rows per block: about 32K elements, so a block is worth a thread and stays in L2.
int64_t rows_per_block(int64_t K) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(K, 1)); }

// Calls f(i0, i1, acc) for every block of rows [i0, i1), in parallel over blocks; f adds its
// per-column sums over those rows into acc[0..n_sums * K) (laid out [n_sums][K]). Returns the
// totals in the same layout.
template <typename F>
std::vector<double> block_sums(int64_t d, int64_t K, int64_t n_sums, const F& f) {
  const int64_t block = rows_per_block(K);
  const int64_t n_blocks = (d + block - 1) / block;
  const int64_t width = n_sums * K;
  std::vector<double> partial(static_cast<size_t>(n_blocks * width), 0.0);
  at::parallel_for(0, n_blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      f(b * block, std::min(d, (b + 1) * block), partial.data() + b * width);
    }
  });
  std::vector<double> total(static_cast<size_t>(width), 0.0);
  for (int64_t b = 0; b < n_blocks; ++b) {
    for (int64_t j = 0; j < width; ++j) total[j] += partial[b * width + j];
  }
  return total;
}

// Preconditioner layout: none, one [d, 1] column shared by all K, or a full [d, K] tensor.
enum class Precond { kNone, kShared, kFull };

template <Precond kP, typename T>
inline double precondition(const T* inv, int64_t K, int64_t i, int64_t k, double r) {
  if constexpr (kP == Precond::kNone) return r;
  if constexpr (kP == Precond::kShared) return double(inv[i]) * r;
  return double(inv[i * K + k]) * r;
}

// ---- by columns: element (i, k) at i * stride + k; kUnit fixes stride = 1 (K = 1) ---------

template <bool kUnit, typename T>
double column_dot(int64_t K, int64_t k, int64_t i0, int64_t i1, const T* __restrict__ a,
                  const T* __restrict__ b) {
  const int64_t stride = kUnit ? 1 : K;
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = i0; i < i1; ++i) sum += double(a[i * stride + k]) * double(b[i * stride + k]);
  return sum;
}

// x += alpha p, r -= alpha Ap on column k; adds r.z to *rz and r.r to *rr.
template <Precond kP, bool kUnit, typename T>
void column_update_xr(int64_t K, int64_t k, int64_t i0, int64_t i1, double alpha,
                      T* __restrict__ x, T* __restrict__ r, const T* __restrict__ p,
                      const T* __restrict__ Ap, const T* __restrict__ inv, double* rz_out,
                      double* rr_out) {
  const int64_t stride = kUnit ? 1 : K;
  double rz = 0.0, rr = 0.0;
#pragma omp simd reduction(+ : rz, rr)
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t e = i * stride + k;
    const double r_new = double(r[e]) - alpha * double(Ap[e]);
    x[e] = static_cast<T>(double(x[e]) + alpha * double(p[e]));
    r[e] = static_cast<T>(r_new);
    rz += r_new * precondition<kP>(inv, K, i, k, r_new);
    rr += r_new * r_new;
  }
  *rz_out += rz;
  *rr_out += rr;
}

// p = z + beta p on column k, z recomputed from the stored r.
template <Precond kP, bool kUnit, typename T>
void column_update_p(int64_t K, int64_t k, int64_t i0, int64_t i1, double beta,
                     T* __restrict__ p, const T* __restrict__ r, const T* __restrict__ inv) {
  const int64_t stride = kUnit ? 1 : K;
#pragma omp simd
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t e = i * stride + k;
    p[e] = static_cast<T>(precondition<kP>(inv, K, i, k, double(r[e])) + beta * double(p[e]));
  }
}

// ---- by rows (K > 1, every column steps): inner loops over the K columns of a row ----------

template <typename T>
void rows_dot(int64_t K, int64_t i0, int64_t i1, const T* __restrict__ a,
              const T* __restrict__ b, double* __restrict__ acc) {
  for (int64_t i = i0; i < i1; ++i) {
    for (int64_t k = 0; k < K; ++k) acc[k] += double(a[i * K + k]) * double(b[i * K + k]);
  }
}

template <Precond kP, typename T>
void rows_update_xr(int64_t K, int64_t i0, int64_t i1, const double* __restrict__ alpha,
                    T* __restrict__ x, T* __restrict__ r, const T* __restrict__ p,
                    const T* __restrict__ Ap, const T* __restrict__ inv,
                    double* __restrict__ rz, double* __restrict__ rr) {
  for (int64_t i = i0; i < i1; ++i) {
    for (int64_t k = 0; k < K; ++k) {
      const int64_t e = i * K + k;
      const double r_new = double(r[e]) - alpha[k] * double(Ap[e]);
      x[e] = static_cast<T>(double(x[e]) + alpha[k] * double(p[e]));
      r[e] = static_cast<T>(r_new);
      rz[k] += r_new * precondition<kP>(inv, K, i, k, r_new);
      rr[k] += r_new * r_new;
    }
  }
}

template <Precond kP, typename T>
void rows_update_p(int64_t K, int64_t i0, int64_t i1, const double* __restrict__ beta,
                   T* __restrict__ p, const T* __restrict__ r, const T* __restrict__ inv) {
  for (int64_t i = i0; i < i1; ++i) {
    for (int64_t k = 0; k < K; ++k) {
      const int64_t e = i * K + k;
      p[e] = static_cast<T>(precondition<kP>(inv, K, i, k, double(r[e])) + beta[k] * double(p[e]));
    }
  }
}

// ---- the step ------------------------------------------------------------------------------

template <Precond kP, typename T>
void cg_update_kernel(int64_t d, int64_t K, T* x, T* r, T* p, const T* Ap, const T* inv, T* rz,
                      T* rr, bool* active, int64_t* iterations, const T* threshold_sq) {
  const bool unit = K == 1;
  const std::vector<double> pAp = block_sums(d, K, 1, [&](int64_t i0, int64_t i1, double* acc) {
    if (!unit) return rows_dot(K, i0, i1, p, Ap, acc);  // all columns: unused ones are harmless
    if (active[0]) acc[0] += column_dot<true>(K, 0, i0, i1, p, Ap);
  });

  // Column k takes a step when it is active and pAp is positive and finite (breakdown
  // otherwise: the column is left unchanged and made inactive).
  std::vector<char> steps(K);
  std::vector<double> alpha(K, 0.0);
  bool all_step = true;
  for (int64_t k = 0; k < K; ++k) {
    steps[k] = active[k] && pAp[k] > 0.0 && pAp[k] <= std::numeric_limits<double>::max();
    if (steps[k]) alpha[k] = double(rz[k]) / pAp[k];
    all_step = all_step && steps[k];
  }
  const bool by_rows = K > 1 && all_step;

  // sums[k] = new r.z, sums[K + k] = new r.r
  const std::vector<double> sums = block_sums(d, K, 2, [&](int64_t i0, int64_t i1, double* acc) {
    if (by_rows) return rows_update_xr<kP>(K, i0, i1, alpha.data(), x, r, p, Ap, inv, acc, acc + K);
    for (int64_t k = 0; k < K; ++k) {
      if (!steps[k]) continue;
      if (unit) {
        column_update_xr<kP, true>(K, k, i0, i1, alpha[k], x, r, p, Ap, inv, &acc[k], &acc[K + k]);
      } else {
        column_update_xr<kP, false>(K, k, i0, i1, alpha[k], x, r, p, Ap, inv, &acc[k],
                                    &acc[K + k]);
      }
    }
  });

  std::vector<double> beta(K, 0.0);
  for (int64_t k = 0; k < K; ++k) {
    if (steps[k] && double(rz[k]) != 0.0) beta[k] = sums[k] / double(rz[k]);
  }
  block_sums(d, K, 0, [&](int64_t i0, int64_t i1, double*) {
    if (by_rows) return rows_update_p<kP>(K, i0, i1, beta.data(), p, r, inv);
    for (int64_t k = 0; k < K; ++k) {
      if (!steps[k]) continue;
      if (unit) {
        column_update_p<kP, true>(K, k, i0, i1, beta[k], p, r, inv);
      } else {
        column_update_p<kP, false>(K, k, i0, i1, beta[k], p, r, inv);
      }
    }
  });

  for (int64_t k = 0; k < K; ++k) {
    if (steps[k]) {
      rz[k] = static_cast<T>(sums[k]);
      rr[k] = static_cast<T>(sums[K + k]);
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

  const Precond kind = !invc.defined()     ? Precond::kNone
                       : invc.size(1) == K ? Precond::kFull
                                           : Precond::kShared;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cg_update_cpu", [&] {
    auto run = [&](auto kind_constant) {
      cg_update_kernel<decltype(kind_constant)::value>(
          d, K, xc.data_ptr<scalar_t>(), rc.data_ptr<scalar_t>(), pc.data_ptr<scalar_t>(),
          Apc.const_data_ptr<scalar_t>(), invc.defined() ? invc.const_data_ptr<scalar_t>() : nullptr,
          rzc.data_ptr<scalar_t>(), rrc.data_ptr<scalar_t>(), ac.data_ptr<bool>(),
          itc.data_ptr<int64_t>(), thc.const_data_ptr<scalar_t>());
    };
    switch (kind) {
      case Precond::kNone: return run(std::integral_constant<Precond, Precond::kNone>{});
      case Precond::kShared: return run(std::integral_constant<Precond, Precond::kShared>{});
      case Precond::kFull: return run(std::integral_constant<Precond, Precond::kFull>{});
    }
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
