// Hypergradients of the library's reverse pass against independent computations:
// (1) an explicit-matrix adjoint of the full (w, v) state over the library's own forward
//     trajectory (isolates the reverse pass: agreement near machine precision);
// (2) central finite differences of a plain double training run (DESIGN.md §8).
#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <vector>

#include <hypergrad/init.hpp>
#include <hypergrad/optimizers/sgd_momentum.hpp>
#include <hypergrad/reverse.hpp>

#include "../support/logistic_fixture.hpp"

using namespace hypergrad;
using fixture::Logistic;
using fixture::MatrixXd;
using fixture::Validation;
using fixture::VectorXd;

namespace {

double relErr(double a, double b) { return std::fabs(a - b) / std::max({std::fabs(a), std::fabs(b), 1e-300}); }

struct Problem {
  Logistic train;
  Validation valid;
  ParameterLayout layout;
  MatrixXd alpha, gamma;  // gamma as given; the optimizer quantises it
  VectorXd w1, v1;
  Index steps;

  explicit Problem(std::uint64_t seed, Index steps_ = 40)
      : train(50, 8, 10, seed), valid(train, seed + 100), steps(steps_) {
    layout.addGroup("a", 5);
    layout.addGroup("b", 3);
    CounterRng rng(seed, 7);
    alpha.resize(steps, 2);
    gamma.resize(steps, 2);
    for (Index t = 0; t < steps; ++t)
      for (Index k = 0; k < 2; ++k) {
        alpha(t, k) = 0.2 + 0.3 * rng.uniform();
        gamma(t, k) = 0.5 + 0.45 * rng.uniform();
      }
    w1.resize(8);
    v1.resize(8);
    for (Index i = 0; i < 8; ++i) {
      w1(i) = 0.5 * rng.normal();
      v1(i) = 0.1 * rng.normal();
    }
  }

  SgdMomentum<> optimizer() const { return SgdMomentum<>(layout, Schedule(alpha), Schedule(gamma)); }
};

// Records the library's own trajectory w_t, v_t (as doubles) during the forward pass.
struct Recorder {
  std::vector<VectorXd> w, v;
  template <class Opt>
  void onForwardStep(const Opt& opt, Index, const VectorXd&) {
    w.push_back(opt.weights());
    v.push_back(opt.velocity());
  }
};

struct NaiveResult {
  MatrixXd dAlpha, dGamma;
  VectorXd dw1, dv1, dTheta;
};

// Reverse-mode over stored states with explicit Jacobians J_t = ∂(w_{t+1}, v_{t+1})/∂(w_t, v_t).
NaiveResult naiveAdjoint(const Problem& p, const MatrixXd& gammaQ, const std::vector<VectorXd>& w,
                         const std::vector<VectorXd>& v) {
  const Index n = p.layout.size(), T = p.steps;
  NaiveResult r;
  r.dAlpha = MatrixXd::Zero(T, 2);
  r.dGamma = MatrixXd::Zero(T, 2);
  r.dTheta = VectorXd::Zero(p.train.numHyperparameters());
  VectorXd lw, lv = VectorXd::Zero(n);
  p.valid.valueAndGradient(w[static_cast<std::size_t>(T)], lw);
  const MatrixXd I = MatrixXd::Identity(n, n);
  for (Index t = T; t-- > 0;) {
    const auto ts = static_cast<std::size_t>(t);
    VectorXd g;
    p.train.gradient(w[ts], t, g);
    const MatrixXd H = p.train.hessian(w[ts], t), M = p.train.mixedJacobian(w[ts], t);
    const VectorXd a = p.layout.expand(p.alpha.row(t).transpose()), c = p.layout.expand(gammaQ.row(t).transpose());
    const MatrixXd A = a.asDiagonal(), G = c.asDiagonal(), D = I - G;
    const VectorXd dAlphaElem = lw.cwiseProduct(v[ts + 1]);
    const VectorXd dGammaElem = (A * lw + lv).cwiseProduct(v[ts] + g);
    r.dAlpha.row(t) = p.layout.sumByGroup(dAlphaElem).transpose();
    r.dGamma.row(t) = p.layout.sumByGroup(dGammaElem).transpose();
    r.dTheta += (-A * D * M).transpose() * lw + (-D * M).transpose() * lv;
    MatrixXd J(2 * n, 2 * n);
    J << I - A * D * H, A * G, -D * H, G;
    VectorXd l(2 * n);
    l << lw, lv;
    const VectorXd prev = J.transpose() * l;
    lw = prev.head(n);
    lv = prev.tail(n);
  }
  r.dw1 = lw;
  r.dv1 = lv;
  return r;
}

double finalLoss(const Problem& p, const Logistic& train, const MatrixXd& alpha, const MatrixXd& gammaQ,
                 const VectorXd& w1, const VectorXd& v1) {
  const auto run = fixture::trainDouble(train, p.layout, alpha, gammaQ, w1, v1);
  return p.valid.value(run.w.back());
}

}  // namespace

