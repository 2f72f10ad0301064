// learn_training_data — a training set of 10 images (one per class) learned pixel by pixel
// (Maclaurin, Duvenaud & Adams 2015): the 7,840 pixels are the hyperparameters.
//
// A logistic regression 784 → 10 is trained from w = 0 for T steps of SGD with momentum on the
// 10 images alone (full batch, fixed α and γ). The meta objective is the cross-entropy of the
// trained model on a 10,000-example validation set. hypergrad runs training backwards exactly
// and returns ∂(validation loss)/∂(every pixel of every training image) — MlpObjective with
// inputsAreHyperparameters = true — and Adam updates the pixels. The pixels are unconstrained
// (Transform::Identity): they may leave [0, 1]; only the pictures clamp them, for display.
//
// Outputs in --out: initial_images.png, learned_images.png (10 tiles of 28 × 28, 0 = black,
// the brightest learned pixel = white), learned_images_signed.png (the same pixels on a diverging scale, so values
// outside [0, 1] show), meta_learning_curve.svg, log.csv (one row per meta-iteration) and summary.csv (validation and
// test loss / error of the learned set against two real-data baselines).
//
// Usage: learn_training_data [--data DIR|mnist] [--out DIR] [--quick] [--init zeros|gray|means]
//                            [--steps T] [--meta-iterations M] [--meta-step S] [--alpha A] [--gamma G]

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
constexpr Index kPool = 1000;       // examples kept out of validation and test for the baselines

struct Options {
  std::string data = hypergrad::defaultDataDirectory();
  std::string out = "learn_training_data_out";
  bool quick = false;
  std::string init = "zeros";  // starting images
  Index valid = 10000;         // validation examples (the meta objective)
  Index test = 10000;          // test examples (reported, never optimised)
  Index steps = 100;           // T
  Index metaIterations = 300;
  double metaStep = 0.04;  // Adam step, in pixel units
  double alpha = 0.1;      // learning rate
  double gamma = 0.9;      // momentum
};

void printUsage(std::FILE* out) {
  std::fputs(
      "usage: learn_training_data [options]\n"
      "  --data DIR|NAME      MNIST-format directory (default /usr/share/datasets/fashion-mnist; one\n"
      "                       with only t10k files is split into validation / test / baseline pool), or a\n"
      "                       name: \"mnist\" (../shared/data/mnist or $HYPERGRAD_MNIST_DIR) or \"fashion-mnist\"\n"
      "  --out DIR            output directory (default ./learn_training_data_out)\n"
      "  --quick              tiny settings (seconds); synthetic data when no data directory is found\n"
      "  --init zeros|gray|means  starting images: black, 0.5 grey, or class means of the pool\n"
      "                       (default zeros)\n"
      "  --steps T            SGD steps per training run (default 100)\n"
      "  --meta-iterations M  Adam steps on the pixels (default 300)\n"
      "  --meta-step S        Adam step size, in pixel units (default 0.04)\n"
      "  --alpha A            learning rate (default 0.1)\n"
      "  --gamma G            momentum (default 0.9)\n",
      out);
}

bool parseOptions(int argc, char** argv, Options& opt) {
  // --quick first, so that explicit options given with it still win.
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]) == "--quick") {
      opt.quick = true;
      opt.valid = 1000;
      opt.test = 1000;
      opt.steps = 20;
      opt.metaIterations = 5;
    }
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      printUsage(stdout);
      std::exit(0);
    }
    if (flag == "--quick") continue;
    if (i + 1 >= argc) {
      std::fprintf(stderr, "learn_training_data: %s needs a value (see --help)\n", flag.c_str());
      return false;
    }
    const char* value = argv[++i];
    char* end = nullptr;
    bool ok = true;
    if (flag == "--data") {
      opt.data = value;
      continue;
    } else if (flag == "--out") {
      opt.out = value;
      continue;
    } else if (flag == "--init") {
      opt.init = value;
      if (opt.init != "zeros" && opt.init != "gray" && opt.init != "means") {
        std::fprintf(stderr, "learn_training_data: --init must be zeros, gray or means, not '%s'\n", value);
        return false;
      }
      continue;
    } else if (flag == "--steps") {
      opt.steps = static_cast<Index>(std::strtol(value, &end, 10));
      ok = opt.steps >= 1;
    } else if (flag == "--meta-iterations") {
      opt.metaIterations = static_cast<Index>(std::strtol(value, &end, 10));
      ok = opt.metaIterations >= 1;
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
      std::fprintf(stderr, "learn_training_data: unknown option %s (see --help)\n", flag.c_str());
      return false;
    }
    if (!ok || end == value || *end != '\0') {
      std::fprintf(stderr, "learn_training_data: bad value '%s' for %s\n", value, flag.c_str());
      return false;
    }
  }
  return true;
}

