// Shared parts of fastunlearn::competition_epsilons: argument checks (host) and the
// per-example algorithm (host and device), used by csrc/cpu/competition_cpu.cpp and
// csrc/cuda/competition_cuda.cu.
//
// The metric (NeurIPS 2023 unlearning competition, metric.py) for one example with N
// retrained and M unlearned statistics:
//  1. positive group: retrained if its median is strictly larger, else unlearned;
//  2. peaky rule: smaller range / larger range < 0.01 gives the cap 50 (0/0 is not peaky);
//  3. single-threshold family: the given thresholds t (torch.linspace of the pooled values,
//     built by the caller), positive if f >= t;
//  4. interval family: positive := the peakier group a (the original negative on equal
//     ranges), w its range; right edges r = numpy.linspace(min_a + w - 2, max_a + 2,
//     ceil(100 (hi - lo))), 400 left edges l = numpy.linspace(r - w - 2, r - w + 2) each;
//     positive if l <= f <= r (only l <= r counts: an empty interval has FPR = 0, FNR = 1,
//     which is discarded anyway);
//  5. every threshold's epsilon is table[FP][FN] (the caller's float32 table: inf for
//     FP = FN = 0, -inf for a discarded threshold), the example's epsilon is the max,
//     nan when every threshold is discarded, clipped to [0, 50].
//
// Counting. The pooled values are sorted (a merge of the sorted groups) with the prefix
// count of retrained values, rcount[g] = #retrained among the g smallest. All thresholds
// with exactly g values below them give the same counts, so each family is reduced to the
// "gaps" between consecutive sorted values that hold at least one threshold: binary search
// for the single grid; for the left edges of a right edge, a jump from gap to gap, where
// the number of left edges <= v comes from the linear grid's arithmetic and is then
// corrected against the grid's own entries (computed exactly as numpy does: i * step +
// start, last = stop, no fused multiply-add), so the decisions are exact.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>

#include <ATen/ATen.h>

#include "checks.h"

#ifdef __CUDACC__
#define FU_HD __host__ __device__ __forceinline__
#else
#define FU_HD inline
#endif

namespace fastunlearn::competition {

constexpr double kBuffer = 2.0;
constexpr double kPerUnit = 100.0;
constexpr int64_t kLeftEdges = 400;
constexpr double kPeakyRatio = 0.01;
constexpr double kCap = 50.0;
// More right edges than this (400 at ordinary magnitudes) are refused by check_args.
constexpr int64_t kMaxRightEdges = 100000;

// Products and sums rounded separately (never contracted into an FMA), as numpy computes.
FU_HD double mul_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

FU_HD double add_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

// numpy.linspace(start, stop, n)[j] for n > 1: j * step + start, the last entry = stop.
struct LinGrid {
  double start, stop, step;
  int64_t n;

  FU_HD double at(int64_t j) const {
    return j == n - 1 ? stop : add_rn(mul_rn(static_cast<double>(j), step), start);
  }

  // #{j : at(j) <= v}: an arithmetic estimate, corrected against the entries themselves
  // (the grid is nondecreasing, so the count is a prefix and the correction exact).
  FU_HD int64_t count_le(double v) const {
    const double u = (v - start) / step;
    int64_t j;
    if (!(u > -1.0)) {
      j = 0;
    } else if (u >= static_cast<double>(n)) {
      j = n;
    } else {
      j = static_cast<int64_t>(floor(u)) + 1;
      if (j > n) j = n;
    }
    while (j > 0 && at(j - 1) > v) --j;
    while (j < n && at(j) <= v) ++j;
    return j;
  }
};

// First index in [lo, hi) with x[i] >= v (or hi).
FU_HD int64_t lower_bound(const double* x, int64_t lo, int64_t hi, double v) {
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (x[mid] < v) lo = mid + 1; else hi = mid;
  }
  return lo;
}

// First index in [lo, hi) with x[i] > v (or hi).
FU_HD int64_t upper_bound(const double* x, int64_t lo, int64_t hi, double v) {
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (x[mid] <= v) lo = mid + 1; else hi = mid;
  }
  return lo;
}

// np.median of a sorted row: the mean of the two middle values (equal values kept as is).
FU_HD double sorted_median(const double* x, int64_t n) {
  const double lo = x[(n - 1) / 2], hi = x[n / 2];
  return lo == hi ? lo : (lo + hi) / 2;
}

