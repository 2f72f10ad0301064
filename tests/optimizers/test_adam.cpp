// Exactly reversible Adam: the update as torch.optim.Adam defines it, bit-exact reversal with the
// edge cases (β1 = 1, β2 close to 1, units whose gradient is exactly 0), hypergradients of every
// family against central differences of the reference arithmetic and against the naive
// store-the-trajectory reverse pass, no NaN, and buffer bits against the entropy bound.
#include <catch2/catch.hpp>

#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>

#include <hypergrad/hypergradients.hpp>
#include <hypergrad/init.hpp>
#include <hypergrad/objectives/mlp.hpp>
#include <hypergrad/optimizers/adam.hpp>
#include <hypergrad/optimizers/snapshot.hpp>
#include <hypergrad/random.hpp>
#include <hypergrad/reference/optimizer.hpp>

#include "../support/double_trainer.hpp"
#include "../support/logistic_fixture.hpp"

using namespace hypergrad;
using fixture::Logistic;
using fixture::MatrixXd;
using fixture::VectorXd;

namespace {

/// The four Adam schedules for two groups: α, β1, β2, ε.
struct AdamSchedules {
  MatrixXd alpha, beta1, beta2, eps;
  std::array<Schedule, 4> all() const { return {Schedule(alpha), Schedule(beta1), Schedule(beta2), Schedule(eps)}; }
};

AdamSchedules twoGroupSchedules(Index T) {
  AdamSchedules s;
  s.alpha = MatrixXd::Constant(T, 2, 0.01);
  s.beta1.resize(T, 2);
  s.beta2.resize(T, 2);
  s.eps = MatrixXd::Constant(T, 2, 1e-3);
  for (Index t = 0; t < T; ++t) {
    s.alpha(t, 1) = 0.02 - 0.01 * double(t) / double(T);
    s.beta1.row(t) << 0.9, 0.7 + 0.2 * double(t % 4) / 4.0;
    s.beta2.row(t) << 0.999, 0.99 - 0.01 * double(t % 3) / 3.0;
  }
  s.eps(0, 1) = 2e-3;
  return s;
}

}  // namespace

TEST_CASE("Adam steps follow torch.optim.Adam's update, bias corrections included", "[optimizer][adam]") {
  // torch: m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; m^ = m / (1 - b1^k); v^ = v / (1 - b2^k);
  //        p = p - lr m^ / (sqrt(v^) + eps), k = 1, 2, ... the step count.
  const Logistic f(40, 6, 8, 41);
  const auto layout = ParameterLayout::single(6);
  const Index T = 12;
  const double lr = 0.05, b1 = 0.875, b2 = 0.99609375, eps = 1e-8;  // dyadic: used exactly
  const std::array<Schedule, 4> schedules{Schedule::constant(T, 1, lr), Schedule::constant(T, 1, b1),
                                          Schedule::constant(T, 1, b2), Schedule::constant(T, 1, eps)};
  ReferenceOptimizer<AdamRule> ref(layout, schedules);
  VectorXd w = VectorXd::LinSpaced(6, -1, 1), m = VectorXd::Zero(6), v = VectorXd::Zero(6), g;
  ref.start(w);
  for (Index t = 0; t < T; ++t) {
    f.gradient(w, t, g);
    m = b1 * m + (1 - b1) * g;
    v = b2 * v + (1 - b2) * g.cwiseProduct(g);
    const double k = double(t + 1);
    const VectorXd mHat = m / (1 - std::pow(b1, k)), vHat = v / (1 - std::pow(b2, k));
    w = w - lr * (mHat.array() / (vHat.array().sqrt() + eps)).matrix();
    ref.step(f);
    CHECK((ref.weights() - w).norm() <= 1e-14 * w.norm());
  }
  // The exact optimizer follows it to rounding noise.
  ReversibleAdam<> opt(layout, schedules);
  opt.start(VectorXd::LinSpaced(6, -1, 1));
  train(opt, f);
  CHECK((opt.weights() - w).norm() <= 1e-12 * w.norm());
  CHECK((opt.firstMoment() - m).norm() <= 1e-12 * m.norm());
  CHECK((opt.secondMoment() - v).norm() <= 1e-12 * v.norm());
}

