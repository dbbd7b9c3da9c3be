// CUDA kernel of fastunlearn::knn_extreme: the k farthest (largest) or nearest rows of P for
// every row of Q, by squared Euclidean distance, without the m x n distance matrix.
//
// Algorithm. Q is cut into blocks of rows and P into chunks so that one distance tile is a
// few MB. Each tile is one cuBLAS GEMM on the current stream, ||p||^2 - 2 q.p (at::addmm_out);
// ||q||^2 is added and the result clamped at 0 where the tile is read. A running top-k per
// query row lives in the output tensors and is merged with every tile:
//  * k <= 64: one warp per query row keeps its top-k sorted best first in registers (slot s in
//    lane s % 32, two slots per lane when k > 32). The warp reads the tile row 32 entries at a
//    time, a ballot finds the entries that beat the current k-th, and each is inserted with
//    warp shuffles. On random data insertions become rare, so the pass is one coalesced read.
//  * k > 64: torch.topk on the tile, then topk again over (running top-k, tile top-k).
// The loop never synchronises with the host.
//
// Precision and ties (see csrc/cpu/knn_cpu.cpp for the same scheme on the CPU). The expansion
// only selects candidates; the returned distances are recomputed directly as sum (q - p)^2
// with a float64 accumulator, and rows are sorted best first by (distance, index). Selection
// compares (computed distance, index), except that torch.topk (k > 64) breaks exact ties at
// the k-th place arbitrarily.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>

#include "checks.h"
#include "knn_common.h"
#include "utils.cuh"

namespace fastunlearn {
namespace {

using cuda::kThreads;

constexpr const char* kOp = "knn_extreme";
constexpr unsigned kFullMask = 0xffffffffu;
// Elements of one distance tile (16 MB in float32) and the largest query block.
constexpr int64_t kTileElements = int64_t(1) << 22;
constexpr int64_t kMaxQueryBlock = 2048;
constexpr int64_t kMaxWarpK = 64;
constexpr int kWarpsPerBlock = kThreads / 32;
// Tile entries each lane loads before processing them (memory-level parallelism).
constexpr int kUnroll = 4;

// Strict "(da, ia) ranks before (db, ib)": larger (or smaller) distance, then smaller index.
template <bool kLargest, typename scalar_t>
__device__ __forceinline__ bool ranks_before(scalar_t da, int64_t ia, scalar_t db, int64_t ib) {
  if (da != db) return kLargest ? da > db : da < db;
  return ia < ib;
}

// Squared row norms in the input dtype; one warp per row, fixed summation order.
template <typename scalar_t>
__global__ void row_sq_norms_kernel(const scalar_t* __restrict__ x, int64_t rows, int64_t d,
                                    scalar_t* __restrict__ out) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
       r < rows; r += warps) {
    const scalar_t* row = x + r * d;
    scalar_t acc = 0;
    for (int64_t t = lane; t < d; t += 32) acc += row[t] * row[t];
    acc = cuda::warp_sum(acc);
    if (lane == 0) out[r] = acc;
  }
}

