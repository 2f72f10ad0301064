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
//   build-bench/benchmarks/bench_toolbox --benchmark_filter=methods/mnist
//
//   methods/<wl>/H:<H>/T:<T>/<method>  one hypergradient of the validation loss along H
//                        hyperparameters by hypergradients(method, ...) on the paper's workload
//                        (bench_common.hpp: 784-50-50-50-10, batch 200, alpha 0.1, gamma 0.9) with
//                        a per-weight L2 penalty (lambda = 1e-4): H = 8 (log lambda per layer
//                        group), 800 (the learning rate in 100 blocks of T/100 iterations per
//                        group) or 7840 (log lambda of 7,840 single weights). Counters: ms (training
//                        included), MB (the method's own storage: buffer, tangents, checkpoints, CG
//                        vectors), hvps, rel_error against the exact reverse pass of the same run
//                        (the reverse case runs first and is the reference; forward and truncated run
//                        on the same exact trajectory, checkpointed over FloorRounding — a trajectory
//                        that differs in the last bits). Infeasible cells are not run (README: projected).
//
// Workloads: "small", a 16-12-12-5 tanh MLP (425 weights) on 200 synthetic examples labelled by a
// linear teacher, trained on all of them every step (the implicit function theorem is about the
// minimiser of that loss), validated on 100 others (bench::uncentredTeacherData); "smoke", the same at T = 20.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cmath>
#include <map>
#include <numeric>
#include <string>
#include <vector>

#include <hypergrad/hypergradients/implicit.hpp>
#include <hypergrad/hypergradients/toolbox.hpp>
#include <hypergrad/optimizers/checkpointed.hpp>
#include <hypergrad/init.hpp>
#include <hypergrad/objectives/l2.hpp>
#include <hypergrad/objectives/mlp.hpp>
#include <hypergrad/optimizers/sgd_momentum.hpp>
#include <hypergrad/random.hpp>
#include <hypergrad/reverse.hpp>

#include "bench_common.hpp"

namespace {

using Eigen::VectorXd;
using hypergrad::Index;

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
      hypergrad::MlpObjective(arch, bench::uncentredTeacherData(n, 16, 5, 7, 1), everyExample), VectorXd::Constant(G, std::log(lambda)));
  const hypergrad::MlpLoss valid(arch, bench::uncentredTeacherData(100, 16, 5, 7, 2));
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

// ---- The methods side by side on the paper's workload -----------------------------------------

using PerWeightL2 = hypergrad::L2Regularized<hypergrad::MlpObjective>;
using Directions = hypergrad::HyperparameterDirections<hypergrad::MomentumRule>;

// The training objective with a per-weight L2 penalty over the workload's minibatches (or the
// whole training set: the implicit solve's objective).
PerWeightL2 l2Objective(const bench::Workload& wl, Index batchSize) {
  return PerWeightL2::perWeight(wl.objectiveWithBatch(batchSize), VectorXd::Constant(wl.size(), std::log(1e-4)));
}

Directions methodDirections(const bench::Workload& wl, const PerWeightL2& f, Index H, Index T) {
  Directions d(T, wl.layout, f.numHyperparameters());
  const Index G = wl.numGroups();
  if (H == 8) {
    for (Index k = 0; k < G; ++k) {
      VectorXd tangent = VectorXd::Zero(f.numHyperparameters());
      tangent.segment(wl.layout.group(k).offset, wl.layout.group(k).size).setOnes();
      d.addHyperparameterDirection(tangent, "logLambda[" + wl.layout.group(k).name + "]");
    }
  } else if (H == 800) {
    const Index blocks = 100, per = std::max<Index>(1, T / blocks);
    for (Index b = 0; b < blocks; ++b)
      for (Index k = 0; k < G; ++k) {
        Eigen::MatrixXd tangent = Eigen::MatrixXd::Zero(T, G);
        tangent.block(b * per, k, std::min(per, T - b * per), 1).setOnes();
        d.addSchedule("learningRates", tangent, "alpha block " + std::to_string(b) + " " + wl.layout.group(k).name);
      }
  } else {
    d.addHyperparameters(0, H);
  }
  return d;
}

enum class Method { Reverse, Forward, Truncated, Checkpointed, Implicit };
const char* methodName(Method m) {
  switch (m) {
    case Method::Reverse: return "reverse";
    case Method::Forward: return "forward";
    case Method::Truncated: return "truncated_K10";
    case Method::Checkpointed: return "checkpointed";
    case Method::Implicit: return "implicit";
  }
  return "";
}

