// CPU kernels of the certified single-row removal step (certified_cg_step) and of that step
// run over several rows with each one committed in place (certified_cg_steps).
//
// The same step as fastunlearn/certified/fixed_step.py (``FixedShapeStep._start`` and
// ``_iterate``) and as the general CG step of ``CertifiedLogisticRegression._plan`` for one
// row that every class holds: Delta, the curvature weights of the remaining rows, the
// starting factors with the removed row folded in, preconditioned CG on the K Newton systems
// until the solve residual is at most cg_tol times the data-dependent bound, and the bound
// terms. On a small problem (digits: 1438 x 64, K = 10) the Python step spends its time in
// ~600 operator calls of a few microseconds each and in batched small BLAS/LAPACK calls;
// here the whole step is one call: two fused passes over X (glm_rows_avx2.h) plus O(K d^2)
// for the preconditioner. The preconditioner is M'^{-1}, the inverse of the last dense
// Hessians with the rows removed since taken out, kept explicitly: the removed row is folded
// in by the Sherman-Morrison formula (written into a second buffer, so the caller can drop
// an uncommitted step), and only its column of U is written; the Python side folds such
// pending columns into the Woodbury terms G, C when it needs them (woodbury.settle). Where
// Python's Woodbury form costs O(d t + t^2) per product after t removed rows, this stays
// O(d^2).
//
// On CUDA the same step runs as captured CUDA graphs of the tensor expressions
// (fixed_step.py): there the host-side cost is launch latency, which graphs remove, and the
// arithmetic is already in cuBLAS; so this op has only a CPU kernel.
//
// Semantics and checks: ``fastunlearn/ops/certified.py`` (the Python wrapper and fake kernel).
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "../checks.h"
#include "glm_rows_avx2.h"

// The small dense loops of the preconditioner (dense products, triangular solves, Woodbury
// terms) are compiled twice, for AVX2+FMA and for the baseline, and picked when the library
// loads.
#if FASTUNLEARN_HAVE_AVX2_KERNELS && defined(__gnu_linux__)
#define FASTUNLEARN_CLONES __attribute__((target_clones("arch=haswell", "default")))
#else
#define FASTUNLEARN_CLONES
#endif

