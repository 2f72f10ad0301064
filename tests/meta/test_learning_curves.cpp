// Learning-curve extrapolation (meta/learning_curves.hpp): each family recovers curves drawn from
// it with known parameters, the ensemble's predictive interval covers the truth about as often as
// it claims, and the stopping rule, run over a synthetic random search, saves steps without
// losing the best run.

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include <hypergrad/callbacks.hpp>
#include <hypergrad/hypergradients/train.hpp>
#include <hypergrad/meta/learning_curves.hpp>
#include <hypergrad/optimizers/sgd_momentum.hpp>
#include <hypergrad/random.hpp>

#include "../support/logistic_fixture.hpp"

using namespace hypergrad;

namespace {

const CurveFamily& family(const std::string& name) {
  for (const CurveFamily& f : curveFamilies())
    if (f.name == name) return f;
  FAIL("no family " << name);
  return curveFamilies().front();
}

struct Curve {
  std::vector<double> x, y;
};

// y = family(x; p) + noise, at steps first, first + every, ..., last (z = y: an improving curve
// to maximise).
Curve sample(const CurveFamily& fam, const std::vector<double>& p, double first, double last, double every, double noise,
             std::uint64_t seed) {
  Curve c;
  CounterRng rng(seed);
  for (double x = first; x <= last; x += every) {
    c.x.push_back(x);
    c.y.push_back(fam.value(x, p.data()) + noise * rng.normal());
  }
  return c;
}

const CurveFit& fitOf(const CurvePrediction& p, const std::string& name) {
  for (const CurveFit& f : p.fits)
    if (f.family == name) return f;
  FAIL("no fit " << name);
  return p.fits.front();
}

}  // namespace

TEST_CASE("each curve family recovers a noise-free curve with known parameters and extrapolates it", "[learning_curves]") {
  struct Known {
    std::string name;
    std::vector<double> p;
  };
  // Parameters of curves that look like accuracies over 500 steps (z rising from ~0.3 to ~0.9).
  const std::vector<Known> known = {
      {"pow3", {0.9, 0.8, 0.5}},
      {"pow4", {0.9, 0.05, 1.0, 0.7}},
      {"logPower", {0.9, 3.0, -0.8}},
      {"exp3", {0.9, 0.01, -0.4}},
      {"exp4", {0.9, 0.08, -0.4, 0.6}},
      {"mmf", {0.9, 0.2, 0.02, 1.2}},
      {"janoschek", {0.9, 0.2, 0.05, 0.7}},
      {"weibull", {0.9, 0.2, 0.01, 0.8}},
      {"vaporPressure", {-0.2, -1.5, 0.04}},
      {"logLogLinear", {0.2, 1.4}},
      {"ilog2", {1.1, 1.3}},
  };
  REQUIRE(known.size() == curveFamilies().size());
  for (const Known& k : known) {
    INFO("family " << k.name);
    const CurveFamily& fam = family(k.name);
    const Curve c = sample(fam, k.p, 5, 200, 5, 0.0, 1);
    const double truth = fam.value(1000, k.p.data());
    const CurvePrediction pred =
        extrapolateCurve(c.x, c.y, 1000, CurveExtrapolationOptions().withGoal(CurveGoal::Maximize).withFamilies({k.name}));
    REQUIRE(pred.fits.size() == 1);
    const CurveFit& fit = pred.fits[0];
    INFO("rejected: " << fit.rejected);
    REQUIRE(fit.rejected.empty());
    CHECK(fit.weight == 1.0);
    // The fitted curve passes through the observations and extrapolates to the truth.
    CHECK(fit.noiseSd < 1e-4);
    CHECK(std::abs(pred.mean - truth) < 2e-3);
  }
}

