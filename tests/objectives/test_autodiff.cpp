#include <catch2/catch.hpp>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include <hypergrad/batches.hpp>
#include <hypergrad/objective.hpp>
#include <hypergrad/objectives/autodiff.hpp>
#include <hypergrad/random.hpp>

using namespace hypergrad;

namespace {

template <class S>
using Vec = Eigen::Matrix<S, Eigen::Dynamic, 1>;
template <class S>
using Mat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;

// A user-style model written generically over the scalar type: a 2-layer tanh network with a
// logistic loss on labels y = ±1, minibatches from SeededBatches,
//   L(w, θ, t) = (1/B) Σ_b log(1 + exp(−y_b z_b)) + ½ Σ_i exp(η_i) w_i²,
//   z = w2 · tanh(W1 (s ⊙ x) + b1) + b2,   s_k = softplus(ρ_k) = log(1 + exp(ρ_k)),
// θ = [ρ (one input scaling per feature), η (one log-penalty per weight)].
// w = [vec(W1) column-major (h×d), b1 (h), w2 (h), b2].
struct TwoLayerNet {
  Mat<double> x;  // examples × features
  Vec<double> y;  // ±1
  SeededBatches batches{7, 10, 6};
  Index d = 3;
  Index h = 4;

  Index numParameters() const { return h * d + 2 * h + 1; }
  Index numHyperparameters() const { return d + numParameters(); }
  Eigen::VectorXd hyperparameters() const {
    Eigen::VectorXd theta(numHyperparameters());
    for (Index k = 0; k < d; ++k) theta(k) = 0.2 * static_cast<double>(k) - 0.1;
    for (Index i = 0; i < numParameters(); ++i) theta(d + i) = -1.0 + 0.05 * static_cast<double>(i);
    return theta;
  }

  template <class S>
  void gradient(const Vec<S>& w, const Vec<S>& theta, Index t, Vec<S>& g) const {
    using std::exp;
    using std::log;
    using std::tanh;
    const Index n = numParameters();
    const std::vector<Index> idx = batches(t);
    const Index bsz = static_cast<Index>(idx.size());
    const Eigen::Map<const Mat<S>> w1(w.data(), h, d);
    const auto b1 = w.segment(h * d, h);
    const auto w2 = w.segment(h * d + h, h);
    const S b2 = w(n - 1);

    Vec<S> scale(d);
    for (Index k = 0; k < d; ++k) scale(k) = log(S(1) + exp(theta(k)));
    Mat<S> xs(bsz, d);
    for (Index b = 0; b < bsz; ++b)
      for (Index k = 0; k < d; ++k) xs(b, k) = x(idx[static_cast<std::size_t>(b)], k) * scale(k);

    Mat<S> a = xs * w1.transpose();  // bsz × h
    a.rowwise() += b1.transpose();
    const Mat<S> hid = a.array().tanh().matrix();
    const Vec<S> z = hid * w2 + Vec<S>::Constant(bsz, b2);
    Vec<S> dz(bsz);
    for (Index b = 0; b < bsz; ++b) {
      const double yb = y(idx[static_cast<std::size_t>(b)]);
      dz(b) = -yb / (S(1) + exp(yb * z(b))) / S(static_cast<double>(bsz));
    }
    const Mat<S> da = ((dz * w2.transpose()).array() * (S(1) - hid.array().square())).matrix();

    g.resize(n);
    Eigen::Map<Mat<S>> gw1(g.data(), h, d);
    gw1 = da.transpose() * xs;
    g.segment(h * d, h) = da.colwise().sum().transpose();
    g.segment(h * d + h, h) = hid.transpose() * dz;
    g(n - 1) = dz.sum();
    g += (theta.tail(n).array().exp() * w.array()).matrix();
  }