namespace fastunlearn {
namespace {


// sigma(x) = 1 / (1 + e^{-x}), evaluated without overflow
inline double sigmoid(double x) {
  if (x >= 0) return 1.0 / (1.0 + std::exp(-x));
  const double e = std::exp(x);
  return e / (1.0 + e);
}

// out[d, K] = X^T (S * (X P)) over all rows, margins[n, K] = X P: the fused AVX2 kernel
// (one pass over X) where glm_hvp would take it, else two BLAS products (CPUs without AVX2,
// more than 16 classes, or FASTUNLEARN_GLM_CPU_KERNEL=blas).
void fused_hvp(const double* X, const double* S, const double* P, int64_t n, int64_t d,
               int64_t K, double* out, double* margins) {
#if FASTUNLEARN_HAVE_AVX2_KERNELS
  if (!glm_cpu_kernel_forced_blas() && cpu_has_avx2_fma() && K <= avx2_max_columns<double>()) {
    std::fill(out, out + d * K, 0.0);
    const int64_t padded = avx2_padded_columns<double>(K);
    std::vector<double> P_pad(d * padded, 0.0);
    for (int64_t j = 0; j < d; ++j)
      for (int64_t k = 0; k < K; ++k) P_pad[j * padded + k] = P[j * K + k];
    constexpr int64_t kMinRowsPerSlab = 4096;
    const int64_t slabs = std::max<int64_t>(
        1, std::min<int64_t>(at::get_num_threads(), n / kMinRowsPerSlab));
    std::vector<double> partial(slabs * d * padded, 0.0);
    const int64_t per_slab = (n + slabs - 1) / slabs;
    at::parallel_for(0, slabs, 1, [&](int64_t s0, int64_t s1) {
      for (int64_t slab = s0; slab < s1; ++slab) {
        const int64_t begin = slab * per_slab, end = std::min(n, (slab + 1) * per_slab);
        if (begin < end)
          glm_rows_avx2<double>(X, d, S, K, P_pad.data(), d, K, begin, end,
                                partial.data() + slab * d * padded, margins);
      }
    });
    for (int64_t slab = 0; slab < slabs; ++slab)
      for (int64_t j = 0; j < d; ++j)
        for (int64_t k = 0; k < K; ++k) out[j * K + k] += partial[(slab * d + j) * padded + k];
    return;
  }
#endif
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor X_t = at::from_blob(const_cast<double*>(X), {n, d}, f64);
  const at::Tensor S_t = at::from_blob(const_cast<double*>(S), {n, K}, f64);
  const at::Tensor P_t = at::from_blob(const_cast<double*>(P), {d, K}, f64);
  at::Tensor margins_t = at::from_blob(margins, {n, K}, f64);
  at::Tensor out_t = at::from_blob(out, {d, K}, f64);
  at::mm_out(margins_t, X_t, P_t);
  at::mm_out(out_t, X_t.t(), margins_t * S_t);
}

// out = M b for a symmetric row-major M [d, d], as a sum of M's rows scaled by b: columns in
// chunks of 32 whose sums stay in vector registers over all rows (no reduction chains, no
// stores per row), then the remaining columns.
FASTUNLEARN_CLONES void symmetric_matvec(const double* M, int64_t d, const double* b,
                                         double* out) {
  constexpr int64_t kChunk = 32;
  int64_t c0 = 0;
  for (; c0 + kChunk <= d; c0 += kChunk) {
    double acc[kChunk] = {};
    for (int64_t l = 0; l < d; ++l) {
      const double* row = M + l * d + c0;
      const double bl = b[l];
#pragma omp simd
      for (int64_t j = 0; j < kChunk; ++j) acc[j] += row[j] * bl;
    }
    std::copy(acc, acc + kChunk, out + c0);
  }
  if (c0 == d) return;
  std::fill(out + c0, out + d, 0.0);
  for (int64_t l = 0; l < d; ++l) {
    const double* row = M + l * d;
    const double bl = b[l];
#pragma omp simd
    for (int64_t j = c0; j < d; ++j) out[j] += row[j] * bl;
  }
}

// M_out = (M_in^{-1} - u u^T)^{-1} = M_in + h h^T / (1 - u^T h), h = M_in u (Sherman-Morrison)
// for a symmetric M_in [d, d]; false (M_out untouched) when 1 - u^T h is not positive, i.e.
// the downdated matrix is not numerically positive definite. ``h`` (length d) is scratch.
FASTUNLEARN_CLONES bool sherman_morrison(const double* M_in, int64_t d, const double* u,
                                         double* M_out, double* h) {
  symmetric_matvec(M_in, d, u, h);
  double s = 1.0;
  for (int64_t j = 0; j < d; ++j) s -= u[j] * h[j];
  if (!(s > 0.0)) return false;
  const double inv_s = 1.0 / s;
  for (int64_t i = 0; i < d; ++i) {
    const double* in_row = M_in + i * d;
    double* out_row = M_out + i * d;
    const double hi = h[i] * inv_s;
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) out_row[j] = in_row[j] + hi * h[j];
  }
  return true;
}

void check_matrix(const char* kOp, const at::Tensor& t, int64_t rows, int64_t cols,
                  const char* name, const char* rows_name, const char* cols_name) {
  TORCH_CHECK_VALUE(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols, kOp,
                    ": argument '", name, "' must have shape [", rows_name, ", ", cols_name,
                    "] = [", rows, ", ", cols, "], got ", t.sizes());
}

void check_f64_cpu(const char* kOp, const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kDouble, kOp, ": argument '", name,
                   "' must be float64 (certified removal runs in float64), got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device().is_cpu(), kOp, ": argument '", name, "' must be on the CPU, got ",
                    t.device());
}

// e = -|z| over n*K entries (then exponentiated by ATen).
FASTUNLEARN_CLONES void negative_abs(const double* z, int64_t count, double* e) {
  for (int64_t i = 0; i < count; ++i) e[i] = -std::abs(z[i]);
}

// Curvature weights of the rows left: s_ik = a_ik sigma(z) sigma(-z) from e = exp(-|z|) (0 for
// ``row``), and trace_k += sum_i row_sq_i a_ik over the rows left.
FASTUNLEARN_CLONES void curvature_weights_without(const double* e_all, const double* a_all,
                                                  const double* row_sq, int64_t n, int64_t K,
                                                  int64_t row, double* S, double* trace) {
  for (int64_t i = 0; i < n; ++i) {
    const double keep = i == row ? 0.0 : 1.0;
    const double* e = e_all + i * K;
    const double* a = a_all + i * K;
    double* s = S + i * K;
    for (int64_t k = 0; k < K; ++k) {
      const double one_plus = 1.0 + e[k];
      s[k] = a[k] * keep * (e[k] / (one_plus * one_plus));
      trace[k] += row_sq[i] * a[k] * keep;
    }
  }
}

