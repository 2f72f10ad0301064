// The hypergradient toolbox (issue 14) against the exact reverse pass on the same problem: the
// error of each approximate method, measured, not assumed.
//
//   build-bench/benchmarks/bench_toolbox --benchmark_filter=implicit/small
//
//   implicit/<wl>/T:<T>  implicitHypergradients (conjugate gradient on Hessian-vector products) at
//                        the final weights of a full-batch training run of T momentum steps,
//                        against the exact reverse pass's ∂f/∂θ of the same run. θ: per-group log
//                        L2 penalties (L2Regularized::perGroup), all λ at first (0.001 or 0.03). Counters: rel_error, cosine, the
//                        CG iterations and stop reason (0 converged, 1 iteration limit, 2 negative
//                        curvature), stationarity |∇L|/max(1,|w|), and each method's time (the
//                        exact pass's includes training).
//
// Workloads: "small", a 16-12-12-5 tanh MLP (425 weights) on 200 synthetic examples labelled by a
// linear teacher, trained on all of them every step (the implicit function theorem is about the
// minimiser of that loss), validated on 100 others; "smoke", the same at T = 20.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include <hypergrad/hypergradients/implicit.hpp>
#include <hypergrad/init.hpp>
#include <hypergrad/objectives/l2.hpp>
#include <hypergrad/objectives/mlp.hpp>
#include <hypergrad/optimizers/sgd_momentum.hpp>
#include <hypergrad/random.hpp>
#include <hypergrad/reverse.hpp>

namespace {

using Eigen::VectorXd;
using hypergrad::Index;

hypergrad::Dataset teacherData(Index examples, std::uint64_t seed) {
  const Index features = 16, classes = 5;
  hypergrad::CounterRng teacherRng(7), rng(seed);
  Eigen::MatrixXd teacher(features, classes);
  for (Index i = 0; i < teacher.size(); ++i) teacher(i) = teacherRng.normal();
  hypergrad::Dataset d;
  d.inputs.resize(examples, features);
  d.labels.resize(examples);
  d.numClasses = classes;
  for (Index j = 0; j < examples; ++j) {
    for (Index i = 0; i < features; ++i) d.inputs(j, i) = rng.uniform();
    Eigen::Index best;
    (d.inputs.row(j) * teacher).maxCoeff(&best);
    d.labels(j) = static_cast<int>(best);
  }
  return d;
}

void implicitCase(benchmark::State& state, Index T, double lambda) {
  const hypergrad::MlpArchitecture arch({16, 12, 12, 5}, hypergrad::Activation::Tanh);
  const hypergrad::ParameterLayout layout = arch.layout();
  const Index n = 200, G = layout.numGroups();
  const hypergrad::BatchSchedule everyExample = [n](Index) {
    std::vector<Index> all(static_cast<std::size_t>(n));
    std::iota(all.begin(), all.end(), Index(0));
    return all;
  };
  const auto train = hypergrad::L2Regularized<hypergrad::MlpObjective>::perGroup(
      hypergrad::MlpObjective(arch, teacherData(n, 1), everyExample), VectorXd::Constant(G, std::log(lambda)));
  const hypergrad::MlpLoss valid(arch, teacherData(100, 2));
  VectorXd fanIn(G);
  for (Index k = 0; k < G; ++k) fanIn(k) = static_cast<double>(arch.groupFanIn()[static_cast<std::size_t>(k)]);
  const VectorXd w1 = hypergrad::ScaledInit(layout, hypergrad::ScaledInit::logScalesFromFanIn(fanIn), 3).weights();

  double exactSeconds = 0.0, implicitSeconds = 0.0, error = 0.0, cosine = 0.0;
  hypergrad::ImplicitResult r;
  for (auto _ : state) {
    auto clock = std::chrono::steady_clock::now();
    hypergrad::SgdMomentum<> opt(layout, hypergrad::Schedule::constant(T, G, 0.5), hypergrad::Schedule::constant(T, G, 0.9));
    const hypergrad::Hypergradients exact = hypergrad::computeHypergradients(opt, train, valid, w1);
    exactSeconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - clock).count();
    clock = std::chrono::steady_clock::now();
    hypergrad::ImplicitOptions options;
    options.maxIterations = 5000;
    r = hypergrad::implicitHypergradients(train, valid, exact.finalWeights, options);
    implicitSeconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - clock).count();
    const VectorXd a = exact.hyperparameterBlock("l2.logLambda"), b = r.hyperparameters.tail(G);
    error = (b - a).norm() / a.norm();
    cosine = a.dot(b) / (a.norm() * b.norm());
  }
  const double runs = static_cast<double>(state.iterations());
  state.counters["rel_error"] = error;
  state.counters["cosine"] = cosine;
  state.counters["cg_iterations"] = static_cast<double>(r.iterations);
  state.counters["stop"] = r.stopReason == "converged" ? 0 : r.stopReason == "iteration limit" ? 1 : 2;
  state.counters["stationarity"] = r.stationarity;
  state.counters["exact_ms"] = 1e3 * exactSeconds / runs;
  state.counters["implicit_ms"] = 1e3 * implicitSeconds / runs;
}

void registerAll() {
  for (const char* lambda : {"0.001", "0.03"}) {
    for (const Index T : {Index(100), Index(1000), Index(10000)}) {
      benchmark::RegisterBenchmark(("implicit/small/T:" + std::to_string(T) + "/lambda:" + lambda).c_str(),
                                   [T, lambda](benchmark::State& st) { implicitCase(st, T, std::stod(lambda)); })
          ->Unit(benchmark::kMillisecond)->Iterations(1);
    }
  }
  benchmark::RegisterBenchmark("implicit/smoke/T:20", [](benchmark::State& st) { implicitCase(st, 20, 0.03); })
      ->Unit(benchmark::kMillisecond)->Iterations(1);
}

}  // namespace

int main(int argc, char** argv) {
  registerAll();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
