// Random search cut short by learning-curve extrapolation (Domhan, Springenberg & Hutter 2015),
// next to gradient-based schedules at equal compute. The paper's MLP 784-50-50-50-10 is trained
// for T = 100 steps of SGD with momentum; a random search draws constant (α, γ) and keeps the
// best final training loss. With hypergrad::CurveStopping each run records its loss every 5 steps,
// extrapolates it to step T with an ensemble of eleven curve families, and stops once
// P(final loss < best so far) < 5%. Every stopped run is then trained to its end anyway, so the
// example can say exactly what the cut search lost. The learning_rate_schedule example's
// meta-learning of 1,600 schedule entries by exact hypergradients runs on the same clock.
//
//   learning_curve_search [--quick] [--data DIR|mnist] [--out DIR] [--runs N] [--threshold P]
//                         [--every K] [--min-points M] [--seed N]
//
// Writes runs.csv, curves.csv, summary.csv, settings.csv, curves.svg and anytime.svg to the output
// directory.
// See README.md beside this file.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include <hypergrad.hpp>
#include <hypergrad/data/idx.hpp>
#include <hypergrad/io/svg.hpp>

using Eigen::MatrixXd;
using Eigen::VectorXd;
using hypergrad::Index;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
const double kNaN = std::numeric_limits<double>::quiet_NaN();

struct Options {
  bool quick = false;
  std::string data;  // "" = hypergrad::defaultDataDirectory()
  std::string out = "learning_curve_search_out";
  Index runs = -1;         // -1: 100 (full) or 12 (--quick)
  double threshold = 0.05;  // Domhan et al.'s
  Index every = -1;        // record the loss every `every` steps; -1: 5 (full) or 2 (--quick, T = 20)
  Index minPoints = 4;     // records before the first prediction (step 20)
  std::uint64_t seed = 1;
};

void usage(const char* argv0) {
  std::printf(
      "usage: %s [--quick] [--data DIR|NAME] [--out DIR] [--runs N] [--threshold P] [--every K] [--min-points M] [--seed N]\n"
      "  --quick           tiny run (MLP 784-20-10, T = 20, 12 runs, 500 examples) for a smoke test;\n"
      "                    uses synthetic data when no MNIST-format files are found\n"
      "  --data DIR|NAME   MNIST-format directory (default %s), or \"mnist\" / \"fashion-mnist\"\n"
      "  --out DIR         output directory (default ./learning_curve_search_out)\n"
      "  --runs N          random-search runs (default 100)\n"
      "  --threshold P     stop a run when P(final loss < best so far) < P (default 0.05)\n"
      "  --every K         record the curve every K steps (default 5, --quick 2); --min-points M before predicting (default 4)\n"
      "  --seed N          base seed of the search, batches and initial weights (default 1)\n",
      argv0, hypergrad::defaultDataDirectory().c_str());
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw hypergrad::InvalidArgument("option " + a + " needs a value (see --help)");
      return argv[++i];
    };
    if (a == "--quick") o.quick = true;
    else if (a == "--data") o.data = next();
    else if (a == "--out") o.out = next();
    else if (a == "--runs") o.runs = std::stol(next());
    else if (a == "--threshold") o.threshold = std::stod(next());
    else if (a == "--every") o.every = std::stol(next());
    else if (a == "--min-points") o.minPoints = std::stol(next());
    else if (a == "--seed") o.seed = std::stoull(next());
    else if (a == "--help" || a == "-h") usage(argv[0]), std::exit(0);
    else throw hypergrad::InvalidArgument("unknown option '" + a + "' (see --help)");
  }
  if (o.runs == -1) o.runs = o.quick ? 12 : 100;
  if (o.every == -1) o.every = o.quick ? 2 : 5;
  if (o.runs < 2) throw hypergrad::InvalidArgument("--runs must be >= 2");
  return o;
}

// ---- data (as in learning_rate_schedule) -------------------------------------------------------

