// Implicit (IFT) hypergradients: against the formula evaluated with explicit matrices and a
// direct solve, against central differences of the optimum w*(θ) found by Newton's method
// (independent of the library), and against the exact reverse pass as training converges.
#include <catch2/catch.hpp>

#include <cmath>

#include <Eigen/Dense>

#include <hypergrad/hypergradients/implicit.hpp>
#include <hypergrad/optimizers/sgd_momentum.hpp>
#include <hypergrad/reverse.hpp>

#include "../support/logistic_fixture.hpp"

using namespace hypergrad;
using Eigen::MatrixXd;
using Eigen::VectorXd;

namespace {

// Full-batch L2-regularised logistic regression: every batch is the whole training set.
fixture::Logistic fullBatch() { return fixture::Logistic(80, 6, 80, 11); }

// The optimum w*(θ) by Newton's method on the explicit gradient and Hessian.
VectorXd optimum(const fixture::Logistic& f) {
  VectorXd w = VectorXd::Zero(f.numParameters()), g;
  for (int k = 0; k < 50; ++k) {
    f.gradient(w, 0, g);
    if (g.norm() < 1e-15) break;
    w -= f.hessian(w, 0).ldlt().solve(g);
  }
  return w;
}

double relErr(const VectorXd& a, const VectorXd& b) { return (a - b).norm() / b.norm(); }

// L(w, θ) = ½ wᵀ A w + θᵀ w with A indefinite: CG meets negative curvature.
struct Saddle {
  MatrixXd a = (VectorXd(3) << 1.0, -2.0, 0.5).finished().asDiagonal();
  Index numParameters() const { return 3; }
  Index numHyperparameters() const { return 3; }
  void gradient(const VectorXd& w, Index, VectorXd& g) const { g = a * w; }
  void hessianVectorProduct(const VectorXd&, Index, const VectorXd& u, VectorXd& hu) const { hu = a * u; }
  void mixedProduct(const VectorXd&, Index, const VectorXd& u, VectorXd& d) const { d = u; }
};
struct SumMeta {
  double value(const VectorXd& w) const { return w.sum(); }
  double valueAndGradient(const VectorXd& w, VectorXd& g) const {
    g = VectorXd::Ones(w.size());
    return w.sum();
  }
};

}  // namespace

TEST_CASE("implicit hypergradients at the optimum equal the formula with explicit matrices and central differences",
          "[implicit]") {
  fixture::Logistic f = fullBatch();
  const fixture::Validation valid(f, 21);
  const VectorXd w = optimum(f);
  const ImplicitResult r = implicitHypergradients(f, valid, w);
  CHECK(r.converged);
  CHECK(r.stopReason == "converged");
  CHECK(r.relativeResidual <= 1e-10);
  CHECK(r.iterations <= f.numParameters() + 2);
  CHECK(r.stationarity < 1e-13);
  // The formula with explicit matrices: −(∂_θ ∇_w L)ᵀ H⁻¹ ∇_w f.
  VectorXd df;
  valid.valueAndGradient(w, df);
  const VectorXd direct = -f.mixedJacobian(w, 0).transpose() * f.hessian(w, 0).ldlt().solve(df);
  CHECK(relErr(r.hyperparameters, direct) < 1e-8);
  // Central differences of f(w*(θ)) in each θ_i.
  VectorXd fd(f.numHyperparameters());
  const double h = 1e-5;
  for (Index i = 0; i < fd.size(); ++i) {
    fixture::Logistic plus = f, minus = f;
    plus.theta(i) += h;
    minus.theta(i) -= h;
    fd(i) = (valid.value(optimum(plus)) - valid.value(optimum(minus))) / (2 * h);
  }
  CHECK(relErr(r.hyperparameters, fd) < 1e-6);
  CHECK(r.hyperparameterLayout.size() == f.numHyperparameters());
}

TEST_CASE("implicit hypergradients approach the exact reverse pass's only as training converges", "[implicit][reverse]") {
  fixture::Logistic f = fullBatch();
  const fixture::Validation valid(f, 21);
  const ParameterLayout layout = ParameterLayout::single(f.numParameters());
  double previous = 1e300, previousStationarity = 1e300;
  for (const Index T : {Index(20), Index(200), Index(2000)}) {
    CAPTURE(T);
    SgdMomentum<> opt(layout, Schedule::constant(T, 1, 0.5), Schedule::constant(T, 1, 0.5));
    const Hypergradients exact = computeHypergradients(opt, f, valid, VectorXd::Zero(f.numParameters()));
    const ImplicitResult r = implicitHypergradients(f, valid, exact.finalWeights);
    REQUIRE(r.converged);
    const double error = relErr(r.hyperparameters, exact.hyperparameters);
    CAPTURE(error, r.stationarity);
    CHECK(error < previous);
    CHECK(r.stationarity < previousStationarity);
    previous = error;
    previousStationarity = r.stationarity;
    if (T == 20) CHECK(error > 1e-2);  // far from the optimum: the implicit formula does not apply
  }
  CHECK(previous < 1e-6);  // at T = 2000 the run has converged and the two agree
}

TEST_CASE("implicitHypergradients reports negative curvature and refuses bad input", "[implicit][errors]") {
  const Saddle f;
  const ImplicitResult r = implicitHypergradients(f, SumMeta{}, VectorXd::Zero(3));
  CHECK_FALSE(r.converged);
  CHECK(r.stopReason == "negative curvature");
  CHECK_THROWS_AS(implicitHypergradients(f, SumMeta{}, VectorXd::Zero(2)), InvalidArgument);
  ImplicitOptions bad;
  bad.tolerance = 0.0;
  CHECK_THROWS_AS(implicitHypergradients(f, SumMeta{}, VectorXd::Zero(3), bad), InvalidArgument);
}
