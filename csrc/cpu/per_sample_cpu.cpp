// CPU kernels of the per-sample-gradient ops: the two fused reductions of
// per_sample_common.h, parallel over rows (and over row segments when rows are few).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "per_sample_common.h"

namespace fastunlearn::per_sample {
namespace {

// Rows shorter than this are summed by one thread; longer rows may be split when there
// are fewer rows than threads.
constexpr int64_t kMinSegment = 16384;
// Work per parallel task, in elements, below which at::parallel_for stays serial.
constexpr int64_t kGrainElements = 32768;

template <typename scalar_t>
double dot_range(const scalar_t* x, const scalar_t* y, int64_t n) {
  double acc = 0.0;
  // float64 accumulation; `omp simd` lets the compiler vectorise the reassociated sum.
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += static_cast<double>(x[i]) * static_cast<double>(y[i]);
  return acc;
}

int64_t grain_for(int64_t elements_per_item) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, elements_per_item));
}

void rowwise_dot_cpu(const at::Tensor& X, const at::Tensor& Y, const at::Tensor& out) {
  const int64_t R = X.size(0), L = X.size(1);
  if (R == 0) return;
  const int64_t segments = row_segments(R, L, 2 * at::get_num_threads(), kMinSegment);
  const int64_t seg_len = ceil_div(L, segments);
  at::Tensor partial;
  if (segments > 1) partial = at::empty({R, segments}, X.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "rowwise_dot_cpu", [&] {
    const scalar_t* x = X.const_data_ptr<scalar_t>();
    const scalar_t* y = Y.const_data_ptr<scalar_t>();
    if (segments == 1) {
      scalar_t* o = out.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, R, grain_for(L), [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          o[r] = static_cast<scalar_t>(dot_range(x + r * L, y + r * L, L));
        }
      });
      return;
    }
    double* p = partial.mutable_data_ptr<double>();
    at::parallel_for(0, R * segments, grain_for(seg_len), [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t r = item / segments;
        const int64_t first = (item % segments) * seg_len;
        const int64_t n = std::max<int64_t>(0, std::min(seg_len, L - first));
        p[item] = dot_range(x + r * L + first, y + r * L + first, n);
      }
    });
  });
  if (segments > 1) out.copy_(partial.sum(1));
}

void ghost_sq_norm_cpu(const at::Tensor& A, const at::Tensor& G, bool bias,
                       const at::Tensor& out) {
  const int64_t B = A.size(0), in = A.size(1), n_out = G.size(1);
  if (B == 0) return;
  const double bias_term = bias ? 1.0 : 0.0;
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "ghost_sq_norm_cpu", [&] {
    const scalar_t* a = A.const_data_ptr<scalar_t>();
    const scalar_t* g = G.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B, grain_for(in + n_out), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const double a_sq = dot_range(a + b * in, a + b * in, in);
        const double g_sq = dot_range(g + b * n_out, g + b * n_out, n_out);
        o[b] = static_cast<scalar_t>((a_sq + bias_term) * g_sq);
      }
    });
  });
}

constexpr Kernels kCpuKernels{&rowwise_dot_cpu, &ghost_sq_norm_cpu};

at::Tensor per_sample_grad_cpu(const at::Tensor& A, const at::Tensor& G) {
  return per_sample_grad(A, G);
}

at::Tensor per_sample_sq_norm_cpu(const at::Tensor& A, const at::Tensor& G, bool bias) {
  return per_sample_sq_norm(A, G, bias, kCpuKernels);
}

at::Tensor per_sample_dot_cpu(const at::Tensor& A, const at::Tensor& G, const at::Tensor& W,
                              const c10::optional<at::Tensor>& bias) {
  return per_sample_dot(A, G, W, bias, kCpuKernels);
}

at::Tensor per_sample_weighted_sum_cpu(const at::Tensor& A, const at::Tensor& G,
                                       const at::Tensor& w) {
  return per_sample_weighted_sum(A, G, w);
}

}  // namespace
}  // namespace fastunlearn::per_sample

TORCH_LIBRARY_IMPL(fastunlearn, CPU, m) {
  using namespace fastunlearn::per_sample;
  m.impl("per_sample_grad", &per_sample_grad_cpu);
  m.impl("per_sample_sq_norm", &per_sample_sq_norm_cpu);
  m.impl("per_sample_dot", &per_sample_dot_cpu);
  m.impl("per_sample_weighted_sum", &per_sample_weighted_sum_cpu);
}
