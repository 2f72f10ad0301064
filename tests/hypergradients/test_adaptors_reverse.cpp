// The reverse pass through the objective adaptors: per-group L2 on the MLP and a user model
// through the autodiff adaptor, against central differences of a plain double training run.
#include <catch2/catch.hpp>

#include <hypergrad/objectives/autodiff.hpp>
#include <hypergrad/objectives/l2.hpp>
#include <hypergrad/objectives/mlp.hpp>
#include <hypergrad/optimizers/sgd_momentum.hpp>
#include <hypergrad/reverse.hpp>

#include "../support/double_trainer.hpp"

using namespace hypergrad;
template <class S>
using Vec = Eigen::Matrix<S, Eigen::Dynamic, 1>;

namespace {

Dataset blobs(Index examples, Index features, Index classes, std::uint64_t seed) {
  CounterRng rng(seed), centres(features + 100 * classes);
  Eigen::MatrixXd mu(classes, features);
  for (Index i = 0; i < mu.size(); ++i) mu(i) = centres.normal();
  Dataset d;
  d.inputs.resize(examples, features);
  d.labels.resize(examples);
  d.numClasses = classes;
  for (Index j = 0; j < examples; ++j) {
    const int c = static_cast<int>(rng.below(static_cast<std::uint64_t>(classes)));
    d.labels(j) = c;
    for (Index i = 0; i < features; ++i) d.inputs(j, i) = mu(c, i) + 0.8 * rng.normal();
  }
  return d;
}

// A user-style model: softplus regression with a learnable input scaling θ (one per feature)
// inside the loss, written once as a template over the scalar type.
struct ScaledSoftplusRegression {
  Eigen::MatrixXd x;
  Eigen::VectorXd y;
  SeededBatches batches{3, 40, 8};
  Index numParameters() const { return x.cols(); }
  Index numHyperparameters() const { return x.cols(); }
  Eigen::VectorXd hyperparameters() const { return Eigen::VectorXd::Constant(x.cols(), 0.1); }
  template <class S>
  void gradient(const Vec<S>& w, const Vec<S>& theta, Index t, Vec<S>& g) const {
    using std::exp;
    using std::log;
    g = Vec<S>::Zero(w.size());
    const auto batch = batches(t);
    for (Index j : batch) {
      Vec<S> xs(w.size());
      for (Index i = 0; i < w.size(); ++i) xs(i) = S(x(j, i)) * exp(theta(i));
      const S z = xs.dot(w);
      // loss softplus(z) - y z; d/dz = sigmoid(z) - y
      const S dz = S(1) / (S(1) + exp(-z)) - S(y(j));
      g += dz * xs;
    }
    g /= S(static_cast<double>(batch.size()));
  }
};

struct SquaredValidation {
  Eigen::MatrixXd x;
  Eigen::VectorXd y;
  double value(const Eigen::VectorXd& w) const { return 0.5 * (x * w - y).squaredNorm() / static_cast<double>(x.rows()); }
  double valueAndGradient(const Eigen::VectorXd& w, Eigen::VectorXd& g) const {
    g = x.transpose() * (x * w - y) / static_cast<double>(x.rows());
    return value(w);
  }
};

}  // namespace