TEST_CASE("families with identifiable parameters recover them from a noisy curve", "[learning_curves]") {
  // An accuracy (Maximize) is fitted as it is, so the parameters are the curve's own.
  struct Known {
    std::string name;
    std::vector<double> p;
  };
  const std::vector<Known> known = {{"pow3", {0.9, 0.8, 0.5}},
                                    {"exp3", {0.9, 0.01, -0.4}},
                                    {"ilog2", {1.1, 1.3}},
                                    {"weibull", {0.9, 0.2, 0.01, 0.8}},
                                    {"vaporPressure", {-0.2, -1.5, 0.04}}};
  for (const Known& k : known) {
    INFO("family " << k.name);
    const CurveFamily& fam = family(k.name);
    const Curve c = sample(fam, k.p, 1, 400, 2, 1e-3, 7);
    const CurvePrediction pred =
        extrapolateCurve(c.x, c.y, 2000, CurveExtrapolationOptions().withGoal(CurveGoal::Maximize).withFamilies({k.name}));
    const CurveFit& fit = pred.fits[0];
    REQUIRE(fit.rejected.empty());
    for (std::size_t j = 0; j < k.p.size(); ++j) {
      INFO("parameter " << j << ": fitted " << fit.parameters[j] << ", true " << k.p[j]);
      CHECK(std::abs(fit.parameters[j] - k.p[j]) < 0.05 * std::abs(k.p[j]));
    }
    CHECK(std::abs(fit.noiseSd - 1e-3) < 2e-4);  // σ̂ estimates the noise
    const double truth = fam.value(2000, k.p.data());
    CHECK(std::abs(pred.mean - truth) < 3 * pred.sd);
  }
}

TEST_CASE("a single family's predictive interval covers the true final value about as often as it claims", "[learning_curves]") {
  // 60 noisy draws of one pow3 curve, observed for the first 20% of the run: the truth must lie in
  // mean ± 1.96 sd about 95% of the time (at least 85% here; an interval without the parameters'
  // uncertainty covers far less).
  const CurveFamily& fam = family("pow3");
  const std::vector<double> p = {0.9, 0.8, 0.5};
  const double truth = fam.value(500, p.data());
  int covered = 0, draws = 60;
  double meanSd = 0;
  for (int s = 0; s < draws; ++s) {
    const Curve c = sample(fam, p, 1, 100, 1, 0.01, 100 + static_cast<std::uint64_t>(s));
    const CurvePrediction pred =
        extrapolateCurve(c.x, c.y, 500, CurveExtrapolationOptions().withGoal(CurveGoal::Maximize).withFamilies({"pow3"}));
    covered += std::abs(pred.mean - truth) <= 1.96 * pred.sd ? 1 : 0;
    meanSd += pred.sd / draws;
  }
  INFO("covered " << covered << " of " << draws << ", mean sd " << meanSd);
  CHECK(covered >= 51);
  CHECK(covered < draws + 1);
  CHECK(meanSd > 0.01);  // the noise of one observation plus the parameters'
  CHECK(meanSd < 0.05);
}

TEST_CASE("the ensemble weights the families, rejects implausible fits with a reason, and predicts losses", "[learning_curves]") {
  // A loss curve 0.3 + 1.2 x^(−0.5) with noise, observed for 100 of 1,000 steps.
  const CurveFamily& fam = family("pow3");
  const std::vector<double> p = {-0.3, 1.2, 0.5};  // z = −loss: c − a x^(−α) with c = −0.3
  Curve c = sample(fam, p, 1, 100, 1, 0.005, 11);
  for (double& v : c.y) v = -v;
  const double truth = 0.3 + 1.2 / std::sqrt(1000.0);
  const CurvePrediction pred = extrapolateCurve(c.x, c.y, 1000, CurveExtrapolationOptions().withBounds(0, 10));
  REQUIRE(pred.fits.size() == curveFamilies().size());
  double total = 0;
  int accepted = 0;
  for (const CurveFit& f : pred.fits) {
    INFO(f.family << ": weight " << f.weight << ", rejected '" << f.rejected << "'");
    total += f.weight;
    CHECK(f.weight >= 0);
    if (!f.rejected.empty()) CHECK(f.weight == 0);
    accepted += f.rejected.empty() ? 1 : 0;
  }
  CHECK(total == Approx(1.0).epsilon(1e-12));
  CHECK(accepted >= 3);
  CHECK(fitOf(pred, "pow3").weight > 0.01);
  INFO("predicted " << pred.mean << " ± " << pred.sd << ", truth " << truth << ", best fit " << pred.bestFit().family);
  CHECK(std::abs(pred.mean - truth) < 3 * pred.sd);
  CHECK(pred.sd < 0.05);
  // P(final < b) rises with b, from ~0 well below the prediction to ~1 well above it.
  CHECK(pred.probabilityBetterThan(pred.mean - 10 * pred.sd) < 0.01);
  CHECK(pred.probabilityBetterThan(pred.mean + 10 * pred.sd) > 0.99);
  CHECK(pred.probabilityBetterThan(truth - 0.01) < pred.probabilityBetterThan(truth + 0.01));
}

