// Forward-mode hypergradients (forwardHypergradients / ForwardTangents): against the exact reverse
// pass on the same run (its result projected on the same directions) for every rule, per group
// and per schedule entry; against central differences of an independent plain double run
// (ReferenceOptimizer); and the failure paths (wrong iteration, directions of another shape,
// θ directions without a tangent product, an objective failing mid-run).
#include <catch2/catch.hpp>

#include <cmath>
#include <stdexcept>

#include <hypergrad/hypergradients/forward.hpp>
#include <hypergrad/objectives/l2.hpp>
#include <hypergrad/objectives/mlp.hpp>
#include <hypergrad/optimizers/adam.hpp>
#include <hypergrad/optimizers/heavy_ball.hpp>
#include <hypergrad/optimizers/rmsprop.hpp>
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

using Train = L2Regularized<MlpObjective>;

// A tiny MLP with a per-group L2 penalty (θ = log λ per group), minibatches of 30.
struct Problem {
  MlpArchitecture arch{{12, 10, 4}, Activation::Tanh};
  ParameterLayout layout = arch.layout();
  Index G = layout.numGroups();
  Train train = Train::perGroup(MlpObjective(arch, syntheticData(120, 12, 4, 1), SeededBatches(2, 120, 30)),
                                VectorXd::Constant(layout.numGroups(), std::log(1e-2)));
  MlpLoss valid{arch, syntheticData(60, 12, 4, 2)};
  VectorXd w1 = initialWeights(arch, 3);
};

double relErr(const VectorXd& a, const VectorXd& b) { return (a - b).norm() / b.norm(); }

// Every per-group hyperparameter the run has: each schedule constant per group, log λ per group,
// log init scale per group.
template <class Rule>
HyperparameterDirections<Rule> perGroupDirections(const Problem& p, Index T) {
  HyperparameterDirections<Rule> d(T, p.layout, p.train.numHyperparameters(), hyperparameterLayout(p.train));
  for (const ScheduleSpec& spec : Rule::schedules) d.addScheduleGroups(spec.key);
  d.addHyperparameterBlock("l2.logLambda");
  d.addHyperparameterDirection(VectorXd::Ones(p.train.numHyperparameters()), "every log lambda at once");
  d.addInitialScales(p.w1);
  return d;
}

// Forward mode trains `opt`; the reverse pass then differentiates that same run.
template <class Opt>
void checkAgainstReverse(Opt& opt, const Problem& p, Index T) {
  using Rule = typename Opt::RuleType;
  const HyperparameterDirections<Rule> d = perGroupDirections<Rule>(p, T);
  REQUIRE(d.size() == Index(Rule::numSchedules + 2) * p.G + 1);
  opt.start(p.w1);
  const DirectionalHypergradients fwd = forwardHypergradients(opt, p.train, p.valid, d);
  REQUIRE(opt.iteration() == T);
  const HypergradientResult<Rule> exact = reverse(opt, p.train, p.valid);
  const VectorXd projected = d.project(exact);
  CAPTURE(Rule::name, fwd.values.transpose(), projected.transpose());
  CHECK(fwd.method == "forward");
  CHECK(fwd.metaObjective == exact.metaObjective);
  CHECK(fwd.iterations == T);
  CHECK(fwd.hessianProducts > 0);
  CHECK(fwd.memoryBytes >= sizeof(double) * static_cast<std::size_t>(Rule::numStates * d.size() * p.layout.size()));
  CHECK(relErr(fwd.values, projected) < 1e-10);
  // Per hyperparameter too, where the value is not tiny against the rest.
  for (Index h = 0; h < d.size(); ++h) {
    CAPTURE(d.name(h));
    CHECK(std::fabs(fwd.values(h) - projected(h)) <= 1e-9 * std::fabs(projected(h)) + 1e-12 * projected.norm());
  }
}

}  // namespace

TEST_CASE("forward mode agrees with the exact reverse pass for per-group schedules, L2 and init scales of every rule",
          "[forward]") {
  const Problem p;
  const Index T = 25;
  SECTION("SGD with momentum") {
    SgdMomentum<> opt(p.layout, Schedule::constant(T, p.G, 0.3), Schedule::constant(T, p.G, 0.9));
    checkAgainstReverse(opt, p, T);
  }
  SECTION("heavy ball") {
    SgdHeavyBall<> opt(p.layout, Schedule::constant(T, p.G, 0.03), Schedule::constant(T, p.G, 0.8));
    checkAgainstReverse(opt, p, T);
  }
  SECTION("momentum RMSprop") {
    ReversibleRmsprop<> opt(p.layout, Schedule::constant(T, p.G, 0.01), Schedule::constant(T, p.G, 0.5),
                            Schedule::constant(T, p.G, 0.9), Schedule::constant(T, p.G, 1e-4));
    checkAgainstReverse(opt, p, T);
  }
  SECTION("Adam (bias corrections through the running products)") {
    ReversibleAdam<> opt(p.layout, Schedule::constant(T, p.G, 0.01), Schedule::constant(T, p.G, 0.9),
                         Schedule::constant(T, p.G, 0.99), Schedule::constant(T, p.G, 1e-6));
    checkAgainstReverse(opt, p, T);
  }
  SECTION("AdamW (the derived decay factor)") {
    ReversibleAdamW<> opt(p.layout, Schedule::constant(T, p.G, 0.01), Schedule::constant(T, p.G, 0.9),
                          Schedule::constant(T, p.G, 0.99), Schedule::constant(T, p.G, 1e-6),
                          Schedule::constant(T, p.G, 0.01));
    checkAgainstReverse(opt, p, T);
  }
}