struct Splits {
  hypergrad::Dataset train, valid, test;
  std::string description;
};

// Stand-in data of MNIST's shape for --quick without data: noisy copies of 10 random prototypes.
hypergrad::Dataset synthetic(Index n, std::uint64_t seed) {
  hypergrad::CounterRng rng(seed), protoRng(12345);
  MatrixXd prototypes(10, 784);
  for (Index c = 0; c < 10; ++c)
    for (Index j = 0; j < 784; ++j) prototypes(c, j) = protoRng.uniform();
  hypergrad::Dataset d;
  d.inputs.resize(n, 784);
  d.labels.resize(n);
  for (Index k = 0; k < n; ++k) {
    d.labels(k) = static_cast<int>(rng.below(10));
    for (Index j = 0; j < 784; ++j) d.inputs(k, j) = std::clamp(prototypes(d.labels(k), j) + 0.5 * rng.normal(), 0.0, 1.0);
  }
  return d;
}

Splits loadSplits(const Options& o) {
  const std::string dir = o.data.empty() ? hypergrad::defaultDataDirectory() : hypergrad::resolveDataDirectory(o.data);
  const Index n = o.quick ? 500 : 10000;
  Splits s;
  if (hypergrad::hasMnistSplit(dir, "train")) {
    const hypergrad::Dataset all = hypergrad::loadMnist(dir, "train", 2 * n);
    s.train = hypergrad::subset(all, 0, n);
    s.valid = hypergrad::subset(all, n, n);
    s.test = hypergrad::loadMnist(dir, "t10k", n);
    s.description = dir + ": train[0, " + std::to_string(n) + ") training, train[" + std::to_string(n) + ", " +
                    std::to_string(2 * n) + ") validation, t10k[0, " + std::to_string(n) + ") test";
  } else if (hypergrad::hasMnistSplit(dir, "t10k")) {
    const hypergrad::Dataset all = hypergrad::loadMnist(dir, "t10k");
    const Index a = o.quick ? 500 : 6000, b = o.quick ? 500 : 2000, c = o.quick ? 500 : all.numExamples() - a - b;
    if (a + b + c > all.numExamples())
      throw hypergrad::DataError("t10k in " + dir + " holds too few examples for the train/valid/test split");
    s.train = hypergrad::subset(all, 0, a);
    s.valid = hypergrad::subset(all, a, b);
    s.test = hypergrad::subset(all, a + b, c);
    s.description = dir + " (t10k only): split " + std::to_string(a) + " / " + std::to_string(b) + " / " + std::to_string(c) +
                    " into training / validation / test";
  } else if (o.quick) {
    s.train = synthetic(n, 1);
    s.valid = synthetic(n, 2);
    s.test = synthetic(n, 3);
    s.description = "SYNTHETIC data of MNIST's shape (no MNIST-format files in " + dir + ")";
  } else {
    hypergrad::loadMnist(dir, "train");  // throws the DataError that says what is missing and what to do
  }
  return s;
}

double seconds(Clock::time_point since) { return std::chrono::duration<double>(Clock::now() - since).count(); }

/// One random-search run: its hyperparameters, its curve, where the rule stopped it, its true end.
/// Times a callback (the rule: its curve records and fits).
template <class R>
struct Timed {
  R* rule;
  double* seconds;
  template <class Opt>
  bool onForwardStep(const Opt& opt, Index t, const VectorXd& g) {
    const auto start = Clock::now();
    const bool stop = rule->onForwardStep(opt, t, g);
    *seconds += std::chrono::duration<double>(Clock::now() - start).count();
    return stop;
  }
  std::string stopReason() const { return rule->stopReason(); }
};

