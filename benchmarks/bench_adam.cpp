// SPDX-License-Identifier: MIT
//
// Exactly reversible Adam (and RMSprop with momentum) on the paper's workload (bench_common.hpp:
// MLP 784-50-50-50-10, N = 44,860, minibatch 200, T = 100; T = 1000 with --hypergrad_long):
//
//  1) adam_step/interleaved/<wl>           one training step, exact Adam vs plain double Adam
//                                          (the same element code in double: ReferenceOptimizer)
//  2) adam_update/interleaved/<wl>         the update alone (given g), ns per element
//     adam_update/one-stack/<wl>, adam_hypergradients/one-stack/<wl>/T:<T>   the same with one
//                                          stack per block (withLanes(1)) instead of the default
//                                          lane layout and its AVX-512 lane path
//  3) adam_hypergradients/interleaved/<wl>/T:<T>  forward + exact reverse vs plain double training
//  4) adam_bits/<wl>/beta1:<b1>/beta2:<b2>  buffer bits per weight per step vs the entropy bound
//  (rmsprop_step/interleaved/<wl>: 1) for RMSprop with momentum.)
//
// Both sides of a ratio run in the same iteration, each timed with the thread's CPU clock; the
// "ratio" counters are the figures to quote. Targets (issue 11): step ≤ 1.10×, hypergradients ≤ 3.5×,
// bits ≤ 1.02× the bound.

#include <benchmark/benchmark.h>

#include <cmath>
#include <string>

#include <Eigen/Core>

#include <hypergrad/hypergradients.hpp>
#include <hypergrad/optimizers/adam.hpp>
#include <hypergrad/optimizers/rmsprop.hpp>
#include <hypergrad/reference/optimizer.hpp>

#include "bench_common.hpp"