void methodCase(benchmark::State& state, const bench::WorkloadSpec& spec, Index H, Index T, Method method) {
  const bench::Workload& wl = bench::workload(spec);
  const PerWeightL2 f = l2Objective(wl, wl.spec.batchSize);
  const Directions d = methodDirections(wl, f, H, T);
  static std::map<std::string, VectorXd> exact;  // the reverse case's values, per (workload, H, T)
  const std::string key = spec.name + "/" + std::to_string(H) + "/" + std::to_string(T);
  hypergrad::DirectionalHypergradients r;
  for (auto _ : state) {
    hypergrad::SgdMomentum<> opt(wl.layout, wl.alphas(T), wl.gammas(T, wl.spec.gamma));
    opt.start(wl.w1);
    switch (method) {
      case Method::Reverse: r = hypergrad::hypergradients(hypergrad::method::Reverse{}, opt, f, wl.validation, d); break;
      case Method::Forward: r = hypergrad::hypergradients(hypergrad::method::Forward{}, opt, f, wl.validation, d); break;
      case Method::Truncated:
        r = hypergrad::hypergradients(hypergrad::method::Truncated{std::min<Index>(10, T)}, opt, f, wl.validation, d);
        break;
      case Method::Checkpointed: {
        using Floor = hypergrad::SgdMomentum<hypergrad::FixedFormat<52>, hypergrad::FloorRounding>;
        hypergrad::CheckpointedOptimizer<Floor> ck(Floor(wl.layout, wl.alphas(T), wl.gammas(T, wl.spec.gamma)));
        ck.start(wl.w1);
        r = hypergrad::hypergradients(hypergrad::method::Reverse{}, ck, f, wl.validation, d);
        // The checkpoints and the cached segment, plus the inner optimizer's buffer (one segment's).
        r.memoryBytes = ck.peakMemoryBytes() + ck.inner().buffer().memoryBytes();
        break;
      }
      case Method::Implicit: {
        // Trained on minibatches; the implicit function theorem at the final weights of the
        // whole training loss (every example), as HOAG applies it.
        const PerWeightL2 full = l2Objective(wl, wl.spec.numExamples);
        const auto clock = std::chrono::steady_clock::now();
        hypergrad::train(opt, f);
        hypergrad::ImplicitOptions options;
        options.tolerance = 1e-6;
        options.maxIterations = 300;
        const hypergrad::ImplicitResult ir = hypergrad::implicitHypergradients(full, wl.validation, opt.weights(), options);
        r.values = d.projectTheta(ir.hyperparameters);
        r.hessianProducts = ir.iterations;
        r.memoryBytes = 5 * sizeof(double) * static_cast<std::size_t>(wl.size());
        r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - clock).count();
        state.counters["stationarity"] = ir.stationarity;
        state.counters["cg_converged"] = ir.converged ? 1 : 0;
        break;
      }
    }
  }
  if (method == Method::Reverse) exact[key] = r.values;
  state.counters["ms"] = 1e3 * r.seconds;
  state.counters["MB"] = static_cast<double>(r.memoryBytes) / 1e6;
  state.counters["hvps"] = static_cast<double>(r.hessianProducts);
  const auto it = exact.find(key);
  if (it != exact.end()) state.counters["rel_error"] = (r.values - it->second).norm() / it->second.norm();
}

void registerMethods(const bench::WorkloadSpec& spec, const std::vector<Index>& Ts, bool longCases) {
  for (const Index H : {Index(8), Index(800), Index(7840)}) {
    for (const Index T : Ts) {
      for (const Method m : {Method::Reverse, Method::Forward, Method::Truncated, Method::Checkpointed, Method::Implicit}) {
        if (H == 800 && m == Method::Implicit) continue;  // a learning rate has no implicit hypergradient
        const bool small = spec.name == "smoke";
        if (!small && m == Method::Forward && (H > 800 || (H == 800 && T > 100) || (T > 1000 && !longCases)))
          continue;  // H HVPs per step: measured where it fits the time and memory (README projects the rest)
        if (!small && T > 1000 && !longCases) continue;
        if (small && H > 8) continue;
        const std::string name = "methods/" + spec.name + "/H:" + std::to_string(H) + "/T:" + std::to_string(T) + "/" + methodName(m);
        benchmark::RegisterBenchmark(name.c_str(), [spec, H, T, m](benchmark::State& st) { methodCase(st, spec, H, T, m); })
            ->Unit(benchmark::kMillisecond)
            ->Iterations(1);
      }
    }
  }
}

void registerAll(bool longCases) {
  registerMethods(bench::mnistSpec(), {100, 1000, 10000}, longCases);
  registerMethods(bench::smokeSpec(), {10}, false);
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

int main(int argc, char** argv) { return bench::runBenchmarks(argc, argv, registerAll); }
