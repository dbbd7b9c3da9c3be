// The one-pass float64 glm_hvp of the CUDA kernels (opt-in: FASTUNLEARN_GLM_HVP=onepass),
// written so that the host can run it too: every step is a function of one thread or of one
// warp, and the kernel in cuda/glm_cuda.cu only chains them with barriers. The C++ unit tests
// (csrc/tests/test_glm_hvp_onepass.cpp, ctest `glm_hvp_onepass`) run the same functions on the CPU,
// thread by thread and warp by warp between the barriers, with a plain-loop stand-in for the
// tensor-core fragments (HostMma below), and compare with the float64 formula.
//
// out = X^T (S * (X V)) + lam V with X [n, d], S [n, K], V [d, K], float64, K <= 16,
// d <= kMaxD. A block of kWarps warps owns a share of the row tiles (8 rows each):
//
//   1. its threads copy the next tile of X (and its rows of S) into shared memory while the
//      current one is used (two buffers);
//   2. first product, warp w: the 8 x 16 partial margins of the tile's rows over its slab of
//      4 * ksteps columns, with 8x8x4 float64 tensor-core steps whose V operand stays in
//      registers for the whole kernel (V is read from global memory once per block, padded
//      in shared memory before the first tile: stage_v, load_v);
//   3. a thread per (row, class) adds the warps' partials in a fixed order: the margins X V
//      (written out when asked), times S: Z;
//   4. second product, warp w: X^T Z over its slab of 8 * mtiles columns into accumulators
//      that stay in registers across tiles.
//
// With K <= 8 only the first half of the classes is computed (Halves = 1): the second half of
// the partials is never written and never read. At the end every block writes its [width, 16]
// partial of X^T Z and a second kernel adds the
// blocks' partials in a fixed order, plus lam V. X is read from global memory once; the
// results do not depend on the run (no atomics).
#pragma once

#include <algorithm>
#include <cstdint>

#if defined(__CUDACC__)
#define FU_ONEPASS_FN __device__ __forceinline__
#else
#define FU_ONEPASS_FN inline
#endif