TEST_CASE("bounds on the final value reject the families that cross them", "[learning_curves]") {
  // An accuracy curve heading for 0.97: with an upper bound of 0.95, every fit predicting more
  // is rejected with the bound in its reason.
  const CurveFamily& fam = family("exp3");
  const std::vector<double> p = {0.97, 0.02, -0.2};
  const Curve c = sample(fam, p, 1, 150, 1, 0.002, 3);
  const CurvePrediction free = extrapolateCurve(c.x, c.y, 600, CurveExtrapolationOptions().withGoal(CurveGoal::Maximize));
  CHECK(free.mean > 0.95);
  const auto bounded = CurveExtrapolationOptions().withGoal(CurveGoal::Maximize).withBounds(0, 0.95);
  try {
    const CurvePrediction pred = extrapolateCurve(c.x, c.y, 600, bounded);
    for (const CurveFit& f : pred.fits)
      if (f.weight > 0) CHECK(f.mean <= 0.95);
    CHECK(fitOf(pred, "exp3").rejected.find("outside") != std::string::npos);
  } catch (const InvalidArgument& e) {
    CHECK_THAT(e.what(), Catch::Contains("outside [0, 0.94999999999999996]"));  // every family crosses it
  }
}

TEST_CASE("extrapolateCurve refuses malformed curves with an actionable message", "[learning_curves]") {
  const std::vector<double> x = {1, 2, 3, 4, 5}, y = {1.0, 0.8, 0.7, 0.65, 0.62};
  CHECK_THROWS_WITH(extrapolateCurve(x, {1.0, 0.8}, 10), Catch::Contains("one value per step"));
  CHECK_THROWS_WITH(extrapolateCurve({1, 2}, {1.0, 0.8}, 10), Catch::Contains("at least 3"));
  CHECK_THROWS_WITH(extrapolateCurve({1, 3, 2, 4, 5}, y, 10), Catch::Contains("strictly increasing"));
  CHECK_THROWS_WITH(extrapolateCurve({0, 1, 2, 3, 4}, y, 10), Catch::Contains(">= 1"));
  CHECK_THROWS_WITH(extrapolateCurve(x, {1.0, 0.8, std::nan(""), 0.65, 0.62}, 10), Catch::Contains("finite"));
  CHECK_THROWS_WITH(extrapolateCurve(x, y, 5), Catch::Contains("not beyond the last observed step"));
  CHECK_THROWS_WITH(extrapolateCurve(x, y, 10, CurveExtrapolationOptions().withFamilies({"pow5"})), Catch::Contains("no curve family 'pow5'"));
  CHECK_THROWS_WITH(extrapolateCurve(x, y, 10, CurveExtrapolationOptions().withBounds(1, 0)), Catch::Contains("not below"));
  // A loss that only rises is no improving curve: every family is rejected, and each says why.
  const std::vector<double> rising = {0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1};
  const std::vector<double> xs = {1, 2, 3, 4, 5, 6, 7};
  CHECK_THROWS_WITH(extrapolateCurve(xs, rising, 100), Catch::Contains("no curve family fits") && Catch::Contains("pow3: "));
  CHECK_THROWS_AS(extrapolateCurve(xs, rising, 100), InvalidArgument);
}

