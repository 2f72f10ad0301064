// The update-rule concept: the traits, and a third rule written only against the concept —
// aggregated momentum (AggMo, Lucas, Sutskever & Grosse 2019) with two velocities, three states
// and three schedules — which the shared driver, the reference arithmetic and the generic reverse
// pass must handle with no code of their own for it.
#include <catch2/catch.hpp>

#include <cmath>

#include <hypergrad/hypergradients.hpp>
#include <hypergrad/optimizers.hpp>

#include "../support/double_trainer.hpp"
#include "../support/logistic_fixture.hpp"

using namespace hypergrad;
using fixture::Logistic;
using fixture::MatrixXd;
using fixture::VectorXd;

namespace {

/// AggMo: a ← β_a a − g;  b ← β_b b − g;  w ← w + (α/2)(a + b).
struct AggMoRule {
  static constexpr const char* name = "aggregated momentum";
  enum : int { Weights = 0, Fast = 1, Slow = 2 };
  static constexpr int numStates = 3;
  static constexpr std::array<const char*, 3> stateNames{{"weights", "fast", "slow"}};
  enum : int { LearningRate = 0, BetaFast = 1, BetaSlow = 2 };
  static constexpr int numSchedules = 3;
  static constexpr std::array<ScheduleSpec, 3> schedules{{{"learningRates", "learning-rate schedule", ScheduleDomain::Real},
                                                          {"betaFast", "fast momentum schedule", ScheduleDomain::Ratio},
                                                          {"betaSlow", "slow momentum schedule", ScheduleDomain::Ratio}}};
  template <class A, class C>
  static void forwardState(A& a, const C& c, double g) {
    a.multiply(Fast, c[BetaFast]);
    a.subtract(Fast, g);
    a.multiply(Slow, c[BetaSlow]);
    a.subtract(Slow, g);
  }
  template <class A, class C>
  static void forwardWeights(A& a, const C& c) {
    a.add(Weights, 0.5 * c[LearningRate].value * (a.value(Fast) + a.value(Slow)));
  }
  static constexpr bool directionNeedsGradient = false;
  template <class B, class C>
  static void adjointWeights(B& b, const C& c) {
    b.scheduleGradient(LearningRate) += b.adjoint(Weights) * 0.5 * (b.value(Fast) + b.value(Slow));
    b.adjoint(Fast) += 0.5 * c[LearningRate].value * b.adjoint(Weights);
    b.adjoint(Slow) += 0.5 * c[LearningRate].value * b.adjoint(Weights);
  }
  template <class B, class C>
  static void direction(B& b, const C&) {
    b.direction() = -(b.adjoint(Fast) + b.adjoint(Slow));
  }
  template <class B, class C>
  static void adjointState(B& b, const C& c) {
    b.scheduleGradient(BetaFast) += b.adjoint(Fast) * b.value(Fast);
    b.scheduleGradient(BetaSlow) += b.adjoint(Slow) * b.value(Slow);
    b.adjoint(Fast) *= c[BetaFast].value;
    b.adjoint(Slow) *= c[BetaSlow].value;
  }
  struct HypergradientFields {
    Eigen::MatrixXd learningRates, betaFast, betaSlow;
    Eigen::VectorXd initialFast, initialSlow;
  };
  static constexpr std::array<Eigen::MatrixXd HypergradientFields::*, 3> scheduleFields{
      {&HypergradientFields::learningRates, &HypergradientFields::betaFast, &HypergradientFields::betaSlow}};
  static constexpr std::array<Eigen::VectorXd HypergradientFields::*, 2> stateFields{
      {&HypergradientFields::initialFast, &HypergradientFields::initialSlow}};
};

struct MissingAdjoint {
  static constexpr const char* name = "incomplete";
  static constexpr int numStates = 2;
  static constexpr std::array<const char*, 2> stateNames{{"weights", "velocity"}};
  static constexpr int numSchedules = 1;
  static constexpr std::array<ScheduleSpec, 1> schedules{{{"learningRates", "lr", ScheduleDomain::Real}}};
};

ParameterLayout twoGroups() {
  ParameterLayout layout;
  layout.addGroup("a", 5);
  layout.addGroup("b", 3);
  return layout;
}

}  // namespace