// XV = alpha XP (``first``) or XV += alpha XP over n x K, and sq_k = sum_{i != row} a_ik XV_ik^2
// of the result.
FASTUNLEARN_CLONES void update_margins_and_square(double* XV, const double* XP,
                                                  const double* alpha, const double* a_all,
                                                  int64_t n, int64_t K, int64_t row, bool first,
                                                  double* sq) {
  std::fill(sq, sq + K, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    double* xv = XV + i * K;
    const double* xp = XP + i * K;
    const double* a = a_all + i * K;
    const double keep = i == row ? 0.0 : 1.0;
    for (int64_t k = 0; k < K; ++k) {
      const double v = first ? alpha[k] * xp[k] : xv[k] + alpha[k] * xp[k];
      xv[k] = v;
      sq[k] += keep * a[k] * v * v;
    }
  }
}

// The inputs of one step as raw contiguous float64 arrays (see the op's argument list).
struct StepProblem {
  const double *X, *Y, *A, *Z, *W, *n_rem, *eig, *row_sq, *weights;
  int64_t n, d, K, n_eig, T;
  double lam, gamma, row_norm_max, cg_tol;
  int64_t max_iter;
};

struct StepResult {
  double residual = 0.0, bound = 0.0;
  int64_t iterations = 0;
  bool ok = false, converged = false;
};