namespace {

// A synthetic random search: run r's loss is c_r + a_r x^(−α_r) + noise over 200 steps, with
// (c, a, α) drawn at random; the final values are known exactly.
struct SyntheticRun {
  std::vector<double> p;  // pow3 parameters of z = −loss
  double final;
};

std::vector<SyntheticRun> syntheticSearch(int runs, std::uint64_t seed) {
  CounterRng rng(seed);
  std::vector<SyntheticRun> out;
  for (int r = 0; r < runs; ++r) {
    const double c = 0.2 + 0.6 * rng.uniform(), a = 0.5 + 1.5 * rng.uniform(), alpha = 0.3 + 0.7 * rng.uniform();
    SyntheticRun run{{-c, a, alpha}, 0};
    run.final = c + a * std::pow(200.0, -alpha);
    out.push_back(run);
  }
  return out;
}

}  // namespace

TEST_CASE("the stopping rule cuts a synthetic random search without losing its best run", "[learning_curves]") {
  const std::vector<SyntheticRun> runs = syntheticSearch(30, 5);
  const CurveFamily& fam = family("pow3");
  double best = std::numeric_limits<double>::infinity(), bestTruth = best;
  int stopped = 0, wronglyStopped = 0;
  long steps = 0;
  for (std::size_t r = 0; r < runs.size(); ++r) {
    bestTruth = std::min(bestTruth, runs[r].final);
    using Rule = CurveStopping<std::function<double(int, Index)>>;
    Rule::Settings settings;
    settings.finalStep = 200;
    settings.best = best;
    settings.every = 5;
    settings.minPoints = 6;
    settings.curve.withBounds(0, 10);
    Rule rule([](int, Index) { return 0.0; }, settings);
    CounterRng noise(1000 + r);
    Index taken = 0;
    double last = 0;
    for (Index step = 1; step <= 200; ++step) {
      taken = step;
      last = -fam.value(static_cast<double>(step), runs[r].p.data()) + 0.003 * noise.normal();
      if (step % 5 == 0 && rule.observe(step, last)) break;
    }
    steps += taken;
    if (taken < 200) {
      ++stopped;
      CHECK(rule.stoppedAt() == taken);
      CHECK(rule.lastProbability() < 0.05);
      wronglyStopped += runs[r].final < best ? 1 : 0;  // it would have been the new best
    } else {
      best = std::min(best, last);
    }
  }
  INFO("stopped " << stopped << " of " << runs.size() << " runs, " << steps << " of " << 200 * runs.size() << " steps, best "
                  << best << " vs " << bestTruth);
  CHECK(wronglyStopped == 0);
  CHECK(std::abs(best - bestTruth) < 0.015);  // the best run ran to its end (its noise aside)
  CHECK(stopped >= 10);
  CHECK(steps < 0.7 * 200 * static_cast<double>(runs.size()));
}

TEST_CASE("CurveStopping stops train() when the run cannot beat the best, and only records without a best", "[learning_curves]") {
  const fixture::Logistic f(200, 8, 20, 61);
  const auto loss = [&f](const SgdMomentum<>& opt, Index) {
    double s = 0;
    for (Index t = 0; t < 10; ++t) s += f.value(opt.weights(), t) / 10;
    return s;
  };
  using Rule = CurveStopping<decltype(loss)>;
  Rule::Settings settings;
  settings.finalStep = 60;
  settings.every = 2;
  settings.curve.withBounds(0, 100);
  const auto makeOpt = [] {
    SgdMomentum<> opt(ParameterLayout::single(8), Schedule::constant(60, 1, 0.05), Schedule::constant(60, 1, 0.5));
    opt.start(Eigen::VectorXd::Zero(8));
    return opt;
  };
  // No best yet: the run goes to its end and the curve is recorded.
  SgdMomentum<> first = makeOpt();
  Rule recorder(loss, settings);
  const TrainSummary full = train(first, f, recorder);
  CHECK_FALSE(full.stoppedEarly);
  CHECK(recorder.steps().size() == 30);
  CHECK(recorder.values().back() < recorder.values().front());
  // A best far below what this run can reach: stopped at the first prediction.
  settings.best = 0.5 * recorder.values().back();
  SgdMomentum<> second = makeOpt();
  Rule rule(loss, settings);
  const TrainSummary cut = train(second, f, rule);
  CHECK(cut.stoppedEarly);
  CHECK(cut.stepsTaken == 2 * settings.minPoints);
  CHECK_THAT(cut.stopReason, Catch::Contains("learning curve: P(final value better than") && Catch::Contains("at step 10"));
  // A best the run beats easily: never stopped.
  settings.best = 2 * recorder.values().front();
  SgdMomentum<> third = makeOpt();
  CHECK_FALSE(train(third, f, Rule(loss, settings)).stoppedEarly);
  CHECK_THROWS_AS(Rule(loss, Rule::Settings{}), InvalidArgument);
}