// One example, after sorting: the pooled sorted values and the prefix counts.
struct Example {
  const double* vals;     // [K] pooled values, ascending
  const int32_t* rcount;  // [K + 1] #retrained among the g smallest
  int64_t K, N, M;        // K = N + M
  const float* table_r;   // [M + 1, N + 1]: retrained positive, index FP (N + 1) + FN
  const float* table_u;   // [N + 1, M + 1]: unlearned positive, index FP (M + 1) + FN
  const double* grid;     // [T] single-family thresholds, ascending
  int64_t T;
};

// What the example's statistics decide before any threshold is evaluated.
struct Plan {
  bool peaky;
  bool single_r;     // single family: retrained is the positive group
  bool double_r;     // interval family: retrained is the positive (peakier) group
  double a_min, a_max, width;
  LinGrid right;     // right edges (n >= 2)
};

FU_HD Plan make_plan(double r_min, double r_max, double r_med, double u_min, double u_max,
                     double u_med) {
  Plan p{};
  p.single_r = r_med > u_med;
  const double pd = p.single_r ? r_max - r_min : u_max - u_min;
  const double nd = p.single_r ? u_max - u_min : r_max - r_min;
  const double largest = pd > nd ? pd : nd;
  const double smallest = pd > nd ? nd : pd;
  p.peaky = smallest / largest < kPeakyRatio;  // 0/0 is nan: not peaky
  // the peakier group; the original negative on equal ranges
  p.double_r = (pd >= nd) ? !p.single_r : p.single_r;
  p.a_min = p.double_r ? r_min : u_min;
  p.a_max = p.double_r ? r_max : u_max;
  p.width = p.a_max - p.a_min;
  const double lo = (p.a_min + p.width) - kBuffer;
  const double hi = p.a_max + kBuffer;
  const double delta = hi - lo;
  p.right.start = lo;
  p.right.stop = hi;
  p.right.n = static_cast<int64_t>(ceil(delta * kPerUnit));
  p.right.step = delta / static_cast<double>(p.right.n > 1 ? p.right.n - 1 : 1);
  return p;
}

FU_HD float max_f(float a, float b) { return b > a ? b : a; }

// Table entry of the gap with g values below the threshold (single family).
FU_HD float single_gap(const Example& e, const Plan& p, int64_t g) {
  const int64_t r_below = e.rcount[g];
  const int64_t pos_below = p.single_r ? r_below : g - r_below;
  const int64_t neg_below = g - pos_below;
  const int64_t P = p.single_r ? e.N : e.M;
  const int64_t Q = p.single_r ? e.M : e.N;
  const float* table = p.single_r ? e.table_r : e.table_u;
  return table[(Q - neg_below) * (P + 1) + pos_below];
}

// Max over the gaps k in [k_begin, K] (stride k_step) that hold a single-family threshold:
// gap k holds the grid entries in [#grid <= v_{k-1}, #grid <= v_k) (0 and T at the ends).
FU_HD float single_family(const Example& e, const Plan& p, int64_t k_begin, int64_t k_step) {
  float best = -INFINITY;
  for (int64_t k = k_begin; k <= e.K; k += k_step) {
    const int64_t before = k == 0 ? 0 : upper_bound(e.grid, 0, e.T, e.vals[k - 1]);
    const int64_t upto = k == e.K ? e.T : upper_bound(e.grid, before, e.T, e.vals[k]);
    if (upto > before) best = max_f(best, single_gap(e, p, k));
  }
  return best;
}

// #{j : grid.at(j) <= v} by a multiplication when v is clear of every grid entry (more
// than 1e-6 steps away: with |v|, |start| < 1e6 and 400 entries of step ~0.01, the
// rounding of the entries and of u is below 1e-7 steps), exactly by count_le otherwise.
FU_HD int64_t count_le_fast(const LinGrid& grid, double inv_step, double v) {
  constexpr double kBand = 1e-6;
  if (!(fabs(v) < 1e6 && fabs(grid.start) < 1e6)) return grid.count_le(v);
  const double u1 = (v - grid.start) * inv_step + 1.0;  // floor(u1): the count, if clear
  if (u1 < 0.5) return 0;
  const double n = static_cast<double>(grid.n);
  if (u1 > n + 0.5) return grid.n;
  const int64_t c = static_cast<int64_t>(u1);  // truncation = floor here (u1 >= 0.5)
  const double frac = u1 - static_cast<double>(c);
  // c = n would involve the last entry (= stop, not on the arithmetic grid): exact path
  if (frac > kBand && frac < 1.0 - kBand && c < grid.n) return c;
  return grid.count_le(v);
}

