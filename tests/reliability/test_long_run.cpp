// SPDX-License-Identifier: MIT
// Long run (ctest label `long`): 100,000 forward steps of a tiny MLP with per-group momenta
// 0.99, 0.5, 0.9 and 1, then the full reverse pass, which must recover the initial weights and
// velocity bit for bit and leave the information buffer empty. Reports the buffer's
// information per element per step against the entropy bound Σ_k |k| log2(1/γ_k) / N.
#include <catch2/catch.hpp>

#include <chrono>
#include <cmath>

#include <hypergrad/init.hpp>
#include <hypergrad/objectives/mlp.hpp>
#include <hypergrad/optimizers/sgd_momentum.hpp>
#include <hypergrad/random.hpp>
#include <hypergrad/reverse.hpp>

using namespace hypergrad;

namespace {

Dataset blobs(Index examples, Index features, Index classes, std::uint64_t seed) {
  CounterRng rng(seed), centres(99);
  Eigen::MatrixXd mu(classes, features);
  for (Index i = 0; i < mu.size(); ++i) mu(i) = centres.normal();
  Dataset d;
  d.inputs.resize(examples, features);
  d.labels.resize(examples);
  d.numClasses = classes;
  for (Index j = 0; j < examples; ++j) {
    const auto c = static_cast<Index>(rng.below(static_cast<std::uint64_t>(classes)));
    d.labels(j) = static_cast<int>(c);
    for (Index i = 0; i < features; ++i) d.inputs(j, i) = mu(c, i) + 1.5 * rng.normal();
  }
  return d;
}

/// Counts the steps of both passes (and checks they arrive in order).
struct StepCounter {
  Index forward = 0, reverse = 0, nextReverse = -1;
  template <class Opt>
  void onForwardStep(const Opt&, Index t, const Eigen::VectorXd&) {
    if (t == forward) ++forward;
  }
  template <class Opt>
  void onReverseStep(const Opt&, Index t, const ReverseState&) {
    if (nextReverse < 0 || t == nextReverse) ++reverse;
    nextReverse = t - 1;
  }
};

}  // namespace

TEST_CASE("100,000 steps with per-group momenta 0.99, 0.5, 0.9 and 1 reverse bit for bit with an empty buffer",
          "[reverse][long][exact]") {
  const MlpArchitecture arch({6, 5, 3}, Activation::Tanh);
  const MlpObjective f(arch, blobs(64, 6, 3, 1), SeededBatches(2, 64, 4));
  const MlpLoss valid(arch, blobs(100, 6, 3, 3));
  const MlpLoss trainLoss(arch, f.data());
  const ParameterLayout layout = arch.layout();  // W1 (30), b1 (5), W2 (15), b2 (3)
  REQUIRE(layout.numGroups() == 4);
  const Index T = 100000, N = layout.size();
  const Eigen::Vector4d gamma(0.99, 0.5, 0.9, 1.0);
  const Eigen::Vector4d alpha(0.02, 0.05, 0.02, 0.05);
  SgdMomentum<> opt(layout, Schedule::perGroup(T, alpha), Schedule::perGroup(T, gamma));

  Eigen::VectorXd w1(N);
  CounterRng rng(4);
  for (Index i = 0; i < N; ++i) w1(i) = 0.3 * rng.normal();
  Eigen::VectorXd v1 = Eigen::VectorXd::Zero(N);
  v1.tail(3).setConstant(1e-4);  // γ = 1 keeps this velocity (and the weights drift with it)
  opt.start(w1, v1);
  const auto w0 = opt.fixedWeights();
  const auto v0 = opt.fixedVelocity();

  const auto start = std::chrono::steady_clock::now();
  StepCounter counter;
  train(opt, f, counter);
  const double forwardSeconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  REQUIRE(counter.forward == T);
  CHECK(trainLoss.value(opt.weights()) < 0.5 * trainLoss.value(w1));  // it learned
  // γ = 1 in group 3 at every step: (1 − γ) = 0, so no gradient ever reaches the velocity there.
  for (Index i = N - 3; i < N; ++i) CHECK(opt.fixedVelocity()[i] == v0[i]);

  // Entropy bound of the quantised momenta actually used, per element per step.
  const Eigen::MatrixXd& gq = opt.quantizedMomenta();
  double boundPerStep = 0;
  for (Index k = 0; k < layout.numGroups(); ++k)
    boundPerStep += static_cast<double>(layout.group(k).size) * -std::log2(gq(0, k));
  const double bits = opt.buffer().informationBits();
  const double perElementStep = bits / (static_cast<double>(N) * static_cast<double>(T));
  const double bound = boundPerStep / static_cast<double>(N);
  const double ratio = perElementStep / bound;
  WARN("long run: N = " << N << ", T = " << T << ": the buffer holds " << perElementStep
                        << " bits per element per step; entropy bound " << bound << " (ratio " << ratio
                        << "); " << opt.buffer().memoryBytes() / 1024 << " KiB; forward " << forwardSeconds << " s");
  CHECK(ratio > 0.99);
  CHECK(ratio < 1.01);

  const auto reverseStart = std::chrono::steady_clock::now();
  const Hypergradients hg = reverse(opt, f, valid, counter);  // throws unless recovered exactly
  const double reverseSeconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - reverseStart).count();
  WARN("long run: reverse " << reverseSeconds << " s");
  CHECK(counter.reverse == T);
  CHECK(opt.iteration() == 0);
  CHECK(opt.fixedWeights() == w0);
  CHECK(opt.fixedVelocity() == v0);
  CHECK(opt.buffer().empty());
  CHECK_NOTHROW(opt.checkRecoveredStart());
  CHECK(hg.learningRates.allFinite());
  CHECK(hg.momenta.allFinite());
  CHECK(hg.initialWeights.allFinite());
  CHECK(hg.learningRates.rows() == T);
}