TEST_CASE("forward mode with one hyperparameter per schedule entry gives the reverse pass's whole schedule",
          "[forward]") {
  const Problem p;
  const Index T = 12;
  MatrixXd alpha(T, p.G);
  for (Index t = 0; t < T; ++t) alpha.row(t).setConstant(0.2 + 0.01 * static_cast<double>(t));
  SgdMomentum<> opt(p.layout, Schedule(alpha), Schedule::constant(T, p.G, 0.85));
  HyperparameterDirections<MomentumRule> d = HyperparameterDirections<MomentumRule>::of(opt, p.train);
  const Index firstAlpha = d.addScheduleEntries("learningRates");
  const Index firstGamma = d.addScheduleEntries("momenta");
  REQUIRE(d.size() == 2 * T * p.G);
  CHECK(d.name(firstAlpha + 3 * p.G + 1) == "learningRates[3, " + p.layout.group(1).name + "]");
  opt.start(p.w1);
  const DirectionalHypergradients fwd = forwardHypergradients(opt, p.train, p.valid, d);
  const Hypergradients exact = reverse(opt, p.train, p.valid);
  VectorXd a(T * p.G), g(T * p.G), fa(T * p.G), fg(T * p.G);
  for (Index t = 0; t < T; ++t)
    for (Index k = 0; k < p.G; ++k) {
      a(t * p.G + k) = exact.learningRates(t, k);
      g(t * p.G + k) = exact.momenta(t, k);
      fa(t * p.G + k) = fwd.values(firstAlpha + t * p.G + k);
      fg(t * p.G + k) = fwd.values(firstGamma + t * p.G + k);
    }
  CHECK(relErr(fa, a) < 1e-10);
  CHECK(relErr(fg, g) < 1e-10);
  CHECK(fwd.value(d.name(firstGamma)) == fwd.values(firstGamma));
}

TEST_CASE("forward mode agrees with central differences of an independent plain double run", "[forward]") {
  Problem p;
  const Index T = 20;
  SgdMomentum<> opt(p.layout, Schedule::constant(T, p.G, 0.3), Schedule::constant(T, p.G, 0.9));
  HyperparameterDirections<MomentumRule> d = HyperparameterDirections<MomentumRule>::of(opt, p.train);
  const Index alpha = d.addScheduleGroups("learningRates");
  const Index gamma = d.addScheduleGroups("momenta");
  const Index lambda = d.addHyperparameterBlock("l2.logLambda");
  const Index scale = d.addInitialScales(p.w1);
  opt.start(p.w1);
  const DirectionalHypergradients fwd = forwardHypergradients(opt, p.train, p.valid, d);

  // f of a plain double run with the schedules the exact run used (γ as quantised).
  const MatrixXd alphaUsed = opt.scheduleValues(0), gammaUsed = opt.scheduleValues(1);
  const auto runDouble = [&](const MatrixXd& a, const MatrixXd& g, const Train& f, const VectorXd& w) {
    ReferenceOptimizer<MomentumRule> ref(p.layout, Schedule(a), Schedule(g));
    ref.start(w);
    train(ref, f);
    return p.valid.value(ref.weights());
  };
  const double h = 1e-5;
  for (Index k = 0; k < p.G; ++k) {
    CAPTURE(k);
    MatrixXd up = alphaUsed, down = alphaUsed;
    up.col(k).array() += h;
    down.col(k).array() -= h;
    const double dAlpha = (runDouble(up, gammaUsed, p.train, p.w1) - runDouble(down, gammaUsed, p.train, p.w1)) / (2 * h);
    CHECK(fwd.values(alpha + k) == Approx(dAlpha).epsilon(1e-6));
    up = gammaUsed;
    down = gammaUsed;
    up.col(k).array() += h;
    down.col(k).array() -= h;
    const double dGamma = (runDouble(alphaUsed, up, p.train, p.w1) - runDouble(alphaUsed, down, p.train, p.w1)) / (2 * h);
    CHECK(fwd.values(gamma + k) == Approx(dGamma).epsilon(1e-6));
    Train fUp = p.train, fDown = p.train;
    VectorXd eta = VectorXd::Constant(p.G, std::log(1e-2));
    eta(k) += h;
    fUp.setLogLambda(eta);
    eta(k) -= 2 * h;
    fDown.setLogLambda(eta);
    const double dLambda = (runDouble(alphaUsed, gammaUsed, fUp, p.w1) - runDouble(alphaUsed, gammaUsed, fDown, p.w1)) / (2 * h);
    CHECK(fwd.values(lambda + k) == Approx(dLambda).epsilon(1e-6));
    const ParameterGroup& grp = p.layout.group(k);
    VectorXd wUp = p.w1, wDown = p.w1;
    wUp.segment(grp.offset, grp.size) *= std::exp(h);
    wDown.segment(grp.offset, grp.size) *= std::exp(-h);
    const double dScale = (runDouble(alphaUsed, gammaUsed, p.train, wUp) - runDouble(alphaUsed, gammaUsed, p.train, wDown)) / (2 * h);
    CHECK(fwd.values(scale + k) == Approx(dScale).epsilon(1e-6));
  }
}

