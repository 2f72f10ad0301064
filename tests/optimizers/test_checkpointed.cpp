// CheckpointedOptimizer: reverse() by recomputing segments from every k-th state. Over an exact
// optimizer with FloorRounding it must give the exact reverse pass's hypergradients bit for bit
// (same trajectory, same adjoint arithmetic) at any k; over the plain double reference optimizer
// it reverses the rules that cannot be inverted (Nesterov momentum, plain RMSprop), checked
// against central differences of hand-written double loops and against the store-the-trajectory
// pass; and a failure inside a recomputation leaves the run where it was.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <stdexcept>

#include <hypergrad/hypergradients/forward.hpp>
#include <hypergrad/objectives/mlp.hpp>
#include <hypergrad/optimizers/adam.hpp>
#include <hypergrad/optimizers/checkpointed.hpp>
#include <hypergrad/optimizers/nesterov.hpp>
#include <hypergrad/optimizers/plain_rmsprop.hpp>
#include <hypergrad/optimizers/sgd_momentum.hpp>
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
  MlpArchitecture arch{{12, 9, 4}, Activation::Tanh};
  ParameterLayout layout = arch.layout();
  Index G = layout.numGroups();
  MlpObjective train{arch, syntheticData(120, 12, 4, 1), SeededBatches(2, 120, 30)};
  MlpLoss valid{arch, syntheticData(60, 12, 4, 2)};
  VectorXd w1 = initialWeights(arch, 3);
};

bool sameBits(const MatrixXd& a, const MatrixXd& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(double) * static_cast<std::size_t>(a.size())) == 0;
}

template <class Result>
void requireSameBits(const Result& a, const Result& b) {
  for (Index j = 0; j < Result::numSchedules; ++j) {
    CAPTURE(j);
    CHECK(sameBits(a.schedule(j), b.schedule(j)));
  }
  for (Index s = 0; s < Result::numStates; ++s) {
    CAPTURE(s);
    CHECK(sameBits(MatrixXd(a.initialState(s)), MatrixXd(b.initialState(s))));
  }
  CHECK(a.metaObjective == b.metaObjective);
  CHECK(sameBits(MatrixXd(a.finalWeights), MatrixXd(b.finalWeights)));
}

using FloorMomentum = SgdMomentum<FixedFormat<52>, FloorRounding>;
using FloorAdam = ReversibleAdam<FixedFormat<52>, FloorRounding>;

// Flips on demand: the objective's gradient changes (a non-deterministic objective).
struct Drifting {
  const MlpObjective* f;
  bool* drift;
  Index numParameters() const { return f->numParameters(); }
  Index numHyperparameters() const { return f->numHyperparameters(); }
  void gradient(const VectorXd& w, Index t, VectorXd& g) const {
    f->gradient(w, t, g);
    if (*drift) g *= 1.0 + 1e-12;
  }
  void hessianVectorProduct(const VectorXd& w, Index t, const VectorXd& u, VectorXd& hu) const {
    f->hessianVectorProduct(w, t, u, hu);
  }
  void mixedProduct(const VectorXd& w, Index t, const VectorXd& u, VectorXd& d) const { f->mixedProduct(w, t, u, d); }
};

}  // namespace

TEST_CASE("checkpointed reverse over FloorRounding momentum is the exact reverse pass bit for bit, at any interval",
          "[checkpointed]") {
  const Problem p;
  const Index T = 23;
  const FloorMomentum exactOpt(p.layout, Schedule::constant(T, p.G, 0.3), Schedule::constant(T, p.G, 0.9));
  FloorMomentum exact = exactOpt;
  exact.start(p.w1);
  train(exact, p.train);
  const Hypergradients reference = reverse(exact, p.train, p.valid);
  for (const Index k : {Index(0), Index(1), Index(4), T, T + 5}) {
    CAPTURE(k);
    CheckpointedOptimizer<FloorMomentum> opt(exactOpt, k);
    const Index interval = k == 0 ? Index(5) : k;  // ⌈√23⌉ = 5
    CHECK(opt.checkpointInterval() == interval);
    opt.start(p.w1);
    train(opt, p.train);
    CHECK(opt.numCheckpoints() == (T - 1) / interval + 1);
    const Hypergradients hg = reverse(opt, p.train, p.valid);
    requireSameBits(hg, reference);
    CHECK(opt.iteration() == 0);
    CHECK(opt.recomputedSteps() == T);  // one extra forward pass
    // Memory: ⌈T/k⌉ checkpoints and one segment of k + 1 states (2 states of N each).
    const std::size_t state = 2 * sizeof(double) * static_cast<std::size_t>(p.layout.size());
    CHECK(opt.peakMemoryBytes() <= state * static_cast<std::size_t>((T - 1) / interval + 1 + std::min(interval, T) + 1));
  }
}

