// C++ unit tests of the fastunlearn ops, run by ctest: `fastunlearn_cpp_tests <name>`.
//
// Each test calls an op through the PyTorch dispatcher (as Python does) on random CPU
// inputs and compares it with a plain ATen formula computed in float64.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <functional>
#include <map>
#include <string>
#include <tuple>

// csrc/tests/test_glm_hvp_onepass.cpp: the one-pass CUDA kernel's steps run on the host.
int test_glm_hvp_onepass_emulated();

namespace {

using at::Tensor;

template <typename Sig>
auto op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

int failures = 0;

void expect_close(const Tensor& got, const Tensor& want, double tol, const char* what) {
  const bool same_shape = got.sizes() == want.sizes();
  const double err =
      same_shape ? (got.to(at::kDouble) - want.to(at::kDouble)).abs().max().item<double>() : -1;
  const double scale = std::max(1.0, want.abs().max().item<double>());
  if (!same_shape || err > tol * scale) {
    std::printf("FAIL %s: shape %s vs %s, max abs error %.3e (tol %.1e x %.2f)\n", what,
                c10::str(got.sizes()).c_str(), c10::str(want.sizes()).c_str(), err, tol, scale);
    ++failures;
  } else {
    std::printf("ok   %s (max abs error %.2e)\n", what, err);
  }
}

void expect(bool cond, const char* what) {
  std::printf("%s %s\n", cond ? "ok  " : "FAIL", what);
  if (!cond) ++failures;
}

const auto f64 = at::TensorOptions().dtype(at::kDouble);

void test_glm_hvp() {
  auto X = at::randn({300, 17}, f64), S = at::rand({300, 3}, f64), V = at::randn({17, 3}, f64);
  auto got = op<Tensor(const Tensor&, const Tensor&, const Tensor&, double)>("fastunlearn::glm_hvp")
                 .call(X, S, V, 0.5);
  expect_close(got, X.t().mm(S * X.mm(V)) + 0.5 * V, 1e-12, "glm_hvp float64");
  auto got32 = op<Tensor(const Tensor&, const Tensor&, const Tensor&, double)>("fastunlearn::glm_hvp")
                   .call(X.to(at::kFloat), S.to(at::kFloat), V.to(at::kFloat), 0.5);
  expect_close(got32, X.t().mm(S * X.mm(V)) + 0.5 * V, 1e-5, "glm_hvp float32");
}

void test_glm_hvp_margins() {
  auto X = at::randn({300, 17}, f64), S = at::rand({300, 3}, f64), V = at::randn({17, 3}, f64);
  auto [out, margins] =
      op<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, double)>(
          "fastunlearn::glm_hvp_margins")
          .call(X, S, V, 0.5);
  expect_close(out, X.t().mm(S * X.mm(V)) + 0.5 * V, 1e-12, "glm_hvp_margins product");
  expect_close(margins, X.mm(V), 1e-12, "glm_hvp_margins margins");
}

void test_glm_hessian() {
  auto X = at::randn({200, 9}, f64), S = at::rand({200, 2}, f64);
  auto got = op<Tensor(const Tensor&, const Tensor&, double)>("fastunlearn::glm_hessian")
                 .call(X, S, 0.1);
  for (int64_t k = 0; k < 2; ++k) {
    auto want = X.t().mm(S.select(1, k).unsqueeze(1) * X) + 0.1 * at::eye(9, f64);
    expect_close(got.select(0, k), want, 1e-12, "glm_hessian class");
  }
}

void test_glm_cg() {
  auto X = at::randn({400, 12}, f64), S = at::rand({400, 4}, f64), B = at::randn({12, 4}, f64);
  auto res = op<std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                   double, const std::optional<Tensor>&,
                                                   const std::optional<Tensor>&, double, int64_t)>(
                 "fastunlearn::glm_cg")
                 .call(X, S, B, 1e-2, std::nullopt, std::nullopt, 1e-12, 200);
  for (int64_t k = 0; k < 4; ++k) {
    auto H = X.t().mm(S.select(1, k).unsqueeze(1) * X) + 1e-2 * at::eye(12, f64);
    auto want = at::linalg_solve(H, B.select(1, k));
    expect_close(std::get<0>(res).select(1, k), want, 1e-9, "glm_cg vs dense solve");
  }
  expect(std::get<2>(res).max().item<double>() < 1e-9, "glm_cg true residual small");
  expect(std::get<1>(res).max().item<int64_t>() <= 200, "glm_cg iterations within maxiter");
}

void test_cg_update() {
  // Plain CG on a small SPD system driven step by step must reach the dense solution.
  const int64_t d = 10, K = 2;
  auto M = at::randn({d, d}, f64);
  auto A = M.mm(M.t()) + d * at::eye(d, f64);
  auto b = at::randn({d, K}, f64);
  auto x = at::zeros({d, K}, f64), r = b.clone(), p = b.clone();
  auto rz = (r * r).sum(0), rr = rz.clone();
  auto active = at::ones({K}, at::kBool), iters = at::zeros({K}, at::kLong);
  auto thr = 1e-24 * (b * b).sum(0);
  // mutable Tensor(a!) arguments are passed as const Tensor& (the tensor handle is const,
  // its data is written in place)
  auto step = op<void(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                      const std::optional<Tensor>&, const Tensor&, const Tensor&, const Tensor&,
                      const Tensor&, const Tensor&)>("fastunlearn::cg_update_");
  for (int i = 0; i < 3 * d; ++i) {
    auto Ap = A.mm(p);
    step.call(x, r, p, Ap, std::nullopt, rz, rr, active, iters, thr);
  }
  expect_close(x, at::linalg_solve(A, b), 1e-9, "cg_update_ drives CG to the solution");
  expect(!active.any().item<bool>(), "cg_update_ marks converged columns inactive");
}