TEST_CASE("Adam reverses bit for bit with beta1 = 1, beta2 near 1 and units whose gradient is exactly zero",
          "[optimizer][adam][exact]") {
  Logistic f(50, 8, 10, 42);
  f.x.col(7).setZero();  // a dead input: with w_7 = 0 its gradient is exactly 0 at every step
  const fixture::Validation valid(f, 43);
  ParameterLayout layout;
  layout.addGroup("a", 5);
  layout.addGroup("b", 3);
  const Index T = 200;
  AdamSchedules s = twoGroupSchedules(T);
  s.beta1.col(1).setConstant(1.0);       // no first-moment update: m stays m1, uncorrected
  s.beta2.col(0).setConstant(0.99999);   // 1 − β2 = 1e-5
  ReversibleAdam<> opt(layout, s.all());
  VectorXd w1 = VectorXd::LinSpaced(8, -0.3, 0.3);
  w1(7) = 0.0;
  VectorXd m1 = VectorXd::Zero(8), s1 = VectorXd::Zero(8);
  m1(5) = 0.01;  // group b keeps this first moment forever (β1 = 1)
  opt.start(w1, m1, s1);
  const auto w0 = opt.fixedWeights();
  const auto m0 = opt.fixedFirstMoment();
  const auto s0 = opt.fixedSecondMoment();
  train(opt, f);
  CHECK(opt.fixedFirstMoment()[5] == m0[5]);
  CHECK(opt.fixedSecondMoment()[7] == 0);  // the dead unit saw only g = 0
  CHECK(opt.fixedWeights()[7] == 0);
  CHECK(opt.buffer().informationBits() > 0);
  const AdamHypergradients hg = reverse(opt, f, valid);  // throws unless the start is recovered
  CHECK(opt.fixedWeights() == w0);
  CHECK(opt.fixedFirstMoment() == m0);
  CHECK(opt.fixedSecondMoment() == s0);
  CHECK(opt.buffer().empty());
  // Every hypergradient is finite, the dead unit's included.
  for (Index j = 0; j < AdamRule::numSchedules; ++j) CHECK(hg.schedule(j).allFinite());
  CHECK(hg.initialWeights.allFinite());
  CHECK(hg.initialFirstMoment.allFinite());
  CHECK(hg.initialSecondMoment.allFinite());
  CHECK(hg.hyperparameters.allFinite());
  CHECK(hg.initialSecondMoment(7) == 0.0);  // m = 0 there: the step does not depend on s
  // β1 = 1 in group b: ∂f/∂β1 is finite and the bias correction is off (product 1).
  CHECK(hg.beta1.col(1).allFinite());
}

TEST_CASE("Adam hypergradients of every family match central differences of the reference arithmetic",
          "[optimizer][adam][reverse]") {
  const Logistic f(50, 8, 10, 44);
  const fixture::Validation valid(f, 45);
  ParameterLayout layout;
  layout.addGroup("a", 5);
  layout.addGroup("b", 3);
  const Index T = 40;
  const AdamSchedules s = twoGroupSchedules(T);
  ReversibleAdam<> opt(layout, s.all());
  const VectorXd w1 = VectorXd::LinSpaced(8, -0.3, 0.3), m1 = VectorXd::Constant(8, 0.01),
                 s1 = VectorXd::LinSpaced(8, 1e-4, 3e-4);
  const AdamHypergradients hg = computeHypergradients(opt, f, valid, w1, m1, s1);
  CHECK(opt.buffer().empty());

  // The reference runs on the values the exact optimizer used (β quantised to n / 2^20).
  const AdamSchedules used{s.alpha, opt.quantizedBeta1(), opt.quantizedBeta2(), s.eps};
  auto loss = [&](const AdamSchedules& x, const VectorXd& w, const VectorXd& m, const VectorXd& v,
                  const Logistic& objective) {
    ReferenceOptimizer<AdamRule> r(layout, x.all());
    r.start(w, m, v);
    while (r.iteration() < T) r.step(objective);
    return valid.value(r.weights());
  };
  auto fd = [&](MatrixXd AdamSchedules::*field, Index t, Index k, double h) {
    AdamSchedules p = used, q = used;
    (p.*field)(t, k) += h;
    (q.*field)(t, k) -= h;
    return (loss(p, w1, m1, s1, f) - loss(q, w1, m1, s1, f)) / (2 * h);
  };
  for (Index t : {Index(0), Index(13), Index(T - 1)})
    for (Index k = 0; k < 2; ++k) {
      CAPTURE(t, k);
      CHECK(fixture::relErr(fd(&AdamSchedules::alpha, t, k, 1e-6), hg.learningRates(t, k)) < 1e-5);
      CHECK(fixture::relErr(fd(&AdamSchedules::beta1, t, k, 1e-6), hg.beta1(t, k)) < 1e-5);
      CHECK(fixture::relErr(fd(&AdamSchedules::beta2, t, k, 1e-7), hg.beta2(t, k)) < 1e-5);
      CHECK(fixture::relErr(fd(&AdamSchedules::eps, t, k, 1e-7), hg.epsilons(t, k)) < 1e-5);
    }
  const double h = 1e-6;
  for (Index i : {Index(0), Index(6)}) {
    CAPTURE(i);
    VectorXd p = w1, q = w1;
    p(i) += h;
    q(i) -= h;
    CHECK(fixture::relErr((loss(used, p, m1, s1, f) - loss(used, q, m1, s1, f)) / (2 * h), hg.initialWeights(i)) < 1e-5);
    p = m1, q = m1;
    p(i) += h;
    q(i) -= h;
    CHECK(fixture::relErr((loss(used, w1, p, s1, f) - loss(used, w1, q, s1, f)) / (2 * h), hg.initialFirstMoment(i)) <
          1e-5);
    p = s1, q = s1;
    p(i) += 1e-8;
    q(i) -= 1e-8;
    CHECK(fixture::relErr((loss(used, w1, m1, p, f) - loss(used, w1, m1, q, f)) / (2e-8), hg.initialSecondMoment(i)) <
          1e-5);
    Logistic fp = f, fq = f;
    fp.theta(i) += h;
    fq.theta(i) -= h;
    CHECK(fixture::relErr((loss(used, w1, m1, s1, fp) - loss(used, w1, m1, s1, fq)) / (2 * h), hg.hyperparameters(i)) <
          1e-5);
  }
  // ∂f/∂log ε per group: Σ_t ε ∂f/∂ε, against a difference in log ε of the whole column.
  for (Index k = 0; k < 2; ++k) {
    AdamSchedules p = used, q = used;
    p.eps.col(k) *= std::exp(1e-6);
    q.eps.col(k) *= std::exp(-1e-6);
    CHECK(fixture::relErr((loss(p, w1, m1, s1, f) - loss(q, w1, m1, s1, f)) / 2e-6,
                          hg.logEpsilon(Schedule(s.eps))(k)) < 1e-5);
  }
}

