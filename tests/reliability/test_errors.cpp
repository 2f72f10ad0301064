// SPDX-License-Identifier: MIT
// Every bad input of the issue "Reliability" is provoked here and must raise a typed exception
// whose message says what, where (step, group, element) and what to change — never undefined
// behaviour. Cases already covered by tests/reverse/test_sgd_momentum.cpp (wrong learning-rate
// shape, NaN learning rate, γ = 1.5, forward non-finite gradient, weight overflow, a second
// reverse, unstep at iteration 0), tests/exact (Ratio::quantize, runs, buffer) and
// tests/objectives/test_l2.cpp (per-group λ) are not repeated.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <string>

#include <hypergrad/init.hpp>
#include <hypergrad/objectives/l2.hpp>
#include <hypergrad/objectives/mlp.hpp>
#include <hypergrad/optimizers/sgd_momentum.hpp>
#include <hypergrad/reverse.hpp>

#include "../support/logistic_fixture.hpp"

using namespace hypergrad;
using Catch::Contains;
using fixture::Logistic;
using fixture::VectorXd;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

ParameterLayout twoGroups() {
  ParameterLayout layout;
  layout.addGroup("a", 5);
  layout.addGroup("b", 3);
  return layout;
}

/// Runs f, expects exception type E, returns its message.
template <class E, class F>
std::string messageOf(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    FAIL("wrong exception type: " << e.what());
  }
  FAIL("no exception thrown");
  return {};
}

/// The Logistic fixture with faults that can be switched on after the forward pass.
struct Faulty : Logistic {
  using Logistic::Logistic;
  enum class Fault { None, NanGradient, NanHvp, InfMixed, LastBitAt, Noise };
  Fault fault = Fault::None;
  Index at = 3;            // the step the fault hits
  mutable int calls = 0;   // for Noise

  void gradient(const VectorXd& w, Index t, VectorXd& g) const {
    Logistic::gradient(w, t, g);
    if (fault == Fault::NanGradient && t == at) g(6) = kNaN;
    if (fault == Fault::LastBitAt && t == at) g(0) = std::nextafter(g(0), kInf);
    if (fault == Fault::Noise) g(2) += 1e-13 * (++calls % 3);
  }
  void hessianVectorProduct(const VectorXd& w, Index t, const VectorXd& u, VectorXd& hu) const {
    Logistic::hessianVectorProduct(w, t, u, hu);
    if (fault == Fault::NanHvp && t == at) hu(1) = kNaN;
  }
  void mixedProduct(const VectorXd& w, Index t, const VectorXd& u, VectorXd& d) const {
    Logistic::mixedProduct(w, t, u, d);
    if (fault == Fault::InfMixed && t == at) d(4) = -kInf;
  }
};

/// A loss with a constant gradient c (Hessian 0, no θ): drives the velocity where a test wants.
struct ConstantGradient {
  VectorXd c;
  Index numParameters() const { return c.size(); }
  Index numHyperparameters() const { return 0; }
  void gradient(const VectorXd&, Index, VectorXd& g) const { g = c; }
  void hessianVectorProduct(const VectorXd&, Index, const VectorXd& u, VectorXd& hu) const {
    hu = VectorXd::Zero(u.size());
  }
  void mixedProduct(const VectorXd&, Index, const VectorXd&, VectorXd& d) const { d.resize(0); }
};

/// Records the state after forward step `at` (w_{at+1}, v_{at+1}).
struct Snapshot {
  Index at;
  SgdMomentum<>::Fixed w, v;
  template <class Opt>
  void onForwardStep(const Opt& opt, Index t, const VectorXd&) {
    if (t == at) {
      w = opt.fixedWeights();
      v = opt.fixedVelocity();
    }
  }
};

SgdMomentum<> trainedOptimizer(const Logistic& f, Index T) {
  SgdMomentum<> opt(twoGroups(), Schedule::constant(T, 2, 0.3), Schedule::perGroup(T, Eigen::Vector2d(0.9, 0.5)));
  opt.start(VectorXd::LinSpaced(8, -1, 1));
  train(opt, f);
  return opt;
}

}  // namespace

// ---- Parameter layouts ---------------------------------------------------------------------