// ---- Data ---------------------------------------------------------------------------------------

struct Splits {
  Dataset valid, test, pool;  // pool: neither validation nor test, for the real-data baselines
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

// Validation set and baseline pool from the "train" split, test set from "t10k". A directory
// with only t10k (e.g. the MNIST test set) is split in three. Without data, --quick uses
// synthetic data; a full run lets loadMnist throw its DataError (which says how to get the data).
Splits loadSplits(const Options& opt) {
  const std::string dir = hypergrad::resolveDataDirectory(opt.data);  // "mnist", "fashion-mnist" or a path
  Splits s;
  const bool train = hypergrad::hasMnistSplit(dir, "train"), t10k = hypergrad::hasMnistSplit(dir, "t10k");
  if (train || (!t10k && !opt.quick)) {
    const Dataset all = hypergrad::loadMnist(dir, "train", opt.valid + kPool);
    if (all.numExamples() < 2 * kPool)
      throw hypergrad::DataError("learn_training_data: '" + dir + "' holds too few training examples");
    s.valid = hypergrad::subset(all, 0, all.numExamples() - kPool);
    s.pool = hypergrad::subset(all, all.numExamples() - kPool, kPool);
    s.test = hypergrad::loadMnist(dir, "t10k", opt.test);
    s.source = dir + " (train split: validation + baseline pool; t10k: test)";
  } else if (t10k) {
    const Dataset all = hypergrad::loadMnist(dir, "t10k");
    const Index rest = all.numExamples() - kPool;
    if (rest < 2) throw hypergrad::DataError("learn_training_data: '" + dir + "' holds too few examples");
    const Index valid = std::min(opt.valid, rest / 2), test = std::min(opt.test, rest - valid);
    s.pool = hypergrad::subset(all, 0, kPool);
    s.valid = hypergrad::subset(all, kPool, valid);
    s.test = hypergrad::subset(all, kPool + valid, test);
    s.source = dir + " (only t10k found: split into baseline pool, validation and test)";
  } else {
    s.valid = syntheticData(opt.valid, 2);
    s.test = syntheticData(opt.test, 3);
    s.pool = syntheticData(kPool, 4);
    s.source = "SYNTHETIC data (no MNIST-format files in '" + dir + "'; --quick only)";
  }
  return s;
}

// ---- The experiment -----------------------------------------------------------------------------

// Ten images as a 784 × 10 matrix, column c = the image of class c (pixel p = row · 28 + column):
// the same layout as θ of MlpObjective (example-major), so the hypergradient maps onto it as is.
MatrixXd firstOfEachClass(const Dataset& d) {
  MatrixXd images = MatrixXd::Constant(kPixels, kClasses, 0.5);
  std::vector<bool> found(kClasses, false);
  for (Index k = 0; k < d.numExamples(); ++k) {
    const auto c = static_cast<std::size_t>(d.labels(k));
    if (!found[c]) images.col(static_cast<Index>(c)) = d.inputs.row(k).transpose();
    found[c] = true;
  }
  return images;
}

MatrixXd classMeans(const Dataset& d) {
  MatrixXd sum = MatrixXd::Zero(kPixels, kClasses);
  VectorXd count = VectorXd::Zero(kClasses);
  for (Index k = 0; k < d.numExamples(); ++k) {
    sum.col(d.labels(k)) += d.inputs.row(k).transpose();
    count(d.labels(k)) += 1;
  }
  for (Index c = 0; c < kClasses; ++c) sum.col(c) /= std::max(1.0, count(c));
  return sum;
}

struct Scores {
  double validLoss = 0, validError = 0, testLoss = 0, testError = 0;
};

class Experiment {
 public:
  Experiment(const Options& opt, const Splits& data)
      : m_opt(opt), m_arch({kPixels, kClasses}), m_valid(m_arch, data.valid), m_test(m_arch, data.test) {}

