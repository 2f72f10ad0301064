// Initialisation scales by exact hypergradients (Maclaurin, Duvenaud & Adams 2015, §3.1): the
// MLP 784-50-50-50-10 starts from w₁ = s_k ε (ε ~ N(0, 1), one scale s_k per layer's weights and
// per layer's biases: 8 hyperparameters) and trains for T = 100 steps of SGD with momentum with
// fixed schedules. Each meta-iteration trains forward, runs training backwards bit for bit to get
// ∂f/∂w₁, and chains it to ∂f/∂log s_k = Σ_{i∈k} (∂f/∂w₁)_i s_k ε_i (ScaledInit::logScaleGradient);
// Adam updates log s. The learned scales are compared with the 1/√fan-in heuristic.
//
//   init_scales [--quick] [--data DIR|mnist] [--out DIR] [--meta-iterations N] [--objective train|valid]
//               [--scale0 S] [--alpha A] [--meta-step S] [--seed N]
//
// Writes init_scales.svg, init_scales_biases.svg, meta_learning_curve.svg, log.csv (losses per
// meta-iteration) and scales.csv (the 8 scales per meta-iteration) to the output directory. See README.md beside this file.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
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
  std::string data;  // "" = hypergrad::defaultDataDirectory()
  std::string out = "init_scales_out";
  Index metaIterations = -1;   // -1: 50 (full) or 3 (--quick)
  bool validObjective = false; // false: final training loss (as the paper), true: validation loss
  double scale0 = 0.2;         // initial scale of every group
  double alpha = 0.3;          // fixed learning rate (every iteration and group)
  double gamma = 0.9;          // fixed momentum
  double metaStep = 0.04;      // Adam step on log s
  std::uint64_t seed = 1;
};

void usage(const char* argv0) {
  std::printf(
      "usage: %s [--quick] [--data DIR] [--out DIR] [--meta-iterations N] [--objective train|valid]\n"
      "          [--scale0 S] [--alpha A] [--meta-step S] [--seed N]\n"
      "  --quick              tiny run (MLP 784-20-10, T = 10, 3 meta-iterations, 500 examples) for a smoke test;\n"
      "                       uses synthetic data when DIR holds no MNIST-format files\n"
      "  --data DIR|NAME      MNIST-format directory (default %s), or a name:\n"
      "                       \"mnist\" (../shared/data/mnist or $HYPERGRAD_MNIST_DIR) or \"fashion-mnist\";\n"
      "                       with only t10k files the 10,000 t10k examples are split 6,000 / 2,000 / 2,000\n"
      "                       into train / valid / test\n"
      "  --out DIR            output directory (default ./init_scales_out)\n"
      "  --meta-iterations N  meta-iterations (default 50, --quick 3)\n"
      "  --objective O        'train' (default, as the paper): final training loss; 'valid': validation loss\n"
      "  --scale0 S           initial scale of every group (default 0.2)\n"
      "  --alpha A            fixed learning rate (default 0.3; momentum 0.9)\n"
      "  --meta-step S        Adam step on log s (default 0.04)\n"
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
    else if (a == "--objective") {
      const std::string v = next();
      if (v != "train" && v != "valid") throw hypergrad::InvalidArgument("--objective is 'train' or 'valid'");
      o.validObjective = v == "valid";
    } else if (a == "--scale0") o.scale0 = std::stod(next());
    else if (a == "--alpha") o.alpha = std::stod(next());
    else if (a == "--meta-step") o.metaStep = std::stod(next());
    else if (a == "--seed") o.seed = std::stoull(next());
    else if (a == "--help" || a == "-h") usage(argv[0]), std::exit(0);
    else throw hypergrad::InvalidArgument("unknown option '" + a + "' (see --help)");
  }
  if (o.metaIterations == -1) o.metaIterations = o.quick ? 3 : 50;
  if (o.metaIterations < 1) throw hypergrad::InvalidArgument("--meta-iterations must be >= 1");
  if (!(o.scale0 > 0)) throw hypergrad::InvalidArgument("--scale0 must be > 0");
  return o;
}

// ---- data (as in examples/learning_rate_schedule) ----------------------------------------------

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

/// Records the scales at every meta-iteration (the parameters the evaluation used).
struct ScaleHistory {
  std::vector<VectorXd> scales;
  bool onMetaIteration(const hypergrad::MetaIterationInfo& info) {
    scales.push_back(info.parameters->value(0).col(0));
    return false;
  }
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
  const hypergrad::MlpLoss trainLoss(arch, data.train), validLoss(arch, data.valid), testLoss(arch, data.test);
  const hypergrad::MlpLoss& metaLoss = o.validObjective ? validLoss : trainLoss;
  const hypergrad::Schedule alpha = hypergrad::Schedule::constant(T, G, o.alpha);
  const hypergrad::Schedule gamma = hypergrad::Schedule::constant(T, G, o.gamma);
  std::printf("data: %s\n", data.description.c_str());
  std::printf("%ld groups, %ld weights; T = %ld, batch %ld, alpha = %g, gamma = %g fixed; meta objective: final %s loss\n",
              long(G), long(N), long(T), long(batchSize), o.alpha, o.gamma, o.validObjective ? "validation" : "training");

