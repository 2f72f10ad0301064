// Exactly reversible RMSprop with momentum: the update as TensorFlow's RMSPropOptimizer defines
// it, bit-exact reversal (s = 0 and dead units included), hypergradients of every family against
// central differences of the reference arithmetic and the naive store-the-trajectory pass, and
// buffer bits against the entropy bound.
#include <catch2/catch.hpp>

#include <cmath>

#include <hypergrad/hypergradients.hpp>
#include <hypergrad/optimizers/rmsprop.hpp>
#include <hypergrad/random.hpp>
#include <hypergrad/reference/optimizer.hpp>

#include "../support/double_trainer.hpp"
#include "../support/logistic_fixture.hpp"

using namespace hypergrad;
using fixture::Logistic;
using fixture::MatrixXd;
using fixture::VectorXd;

namespace {

struct RmspropSchedules {
  MatrixXd alpha, mu, rho, eps;
  std::array<Schedule, 4> all() const { return {Schedule(alpha), Schedule(mu), Schedule(rho), Schedule(eps)}; }
};

RmspropSchedules twoGroupSchedules(Index T) {
  RmspropSchedules s;
  s.alpha = MatrixXd::Constant(T, 2, 2e-3);
  s.mu.resize(T, 2);
  s.rho.resize(T, 2);
  s.eps = MatrixXd::Constant(T, 2, 1e-4);
  for (Index t = 0; t < T; ++t) {
    s.alpha(t, 1) = 4e-3 - 2e-3 * double(t) / double(T);
    s.mu.row(t) << 0.9, 0.6 + 0.3 * double(t % 3) / 3.0;
    s.rho.row(t) << 0.99, 0.9 - 0.05 * double(t % 4) / 4.0;
  }
  s.eps(0, 1) = 3e-4;
  return s;
}

}  // namespace

TEST_CASE("RMSprop steps follow TensorFlow's RMSPropOptimizer with momentum", "[optimizer][rmsprop]") {
  // tf: ms = rho ms + (1 - rho) g^2; mom = momentum mom + lr g / sqrt(ms + eps); var -= mom.
  const Logistic f(40, 6, 8, 51);
  const auto layout = ParameterLayout::single(6);
  const Index T = 12;
  const double lr = 0.01, mu = 0.875, rho = 0.9375, eps = 1e-6;  // dyadic ratios: used exactly
  const std::array<Schedule, 4> schedules{Schedule::constant(T, 1, lr), Schedule::constant(T, 1, mu),
                                          Schedule::constant(T, 1, rho), Schedule::constant(T, 1, eps)};
  VectorXd w = VectorXd::LinSpaced(6, -1, 1), ms = VectorXd::Zero(6), mom = VectorXd::Zero(6), g;
  ReversibleRmsprop<> opt(layout, schedules);
  opt.start(w);
  for (Index t = 0; t < T; ++t) {
    f.gradient(w, t, g);
    ms = rho * ms + (1 - rho) * g.cwiseProduct(g);
    mom = mu * mom + lr * (g.array() / (ms.array() + eps).sqrt()).matrix();
    w = w - mom;
  }
  train(opt, f);
  CHECK((opt.weights() - w).norm() <= 1e-12 * w.norm());
  CHECK((opt.velocity() - mom).norm() <= 1e-12 * mom.norm());
  CHECK((opt.meanSquare() - ms).norm() <= 1e-12 * ms.norm());
}