  // The training objective on the 10 images (full batch every step), pixels as hyperparameters.
  hypergrad::MlpObjective objective(const MatrixXd& images) const {
    Dataset train;
    train.inputs = images.transpose();
    train.labels = Eigen::VectorXi::LinSpaced(kClasses, 0, kClasses - 1);
    train.numClasses = kClasses;
    return hypergrad::MlpObjective(m_arch, std::move(train), hypergrad::SeededBatches(1, kClasses, kClasses),
                                   /*inputsAreHyperparameters=*/true);
  }

  // One training run on `images`; with `reverse`, also ∂(validation loss)/∂pixels.
  hypergrad::Hypergradients run(const MatrixXd& images, bool reverse) const {
    const hypergrad::MlpObjective f = objective(images);
    const hypergrad::ParameterLayout layout = m_arch.layout();
    hypergrad::SgdMomentum<> sgd(layout, hypergrad::Schedule::constant(m_opt.steps, layout.numGroups(), m_opt.alpha),
                                 hypergrad::Schedule::constant(m_opt.steps, layout.numGroups(), m_opt.gamma));
    const VectorXd zero = VectorXd::Zero(m_arch.numParameters());
    if (reverse) return hypergrad::computeHypergradients(sgd, f, m_valid, zero, zero);
    sgd.start(zero);
    hypergrad::train(sgd, f);
    hypergrad::Hypergradients out;
    out.finalWeights = sgd.weights();
    out.metaObjective = m_valid.value(out.finalWeights);
    return out;
  }

  Scores score(const VectorXd& w) const {
    return Scores{m_valid.value(w), m_valid.errorRate(w), m_test.value(w), m_test.errorRate(w)};
  }
  Scores scoreImages(const MatrixXd& images) const { return score(run(images, false).finalWeights); }

 private:
  const Options& m_opt;
  hypergrad::MlpArchitecture m_arch;
  hypergrad::MlpLoss m_valid, m_test;
};

// The meta objective for metaOptimize: validation loss after training on the images in p.
struct Evaluate {
  const Experiment& experiment;