// Merges one tile [rows, cols] (holding ||p||^2 - 2 q.p) into the running top-k of its rows.
// state_dist/state_index point at the block's first row of the [m, k] outputs; they hold k
// sorted entries per row, padded with sentinels that every real entry beats.
template <typename scalar_t, bool kLargest, bool kTwoSlots>
__global__ void warp_select_kernel(const scalar_t* __restrict__ tile, int64_t rows, int64_t cols,
                                   const scalar_t* __restrict__ q_norm, int64_t col0, int k,
                                   scalar_t* __restrict__ state_dist,
                                   int64_t* __restrict__ state_index) {
  const int lane = threadIdx.x & 31;
  const int kth_lane = (k - 1) & 31;
  const bool kth_in_hi = kTwoSlots && (k - 1) >= 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
       r < rows; r += warps) {
    scalar_t* row_dist = state_dist + r * k;
    int64_t* row_index = state_index + r * k;
    // Slot lane in (lo_d, lo_i); slot 32 + lane in (hi_d, hi_i). Slots >= k stay sentinels
    // or hold entries shifted out of the top-k; they never count as kept.
    const scalar_t sentinel = kLargest ? -std::numeric_limits<scalar_t>::infinity()
                                       : std::numeric_limits<scalar_t>::infinity();
    const int64_t no_index = std::numeric_limits<int64_t>::max();
    scalar_t lo_d = lane < k ? row_dist[lane] : sentinel;
    int64_t lo_i = lane < k ? row_index[lane] : no_index;
    scalar_t hi_d = sentinel;
    int64_t hi_i = no_index;
    if (kTwoSlots && 32 + lane < k) {
      hi_d = row_dist[32 + lane];
      hi_i = row_index[32 + lane];
    }
    auto kth_dist = [&]() {
      return kth_in_hi ? __shfl_sync(kFullMask, hi_d, kth_lane)
                       : __shfl_sync(kFullMask, lo_d, kth_lane);
    };
    auto kth_index = [&]() {
      return kth_in_hi ? __shfl_sync(kFullMask, hi_i, kth_lane)
                       : __shfl_sync(kFullMask, lo_i, kth_lane);
    };
    scalar_t thr_d = kth_dist();
    int64_t thr_i = kth_index();

    const scalar_t qn = q_norm[r];
    const scalar_t* t_row = tile + r * cols;
    for (int64_t c0 = 0; c0 < cols; c0 += 32 * kUnroll) {
      scalar_t v[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t c = c0 + u * 32 + lane;
        // Clamp the expansion at 0 (NaN, impossible for finite inputs, would also map to 0).
        const scalar_t x = c < cols ? qn + t_row[c] : scalar_t(0);
        v[u] = x > scalar_t(0) ? x : scalar_t(0);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t c = c0 + u * 32 + lane;
        const bool valid = c < cols;
        const int64_t gi = col0 + c;
        unsigned todo =
            __ballot_sync(kFullMask, valid && ranks_before<kLargest>(v[u], gi, thr_d, thr_i));
        while (todo) {
          // Insert the lowest pending lane (smallest index) into the sorted list.
          const int src = __ffs(todo) - 1;
          const scalar_t nd = __shfl_sync(kFullMask, v[u], src);
          const int64_t ni = __shfl_sync(kFullMask, gi, src);
          int pos = __popc(__ballot_sync(
              kFullMask, lane < k && ranks_before<kLargest>(lo_d, lo_i, nd, ni)));
          if (kTwoSlots) {
            pos += __popc(__ballot_sync(
                kFullMask, 32 + lane < k && ranks_before<kLargest>(hi_d, hi_i, nd, ni)));
          }
          const scalar_t up_lo_d = __shfl_up_sync(kFullMask, lo_d, 1);
          const int64_t up_lo_i = __shfl_up_sync(kFullMask, lo_i, 1);
          if (kTwoSlots) {
            const scalar_t last_lo_d = __shfl_sync(kFullMask, lo_d, 31);
            const int64_t last_lo_i = __shfl_sync(kFullMask, lo_i, 31);
            const scalar_t up_hi_d = __shfl_up_sync(kFullMask, hi_d, 1);
            const int64_t up_hi_i = __shfl_up_sync(kFullMask, hi_i, 1);
            const int slot = 32 + lane;
            if (slot > pos) {
              hi_d = lane == 0 ? last_lo_d : up_hi_d;
              hi_i = lane == 0 ? last_lo_i : up_hi_i;
            } else if (slot == pos) {
              hi_d = nd;
              hi_i = ni;
            }
          }
          if (lane > pos) {
            lo_d = up_lo_d;
            lo_i = up_lo_i;
          } else if (lane == pos) {
            lo_d = nd;
            lo_i = ni;
          }
          thr_d = kth_dist();
          thr_i = kth_index();
          // Later lanes only; re-test them against the new k-th entry.
          todo &= ~((2u << src) - 1u);
          todo &= __ballot_sync(kFullMask,
                                valid && ranks_before<kLargest>(v[u], gi, thr_d, thr_i));
        }
      }
    }
    if (lane < k) {
      row_dist[lane] = lo_d;
      row_index[lane] = lo_i;
    }
    if (kTwoSlots && 32 + lane < k) {
      row_dist[32 + lane] = hi_d;
      row_index[32 + lane] = hi_i;
    }
  }
}

