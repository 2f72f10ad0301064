// per_weight_l2 — one L2 penalty per weight of a logistic regression, 7,840 hyperparameters,
// learned by gradient descent on the validation loss (Maclaurin, Duvenaud & Adams 2015).
//
// The training loss of a 784 → 10 softmax regression on a small training set is
//
//     L(w, η, t) = cross-entropy on minibatch t + ½ Σ_i λ_i w_i²,   λ_i = exp(η_i),
//
// with one η_i per weight (pixel i → class j). SGD with momentum runs T steps from w = 0; the
// meta objective is the cross-entropy of the trained weights on a 10,000-example validation set.
// hypergrad runs training backwards, exactly, to get ∂(validation loss)/∂η for all 7,840 η at the
// cost of about two training runs, and Adam updates η. The biases stay (practically)
// unpenalised: they get η = −30 (λ ≈ 1e-13) in a block that the meta-optimiser keeps fixed.
//
// It compares, on the same training run: no L2; the best single L2 strength from a grid of
// log λ values (chosen on validation); the learned per-weight penalties (started from that best
// global value). Outputs in --out: penalties.png (learned log λ per class, one 28×28 tile per
// class), weights.png (learned weights per class), meta_learning_curve.svg, global_l2_grid.svg,
// log.csv (one row per meta-iteration) and summary.csv (the comparison table).
//
// Usage: per_weight_l2 [--data DIR|mnist] [--out DIR] [--quick] [--train N] [--steps T] [--batch B]
//                      [--meta-iterations M] [--meta-step S] [--alpha A] [--gamma G]

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <hypergrad.hpp>
#include <hypergrad/data/deflate.hpp>
#include <hypergrad/data/idx.hpp>
#include <hypergrad/io/image.hpp>
#include <hypergrad/io/svg.hpp>