// Plan the removal of ``row``: M_out = M_in with the row folded in, its U column written
// into ``slot``, V [d, K] the Newton step and XV [n, K] = X V. Nothing but M_out, U's slot,
// V and XV is written; with ok false (the downdate is not positive definite) not even those.
StepResult plan_row(const StepProblem& p, int64_t row, const double* M_in, double* M_out,
                    double* Ub, int64_t slot, double* V, double* XV) {
  const int64_t n = p.n, d = p.d, K = p.K, T = p.T;
  const double* x_all = p.X;
  const double* y_all = p.Y;
  const double* a_all = p.A;
  const double* z_all = p.Z;
  const double* w_all = p.W;
  const double* xi = x_all + row * d;
  const double* ai = a_all + row * K;
  const double* wt = p.weights + row * K;
  const double* nr = p.n_rem;
  const double* eg = p.eig;
  const double* rs = p.row_sq;
  const double lam = p.lam;
  const double bound_scale = p.gamma * std::max(1.0, p.row_norm_max);
  StepResult result;

  // Delta = lam m_k w_k + x_i a_ik l'(z_ik, y_ik); the remaining rows' curvature weights
  std::vector<double> Delta(d * K), lam_k(K), spectral(K), trace(K, 0.0);
  // n x K scratch written whole before it is read: no zero fill
  const std::unique_ptr<double[]> S(new double[n * K]), XP(new double[n * K]),
      E(new double[n * K]);
  for (int64_t k = 0; k < K; ++k) {
    const double yz = y_all[row * K + k] * z_all[row * K + k];
    const double g = ai[k] * (-y_all[row * K + k] * sigmoid(-yz));
    for (int64_t j = 0; j < d; ++j) Delta[j * K + k] = xi[j] * g + lam * ai[k] * w_all[j * K + k];
    lam_k[k] = lam * (nr[k] - ai[k]);
  }
  // sigma(z) sigma(-z) = e / (1 + e)^2 with e = exp(-|z|): ATen's vectorised exp in place,
  // then a loop the compiler vectorises
  double* e_all = E.get();
  negative_abs(z_all, n * K, e_all);
  at::from_blob(e_all, {n * K}, at::TensorOptions().dtype(at::kDouble)).exp_();
  curvature_weights_without(e_all, a_all, rs, n, K, row, S.get(), trace.data());
  for (int64_t k = 0; k < K; ++k)
    spectral[k] = std::sqrt(std::max(std::min(eg[p.n_eig == 1 ? 0 : k], trace[k]), 0.0));

  // the removed row folded into each class's M'^{-1} (into M_out) and written into U
  std::vector<double> P(d * K), col(d), tmp(d), u(d);
  bool ok = true;
  for (int64_t k = 0; k < K && ok; ++k) {
    const double scale = std::sqrt(std::max(wt[k], 0.0));
    for (int64_t j = 0; j < d; ++j) u[j] = xi[j] * scale;
    ok = sherman_morrison(M_in + k * d * d, d, u.data(), M_out + k * d * d, tmp.data());
  }
  if (!ok) return result;  // the caller takes the general step
  result.ok = true;
  for (int64_t k = 0; k < K; ++k) {
    const double scale = std::sqrt(std::max(wt[k], 0.0));
    for (int64_t j = 0; j < d; ++j) Ub[(k * d + j) * T + slot] = xi[j] * scale;
  }

  auto precondition_all = [&](const std::vector<double>& B, std::vector<double>& out) {
    for (int64_t k = 0; k < K; ++k) {
      for (int64_t j = 0; j < d; ++j) col[j] = B[j * K + k];
      symmetric_matvec(M_out + k * d * d, d, col.data(), tmp.data());
      for (int64_t j = 0; j < d; ++j) out[j * K + k] = tmp[j];
    }
  };
  std::vector<double> HP(d * K), HV(d * K), R(d * K), Zr(d * K), rz(K), curv(K);
  auto hessian = [&]() {  // HP = H P, XP = X P
    fused_hvp(x_all, S.get(), P.data(), n, d, K, HP.data(), XP.get());
    for (int64_t j = 0; j < d; ++j)
      for (int64_t k = 0; k < K; ++k) HP[j * K + k] += lam_k[k] * P[j * K + k];
    std::fill(curv.begin(), curv.end(), 0.0);
    for (int64_t j = 0; j < d; ++j)
      for (int64_t k = 0; k < K; ++k) curv[k] += P[j * K + k] * HP[j * K + k];
  };
  // residual sum and bound sum of the current V, XV, HV (R = Delta - HV)
  std::vector<double> sq(K);
  // sq is that of the current XV (update_margins_and_square)
  auto bound_terms = [&](double& residual, double& bound) {
    residual = bound = 0.0;
    for (int64_t k = 0; k < K; ++k) {
      double step = 0.0, res = 0.0;
      for (int64_t j = 0; j < d; ++j) {
        step += V[j * K + k] * V[j * K + k];
        R[j * K + k] = Delta[j * K + k] - HV[j * K + k];
        res += R[j * K + k] * R[j * K + k];
      }
      bound += bound_scale * spectral[k] * std::sqrt(step) * std::sqrt(sq[k]);
      residual += std::sqrt(res);
    }
  };

  // CG from zero whose first direction is the extended solve, scaled to minimise the H-norm
  // error along it
  precondition_all(Delta, P);
  hessian();
  for (int64_t k = 0; k < K; ++k) {
    double acc = 0.0;
    for (int64_t j = 0; j < d; ++j) acc += Delta[j * K + k] * P[j * K + k];
    rz[k] = acc;
  }
  std::vector<double> alpha(K);
  for (int64_t k = 0; k < K; ++k) alpha[k] = curv[k] > 0 ? rz[k] / curv[k] : 1.0;
  for (int64_t j = 0; j < d; ++j)
    for (int64_t k = 0; k < K; ++k) {
      V[j * K + k] = alpha[k] * P[j * K + k];
      HV[j * K + k] = alpha[k] * HP[j * K + k];
    }
  update_margins_and_square(XV, XP.get(), alpha.data(), a_all, n, K, row, true, sq.data());
  double residual = 0.0, bound = 0.0;
  bound_terms(residual, bound);
  int64_t iterations = 0;
  bool converged = true;
  // written as in Python: a NaN residual or bound keeps iterating (and ends unconverged)
  while (!(residual <= p.cg_tol * bound)) {
    if (iterations == p.max_iter) {
      converged = false;
      break;
    }
    precondition_all(R, Zr);
    for (int64_t k = 0; k < K; ++k) {
      double rz_new = 0.0;
      for (int64_t j = 0; j < d; ++j) rz_new += R[j * K + k] * Zr[j * K + k];
      const double beta = rz[k] != 0 ? rz_new / rz[k] : 0.0;
      for (int64_t j = 0; j < d; ++j) P[j * K + k] = Zr[j * K + k] + beta * P[j * K + k];
      rz[k] = rz_new;
    }
    hessian();
    for (int64_t k = 0; k < K; ++k) alpha[k] = curv[k] > 0 ? rz[k] / curv[k] : 0.0;
    for (int64_t j = 0; j < d; ++j)
      for (int64_t k = 0; k < K; ++k) {
        V[j * K + k] += alpha[k] * P[j * K + k];
        HV[j * K + k] += alpha[k] * HP[j * K + k];
      }
    update_margins_and_square(XV, XP.get(), alpha.data(), a_all, n, K, row, false, sq.data());
    bound_terms(residual, bound);
    ++iterations;
  }
  result.residual = residual;
  result.bound = bound;
  result.iterations = iterations;
  result.converged = converged;
  return result;
}


