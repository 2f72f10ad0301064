// SPDX-License-Identifier: MIT
//
// Issue "Reliability" item 8: what the two rounding policies of the exact ratio multiply cost in
// accuracy, measured rather than bounded. Every figure is a Google Benchmark counter.
//
//  a) product_error/<policy>/gamma:<γ>/{dyadic,fraction}:<n>/<d>/N:<N>
//       The error of one exact product c·n/d, in units of 2^-52: result − c·n/d, computed exactly
//       with 128-bit integers (as result·d − c·n, divided by d only for the statistics). Values are
//       velocity-like (0.01·N(0,1) in Q11.52) and go through an InformationBuffer as in training:
//       each element is multiplied 5 times, with a momentum-like update between the multiplies
//       (v ← γv − (1 − γ)·0.01·N(0,1)), so that the coder state carries the bits of earlier
//       products. Counters over multiplies 2–5 (4 × 2^20 = 4.19 M products): max |error|, mean
//       error (the bias), RMS; the first multiply of each element, from the empty coder state
//       (whose low bits are zero: bits-back then rounds down like floor), is reported apart
//       (first_*); buffer bits per product over all five. Ratios: the optimizer's default, dyadic
//       n/2^16, for γ = 0.5, 0.9, 0.98, 0.999, and the exact fractions 9/10, 49/50, 999/1000
//       (Ratio<16>::fromFraction: the OptimizerOptions().exactFractions() ratios).
//  b) drift_vs_double/<wl>/T:<T>
//       The paper's MLP (bench::mnistSpec(): 784-50-50-50-10, batch 200, α = 0.1, γ = 0.9, the
//       default shard size) trained T steps three ways from the same w₁ on the same batches:
//       SgdMomentum<> (bits-back), SgdMomentum<FixedFormat<52>, FloorRounding>, and the plain
//       double ReferenceOptimizer<MomentumRule> on the same quantised γ (quantizedMomenta()), the
//       latter with TrajectoryStorage::Store so that hypergrad::reverse() runs the naive
//       stored-trajectory reverse pass over the double run. Counters, per policy: relative
//       difference of the final weights and of the hypergradients against the double run, and
//       the information buffer (bits per weight per step, allocated bytes). For scale, the same
//       figures for a second double run whose w₁ is moved by one ulp per weight (double_ulp_*):
//       how much the problem itself amplifies a perturbation of the size of one double rounding.
//       T = 100 by default, T = 1000 with --hypergrad_long.
//
// Hypergradient comparison. ∂f/∂α is T × G (G = 8 groups). Relative differences of entries that
// are nearly zero (a sign change along t) measure absolute noise divided by nothing, so the max
// relative difference is taken over the entries whose magnitude in the double run is at least
// 1e-3 of its largest entry (`dalpha_max_rel`); the count of such entries is reported. The
// relative norm difference ‖a − b‖/‖b‖ (`dalpha_rel_norm`) needs no floor. `dalpha_max_rel_1e-8`
// is bench_hypergrad's figure (every entry, denominators floored at 1e-8 absolute).

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include <hypergrad/exact.hpp>
#include <hypergrad/optimizers/sgd_momentum.hpp>
#include <hypergrad/reference/optimizer.hpp>
#include <hypergrad/reverse.hpp>

#include "bench_common.hpp"

namespace {

using bench::Workload;
using bench::WorkloadSpec;
using Eigen::MatrixXd;
using Eigen::VectorXd;
using hypergrad::Index;
using hypergrad::detail::Int128;
using hypergrad::detail::UInt128;
using Q52 = hypergrad::FixedFormat<52>;
using Ratio16 = hypergrad::Ratio<16>;

// ---- a) The error of one exact product ----------------------------------------------------------

// Multiplies per element: the first (from the empty coder state) is reported apart, the other
// four make the statistics.
constexpr int kMultipliesPerElement = 5;

/// Exact running statistics of errors e/d (e an integer, d the ratio's denominator).
struct ErrorStats {
  Int128 maxAbs = 0;       // max |e|
  Int128 sum = 0;          // Σ e
  UInt128 sumSquares = 0;  // Σ e²
  std::int64_t count = 0;