TEST_CASE("reverse-pass hypergradients equal an explicit-Jacobian adjoint over the recorded trajectory",
          "[reverse][naive]") {
  for (std::uint64_t seed : {1u, 2u, 3u}) {
    const Problem p(seed);
    auto opt = p.optimizer();
    opt.start(p.w1, p.v1);
    Recorder rec;
    rec.w.push_back(opt.weights());
    rec.v.push_back(opt.velocity());
    train(opt, p.train, rec);
    const Hypergradients hg = reverse(opt, p.train, p.valid);
    const NaiveResult naive = naiveAdjoint(p, opt.quantizedMomenta(), rec.w, rec.v);

    auto rel = [](const auto& a, const auto& b) { return (a - b).norm() / b.norm(); };
    CAPTURE(seed);
    CHECK(rel(hg.learningRates, naive.dAlpha) < 1e-9);
    CHECK(rel(hg.momenta, naive.dGamma) < 1e-9);
    CHECK(rel(hg.initialWeights, naive.dw1) < 1e-9);
    CHECK(rel(hg.initialVelocity, naive.dv1) < 1e-9);
    CHECK(rel(hg.hyperparameters, naive.dTheta) < 1e-9);
    // entry by entry as well, where entries are not negligible
    for (Index t = 0; t < p.steps; ++t)
      for (Index k = 0; k < 2; ++k) {
        if (std::fabs(naive.dAlpha(t, k)) > 1e-8 * naive.dAlpha.norm()) CHECK(relErr(hg.learningRates(t, k), naive.dAlpha(t, k)) < 1e-9);
        if (std::fabs(naive.dGamma(t, k)) > 1e-8 * naive.dGamma.norm()) CHECK(relErr(hg.momenta(t, k), naive.dGamma(t, k)) < 1e-9);
      }
    CHECK(hg.metaObjective == p.valid.value(rec.w.back()));
  }
}

