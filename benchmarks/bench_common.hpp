// SPDX-License-Identifier: MIT
#pragma once

// Shared pieces of the benchmark binaries: the MNIST-shaped synthetic workload (no download),
// plain double baselines (the momentum rule on the reference arithmetic, and the library's
// reverse pass over a stored trajectory), a
// thread-CPU-time stopwatch for interleaved ratio measurements, and the "--hypergrad_long" flag.

#include <benchmark/benchmark.h>

#include <time.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include <hypergrad/batches.hpp>
#include <hypergrad/init.hpp>
#include <hypergrad/layout.hpp>
#include <hypergrad/objectives/mlp.hpp>
#include <hypergrad/optimizers/momentum.hpp>
#include <hypergrad/random.hpp>
#include <hypergrad/reference/optimizer.hpp>
#include <hypergrad/reverse.hpp>
#include <hypergrad/schedule.hpp>

namespace bench {

using Eigen::MatrixXd;
using Eigen::VectorXd;
using hypergrad::Index;

// ---- Timing -----------------------------------------------------------------------------------

/// CPU seconds consumed by the calling thread. Other agents' load on a shared machine inflates
/// wall time but much less the CPU time of a single-threaded computation, so the interleaved
/// ratio benchmarks time each side with this.
inline double threadSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

/// Times two optimizers in the same benchmark iteration, each with the thread CPU clock:
/// `step(exact)`, then `step(plain)`, both restarted at w1 when the schedules run out, so both sides
/// see the same t and the same load. Returns the total seconds of each (the interleaved ratios).
template <class Exact, class Plain, class Step>
std::pair<double, double> interleavedSteps(benchmark::State& state, Exact& exact, Plain& plain,
                                           const Eigen::VectorXd& w1, Step&& step) {
  double exactSeconds = 0.0, plainSeconds = 0.0;
  exact.start(w1);
  plain.start(w1);
  for (auto _ : state) {
    if (exact.iteration() == exact.numIterations()) {
      exact.start(w1);
      plain.start(w1);
    }
    const double t0 = threadSeconds();
    step(exact);
    const double t1 = threadSeconds();
    step(plain);
    const double t2 = threadSeconds();
    exactSeconds += t1 - t0;
    plainSeconds += t2 - t1;
  }
  return {exactSeconds, plainSeconds};
}

/// The counters of a per-step ratio: exact_ms, double_ms, ratio, and the target beside it.
inline void setStepRatio(benchmark::State& state, const std::pair<double, double>& seconds, double target) {
  const auto iters = static_cast<double>(state.iterations());
  state.counters["exact_ms"] = 1e3 * seconds.first / iters;
  state.counters["double_ms"] = 1e3 * seconds.second / iters;
  state.counters["ratio"] = seconds.first / seconds.second;
  state.counters["target_ratio_max"] = target;
}

/// CPU seconds consumed by all threads of the process.
inline double processSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

/// Wall-clock seconds (for multi-threaded sections).
inline double wallSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// ---- Command line -------------------------------------------------------------------------------

/// A number field `"key":value` (or `"key": value`) of a JSON text (NaN when absent): enough to
/// read back Google Benchmark's --benchmark_out entries and benchmarks/torch's JSON lines.
inline double jsonNumber(const std::string& text, const std::string& key) {
  const std::string tag = "\"" + key + "\":";
  const std::size_t at = text.find(tag);
  return at == std::string::npos ? std::nan("") : std::strtod(text.c_str() + at + tag.size(), nullptr);
}

/// Removes "--hypergrad_long" from argv (before benchmark::Initialize sees it) and says whether
/// it was there: it registers the long cases (T = 1000 hypergradients, T = 10000 memory).
inline bool takeLongFlag(int& argc, char** argv) {
  bool found = false;
  int out = 1;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--hypergrad_long") == 0) found = true;
    else argv[out++] = argv[i];
  }
  argc = out;
  return found;
}