namespace {

using bench::Workload;
using bench::WorkloadSpec;
using Eigen::VectorXd;
using hypergrad::Index;
using hypergrad::Schedule;

constexpr double kAlpha = 1e-3, kEps = 1e-8;

std::array<Schedule, 4> adamSchedules(const Workload& wl, Index T, double b1, double b2) {
  const Index G = wl.numGroups();
  return {Schedule::constant(T, G, kAlpha), Schedule::constant(T, G, b1), Schedule::constant(T, G, b2),
          Schedule::constant(T, G, kEps)};
}

/// The double twin of an exact optimizer: the same rule in reference arithmetic, on the values
/// the exact one uses.
template <class Rule, class Exact>
hypergrad::ReferenceOptimizer<Rule> doubleTwin(const Exact& exact) {
  std::array<Schedule, 4> used;
  for (Index j = 0; j < 4; ++j) used[static_cast<std::size_t>(j)] = Schedule(exact.scheduleValues(j));
  return hypergrad::ReferenceOptimizer<Rule>(exact.layout(), used);
}

/// Adam (β1, β2) or RMSprop (μ, ρ): both rules take α, two ratios and ε.
template <class Rule, class Exact>
void stepInterleaved(benchmark::State& state, const WorkloadSpec& spec, double ratio1, double ratio2) {
  const Workload& wl = bench::workload(spec);
  const Index T = spec.steps;
  Exact exact(wl.layout, adamSchedules(wl, T, ratio1, ratio2));
  auto plain = doubleTwin<Rule>(exact);
  bench::setStepRatio(state, bench::interleavedSteps(state, exact, plain, wl.w1, [&](auto& opt) { opt.step(wl.train); }),
                      1.10);
}

// `lanes`: 0 (the library's default: the lane layout and its AVX-512 lane path here) or 1 (one
// stack per block).
void updateInterleaved(benchmark::State& state, const WorkloadSpec& spec, int lanes = 0) {
  const Workload& wl = bench::workload(spec);
  const Index T = spec.steps, n = wl.size();
  hypergrad::ReversibleAdam<> exact(wl.layout, adamSchedules(wl, T, 0.9, 0.999), hypergrad::OptimizerOptions().withLanes(lanes));
  auto plain = doubleTwin<hypergrad::AdamRule>(exact);
  VectorXd g;
  wl.train.gradient(wl.w1, 0, g);
  const auto [exactSeconds, doubleSeconds] =
      bench::interleavedSteps(state, exact, plain, wl.w1, [&](auto& opt) { opt.stepWithGradient(g); });
  const double elements = static_cast<double>(state.iterations()) * static_cast<double>(n);
  state.counters["exact_ns_per_element"] = 1e9 * exactSeconds / elements;
  state.counters["double_ns_per_element"] = 1e9 * doubleSeconds / elements;
  state.counters["ratio"] = exactSeconds / doubleSeconds;
}

void hypergradientsInterleaved(benchmark::State& state, const WorkloadSpec& spec, Index T, int lanes = 0) {
  const Workload& wl = bench::workload(spec);
  hypergrad::ReversibleAdam<> exact(wl.layout, adamSchedules(wl, T, 0.9, 0.999), hypergrad::OptimizerOptions().withLanes(lanes));
  auto plain = doubleTwin<hypergrad::AdamRule>(exact);
  double forwardS = 0.0, reverseS = 0.0, doubleS = 0.0;
  for (auto _ : state) {
    const double t0 = bench::threadSeconds();
    exact.start(wl.w1);
    hypergrad::train(exact, wl.train);
    const double t1 = bench::threadSeconds();
    const hypergrad::AdamHypergradients hg = hypergrad::reverse(exact, wl.train, wl.validation);  // checks exactness
    benchmark::DoNotOptimize(hg.learningRates.data());
    const double t2 = bench::threadSeconds();
    plain.start(wl.w1);
    hypergrad::train(plain, wl.train);
    benchmark::DoNotOptimize(plain.weights().data());
    const double t3 = bench::threadSeconds();
    forwardS += t1 - t0;
    reverseS += t2 - t1;
    doubleS += t3 - t2;
  }
  const auto iters = static_cast<double>(state.iterations());
  state.counters["exact_forward_s"] = forwardS / iters;
  state.counters["exact_reverse_s"] = reverseS / iters;
  state.counters["double_train_s"] = doubleS / iters;
  state.counters["ratio_vs_double_train"] = (forwardS + reverseS) / doubleS;
  state.counters["target_ratio_max"] = 3.5;
}

void bufferBits(benchmark::State& state, const WorkloadSpec& spec, double b1, double b2) {
  const Workload& wl = bench::workload(spec);
  const Index T = spec.steps;
  hypergrad::ReversibleAdam<> opt(wl.layout, adamSchedules(wl, T, b1, b2));
  for (auto _ : state) {
    opt.start(wl.w1);
    hypergrad::train(opt, wl.train);
  }
  const double bound = -std::log2(opt.quantizedBeta1()(0, 0)) - std::log2(opt.quantizedBeta2()(0, 0));
  const double perStep = opt.buffer().informationBits() / (static_cast<double>(wl.size()) * static_cast<double>(T));
  state.counters["bits_per_weight_step"] = perStep;
  state.counters["bound"] = bound;
  state.counters["ratio_to_bound"] = perStep / bound;
  state.counters["target_ratio_max"] = 1.02;
}

void registerAll(bool longCases) {
  for (const WorkloadSpec& spec : {bench::mnistSpec(), bench::smokeSpec()}) {
    const bool smoke = spec.name == "smoke";
    const std::string wl = "/" + spec.name;
    const auto ms = benchmark::kMillisecond;
    const Index T = spec.steps;
    benchmark::RegisterBenchmark(("adam_step/interleaved" + wl).c_str(), [spec](benchmark::State& st) {
      stepInterleaved<hypergrad::AdamRule, hypergrad::ReversibleAdam<>>(st, spec, 0.9, 0.999);
    })->Unit(ms)->MinTime(smoke ? 0.01 : 2.0);
    benchmark::RegisterBenchmark(("rmsprop_step/interleaved" + wl).c_str(), [spec](benchmark::State& st) {
      stepInterleaved<hypergrad::RmspropRule, hypergrad::ReversibleRmsprop<>>(st, spec, 0.9, 0.99);
    })->Unit(ms)->MinTime(smoke ? 0.01 : 2.0);
    benchmark::RegisterBenchmark(("adam_update/interleaved" + wl).c_str(),
                                 [spec](benchmark::State& st) { updateInterleaved(st, spec); })
        ->Unit(benchmark::kMicrosecond)->MinTime(smoke ? 0.01 : 1.0);
    benchmark::RegisterBenchmark(("adam_hypergradients/interleaved" + wl + "/T:" + std::to_string(T)).c_str(),
                                 [spec, T](benchmark::State& st) { hypergradientsInterleaved(st, spec, T); })
        ->Unit(ms)->Iterations(smoke ? 1 : 3);
    benchmark::RegisterBenchmark(("adam_update/one-stack" + wl).c_str(),
                                 [spec](benchmark::State& st) { updateInterleaved(st, spec, 1); })
        ->Unit(benchmark::kMicrosecond)->MinTime(smoke ? 0.01 : 1.0);
    benchmark::RegisterBenchmark(("adam_hypergradients/one-stack" + wl + "/T:" + std::to_string(T)).c_str(),
                                 [spec, T](benchmark::State& st) { hypergradientsInterleaved(st, spec, T, 1); })
        ->Unit(ms)->Iterations(smoke ? 1 : 3);
    if (longCases && !smoke) {
      benchmark::RegisterBenchmark(("adam_hypergradients/interleaved" + wl + "/T:1000").c_str(),
                                   [spec](benchmark::State& st) { hypergradientsInterleaved(st, spec, 1000); })
          ->Unit(ms)->Iterations(1);
    }
    for (const auto& b : {std::pair<double, double>{0.9, 0.999}, std::pair<double, double>{0.8, 0.99}}) {
      if (smoke && b.first != 0.9) continue;
      const std::string name = "adam_bits" + wl + "/beta1:" + std::to_string(b.first).substr(0, 3) +
                               "/beta2:" + std::to_string(b.second).substr(0, 5);
      benchmark::RegisterBenchmark(name.c_str(), [spec, b](benchmark::State& st) { bufferBits(st, spec, b.first, b.second); })
          ->Unit(ms)->Iterations(1);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  return bench::runBenchmarks(argc, argv, registerAll);
}
