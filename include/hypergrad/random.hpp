// SPDX-License-Identifier: MIT
#pragma once

/// \file random.hpp
/// \brief Counter-based randomness: every draw is a pure function of (seed, stream, counter), so
/// the forward and the reverse pass see the same minibatches and initial weights without any
/// hidden RNG state (DESIGN.md §3).

#include <cmath>
#include <cstdint>

#include "config.hpp"

namespace hypergrad {

/// SplitMix64 finaliser: a bijective 64-bit mix with good avalanche.
constexpr std::uint64_t mix64(std::uint64_t z) noexcept {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/// A small deterministic generator. Its whole state is one word, so a stream is reproducible from
/// (seed, stream id) alone: `CounterRng rng(seed, t)` gives the same numbers in every pass.
class CounterRng {
 public:
  /// Stream `stream` of generator `seed`: the same pair always gives the same numbers.
  explicit CounterRng(std::uint64_t seed, std::uint64_t stream = 0) noexcept
      : m_state(mix64(seed ^ mix64(stream + 0x632BE59BD9B4E019ull))) {}

  /// Next 64 random bits.
  std::uint64_t next() noexcept {
    m_state += 0x9E3779B97F4A7C15ull;
    return mix64(m_state);
  }

  /// Uniform on [0, 1) with 53 random bits.
  double uniform() noexcept { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

  /// Uniform integer in [0, n), n > 0 (Lemire's multiply-shift; bias < n / 2^64, irrelevant here).
  std::uint64_t below(std::uint64_t n) noexcept {
    return static_cast<std::uint64_t>((static_cast<detail::UInt128>(next()) * n) >> 64);
  }

  /// Standard normal draw (Box–Muller; uses two uniforms, deterministic).
  double normal() noexcept {
    double u1 = uniform();
    const double u2 = uniform();
    if (u1 < 0x1.0p-60) u1 = 0x1.0p-60;
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586476925 * u2);
  }

 private:
  std::uint64_t m_state;
};

}  // namespace hypergrad
