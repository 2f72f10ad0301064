// Heavy-ball momentum in PyTorch's convention: the update as torch.optim.SGD defines it, exact
// reversal, and hypergradients against central differences of the reference arithmetic.
#include <catch2/catch.hpp>

#include <hypergrad/hypergradients.hpp>
#include <hypergrad/optimizers/heavy_ball.hpp>
#include <hypergrad/reference/optimizer.hpp>

#include "../support/double_trainer.hpp"
#include "../support/logistic_fixture.hpp"

using namespace hypergrad;
using fixture::Logistic;
using fixture::MatrixXd;
using fixture::VectorXd;

TEST_CASE("heavy-ball steps follow torch.optim.SGD's update (dampening 0, no Nesterov)", "[optimizer][heavy-ball]") {
  // torch: buf = momentum * buf + grad (buf = grad on the first step, i.e. buf_0 = 0);
  //        p = p - lr * buf.
  const Logistic f(40, 6, 8, 31);
  const auto layout = ParameterLayout::single(6);
  const Index T = 5;
  ReferenceOptimizer<HeavyBallRule> ref(layout, Schedule::constant(T, 1, 0.05), Schedule::constant(T, 1, 0.875));
  VectorXd w = VectorXd::LinSpaced(6, -1, 1), buf = VectorXd::Zero(6), g;
  ref.start(w);
  for (Index t = 0; t < T; ++t) {
    f.gradient(w, t, g);
    buf = 0.875 * buf + g;
    w = w - 0.05 * buf;
    ref.step(f);
    CHECK((ref.weights() - w).norm() <= 1e-15 * w.norm());
  }
  // The exact optimizer follows it to rounding noise (0.875 = 57344/65536 is exact).
  SgdHeavyBall<> opt(layout, Schedule::constant(T, 1, 0.05), Schedule::constant(T, 1, 0.875));
  opt.start(VectorXd::LinSpaced(6, -1, 1));
  train(opt, f);
  CHECK((opt.weights() - w).norm() <= 1e-13 * w.norm());
}

TEST_CASE("heavy-ball runs reverse bit for bit and their hypergradients match finite differences",
          "[optimizer][heavy-ball][reverse]") {
  const Logistic f(50, 8, 10, 32);
  const fixture::Validation valid(f, 33);
  ParameterLayout layout;
  layout.addGroup("a", 5);
  layout.addGroup("b", 3);
  const Index T = 40;
  MatrixXd alpha = MatrixXd::Constant(T, 2, 0.02), mu(T, 2);
  for (Index t = 0; t < T; ++t) mu.row(t) << 0.9, 0.6 + 0.3 * double(t % 3) / 3.0;
  SgdHeavyBall<> opt(layout, Schedule(alpha), Schedule(mu));
  const VectorXd w1 = VectorXd::LinSpaced(8, -0.3, 0.3), v1 = VectorXd::Constant(8, 0.02);
  const HeavyBallHypergradients hg = computeHypergradients(opt, f, valid, w1, v1);
  CHECK(opt.buffer().empty());
  const MatrixXd muQ = opt.quantizedMomenta();
  auto loss = [&](const MatrixXd& a, const MatrixXd& m, const VectorXd& w, const VectorXd& v) {
    ReferenceOptimizer<HeavyBallRule> r(layout, Schedule(a), Schedule(m));
    r.start(w, v);
    while (r.iteration() < T) r.step(f);
    return valid.value(r.weights());
  };
  const double eps = 1e-6;
  for (Index t : {Index(0), Index(17), Index(T - 1)})
    for (Index k = 0; k < 2; ++k) {
      MatrixXd ap = alpha, am = alpha, mp = muQ, mm = muQ;
      ap(t, k) += eps;
      am(t, k) -= eps;
      mp(t, k) += eps;
      mm(t, k) -= eps;
      CHECK(fixture::relErr((loss(ap, muQ, w1, v1) - loss(am, muQ, w1, v1)) / (2 * eps), hg.learningRates(t, k)) < 1e-5);
      CHECK(fixture::relErr((loss(alpha, mp, w1, v1) - loss(alpha, mm, w1, v1)) / (2 * eps), hg.momenta(t, k)) < 1e-5);
    }
  for (Index i : {Index(0), Index(7)}) {
    VectorXd vp = v1, vm = v1, wp = w1, wm = w1;
    vp(i) += eps;
    vm(i) -= eps;
    wp(i) += eps;
    wm(i) -= eps;
    CHECK(fixture::relErr((loss(alpha, muQ, w1, vp) - loss(alpha, muQ, w1, vm)) / (2 * eps), hg.initialVelocity(i)) < 1e-5);
    CHECK(fixture::relErr((loss(alpha, muQ, wp, v1) - loss(alpha, muQ, wm, v1)) / (2 * eps), hg.initialWeights(i)) < 1e-5);
  }
}