  double value(const Eigen::VectorXd& w, const Eigen::VectorXd& theta, Index t) const;
};

// The loss written out directly with scalar loops, independent of the model's gradient.
double TwoLayerNet::value(const Eigen::VectorXd& w, const Eigen::VectorXd& theta, Index t) const {
  const Index n = numParameters();
  const std::vector<Index> idx = batches(t);
  double loss = 0;
  for (Index ex : idx) {
    double z = w(n - 1);
    for (Index j = 0; j < h; ++j) {
      double aj = w(h * d + j);
      for (Index k = 0; k < d; ++k) aj += w(j + h * k) * std::log1p(std::exp(theta(k))) * x(ex, k);
      z += w(h * d + h + j) * std::tanh(aj);
    }
    loss += std::log1p(std::exp(-y(ex) * z));
  }
  loss /= static_cast<double>(idx.size());
  for (Index i = 0; i < n; ++i) loss += 0.5 * std::exp(theta(d + i)) * w(i) * w(i);
  return loss;
}

// The same model, also giving ∇_θ L (written generically too), which enables the single-pass
// mixed product.
struct TwoLayerNetWithThetaGradient : TwoLayerNet {
  template <class S>
  void hyperparameterGradient(const Vec<S>& w, const Vec<S>& theta, Index t, Vec<S>& gTheta) const {
    using std::exp;
    using std::log;
    const Index n = numParameters();
    const std::vector<Index> idx = batches(t);
    const Index bsz = static_cast<Index>(idx.size());
    const Eigen::Map<const Mat<S>> w1(w.data(), h, d);
    const auto b1 = w.segment(h * d, h);
    const auto w2 = w.segment(h * d + h, h);
    const S b2 = w(n - 1);

    Vec<S> scale(d), dscale(d);
    for (Index k = 0; k < d; ++k) {
      scale(k) = log(S(1) + exp(theta(k)));
      dscale(k) = S(1) / (S(1) + exp(-theta(k)));  // softplus' = sigmoid
    }
    Mat<S> xs(bsz, d);
    Mat<double> xb(bsz, d);
    for (Index b = 0; b < bsz; ++b)
      for (Index k = 0; k < d; ++k) {
        xb(b, k) = x(idx[static_cast<std::size_t>(b)], k);
        xs(b, k) = xb(b, k) * scale(k);
      }
    Mat<S> a = xs * w1.transpose();
    a.rowwise() += b1.transpose();
    const Mat<S> hid = a.array().tanh().matrix();
    const Vec<S> z = hid * w2 + Vec<S>::Constant(bsz, b2);
    Vec<S> dz(bsz);
    for (Index b = 0; b < bsz; ++b) {
      const double yb = y(idx[static_cast<std::size_t>(b)]);
      dz(b) = -yb / (S(1) + exp(yb * z(b))) / S(static_cast<double>(bsz));
    }
    const Mat<S> da = ((dz * w2.transpose()).array() * (S(1) - hid.array().square())).matrix();
    const Mat<S> dxs = da * w1;  // bsz × d

    gTheta.resize(d + n);
    for (Index k = 0; k < d; ++k) {
      S acc(0);
      for (Index b = 0; b < bsz; ++b) acc += dxs(b, k) * xb(b, k);
      gTheta(k) = acc * dscale(k);
    }
    gTheta.tail(n) = (S(0.5) * theta.tail(n).array().exp() * w.array().square()).matrix();
  }
};

// The logistic regression of autodiff.hpp's documentation, verbatim in spirit.
struct Logistic {
  Eigen::MatrixXd x;
  Eigen::VectorXd y;
  Index numParameters() const { return x.cols(); }
  Index numHyperparameters() const { return 1; }
  Eigen::VectorXd hyperparameters() const { return Eigen::VectorXd::Constant(1, -3.0); }
  template <class S>
  void gradient(const Eigen::Matrix<S, -1, 1>& w, const Eigen::Matrix<S, -1, 1>& theta, Index,
                Eigen::Matrix<S, -1, 1>& g) const {
    using std::exp;
    const Eigen::Matrix<S, -1, 1> z = x.cast<S>() * w;
    Eigen::Matrix<S, -1, 1> r(z.size());
    for (Index i = 0; i < z.size(); ++i) r(i) = -y(i) / (S(1) + exp(y(i) * z(i)));
    g = x.transpose().cast<S>() * r / S(double(x.rows())) + exp(theta(0)) * w;
  }
};

// No hyperparameters at all.
struct Bowl {
  Index numParameters() const { return 3; }
  Index numHyperparameters() const { return 0; }
  Eigen::VectorXd hyperparameters() const { return Eigen::VectorXd(0); }
  template <class S>
  void gradient(const Vec<S>& w, const Vec<S>&, Index, Vec<S>& g) const {
    using std::sin;
    g = w;
    g(0) += sin(w(1));
  }
};

// A model whose gradient returns the wrong size.
struct Broken : Bowl {
  template <class S>
  void gradient(const Vec<S>& w, const Vec<S>&, Index, Vec<S>& g) const {
    g = w.head(2);
  }
};

static_assert(isObjective<AutoDiffObjective<TwoLayerNet>>);
static_assert(isObjective<AutoDiffObjective<TwoLayerNetWithThetaGradient>>);
static_assert(isObjective<AutoDiffObjective<Logistic>>);
static_assert(isObjective<AutoDiffObjective<Bowl>>);
static_assert(!hasHyperparameterGradient<TwoLayerNet>);
static_assert(hasHyperparameterGradient<TwoLayerNetWithThetaGradient>);

Eigen::VectorXd randomVector(Index n, std::uint64_t seed, double scale = 1.0) {
  CounterRng rng(seed, 5);
  Eigen::VectorXd v(n);
  for (Index i = 0; i < n; ++i) v(i) = scale * rng.normal();
  return v;
}

template <class Net>
Net makeNet() {
  Net net;
  CounterRng rng(77, 0);
  net.x.resize(10, net.d);
  net.y.resize(10);
  for (Index i = 0; i < 10; ++i) {
    for (Index k = 0; k < net.d; ++k) net.x(i, k) = rng.normal();
    net.y(i) = rng.uniform() < 0.5 ? -1.0 : 1.0;
  }
  return net;
}

double relativeError(const Eigen::VectorXd& got, const Eigen::VectorXd& want) {
  REQUIRE(got.size() == want.size());
  return (got - want).norm() / std::max(want.norm(), 1e-300);
}

Eigen::VectorXd fdGradient(const std::function<double(const Eigen::VectorXd&)>& f, const Eigen::VectorXd& x,
                           double eps) {
  Eigen::VectorXd g(x.size());
  for (Index i = 0; i < x.size(); ++i) {
    Eigen::VectorXd xp = x, xm = x;
    xp(i) += eps;
    xm(i) -= eps;
    g(i) = (f(xp) - f(xm)) / (2 * eps);
  }
  return g;
}

template <class F>
std::string invalidArgumentMessage(F&& f) {
  try {
    f();
  } catch (const InvalidArgument& e) {
    return e.what();
  }
  FAIL("expected hypergrad::InvalidArgument");
  return {};
}

}  // namespace