  void add(Int128 e) {
    const Int128 a = e < 0 ? -e : e;
    maxAbs = std::max(maxAbs, a);
    sum += e;
    sumSquares += static_cast<UInt128>(a) * static_cast<UInt128>(a);
    ++count;
  }
};

template <class Rounding>
void productError(benchmark::State& state, Ratio16 ratio, Index numElements) {
  const double gamma = ratio.value();
  const auto n = static_cast<Int128>(ratio.numerator), d = static_cast<Int128>(ratio.denominator);
  ErrorStats first, steady;
  double bits = 0.0;
  for (auto _ : state) {
    first = steady = ErrorStats();
    hypergrad::CounterRng rng(2026, 0xacc);
    std::vector<std::int64_t> c(static_cast<std::size_t>(numElements));
    for (auto& x : c) x = Q52::fromDouble(0.01 * rng.normal());
    hypergrad::InformationBuffer<24> buffer(numElements);
    for (int k = 0; k < kMultipliesPerElement; ++k) {
      ErrorStats& stats = k == 0 ? first : steady;
      for (Index i = 0; i < numElements; ++i) {
        std::int64_t& x = c[static_cast<std::size_t>(i)];
        const std::int64_t before = x;
        Rounding::multiplyRatio(x, ratio, i, buffer);
        // result − before·n/d, times d: exact in 128 bits.
        stats.add(static_cast<Int128>(x) * d - static_cast<Int128>(before) * n);
        x -= Q52::fromDouble((1.0 - gamma) * 0.01 * rng.normal());
      }
    }
    bits = buffer.informationBits();
  }
  const double dd = static_cast<double>(d);
  const double count = static_cast<double>(steady.count);
  const double mean = static_cast<double>(steady.sum) / (count * dd);
  state.counters["products"] = count;
  state.counters["max_abs_error_units"] = static_cast<double>(steady.maxAbs) / dd;
  state.counters["mean_error_units"] = mean;  // the bias
  state.counters["rms_error_units"] = std::sqrt(static_cast<double>(steady.sumSquares) / count) / dd;
  state.counters["std_error_units"] =
      std::sqrt(std::max(0.0, static_cast<double>(steady.sumSquares) / (count * dd * dd) - mean * mean));
  // The first multiply of each element, from the empty coder state.
  state.counters["first_mean_error_units"] = static_cast<double>(first.sum) / (static_cast<double>(first.count) * dd);
  state.counters["first_max_abs_error_units"] = static_cast<double>(first.maxAbs) / dd;
  state.counters["bits_per_product"] = bits / static_cast<double>(first.count + steady.count);
  state.counters["bound_bits"] = -std::log2(gamma);
  state.counters["numerator"] = static_cast<double>(ratio.numerator);
  state.counters["denominator"] = static_cast<double>(ratio.denominator);
}

// ---- b) Q11.52 against float64 on the paper's MLP ------------------------------------------------

/// ‖a − b‖ / ‖b‖.
template <class A, class B>
double relativeNorm(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b) {
  return (a - b).norm() / b.norm();
}

/// Max |a − b| / |b| over the entries with |b| ≥ floorFraction · max |b|; `counted` gets how many.
double maxRelativeAboveFloor(const MatrixXd& a, const MatrixXd& b, double floorFraction, Index& counted) {
  const double threshold = floorFraction * b.cwiseAbs().maxCoeff();
  double worst = 0.0;
  counted = 0;
  for (Index i = 0; i < b.size(); ++i) {
    const double y = b.data()[i];
    if (std::fabs(y) < threshold) continue;
    ++counted;
    worst = std::max(worst, std::fabs(a.data()[i] - y) / std::fabs(y));
  }
  return worst;
}

template <class Rounding>
using Sgd = hypergrad::SgdMomentum<Q52, Rounding>;

struct RunResult {
  VectorXd finalWeights;
  hypergrad::Hypergradients hg;
  double bitsPerWeightStep = 0.0;
  double allocatedBytes = 0.0;
};

template <class Rounding>
RunResult exactRun(const Workload& wl, Index T) {
  Sgd<Rounding> opt(wl.layout, wl.alphas(T), wl.gammas(T, wl.spec.gamma));
  opt.start(wl.w1);
  hypergrad::train(opt, wl.train);
  RunResult r;
  r.finalWeights = opt.weights();
  r.bitsPerWeightStep = opt.buffer().informationBits() / (static_cast<double>(wl.size()) * static_cast<double>(T));
  r.allocatedBytes = static_cast<double>(opt.buffer().memoryBytes());
  r.hg = hypergrad::reverse(opt, wl.train, wl.validation);  // checks the bit-exact recovery of w₁, v₁
  return r;
}

void report(benchmark::State& state, const std::string& prefix, const RunResult& exact, const RunResult& ref) {
  Index counted = 0;
  state.counters[prefix + "weights_rel_norm"] = relativeNorm(exact.finalWeights, ref.finalWeights);
  state.counters[prefix + "weights_max_abs"] = (exact.finalWeights - ref.finalWeights).cwiseAbs().maxCoeff();
  state.counters[prefix + "meta_rel"] =
      std::fabs(exact.hg.metaObjective - ref.hg.metaObjective) / std::fabs(ref.hg.metaObjective);
  state.counters[prefix + "dalpha_max_rel"] =
      maxRelativeAboveFloor(exact.hg.learningRates, ref.hg.learningRates, 1e-3, counted);
  state.counters[prefix + "dalpha_entries_counted"] = static_cast<double>(counted);
  state.counters[prefix + "dalpha_rel_norm"] = relativeNorm(exact.hg.learningRates, ref.hg.learningRates);
  state.counters[prefix + "dalpha_max_rel_1e-8"] =
      bench::maxRelativeDifference(exact.hg.learningRates, ref.hg.learningRates, 1e-8);
  state.counters[prefix + "dgamma_rel_norm"] = relativeNorm(exact.hg.momenta, ref.hg.momenta);
  state.counters[prefix + "dw1_rel_norm"] = relativeNorm(exact.hg.initialWeights, ref.hg.initialWeights);
  if (exact.allocatedBytes > 0.0) {
    state.counters[prefix + "bits_per_weight_step"] = exact.bitsPerWeightStep;
    state.counters[prefix + "buffer_alloc_bytes"] = exact.allocatedBytes;
  }
}

/// The plain double run from w₁ on the γ the exact runs use, keeping its trajectory for the
/// naive stored-trajectory reverse().
RunResult doubleRun(const Workload& wl, Index T, const MatrixXd& gammaUsed, const VectorXd& w1) {
  bench::DoubleMomentum plain =
      bench::doubleMomentum(wl.layout, wl.alphas(T).values(), gammaUsed, hypergrad::TrajectoryStorage::Store);
  plain.start(w1);
  hypergrad::train(plain, wl.train);
  RunResult r;
  r.finalWeights = plain.weights();
  r.hg = hypergrad::reverse(plain, wl.train, wl.validation);
  return r;
}

void driftVsDouble(benchmark::State& state, const WorkloadSpec& spec, Index T) {
  const Workload& wl = bench::workload(spec);
  RunResult bitsBack, floorRun, ref, ulp;
  double gammaUsed = 0.0;
  for (auto _ : state) {
    bitsBack = exactRun<hypergrad::BitsBackRounding>(wl, T);
    floorRun = exactRun<hypergrad::FloorRounding>(wl, T);
    const Sgd<hypergrad::BitsBackRounding> twin(wl.layout, wl.alphas(T), wl.gammas(T, spec.gamma));
    gammaUsed = twin.quantizedMomenta()(0, 0);
    ref = doubleRun(wl, T, twin.quantizedMomenta(), wl.w1);
    // The problem's own sensitivity: the same double run from w₁ moved by one ulp per weight
    // (relative 1.1e-16, the size of one double rounding).
    VectorXd w1Ulp = wl.w1;
    for (Index i = 0; i < w1Ulp.size(); ++i) w1Ulp(i) = std::nextafter(w1Ulp(i), HUGE_VAL);
    ulp = doubleRun(wl, T, twin.quantizedMomenta(), w1Ulp);
  }
  report(state, "bitsback_", bitsBack, ref);
  report(state, "floor_", floorRun, ref);
  report(state, "double_ulp_", ulp, ref);
  state.counters["floor_over_bitsback_bits"] = floorRun.bitsPerWeightStep / bitsBack.bitsPerWeightStep;
  state.counters["floor_over_bitsback_alloc"] = floorRun.allocatedBytes / bitsBack.allocatedBytes;
  state.counters["bound_bits"] = -std::log2(gammaUsed);
  state.counters["gamma_quantized"] = gammaUsed;
  state.counters["dalpha_largest"] = ref.hg.learningRates.cwiseAbs().maxCoeff();
  state.counters["weights_norm"] = ref.finalWeights.norm();
}

// ---- Registration ---------------------------------------------------------------------------------

/// "gamma:0.9/dyadic:58982/65536" or "gamma:0.9/fraction:9/10".
std::string ratioName(const std::string& gamma, Ratio16 r) {
  return "gamma:" + gamma + (r.dyadic() ? "/dyadic:" : "/fraction:") + std::to_string(r.numerator) + "/" +
         std::to_string(r.denominator);
}

void registerAll(bool longCases) {
  // γ as the optimizer quantises it by default (dyadic n/2^16), and the exact fractions that
  // OptimizerOptions().exactFractions() uses for 0.9, 0.98 and 0.999 (0.5 is dyadic either way).
  const std::vector<std::pair<std::string, Ratio16>> ratios = {
      {"0.5", Ratio16::quantize(0.5)},           {"0.9", Ratio16::quantize(0.9)},
      {"0.9", Ratio16::fromFraction(9, 10)},     {"0.98", Ratio16::quantize(0.98)},
      {"0.98", Ratio16::fromFraction(49, 50)},   {"0.999", Ratio16::quantize(0.999)},
      {"0.999", Ratio16::fromFraction(999, 1000)},
  };
  // 2^20 elements × 4 measured multiplies = 4.19 M products per case; the smoke twin 4,096 × 4.
  for (const Index numElements : {Index(1) << 20, Index(4096)}) {
    const bool smoke = numElements < 100000;
    const std::string tail = "/N:" + std::to_string(numElements) + (smoke ? "/smoke" : "");
    for (const auto& entry : ratios) {
      if (smoke && entry.first != "0.9") continue;
      const Ratio16 ratio = entry.second;
      const std::string name = ratioName(entry.first, ratio) + tail;
      benchmark::RegisterBenchmark(("product_error/bits-back/" + name).c_str(),
                                   [ratio, numElements](benchmark::State& st) {
                                     productError<hypergrad::BitsBackRounding>(st, ratio, numElements);
                                   })
          ->Unit(benchmark::kMillisecond)->Iterations(1);
      benchmark::RegisterBenchmark(("product_error/floor/" + name).c_str(),
                                   [ratio, numElements](benchmark::State& st) {
                                     productError<hypergrad::FloorRounding>(st, ratio, numElements);
                                   })
          ->Unit(benchmark::kMillisecond)->Iterations(1);
    }
  }

  for (const WorkloadSpec& spec : {bench::mnistSpec(), bench::smokeSpec()}) {
    const bool smoke = spec.name == "smoke";
    std::vector<Index> steps = {spec.steps};
    if (longCases && !smoke) steps.push_back(1000);
    for (const Index T : steps) {
      benchmark::RegisterBenchmark(("drift_vs_double/" + spec.name + "/T:" + std::to_string(T)).c_str(),
                                   [spec, T](benchmark::State& st) { driftVsDouble(st, spec, T); })
          ->Unit(benchmark::kSecond)->Iterations(1);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  return bench::runBenchmarks(argc, argv, registerAll);
}