TEST_CASE("hypergradients match central finite differences of a plain double training run", "[reverse][fd]") {
  const double eps = 1e-5;
  for (std::uint64_t seed : {11u, 12u, 13u}) {
    CAPTURE(seed);
    const Problem p(seed);
    auto opt = p.optimizer();
    const MatrixXd gq = opt.quantizedMomenta();
    const Hypergradients hg = computeHypergradients(opt, p.train, p.valid, p.w1, p.v1);

    // α_t and γ_t entries of each group at a few iterations
    for (Index t : {Index(0), Index(17), p.steps - 1})
      for (Index k = 0; k < 2; ++k) {
        MatrixXd ap = p.alpha, am = p.alpha;
        ap(t, k) += eps;
        am(t, k) -= eps;
        const double fdA = (finalLoss(p, p.train, ap, gq, p.w1, p.v1) - finalLoss(p, p.train, am, gq, p.w1, p.v1)) / (2 * eps);
        CAPTURE(t, k);
        CHECK(relErr(hg.learningRates(t, k), fdA) < 1e-5);
        MatrixXd gp = gq, gm = gq;
        gp(t, k) += eps;
        gm(t, k) -= eps;
        const double fdG = (finalLoss(p, p.train, p.alpha, gp, p.w1, p.v1) - finalLoss(p, p.train, p.alpha, gm, p.w1, p.v1)) / (2 * eps);
        CHECK(relErr(hg.momenta(t, k), fdG) < 1e-5);
      }
    // per-weight L2 (θ = log λ)
    for (Index i = 0; i < p.train.numHyperparameters(); ++i) {
      Logistic tp = p.train, tm = p.train;
      tp.theta(i) += eps;
      tm.theta(i) -= eps;
      const double fd = (finalLoss(p, tp, p.alpha, gq, p.w1, p.v1) - finalLoss(p, tm, p.alpha, gq, p.w1, p.v1)) / (2 * eps);
      CAPTURE(i, fd, hg.hyperparameters(i), hg.hyperparameters.norm());
      // Entries far below the vector's norm lose relative accuracy to the differences' rounding
      // (about 1e-16 * f / eps ~ 1e-11 absolute), so those are held to 1e-8 of the norm instead.
      if (std::fabs(fd) > 1e-3 * hg.hyperparameters.norm()) CHECK(relErr(hg.hyperparameters(i), fd) < 1e-5);
      else CHECK(std::fabs(hg.hyperparameters(i) - fd) < 1e-8 * hg.hyperparameters.norm());
    }
    // initial velocity, one entry per group
    for (Index i : {Index(1), Index(6)}) {
      VectorXd vp = p.v1, vm = p.v1;
      vp(i) += eps;
      vm(i) -= eps;
      const double fd = (finalLoss(p, p.train, p.alpha, gq, p.w1, vp) - finalLoss(p, p.train, p.alpha, gq, p.w1, vm)) / (2 * eps);
      CHECK(relErr(hg.initialVelocity(i), fd) < 1e-5);
    }
  }
}

TEST_CASE("per-group initialisation-scale hypergradients match finite differences", "[reverse][fd][init]") {
  const double eps = 1e-5;
  for (std::uint64_t seed : {21u, 22u}) {
    CAPTURE(seed);
    const Problem p(seed);
    VectorXd logS(2);
    logS << std::log(0.4), std::log(0.7);
    const ScaledInit init(p.layout, logS, seed);
    auto opt = p.optimizer();
    const MatrixXd gq = opt.quantizedMomenta();
    const Hypergradients hg = computeHypergradients(opt, p.train, p.valid, init.weights(), p.v1);
    const VectorXd dLogS = init.logScaleGradient(hg.initialWeights);
    for (Index k = 0; k < 2; ++k) {
      ScaledInit ip = init, im = init;
      VectorXd sp = logS, sm = logS;
      sp(k) += eps;
      sm(k) -= eps;
      ip.setLogScales(sp);
      im.setLogScales(sm);
      const double fd =
          (finalLoss(p, p.train, p.alpha, gq, ip.weights(), p.v1) - finalLoss(p, p.train, p.alpha, gq, im.weights(), p.v1)) /
          (2 * eps);
      CAPTURE(k);
      CHECK(relErr(dLogS(k), fd) < 1e-5);
    }
  }
}