TEST_CASE("Adam hypergradients match the naive store-the-trajectory reverse pass", "[optimizer][adam][reverse]") {
  const Logistic f(50, 8, 10, 46);
  const fixture::Validation valid(f, 47);
  ParameterLayout layout;
  layout.addGroup("a", 5);
  layout.addGroup("b", 3);
  const Index T = 60;
  const AdamSchedules s = twoGroupSchedules(T);
  ReversibleAdam<> opt(layout, s.all());
  const VectorXd w1 = VectorXd::LinSpaced(8, -0.3, 0.3);
  const AdamHypergradients hg = computeHypergradients(opt, f, valid, w1);
  const AdamSchedules used{s.alpha, opt.quantizedBeta1(), opt.quantizedBeta2(), s.eps};
  ReferenceOptimizer<AdamRule> naive(layout, used.all(), TrajectoryStorage::Store);
  const AdamHypergradients ref = computeHypergradients(naive, f, valid, w1);
  CHECK(naive.trajectoryBytes() == std::size_t(3 * 8 * 8 * T));
  for (Index j = 0; j < AdamRule::numSchedules; ++j) {
    CAPTURE(AdamRule::schedules[static_cast<std::size_t>(j)].key);
    CHECK((hg.schedule(j) - ref.schedule(j)).norm() <= 1e-9 * ref.schedule(j).norm());
  }
  for (Index st = 0; st < AdamRule::numStates; ++st)
    CHECK((hg.initialState(st) - ref.initialState(st)).norm() <= 1e-9 * ref.initialState(st).norm());
  CHECK((hg.hyperparameters - ref.hyperparameters).norm() <= 1e-9 * ref.hyperparameters.norm());
}

TEST_CASE("Adam rejects what it cannot run exactly, with messages that say what to change", "[optimizer][adam][errors]") {
  const auto layout = ParameterLayout::single(4);
  const Index T = 3;
  auto make = [&](double b1, double b2, double eps) {
    return ReversibleAdam<>(layout, Schedule::constant(T, 1, 0.01), Schedule::constant(T, 1, b1),
                            Schedule::constant(T, 1, b2), Schedule::constant(T, 1, eps));
  };
  CHECK_THROWS_AS(make(0.9, 0.999, 0.0), InvalidArgument);  // ε = 0 would divide by √s = 0
  CHECK_THROWS_WITH(make(0.9, 0.999, -1e-8), Catch::Contains("epsilon schedule") && Catch::Contains("> 0"));
  CHECK_NOTHROW(make(0.0, 0.999, 1e-8));  // β1 = 0: m_t is stored whole (64 bits) to be restored
  CHECK_THROWS_AS(make(-0.1, 0.999, 1e-8), InvalidArgument);
  CHECK_THROWS_AS(make(0.9, 1.5, 1e-8), InvalidArgument);
  ReversibleAdam<> opt = make(0.9, 0.999, 1e-8);
  VectorXd s1 = VectorXd::Zero(4);
  s1(2) = -1e-6;
  CHECK_THROWS_WITH(opt.start(VectorXd::Zero(4), VectorXd::Zero(4), s1),
                    Catch::Contains("second moment") && Catch::Contains("element 2") && Catch::Contains(">= 0"));
  CHECK_FALSE(opt.started());
  // β2 = 0.999 is used to within 0.05% of 1 − β2 (2^-20 resolution), and reported.
  const auto& report = opt.schedules().quantization(AdamRule::Beta2);
  CHECK(report.maxRelativeDecay < 5e-4);
  CHECK(std::fabs((1.0 - opt.quantizedBeta2()(0, 0)) / 0.001 - 1.0) < 5e-4);
}

