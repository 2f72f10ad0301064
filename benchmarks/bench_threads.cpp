// SPDX-License-Identifier: MIT
//
// Issue "Benchmarks", item 5: threads. The information buffer keeps one word stack per block of
// 4096 elements, so multiplyByRatio / divideByRatio split the blocks across OpenMP threads and
// the bits do not depend on the thread count.
//
//   threads/{multiply,divide}/bits-back/N:<n>/threads:<k>   wall-clock ns per element (and the
//                                                          CPU time of all threads per element)
//   threads/bit_exact/ratio_multiply/N:<n>                  K multiplies at 1 and 2 threads give
//                                                          the same integers and buffer; the
//                                                          divides bring both back exactly
//   threads/bit_exact/hypergradients/<wl>                   the MLP run (T steps) at 1 and at 2
//                                                          threads: bit-identical hypergradients
//                                                          and an exactly recovered start
//
// Built with OpenMP only when the exact layer compiles with it (benchmarks/CMakeLists.txt);
// counter openmp = 0 says the binary is single-threaded. Eigen's GEMM threading is off
// (EIGEN_DONT_PARALLELIZE): its results change with the thread count (DESIGN.md §3).

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#if HYPERGRAD_BENCH_OPENMP
#include <omp.h>
#endif

#include <hypergrad/exact.hpp>
#include <hypergrad/optimizers/sgd_momentum.hpp>
#include <hypergrad/random.hpp>
#include <hypergrad/reverse.hpp>

#include "bench_common.hpp"

