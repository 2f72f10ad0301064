#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>

#include <hypergrad/optimizers/sgd_momentum.hpp>
#include <hypergrad/reference/optimizer.hpp>
#include <hypergrad/reverse.hpp>

#include "../support/double_trainer.hpp"
#include "../support/logistic_fixture.hpp"

using namespace hypergrad;
using fixture::Logistic;
using fixture::VectorXd;

namespace {
ParameterLayout twoGroups() {
  ParameterLayout layout;
  layout.addGroup("a", 5);
  layout.addGroup("b", 3);
  return layout;
}
}  // namespace

TEST_CASE("ReversibleWithRatioBits names a finer ratio without the other template parameters", "[optimizer]") {
  static_assert(std::is_same_v<ReversibleWithRatioBits<MomentumRule, 16>, SgdMomentum<>>);
  static_assert(std::is_same_v<ReversibleWithRatioBits<MomentumRule, 20>,
                               SgdMomentum<FixedFormat<52>, BitsBackRounding, 20, 28>>);
  const ParameterLayout layout = ParameterLayout::single(3, "w");
  const ReversibleWithRatioBits<MomentumRule, 20> fine(layout, Schedule::constant(2, 1, 0.1), Schedule::constant(2, 1, 0.999));
  const SgdMomentum<> coarse(layout, Schedule::constant(2, 1, 0.1), Schedule::constant(2, 1, 0.999));
  CHECK(fine.quantizedMomenta()(0, 0) == 1047527.0 / 1048576.0);  // 1 − γ within 0.05% of 0.001
  CHECK(coarse.quantizedMomenta()(0, 0) == 65470.0 / 65536.0);     // 0.7% off at 16 bits
}

TEST_CASE("the optimizer's fixed-point trajectory follows the double recurrence to rounding noise", "[optimizer]") {
  const Logistic f(50, 8, 10, 5);
  const auto layout = twoGroups();
  const Index T = 60;
  SgdMomentum<> opt(layout, Schedule::constant(T, 2, 0.3), Schedule::perGroup(T, Eigen::Vector2d(0.9, 0.6)));
  const VectorXd w1 = VectorXd::LinSpaced(8, -1, 1);
  opt.start(w1);
  train(opt, f);
  const auto run = fixture::trainDouble(f, layout, Eigen::MatrixXd::Constant(T, 2, 0.3), opt.quantizedMomenta(), w1,
                                        VectorXd::Zero(8));
  CHECK((opt.weights() - run.w.back()).norm() < 1e-9 * run.w.back().norm());
  CHECK((opt.velocity() - run.v.back()).norm() < 1e-9 * run.v.back().norm());
}

TEST_CASE("unstep after step restores weights, velocity and buffer bit for bit", "[optimizer][exact]") {
  const Logistic f(50, 8, 10, 6);
  const Index T = 300;
  SgdMomentum<> opt(twoGroups(), Schedule::constant(T, 2, 0.5), Schedule::perGroup(T, Eigen::Vector2d(0.98, 0.5)));
  const VectorXd w1 = VectorXd::LinSpaced(8, -2, 2);
  const VectorXd v1 = VectorXd::LinSpaced(8, 0.3, -0.1);
  opt.start(w1, v1);
  const auto w0 = opt.fixedWeights();
  const auto v0 = opt.fixedVelocity();
  train(opt, f);
  CHECK(opt.fixedWeights() != w0);
  while (opt.iteration() > 0) opt.unstep(f);
  CHECK(opt.fixedWeights() == w0);
  CHECK(opt.fixedVelocity() == v0);
  CHECK(opt.buffer().empty());
  CHECK_NOTHROW(opt.checkRecoveredStart());
}

namespace {
// Generic over the optimizer type: forward T steps, back to the start, and the check without
// naming Opt::Fixed. Returns whether the weights differed after training and matched at the end.
template <class Opt>
std::pair<bool, bool> roundTripWeightsEqual(Opt& opt, const Logistic& f, const VectorXd& w1) {
  opt.start(w1);
  train(opt, f);
  const bool afterSteps = opt.weightsEqual(w1);
  while (opt.iteration() > 0) opt.unstep(f);
  return {afterSteps, opt.weightsEqual(w1)};
}
}  // namespace

