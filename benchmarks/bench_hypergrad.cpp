// SPDX-License-Identifier: MIT
//
// Issue "Benchmarks": the paper's workload on synthetic data of MNIST shape (no download):
// MLP 784-50-50-50-10 (N = 44,860), tanh, 10,000 training examples, minibatch 200, γ = 0.9,
// α = 0.1, T = 100 (T = 1000 with --hypergrad_long). Each figure has a "smoke" twin on a tiny
// MLP that the ctest smoke pass runs.
//
//  1) train_step/{exact,double,interleaved}/<wl>    one training step, exact vs plain double
//  2) hypergradients/interleaved/<wl>/T:<T>         forward + reverse (exact) vs double training
//                                                  vs the store-the-trajectory double baseline
//     hypergradients/exact, train/double, ...       the same, timed one at a time
//     hypergradients/lanes/<wl>/T:<T>              one stack per block vs the lane layout (its
//                                                  AVX-512 lane path) vs double training
//     reverse_parts/<part>/<wl>                    per-step pieces of the reverse pass
//     hypergradients/(batch|width)/<wl>/T:100/...   how cost grows with the batch and with N
//                                                  (`--plot-growth RUN.json [PREFIX]` plots them)
//  3) buffer_bits/<policy>/<wl>/gamma:<γ>           bits per weight per step vs log2(1/γ)
//  4) memory/<wl>/gamma:0.9/T:<T>                   trajectory memory, exact vs stored
//  (5, threads, is bench_threads.)
//  6) gemm/<kernel>/<scalar>/<shape>                the MLP's exact-order GEMM kernels (portable,
//                                                  AVX2, AVX-512) on the shard products, GFLOP/s
//
// The *interleaved* benchmarks run both sides of a ratio in the same iteration and time each
// with the thread's CPU clock, so load from other processes on a shared machine affects both
// alike; their "ratio" counters are the figures to quote.

#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include <Eigen/Core>

#include <hypergrad/exact.hpp>
#include <hypergrad/io/svg.hpp>
#include <hypergrad/objectives/mlp/gemm.hpp>
#include <hypergrad/optimizers/sgd_momentum.hpp>
#include <hypergrad/reverse.hpp>

#include "bench_common.hpp"

