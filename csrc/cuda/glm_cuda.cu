// CUDA kernels of the GLM-curvature family: glm_hvp, glm_hessian, glm_cg.
// Semantics: fastunlearn/ops/reference.py.
//
// glm_hvp is two cuBLAS GEMMs through at::mm_out / addmm_ on the current stream (Z = X V, then
// out += X^T Z), a small elementwise kernel doing Z *= S between them and another
// initialising out = lam V. Rows are processed in chunks of at most 1 GB (a single chunk at
// MNIST scale). A first version used 16 MB chunks so the second GEMM would read each chunk
// from L2; on an H200 (2026-11-28, n = 60000, d = 784, float32) that ran 0.40-0.72 ms
// against 0.10-0.33 ms for torch's two full GEMMs: the 12 chunks' 36 launches and skinny
// GEMMs cost more than the second read of X saves. One chunk is torch's expression plus
// two small kernels (not yet re-measured on a GPU).
//
// FASTUNLEARN_GLM_HVP=onepass (opt-in until a GPU has timed it against the two GEMMs; "gemm",
// the default, keeps them; other values raise) runs
// float64 calls with d <= 832 and K <= 16 on an 8.0, 9.0 or 10.0 card through a one-pass kernel:
// each row tile of X is read from global memory once and used for both products, on float64
// tensor cores (csrc/glm_hvp_onepass.h, where the steps are; the host runs the same steps in
// the C++ unit tests). Other calls take the GEMMs.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_pipeline.h>
#include <mma.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <utility>

#include "cuda/utils.cuh"
#include "glm_cg_driver.h"
#include "glm_hvp_onepass.h"

// float64 tensor-core fragments: sm_80 and newer (and the host pass, which only declares)
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define FU_HAS_DMMA 1
#else
#define FU_HAS_DMMA 0
#endif

namespace fastunlearn {
namespace {

constexpr int64_t kHvpChunkBytes = int64_t(1) << 30;
constexpr int64_t kHessianChunkBytes = 16 << 20;
// Host convergence checks of glm_cg: one stream synchronisation per 16 iterations.
constexpr int64_t kCheckEvery = 16;

// z[e] *= s[e] (same shape, contiguous): Z *= S_c between the two GEMMs.
template <typename T>
__global__ void multiply_in_place_kernel(int64_t numel, T* __restrict__ z,
                                         const T* __restrict__ s) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < numel;
       e += int64_t(gridDim.x) * blockDim.x) {
    z[e] *= s[e];
  }
}

// out[e] = lam * v[e].
template <typename T>
__global__ void scale_kernel(int64_t numel, T* __restrict__ out, const T* __restrict__ v,
                             T lam) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < numel;
       e += int64_t(gridDim.x) * blockDim.x) {
    out[e] = lam * v[e];
  }
}

// ---- the one-pass kernel (FASTUNLEARN_GLM_HVP=onepass) -----------------------------------

namespace op1 = fastunlearn::onepass;

#if FU_HAS_DMMA
// The 8x8x4 float64 fragments the warp steps of glm_hvp_onepass.h use.
struct DeviceMma {
  using ARow = nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 8, 8, 4, double,
                                      nvcuda::wmma::row_major>;
  using ACol = nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 8, 8, 4, double,
                                      nvcuda::wmma::col_major>;
  using B = nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 8, 8, 4, double,
                                   nvcuda::wmma::row_major>;
  using C = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 8, 8, 4, double>;
  static __device__ __forceinline__ void zero(C& c) { nvcuda::wmma::fill_fragment(c, 0.0); }
  static __device__ __forceinline__ void load_a_row(ARow& f, const double* p, int ldm) {
    nvcuda::wmma::load_matrix_sync(f, p, ldm);
  }
  static __device__ __forceinline__ void load_a_col(ACol& f, const double* p, int ldm) {
    nvcuda::wmma::load_matrix_sync(f, p, ldm);
  }
  static __device__ __forceinline__ void load_b(B& f, const double* p, int ldm) {
    nvcuda::wmma::load_matrix_sync(f, p, ldm);
  }
  template <typename A>
  static __device__ __forceinline__ void mma(C& d, const A& a, const B& b, const C& c) {
    nvcuda::wmma::mma_sync(d, a, b, c);
  }
  static __device__ __forceinline__ void store(double* p, const C& c, int ldm) {
    nvcuda::wmma::store_matrix_sync(p, c, ldm, nvcuda::wmma::mem_row_major);
  }
};
#endif