// Max over the intervals of the right edges i in [i_begin, n) (stride i_step).
//
// For a right edge r, the left edges l_0 < l_1 < ... (those <= r) hit gap g (thresholds
// with exactly g values below) iff some l_j lies in (v_{g-1}, v_g]. With c(v) = #{j : l_j
// <= v}, the first left edge is in gap #values < l_0, and gap k + 1 (k >= that) is hit iff
// c(v_{k+1}) > c(v_k), while c(v_k) < n_valid. One count per value in the window.
FU_HD float double_family(const Example& e, const Plan& p, int64_t i_begin, int64_t i_step) {
  float best = -INFINITY;
  const int64_t P = p.double_r ? e.N : e.M;
  const float* table = p.double_r ? e.table_r : e.table_u;
  for (int64_t i = i_begin; i < p.right.n && best != INFINITY; i += i_step) {
    const double r = p.right.at(i);
    const double centre = r - p.width;
    LinGrid left;
    left.start = centre - kBuffer;
    left.stop = centre + kBuffer;
    left.n = kLeftEdges;
    left.step = (left.stop - left.start) / static_cast<double>(kLeftEdges - 1);
    const double inv_step = 1.0 / left.step;
    const int64_t n_valid = left.count_le(r);  // left edges l <= r
    if (n_valid == 0) continue;
    const int64_t g_r = upper_bound(e.vals, 0, e.K, r);  // values <= r
    const int64_t r_le = e.rcount[g_r];
    const int64_t a_le = p.double_r ? r_le : g_r - r_le;
    const int64_t b_le = g_r - a_le;
    // index of gap g: FP (P + 1) + FN with FP = b_le - b_lt(g), FN = P - a_le + a_lt(g)
    const int64_t base = b_le * (P + 1) + P - a_le;
    auto gap_value = [&](int64_t g) {
      const int64_t r_lt = e.rcount[g];
      const int64_t a_lt = p.double_r ? r_lt : g - r_lt;
      return table[base + a_lt * (P + 2) - (P + 1) * g];
    };
    int64_t k = lower_bound(e.vals, 0, e.K, left.start);  // values < l_0 = start
    best = max_f(best, gap_value(k));
    if (k >= e.K) continue;
    int64_t c = count_le_fast(left, inv_step, e.vals[k]);
    while (c < n_valid) {
      const int64_t c_next = k + 1 < e.K ? count_le_fast(left, inv_step, e.vals[k + 1])
                                         : kLeftEdges;
      if (c_next > c) best = max_f(best, gap_value(k + 1));
      ++k;
      c = c_next;
    }
  }
  return best;
}

// The example's epsilon from the families' maxima: nan if nothing kept, else in [0, 50].
FU_HD double finish(const Plan& p, float best) {
  if (p.peaky) return kCap;
  if (best == -INFINITY) return NAN;
  const double v = static_cast<double>(best);
  return v < 0.0 ? 0.0 : (v > kCap ? kCap : v);
}

