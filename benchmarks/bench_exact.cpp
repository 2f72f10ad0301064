// SPDX-License-Identifier: MIT
//
// Issue "Foundation": the exact-arithmetic layer on its own, N = 10^5 elements.
//
//   exact_multiply/<policy>/<N>/gamma:<γ>   forward  c ← c·n/d with the information buffer
//   exact_divide/<policy>/<N>/gamma:<γ>     reverse  c ← c·d/n with the information buffer
//   momentum_update/<variant>/<N>           v ← γv − (1−γ)g; w ← w + αv, with a precomputed g:
//        exact   SgdMomentum::stepWithGradient (fixed point + buffer)
//        unstep  SgdMomentum::unstepWeights + unstepVelocity (its inverse)
//        fused   a one-pass version of the same exact update written here, bit-identical to the
//                library's (checked), to show what the library's multi-pass update costs
//        double  the same update in plain double on Eigen vectors
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
#include <exception>
#include <limits>
#include <string>
#include <vector>

#include <Eigen/Core>

#include <hypergrad/exact.hpp>
#include <hypergrad/optimizers/sgd_momentum.hpp>
#include <hypergrad/random.hpp>

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
  return std::log2(static_cast<double>(hypergrad::Ratio<kRatioBits>::denominator) / numerator);
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