TEST_CASE("the concept traits accept the library's rules and name what a type lacks", "[concept]") {
  STATIC_REQUIRE(isUpdateRule<MomentumRule>);
  STATIC_REQUIRE(isUpdateRule<HeavyBallRule>);
  STATIC_REQUIRE(isUpdateRule<AggMoRule>);
  STATIC_REQUIRE_FALSE(isUpdateRule<MissingAdjoint>);
  STATIC_REQUIRE(detail::HasRuleStates<MissingAdjoint>::value);
  STATIC_REQUIRE_FALSE(detail::HasForwardState<MissingAdjoint>::value);
  CHECK(scheduleIndex<AggMoRule>("betaSlow") == 2);
  CHECK(stateIndex<AggMoRule>("slow") == 2);
  CHECK_THROWS_WITH(scheduleIndex<AggMoRule>("beta"), Catch::Contains("'learningRates', 'betaFast', 'betaSlow'"));
}

TEST_CASE("a three-state rule written against the concept reverses exactly and differentiates correctly",
          "[concept][reverse]") {
  const Logistic f(50, 8, 10, 21);
  const fixture::Validation valid(f, 22);
  const auto layout = twoGroups();
  const Index T = 30;
  CounterRng rng(5);
  MatrixXd alpha(T, 2), bf(T, 2), bs(T, 2);
  for (Index t = 0; t < T; ++t)
    for (Index k = 0; k < 2; ++k) {
      alpha(t, k) = 0.05 + 0.05 * rng.uniform();
      bf(t, k) = 0.5 + 0.2 * rng.uniform();
      bs(t, k) = 0.9 + 0.09 * rng.uniform();
    }
  ReversibleOptimizer<AggMoRule> opt(layout, Schedule(alpha), Schedule(bf), Schedule(bs));
  const VectorXd w1 = VectorXd::LinSpaced(8, -0.5, 0.5), a1 = VectorXd::Constant(8, 0.01);
  const auto hg = computeHypergradients(opt, f, valid, w1, a1);  // slow velocity starts at 0
  CHECK(opt.fixedWeights() == opt.startState(0));
  CHECK(opt.buffer().empty());

  // Against the naive reverse pass over the reference arithmetic's stored trajectory, with the
  // quantised ratios: the same derivative along (almost) the same trajectory.
  ReferenceOptimizer<AggMoRule> ref(layout, Schedule(alpha), Schedule(opt.scheduleValues(1)),
                                    Schedule(opt.scheduleValues(2)), TrajectoryStorage::Store);
  ref.start(w1, a1);
  train(ref, f);
  const auto naive = reverse(ref, f, valid);
  for (Index j = 0; j < 3; ++j)
    CHECK((hg.schedule(j) - naive.schedule(j)).norm() <= 1e-8 * naive.schedule(j).norm());
  CHECK((hg.initialState("fast") - naive.initialFast).norm() <= 1e-8 * naive.initialFast.norm());
  CHECK((hg.hyperparameters - naive.hyperparameters).norm() <= 1e-8 * naive.hyperparameters.norm());

  // Against central differences of the reference run (independent of any adjoint code).
  auto loss = [&](const MatrixXd& a, const MatrixXd& b1, const MatrixXd& b2, const VectorXd& fast) {
    ReferenceOptimizer<AggMoRule> r(layout, Schedule(a), Schedule(b1), Schedule(b2));
    r.start(w1, fast);
    while (r.iteration() < T) r.step(f);
    return valid.value(r.weights());
  };
  const MatrixXd q1 = opt.scheduleValues(1), q2 = opt.scheduleValues(2);
  const double eps = 1e-6;
  for (Index t : {Index(0), Index(11), Index(T - 1)}) {
    for (Index k = 0; k < 2; ++k) {
      MatrixXd p = q1, m = q1;
      p(t, k) += eps;
      m(t, k) -= eps;
      const double fd = (loss(alpha, p, q2, a1) - loss(alpha, m, q2, a1)) / (2 * eps);
      CHECK(fixture::relErr(fd, hg.betaFast(t, k)) < 1e-5);
      MatrixXd ap = alpha, am = alpha;
      ap(t, k) += eps;
      am(t, k) -= eps;
      const double fda = (loss(ap, q1, q2, a1) - loss(am, q1, q2, a1)) / (2 * eps);
      CHECK(fixture::relErr(fda, hg.learningRates(t, k)) < 1e-5);
    }
  }
  VectorXd ap = a1, am = a1;
  ap(6) += eps;
  am(6) -= eps;
  CHECK(fixture::relErr((loss(alpha, q1, q2, ap) - loss(alpha, q1, q2, am)) / (2 * eps), hg.initialFast(6)) < 1e-5);
}