TEST_CASE("weightsEqual compares the weights with the quantisation of a start vector, for generic code",
          "[optimizer][exact]") {
  const Logistic f(50, 8, 10, 12);
  const Index T = 40;
  const ParameterLayout layout = twoGroups();
  // 0.1 and 1/3 are not on the 2^-52 grid: start() rounds them, so weights() != w1 there.
  VectorXd w1 = VectorXd::LinSpaced(8, -1.5, 1.5);
  w1(1) = 0.1;
  w1(2) = 1.0 / 3.0;
  w1(5) = 0.0625;  // on the grid; its neighbours within the resolution are checked below
  SgdMomentum<> opt(layout, Schedule::constant(T, 2, 0.3), Schedule::constant(T, 2, 0.9));
  CHECK_THROWS_AS(opt.weightsEqual(w1), InvalidState);  // not started
  const auto [afterSteps, atStart] = roundTripWeightsEqual(opt, f, w1);
  CHECK_FALSE(afterSteps);
  CHECK(atStart);
  CHECK(opt.weights()(1) != w1(1));  // a plain double comparison would fail
  CHECK(opt.fixedWeights() == opt.quantizeWeights(w1));

  // The same generic code with the reference optimizer, which stores doubles and compares them.
  ReferenceOptimizer<MomentumRule> ref(layout, Schedule::constant(T, 2, 0.3), Schedule(opt.quantizedMomenta()),
                                       TrajectoryStorage::Store);
  const auto [refAfterSteps, refAtStart] = roundTripWeightsEqual(ref, f, w1);
  CHECK_FALSE(refAfterSteps);
  CHECK(refAtStart);

  // One element moved by less than half the resolution 2^-52 rounds to the same fixed-point value;
  // by more than half, to the next one.
  const double r = std::ldexp(1.0, -52);
  for (const double delta : {0.25 * r, -0.25 * r, 0.4375 * r}) {
    VectorXd w = w1;
    w(5) += delta;
    REQUIRE(w(5) != w1(5));
    CAPTURE(delta);
    CHECK(opt.weightsEqual(w));
    CHECK_FALSE(ref.weightsEqual(w));  // the reference compares doubles exactly
  }
  for (const double delta : {0.75 * r, -0.75 * r, r, 1e-9}) {
    VectorXd w = w1;
    w(5) += delta;
    CAPTURE(delta);
    CHECK_FALSE(opt.weightsEqual(w));
  }
  VectorXd w = w1;
  w(7) = std::numeric_limits<double>::quiet_NaN();
  CHECK_FALSE(opt.weightsEqual(w));
  w(7) = 1e300;  // out of the fixed-point range: unequal, not an exception
  CHECK_FALSE(opt.weightsEqual(w));
  CHECK_THROWS_AS(opt.weightsEqual(VectorXd::Zero(7)), InvalidArgument);
  CHECK_THROWS_AS(ref.weightsEqual(VectorXd::Zero(7)), InvalidArgument);
  CHECK_THROWS_AS(opt.quantizeWeights(VectorXd::Zero(9)), InvalidArgument);
  CHECK_THROWS_AS(opt.quantizeWeights(VectorXd::Constant(8, 1e300)), FixedPointOverflow);
}

TEST_CASE("the reverse pass detects a run reversed with a different objective", "[optimizer][errors]") {
  const Logistic f(50, 8, 10, 7), other(50, 8, 10, 8);
  const Index T = 50;
  SgdMomentum<> opt(twoGroups(), Schedule::constant(T, 2, 0.3), Schedule::constant(T, 2, 0.9));
  opt.start(VectorXd::Ones(8));
  train(opt, f);
  fixture::Validation valid(f, 3);
  CHECK_THROWS_AS(reverse(opt, other, valid), ExactnessViolation);
}

TEST_CASE("misuse of the optimizer raises typed exceptions with actionable messages", "[optimizer][errors]") {
  const Logistic f(50, 8, 10, 9);
  const auto layout = twoGroups();
  CHECK_THROWS_WITH(SgdMomentum<>(layout, Schedule::constant(10, 3, 0.1), Schedule::constant(10, 2, 0.9)),
                    Catch::Contains("10 x 3") && Catch::Contains("2 parameter groups"));
  CHECK_THROWS_WITH(SgdMomentum<>(layout, Schedule::constant(10, 2, 0.1), Schedule::constant(9, 2, 0.9)),
                    Catch::Contains("momentum schedule"));
  Eigen::MatrixXd gamma = Eigen::MatrixXd::Constant(10, 2, 0.9);
  gamma(4, 1) = 1.5;
  CHECK_THROWS_WITH(SgdMomentum<>(layout, Schedule::constant(10, 2, 0.1), Schedule(gamma)),
                    Catch::Contains("iteration 4") && Catch::Contains("'b'") && Catch::Contains("[0, 1]"));
  Eigen::MatrixXd alpha = Eigen::MatrixXd::Constant(10, 2, 0.1);
  alpha(2, 0) = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_WITH(SgdMomentum<>(layout, Schedule(alpha), Schedule::constant(10, 2, 0.9)),
                    Catch::Contains("iteration 2") && Catch::Contains("finite"));

  SgdMomentum<> opt(layout, Schedule::constant(3, 2, 0.1), Schedule::constant(3, 2, 0.9));
  CHECK_THROWS_AS(opt.step(f), InvalidState);  // not started
  CHECK_THROWS_AS(opt.start(VectorXd::Ones(7)), InvalidArgument);
  opt.start(VectorXd::Ones(8));
  CHECK_THROWS_AS(opt.unstep(f), InvalidState);  // nothing to reverse
  train(opt, f);
  CHECK_THROWS_WITH(opt.step(f), Catch::Contains("all 3 iterations"));
  fixture::Validation valid(f, 3);
  reverse(opt, f, valid);
  CHECK_THROWS_WITH(reverse(opt, f, valid), Catch::Contains("nothing to reverse"));
}