TEST_CASE("RMSprop hypergradients match central differences and the naive reverse pass; reversal is exact",
          "[optimizer][rmsprop][reverse]") {
  Logistic f(50, 8, 10, 52);
  f.x.col(7).setZero();  // a dead input: with w_7 = 0 its gradient and mean square stay exactly 0
  const fixture::Validation valid(f, 53);
  ParameterLayout layout;
  layout.addGroup("a", 5);
  layout.addGroup("b", 3);
  const Index T = 40;
  const RmspropSchedules s = twoGroupSchedules(T);
  ReversibleRmsprop<> opt(layout, s.all());
  VectorXd w1 = VectorXd::LinSpaced(8, -0.3, 0.3), v1 = VectorXd::Constant(8, 1e-3), s1 = VectorXd::Constant(8, 1e-3);
  w1(7) = 0.0;
  v1(7) = 0.0;
  s1(7) = 0.0;
  opt.start(w1, v1, s1);
  const auto start = opt.exportRun();
  train(opt, f);
  CHECK(opt.fixedMeanSquare()[7] == 0);
  const RmspropHypergradients hg = reverse(opt, f, valid);
  for (int st = 0; st < RmspropRule::numStates; ++st) CHECK(opt.fixedState(st) == start.start[static_cast<std::size_t>(st)]);
  CHECK(opt.buffer().empty());
  for (Index j = 0; j < RmspropRule::numSchedules; ++j) CHECK(hg.schedule(j).allFinite());
  CHECK(hg.initialMeanSquare.allFinite());

  const RmspropSchedules used{s.alpha, opt.quantizedMomenta(), opt.quantizedDecays(), s.eps};
  auto loss = [&](const RmspropSchedules& x, const VectorXd& w, const VectorXd& v, const VectorXd& ms,
                  const Logistic& objective) {
    ReferenceOptimizer<RmspropRule> r(layout, x.all());
    r.start(w, v, ms);
    while (r.iteration() < T) r.step(objective);
    return valid.value(r.weights());
  };
  auto fd = [&](MatrixXd RmspropSchedules::*field, Index t, Index k, double h) {
    RmspropSchedules p = used, q = used;
    (p.*field)(t, k) += h;
    (q.*field)(t, k) -= h;
    return (loss(p, w1, v1, s1, f) - loss(q, w1, v1, s1, f)) / (2 * h);
  };
  for (Index t : {Index(0), Index(11), Index(T - 1)})
    for (Index k = 0; k < 2; ++k) {
      CAPTURE(t, k);
      CHECK(fixture::relErr(fd(&RmspropSchedules::alpha, t, k, 1e-7), hg.learningRates(t, k)) < 1e-5);
      CHECK(fixture::relErr(fd(&RmspropSchedules::mu, t, k, 1e-6), hg.momenta(t, k)) < 1e-5);
      CHECK(fixture::relErr(fd(&RmspropSchedules::rho, t, k, 1e-7), hg.decays(t, k)) < 1e-5);
      CHECK(fixture::relErr(fd(&RmspropSchedules::eps, t, k, 1e-8), hg.epsilons(t, k)) < 1e-5);
    }
  for (Index i : {Index(0), Index(6)}) {
    CAPTURE(i);
    const double h = 1e-6;
    VectorXd p = w1, q = w1;
    p(i) += h;
    q(i) -= h;
    CHECK(fixture::relErr((loss(used, p, v1, s1, f) - loss(used, q, v1, s1, f)) / (2 * h), hg.initialWeights(i)) < 1e-5);
    p = v1, q = v1;
    p(i) += h;
    q(i) -= h;
    CHECK(fixture::relErr((loss(used, w1, p, s1, f) - loss(used, w1, q, s1, f)) / (2 * h), hg.initialVelocity(i)) < 1e-5);
    p = s1, q = s1;
    p(i) += 1e-8;
    q(i) -= 1e-8;
    CHECK(fixture::relErr((loss(used, w1, v1, p, f) - loss(used, w1, v1, q, f)) / 2e-8, hg.initialMeanSquare(i)) < 1e-5);
    Logistic fp = f, fq = f;
    fp.theta(i) += h;
    fq.theta(i) -= h;
    CHECK(fixture::relErr((loss(used, w1, v1, s1, fp) - loss(used, w1, v1, s1, fq)) / (2 * h), hg.hyperparameters(i)) <
          1e-5);
  }

  ReferenceOptimizer<RmspropRule> naive(layout, used.all(), TrajectoryStorage::Store);
  const RmspropHypergradients ref = computeHypergradients(naive, f, valid, w1, v1, s1);
  for (Index j = 0; j < RmspropRule::numSchedules; ++j)
    CHECK((hg.schedule(j) - ref.schedule(j)).norm() <= 1e-9 * ref.schedule(j).norm());
  for (Index st = 0; st < RmspropRule::numStates; ++st)
    CHECK((hg.initialState(st) - ref.initialState(st)).norm() <= 1e-9 * ref.initialState(st).norm());
}

TEST_CASE("RMSprop's buffer holds within 1.02x of the entropy bound log2(1/mu) + log2(1/rho)",
          "[optimizer][rmsprop][memory]") {
  const Index n = 4096, T = 150;
  CounterRng rng(54);
  const auto layout = ParameterLayout::single(n);
  ReversibleRmsprop<> opt(layout, Schedule::constant(T, 1, 1e-4), Schedule::constant(T, 1, 0.9),
                          Schedule::constant(T, 1, 0.99), Schedule::constant(T, 1, 1e-8));
  VectorXd w1(n), g(n);
  for (Index i = 0; i < n; ++i) w1(i) = rng.normal();
  opt.start(w1);
  for (Index t = 0; t < T; ++t) {
    for (Index i = 0; i < n; ++i) g(i) = 0.1 * rng.normal();
    opt.stepWithGradient(g);
  }
  const double bound = -std::log2(opt.quantizedMomenta()(0, 0)) - std::log2(opt.quantizedDecays()(0, 0));
  const double perStep = opt.buffer().informationBits() / (double(n) * double(T));
  CHECK(perStep <= 1.02 * bound);
  CHECK(perStep >= 0.98 * bound);
}