TEST_CASE("ScaledInit::fromNoise reproduces a given initialisation bit for bit and its chain rule matches finite "
          "differences; fromWeights round-trips the weights within its documented bound",
          "[init]") {
  ParameterLayout layout;
  layout.addGroup("w", 6);
  layout.addGroup("b", 3);
  const Index n = layout.size();
  CounterRng rng(31, 5);
  VectorXd eps(n), c(n);
  for (Index i = 0; i < n; ++i) {
    eps(i) = rng.normal();
    c(i) = 0.5 + rng.uniform();
  }
  const VectorXd logS = (VectorXd(2) << std::log(0.3), std::log(1.7)).finished();
  const VectorXd mu = (VectorXd(2) << 0.25, -0.5).finished();

  // Given ε, w₁ is what the plain formula gives, bit for bit; with s = 1 and μ = 0 it is ε itself.
  const ScaledInit given = ScaledInit::fromNoise(layout, logS, eps, mu);
  CHECK_FALSE(given.hasSeed());
  CHECK(given.seed() == 0u);
  const VectorXd w = given.weights();
  for (Index i = 0; i < n; ++i) {
    const Index k = i < 6 ? 0 : 1;
    CHECK(w(i) == mu(k) + std::exp(logS(k)) * eps(i));
  }
  CHECK(ScaledInit::fromNoise(layout, VectorXd::Zero(2), eps).weights() == eps);
  // A seeded init's own ε, given back, reproduces it exactly.
  const ScaledInit seeded(layout, logS, 77, mu);
  CHECK(seeded.hasSeed());
  CHECK(ScaledInit::fromNoise(layout, logS, seeded.noise(), mu).weights() == seeded.weights());

  // Chain rule: f(w₁) = Σ c_i sin(w₁_i), ∂f/∂w₁ = c ⊙ cos(w₁), against central differences in log s_k.
  const auto f = [&](const VectorXd& x) { return (c.array() * x.array().sin()).sum(); };
  const VectorXd dw = (c.array() * w.array().cos()).matrix();
  const VectorXd dLogS = given.logScaleGradient(dw);
  const VectorXd dMu = given.meanGradient(dw);
  const double h = 1e-6;
  for (Index k = 0; k < 2; ++k) {
    CAPTURE(k);
    VectorXd sp = logS, sm = logS, mp = mu, mm = mu;
    sp(k) += h;
    sm(k) -= h;
    mp(k) += h;
    mm(k) -= h;
    const double fdS = (f(ScaledInit::fromNoise(layout, sp, eps, mu).weights()) -
                        f(ScaledInit::fromNoise(layout, sm, eps, mu).weights())) / (2 * h);
    const double fdMu = (f(ScaledInit::fromNoise(layout, logS, eps, mp).weights()) -
                         f(ScaledInit::fromNoise(layout, logS, eps, mm).weights())) / (2 * h);
    CHECK(relErr(dLogS(k), fdS) < 1e-7);
    CHECK(relErr(dMu(k), fdMu) < 1e-7);
  }

  // From weights: ε = (w₁ − μ)/s, w₁ back within 2^-52 (|w₁| + 2|w₁ − μ|), and the chain rule is
  // Σ_{i∈k} (∂f/∂w₁)_i (w₁_i − μ_k), since s_k ε_i = w₁_i − μ_k.
  VectorXd w1(n);
  for (Index i = 0; i < n; ++i) w1(i) = 3.0 * rng.normal();
  const ScaledInit back = ScaledInit::fromWeights(layout, w1, logS, mu);
  CHECK_FALSE(back.hasSeed());
  const VectorXd wBack = back.weights();
  double worst = 0.0;
  for (Index i = 0; i < n; ++i) {
    const double d = std::fabs(w1(i) - mu(i < 6 ? 0 : 1));
    worst = std::max(worst, std::fabs(wBack(i) - w1(i)) / (std::ldexp(1.0, -52) * (std::fabs(w1(i)) + 2 * d)));
  }
  CHECK(worst <= 1.0);
  const VectorXd g = (c.array() * w1.array().cos()).matrix();
  const VectorXd dBack = back.logScaleGradient(g);
  for (Index k = 0; k < 2; ++k) {
    const ParameterGroup& grp = layout.group(k);
    double expected = 0.0;
    for (Index i = grp.offset; i < grp.offset + grp.size; ++i) expected += g(i) * (w1(i) - mu(k));
    CHECK(relErr(dBack(k), expected) < 1e-14);
  }
  // With μ = 0 the round trip is within one ulp (measured: never more).
  const VectorXd w0 = ScaledInit::fromWeights(layout, w1, logS).weights();
  for (Index i = 0; i < n; ++i) {
    const double a = std::fabs(w1(i));
    CHECK(std::fabs(w0(i) - w1(i)) <= std::nextafter(a, 2 * a + 1) - a);
  }

  // Errors name the first bad element and its group.
  VectorXd bad = eps;
  bad(7) = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_AS(ScaledInit::fromNoise(layout, logS, VectorXd::Zero(n - 1)), InvalidArgument);
  CHECK_THROWS_WITH(ScaledInit::fromNoise(layout, logS, VectorXd::Zero(n + 1)),
                    Catch::Contains("10 entries") && Catch::Contains("9 parameters"));
  CHECK_THROWS_AS(ScaledInit::fromNoise(layout, logS, bad), InvalidArgument);
  CHECK_THROWS_WITH(ScaledInit::fromNoise(layout, logS, bad),
                    Catch::Contains("element 7") && Catch::Contains("group 'b'") && Catch::Contains("nan"));
  CHECK_THROWS_WITH(ScaledInit::fromWeights(layout, bad, logS),
                    Catch::Contains("fromWeights") && Catch::Contains("element 7") && Catch::Contains("group 'b'"));
  CHECK_THROWS_AS(ScaledInit::fromWeights(layout, w1, (VectorXd(2) << -800.0, 0.0).finished()), InvalidArgument);
  CHECK_THROWS_AS(ScaledInit::fromNoise(layout, VectorXd::Zero(3), eps), InvalidArgument);

  // A log scale whose exp() overflows would give infinite weights: rejected on every path, and a
  // failed setLogScales leaves the scales as they were.
  const VectorXd huge = (VectorXd(2) << 0.0, 710.0).finished();
  CHECK_THROWS_WITH(ScaledInit(layout, huge, 1), Catch::Contains("group 'b'") && Catch::Contains("overflows"));
  CHECK_THROWS_AS(ScaledInit::fromNoise(layout, huge, eps), InvalidArgument);
  ScaledInit init = ScaledInit::fromNoise(layout, logS, eps);
  CHECK_THROWS_AS(init.setLogScales(huge), InvalidArgument);
  CHECK(init.logScales() == logS);
  CHECK(init.weights().allFinite());
}