TEST_CASE("Adam's update and adjoint stay finite for zero, tiny and huge gradient ratios", "[optimizer][adam]") {
  // g = 0 exactly, g tiny enough that (1 − β2) g² rounds to 0 (s stays 0 while m is not), and
  // a huge m/√s: every step and hypergradient finite, reversal exact.
  const auto layout = ParameterLayout::single(4);
  const Index T = 20;
  const std::array<Schedule, 4> schedules{Schedule::constant(T, 1, 1e-3), Schedule::constant(T, 1, 0.9),
                                          Schedule::constant(T, 1, 0.999), Schedule::constant(T, 1, 1e-8)};
  ReversibleAdam<> opt(layout, schedules);
  VectorXd m1 = VectorXd::Zero(4);
  m1(3) = 1e-6;  // m ≠ 0 with s = 0: the step is α m̂ / ε (10^5 m̂ here), bounded thanks to ε
  opt.start(VectorXd::Constant(4, 0.5), m1);
  const auto start = opt.exportRun();
  VectorXd g(4);
  g << 0.0, 1e-9, 3.0, 0.0;
  for (Index t = 0; t < T; ++t) opt.stepWithGradient(g);
  CHECK(opt.fixedSecondMoment()[0] == 0);
  CHECK(opt.fixedSecondMoment()[1] == 0);  // (1 − β2) g² = 1e-21 is below the resolution
  CHECK(opt.fixedFirstMoment()[1] != 0);
  CHECK(opt.weights().allFinite());
  // Reverse by hand with the same gradients: exact.
  while (opt.iteration() > 0) {
    opt.unstepWeights();
    opt.unstepOptimizerState(g);
  }
  opt.checkRecoveredStart();
  CHECK(opt.fixedWeights() == start.start[0]);

  // The hypergradients through the same situation (a linear objective with this constant g).
  struct Linear {
    VectorXd g;
    Index numParameters() const { return g.size(); }
    Index numHyperparameters() const { return 0; }
    void gradient(const VectorXd&, Index, VectorXd& out) const { out = g; }
    void hessianVectorProduct(const VectorXd&, Index, const VectorXd& u, VectorXd& hu) const {
      hu = VectorXd::Zero(u.size());
    }
    void mixedProduct(const VectorXd&, Index, const VectorXd&, VectorXd& d) const { d.resize(0); }
  };
  struct Sum {
    double value(const VectorXd& w) const { return w.sum(); }
    double valueAndGradient(const VectorXd& w, VectorXd& dw) const {
      dw = VectorXd::Ones(w.size());
      return w.sum();
    }
  };
  const AdamHypergradients hg = computeHypergradients(opt, Linear{g}, Sum{}, VectorXd::Constant(4, 0.5), m1);
  for (Index j = 0; j < AdamRule::numSchedules; ++j) CHECK(hg.schedule(j).allFinite());
  CHECK(hg.initialFirstMoment.allFinite());
  CHECK(hg.initialSecondMoment.allFinite());
  CHECK(hg.initialSecondMoment(0) == 0.0);  // m = s = 0 there
}

TEST_CASE("Adam's buffer holds within 1.02x of the entropy bound log2(1/beta1) + log2(1/beta2)",
          "[optimizer][adam][memory]") {
  const Index n = 4096, T = 150;
  CounterRng rng(48);
  for (const auto& betas : {std::pair<double, double>{0.9, 0.999}, std::pair<double, double>{0.8, 0.99}}) {
    CAPTURE(betas.first, betas.second);
    const auto layout = ParameterLayout::single(n);
    ReversibleAdam<> opt(layout, Schedule::constant(T, 1, 1e-3), Schedule::constant(T, 1, betas.first),
                         Schedule::constant(T, 1, betas.second), Schedule::constant(T, 1, 1e-8));
    VectorXd w1(n), g(n);
    for (Index i = 0; i < n; ++i) w1(i) = rng.normal();
    opt.start(w1);
    for (Index t = 0; t < T; ++t) {
      for (Index i = 0; i < n; ++i) g(i) = 0.1 * rng.normal();
      opt.stepWithGradient(g);
    }
    const double bound = -std::log2(opt.quantizedBeta1()(0, 0)) - std::log2(opt.quantizedBeta2()(0, 0));
    const double perStep = opt.buffer().informationBits() / (double(n) * double(T));
    CHECK(perStep <= 1.02 * bound);
    CHECK(perStep >= 0.98 * bound);
  }
}