// One block per SM walks its share of the row tiles; see glm_hvp_onepass.h for the steps.
template <int Halves>
__global__ void __launch_bounds__(op1::kThreads, 1)
    glm_hvp_onepass_kernel(op1::Params p, op1::SharedLayout layout) {
#if FU_HAS_DMMA
  extern __shared__ __align__(128) unsigned char onepass_shared[];
  double* smem = reinterpret_cast<double*>(onepass_shared);
  const int t = threadIdx.x, w = t / 32;
  op1::stage_v(p, smem, layout, t);
  __syncthreads();
  DeviceMma::B v[op1::kMaxKSteps][Halves];
  op1::load_v<DeviceMma, Halves>(p, smem, layout, w, v);
  __syncthreads();  // the staged V's space becomes the tile buffers
  op1::zero_padding(p, smem, layout, t);
  DeviceMma::C out[op1::kMaxMTiles][Halves];
#pragma unroll
  for (int m = 0; m < op1::kMaxMTiles; ++m) {
#pragma unroll
    for (int h = 0; h < Halves; ++h) DeviceMma::zero(out[m][h]);
  }
  const auto copy = [](double* dst, const double* src, int count) {
    if (count == 2) {
      __pipeline_memcpy_async(dst, src, 2 * sizeof(double));
    } else {
      __pipeline_memcpy_async(dst, src, sizeof(double));
    }
  };
  int buffer = 0;
  int64_t tile = blockIdx.x;
  if (tile < p.tiles) op1::issue_tile(p, smem, layout, buffer, tile, t, copy);
  __pipeline_commit();
  for (; tile < p.tiles; tile += gridDim.x, buffer ^= 1) {
    const int64_t next = tile + gridDim.x;
    if (next < p.tiles) op1::issue_tile(p, smem, layout, buffer ^ 1, next, t, copy);
    __pipeline_commit();
    __pipeline_wait_prior(1);  // this tile's copies (the next tile's may still be in flight)
    __syncthreads();
    op1::first_product<DeviceMma, Halves>(p, smem, layout, buffer, w, v);
    __syncthreads();
    op1::finish_rows(p, smem, layout, buffer, tile, t);
    __syncthreads();
    op1::second_product<DeviceMma, Halves>(p, smem, layout, buffer, w, out);
    __syncthreads();  // the buffer is refilled by the next iteration's copies
  }
  op1::store_partial<DeviceMma, Halves>(p, blockIdx.x, w, out);
#else
  // compiled for a card without float64 fragments: use_onepass checks the loaded image and
  // never launches this, so getting here is a bug (fail loudly rather than leave out unset)
  __trap();
#endif
}

__global__ void __launch_bounds__(op1::kThreads)
    glm_hvp_onepass_reduce_kernel(const double* partial, int64_t blocks, int width, int d,
                                  int K, const double* V, double* out, double lam) {
  __shared__ double lane_sums[op1::kThreads];
  op1::reduce_lanes(partial, blocks, width, d, K, blockIdx.x, threadIdx.x, lane_sums);
  __syncthreads();
  op1::finish_reduction(V, out, lam, d, K, blockIdx.x, threadIdx.x, lane_sums);
}

// FASTUNLEARN_GLM_HVP: unset, empty or "gemm" (the two GEMMs), or "onepass"; anything else
// raises (a misspelt value would otherwise silently keep the GEMMs).
bool onepass_requested() {
  const char* mode = std::getenv("FASTUNLEARN_GLM_HVP");
  if (mode == nullptr || mode[0] == '\0' || std::strcmp(mode, "gemm") == 0) return false;
  TORCH_CHECK_VALUE(std::strcmp(mode, "onepass") == 0,
                    "environment variable FASTUNLEARN_GLM_HVP must be 'gemm' or 'onepass', got '",
                    mode, "'");
  return true;
}

// Whether the kernel's code loaded for the current device was compiled for sm_80 or newer
// (float64 fragments). An image built from older PTX (say TORCH_CUDA_ARCH_LIST="7.5+PTX" on
// an A100) would run the kernel's empty body; checked once per device.
bool onepass_image_has_fragments() {
  static std::mutex mutex;
  static std::map<int, bool> known;
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  const std::lock_guard<std::mutex> lock(mutex);
  const auto found = known.find(device);
  if (found != known.end()) return found->second;
  bool ok = true;
  for (const void* kernel : {reinterpret_cast<const void*>(glm_hvp_onepass_kernel<1>),
                             reinterpret_cast<const void*>(glm_hvp_onepass_kernel<2>)}) {
    cudaFuncAttributes attributes{};
    C10_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
    ok = ok && attributes.ptxVersion >= 80 && attributes.binaryVersion >= 80;
  }
  known.emplace(device, ok);
  return ok;
}

