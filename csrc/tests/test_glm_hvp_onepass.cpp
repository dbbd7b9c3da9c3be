// Runs the one-pass glm_hvp kernel's steps (csrc/glm_hvp_onepass.h) on the host, the way the
// CUDA kernel chains them: every thread step for all threads, then every warp step for all
// warps, between the kernel's barriers, block after block; then the final reduction. Shared
// memory and the partials start as NaN, so a step that reads what no step wrote shows up in
// the result. Compared with the float64 formula X^T (S * (X V)) + lam V and the margins X V.
#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <vector>

#include "glm_hvp_onepass.h"

namespace op1 = fastunlearn::onepass;

namespace {

using Mma = op1::HostMma;

struct WarpState {
  template <int Halves>
  struct Of {
    Mma::B v[op1::kMaxKSteps][Halves];
    Mma::C out[op1::kMaxMTiles][Halves];
  };
};

// The kernel's grid (blocks) and the reduction kernel's grid, run on the host.
template <int Halves>
void emulate(const at::Tensor& X, const at::Tensor& S, const at::Tensor& V, double lam,
             int64_t blocks, at::Tensor& out, at::Tensor& margins) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const int64_t n = X.size(0);
  const int d = static_cast<int>(X.size(1)), K = static_cast<int>(S.size(1));
  op1::Params p = op1::make_params(n, d, K, X.const_data_ptr<double>());
  const op1::SharedLayout layout = op1::shared_layout(p);
  at::Tensor partial = at::full({blocks, p.width, op1::kClasses}, nan, X.options());
  margins = at::full({n, K}, nan, X.options());
  p.X = X.const_data_ptr<double>();
  p.S = S.const_data_ptr<double>();
  p.V = V.const_data_ptr<double>();
  p.margins = margins.data_ptr<double>();
  p.partial = partial.data_ptr<double>();
  const auto copy = [](double* dst, const double* src, int count) {
    for (int i = 0; i < count; ++i) dst[i] = src[i];
  };
  std::vector<double> smem(layout.total);
  auto warps = std::make_unique<typename WarpState::Of<Halves>[]>(op1::kWarps);
  for (int64_t block = 0; block < blocks; ++block) {
    std::fill(smem.begin(), smem.end(), nan);
    for (int t = 0; t < op1::kThreads; ++t) op1::stage_v(p, smem.data(), layout, t);
    for (int w = 0; w < op1::kWarps; ++w) {
      op1::load_v<Mma, Halves>(p, smem.data(), layout, w, warps[w].v);
      for (auto& row : warps[w].out)
        for (auto& c : row) Mma::zero(c);
    }
    // after the barrier the staged V's space is the tile buffers: whatever the steps below
    // read without writing first must not be the staged V
    std::fill(smem.begin(), smem.end(), nan);
    for (int t = 0; t < op1::kThreads; ++t) op1::zero_padding(p, smem.data(), layout, t);
    int buffer = 0;
    int64_t tile = block;
    if (tile < p.tiles) {
      for (int t = 0; t < op1::kThreads; ++t)
        op1::issue_tile(p, smem.data(), layout, buffer, tile, t, copy);
    }
    for (; tile < p.tiles; tile += blocks, buffer ^= 1) {
      const int64_t next = tile + blocks;
      if (next < p.tiles) {
        for (int t = 0; t < op1::kThreads; ++t)
          op1::issue_tile(p, smem.data(), layout, buffer ^ 1, next, t, copy);
      }
      for (int w = 0; w < op1::kWarps; ++w)
        op1::first_product<Mma, Halves>(p, smem.data(), layout, buffer, w, warps[w].v);
      for (int t = 0; t < op1::kThreads; ++t)
        op1::finish_rows(p, smem.data(), layout, buffer, tile, t);
      for (int w = 0; w < op1::kWarps; ++w)
        op1::second_product<Mma, Halves>(p, smem.data(), layout, buffer, w, warps[w].out);
    }
    for (int w = 0; w < op1::kWarps; ++w) op1::store_partial<Mma, Halves>(p, block, w, warps[w].out);
  }
  out = at::full({d, K}, nan, X.options());
  const int64_t reduce_blocks = (int64_t(d) * K + op1::kReduceOutputs - 1) / op1::kReduceOutputs;
  std::vector<double> lane_sums(op1::kThreads);
  for (int64_t block = 0; block < reduce_blocks; ++block) {
    std::fill(lane_sums.begin(), lane_sums.end(), nan);
    for (int t = 0; t < op1::kThreads; ++t) {
      op1::reduce_lanes(partial.const_data_ptr<double>(), blocks, p.width, d, K, block, t,
                        lane_sums.data());
    }
    for (int t = 0; t < op1::kThreads; ++t) {
      op1::finish_reduction(V.const_data_ptr<double>(), out.data_ptr<double>(), lam, d, K, block,
                            t, lane_sums.data());
    }
  }
}

}  // namespace

