// The reverse pass on the MLP objective: exact reversal over 1000 steps, and hypergradients
// (learning rates, momenta, training pixels) against finite differences of a double run.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include <hypergrad/init.hpp>
#include <hypergrad/objectives/l2.hpp>
#include <hypergrad/objectives/mlp.hpp>
#include <hypergrad/optimizers/sgd_momentum.hpp>
#include <hypergrad/reverse.hpp>

#include "../support/double_trainer.hpp"
#include "../support/mlp_fixture.hpp"

using namespace hypergrad;

namespace {

using fixture::initialWeights;
using fixture::syntheticData;

// Records the weights the steps start from (the callback sees w_{t+1}) and the loss each step reported.
struct Curve {
  std::vector<Eigen::VectorXd> weights;
  std::vector<double> losses;
  template <class Opt>
  void onForwardStep(const Opt& opt, Index /*t*/, const Eigen::VectorXd& /*g*/) {
    losses.push_back(opt.lastLoss());
    weights.push_back(opt.weights());
  }
};

}  // namespace

TEST_CASE("an MLP trained for 1000 steps reverses to its initial weights and velocity bit for bit", "[reverse][mlp][exact]") {
  const MlpArchitecture arch({30, 20, 20, 10}, Activation::Tanh);
  const Dataset data = syntheticData(400, 30, 10, 1);
  const MlpObjective f(arch, data, SeededBatches(2, 400, 40));
  const MlpLoss valid(arch, syntheticData(200, 30, 10, 3));
  const Index T = 1000;
  const ParameterLayout layout = arch.layout();
  Eigen::MatrixXd gamma(T, layout.numGroups());
  for (Index t = 0; t < T; ++t)
    for (Index k = 0; k < layout.numGroups(); ++k) gamma(t, k) = (k % 2 == 0) ? 0.9 : 0.5 + 0.45 * (t % 7) / 7.0;
  SgdMomentum<> opt(layout, Schedule::constant(T, layout.numGroups(), 0.05), Schedule(gamma));
  Eigen::VectorXd v1 = Eigen::VectorXd::Zero(layout.size());
  v1.head(10).setConstant(0.01);
  opt.start(initialWeights(arch, 4), v1);
  const auto w0 = opt.fixedWeights();
  const auto v0 = opt.fixedVelocity();
  train(opt, f);
  CHECK(valid.value(opt.weights()) < valid.value(initialWeights(arch, 4)));  // it did learn
  CHECK(opt.buffer().informationBits() > 0);
  const Hypergradients hg = reverse(opt, f, valid);  // throws unless recovered exactly
  CHECK(opt.fixedWeights() == w0);
  CHECK(opt.fixedVelocity() == v0);
  CHECK(opt.buffer().empty());
  CHECK(hg.learningRates.allFinite());
}

TEST_CASE("the result carries the run's statistics: buffer content and bytes, forward and reverse time, schedules used",
          "[reverse][mlp][statistics]") {
  const MlpArchitecture arch({30, 20, 10}, Activation::Tanh);
  const MlpObjective f(arch, syntheticData(200, 30, 10, 1), SeededBatches(2, 200, 20));
  const MlpLoss valid(arch, syntheticData(100, 30, 10, 3));
  const Index T = 40;
  const ParameterLayout layout = arch.layout();
  SgdMomentum<> opt(layout, Schedule::constant(T, layout.numGroups(), 0.05), Schedule::constant(T, layout.numGroups(), 0.9));
  opt.start(initialWeights(arch, 4));
  CHECK(opt.forwardSeconds() == 0.0);
  train(opt, f);
  const double bits = opt.buffer().informationBits();
  const std::size_t bytes = opt.buffer().memoryBytes();
  const double forward = opt.forwardSeconds();
  CHECK(forward > 0.0);
  const Hypergradients hg = reverse(opt, f, valid);
  const RunStatistics& s = hg.statistics;
  CHECK(s.iterations == T);
  CHECK(s.informationBits == bits);
  CHECK(s.informationBits > 0.15 * 0.9 * static_cast<double>(layout.size() * (T - 1)));  // ≈ log2(1/γ) per weight-step
  CHECK(s.bufferBytes == bytes);
  CHECK(s.forwardSeconds == forward);
  CHECK(s.reverseSeconds > 0.0);
  REQUIRE(s.schedulesUsed.size() == 2);
  CHECK(s.schedulesUsed[0] == opt.scheduleValues(0));
  CHECK(s.schedulesUsed[1] == opt.quantizedMomenta());
  CHECK(s.schedulesUsed[1](0, 0) == 58982.0 / 65536.0);  // 0.9 as quantised
  opt.start(initialWeights(arch, 4));  // a new run starts a new clock
  CHECK(opt.forwardSeconds() == 0.0);
}