TEST_CASE("schedule sums are cut at fixed 4096-element blocks, so a slice of whole blocks has the same pieces",
          "[reverse][pieces]") {
  ParameterLayout layout;
  layout.addGroup("a", 5000);   // [0, 5000): two pieces, cut at 4096
  layout.addGroup("b", 3000);   // [5000, 8000): one piece
  layout.addGroup("c", 9000);   // [8000, 17000): cut at 8192, 12288, 16384
  layout.addGroup("d", 1);      // [17000, 17001)
  const std::vector<detail::SumPiece> all = detail::sumPieces(layout, 0, layout.size());
  const std::vector<std::array<Index, 3>> expected{{0, 0, 4096},     {0, 4096, 5000},   {1, 5000, 8000},
                                                   {2, 8000, 8192},  {2, 8192, 12288},  {2, 12288, 16384},
                                                   {2, 16384, 17000}, {3, 17000, 17001}};
  REQUIRE(all.size() == expected.size());
  for (std::size_t p = 0; p < all.size(); ++p) {
    CAPTURE(p);
    CHECK(all[p].group == expected[p][0]);
    CHECK(all[p].begin == expected[p][1]);
    CHECK(all[p].end == expected[p][2]);
  }
  // Any range cut at block boundaries has exactly the pieces of the whole inside it.
  for (Index first : {Index(0), Index(4096), Index(8192), Index(12288)}) {
    for (Index last : {Index(8192), Index(16384), layout.size()}) {
      if (last <= first) continue;
      CAPTURE(first, last);
      const std::vector<detail::SumPiece> part = detail::sumPieces(layout, first, last);
      std::size_t k = 0;
      for (const detail::SumPiece& p : all) {
        if (p.begin < first || p.end > last) continue;
        REQUIRE(k < part.size());
        CHECK(part[k].group == p.group);
        CHECK(part[k].begin == p.begin);
        CHECK(part[k].end == p.end);
        ++k;
      }
      CHECK(k == part.size());
    }
  }
  // The pieces' sums add into their groups in element order.
  Eigen::MatrixXd pieceSums(1, static_cast<Index>(all.size()));
  for (Index p = 0; p < pieceSums.cols(); ++p) pieceSums(0, p) = static_cast<double>(p + 1);
  Eigen::MatrixXd sums = Eigen::MatrixXd::Zero(1, layout.numGroups());
  detail::addPieces(all, pieceSums, sums);
  CHECK(sums(0, 0) == 1.0 + 2.0);
  CHECK(sums(0, 1) == 3.0);
  CHECK(sums(0, 2) == 4.0 + 5.0 + 6.0 + 7.0);
  CHECK(sums(0, 3) == 8.0);
}
