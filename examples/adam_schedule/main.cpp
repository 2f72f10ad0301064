// Adam's learning-rate and β1 schedules by exact hypergradients: an MLP 784-50-50-50-10 trained
// for T = 100 steps of Adam, whose α and β1 per iteration, per layer and per weights/biases
// (2 x 100 x 8 = 1,600 hyperparameters) are meta-learned on the training loss at the end of the
// run. Every meta-iteration trains forward in exact fixed point, runs Adam backwards bit for bit
// (ReversibleAdam: m and s restored exactly through the information buffer) and gets the gradient
// of the final loss with respect to all 1,600 schedule entries. For comparison, on a training run
// with an unseen seed: the best constant-α Adam of a grid, and SGD with momentum whose α and γ
// schedules were meta-learned the same way (the learning_rate_schedule example).
//
//   adam_schedule [--quick] [--data DIR|mnist] [--out DIR] [--meta-iterations N] [--alpha0 A]
//                 [--meta-step S] [--seed N]
//
// Writes alpha_schedules.svg, beta1_schedules.svg, learning_curves.svg, meta_learning_curves.svg
// and log.csv to the output directory. See README.md beside this file.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <string>
#include <tuple>
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
  std::string data;                  // "" = hypergrad::defaultDataDirectory()
  std::string out = "adam_schedule_out";
  Index metaIterations = -1;         // -1: 50 (full) or 3 (--quick)
  double alpha0 = 3e-3;              // Adam's initial learning rate, every iteration and group
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double sgdAlpha0 = 0.1, sgdGamma0 = 0.9;  // the momentum-SGD comparison (learning_rate_schedule's start)
  double metaStep = 0.04;            // meta-Adam step on log α and logit β1 (the paper's 0.04)
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
      "  --out DIR            output directory (default ./adam_schedule_out)\n"
      "  --meta-iterations N  meta-iterations of each meta-learned method (default 50, --quick 3)\n"
      "  --alpha0 A           Adam's initial learning rate (default 0.003), --meta-step S (default 0.04)\n"
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


/// Losses of one finished run on the three splits.
struct Scores {
  double trainLoss, validLoss, validError, testLoss, testError;
};

}  // namespace