TEST_CASE("10,000 Adam steps of a small MLP with per-group schedules reverse bit for bit", "[optimizer][adam][exact]") {
  CounterRng rng(49);
  Dataset d;
  d.inputs.resize(64, 6);
  d.labels.resize(64);
  d.numClasses = 3;
  for (Index j = 0; j < 64; ++j) {
    d.labels(j) = static_cast<int>(j % 3);
    for (Index i = 0; i < 6; ++i) d.inputs(j, i) = rng.normal() + (i == j % 3 ? 1.5 : 0.0);
  }
  const MlpArchitecture arch({6, 5, 3}, Activation::Tanh);
  const MlpObjective f(arch, d, SeededBatches(50, 64, 8));
  const MlpLoss trainLoss(arch, d);
  const ParameterLayout layout = arch.layout();  // W1, b1, W2, b2
  const Index T = 10000, G = layout.numGroups();
  Eigen::MatrixXd alpha(T, G), beta1(T, G), beta2(T, G);
  for (Index t = 0; t < T; ++t) {
    alpha.row(t) << 2e-3, 1e-3, 2e-3, 1e-3;
    beta1.row(t) << 0.9, 1.0, 0.8, 0.5;
    beta2.row(t) << 0.999, 0.9999, 0.99, 0.999;
  }
  ReversibleAdam<> opt(layout, Schedule(alpha), Schedule(beta1), Schedule(beta2), Schedule::constant(T, G, 1e-8));
  VectorXd w1(layout.size());
  for (Index i = 0; i < w1.size(); ++i) w1(i) = 0.3 * rng.normal();
  opt.start(w1);
  const auto start = opt.exportRun();
  train(opt, f);
  CHECK(trainLoss.value(opt.weights()) < 0.7 * trainLoss.value(w1));  // it learned
  while (opt.iteration() > 0) opt.unstep(f);
  opt.checkRecoveredStart();
  for (int s = 0; s < AdamRule::numStates; ++s) CHECK(opt.fixedState(s) == start.start[static_cast<std::size_t>(s)]);
  CHECK(opt.buffer().empty());
}

TEST_CASE("AdamW steps follow torch.optim.AdamW's decoupled weight decay", "[optimizer][adamw]") {
  // torch: p = p (1 - lr wd), then Adam's step with bias corrections.
  const Logistic f(40, 6, 8, 55);
  const auto layout = ParameterLayout::single(6);
  const Index T = 12;
  const double lr = 0.05, b1 = 0.875, b2 = 0.99609375, eps = 1e-8, wd = 0.02;  // 1 - lr wd = 999/1000
  ReversibleAdamW<> opt(layout, Schedule::constant(T, 1, lr), Schedule::constant(T, 1, b1), Schedule::constant(T, 1, b2),
                        Schedule::constant(T, 1, eps), Schedule::constant(T, 1, wd));
  CHECK(opt.schedules().derivedValues(0)(0, 0) == 0.999);  // the closest fraction is the exact one
  CHECK(opt.schedules().derivedQuantization(0).rounded == 0);
  VectorXd w = VectorXd::LinSpaced(6, -1, 1), m = VectorXd::Zero(6), v = VectorXd::Zero(6), g;
  opt.start(w);
  for (Index t = 0; t < T; ++t) {
    f.gradient(w, t, g);
    w *= 1 - lr * wd;
    m = b1 * m + (1 - b1) * g;
    v = b2 * v + (1 - b2) * g.cwiseProduct(g);
    const double k = double(t + 1);
    w -= lr * ((m / (1 - std::pow(b1, k))).array() / ((v / (1 - std::pow(b2, k))).array().sqrt() + eps)).matrix();
  }
  train(opt, f);
  CHECK((opt.weights() - w).norm() <= 1e-12 * w.norm());
}

