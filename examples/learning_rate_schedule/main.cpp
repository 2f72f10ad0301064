// Learning-rate and momentum schedules by exact hypergradients (Maclaurin, Duvenaud & Adams 2015,
// §3.1): an MLP 784-50-50-50-10 trained for T = 100 steps of SGD with momentum; its learning rate
// α and momentum γ per iteration, per layer and per weights/biases (2 x 100 x 8 = 1,600
// hyperparameters) are meta-learned with Adam on the loss at the end of training. Every
// meta-iteration trains forward, then runs training backwards bit for bit to get the gradient of
// the final loss with respect to all 1,600 schedule entries.
//
//   learning_rate_schedule [--quick] [--data DIR|mnist] [--out DIR] [--meta-iterations N]
//                          [--alpha0 A] [--meta-step S] [--seed N]
//
// Writes schedules.svg, bias_schedules.svg, momentum_schedules.svg, learning_curves.svg,
// meta_learning_curve.svg and log.csv to the output directory. See README.md beside this file.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include <hypergrad.hpp>
#include <hypergrad/data/idx.hpp>
#include <hypergrad/io/svg.hpp>

using Eigen::MatrixXd;
using Eigen::VectorXd;
using hypergrad::Index;
namespace fs = std::filesystem;

namespace {

struct Options {
  bool quick = false;
  std::string data;                       // "" = hypergrad::defaultDataDirectory()
  std::string out = "learning_rate_schedule_out";
  Index metaIterations = -1;              // -1: 50 (full) or 3 (--quick)
  double alpha0 = 0.1;                    // initial learning rate, every iteration and group (low, stable)
  double gamma0 = 0.9;                    // initial momentum
  double metaStep = 0.04;                 // Adam step on log α and logit γ (the paper's 0.04)
  std::uint64_t seed = 1;
};

void usage(const char* argv0) {
  std::printf(
      "usage: %s [--quick] [--data DIR] [--out DIR] [--meta-iterations N] [--alpha0 A] [--meta-step S] [--seed N]\n"
      "  --quick              tiny run (MLP 784-20-10, T = 10, 3 meta-iterations, 500 examples) for a smoke test;\n"
      "                       uses synthetic data when DIR holds no MNIST-format files\n"
      "  --data DIR|NAME      MNIST-format directory (default %s), or a name:\n"
      "                       \"mnist\" (../shared/data/mnist or $HYPERGRAD_MNIST_DIR) or \"fashion-mnist\";\n"
      "                       with only t10k files the 10,000 t10k examples are split 6,000 / 2,000 / 2,000\n"
      "                       into train / valid / test\n"
      "  --out DIR            output directory (default ./learning_rate_schedule_out)\n"
      "  --meta-iterations N  meta-iterations (default 50, --quick 3)\n"
      "  --alpha0 A           initial learning rate (default 0.1), --meta-step S Adam step (default 0.04)\n"
      "  --seed N             base seed of batches and initial weights (default 1)\n",
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
    else if (a == "--meta-iterations") o.metaIterations = std::stol(next());
    else if (a == "--alpha0") o.alpha0 = std::stod(next());
    else if (a == "--meta-step") o.metaStep = std::stod(next());
    else if (a == "--seed") o.seed = std::stoull(next());
    else if (a == "--help" || a == "-h") usage(argv[0]), std::exit(0);
    else throw hypergrad::InvalidArgument("unknown option '" + a + "' (see --help)");
  }
  if (o.metaIterations == -1) o.metaIterations = o.quick ? 3 : 50;
  if (o.metaIterations < 1) throw hypergrad::InvalidArgument("--meta-iterations must be >= 1");
  return o;
}

// ---- data -------------------------------------------------------------------------------------

struct Splits {
  hypergrad::Dataset train, valid, test;
  std::string description;
};

// Ten noisy, overlapping prototypes in [0, 1]^784: a stand-in of MNIST's shape for --quick.
hypergrad::Dataset synthetic(Index n, std::uint64_t seed) {
  hypergrad::CounterRng protoRng(12345, 0);
  VectorXd base(784);
  for (Index j = 0; j < 784; ++j) base(j) = protoRng.uniform() < 0.3 ? 1.0 : 0.0;
  MatrixXd prototypes = base.transpose().replicate(10, 1);
  for (Index i = 0; i < prototypes.size(); ++i)
    if (protoRng.uniform() < 0.02) prototypes(i) = 1.0 - prototypes(i);
  hypergrad::CounterRng rng(seed, 1);
  hypergrad::Dataset d;
  d.numClasses = 10;
  d.inputs.resize(n, 784);
  d.labels.resize(n);
  for (Index k = 0; k < n; ++k) {
    d.labels(k) = static_cast<int>(rng.below(10));
    for (Index j = 0; j < 784; ++j)
      d.inputs(k, j) = std::clamp(prototypes(d.labels(k), j) + 0.5 * rng.normal(), 0.0, 1.0);
  }
  return d;
}

Splits loadSplits(const Options& o) {
  const std::string dir = o.data.empty() ? hypergrad::defaultDataDirectory() : hypergrad::resolveDataDirectory(o.data);
  const Index nTrain = o.quick ? 500 : 10000, nValid = o.quick ? 500 : 10000, nTest = o.quick ? 500 : 10000;
  Splits s;
  if (hypergrad::hasMnistSplit(dir, "train")) {
    const hypergrad::Dataset all = hypergrad::loadMnist(dir, "train", nTrain + nValid);
    s.train = hypergrad::subset(all, 0, nTrain);
    s.valid = hypergrad::subset(all, nTrain, nValid);
    s.test = hypergrad::loadMnist(dir, "t10k", nTest);
    s.description = dir + ": train[0, " + std::to_string(nTrain) + ") for training, train[" + std::to_string(nTrain) +
                    ", " + std::to_string(nTrain + nValid) + ") for validation, t10k[0, " + std::to_string(nTest) +
                    ") for test";
  } else if (hypergrad::hasMnistSplit(dir, "t10k")) {
    const hypergrad::Dataset all = hypergrad::loadMnist(dir, "t10k");
    const Index a = o.quick ? 500 : 6000, b = o.quick ? 500 : 2000, c = o.quick ? 500 : all.numExamples() - a - b;
    if (a + b + c > all.numExamples())
      throw hypergrad::DataError("t10k in " + dir + " holds too few examples for the train/valid/test split");
    s.train = hypergrad::subset(all, 0, a);
    s.valid = hypergrad::subset(all, a, b);
    s.test = hypergrad::subset(all, a + b, c);
    s.description = dir + " (t10k only): t10k split " + std::to_string(a) + " / " + std::to_string(b) + " / " +
                    std::to_string(c) + " into train / validation / test";
  } else if (o.quick) {
    s.train = synthetic(nTrain, 1);
    s.valid = synthetic(nValid, 2);
    s.test = synthetic(nTest, 3);
    s.description = "SYNTHETIC data of MNIST's shape (no MNIST-format files in " + dir + ")";
  } else {
    hypergrad::loadMnist(dir, "train");  // throws the DataError that says what is missing and what to do
  }
  return s;
}

// ---- plotting helpers -------------------------------------------------------------------------

std::vector<double> column(const MatrixXd& m, Index k) {
  std::vector<double> v(static_cast<std::size_t>(m.rows()));
  for (Index t = 0; t < m.rows(); ++t) v[static_cast<std::size_t>(t)] = m(t, k);
  return v;
}

/// Full-data losses along one training run, every `every` steps (t = 0 is the initial weights).
struct Curve {
  std::vector<double> steps, trainLoss, validLoss;
};

struct CurveRecorder {
  const hypergrad::MlpLoss* train;
  const hypergrad::MlpLoss* valid;
  Index every;
  Curve* curve;
  template <class Opt>
  void onForwardStep(const Opt& opt, Index t, const VectorXd&) {
    if ((t + 1) % every != 0 && t + 1 != opt.numIterations()) return;
    const VectorXd w = opt.weights();
    curve->steps.push_back(double(t + 1));
    curve->trainLoss.push_back(train->value(w));
    curve->validLoss.push_back(valid->value(w));
  }
};

}  // namespace