TEST_CASE("checkpointed reverse over FloorRounding Adam matches its exact reverse pass bit for bit; truncation too",
          "[checkpointed]") {
  const Problem p;
  const Index T = 17;
  const FloorAdam base(p.layout, Schedule::constant(T, p.G, 0.01), Schedule::constant(T, p.G, 0.9),
                       Schedule::constant(T, p.G, 0.99), Schedule::constant(T, p.G, 1e-6));
  FloorAdam exact = base;
  CheckpointedOptimizer<FloorAdam> opt(base, 4);
  exact.start(p.w1);
  train(exact, p.train);
  opt.start(p.w1);
  train(opt, p.train);
  const AdamHypergradients cutExact = reverseTruncated(exact, p.train, p.valid, 6);
  const AdamHypergradients cut = reverseTruncated(opt, p.train, p.valid, 6);
  requireSameBits(cut, cutExact);
  CHECK(opt.iteration() == T);  // back at the end, the run intact
  requireSameBits(reverse(opt, p.train, p.valid), reverse(exact, p.train, p.valid));
}

TEST_CASE("checkpointed reverse over BitsBackRounding is the checkpointed run's own, reproduced exactly",
          "[checkpointed]") {
  const Problem p;
  const Index T = 20;
  CheckpointedOptimizer<SgdMomentum<>> opt(SgdMomentum<>(p.layout, Schedule::constant(T, p.G, 0.3),
                                                         Schedule::constant(T, p.G, 0.9)), 6);
  opt.start(p.w1);
  train(opt, p.train);
  const Hypergradients hg = reverse(opt, p.train, p.valid);  // recomputation checked by fingerprints
  // The same schedules in plain double, stored trajectory: the same hypergradients to rounding.
  ReferenceOptimizer<MomentumRule> ref(p.layout, Schedule(opt.scheduleValues(0)), Schedule(opt.scheduleValues(1)),
                                       TrajectoryStorage::Store);
  ref.start(p.w1);
  train(ref, p.train);
  const Hypergradients stored = reverse(ref, p.train, p.valid);
  CHECK((hg.learningRates - stored.learningRates).norm() < 1e-9 * stored.learningRates.norm());
  CHECK((hg.initialWeights - stored.initialWeights).norm() < 1e-9 * stored.initialWeights.norm());
}