TEST_CASE("the result names theta's blocks: hg.hyperparameterBlock(\"l2.logLambda\") is the L2 hypergradient",
          "[reverse][mlp][l2]") {
  const MlpArchitecture arch({12, 8, 10}, Activation::Tanh);
  const MlpObjective mlp(arch, syntheticData(100, 12, 10, 5), SeededBatches(6, 100, 20));
  const ParameterLayout layout = arch.layout();
  const auto f = L2Regularized<const MlpObjective&>::perGroup(mlp, Eigen::VectorXd::Constant(layout.numGroups(), -3.0));
  const MlpLoss valid(arch, syntheticData(50, 12, 10, 6));
  const Index T = 15;
  SgdMomentum<> opt(layout, Schedule::constant(T, layout.numGroups(), 0.1), Schedule::constant(T, layout.numGroups(), 0.9));
  const Hypergradients hg = computeHypergradients(opt, f, valid, initialWeights(arch, 7));
  REQUIRE(hg.hyperparameterLayout.numGroups() == 1);
  CHECK(hg.hyperparameterLayout.group(0).name == "l2.logLambda");
  const Eigen::VectorXd dEta = hg.hyperparameterBlock("l2.logLambda");
  REQUIRE(dEta.size() == layout.numGroups());
  CHECK(dEta == hg.hyperparameters.tail(layout.numGroups()));
  CHECK(dEta.norm() > 0.0);
  CHECK_THROWS_WITH(hg.hyperparameterBlock("l2.lambda"),
                    Catch::Matchers::Contains("no block named 'l2.lambda'") &&
                        Catch::Matchers::Contains("the blocks are 'l2.logLambda'"));

  // Without hyperparameters there are no blocks, and the message says so.
  SgdMomentum<> plain(layout, Schedule::constant(T, layout.numGroups(), 0.1), Schedule::constant(T, layout.numGroups(), 0.9));
  const Hypergradients none = computeHypergradients(plain, mlp, valid, initialWeights(arch, 7));
  CHECK(none.hyperparameterLayout.numGroups() == 0);
  CHECK_THROWS_WITH(none.hyperparameterBlock("l2.logLambda"),
                    Catch::Matchers::Contains("the objective has no hyperparameters"));
}

TEST_CASE("step() reports the minibatch loss of objectives that compute it (lastLoss), the training curve for free",
          "[reverse][mlp][statistics]") {
  const MlpArchitecture arch({30, 20, 10}, Activation::Tanh);
  const MlpObjective mlp(arch, syntheticData(200, 30, 10, 1), SeededBatches(2, 200, 20));
  const auto l2 = L2Regularized<const MlpObjective&>::uniform(mlp, std::log(1e-3));
  const MlpLoss valid(arch, syntheticData(100, 30, 10, 3));
  const Index T = 25;
  const ParameterLayout layout = arch.layout();
  const auto check = [&](const auto& f) {
    SgdMomentum<> opt(layout, Schedule::constant(T, layout.numGroups(), 0.05), Schedule::constant(T, layout.numGroups(), 0.9));
    opt.start(initialWeights(arch, 4));
    CHECK(std::isnan(opt.lastLoss()));
    Curve curve;
    curve.weights.push_back(opt.weights());
    train(opt, f, curve);
    REQUIRE(curve.losses.size() == static_cast<std::size_t>(T));
    for (Index t = 0; t < T; ++t) {
      const double expected = f.value(curve.weights[static_cast<std::size_t>(t)], t);
      CHECK(curve.losses[static_cast<std::size_t>(t)] == expected);  // the same bits as value()
    }
    CHECK(curve.losses.back() < curve.losses.front());
    reverse(opt, f, valid);  // the gradients of valueAndGradient were gradient()'s: exact recovery
    opt.stepWithGradient(Eigen::VectorXd::Zero(layout.size()));
    CHECK(std::isnan(opt.lastLoss()));  // no objective, no loss
  };
  check(mlp);
  check(l2);
}

