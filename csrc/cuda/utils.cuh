// CUDA helpers: launch geometry, checks and compile-time switches.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

namespace fastunlearn::cuda {

constexpr int kThreads = 256;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A grid for a grid-stride loop over n items, capped so small inputs use few blocks and
// large ones do not launch millions of blocks.
inline dim3 grid_for(int64_t n, int threads = kThreads) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t blocks = std::min<int64_t>(std::max<int64_t>(ceil_div(n, threads), 1), sms * 8);
  return dim3(static_cast<unsigned>(blocks));
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over a block (blockDim.x a multiple of 32, at most 1024); the result is valid in
// thread 0. `shared` needs blockDim.x / 32 elements.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* shared) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  v = warp_sum(v);
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int warps = blockDim.x >> 5;
  v = (threadIdx.x < warps) ? shared[lane] : T(0);
  if (warp == 0) v = warp_sum(v);
  __syncthreads();
  return v;
}

}  // namespace fastunlearn::cuda

// Turns a runtime bool into a constexpr template argument.
#define FU_BOOL_SWITCH(COND, NAME, ...) \
  [&] {                                 \
    if (COND) {                         \
      constexpr bool NAME = true;       \
      return __VA_ARGS__();             \
    } else {                            \
      constexpr bool NAME = false;      \
      return __VA_ARGS__();             \
    }                                   \
  }()