// Checks shared by both ops; returns the problem over contiguous views kept in ``keep``.
// No tensor the op writes may share memory with another argument: the kernels read and
// write through raw pointers, so an alias would silently mix inputs and outputs.
void check_no_overlap(const char* kOp, const std::vector<const at::Tensor*>& written,
                      const std::vector<const char*>& written_names,
                      const std::vector<const at::Tensor*>& all,
                      const std::vector<const char*>& all_names) {
  for (size_t w = 0; w < written.size(); ++w) {
    for (size_t a = 0; a < all.size(); ++a) {
      if (written[w] == all[a] || std::strcmp(written_names[w], all_names[a]) == 0) continue;
      const at::MemOverlapStatus status = at::get_overlap_status(*written[w], *all[a]);
      TORCH_CHECK_VALUE(
          status != at::MemOverlapStatus::Full && status != at::MemOverlapStatus::Partial, kOp,
          ": argument '", written_names[w], "' (written in place) shares memory with argument '",
          all_names[a], "'");
    }
  }
}

// The row must be held by every class (A[row, k] != 0): the steps fold it out of all K.
void check_row_held(const char* kOp, const at::Tensor& A, int64_t row, const char* what) {
  const int64_t K = A.size(1);
  const double* a = A.const_data_ptr<double>() + row * K;
  for (int64_t k = 0; k < K; ++k)
    TORCH_CHECK_VALUE(a[k] != 0.0, kOp, ": ", what, " ", row, " is not held by class ", k,
                      " (A[row, k] = 0: removed already, or outside that class's subset)");
}

