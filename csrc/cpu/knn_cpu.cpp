// CPU kernel of fastunlearn::knn_extreme: the k farthest (largest) or nearest rows of P for
// every row of Q, by squared Euclidean distance, without the m x n distance matrix.
//
// Algorithm. Q is cut into blocks of rows and P into chunks of rows so that one distance tile
// [block, chunk] is a few MB. Each tile is one GEMM, ||p||^2 - 2 q.p (at::addmm_out, MKL),
// to which the row's ||q||^2 is added and the result clamped at 0. A running top-k per query
// row lives in the output tensors. A row's entries are collected in a buffer of max(4k, 64);
// when it fills, std::nth_element compacts it to the best k, whose worst is from then on a
// threshold (a single compare per entry; it carries over to the next tile), so even the
// first tile costs about one compare per entry. Memory: O(m k + tile + threads (k)).
//
// Precision and ties. The expansion ||q||^2 + ||p||^2 - 2 q.p cancels catastrophically for
// nearly identical points (absolute error ~ eps (||q||^2 + ||p||^2)), so it is used only to
// SELECT candidates. The k returned distances are recomputed directly as sum (q - p)^2 with a
// float64 accumulator and rounded to the input dtype, and each row is sorted best first by
// (distance, index): equal distances come out with the smaller index of P first. During
// selection entries are compared by (computed distance, index) as well, so exact duplicates
// in P (which get bit-identical GEMM values) are also selected smaller index first; a point
// whose true distance is within the expansion's rounding error of the k-th can be swapped
// with it.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <utility>
#include <vector>

#include "checks.h"
#include "knn_common.h"

namespace fastunlearn {
namespace {

constexpr const char* kOp = "knn_extreme";
// Elements of one distance tile (4 MB in float32, 8 MB in float64) and the largest query block.
constexpr int64_t kTileElements = int64_t(1) << 20;
constexpr int64_t kMaxQueryBlock = 512;

template <typename scalar_t>
struct Entry {
  scalar_t dist;
  int64_t index;
};

// Strict "a ranks before b": larger (or smaller) distance, then the smaller index.
template <typename scalar_t, bool kLargest>
inline bool ranks_before(const Entry<scalar_t>& a, const Entry<scalar_t>& b) {
  if (a.dist != b.dist) return kLargest ? a.dist > b.dist : a.dist < b.dist;
  return a.index < b.index;
}

// The expansion can round slightly below 0; distances are clamped there (NaN, which finite
// inputs cannot produce, would also map to 0 rather than break the ordering).
template <typename scalar_t>
inline scalar_t clamped(scalar_t v) {
  return v > scalar_t(0) ? v : scalar_t(0);
}

// Squared distance between two rows computed directly (no cancellation), float64 accumulator.
// Eight independent partial sums keep the loop vectorisable and the summation order fixed, so
// identical rows always give identical results.
template <typename scalar_t>
double direct_sq_distance(const scalar_t* a, const scalar_t* b, int64_t d) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t t = 0;
  for (; t + 8 <= d; t += 8) {
    for (int u = 0; u < 8; ++u) {
      const double diff = static_cast<double>(a[t + u]) - static_cast<double>(b[t + u]);
      acc[u] += diff * diff;
    }
  }
  for (; t < d; ++t) {
    const double diff = static_cast<double>(a[t]) - static_cast<double>(b[t]);
    acc[0] += diff * diff;
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// Squared row norms in the input dtype (what the GEMM expansion is consistent with); eight
// partial sums keep the loop vectorisable.
template <typename scalar_t>
at::Tensor row_sq_norms(const at::Tensor& x) {
  const int64_t rows = x.size(0), d = x.size(1);
  at::Tensor out = at::empty({rows}, x.options());
  const scalar_t* x_ptr = x.const_data_ptr<scalar_t>();
  scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t* row = x_ptr + i * d;
      scalar_t acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      int64_t t = 0;
      for (; t + 8 <= d; t += 8) {
        for (int u = 0; u < 8; ++u) acc[u] += row[t + u] * row[t + u];
      }
      for (; t < d; ++t) acc[0] += row[t] * row[t];
      out_ptr[i] =
          ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    }
  });
  return out;
}

// A cheap finiteness check: one reduction over the squared row norms catches NaN, Inf and
// squares that overflow the dtype.
void check_finite_rows(const at::Tensor& sq_norms, const char* name) {
  TORCH_CHECK_VALUE(at::isfinite(sq_norms).all().item<bool>(), kOp, ": argument '", name,
                    "' must be finite (it contains NaN or Inf, or its squared row norms overflow)");
}