int main(int argc, char** argv) try {
  const auto clockStart = std::chrono::steady_clock::now();
  const Options o = parse(argc, argv);
  const Splits data = loadSplits(o);
  fs::create_directories(o.out);

  // The paper's network and training run (--quick: a tiny one).
  const std::vector<Index> sizes = o.quick ? std::vector<Index>{784, 20, 10} : std::vector<Index>{784, 50, 50, 50, 10};
  const Index T = o.quick ? 10 : 100, batchSize = o.quick ? 50 : 200;
  const hypergrad::MlpArchitecture arch(sizes, hypergrad::Activation::Tanh);
  const hypergrad::ParameterLayout layout = arch.layout();
  const Index G = layout.numGroups(), N = arch.numParameters();
  VectorXd fanIn(G);
  for (Index k = 0; k < G; ++k) fanIn(k) = double(arch.groupFanIn()[static_cast<std::size_t>(k)]);
  const VectorXd logScales = hypergrad::ScaledInit::logScalesFromFanIn(fanIn);  // s_k = 1/√fan-in

  const hypergrad::MlpLoss trainLoss(arch, data.train), validLoss(arch, data.valid), testLoss(arch, data.test);
  std::printf("data: %s\n", data.description.c_str());
  std::printf("MLP %s (tanh), %ld weights in %ld groups; T = %ld steps of batch %ld; %ld + %ld schedule entries\n",
              [&] {
                std::string s;
                for (Index n : sizes) s += (s.empty() ? "" : "-") + std::to_string(n);
                return s;
              }().c_str(),
              long(N), long(G), long(T), long(batchSize), long(T * G), long(T * G));

  // Hyperparameters: α through log, γ through logit, so that Adam's steps keep them valid.
  hypergrad::MetaParameters params;
  params.add("learning rates", MatrixXd::Constant(T, G, o.alpha0), hypergrad::Transform::Log);
  params.add("momenta", MatrixXd::Constant(T, G, o.gamma0), hypergrad::Transform::Logit);
  const MatrixXd alphaStart = params.value(0), gammaStart = params.value(1);

  // Batches and initial-weight noise are keyed on the meta-iteration: a fresh seed each time.
  auto seedFor = [&](Index metaIteration) { return o.seed * 1000003u + std::uint64_t(metaIteration); };
  auto makeRun = [&](const hypergrad::MetaParameters& p, Index metaIteration) {
    return std::make_tuple(
        hypergrad::MlpObjective(arch, trainLoss.sharedData(),  // shares the data, no copy
                                hypergrad::SeededBatches(seedFor(metaIteration), data.train.numExamples(), batchSize)),
        hypergrad::ScaledInit(layout, logScales, seedFor(metaIteration)),
        hypergrad::SgdMomentum<>(layout, hypergrad::Schedule(p.value(0)), hypergrad::Schedule(p.value(1))));
  };

  // One meta-iteration: train forward, reverse exactly, hypergradients of the final training loss.
  auto evaluate = [&](const hypergrad::MetaParameters& p, Index metaIteration) {
    auto [objective, init, sgd] = makeRun(p, metaIteration);
    const hypergrad::Hypergradients hg =
        hypergrad::computeHypergradients(sgd, objective, trainLoss, init.weights(), VectorXd::Zero(N));
    hypergrad::MetaEvaluation e;
    e.objective = hg.metaObjective;  // the paper optimises the final training loss
    e.gradients = {hg.learningRates, hg.momenta};
    e.metrics["valid loss"] = validLoss.value(hg.finalWeights);
    e.metrics["valid error"] = validLoss.errorRate(hg.finalWeights);
    e.metrics["test loss"] = testLoss.value(hg.finalWeights);
    e.metrics["test error"] = testLoss.errorRate(hg.finalWeights);
    return e;
  };

  // A plain forward run recording the full-data losses, with a seed never used for meta-training.
  auto learningCurve = [&](const hypergrad::MetaParameters& p) {
    auto [objective, init, sgd] = makeRun(p, o.metaIterations);
    Curve c;
    const VectorXd w1 = init.weights();
    c.steps.push_back(0);
    c.trainLoss.push_back(trainLoss.value(w1));
    c.validLoss.push_back(validLoss.value(w1));
    sgd.start(w1);
    hypergrad::train(sgd, objective, CurveRecorder{&trainLoss, &validLoss, o.quick ? 1 : 5, &c});
    return std::make_pair(c, sgd.weights());
  };

  const auto [curveBefore, wBefore] = learningCurve(params);

  hypergrad::MetaAdam adam;
  adam.stepSize = o.metaStep;
  hypergrad::ProgressBar progress;
  hypergrad::CsvLogger csv((fs::path(o.out) / "log.csv").string());
  hypergrad::EarlyStopping stop(100.0);  // the chaotic regime: stop when |hypergradient| explodes
  const hypergrad::MetaResult result = hypergrad::metaOptimize(params, evaluate, adam, o.metaIterations, progress, csv, stop);
  // A diverged run returns (params at its best iterate); when even the first evaluation failed
  // there is nothing to show.
  if (result.iterations == 0) {
    std::fprintf(stderr, "error: %s\n", result.stopReason.c_str());
    return 1;
  }

  const auto [curveAfter, wAfter] = learningCurve(params);

  // ---- pictures ----
  const std::vector<double> iters = [&] {
    std::vector<double> v(static_cast<std::size_t>(T));
    for (Index t = 0; t < T; ++t) v[static_cast<std::size_t>(t)] = double(t + 1);
    return v;
  }();
  const MatrixXd alpha = params.value(0), gamma = params.value(1);
  const Index L = arch.numLayers();
  {
    hypergrad::SvgPlot plot("Learned learning-rate schedule: weights", "training iteration t", "learning rate alpha_t");
    for (Index l = 0; l < L; ++l) plot.addLine("layer " + std::to_string(l + 1) + " weights", iters, column(alpha, 2 * l));
    plot.addHorizontalLine("initial (all layers)", o.alpha0, hypergrad::LineStyle{8, true, 1.4});
    plot.save((fs::path(o.out) / "schedules.svg").string());
  }
  {
    hypergrad::SvgPlot plot("Learned learning-rate schedule: biases", "training iteration t", "learning rate alpha_t");
    for (Index l = 0; l < L; ++l) plot.addLine("layer " + std::to_string(l + 1) + " biases", iters, column(alpha, 2 * l + 1));
    plot.addHorizontalLine("initial (all layers)", o.alpha0, hypergrad::LineStyle{8, true, 1.4});
    plot.save((fs::path(o.out) / "bias_schedules.svg").string());
  }
  {
    hypergrad::SvgPlot plot("Learned momentum schedule", "training iteration t", "momentum gamma_t");
    for (Index l = 0; l < L; ++l) {
      plot.addLine("layer " + std::to_string(l + 1) + " weights", iters, column(gamma, 2 * l), hypergrad::LineStyle{int(l)});
      plot.addLine("layer " + std::to_string(l + 1) + " biases", iters, column(gamma, 2 * l + 1),
                   hypergrad::LineStyle{int(l), true});
    }
    plot.addHorizontalLine("initial", o.gamma0, hypergrad::LineStyle{8, true, 1.0});
    plot.save((fs::path(o.out) / "momentum_schedules.svg").string());
  }
  {
    hypergrad::SvgPlot plot("Learning curves before and after meta-optimisation", "training iteration t",
                            "mean cross-entropy (full data)");
    plot.addLine("training, initial schedules", curveBefore.steps, curveBefore.trainLoss, hypergrad::LineStyle{0, true});
    plot.addLine("training, learned schedules", curveAfter.steps, curveAfter.trainLoss, hypergrad::LineStyle{0});
    plot.addLine("validation, initial schedules", curveBefore.steps, curveBefore.validLoss, hypergrad::LineStyle{1, true});
    plot.addLine("validation, learned schedules", curveAfter.steps, curveAfter.validLoss, hypergrad::LineStyle{1});
    plot.setLogY(true);
    plot.save((fs::path(o.out) / "learning_curves.svg").string());
  }
  {
    std::vector<double> valid, test;
    for (const auto& m : result.metrics) valid.push_back(m.at("valid loss")), test.push_back(m.at("test loss"));
    hypergrad::SvgPlot plot("Meta-learning curve", "meta-iteration", "loss after T training steps");
    plot.addLine("training loss (meta objective)", result.objectives);
    plot.addLine("validation loss", valid);
    plot.addLine("test loss", test);
    plot.save((fs::path(o.out) / "meta_learning_curve.svg").string());
  }

  // ---- summary ----
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - clockStart).count();
  std::printf("\nafter %ld meta-iterations (%s), on a training run with an unseen seed:\n", long(result.iterations),
              result.stoppedEarly ? ("stopped early: " + result.stopReason).c_str() : "completed");
  std::printf("                 %12s %12s %12s %12s %12s\n", "train loss", "valid loss", "valid error", "test loss",
              "test error");
  std::printf("  initial        %12.4f %12.4f %11.2f%% %12.4f %11.2f%%\n", trainLoss.value(wBefore),
              validLoss.value(wBefore), 100 * validLoss.errorRate(wBefore), testLoss.value(wBefore),
              100 * testLoss.errorRate(wBefore));
  std::printf("  learned        %12.4f %12.4f %11.2f%% %12.4f %11.2f%%\n", trainLoss.value(wAfter),
              validLoss.value(wAfter), 100 * validLoss.errorRate(wAfter), testLoss.value(wAfter),
              100 * testLoss.errorRate(wAfter));
  std::printf("learned mean alpha per layer (weights): ");
  for (Index l = 0; l < L; ++l) std::printf("%.3f ", alpha.col(2 * l).mean());
  std::printf("\nwall time %.1f s; outputs in %s\n", seconds, o.out.c_str());

  if (o.quick) {  // self-check for the ctest smoke run
    for (const char* name : {"schedules.svg", "bias_schedules.svg", "momentum_schedules.svg", "learning_curves.svg",
                             "meta_learning_curve.svg", "log.csv"}) {
      const fs::path p = fs::path(o.out) / name;
      if (!fs::exists(p) || fs::file_size(p) < 100) {
        std::fprintf(stderr, "self-check failed: %s is missing or empty\n", p.string().c_str());
        return 1;
      }
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
