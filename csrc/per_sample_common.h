// Host logic of the per-sample-gradient ops, shared by the CPU and CUDA kernels.
//
// A[B,T,in] activations and G[B,T,out] output gradients of a linear-like layer; the weight
// gradient of sample b is P_b = sum_t G[b,t]^T A[b,t] = G_b^T A_b ([out,in]). GEMMs go to
// ATen (cuBLAS / the CPU BLAS); each backend supplies only the two fused reductions in
// `Kernels`, which accumulate in float64 and write the result in the input dtype.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>

#include "checks.h"

namespace fastunlearn::per_sample {

// The backend-specific reductions. Inputs are contiguous and of one floating dtype; `out`
// is a contiguous 1-D tensor of that dtype with one entry per row.
struct Kernels {
  // out[r] = sum_k X[r,k] * Y[r,k] for X, Y [R, L]; X and Y may be the same tensor.
  void (*rowwise_dot)(const at::Tensor& X, const at::Tensor& Y, const at::Tensor& out);
  // out[b] = (||A[b]||^2 + (bias ? 1 : 0)) * ||G[b]||^2 for A [B, in], G [B, out]: the
  // squared norm of the T = 1 per-sample gradient (g a^T, g), computed from the row norms.
  void (*ghost_sq_norm)(const at::Tensor& A, const at::Tensor& G, bool bias,
                        const at::Tensor& out);
};

// Temporaries of the chunked paths (Gram matrices, materialised gradients) stay below this.
constexpr int64_t kChunkBytes = int64_t{64} << 20;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Samples per chunk when each sample needs `bytes_per_sample` bytes of temporaries.
inline int64_t samples_per_chunk(int64_t bytes_per_sample) {
  return std::max<int64_t>(1, kChunkBytes / std::max<int64_t>(1, bytes_per_sample));
}

// Segments per row for a row-wise reduction over R rows of length L: 1 when there are at
// least `min_items` rows; otherwise enough segments (each at least `min_segment` long) to
// give every worker something to do. Segment sums are then added in a second pass.
inline int64_t row_segments(int64_t R, int64_t L, int64_t min_items, int64_t min_segment) {
  if (R <= 0 || R >= min_items || L <= min_segment) return 1;
  return std::max<int64_t>(1, std::min(ceil_div(min_items, R), ceil_div(L, min_segment)));
}

// ---- argument checks ------------------------------------------------------------------

inline void check_pair(const at::Tensor& A, const at::Tensor& G, const char* op) {
  check_dim(A, 3, op, "A");
  check_dim(G, 3, op, "G");
  check_float(A, op, "A");
  check_same_dtype(A, G, op, "A", "G");
  check_same_device(A, G, op, "A", "G");
  check_size(G, 0, A.size(0), op, "G", "samples");
  check_size(G, 1, A.size(1), op, "G", "positions");
}

// `t` must have the given shape and A's dtype and device.
inline void check_like(const at::Tensor& t, const at::Tensor& A, at::IntArrayRef shape,
                       const char* op, const char* name, const char* what) {
  check_dim(t, static_cast<int64_t>(shape.size()), op, name);
  for (size_t axis = 0; axis < shape.size(); ++axis) {
    check_size(t, static_cast<int64_t>(axis), shape[axis], op, name, what);
  }
  check_same_dtype(A, t, op, "A", name);
  check_same_device(A, t, op, "A", name);
}

// ---- cost model for per_sample_sq_norm ------------------------------------------------

enum class SqNormMethod { kGhost, kGram, kMaterialise };

// Multiply-adds per sample of the two exact ways to get ||P_b||_F^2 when T > 1:
//   Gram:        ||G_b^T A_b||^2 = <A_b A_b^T, G_b G_b^T>_F; two Gram GEMMs T^2 (in + out)
//                plus the product-sum over T^2 entries -> T^2 (in + out + 1);
//   Materialise: P_b by a GEMM (T in out) then its squared sum (in out) -> in out (T + 1).
// Gram wins for short sequences of wide layers, materialising for long sequences (many
// conv positions) of narrow layers. Ties go to Gram (no [out,in] temporary). T = 1 always
// uses the ghost norm ||a||^2 ||g||^2 (in + out). fastunlearn/ops/per_sample.py mirrors
// this rule in `_prefers_gram`; keep the two in step.
inline SqNormMethod choose_sq_norm_method(int64_t T, int64_t in, int64_t out) {
  if (T == 1) return SqNormMethod::kGhost;
  const double t = static_cast<double>(T);
  const double gram = t * t * static_cast<double>(in + out + 1);
  const double materialise = static_cast<double>(in) * static_cast<double>(out) * (t + 1.0);
  return gram <= materialise ? SqNormMethod::kGram : SqNormMethod::kMaterialise;
}

// ---- the ops --------------------------------------------------------------------------

inline at::Tensor per_sample_grad(const at::Tensor& A, const at::Tensor& G) {
  check_pair(A, G, "per_sample_grad");
  return at::bmm(G.transpose(1, 2), A);  // [B, out, in]; strided inputs are fine for bmm
}

inline at::Tensor per_sample_sq_norm(const at::Tensor& A, const at::Tensor& G, bool bias,
                                     const Kernels& k) {
  check_pair(A, G, "per_sample_sq_norm");
  const int64_t B = A.size(0), T = A.size(1), in = A.size(2), out = G.size(2);
  if (B == 0 || T == 0) return at::zeros({B}, A.options());
  at::Tensor result = at::empty({B}, A.options());
  const int64_t elem = static_cast<int64_t>(A.element_size());

  switch (choose_sq_norm_method(T, in, out)) {
    case SqNormMethod::kGhost:
      k.ghost_sq_norm(A.reshape({B, in}).contiguous(), G.reshape({B, out}).contiguous(), bias,
                      result);
      return result;

    case SqNormMethod::kGram: {
      // The bias gradient sum_t G[b,t] is the weight gradient of a constant-1 input
      // feature, so it adds 1 to every entry of A_b A_b^T; baddbmm fuses that add.
      const int64_t chunk = samples_per_chunk(2 * T * T * elem);
      const at::Tensor one = at::ones({}, A.options());
      for (int64_t s = 0; s < B; s += chunk) {
        const int64_t c = std::min(chunk, B - s);
        const at::Tensor a = A.narrow(0, s, c), g = G.narrow(0, s, c);
        const at::Tensor gram_a = bias ? at::baddbmm(one, a, a.transpose(1, 2))
                                       : at::bmm(a, a.transpose(1, 2));
        const at::Tensor gram_g = at::bmm(g, g.transpose(1, 2));
        k.rowwise_dot(gram_g.reshape({c, T * T}), gram_a.reshape({c, T * T}),
                      result.narrow(0, s, c));
      }
      return result;
    }

    case SqNormMethod::kMaterialise: {
      const int64_t chunk = samples_per_chunk(in * out * elem);
      for (int64_t s = 0; s < B; s += chunk) {
        const int64_t c = std::min(chunk, B - s);
        const at::Tensor P =
            at::bmm(G.narrow(0, s, c).transpose(1, 2), A.narrow(0, s, c)).reshape({c, out * in});
        k.rowwise_dot(P, P, result.narrow(0, s, c));
      }
      if (bias) {
        const at::Tensor h = G.sum(1).contiguous();  // [B, out] bias gradients
        at::Tensor h_sq = at::empty({B}, A.options());
        k.rowwise_dot(h, h, h_sq);
        result.add_(h_sq);
      }
      return result;
    }
  }
  TORCH_INTERNAL_ASSERT(false, "per_sample_sq_norm: unknown method");
}

inline at::Tensor per_sample_dot(const at::Tensor& A, const at::Tensor& G, const at::Tensor& W,
                                 const c10::optional<at::Tensor>& bias, const Kernels& k) {
  const char* op = "per_sample_dot";
  check_pair(A, G, op);
  const int64_t B = A.size(0), T = A.size(1), in = A.size(2), out = G.size(2);
  check_like(W, A, {out, in}, op, "W", "entries");
  if (bias.has_value()) check_like(*bias, A, {out}, op, "bias", "entries");
  if (B == 0 || T == 0 || out == 0) return at::zeros({B}, A.options());
  // One GEMM Y = A W^T + bias over all B*T positions, then per sample sum_{t,o} G * Y.
  const at::Tensor Y = at::linear(A.reshape({B * T, in}), W, bias).reshape({B, T * out});
  at::Tensor result = at::empty({B}, A.options());
  k.rowwise_dot(G.reshape({B, T * out}).contiguous(), Y.contiguous(), result);
  return result;
}

inline at::Tensor per_sample_weighted_sum(const at::Tensor& A, const at::Tensor& G,
                                          const at::Tensor& w) {
  const char* op = "per_sample_weighted_sum";
  check_pair(A, G, op);
  const int64_t B = A.size(0), T = A.size(1), in = A.size(2), out = G.size(2);
  check_like(w, A, {B}, op, "w", "entries");
  // sum_b w_b G_b^T A_b = (w G)^T A over all B*T positions: one GEMM after scaling the
  // smaller operand per sample.
  const at::Tensor wv = w.reshape({B, 1, 1});
  const at::Tensor Gw = out <= in ? G * wv : G;
  const at::Tensor Aw = out <= in ? A : A * wv;
  return at::mm(Gw.reshape({B * T, out}).t(), Aw.reshape({B * T, in}));
}

}  // namespace fastunlearn::per_sample