TEST_CASE("a non-finite gradient is reported with its iteration and group and leaves the state unchanged",
          "[optimizer][errors]") {
  struct Exploding : Logistic {
    using Logistic::Logistic;
    void gradient(const VectorXd& w, Index t, VectorXd& g) const {
      Logistic::gradient(w, t, g);
      if (t == 2) g(6) = std::numeric_limits<double>::infinity();
    }
  };
  const Exploding f(50, 8, 10, 10);
  SgdMomentum<> opt(twoGroups(), Schedule::constant(5, 2, 0.1), Schedule::constant(5, 2, 0.9));
  opt.start(VectorXd::Ones(8));
  opt.step(f);
  opt.step(f);
  const auto w = opt.fixedWeights();
  const auto v = opt.fixedVelocity();
  CHECK_THROWS_WITH(opt.step(f), Catch::Contains("iteration 2") && Catch::Contains("group 'b'") &&
                                     Catch::Contains("element 6"));
  CHECK(opt.fixedWeights() == w);
  CHECK(opt.fixedVelocity() == v);
  CHECK(opt.iteration() == 2);
  while (opt.iteration() > 0) opt.unstep(f);  // the steps taken can still be reversed
  CHECK_NOTHROW(opt.checkRecoveredStart());
}

TEST_CASE("fixed-point overflow of the weights names iteration, group and value, and undoes the step",
          "[optimizer][errors]") {
  const Logistic f(50, 8, 10, 12);
  SgdMomentum<> opt(twoGroups(), Schedule::constant(5, 2, 1e6), Schedule::constant(5, 2, 0.5));
  opt.start(VectorXd::Constant(8, 0.5));
  const auto w = opt.fixedWeights();
  const auto v = opt.fixedVelocity();
  try {
    opt.step(f);
    FAIL("expected FixedPointOverflow");
  } catch (const FixedPointOverflow& e) {
    const std::string msg = e.what();
    CHECK_THAT(msg, Catch::Contains("iteration 0") && Catch::Contains("group 'a'") && Catch::Contains("smaller learning rate"));
  }
  CHECK(opt.fixedWeights() == w);
  CHECK(opt.fixedVelocity() == v);
  CHECK(opt.buffer().empty());
}

TEST_CASE("with exact fractions gamma = 0.9 is used exactly; the default rounds it and reports how far",
          "[optimizer][ratio]") {
  const Logistic f(50, 8, 10, 61);
  const fixture::Validation valid(f, 62);
  const auto layout = twoGroups();
  const Index T = 30;
  const Eigen::MatrixXd alpha = Eigen::MatrixXd::Constant(T, 2, 0.3);
  Eigen::MatrixXd gamma(T, 2);
  gamma.col(0).setConstant(0.9);
  gamma.col(1).setConstant(0.8765432123);  // no small fraction: rounded either way

  SgdMomentum<> rounded(layout, Schedule(alpha), Schedule(gamma));
  const auto& report = rounded.schedules().quantization(MomentumRule::Momentum);
  CHECK(report.rounded == 2 * T);
  CHECK(report.exact == 0);
  CHECK(report.maxAbsolute <= 0.5 / 65536);
  CHECK(report.maxAbsolute > 0.0);
  CHECK(rounded.quantizedMomenta()(0, 0) == 58982.0 / 65536);

  SgdMomentum<> exact(layout, Schedule(alpha), Schedule(gamma), OptimizerOptions().exactFractions());
  CHECK(exact.quantizedMomenta()(0, 0) == 0.9);
  CHECK(exact.quantizedMomenta()(0, 1) == rounded.quantizedMomenta()(0, 1));
  CHECK(exact.schedules().quantization(MomentumRule::Momentum).exact == T);
  CHECK(exact.schedules().quantization(MomentumRule::LearningRate).rounded == 0);
  const VectorXd w1 = VectorXd::LinSpaced(8, -1, 1);
  const Hypergradients hg = computeHypergradients(exact, f, valid, w1);
  CHECK(exact.buffer().empty());  // reversed bit for bit through the 9/10 multiplies
  // ∂f/∂γ refers to the γ requested: central differences of the reference run at exactly 0.9.
  auto loss = [&](const Eigen::MatrixXd& g) {
    return valid.value(fixture::trainDouble(f, layout, alpha, g, w1, VectorXd::Zero(8)).w.back());
  };
  Eigen::MatrixXd used = exact.quantizedMomenta();
  const double eps = 1e-6;
  for (Index t : {Index(0), Index(12), Index(T - 1)}) {
    Eigen::MatrixXd p = used, m = used;
    p(t, 0) += eps;
    m(t, 0) -= eps;
    CHECK(fixture::relErr((loss(p) - loss(m)) / (2 * eps), hg.momenta(t, 0)) < 1e-5);
  }
}