TEST_CASE("AdamW reverses exactly and its hypergradients, weight decays included, match central differences",
          "[optimizer][adamw][reverse]") {
  const Logistic f(50, 8, 10, 56);
  const fixture::Validation valid(f, 57);
  ParameterLayout layout;
  layout.addGroup("a", 5);
  layout.addGroup("b", 3);
  const Index T = 40;
  const AdamSchedules s = twoGroupSchedules(T);
  MatrixXd lambda(T, 2);
  lambda.col(0).setConstant(0.1);                                   // αλ = 1e-3
  for (Index t = 0; t < T; ++t) lambda(t, 1) = t < 20 ? 0.0 : 0.37;  // none, then a general αλ
  std::array<Schedule, 5> all{Schedule(s.alpha), Schedule(s.beta1), Schedule(s.beta2), Schedule(s.eps), Schedule(lambda)};
  ReversibleAdamW<> opt(layout, all);
  CHECK(opt.schedules().derivedQuantization(0).maxRelativeDecay < 1e-6);
  const VectorXd w1 = VectorXd::LinSpaced(8, -0.3, 0.3), m1 = VectorXd::Constant(8, 0.01),
                 s1 = VectorXd::LinSpaced(8, 1e-4, 3e-4);
  opt.start(w1, m1, s1);
  const auto start = opt.exportRun();
  train(opt, f);
  const AdamWHypergradients hg = reverse(opt, f, valid);
  for (int st = 0; st < AdamWRule::numStates; ++st) CHECK(opt.fixedState(st) == start.start[static_cast<std::size_t>(st)]);
  CHECK(opt.buffer().empty());

  auto loss = [&](std::array<Schedule, 5> x, const VectorXd& w) {
    ReferenceOptimizer<AdamWRule> r(layout, std::move(x));
    r.start(w, m1, s1);
    while (r.iteration() < T) r.step(f);
    return valid.value(r.weights());
  };
  const std::array<MatrixXd, 5> used{s.alpha, opt.quantizedBeta1(), opt.quantizedBeta2(), s.eps, lambda};
  auto shifted = [&](Index j, Index t, Index k, double h) {
    std::array<Schedule, 5> p;
    for (std::size_t i = 0; i < 5; ++i) {
      MatrixXd a = used[i];
      if (Index(i) == j) a(t, k) += h;
      p[i] = Schedule(a);
    }
    return loss(p, w1);
  };
  // Central differences; one-sided second-order ones at λ = 0, the edge of λ's domain.
  auto fd = [&](Index j, Index t, Index k, double h) {
    if (j == AdamWRule::WeightDecay && used[4](t, k) == 0.0)
      return (-3 * shifted(j, t, k, 0) + 4 * shifted(j, t, k, h) - shifted(j, t, k, 2 * h)) / (2 * h);
    return (shifted(j, t, k, h) - shifted(j, t, k, -h)) / (2 * h);
  };
  const std::array<double, 5> steps{1e-6, 1e-6, 1e-7, 1e-7, 1e-5};
  for (Index t : {Index(0), Index(25), Index(T - 1)})
    for (Index k = 0; k < 2; ++k)
      for (Index j = 0; j < 5; ++j) {
        CAPTURE(t, k, AdamWRule::schedules[static_cast<std::size_t>(j)].key);
        CHECK(fixture::relErr(fd(j, t, k, steps[static_cast<std::size_t>(j)]), hg.schedule(j)(t, k)) < 1e-5);
      }
  for (Index i : {Index(0), Index(6)}) {
    VectorXd p = w1, q = w1;
    p(i) += 1e-6;
    q(i) -= 1e-6;
    std::array<Schedule, 5> u;
    for (std::size_t j = 0; j < 5; ++j) u[j] = Schedule(used[j]);
    CHECK(fixture::relErr((loss(u, p) - loss(u, q)) / 2e-6, hg.initialWeights(i)) < 1e-5);
  }
}

TEST_CASE("AdamW refuses a decay 1 - alpha*lambda too close to 1 to be resolved, and stores the bound",
          "[optimizer][adamw][errors][memory]") {
  const Index T = 3;
  const auto layout = ParameterLayout::single(4);
  auto make = [&](double lambda) {
    return ReversibleAdamW<>(layout, Schedule::constant(T, 1, 1e-4), Schedule::constant(T, 1, 0.9),
                             Schedule::constant(T, 1, 0.999), Schedule::constant(T, 1, 1e-8),
                             Schedule::constant(T, 1, lambda));
  };
  CHECK_NOTHROW(make(0.0));  // λ = 0: the identity
  // αλ = 6e-7 is below 2^-20: the closest ratio is 1 − 2^-20, 59% off.
  CHECK_THROWS_WITH(make(6e-3), Catch::Contains("weight-decay factor") && Catch::Contains("cannot resolve"));
  CHECK_THROWS_WITH(make(3e-3), Catch::Contains("weight-decay factor") && Catch::Contains("exactly 1"));
  CHECK_NOTHROW(make(1.3e-2));  // αλ = 1.3e-6: 1 − 1/769231, 2e-7 off
  CHECK_THROWS_AS(make(-0.1), InvalidArgument);
  CHECK_THROWS_AS(make(2e4), InvalidArgument);  // 1 − αλ < 0

  // Bits: log2(1/β1) + log2(1/β2) + log2(1/ρ) per weight per step, within 1.02×.
  const Index n = 4096, steps = 120;
  CounterRng rng(58);
  ReversibleAdamW<> opt(ParameterLayout::single(n), Schedule::constant(steps, 1, 1e-2), Schedule::constant(steps, 1, 0.9),
                        Schedule::constant(steps, 1, 0.999), Schedule::constant(steps, 1, 1e-8),
                        Schedule::constant(steps, 1, 1.0));
  VectorXd w1(n), g(n);
  for (Index i = 0; i < n; ++i) w1(i) = rng.normal();
  opt.start(w1);
  for (Index t = 0; t < steps; ++t) {
    for (Index i = 0; i < n; ++i) g(i) = 0.1 * rng.normal();
    opt.stepWithGradient(g);
  }
  const double bound = -std::log2(opt.quantizedBeta1()(0, 0)) - std::log2(opt.quantizedBeta2()(0, 0)) -
                       std::log2(opt.schedules().derivedValues(0)(0, 0));
  const double perStep = opt.buffer().informationBits() / (double(n) * double(steps));
  CHECK(perStep <= 1.02 * bound);
  CHECK(perStep >= 0.98 * bound);
}

