// Truncated reverse (reverseTruncated): the last K steps differentiated. Its rows of the schedule
// hypergradients are the full reverse pass's rows bit for bit (the backward recursion computes
// them first), the rows before T − K are zero, its initial-state hypergradients are the full
// pass's adjoints at iteration T − K (read from the full pass by a callback, an independent
// path), and the optimizer is back at T with the run intact.
#include <catch2/catch.hpp>

#include <cstring>
#include <vector>

#include <hypergrad/objectives/mlp.hpp>
#include <hypergrad/optimizers/adam.hpp>
#include <hypergrad/optimizers/sgd_momentum.hpp>
#include <hypergrad/reverse.hpp>

#include "../support/mlp_fixture.hpp"

using namespace hypergrad;
using Eigen::MatrixXd;
using Eigen::VectorXd;
using fixture::initialWeights;
using fixture::syntheticData;

namespace {

bool sameBits(const MatrixXd& a, const MatrixXd& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(double) * static_cast<std::size_t>(a.size())) == 0;
}

// Keeps the adjoints of every state at one iteration of a full reverse pass.
struct AdjointsAt {
  Index at;
  std::vector<VectorXd> adjoints;
  template <class Opt>
  void onReverseStep(const Opt& /*opt*/, Index t, const ReverseState& s) {
    if (t != at) return;
    adjoints.clear();
    for (Index k = 0; k < s.numStates; ++k) adjoints.push_back(s.adjoint(k));
  }
};

struct Problem {
  MlpArchitecture arch{{12, 10, 4}, Activation::Tanh};
  MlpObjective train{arch, syntheticData(120, 12, 4, 1), SeededBatches(2, 120, 30)};
  MlpLoss valid{arch, syntheticData(60, 12, 4, 2)};
  VectorXd w1 = initialWeights(arch, 3);
  Problem() { train.setShardSize(10); }
};

template <class Opt, class Result>
void checkTruncation(Opt& opt, const Problem& p, Index T) {
  for (const Index K : {Index(1), Index(7), T - 1, T}) {
    CAPTURE(K);
    // The full pass, with the adjoints at T − K recorded.
    opt.start(p.w1);
    train(opt, p.train);
    AdjointsAt at{T - K, {}};
    const Result full = reverse(opt, p.train, p.valid, at);
    // The truncated pass on the same run.
    opt.start(p.w1);
    train(opt, p.train);
    const VectorXd wT = opt.weights();
    const Result cut = reverseTruncated(opt, p.train, p.valid, K);
    CHECK(cut.statistics.stepsDifferentiated == K);
    for (Index j = 0; j < Result::numSchedules; ++j) {
      CAPTURE(j);
      const MatrixXd& a = full.schedule(j);
      const MatrixXd& b = cut.schedule(j);
      CHECK(sameBits(MatrixXd(a.bottomRows(K)), MatrixXd(b.bottomRows(K))));
      CHECK(b.topRows(T - K).isZero(0.0));
      if (K < T) CHECK(a.topRows(T - K).norm() > 0.0);  // what the truncation leaves out
    }
    REQUIRE(at.adjoints.size() == static_cast<std::size_t>(Result::numStates));
    for (Index s = 0; s < Result::numStates; ++s) CHECK(sameBits(MatrixXd(cut.initialState(s)), MatrixXd(at.adjoints[static_cast<std::size_t>(s)])));
    CHECK(cut.metaObjective == full.metaObjective);
    if (K < T) {
      // Back at T with the run intact: a full reverse pass of it gives the full result.
      CHECK(opt.iteration() == T);
      CHECK(sameBits(MatrixXd(opt.weights()), MatrixXd(wT)));
      const Result again = reverse(opt, p.train, p.valid);
      for (Index j = 0; j < Result::numSchedules; ++j) CHECK(sameBits(again.schedule(j), full.schedule(j)));
      CHECK(sameBits(MatrixXd(again.initialWeights), MatrixXd(full.initialWeights)));
    } else {
      CHECK(opt.iteration() == 0);
      CHECK(sameBits(MatrixXd(cut.initialWeights), MatrixXd(full.initialWeights)));
    }
  }
}

}  // namespace

TEST_CASE("truncated reverse: the last K rows are the full pass's bits, the rest zero, the run intact (momentum)",
          "[reverse][truncated]") {
  const Problem p;
  const ParameterLayout layout = p.arch.layout();
  const Index T = 30, G = layout.numGroups();
  MatrixXd alpha(T, G);
  for (Index t = 0; t < T; ++t)
    for (Index k = 0; k < G; ++k) alpha(t, k) = 0.1 + 0.05 * double((t * 3 + k) % 7) / 7.0;
  SgdMomentum<> opt(layout, Schedule(alpha), Schedule::constant(T, G, 0.9));
  checkTruncation<SgdMomentum<>, Hypergradients>(opt, p, T);
}

TEST_CASE("truncated reverse through Adam (direction from g, running products of beta)", "[reverse][truncated][adam]") {
  const Problem p;
  const ParameterLayout layout = p.arch.layout();
  const Index T = 20, G = layout.numGroups();
  ReversibleAdam<> opt(layout, Schedule::constant(T, G, 0.01), Schedule::constant(T, G, 0.9),
                       Schedule::constant(T, G, 0.999), Schedule::constant(T, G, 1e-8));
  checkTruncation<ReversibleAdam<>, AdamHypergradients>(opt, p, T);
}

TEST_CASE("reverseTruncated refuses 0 or more steps than the run has, changing nothing", "[reverse][truncated][errors]") {
  const Problem p;
  const ParameterLayout layout = p.arch.layout();
  const Index T = 5, G = layout.numGroups();
  SgdMomentum<> opt(layout, Schedule::constant(T, G, 0.1), Schedule::constant(T, G, 0.9));
  opt.start(p.w1);
  train(opt, p.train);
  const auto w = opt.fixedWeights();
  CHECK_THROWS_WITH(reverseTruncated(opt, p.train, p.valid, 0), Catch::Matchers::Contains("1 <= steps <= 5"));
  CHECK_THROWS_AS(reverseTruncated(opt, p.train, p.valid, 6), InvalidArgument);
  CHECK(opt.iteration() == T);
  CHECK(opt.fixedWeights() == w);
  const Hypergradients hg = reverse(opt, p.train, p.valid);  // the run is intact
  CHECK(hg.learningRates.norm() > 0.0);
}
