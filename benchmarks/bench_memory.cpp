// SPDX-License-Identifier: MIT
//
// Issue "Reliability" item 3: on a long run the process's resident memory must grow with the
// information buffer's content, and the content with the entropy bound N·log2(1/γ) bits per step;
// and the buffer's spill/refill path, which its word stacks serve, must stay fast.
//
//   rss_growth/<wl>/gamma:<γ>/T:<T>/batch:<b>   T exact training steps (SgdMomentum<>, γ = 0.9):
//        mnist T = 10^4 (≈10 s), T = 10^5 with --hypergrad_long (≈2 min, 85 MB of buffer);
//        smoke T = 300 on the tiny MLP
//
// Resident memory is /proc/self/statm (resident pages × page size), sampled at step T/10 and at
// step T, so the first allocations (workload, optimizer, the first chunks) stay out of the
// per-step figures. Counters, all per step of the window [T/10, T]:
//   rss_bytes_per_step      growth of the process's resident memory
//   alloc_bytes_per_step    growth of buffer().memoryBytes() (what the buffer allocated)
//   content_bytes_per_step  growth of buffer().storageBits() / 8 (states + spilled words)
//   info_bytes_per_step     growth of buffer().informationBits() / 8
//   bound_bytes_per_step    N·log2(1/γ_quantised) / 8
//   rss_over_content, alloc_over_content, content_over_bound   the ratios to quote
//
// The minibatch is 10, not the paper's 200: the bits the buffer stores per step do not depend on
// the batch (bits-back stores log2(d/n) per multiply whatever the values), only the run time does
// (≈10 s instead of ≈30 s at T = 10^4 here). RSS is a property of the whole process: each case
// calls malloc_trim(0) first (glibc) so that memory freed by an earlier case is not silently
// reused, but a clean figure still wants one case per process, e.g.
//   bench_memory --benchmark_filter=rss_growth/mnist
// The "smoke" case (300 steps of the tiny MLP) only proves that the benchmark runs: its window
// holds a few pages, too few for the ratios to mean anything.
//
//   spill_regime/{multiply,divide}/<N>/gamma:0.9   ×n/d and ×d/n (bits-back) on states preloaded
//        by 370 multiplies to ≈2^56: every element then spills a word on its radix-2^16 push and
//        refills it on the pop, each step, as about half the elements do in training.
//        bench_exact's multiply/divide start from empty states and never reach this path.
//        Paired like bench_exact (16 timed steps, 16 untimed inverse steps); ns_per_element is
//        thread CPU time of the timed calls; the data must come back bit for bit at the end.

#include <benchmark/benchmark.h>

#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <hypergrad/exact.hpp>
#include <hypergrad/optimizers/sgd_momentum.hpp>
#include <hypergrad/random.hpp>

#include "bench_common.hpp"

namespace {

using bench::Workload;
using bench::WorkloadSpec;
using hypergrad::Index;

/// Resident set size of this process in bytes (0 when /proc is not available).
double residentBytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return 0.0;
  unsigned long sizePages = 0, residentPages = 0;
  const int got = std::fscanf(f, "%lu %lu", &sizePages, &residentPages);
  std::fclose(f);
  if (got != 2) return 0.0;
  return static_cast<double>(residentPages) * static_cast<double>(sysconf(_SC_PAGESIZE));
}

struct Sample {
  double rss, alloc, content, info;
};

template <class Optimizer>
Sample sample(const Optimizer& opt) {
  const auto& buf = opt.buffer();
  return {residentBytes(), static_cast<double>(buf.memoryBytes()), buf.storageBits() / 8.0, buf.informationBits() / 8.0};
}

void rssGrowth(benchmark::State& state, const WorkloadSpec& spec, Index T, Index batchSize) {
  const Workload& wl = bench::workload(spec);
  const hypergrad::MlpObjective f = wl.objectiveWithBatch(batchSize);
  const Index warm = T / 10;
  Sample s0{}, s1{};
  double bound = 0.0;
  for (auto _ : state) {
    hypergrad::SgdMomentum<> opt(wl.layout, wl.alphas(T), wl.gammas(T, spec.gamma));
#if defined(__GLIBC__)
    malloc_trim(0);
#endif
    opt.start(wl.w1);
    for (Index t = 0; t < T; ++t) {
      if (t == warm) s0 = sample(opt);
      opt.step(f);
    }
    s1 = sample(opt);
    bound = static_cast<double>(wl.size()) * -std::log2(opt.quantizedMomenta()(0, 0)) / 8.0;
  }
  const auto steps = static_cast<double>(T - warm);
  const double rss = (s1.rss - s0.rss) / steps, alloc = (s1.alloc - s0.alloc) / steps;
  const double content = (s1.content - s0.content) / steps, info = (s1.info - s0.info) / steps;
  state.counters["rss_bytes_per_step"] = rss;
  state.counters["alloc_bytes_per_step"] = alloc;
  state.counters["content_bytes_per_step"] = content;
  state.counters["info_bytes_per_step"] = info;
  state.counters["bound_bytes_per_step"] = bound;
  state.counters["rss_over_content"] = rss / content;
  state.counters["alloc_over_content"] = alloc / content;
  state.counters["content_over_bound"] = content / bound;
  state.counters["info_over_bound"] = info / bound;
  state.counters["target_rss_over_content_max"] = 1.05;
  // Totals at step T, for scale.
  state.counters["buffer_alloc_bytes"] = s1.alloc;
  state.counters["buffer_content_bytes"] = s1.content;
}

