#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <hypergrad/meta.hpp>
#include <hypergrad/optimizers/sgd_momentum.hpp>
#include <hypergrad/reverse.hpp>

#include "../support/logistic_fixture.hpp"

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
  CHECK_THROWS_WITH(CsvLogger("/nonexistent-dir/x.csv"), Catch::Contains("cannot open"));
}

namespace {
MetaIterationInfo withNorm(Index it, double norm) {
  MetaIterationInfo info;
  info.iteration = it;
  info.numIterations = 10;
  info.objective = 1.0;
  info.gradientNorm = norm;
  return info;
}
}  // namespace

TEST_CASE("early stopping ignores a zero first norm as its reference and stops on a NaN or infinite one", "[meta]") {
  // Relative to 0 every later norm would be an explosion: 0 is no reference.
  EarlyStopping zeroFirst(100.0);
  CHECK_FALSE(zeroFirst.onMetaIteration(withNorm(0, 0.0)));
  CHECK_FALSE(zeroFirst.onMetaIteration(withNorm(1, 0.0)));
  CHECK_FALSE(zeroFirst.onMetaIteration(withNorm(2, 1.0)));
  CHECK_FALSE(zeroFirst.onMetaIteration(withNorm(3, 50.0)));
  CHECK(zeroFirst.onMetaIteration(withNorm(4, 150.0)));
  CHECK_THAT(zeroFirst.stopReason(), Catch::Contains("meta-iteration 4") && Catch::Contains("smallest value 1"));

  // A NaN compared false with everything and never stopped; an infinite first norm exceeded no
  // multiple of the infinite initial reference.
  for (const double bad : {std::nan(""), std::numeric_limits<double>::infinity()}) {
    EarlyStopping first(100.0);
    CHECK(first.onMetaIteration(withNorm(0, bad)));
    CHECK_THAT(first.stopReason(), Catch::Contains("meta-iteration 0") && Catch::Contains("not finite"));
    EarlyStopping later(100.0, 3);
    CHECK_FALSE(later.onMetaIteration(withNorm(0, 2.0)));
    CHECK(later.onMetaIteration(withNorm(1, bad)));
    CHECK_THAT(later.stopReason(), Catch::Contains("meta-iteration 1") && Catch::Contains("not finite"));
  }

  // Through metaOptimize: a zero hypergradient first, then norms 1, 10, 100, 1000.
  MetaParameters p;
  p.add("x", Eigen::MatrixXd::Constant(1, 1, 1.0), Transform::Identity);
  MetaSgd sgd;
  sgd.stepSize = 1e-3;
  auto zeroThenExploding = [](const MetaParameters&, Index it) {
    MetaEvaluation e;
    e.objective = 1.0;
    e.gradients = {Eigen::MatrixXd::Constant(1, 1, it == 0 ? 0.0 : std::pow(10.0, static_cast<double>(it - 1)))};
    return e;
  };
  EarlyStopping stop(100.0);
  const MetaResult r = metaOptimize(p, zeroThenExploding, sgd, 20, stop);
  CHECK(r.stoppedEarly);
  CHECK_FALSE(r.diverged);
  CHECK(r.iterations == 5);  // 1000 > 100 x 1 at meta-iteration 4
  CHECK_THAT(r.stopReason, Catch::Contains("chaotic"));
}

namespace {
/// A meta run on one identity coordinate whose objectives come from a table; at meta-iteration
/// `failAt` it fails the way `mode` says. It records x at every evaluation.
struct Scripted {
  enum class Mode { ThrowNonFinite, ThrowOverflow, NanObjective, InfGradient, ThrowInvalid, ThrowExactness, ThrowUser };
  Mode mode = Mode::ThrowNonFinite;
  Index failAt = 3;
  std::vector<double> objectives{1.0, 0.5, 0.7, 0.6, 0.8};
  std::vector<Eigen::VectorXd>* seen = nullptr;

  MetaEvaluation operator()(const MetaParameters& p, Index it) const {
    seen->push_back(p.raw());
    MetaEvaluation e;
    e.objective = objectives.at(static_cast<std::size_t>(it));
    e.gradients = {Eigen::MatrixXd::Constant(1, 2, 1.0)};
    e.metrics["valid loss"] = 2.0 * e.objective;
    if (it != failAt) return e;
    switch (mode) {
      case Mode::ThrowNonFinite: throw NonFiniteValue("SgdMomentum::step: the gradient at step 7 is not finite");
      case Mode::ThrowOverflow: throw FixedPointOverflow("the velocity at step 9 overflows the fixed-point range");
      case Mode::NanObjective: e.objective = std::nan(""); break;
      case Mode::InfGradient: e.gradients[0](0, 1) = std::numeric_limits<double>::infinity(); break;
      case Mode::ThrowInvalid: throw InvalidArgument("a bad schedule");
      case Mode::ThrowExactness: throw ExactnessViolation("the reverse pass did not come back");
      case Mode::ThrowUser: throw std::runtime_error("the user's own error");
    }
    return e;
  }
};

/// Records what metaOptimize tells its callbacks.
struct Recorder {
  Index iterations = 0, failures = 0, ends = 0;
  MetaFailureInfo failure;
  Eigen::VectorXd failedRaw;
  bool failureHadMetrics = false;
  MetaResult end;
  bool onMetaIteration(const MetaIterationInfo&) {
    ++iterations;
    return false;
  }
  void onMetaFailure(const MetaFailureInfo& info) {
    ++failures;
    failure = info;
    failedRaw = info.parameters->raw();
    failureHadMetrics = info.metrics != nullptr;
    failure.metrics = nullptr;
    failure.parameters = nullptr;
  }
  void onMetaEnd(const MetaResult& r) {
    ++ends;
    end = r;
  }
};

MetaParameters twoCoordinates() {
  MetaParameters p;
  p.add("x", Eigen::MatrixXd::Constant(1, 2, 0.0), Transform::Identity);
  return p;
}
}  // namespace