TEST_CASE("forward mode runs on the plain double reference optimizer too", "[forward]") {
  const Problem p;
  const Index T = 15;
  ReferenceOptimizer<MomentumRule> ref(p.layout, Schedule::constant(T, p.G, 0.3), Schedule::constant(T, p.G, 0.9),
                                       TrajectoryStorage::Store);
  HyperparameterDirections<MomentumRule> d = HyperparameterDirections<MomentumRule>::of(ref, p.train);
  d.addScheduleGroups("learningRates");
  d.addHyperparameters();
  ref.start(p.w1);
  const DirectionalHypergradients fwd = forwardHypergradients(ref, p.train, p.valid, d);
  const Hypergradients stored = reverse(ref, p.train, p.valid);  // the store-the-trajectory pass
  CHECK(relErr(fwd.values, d.project(stored)) < 1e-10);
}

namespace {
// Throws from its Hessian-vector product at iteration `bad` (the gradient is the problem's).
struct FailingHvp {
  const Train* f;
  Index bad;
  Index numParameters() const { return f->numParameters(); }
  Index numHyperparameters() const { return f->numHyperparameters(); }
  void gradient(const VectorXd& w, Index t, VectorXd& g) const { f->gradient(w, t, g); }
  void hessianVectorProduct(const VectorXd& w, Index t, const VectorXd& u, VectorXd& hu) const {
    if (t == bad) throw std::runtime_error("the Hessian is out of reach");
    f->hessianVectorProduct(w, t, u, hu);
  }
  void mixedProduct(const VectorXd& w, Index t, const VectorXd& u, VectorXd& d) const { f->mixedProduct(w, t, u, d); }
};
}  // namespace

TEST_CASE("forward mode refuses what it cannot do and leaves a failed run where it began", "[forward][errors]") {
  const Problem p;
  const Index T = 8;
  SgdMomentum<> opt(p.layout, Schedule::constant(T, p.G, 0.3), Schedule::constant(T, p.G, 0.9));
  HyperparameterDirections<MomentumRule> d = HyperparameterDirections<MomentumRule>::of(opt, p.train);
  d.addScheduleGroups("learningRates");

  SECTION("not at iteration 0") {
    opt.start(p.w1);
    opt.step(p.train);
    CHECK_THROWS_AS(forwardHypergradients(opt, p.train, p.valid, d), InvalidState);
    CHECK(opt.iteration() == 1);
  }
  SECTION("directions of another run") {
    HyperparameterDirections<MomentumRule> other(T + 1, p.layout, p.train.numHyperparameters());
    other.addScheduleGroups("momenta");
    opt.start(p.w1);
    CHECK_THROWS_AS(forwardHypergradients(opt, p.train, p.valid, other), InvalidArgument);
    CHECK(opt.iteration() == 0);
  }
  SECTION("theta moved through an objective without mixedTangentProduct") {
    const FailingHvp f{&p.train, -1};
    d.addHyperparameters(0, 1);
    opt.start(p.w1);
    CHECK_THROWS_WITH(forwardHypergradients(opt, f, p.valid, d), Catch::Matchers::Contains("mixedTangentProduct"));
    CHECK(opt.iteration() == 0);
  }
  SECTION("an objective failing mid-run: the steps are undone") {
    const FailingHvp f{&p.train, 5};
    opt.start(p.w1);
    const auto w = opt.fixedWeights();
    CHECK_THROWS_WITH(forwardHypergradients(opt, f, p.valid, d), "the Hessian is out of reach");
    CHECK(opt.iteration() == 0);
    CHECK(opt.fixedWeights() == w);
    // The run is usable: forward mode runs to the end with the good objective.
    const DirectionalHypergradients r = forwardHypergradients(opt, p.train, p.valid, d);
    CHECK(r.iterations == T);
  }
  SECTION("bad directions") {
    CHECK_THROWS_AS(d.addScheduleGroups("betas"), InvalidArgument);
    CHECK_THROWS_AS(d.addSchedule("learningRates", MatrixXd::Ones(T, p.G + 1), "x"), InvalidArgument);
    CHECK_THROWS_AS(d.addHyperparameters(0, p.train.numHyperparameters() + 1), InvalidArgument);
    CHECK_THROWS_AS(d.addInitialState(2, p.w1, "x"), InvalidArgument);
    CHECK_THROWS_AS(d.addHyperparameterBlock("nope"), InvalidArgument);
    CHECK_THROWS_AS(d.addHyperparameterDirection(VectorXd::Ones(p.train.numHyperparameters() + 1), "x"), InvalidArgument);
  }
}