// ---- The spill/refill path -------------------------------------------------------------------------

constexpr int kPreload = 370;   // multiplies before timing: ≈ 32 + 370 · 0.152 bits per element
constexpr int kPairSteps = 16;  // timed steps between untimed inverse steps

void spillRegime(benchmark::State& state, Index n, bool multiply) {
  using Buffer = hypergrad::InformationBuffer<24>;
  using Policy = hypergrad::BitsBackRounding;
  const auto runs = hypergrad::ratioRuns(n, hypergrad::Ratio<16>::nearestDyadic(0.9).numerator);
  hypergrad::CounterRng rng(1, 0x5e1);
  std::vector<std::int64_t> c(static_cast<std::size_t>(n));
  for (auto& x : c) x = hypergrad::FixedFormat<52>::fromDouble(0.01 * rng.normal());
  const std::vector<std::int64_t> original = c;
  Buffer buf(n);
  const auto forward = [&] { hypergrad::multiplyByRatio<Policy, 16>(c.data(), n, runs, buf); };
  const auto backward = [&] { hypergrad::divideByRatio<Policy, 16>(c.data(), n, runs, buf); };
  for (int k = 0; k < kPreload; ++k) forward();
  // multiply: timed multiplies not yet undone; divide: untimed multiplies not yet divided back.
  int pending = 0;
  double timed = 0.0;
  for (auto _ : state) {
    if (multiply && pending == kPairSteps) {
      state.PauseTiming();
      for (; pending > 0; --pending) backward();
      state.ResumeTiming();
    } else if (!multiply && pending == 0) {
      state.PauseTiming();
      for (; pending < kPairSteps; ++pending) forward();
      state.ResumeTiming();
    }
    const double t0 = bench::threadSeconds();
    if (multiply) forward();
    else backward();
    timed += bench::threadSeconds() - t0;
    pending += multiply ? 1 : -1;
  }
  for (; pending > 0; --pending) backward();
  for (int k = 0; k < kPreload; ++k) backward();
  if (c != original || !buf.empty()) state.SkipWithError("multiply/divide did not come back bit for bit");
  state.SetItemsProcessed(state.iterations() * n);
  state.counters["ns_per_element"] =
      1e9 * timed / (static_cast<double>(state.iterations()) * static_cast<double>(n));
}

void registerAll(bool longCases) {
  // The RSS cases first: the first case of a process is the cleanest measurement.
  struct Case {
    WorkloadSpec spec;
    Index T, batch;
  };
  std::vector<Case> cases{{bench::mnistSpec(), 10000, 10}, {bench::smokeSpec(), 300, bench::smokeSpec().batchSize}};
  if (longCases) cases.push_back({bench::mnistSpec(), 100000, 10});
  for (const Case& c : cases) {
    const std::string name = "rss_growth/" + c.spec.name + "/gamma:0.9/T:" + std::to_string(c.T) +
                             "/batch:" + std::to_string(c.batch);
    benchmark::RegisterBenchmark(name.c_str(), [c](benchmark::State& st) { rssGrowth(st, c.spec, c.T, c.batch); })
        ->Unit(benchmark::kSecond)
        ->Iterations(1);
  }
  for (const Index n : {Index(100000), Index(4096)}) {
    const std::string tail = (n == 4096 ? std::string("smoke") : "N:" + std::to_string(n)) + "/gamma:0.9";
    benchmark::RegisterBenchmark(("spill_regime/multiply/" + tail).c_str(),
                                 [n](benchmark::State& st) { spillRegime(st, n, true); });
    benchmark::RegisterBenchmark(("spill_regime/divide/" + tail).c_str(),
                                 [n](benchmark::State& st) { spillRegime(st, n, false); });
  }
}

}  // namespace

int main(int argc, char** argv) {
  return bench::runBenchmarks(argc, argv, registerAll);
}
