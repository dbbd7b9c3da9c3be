// CUDA kernel of cg_update_: one fused (preconditioned) CG step on the K columns of [d, K]
// tensors. Semantics: fastunlearn/ops/reference.py::cg_update_.
//
// Why several launches: a CG step needs two grid-wide reductions per column (p.Ap before
// alpha is known, then r.z before beta is known), and a kernel cannot wait for all of its
// own blocks. So one op call is a short sequence on the current stream:
//   memset scratch -> (a) pAp -> (b) x, r update + r.z, r.r -> (c) p update -> (d) finalise.
// Each reduction accumulates in the input dtype per thread, then per block, then with
// atomicAdd into a [3, K] scratch. Alpha, beta and the "does column k step" mask are
// recomputed on the device from the scratch in every kernel, so there is no host
// synchronisation at all (no .item(), no copy to the host).
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "cuda/utils.cuh"
#include "glm_cg_driver.h"

namespace fastunlearn {
namespace {

using cuda::ceil_div;
using cuda::kThreads;

// Threads form a (tx, ty) block: tx walks columns (coalesced along the row-major [d, K]
// layout), ty walks rows. Column k = tile * blockDim.x + tx is fixed per thread and tile.
struct Geometry {
  dim3 grid, block;
};

Geometry geometry_for(int64_t d, int64_t K) {
  int bx = 1;
  while (bx < K && bx < 32) bx <<= 1;
  const int by = kThreads / bx;
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t tiles = std::min<int64_t>(ceil_div(K, bx), 65535);
  const int64_t row_blocks =
      std::min<int64_t>(std::max<int64_t>(ceil_div(d, by), 1),
                        std::max<int64_t>(sms * 8 / tiles, 1));
  return {dim3(static_cast<unsigned>(row_blocks), static_cast<unsigned>(tiles)),
          dim3(static_cast<unsigned>(bx), static_cast<unsigned>(by))};
}

// Sum over threadIdx.y of the block (blockDim.y a power of two); valid in threads ty == 0.
template <typename T>
__device__ T column_sum(T v, T* buf) {
  const int at = threadIdx.y * blockDim.x + threadIdx.x;
  buf[at] = v;
  __syncthreads();
  for (int s = blockDim.y / 2; s > 0; s >>= 1) {
    if (threadIdx.y < s) buf[at] += buf[at + s * blockDim.x];
    __syncthreads();
  }
  const T out = buf[threadIdx.x];
  __syncthreads();
  return out;
}

// Column k takes a step: active, and p.Ap positive and finite (NaN fails both tests).
template <typename T>
__device__ __forceinline__ bool steps(bool active, T pAp) {
  return active && pAp > T(0) && pAp <= std::numeric_limits<T>::max();
}

template <typename T>
__device__ __forceinline__ T precondition(T r, const T* inv, int64_t inv_cols, int64_t i,
                                          int64_t k) {
  return inv == nullptr ? r : inv[i * inv_cols + (inv_cols == 1 ? 0 : k)] * r;
}

// (a) scratch[0, k] += p_k . Ap_k
template <typename T>
__global__ void pap_kernel(int64_t d, int64_t K, const T* __restrict__ p,
                           const T* __restrict__ Ap, const bool* __restrict__ active,
                           T* __restrict__ scratch) {
  __shared__ T buf[kThreads];
  for (int64_t tile = blockIdx.y; tile * blockDim.x < K; tile += gridDim.y) {
    const int64_t k = tile * blockDim.x + threadIdx.x;
    T acc = T(0);
    if (k < K && active[k]) {
      for (int64_t i = blockIdx.x * blockDim.y + threadIdx.y; i < d;
           i += int64_t(gridDim.x) * blockDim.y) {
        acc += p[i * K + k] * Ap[i * K + k];
      }
    }
    acc = column_sum(acc, buf);
    if (threadIdx.y == 0 && k < K && active[k]) atomicAdd(&scratch[k], acc);
  }
}

// (b) x += alpha p, r -= alpha Ap; scratch[1, k] += r.z, scratch[2, k] += r.r
template <typename T>
__global__ void update_xr_kernel(int64_t d, int64_t K, T* __restrict__ x, T* __restrict__ r,
                                 const T* __restrict__ p, const T* __restrict__ Ap,
                                 const T* __restrict__ inv, int64_t inv_cols,
                                 const T* __restrict__ rz, const bool* __restrict__ active,
                                 T* __restrict__ scratch) {
  __shared__ T buf[kThreads];
  for (int64_t tile = blockIdx.y; tile * blockDim.x < K; tile += gridDim.y) {
    const int64_t k = tile * blockDim.x + threadIdx.x;
    const bool go = k < K && steps(active[k], scratch[k]);
    T acc_rz = T(0), acc_rr = T(0);
    if (go) {
      const T alpha = rz[k] / scratch[k];
      for (int64_t i = blockIdx.x * blockDim.y + threadIdx.y; i < d;
           i += int64_t(gridDim.x) * blockDim.y) {
        const int64_t e = i * K + k;
        const T r_new = r[e] - alpha * Ap[e];
        x[e] += alpha * p[e];
        r[e] = r_new;
        acc_rz += r_new * precondition(r_new, inv, inv_cols, i, k);
        acc_rr += r_new * r_new;
      }
    }
    acc_rz = column_sum(acc_rz, buf);
    acc_rr = column_sum(acc_rr, buf);
    if (threadIdx.y == 0 && go) {
      atomicAdd(&scratch[K + k], acc_rz);
      atomicAdd(&scratch[2 * K + k], acc_rr);
    }
  }
}

// (c) p = z + beta p with beta = (new r.z) / (old r.z); rz still holds the old value here.
template <typename T>
__global__ void update_p_kernel(int64_t d, int64_t K, T* __restrict__ p,
                                const T* __restrict__ r, const T* __restrict__ inv,
                                int64_t inv_cols, const T* __restrict__ rz,
                                const bool* __restrict__ active, const T* __restrict__ scratch) {
  for (int64_t tile = blockIdx.y; tile * blockDim.x < K; tile += gridDim.y) {
    const int64_t k = tile * blockDim.x + threadIdx.x;
    if (k >= K || !steps(active[k], scratch[k])) continue;
    const T beta = rz[k] != T(0) ? scratch[K + k] / rz[k] : T(0);
    for (int64_t i = blockIdx.x * blockDim.y + threadIdx.y; i < d;
         i += int64_t(gridDim.x) * blockDim.y) {
      const int64_t e = i * K + k;
      p[e] = precondition(r[e], inv, inv_cols, i, k) + beta * p[e];
    }
  }
}

// (d) one block: rz, rr, iterations and active of every column.
template <typename T>
__global__ void finalise_kernel(int64_t K, T* __restrict__ rz, T* __restrict__ rr,
                                bool* __restrict__ active, int64_t* __restrict__ iterations,
                                const T* __restrict__ threshold_sq,
                                const T* __restrict__ scratch) {
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    if (steps(active[k], scratch[k])) {
      rz[k] = scratch[K + k];
      rr[k] = scratch[2 * K + k];
      iterations[k] += 1;
      active[k] = rr[k] > threshold_sq[k];
    } else {
      active[k] = false;
    }
  }
}

}  // namespace