TEST_CASE("a meta run whose training diverges stops, tells the callbacks and leaves the best iterate", "[meta]") {
  using Mode = Scripted::Mode;
  for (const auto& [mode, kind] : {std::make_pair(Mode::ThrowNonFinite, MetaFailure::NonFiniteValue),
                                   std::make_pair(Mode::ThrowOverflow, MetaFailure::FixedPointOverflow),
                                   std::make_pair(Mode::NanObjective, MetaFailure::NonFiniteObjective),
                                   std::make_pair(Mode::InfGradient, MetaFailure::NonFiniteGradient)}) {
    INFO("failure kind " << metaFailureName(kind));
    MetaParameters p = twoCoordinates();
    std::vector<Eigen::VectorXd> seen;
    Scripted evaluate;
    evaluate.mode = mode;
    evaluate.seen = &seen;
    MetaSgd sgd;
    sgd.stepSize = 0.1;
    Recorder rec;
    EarlyStopping stop(100.0, 10);
    std::ostringstream progress;
    ProgressBar bar(progress);
    const std::string csv = "test_meta_diverged.csv";
    MetaResult r;
    {
      CsvLogger log(csv);
      // Before the fix the exception (or a NonFiniteValue for 3 and 4) escaped here, no callback heard of it
      // and p held the diverged iterate.
      REQUIRE_NOTHROW(r = metaOptimize(p, evaluate, sgd, 5, rec, stop, bar, log));
    }
    REQUIRE(seen.size() == 4);
    CHECK(r.diverged);
    CHECK(r.stoppedEarly);
    CHECK(r.failure == kind);
    CHECK(r.failedIteration == 3);
    CHECK(r.iterations == 3);  // the failed evaluation is not counted or recorded
    CHECK(r.objectives == std::vector<double>{1.0, 0.5, 0.7});
    CHECK(r.bestIteration == 1);
    CHECK(r.bestObjective == 0.5);
    CHECK(r.bestRaw == seen[1]);
    CHECK(p.raw() == seen[1]);  // the best iterate, not the diverged one
    CHECK_THAT(r.stopReason, Catch::Contains("meta-iteration 3 failed") && Catch::Contains(metaFailureName(kind)) &&
                                 Catch::Contains("back at the best iterate, meta-iteration 1 with objective 0.5"));
    if (mode == Mode::ThrowNonFinite) CHECK_THAT(r.stopReason, Catch::Contains("the gradient at step 7 is not finite"));
    if (mode == Mode::InfGradient) CHECK_THAT(r.stopReason, Catch::Contains("block 'x' entry 1 is inf"));

    CHECK(rec.iterations == 3);
    CHECK(rec.failures == 1);
    CHECK(rec.ends == 1);
    CHECK(rec.end.diverged);
    CHECK(rec.failure.iteration == 3);
    CHECK(rec.failure.numIterations == 5);
    CHECK(rec.failure.kind == kind);
    CHECK(rec.failedRaw == seen[3]);  // the callback sees the iterate that failed
    const bool threw = mode == Mode::ThrowNonFinite || mode == Mode::ThrowOverflow;
    CHECK(rec.failureHadMetrics == !threw);
    CHECK(std::isnan(rec.failure.objective) == (threw || mode == Mode::NanObjective));

    CHECK_THAT(progress.str(), Catch::Contains("meta    4/5 FAILED (" + std::string(metaFailureName(kind)) + "): ") &&
                                   Catch::Contains("meta-optimisation diverged at meta-iteration 3") &&
                                   Catch::Contains("best objective 0.5 at meta-iteration 1"));
    std::ifstream in(csv);
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    REQUIRE(lines.size() == 5);  // header, three iterations, the failure
    CHECK(lines[0] == "iteration,objective,gradient_norm,elapsed_s,valid loss");
    if (threw) CHECK_THAT(lines[4], Catch::StartsWith("3,nan,nan,") && Catch::EndsWith(","));
    if (mode == Mode::NanObjective) CHECK_THAT(lines[4], Catch::StartsWith("3,nan,1.414") && Catch::EndsWith(",1.2"));
    if (mode == Mode::InfGradient) CHECK_THAT(lines[4], Catch::StartsWith("3,0.59999999999999998,inf,"));
    in.close();
    std::remove(csv.c_str());
  }
}

