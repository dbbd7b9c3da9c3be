// CUDA kernel of certified_woodbury_row_: the removed row's Woodbury column written into its
// slot with the factor's positivity check in one launch instead of ~19 operators (two dot
// products and a row of C^{-1} as batched products, the checks, four index copies).
// Semantics: fastunlearn/ops/reference.py::certified_woodbury_row_.
//
// Grid (column chunks of C^{-1}'s row, classes). Every block computes every class's S22
// (a warp per class; K (d + T) products, little next to the row of C^{-1}) for the check,
// then its class's part of the new row of C^{-1}: 64 columns, each a sum over the T rows
// split in four fixed parts added in order (the same results run to run), and its share of
// the U and G columns. A block reads only its own columns of C^{-1}, row t included, before
// it writes them. The device cannot raise: a slot out of range writes nothing and makes
// out[2] = 0 (the factor check fails, so the row is refused). No host synchronisation.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "certified_woodbury_common.h"
#include "cuda/utils.cuh"

namespace fastunlearn {
namespace {

using cuda::ceil_div;

constexpr int kWoodburyThreads = 256;
constexpr int kWoodburyCols = 64;
constexpr int kWoodburyParts = kWoodburyThreads / kWoodburyCols;

struct Strided {  // a read-only [K, m, 1] tensor: element (k, i) at p[k * sk + i * si]
  const double* p;
  int64_t sk, si;
  __device__ __forceinline__ double at(int64_t k, int64_t i) const { return p[k * sk + i * si]; }
};

__global__ void woodbury_row_kernel(int64_t K, int64_t d, int64_t T,
                                    const int64_t* __restrict__ slot, Strided u, Strided g,
                                    Strided l, double* __restrict__ ub, double* __restrict__ gb,
                                    double* __restrict__ cb, double* __restrict__ ci,
                                    double* __restrict__ out) {
  __shared__ int bad;
  __shared__ double l22;
  __shared__ double partial[kWoodburyParts][kWoodburyCols];
  const int64_t t = *slot;
  const bool first = blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0;
  if (!(0 <= t && t < T)) {
    if (first) out[2] = 0.0;
    return;
  }
  const int64_t k = blockIdx.y;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  if (threadIdx.x == 0) bad = 0;
  __syncthreads();
  for (int64_t c = warp; c < K; c += warps) {
    double ug = 0.0, ll = 0.0;
    for (int64_t j = lane; j < d; j += 32) ug += u.at(c, j) * g.at(c, j);
    for (int64_t q = lane; q < T; q += 32) ll += l.at(c, q) * l.at(c, q);
    ug = cuda::warp_sum(ug);
    ll = cuda::warp_sum(ll);
    if (lane == 0) {
      const double s22 = 1.0 - ug - ll;
      if (!(s22 > 0.0)) bad = 1;
      if (c == k) {
        const double tiny = std::numeric_limits<double>::min();
        l22 = sqrt(s22 != s22 ? s22 : (s22 < tiny ? tiny : s22));
      }
    }
  }
  __syncthreads();
  if (first) out[2] = bad ? 0.0 : 1.0;
  // this block's columns of the new row of C^{-1}: (e_t - L21^T C^{-1}) / L22
  const int col = threadIdx.x % kWoodburyCols, part = threadIdx.x / kWoodburyCols;
  const int64_t c = int64_t(blockIdx.x) * kWoodburyCols + col;
  const double* inv_k = ci + k * T * T;
  double dot = 0.0;
  if (c < T) {
    for (int64_t q = part; q < T; q += kWoodburyParts) dot += l.at(k, q) * inv_k[q * T + c];
  }
  partial[part][col] = dot;
  __syncthreads();
  if (part == 0 && c < T) {
    double sum = partial[0][col];
    for (int p = 1; p < kWoodburyParts; ++p) sum += partial[p][col];
    const double onehot = c == t ? 1.0 : 0.0;
    ci[k * T * T + t * T + c] = (onehot - sum) / l22;
    cb[k * T * T + t * T + c] = l.at(k, c) + l22 * onehot;
  }
  for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < d;
       j += int64_t(gridDim.x) * blockDim.x) {
    ub[(k * d + j) * T + t] = u.at(k, j);
    gb[(k * d + j) * T + t] = g.at(k, j);
  }
}

void certified_woodbury_row_cuda(at::Tensor& U_buf, at::Tensor& G_buf, at::Tensor& C_buf,
                                 at::Tensor& C_inv, at::Tensor& out, const at::Tensor& U_new,
                                 const at::Tensor& G_new, const at::Tensor& L21,
                                 const at::Tensor& slot) {
  const WoodburySizes s =
      check_woodbury_args(U_buf, G_buf, C_buf, C_inv, out, U_new, G_new, L21, slot);
  const c10::cuda::CUDAGuard guard(U_buf.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (s.K == 0 || s.T == 0) {  // all() of no classes; no slot to write
    out.narrow(0, 2, 1).fill_(s.K == 0 ? 1.0 : 0.0);
    return;
  }
  TORCH_CHECK_VALUE(s.K <= 65535, "certified_woodbury_row_: at most 65535 classes, got ", s.K);
  const at::Tensor slot_c = slot.reshape({-1}).contiguous();
  const Strided u{U_new.const_data_ptr<double>(), U_new.stride(0), U_new.stride(1)};
  const Strided g{G_new.const_data_ptr<double>(), G_new.stride(0), G_new.stride(1)};
  const Strided l{L21.const_data_ptr<double>(), L21.stride(0), L21.stride(1)};
  const dim3 grid(static_cast<unsigned>(ceil_div(s.T, kWoodburyCols)),
                  static_cast<unsigned>(s.K));
  woodbury_row_kernel<<<grid, kWoodburyThreads, 0, stream>>>(
      s.K, s.d, s.T, slot_c.const_data_ptr<int64_t>(), u, g, l, U_buf.data_ptr<double>(),
      G_buf.data_ptr<double>(), C_buf.data_ptr<double>(), C_inv.data_ptr<double>(),
      out.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(fastunlearn, CUDA, m) {
  m.impl("certified_woodbury_row_", &certified_woodbury_row_cuda);
}

}  // namespace fastunlearn
