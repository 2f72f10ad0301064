#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>

#include <hypergrad/meta.hpp>
#include <hypergrad/optimizers/sgd_momentum.hpp>
#include <hypergrad/reverse.hpp>

#include "../reverse/logistic_fixture.hpp"

using namespace hypergrad;

TEST_CASE("meta parameters store values through their transforms and round-trip them", "[meta]") {
  MetaParameters p;
  Eigen::MatrixXd alpha(2, 3);
  alpha << 0.1, 0.2, 0.3, 0.4, 0.5, 0.6;
  p.add("alpha", alpha, Transform::Log);
  p.add("gamma", Eigen::MatrixXd::Constant(2, 3, 0.9), Transform::Logit);
  p.add("shift", Eigen::MatrixXd::Constant(1, 1, -3.0), Transform::Identity);
  CHECK(p.size() == 13);
  CHECK((p.value("alpha") - alpha).norm() < 1e-15);
  CHECK(p.raw()(0) == Approx(std::log(0.1)));
  CHECK(p.raw()(6) == Approx(std::log(9.0)));
  CHECK(p.value(2)(0, 0) == -3.0);
  CHECK_THROWS_WITH(p.add("alpha", alpha, Transform::Log), Catch::Contains("exists"));
  CHECK_THROWS_WITH(p.add("bad", Eigen::MatrixXd::Constant(1, 1, 1.5), Transform::Logit), Catch::Contains("(0, 1)"));
  CHECK_THROWS_WITH(p.add("neg", Eigen::MatrixXd::Constant(1, 1, -1.0), Transform::Log), Catch::Contains("> 0"));
  CHECK_THROWS_AS(p.value("missing"), InvalidArgument);
}

TEST_CASE("saturated log and logit blocks round-trip through setValue and keep their exact derivative", "[meta]") {
  // σ(40) rounds to 1.0 and e^{-800} to 0.0: the value no longer determines the coordinate.
  const Eigen::Vector4d x(40.0, -40.0, 800.0, -800.0);
  MetaParameters p;
  p.add("gamma", Eigen::MatrixXd::Constant(2, 2, 0.5), Transform::Logit);
  p.add("alpha", Eigen::MatrixXd::Constant(2, 2, 0.5), Transform::Log);
  p.add("fixed", Eigen::MatrixXd::Constant(1, 1, 0.5), Transform::Logit, /*trainable=*/false);
  Eigen::VectorXd raw(9);
  raw << x, x, 800.0;
  p.setRaw(raw);

  const Eigen::MatrixXd gamma = p.value("gamma"), alpha = p.value("alpha");
  CHECK(gamma(0) == 1.0);
  CHECK(gamma(1) == Approx(std::exp(-40.0)).epsilon(1e-15));
  CHECK(gamma(2) == 1.0);
  CHECK(gamma(3) == 0.0);
  CHECK(alpha(0) == std::exp(40.0));
  CHECK(alpha(2) == std::numeric_limits<double>::infinity());
  CHECK(alpha(3) == 0.0);

  // The round trip changes nothing, bit for bit (it threw on the value 1.0 before).
  for (Index k = 0; k < p.numBlocks(); ++k) REQUIRE_NOTHROW(p.setValue(k, p.value(k)));
  CHECK(std::memcmp(p.raw().data(), raw.data(), sizeof(double) * 9) == 0);

  // d value/dx from x: logit e^{-|x|}/(1 + e^{-|x|})² (= e^{-40} to double precision at |x| = 40,
  // below the smallest subnormal at |x| = 800), log e^x; times the value-space gradient 2.5.
  const Eigen::MatrixXd g = Eigen::MatrixXd::Constant(2, 2, 2.5);
  const Eigen::VectorXd dx = p.chain({g, g, Eigen::MatrixXd::Constant(1, 1, 1.0)});
  CHECK(dx(0) == Approx(2.5 * std::exp(-40.0)).epsilon(1e-15));  // was 0: 1.0 · (1 − 1.0)
  CHECK(dx(1) == Approx(2.5 * std::exp(-40.0)).epsilon(1e-15));
  CHECK(dx(0) > 0.0);
  CHECK(dx(2) == 0.0);
  CHECK(dx(3) == 0.0);
  CHECK(dx(4) == 2.5 * std::exp(40.0));
  CHECK(dx(5) == 2.5 * std::exp(-40.0));
  CHECK(dx(6) == std::numeric_limits<double>::infinity());  // e^800 overflows: the true value does too
  CHECK(dx(7) == 0.0);
  CHECK(dx(8) == 0.0);  // not trainable
  // A zero gradient is zero even where e^x overflowed (0 · inf is NaN).
  CHECK(p.chain({g, Eigen::MatrixXd::Zero(2, 2), Eigen::MatrixXd::Zero(1, 1)}).allFinite());

  // Only the entries whose value changed get a new coordinate.
  Eigen::MatrixXd changed = p.value("gamma");
  changed(1) = 0.25;
  p.setValue(0, changed);
  CHECK(p.raw()(1) == Approx(std::log(0.25 / 0.75)));
  CHECK(p.raw()(0) == 40.0);
  CHECK(p.raw()(2) == 800.0);
  CHECK(p.raw()(3) == -800.0);

  // Values outside the domain still throw, and the block is left unchanged.
  const Eigen::VectorXd before = p.raw();
  Eigen::MatrixXd bad = p.value("gamma");
  bad(0) = 0.5;  // a valid change, not applied because of the next entry
  bad(1) = 1.0;  // the current coordinate maps to 0.25, so 1.0 is a request outside (0, 1)
  CHECK_THROWS_WITH(p.setValue(0, bad), Catch::Contains("entry 1 = 1") && Catch::Contains("(0, 1)"));
  bad = p.value("alpha");
  bad(1) = -1.0;
  CHECK_THROWS_WITH(p.setValue(1, bad), Catch::Contains("> 0"));
  bad(1) = std::nan("");
  CHECK_THROWS_AS(p.setValue(1, bad), InvalidArgument);
  CHECK(std::memcmp(p.raw().data(), before.data(), sizeof(double) * 9) == 0);
}