// Whether this call runs the one-pass kernel: asked for, float64, a shape it takes, a card
// with full-rate float64 tensor cores (the data-centre parts: compute capability 8.0 (A100,
// A30), 9.0 (H100, H200), 10.0 (B200); the others run float64 at a small fraction of that
// rate, where the GEMMs are the better choice) and room for its shared memory, and a loaded
// image compiled for it.
bool use_onepass(const at::Tensor& X, int64_t K) {
  if (!onepass_requested() || X.scalar_type() != at::kDouble) return false;
  if (!op1::fits(X.size(0), X.size(1), K)) return false;
  const cudaDeviceProp* props = at::cuda::getCurrentDeviceProperties();
  if (props->minor != 0 || props->major < 8 || props->major > 10) return false;
  const op1::Params p = op1::make_params(X.size(0), static_cast<int>(X.size(1)),
                                         static_cast<int>(K));
  if (op1::shared_layout(p).total * sizeof(double) > props->sharedMemPerBlockOptin) return false;
  return onepass_image_has_fragments();
}

// Lets the kernel use all the shared memory a block may have, once per kernel and device (a
// host call outside any stream, so the first call may also be inside a graph capture).
template <typename Kernel>
void allow_shared_memory(Kernel kernel, int halves, const cudaDeviceProp* props) {
  static std::mutex mutex;
  static std::set<std::pair<int, int>> done;
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  const std::lock_guard<std::mutex> lock(mutex);
  if (done.count({device, halves}) == 0) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(props->sharedMemPerBlockOptin)));
    done.insert({device, halves});  // only once set: a failure is retried by the next call
  }
}

