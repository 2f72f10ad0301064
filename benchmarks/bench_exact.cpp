// SPDX-License-Identifier: MIT
//
// Issue "Foundation": the exact-arithmetic layer on its own, N = 10^5 elements.
//
//   exact_multiply/<policy>/<N>/gamma:<γ>   forward  c ← c·n/d with the information buffer
//   exact_divide/<policy>/<N>/gamma:<γ>     reverse  c ← c·d/n with the information buffer
//   momentum_update/<variant>/<N>           v ← γv − (1−γ)g; w ← w + αv, with a precomputed g:
//        exact   SgdMomentum::stepWithGradient (the fused exact kernel: fixed point + buffer)
//        unstep  SgdMomentum::unstepWeights + unstepVelocity (its inverse)
//        double  the same rule on the reference arithmetic (ReferenceOptimizer, plain double)
//
// Forward and reverse are paired so the buffer stays bounded: a multiply benchmark rewinds
// (untimed) every K = 16 multiplies, a divide benchmark prepares K multiplies (untimed) before
// timing K divides. Each benchmark checks at the end that the data came back bit for bit.
//
// Counters: ns_per_element (thread CPU time of the timed calls), bits_per_element_step = informationBits/(N·steps),
// bound_bits = log2(d/n) = log2(1/γ_quantised), ratio_to_bound; items_per_second (elements).
// "smoke" cases (N = 4096) are what the ctest smoke pass runs.

#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <Eigen/Core>

#include <hypergrad/exact.hpp>
#include <hypergrad/optimizers/sgd_momentum.hpp>
#include <hypergrad/random.hpp>
#include <hypergrad/reference/optimizer.hpp>

#include "bench_common.hpp"