template <typename scalar_t, bool kLargest>
void knn_select(const at::Tensor& Q, const at::Tensor& P, const at::Tensor& q_norms,
                const at::Tensor& p_norms, int64_t k, at::Tensor& out_dist,
                at::Tensor& out_index) {
  using E = Entry<scalar_t>;
  const int64_t m = Q.size(0), n = P.size(0), d = Q.size(1);
  const scalar_t* q_ptr = Q.const_data_ptr<scalar_t>();
  const scalar_t* p_ptr = P.const_data_ptr<scalar_t>();
  scalar_t* dist_ptr = out_dist.mutable_data_ptr<scalar_t>();
  int64_t* index_ptr = out_index.mutable_data_ptr<int64_t>();

  const scalar_t* q_norm = q_norms.const_data_ptr<scalar_t>();

  const int64_t block = std::min(m, kMaxQueryBlock);
  const int64_t chunk = std::max<int64_t>(1, std::min(n, kTileElements / block));
  at::Tensor tile_buf = at::empty({block * chunk}, Q.options());
  // Worst kept entry of each row of the current block, valid once the row holds k entries.
  std::vector<E> worst(block);
  // Candidates a row collects before it is compacted to its best k (a threshold from then
  // on): a few times k, so compactions are rare and most entries cost one compare.
  const int64_t buffer = std::max<int64_t>(4 * k, 64);

  for (int64_t i0 = 0; i0 < m; i0 += block) {
    const int64_t rows = std::min(block, m - i0);
    const at::Tensor q_block = Q.narrow(0, i0, rows);
    for (int64_t j0 = 0; j0 < n; j0 += chunk) {
      const int64_t cols = std::min(chunk, n - j0);
      // Every row has seen j0 columns so far, so the same number of kept entries.
      const int64_t filled = std::min(k, j0);
      at::Tensor tile = tile_buf.narrow(0, 0, rows * cols).view({rows, cols});
      at::addmm_out(tile, p_norms.narrow(0, j0, cols), q_block, P.narrow(0, j0, cols).t(),
                    /*beta=*/1, /*alpha=*/-2);
      const scalar_t* tile_ptr = tile.const_data_ptr<scalar_t>();

      at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
        std::vector<E> cand;
        cand.reserve(buffer + 1);
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t i = i0 + r;
          const scalar_t qn = q_norm[i];
          const scalar_t* t_row = tile_ptr + r * cols;
          scalar_t* row_dist = dist_ptr + i * k;
          int64_t* row_index = index_ptr + i * k;
          // The row's kept entries first; every index in them is < j0 <= the tile's.
          cand.assign(filled, E{});
          for (int64_t s = 0; s < filled; ++s) cand[s] = {row_dist[s], row_index[s]};
          bool have_thr = filled == k;
          scalar_t thr = have_thr ? worst[r].dist : scalar_t(0);
          for (int64_t c = 0; c < cols; ++c) {
            const scalar_t v = clamped(qn + t_row[c]);
            // Entries come in increasing index, after every kept one: a tie with the worst
            // kept entry loses on the index, so a strict compare on the distance is exact.
            if (have_thr && !(kLargest ? v > thr : v < thr)) continue;
            cand.push_back({v, j0 + c});
            if (static_cast<int64_t>(cand.size()) >= buffer) {
              // Compact to the best k; their worst becomes the (only rising) threshold.
              std::nth_element(cand.begin(), cand.begin() + (k - 1), cand.end(),
                               ranks_before<scalar_t, kLargest>);
              cand.resize(k);
              thr = cand[k - 1].dist;
              have_thr = true;
            }
          }
          const int64_t keep = std::min<int64_t>(k, static_cast<int64_t>(cand.size()));
          if (static_cast<int64_t>(cand.size()) > keep) {
            std::nth_element(cand.begin(), cand.begin() + (keep - 1), cand.end(),
                             ranks_before<scalar_t, kLargest>);
          }
          for (int64_t s = 0; s < keep; ++s) {
            row_dist[s] = cand[s].dist;
            row_index[s] = cand[s].index;
          }
          if (keep == k) {
            worst[r] = *std::max_element(cand.begin(), cand.begin() + keep,
                                         ranks_before<scalar_t, kLargest>);
          }
        }
      });
    }
  }

  // Exact distances of the chosen points, then each row sorted best first.
  at::parallel_for(0, m, 16, [&](int64_t r0, int64_t r1) {
    std::vector<E> row(k);
    for (int64_t i = r0; i < r1; ++i) {
      scalar_t* row_dist = dist_ptr + i * k;
      int64_t* row_index = index_ptr + i * k;
      for (int64_t s = 0; s < k; ++s) {
        const double exact = direct_sq_distance(q_ptr + i * d, p_ptr + row_index[s] * d, d);
        row[s] = {static_cast<scalar_t>(exact), row_index[s]};
      }
      std::sort(row.begin(), row.end(), ranks_before<scalar_t, kLargest>);
      for (int64_t s = 0; s < k; ++s) {
        row_dist[s] = row[s].dist;
        row_index[s] = row[s].index;
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> knn_extreme_cpu(const at::Tensor& Q, const at::Tensor& P,
                                                   int64_t k, bool largest) {
  check_knn_args(Q, P, k);
  const int64_t m = Q.size(0);

  at::Tensor out_dist = at::empty({m, k}, Q.options());
  at::Tensor out_index = at::empty({m, k}, Q.options().dtype(at::kLong));
  // The op has no autograd formula; detaching lets the internal out= GEMM run on inputs that
  // require grad.
  const at::Tensor Qc = Q.detach().contiguous();
  const at::Tensor Pc = P.detach().contiguous();
  AT_DISPATCH_FLOATING_TYPES(Q.scalar_type(), "knn_extreme_cpu", [&] {
    const at::Tensor q_norms = row_sq_norms<scalar_t>(Qc);
    const at::Tensor p_norms = row_sq_norms<scalar_t>(Pc);
    check_finite_rows(q_norms, "Q");
    check_finite_rows(p_norms, "P");
    if (m == 0 || k == 0) return;
    if (largest) {
      knn_select<scalar_t, true>(Qc, Pc, q_norms, p_norms, k, out_dist, out_index);
    } else {
      knn_select<scalar_t, false>(Qc, Pc, q_norms, p_norms, k, out_dist, out_index);
    }
  });
  return {out_dist, out_index};
}

}  // namespace
}  // namespace fastunlearn

TORCH_LIBRARY_IMPL(fastunlearn, CPU, m) {
  m.impl("knn_extreme", &fastunlearn::knn_extreme_cpu);
}