// X, S contiguous float64 with n > 0; margins [n, K] contiguous or undefined.
at::Tensor hvp_onepass(const at::Tensor& X, const at::Tensor& S, const at::Tensor& V,
                       double lam, const at::Tensor& margins, cudaStream_t stream) {
  const int64_t n = X.size(0), d = X.size(1), K = S.size(1);
  op1::Params p = op1::make_params(n, static_cast<int>(d), static_cast<int>(K),
                                   X.const_data_ptr<double>());
  const op1::SharedLayout layout = op1::shared_layout(p);
  const size_t shared_bytes = layout.total * sizeof(double);
  const cudaDeviceProp* props = at::cuda::getCurrentDeviceProperties();
  const int64_t blocks = std::min<int64_t>(p.tiles, props->multiProcessorCount);
  at::Tensor partial = at::empty({blocks, p.width, op1::kClasses}, V.options());
  p.X = X.const_data_ptr<double>();
  p.S = S.const_data_ptr<double>();
  p.V = V.const_data_ptr<double>();
  p.margins = margins.defined() ? margins.data_ptr<double>() : nullptr;
  p.partial = partial.data_ptr<double>();
  const auto launch = [&](auto kernel, int halves) {
    allow_shared_memory(kernel, halves, props);
    kernel<<<static_cast<unsigned>(blocks), op1::kThreads, shared_bytes, stream>>>(p, layout);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if (K <= 8) {
    launch(glm_hvp_onepass_kernel<1>, 1);
  } else {
    launch(glm_hvp_onepass_kernel<2>, 2);
  }
  at::Tensor out = at::empty({d, K}, V.options());
  const int64_t outputs = d * K;
  glm_hvp_onepass_reduce_kernel<<<static_cast<unsigned>(cuda::ceil_div(outputs,
                                                                        op1::kReduceOutputs)),
                                  op1::kThreads, 0, stream>>>(
      p.partial, blocks, p.width, p.d, p.K, V.const_data_ptr<double>(), out.data_ptr<double>(),
      lam);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// ---- the two-GEMM path ------------------------------------------------------------------

void multiply_into(at::Tensor& z, const at::Tensor& s, cudaStream_t stream) {
  const int64_t numel = z.numel();
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "glm_hvp_scale_rows", [&] {
    multiply_in_place_kernel<scalar_t><<<cuda::grid_for(numel), cuda::kThreads, 0, stream>>>(
        numel, z.data_ptr<scalar_t>(), s.const_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// glm_hvp, and X V into ``margins`` when it is defined ([n, K], contiguous, any contents).
// The first GEMM writes the margins in place and the scaling by S goes to a workspace (one
// elementwise kernel, no copy of the margins); with lam == 0 (the certified removal step's
// call) the second GEMM of the first chunk initialises ``out`` itself (beta = 0, so nothing
// is read from it), so no kernel writes lam V first. The one difference this makes: an
// infinite entry of V with lam == 0 can give +-inf where the oracle's 0 * inf gives NaN.
at::Tensor hvp_cuda(const at::Tensor& X_in, const at::Tensor& S_in, const at::Tensor& V_in,
                    double lam, const at::Tensor& margins, const char* op) {
  check_glm_design(X_in, S_in, op);
  check_dk(V_in, X_in, S_in, op, "V");
  check_lam(lam, op);
  const c10::cuda::CUDAGuard guard(X_in.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t n = X_in.size(0), K = S_in.size(1);
  const at::Tensor V = V_in.contiguous();
  if (V.numel() == 0) {  // d == 0 or K == 0: X V is an empty sum (or has no columns)
    if (margins.defined()) margins.zero_();
    return at::empty_like(V, at::MemoryFormat::Contiguous);
  }
  if (n > 0 && use_onepass(X_in, K)) {
    return hvp_onepass(X_in.contiguous(), S_in.contiguous(), V, lam, margins, stream);
  }
  at::Tensor out = at::empty_like(V, at::MemoryFormat::Contiguous);
  const bool gemm_initialises = lam == 0.0 && n > 0;
  if (!gemm_initialises) {
    AT_DISPATCH_FLOATING_TYPES(V.scalar_type(), "glm_hvp_init", [&] {
      scale_kernel<scalar_t><<<cuda::grid_for(V.numel()), cuda::kThreads, 0, stream>>>(
          V.numel(), out.data_ptr<scalar_t>(), V.const_data_ptr<scalar_t>(),
          static_cast<scalar_t>(lam));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  if (n == 0) return out;

  const at::Tensor X = X_in.contiguous(), S = S_in.contiguous();
  const int64_t rows = std::min(n, rows_per_chunk(X, kHvpChunkBytes));
  at::Tensor Z = at::empty({rows, K}, V.options());
  for (int64_t start = 0; start < n; start += rows) {
    const int64_t len = std::min(rows, n - start);
    const at::Tensor chunk = X.narrow(0, start, len);
    const at::Tensor s = S.narrow(0, start, len);
    at::Tensor z = Z.narrow(0, 0, len);
    if (margins.defined()) {
      at::Tensor m = margins.narrow(0, start, len);
      at::mm_out(m, chunk, V);
      at::mul_out(z, m, s);
    } else {
      at::mm_out(z, chunk, V);
      multiply_into(z, s, stream);
    }
    if (start == 0 && gemm_initialises) {
      at::mm_out(out, chunk.t(), z);
    } else {
      out.addmm_(chunk.t(), z);
    }
  }
  return out;
}

at::Tensor glm_hvp_cuda(const at::Tensor& X, const at::Tensor& S, const at::Tensor& V,
                        double lam) {
  return hvp_cuda(X, S, V, lam, at::Tensor(), "glm_hvp");
}

std::tuple<at::Tensor, at::Tensor> glm_hvp_margins_cuda(const at::Tensor& X,
                                                       const at::Tensor& S,
                                                       const at::Tensor& V, double lam) {
  check_glm_design(X, S, "glm_hvp_margins");
  const c10::cuda::CUDAGuard guard(X.device());
  at::Tensor margins = at::empty({X.size(0), S.size(1)}, X.options().dtype(V.scalar_type()));
  at::Tensor out = hvp_cuda(X, S, V, lam, margins, "glm_hvp_margins");
  return {out, margins};
}

at::Tensor glm_hessian_cuda(const at::Tensor& X, const at::Tensor& S, double lam) {
  const c10::cuda::CUDAGuard guard(X.device());
  return glm_hessian_chunked(X, S, lam, kHessianChunkBytes);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> glm_cg_cuda(
    const at::Tensor& X, const at::Tensor& S, const at::Tensor& B, double lam,
    const std::optional<at::Tensor>& x0, const std::optional<at::Tensor>& precond, double tol,
    int64_t maxiter) {
  const c10::cuda::CUDAGuard guard(X.device());
  return glm_cg_solve(X, S, B, lam, x0, precond, tol, maxiter, kCheckEvery, glm_hvp_cuda,
                      cg_update_cuda);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastunlearn, CUDA, m) {
  m.impl("glm_hvp", &glm_hvp_cuda);
  m.impl("glm_hvp_margins", &glm_hvp_margins_cuda);
  m.impl("glm_hessian", &glm_hessian_cuda);
  m.impl("glm_cg", &glm_cg_cuda);
}

}  // namespace fastunlearn