TEST_CASE("a second parameter group with an existing name is rejected and leaves the layout unchanged",
          "[errors][layout]") {
  ParameterLayout layout = twoGroups();
  const ParameterLayout before = layout;
  // Accepted, it made groupIndex("a") return the first group and "group 'a'" ambiguous in messages.
  CHECK_THAT(messageOf<InvalidArgument>([&] { layout.addGroup("a", 4); }),
             Contains("addGroup") && Contains("'a' already exists (group 0)") && Contains("another name"));
  CHECK(layout == before);
  CHECK(layout.numGroups() == 2);
  CHECK(layout.size() == 8);
  CHECK(layout.groupIndex("a") == 0);
  // A distinct name still appends after the existing groups.
  CHECK(layout.addGroup("c", 4) == 2);
  CHECK(layout.group(2).offset == 8);
}

// ---- Schedules, momenta, learning rates -----------------------------------------------------

TEST_CASE("schedules whose shape does not match T or the layout are rejected", "[errors][schedule]") {
  const auto layout = twoGroups();
  // The momentum schedule has the right T but 3 groups for a layout of 2.
  CHECK_THAT(messageOf<InvalidArgument>([&] {
               SgdMomentum<>(layout, Schedule::constant(10, 2, 0.1), Schedule::constant(10, 3, 0.9));
             }),
             Contains("momentum schedule has shape 10 x 3") && Contains("10 iterations x 2 parameter groups"));
  // Longer momentum schedule than learning-rate schedule.
  CHECK_THAT(messageOf<InvalidArgument>([&] {
               SgdMomentum<>(layout, Schedule::constant(10, 2, 0.1), Schedule::constant(11, 2, 0.9));
             }),
             Contains("11 x 2"));
  CHECK_THAT(messageOf<InvalidArgument>([&] { SgdMomentum<>(layout, Schedule(), Schedule()); }),
             Contains("no iterations"));
  CHECK_THAT(messageOf<InvalidArgument>([&] { Schedule::constant(0, 2, 0.1); }), Contains("at least one iteration"));
  CHECK_THAT(messageOf<InvalidArgument>([&] { Schedule::perGroup(5, Eigen::VectorXd()); }), Contains("5 x 0"));
  CHECK_THAT(messageOf<InvalidArgument>([&] {
               SgdMomentum<>(ParameterLayout(), Schedule::constant(3, 1, 0.1), Schedule::constant(3, 1, 0.9));
             }),
             Contains("layout is empty"));
}

TEST_CASE("a learning rate that is not finite names its iteration and group", "[errors][schedule]") {
  Eigen::MatrixXd alpha = Eigen::MatrixXd::Constant(6, 2, 0.1);
  alpha(5, 1) = kInf;
  CHECK_THAT(messageOf<InvalidArgument>(
                 [&] { SgdMomentum<>(twoGroups(), Schedule(alpha), Schedule::constant(6, 2, 0.9)); }),
             Contains("learning-rate schedule at iteration 5, group 'b'") && Contains("inf") && Contains("finite"));
}

TEST_CASE("a momentum outside [0, 1] or too small to represent names its iteration and group", "[errors][schedule]") {
  const auto layout = twoGroups();
  for (double bad : {-1e-300, -0.9, kNaN, 1.0 + 1e-9}) {
    CAPTURE(bad);
    Eigen::MatrixXd gamma = Eigen::MatrixXd::Constant(4, 2, 0.9);
    gamma(3, 0) = bad;
    const std::string msg = messageOf<InvalidArgument>(
        [&] { SgdMomentum<>(layout, Schedule::constant(4, 2, 0.1), Schedule(gamma)); });
    CHECK_THAT(msg, Contains("iteration 3, group 'a'") &&
                        (std::isnan(bad) ? Contains("must be finite") : Contains("[0, 1]")));
  }
  Eigen::MatrixXd gamma = Eigen::MatrixXd::Constant(4, 2, 0.9);
  gamma(1, 1) = 1e-6;  // below 1/2^17: would quantise to 0
  CHECK_THAT(messageOf<InvalidArgument>([&] { SgdMomentum<>(layout, Schedule::constant(4, 2, 0.1), Schedule(gamma)); }),
             Contains("iteration 1, group 'b'") && Contains("smallest representable momentum") &&
                 Contains("finer Ratio"));
  // 0.99999 is representable only as the nearest n/2^16; the value actually used is reported.
  SgdMomentum<> opt(layout, Schedule::constant(4, 2, 0.1), Schedule::constant(4, 2, 0.99999));
  CHECK(opt.quantizedMomenta()(0, 0) == 65535.0 / 65536.0);
}