namespace {

using Eigen::MatrixXd;
using Eigen::VectorXd;
using hypergrad::Dataset;
using hypergrad::Index;

constexpr Index kSide = 28, kPixels = kSide * kSide, kClasses = 10;
// The PNGs: each image pixel a 2 x 2 block, zlib-compressed.
const hypergrad::PngOptions kPictures = hypergrad::PngOptions().withScale(2).withDeflate(hypergrad::zlibDeflate);
constexpr double kUnpenalised = -30.0;  // log λ of "no penalty": λ ≈ 9e-14, negligible next to any gradient

struct Options {
  std::string data = hypergrad::defaultDataDirectory();
  std::string out = "per_weight_l2_out";
  bool quick = false;
  Index train = 1000;   // training examples: few, so that regularisation matters
  Index valid = 10000;  // validation examples (the meta objective)
  Index test = 10000;   // test examples (reported, never optimised)
  Index steps = 200;    // T
  Index batch = 200;    // minibatch size
  Index metaIterations = 100;
  double metaStep = 0.1;                                                         // Adam step on η
  double alpha = 0.5;                                                            // learning rate
  double gamma = 0.9;                                                            // momentum
  std::uint64_t seed = 1;                                                        // minibatch sequence
  std::vector<double> grid{-8, -7.25, -6.5, -5.75, -5, -4.25, -3.5, -2.75, -2};  // global log λ values tried
};

void printUsage(std::FILE* out) {
  std::fputs(
      "usage: per_weight_l2 [options]\n"
      "  --data DIR|NAME      MNIST-format directory (default /usr/share/datasets/fashion-mnist; one\n"
      "                       with only t10k files is split into train / validation / test), or a name:\n"
      "                       \"mnist\" (../shared/data/mnist or $HYPERGRAD_MNIST_DIR) or \"fashion-mnist\"\n"
      "  --out DIR            output directory (default ./per_weight_l2_out)\n"
      "  --quick              tiny settings (seconds); synthetic data when no data directory is found\n"
      "  --train N            training examples (default 1000)\n"
      "  --steps T            SGD steps per training run (default 200)\n"
      "  --batch B            minibatch size (default 200)\n"
      "  --meta-iterations M  Adam steps on the penalties (default 100)\n"
      "  --meta-step S        Adam step size on log lambda (default 0.1)\n"
      "  --alpha A            learning rate (default 0.5)\n"
      "  --gamma G            momentum (default 0.9)\n",
      out);
}

bool parseOptions(int argc, char** argv, Options& opt) {
  // --quick first, so that explicit options given with it still win.
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]) == "--quick") {
      opt.quick = true;
      opt.train = 200;
      opt.valid = 1000;
      opt.test = 1000;
      opt.steps = 20;
      opt.batch = 100;
      opt.metaIterations = 5;
      opt.grid = {-4, -2, 0};
    }
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      printUsage(stdout);
      std::exit(0);
    }
    if (flag == "--quick") continue;
    if (i + 1 >= argc) {
      std::fprintf(stderr, "per_weight_l2: %s needs a value (see --help)\n", flag.c_str());
      return false;
    }
    const char* value = argv[++i];
    char* end = nullptr;
    bool ok = true;
    const auto integer = [&](Index& target, Index lowest) {
      target = static_cast<Index>(std::strtol(value, &end, 10));
      ok = target >= lowest;
    };
    if (flag == "--data") {
      opt.data = value;
      continue;
    } else if (flag == "--out") {
      opt.out = value;
      continue;
    } else if (flag == "--train") {
      integer(opt.train, 10);
    } else if (flag == "--steps") {
      integer(opt.steps, 1);
    } else if (flag == "--batch") {
      integer(opt.batch, 1);
    } else if (flag == "--meta-iterations") {
      integer(opt.metaIterations, 1);
    } else if (flag == "--meta-step") {
      opt.metaStep = std::strtod(value, &end);
      ok = opt.metaStep > 0;
    } else if (flag == "--alpha") {
      opt.alpha = std::strtod(value, &end);
      ok = opt.alpha > 0;
    } else if (flag == "--gamma") {
      opt.gamma = std::strtod(value, &end);
      ok = opt.gamma > 0 && opt.gamma <= 1;
    } else {
      std::fprintf(stderr, "per_weight_l2: unknown option %s (see --help)\n", flag.c_str());
      return false;
    }
    if (!ok || end == value || *end != '\0') {
      std::fprintf(stderr, "per_weight_l2: bad value '%s' for %s\n", value, flag.c_str());
      return false;
    }
  }
  opt.batch = std::min(opt.batch, opt.train);
  return true;
}

// ---- Data ---------------------------------------------------------------------------------------

struct Splits {
  Dataset train, valid, test;
  std::string source;
};

// Stand-in data of MNIST's shape for --quick without a data directory: each class is a fixed
// pattern of three Gaussian blobs, and an example is its class pattern at a random contrast plus
// pixel noise, clipped to [0, 1].
Dataset syntheticData(Index n, std::uint64_t stream) {
  MatrixXd prototypes = MatrixXd::Zero(kClasses, kPixels);
  hypergrad::CounterRng shapes(2015, 0);
  for (Index c = 0; c < kClasses; ++c)
    for (int blob = 0; blob < 3; ++blob) {
      const double cy = 5 + 18 * shapes.uniform(), cx = 5 + 18 * shapes.uniform(), s = 2 + 3 * shapes.uniform();
      for (Index p = 0; p < kPixels; ++p) {
        const double dy = double(p / kSide) - cy, dx = double(p % kSide) - cx;
        prototypes(c, p) += std::exp(-(dx * dx + dy * dy) / (2 * s * s));
      }
    }
  Dataset d;
  d.numClasses = kClasses;
  d.inputs.resize(n, kPixels);
  d.labels.resize(n);
  hypergrad::CounterRng rng(7, stream);
  for (Index k = 0; k < n; ++k) {
    const Index c = static_cast<Index>(rng.below(kClasses));
    const double contrast = 0.2 + 0.8 * rng.uniform();
    d.labels(k) = static_cast<int>(c);
    for (Index p = 0; p < kPixels; ++p)
      d.inputs(k, p) = std::clamp(contrast * prototypes(c, p) + 0.6 * rng.normal(), 0.0, 1.0);
  }
  return d;
}