StepProblem check_problem(const char* kOp, const at::Tensor& X_in, const at::Tensor& Y_in,
                          const at::Tensor& A_in, const at::Tensor& Z_in, const at::Tensor& W_in,
                          const at::Tensor& n_rem_in, const at::Tensor& eig_in,
                          const at::Tensor& row_sq_in, const at::Tensor& M_inv,
                          const at::Tensor& M_out, const at::Tensor& weights_in,
                          const at::Tensor& U_buf, int64_t slot, double lam, double gamma,
                          double row_norm_max, double cg_tol, int64_t max_iter,
                          std::vector<at::Tensor>& keep) {
  const char* names[] = {"X", "Y", "A", "Z", "W", "n_rem", "eig", "row_sq", "M_inv",
                         "M_out", "weights", "U_buf"};
  const at::Tensor* tensors[] = {&X_in, &Y_in, &A_in, &Z_in, &W_in, &n_rem_in, &eig_in,
                                 &row_sq_in, &M_inv, &M_out, &weights_in, &U_buf};
  for (int i = 0; i < 12; ++i) check_f64_cpu(kOp, *tensors[i], names[i]);
  for (int i : {8, 9, 11})
    TORCH_CHECK_VALUE(tensors[i]->is_contiguous(), kOp, ": argument '", names[i],
                      "' must be contiguous (it is written in place)");
  const at::Tensor X = X_in.contiguous(), Y = Y_in.contiguous(), A = A_in.contiguous(),
                   Z = Z_in.contiguous(), W = W_in.contiguous(), n_rem = n_rem_in.contiguous(),
                   eig = eig_in.contiguous(), row_sq = row_sq_in.contiguous(),
                   weights = weights_in.contiguous();
  TORCH_CHECK_VALUE(X.dim() == 2, kOp, ": argument 'X' must be 2-D [n, d], got ", X.sizes());
  TORCH_CHECK_VALUE(A.dim() == 2, kOp, ": argument 'A' must be 2-D [n, K], got ", A.sizes());
  const int64_t n = X.size(0), d = X.size(1), K = A.size(1);
  check_matrix(kOp, A, n, K, "A", "n", "K");
  check_matrix(kOp, Y, n, K, "Y", "n", "K");
  check_matrix(kOp, Z, n, K, "Z", "n", "K");
  check_matrix(kOp, weights, n, K, "weights", "n", "K");
  check_matrix(kOp, W, d, K, "W", "d", "K");
  TORCH_CHECK_VALUE(n_rem.dim() == 1 && n_rem.size(0) == K, kOp, ": argument 'n_rem' must be [K]");
  TORCH_CHECK_VALUE(eig.dim() == 1 && (eig.size(0) == K || eig.size(0) == 1), kOp,
                    ": argument 'eig' must be [K] or [1] (one shared Gram matrix), got ",
                    eig.sizes());
  TORCH_CHECK_VALUE(row_sq.dim() == 1 && row_sq.size(0) == n, kOp,
                    ": argument 'row_sq' must be [n]");
  TORCH_CHECK_VALUE(
      M_inv.dim() == 3 && M_inv.size(0) == K && M_inv.size(1) == d && M_inv.size(2) == d, kOp,
      ": argument 'M_inv' must be [K, d, d], got ", M_inv.sizes());
  TORCH_CHECK_VALUE(M_out.sizes() == M_inv.sizes(), kOp,
                    ": argument 'M_out' must be [K, d, d] like M_inv, got ", M_out.sizes());
  TORCH_CHECK_VALUE(K >= 1 && d >= 1, kOp, ": needs at least one class and one feature");
  TORCH_CHECK_VALUE(M_out.data_ptr() != M_inv.data_ptr(), kOp,
                    ": argument 'M_out' must not be 'M_inv' (the step writes the next inverse ",
                    "beside the current one)");
  TORCH_CHECK_VALUE(U_buf.dim() == 3 && U_buf.size(0) == K && U_buf.size(1) == d, kOp,
                    ": argument 'U_buf' must be [K, d, T], got ", U_buf.sizes());
  const int64_t T = U_buf.size(2);
  TORCH_CHECK_VALUE(slot >= 0 && slot < T, kOp, ": argument 'slot' must be in [0, T) = [0, ", T,
              "), got ", slot);
  check_finite_scalar(lam, kOp, "lam");
  check_finite_scalar(gamma, kOp, "gamma");
  check_finite_scalar(row_norm_max, kOp, "row_norm_max");
  check_finite_scalar(cg_tol, kOp, "cg_tol");
  TORCH_CHECK_VALUE(max_iter >= 0, kOp, ": argument 'max_iter' must be >= 0, got ", max_iter);
  keep = {X, Y, A, Z, W, n_rem, eig, row_sq, weights};
  return {X.const_data_ptr<double>(), Y.const_data_ptr<double>(), A.const_data_ptr<double>(),
          Z.const_data_ptr<double>(), W.const_data_ptr<double>(),
          n_rem.const_data_ptr<double>(), eig.const_data_ptr<double>(),
          row_sq.const_data_ptr<double>(), weights.const_data_ptr<double>(), n, d, K,
          eig.size(0), T, lam, gamma, row_norm_max, cg_tol, max_iter};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> certified_cg_step_cpu(
    const at::Tensor& X, const at::Tensor& Y, const at::Tensor& A, const at::Tensor& Z,
    const at::Tensor& W, const at::Tensor& n_rem, const at::Tensor& eig,
    const at::Tensor& row_sq, const at::Tensor& M_inv_in, const at::Tensor& M_out,
    const at::Tensor& weights, const at::Tensor& U_buf, int64_t slot, int64_t row, double lam,
    double gamma, double row_norm_max, double cg_tol, int64_t max_iter) {
  constexpr const char* kOp = "certified_cg_step";
  const at::Tensor M_inv = M_inv_in.contiguous();  // read only: any strides
  std::vector<at::Tensor> keep;
  const StepProblem p = check_problem(kOp, X, Y, A, Z, W, n_rem, eig, row_sq, M_inv, M_out, weights,
                                      U_buf, slot, lam, gamma, row_norm_max, cg_tol, max_iter,
                                      keep);
  TORCH_CHECK_VALUE(row >= 0 && row < p.n, kOp, ": argument 'row' must be in [0, n) = [0, ", p.n,
              "), got ", row);
  check_row_held(kOp, A.contiguous(), row, "argument 'row'");
  check_no_overlap(kOp, {&M_out, &U_buf}, {"M_out", "U_buf"},
                   {&X, &Y, &A, &Z, &W, &n_rem, &eig, &row_sq, &M_inv_in, &M_out, &weights,
                    &U_buf},
                   {"X", "Y", "A", "Z", "W", "n_rem", "eig", "row_sq", "M_inv", "M_out",
                    "weights", "U_buf"});
  // V and XV are written whole by a step (zeroed when it is refused)
  at::Tensor V_t = at::empty({p.d, p.K}, X.options());
  at::Tensor XV_t = at::empty({p.n, p.K}, X.options());
  at::Tensor stats_t = at::zeros({5}, X.options());
  const StepResult r = plan_row(p, row, M_inv.const_data_ptr<double>(),
                                M_out.mutable_data_ptr<double>(),
                                U_buf.mutable_data_ptr<double>(), slot,
                                V_t.mutable_data_ptr<double>(), XV_t.mutable_data_ptr<double>());
  if (!r.ok) {
    V_t.zero_();
    XV_t.zero_();
  }
  double* stats = stats_t.mutable_data_ptr<double>();
  stats[0] = r.residual;
  stats[1] = r.bound;
  stats[2] = static_cast<double>(r.iterations);
  stats[3] = r.ok ? 1.0 : 0.0;
  stats[4] = r.converged ? 1.0 : 0.0;
  return {V_t, XV_t, stats_t};
}

// Remove ``rows`` one after another, committing each step in place, until one is refused
// (downdate not positive definite, CG not converged, or its bound would exceed the budget):
// that row changes nothing (its U column is cleaned) and the loop stops. With
// ``refresh_after >= 0`` it also stops after committing a row whose CG needed more than that
// many iterations (solver "auto" then takes a dense step). Returns the
// records of the committed rows ([done, 4]: bound (residual included), worst-case bound,
// CG iterations, seconds).
at::Tensor certified_cg_steps_cpu(
    const at::Tensor& X, const at::Tensor& Y, const at::Tensor& A, const at::Tensor& Z,
    const at::Tensor& W, const at::Tensor& n_rem, const at::Tensor& eig,
    const at::Tensor& row_sq, const at::Tensor& gram, const at::Tensor& removed,
    const at::Tensor& M_inv, const at::Tensor& M_spare, const at::Tensor& weights,
    const at::Tensor& U_buf, const at::Tensor& rows_in, int64_t slot, double lam, double gamma,
    double row_norm_max, double cg_tol, int64_t max_iter, double budget_used, double budget,
    int64_t refresh_after) {
  constexpr const char* kOp = "certified_cg_steps";
  std::vector<at::Tensor> keep;
  const StepProblem p = check_problem(kOp, X, Y, A, Z, W, n_rem, eig, row_sq, M_inv, M_spare,
                                      weights, U_buf, slot, lam, gamma, row_norm_max, cg_tol,
                                      max_iter, keep);
  const int64_t n = p.n, d = p.d, K = p.K;
  const char* written[] = {"A", "Z", "W", "n_rem", "gram", "removed"};
  const at::Tensor* wt[] = {&A, &Z, &W, &n_rem, &gram, &removed};
  for (int i = 0; i < 6; ++i)
    TORCH_CHECK_VALUE(wt[i]->is_contiguous(), kOp, ": argument '", written[i],
                      "' must be contiguous (it is written in place)");
  check_f64_cpu(kOp, gram, "gram");
  TORCH_CHECK_VALUE(gram.dim() == 3 && (gram.size(0) == 1 || gram.size(0) == K) &&
                        gram.size(1) == d && gram.size(2) == d,
                    kOp, ": argument 'gram' must be [1, d, d] or [K, d, d], got ", gram.sizes());
  TORCH_CHECK_TYPE(removed.scalar_type() == at::kBool, kOp,
                   ": argument 'removed' must be a bool tensor, got ", removed.scalar_type());
  TORCH_CHECK_VALUE(removed.dim() == 1 && removed.size(0) == n && removed.device().is_cpu(), kOp,
                    ": argument 'removed' must be a CPU tensor [n], got ", removed.sizes(), " on ",
                    removed.device());
  TORCH_CHECK_TYPE(rows_in.scalar_type() == at::kLong, kOp,
                   ": argument 'rows' must be an int64 tensor, got ", rows_in.scalar_type());
  TORCH_CHECK_VALUE(rows_in.dim() == 1, kOp, ": argument 'rows' must be 1-D, got shape ",
                    rows_in.sizes());
  const at::Tensor rows = rows_in.to(at::kCPU).contiguous();
  const int64_t m = rows.size(0);
  const int64_t* row_ids = rows.const_data_ptr<int64_t>();
  const bool* removed_before = removed.const_data_ptr<bool>();
  std::vector<char> seen(static_cast<size_t>(n), 0);
  for (int64_t r = 0; r < m; ++r) {
    const int64_t row = row_ids[r];
    TORCH_CHECK_VALUE(row >= 0 && row < n, kOp, ": argument 'rows' holds ", row,
                      ", outside [0, n) = [0, ", n, ")");
    TORCH_CHECK_VALUE(!seen[row], kOp, ": argument 'rows' holds row ", row, " twice");
    seen[row] = 1;
    TORCH_CHECK_VALUE(!removed_before[row], kOp, ": argument 'rows' holds row ", row,
                      ", which is removed already");
    check_row_held(kOp, A, row, "argument 'rows' holds row");
  }
  check_no_overlap(
      kOp, {&A, &Z, &W, &n_rem, &gram, &removed, &M_inv, &M_spare, &U_buf},
      {"A", "Z", "W", "n_rem", "gram", "removed", "M_inv", "M_spare", "U_buf"},
      {&X, &Y, &A, &Z, &W, &n_rem, &eig, &row_sq, &gram, &removed, &M_inv, &M_spare, &weights,
       &U_buf, &rows_in},
      {"X", "Y", "A", "Z", "W", "n_rem", "eig", "row_sq", "gram", "removed", "M_inv", "M_spare",
       "weights", "U_buf", "rows"});
  TORCH_CHECK_VALUE(slot + m <= p.T, kOp, ": argument 'rows' has ", m, " rows but U_buf has ",
                    p.T - slot, " free columns after slot ", slot);
  check_finite_scalar(budget_used, kOp, "budget_used");
  TORCH_CHECK_VALUE(!std::isnan(budget), kOp, ": argument 'budget' must not be NaN");

  double* a_all = A.mutable_data_ptr<double>();
  double* z_all = Z.mutable_data_ptr<double>();
  double* w_all = W.mutable_data_ptr<double>();
  double* nr = n_rem.mutable_data_ptr<double>();
  double* g_all = gram.mutable_data_ptr<double>();
  bool* rem = removed.mutable_data_ptr<bool>();
  double* Ub = U_buf.mutable_data_ptr<double>();
  double* M_cur = M_inv.mutable_data_ptr<double>();
  double* M_next = M_spare.mutable_data_ptr<double>();
  const double C = std::max(1.0, row_norm_max);
  const bool shared = gram.size(0) == 1;

  at::Tensor records = at::zeros({m, 4}, X.options());
  double* rec = records.mutable_data_ptr<double>();
  std::vector<double> V(d * K), XV(n * K);
  int64_t done = 0;
  for (; done < m; ++done) {
    const auto t0 = std::chrono::steady_clock::now();
    const int64_t row = row_ids[done];
    const StepResult r = plan_row(p, row, M_cur, M_next, Ub, slot + done, V.data(), XV.data());
    if (!r.ok) break;
    const double bound = r.residual + r.bound;
    if (!r.converged || !(budget_used + bound <= budget)) {
      for (int64_t k = 0; k < K; ++k)  // the refused row's U column, as discard() would
        for (int64_t j = 0; j < d; ++j) Ub[(k * d + j) * p.T + slot + done] = 0.0;
      break;
    }
    // commit: the step, then the row out of the data (as _commit and _drop_rows)
    double* ai = a_all + row * K;
    const double* xi = p.X + row * d;
    double worst = 0.0;
    // worst_case_bound(): the same expression, in order, with row_norm = C = max(1, R): the
    // curvature of rows up to R long is gamma R^3-Lipschitz
    const double lipschitz = gamma * std::pow(C, 3.0);
    for (int64_t k = 0; k < K; ++k) {
      const double m_k = ai[k];
      if (m_k > 0) {
        const double rest = std::max(nr[k] - m_k, 0.0);
        worst += rest == 0 ? std::numeric_limits<double>::infinity()
                           : 4.0 * lipschitz * m_k * m_k * C * C / (lam * lam * rest);
      }
    }
    for (int64_t i = 0; i < d * K; ++i) w_all[i] += V[i];
    for (int64_t i = 0; i < n * K; ++i) z_all[i] += XV[i];
    for (int64_t g = 0; g < gram.size(0); ++g) {
      const double a_g = shared ? 1.0 : ai[g];
      double* G = g_all + g * d * d;
      for (int64_t i = 0; i < d; ++i)
        for (int64_t j = 0; j < d; ++j)
          G[i * d + j] -= shared ? xi[i] * xi[j] : a_g * (xi[i] * xi[j]);
    }
    for (int64_t k = 0; k < K; ++k) {
      nr[k] -= ai[k];
      ai[k] = 0.0;
    }
    rem[row] = true;
    std::swap(M_cur, M_next);
    budget_used += bound;
    rec[done * 4 + 0] = bound;
    rec[done * 4 + 1] = worst;
    rec[done * 4 + 2] = static_cast<double>(r.iterations);
    rec[done * 4 + 3] =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (refresh_after >= 0 && r.iterations > refresh_after) {  // the caller refreshes first
      ++done;
      break;
    }
  }
  return records.narrow(0, 0, done);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastunlearn, CPU, m) {
  m.impl("certified_cg_step", &certified_cg_step_cpu);
  m.impl("certified_cg_steps", &certified_cg_steps_cpu);
}
}  // namespace fastunlearn