// ---- Initialisation scales and L2 penalties --------------------------------------------------

TEST_CASE("an initialisation scale or mean that is not finite is rejected and names the group", "[errors][init]") {
  const auto layout = twoGroups();
  CHECK_THAT(messageOf<InvalidArgument>([&] { ScaledInit(layout, Eigen::Vector2d(0.0, kNaN), 1); }),
             Contains("log scales for group 'b'") && Contains("finite"));
  CHECK_THAT(messageOf<InvalidArgument>([&] { ScaledInit(layout, Eigen::Vector2d(kInf, 0.0), 1); }),
             Contains("group 'a'"));
  CHECK_THAT(messageOf<InvalidArgument>([&] { ScaledInit(layout, Eigen::Vector3d(0, 0, 0), 1); }),
             Contains("3 entries") && Contains("2 groups"));
  CHECK_THAT(messageOf<InvalidArgument>([&] { ScaledInit(layout, Eigen::Vector2d(0, 0), 1, Eigen::Vector2d(kNaN, 0)); }),
             Contains("means for group 'a'"));
  ScaledInit init(layout, Eigen::Vector2d(-1.0, -2.0), 7);
  const VectorXd before = init.weights();
  CHECK_THROWS_AS(init.setLogScales(Eigen::Vector2d(-kInf, 0.0)), InvalidArgument);
  CHECK(init.weights() == before);  // unchanged by the failed call
  CHECK_THAT(messageOf<InvalidArgument>([&] { ScaledInit::logScalesFromFanIn(Eigen::Vector2d(784, 0)); }),
             Contains("fan-in must be positive"));
  CHECK_THAT(messageOf<InvalidArgument>([&] { init.logScaleGradient(VectorXd::Zero(7)); }), Contains("expected 8"));
}

TEST_CASE("an L2 penalty that is not finite is rejected (per weight and uniform)", "[errors][l2]") {
  const ConstantGradient f{VectorXd::Zero(8)};
  VectorXd eta = VectorXd::Constant(8, -3.0);
  eta(6) = kNaN;
  CHECK_THAT(messageOf<InvalidArgument>([&] { l2PerWeight(f, eta); }),
             Contains("log(lambda) entry 6") && Contains("finite"));
  CHECK_THAT(messageOf<InvalidArgument>([&] { L2Regularized<ConstantGradient>::uniform(f, 800.0); }),
             Contains("below ~709"));
  auto reg = l2PerWeight(f, VectorXd::Constant(8, -3.0));
  VectorXd theta = reg.hyperparameters();
  theta(theta.size() - 1) = kInf;
  const VectorXd keep = reg.logLambda();
  CHECK_THAT(messageOf<InvalidArgument>([&] { reg.setHyperparameters(theta); }), Contains("finite"));
  CHECK(reg.logLambda() == keep);
}

// ---- Non-finite values in the reverse pass ---------------------------------------------------