// Training and validation sets from the "train" split, test set from "t10k". A directory with
// only t10k (e.g. the MNIST test set) is split in three. Without data, --quick uses synthetic
// data; a full run lets loadMnist throw its DataError (which says how to get the data).
Splits loadSplits(const Options& opt) {
  const std::string dir = hypergrad::resolveDataDirectory(opt.data);  // "mnist", "fashion-mnist" or a path
  Splits s;
  const bool train = hypergrad::hasMnistSplit(dir, "train"), t10k = hypergrad::hasMnistSplit(dir, "t10k");
  if (train || (!t10k && !opt.quick)) {
    const Dataset all = hypergrad::loadMnist(dir, "train", opt.train + opt.valid);
    if (all.numExamples() < opt.train + 2)
      throw hypergrad::DataError("per_weight_l2: '" + dir + "' holds too few training examples");
    s.train = hypergrad::subset(all, 0, opt.train);
    s.valid = hypergrad::subset(all, opt.train, all.numExamples() - opt.train);
    s.test = hypergrad::loadMnist(dir, "t10k", opt.test);
    s.source = dir + " (train split: training + validation; t10k: test)";
  } else if (t10k) {
    const Dataset all = hypergrad::loadMnist(dir, "t10k");
    const Index rest = all.numExamples() - opt.train;
    if (rest < 2) throw hypergrad::DataError("per_weight_l2: '" + dir + "' holds too few examples to split");
    const Index valid = std::min(opt.valid, rest / 2), test = std::min(opt.test, rest - valid);
    s.train = hypergrad::subset(all, 0, opt.train);
    s.valid = hypergrad::subset(all, opt.train, valid);
    s.test = hypergrad::subset(all, opt.train + valid, test);
    s.source = dir + " (only t10k found: split into training, validation and test)";
  } else {
    s.train = syntheticData(opt.train, 1);
    s.valid = syntheticData(opt.valid, 2);
    s.test = syntheticData(opt.test, 3);
    s.source = "SYNTHETIC data (no MNIST-format files in '" + dir + "'; --quick only)";
  }
  return s;
}

// ---- The experiment -----------------------------------------------------------------------------

struct Scores {
  double trainLoss = 0, validLoss = 0, validError = 0, testLoss = 0, testError = 0;
};

class Experiment {
 public:
  Experiment(const Options& opt, const Splits& data)
      : m_opt(opt),
        m_arch({kPixels, kClasses}),
        m_train(m_arch, data.train, hypergrad::SeededBatches(opt.seed, data.train.numExamples(), opt.batch)),
        m_trainLoss(m_arch, m_train.sharedData()),  // the same data, not a second copy
        m_valid(m_arch, data.valid),
        m_test(m_arch, data.test) {}

  Index numParameters() const { return m_arch.numParameters(); }
  const hypergrad::MlpArchitecture& architecture() const { return m_arch; }

  // η for all 7,850 parameters: the 784 × 10 weight penalties (column j = class j), then the
  // biases' (fixed, practically zero).
  static VectorXd fullLogLambda(const MatrixXd& weightEta) {
    VectorXd eta(kPixels * kClasses + kClasses);
    eta.head(kPixels * kClasses) = Eigen::Map<const VectorXd>(weightEta.data(), weightEta.size());
    eta.tail(kClasses).setConstant(kUnpenalised);
    return eta;
  }