TEST_CASE("AutoDiffObjective gradient is the model's double gradient and matches the loss", "[objectives][autodiff]") {
  const TwoLayerNet net = makeNet<TwoLayerNet>();
  const auto f = makeAutoDiffObjective(net);
  REQUIRE(f.numParameters() == 21);
  REQUIRE(f.numHyperparameters() == 24);
  const Eigen::VectorXd theta = net.hyperparameters();
  REQUIRE(f.hyperparameters() == theta);
  const Eigen::VectorXd w = randomVector(21, 1, 0.7);
  for (Index t : {0, 3}) {
    Eigen::VectorXd g;
    f.gradient(w, t, g);
    const Eigen::VectorXd fd = fdGradient([&](const Eigen::VectorXd& x) { return net.value(x, theta, t); }, w, 1e-5);
    CHECK(relativeError(g, fd) < 1e-6);
    CHECK(f.value(w, t) == net.value(w, theta, t));
  }
}

TEST_CASE("AutoDiffObjective Hessian-vector product matches differences of the gradient", "[objectives][autodiff]") {
  const auto f = makeAutoDiffObjective(makeNet<TwoLayerNet>());
  const Eigen::VectorXd w = randomVector(21, 2, 0.7);
  const Eigen::VectorXd u = randomVector(21, 3);
  const Index t = 2;
  Eigen::VectorXd hu, gp, gm;
  f.hessianVectorProduct(w, t, u, hu);
  const double eps = 1e-5;
  f.gradient(w + eps * u, t, gp);
  f.gradient(w - eps * u, t, gm);
  CHECK(relativeError(hu, (gp - gm) / (2 * eps)) < 1e-6);
}