namespace fastunlearn::onepass {

constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;
constexpr int kTileRows = 8;    // rows of X per tile: the m of the first product's steps
constexpr int kClasses = 16;    // columns of the padded V, Z and partials: two 8-wide halves
constexpr int kMaxKSteps = 26;  // 4-column steps of the first product per warp
constexpr int kMaxMTiles = 13;  // 8-column tiles of the second product per warp
constexpr int kMaxD = 32 * kMaxKSteps;  // 832 = 64 * kMaxMTiles
constexpr int kReduceOutputs = 32;      // outputs per block of the final reduction
constexpr int kReduceLanes = kThreads / kReduceOutputs;

// Shapes and pointers of one call; the caller allocates the partials ([blocks, width, 16]).
struct Params {
  const double* X;    // [n, d] contiguous
  const double* S;    // [n, K] contiguous
  const double* V;    // [d, K] contiguous
  double* margins;    // [n, K] or nullptr
  double* partial;    // [blocks, width, kClasses]
  int64_t n;
  int64_t tiles;      // ceil(n / kTileRows)
  int d;
  int K;
  int ksteps;         // ceil(d / (4 * kWarps))
  int mtiles;         // ceil(d / (8 * kWarps))
  int width;          // columns covered by the warps' slabs: max(32 ksteps, 64 mtiles) >= d
  int ld;             // leading dimension of a tile in shared memory: width + 4
  bool paired;        // X's rows copied two doubles at a time (d even, X 16-byte aligned)
};

// Whether the one-pass kernel takes this shape (float64 is checked by the caller).
inline bool fits(int64_t n, int64_t d, int64_t K) {
  return n > 0 && d > 0 && d <= kMaxD && K > 0 && K <= kClasses;
}

// `X` (the data pointer, or nullptr) decides whether rows are copied in pairs of doubles.
inline Params make_params(int64_t n, int d, int K, const double* X = nullptr) {
  Params p{};
  p.paired = d % 2 == 0 && X != nullptr && reinterpret_cast<std::uintptr_t>(X) % 16 == 0;
  p.n = n;
  p.tiles = (n + kTileRows - 1) / kTileRows;
  p.d = d;
  p.K = K;
  p.ksteps = (d + 4 * kWarps - 1) / (4 * kWarps);
  p.mtiles = (d + 8 * kWarps - 1) / (8 * kWarps);
  p.width = std::max(4 * kWarps * p.ksteps, 8 * kWarps * p.mtiles);
  // a multiple of 4 doubles keeps every fragment's rows 32-byte aligned; the extra 4 shift
  // consecutive rows by 8 banks
  p.ld = p.width + 4;
  return p;
}

// Shared memory of one block, in doubles, at these offsets (each a multiple of 4 doubles).
// The two buffers' offsets are computed from the buffer index (an array indexed by a
// run-time buffer would put the layout in local memory on the device).
struct SharedLayout {
  int tile_size;  // [kTileRows, ld] per buffer, the first at offset 0
  int srows0;     // [kTileRows, kClasses] per buffer: S of the tile's rows, zero-padded
  int partials;   // [kWarps, kTileRows, kClasses]: the first product's per-warp partials
  int z;          // [kTileRows, kClasses]: S * (X V) of the tile's rows
  int total;
  FU_ONEPASS_FN int tile(int buffer) const { return buffer * tile_size; }
  FU_ONEPASS_FN int srows(int buffer) const { return srows0 + buffer * kTileRows * kClasses; }
};

inline SharedLayout shared_layout(const Params& p) {
  SharedLayout s{};
  const int tile = kTileRows * p.ld, rows = kTileRows * kClasses;
  s.tile_size = tile;
  s.srows0 = 2 * tile;
  s.partials = 2 * tile + 2 * rows;
  s.z = s.partials + kWarps * rows;
  s.total = s.z + rows;
  return s;
}

// ---- thread steps ------------------------------------------------------------------------

// V padded to [width, 16] (zero outside [d, K]) in the tile buffers' space, which is free
// before the first tile: the warps load their V fragments from it (load_v), then a barrier,
// then the buffers are used for tiles. Saves the caller a padded copy of V per call.
FU_ONEPASS_FN void stage_v(const Params& p, double* smem, const SharedLayout& s, int t) {
  double* padded = smem + s.tile(0);  // width * 16 <= 2 * kTileRows * ld doubles
  for (int e = t; e < p.width * kClasses; e += kThreads) {
    const int j = e / kClasses, k = e % kClasses;
    padded[e] = j < p.d && k < p.K ? p.V[static_cast<int64_t>(j) * p.K + k] : 0.0;
  }
}

// Zero the columns [d, ld) of both tile buffers: the slabs read them, the copies never write
// them.
FU_ONEPASS_FN void zero_padding(const Params& p, double* smem, const SharedLayout& s, int t) {
  const int pad = p.ld - p.d;
  for (int e = t; e < 2 * kTileRows * pad; e += kThreads) {
    const int buffer = e / (kTileRows * pad), rest = e % (kTileRows * pad);
    const int r = rest / pad, c = p.d + rest % pad;
    smem[s.tile(buffer) + r * p.ld + c] = 0.0;
  }
}

// Start the copies of tile `tile` (rows [8 tile, 8 tile + 8) of X and S) into buffer
// `buffer`; rows past n (and classes past K) are zeroed. `copy(dst, src, count)` copies one
// or two doubles (asynchronously on the device); pairs start at even columns (16-byte
// aligned at both ends when `p.paired`: ld is a multiple of 4).
template <typename Copy>
FU_ONEPASS_FN void issue_tile(const Params& p, double* smem, const SharedLayout& s, int buffer,
                              int64_t tile, int t, Copy copy) {
  const int64_t row0 = tile * kTileRows;
  // rows of this tile inside X (a ternary: std::min needs --expt-relaxed-constexpr on the device)
  const int64_t left = p.n - row0;
  const int rows = left < kTileRows ? static_cast<int>(left) : kTileRows;
  double* dst = smem + s.tile(buffer);
  for (int r = 0; r < kTileRows; ++r) {
    if (r < rows) {
      const double* src = p.X + (row0 + r) * p.d;
      if (p.paired) {
        for (int c = 2 * t; c < p.d; c += 2 * kThreads) copy(dst + r * p.ld + c, src + c, 2);
      } else {
        for (int c = t; c < p.d; c += kThreads) copy(dst + r * p.ld + c, src + c, 1);
      }
    } else {
      for (int c = t; c < p.d; c += kThreads) dst[r * p.ld + c] = 0.0;
    }
  }
  double* srows = smem + s.srows(buffer);
  for (int e = t; e < kTileRows * kClasses; e += kThreads) {
    const int r = e / kClasses, k = e % kClasses;
    if (r < rows && k < p.K) {
      copy(srows + e, p.S + (row0 + r) * p.K + k, 1);
    } else {
      srows[e] = 0.0;
    }
  }
}

// Thread t < kTileRows * kClasses: row r = t / 16, class k = t % 16 of the tile. Adds the
// warps' partials in warp order (the margin), writes it to `margins` when asked, and Z.
FU_ONEPASS_FN void finish_rows(const Params& p, double* smem, const SharedLayout& s, int buffer,
                               int64_t tile, int t) {
  if (t >= kTileRows * kClasses) return;
  const int r = t / kClasses, k = t % kClasses;
  const int64_t row = tile * kTileRows + r;
  if (row >= p.n || k >= p.K) {  // padding (its partials may not have been written)
    smem[s.z + t] = 0.0;
    return;
  }
  double margin = 0.0;
  for (int w = 0; w < kWarps; ++w) margin += smem[s.partials + w * kTileRows * kClasses + t];
  if (p.margins != nullptr) p.margins[row * p.K + k] = margin;
  smem[s.z + t] = margin * smem[s.srows(buffer) + t];
}

// The final reduction, thread t of block b: output e = 32 b + t % 32 (e = j K + k) summed
// over the blocks' partials b' = t / 32, t / 32 + 8, ... into lane_sums[t]; then
// finish_reduction.
FU_ONEPASS_FN void reduce_lanes(const double* partial, int64_t blocks, int width, int d, int K,
                                int64_t block, int t, double* lane_sums) {
  const int64_t e = block * kReduceOutputs + t % kReduceOutputs;
  double sum = 0.0;
  if (e < static_cast<int64_t>(d) * K) {
    const int64_t j = e / K, k = e % K;
    for (int64_t b = t / kReduceOutputs; b < blocks; b += kReduceLanes) {
      sum += partial[(b * width + j) * kClasses + k];
    }
  }
  lane_sums[t] = sum;
}

// Thread t < 32 of block b: out[e] = lam V[e] + the lanes' sums in lane order.
FU_ONEPASS_FN void finish_reduction(const double* V, double* out, double lam, int d, int K,
                                    int64_t block, int t, const double* lane_sums) {
  if (t >= kReduceOutputs) return;
  const int64_t e = block * kReduceOutputs + t;
  if (e >= static_cast<int64_t>(d) * K) return;
  double sum = 0.0;
  for (int lane = 0; lane < kReduceLanes; ++lane) sum += lane_sums[lane * kReduceOutputs + t];
  out[e] = lam * V[e] + sum;
}

// ---- warp steps (Mma: the 8x8x4 float64 fragments and their operations) -----------------

// The warp's V operands from the staged V (stage_v): rows [4 (w ksteps + s), +4), class
// half h.
template <typename Mma, int Halves>
FU_ONEPASS_FN void load_v(const Params& p, const double* smem, const SharedLayout& layout,
                          int w, typename Mma::B (&v)[kMaxKSteps][Halves]) {
  const double* padded = smem + layout.tile(0);
#pragma unroll
  for (int s = 0; s < kMaxKSteps; ++s) {
    if (s < p.ksteps) {
#pragma unroll
      for (int h = 0; h < Halves; ++h) {
        Mma::load_b(v[s][h], padded + (4 * (w * p.ksteps + s)) * kClasses + 8 * h, kClasses);
      }
    }
  }
}

// First product: the tile's 8 rows times the warp's slab of V, into its partials.
template <typename Mma, int Halves>
FU_ONEPASS_FN void first_product(const Params& p, double* smem, const SharedLayout& s,
                                 int buffer, int w,
                                 const typename Mma::B (&v)[kMaxKSteps][Halves]) {
  typename Mma::C acc[Halves];
#pragma unroll
  for (int h = 0; h < Halves; ++h) Mma::zero(acc[h]);
  const double* tile = smem + s.tile(buffer);
#pragma unroll
  for (int step = 0; step < kMaxKSteps; ++step) {
    if (step < p.ksteps) {
      typename Mma::ARow a;
      Mma::load_a_row(a, tile + 4 * (w * p.ksteps + step), p.ld);
#pragma unroll
      for (int h = 0; h < Halves; ++h) Mma::mma(acc[h], a, v[step][h], acc[h]);
    }
  }
  double* partials = smem + s.partials + w * kTileRows * kClasses;
#pragma unroll
  for (int h = 0; h < Halves; ++h) Mma::store(partials + 8 * h, acc[h], kClasses);
}

// Second product: X^T Z for the warp's slab of columns, four tile rows per step.
template <typename Mma, int Halves>
FU_ONEPASS_FN void second_product(const Params& p, double* smem, const SharedLayout& s,
                                  int buffer, int w,
                                  typename Mma::C (&out)[kMaxMTiles][Halves]) {
  const double* tile = smem + s.tile(buffer);
  const double* z = smem + s.z;
#pragma unroll
  for (int r0 = 0; r0 < kTileRows; r0 += 4) {
    typename Mma::B zb[Halves];
#pragma unroll
    for (int h = 0; h < Halves; ++h) Mma::load_b(zb[h], z + r0 * kClasses + 8 * h, kClasses);
#pragma unroll
    for (int m = 0; m < kMaxMTiles; ++m) {
      if (m < p.mtiles) {
        typename Mma::ACol a;  // X^T: 8 columns of X by 4 rows
        Mma::load_a_col(a, tile + r0 * p.ld + 8 * (w * p.mtiles + m), p.ld);
#pragma unroll
        for (int h = 0; h < Halves; ++h) Mma::mma(out[m][h], a, zb[h], out[m][h]);
      }
    }
  }
}

// The warp's accumulators into the block's partial [width, 16].
template <typename Mma, int Halves>
FU_ONEPASS_FN void store_partial(const Params& p, int64_t block, int w,
                                 const typename Mma::C (&out)[kMaxMTiles][Halves]) {
  double* partial = p.partial + block * p.width * kClasses;
#pragma unroll
  for (int m = 0; m < kMaxMTiles; ++m) {
    if (m < p.mtiles) {
      double* rows = partial + (8 * (w * p.mtiles + m)) * kClasses;
#pragma unroll
      for (int h = 0; h < Halves; ++h) Mma::store(rows + 8 * h, out[m][h], kClasses);
    }
  }
}

#if !defined(__CUDACC__)
// The fragments as whole matrices, for running the warp steps on the host (one call per warp).
struct HostMma {
  struct ARow { double a[8][4]; };
  struct ACol { double a[8][4]; };
  struct B { double b[4][8]; };
  struct C { double c[8][8]; };
  static void zero(C& c) {
    for (auto& row : c.c) std::fill(row, row + 8, 0.0);
  }
  static void load_a_row(ARow& f, const double* p, int ldm) {
    for (int i = 0; i < 8; ++i)
      for (int k = 0; k < 4; ++k) f.a[i][k] = p[i * ldm + k];
  }
  static void load_a_col(ACol& f, const double* p, int ldm) {
    for (int i = 0; i < 8; ++i)
      for (int k = 0; k < 4; ++k) f.a[i][k] = p[i + k * ldm];
  }
  static void load_b(B& f, const double* p, int ldm) {
    for (int k = 0; k < 4; ++k)
      for (int j = 0; j < 8; ++j) f.b[k][j] = p[k * ldm + j];
  }
  template <typename A>
  static void mma(C& d, const A& a, const B& b, const C& c) {
    C result;
    for (int i = 0; i < 8; ++i)
      for (int j = 0; j < 8; ++j) {
        double sum = c.c[i][j];
        for (int k = 0; k < 4; ++k) sum += a.a[i][k] * b.b[k][j];
        result.c[i][j] = sum;
      }
    d = result;
  }
  static void store(double* p, const C& c, int ldm) {
    for (int i = 0; i < 8; ++i)
      for (int j = 0; j < 8; ++j) p[i * ldm + j] = c.c[i][j];
  }
};
#endif  // !__CUDACC__

}  // namespace fastunlearn::onepass