int main(int argc, char** argv) try {
  const auto clockStart = std::chrono::steady_clock::now();
  const Options o = parse(argc, argv);
  const Splits data = loadSplits(o);
  fs::create_directories(o.out);

  const std::vector<Index> sizes = o.quick ? std::vector<Index>{784, 20, 10} : std::vector<Index>{784, 50, 50, 50, 10};
  const Index T = o.quick ? 10 : 100, batchSize = o.quick ? 50 : 200;
  const hypergrad::MlpArchitecture arch(sizes, hypergrad::Activation::Tanh);
  const hypergrad::ParameterLayout layout = arch.layout();
  const Index G = layout.numGroups(), N = arch.numParameters(), L = arch.numLayers();
  VectorXd fanIn(G);
  for (Index k = 0; k < G; ++k) fanIn(k) = double(arch.groupFanIn()[static_cast<std::size_t>(k)]);
  const VectorXd logScales = hypergrad::ScaledInit::logScalesFromFanIn(fanIn);  // s_k = 1/√fan-in

  const hypergrad::MlpLoss trainLoss(arch, data.train), validLoss(arch, data.valid), testLoss(arch, data.test);
  std::printf("data: %s\n", data.description.c_str());
  std::printf("MLP with %ld weights in %ld groups; T = %ld steps of batch %ld; Adam beta2 = %g, eps = %g\n", long(N),
              long(G), long(T), long(batchSize), o.beta2, o.eps);

  // Minibatches and initial weights are keyed on the meta-iteration; index metaIterations is the
  // unseen seed every method is compared on.
  auto seedFor = [&](Index run) { return o.seed * 1000003u + std::uint64_t(run); };
  auto objectiveFor = [&](Index run) {
    return hypergrad::MlpObjective(arch, trainLoss.sharedData(),  // one copy of the data, shared
                                   hypergrad::SeededBatches(seedFor(run), data.train.numExamples(), batchSize));
  };
  auto initFor = [&](Index run) { return hypergrad::ScaledInit(layout, logScales, seedFor(run)).weights(); };
  auto adamFor = [&](const MatrixXd& alpha, const MatrixXd& beta1) {
    return hypergrad::ReversibleAdam<>(layout, hypergrad::Schedule(alpha), hypergrad::Schedule(beta1),
                                       hypergrad::Schedule::constant(T, G, o.beta2),
                                       hypergrad::Schedule::constant(T, G, o.eps));
  };
  auto sgdFor = [&](const MatrixXd& alpha, const MatrixXd& gamma) {
    return hypergrad::SgdMomentum<>(layout, hypergrad::Schedule(alpha), hypergrad::Schedule(gamma));
  };
  auto scores = [&](const VectorXd& w) {
    return Scores{trainLoss.value(w), validLoss.value(w), validLoss.errorRate(w), testLoss.value(w),
                  testLoss.errorRate(w)};
  };
  // Forward only, recording the full-data training loss every few steps.
  auto curveOf = [&](auto opt, Index run, Curve& c) {
    const VectorXd w1 = initFor(run);
    c.steps.push_back(0);
    c.trainLoss.push_back(trainLoss.value(w1));
    c.validLoss.push_back(validLoss.value(w1));
    opt.start(w1);
    hypergrad::train(opt, objectiveFor(run), CurveRecorder{&trainLoss, &validLoss, o.quick ? 1 : 5, &c});
    return opt.weights();
  };

  // ---- 1. Adam's α and β1 schedules, meta-learned ----
  hypergrad::MetaParameters adamParams;
  adamParams.add("learning rates", MatrixXd::Constant(T, G, o.alpha0), hypergrad::Transform::Log);
  adamParams.add("beta1", MatrixXd::Constant(T, G, o.beta1), hypergrad::Transform::Logit);
  auto evaluateAdam = [&](const hypergrad::MetaParameters& p, Index run) {
    auto opt = adamFor(p.value(0), p.value(1));
    const hypergrad::AdamHypergradients hg =
        hypergrad::computeHypergradients(opt, objectiveFor(run), trainLoss, initFor(run));
    hypergrad::MetaEvaluation e;
    e.objective = hg.metaObjective;  // the final training loss, as in the paper
    e.gradients = {hg.learningRates, hg.beta1};
    e.metrics["valid loss"] = validLoss.value(hg.finalWeights);
    return e;
  };
  hypergrad::MetaAdam meta;
  meta.stepSize = o.metaStep;
  std::printf("\nmeta-learning Adam's alpha and beta1 schedules (%ld + %ld entries):\n", long(T * G), long(T * G));
  hypergrad::CsvLogger csv((fs::path(o.out) / "log.csv").string());
  hypergrad::ProgressBar progress;
  hypergrad::EarlyStopping stop(100.0);
  const hypergrad::MetaResult adamResult =
      hypergrad::metaOptimize(adamParams, evaluateAdam, meta, o.metaIterations, progress, csv, stop);
  if (adamResult.iterations == 0) {
    std::fprintf(stderr, "error: %s\n", adamResult.stopReason.c_str());
    return 1;
  }

  // ---- 2. SGD with momentum, α and γ schedules meta-learned the same way ----
  hypergrad::MetaParameters sgdParams;
  sgdParams.add("learning rates", MatrixXd::Constant(T, G, o.sgdAlpha0), hypergrad::Transform::Log);
  sgdParams.add("momenta", MatrixXd::Constant(T, G, o.sgdGamma0), hypergrad::Transform::Logit);
  auto evaluateSgd = [&](const hypergrad::MetaParameters& p, Index run) {
    auto opt = sgdFor(p.value(0), p.value(1));
    const hypergrad::Hypergradients hg =
        hypergrad::computeHypergradients(opt, objectiveFor(run), trainLoss, initFor(run), VectorXd::Zero(N));
    hypergrad::MetaEvaluation e;
    e.objective = hg.metaObjective;
    e.gradients = {hg.learningRates, hg.momenta};
    return e;
  };
  std::printf("meta-learning SGD-with-momentum alpha and gamma schedules:\n");
  hypergrad::MetaAdam metaSgd;
  metaSgd.stepSize = o.metaStep;
  hypergrad::ProgressBar progressSgd;
  hypergrad::EarlyStopping stopSgd(100.0);
  const hypergrad::MetaResult sgdResult =
      hypergrad::metaOptimize(sgdParams, evaluateSgd, metaSgd, o.metaIterations, progressSgd, stopSgd);

  // ---- 3. constant-α Adam: a grid, chosen on the final training loss of the first three seeds ----
  const std::vector<double> grid = {1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2};
  double bestAlpha = grid[0], bestLoss = std::numeric_limits<double>::infinity();
  std::printf("constant-alpha Adam grid (mean final training loss over 3 seeds):");
  for (double a : grid) {
    double sum = 0.0;
    for (Index run = 0; run < 3; ++run) {
      auto opt = adamFor(MatrixXd::Constant(T, G, a), MatrixXd::Constant(T, G, o.beta1));
      opt.start(initFor(run));
      hypergrad::train(opt, objectiveFor(run));
      sum += trainLoss.value(opt.weights());
    }
    std::printf(" %g: %.4f", a, sum / 3);
    if (sum / 3 < bestLoss) bestLoss = sum / 3, bestAlpha = a;
  }
  std::printf("  -> alpha = %g\n", bestAlpha);

  // ---- comparison on the unseen seed ----
  const Index unseen = o.metaIterations;
  Curve cInitial, cGrid, cAdam, cSgd;
  const Scores sInitial = scores(curveOf(adamFor(MatrixXd::Constant(T, G, o.alpha0), MatrixXd::Constant(T, G, o.beta1)),
                                         unseen, cInitial));
  const Scores sGrid = scores(curveOf(adamFor(MatrixXd::Constant(T, G, bestAlpha), MatrixXd::Constant(T, G, o.beta1)),
                                      unseen, cGrid));
  const Scores sAdam = scores(curveOf(adamFor(adamParams.value(0), adamParams.value(1)), unseen, cAdam));
  const Scores sSgd = scores(curveOf(sgdFor(sgdParams.value(0), sgdParams.value(1)), unseen, cSgd));

  // ---- pictures ----
  std::vector<double> iters(static_cast<std::size_t>(T));
  for (Index t = 0; t < T; ++t) iters[static_cast<std::size_t>(t)] = double(t + 1);
  const MatrixXd alpha = adamParams.value(0), beta1 = adamParams.value(1);
  {
    hypergrad::SvgPlot plot("Adam: learned learning-rate schedule", "training iteration t", "alpha_t");
    for (Index l = 0; l < L; ++l) {
      plot.addLine("layer " + std::to_string(l + 1) + " weights", iters, column(alpha, 2 * l), hypergrad::LineStyle{int(l)});
      plot.addLine("layer " + std::to_string(l + 1) + " biases", iters, column(alpha, 2 * l + 1),
                   hypergrad::LineStyle{int(l), true});
    }
    plot.addHorizontalLine("initial", o.alpha0, hypergrad::LineStyle{8, true, 1.0});
    plot.addHorizontalLine("best constant (grid)", bestAlpha, hypergrad::LineStyle{9, true, 1.4});
    plot.save((fs::path(o.out) / "alpha_schedules.svg").string());
  }
  {
    hypergrad::SvgPlot plot("Adam: learned beta1 schedule", "training iteration t", "beta1_t");
    for (Index l = 0; l < L; ++l) {
      plot.addLine("layer " + std::to_string(l + 1) + " weights", iters, column(beta1, 2 * l), hypergrad::LineStyle{int(l)});
      plot.addLine("layer " + std::to_string(l + 1) + " biases", iters, column(beta1, 2 * l + 1),
                   hypergrad::LineStyle{int(l), true});
    }
    plot.addHorizontalLine("initial", o.beta1, hypergrad::LineStyle{8, true, 1.0});
    plot.save((fs::path(o.out) / "beta1_schedules.svg").string());
  }
  {
    hypergrad::SvgPlot plot("Training on an unseen seed", "training iteration t", "training loss (full data)");
    plot.addLine("Adam, initial alpha " + std::to_string(o.alpha0).substr(0, 5), cInitial.steps, cInitial.trainLoss,
                 hypergrad::LineStyle{0, true});
    plot.addLine("Adam, best constant alpha", cGrid.steps, cGrid.trainLoss, hypergrad::LineStyle{1, true});
    plot.addLine("Adam, learned alpha and beta1", cAdam.steps, cAdam.trainLoss, hypergrad::LineStyle{0});
    plot.addLine("SGD momentum, learned alpha and gamma", cSgd.steps, cSgd.trainLoss, hypergrad::LineStyle{2});
    plot.setLogY(true);
    plot.save((fs::path(o.out) / "learning_curves.svg").string());
  }
  {
    hypergrad::SvgPlot plot("Meta-learning curves", "meta-iteration", "final training loss (meta objective)");
    plot.addLine("Adam schedules", adamResult.objectives);
    plot.addLine("SGD-momentum schedules", sgdResult.objectives);
    plot.addHorizontalLine("constant-alpha Adam, best of grid", bestLoss, hypergrad::LineStyle{9, true, 1.4});
    plot.save((fs::path(o.out) / "meta_learning_curves.svg").string());
  }

  // ---- summary ----
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - clockStart).count();
  std::printf("\non a training run with an unseen seed (after %ld / %ld meta-iterations):\n", long(adamResult.iterations),
              long(sgdResult.iterations));
  std::printf("  %-40s %10s %10s %11s %10s %11s\n", "method", "train loss", "valid loss", "valid error", "test loss",
              "test error");
  auto row = [](const std::string& name, const Scores& s) {
    std::printf("  %-40s %10.4f %10.4f %10.2f%% %10.4f %10.2f%%\n", name.c_str(), s.trainLoss, s.validLoss,
                100 * s.validError, s.testLoss, 100 * s.testError);
  };
  row("Adam, initial constant schedules", sInitial);
  row("Adam, best constant alpha of the grid", sGrid);
  row("Adam, learned alpha and beta1 schedules", sAdam);
  row("SGD momentum, learned alpha and gamma", sSgd);
  std::printf("learned Adam mean alpha per layer (weights): ");
  for (Index l = 0; l < L; ++l) std::printf("%.4f ", alpha.col(2 * l).mean());
  std::printf("\nlearned Adam mean beta1 per layer (weights): ");
  for (Index l = 0; l < L; ++l) std::printf("%.3f ", beta1.col(2 * l).mean());
  std::printf("\nwall time %.1f s; outputs in %s\n", seconds, o.out.c_str());

  if (o.quick) {  // self-check for the ctest smoke run
    for (const char* name : {"alpha_schedules.svg", "beta1_schedules.svg", "learning_curves.svg",
                             "meta_learning_curves.svg", "log.csv"}) {
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