void cg_update_cuda(const at::Tensor& x, const at::Tensor& r, const at::Tensor& p,
                    const at::Tensor& Ap, const std::optional<at::Tensor>& inv_diag,
                    const at::Tensor& rz, const at::Tensor& rr, const at::Tensor& active,
                    const at::Tensor& iterations, const at::Tensor& threshold_sq) {
  check_cg_update_args(x, r, p, Ap, inv_diag, rz, rr, active, iterations, threshold_sq);
  for (const at::Tensor* t : {&x, &r, &p, &rz, &rr, &active, &iterations}) {
    at::assert_no_internal_overlap(*t);
  }
  const int64_t d = x.size(0), K = x.size(1);
  if (K == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  const at::Tensor xc = x.contiguous(), rc = r.contiguous(), pc = p.contiguous();
  const at::Tensor Apc = Ap.contiguous();
  const at::Tensor rzc = rz.contiguous(), rrc = rr.contiguous(), thc = threshold_sq.contiguous();
  const at::Tensor ac = active.contiguous(), itc = iterations.contiguous();
  at::Tensor invc;
  if (inv_diag.has_value()) invc = inv_diag->contiguous();
  // Rows: p.Ap, new r.z, new r.r.
  const at::Tensor scratch = at::zeros({3, K}, x.options());
  const Geometry g = geometry_for(d, K);
  const int64_t inv_cols = invc.defined() ? invc.size(1) : 0;

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cg_update_cuda", [&] {
    const scalar_t* inv = invc.defined() ? invc.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* s = scratch.data_ptr<scalar_t>();
    pap_kernel<scalar_t><<<g.grid, g.block, 0, stream>>>(
        d, K, pc.const_data_ptr<scalar_t>(), Apc.const_data_ptr<scalar_t>(),
        ac.const_data_ptr<bool>(), s);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    update_xr_kernel<scalar_t><<<g.grid, g.block, 0, stream>>>(
        d, K, xc.data_ptr<scalar_t>(), rc.data_ptr<scalar_t>(), pc.const_data_ptr<scalar_t>(),
        Apc.const_data_ptr<scalar_t>(), inv, inv_cols, rzc.const_data_ptr<scalar_t>(),
        ac.const_data_ptr<bool>(), s);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    update_p_kernel<scalar_t><<<g.grid, g.block, 0, stream>>>(
        d, K, pc.data_ptr<scalar_t>(), rc.const_data_ptr<scalar_t>(), inv, inv_cols,
        rzc.const_data_ptr<scalar_t>(), ac.const_data_ptr<bool>(), s);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    finalise_kernel<scalar_t><<<1, kThreads, 0, stream>>>(
        K, rzc.data_ptr<scalar_t>(), rrc.data_ptr<scalar_t>(), ac.data_ptr<bool>(),
        itc.data_ptr<int64_t>(), thc.const_data_ptr<scalar_t>(), s);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });

  write_back(x, xc);
  write_back(r, rc);
  write_back(p, pc);
  write_back(rz, rzc);
  write_back(rr, rrc);
  write_back(active, ac);
  write_back(iterations, itc);
}

TORCH_LIBRARY_IMPL(fastunlearn, CUDA, m) { m.impl("cg_update_", &cg_update_cuda); }

}  // namespace fastunlearn