namespace {

using hypergrad::BitsBackRounding;
using hypergrad::Index;
using Format = hypergrad::FixedFormat<52>;
using Buffer = hypergrad::InformationBuffer<24>;
constexpr int kRatioBits = 16;
constexpr int kPairSteps = 16;

void setThreads(int k) {
#if HYPERGRAD_BENCH_OPENMP
  omp_set_num_threads(k);
#else
  (void)k;
#endif
}

int maxThreads() {
#if HYPERGRAD_BENCH_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

std::vector<std::int64_t> velocityLike(Index n) {
  hypergrad::CounterRng rng(1, 0x5e1);
  std::vector<std::int64_t> c(static_cast<std::size_t>(n));
  for (auto& x : c) x = Format::fromDouble(0.01 * rng.normal());
  return c;
}

/// Wall-clock time of multiplies (forward = true) or divides, paired to keep the buffer bounded.
void ratioThreads(benchmark::State& state, Index n, int threads, bool forward) {
  setThreads(threads);
  const auto runs = hypergrad::ratioRuns(n, hypergrad::Ratio<kRatioBits>::nearestDyadic(0.9).numerator);
  const std::vector<std::int64_t> original = velocityLike(n);
  std::vector<std::int64_t> c = original;
  Buffer buf(n);
  int pending = 0;
  double seconds = 0.0, cpuSeconds = 0.0;
  for (auto _ : state) {
    if (forward && pending == kPairSteps) {
      for (; pending > 0; --pending) hypergrad::divideByRatio<BitsBackRounding, kRatioBits>(c.data(), n, runs, buf);
    }
    if (!forward && pending == 0) {
      for (; pending < kPairSteps; ++pending)
        hypergrad::multiplyByRatio<BitsBackRounding, kRatioBits>(c.data(), n, runs, buf);
    }
    const double t0 = bench::wallSeconds(), c0 = bench::processSeconds();
    if (forward) {
      hypergrad::multiplyByRatio<BitsBackRounding, kRatioBits>(c.data(), n, runs, buf);
      ++pending;
    } else {
      hypergrad::divideByRatio<BitsBackRounding, kRatioBits>(c.data(), n, runs, buf);
      --pending;
    }
    const double dt = bench::wallSeconds() - t0;
    cpuSeconds += bench::processSeconds() - c0;
    state.SetIterationTime(dt);
    seconds += dt;
  }
  for (; pending > 0; --pending) hypergrad::divideByRatio<BitsBackRounding, kRatioBits>(c.data(), n, runs, buf);
  if (c != original || !buf.empty()) state.SkipWithError("not recovered bit for bit");
  state.SetItemsProcessed(state.iterations() * n);
  state.counters["ns_per_element"] = 1e9 * seconds / (static_cast<double>(state.iterations()) * static_cast<double>(n));
  // CPU time of all threads: the work the threads did, spin-waiting included.
  state.counters["cpu_ns_per_element"] =
      1e9 * cpuSeconds / (static_cast<double>(state.iterations()) * static_cast<double>(n));
  state.counters["threads"] = threads;
  state.counters["openmp"] = HYPERGRAD_BENCH_OPENMP;
  state.counters["blocks"] = static_cast<double>(buf.numBlocks());
  setThreads(maxThreads());
}

void ratioBitExact(benchmark::State& state, Index n) {
  const auto runs = hypergrad::ratioRuns(n, hypergrad::Ratio<kRatioBits>::nearestDyadic(0.9).numerator);
  const std::vector<std::int64_t> original = velocityLike(n);
  bool exact = true;
  for (auto _ : state) {
    std::vector<std::int64_t> c1 = original, c2 = original;
    Buffer b1(n), b2(n);
    setThreads(1);
    for (int k = 0; k < kPairSteps; ++k) hypergrad::multiplyByRatio<BitsBackRounding, kRatioBits>(c1.data(), n, runs, b1);
    setThreads(2);
    for (int k = 0; k < kPairSteps; ++k) hypergrad::multiplyByRatio<BitsBackRounding, kRatioBits>(c2.data(), n, runs, b2);
    exact = exact && c1 == c2 && b1 == b2;
    for (int k = 0; k < kPairSteps; ++k) hypergrad::divideByRatio<BitsBackRounding, kRatioBits>(c2.data(), n, runs, b2);
    exact = exact && c2 == original && b2.empty();
  }
  setThreads(maxThreads());
  state.counters["bit_exact"] = exact ? 1 : 0;
  state.counters["openmp"] = HYPERGRAD_BENCH_OPENMP;
  if (!exact) state.SkipWithError("results depend on the thread count");
}

void hypergradientsBitExact(benchmark::State& state, const bench::WorkloadSpec& spec) {
  const bench::Workload& wl = bench::workload(spec);
  const Index T = spec.steps;
  using Sgd = hypergrad::SgdMomentum<>;
  const Eigen::VectorXd v1 = Eigen::VectorXd::Zero(wl.size());
  bool exact = true;
  double seconds1 = 0.0, seconds2 = 0.0;
  for (auto _ : state) {
    hypergrad::Hypergradients h[2];
    double* seconds[2] = {&seconds1, &seconds2};
    for (int k = 0; k < 2; ++k) {
      setThreads(k + 1);
      Sgd opt(wl.layout, wl.alphas(T), wl.gammas(T, spec.gamma));
      const double t0 = bench::wallSeconds();
      h[k] = hypergrad::computeHypergradients(opt, wl.train, wl.validation, wl.w1, v1);  // checks recovery
      *seconds[k] += bench::wallSeconds() - t0;
    }
    exact = exact && bench::bitIdentical(h[0].learningRates, h[1].learningRates) &&
            bench::bitIdentical(h[0].momenta, h[1].momenta) &&
            bench::bitIdentical(h[0].initialWeights, h[1].initialWeights) &&
            bench::bitIdentical(h[0].finalWeights, h[1].finalWeights);
  }
  setThreads(maxThreads());
  const auto iters = static_cast<double>(state.iterations());
  state.counters["bit_exact"] = exact ? 1 : 0;
  state.counters["openmp"] = HYPERGRAD_BENCH_OPENMP;
  state.counters["wall_s_1_thread"] = seconds1 / iters;
  state.counters["wall_s_2_threads"] = seconds2 / iters;
  if (!exact) state.SkipWithError("hypergradients depend on the thread count");
}

void registerAll() {
  struct Size {
    std::string name;
    Index n;
  };
  for (const Size& size : {Size{"N:100000", 100000}, Size{"N:44860", 44860}, Size{"smoke", 40000}}) {
    for (const int k : {1, 2}) {
      if (k > 1 && !HYPERGRAD_BENCH_OPENMP) continue;
      const std::string tail = "/bits-back/" + size.name + "/threads:" + std::to_string(k);
      const Index n = size.n;
      benchmark::RegisterBenchmark(("threads/multiply" + tail).c_str(),
                                   [n, k](benchmark::State& st) { ratioThreads(st, n, k, true); })
          ->UseManualTime();
      benchmark::RegisterBenchmark(("threads/divide" + tail).c_str(),
                                   [n, k](benchmark::State& st) { ratioThreads(st, n, k, false); })
          ->UseManualTime();
    }
    if (size.n != 44860) {
      const Index n = size.n;
      benchmark::RegisterBenchmark(("threads/bit_exact/ratio_multiply/" + size.name).c_str(),
                                   [n](benchmark::State& st) { ratioBitExact(st, n); })
          ->Iterations(1);
    }
  }
  for (const bench::WorkloadSpec& spec : {bench::mnistSpec(), bench::smokeSpec()}) {
    benchmark::RegisterBenchmark(("threads/bit_exact/hypergradients/" + spec.name).c_str(),
                                 [spec](benchmark::State& st) { hypergradientsBitExact(st, spec); })
        ->Unit(benchmark::kMillisecond)->Iterations(1);
  }
}

}  // namespace

int main(int argc, char** argv) {
  // "--hypergrad_long" is accepted for symmetry; there are no long cases here.
  return bench::runBenchmarks(argc, argv, [](bool) { registerAll(); });
}
