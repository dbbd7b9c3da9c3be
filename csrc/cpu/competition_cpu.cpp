// CPU kernel of fastunlearn::competition_epsilons: the per-example epsilon of the NeurIPS
// 2023 unlearning competition (algorithm in csrc/competition_common.h).
//
// Examples run in parallel (at::parallel_for, OpenMP). Per example: both groups are copied
// to float64 and sorted, merged into the pooled sorted values with the prefix count of
// retrained values, and the two threshold families are evaluated gap by gap. Cost per
// example: O(K log K) for the sort, O(K log T) for the single family and about
// (right edges) x (gaps hit per interval) for the interval family; memory O(K) per thread.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "checks.h"
#include "competition_common.h"

namespace fastunlearn {
namespace {

namespace comp = competition;

template <typename scalar_t>
void epsilons_cpu(const at::Tensor& r, const at::Tensor& u, const at::Tensor& grid,
                  const at::Tensor& offsets, const at::Tensor& table_r,
                  const at::Tensor& table_u, at::Tensor& out) {
  const int64_t S = r.size(0), N = r.size(1), M = u.size(1), K = N + M;
  const scalar_t* r_ptr = r.const_data_ptr<scalar_t>();
  const scalar_t* u_ptr = u.const_data_ptr<scalar_t>();
  const double* grid_ptr = grid.const_data_ptr<double>();
  const int64_t* off = offsets.const_data_ptr<int64_t>();
  const float* tr = table_r.const_data_ptr<float>();
  const float* tu = table_u.const_data_ptr<float>();
  double* out_ptr = out.mutable_data_ptr<double>();
  at::parallel_for(0, S, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> rs(N), us(M), vals(K);
    std::vector<int32_t> rcount(K + 1);
    for (int64_t s = begin; s < end; ++s) {
      for (int64_t i = 0; i < N; ++i) rs[i] = static_cast<double>(r_ptr[s * N + i]);
      for (int64_t i = 0; i < M; ++i) us[i] = static_cast<double>(u_ptr[s * M + i]);
      std::sort(rs.begin(), rs.end());
      std::sort(us.begin(), us.end());
      // merge (retrained first among equal values: the order within ties is irrelevant)
      int64_t i = 0, j = 0;
      rcount[0] = 0;
      for (int64_t g = 0; g < K; ++g) {
        const bool take_r = j == M || (i < N && rs[i] <= us[j]);
        vals[g] = take_r ? rs[i++] : us[j++];
        rcount[g + 1] = static_cast<int32_t>(i);
      }
      const comp::Plan plan =
          comp::make_plan(rs[0], rs[N - 1], comp::sorted_median(rs.data(), N), us[0],
                          us[M - 1], comp::sorted_median(us.data(), M));
      float best = -INFINITY;
      if (!plan.peaky) {
        const comp::Example ex{vals.data(), rcount.data(), K, N, M, tr, tu,
                               grid_ptr + off[s], off[s + 1] - off[s]};
        best = comp::single_family(ex, plan, 0, 1);
        // nothing beats inf (a perfect split): the interval family is skipped then
        if (best != INFINITY) best = comp::max_f(best, comp::double_family(ex, plan, 0, 1));
      }
      out_ptr[s] = comp::finish(plan, best);
    }
  });
}

at::Tensor competition_epsilons_cpu(const at::Tensor& retrained, const at::Tensor& unlearned,
                                    const at::Tensor& grid, const at::Tensor& grid_offsets,
                                    const at::Tensor& table_r, const at::Tensor& table_u) {
  comp::check_args(retrained, unlearned, grid, grid_offsets, table_r, table_u);
  const int64_t S = retrained.size(0);
  at::Tensor out = at::empty({S}, retrained.options().dtype(at::kDouble));
  if (S == 0) return out;
  const at::Tensor r = retrained.detach().contiguous();
  const at::Tensor u = unlearned.detach().contiguous();
  const at::Tensor g = grid.contiguous();
  const at::Tensor o = grid_offsets.contiguous();
  const at::Tensor tr = table_r.contiguous();
  const at::Tensor tu = table_u.contiguous();
  AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "competition_epsilons_cpu", [&] {
    epsilons_cpu<scalar_t>(r, u, g, o, tr, tu, out);
  });
  return out;
}

}  // namespace
}  // namespace fastunlearn

TORCH_LIBRARY_IMPL(fastunlearn, CPU, m) {
  m.impl("competition_epsilons", &fastunlearn::competition_epsilons_cpu);
}
