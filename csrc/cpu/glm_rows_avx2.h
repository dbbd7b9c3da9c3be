// A fused single-pass CPU kernel for the GLM curvature product with few columns, in AVX2/FMA.
//
// For rows [begin, end) of X it adds X_c^T (S_c * (X_c V)) to an accumulator and optionally
// stores X_c V. Each block of RB rows is read once: its margins X_r V are accumulated in
// registers (RB x NV vectors), scaled by S, and the same rows (still in L1) are folded into
// the accumulator. V and the accumulator are padded to NV * lanes columns (zeros past K),
// so every vector operation is full width.
//
// Why not BLAS: for K <= 16 columns these are skinny products where a BLAS call does little
// arithmetic per call and much dispatch and packing; on the 2-core AMD EPYC of CI, MKL ran
// [1438, 64] x [64, 10] in float64 at ~7 GFLOP/s and this kernel runs the whole fused product
// (twice the flops) in less time than that one GEMM (see the glm_hvp benchmark).
//
// Compiled for AVX2+FMA with a function attribute and chosen at run time
// (``cpu_has_avx2_fma``); other CPUs (and other compilers) keep the BLAS path.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define FASTUNLEARN_HAVE_AVX2_KERNELS 1
#include <immintrin.h>
#else
#define FASTUNLEARN_HAVE_AVX2_KERNELS 0
#endif

namespace fastunlearn {

// True when the environment variable FASTUNLEARN_GLM_CPU_KERNEL=blas asks for the BLAS path
// (read at every call, so tests can compare the two paths in one process).
inline bool glm_cpu_kernel_forced_blas() {
  const char* forced = std::getenv("FASTUNLEARN_GLM_CPU_KERNEL");
  return forced != nullptr && std::strcmp(forced, "blas") == 0;
}

#if FASTUNLEARN_HAVE_AVX2_KERNELS

// True when the CPU executing this process has AVX2 and FMA.
inline bool cpu_has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}

// One vector of T: set1 / load / store / fmadd, for float (8 lanes) and double (4 lanes).
template <typename T>
struct Avx2Vec;

template <>
struct Avx2Vec<double> {
  using type = __m256d;
  static constexpr int lanes = 4;
  __attribute__((target("avx2,fma"), always_inline)) static inline type zero() {
    return _mm256_setzero_pd();
  }
  __attribute__((target("avx2,fma"), always_inline)) static inline type set1(double v) {
    return _mm256_set1_pd(v);
  }
  __attribute__((target("avx2,fma"), always_inline)) static inline type load(const double* p) {
    return _mm256_loadu_pd(p);
  }
  __attribute__((target("avx2,fma"), always_inline)) static inline void store(double* p, type v) {
    _mm256_storeu_pd(p, v);
  }
  __attribute__((target("avx2,fma"), always_inline)) static inline type fmadd(type a, type b,
                                                                              type c) {
    return _mm256_fmadd_pd(a, b, c);
  }
};

template <>
struct Avx2Vec<float> {
  using type = __m256;
  static constexpr int lanes = 8;
  __attribute__((target("avx2,fma"), always_inline)) static inline type zero() {
    return _mm256_setzero_ps();
  }
  __attribute__((target("avx2,fma"), always_inline)) static inline type set1(float v) {
    return _mm256_set1_ps(v);
  }
  __attribute__((target("avx2,fma"), always_inline)) static inline type load(const float* p) {
    return _mm256_loadu_ps(p);
  }
  __attribute__((target("avx2,fma"), always_inline)) static inline void store(float* p, type v) {
    _mm256_storeu_ps(p, v);
  }
  __attribute__((target("avx2,fma"), always_inline)) static inline type fmadd(type a, type b,
                                                                              type c) {
    return _mm256_fmadd_ps(a, b, c);
  }
};