template <class Policy>
void exactMultiply(benchmark::State& state, Index n, double gamma) {
  const std::uint32_t numerator = hypergrad::Ratio<kRatioBits>::quantize(gamma).numerator;
  const auto runs = hypergrad::ratioRuns(n, numerator);
  const std::vector<std::int64_t> original = velocityLike(n, 1);
  std::vector<std::int64_t> c = original;
  Buffer buf(n);
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
void exactDivide(benchmark::State& state, Index n, double gamma) {
  const std::uint32_t numerator = hypergrad::Ratio<kRatioBits>::quantize(gamma).numerator;
  const auto runs = hypergrad::ratioRuns(n, numerator);
  const std::vector<std::int64_t> original = velocityLike(n, 1);
  std::vector<std::int64_t> c = original;
  Buffer buf(n);
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
  Optimizer optimizer() const {
    return Optimizer(layout, hypergrad::Schedule::constant(kPairSteps, 1, kAlpha),
                     hypergrad::Schedule::constant(kPairSteps, 1, kGamma));
  }
};

void rewind(Optimizer& opt, const Eigen::VectorXd& g) {
  while (opt.iteration() > 0) {
    opt.unstepWeights();
    opt.unstepVelocity(g);
  }
}

void updateExact(benchmark::State& state, Index n) {
  const UpdateSetup s(n);
  Optimizer opt = s.optimizer();
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

void unstepExact(benchmark::State& state, Index n) {
  const UpdateSetup s(n);
  Optimizer opt = s.optimizer();
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

/// A one-pass exact update: per element, v ← v·n/d (buffer), v ← v − fix((1−γ)g),
/// w ← w + fix(α v), with the same conversions as SgdMomentum::stepWithGradient and therefore
/// the same bits. An error at element i is undone exactly by reversing elements i … 0 (the
/// arithmetic is reversible), so it needs neither staging vectors nor a copy-back pass.
/// Single group, single block order (the library's per-block loop would wrap this).
struct FusedUpdate {
  std::vector<std::int64_t> w, v;
  Buffer buf;

  void start(const Eigen::VectorXd& w1) {
    w.resize(static_cast<std::size_t>(w1.size()));
    for (Index i = 0; i < w1.size(); ++i) w[static_cast<std::size_t>(i)] = Format::fromDouble(w1(i));
    v.assign(w.size(), 0);
    buf = Buffer(w1.size());
  }

  void step(const Eigen::VectorXd& g, double alpha, double gamma, std::uint32_t numerator) {
    const Index n = g.size();
    Index i = 0;
    try {
      for (; i < n; ++i) {
        const auto k = static_cast<std::size_t>(i);
        // Throws (non-finite or out of range) before element i is touched.
        const std::int64_t dv = Format::fromDouble((1.0 - gamma) * g(i));
        std::int64_t c = v[k];
        BitsBackRounding::multiplyOne<kRatioBits>(c, numerator, i, buf);
        std::int64_t nv = 0, nw = 0;
        bool bad = __builtin_sub_overflow(c, dv, &nv) || nv == std::numeric_limits<std::int64_t>::min();
        if (!bad) {
          const double step = alpha * Format::toDouble(nv);
          bad = !(std::fabs(step) < Format::maxMagnitude);  // fromDouble's own range test: it cannot throw below
          if (!bad) {
            const std::int64_t dw = Format::fromDouble(step);
            bad = __builtin_add_overflow(w[k], dw, &nw) || nw == std::numeric_limits<std::int64_t>::min();
          }
        }
        if (bad) {
          BitsBackRounding::divideOne<kRatioBits>(c, numerator, i, buf);  // element i itself
          throw hypergrad::FixedPointOverflow("fused update: overflow");
        }
        v[k] = nv;
        w[k] = nw;
      }
    } catch (...) {
      while (i-- > 0) {  // undo elements i-1 … 0 in reverse order: the buffer comes back word for word
        const auto k = static_cast<std::size_t>(i);
        w[k] -= Format::fromDouble(alpha * Format::toDouble(v[k]));
        v[k] += Format::fromDouble((1.0 - gamma) * g(i));
        BitsBackRounding::divideOne<kRatioBits>(v[k], numerator, i, buf);
      }
      throw;
    }
  }
};

void updateFused(benchmark::State& state, Index n) {
  const UpdateSetup s(n);
  const std::uint32_t numerator = hypergrad::Ratio<kRatioBits>::quantize(kGamma).numerator;
  const double gammaQ = hypergrad::Ratio<kRatioBits>::quantize(kGamma).value();
  // Bit-identity with the library over K steps (untimed).
  {
    Optimizer opt = s.optimizer();
    opt.start(s.w1);
    FusedUpdate ref;
    ref.start(s.w1);
    for (int k = 0; k < kPairSteps; ++k) {
      opt.stepWithGradient(s.g);
      ref.step(s.g, kAlpha, gammaQ, numerator);
    }
    for (Index i = 0; i < n; ++i)
      if (opt.fixedWeights()[i] != ref.w[static_cast<std::size_t>(i)] ||
          opt.fixedVelocity()[i] != ref.v[static_cast<std::size_t>(i)]) {
        state.SkipWithError("fused update differs from SgdMomentum::stepWithGradient");
        return;
      }
    if (!(opt.buffer() == ref.buf)) {
      state.SkipWithError("fused update's buffer differs from SgdMomentum's");
      return;
    }
  }
  FusedUpdate fused;
  fused.start(s.w1);
  int pending = 0;
  double timed = 0.0;
  for (auto _ : state) {
    if (pending == kPairSteps) {
      state.PauseTiming();
      fused.start(s.w1);
      pending = 0;
      state.ResumeTiming();
    }
    const double t0 = bench::threadSeconds();
    fused.step(s.g, kAlpha, gammaQ, numerator);
    timed += bench::threadSeconds() - t0;
    ++pending;
  }
  state.SetItemsProcessed(state.iterations() * n);
  setNsPerElement(state, timed, n);
}

void updateDouble(benchmark::State& state, Index n) {
  const UpdateSetup s(n);
  const double gammaQ = hypergrad::Ratio<kRatioBits>::quantize(kGamma).value();
  Eigen::VectorXd w = s.w1, v = Eigen::VectorXd::Zero(n);
  int pending = 0;
  double timed = 0.0;
  for (auto _ : state) {
    if (pending == kPairSteps) {  // same cadence as the exact benchmark (restart, untimed)
      state.PauseTiming();
      w = s.w1;
      v.setZero();
      pending = 0;
      state.ResumeTiming();
    }
    const double t0 = bench::threadSeconds();
    v = gammaQ * v - (1.0 - gammaQ) * s.g;
    w += kAlpha * v;
    benchmark::ClobberMemory();
    timed += bench::threadSeconds() - t0;
    ++pending;
  }
  benchmark::DoNotOptimize(w.data());
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
    benchmark::RegisterBenchmark(("momentum_update/fused" + tail).c_str(),
                                 [n](benchmark::State& st) { updateFused(st, n); });
    benchmark::RegisterBenchmark(("momentum_update/double" + tail).c_str(),
                                 [n](benchmark::State& st) { updateDouble(st, n); });
  }
}

}  // namespace

int main(int argc, char** argv) {
  bench::takeLongFlag(argc, argv);  // accepted for symmetry with bench_hypergrad; no long cases here
  registerAll();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