struct Run {
  double alpha = 0, gamma = 0;
  std::vector<double> steps, losses;  // the whole curve (the part after a stop: the baseline's only)
  Index stoppedAt = 0;                // 0: ran to the end (or diverged)
  double probability = 1, predicted = kNaN, predictedSd = kNaN;
  double final = kInf;                // loss at step T (infinite: diverged)
  double secondsCut = 0, secondsRest = 0;  // time until the stop, and to finish the run after it
  double secondsFitting = 0;               // of secondsCut: the rule's curve fits
  Index stepsCut = 0, stepsRest = 0;
};

}  // namespace

int main(int argc, char** argv) try {
  const auto clockStart = Clock::now();
  const Options o = parse(argc, argv);
  const Splits data = loadSplits(o);
  fs::create_directories(o.out);

  const std::vector<Index> sizes = o.quick ? std::vector<Index>{784, 20, 10} : std::vector<Index>{784, 50, 50, 50, 10};
  const Index T = o.quick ? 20 : 100, batchSize = o.quick ? 50 : 200;
  const hypergrad::MlpArchitecture arch(sizes, hypergrad::Activation::Tanh);
  const hypergrad::ParameterLayout layout = arch.layout();
  const Index G = layout.numGroups(), N = arch.numParameters();
  VectorXd fanIn(G);
  for (Index k = 0; k < G; ++k) fanIn(k) = double(arch.groupFanIn()[static_cast<std::size_t>(k)]);
  const VectorXd logScales = hypergrad::ScaledInit::logScalesFromFanIn(fanIn);
  const hypergrad::MlpLoss trainLoss(arch, data.train), validLoss(arch, data.valid), testLoss(arch, data.test);
  // The curves and the search's criterion: the training loss on a fixed fifth of the training set
  // (cheap enough to record every few steps; the meta-objective of learning_rate_schedule is the
  // loss on all of it).
  const Index curveExamples = std::min<Index>(2000, data.train.numExamples());
  const hypergrad::MlpLoss curveLoss(arch, hypergrad::subset(data.train, 0, curveExamples));
  std::printf("data: %s\n", data.description.c_str());
  std::printf("MLP with %ld weights, T = %ld steps of batch %ld; curve: training loss on %ld examples every %ld steps\n",
              long(N), long(T), long(batchSize), long(curveExamples), long(o.every));

  auto seedFor = [&](std::uint64_t run) { return o.seed * 1000003u + run; };
  auto objectiveFor = [&](std::uint64_t run) {
    return hypergrad::MlpObjective(arch, trainLoss.sharedData(),
                                   hypergrad::SeededBatches(seedFor(run), data.train.numExamples(), batchSize));
  };
  double recordingSeconds = 0;  // time spent evaluating the curve (both searches record it)
  const auto lossOf = [&curveLoss, &recordingSeconds](const hypergrad::SgdMomentum<>& opt, Index) {
    const auto start = Clock::now();
    const double loss = curveLoss.value(opt.weights());
    recordingSeconds += seconds(start);
    return loss;
  };
  using Rule = hypergrad::CurveStopping<decltype(lossOf)>;
  // The rule's settings for a run of T steps, given the best final loss so far.
  const auto settingsFor = [&](double best, double threshold, Index minPoints) {
    Rule::Settings s;
    s.finalStep = T;
    s.best = best;
    s.every = o.every;
    s.minPoints = minPoints;
    s.threshold = threshold;
    s.curve.withBounds(0, kInf);
    return s;
  };

  // ---- the random search, cut by the curves (and finished anyway, for the baseline) ----
  hypergrad::CounterRng draw(o.seed, 77);
  std::vector<Run> runs(static_cast<std::size_t>(o.runs));
  double bestCut = kInf;  // what the cut search knows: the best final loss of the runs it finished
  for (Index r = 0; r < o.runs; ++r) {
    Run& run = runs[static_cast<std::size_t>(r)];
    run.alpha = std::exp(std::log(0.01) + (std::log(10.0) - std::log(0.01)) * draw.uniform());  // log-uniform [0.01, 10]
    run.gamma = 1 - std::exp(std::log(0.01) + (std::log(0.5) - std::log(0.01)) * draw.uniform());  // 1 − γ in [0.01, 0.5]
    const std::uint64_t id = static_cast<std::uint64_t>(r);
    const hypergrad::MlpObjective objective = objectiveFor(id);
    hypergrad::SgdMomentum<> sgd(layout, hypergrad::Schedule::constant(T, G, run.alpha), hypergrad::Schedule::constant(T, G, run.gamma));
    sgd.start(hypergrad::ScaledInit(layout, logScales, seedFor(id)).weights());
    Rule rule(lossOf, settingsFor(bestCut, o.threshold, o.minPoints));
    double ruleSeconds = 0;
    const double recordedBefore = recordingSeconds;
    auto start = Clock::now();
    bool diverged = false;
    try {
      hypergrad::train(sgd, objective, Timed<Rule>{&rule, &ruleSeconds});
    } catch (const hypergrad::Error&) {  // e.g. a fixed-point overflow: the run diverged
      diverged = true;
    }
    run.secondsCut = seconds(start);
    run.secondsFitting = ruleSeconds - (recordingSeconds - recordedBefore);
    run.stepsCut = sgd.iteration();
    run.steps = rule.steps();
    run.losses = rule.values();
    if (rule.stoppedAt() > 0) {
      run.stoppedAt = rule.stoppedAt();
      run.probability = rule.lastProbability();
      run.predicted = rule.lastPrediction().mean;
      run.predictedSd = rule.lastPrediction().sd;
    }
    const bool divergedInCurve = !run.losses.empty() && !std::isfinite(run.losses.back());
    if (run.stoppedAt > 0 && !divergedInCurve && sgd.iteration() < T) {
      // The baseline: finish the run without the rule (a real cut search would not).
      Rule recorder(lossOf, settingsFor(kInf, o.threshold, o.minPoints));
      start = Clock::now();
      try {
        hypergrad::train(sgd, objective, recorder);
      } catch (const hypergrad::Error&) {
        diverged = true;
      }
      run.secondsRest = seconds(start);
      run.stepsRest = sgd.iteration() - run.stepsCut;
      run.steps.insert(run.steps.end(), recorder.steps().begin(), recorder.steps().end());
      run.losses.insert(run.losses.end(), recorder.values().begin(), recorder.values().end());
    }
    const bool complete = !diverged && !run.steps.empty() && run.steps.back() == double(T) && std::isfinite(run.losses.back());
    run.final = complete ? run.losses.back() : kInf;
    if (run.stoppedAt == 0 && complete) bestCut = std::min(bestCut, run.final);
    std::printf("run %3ld: alpha %7.4f gamma %.3f  final %8.4f  %s\n", long(r), run.alpha, run.gamma, run.final,
                run.stoppedAt > 0 ? ("stopped at step " + std::to_string(run.stoppedAt) + ", P = " +
                                     std::to_string(run.probability)).c_str()
                                  : (diverged ? "diverged" : "ran to the end"));
  }

  // ---- the two searches' accounts ----
  double secondsFull = 0, secondsCut = 0, secondsFitting = 0, bestFull = kInf;
  Index stepsFull = 0, stepsCut = 0, stopped = 0, wrong = 0, bestFullRun = -1, bestCutRun = -1;
  std::vector<double> anytimeFullX, anytimeFullY, anytimeCutX, anytimeCutY;
  {
    double runningBestFull = kInf, runningBestCut = kInf;
    for (Index r = 0; r < o.runs; ++r) {
      const Run& run = runs[static_cast<std::size_t>(r)];
      secondsFull += run.secondsCut - run.secondsFitting + run.secondsRest;  // the uncut search records, never fits
      secondsCut += run.secondsCut;
      secondsFitting += run.secondsFitting;
      stepsFull += run.stepsCut + run.stepsRest;
      stepsCut += run.stepsCut;
      if (run.stoppedAt > 0) {
        ++stopped;
        if (run.final < runningBestCut) ++wrong;  // it would have become the cut search's best
      }
      if (run.final < runningBestFull) runningBestFull = run.final, bestFullRun = r;
      if (run.stoppedAt == 0 && run.final < runningBestCut) runningBestCut = run.final, bestCutRun = r;
      anytimeFullX.push_back(secondsFull), anytimeFullY.push_back(runningBestFull);
      anytimeCutX.push_back(secondsCut), anytimeCutY.push_back(runningBestCut);
    }
    bestFull = runningBestFull;
  }
  if (bestFullRun < 0 || bestCutRun < 0) throw hypergrad::Error("every run diverged: narrow the search range");

  // ---- other settings of the rule, replayed on the recorded curves ----
  // The rule sees only the curve so far and the best final value so far, and every run was
  // finished, so other settings are judged without training again; the live settings (first)
  // must reproduce the live search exactly.
  struct Replay {
    double threshold;
    Index minPoints;
    Index steps = 0, stopped = 0, wrong = 0;
    double best = kInf;
  };
  std::vector<Replay> replays = {{o.threshold, o.minPoints}};
  for (const auto& [threshold, minPoints] : std::vector<std::pair<double, Index>>{{0.01, 4}, {0.05, 6}, {0.01, 6}, {0.05, 8}, {0.01, 8}})
    if (threshold != o.threshold || minPoints != o.minPoints) replays.push_back({threshold, minPoints});
  for (Replay& rep : replays) {
    double best = kInf;
    for (const Run& run : runs) {
      Rule rule(lossOf, settingsFor(best, rep.threshold, rep.minPoints));
      Index taken = run.stepsCut + run.stepsRest;
      for (std::size_t i = 0; i < run.steps.size(); ++i)
        if (rule.observe(static_cast<Index>(run.steps[i]), run.losses[i])) {
          taken = static_cast<Index>(run.steps[i]);
          break;
        }
      rep.steps += taken;
      if (rule.stoppedAt() > 0) {
        ++rep.stopped;
        rep.wrong += run.final < best ? 1 : 0;
      } else {
        best = std::min(best, run.final);
      }
    }
    rep.best = best;
  }
  const bool replayAgrees = replays[0].steps == stepsCut && replays[0].stopped == stopped && replays[0].wrong == wrong &&
                            replays[0].best == runs[static_cast<std::size_t>(bestCutRun)].final;

  // ---- gradient-based schedules (learning_rate_schedule's setup) on the uncut search's clock ----
  hypergrad::MetaParameters params;
  params.add("learning rates", MatrixXd::Constant(T, G, 0.1), hypergrad::Transform::Log);
  params.add("momenta", MatrixXd::Constant(T, G, 0.9), hypergrad::Transform::Logit);
  auto evaluate = [&](const hypergrad::MetaParameters& p, Index metaIteration) {
    const std::uint64_t id = 1000000 + static_cast<std::uint64_t>(metaIteration);  // seeds the search never used
    const hypergrad::MlpObjective objective = objectiveFor(id);
    hypergrad::SgdMomentum<> sgd(layout, hypergrad::Schedule(p.value(0)), hypergrad::Schedule(p.value(1)));
    const hypergrad::Hypergradients hg = hypergrad::computeHypergradients(
        sgd, objective, trainLoss, hypergrad::ScaledInit(layout, logScales, seedFor(id)).weights(), VectorXd::Zero(N));
    hypergrad::MetaEvaluation e;
    e.objective = hg.metaObjective;
    e.gradients = {hg.learningRates, hg.momenta};
    e.metrics["curve loss"] = curveLoss.value(hg.finalWeights);  // the search's criterion, for the picture
    return e;
  };
  struct Budget {
    double cutSeconds, fullSeconds;
    std::vector<double>* x;
    std::vector<double>* y;
    MatrixXd* alphaAtCut;
    MatrixXd* gammaAtCut;
    double best = kInf;
    bool onMetaIteration(const hypergrad::MetaIterationInfo& info) {
      best = std::min(best, info.metrics->at("curve loss"));
      x->push_back(info.elapsedSeconds);
      y->push_back(best);
      if (info.elapsedSeconds <= cutSeconds) *alphaAtCut = info.parameters->value(0), *gammaAtCut = info.parameters->value(1);
      return info.elapsedSeconds >= fullSeconds;
    }
    std::string stopReason() const { return "the uncut random search's time is spent"; }
  };
  std::vector<double> gradX, gradY;
  MatrixXd alphaAtCut = params.value(0), gammaAtCut = params.value(1);
  hypergrad::MetaAdam adam;
  adam.stepSize = 0.04;
  const auto metaStart = Clock::now();
  const hypergrad::MetaResult meta =
      hypergrad::metaOptimize(params, evaluate, adam, 100000, Budget{secondsCut, secondsFull, &gradX, &gradY, &alphaAtCut, &gammaAtCut});
  const double secondsGradient = seconds(metaStart);
  Index itersAtCut = 0;
  for (double s : gradX) itersAtCut += s <= secondsCut ? 1 : 0;

  // ---- each method's choice, retrained on a seed nobody saw ----
  struct Outcome {
    double train, valid, validError, test, testError;
  };
  auto assess = [&](const MatrixXd& alpha, const MatrixXd& gamma) {
    const std::uint64_t id = 5000000;
    const hypergrad::MlpObjective objective = objectiveFor(id);
    hypergrad::SgdMomentum<> sgd(layout, hypergrad::Schedule(alpha), hypergrad::Schedule(gamma));
    sgd.start(hypergrad::ScaledInit(layout, logScales, seedFor(id)).weights());
    hypergrad::train(sgd, objective);
    const VectorXd w = sgd.weights();
    return Outcome{trainLoss.value(w), validLoss.value(w), validLoss.errorRate(w), testLoss.value(w), testLoss.errorRate(w)};
  };
  const Run& full = runs[static_cast<std::size_t>(bestFullRun)];
  const Run& cut = runs[static_cast<std::size_t>(bestCutRun)];
  const Outcome fullOutcome = assess(MatrixXd::Constant(T, G, full.alpha), MatrixXd::Constant(T, G, full.gamma));
  const Outcome cutOutcome = assess(MatrixXd::Constant(T, G, cut.alpha), MatrixXd::Constant(T, G, cut.gamma));
  const Outcome gradCutOutcome = assess(alphaAtCut, gammaAtCut);
  const Outcome gradFullOutcome = assess(params.value(0), params.value(1));
  const double gradBestAtCut = [&] {
    double b = kInf;
    for (std::size_t i = 0; i < gradX.size(); ++i)
      if (gradX[i] <= secondsCut) b = gradY[i];
    return b;
  }();

  // ---- outputs ----
  {
    std::ofstream csv(fs::path(o.out) / "runs.csv");
    csv << "run,alpha,gamma,final_loss,stopped_at,probability,predicted,predicted_sd,steps_until_stop,steps_after,"
           "seconds_until_stop,seconds_after\n";
    for (Index r = 0; r < o.runs; ++r) {
      const Run& run = runs[static_cast<std::size_t>(r)];
      csv << r << ',' << run.alpha << ',' << run.gamma << ',' << run.final << ',' << run.stoppedAt << ',' << run.probability << ','
          << run.predicted << ',' << run.predictedSd << ',' << run.stepsCut << ',' << run.stepsRest << ',' << run.secondsCut
          << ',' << run.secondsRest << '\n';
    }
  }
  {
    std::ofstream csv(fs::path(o.out) / "summary.csv");
    csv << "method,seconds,training_steps,best_curve_loss,unseen_seed_train_loss,valid_loss,valid_error,test_loss,test_error\n";
    const auto row = [&csv](const char* name, double s, Index steps, double best, const Outcome& out) {
      csv << name << ',' << s << ',' << steps << ',' << best << ',' << out.train << ',' << out.valid << ',' << out.validError
          << ',' << out.test << ',' << out.testError << '\n';
    };
    row("random search", secondsFull, stepsFull, bestFull, fullOutcome);
    row("random search cut by learning curves", secondsCut, stepsCut, cut.final, cutOutcome);
    row("gradient-based schedules, cut search's time", secondsCut, itersAtCut * T, gradBestAtCut, gradCutOutcome);
    row("gradient-based schedules, full search's time", secondsGradient, Index(gradX.size()) * T, gradY.empty() ? kNaN : gradY.back(),
        gradFullOutcome);
  }
  {
    std::ofstream csv(fs::path(o.out) / "curves.csv");
    csv << "run,step,loss,seen_by_the_cut_search\n";
    for (Index r = 0; r < o.runs; ++r) {
      const Run& run = runs[static_cast<std::size_t>(r)];
      for (std::size_t i = 0; i < run.steps.size(); ++i)
        csv << r << ',' << run.steps[i] << ',' << run.losses[i] << ','
            << (run.stoppedAt == 0 || run.steps[i] <= double(run.stoppedAt) ? 1 : 0) << '\n';
    }
  }
  {
    std::ofstream csv(fs::path(o.out) / "settings.csv");
    csv << "threshold,min_points,first_prediction_at_step,training_steps,steps_saved,stopped,wrongly_stopped,best_final_loss,"
           "loss_lost\n";
    for (const Replay& rep : replays)
      csv << rep.threshold << ',' << rep.minPoints << ',' << rep.minPoints * o.every << ',' << rep.steps << ','
          << 1 - double(rep.steps) / double(stepsFull) << ',' << rep.stopped << ',' << rep.wrong << ',' << rep.best << ','
          << rep.best - bestFull << '\n';
  }
  {
    // Curves: runs that finished, runs until their stop, and (dashed) what the stopped runs would
    // have done — computed here only to judge the rule. NaN separates the runs within one line.
    std::vector<double> xa, ya, xs, ys, xr, yr;
    for (const Run& run : runs) {
      for (std::size_t i = 0; i < run.steps.size(); ++i) {
        const bool before = run.stoppedAt == 0 || run.steps[i] <= double(run.stoppedAt);
        if (run.stoppedAt == 0) xa.push_back(run.steps[i]), ya.push_back(run.losses[i]);
        else if (before) xs.push_back(run.steps[i]), ys.push_back(run.losses[i]);
        if (run.stoppedAt > 0 && run.steps[i] >= double(run.stoppedAt)) xr.push_back(run.steps[i]), yr.push_back(run.losses[i]);
      }
      for (auto* v : {&xa, &ya, &xs, &ys, &xr, &yr}) v->push_back(kNaN);
    }
    hypergrad::SvgPlot plot("Learning curves and the rule's stops", "training step",
                            "training loss (2,000 examples)");
    plot.addLine("ran to the end", xa, ya, hypergrad::LineStyle{0, false, 1.0});
    plot.addLine("stopped: until the stop", xs, ys, hypergrad::LineStyle{3, false, 1.0});
    plot.addLine("stopped: the rest (not run)", xr, yr, hypergrad::LineStyle{3, true, 0.8});
    plot.addHorizontalLine("best final loss", bestFull, hypergrad::LineStyle{8, true, 1.2});
    plot.setLogY(true);
    plot.save((fs::path(o.out) / "curves.svg").string());
  }
  {
    hypergrad::SvgPlot plot("Best final loss found, against compute", "seconds (one core)",
                            "best loss after T steps (2,000 training examples)");
    plot.addLine("random search", anytimeFullX, anytimeFullY);
    plot.addLine("random search cut by learning curves", anytimeCutX, anytimeCutY);
    plot.addLine("gradient-based schedules", gradX, gradY);
    plot.save((fs::path(o.out) / "anytime.svg").string());
  }

  // ---- summary ----
  std::printf("\nrandom search: %ld runs; the rule stopped %ld of them, %ld wrongly (a stopped run would have been the best so far)\n",
              long(o.runs), long(stopped), long(wrong));
  std::printf("compute: %ld -> %ld training steps (%.0f%% saved), %.1f -> %.1f s (%.0f%% saved, recording the curves included)\n",
              long(stepsFull), long(stepsCut), 100.0 * (1 - double(stepsCut) / double(stepsFull)), secondsFull, secondsCut,
              100.0 * (1 - secondsCut / secondsFull));
  std::printf("the rule's curve fits took %.1f s of the cut search's %.1f s\n", secondsFitting, secondsCut);
  std::printf("best final loss (2,000 training examples): %.4f (alpha %.4f, gamma %.3f) uncut, %.4f (alpha %.4f, gamma %.3f) cut\n",
              bestFull, full.alpha, full.gamma, cut.final, cut.alpha, cut.gamma);
  std::printf("\nother settings of the rule, replayed on the recorded curves (the live settings first: %s):\n",
              replayAgrees ? "the replay reproduces the live search" : "THE REPLAY DIFFERS FROM THE LIVE SEARCH");
  std::printf("  threshold  min points (step)  steps saved  stopped  wrongly  best final loss  lost\n");
  for (const Replay& rep : replays)
    std::printf("  %9.2f  %10ld (%3ld)  %10.0f%%  %7ld  %7ld  %15.4f  %+.4f\n", rep.threshold, long(rep.minPoints),
                long(rep.minPoints * o.every), 100 * (1 - double(rep.steps) / double(stepsFull)), long(rep.stopped), long(rep.wrong),
                rep.best, rep.best - bestFull);
  std::printf("\ngradient-based schedules: %ld meta-iterations in the cut search's %.1f s (best %.4f), %ld in %.1f s (best %.4f)\n",
              long(itersAtCut), secondsCut, gradBestAtCut, long(gradX.size()), secondsGradient, gradY.empty() ? kNaN : gradY.back());
  std::printf("\neach choice retrained on an unseen seed:        train loss  valid loss  valid error  test loss  test error\n");
  const auto line = [](const char* name, const Outcome& out) {
    std::printf("  %-44s %10.4f  %10.4f  %10.2f%%  %9.4f  %9.2f%%\n", name, out.train, out.valid, 100 * out.validError, out.test,
                100 * out.testError);
  };
  line("random search", fullOutcome);
  line("random search cut by learning curves", cutOutcome);
  line("gradient-based, the cut search's time", gradCutOutcome);
  line("gradient-based, the uncut search's time", gradFullOutcome);
  std::printf("wall time %.1f s; outputs in %s\n", seconds(clockStart), o.out.c_str());
  (void)meta;

  if (o.quick) {
    for (const char* name : {"runs.csv", "curves.csv", "summary.csv", "settings.csv", "curves.svg", "anytime.svg"}) {
      const fs::path p = fs::path(o.out) / name;
      if (!fs::exists(p) || fs::file_size(p) < 100) {
        std::fprintf(stderr, "self-check failed: %s is missing or empty\n", p.string().c_str());
        return 1;
      }
    }
    if (stepsCut > stepsFull || !replayAgrees) {
      std::fprintf(stderr, "self-check failed: the cut search took more steps than the full one, or its replay differs\n");
      return 1;
    }
    std::printf("quick self-check: all outputs written\n");
  }
  return 0;
} catch (const hypergrad::DataError& e) {
  std::fprintf(stderr, "error: %s\n(run with --quick to try the example on synthetic data)\n", e.what());
  return 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
