// Real-time hyperparameter optimisation (realTimeHyperparameters): with β = 0 it is plain training
// and its hypergradient at each update is the stored-trajectory reverse pass's of the run so far
// (projected on the same directions); with β > 0 the schedules it reports retrace its run bit for
// bit, λ moves against its hypergradients, and bad requests are refused.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>

#include <hypergrad/hypergradients/realtime.hpp>
#include <hypergrad/objectives/mlp.hpp>
#include <hypergrad/optimizers/adam.hpp>
#include <hypergrad/optimizers/momentum.hpp>
#include <hypergrad/reference/optimizer.hpp>
#include <hypergrad/reverse.hpp>

#include "../support/mlp_fixture.hpp"

using namespace hypergrad;
using Eigen::MatrixXd;
using Eigen::VectorXd;
using fixture::initialWeights;
using fixture::syntheticData;

namespace {

struct Problem {
  MlpArchitecture arch{{10, 8, 3}, Activation::Tanh};
  ParameterLayout layout = arch.layout();
  Index G = layout.numGroups(), T = 30;
  MlpObjective train{arch, syntheticData(90, 10, 3, 4), SeededBatches(5, 90, 30)};
  MlpLoss valid{arch, syntheticData(40, 10, 3, 6)};
  VectorXd w1 = initialWeights(arch, 7);
  ReferenceOptimizer<MomentumRule> prototype() const {
    return ReferenceOptimizer<MomentumRule>(layout, Schedule::constant(T, G, 0.3), Schedule::constant(T, G, 0.9));
  }
  HyperparameterDirections<MomentumRule> directions() const {
    HyperparameterDirections<MomentumRule> d(T, layout);
    d.addScheduleGroups("learningRates");
    d.addScheduleGroups("momenta");
    return d;
  }
};

bool sameBits(const VectorXd& a, const VectorXd& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), sizeof(double) * static_cast<std::size_t>(a.size())) == 0;
}

}  // namespace

TEST_CASE("RTHO with a zero meta learning rate is plain training, its hypergradients the reverse pass's of the run so far",
          "[realtime]") {
  const Problem p;
  const HyperparameterDirections<MomentumRule> d = p.directions();
  RealTimeOptions options;
  options.metaLearningRate = 0.0;
  options.interval = 7;
  const RealTimeResult r = realTimeHyperparameters(p.prototype(), p.train, p.valid, d, p.w1, options);
  REQUIRE(r.iterations == std::vector<Index>({7, 14, 21, 28}));
  CHECK(r.hyperparameters.isZero(0.0));
  CHECK(r.hessianProducts > 0);
  ReferenceOptimizer<MomentumRule> plain = p.prototype();
  plain.start(p.w1);
  train(plain, p.train);
  CHECK(sameBits(r.finalWeights, plain.weights()));
  CHECK(r.finalMetaObjective == p.valid.value(plain.weights()));
  for (std::size_t u = 0; u < r.iterations.size(); ++u) {
    CAPTURE(u);
    ReferenceOptimizer<MomentumRule> stored(p.layout, Schedule::constant(p.T, p.G, 0.3), Schedule::constant(p.T, p.G, 0.9),
                                            TrajectoryStorage::Store);
    stored.start(p.w1);
    for (Index t = 0; t < r.iterations[u]; ++t) stored.step(p.train);
    const Hypergradients exact = reverse(stored, p.train, p.valid);
    const VectorXd projected = d.project(exact);
    const VectorXd got = r.hypergradients.row(static_cast<Index>(u)).transpose();
    CHECK((got - projected).norm() < 1e-10 * projected.norm());
    CHECK(r.metaObjective[u] == exact.metaObjective);
  }
}

TEST_CASE("RTHO moves the hyperparameters against its hypergradients and reports the schedules that retrace its run",
          "[realtime]") {
  const Problem p;
  const HyperparameterDirections<MomentumRule> d = p.directions();
  RealTimeOptions options;
  options.metaLearningRate = 0.02;
  options.interval = 5;
  const RealTimeResult r = realTimeHyperparameters(p.prototype(), p.train, p.valid, d, p.w1, options);
  REQUIRE(r.trajectory.rows() == 5);
  // The first update is −β times the first hypergradient; each later one adds −β times its own.
  CHECK(r.trajectory.row(0).isApprox(-options.metaLearningRate * r.hypergradients.row(0)));
  for (Index u = 1; u < r.trajectory.rows(); ++u)
    CHECK((r.trajectory.row(u) - r.trajectory.row(u - 1)).isApprox(-options.metaLearningRate * r.hypergradients.row(u)));
  CHECK(r.hyperparameters.transpose().isApprox(r.trajectory.bottomRows(1)));
  // The schedules: the initial values until the first update, then moved by λ per group.
  const MatrixXd& alpha = r.schedulesUsed[0];
  CHECK(alpha.topRows(5).isApprox(MatrixXd::Constant(5, p.G, 0.3)));
  for (Index k = 0; k < p.G; ++k) CHECK(alpha(29, k) == Approx(0.3 + r.hyperparameters(k)).epsilon(1e-14));
  // A plain run on those schedules is the same run, bit for bit.
  ReferenceOptimizer<MomentumRule> replay(p.layout, Schedule(r.schedulesUsed[0]), Schedule(r.schedulesUsed[1]));
  replay.start(p.w1);
  train(replay, p.train);
  CHECK(sameBits(replay.weights(), r.finalWeights));
}

TEST_CASE("RTHO runs Adam's schedules too and refuses what cannot change during a run", "[realtime][errors]") {
  const Problem p;
  const ReferenceOptimizer<AdamRule> adam(p.layout, Schedule::constant(p.T, p.G, 0.01), Schedule::constant(p.T, p.G, 0.9),
                                          Schedule::constant(p.T, p.G, 0.99), Schedule::constant(p.T, p.G, 1e-6));
  HyperparameterDirections<AdamRule> d(p.T, p.layout);
  d.addScheduleGroups("learningRates");
  RealTimeOptions options;
  options.metaLearningRate = 1e-4;
  const RealTimeResult r = realTimeHyperparameters(adam, p.train, p.valid, d, p.w1, options);
  CHECK(r.trajectory.rows() == 2);
  CHECK(r.finalWeights.allFinite());

  HyperparameterDirections<MomentumRule> scales(p.T, p.layout);
  scales.addInitialScales(p.w1);
  CHECK_THROWS_WITH(realTimeHyperparameters(p.prototype(), p.train, p.valid, scales, p.w1),
                    Catch::Matchers::Contains("only schedules can change during a run"));
  options.interval = 0;
  CHECK_THROWS_AS(realTimeHyperparameters(p.prototype(), p.train, p.valid, p.directions(), p.w1, options), InvalidArgument);
  // A momentum driven out of [0, 1] is refused, not clamped.
  HyperparameterDirections<MomentumRule> gamma(p.T, p.layout);
  gamma.addSchedule("momenta", MatrixXd::Constant(p.T, p.G, 1e9), "gamma, steeply");
  RealTimeOptions wild;
  wild.metaLearningRate = 1.0;
  wild.interval = 3;
  CHECK_THROWS_WITH(realTimeHyperparameters(p.prototype(), p.train, p.valid, gamma, p.w1, wild),
                    Catch::Matchers::Contains("momentum schedule"));
}