// Replaces each selected distance by sum (q - p)^2 computed directly with a float64
// accumulator (no cancellation; identical rows of P give identical values). One warp per
// (row, slot) pair, fixed summation order.
template <typename scalar_t>
__global__ void exact_distance_kernel(const scalar_t* __restrict__ Q,
                                      const scalar_t* __restrict__ P, int64_t m, int64_t d,
                                      int64_t k, const int64_t* __restrict__ index,
                                      scalar_t* __restrict__ dist) {
  const int lane = threadIdx.x & 31;
  const int64_t pairs = m * k;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t w = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
       w < pairs; w += warps) {
    const scalar_t* q = Q + (w / k) * d;
    const scalar_t* p = P + index[w] * d;
    double acc = 0;
    for (int64_t t = lane; t < d; t += 32) {
      const double diff = static_cast<double>(q[t]) - static_cast<double>(p[t]);
      acc += diff * diff;
    }
    acc = cuda::warp_sum(acc);
    if (lane == 0) dist[w] = static_cast<scalar_t>(acc);
  }
}

dim3 grid_for_warps(int64_t warps) { return cuda::grid_for(warps * 32, kThreads); }

template <typename scalar_t>
at::Tensor row_sq_norms(const at::Tensor& x) {
  const int64_t rows = x.size(0);
  at::Tensor out = at::empty({rows}, x.options());
  if (rows == 0) return out;
  row_sq_norms_kernel<scalar_t>
      <<<grid_for_warps(rows), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          x.const_data_ptr<scalar_t>(), rows, x.size(1), out.mutable_data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

void check_finite_rows(const at::Tensor& sq_norms, const char* name) {
  // One reduction over the squared row norms catches NaN, Inf and overflowing squares. This
  // is the op's only host synchronisation, before the tile loop.
  TORCH_CHECK_VALUE(at::isfinite(sq_norms).all().item<bool>(), kOp, ": argument '", name,
                    "' must be finite (it contains NaN or Inf, or its squared row norms overflow)");
}

template <typename scalar_t>
void knn_select(const at::Tensor& Q, const at::Tensor& P, const at::Tensor& q_norms,
                const at::Tensor& p_norms, int64_t k, bool largest, at::Tensor& out_dist,
                at::Tensor& out_index) {
  const int64_t m = Q.size(0), n = P.size(0);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t block = std::min(m, kMaxQueryBlock);
  const int64_t chunk = std::max<int64_t>(1, std::min(n, kTileElements / block));
  at::Tensor tile_buf = at::empty({block * chunk}, Q.options());
  const bool warp_path = k <= kMaxWarpK;
  if (warp_path) {
    out_dist.fill_(largest ? -std::numeric_limits<double>::infinity()
                           : std::numeric_limits<double>::infinity());
    out_index.fill_(std::numeric_limits<int64_t>::max());
  }

  for (int64_t i0 = 0; i0 < m; i0 += block) {
    const int64_t rows = std::min(block, m - i0);
    const at::Tensor q_block = Q.narrow(0, i0, rows);
    for (int64_t j0 = 0; j0 < n; j0 += chunk) {
      const int64_t cols = std::min(chunk, n - j0);
      at::Tensor tile = tile_buf.narrow(0, 0, rows * cols).view({rows, cols});
      at::addmm_out(tile, p_norms.narrow(0, j0, cols), q_block, P.narrow(0, j0, cols).t(),
                    /*beta=*/1, /*alpha=*/-2);
      if (warp_path) {
        FU_BOOL_SWITCH(largest, kLargest, [&] {
          FU_BOOL_SWITCH(k > 32, kTwoSlots, [&] {
            warp_select_kernel<scalar_t, kLargest, kTwoSlots>
                <<<grid_for_warps(rows), kThreads, 0, stream>>>(
                    tile.const_data_ptr<scalar_t>(), rows, cols,
                    q_norms.const_data_ptr<scalar_t>() + i0, j0, static_cast<int>(k),
                    out_dist.mutable_data_ptr<scalar_t>() + i0 * k,
                    out_index.mutable_data_ptr<int64_t>() + i0 * k);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          });
        });
      } else {
        // k > 64: topk of the tile, then of (kept entries, tile candidates).
        tile.add_(q_norms.narrow(0, i0, rows).unsqueeze(1)).clamp_min_(0);
        auto [tile_dist, tile_index] =
            at::topk(tile, std::min(k, cols), 1, largest, /*sorted=*/false);
        tile_index.add_(j0);
        const int64_t filled = std::min(k, j0);
        at::Tensor block_dist = out_dist.narrow(0, i0, rows);
        at::Tensor block_index = out_index.narrow(0, i0, rows);
        const at::Tensor all_dist = at::cat({block_dist.narrow(1, 0, filled), tile_dist}, 1);
        const at::Tensor all_index = at::cat({block_index.narrow(1, 0, filled), tile_index}, 1);
        const int64_t keep = std::min(k, all_dist.size(1));
        auto [keep_dist, keep_pos] = at::topk(all_dist, keep, 1, largest, /*sorted=*/false);
        block_dist.narrow(1, 0, keep).copy_(keep_dist);
        block_index.narrow(1, 0, keep).copy_(all_index.gather(1, keep_pos));
      }
    }
  }

  // Exact distances of the chosen points.
  exact_distance_kernel<scalar_t><<<grid_for_warps(m * k), kThreads, 0, stream>>>(
      Q.const_data_ptr<scalar_t>(), P.const_data_ptr<scalar_t>(), m, Q.size(1), k,
      out_index.const_data_ptr<int64_t>(), out_dist.mutable_data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> knn_extreme_cuda(const at::Tensor& Q, const at::Tensor& P,
                                                    int64_t k, bool largest) {
  check_knn_args(Q, P, k);
  const int64_t m = Q.size(0), n = P.size(0);
  const c10::cuda::CUDAGuard guard(Q.device());

  at::Tensor out_dist = at::empty({m, k}, Q.options());
  at::Tensor out_index = at::empty({m, k}, Q.options().dtype(at::kLong));
  // The op has no autograd formula; detaching lets the internal out= GEMM run on inputs that
  // require grad.
  const at::Tensor Qc = Q.detach().contiguous();
  const at::Tensor Pc = P.detach().contiguous();
  AT_DISPATCH_FLOATING_TYPES(Q.scalar_type(), "knn_extreme_cuda", [&] {
    const at::Tensor q_norms = row_sq_norms<scalar_t>(Qc);
    const at::Tensor p_norms = row_sq_norms<scalar_t>(Pc);
    check_finite_rows(q_norms, "Q");
    check_finite_rows(p_norms, "P");
    if (m == 0 || k == 0) return;
    knn_select<scalar_t>(Qc, Pc, q_norms, p_norms, k, largest, out_dist, out_index);
  });
  if (m == 0 || k == 0) return {out_dist, out_index};

  // Best first by (exact distance, index): order by index, then a stable sort on the key.
  const auto [by_index, perm] = at::sort(out_index, std::optional<bool>(false), /*dim=*/1);
  const at::Tensor dist = out_dist.gather(1, perm);
  const at::Tensor key = largest ? dist.neg() : dist;
  const at::Tensor order = std::get<1>(at::sort(key, std::optional<bool>(true), /*dim=*/1));
  return {dist.gather(1, order), by_index.gather(1, order)};
}

}  // namespace
}  // namespace fastunlearn

TORCH_LIBRARY_IMPL(fastunlearn, CUDA, m) {
  m.impl("knn_extreme", &fastunlearn::knn_extreme_cuda);
}
