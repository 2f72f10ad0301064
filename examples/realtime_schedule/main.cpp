// Real-time hyperparameter optimisation (RTHO; Franceschi et al. 2017) against the offline
// meta-loop on the same wall-clock budget: per-group learning rates of an MLP learned (a) online,
// within one training run, from the forward tangents (realTimeHyperparameters), and (b) by
// gradient descent over repeated runs, each differentiated exactly by the reverse pass. Both
// minimise the validation loss; both are then judged on a fresh training run.
//
//   realtime_schedule [--quick] [--data DIR|mnist] [--out DIR] [--meta-step B] [--interval D] [--seed N]
//
// Writes budget.svg, learning_rates.svg and log.csv to the output directory (README.md beside
// this file).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
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
  std::string data;                   // "" = hypergrad::defaultDataDirectory()
  std::string out = "realtime_schedule_out";
  double metaStep = 0.002;            // β: α_k ← α_k − β ∂f/∂α_k, for both methods
  Index interval = 10;                // RTHO: steps between updates
  std::uint64_t seed = 1;
};

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
    else if (a == "--meta-step") o.metaStep = std::stod(next());
    else if (a == "--interval") o.interval = std::stol(next());
    else if (a == "--seed") o.seed = std::stoull(next());
    else if (a == "--help" || a == "-h") {
      std::printf("usage: %s [--quick] [--data DIR] [--out DIR] [--meta-step B] [--interval D] [--seed N]\n"
                  "  --quick        MLP 784-20-10, T = 40, 500 examples per split (synthetic without data)\n"
                  "  --data DIR     MNIST-format directory (default %s; t10k only: split 6,000/2,000/2,000),\n"
                  "                 or \"mnist\" (../shared/data/mnist or $HYPERGRAD_MNIST_DIR) or \"fashion-mnist\"\n"
                  "  --meta-step B  step on the learning rates, both methods (default 0.002)\n"
                  "  --interval D   RTHO's steps between updates (default 10)\n",
                  argv[0], hypergrad::defaultDataDirectory().c_str());
      std::exit(0);
    } else {
      throw hypergrad::InvalidArgument("unknown option '" + a + "' (see --help)");
    }
  }
  return o;
}

struct Splits {
  hypergrad::Dataset train, valid, test;
  std::string description;
};

// Ten noisy prototypes of MNIST's shape: the --quick stand-in when no data is installed.
hypergrad::Dataset synthetic(Index n, std::uint64_t seed) {
  hypergrad::CounterRng protoRng(12345, 0), rng(seed, 1);
  MatrixXd prototypes(10, 784);
  for (Index i = 0; i < prototypes.size(); ++i) prototypes(i) = protoRng.uniform() < 0.3 ? 1.0 : 0.0;
  hypergrad::Dataset d;
  d.numClasses = 10;
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
    s.description = dir + ": train[0, n) / train[n, 2n) / t10k[0, n), n = " + std::to_string(n);
  } else if (hypergrad::hasMnistSplit(dir, "t10k")) {
    const hypergrad::Dataset all = hypergrad::loadMnist(dir, "t10k");
    const Index a = o.quick ? 500 : 6000, b = o.quick ? 500 : 2000;
    s.train = hypergrad::subset(all, 0, a);
    s.valid = hypergrad::subset(all, a, b);
    s.test = hypergrad::subset(all, a + b, std::min<Index>(o.quick ? 500 : 2000, all.numExamples() - a - b));
    s.description = dir + " (t10k only), split into train / validation / test";
  } else if (o.quick) {
    s.train = synthetic(n, 1);
    s.valid = synthetic(n, 2);
    s.test = synthetic(n, 3);
    s.description = "SYNTHETIC data of MNIST's shape (no MNIST-format files in " + dir + ")";
  } else {
    hypergrad::loadMnist(dir, "train");  // throws the DataError that says what is missing
  }
  return s;
}

double secondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) try {
  const Options o = parse(argc, argv);
  const Splits data = loadSplits(o);
  fs::create_directories(o.out);
  const std::vector<Index> sizes = o.quick ? std::vector<Index>{784, 20, 10} : std::vector<Index>{784, 50, 50, 50, 10};
  const Index T = o.quick ? 40 : 200, batch = o.quick ? 50 : 200;
  const double alpha0 = 0.05, gamma0 = 0.9;
  const hypergrad::MlpArchitecture arch(sizes, hypergrad::Activation::Tanh);
  const hypergrad::ParameterLayout layout = arch.layout();
  const Index G = layout.numGroups();
  VectorXd fanIn(G);
  for (Index k = 0; k < G; ++k) fanIn(k) = double(arch.groupFanIn()[static_cast<std::size_t>(k)]);
  const hypergrad::MlpLoss trainLoss(arch, data.train), valid(arch, data.valid), test(arch, data.test);
  const auto objective = [&](std::uint64_t seed) {
    return hypergrad::MlpObjective(arch, trainLoss.sharedData(), hypergrad::SeededBatches(seed, data.train.numExamples(), batch));
  };
  const auto initial = [&](std::uint64_t seed) {
    return hypergrad::ScaledInit(layout, hypergrad::ScaledInit::logScalesFromFanIn(fanIn), seed).weights();
  };
  // A fresh run (an unseen seed) with per-iteration × per-group learning rates `alpha`.
  const auto judge = [&](const MatrixXd& alpha) {
    hypergrad::ReferenceOptimizer<hypergrad::MomentumRule> opt(layout, hypergrad::Schedule(alpha),
                                                               hypergrad::Schedule::constant(T, G, gamma0));
    opt.start(initial(o.seed + 999));
    hypergrad::train(opt, objective(o.seed + 999));
    return std::make_pair(valid.value(opt.weights()), test.value(opt.weights()));
  };
  std::printf("data: %s\nMLP with %ld weights in %ld groups, T = %ld, batch %ld; %ld hyperparameters: alpha per group\n",
              data.description.c_str(), long(arch.numParameters()), long(G), long(T), long(batch), long(G));

  // (a) RTHO: one run, α updated every `interval` steps from the forward tangents.
  const auto t0 = std::chrono::steady_clock::now();
  const hypergrad::ReferenceOptimizer<hypergrad::MomentumRule> prototype(layout, hypergrad::Schedule::constant(T, G, alpha0),
                                                                         hypergrad::Schedule::constant(T, G, gamma0));
  hypergrad::HyperparameterDirections<hypergrad::MomentumRule> directions(T, layout);
  directions.addScheduleGroups("learningRates");
  hypergrad::RealTimeOptions rto;
  rto.metaLearningRate = o.metaStep;
  rto.interval = o.interval;
  const auto f = objective(o.seed);
  const hypergrad::RealTimeResult rtho = hypergrad::realTimeHyperparameters(prototype, f, valid, directions, initial(o.seed), rto);
  const double budget = secondsSince(t0);
  std::printf("RTHO: one run, %zu updates, %ld Hessian-vector products, %.1f s; its own final validation loss %.4f\n",
              rtho.iterations.size(), long(rtho.hessianProducts), budget, rtho.finalMetaObjective);

  // (b) Offline: gradient descent on constant per-group α over whole runs, exact hypergradients,
  // a fresh seed per run, until the same wall time is spent.
  VectorXd alpha = VectorXd::Constant(G, alpha0);
  std::vector<double> offlineSeconds{0.0}, offlineValid{valid.value(initial(o.seed))};
  std::ofstream csv((fs::path(o.out) / "log.csv").string());
  csv << "method,run_or_update,seconds,validation_loss";
  for (Index k = 0; k < G; ++k) csv << ",alpha_" << layout.group(k).name;
  csv << "\n";
  const auto t1 = std::chrono::steady_clock::now();
  Index runs = 0;
  while (secondsSince(t1) < budget) {
    hypergrad::SgdMomentum<> opt(layout, hypergrad::Schedule::perGroup(T, alpha), hypergrad::Schedule::constant(T, G, gamma0));
    const auto fk = objective(o.seed + 1 + std::uint64_t(runs));
    const hypergrad::Hypergradients hg = hypergrad::computeHypergradients(opt, fk, valid, initial(o.seed + 1 + std::uint64_t(runs)));
    alpha -= o.metaStep * hg.learningRates.colwise().sum().transpose();
    ++runs;
    offlineSeconds.push_back(secondsSince(t1));
    offlineValid.push_back(hg.metaObjective);
    csv << "offline," << runs << "," << offlineSeconds.back() << "," << hg.metaObjective;
    for (Index k = 0; k < G; ++k) csv << "," << alpha(k);
    csv << "\n";
  }
  for (std::size_t u = 0; u < rtho.iterations.size(); ++u) {
    csv << "rtho," << rtho.iterations[u] << ",," << rtho.metaObjective[u];
    for (Index k = 0; k < G; ++k) csv << "," << alpha0 + rtho.trajectory(Index(u), k);
    csv << "\n";
  }
  csv.close();
  std::printf("offline: %ld runs (train + exact reverse) in %.1f s\n", long(runs), secondsSince(t1));

  // Judged on a fresh run: the initial α, RTHO's schedule as it ran, RTHO's final α held
  // constant, and the offline α.
  const MatrixXd rthoFinal = hypergrad::Schedule::perGroup(T, VectorXd::Constant(G, alpha0) + rtho.hyperparameters).values();
  const auto before = judge(MatrixXd::Constant(T, G, alpha0));
  const auto rthoSchedule = judge(rtho.schedulesUsed[0]);
  const auto rthoConstant = judge(rthoFinal);
  const auto offline = judge(hypergrad::Schedule::perGroup(T, alpha).values());
  std::printf("\non a fresh run (unseen seed):                 valid loss   test loss\n");
  std::printf("  initial alpha = %.3f                       %10.4f  %10.4f\n", alpha0, before.first, before.second);
  std::printf("  RTHO's schedule, as it ran                  %10.4f  %10.4f\n", rthoSchedule.first, rthoSchedule.second);
  std::printf("  RTHO's final alpha, held constant           %10.4f  %10.4f\n", rthoConstant.first, rthoConstant.second);
  std::printf("  offline, %3ld runs in the same time          %10.4f  %10.4f\n", long(runs), offline.first, offline.second);
  std::printf("final alpha per group, RTHO / offline:");
  for (Index k = 0; k < G; ++k) std::printf(" %.3f/%.3f", alpha0 + rtho.hyperparameters(k), alpha(k));
  std::printf("\n");

  // Pictures: validation loss against wall time; RTHO's learning rates along its run.
  {
    std::vector<double> rthoSeconds, rthoValid;
    for (std::size_t u = 0; u < rtho.iterations.size(); ++u) {
      rthoSeconds.push_back(budget * double(rtho.iterations[u]) / double(T));
      rthoValid.push_back(rtho.metaObjective[u]);
    }
    hypergrad::SvgPlot plot("Validation loss on the same wall-clock budget", "seconds",
                            "validation loss (RTHO: along its run; offline: after each run)");
    plot.addLine("RTHO (one run, alpha updated online)", rthoSeconds, rthoValid);
    plot.addLine("offline (a run + exact reverse per step of alpha)", offlineSeconds, offlineValid);
    plot.save((fs::path(o.out) / "budget.svg").string());
  }
  {
    std::vector<double> iters;
    for (Index t = 0; t < T; ++t) iters.push_back(double(t + 1));
    hypergrad::SvgPlot plot("RTHO's learning rates along its run", "training iteration t", "learning rate alpha_t");
    for (Index k = 0; k < G; ++k) {
      std::vector<double> a;
      for (Index t = 0; t < T; ++t) a.push_back(rtho.schedulesUsed[0](t, k));
      plot.addLine(layout.group(k).name, iters, a, hypergrad::LineStyle{int(k / 2), k % 2 == 1});
    }
    plot.save((fs::path(o.out) / "learning_rates.svg").string());
  }
  if (o.quick) {
    for (const char* name : {"budget.svg", "learning_rates.svg", "log.csv"}) {
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