TEST_CASE("AutoDiffObjective mixed product matches differences of u.grad in theta", "[objectives][autodiff]") {
  const auto f = makeAutoDiffObjective(makeNet<TwoLayerNet>());
  const Eigen::VectorXd w = randomVector(21, 4, 0.7);
  const Eigen::VectorXd u = randomVector(21, 5);
  const Index t = 1;
  Eigen::VectorXd dtheta;
  f.mixedProduct(w, t, u, dtheta);
  REQUIRE(dtheta.size() == 24);
  auto uDotGradient = [&](const Eigen::VectorXd& theta) {
    auto copy = f;
    copy.setHyperparameters(theta);
    Eigen::VectorXd g;
    copy.gradient(w, t, g);
    return u.dot(g);
  };
  CHECK(relativeError(dtheta, fdGradient(uDotGradient, f.hyperparameters(), 1e-5)) < 1e-6);
  // The input-scaling block is not trivially zero (θ reaches the loss through the data).
  CHECK(dtheta.head(3).norm() > 1e-3);
}

TEST_CASE("AutoDiffObjective chunk width does not change the mixed product", "[objectives][autodiff]") {
  const TwoLayerNet net = makeNet<TwoLayerNet>();
  const Eigen::VectorXd w = randomVector(21, 6, 0.7);
  const Eigen::VectorXd u = randomVector(21, 7);
  Eigen::VectorXd d8, d1, d5, d32;
  AutoDiffObjective<TwoLayerNet>(net).mixedProduct(w, 0, u, d8);
  AutoDiffObjective<TwoLayerNet, 1>(net).mixedProduct(w, 0, u, d1);
  AutoDiffObjective<TwoLayerNet, 5>(net).mixedProduct(w, 0, u, d5);  // 24 is not a multiple of 5
  AutoDiffObjective<TwoLayerNet, 32>(net).mixedProduct(w, 0, u, d32);
  CHECK(relativeError(d1, d8) < 1e-13);
  CHECK(relativeError(d5, d8) < 1e-13);
  CHECK(relativeError(d32, d8) < 1e-13);
}

TEST_CASE("AutoDiffObjective uses the model's theta gradient for a single-pass mixed product",
          "[objectives][autodiff]") {
  const auto net = makeNet<TwoLayerNetWithThetaGradient>();
  const auto fast = makeAutoDiffObjective(net);
  const auto jacobian = makeAutoDiffObjective(static_cast<const TwoLayerNet&>(net));
  const Eigen::VectorXd theta = net.hyperparameters();
  const Eigen::VectorXd w = randomVector(21, 8, 0.7);
  const Eigen::VectorXd u = randomVector(21, 9);
  const Index t = 6;

  // The model's own ∇_θ L against differences of the loss.
  Eigen::VectorXd gTheta;
  net.hyperparameterGradient(w, theta, t, gTheta);
  CHECK(relativeError(gTheta, fdGradient([&](const Eigen::VectorXd& th) { return net.value(w, th, t); }, theta,
                                         1e-5)) < 1e-6);

  Eigen::VectorXd dFast, dJacobian;
  fast.mixedProduct(w, t, u, dFast);
  jacobian.mixedProduct(w, t, u, dJacobian);
  CHECK(relativeError(dFast, dJacobian) < 1e-12);  // symmetry of mixed partials
}

