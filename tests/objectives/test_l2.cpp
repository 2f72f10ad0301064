#include <catch2/catch.hpp>

#include <cmath>
#include <functional>
#include <limits>
#include <string>

#include <Eigen/Eigenvalues>

#include <hypergrad/layout.hpp>
#include <hypergrad/objective.hpp>
#include <hypergrad/objectives/l2.hpp>
#include "../support/quadratic_objective.hpp"
#include <hypergrad/random.hpp>

using namespace hypergrad;

namespace {

// A small objective with non-empty θ and a layout, written out by hand:
// L(w, θ, t) = ½ e^{θ0} ||w − c_t||² + θ1 Σ sin(w_i),  c_t,i = sin(t + i).
class SineBowl {
 public:
  explicit SineBowl(Eigen::VectorXd theta) : m_theta(std::move(theta)) {
    m_layout.addGroup("first", 2);
    m_layout.addGroup("second", 3);
    m_layout.addGroup("third", 1);
  }
  Index numParameters() const { return 6; }
  Index numHyperparameters() const { return 2; }
  const ParameterLayout& layout() const { return m_layout; }
  Eigen::VectorXd hyperparameters() const { return m_theta; }
  void setHyperparameters(const Eigen::VectorXd& theta) { m_theta = theta; }

  static Eigen::VectorXd centre(Index t) {
    Eigen::VectorXd c(6);
    for (Index i = 0; i < 6; ++i) c(i) = std::sin(static_cast<double>(t + i));
    return c;
  }
  double value(const Eigen::VectorXd& w, Index t) const {
    return 0.5 * std::exp(m_theta(0)) * (w - centre(t)).squaredNorm() + m_theta(1) * w.array().sin().sum();
  }
  void gradient(const Eigen::VectorXd& w, Index t, Eigen::VectorXd& g) const {
    g = std::exp(m_theta(0)) * (w - centre(t)) + m_theta(1) * w.array().cos().matrix();
  }
  void hessianVectorProduct(const Eigen::VectorXd& w, Index, const Eigen::VectorXd& u, Eigen::VectorXd& hu) const {
    hu = std::exp(m_theta(0)) * u - m_theta(1) * (w.array().sin() * u.array()).matrix();
  }
  void mixedProduct(const Eigen::VectorXd& w, Index t, const Eigen::VectorXd& u, Eigen::VectorXd& dtheta) const {
    dtheta.resize(2);
    dtheta(0) = std::exp(m_theta(0)) * (w - centre(t)).dot(u);
    dtheta(1) = w.array().cos().matrix().dot(u);
  }