TEST_CASE("a non-finite gradient, HVP or mixed product during the reverse pass names the step", "[errors][reverse]") {
  const Index T = 8;
  SECTION("recomputed gradient: step, group and element; the optimizer is left as before that reverse step") {
    Faulty f(50, 8, 10, 3);
    SgdMomentum<> opt = trainedOptimizer(f, T);
    const auto wEnd = opt.fixedWeights();
    f.fault = Faulty::Fault::NanGradient;
    f.at = T - 1;
    fixture::Validation valid(f, 4);
    CHECK_THAT(messageOf<NonFiniteValue>([&] { reverse(opt, f, valid); }),
               Contains("recomputed gradient at iteration 7") && Contains("group 'b'") && Contains("element 6"));
    CHECK(opt.iteration() == T);
    CHECK(opt.fixedWeights() == wEnd);
    CHECK(opt.usable());
    f.fault = Faulty::Fault::None;  // the run can still be reversed with the healthy objective
    CHECK_NOTHROW(reverse(opt, f, valid));
  }
  SECTION("Hessian-vector product") {
    Faulty f(50, 8, 10, 3);
    SgdMomentum<> opt = trainedOptimizer(f, T);
    f.fault = Faulty::Fault::NanHvp;
    f.at = 5;
    fixture::Validation valid(f, 4);
    const auto wEnd = opt.fixedWeights();
    const auto bEnd = opt.buffer();
    CHECK_THAT(messageOf<NonFiniteValue>([&] { reverse(opt, f, valid); }),
               Contains("Hessian-vector product at iteration 5") && Contains("group '"));
    // reverse() failed as a whole: the steps it had reversed are taken again, exactly.
    CHECK(opt.iteration() == T);
    CHECK(opt.fixedWeights() == wEnd);
    CHECK(opt.buffer() == bEnd);
    f.fault = Faulty::Fault::None;
    CHECK_NOTHROW(reverse(opt, f, valid));  // and the run can still be reversed
  }
  SECTION("mixed product") {
    Faulty f(50, 8, 10, 3);
    SgdMomentum<> opt = trainedOptimizer(f, T);
    f.fault = Faulty::Fault::InfMixed;
    f.at = 2;
    fixture::Validation valid(f, 4);
    CHECK_THAT(messageOf<NonFiniteValue>([&] { reverse(opt, f, valid); }), Contains("mixed product at iteration 2"));
  }
}

// ---- Fixed-point overflow of the velocity ---------------------------------------------------

TEST_CASE("fixed-point overflow of the velocity names step, group, value and the remedies", "[errors][overflow]") {
  const auto layout = twoGroups();
  SECTION("(1 - gamma) * gradient out of range") {
    VectorXd c = VectorXd::Constant(8, 0.1);
    c(6) = 1e4;  // (1 − 0.5)·1e4 = 5000 > 2048
    const ConstantGradient f{c};
    SgdMomentum<> opt(layout, Schedule::constant(3, 2, 1e-3), Schedule::constant(3, 2, 0.5));
    opt.start(VectorXd::Zero(8));
    const std::string msg = messageOf<FixedPointOverflow>([&] { opt.step(f); });
    CHECK_THAT(msg, Contains("iteration 0") && Contains("group 'b'") && Contains("element 6") &&
                        Contains("(1 - gamma) * gradient = 5000") && Contains("±2048") && Contains("Q11.52") &&
                        Contains("smaller learning rate") && Contains("fewer fractional bits"));
    CHECK(opt.iteration() == 0);
    CHECK(opt.fixedVelocity() == SgdMomentum<>::Fixed(8));
    CHECK(opt.buffer().empty());
  }
  SECTION("velocity sum out of range after a few steps") {
    const ConstantGradient f{VectorXd::Constant(8, -2000.0)};
    SgdMomentum<> opt(layout, Schedule::constant(10, 2, 1e-6), Schedule::constant(10, 2, 0.875));
    opt.start(VectorXd::Zero(8), VectorXd::Constant(8, 2040.0));
    const auto w = opt.fixedWeights();
    const auto v = opt.fixedVelocity();
    // v = 0.875·2040 + 0.125·2000 = 2035 is in range; with a gradient of −2400 it would be
    // 0.875·2040 + 0.125·2400 = 1785 + 300 = 2085 > 2048.
    const ConstantGradient g{VectorXd::Constant(8, -2400.0)};
    const std::string msg = messageOf<FixedPointOverflow>([&] { opt.step(g); });
    CHECK_THAT(msg, Contains("iteration 0") && Contains("group 'a'") && Contains("element 0") &&
                        Contains("velocity 1785") && Contains("+ 300") && Contains("The state is unchanged"));
    CHECK(opt.fixedWeights() == w);
    CHECK(opt.fixedVelocity() == v);
    CHECK(opt.buffer().empty());
    opt.step(f);  // the healthy gradient still works from the unchanged state
    CHECK(opt.iteration() == 1);
  }
}