TEST_CASE("AutoDiffObjective handles the documented logistic regression exactly", "[objectives][autodiff]") {
  CounterRng rng(3, 0);
  Logistic model;
  model.x.resize(8, 4);
  model.y.resize(8);
  for (Index i = 0; i < 8; ++i) {
    for (Index k = 0; k < 4; ++k) model.x(i, k) = rng.normal();
    model.y(i) = i % 2 == 0 ? 1.0 : -1.0;
  }
  const auto f = makeAutoDiffObjective(model);
  const Eigen::VectorXd w = randomVector(4, 10);
  const Eigen::VectorXd u = randomVector(4, 11);
  // Closed forms: H = Xᵀ diag(σ(z)(1 − σ(z))) X / m + λ I, and ∂/∂log λ of uᵀ∇L = λ uᵀw.
  const double lambda = std::exp(-3.0);
  Eigen::VectorXd weights(8);
  for (Index i = 0; i < 8; ++i) {
    const double s = 1.0 / (1.0 + std::exp(-model.x.row(i).dot(w)));
    weights(i) = s * (1 - s);
  }
  const Eigen::MatrixXd hessian =
      model.x.transpose() * weights.asDiagonal() * model.x / 8.0 + lambda * Eigen::MatrixXd::Identity(4, 4);
  Eigen::VectorXd hu, dtheta;
  f.hessianVectorProduct(w, 0, u, hu);
  CHECK(relativeError(hu, hessian * u) < 1e-13);
  f.mixedProduct(w, 0, u, dtheta);
  REQUIRE(dtheta.size() == 1);
  CHECK(dtheta(0) == Approx(lambda * u.dot(w)).epsilon(1e-13));
}

TEST_CASE("AutoDiffObjective default reverseStep reproduces the separate calls bit for bit",
          "[objectives][autodiff]") {
  const auto f = makeAutoDiffObjective(makeNet<TwoLayerNet>());
  const Eigen::VectorXd w = randomVector(21, 12, 0.7);
  const Eigen::VectorXd u = randomVector(21, 13);
  Eigen::VectorXd g1, hu1, d1, g2, hu2, d2;
  f.gradient(w, 4, g1);
  f.hessianVectorProduct(w, 4, u, hu1);
  f.mixedProduct(w, 4, u, d1);
  reverseStep(f, w, 4, u, g2, hu2, d2);
  CHECK(g1 == g2);
  CHECK(hu1 == hu2);
  CHECK(d1 == d2);
}

TEST_CASE("AutoDiffObjective without hyperparameters gives an empty mixed product", "[objectives][autodiff]") {
  const auto f = makeAutoDiffObjective(Bowl{});
  Eigen::VectorXd w(3), u(3), hu, dtheta;
  w << 0.1, 0.2, 0.3;
  u << 1.0, -1.0, 0.5;
  f.mixedProduct(w, 0, u, dtheta);
  CHECK(dtheta.size() == 0);
  f.hessianVectorProduct(w, 0, u, hu);
  Eigen::VectorXd want = u;
  want(0) += std::cos(0.2) * u(1);
  CHECK(relativeError(hu, want) < 1e-15);
}

TEST_CASE("AutoDiffObjective rejects bad sizes and non-finite hyperparameters", "[objectives][autodiff]") {
  auto f = makeAutoDiffObjective(makeNet<TwoLayerNet>());
  Eigen::VectorXd g, hu;
  CHECK_THAT(invalidArgumentMessage([&] { f.gradient(Eigen::VectorXd::Zero(20), 0, g); }),
             Catch::Contains("w has 20 entries but the model has 21"));
  CHECK_THAT(invalidArgumentMessage([&] { f.hessianVectorProduct(Eigen::VectorXd::Zero(21), 0, Eigen::VectorXd::Zero(3), hu); }),
             Catch::Contains("u has 3 entries"));
  CHECK_THAT(invalidArgumentMessage([&] { f.setHyperparameters(Eigen::VectorXd::Zero(5)); }),
             Catch::Contains("got 5 values but the model has 24"));
  Eigen::VectorXd theta = f.hyperparameters();
  theta(7) = std::nan("");
  CHECK_THAT(invalidArgumentMessage([&] { f.setHyperparameters(theta); }), Catch::Contains("theta[7]"));
  CHECK_THAT(invalidArgumentMessage([&] { makeAutoDiffObjective(Bowl{}, Eigen::VectorXd::Zero(1)); }),
             Catch::Contains("got 1 values but the model has 0"));
  const auto broken = makeAutoDiffObjective(Broken{});
  CHECK_THAT(invalidArgumentMessage([&] { broken.gradient(Eigen::VectorXd::Zero(3), 0, g); }),
             Catch::Contains("produced 2 entries, expected 3"));
}