  // One training run with penalties exp(eta); with `reverse`, also the hypergradients.
  hypergrad::Hypergradients run(const VectorXd& eta, bool reverse) const {
    const auto objective = hypergrad::L2Regularized<const hypergrad::MlpObjective&>::perWeight(m_train, eta);
    const hypergrad::ParameterLayout layout = m_arch.layout();
    hypergrad::SgdMomentum<> sgd(layout, hypergrad::Schedule::constant(m_opt.steps, layout.numGroups(), m_opt.alpha),
                                 hypergrad::Schedule::constant(m_opt.steps, layout.numGroups(), m_opt.gamma));
    const VectorXd zero = VectorXd::Zero(numParameters());
    if (reverse) return hypergrad::computeHypergradients(sgd, objective, m_valid, zero, zero);
    sgd.start(zero);
    hypergrad::train(sgd, objective);
    hypergrad::Hypergradients out;
    out.finalWeights = sgd.weights();
    out.metaObjective = m_valid.value(out.finalWeights);
    return out;
  }

  Scores score(const VectorXd& w) const {
    Scores s;
    s.trainLoss = m_trainLoss.value(w);
    s.validLoss = m_valid.value(w);
    s.validError = m_valid.errorRate(w);
    s.testLoss = m_test.value(w);
    s.testError = m_test.errorRate(w);
    return s;
  }

 private:
  const Options& m_opt;
  hypergrad::MlpArchitecture m_arch;
  hypergrad::MlpObjective m_train;
  hypergrad::MlpLoss m_trainLoss, m_valid, m_test;
};

// The meta objective for metaOptimize: validation loss after training with the penalties in p.
struct Evaluate {
  const Experiment& experiment;

  hypergrad::MetaEvaluation operator()(const hypergrad::MetaParameters& p, Index) const {
    const VectorXd eta = Experiment::fullLogLambda(p.value("log lambda, weights"));
    const hypergrad::Hypergradients hg = experiment.run(eta, /*reverse=*/true);
    const Scores s = experiment.score(hg.finalWeights);
    hypergrad::MetaEvaluation e;
    e.objective = hg.metaObjective;
    // ∂f/∂η in the blocks' shapes: weights 784 × 10 (column-major, like the parameters), biases 10 × 1.
    const VectorXd dEta = hg.hyperparameterBlock("l2.logLambda");
    e.gradients = {Eigen::Map<const MatrixXd>(dEta.data(), kPixels, kClasses), dEta.tail(kClasses)};
    e.metrics = {{"train_loss", s.trainLoss},
                 {"valid_loss", s.validLoss},
                 {"valid_error", s.validError},
                 {"test_loss", s.testLoss},
                 {"test_error", s.testError}};
    return e;
  }
};

// Tiles of 28 × 28 from the columns of a 784 × 10 matrix (pixel p = row · 28 + column).
std::vector<MatrixXd> classTiles(const MatrixXd& perClass) {
  std::vector<MatrixXd> tiles;
  for (Index j = 0; j < perClass.cols(); ++j) {
    MatrixXd tile(kSide, kSide);
    for (Index p = 0; p < kPixels; ++p) tile(p / kSide, p % kSide) = perClass(p, j);
    tiles.push_back(tile);
  }
  return tiles;
}

// The q-quantile (0 ≤ q ≤ 1) of the entries of m: display ranges that a few outliers do not set.
double quantile(const MatrixXd& m, double q) {
  std::vector<double> v(m.data(), m.data() + m.size());
  const auto k = static_cast<std::ptrdiff_t>(q * double(v.size() - 1));
  std::nth_element(v.begin(), v.begin() + k, v.end());
  return v[static_cast<std::size_t>(k)];
}

// --quick's self-check (ctest looks for its last line): every output exists and is not empty.
void checkOutputs(const std::filesystem::path& dir, const std::vector<std::string>& names) {
  for (const std::string& name : names) {
    std::error_code ec;
    const auto size = std::filesystem::file_size(dir / name, ec);
    if (ec || size == 0)
      throw std::runtime_error("quick self-check failed: " + (dir / name).string() + " is missing or empty");
  }
  std::printf("quick self-check: all outputs written\n");
}

double secondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