/// The main() of every benchmark binary: takes "--hypergrad_long", registers the cases
/// (`registerAll(longCases)`), then runs Google Benchmark on the remaining arguments.
template <class Register>
int runBenchmarks(int argc, char** argv, Register&& registerAll) {
  const bool longCases = takeLongFlag(argc, argv);
  registerAll(longCases);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

// ---- Workload -----------------------------------------------------------------------------------

/// Shape of an MLP training workload.
struct WorkloadSpec {
  std::string name;           ///< appears in benchmark names ("mnist", "smoke")
  std::vector<Index> sizes;   ///< layer sizes
  Index numExamples;          ///< training examples
  Index numValidation;        ///< validation examples (meta objective)
  Index batchSize;            ///< minibatch
  Index steps;                ///< T of the standard run
  double alpha;               ///< learning rate
  double gamma;               ///< momentum
  std::uint64_t seed;
};

/// The paper's workload (DESIGN.md §7) on synthetic data of MNIST shape:
/// MLP 784-50-50-50-10 (N = 44,860), 10,000 examples, minibatch 200, γ = 0.9, α = 0.1, T = 100.
inline WorkloadSpec mnistSpec() { return {"mnist", {784, 50, 50, 50, 10}, 10000, 1000, 200, 100, 0.1, 0.9, 20150101}; }

/// A tiny workload with the same code paths, for the ctest smoke pass.
inline WorkloadSpec smokeSpec() { return {"smoke", {64, 16, 16, 10}, 400, 100, 20, 10, 0.1, 0.9, 7}; }

/// Synthetic classification data: pixels uniform in [0, 1], label = argmax_c (x − ½)ᵀ teacher_c
/// for a random linear teacher shared by the training and validation sets.
inline hypergrad::Dataset syntheticData(Index numExamples, Index numFeatures, Index numClasses, const MatrixXd& teacher,
                                        std::uint64_t seed) {
  hypergrad::Dataset data;
  data.numClasses = numClasses;
  data.inputs.resize(numExamples, numFeatures);
  data.labels.resize(numExamples);
  hypergrad::CounterRng rng(seed, 0xda7a);
  for (Index j = 0; j < numFeatures; ++j)
    for (Index k = 0; k < numExamples; ++k) data.inputs(k, j) = rng.uniform();
  const MatrixXd scores = (data.inputs.array() - 0.5).matrix() * teacher;
  for (Index k = 0; k < numExamples; ++k) {
    Index best = 0;
    scores.row(k).maxCoeff(&best);
    data.labels(k) = static_cast<int>(best);
  }
  return data;
}

/// Synthetic classification data without the centring of syntheticData: inputs uniform in [0, 1],
/// label = argmax_c xᵀ teacher_c, the teacher standard normal from `teacherSeed` (bench_toolbox's
/// small workload: an MLP trained on it to a positive-definite Hessian at strong enough L2).
inline hypergrad::Dataset uncentredTeacherData(Index numExamples, Index numFeatures, Index numClasses,
                                               std::uint64_t teacherSeed, std::uint64_t seed) {
  hypergrad::CounterRng teacherRng(teacherSeed), rng(seed);
  MatrixXd teacher(numFeatures, numClasses);
  for (Index i = 0; i < teacher.size(); ++i) teacher(i) = teacherRng.normal();
  hypergrad::Dataset d;
  d.inputs.resize(numExamples, numFeatures);
  d.labels.resize(numExamples);
  d.numClasses = numClasses;
  for (Index j = 0; j < numExamples; ++j) {
    for (Index i = 0; i < numFeatures; ++i) d.inputs(j, i) = rng.uniform();
    Eigen::Index best;
    (d.inputs.row(j) * teacher).maxCoeff(&best);
    d.labels(j) = static_cast<int>(best);
  }
  return d;
}

/// Everything a training run needs: objective (training loss), meta objective (validation
/// loss), layout, initial weights (1/√fan-in scales) and constant schedules.
struct Workload {
  WorkloadSpec spec;
  hypergrad::MlpArchitecture arch;
  hypergrad::ParameterLayout layout;
  hypergrad::MlpObjective train;
  hypergrad::MlpLoss validation;
  VectorXd w1;

  explicit Workload(WorkloadSpec s) : Workload(s, makeTeacher(s)) {}

  Index size() const { return layout.size(); }
  Index numGroups() const { return layout.numGroups(); }

  hypergrad::Schedule alphas(Index T) const { return hypergrad::Schedule::constant(T, numGroups(), spec.alpha); }
  hypergrad::Schedule gammas(Index T, double gamma) const { return hypergrad::Schedule::constant(T, numGroups(), gamma); }

  /// The same objective with another minibatch size (the long memory case uses a small one).
  hypergrad::MlpObjective objectiveWithBatch(Index batchSize) const {
    return hypergrad::MlpObjective(arch, train.sharedData(),  // the same data, not a copy
                                   hypergrad::SeededBatches(spec.seed + 1, spec.numExamples, batchSize));
  }

 private:
  static MatrixXd makeTeacher(const WorkloadSpec& s) {
    hypergrad::CounterRng rng(s.seed, 0x7eac);
    MatrixXd t(s.sizes.front(), s.sizes.back());
    for (Index i = 0; i < t.size(); ++i) t.data()[i] = rng.normal();
    return t;
  }

  Workload(WorkloadSpec s, const MatrixXd& teacher)
      : spec(std::move(s)),
        arch(spec.sizes, hypergrad::Activation::Tanh),
        layout(arch.layout()),
        train(arch, syntheticData(spec.numExamples, spec.sizes.front(), spec.sizes.back(), teacher, spec.seed + 2),
              hypergrad::SeededBatches(spec.seed + 1, spec.numExamples, spec.batchSize)),
        validation(arch, syntheticData(spec.numValidation, spec.sizes.front(), spec.sizes.back(), teacher, spec.seed + 3)) {
    const std::vector<Index> fanIn = arch.groupFanIn();
    VectorXd f(static_cast<Index>(fanIn.size()));
    for (std::size_t k = 0; k < fanIn.size(); ++k) f(static_cast<Index>(k)) = static_cast<double>(fanIn[k]);
    w1 = hypergrad::ScaledInit(layout, hypergrad::ScaledInit::logScalesFromFanIn(f), spec.seed + 4).weights();
  }
};

/// One workload object per spec name, built on first use (the 10k × 784 data set takes a while).
inline const Workload& workload(const WorkloadSpec& spec) {
  static std::vector<std::unique_ptr<Workload>> cache;
  for (const auto& w : cache)
    if (w->spec.name == spec.name) return *w;
  cache.push_back(std::make_unique<Workload>(spec));
  return *cache.back();
}

// ---- Plain double baselines ----------------------------------------------------------------------

/// SGD with momentum in plain double arithmetic, per-group α and γ: the library's momentum rule
/// on the reference arithmetic (the same element code as the exact optimizer, on doubles).
using DoubleMomentum = hypergrad::ReferenceOptimizer<hypergrad::MomentumRule>;

inline DoubleMomentum doubleMomentum(const hypergrad::ParameterLayout& layout, const MatrixXd& alpha,
                                     const MatrixXd& gamma,
                                     hypergrad::TrajectoryStorage storage = hypergrad::TrajectoryStorage::Discard) {
  return DoubleMomentum(layout, hypergrad::Schedule(alpha), hypergrad::Schedule(gamma), storage);
}

/// The store-the-trajectory baseline: a plain double forward pass that keeps w_t and v_t for
/// every t, then the library's reverse() over the stored states (the same adjoint code, no exact
/// arithmetic, no information buffer). Its trajectory memory is 2·8·N·T bytes.
struct StoredTrajectoryResult {
  MatrixXd learningRates, momenta;
  VectorXd initialWeights;
  double metaObjective = 0.0;
  std::size_t trajectoryBytes = 0;
};

template <class Objective, class Meta>
StoredTrajectoryResult storedTrajectoryHypergradients(const Objective& f, const Meta& meta,
                                                      const hypergrad::ParameterLayout& layout, const MatrixXd& alpha,
                                                      const MatrixXd& gamma, const VectorXd& w1) {
  DoubleMomentum opt = doubleMomentum(layout, alpha, gamma, hypergrad::TrajectoryStorage::Store);
  opt.start(w1);
  hypergrad::train(opt, f);
  StoredTrajectoryResult out;
  out.trajectoryBytes = opt.trajectoryBytes();
  const hypergrad::Hypergradients hg = hypergrad::reverse(opt, f, meta);
  out.learningRates = hg.learningRates;
  out.momenta = hg.momenta;
  out.initialWeights = hg.initialWeights;
  out.metaObjective = hg.metaObjective;
  return out;
}

/// Largest |a − b| / max(|a|, |b|, floor) over two matrices of the same shape.
inline double maxRelativeDifference(const MatrixXd& a, const MatrixXd& b, double floor = 1e-12) {
  double worst = 0.0;
  for (Index i = 0; i < a.size(); ++i) {
    const double x = a.data()[i], y = b.data()[i];
    worst = std::max(worst, std::fabs(x - y) / std::max({std::fabs(x), std::fabs(y), floor}));
  }
  return worst;
}

/// Bitwise equality of two double matrices (same shape, same bits).
inline bool bitIdentical(const MatrixXd& a, const MatrixXd& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(double) * static_cast<std::size_t>(a.size())) == 0;
}

}  // namespace bench