TEST_CASE("per-group L2 hypergradients on the MLP match finite differences", "[reverse][fd][l2]") {
  const double eps = 1e-5;
  const MlpArchitecture arch({5, 6, 3}, Activation::Tanh);
  const MlpObjective data(arch, blobs(30, 5, 3, 1), SeededBatches(4, 30, 10));
  const ParameterLayout layout = arch.layout();
  Eigen::VectorXd logLambda(layout.numGroups());
  logLambda << -3.0, -4.0, -2.5, -5.0;
  const auto f = L2Regularized<MlpObjective>::perGroup(data, layout, logLambda);
  const MlpLoss valid(arch, blobs(50, 5, 3, 2));
  const Index T = 40, G = layout.numGroups();
  const Eigen::MatrixXd alpha = Eigen::MatrixXd::Constant(T, G, 0.5), gamma = Eigen::MatrixXd::Constant(T, G, 0.8);
  CounterRng rng(9);
  Eigen::VectorXd w1(layout.size());
  for (Index i = 0; i < w1.size(); ++i) w1(i) = 0.4 * rng.normal();
  const Eigen::VectorXd v1 = Eigen::VectorXd::Zero(layout.size());
  SgdMomentum<> opt(layout, Schedule(alpha), Schedule(gamma));
  const Hypergradients hg = computeHypergradients(opt, f, valid, w1, v1);
  REQUIRE(hg.hyperparameters.size() == G);  // the MLP has no θ of its own: θ = η
  for (Index k = 0; k < G; ++k) {
    auto fp = f, fm = f;
    Eigen::VectorXd e = logLambda;
    e(k) += eps;
    fp.setLogLambda(e);
    e(k) -= 2 * eps;
    fm.setLogLambda(e);
    const double fd = (valid.value(fixture::trainDoubleFinal(fp, layout, alpha, opt.quantizedMomenta(), w1, v1)) -
                       valid.value(fixture::trainDoubleFinal(fm, layout, alpha, opt.quantizedMomenta(), w1, v1))) /
                      (2 * eps);
    CAPTURE(k, fd, hg.hyperparameters(k));
    CHECK(fixture::relErr(hg.hyperparameters(k), fd) < 1e-5);
  }
}

TEST_CASE("autodiff-adapted user objective: hypergradients match finite differences", "[reverse][fd][autodiff]") {
  const double eps = 1e-5;
  CounterRng rng(21);
  const Index n = 6;
  ScaledSoftplusRegression model;
  model.x.resize(40, n);
  model.y.resize(40);
  for (Index j = 0; j < 40; ++j) {
    for (Index i = 0; i < n; ++i) model.x(j, i) = rng.normal();
    model.y(j) = rng.uniform() < 0.5 ? 0.0 : 1.0;
  }
  const auto f = makeAutoDiffObjective(model);
  SquaredValidation valid{model.x.topRows(20), 0.5 * model.y.head(20)};
  ParameterLayout layout;
  layout.addGroup("first", 2);
  layout.addGroup("rest", 4);
  const Index T = 25;
  Eigen::MatrixXd alpha(T, 2), gamma(T, 2);
  for (Index t = 0; t < T; ++t) {
    alpha.row(t) << 0.3 + 0.01 * t, 0.2;
    gamma.row(t) << 0.9, 0.6 + 0.01 * t;
  }
  const Eigen::VectorXd w1 = Eigen::VectorXd::LinSpaced(n, -0.5, 0.5), v1 = Eigen::VectorXd::Zero(n);
  SgdMomentum<> opt(layout, Schedule(alpha), Schedule(gamma));
  const Eigen::MatrixXd gq = opt.quantizedMomenta();
  const Hypergradients hg = computeHypergradients(opt, f, valid, w1, v1);

  auto loss = [&](const auto& obj, const Eigen::MatrixXd& a, const Eigen::MatrixXd& c) {
    return valid.value(fixture::trainDoubleFinal(obj, layout, a, c, w1, v1));
  };
  for (Index k = 0; k < 2; ++k)
    for (Index t : {Index(0), Index(12), T - 1}) {
      CAPTURE(k, t);
      Eigen::MatrixXd ap = alpha, am = alpha, cp = gq, cm = gq;
      ap(t, k) += eps;
      am(t, k) -= eps;
      cp(t, k) += eps;
      cm(t, k) -= eps;
      CHECK(fixture::relErr(hg.learningRates(t, k), (loss(f, ap, gq) - loss(f, am, gq)) / (2 * eps)) < 1e-5);
      CHECK(fixture::relErr(hg.momenta(t, k), (loss(f, alpha, cp) - loss(f, alpha, cm)) / (2 * eps)) < 1e-5);
    }
  for (Index i = 0; i < n; ++i) {
    Eigen::VectorXd theta = model.hyperparameters();
    theta(i) += eps;
    const auto fp = makeAutoDiffObjective(model, theta);
    theta(i) -= 2 * eps;
    const auto fm = makeAutoDiffObjective(model, theta);
    const double fd = (loss(fp, alpha, gq) - loss(fm, alpha, gq)) / (2 * eps);
    CAPTURE(i, fd, hg.hyperparameters(i));
    CHECK(fixture::relErr(hg.hyperparameters(i), fd) < 1e-5);
  }
}