// ---- A reverse pass that does not match the forward run ---------------------------------------

TEST_CASE("a reverse pass with another objective, data or batch seed is reported at the first reversed step, "
          "leaving the run reversible",
          "[errors][fingerprint]") {
  const Index T = 50;
  const Logistic f(50, 8, 10, 7);
  fixture::Validation valid(f, 3);
  SECTION("other data (another objective)") {
    SgdMomentum<> opt = trainedOptimizer(f, T);
    const auto wEnd = opt.fixedWeights();
    const auto vEnd = opt.fixedVelocity();
    const auto bEnd = opt.buffer();
    const Logistic other(50, 8, 10, 8);
    const std::string msg = messageOf<ExactnessViolation>([&] { reverse(opt, other, valid); });
    CHECK_THAT(msg, Contains("gradient recomputed at iteration 49 differs") && Contains("batch schedule") &&
                        Contains("not deterministic") && Contains("Nothing was changed"));
    CHECK(opt.iteration() == T);
    CHECK(opt.fixedWeights() == wEnd);
    CHECK(opt.fixedVelocity() == vEnd);
    CHECK(opt.buffer() == bEnd);
    // The right objective still reverses the run exactly.
    CHECK_NOTHROW(reverse(opt, f, valid));
    CHECK(opt.buffer().empty());
  }
  SECTION("other batch seed") {
    SgdMomentum<> opt = trainedOptimizer(f, T);
    Logistic reseeded = f;
    reseeded.batches = SeededBatches(12345, 50, 10);
    CHECK_THAT(messageOf<ExactnessViolation>([&] { reverse(opt, reseeded, valid); }), Contains("iteration 49"));
  }
  SECTION("other hyperparameters (L2 penalties)") {
    SgdMomentum<> opt = trainedOptimizer(f, T);
    Logistic changed = f;
    changed.theta(3) += 1e-9;
    CHECK_THAT(messageOf<ExactnessViolation>([&] { reverse(opt, changed, valid); }), Contains("iteration 49"));
  }
  SECTION("a non-deterministic gradient") {
    Faulty noisy(50, 8, 10, 7);
    noisy.fault = Faulty::Fault::Noise;
    SgdMomentum<> opt = trainedOptimizer(noisy, T);
    CHECK_THAT(messageOf<ExactnessViolation>([&] { reverse(opt, noisy, valid); }),
               Contains("iteration 49") && Contains("not deterministic"));
  }
}

TEST_CASE("the first step where the reverse pass diverges is named, and the run is left intact",
          "[errors][fingerprint]") {
  const Index T = 30;
  Faulty f(50, 8, 10, 9);
  Snapshot snapshot{12, {}, {}};
  SgdMomentum<> opt(twoGroups(), Schedule::constant(T, 2, 0.3), Schedule::perGroup(T, Eigen::Vector2d(0.95, 0.7)));
  const VectorXd w1 = VectorXd::LinSpaced(8, 1, -1);
  opt.start(w1);
  const auto w0 = opt.fixedWeights();
  train(opt, f, snapshot);
  const auto wEnd = opt.fixedWeights();
  const auto vEnd = opt.fixedVelocity();
  fixture::Validation valid(f, 5);
  f.fault = Faulty::Fault::LastBitAt;  // one ulp of one element, at step 12 only
  f.at = 12;
  CHECK_THAT(messageOf<ExactnessViolation>([&] { reverse(opt, f, valid); }),
             Contains("iteration 12 differs") && Contains("Nothing was changed"));
  CHECK(opt.iteration() == T);  // reverse() re-took steps 13 … 29: the run is as before the call
  CHECK(opt.fixedWeights() == wEnd);
  CHECK(opt.fixedVelocity() == vEnd);
  // Step by step, the reverse stops exactly before iteration 12, at the state the forward left.
  while (opt.iteration() > 13) opt.unstep(f);
  CHECK(opt.fixedWeights() == snapshot.w);  // w_13, v_13
  CHECK(opt.fixedVelocity() == snapshot.v);
  CHECK_THROWS_AS(opt.unstep(f), ExactnessViolation);
  CHECK(opt.iteration() == 13);  // unstep(f) failed as a whole: still w_13, v_13
  CHECK(opt.fixedWeights() == snapshot.w);
  f.fault = Faulty::Fault::None;
  while (opt.iteration() > 0) opt.unstep(f);
  CHECK(opt.fixedWeights() == w0);
  CHECK_NOTHROW(opt.checkRecoveredStart());
}