TEST_CASE("the chain rule to the unconstrained vector matches finite differences", "[meta]") {
  MetaParameters p;
  p.add("a", Eigen::MatrixXd::Constant(2, 2, 0.3), Transform::Log);
  p.add("b", Eigen::MatrixXd::Constant(3, 1, 0.7), Transform::Logit);
  p.add("c", Eigen::MatrixXd::Constant(1, 2, 1.5), Transform::Identity);
  // f(values) = Σ weights ⊙ values², with value-space gradient 2 w ⊙ value
  auto f = [](const MetaParameters& q) {
    double s = 0;
    for (Index k = 0; k < q.numBlocks(); ++k) s += (k + 1.0) * q.value(k).squaredNorm();
    return s;
  };
  std::vector<Eigen::MatrixXd> grads;
  for (Index k = 0; k < p.numBlocks(); ++k) grads.push_back(2.0 * (k + 1.0) * p.value(k));
  const Eigen::VectorXd dx = p.chain(grads);
  for (Index i = 0; i < p.size(); ++i) {
    MetaParameters q = p;
    Eigen::VectorXd x = p.raw();
    x(i) += 1e-6;
    q.setRaw(x);
    const double fp = f(q);
    x(i) -= 2e-6;
    q.setRaw(x);
    CHECK(dx(i) == Approx((fp - f(q)) / 2e-6).epsilon(1e-6));
  }
}

TEST_CASE("Adam's first step moves each coordinate by the step size against the gradient's sign", "[meta]") {
  MetaAdam adam;
  adam.stepSize = 0.04;
  Eigen::VectorXd x = Eigen::Vector3d(1.0, -2.0, 0.5);
  const Eigen::VectorXd g = Eigen::Vector3d(3.0, -0.001, 0.0);
  adam.update(x, g);
  CHECK(x(0) == Approx(1.0 - 0.04).epsilon(1e-6));
  CHECK(x(1) == Approx(-2.0 + 0.04).epsilon(1e-4));
  CHECK(x(2) == 0.5);
  // and it minimises a quadratic
  MetaAdam adam2;
  adam2.stepSize = 0.05;
  Eigen::VectorXd y = Eigen::Vector2d(3.0, -4.0);
  for (int k = 0; k < 2000; ++k) adam2.update(y, 2.0 * y);
  CHECK(y.norm() < 1e-2);
}