  hypergrad::MetaParameters params;
  params.add("init scales", MatrixXd::Constant(G, 1, o.scale0), hypergrad::Transform::Log);

  auto seedFor = [&](Index metaIteration) { return o.seed * 1000003u + std::uint64_t(metaIteration); };
  auto evaluate = [&](const hypergrad::MetaParameters& p, Index metaIteration) {
    const VectorXd scales = p.value(0).col(0);
    const hypergrad::MlpObjective objective(
        arch, trainLoss.sharedData(), hypergrad::SeededBatches(seedFor(metaIteration), data.train.numExamples(), batchSize));
    // w₁ = s_k ε with ε drawn from this meta-iteration's seed.
    const hypergrad::ScaledInit init(layout, scales.array().log().matrix(), seedFor(metaIteration));
    hypergrad::SgdMomentum<> sgd(layout, alpha, gamma);
    const hypergrad::Hypergradients hg =
        hypergrad::computeHypergradients(sgd, objective, metaLoss, init.weights(), VectorXd::Zero(N));
    // ∂f/∂log s_k, then to value space (∂f/∂s_k) for MetaParameters, which chains back to log s.
    const VectorXd dLogScale = init.logScaleGradient(hg.initialWeights);
    hypergrad::MetaEvaluation e;
    e.objective = hg.metaObjective;
    e.gradients = {MatrixXd(dLogScale.cwiseQuotient(scales))};
    if (!o.validObjective) e.metrics["valid loss"] = validLoss.value(hg.finalWeights);
    else e.metrics["train loss"] = trainLoss.value(hg.finalWeights);
    e.metrics["valid error"] = validLoss.errorRate(hg.finalWeights);
    e.metrics["test loss"] = testLoss.value(hg.finalWeights);
    e.metrics["test error"] = testLoss.errorRate(hg.finalWeights);
    return e;
  };

  hypergrad::MetaAdam adam;
  adam.stepSize = o.metaStep;
  hypergrad::ProgressBar progress;
  hypergrad::CsvLogger csv((fs::path(o.out) / "log.csv").string());
  hypergrad::EarlyStopping stop(100.0);
  ScaleHistory history;
  const hypergrad::MetaResult result =
      hypergrad::metaOptimize(params, evaluate, adam, o.metaIterations, history, progress, csv, stop);
  // A diverged run returns (params at its best iterate); when even the first evaluation failed
  // there is nothing to show.
  if (result.iterations == 0) {
    std::fprintf(stderr, "error: %s\n", result.stopReason.c_str());
    return 1;
  }

  // ---- pictures: each scale per meta-iteration against its 1/√fan-in reference ----
  const std::vector<Index> fanIn = arch.groupFanIn();
  for (int biases = 0; biases < 2; ++biases) {
    hypergrad::SvgPlot plot(biases ? "Learned initialisation scales: biases" : "Learned initialisation scales: weights",
                            "meta-iteration", "scale s_k");
    for (Index l = 0; l < L; ++l) {
      const Index k = 2 * l + biases;
      std::vector<double> s;
      for (const VectorXd& v : history.scales) s.push_back(v(k));
      plot.addLine(layout.group(k).name, s, hypergrad::LineStyle{int(l)});
    }
    // One dashed reference per distinct fan-in: in its layer's colour, grey when layers share it.
    for (Index l = 0; l < L; ++l) {
      const Index f = fanIn[static_cast<std::size_t>(2 * l)];
      std::vector<Index> same;
      for (Index m = 0; m < L; ++m)
        if (fanIn[static_cast<std::size_t>(2 * m)] == f) same.push_back(m + 1);
      if (same.front() != l + 1) continue;  // drawn with the first layer of that fan-in
      std::string label = "1/sqrt(" + std::to_string(f) + ") = ";
      char value[16];
      std::snprintf(value, sizeof value, "%.3f", 1.0 / std::sqrt(double(f)));
      label += value;
      label += same.size() == 1 ? " (layer " : " (layers ";
      for (std::size_t i = 0; i < same.size(); ++i) label += (i ? ", " : "") + std::to_string(same[i]);
      label += ")";
      plot.addHorizontalLine(label, 1.0 / std::sqrt(double(f)),
                             hypergrad::LineStyle{same.size() == 1 ? int(l) : 8, true, 1.2});
    }
    plot.setLogY(true);
    plot.save((fs::path(o.out) / (biases ? "init_scales_biases.svg" : "init_scales.svg")).string());
  }
  {
    std::vector<double> other, test;
    const std::string otherName = o.validObjective ? "train loss" : "valid loss";
    for (const auto& m : result.metrics) other.push_back(m.at(otherName)), test.push_back(m.at("test loss"));
    hypergrad::SvgPlot plot("Meta-learning curve", "meta-iteration", "loss after T training steps");
    plot.addLine(std::string(o.validObjective ? "validation" : "training") + " loss (meta objective)", result.objectives);
    plot.addLine(o.validObjective ? "training loss" : "validation loss", other);
    plot.addLine("test loss", test);
    plot.save((fs::path(o.out) / "meta_learning_curve.svg").string());
  }