TEST_CASE("an MLP reversed with another shard size is detected (shards change the bits)", "[errors][fingerprint]") {
  const MlpArchitecture arch({12, 8, 4}, Activation::Tanh);
  Dataset data;
  CounterRng rng(5);
  data.inputs.resize(120, 12);
  data.labels.resize(120);
  data.numClasses = 4;
  for (Index i = 0; i < data.inputs.size(); ++i) data.inputs(i) = rng.normal();
  for (Index j = 0; j < 120; ++j) data.labels(j) = static_cast<int>(rng.below(4));
  const MlpObjective f(arch, data, SeededBatches(6, 120, 100));
  const MlpLoss valid(arch, data);
  const Index T = 20;
  const ParameterLayout layout = arch.layout();
  SgdMomentum<> opt(layout, Schedule::constant(T, layout.numGroups(), 0.1),
                    Schedule::constant(T, layout.numGroups(), 0.9));
  opt.start(VectorXd::Constant(layout.size(), 0.05));
  train(opt, f);
  MlpObjective resharded = f;
  resharded.setShardSize(7);
  CHECK_THAT(messageOf<ExactnessViolation>([&] { reverse(opt, resharded, valid); }), Contains("iteration 19"));
  CHECK_NOTHROW(reverse(opt, f, valid));
}

TEST_CASE("misuse of the reverse primitives is an InvalidState or ExactnessViolation, never undefined behaviour",
          "[errors][state]") {
  const Logistic f(50, 8, 10, 11);
  SgdMomentum<> fresh(twoGroups(), Schedule::constant(5, 2, 0.3), Schedule::constant(5, 2, 0.9));
  CHECK_THAT(messageOf<InvalidState>([&] { fresh.checkRecoveredStart(); }), Contains("start() has not been called"));
  CHECK_THAT(messageOf<InvalidState>([&] { fresh.unstepWeights(); }), Contains("call start"));

  SgdMomentum<> opt = trainedOptimizer(f, 5);
  // A run reversed by an optimizer that did not run it (e.g. one built with another schedule).
  SgdMomentum<> other(twoGroups(), Schedule::constant(5, 2, 0.2), Schedule::constant(5, 2, 0.9));
  other.start(VectorXd::LinSpaced(8, -1, 1));
  fixture::Validation valid(f, 3);
  CHECK_THAT(messageOf<InvalidState>([&] { reverse(other, f, valid); }), Contains("nothing to reverse"));

  CHECK_THAT(messageOf<InvalidState>([&] { opt.unstepVelocity(VectorXd::Zero(8)); }),
             Contains("call unstepWeights() first"));
  opt.unstepWeights();
  CHECK_THAT(messageOf<InvalidState>([&] { opt.unstepWeights(); }), Contains("called twice"));
  CHECK_THAT(messageOf<InvalidArgument>([&] { opt.unstepVelocity(VectorXd::Zero(7)); }), Contains("7 entries"));
  VectorXd g;
  f.gradient(opt.weights(), 4, g);
  opt.unstepVelocity(g);
  // The buffer is not empty and the state is not w₁ until every step is undone.
  CHECK_THAT(messageOf<ExactnessViolation>([&] { opt.checkRecoveredStart(); }),
             Contains("stopped at iteration 4 instead of 0"));
  while (opt.iteration() > 0) opt.unstep(f);
  CHECK_NOTHROW(opt.checkRecoveredStart());
  CHECK_THAT(messageOf<InvalidState>([&] { opt.unstep(f); }), Contains("nothing to reverse"));
  // start() clears a half-finished reverse step.
  train(opt, f);
  opt.unstepWeights();
  opt.start(VectorXd::LinSpaced(8, -1, 1));
  CHECK_NOTHROW(opt.step(f));
  CHECK_NOTHROW(opt.unstepWeights());
}