// Returns the number of failed cases (each printed).
int test_glm_hvp_onepass_emulated() {
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  struct Case {
    int64_t n;
    int d, K;
    int64_t blocks;
    bool unaligned;
  };
  // odd and even d (rows copied one or two doubles at a time), one tile, a short last tile,
  // more blocks than tiles would allow (the launcher caps blocks at the tile count), the
  // largest d, one and two halves of classes, an X that is not 16-byte aligned
  const Case cases[] = {
      {37, 17, 3, 2, false},  {300, 784, 10, 5, false}, {8, 1, 1, 1, false},
      {1000, 832, 16, 7, false}, {9, 100, 9, 2, false}, {64, 33, 8, 8, false},
      {5, 5, 16, 1, false},   {130, 65, 12, 3, false},  {17, 257, 2, 3, false},
      {200, 800, 7, 4, false}, {200, 784, 10, 3, true}, {8, 2, 1, 1, false},
      {2000, 784, 10, 132, false}};  // an H100's 132 blocks: the reduction's lanes wrap
  int failures = 0;
  for (const Case& c : cases) {
    // one double into a buffer: X contiguous but not 16-byte aligned, so rows are copied a
    // double at a time even where d is even
    const at::Tensor X =
        c.unaligned ? at::randn({c.n * c.d + 1}, f64).narrow(0, 1, c.n * c.d).view({c.n, c.d})
                    : at::randn({c.n, c.d}, f64);
    const at::Tensor S = at::rand({c.n, c.K}, f64);
    const at::Tensor V = at::randn({c.d, c.K}, f64);
    const double lam = 0.25;
    at::Tensor out, margins;
    const int64_t tiles = (c.n + op1::kTileRows - 1) / op1::kTileRows;
    const int64_t blocks = std::min(c.blocks, tiles);
    if (c.K <= 8) {
      emulate<1>(X, S, V, lam, blocks, out, margins);
    } else {
      emulate<2>(X, S, V, lam, blocks, out, margins);
    }
    const at::Tensor want_margins = X.mm(V);
    const at::Tensor want = X.t().mm(S * want_margins) + lam * V;
    const double err = (out - want).abs().max().item<double>();
    const double err_m = (margins - want_margins).abs().max().item<double>();
    const double scale = std::max(1.0, want.abs().max().item<double>());
    const double scale_m = std::max(1.0, want_margins.abs().max().item<double>());
    const bool ok = std::isfinite(err) && std::isfinite(err_m) && err <= 1e-12 * scale &&
                    err_m <= 1e-12 * scale_m;
    const bool paired = op1::make_params(c.n, c.d, c.K, X.const_data_ptr<double>()).paired;
    const bool paired_ok = paired == (c.d % 2 == 0 && !c.unaligned);
    std::printf("%s glm_hvp one-pass steps on the host, n=%lld d=%d K=%d blocks=%lld, rows "
                "copied %s (max error %.2e, margins %.2e)\n",
                ok && paired_ok ? "ok  " : "FAIL", static_cast<long long>(c.n), c.d, c.K,
                static_cast<long long>(blocks), paired ? "in pairs" : "one double at a time",
                err, err_m);
    failures += paired_ok ? 0 : 1;
    failures += ok ? 0 : 1;
  }
  // the shapes the kernel takes
  const bool fits_ok = op1::fits(1, op1::kMaxD, op1::kClasses) &&
                       !op1::fits(1, op1::kMaxD + 1, 1) && !op1::fits(1, 10, op1::kClasses + 1) &&
                       !op1::fits(0, 10, 1) && !op1::fits(5, 0, 1) && !op1::fits(5, 10, 0);
  std::printf("%s glm_hvp one-pass takes d <= %d, 1 <= K <= %d, n >= 1\n", fits_ok ? "ok  " : "FAIL",
              op1::kMaxD, op1::kClasses);
  failures += fits_ok ? 0 : 1;
  // the block's shared memory at the largest d fits an sm_80 / sm_90 block (163 / 227 KiB)
  const int64_t bytes = op1::shared_layout(op1::make_params(1, op1::kMaxD, 16)).total * 8;
  const bool shared_ok = bytes <= 163 * 1024;
  std::printf("%s glm_hvp one-pass shared memory at d = %d: %lld bytes\n", shared_ok ? "ok  " : "FAIL",
              op1::kMaxD, static_cast<long long>(bytes));
  failures += shared_ok ? 0 : 1;
  return failures;
}