// Argument checks shared by the CPU and CUDA kernels (host only).
inline void check_args(const at::Tensor& retrained, const at::Tensor& unlearned,
                       const at::Tensor& grid, const at::Tensor& grid_offsets,
                       const at::Tensor& table_r, const at::Tensor& table_u) {
  constexpr const char* op = "competition_epsilons";
  check_dim(retrained, 2, op, "retrained");
  check_dim(unlearned, 2, op, "unlearned");
  check_float(retrained, op, "retrained");
  check_same_dtype(retrained, unlearned, op, "retrained", "unlearned");
  check_same_device(retrained, unlearned, op, "retrained", "unlearned");
  const int64_t S = retrained.size(0), N = retrained.size(1), M = unlearned.size(1);
  check_size(unlearned, 0, S, op, "unlearned", "examples");
  TORCH_CHECK_VALUE(N >= 1, op, ": argument 'retrained' needs at least 1 model (dim 1), got shape ",
                    retrained.sizes());
  TORCH_CHECK_VALUE(M >= 1, op, ": argument 'unlearned' needs at least 1 model (dim 1), got shape ",
                    unlearned.sizes());
  TORCH_CHECK_VALUE(N + M < (int64_t(1) << 30), op, ": too many models (", N, " + ", M, ")");
  check_dim(grid, 1, op, "grid");
  TORCH_CHECK_TYPE(grid.scalar_type() == at::kDouble, op, ": argument 'grid' must be float64, got ",
                   grid.scalar_type());
  check_dim(grid_offsets, 1, op, "grid_offsets");
  TORCH_CHECK_TYPE(grid_offsets.scalar_type() == at::kLong, op,
                   ": argument 'grid_offsets' must be int64, got ", grid_offsets.scalar_type());
  check_size(grid_offsets, 0, S + 1, op, "grid_offsets", "entries");
  for (const auto& [t, name] : {std::pair{&table_r, "table_r"}, std::pair{&table_u, "table_u"}}) {
    check_dim(*t, 2, op, name);
    TORCH_CHECK_TYPE(t->scalar_type() == at::kFloat, op, ": argument '", name,
                     "' must be float32, got ", t->scalar_type());
    check_same_device(retrained, *t, op, "retrained", name);
  }
  check_size(table_r, 0, M + 1, op, "table_r", "rows");
  check_size(table_r, 1, N + 1, op, "table_r", "columns");
  check_size(table_u, 0, N + 1, op, "table_u", "rows");
  check_size(table_u, 1, M + 1, op, "table_u", "columns");
  check_same_device(retrained, grid, op, "retrained", "grid");
  check_same_device(retrained, grid_offsets, op, "retrained", "grid_offsets");
  // offsets: 0 = o[0] <= o[1] <= ... <= o[S] = grid size (a small host copy on CUDA)
  const at::Tensor off = grid_offsets.cpu();
  const int64_t* o = off.const_data_ptr<int64_t>();
  const int64_t stride = off.stride(0);
  bool ok = o[0] == 0 && o[S * stride] == grid.numel();
  for (int64_t i = 0; ok && i < S; ++i) ok = o[i * stride] <= o[(i + 1) * stride];
  TORCH_CHECK_VALUE(ok, op, ": argument 'grid_offsets' must rise from 0 to the size of 'grid' (",
                    grid.numel(), ")");
  if (retrained.numel()) {
    TORCH_CHECK_VALUE(at::isfinite(retrained).all().item<bool>(), op,
                      ": argument 'retrained' must be finite");
    TORCH_CHECK_VALUE(at::isfinite(unlearned).all().item<bool>(), op,
                      ": argument 'unlearned' must be finite");
    // The interval family has ceil(100 (hi - lo)) right edges, about 400; a range's rounding
    // at huge magnitudes (min + (max - min) != max) can make it billions, and the kernel
    // would run for hours. Bound it from each group's extremes (either group may be the
    // positive one), as make_plan computes it, before any kernel runs.
    const auto [r_min, r_max] = at::aminmax(retrained, 1);
    const auto [u_min, u_max] = at::aminmax(unlearned, 1);
    const at::Tensor ext = at::stack({r_min, r_max, u_min, u_max}, 1).to(at::kDouble).cpu();
    const double* x = ext.const_data_ptr<double>();
    for (int64_t s = 0; s < S; ++s) {
      for (int64_t g = 0; g < 2; ++g) {
        const double a_min = x[s * 4 + 2 * g], a_max = x[s * 4 + 2 * g + 1];
        const double width = a_max - a_min;
        const double edges = std::ceil(((a_max + kBuffer) - ((a_min + width) - kBuffer)) * kPerUnit);
        TORCH_CHECK_VALUE(edges <= static_cast<double>(kMaxRightEdges), op, ": argument '",
                          g == 0 ? "retrained" : "unlearned", "' of example ", s, " spans [",
                          a_min, ", ", a_max, "]: at that magnitude the interval family would ",
                          "need ", edges, " right edges (at most ", kMaxRightEdges,
                          " are supported; about 400 at ordinary magnitudes)");
      }
    }
  }
}

}  // namespace fastunlearn::competition