Tensor psg_reference(const Tensor& A, const Tensor& G) {
  return at::einsum("bto,bti->boi", {G, A});
}

void test_per_sample_grad() {
  auto A = at::randn({5, 3, 7}, f64), G = at::randn({5, 3, 4}, f64);
  auto got = op<Tensor(const Tensor&, const Tensor&)>("fastunlearn::per_sample_grad").call(A, G);
  expect_close(got, psg_reference(A, G), 1e-12, "per_sample_grad");
}

void test_per_sample_sq_norm() {
  auto sq = op<Tensor(const Tensor&, const Tensor&, bool)>("fastunlearn::per_sample_sq_norm");
  for (int64_t T : {1, 6}) {
    auto A = at::randn({8, T, 5}, f64), G = at::randn({8, T, 3}, f64);
    auto want = psg_reference(A, G).pow(2).sum({1, 2}) + G.sum(1).pow(2).sum(1);
    expect_close(sq.call(A, G, true), want, 1e-11, T == 1 ? "sq_norm ghost (T=1)" : "sq_norm T>1");
  }
}

void test_per_sample_dot() {
  auto A = at::randn({6, 4, 5}, f64), G = at::randn({6, 4, 3}, f64);
  auto W = at::randn({3, 5}, f64), b = at::randn({3}, f64);
  auto got = op<Tensor(const Tensor&, const Tensor&, const Tensor&, const std::optional<Tensor>&)>(
                 "fastunlearn::per_sample_dot")
                 .call(A, G, W, b);
  auto want = (psg_reference(A, G) * W).sum({1, 2}) + G.sum(1).mv(b);
  expect_close(got, want, 1e-11, "per_sample_dot");
}

void test_per_sample_weighted_sum() {
  auto A = at::randn({6, 2, 5}, f64), G = at::randn({6, 2, 3}, f64), w = at::rand({6}, f64);
  auto got = op<Tensor(const Tensor&, const Tensor&, const Tensor&)>(
                 "fastunlearn::per_sample_weighted_sum")
                 .call(A, G, w);
  expect_close(got, (psg_reference(A, G) * w.view({6, 1, 1})).sum(0), 1e-11,
               "per_sample_weighted_sum");
}

void test_knn_extreme() {
  auto Q = at::randn({20, 6}, f64), P = at::randn({90, 6}, f64);
  auto knn = op<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, int64_t, bool)>(
      "fastunlearn::knn_extreme");
  auto D = at::cdist(Q, P).pow(2);
  for (bool largest : {true, false}) {
    auto [dist, idx] = knn.call(Q, P, 5, largest);
    auto want = std::get<0>(at::topk(D, 5, 1, largest, true));
    expect_close(dist, want, 1e-9, largest ? "knn farthest distances" : "knn nearest distances");
    expect_close(at::gather(D, 1, idx), want, 1e-9, "knn indices point at those distances");
  }
}

void test_bad_input() {
  auto hvp = op<Tensor(const Tensor&, const Tensor&, const Tensor&, double)>("fastunlearn::glm_hvp");
  bool threw = false;
  try {
    hvp.call(at::randn({4, 3}, f64), at::rand({5, 1}, f64), at::randn({3, 1}, f64), 0.0);
  } catch (const c10::Error& e) {
    threw = std::string(e.what()).find("'S'") != std::string::npos;
  }
  expect(threw, "glm_hvp rejects a mismatched S, naming it");
}

void test_glm_hvp_onepass() { failures += test_glm_hvp_onepass_emulated(); }

}  // namespace

int main(int argc, char** argv) {
  const std::map<std::string, std::function<void()>> tests = {
      {"glm_hvp", test_glm_hvp},
      {"glm_hvp_margins", test_glm_hvp_margins},
      {"glm_hvp_onepass", test_glm_hvp_onepass},
      {"glm_hessian", test_glm_hessian},
      {"glm_cg", test_glm_cg},
      {"cg_update", test_cg_update},
      {"per_sample_grad", test_per_sample_grad},
      {"per_sample_sq_norm", test_per_sample_sq_norm},
      {"per_sample_dot", test_per_sample_dot},
      {"per_sample_weighted_sum", test_per_sample_weighted_sum},
      {"knn_extreme", test_knn_extreme},
      {"bad_input", test_bad_input},
  };
  at::manual_seed(0);
  if (argc < 2) {
    for (const auto& [name, fn] : tests) fn();
  } else {
    auto it = tests.find(argv[1]);
    if (it == tests.end()) {
      std::printf("unknown test %s\n", argv[1]);
      return 2;
    }
    try {
      it->second();
    } catch (const c10::Error& e) {
      std::printf("FAIL %s threw: %s\n", argv[1], e.what_without_backtrace());
      return 1;
    } catch (const std::exception& e) {
      std::printf("FAIL %s threw: %s\n", argv[1], e.what());
      return 1;
    }
  }
  return failures == 0 ? 0 : 1;
}