TEST_CASE("AdamW reverses bit for bit over runs long enough to spill the buffer's words", "[optimizer][adamw][exact]") {
  // The decay multiplies in the weights half; the word stack of each block must still be popped
  // in exactly the reverse order of the pushes (the forward runs each block's state half, then
  // its weights half).
  const Index n = 64, T = 1500;
  CounterRng rng(59);
  ReversibleAdamW<> opt(ParameterLayout::single(n), Schedule::constant(T, 1, 1e-2), Schedule::constant(T, 1, 0.5),
                        Schedule::constant(T, 1, 0.9), Schedule::constant(T, 1, 1e-8), Schedule::constant(T, 1, 30.0),
                        16);
  VectorXd w1(n);
  for (Index i = 0; i < n; ++i) w1(i) = rng.normal();
  opt.start(w1);
  const auto start = opt.exportRun();
  std::vector<VectorXd> grads;
  for (Index t = 0; t < T; ++t) {
    VectorXd g(n);
    for (Index i = 0; i < n; ++i) g(i) = 0.1 * rng.normal();
    opt.stepWithGradient(g);
    grads.push_back(g);
  }
  CHECK(opt.buffer().spilledWords() > 0);
  for (Index t = T; t-- > 0;) {
    opt.unstepWeights();
    opt.unstepOptimizerState(grads[static_cast<std::size_t>(t)]);
  }
  opt.checkRecoveredStart();
  for (int s = 0; s < AdamWRule::numStates; ++s) CHECK(opt.fixedState(s) == start.start[static_cast<std::size_t>(s)]);
}

TEST_CASE("an AdamW run saved to a stream reverses exactly in another optimizer; a failing objective in its reverse "
          "pass loses nothing",
          "[optimizer][adamw][snapshot][errors]") {
  const Logistic f(50, 8, 10, 60);
  const fixture::Validation valid(f, 61);
  const auto layout = ParameterLayout::single(8);
  const Index T = 30;
  const std::array<Schedule, 5> schedules{Schedule::constant(T, 1, 0.01), Schedule::constant(T, 1, 0.9),
                                          Schedule::constant(T, 1, 0.999), Schedule::constant(T, 1, 1e-3),
                                          Schedule::constant(T, 1, 0.05)};
  ReversibleAdamW<> opt(layout, schedules);
  const VectorXd w1 = VectorXd::LinSpaced(8, -0.3, 0.3);
  opt.start(w1);
  const auto start = opt.exportRun();
  train(opt, f);
  std::stringstream file;
  saveRun(opt, file);

  // A Hessian-vector product that fails once, at reverse iteration 12: reverse() throws, and the
  // optimizer is back at iteration T with the run intact.
  struct Flaky {
    const Logistic* f;
    mutable int calls = 0;
    Index numParameters() const { return f->numParameters(); }
    Index numHyperparameters() const { return f->numHyperparameters(); }
    void gradient(const VectorXd& w, Index t, VectorXd& g) const { f->gradient(w, t, g); }
    void hessianVectorProduct(const VectorXd& w, Index t, const VectorXd& u, VectorXd& hu) const {
      if (t == 12 && calls++ == 0) throw std::runtime_error("transient failure");
      f->hessianVectorProduct(w, t, u, hu);
    }
    void mixedProduct(const VectorXd& w, Index t, const VectorXd& u, VectorXd& d) const { f->mixedProduct(w, t, u, d); }
  };
  const Flaky flaky{&f};
  const auto trained = opt.exportRun();
  CHECK_THROWS_WITH(reverse(opt, flaky, valid), Catch::Contains("transient failure"));
  CHECK(opt.iteration() == T);
  for (int s = 0; s < AdamWRule::numStates; ++s) CHECK(opt.fixedState(s) == trained.state[static_cast<std::size_t>(s)]);
  CHECK(opt.buffer() == trained.buffer);
  const AdamWHypergradients hg = reverse(opt, flaky, valid);  // the second attempt succeeds

  ReversibleAdamW<> other(layout, schedules);
  loadRun(other, file, "stream");
  const AdamWHypergradients again = reverse(other, f, valid);
  for (int s = 0; s < AdamWRule::numStates; ++s) CHECK(other.fixedState(s) == start.start[static_cast<std::size_t>(s)]);
  for (Index j = 0; j < AdamWRule::numSchedules; ++j) CHECK(again.schedule(j) == hg.schedule(j));
  CHECK(again.initialWeights == hg.initialWeights);
}