TEST_CASE("CurveStopping stops a diverged run and a worsening one, and keeps a worsening run that already beats the best",
          "[learning_curves]") {
  using Rule = CurveStopping<std::function<double(int, Index)>>;
  Rule::Settings settings;
  settings.finalStep = 100;
  settings.best = 0.5;
  settings.minPoints = 4;
  const auto metric = [](int, Index) { return 0.0; };
  {
    Rule rule(metric, settings);
    CHECK_FALSE(rule.observe(1, 2.3));
    CHECK(rule.observe(2, std::numeric_limits<double>::infinity()));
    CHECK(rule.stoppedAt() == 2);
    CHECK_THAT(rule.stopReason(), Catch::Contains("the metric is inf at step 2 (the run diverged)"));
  }
  {
    // A loss rising from 2.3: no improving family fits, and it never got near 0.5.
    Rule rule(metric, settings);
    bool stopped = false;
    Index step = 0;
    while (!stopped && step < 50) {
      ++step;
      stopped = rule.observe(step, 2.3 + 0.1 * static_cast<double>(step));
    }
    CHECK(stopped);
    CHECK(step == 4);
    CHECK_THAT(rule.stopReason(), Catch::Contains("no improving curve family fits the run at step 4") &&
                                      Catch::Contains("its best value so far, 2.4, does not beat 0.5"));
  }
  {
    // Rising, but from below the best: not stopped (the run is already better than any other).
    Rule rule(metric, settings);
    bool stopped = false;
    for (Index step = 1; step <= 10; ++step) stopped = stopped || rule.observe(step, 0.3 + 0.01 * static_cast<double>(step));
    CHECK_FALSE(stopped);
    CHECK(rule.lastProbability() == 1.0);
  }
}

TEST_CASE("the Student-t distribution function behind the predictions matches its closed forms", "[learning_curves]") {
  for (double t : {-30.0, -3.0, -1.0, -0.2, 0.0, 0.5, 2.0, 10.0}) {
    INFO("t = " << t);
    CHECK(detail::studentTCdf(t, 1) == Approx(0.5 + std::atan(t) / 3.14159265358979323846).margin(1e-13));  // Cauchy
    CHECK(detail::studentTCdf(t, 2) == Approx(0.5 + t / (2 * std::sqrt(2 + t * t))).margin(1e-13));
    CHECK(detail::studentTCdf(t, 1e7) == Approx(0.5 * std::erfc(-t / std::sqrt(2.0))).margin(1e-6));  // → normal
  }
  CHECK(detail::studentTCdf(2.0, 5) == Approx(0.94903026).margin(1e-8));  // tables: t_5, 0.949
}

TEST_CASE("CurveStopping refuses steps out of order and bad curve options instead of treating them as a failed fit",
          "[learning_curves]") {
  using Rule = CurveStopping<std::function<double(int, Index)>>;
  Rule::Settings settings;
  settings.finalStep = 100;
  settings.best = 0.5;
  const auto metric = [](int, Index) { return 0.0; };
  Rule rule(metric, settings);
  CHECK_FALSE(rule.observe(5, 2.0));
  CHECK_THROWS_WITH(rule.observe(5, 1.9), Catch::Contains("steps must be >= 1 and increase"));
  CHECK_THROWS_AS(rule.observe(3, 1.9), InvalidArgument);
  CHECK(rule.steps().size() == 1);  // nothing recorded by the refused calls
  CHECK_THROWS_WITH(Rule(metric, [&] { auto s = settings; s.curve.withBounds(1, 0); return s; }()), Catch::Contains("CurveStopping: lower bound"));
  CHECK_THROWS_WITH(Rule(metric, [&] { auto s = settings; s.curve.withFamilies({"pow5"}); return s; }()),
                    Catch::Contains("CurveStopping: no curve family 'pow5'"));
}