 private:
  Eigen::VectorXd m_theta;
  ParameterLayout m_layout;
};

static_assert(isObjective<QuadraticObjective>);
static_assert(isObjective<SineBowl>);
static_assert(isObjective<L2Regularized<QuadraticObjective>>);
static_assert(isObjective<L2Regularized<const QuadraticObjective&>>);
static_assert(isObjective<L2Regularized<SineBowl>>);
static_assert(isObjective<L2Regularized<L2Regularized<SineBowl>>>);
static_assert(detail::HasLayout<L2Regularized<SineBowl>>::value);
static_assert(!detail::HasLayout<L2Regularized<QuadraticObjective>>::value);

double relativeError(const Eigen::VectorXd& got, const Eigen::VectorXd& want) {
  REQUIRE(got.size() == want.size());
  return (got - want).norm() / std::max(want.norm(), 1e-300);
}

// Central difference of a scalar function along each coordinate.
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

// Central difference of a vector function along the direction u.
Eigen::VectorXd fdDirectional(const std::function<Eigen::VectorXd(const Eigen::VectorXd&)>& f,
                              const Eigen::VectorXd& x, const Eigen::VectorXd& u, double eps) {
  return (f(x + eps * u) - f(x - eps * u)) / (2 * eps);
}

Eigen::VectorXd randomVector(Index n, std::uint64_t seed, double scale = 1.0) {
  CounterRng rng(seed, 99);
  Eigen::VectorXd v(n);
  for (Index i = 0; i < n; ++i) v(i) = scale * rng.normal();
  return v;
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

ParameterLayout threeGroups() {
  ParameterLayout layout;
  layout.addGroup("a", 2);
  layout.addGroup("b", 3);
  layout.addGroup("c", 2);
  return layout;
}

// The quadratic's target recomputed here from its definition, independently of target().
Eigen::VectorXd quadraticTarget(const Eigen::VectorXd& mean, double noise, std::uint64_t seed, Index t) {
  CounterRng rng(seed, static_cast<std::uint64_t>(t));
  Eigen::VectorXd c(mean.size());
  for (Index i = 0; i < c.size(); ++i) c(i) = mean(i) + noise * rng.normal();
  return c;
}

struct QuadraticSetup {
  Index n = 7;
  std::uint64_t seed = 2024;
  double noise = 0.3;
  Eigen::MatrixXd a = QuadraticObjective::randomHessian(7, 11, 0.2, 3.0);
  Eigen::VectorXd mean = randomVector(7, 5);
  QuadraticObjective objective{a, mean, noise, seed};
};

}  // namespace

TEST_CASE("QuadraticObjective derivatives match the closed form and finite differences", "[objectives][quadratic]") {
  QuadraticSetup s;
  const Index t = 3;
  const Eigen::VectorXd w = randomVector(s.n, 7);
  const Eigen::VectorXd u = randomVector(s.n, 8);
  const Eigen::VectorXd c = quadraticTarget(s.mean, s.noise, s.seed, t);
  REQUIRE(s.objective.target(t) == c);
  REQUIRE(s.objective.target(t) != s.objective.target(t + 1));

  auto value = [&](const Eigen::VectorXd& x) { return 0.5 * (x - c).dot(s.a * (x - c)); };
  CHECK(std::abs(s.objective.value(w, t) - value(w)) <= 1e-14 * std::abs(value(w)));
  Eigen::VectorXd g, hu, dtheta;
  s.objective.gradient(w, t, g);
  CHECK(relativeError(g, fdGradient(value, w, 1e-4)) < 1e-7);
  s.objective.hessianVectorProduct(w, t, u, hu);
  CHECK(relativeError(hu, s.a * u) < 1e-15);
  s.objective.mixedProduct(w, t, u, dtheta);
  CHECK(dtheta.size() == 0);
  CHECK(s.objective.numHyperparameters() == 0);
}

TEST_CASE("QuadraticObjective::randomHessian is symmetric with the requested spectrum", "[objectives][quadratic]") {
  const Eigen::MatrixXd a = QuadraticObjective::randomHessian(9, 3, 0.5, 8.0);
  CHECK(a == a.transpose());
  const Eigen::VectorXd ev = Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd>(a).eigenvalues();
  CHECK(ev.minCoeff() == Approx(0.5).epsilon(1e-10));
  CHECK(ev.maxCoeff() == Approx(8.0).epsilon(1e-10));
}

TEST_CASE("QuadraticObjective rejects a Hessian that is not symmetric positive definite", "[objectives][quadratic]") {
  Eigen::MatrixXd asym = Eigen::MatrixXd::Identity(3, 3);
  asym(0, 1) = 0.1;
  CHECK_THAT(invalidArgumentMessage([&] { QuadraticObjective(asym, 1.0, 1); }), Catch::Contains("symmetric"));
  Eigen::MatrixXd indefinite = Eigen::MatrixXd::Identity(3, 3);
  indefinite(2, 2) = -1.0;
  CHECK_THAT(invalidArgumentMessage([&] { QuadraticObjective(indefinite, 1.0, 1); }),
             Catch::Contains("positive definite"));
  CHECK_THAT(invalidArgumentMessage([&] { QuadraticObjective(Eigen::MatrixXd::Identity(3, 3), Eigen::VectorXd(2), 1.0, 1); }),
             Catch::Contains("mean has 2"));
  QuadraticObjective ok(Eigen::MatrixXd::Identity(3, 3), 1.0, 1);
  Eigen::VectorXd g;
  CHECK_THAT(invalidArgumentMessage([&] { ok.gradient(Eigen::VectorXd(4), 0, g); }), Catch::Contains("w has 4"));
}

TEST_CASE("L2Regularized per group matches finite differences of an independent value", "[objectives][l2]") {
  QuadraticSetup s;
  const ParameterLayout layout = threeGroups();
  Eigen::VectorXd eta(3);
  eta << -0.7, 0.4, 1.1;
  const auto f = l2PerGroup(s.objective, layout, eta);
  REQUIRE(f.numParameters() == 7);
  REQUIRE(f.numHyperparameters() == 3);
  REQUIRE(f.mode() == L2Mode::PerGroup);

  const Index t = 5;
  const Eigen::VectorXd w = randomVector(s.n, 21);
  const Eigen::VectorXd u = randomVector(s.n, 22);
  const Eigen::VectorXd c = quadraticTarget(s.mean, s.noise, s.seed, t);
  const int groupOf[7] = {0, 0, 1, 1, 1, 2, 2};
  // Value as a function of (w, η), written from the definition.
  auto value = [&](const Eigen::VectorXd& x, const Eigen::VectorXd& e) {
    double penalty = 0;
    for (Index i = 0; i < 7; ++i) penalty += 0.5 * std::exp(e(groupOf[i])) * x(i) * x(i);
    return 0.5 * (x - c).dot(s.a * (x - c)) + penalty;
  };
  auto gradientAt = [&](const Eigen::VectorXd& x, const Eigen::VectorXd& e) {
    auto g = l2PerGroup(s.objective, layout, e);
    Eigen::VectorXd out;
    g.gradient(x, t, out);
    return out;
  };

  Eigen::VectorXd g, hu, dtheta;
  f.gradient(w, t, g);
  CHECK(relativeError(g, fdGradient([&](const Eigen::VectorXd& x) { return value(x, eta); }, w, 1e-4)) < 1e-7);

  f.hessianVectorProduct(w, t, u, hu);
  CHECK(relativeError(hu, fdDirectional([&](const Eigen::VectorXd& x) { return gradientAt(x, eta); }, w, u, 1e-4)) <
        1e-7);

  f.mixedProduct(w, t, u, dtheta);
  REQUIRE(dtheta.size() == 3);
  const Eigen::VectorXd fdMixed =
      fdGradient([&](const Eigen::VectorXd& e) { return u.dot(gradientAt(w, e)); }, eta, 1e-5);
  CHECK(relativeError(dtheta, fdMixed) < 1e-7);

  CHECK(std::abs(f.penalty(w) - (value(w, eta) - value(w, Eigen::VectorXd::Constant(3, -1e3)))) < 1e-12);
  CHECK(f.logLambda() == eta);
  CHECK(relativeError(f.lambda(), eta.array().exp().matrix()) < 1e-15);
  CHECK(f.hyperparameters() == eta);
}

TEST_CASE("L2Regularized mixedTangentProduct is the directional derivative of the gradient in theta, the mixed "
          "product's transpose", "[objectives][l2]") {
  QuadraticSetup s;
  const ParameterLayout layout = threeGroups();
  Eigen::VectorXd eta(3);
  eta << -0.7, 0.4, 1.1;
  const Index t = 3;
  const Eigen::VectorXd w = randomVector(s.n, 31), u = randomVector(s.n, 32);
  const Eigen::VectorXd dEta = randomVector(3, 33), dEtaWeights = randomVector(s.n, 34);
  for (const bool perGroup : {true, false}) {
    CAPTURE(perGroup);
    const Eigen::VectorXd e = perGroup ? eta : layout.expand(eta);
    const Eigen::VectorXd d = perGroup ? dEta : dEtaWeights;
    const auto make = [&](const Eigen::VectorXd& x) {
      return perGroup ? l2PerGroup(s.objective, layout, x) : l2PerWeight(s.objective, x);
    };
    const auto f = make(e);
    Eigen::VectorXd jd, dtheta, gUp, gDown;
    f.mixedTangentProduct(w, t, d, jd);
    REQUIRE(jd.size() == s.n);
    const double h = 1e-5;
    make(e + h * d).gradient(w, t, gUp);
    make(e - h * d).gradient(w, t, gDown);
    CHECK(relativeError(jd, ((gUp - gDown) / (2 * h)).eval()) < 1e-8);
    // uᵀ (J d) = (Jᵀ u)ᵀ d with the mixed product as Jᵀ u.
    f.mixedProduct(w, t, u, dtheta);
    CHECK(u.dot(jd) == Approx(dtheta.dot(d)).epsilon(1e-13));
    CHECK_THROWS_AS(f.mixedTangentProduct(w, t, Eigen::VectorXd::Ones(d.size() + 1), jd), InvalidArgument);
  }
}

TEST_CASE("L2Regularized per weight matches finite differences of an independent value", "[objectives][l2]") {
  QuadraticSetup s;
  const Eigen::VectorXd eta = randomVector(s.n, 31, 0.8);
  const auto f = l2PerWeight(s.objective, eta);
  REQUIRE(f.numHyperparameters() == 7);
  REQUIRE(f.mode() == L2Mode::PerWeight);

  const Index t = 0;
  const Eigen::VectorXd w = randomVector(s.n, 32);
  const Eigen::VectorXd u = randomVector(s.n, 33);
  const Eigen::VectorXd c = quadraticTarget(s.mean, s.noise, s.seed, t);
  auto value = [&](const Eigen::VectorXd& x, const Eigen::VectorXd& e) {
    double penalty = 0;
    for (Index i = 0; i < 7; ++i) penalty += 0.5 * std::exp(e(i)) * x(i) * x(i);
    return 0.5 * (x - c).dot(s.a * (x - c)) + penalty;
  };
  auto gradientAt = [&](const Eigen::VectorXd& x, const Eigen::VectorXd& e) {
    Eigen::VectorXd out;
    l2PerWeight(s.objective, e).gradient(x, t, out);
    return out;
  };

  Eigen::VectorXd g, hu, dtheta;
  f.gradient(w, t, g);
  CHECK(relativeError(g, fdGradient([&](const Eigen::VectorXd& x) { return value(x, eta); }, w, 1e-4)) < 1e-7);
  f.hessianVectorProduct(w, t, u, hu);
  CHECK(relativeError(hu, fdDirectional([&](const Eigen::VectorXd& x) { return gradientAt(x, eta); }, w, u, 1e-4)) <
        1e-7);
  f.mixedProduct(w, t, u, dtheta);
  CHECK(relativeError(dtheta, fdGradient([&](const Eigen::VectorXd& e) { return u.dot(gradientAt(w, e)); }, eta,
                                         1e-5)) < 1e-7);
}

TEST_CASE("L2Regularized puts the inner hyperparameters first and differentiates all of theta",
          "[objectives][l2]") {
  Eigen::VectorXd innerTheta(2);
  innerTheta << 0.3, 0.7;
  Eigen::VectorXd eta(3);
  eta << -0.5, 0.2, 0.9;
  // Groups from the inner objective's own layout.
  auto f = L2Regularized<SineBowl>::perGroup(SineBowl(innerTheta), eta);
  REQUIRE(f.numHyperparameters() == 5);
  REQUIRE(f.layout() == f.inner().layout());
  Eigen::VectorXd theta(5);
  theta << innerTheta, eta;
  CHECK(f.hyperparameters() == theta);

  const Index t = 4;
  const Eigen::VectorXd w = randomVector(6, 41);
  const Eigen::VectorXd u = randomVector(6, 42);
  const int groupOf[6] = {0, 0, 1, 1, 1, 2};
  // L(w, θ) from the definition, θ = [θ0, θ1, η0, η1, η2].
  auto value = [&](const Eigen::VectorXd& x, const Eigen::VectorXd& th) {
    double v = 0;
    for (Index i = 0; i < 6; ++i) {
      const double ci = std::sin(static_cast<double>(t + i));
      v += 0.5 * std::exp(th(0)) * (x(i) - ci) * (x(i) - ci) + th(1) * std::sin(x(i)) +
           0.5 * std::exp(th(2 + groupOf[i])) * x(i) * x(i);
    }
    return v;
  };
  auto gradientAt = [&](const Eigen::VectorXd& x, const Eigen::VectorXd& th) {
    auto copy = f;
    copy.setHyperparameters(th);
    Eigen::VectorXd out;
    copy.gradient(x, t, out);
    return out;
  };

  CHECK(std::abs(f.value(w, t) - value(w, theta)) < 1e-13);
  Eigen::VectorXd g, hu, dtheta;
  f.gradient(w, t, g);
  CHECK(relativeError(g, fdGradient([&](const Eigen::VectorXd& x) { return value(x, theta); }, w, 1e-5)) < 1e-7);
  f.hessianVectorProduct(w, t, u, hu);
  CHECK(relativeError(hu, fdDirectional([&](const Eigen::VectorXd& x) { return gradientAt(x, theta); }, w, u,
                                        1e-5)) < 1e-7);
  f.mixedProduct(w, t, u, dtheta);
  REQUIRE(dtheta.size() == 5);
  CHECK(relativeError(dtheta, fdGradient([&](const Eigen::VectorXd& th) { return u.dot(gradientAt(w, th)); },
                                         theta, 1e-5)) < 1e-7);

  SECTION("setHyperparameters routes the inner part to the inner objective") {
    Eigen::VectorXd other(5);
    other << -0.1, 0.2, 0.3, 0.4, 0.5;
    f.setHyperparameters(other);
    CHECK(f.hyperparameters() == other);
    CHECK(f.inner().hyperparameters() == other.head(2));
    CHECK(f.logLambda() == other.tail(3));
  }
}

TEST_CASE("L2Convention::SquaredNorm adds lambda times the squared norm, with autograd's gradient bits",
          "[objectives][l2]") {
  Eigen::VectorXd innerTheta(2);
  innerTheta << 0.3, 0.7;
  Eigen::VectorXd eta(3);
  eta << -0.5, 0.2, 0.9;
  const auto full = L2Regularized<SineBowl>::perGroup(SineBowl(innerTheta), eta, L2Convention::SquaredNorm);
  const auto half = L2Regularized<SineBowl>::perGroup(SineBowl(innerTheta), eta);
  CHECK(full.convention() == L2Convention::SquaredNorm);
  CHECK(half.convention() == L2Convention::HalfSquaredNorm);
  const Index t = 3;
  const Eigen::VectorXd w = randomVector(6, 61);
  const Eigen::VectorXd u = randomVector(6, 62);
  const int groupOf[6] = {0, 0, 1, 1, 1, 2};

  // The gradient a framework's autograd gives for L_inner + lam * (w**2).sum(): g_inner + lam * (2 * w).
  Eigen::VectorXd gInner, g;
  SineBowl(innerTheta).gradient(w, t, gInner);
  full.gradient(w, t, g);
  for (Index i = 0; i < 6; ++i) CHECK(g(i) == gInner(i) + std::exp(eta(groupOf[i])) * (2.0 * w(i)));

  // The penalty is Σ λ w² (no ½), and the objective agrees with finite differences of that value.
  double sum = 0;
  for (Index i = 0; i < 6; ++i) sum += std::exp(eta(groupOf[i])) * w(i) * w(i);
  CHECK(std::abs(full.penalty(w) - sum) < 1e-14 * sum);
  CHECK(std::abs(half.penalty(w) - 0.5 * sum) < 1e-14 * sum);
  auto value = [&](const Eigen::VectorXd& x, const Eigen::VectorXd& e) {
    double v = 0;
    for (Index i = 0; i < 6; ++i) v += std::exp(e(groupOf[i])) * x(i) * x(i);
    return SineBowl(innerTheta).value(x, t) + v;
  };
  auto gradientAt = [&](const Eigen::VectorXd& x, const Eigen::VectorXd& e) {
    auto copy = full;
    copy.setLogLambda(e);
    Eigen::VectorXd out;
    copy.gradient(x, t, out);
    return out;
  };
  CHECK(relativeError(g, fdGradient([&](const Eigen::VectorXd& x) { return value(x, eta); }, w, 1e-5)) < 1e-7);
  Eigen::VectorXd hu, dtheta;
  full.hessianVectorProduct(w, t, u, hu);
  CHECK(relativeError(hu, fdDirectional([&](const Eigen::VectorXd& x) { return gradientAt(x, eta); }, w, u, 1e-5)) <
        1e-7);
  full.mixedProduct(w, t, u, dtheta);
  REQUIRE(dtheta.size() == 5);
  CHECK(relativeError(dtheta.tail(3), fdGradient([&](const Eigen::VectorXd& e) { return u.dot(gradientAt(w, e)); },
                                                 eta, 1e-5)) < 1e-7);

  // Mathematically the half convention at η + ln 2: equal up to the rounding of exp.
  const auto shifted =
      L2Regularized<SineBowl>::perGroup(SineBowl(innerTheta), (eta.array() + std::log(2.0)).matrix());
  Eigen::VectorXd gShifted, dShifted;
  shifted.gradient(w, t, gShifted);
  shifted.mixedProduct(w, t, u, dShifted);
  CHECK(relativeError(g, gShifted) < 1e-15);
  CHECK(relativeError(dtheta, dShifted) < 1e-15);

  SECTION("every factory takes the convention") {
    const double norm2 = w.squaredNorm();  // λ = 1: the penalty is ‖w‖²
    CHECK(std::abs(l2PerGroup(SineBowl(innerTheta), ParameterLayout::single(6), Eigen::VectorXd::Zero(1),
                              L2Convention::SquaredNorm)
                       .penalty(w) -
                   norm2) < 1e-14 * norm2);
    CHECK(l2PerWeight(SineBowl(innerTheta), Eigen::VectorXd::Zero(6), L2Convention::SquaredNorm).convention() ==
          L2Convention::SquaredNorm);
    CHECK(L2Regularized<SineBowl>::uniform(SineBowl(innerTheta), 0.0, L2Convention::SquaredNorm).convention() ==
          L2Convention::SquaredNorm);
  }
}

TEST_CASE("hyperparameterLayout names theta's blocks: the inner objective's, then l2.logLambda", "[objectives][l2]") {
  Eigen::VectorXd innerTheta(2);
  innerTheta << 0.3, 0.7;
  const auto f = L2Regularized<SineBowl>::perGroup(SineBowl(innerTheta), Eigen::VectorXd::Zero(3));
  const ParameterLayout blocks = hyperparameterLayout(f);
  REQUIRE(blocks.numGroups() == 2);
  CHECK(blocks.group(0).name == "theta");  // SineBowl names none: one block for its θ
  CHECK(blocks.group(0).size == 2);
  CHECK(blocks.group(1).name == "l2.logLambda");
  CHECK(blocks.group(1).offset == 2);
  CHECK(blocks.group(1).size == 3);
  CHECK(f.logLambdaBlockName() == "l2.logLambda");

  // Nested decorators get distinct names, in θ's order.
  const auto twice = l2PerWeight(f, Eigen::VectorXd::Zero(6));
  const ParameterLayout nested = hyperparameterLayout(twice);
  REQUIRE(nested.numGroups() == 3);
  CHECK(nested.group(1).name == "l2.logLambda");
  CHECK(nested.group(2).name == "l2.logLambda.2");
  CHECK(nested.group(2).offset == 5);
  CHECK(nested.group(2).size == 6);
  CHECK(nested.size() == twice.numHyperparameters());

  // An objective without hyperparameters has no blocks; with the L2 only its own.
  QuadraticSetup s;
  CHECK(hyperparameterLayout(s.objective).numGroups() == 0);
  const ParameterLayout only = hyperparameterLayout(l2PerGroup(s.objective, threeGroups(), Eigen::VectorXd::Zero(3)));
  REQUIRE(only.numGroups() == 1);
  CHECK(only.group(0).name == "l2.logLambda");
}

TEST_CASE("L2Regularized fused reverseStep equals the separate calls bit for bit", "[objectives][l2]") {
  Eigen::VectorXd innerTheta(2);
  innerTheta << 0.3, -0.4;
  const auto f = l2PerWeight(SineBowl(innerTheta), randomVector(6, 51));
  const Eigen::VectorXd w = randomVector(6, 52);
  const Eigen::VectorXd u = randomVector(6, 53);
  Eigen::VectorXd g1, hu1, d1, g2, hu2, d2;
  f.gradient(w, 2, g1);
  f.hessianVectorProduct(w, 2, u, hu1);
  f.mixedProduct(w, 2, u, d1);
  f.reverseStep(w, 2, u, g2, hu2, d2);
  CHECK(g1 == g2);  // the reverse pass needs the same bits as the forward pass
  CHECK(hu1 == hu2);
  CHECK(d1 == d2);
  Eigen::VectorXd g3, hu3, d3;
  reverseStep(f, w, 2, u, g3, hu3, d3);
  CHECK(g3 == g1);
}

TEST_CASE("L2Regularized reverseStepWithDirection: the direction sees the regularised gradient, same bits",
          "[objectives][l2]") {
  Eigen::VectorXd innerTheta(2);
  innerTheta << 0.3, -0.4;
  const auto f = l2PerWeight(SineBowl(innerTheta), randomVector(6, 54));
  static_assert(detail::HasReverseStepWithDirection<std::decay_t<decltype(f)>>::value, "L2Regularized forwards it");
  const Eigen::VectorXd w = randomVector(6, 55);
  const Eigen::VectorXd u0 = randomVector(6, 56);
  const DirectionFunction direction = [&](const Eigen::VectorXd& g, Eigen::VectorXd& u) {
    u = (u0.array() * (1.0 + g.array().square())).matrix();
  };
  Eigen::VectorXd g1, u1, hu1, d1, g2, u2, hu2, d2;
  f.gradient(w, 3, g1);
  direction(g1, u1);
  f.hessianVectorProduct(w, 3, u1, hu1);
  f.mixedProduct(w, 3, u1, d1);
  f.reverseStepWithDirection(w, 3, direction, u2, g2, hu2, d2);
  CHECK(g1 == g2);
  CHECK(u1 == u2);
  CHECK(hu1 == hu2);
  CHECK(d1 == d2);
  CHECK(d2.size() == f.numHyperparameters());
}

TEST_CASE("L2Regularized accepts a reference to a shared inner objective", "[objectives][l2]") {
  QuadraticSetup s;
  const auto byRef = L2Regularized<const QuadraticObjective&>::uniform(s.objective, -1.0);
  const auto byValue = L2Regularized<QuadraticObjective>::uniform(s.objective, -1.0);
  CHECK(&byRef.inner() == &s.objective);
  const Eigen::VectorXd w = randomVector(s.n, 61);
  Eigen::VectorXd g1, g2;
  byRef.gradient(w, 1, g1);
  byValue.gradient(w, 1, g2);
  CHECK(g1 == g2);
  CHECK(byRef.numHyperparameters() == 1);
}

TEST_CASE("L2Regularized rejects bad sizes and non-finite log-penalties with actionable messages",
          "[objectives][l2]") {
  QuadraticSetup s;
  const ParameterLayout layout = threeGroups();
  CHECK_THAT(invalidArgumentMessage([&] { l2PerGroup(s.objective, layout, Eigen::VectorXd::Zero(2)); }),
             Catch::Contains("got 2 log-penalties but the layout has 3 groups"));
  ParameterLayout tooSmall;
  tooSmall.addGroup("x", 5);
  CHECK_THAT(invalidArgumentMessage([&] { l2PerGroup(s.objective, tooSmall, Eigen::VectorXd::Zero(1)); }),
             Catch::Contains("covers 5 parameters but the objective has 7"));
  CHECK_THAT(invalidArgumentMessage([&] { l2PerWeight(s.objective, Eigen::VectorXd::Zero(6)); }),
             Catch::Contains("got 6 log-penalties but the objective has 7"));

  Eigen::VectorXd eta = Eigen::VectorXd::Zero(3);
  eta(1) = std::nan("");
  CHECK_THAT(invalidArgumentMessage([&] { l2PerGroup(s.objective, layout, eta); }),
             Catch::Contains("entry 1 for group 'b'") && Catch::Contains("finite"));
  eta(1) = std::numeric_limits<double>::infinity();
  CHECK_THAT(invalidArgumentMessage([&] { l2PerGroup(s.objective, layout, eta); }), Catch::Contains("finite"));
  eta(1) = 800.0;  // exp overflows
  CHECK_THAT(invalidArgumentMessage([&] { l2PerGroup(s.objective, layout, eta); }), Catch::Contains("below ~709"));

  auto f = l2PerGroup(s.objective, layout, Eigen::VectorXd::Zero(3));
  CHECK_THAT(invalidArgumentMessage([&] { f.setLogLambda(Eigen::VectorXd::Zero(4)); }),
             Catch::Contains("got 4 log-penalties but this regulariser has 3"));
  CHECK_THAT(invalidArgumentMessage([&] { f.setHyperparameters(Eigen::VectorXd::Zero(2)); }),
             Catch::Contains("got 2 values but the objective has 3"));
  Eigen::VectorXd bad = Eigen::VectorXd::Zero(3);
  bad(2) = -std::numeric_limits<double>::infinity();
  CHECK_THAT(invalidArgumentMessage([&] { f.setLogLambda(bad); }), Catch::Contains("group 'c'"));
  CHECK(f.logLambda() == Eigen::VectorXd::Zero(3));  // unchanged after the failed set
  Eigen::VectorXd g;
  CHECK_THAT(invalidArgumentMessage([&] { f.gradient(Eigen::VectorXd::Zero(8), 0, g); }),
             Catch::Contains("w has 8 entries"));

  // Valid updates take effect.
  Eigen::VectorXd eta2(3);
  eta2 << 1.0, 2.0, 3.0;
  f.setLogLambda(eta2);
  CHECK(f.lambdaPerWeight()(0) == Approx(std::exp(1.0)).epsilon(1e-15));
  CHECK(f.lambdaPerWeight()(4) == Approx(std::exp(2.0)).epsilon(1e-15));
  CHECK(f.lambdaPerWeight()(6) == Approx(std::exp(3.0)).epsilon(1e-15));
}
