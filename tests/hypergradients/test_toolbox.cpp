// The one entry point over the methods, hypergradients(method, …): each method's result on the
// same directions against the function it wraps, called directly on an identical run (the
// plumbing adds nothing), forward against reverse to rounding, where each leaves the optimizer,
// and the failure paths (the optimizer back at iteration 0 as it was).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <stdexcept>

#include <hypergrad/hypergradients/toolbox.hpp>
#include <hypergrad/objectives/l2.hpp>
#include <hypergrad/objectives/mlp.hpp>
#include <hypergrad/optimizers/sgd_momentum.hpp>

#include "../support/mlp_fixture.hpp"

using namespace hypergrad;
using Eigen::VectorXd;
using fixture::initialWeights;
using fixture::syntheticData;

namespace {

using Train = L2Regularized<MlpObjective>;

struct Problem {
  MlpArchitecture arch{{10, 8, 3}, Activation::Tanh};
  ParameterLayout layout = arch.layout();
  Index G = layout.numGroups(), T = 16;
  Train train = Train::perGroup(MlpObjective(arch, syntheticData(90, 10, 3, 4), SeededBatches(5, 90, 30)),
                                VectorXd::Constant(layout.numGroups(), std::log(3e-2)));
  MlpLoss valid{arch, syntheticData(40, 10, 3, 6)};
  VectorXd w1 = initialWeights(arch, 7);
  SgdMomentum<> optimizer() const { return SgdMomentum<>(layout, Schedule::constant(T, G, 0.3), Schedule::constant(T, G, 0.9)); }
  HyperparameterDirections<MomentumRule> directions(bool thetaOnly) const {
    HyperparameterDirections<MomentumRule> d(T, layout, train.numHyperparameters(), hyperparameterLayout(train));
    d.addHyperparameterBlock("l2.logLambda");
    if (!thetaOnly) {
      d.addScheduleGroups("learningRates");
      d.addInitialScales(w1);
    }
    return d;
  }
};

bool sameBits(const VectorXd& a, const VectorXd& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), sizeof(double) * static_cast<std::size_t>(a.size())) == 0;
}

// Throws from its gradient once armed.
struct FailingMeta {
  const MlpLoss* valid;
  bool* armed;
  double value(const VectorXd& w) const { return valid->value(w); }
  double valueAndGradient(const VectorXd& w, VectorXd& g) const {
    if (*armed) throw std::runtime_error("the validation set is unreadable");
    return valid->valueAndGradient(w, g);
  }
};

}  // namespace

TEST_CASE("hypergradients(method, ...) returns what each method's own function returns on the same run",
          "[toolbox]") {
  const Problem p;
  const HyperparameterDirections<MomentumRule> d = p.directions(false);

  SgdMomentum<> opt = p.optimizer();
  opt.start(p.w1);
  const DirectionalHypergradients rev = hypergradients(method::Reverse{}, opt, p.train, p.valid, d);
  CHECK(rev.method == "reverse");
  CHECK(opt.iteration() == 0);  // reversed, the start verified
  CHECK(opt.weightsEqual(p.w1));
  CHECK(rev.hessianProducts == p.T);
  CHECK(rev.memoryBytes > 0);
  opt.start(p.w1);
  train(opt, p.train);
  CHECK(sameBits(rev.values, d.project(reverse(opt, p.train, p.valid))));

  opt.start(p.w1);
  const DirectionalHypergradients fwd = hypergradients(method::Forward{}, opt, p.train, p.valid, d);
  CHECK(fwd.method == "forward");
  CHECK(opt.iteration() == p.T);
  CHECK((fwd.values - rev.values).norm() < 1e-10 * rev.values.norm());
  CHECK(fwd.metaObjective == rev.metaObjective);
  CHECK(sameBits(fwd.finalWeights, rev.finalWeights));

  for (const Index K : {Index(3), p.T}) {
    CAPTURE(K);
    opt.start(p.w1);
    const DirectionalHypergradients cut = hypergradients(method::Truncated{K}, opt, p.train, p.valid, d);
    CHECK(opt.iteration() == (K == p.T ? 0 : p.T));  // K = T is the reverse pass
    CHECK(cut.hessianProducts == K);
    opt.start(p.w1);
    train(opt, p.train);
    CHECK(sameBits(cut.values, d.project(reverseTruncated(opt, p.train, p.valid, K))));
    if (K == p.T) CHECK(sameBits(cut.values, rev.values));
    else CHECK((cut.values - rev.values).norm() > 1e-6 * rev.values.norm());  // the truncation bias
  }

  const HyperparameterDirections<MomentumRule> theta = p.directions(true);
  method::Implicit implicit;
  implicit.options.maxIterations = 50;
  opt.start(p.w1);
  const DirectionalHypergradients imp = hypergradients(implicit, opt, p.train, p.valid, theta);
  CHECK(imp.method == "implicit");
  CHECK(opt.iteration() == p.T);
  CHECK_THAT(imp.diagnostics, Catch::Matchers::Contains("CG: "));
  const ImplicitResult direct = implicitHypergradients(p.train, p.valid, opt.weights(), implicit.options);
  CHECK(sameBits(imp.values, VectorXd(direct.hyperparameters.tail(p.G))));
  CHECK(imp.hessianProducts == direct.iterations);
}

TEST_CASE("hypergradients(method, ...) refuses bad requests before training and undoes training when a method fails",
          "[toolbox][errors]") {
  const Problem p;
  SgdMomentum<> opt = p.optimizer();
  opt.start(p.w1);
  const auto w = opt.fixedWeights();
  SECTION("implicit with a schedule direction") {
    CHECK_THROWS_WITH(hypergradients(method::Implicit{}, opt, p.train, p.valid, p.directions(false)),
                      Catch::Matchers::Contains("learningRates["));
  }
  SECTION("truncation outside 1..T") {
    CHECK_THROWS_AS(hypergradients(method::Truncated{0}, opt, p.train, p.valid, p.directions(false)), InvalidArgument);
    CHECK_THROWS_AS(hypergradients(method::Truncated{p.T + 1}, opt, p.train, p.valid, p.directions(false)),
                    InvalidArgument);
  }
  SECTION("not at iteration 0") {
    opt.step(p.train);
    CHECK_THROWS_AS(hypergradients(method::Reverse{}, opt, p.train, p.valid, p.directions(false)), InvalidState);
    CHECK(opt.iteration() == 1);
    opt.unstep(p.train);
  }
  SECTION("the meta objective failing after training") {
    bool armed = true;
    const FailingMeta meta{&p.valid, &armed};
    for (const auto& run : {+[](SgdMomentum<>& o, const Problem& q, const FailingMeta& m) {
                              hypergradients(method::Reverse{}, o, q.train, m, q.directions(false));
                            },
                            +[](SgdMomentum<>& o, const Problem& q, const FailingMeta& m) {
                              hypergradients(method::Forward{}, o, q.train, m, q.directions(false));
                            },
                            +[](SgdMomentum<>& o, const Problem& q, const FailingMeta& m) {
                              hypergradients(method::Truncated{4}, o, q.train, m, q.directions(false));
                            }}) {
      CHECK_THROWS_WITH(run(opt, p, meta), "the validation set is unreadable");
      CHECK(opt.iteration() == 0);
      CHECK(opt.fixedWeights() == w);
    }
  }
  CHECK(opt.iteration() == 0);
  CHECK(opt.fixedWeights() == w);
}