namespace {

using hypergrad::BitsBackRounding;
using hypergrad::FloorRounding;
using hypergrad::Index;

constexpr int kRadixBits = 52;      // Q11.52, the optimizer's default format
constexpr int kRatioBits = 16;      // γ = n / 2^16
constexpr int kPrecisionBits = 24;  // coder precision M = 2^24
constexpr int kPairSteps = 16;      // K: forward steps between untimed rewinds
using Format = hypergrad::FixedFormat<kRadixBits>;
using Buffer = hypergrad::InformationBuffer<kPrecisionBits>;

const double kGammas[] = {0.5, 0.9, 0.98, 0.999};

std::string gammaName(double g) {
  std::string s = std::to_string(g);
  while (s.back() == '0') s.pop_back();
  return s;
}

/// Velocity-like fixed-point values: 0.01·N(0, 1) in Q11.52.
std::vector<std::int64_t> velocityLike(Index n, std::uint64_t seed) {
  hypergrad::CounterRng rng(seed, 0x5e1);
  std::vector<std::int64_t> c(static_cast<std::size_t>(n));
  for (auto& x : c) x = Format::fromDouble(0.01 * rng.normal());
  return c;
}

double boundBits(std::uint32_t numerator) {
  return std::log2(static_cast<double>(hypergrad::Ratio<kRatioBits>::maxDenominator) / numerator);
}

/// ns per element from the thread CPU time of the timed calls alone (the untimed pairing work
/// and the benchmark loop excluded).
void setNsPerElement(benchmark::State& state, double seconds, Index n) {
  state.counters["ns_per_element"] =
      1e9 * seconds / (static_cast<double>(state.iterations()) * static_cast<double>(n));
}

template <class Policy>
void setBitsCounters(benchmark::State& state, Index n, std::uint32_t numerator) {
  // Measured on a fresh buffer over K multiplies, untimed.
  std::vector<std::int64_t> c = velocityLike(n, 1);
  Buffer buf(n);
  const auto runs = hypergrad::ratioRuns(n, numerator);
  for (int k = 0; k < kPairSteps; ++k) hypergrad::multiplyByRatio<Policy, kRatioBits>(c.data(), n, runs, buf);
  const double bits = buf.informationBits() / (static_cast<double>(n) * kPairSteps);
  state.counters["bits_per_element_step"] = bits;
  state.counters["bound_bits"] = boundBits(numerator);
  state.counters["ratio_to_bound"] = bits / boundBits(numerator);
}

/// How a case lays out and codes the buffer: one stack per block (the optimizers' layout today),
/// the lane layout coded element by element, or the lane layout through the AVX-512 lane coder
/// (lanes.hpp; the same bits as the second).
enum class Coder { OneStack, LanesScalar, Lanes };

/// Switches the lane coder for one case and back at the end.
struct CoderScope {
  explicit CoderScope(Coder c) { hypergrad::setLaneCoderEnabled(c == Coder::Lanes); }
  ~CoderScope() { hypergrad::setLaneCoderEnabled(true); }
  CoderScope(const CoderScope&) = delete;
  CoderScope& operator=(const CoderScope&) = delete;
};

Buffer bufferFor(Index n, Coder coder) { return Buffer(n, Buffer::defaultBlockSize, coder == Coder::OneStack ? 1 : 8); }

template <class Policy>
void exactMultiply(benchmark::State& state, Index n, double gamma, Coder coder = Coder::OneStack) {
  const CoderScope scope(coder);
  if (coder == Coder::Lanes && !hypergrad::laneCoderActive()) {
    state.SkipWithError("the lane coder is not available on this processor (AVX-512F and DQ)");
    return;
  }
  const std::uint32_t numerator = hypergrad::Ratio<kRatioBits>::nearestDyadic(gamma).numerator;
  const auto runs = hypergrad::ratioRuns(n, numerator);
  const std::vector<std::int64_t> original = velocityLike(n, 1);
  std::vector<std::int64_t> c = original;
  Buffer buf = bufferFor(n, coder);
  int pending = 0;
  double timed = 0.0;
  for (auto _ : state) {
    if (pending == kPairSteps) {
      state.PauseTiming();
      for (; pending > 0; --pending) hypergrad::divideByRatio<Policy, kRatioBits>(c.data(), n, runs, buf);
      state.ResumeTiming();
    }
    const double t0 = bench::threadSeconds();
    hypergrad::multiplyByRatio<Policy, kRatioBits>(c.data(), n, runs, buf);
    timed += bench::threadSeconds() - t0;
    ++pending;
  }
  for (; pending > 0; --pending) hypergrad::divideByRatio<Policy, kRatioBits>(c.data(), n, runs, buf);
  if (c != original || !buf.empty()) state.SkipWithError("multiply/divide did not come back bit for bit");
  state.SetItemsProcessed(state.iterations() * n);
  setNsPerElement(state, timed, n);
  setBitsCounters<Policy>(state, n, numerator);
}

template <class Policy>
void exactDivide(benchmark::State& state, Index n, double gamma, Coder coder = Coder::OneStack) {
  const CoderScope scope(coder);
  if (coder == Coder::Lanes && !hypergrad::laneCoderActive()) {
    state.SkipWithError("the lane coder is not available on this processor (AVX-512F and DQ)");
    return;
  }
  const std::uint32_t numerator = hypergrad::Ratio<kRatioBits>::nearestDyadic(gamma).numerator;
  const auto runs = hypergrad::ratioRuns(n, numerator);
  const std::vector<std::int64_t> original = velocityLike(n, 1);
  std::vector<std::int64_t> c = original;
  Buffer buf = bufferFor(n, coder);
  int pending = 0;
  double timed = 0.0;
  for (auto _ : state) {
    if (pending == 0) {
      state.PauseTiming();
      for (; pending < kPairSteps; ++pending) hypergrad::multiplyByRatio<Policy, kRatioBits>(c.data(), n, runs, buf);
      state.ResumeTiming();
    }
    const double t0 = bench::threadSeconds();
    hypergrad::divideByRatio<Policy, kRatioBits>(c.data(), n, runs, buf);
    timed += bench::threadSeconds() - t0;
    --pending;
  }
  for (; pending > 0; --pending) hypergrad::divideByRatio<Policy, kRatioBits>(c.data(), n, runs, buf);
  if (c != original || !buf.empty()) state.SkipWithError("multiply/divide did not come back bit for bit");
  state.SetItemsProcessed(state.iterations() * n);
  setNsPerElement(state, timed, n);
  setBitsCounters<Policy>(state, n, numerator);
}

// ---- The momentum update -------------------------------------------------------------------------

constexpr double kAlpha = 0.1;
constexpr double kGamma = 0.9;

using Optimizer = hypergrad::SgdMomentum<Format, BitsBackRounding, kRatioBits, kPrecisionBits>;

struct UpdateSetup {
  hypergrad::ParameterLayout layout;
  Eigen::VectorXd w1, g;
  explicit UpdateSetup(Index n) : layout(hypergrad::ParameterLayout::single(n)), w1(n), g(n) {
    hypergrad::CounterRng rng(3, 0x9);
    for (Index i = 0; i < n; ++i) {
      w1(i) = 0.05 * rng.normal();
      g(i) = 0.1 * rng.normal();
    }
  }
  Optimizer optimizer(Coder coder = Coder::OneStack) const {
    return Optimizer(layout, hypergrad::Schedule::constant(kPairSteps, 1, kAlpha),
                     hypergrad::Schedule::constant(kPairSteps, 1, kGamma),
                     hypergrad::OptimizerOptions().withLanes(coder == Coder::OneStack ? 1 : 8));
  }
};

void rewind(Optimizer& opt, const Eigen::VectorXd& g) {
  while (opt.iteration() > 0) {
    opt.unstepWeights();
    opt.unstepVelocity(g);
  }
}

void updateExact(benchmark::State& state, Index n, Coder coder = Coder::OneStack) {
  const CoderScope scope(coder);
  const UpdateSetup s(n);
  Optimizer opt = s.optimizer(coder);
  opt.start(s.w1);
  const auto w0 = opt.fixedWeights();
  double timed = 0.0;
  for (auto _ : state) {
    if (opt.iteration() == kPairSteps) {
      state.PauseTiming();
      rewind(opt, s.g);
      state.ResumeTiming();
    }
    const double t0 = bench::threadSeconds();
    opt.stepWithGradient(s.g);
    timed += bench::threadSeconds() - t0;
  }
  rewind(opt, s.g);
  if (opt.fixedWeights() != w0 || !opt.buffer().empty()) state.SkipWithError("not recovered bit for bit");
  state.SetItemsProcessed(state.iterations() * n);
  setNsPerElement(state, timed, n);
}

void unstepExact(benchmark::State& state, Index n, Coder coder = Coder::OneStack) {
  const CoderScope scope(coder);
  const UpdateSetup s(n);
  Optimizer opt = s.optimizer(coder);
  opt.start(s.w1);
  const auto w0 = opt.fixedWeights();
  double timed = 0.0;
  for (auto _ : state) {
    if (opt.iteration() == 0) {
      state.PauseTiming();
      while (opt.iteration() < kPairSteps) opt.stepWithGradient(s.g);
      state.ResumeTiming();
    }
    const double t0 = bench::threadSeconds();
    opt.unstepWeights();
    opt.unstepVelocity(s.g);
    timed += bench::threadSeconds() - t0;
  }
  rewind(opt, s.g);
  if (opt.fixedWeights() != w0 || !opt.buffer().empty()) state.SkipWithError("not recovered bit for bit");
  state.SetItemsProcessed(state.iterations() * n);
  setNsPerElement(state, timed, n);
}

void updateDouble(benchmark::State& state, Index n) {
  const UpdateSetup s(n);
  const double gammaQ = hypergrad::Ratio<kRatioBits>::quantize(kGamma).value();
  // The same rule on the reference arithmetic, with the quantised γ of the exact run.
  hypergrad::ReferenceOptimizer<hypergrad::MomentumRule> opt(
      s.layout, hypergrad::Schedule::constant(kPairSteps, 1, kAlpha), hypergrad::Schedule::constant(kPairSteps, 1, gammaQ));
  opt.start(s.w1);
  double timed = 0.0;
  for (auto _ : state) {
    if (opt.iteration() == kPairSteps) {  // same cadence as the exact benchmark (restart, untimed)
      state.PauseTiming();
      opt.start(s.w1);
      state.ResumeTiming();
    }
    const double t0 = bench::threadSeconds();
    opt.stepWithGradient(s.g);
    benchmark::ClobberMemory();
    timed += bench::threadSeconds() - t0;
  }
  benchmark::DoNotOptimize(opt.weights().data());
  state.SetItemsProcessed(state.iterations() * n);
  setNsPerElement(state, timed, n);
}

void registerAll() {
  struct Size {
    const char* name;
    Index n;
  };
  for (const Size size : {Size{"N:100000", 100000}, Size{"smoke", 4096}}) {
    const bool smoke = size.n < 100000;
    for (const double g : kGammas) {
      if (smoke && g != 0.9) continue;
      const std::string tail = std::string("/") + size.name + "/gamma:" + gammaName(g);
      const Index n = size.n;
      benchmark::RegisterBenchmark(("exact_multiply/bits-back" + tail).c_str(),
                                   [n, g](benchmark::State& st) { exactMultiply<BitsBackRounding>(st, n, g); });
      benchmark::RegisterBenchmark(("exact_divide/bits-back" + tail).c_str(),
                                   [n, g](benchmark::State& st) { exactDivide<BitsBackRounding>(st, n, g); });
      for (const Coder coder : {Coder::LanesScalar, Coder::Lanes}) {
        const std::string name = coder == Coder::Lanes ? "/lanes:8" : "/lanes:8-scalar";
        benchmark::RegisterBenchmark(("exact_multiply/bits-back" + name + tail).c_str(),
                                     [n, g, coder](benchmark::State& st) { exactMultiply<BitsBackRounding>(st, n, g, coder); });
        benchmark::RegisterBenchmark(("exact_divide/bits-back" + name + tail).c_str(),
                                     [n, g, coder](benchmark::State& st) { exactDivide<BitsBackRounding>(st, n, g, coder); });
      }
      benchmark::RegisterBenchmark(("exact_multiply/floor" + tail).c_str(),
                                   [n, g](benchmark::State& st) { exactMultiply<FloorRounding>(st, n, g); });
      benchmark::RegisterBenchmark(("exact_divide/floor" + tail).c_str(),
                                   [n, g](benchmark::State& st) { exactDivide<FloorRounding>(st, n, g); });
    }
    const std::string tail = std::string("/") + size.name + "/gamma:0.9";
    const Index n = size.n;
    benchmark::RegisterBenchmark(("momentum_update/exact" + tail).c_str(),
                                 [n](benchmark::State& st) { updateExact(st, n); });
    benchmark::RegisterBenchmark(("momentum_update/unstep" + tail).c_str(),
                                 [n](benchmark::State& st) { unstepExact(st, n); });
    for (const Coder coder : {Coder::LanesScalar, Coder::Lanes}) {
      const std::string name = coder == Coder::Lanes ? "/lanes:8" : "/lanes:8-scalar";
      benchmark::RegisterBenchmark(("momentum_update/exact" + name + tail).c_str(),
                                   [n, coder](benchmark::State& st) { updateExact(st, n, coder); });
      benchmark::RegisterBenchmark(("momentum_update/unstep" + name + tail).c_str(),
                                   [n, coder](benchmark::State& st) { unstepExact(st, n, coder); });
    }
    benchmark::RegisterBenchmark(("momentum_update/double" + tail).c_str(),
                                 [n](benchmark::State& st) { updateDouble(st, n); });
  }
}

}  // namespace

int main(int argc, char** argv) {
  // "--hypergrad_long" is accepted for symmetry; there are no long cases here.
  return bench::runBenchmarks(argc, argv, [](bool) { registerAll(); });
}