// RB rows starting at ``row``: acc_pad[d, NV*lanes] += X_r^T (S_r * (X_r V_pad)); margins
// (row-major [n, K], may be null) receive X_r V. ``ldx``/``lds`` are the row strides of X/S.
template <typename T, int NV, int RB>
__attribute__((target("avx2,fma"))) void glm_rows_block_avx2(const T* X, int64_t ldx,
                                                             const T* S, int64_t lds,
                                                             const T* V_pad, int64_t d,
                                                             int64_t K, int64_t row,
                                                             T* acc_pad, T* margins) {
  using Vec = Avx2Vec<T>;
  using V = typename Vec::type;
  constexpr int W = Vec::lanes;
  constexpr int Kp = NV * W;
  V acc[RB][NV];
  for (int r = 0; r < RB; ++r)
    for (int q = 0; q < NV; ++q) acc[r][q] = Vec::zero();
  const T* x[RB];
  for (int r = 0; r < RB; ++r) x[r] = X + (row + r) * ldx;
  for (int64_t j = 0; j < d; ++j) {
    V v[NV];
    for (int q = 0; q < NV; ++q) v[q] = Vec::load(V_pad + j * Kp + q * W);
    for (int r = 0; r < RB; ++r) {
      const V xb = Vec::set1(x[r][j]);
      for (int q = 0; q < NV; ++q) acc[r][q] = Vec::fmadd(xb, v[q], acc[r][q]);
    }
  }
  // margins out, then scale by S (zero past K so the padding stays zero)
  alignas(32) T z[RB][Kp];
  for (int r = 0; r < RB; ++r)
    for (int q = 0; q < NV; ++q) Vec::store(&z[r][q * W], acc[r][q]);
  for (int r = 0; r < RB; ++r) {
    const T* s = S + (row + r) * lds;
    if (margins != nullptr) {
      T* m = margins + (row + r) * K;
      for (int64_t k = 0; k < K; ++k) m[k] = z[r][k];
    }
    for (int64_t k = 0; k < K; ++k) z[r][k] *= s[k];
    for (int64_t k = K; k < Kp; ++k) z[r][k] = T(0);
    for (int q = 0; q < NV; ++q) acc[r][q] = Vec::load(&z[r][q * W]);
  }
  for (int64_t j = 0; j < d; ++j) {
    T* o = acc_pad + j * Kp;
    V out[NV];
    for (int q = 0; q < NV; ++q) out[q] = Vec::load(o + q * W);
    for (int r = 0; r < RB; ++r) {
      const V xb = Vec::set1(x[r][j]);
      for (int q = 0; q < NV; ++q) out[q] = Vec::fmadd(xb, acc[r][q], out[q]);
    }
    for (int q = 0; q < NV; ++q) Vec::store(o + q * W, out[q]);
  }
}

// Rows [begin, end): blocks of RB rows, then single rows for the remainder.
template <typename T, int NV>
__attribute__((target("avx2,fma"))) void glm_rows_avx2_nv(const T* X, int64_t ldx, const T* S,
                                                          int64_t lds, const T* V_pad,
                                                          int64_t d, int64_t K, int64_t begin,
                                                          int64_t end, T* acc_pad,
                                                          T* margins) {
  // RB x NV accumulators plus NV loaded vectors and a broadcast fit the 16 ymm registers
  constexpr int RB = NV <= 2 ? 4 : (NV == 3 ? 3 : 2);
  int64_t row = begin;
  for (; row + RB <= end; row += RB)
    glm_rows_block_avx2<T, NV, RB>(X, ldx, S, lds, V_pad, d, K, row, acc_pad, margins);
  for (; row < end; ++row)
    glm_rows_block_avx2<T, NV, 1>(X, ldx, S, lds, V_pad, d, K, row, acc_pad, margins);
}

// Columns the padded V / accumulator have for K columns: a multiple of the vector width.
template <typename T>
inline int64_t avx2_padded_columns(int64_t K) {
  constexpr int W = Avx2Vec<T>::lanes;
  return (K + W - 1) / W * W;
}

// Largest K the fused kernel takes (four vectors per row).
template <typename T>
constexpr int64_t avx2_max_columns() {
  return 4 * Avx2Vec<T>::lanes;
}

// Dispatch on the number of vectors per row. ``V_pad`` and ``acc_pad`` are [d, padded] with
// padded = avx2_padded_columns<T>(K); K must be in [1, avx2_max_columns<T>()].
template <typename T>
void glm_rows_avx2(const T* X, int64_t ldx, const T* S, int64_t lds, const T* V_pad, int64_t d,
                   int64_t K, int64_t begin, int64_t end, T* acc_pad, T* margins) {
  switch (avx2_padded_columns<T>(K) / Avx2Vec<T>::lanes) {
    case 1:
      return glm_rows_avx2_nv<T, 1>(X, ldx, S, lds, V_pad, d, K, begin, end, acc_pad, margins);
    case 2:
      return glm_rows_avx2_nv<T, 2>(X, ldx, S, lds, V_pad, d, K, begin, end, acc_pad, margins);
    case 3:
      return glm_rows_avx2_nv<T, 3>(X, ldx, S, lds, V_pad, d, K, begin, end, acc_pad, margins);
    default:
      return glm_rows_avx2_nv<T, 4>(X, ldx, S, lds, V_pad, d, K, begin, end, acc_pad, margins);
  }
}

#else

inline bool cpu_has_avx2_fma() { return false; }

#endif  // FASTUNLEARN_HAVE_AVX2_KERNELS

}  // namespace fastunlearn