namespace {

// Hand-written plain double runs of the two non-reversible rules with per-group constant
// schedules, independent of the rule code: the final validation loss.
template <class Step>
double runByHand(const Problem& p, Index T, const VectorXd& w1, Step&& step) {
  VectorXd w = w1, state = VectorXd::Zero(w1.size()), g;
  for (Index t = 0; t < T; ++t) {
    p.train.gradient(w, t, g);
    step(w, state, g);
  }
  return p.valid.value(w);
}
double nesterovByHand(const Problem& p, Index T, const VectorXd& alpha, const VectorXd& mu, const VectorXd& w1) {
  const VectorXd a = p.layout.expand(alpha), m = p.layout.expand(mu);
  return runByHand(p, T, w1, [&](VectorXd& w, VectorXd& v, const VectorXd& g) {
    v = (m.array() * v.array() + g.array()).matrix();
    w -= (a.array() * (g.array() + m.array() * v.array())).matrix();
  });
}
double rmspropByHand(const Problem& p, Index T, const VectorXd& alpha, const VectorXd& rho, const VectorXd& eps,
                     const VectorXd& w1) {
  const VectorXd a = p.layout.expand(alpha), r = p.layout.expand(rho), e = p.layout.expand(eps);
  return runByHand(p, T, w1, [&](VectorXd& w, VectorXd& s, const VectorXd& g) {
    s = (r.array() * s.array() + (1.0 - r.array()) * g.array().square()).matrix();
    w -= (a.array() * g.array() / (s.array().sqrt() + e.array())).matrix();
  });
}

// The checkpointed pass equals the store-the-trajectory pass bit for bit (same doubles, same
// adjoint code), and forward mode agrees with it; returns the checkpointed result.
template <class Rule, class... Schedules>
HypergradientResult<Rule> reverseBothWays(const Problem& p, const Schedules&... schedules) {
  CheckpointedOptimizer<ReferenceOptimizer<Rule>> opt(ReferenceOptimizer<Rule>(p.layout, schedules...), 3);
  ReferenceOptimizer<Rule> stored(p.layout, schedules..., TrajectoryStorage::Store);
  opt.start(p.w1);
  train(opt, p.train);
  stored.start(p.w1);
  train(stored, p.train);
  const HypergradientResult<Rule> hg = reverse(opt, p.train, p.valid);
  requireSameBits(hg, reverse(stored, p.train, p.valid));
  // Forward mode on the same rule (the element code on dual numbers) agrees to rounding.
  ReferenceOptimizer<Rule> fwdOpt(p.layout, schedules...);
  HyperparameterDirections<Rule> d(fwdOpt.numIterations(), p.layout);
  for (const ScheduleSpec& spec : Rule::schedules) d.addScheduleGroups(spec.key);
  d.addInitialScales(p.w1);
  fwdOpt.start(p.w1);
  const VectorXd fwd = forwardHypergradients(fwdOpt, p.train, p.valid, d).values;
  CHECK((fwd - d.project(hg)).norm() < 1e-10 * fwd.norm());
  return hg;
}

}  // namespace

TEST_CASE("Nesterov momentum, reversed by checkpointing, agrees with central differences of a hand-written loop",
          "[checkpointed][nesterov]") {
  const Problem p;
  const Index T = 15;
  const VectorXd alpha = VectorXd::Constant(p.G, 0.05), mu = VectorXd::Constant(p.G, 0.8);
  const NesterovHypergradients hg =
      reverseBothWays<NesterovRule>(p, Schedule::constant(T, p.G, 0.05), Schedule::constant(T, p.G, 0.8));
  CHECK(hg.metaObjective == Approx(nesterovByHand(p, T, alpha, mu, p.w1)).epsilon(1e-12));
  const double h = 1e-6;
  for (Index k = 0; k < p.G; ++k) {
    CAPTURE(k);
    VectorXd up = alpha, down = alpha;
    up(k) += h;
    down(k) -= h;
    CHECK(hg.learningRates.col(k).sum() ==
          Approx((nesterovByHand(p, T, up, mu, p.w1) - nesterovByHand(p, T, down, mu, p.w1)) / (2 * h)).epsilon(1e-6));
    up = mu;
    down = mu;
    up(k) += h;
    down(k) -= h;
    CHECK(hg.momenta.col(k).sum() ==
          Approx((nesterovByHand(p, T, alpha, up, p.w1) - nesterovByHand(p, T, alpha, down, p.w1)) / (2 * h)).epsilon(1e-6));
  }
  const VectorXd u = initialWeights(p.arch, 9);
  CHECK(hg.initialWeights.dot(u) ==
        Approx((nesterovByHand(p, T, alpha, mu, p.w1 + h * u) - nesterovByHand(p, T, alpha, mu, p.w1 - h * u)) / (2 * h))
            .epsilon(1e-6));
}