namespace {
struct Tuning {
  fixture::Logistic train{60, 8, 10, 31};
  fixture::Validation valid{train, 32};
  ParameterLayout layout = ParameterLayout::single(8);
  static constexpr Index T = 30;

  MetaEvaluation operator()(const MetaParameters& p, Index) const {
    SgdMomentum<> opt(layout, Schedule(p.value("learning rates")), Schedule(p.value("momenta")));
    const Hypergradients hg = computeHypergradients(opt, train, valid, Eigen::VectorXd::Zero(8), Eigen::VectorXd::Zero(8));
    MetaEvaluation e;
    e.objective = hg.metaObjective;
    e.gradients = {hg.learningRates, hg.momenta};
    e.metrics["valid loss"] = hg.metaObjective;
    return e;
  }
};
}  // namespace

TEST_CASE("meta-optimising a learning-rate schedule lowers the validation loss; callbacks log and report",
          "[meta][integration]") {
  Tuning tuning;
  MetaParameters p;
  p.add("learning rates", Eigen::MatrixXd::Constant(Tuning::T, 1, 0.02), Transform::Log);
  p.add("momenta", Eigen::MatrixXd::Constant(Tuning::T, 1, 0.8), Transform::Logit);
  const double before = tuning(p, 0).objective;
  MetaAdam adam;
  adam.stepSize = 0.1;
  std::ostringstream progress;
  const std::string csv = "test_meta_log.csv";
  MetaResult r;
  {
    CsvLogger log(csv);
    ProgressBar bar(progress);
    r = metaOptimize(p, tuning, adam, 15, bar, log);
  }
  CHECK(r.iterations == 15);
  CHECK_FALSE(r.stoppedEarly);
  CHECK(r.objectives.back() < 0.95 * before);
  CHECK(r.bestObjective <= r.objectives.back());
  CHECK(progress.str().find("meta   15/15") != std::string::npos);
  CHECK(progress.str().find("valid loss") != std::string::npos);
  std::ifstream in(csv);
  std::string header, line;
  std::getline(in, header);
  CHECK(header == "iteration,objective,gradient_norm,elapsed_s,valid loss");
  int rows = 0;
  while (std::getline(in, line)) ++rows;
  CHECK(rows == 15);
  std::remove(csv.c_str());
}

TEST_CASE("early stopping ends the loop on an exploding hypergradient or a stalled objective", "[meta]") {
  MetaParameters p;
  p.add("x", Eigen::MatrixXd::Constant(1, 1, 1.0), Transform::Identity);
  MetaSgd sgd;
  sgd.stepSize = 1e-3;
  auto exploding = [](const MetaParameters&, Index it) {
    MetaEvaluation e;
    e.objective = 1.0 / (1.0 + it);
    e.gradients = {Eigen::MatrixXd::Constant(1, 1, std::pow(10.0, static_cast<double>(it)))};
    return e;
  };
  EarlyStopping stop(100.0);
  MetaResult r = metaOptimize(p, exploding, sgd, 20, stop);
  CHECK(r.stoppedEarly);
  CHECK(r.iterations == 4);  // norms 1, 10, 100, 1000 > 100 x 1
  CHECK_THAT(r.stopReason, Catch::Contains("chaotic"));

  auto stalled = [](const MetaParameters&, Index it) {
    MetaEvaluation e;
    e.objective = it < 3 ? 1.0 - 0.1 * static_cast<double>(it) : 0.9;
    e.gradients = {Eigen::MatrixXd::Constant(1, 1, 1.0)};
    return e;
  };
  EarlyStopping patience(1e9, 4);
  r = metaOptimize(p, stalled, sgd, 50, patience);
  CHECK(r.stoppedEarly);
  CHECK(r.iterations == 7);  // best at it = 2, then 4 iterations without improvement
  CHECK_THAT(r.stopReason, Catch::Contains("not improved"));

  auto nonFinite = [](const MetaParameters&, Index) {
    MetaEvaluation e;
    e.objective = 1.0;
    e.gradients = {Eigen::MatrixXd::Constant(1, 1, std::nan(""))};
    return e;
  };
  CHECK_THROWS_WITH(metaOptimize(p, nonFinite, sgd, 5), Catch::Contains("meta-iteration 0") && Catch::Contains("not finite"));
  CHECK_THROWS_WITH(CsvLogger("/nonexistent-dir/x.csv"), Catch::Contains("cannot open"));
}