TEST_CASE("a run on the float32 MLP objective reverses exactly, and its hypergradients are close to float64's",
          "[reverse][mlp][float]") {
  const MlpArchitecture arch({30, 20, 20, 10}, Activation::Tanh);
  const Dataset data = syntheticData(400, 30, 10, 1);
  const MlpObjective f64(arch, data, SeededBatches(2, 400, 40));
  const MlpObjectiveFloat f32(arch, data, SeededBatches(2, 400, 40));
  const MlpLoss valid(arch, syntheticData(200, 30, 10, 3));
  const Index T = 100;
  const ParameterLayout layout = arch.layout();
  const Schedule alpha = Schedule::constant(T, layout.numGroups(), 0.05);
  const Schedule gamma = Schedule::constant(T, layout.numGroups(), 0.9);
  SgdMomentum<> opt64(layout, alpha, gamma), opt32(layout, alpha, gamma);
  const Eigen::VectorXd w1 = initialWeights(arch, 4);
  const Hypergradients hg64 = computeHypergradients(opt64, f64, valid, w1);
  opt32.start(w1);
  const auto w0 = opt32.fixedWeights();
  train(opt32, f32);
  const Hypergradients hg32 = reverse(opt32, f32, valid);  // throws unless recovered exactly
  CHECK(opt32.fixedWeights() == w0);
  CHECK(opt32.buffer().empty());
  // Different recurrences (float- vs double-computed gradients), so not equal; close.
  const auto rel = [](const Eigen::MatrixXd& a, const Eigen::MatrixXd& b) { return (a - b).norm() / b.norm(); };
  CHECK(rel(hg32.learningRates, hg64.learningRates) < 1e-4);
  CHECK(rel(hg32.momenta, hg64.momenta) < 1e-4);
  CHECK(rel(hg32.initialWeights, hg64.initialWeights) < 1e-4);
  CHECK(hg32.learningRates != hg64.learningRates);
}

TEST_CASE("MLP hypergradients for learning rates, momenta and training pixels match finite differences",
          "[reverse][mlp][fd]") {
  const double eps = 1e-5;
  for (std::uint64_t seed : {5u, 6u}) {
    CAPTURE(seed);
    const MlpArchitecture arch({6, 5, 3}, Activation::Softplus);
    const Dataset data = syntheticData(12, 6, 3, seed);
    const MlpObjective f(arch, data, SeededBatches(seed, 12, 4), /*inputsAreHyperparameters=*/true);
    const MlpLoss valid(arch, syntheticData(30, 6, 3, seed + 10));
    const ParameterLayout layout = arch.layout();
    const Index T = 30, G = layout.numGroups();
    Eigen::MatrixXd alpha(T, G), gamma(T, G);
    CounterRng rng(seed, 1);
    for (Index t = 0; t < T; ++t)
      for (Index k = 0; k < G; ++k) {
        alpha(t, k) = 0.3 + 0.3 * rng.uniform();
        gamma(t, k) = 0.5 + 0.4 * rng.uniform();
      }
    const Eigen::VectorXd w1 = initialWeights(arch, seed), v1 = Eigen::VectorXd::Zero(layout.size());
    SgdMomentum<> opt(layout, Schedule(alpha), Schedule(gamma));
    const Eigen::MatrixXd gq = opt.quantizedMomenta();
    const Hypergradients hg = computeHypergradients(opt, f, valid, w1, v1);

    auto loss = [&](const MlpObjective& obj, const Eigen::MatrixXd& a, const Eigen::MatrixXd& c) {
      return valid.value(fixture::trainDoubleFinal(obj, layout, a, c, w1, v1));
    };
    for (Index k = 0; k < G; ++k) {
      const Index t = (7 * k + 3) % T;
      CAPTURE(k, t);
      Eigen::MatrixXd ap = alpha, am = alpha, cp = gq, cm = gq;
      ap(t, k) += eps;
      am(t, k) -= eps;
      cp(t, k) += eps;
      cm(t, k) -= eps;
      CHECK(fixture::relErr(hg.learningRates(t, k), (loss(f, ap, gq) - loss(f, am, gq)) / (2 * eps)) < 1e-5);
      CHECK(fixture::relErr(hg.momenta(t, k), (loss(f, alpha, cp) - loss(f, alpha, cm)) / (2 * eps)) < 1e-5);
    }
    REQUIRE(hg.hyperparameters.size() == 12 * 6);
    for (Index p : {Index(0), Index(13), Index(40), Index(71)}) {  // training pixels
      MlpObjective fp = f, fm = f;
      Eigen::VectorXd theta = f.hyperparameters();
      theta(p) += eps;
      fp.setHyperparameters(theta);
      theta(p) -= 2 * eps;
      fm.setHyperparameters(theta);
      const double fd = (loss(fp, alpha, gq) - loss(fm, alpha, gq)) / (2 * eps);
      CAPTURE(p, fd, hg.hyperparameters(p));
      if (std::fabs(fd) > 1e-9) CHECK(fixture::relErr(hg.hyperparameters(p), fd) < 1e-5);
      else CHECK(std::fabs(hg.hyperparameters(p)) < 1e-9);  // example never in a batch
    }
  }
}