TEST_CASE("plain RMSprop, reversed by checkpointing, agrees with central differences of a hand-written loop",
          "[checkpointed][rmsprop]") {
  const Problem p;
  const Index T = 15;
  const VectorXd alpha = VectorXd::Constant(p.G, 0.003), rho = VectorXd::Constant(p.G, 0.9),
                 eps = VectorXd::Constant(p.G, 1e-3);
  const PlainRmspropHypergradients hg = reverseBothWays<PlainRmspropRule>(
      p, Schedule::constant(T, p.G, 0.003), Schedule::constant(T, p.G, 0.9), Schedule::constant(T, p.G, 1e-3));
  CHECK(hg.metaObjective == Approx(rmspropByHand(p, T, alpha, rho, eps, p.w1)).epsilon(1e-12));
  for (Index k = 0; k < p.G; ++k) {
    CAPTURE(k);
    const auto central = [&](int which, double h) {
      VectorXd up[3] = {alpha, rho, eps}, down[3] = {alpha, rho, eps};
      up[which](k) += h;
      down[which](k) -= h;
      return (rmspropByHand(p, T, up[0], up[1], up[2], p.w1) - rmspropByHand(p, T, down[0], down[1], down[2], p.w1)) /
             (2 * h);
    };
    CHECK(hg.learningRates.col(k).sum() == Approx(central(0, 1e-7)).epsilon(1e-6));
    CHECK(hg.decays.col(k).sum() == Approx(central(1, 1e-6)).epsilon(1e-5));
    CHECK(hg.epsilons.col(k).sum() == Approx(central(2, 1e-7)).epsilon(1e-5));
  }
}

TEST_CASE("a checkpointed run whose recomputation differs fails with ExactnessViolation and stays at T; train() "
          "failures are undone", "[checkpointed][errors]") {
  const Problem p;
  const Index T = 12;
  CheckpointedOptimizer<FloorMomentum> opt(
      FloorMomentum(p.layout, Schedule::constant(T, p.G, 0.3), Schedule::constant(T, p.G, 0.9)), 4);
  bool drift = false;
  const Drifting f{&p.train, &drift};
  opt.start(p.w1);
  train(opt, f);
  const VectorXd wT = opt.weights();
  drift = true;
  CHECK_THROWS_AS(reverse(opt, f, p.valid), ExactnessViolation);
  CHECK(opt.iteration() == T);
  CHECK(sameBits(MatrixXd(opt.weights()), MatrixXd(wT)));
  drift = false;
  const Hypergradients hg = reverse(opt, f, p.valid);
  CHECK(opt.iteration() == 0);
  CHECK(hg.learningRates.allFinite());

  SECTION("a step failing in train(): the steps taken are undone") {
    struct ThrowsAt {
      const MlpObjective* f;
      Index bad;
      Index numParameters() const { return f->numParameters(); }
      Index numHyperparameters() const { return 0; }
      void gradient(const VectorXd& w, Index t, VectorXd& g) const {
        if (t == bad) throw std::runtime_error("batch lost");
        f->gradient(w, t, g);
      }
      void hessianVectorProduct(const VectorXd& w, Index t, const VectorXd& u, VectorXd& hu) const {
        f->hessianVectorProduct(w, t, u, hu);
      }
      void mixedProduct(const VectorXd&, Index, const VectorXd&, VectorXd& d) const { d.resize(0); }
    };
    opt.start(p.w1);
    CHECK_THROWS_WITH(train(opt, ThrowsAt{&p.train, 9}), "batch lost");
    CHECK(opt.iteration() == 0);
    FloorMomentum fresh(p.layout, Schedule::constant(T, p.G, 0.3), Schedule::constant(T, p.G, 0.9));
    fresh.start(p.w1);
    CHECK(sameBits(MatrixXd(opt.weights()), MatrixXd(fresh.weights())));
    train(opt, p.train);
    requireSameBits(reverse(opt, p.train, p.valid), hg);
  }
  SECTION("bad use") {
    CHECK_THROWS_AS(CheckpointedOptimizer<FloorMomentum>(FloorMomentum(p.layout, Schedule::constant(T, p.G, 0.3),
                                                                       Schedule::constant(T, p.G, 0.9)), -1),
                    InvalidArgument);
    CheckpointedOptimizer<FloorMomentum> fresh(
        FloorMomentum(p.layout, Schedule::constant(T, p.G, 0.3), Schedule::constant(T, p.G, 0.9)));
    CHECK_THROWS_AS(fresh.step(p.train), InvalidState);
    fresh.start(p.w1);
    CHECK_THROWS_AS(fresh.unstepWeights(), InvalidState);
  }
}