TEST_CASE("Adam with beta1 = 0 in a group reverses exactly and its beta1 hypergradients, bias corrections included, "
          "match differences",
          "[optimizer][adam][zero-ratio]") {
  const Logistic f(50, 8, 10, 73);
  const fixture::Validation valid(f, 74);
  ParameterLayout layout;
  layout.addGroup("a", 5);
  layout.addGroup("b", 3);
  const Index T = 30;
  AdamSchedules s = twoGroupSchedules(T);
  for (Index t = 0; t < T; ++t) s.beta1(t, 1) = t % 4 == 1 ? 0.0 : 0.8;  // RMSprop-like steps in group b
  ReversibleAdam<> opt(layout, s.all());
  const VectorXd w1 = VectorXd::LinSpaced(8, -0.3, 0.3), m1 = VectorXd::Constant(8, 0.01);
  opt.start(w1, m1);
  const auto start = opt.exportRun();
  train(opt, f);
  const AdamHypergradients hg = reverse(opt, f, valid);
  for (int st = 0; st < AdamRule::numStates; ++st) CHECK(opt.fixedState(st) == start.start[static_cast<std::size_t>(st)]);
  const AdamSchedules used{s.alpha, opt.quantizedBeta1(), opt.quantizedBeta2(), s.eps};
  auto loss = [&](const MatrixXd& beta1) {
    AdamSchedules x = used;
    x.beta1 = beta1;
    ReferenceOptimizer<AdamRule> r(layout, x.all());
    r.start(w1, m1);
    while (r.iteration() < T) r.step(f);
    return valid.value(r.weights());
  };
  const double h = 1e-6;
  for (Index t : {Index(1), Index(2), Index(13), Index(25)})
    for (Index k = 0; k < 2; ++k) {
      CAPTURE(t, k);
      MatrixXd p = used.beta1, q = used.beta1;
      p(t, k) += h;
      q(t, k) += 2 * h;
      // One-sided (second order) at β1 = 0, the edge of the domain; the same formula elsewhere.
      const double d = (-3 * loss(used.beta1) + 4 * loss(p) - loss(q)) / (2 * h);
      CHECK(fixture::relErr(d, hg.beta1(t, k)) < 1e-5);
    }
}

TEST_CASE("AdamW hypergradients match the naive store-the-trajectory reverse pass", "[optimizer][adamw][reverse]") {
  const Logistic f(50, 8, 10, 75);
  const fixture::Validation valid(f, 76);
  ParameterLayout layout;
  layout.addGroup("a", 5);
  layout.addGroup("b", 3);
  const Index T = 50;
  const AdamSchedules s = twoGroupSchedules(T);
  MatrixXd lambda(T, 2);
  lambda.col(0).setConstant(0.1);
  lambda.col(1).setConstant(0.37);
  ReversibleAdamW<> opt(layout, {Schedule(s.alpha), Schedule(s.beta1), Schedule(s.beta2), Schedule(s.eps), Schedule(lambda)});
  const VectorXd w1 = VectorXd::LinSpaced(8, -0.3, 0.3);
  const AdamWHypergradients hg = computeHypergradients(opt, f, valid, w1);
  ReferenceOptimizer<AdamWRule> naive(layout, {Schedule(s.alpha), Schedule(opt.quantizedBeta1()), Schedule(opt.quantizedBeta2()),
                                               Schedule(s.eps), Schedule(lambda)},
                                      TrajectoryStorage::Store);
  const AdamWHypergradients ref = computeHypergradients(naive, f, valid, w1);
  for (Index j = 0; j < AdamWRule::numSchedules; ++j) {
    CAPTURE(AdamWRule::schedules[static_cast<std::size_t>(j)].key);
    CHECK((hg.schedule(j) - ref.schedule(j)).norm() <= 1e-9 * ref.schedule(j).norm());
  }
  for (Index st = 0; st < AdamWRule::numStates; ++st)
    CHECK((hg.initialState(st) - ref.initialState(st)).norm() <= 1e-9 * ref.initialState(st).norm());
}
