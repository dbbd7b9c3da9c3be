// Every operator schema of the fastunlearn library, and nothing else.
//
// Kernels live in csrc/cpu/<family>_cpu.cpp and csrc/cuda/<family>_cuda.cu and register
// themselves with TORCH_LIBRARY_IMPL(fastunlearn, CPU|CUDA, m). Python-side fake (meta)
// kernels and autograd formulas live in fastunlearn/ops/<family>.py.
#include <torch/library.h>

#ifndef FASTUNLEARN_NO_PYTHON
#include <Python.h>

extern "C" {
// Importing fastunlearn._C registers the ops below; the module itself is empty.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
#endif  // FASTUNLEARN_NO_PYTHON

TORCH_LIBRARY(fastunlearn, m) {
  // ---- 1. GLM curvature (one-vs-rest logistic regression with K classes) -------------
  // X^T (S * (X V)) + lam V; X[n,d], S[n,K], V[d,K] -> [d,K]. One pass over X.
  m.def("glm_hvp(Tensor X, Tensor S, Tensor V, float lam) -> Tensor");
  // The same product and the margins X V it computes on the way: -> ([d,K], [n,K]).
  // One pass over X; a caller that needs both saves the second pass of X @ V.
  m.def("glm_hvp_margins(Tensor X, Tensor S, Tensor V, float lam) -> (Tensor, Tensor)");
  // Batched weighted Gram: out[k] = X^T diag(S[:,k]) X + lam I; -> [K,d,d].
  m.def("glm_hessian(Tensor X, Tensor S, float lam) -> Tensor");
  // K independent CG solves of (X^T diag(S_k) X + lam I) x_k = B[:,k].
  // precond: None, Jacobi inverse diagonal [d,K], or lower Cholesky factors [K,d,d].
  // Returns (solution [d,K], iterations int64 [K], true residual norms [K]).
  m.def(
      "glm_cg(Tensor X, Tensor S, Tensor B, float lam, Tensor? x0, Tensor? precond, "
      "float tol, int maxiter) -> (Tensor, Tensor, Tensor)");

  // Certified removal of one row that every class holds (CPU kernel; on CUDA the same step
  // runs as captured graphs of tensor expressions, fastunlearn/certified/fixed_step.py).
  // Writes M'^{-1} with the row folded in into M_out and the row's column into slot `slot`
  // of U_buf, and returns (V [d,K], X V [n,K], stats float64 [5] = residual sum, bound sum,
  // CG iterations, factor ok, converged). See fastunlearn/ops/certified.py.
  m.def(
      "certified_cg_step(Tensor X, Tensor Y, Tensor A, Tensor Z, Tensor W, Tensor n_rem, "
      "Tensor eig, Tensor row_sq, Tensor M_inv, Tensor(a!) M_out, Tensor weights, "
      "Tensor(b!) U_buf, int slot, int row, float lam, float gamma, "
      "float row_norm_max, float cg_tol, int max_iter) -> (Tensor, Tensor, Tensor)");
  // The same step for each of `rows` in turn, each committed in place (W, Z, A, n_rem, the
  // Gram matrices, removed, the inverse in M_inv / M_spare alternately, U_buf from `slot`)
  // while its bound fits the budget; stops at the first row refused (or after a row whose CG
  // took more than refresh_after >= 0 iterations). Returns the committed
  // rows' records [done, 4] = bound, worst-case bound, CG iterations, seconds.
  m.def(
      "certified_cg_steps(Tensor X, Tensor Y, Tensor(a!) A, Tensor(b!) Z, Tensor(c!) W, "
      "Tensor(d!) n_rem, Tensor eig, Tensor row_sq, Tensor(e!) gram, Tensor(f!) removed, "
      "Tensor(g!) M_inv, Tensor(h!) M_spare, Tensor weights, Tensor(i!) U_buf, Tensor rows, "
      "int slot, float lam, float gamma, float row_norm_max, float cg_tol, int max_iter, "
      "float budget_used, float budget, int refresh_after=-1) -> Tensor");

  // The end of one CG step of that removal step, fused (CPU and CUDA kernels; the CUDA
  // graphs of fastunlearn/certified/fixed_step.py use it when asked): given P, X P, H P and
  // rz, the step length alpha (first: where curvature > 0 else 1; else: where curvature > 0
  // and `needed`, else 0), V, XV, HV set (first) or advanced by alpha times them, R = Delta -
  // HV, and out[0] = sum_k ||R_k||, out[1] = sum_k bound_scale * spectral_k * ||V_k|| *
  // sqrt(sum_i A[i,k] XV[i,k]^2). float64; see fastunlearn/ops/certified_tail.py.
  m.def(
      "certified_cg_tail_(Tensor(a!) V, Tensor(b!) XV, Tensor(c!) HV, Tensor(d!) R, "
      "Tensor(e!) out, Tensor P, Tensor XP, Tensor HP, Tensor rz, Tensor? needed, Tensor A, "
      "Tensor Delta, Tensor spectral, float bound_scale, bool first) -> ()");

  // The removed row's quantities of that removal step (CPU and CUDA kernels; the CUDA graphs
  // of fastunlearn/certified/fixed_step.py use it when asked): a = A[row], row_weights = a,
  // Delta = X[row]^T (a * l'(Z[row], Y[row])) + lam a W with l'(z, y) = -y sigma(-y z),
  // A_after = A with its row zeroed, S = A_after sigma(Z) sigma(-Z), lam_k = (n_rem - a) lam,
  // spectral = sqrt(max(min(eig, row_sq @ A_after), 0)). float64; see
  // fastunlearn/ops/certified_start.py.
  m.def(
      "certified_start_(Tensor(a!) row_weights, Tensor(b!) Delta, Tensor(c!) A_after, "
      "Tensor(d!) S, Tensor(e!) lam_k, Tensor(f!) spectral, Tensor X, Tensor Y, Tensor Z, "
      "Tensor A, Tensor W, Tensor row, Tensor n_rem, Tensor eig, Tensor row_sq, float lam) -> ()");

  // The removed row's Woodbury column written into slot t with the factor's check (CPU and
  // CUDA kernels; the CUDA graphs of fastunlearn/certified/fixed_step.py use it when asked):
  // S22_k = 1 - U_new_k . G_new_k - L21_k . L21_k, out[2] = all(S22 > 0), L22 = sqrt(max(S22,
  // tiny)), C_inv[k, t] = (e_t - L21_k^T C_inv_k) / L22_k, C_buf[k, t] = L21_k^T + L22_k e_t,
  // U_buf[k, :, t] = U_new_k, G_buf[k, :, t] = G_new_k. See
  // fastunlearn/ops/certified_woodbury.py.
  m.def(
      "certified_woodbury_row_(Tensor(a!) U_buf, Tensor(b!) G_buf, Tensor(c!) C_buf, "
      "Tensor(d!) C_inv, Tensor(e!) out, Tensor U_new, Tensor G_new, Tensor L21, Tensor slot) "
      "-> ()");

  // The guarded commit of a pipelined run's planned step (CPU and CUDA kernels; the pipelined
  // CUDA graph of fastunlearn/certified/fixed_step.py uses it when asked): go = alive and
  // out[2] > 0.5 and out[0] <= cg_tol out[1] and budget_used + out[0] + out[1] <= budget (a
  // NaN fails it); where go, W += V, Z += XV, A[row] = 0, removed[row] = True, gram[c] -= coef_c x x^T
  // (x = X[row]; coef 1 if shared_gram else the row's weights), n_rem -= row_weights,
  // budget_used += out[0] + out[1]; always alive &= go, out[4] = go, results[slot] = out[:5],
  // counter += 1. See fastunlearn/ops/certified_commit.py.
  m.def(
      "certified_commit_(Tensor(a!) W, Tensor(b!) Z, Tensor(c!) A, Tensor(d!) removed, "
      "Tensor(e!) gram, Tensor(f!) n_rem, Tensor(g!) budget_used, Tensor(h!) alive, "
      "Tensor(i!) out, Tensor(j!) results, Tensor(k!) counter, Tensor V, Tensor XV, Tensor X, "
      "Tensor row, Tensor slot, Tensor row_weights, Tensor budget, float cg_tol, "
      "bool shared_gram) -> ()");

  // ---- 2. Generic CG support -------------------------------------------------------
  // One fused CG step for K right-hand sides stored as columns of [d,K] tensors, given
  // Ap = A p. Updates x, r, p, rz (= r.z), rr (= r.r), active and iterations in place.
  // inv_diag: optional Jacobi preconditioner ([d,K] or [d,1]); threshold_sq [K]: a
  // column stays active while rr > threshold_sq. No host synchronisation.
  m.def(
      "cg_update_(Tensor(a!) x, Tensor(b!) r, Tensor(c!) p, Tensor Ap, Tensor? inv_diag, "
      "Tensor(d!) rz, Tensor(e!) rr, Tensor(f!) active, Tensor(g!) iterations, "
      "Tensor threshold_sq) -> ()");

  // ---- 3. Per-sample gradients of linear-like layers ---------------------------------
  // A[B,T,in] activations, G[B,T,out] output gradients; per-sample weight gradient of
  // sample b is sum_t G[b,t]^T A[b,t]. Bias gradient of sample b is sum_t G[b,t].
  m.def("per_sample_grad(Tensor A, Tensor G) -> Tensor");  // [B,out,in]
  // Squared per-sample gradient norms without materialising; bias included if `bias`.
  m.def("per_sample_sq_norm(Tensor A, Tensor G, bool bias) -> Tensor");  // [B]
  // <g_b, (W, b_vec)> for a parameter-shaped W[out,in] and optional bias vector [out].
  m.def("per_sample_dot(Tensor A, Tensor G, Tensor W, Tensor? bias) -> Tensor");  // [B]
  // sum_b w_b g_b for weights w[B] (clipped DP-SGD sums) as one GEMM -> [out,in].
  m.def("per_sample_weighted_sum(Tensor A, Tensor G, Tensor w) -> Tensor");

  // ---- 4. Neighbour search ----------------------------------------------------------
  // For each row of Q[m,d], the k rows of P[n,d] with the largest (largest=True) or
  // smallest squared Euclidean distance, without the full m x n matrix in memory.
  // Returns (squared distances [m,k], indices int64 [m,k]), sorted best first.
  m.def("knn_extreme(Tensor Q, Tensor P, int k, bool largest) -> (Tensor, Tensor)");

  // ---- 5. Evaluation metrics ---------------------------------------------------------
  // Per-example epsilon of the NeurIPS 2023 unlearning competition from the statistics of
  // N retrained (retrained[S,N]) and M unlearned (unlearned[S,M]) models. grid (float64,
  // ascending within each example) holds the single-threshold family of example s in
  // grid[grid_offsets[s]:grid_offsets[s+1]]; table_r [M+1,N+1] and table_u [N+1,M+1]
  // (float32) give the epsilon of every (FP, FN) count pair when the retrained or the
  // unlearned group is positive. Returns float64 [S] in [0, 50], nan where no threshold
  // is usable. See csrc/competition_common.h.
  m.def(
      "competition_epsilons(Tensor retrained, Tensor unlearned, Tensor grid, "
      "Tensor grid_offsets, Tensor table_r, Tensor table_u) -> Tensor");
}