  hypergrad::MetaEvaluation operator()(const hypergrad::MetaParameters& p, Index) const {
    const hypergrad::Hypergradients hg = experiment.run(p.value("pixels"), /*reverse=*/true);
    const Scores s = experiment.score(hg.finalWeights);
    hypergrad::MetaEvaluation e;
    e.objective = hg.metaObjective;
    e.gradients = {Eigen::Map<const MatrixXd>(hg.hyperparameters.data(), kPixels, kClasses)};
    e.metrics = {{"valid_loss", s.validLoss},
                 {"valid_error", s.validError},
                 {"test_loss", s.testLoss},
                 {"test_error", s.testError}};
    return e;
  }
};

// Tiles of 28 × 28 from the columns of a 784 × 10 matrix.
std::vector<MatrixXd> classTiles(const MatrixXd& perClass) {
  std::vector<MatrixXd> tiles;
  for (Index j = 0; j < perClass.cols(); ++j) {
    MatrixXd tile(kSide, kSide);
    for (Index p = 0; p < kPixels; ++p) tile(p / kSide, p % kSide) = perClass(p, j);
    tiles.push_back(tile);
  }
  return tiles;
}

// Grey picture of ten images, [0, hi] → black..white (values outside clamped, for display only).
void writeImages(const std::filesystem::path& path, const MatrixXd& images, double hi) {
  hypergrad::writePng(path.string(), hypergrad::imageGrid(classTiles(images), 5, 1, hi), 0.0, hi, kPictures);
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
  const std::filesystem::path out(opt.out);
  std::filesystem::create_directories(out);
  std::printf("data: %s\n", data.source.c_str());
  std::printf("training set: 10 learned images (7840 pixel hyperparameters); %ld validation / %ld test examples\n",
              long(data.valid.numExamples()), long(data.test.numExamples()));
  std::printf(
      "training run: logistic regression 784 -> 10 from w = 0, full batch of 10, T = %ld, alpha %.3g, "
      "gamma %.3g\n\n",
      long(opt.steps), opt.alpha, opt.gamma);

  Experiment experiment(opt, data);
  const MatrixXd initial = opt.init == "means"  ? classMeans(data.pool)
                           : opt.init == "gray" ? MatrixXd::Constant(kPixels, kClasses, 0.5)
                                                : MatrixXd::Zero(kPixels, kClasses);

  hypergrad::MetaParameters params;
  params.add("pixels", initial, hypergrad::Transform::Identity);  // unconstrained
  hypergrad::MetaAdam adam;
  adam.stepSize = opt.metaStep;
  hypergrad::ProgressBar progress;
  hypergrad::CsvLogger log((out / "log.csv").string());
  const hypergrad::MetaResult result =
      hypergrad::metaOptimize(params, Evaluate{experiment}, adam, opt.metaIterations, progress, log);
  // A diverged run returns (params at its best iterate); when even the first evaluation failed
  // there is nothing to show.
  if (result.iterations == 0) {
    std::fprintf(stderr, "learn_training_data: %s\n", result.stopReason.c_str());
    return 1;
  }
  params.setRaw(result.bestRaw);  // the best iterate on validation
  const MatrixXd learned = params.value("pixels");

  // Comparison: the initial images, two training sets of 10 real images, the learned images.
  struct Row {
    std::string name;
    Scores s;
  };
  const std::vector<Row> table{{"initial images (" + opt.init + ")", experiment.scoreImages(initial)},
                               {"one real image per class", experiment.scoreImages(firstOfEachClass(data.pool))},
                               {"class means of 1000 real images", experiment.scoreImages(classMeans(data.pool))},
                               {"learned images", experiment.scoreImages(learned)}};
  std::printf("\n%-34s %11s %10s %10s %10s\n", "training set (10 images)", "valid loss", "valid err", "test loss",
              "test err");
  std::ofstream summary(out / "summary.csv");
  summary << "training_set,valid_loss,valid_error,test_loss,test_error\n";
  for (const Row& r : table) {
    std::printf("%-34s %11.4f %10.4f %10.4f %10.4f\n", r.name.c_str(), r.s.validLoss, r.s.validError, r.s.testLoss,
                r.s.testError);
    summary << r.name << "," << r.s.validLoss << "," << r.s.validError << "," << r.s.testLoss << "," << r.s.testError
            << "\n";
  }
  summary.close();
  if (!summary) throw std::runtime_error("cannot write " + (std::filesystem::path(opt.out) / "summary.csv").string());
  std::printf("learned pixels range from %.3f to %.3f (unconstrained; the pictures clamp to [0, 1])\n",
              learned.minCoeff(), learned.maxCoeff());

  // Pictures: both grey pictures map [0, hi] to black..white, hi = the brightest learned pixel
  // (at least 0.5), so that they are comparable.
  const double hi = std::max({0.5, learned.maxCoeff(), initial.maxCoeff()});
  writeImages(out / "initial_images.png", initial, hi);
  writeImages(out / "learned_images.png", learned, hi);
  const double absMax = std::max(learned.cwiseAbs().maxCoeff(), 1e-12);
  hypergrad::writePngDiverging((out / "learned_images_signed.png").string(),
                               hypergrad::imageGrid(classTiles(learned), 5, 1, 0.0), absMax, kPictures);
  hypergrad::SvgPlot curve("Learning 10 training images: meta-learning curve", "meta-iteration", "cross-entropy loss");
  std::vector<double> valid, test;
  for (const auto& m : result.metrics) {
    valid.push_back(m.at("valid_loss"));
    test.push_back(m.at("test_loss"));
  }
  curve.addLine("validation loss (learned images)", valid, hypergrad::LineStyle{0});
  curve.addLine("test loss (learned images)", test, hypergrad::LineStyle{1});
  curve.addHorizontalLine("validation loss, class means of real images", table[2].s.validLoss, {0, true, 1.4});
  curve.addHorizontalLine("test loss, class means of real images", table[2].s.testLoss, {1, true, 1.4});
  curve.save((out / "meta_learning_curve.svg").string());

  std::printf(
      "\nwrote %s/{initial_images.png, learned_images.png (black 0, white %.3g), learned_images_signed.png "
      "(blue -%.3g, white 0, red +%.3g), meta_learning_curve.svg, log.csv, summary.csv}\ntotal time %.1f s\n",
      opt.out.c_str(), hi, absMax, absMax, secondsSince(start));
  if (opt.quick)
    checkOutputs(opt.out, {"initial_images.png", "learned_images.png", "learned_images_signed.png",
                           "meta_learning_curve.svg", "log.csv", "summary.csv"});
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  if (!parseOptions(argc, argv, opt)) return 2;
  try {
    return run(opt);
  } catch (const hypergrad::DataError& e) {
    std::fprintf(stderr, "learn_training_data: %s\n(or run with --quick, which falls back to synthetic data)\n",
                 e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "learn_training_data: %s\n", e.what());
    return 1;
  }
}