int run(const Options& opt) {
  const auto start = std::chrono::steady_clock::now();
  const Splits data = loadSplits(opt);
  std::filesystem::create_directories(opt.out);
  std::printf("data: %s\n", data.source.c_str());
  std::printf("logistic regression 784 -> 10 (%ld parameters), %ld training / %ld validation / %ld test examples\n",
              long(kPixels * kClasses + kClasses), long(data.train.numExamples()), long(data.valid.numExamples()),
              long(data.test.numExamples()));
  std::printf("training run: T = %ld steps, batch %ld, alpha %.3g, gamma %.3g, from w = 0\n", long(opt.steps),
              long(opt.batch), opt.alpha, opt.gamma);

  Experiment experiment(opt, data);

  // (a) no L2 and (b) the best global L2 strength on validation, same training run.
  const MatrixXd none = MatrixXd::Constant(kPixels, kClasses, kUnpenalised);
  const VectorXd wNone = experiment.run(Experiment::fullLogLambda(none), false).finalWeights;
  std::printf("\nglobal L2 grid (same training run for every value):\n  log lambda   valid loss   valid error\n");
  std::vector<double> gridLoss;
  double bestEta = opt.grid.front(), bestLoss = INFINITY;
  VectorXd wGlobal;
  for (double eta : opt.grid) {
    const VectorXd w =
        experiment.run(Experiment::fullLogLambda(MatrixXd::Constant(kPixels, kClasses, eta)), false).finalWeights;
    const Scores s = experiment.score(w);
    gridLoss.push_back(s.validLoss);
    std::printf("  %10.2f   %10.4f   %10.4f\n", eta, s.validLoss, s.validError);
    if (s.validLoss < bestLoss) {
      bestLoss = s.validLoss;
      bestEta = eta;
      wGlobal = w;
    }
  }
  std::printf("best global log lambda: %.2f (lambda = %.3g)\n\n", bestEta, std::exp(bestEta));

  // (c) per-weight penalties, started at the best global value, Adam on the validation loss.
  hypergrad::MetaParameters params;
  params.add("log lambda, weights", MatrixXd::Constant(kPixels, kClasses, bestEta), hypergrad::Transform::Identity);
  params.add("log lambda, biases", MatrixXd::Constant(kClasses, 1, kUnpenalised), hypergrad::Transform::Identity,
             /*trainable=*/false);
  hypergrad::MetaAdam adam;
  adam.stepSize = opt.metaStep;
  hypergrad::ProgressBar progress;
  hypergrad::CsvLogger log((std::filesystem::path(opt.out) / "log.csv").string());
  const hypergrad::MetaResult result =
      hypergrad::metaOptimize(params, Evaluate{experiment}, adam, opt.metaIterations, progress, log);
  // A diverged run returns (params at its best iterate); when even the first evaluation failed
  // there is nothing to show.
  if (result.iterations == 0) {
    std::fprintf(stderr, "per_weight_l2: %s\n", result.stopReason.c_str());
    return 1;
  }

  // The best iterate on validation (its weights are recomputed: one more forward run).
  params.setRaw(result.bestRaw);
  const MatrixXd learnedEta = params.value("log lambda, weights");
  const VectorXd wLearned = experiment.run(Experiment::fullLogLambda(learnedEta), false).finalWeights;

  // Comparison table.
  struct Row {
    const char* name;
    Scores s;
  };
  const Row table[] = {{"no L2", experiment.score(wNone)},
                       {"best global L2", experiment.score(wGlobal)},
                       {"learned per-weight L2", experiment.score(wLearned)}};
  std::printf("\n%-24s %10s %11s %10s %10s %10s\n", "", "train loss", "valid loss", "valid err", "test loss",
              "test err");
  std::ofstream summary(std::filesystem::path(opt.out) / "summary.csv");
  summary << "method,train_loss,valid_loss,valid_error,test_loss,test_error\n";
  for (const Row& r : table) {
    std::printf("%-24s %10.4f %11.4f %10.4f %10.4f %10.4f\n", r.name, r.s.trainLoss, r.s.validLoss, r.s.validError,
                r.s.testLoss, r.s.testError);
    summary << r.name << "," << r.s.trainLoss << "," << r.s.validLoss << "," << r.s.validError << "," << r.s.testLoss
            << "," << r.s.testError << "\n";
  }
  summary.close();
  if (!summary) throw std::runtime_error("cannot write " + (std::filesystem::path(opt.out) / "summary.csv").string());
  std::printf("learned log lambda: min %.2f, mean %.2f, max %.2f (started at %.2f)\n", learnedEta.minCoeff(),
              learnedEta.mean(), learnedEta.maxCoeff(), bestEta);

  // Pictures.
  const std::filesystem::path out(opt.out);
  // The learned log-penalties as departures from where they started, on a diverging map whose
  // ends are the 99th percentile of |departure| (a few outliers do not wash out the rest); the
  // weights likewise around 0.
  const MatrixXd departure = (learnedEta.array() - bestEta).matrix();
  const double etaMax = std::max(quantile(departure.cwiseAbs(), 0.99), 1e-12);
  hypergrad::writePngDiverging((out / "penalties.png").string(),
                               hypergrad::imageGrid(classTiles(departure), 5, 1, 0.0), etaMax, kPictures);
  const MatrixXd weights = experiment.architecture().weights(wLearned, 0);
  const double absMax = quantile(weights.cwiseAbs(), 0.99);
  hypergrad::writePngDiverging((out / "weights.png").string(), hypergrad::imageGrid(classTiles(weights), 5, 1, 0.0),
                               absMax, kPictures);
  std::printf(
      "penalties.png: log lambda minus its start (%.2f), blue -%.2f (less penalty), white 0, red +%.2f (more); "
      "weights.png: blue -%.3g, white 0, red +%.3g\n",
      bestEta, etaMax, etaMax, absMax, absMax);

  hypergrad::SvgPlot curve("Per-weight L2: meta-learning curve", "meta-iteration", "cross-entropy loss");
  std::vector<double> iters, valid, test;
  for (std::size_t k = 0; k < result.metrics.size(); ++k) {
    iters.push_back(double(k));
    valid.push_back(result.metrics[k].at("valid_loss"));
    test.push_back(result.metrics[k].at("test_loss"));
  }
  curve.addLine("validation loss (per-weight L2)", iters, valid, {0});
  curve.addLine("test loss (per-weight L2)", iters, test, {1});
  curve.addHorizontalLine("validation loss, best global L2", table[1].s.validLoss, {0, true, 1.4});
  curve.addHorizontalLine("test loss, best global L2", table[1].s.testLoss, {1, true, 1.4});
  curve.save((out / "meta_learning_curve.svg").string());

  hypergrad::SvgPlot grid("Global L2 strength: the grid search", "log lambda", "validation loss");
  grid.addLine("validation loss, one lambda for all weights", opt.grid, gridLoss, {0});
  grid.addHorizontalLine("validation loss, no L2", table[0].s.validLoss, {1, true, 1.4});
  grid.addHorizontalLine("validation loss, learned per-weight L2", table[2].s.validLoss, {2, true, 1.4});
  grid.save((out / "global_l2_grid.svg").string());

  std::printf(
      "\nwrote %s/{penalties.png, weights.png, meta_learning_curve.svg, global_l2_grid.svg, log.csv, "
      "summary.csv}\ntotal time %.1f s\n",
      opt.out.c_str(), secondsSince(start));
  if (opt.quick)
    checkOutputs(opt.out, {"penalties.png", "weights.png", "meta_learning_curve.svg", "global_l2_grid.svg", "log.csv",
                           "summary.csv"});
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  if (!parseOptions(argc, argv, opt)) return 2;
  try {
    return run(opt);
  } catch (const hypergrad::DataError& e) {
    std::fprintf(stderr, "per_weight_l2: %s\n(or run with --quick, which falls back to synthetic data)\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "per_weight_l2: %s\n", e.what());
    return 1;
  }
}