namespace {

using bench::Workload;
using bench::WorkloadSpec;
using Eigen::MatrixXd;
using Eigen::VectorXd;
using hypergrad::Index;

template <class Rounding>
using Sgd = hypergrad::SgdMomentum<hypergrad::FixedFormat<52>, Rounding>;
using ExactSgd = Sgd<hypergrad::BitsBackRounding>;

std::string gammaName(double g) {
  std::string s = std::to_string(g);
  while (s.back() == '0') s.pop_back();
  return s;
}

// `lanes`: 0 the library's default (the lane layout for these block sizes), 1 one stack per block.
ExactSgd exactOptimizer(const Workload& wl, Index T, double gamma, int lanes = 0) {
  return ExactSgd(wl.layout, wl.alphas(T), wl.gammas(T, gamma), hypergrad::OptimizerOptions().withLanes(lanes));
}

bench::DoubleMomentum doubleOptimizer(const Workload& wl, Index T, const ExactSgd& twin) {
  return bench::doubleMomentum(wl.layout, wl.alphas(T).values(), twin.quantizedMomenta());
}

// ---- 1) One training step -----------------------------------------------------------------------

void trainStepExact(benchmark::State& state, const WorkloadSpec& spec) {
  const Workload& wl = bench::workload(spec);
  const Index T = spec.steps;
  ExactSgd opt = exactOptimizer(wl, T, spec.gamma);
  opt.start(wl.w1);
  for (auto _ : state) {
    if (opt.iteration() == T) {
      state.PauseTiming();
      opt.start(wl.w1);
      state.ResumeTiming();
    }
    opt.step(wl.train);
  }
  state.SetItemsProcessed(state.iterations() * wl.size());
}

void trainStepDouble(benchmark::State& state, const WorkloadSpec& spec) {
  const Workload& wl = bench::workload(spec);
  const Index T = spec.steps;
  const ExactSgd twin = exactOptimizer(wl, T, spec.gamma);
  bench::DoubleMomentum opt = doubleOptimizer(wl, T, twin);
  opt.start(wl.w1);
  for (auto _ : state) {
    if (opt.iteration() == T) {
      state.PauseTiming();
      opt.start(wl.w1);
      state.ResumeTiming();
    }
    opt.step(wl.train);
  }
  benchmark::DoNotOptimize(opt.weights().data());
  state.SetItemsProcessed(state.iterations() * wl.size());
}

/// Both steps at the same t in every iteration, each timed with the thread CPU clock.
void trainStepInterleaved(benchmark::State& state, const WorkloadSpec& spec) {
  const Workload& wl = bench::workload(spec);
  const Index T = spec.steps;
  ExactSgd exact = exactOptimizer(wl, T, spec.gamma);
  bench::DoubleMomentum plain = doubleOptimizer(wl, T, exact);
  bench::setStepRatio(state, bench::interleavedSteps(state, exact, plain, wl.w1, [&](auto& opt) { opt.step(wl.train); }),
                      1.10);
}

// ---- 2) Hypergradient cost ------------------------------------------------------------------------

/// Exact forward + reverse, double training and the stored-trajectory baseline of the same run,
/// in the same iteration, each timed with the thread CPU clock.
/// The exact hypergradient with the MLP computed in float (MlpObjectiveFloat) against the same with
/// double, in the same iteration: time ratio, and the agreement of dα, dγ and dw₁ (different
/// recurrences: the float-computed gradient differs by float rounding).
void hypergradientsFloat32(benchmark::State& state, const WorkloadSpec& spec, Index T) {
  const Workload& wl = bench::workload(spec);
  const hypergrad::MlpObjectiveFloat train32(wl.arch, wl.train.data(), wl.train.batches());
  ExactSgd exact = exactOptimizer(wl, T, spec.gamma);
  double s64 = 0.0, s32 = 0.0, dAlpha = 0.0, dGamma = 0.0, dW = 0.0;
  for (auto _ : state) {
    const double t0 = bench::threadSeconds();
    const hypergrad::Hypergradients hg64 = hypergrad::computeHypergradients(exact, wl.train, wl.validation, wl.w1);
    const double t1 = bench::threadSeconds();
    const hypergrad::Hypergradients hg32 = hypergrad::computeHypergradients(exact, train32, wl.validation, wl.w1);
    const double t2 = bench::threadSeconds();
    s64 += t1 - t0;
    s32 += t2 - t1;
    dAlpha = (hg32.learningRates - hg64.learningRates).norm() / hg64.learningRates.norm();
    dGamma = (hg32.momenta - hg64.momenta).norm() / hg64.momenta.norm();
    dW = (hg32.initialWeights - hg64.initialWeights).norm() / hg64.initialWeights.norm();
  }
  const auto iters = static_cast<double>(state.iterations());
  state.counters["float64_s"] = s64 / iters;
  state.counters["float32_s"] = s32 / iters;
  state.counters["ratio_float32_vs_float64"] = s32 / s64;
  state.counters["dalpha_rel_norm_diff"] = dAlpha;
  state.counters["dgamma_rel_norm_diff"] = dGamma;
  state.counters["dw1_rel_norm_diff"] = dW;
}

void hypergradientsInterleaved(benchmark::State& state, const WorkloadSpec& spec, Index T, bool withStored) {
  const Workload& wl = bench::workload(spec);
  ExactSgd exact = exactOptimizer(wl, T, spec.gamma);
  bench::DoubleMomentum plain = doubleOptimizer(wl, T, exact);
  const VectorXd v1 = VectorXd::Zero(wl.size());
  double forwardS = 0.0, reverseS = 0.0, doubleS = 0.0, storedS = 0.0, diff = 0.0;
  std::size_t storedBytes = 0;
  for (auto _ : state) {
    const double t0 = bench::threadSeconds();
    exact.start(wl.w1, v1);
    hypergrad::train(exact, wl.train);
    const double t1 = bench::threadSeconds();
    const hypergrad::Hypergradients hg = hypergrad::reverse(exact, wl.train, wl.validation);  // checks exactness
    const double t2 = bench::threadSeconds();
    plain.start(wl.w1);
    hypergrad::train(plain, wl.train);
    benchmark::DoNotOptimize(plain.weights().data());
    const double t3 = bench::threadSeconds();
    forwardS += t1 - t0;
    reverseS += t2 - t1;
    doubleS += t3 - t2;
    if (withStored) {
      const bench::StoredTrajectoryResult st = bench::storedTrajectoryHypergradients(
          wl.train, wl.validation, wl.layout, wl.alphas(T).values(), exact.quantizedMomenta(), wl.w1);
      storedS += bench::threadSeconds() - t3;
      storedBytes = st.trajectoryBytes;
      diff = bench::maxRelativeDifference(hg.learningRates, st.learningRates, 1e-8);
    }
  }
  const auto iters = static_cast<double>(state.iterations());
  state.counters["exact_forward_s"] = forwardS / iters;
  state.counters["exact_reverse_s"] = reverseS / iters;
  state.counters["exact_total_s"] = (forwardS + reverseS) / iters;
  state.counters["double_train_s"] = doubleS / iters;
  state.counters["ratio_vs_double_train"] = (forwardS + reverseS) / doubleS;
  state.counters["target_ratio_max"] = 4.0;
  state.counters["reverse_ms_per_step"] = 1e3 * reverseS / (iters * static_cast<double>(T));
  state.counters["forward_ms_per_step"] = 1e3 * forwardS / (iters * static_cast<double>(T));
  if (withStored) {
    state.counters["stored_total_s"] = storedS / iters;
    state.counters["ratio_vs_stored"] = (forwardS + reverseS) / storedS;
    state.counters["stored_trajectory_bytes"] = static_cast<double>(storedBytes);
    // Exact (fixed-point trajectory) vs double trajectory: rounding-noise level (DESIGN.md §8).
    state.counters["dalpha_max_rel_diff_vs_stored"] = diff;
  }
}

// The lane layout (OptimizerOptions::lanes = 8, the AVX-512 lane path of the exact kernel where
// the processor has it) against one stack per block, and plain double training, interleaved in
// one process. The two layouts round the same run differently in the last bits (their buffers
// hold other words), so their hypergradients agree to rounding noise, not bit for bit.
void hypergradientsLanes(benchmark::State& state, const WorkloadSpec& spec, Index T) {
  const Workload& wl = bench::workload(spec);
  ExactSgd oneStack = exactOptimizer(wl, T, spec.gamma, 1), lanes = exactOptimizer(wl, T, spec.gamma, 8);
  bench::DoubleMomentum plain = doubleOptimizer(wl, T, oneStack);
  const VectorXd v1 = VectorXd::Zero(wl.size());
  double oneS = 0.0, oneRevS = 0.0, laneS = 0.0, laneRevS = 0.0, doubleS = 0.0, diff = 0.0;
  for (auto _ : state) {
    double t0 = bench::threadSeconds();
    oneStack.start(wl.w1, v1);
    hypergrad::train(oneStack, wl.train);
    double t1 = bench::threadSeconds();
    const hypergrad::Hypergradients a = hypergrad::reverse(oneStack, wl.train, wl.validation);
    double t2 = bench::threadSeconds();
    oneS += t1 - t0;
    oneRevS += t2 - t1;
    t0 = bench::threadSeconds();
    lanes.start(wl.w1, v1);
    hypergrad::train(lanes, wl.train);
    t1 = bench::threadSeconds();
    const hypergrad::Hypergradients b = hypergrad::reverse(lanes, wl.train, wl.validation);
    t2 = bench::threadSeconds();
    laneS += t1 - t0;
    laneRevS += t2 - t1;
    plain.start(wl.w1);
    hypergrad::train(plain, wl.train);
    benchmark::DoNotOptimize(plain.weights().data());
    doubleS += bench::threadSeconds() - t2;
    diff = bench::maxRelativeDifference(a.learningRates, b.learningRates, 1e-8);
  }
  const auto iters = static_cast<double>(state.iterations());
  state.counters["lane_coder_active"] = hypergrad::laneCoderActive() ? 1.0 : 0.0;
  state.counters["one_stack_forward_ms_per_step"] = 1e3 * oneS / (iters * static_cast<double>(T));
  state.counters["one_stack_reverse_ms_per_step"] = 1e3 * oneRevS / (iters * static_cast<double>(T));
  state.counters["lanes_forward_ms_per_step"] = 1e3 * laneS / (iters * static_cast<double>(T));
  state.counters["lanes_reverse_ms_per_step"] = 1e3 * laneRevS / (iters * static_cast<double>(T));
  state.counters["double_ms_per_step"] = 1e3 * doubleS / (iters * static_cast<double>(T));
  state.counters["one_stack_vs_double_train"] = (oneS + oneRevS) / doubleS;
  state.counters["lanes_vs_double_train"] = (laneS + laneRevS) / doubleS;
  state.counters["lanes_vs_one_stack"] = (laneS + laneRevS) / (oneS + oneRevS);
  state.counters["dalpha_max_rel_diff_lanes_vs_one_stack"] = diff;
}

// How cost grows with the minibatch and with N: the exact hypergradient against plain double
// training of the same objective, interleaved (the exact layer's cost is per weight, the network's
// per example and weight, so the ratio should fall as the batch grows).
void hypergradientsGrowth(benchmark::State& state, const Workload& wl, const hypergrad::MlpObjective& f, Index T) {
  const WorkloadSpec& spec = wl.spec;
  const Index batchSize = static_cast<Index>(f.batches()(0).size());
  ExactSgd exact = exactOptimizer(wl, T, spec.gamma);
  bench::DoubleMomentum plain = doubleOptimizer(wl, T, exact);
  const VectorXd v1 = VectorXd::Zero(wl.size());
  double forwardS = 0.0, reverseS = 0.0, doubleS = 0.0;
  for (auto _ : state) {
    const double t0 = bench::threadSeconds();
    exact.start(wl.w1, v1);
    hypergrad::train(exact, f);
    const double t1 = bench::threadSeconds();
    const hypergrad::Hypergradients hg = hypergrad::reverse(exact, f, wl.validation);  // checks exactness
    benchmark::DoNotOptimize(hg.learningRates.data());
    const double t2 = bench::threadSeconds();
    plain.start(wl.w1);
    hypergrad::train(plain, f);
    benchmark::DoNotOptimize(plain.weights().data());
    forwardS += t1 - t0;
    reverseS += t2 - t1;
    doubleS += bench::threadSeconds() - t2;
  }
  const auto iters = static_cast<double>(state.iterations());
  state.counters["batch_size"] = static_cast<double>(batchSize);
  state.counters["num_parameters"] = static_cast<double>(wl.size());
  state.counters["exact_total_s"] = (forwardS + reverseS) / iters;
  state.counters["double_train_s"] = doubleS / iters;
  state.counters["ratio_vs_double_train"] = (forwardS + reverseS) / doubleS;
  state.counters["forward_ms_per_step"] = 1e3 * forwardS / (iters * static_cast<double>(T));
  state.counters["reverse_ms_per_step"] = 1e3 * reverseS / (iters * static_cast<double>(T));
  state.counters["double_ms_per_step"] = 1e3 * doubleS / (iters * static_cast<double>(T));
}

void hypergradientsBatch(benchmark::State& state, const WorkloadSpec& spec, Index T, Index batchSize) {
  const Workload& wl = bench::workload(spec);
  hypergradientsGrowth(state, wl, wl.objectiveWithBatch(batchSize), T);
}

// The paper's MLP with H hidden units per layer (784-H-H-H-10), batch 200.
void hypergradientsWidth(benchmark::State& state, WorkloadSpec spec, Index T, Index hidden) {
  spec.name += "-h" + std::to_string(hidden);
  spec.sizes = {spec.sizes.front(), hidden, hidden, hidden, spec.sizes.back()};
  const Workload& wl = bench::workload(spec);
  hypergradientsGrowth(state, wl, wl.train, T);
}

void hypergradientsExact(benchmark::State& state, const WorkloadSpec& spec, Index T) {
  const Workload& wl = bench::workload(spec);
  ExactSgd opt = exactOptimizer(wl, T, spec.gamma);
  const VectorXd v1 = VectorXd::Zero(wl.size());
  for (auto _ : state) {
    const hypergrad::Hypergradients hg = hypergrad::computeHypergradients(opt, wl.train, wl.validation, wl.w1, v1);
    benchmark::DoNotOptimize(hg.learningRates.data());
  }
}

void trainExact(benchmark::State& state, const WorkloadSpec& spec, Index T) {
  const Workload& wl = bench::workload(spec);
  ExactSgd opt = exactOptimizer(wl, T, spec.gamma);
  for (auto _ : state) {
    opt.start(wl.w1);
    hypergrad::train(opt, wl.train);
  }
}

void trainDouble(benchmark::State& state, const WorkloadSpec& spec, Index T) {
  const Workload& wl = bench::workload(spec);
  const ExactSgd twin = exactOptimizer(wl, T, spec.gamma);
  bench::DoubleMomentum opt = doubleOptimizer(wl, T, twin);
  for (auto _ : state) {
    opt.start(wl.w1);
    hypergrad::train(opt, wl.train);
    benchmark::DoNotOptimize(opt.weights().data());
  }
}

void hypergradientsStored(benchmark::State& state, const WorkloadSpec& spec, Index T) {
  const Workload& wl = bench::workload(spec);
  const ExactSgd twin = exactOptimizer(wl, T, spec.gamma);
  std::size_t bytes = 0;
  for (auto _ : state) {
    const bench::StoredTrajectoryResult st = bench::storedTrajectoryHypergradients(
        wl.train, wl.validation, wl.layout, wl.alphas(T).values(), twin.quantizedMomenta(), wl.w1);
    bytes = st.trajectoryBytes;
    benchmark::DoNotOptimize(st.learningRates.data());
  }
  state.counters["stored_trajectory_bytes"] = static_cast<double>(bytes);
}

/// The pieces of one reverse step, at the state after `warm` training steps.
enum class Part { Gradient, Hvp, MixedProduct, ReverseStep, ExactUnstep, ExactStep, DoubleUpdate, MetaGradient };

const char* partName(Part p) {
  switch (p) {
    case Part::Gradient: return "gradient";
    case Part::Hvp: return "hessian_vector_product";
    case Part::MixedProduct: return "mixed_product";
    case Part::ReverseStep: return "reverse_step_fused";
    case Part::ExactUnstep: return "exact_unstep";
    case Part::ExactStep: return "exact_step_update";
    case Part::DoubleUpdate: return "double_update";
    case Part::MetaGradient: return "meta_gradient";
  }
  return "?";
}

void reversePart(benchmark::State& state, const WorkloadSpec& spec, Part part) {
  const Workload& wl = bench::workload(spec);
  const Index T = spec.steps, warm = std::min<Index>(10, T - 1);
  ExactSgd opt = exactOptimizer(wl, T, spec.gamma);
  opt.start(wl.w1);
  for (Index t = 0; t < warm; ++t) opt.step(wl.train);
  const VectorXd w = opt.weights();
  const Index t = opt.iteration();
  VectorXd g, hu, mixed, u(wl.size());
  hypergrad::CounterRng rng(11, 0x4);
  for (Index i = 0; i < u.size(); ++i) u(i) = 1e-2 * rng.normal();
  wl.train.gradient(w, t, g);
  bench::DoubleMomentum plain = doubleOptimizer(wl, T, opt);
  plain.start(w);
  for (auto _ : state) {
    switch (part) {
      case Part::Gradient: wl.train.gradient(w, t, g); break;
      case Part::Hvp: wl.train.hessianVectorProduct(w, t, u, hu); break;
      case Part::MixedProduct: wl.train.mixedProduct(w, t, u, mixed); break;
      case Part::ReverseStep: wl.train.reverseStep(w, t, u, g, hu, mixed); break;
      case Part::ExactUnstep:
        state.PauseTiming();
        opt.stepWithGradient(g);
        state.ResumeTiming();
        opt.unstepWeights();
        opt.unstepVelocity(g);
        break;
      case Part::ExactStep:
        opt.stepWithGradient(g);
        state.PauseTiming();
        opt.unstepWeights();
        opt.unstepVelocity(g);
        state.ResumeTiming();
        break;
      case Part::DoubleUpdate:
        if (plain.iteration() == T) {
          state.PauseTiming();
          plain.start(w);
          state.ResumeTiming();
        }
        plain.stepWithGradient(g);
        break;
      case Part::MetaGradient: benchmark::DoNotOptimize(wl.validation.valueAndGradient(w, g)); break;
    }
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * wl.size());
  if (part == Part::MixedProduct) state.counters["mixed_size"] = static_cast<double>(mixed.size());
}

// ---- 3) Information-buffer bits in real training ----------------------------------------------------

template <class Rounding>
void bufferBits(benchmark::State& state, const WorkloadSpec& spec, double gamma) {
  const Workload& wl = bench::workload(spec);
  const Index T = spec.steps;
  Sgd<Rounding> opt(wl.layout, wl.alphas(T), wl.gammas(T, gamma));
  double firstStepBits = 0.0;
  for (auto _ : state) {
    opt.start(wl.w1);
    opt.step(wl.train);
    firstStepBits = opt.buffer().informationBits();
    hypergrad::train(opt, wl.train);
  }
  const double n = static_cast<double>(wl.size());
  const double bits = opt.buffer().informationBits() / (n * static_cast<double>(T));
  const double bound = -std::log2(opt.quantizedMomenta()(0, 0));
  state.counters["bits_per_weight_step"] = bits;
  state.counters["bound_bits"] = bound;
  state.counters["ratio_to_bound"] = bits / bound;
  // Steps 2..T only: the first step starts from v = 0 and an empty coder state, a one-off cost
  // per weight that the per-step average only amortises over T.
  const double steady = (opt.buffer().informationBits() - firstStepBits) / (n * static_cast<double>(T - 1));
  state.counters["first_step_bits_per_weight"] = firstStepBits / n;
  state.counters["steady_bits_per_weight_step"] = steady;
  state.counters["steady_ratio_to_bound"] = steady / bound;
  state.counters["gamma_quantized"] = opt.quantizedMomenta()(0, 0);
}

// ---- 4) Trajectory memory vs T -------------------------------------------------------------------

void memoryVsT(benchmark::State& state, const WorkloadSpec& spec, Index T, Index batchSize) {
  const Workload& wl = bench::workload(spec);
  const hypergrad::MlpObjective f = wl.objectiveWithBatch(batchSize);
  ExactSgd opt = exactOptimizer(wl, T, spec.gamma);
  for (auto _ : state) {
    opt.start(wl.w1);
    hypergrad::train(opt, f);
  }
  const auto& buf = opt.buffer();
  const double n = static_cast<double>(wl.size());
  const double trajectory = 2.0 * 8.0 * n * static_cast<double>(T);  // w_t and v_t as doubles
  const double alloc = static_cast<double>(buf.memoryBytes());
  const double content = buf.storageBits() / 8.0;
  const double info = buf.informationBits() / 8.0;
  state.counters["buffer_alloc_bytes"] = alloc;
  state.counters["buffer_content_bytes"] = content;
  state.counters["information_bytes"] = info;
  state.counters["stored_trajectory_bytes"] = trajectory;
  state.counters["ratio_alloc"] = trajectory / alloc;
  state.counters["ratio_content"] = trajectory / content;
  state.counters["ratio_information"] = trajectory / info;
  state.counters["bits_per_weight_step"] = buf.informationBits() / (n * static_cast<double>(T));
  state.counters["batch_size"] = static_cast<double>(batchSize);
}

// ---- Registration ---------------------------------------------------------------------------------

// 6) One exact-order GEMM kernel (forced; skipped where the processor lacks it) on one shape:
// C (m × n) = op(A)·op(B) with the depth k, as the MLP's shards call it.
template <class S>
void gemmKernelCase(benchmark::State& st, hypergrad::detail::GemmKernel kernel, Index m, Index n, Index k, bool transA,
                    bool transB) {
  namespace hd = hypergrad::detail;
  if (!hd::gemmKernelSupported(kernel)) {
    st.SkipWithError("this processor lacks the kernel");
    return;
  }
  std::vector<S> a(static_cast<std::size_t>(m * k)), b(static_cast<std::size_t>(k * n)), c(static_cast<std::size_t>(m * n));
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<S>(std::sin(0.37 * static_cast<double>(i)));
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = static_cast<S>(std::cos(0.11 * static_cast<double>(i)));
  const hd::ConstMatrixView<S> va{a.data(), transA ? k : m, transA ? m : k, transA ? k : m};
  const hd::ConstMatrixView<S> vb{b.data(), transB ? n : k, transB ? k : n, transB ? n : k};
  hd::GemmScratch<S> scratch;
  hd::gemmKernelOverride().store(static_cast<int>(kernel));
  for (auto _ : st) {
    hd::serialGemm(va, transA, vb, transB, c.data(), m, false, scratch);
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  hd::gemmKernelOverride().store(static_cast<int>(hd::GemmKernel::Automatic));
  st.counters["GFLOPs"] =
      benchmark::Counter(2e-9 * static_cast<double>(m * n * k), benchmark::Counter::kIsIterationInvariantRate);
}

// Truncated reverse (issue 14): the last K of T steps differentiated. Counters: the reverse pass's
// time (K reverse steps and the K forward steps back to T), and the truncation bias against the
// full pass: constant_alpha_rel_error = |Σ_t (dα_K − dα)| / |Σ_t dα| (the hypergradient of a
// per-group constant learning rate), constant_alpha_cosine (its direction), schedule_rel_error =
// |dα_K − dα|_F / |dα|_F (the rows left out).
void hypergradientsTruncated(benchmark::State& state, const WorkloadSpec& spec, Index T, Index K) {
  const Workload& wl = bench::workload(spec);
  ExactSgd opt = exactOptimizer(wl, T, spec.gamma);
  static std::map<std::string, MatrixXd> fullResults;
  const std::string key = spec.name + "/" + std::to_string(T);
  if (fullResults.count(key) == 0) {
    opt.start(wl.w1);
    hypergrad::train(opt, wl.train);
    fullResults[key] = hypergrad::reverse(opt, wl.train, wl.validation).learningRates;
  }
  const MatrixXd& full = fullResults.at(key);
  MatrixXd cut;
  double reverseSeconds = 0.0;
  for (auto _ : state) {
    state.PauseTiming();
    opt.start(wl.w1);
    hypergrad::train(opt, wl.train);
    state.ResumeTiming();
    const hypergrad::Hypergradients hg = hypergrad::reverseTruncated(opt, wl.train, wl.validation, K);
    reverseSeconds += hg.statistics.reverseSeconds;
    cut = hg.learningRates;
  }
  const VectorXd a = full.colwise().sum().transpose(), b = cut.colwise().sum().transpose();
  state.counters["K"] = static_cast<double>(K);
  state.counters["reverse_ms"] = 1e3 * reverseSeconds / static_cast<double>(state.iterations());
  state.counters["constant_alpha_rel_error"] = (b - a).norm() / a.norm();
  state.counters["constant_alpha_cosine"] = a.dot(b) / (a.norm() * b.norm());
  state.counters["schedule_rel_error"] = (cut - full).norm() / full.norm();
}

void registerAll(bool longCases) {
  for (const WorkloadSpec& spec : {bench::mnistSpec(), bench::smokeSpec()}) {
    const bool smoke = spec.name == "smoke";
    const std::string wl = "/" + spec.name;
    const auto ms = benchmark::kMillisecond;

    benchmark::RegisterBenchmark(("train_step/exact" + wl).c_str(),
                                 [spec](benchmark::State& st) { trainStepExact(st, spec); })->Unit(ms);
    benchmark::RegisterBenchmark(("train_step/double" + wl).c_str(),
                                 [spec](benchmark::State& st) { trainStepDouble(st, spec); })->Unit(ms);
    benchmark::RegisterBenchmark(("train_step/interleaved" + wl).c_str(),
                                 [spec](benchmark::State& st) { trainStepInterleaved(st, spec); })
        ->Unit(ms)->MinTime(smoke ? 0.01 : 2.0);

    const Index T = spec.steps;
    const std::string tT = wl + "/T:" + std::to_string(T);
    benchmark::RegisterBenchmark(("hypergradients/interleaved" + tT).c_str(),
                                 [spec, T](benchmark::State& st) { hypergradientsInterleaved(st, spec, T, true); })
        ->Unit(ms)->Iterations(smoke ? 1 : 3);
    benchmark::RegisterBenchmark(("hypergradients/lanes" + tT).c_str(),
                                 [spec, T](benchmark::State& st) { hypergradientsLanes(st, spec, T); })
        ->Unit(ms)->Iterations(smoke ? 1 : 2);
    benchmark::RegisterBenchmark(("hypergradients/float32" + tT).c_str(),
                                 [spec, T](benchmark::State& st) { hypergradientsFloat32(st, spec, T); })
        ->Unit(ms)->Iterations(smoke ? 1 : 2);
    benchmark::RegisterBenchmark(("hypergradients/exact" + tT).c_str(),
                                 [spec, T](benchmark::State& st) { hypergradientsExact(st, spec, T); })->Unit(ms);
    benchmark::RegisterBenchmark(("train/exact" + tT).c_str(),
                                 [spec, T](benchmark::State& st) { trainExact(st, spec, T); })->Unit(ms);
    benchmark::RegisterBenchmark(("train/double" + tT).c_str(),
                                 [spec, T](benchmark::State& st) { trainDouble(st, spec, T); })->Unit(ms);
    benchmark::RegisterBenchmark(("hypergradients/stored_trajectory" + tT).c_str(),
                                 [spec, T](benchmark::State& st) { hypergradientsStored(st, spec, T); })->Unit(ms);
    if (longCases && !smoke) {
      const Index TL = 1000;
      const std::string tL = wl + "/T:" + std::to_string(TL);
      benchmark::RegisterBenchmark(("hypergradients/interleaved" + tL).c_str(),
                                   [spec, TL](benchmark::State& st) { hypergradientsInterleaved(st, spec, TL, true); })
          ->Unit(ms)->Iterations(1);
    }

    for (const Index K : {Index(1), Index(5), Index(10), Index(25), Index(50), T}) {
      if (K > T || (smoke && K != 1 && K != T)) continue;
      benchmark::RegisterBenchmark(("hypergradients/truncated" + tT + "/K:" + std::to_string(K)).c_str(),
                                   [spec, T, K](benchmark::State& st) { hypergradientsTruncated(st, spec, T, K); })
          ->Unit(ms)->Iterations(smoke ? 1 : 2);
    }
    if (!smoke) {
      for (const Index b : {25, 50, 100, 200, 400, 800}) {
        benchmark::RegisterBenchmark(("hypergradients/batch" + tT + "/batch:" + std::to_string(b)).c_str(),
                                     [spec, T, b](benchmark::State& st) { hypergradientsBatch(st, spec, T, b); })
            ->Unit(ms)->Iterations(1);
      }
      for (const Index h : {25, 50, 100, 200}) {
        benchmark::RegisterBenchmark(("hypergradients/width" + tT + "/hidden:" + std::to_string(h)).c_str(),
                                     [spec, T, h](benchmark::State& st) { hypergradientsWidth(st, spec, T, h); })
            ->Unit(ms)->Iterations(1);
      }
    }

    for (Part p : {Part::Gradient, Part::Hvp, Part::MixedProduct, Part::ReverseStep, Part::ExactUnstep,
                   Part::ExactStep, Part::DoubleUpdate, Part::MetaGradient}) {
      benchmark::RegisterBenchmark((std::string("reverse_parts/") + partName(p) + wl).c_str(),
                                   [spec, p](benchmark::State& st) { reversePart(st, spec, p); })
          ->Unit(benchmark::kMicrosecond);
    }

    for (const double g : {0.5, 0.9, 0.98, 0.999}) {
      if (smoke && g != 0.9) continue;
      const std::string tail = wl + "/gamma:" + gammaName(g);
      benchmark::RegisterBenchmark(("buffer_bits/bits-back" + tail).c_str(),
                                   [spec, g](benchmark::State& st) { bufferBits<hypergrad::BitsBackRounding>(st, spec, g); })
          ->Unit(ms)->Iterations(1);
      benchmark::RegisterBenchmark(("buffer_bits/floor" + tail).c_str(),
                                   [spec, g](benchmark::State& st) { bufferBits<hypergrad::FloorRounding>(st, spec, g); })
          ->Unit(ms)->Iterations(1);
    }

    struct MemCase {
      Index T, batch;
    };
    std::vector<MemCase> mem;
    if (smoke) {
      mem.push_back({spec.steps, spec.batchSize});
    } else {
      mem.push_back({100, spec.batchSize});
      mem.push_back({1000, spec.batchSize});
      // T = 10000 with minibatch 10: the buffer's bits per step do not depend on the batch
      // (bits-back stores log2(d/n) per multiply whatever the values), only the run time does.
      if (longCases) mem.push_back({10000, 10});
    }
    for (const MemCase c : mem) {
      std::string name = "memory" + wl + "/gamma:" + gammaName(spec.gamma) + "/T:" + std::to_string(c.T);
      if (c.batch != spec.batchSize) name += "/batch:" + std::to_string(c.batch);
      benchmark::RegisterBenchmark(name.c_str(),
                                   [spec, c](benchmark::State& st) { memoryVsT(st, spec, c.T, c.batch); })
          ->Unit(ms)->Iterations(1);
    }
  }
}

}  // namespace

static void registerGemm() {
  namespace hd = hypergrad::detail;
  struct Shape {
    const char* name;
    Index m, n, k;
    bool transA, transB;
  };
  // The shard products of the paper's MLP (shard of 50 examples): the input layer's forward
  // product, its weight gradient, the input mixed product; and a smoke shape.
  const Shape shapes[] = {{"x_w1/m:50/n:50/k:784", 50, 50, 784, true, false},
                          {"xT_delta/m:784/n:50/k:50", 784, 50, 50, false, false},
                          {"delta_w1T/m:50/n:784/k:50", 50, 784, 50, false, true},
                          {"smoke/m:17/n:9/k:33", 17, 9, 33, true, false}};
  const std::pair<const char*, hd::GemmKernel> kernels[] = {
      {"portable", hd::GemmKernel::Portable}, {"avx2", hd::GemmKernel::Avx2}, {"avx512", hd::GemmKernel::Avx512}};
  for (const auto& [kname, kernel] : kernels)
    for (const Shape& sh : shapes) {
      const double minTime = std::string(sh.name).rfind("smoke", 0) == 0 ? 0.01 : 0.5;
      benchmark::RegisterBenchmark((std::string("gemm/") + kname + "/double/" + sh.name).c_str(),
                                   [=](benchmark::State& st) {
                                     gemmKernelCase<double>(st, kernel, sh.m, sh.n, sh.k, sh.transA, sh.transB);
                                   })
          ->Unit(benchmark::kMicrosecond)->MinTime(minTime);
      benchmark::RegisterBenchmark((std::string("gemm/") + kname + "/float/" + sh.name).c_str(),
                                   [=](benchmark::State& st) {
                                     gemmKernelCase<float>(st, kernel, sh.m, sh.n, sh.k, sh.transA, sh.transB);
                                   })
          ->Unit(benchmark::kMicrosecond)->MinTime(minTime);
    }
}

// --plot-growth RUN.json [PREFIX]: the plots of how cost grows (hypergradient time / plain double
// training time against the batch size and against N) from a --benchmark_out file of the
// hypergradients/(batch|width) cases; writes PREFIX-batch.svg and PREFIX-width.svg.
static int plotGrowth(const std::string& path, const std::string& prefix) {
  std::ifstream in(path);
  if (!in) {
    std::fprintf(stderr, "bench_hypergrad: cannot read '%s'\n", path.c_str());
    return 1;
  }
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::map<double, double> byBatch, byN;
  for (const char* kind : {"batch", "width"}) {
    const std::string tag = std::string("\"name\": \"hypergradients/") + kind + "/";
    for (std::size_t at = text.find(tag); at != std::string::npos; at = text.find(tag, at + 1)) {
      const std::string entry = text.substr(at, text.find('}', at) - at);
      const double ratio = bench::jsonNumber(entry, "ratio_vs_double_train");
      if (std::string(kind) == "batch") byBatch[bench::jsonNumber(entry, "batch_size")] = ratio;
      else byN[bench::jsonNumber(entry, "num_parameters")] = ratio;
    }
  }
  auto line = [](const std::map<double, double>& m, std::vector<double>& x, std::vector<double>& y) {
    for (const auto& [k, v] : m) x.push_back(std::log2(k)), y.push_back(v);
  };
  std::vector<double> x, y;
  line(byBatch, x, y);
  hypergrad::SvgPlot batch("Paper MLP, T = 100: hypergradient time / plain training time", "log2 batch size",
                           "exact hypergradient / double training");
  batch.addLine("784-50-50-50-10 (N = 44,860)", x, y);
  batch.addHorizontalLine("issue 12's target at batch 200 (3.2x)", 3.2, hypergrad::LineStyle{8, true, 1.0});
  batch.save(prefix + "-batch.svg");
  x.clear(), y.clear();
  line(byN, x, y);
  hypergrad::SvgPlot width("784-H-H-H-10, batch 200, T = 100: hypergradient time / plain training time",
                           "log2 N (parameters; H = 25, 50, 100, 200)", "exact hypergradient / double training");
  width.addLine("exact hypergradient / double training", x, y);
  width.addHorizontalLine("issue 12's target (3.2x)", 3.2, hypergrad::LineStyle{8, true, 1.0});
  width.save(prefix + "-width.svg");
  std::printf("plots: %s-batch.svg (%zu points), %s-width.svg (%zu points)\n", prefix.c_str(), byBatch.size(),
              prefix.c_str(), byN.size());
  return byBatch.empty() && byN.empty() ? 1 : 0;
}

int main(int argc, char** argv) {
  if (argc >= 3 && std::strcmp(argv[1], "--plot-growth") == 0) return plotGrowth(argv[2], argc >= 4 ? argv[3] : "cost_growth");
  return bench::runBenchmarks(argc, argv, [](bool longCases) {
    registerAll(longCases);
    registerGemm();
  });
}