TEST_CASE("gamma = 0 (plain SGD) reverses bit for bit by storing the velocity whole, and its hypergradients match "
          "one-sided differences",
          "[optimizer][exact][zero-ratio]") {
  // Long enough, with small blocks, that the stored velocities spill words and interleave with
  // the other group's bits-back words on the same block stacks.
  const Index n = 40, T = 300;
  ParameterLayout layout;
  layout.addGroup("plain", 24);
  layout.addGroup("momentum", 16);
  Eigen::MatrixXd gamma(T, 2);
  for (Index t = 0; t < T; ++t) gamma.row(t) << (t % 7 == 3 ? 0.5 : 0.0), 0.9;
  SgdMomentum<> opt(layout, Schedule::constant(T, 2, 0.01), Schedule(gamma), 16);
  CHECK(opt.schedules().hasZeroRatio());
  CounterRng rng(70);
  VectorXd w1(n), v1(n);
  for (Index i = 0; i < n; ++i) w1(i) = rng.normal(), v1(i) = 0.1 * rng.normal();
  opt.start(w1, v1);
  const auto start = opt.exportRun();
  std::vector<VectorXd> grads;
  for (Index t = 0; t < T; ++t) {
    VectorXd g(n);
    for (Index i = 0; i < n; ++i) g(i) = rng.normal();
    opt.stepWithGradient(g);
    grads.push_back(g);
  }
  CHECK(opt.buffer().spilledWords() > 0);
  // About 64 bits per plain element per γ = 0 step: the buffer holds what a stored v would.
  CHECK(opt.buffer().informationBits() > 0.9 * 64.0 * 24 * (T - T / 7));
  for (Index t = T; t-- > 0;) {
    opt.unstepWeights();
    opt.unstepOptimizerState(grads[static_cast<std::size_t>(t)]);
  }
  opt.checkRecoveredStart();
  CHECK(opt.fixedVelocity() == start.start[1]);

  // Hypergradients through γ = 0 steps (one-sided differences: γ cannot go below 0).
  const Logistic f(50, 8, 10, 71);
  const fixture::Validation valid(f, 72);
  const auto one = ParameterLayout::single(8);
  const Index Ts = 30;
  Eigen::MatrixXd alpha = Eigen::MatrixXd::Constant(Ts, 1, 0.05), g0(Ts, 1);
  for (Index t = 0; t < Ts; ++t) g0(t, 0) = t % 3 == 0 ? 0.0 : 0.75;
  SgdMomentum<> sgd(one, Schedule(alpha), Schedule(g0));
  const VectorXd w0 = VectorXd::LinSpaced(8, -0.3, 0.3), v0 = VectorXd::Constant(8, 0.05);
  const Hypergradients hg = computeHypergradients(sgd, f, valid, w0, v0);
  auto loss = [&](const Eigen::MatrixXd& a, const Eigen::MatrixXd& g, const VectorXd& v) {
    ReferenceOptimizer<MomentumRule> r(one, Schedule(a), Schedule(g));
    r.start(w0, v);
    while (r.iteration() < Ts) r.step(f);
    return valid.value(r.weights());
  };
  const double h = 1e-6;
  for (Index t : {Index(0), Index(1), Index(12), Index(27)}) {
    CAPTURE(t);
    Eigen::MatrixXd p = g0, q = g0;
    p(t, 0) += h;
    q(t, 0) += 2 * h;
    const double oneSided = (-3 * loss(alpha, g0, v0) + 4 * loss(alpha, p, v0) - loss(alpha, q, v0)) / (2 * h);
    CHECK(fixture::relErr(oneSided, hg.momenta(t, 0)) < 1e-5);
  }
  for (Index i : {Index(0), Index(5)}) {  // v₁ only reaches the result through γ_0 = 0: ∂f/∂v₁ = 0
    CHECK(hg.initialVelocity(i) == 0.0);
  }
}