TEST_CASE("a meta run that fails at once, or whose meta step is not finite, says so and keeps what it has", "[meta]") {
  std::vector<Eigen::VectorXd> seen;
  Scripted evaluate;
  evaluate.failAt = 0;
  evaluate.seen = &seen;
  MetaParameters p = twoCoordinates();
  const Eigen::VectorXd initial = p.raw();
  MetaSgd sgd;
  Recorder rec;
  std::ostringstream progress;
  ProgressBar bar(progress);
  MetaResult r = metaOptimize(p, evaluate, sgd, 5, rec, bar);
  CHECK(r.diverged);
  CHECK(r.iterations == 0);
  CHECK(r.failedIteration == 0);
  CHECK(r.bestRaw.size() == 0);
  CHECK(r.bestIteration == -1);
  CHECK(r.bestObjective == std::numeric_limits<double>::infinity());
  CHECK(p.raw() == initial);
  CHECK_THAT(r.stopReason, Catch::Contains("no evaluation succeeded, the parameters are the initial values"));
  CHECK(rec.failures == 1);
  CHECK(rec.iterations == 0);
  CHECK_THAT(progress.str(), Catch::Contains("meta    1/5 FAILED") && Catch::Contains("no evaluation succeeded"));

  // An optimizer whose step is not finite: reported as meta-iteration 1, the iterate it could not make.
  struct Broken {
    void update(Eigen::VectorXd& x, const Eigen::VectorXd&) { x(1) = std::nan(""); }
  } broken;
  seen.clear();
  evaluate.failAt = 99;
  rec = Recorder();
  r = metaOptimize(p, evaluate, broken, 5, rec);
  CHECK(r.diverged);
  CHECK(r.failure == MetaFailure::NonFiniteStep);
  CHECK(r.failedIteration == 1);
  CHECK(r.iterations == 1);
  CHECK(p.raw() == initial);
  CHECK_THAT(r.stopReason, Catch::Contains("meta step after meta-iteration 0 sets block 'x' entry 1 of x to nan") &&
                               Catch::Contains("lower the meta step size"));
  CHECK(rec.failure.iteration == 1);
  CHECK(rec.failedRaw == initial);
}

TEST_CASE("other exceptions propagate from metaOptimize and leave the parameters at the best iterate", "[meta]") {
  using Mode = Scripted::Mode;
  for (const Mode mode : {Mode::ThrowInvalid, Mode::ThrowExactness, Mode::ThrowUser}) {
    MetaParameters p = twoCoordinates();
    std::vector<Eigen::VectorXd> seen;
    Scripted evaluate;
    evaluate.mode = mode;
    evaluate.seen = &seen;
    MetaSgd sgd;
    sgd.stepSize = 0.1;
    Recorder rec;
    if (mode == Mode::ThrowInvalid) CHECK_THROWS_AS(metaOptimize(p, evaluate, sgd, 5, rec), InvalidArgument);
    if (mode == Mode::ThrowExactness) CHECK_THROWS_AS(metaOptimize(p, evaluate, sgd, 5, rec), ExactnessViolation);
    if (mode == Mode::ThrowUser) CHECK_THROWS_WITH(metaOptimize(p, evaluate, sgd, 5, rec), "the user's own error");
    REQUIRE(seen.size() == 4);
    CHECK(p.raw() == seen[1]);
    CHECK(rec.failures == 0);
    CHECK(rec.ends == 0);
  }
}

TEST_CASE("after a normal run the parameters hold the last iterate evaluated", "[meta]") {
  std::vector<Eigen::VectorXd> seen;
  Scripted evaluate;
  evaluate.failAt = 99;
  evaluate.seen = &seen;
  MetaParameters p = twoCoordinates();
  MetaSgd sgd;
  sgd.stepSize = 0.1;
  MetaResult r = metaOptimize(p, evaluate, sgd, 5);
  CHECK_FALSE(r.diverged);
  CHECK(r.failure == MetaFailure::None);
  CHECK(r.failedIteration == -1);
  REQUIRE(seen.size() == 5);
  CHECK(p.raw() == seen[4]);  // no step after the last evaluation
  CHECK(r.bestRaw == seen[1]);
  CHECK(r.bestIteration == 1);

  // Stopped by a callback: likewise the last iterate evaluated.
  seen.clear();
  p = twoCoordinates();
  EarlyStopping patience(1e9, 2);
  r = metaOptimize(p, evaluate, sgd, 5, patience);
  CHECK(r.stoppedEarly);
  CHECK_FALSE(r.diverged);
  REQUIRE(seen.size() == 4);  // best at 1, no improvement at 2 and 3
  CHECK(p.raw() == seen[3]);
}