  {  // every scale per meta-iteration (log.csv has the losses)
    const std::string path = (fs::path(o.out) / "scales.csv").string();
    std::FILE* f = std::fopen(path.c_str(), "w");
    if (!f) throw hypergrad::InvalidArgument("cannot write '" + path + "'");
    std::fprintf(f, "iteration");
    for (Index k = 0; k < G; ++k) std::fprintf(f, ",%s", layout.group(k).name.c_str());
    std::fprintf(f, "\n");
    for (std::size_t it = 0; it < history.scales.size(); ++it) {
      std::fprintf(f, "%zu", it);
      for (Index k = 0; k < G; ++k) std::fprintf(f, ",%.17g", history.scales[it](k));
      std::fprintf(f, "\n");
    }
    std::fclose(f);
  }

  // ---- held-out comparison: initial, learned and heuristic scales on 5 seeds never used above ----
  struct Scores {
    double train = 0, valid = 0, validError = 0, test = 0, testError = 0;
  };
  const Index heldOutSeeds = o.quick ? 1 : 5;
  auto heldOut = [&](const VectorXd& scales) {
    Scores sc;
    for (Index j = 0; j < heldOutSeeds; ++j) {
      const Index key = o.metaIterations + j;
      const hypergrad::MlpObjective objective(
          arch, trainLoss.sharedData(), hypergrad::SeededBatches(seedFor(key), data.train.numExamples(), batchSize));
      const hypergrad::ScaledInit init(layout, scales.array().log().matrix(), seedFor(key));
      hypergrad::SgdMomentum<> sgd(layout, alpha, gamma);
      sgd.start(init.weights());
      hypergrad::train(sgd, objective);
      const VectorXd w = sgd.weights();
      sc.train += trainLoss.value(w) / double(heldOutSeeds);
      sc.valid += validLoss.value(w) / double(heldOutSeeds);
      sc.validError += validLoss.errorRate(w) / double(heldOutSeeds);
      sc.test += testLoss.value(w) / double(heldOutSeeds);
      sc.testError += testLoss.errorRate(w) / double(heldOutSeeds);
    }
    return sc;
  };
  const VectorXd learned = params.value(0).col(0);
  VectorXd heuristic(G);
  for (Index k = 0; k < G; ++k) heuristic(k) = 1.0 / std::sqrt(double(fanIn[static_cast<std::size_t>(k)]));
  const Scores sInitial = heldOut(history.scales.front()), sLearned = heldOut(learned), sHeuristic = heldOut(heuristic);

  // ---- summary ----
  std::printf("\nafter %ld meta-iterations (%s):\n", long(result.iterations),
              result.stoppedEarly ? ("stopped early: " + result.stopReason).c_str() : "completed");
  std::printf("  %-16s %10s %10s %12s\n", "group", "initial", "learned", "1/sqrt(fan-in)");
  for (Index k = 0; k < G; ++k)
    std::printf("  %-16s %10.4f %10.4f %12.4f\n", layout.group(k).name.c_str(), history.scales.front()(k), learned(k),
                1.0 / std::sqrt(double(fanIn[static_cast<std::size_t>(k)])));
  std::printf("\nmean over %ld training runs with unseen seeds:\n", long(heldOutSeeds));
  std::printf("  %-22s %11s %11s %12s %11s %11s\n", "scales", "train loss", "valid loss", "valid error", "test loss",
              "test error");
  char initialName[48];
  std::snprintf(initialName, sizeof initialName, "initial (all %g)", o.scale0);
  for (const auto& [name, sc] : {std::make_pair(static_cast<const char*>(initialName), sInitial), std::make_pair("learned", sLearned),
                                 std::make_pair("1/sqrt(fan-in)", sHeuristic)}) {
    std::printf("  %-22s %11.4f %11.4f %11.2f%% %11.4f %10.2f%%\n", name, sc.train, sc.valid, 100 * sc.validError,
                sc.test, 100 * sc.testError);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - clockStart).count();
  std::printf("wall time %.1f s; outputs in %s\n", seconds, o.out.c_str());

  if (o.quick) {  // self-check for the ctest smoke run
    for (const char* name : {"init_scales.svg", "init_scales_biases.svg", "meta_learning_curve.svg", "log.csv", "scales.csv"}) {
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
