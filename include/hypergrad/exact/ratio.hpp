// SPDX-License-Identifier: MIT
#pragma once

/// \file ratio.hpp
/// \brief Momentum factors quantised to ratios n/d with d = 2^DBits: the exact multiply works on
/// the integer pair, and the hypergradient refers to the quantised value actually used.

#include <cmath>
#include <cstdint>

#include "../config.hpp"
#include "../errors.hpp"

namespace hypergrad {

/// A ratio n / 2^DBits with 1 ≤ n ≤ 2^DBits, i.e. a value in (0, 1].
/// Resolution 2^−DBits (1.53e-5 for the default DBits = 16).
template <int DBits = 16>
struct Ratio {
  static_assert(DBits >= 1 && DBits <= 20, "hypergrad::Ratio<DBits>: DBits must be in [1, 20]");
  static constexpr int denominatorBits = DBits;
  static constexpr std::uint32_t denominator = std::uint32_t(1) << DBits;

  std::uint32_t numerator = denominator;  ///< n, in [1, d]

  /// The value n/d actually used.
  constexpr double value() const noexcept { return static_cast<double>(numerator) / denominator; }

  /// Nearest representable ratio to gamma (ties away from zero). Throws InvalidArgument when gamma
  /// is not finite, not in (0, 1], or below 1/(2d) so that it would round to zero. `where` names the
  /// caller's context (step, group) in the message.
  static Ratio quantize(double gamma, const char* where = "gamma") {
    if (!std::isfinite(gamma) || gamma <= 0.0 || gamma > 1.0) {
      throw InvalidArgument(detail::message(where, " = ", gamma,
                                            ": a momentum factor must be a finite number in (0, 1]"));
    }
    const double scaled = std::round(gamma * denominator);
    if (scaled < 1.0) {
      throw InvalidArgument(detail::message(where, " = ", gamma, " is below the smallest representable momentum 1/",
                                            denominator, " = ", 1.0 / denominator,
                                            "; use a larger gamma or a finer Ratio<DBits>"));
    }
    return Ratio{static_cast<std::uint32_t>(scaled)};
  }

  /// From an explicit numerator n in [1, d].
  static Ratio fromNumerator(std::uint32_t n) {
    if (n < 1 || n > denominator) {
      throw InvalidArgument(detail::message("Ratio::fromNumerator: numerator ", n, " must be in [1, ", denominator, "]"));
    }
    return Ratio{n};
  }

  constexpr bool operator==(const Ratio& o) const noexcept { return numerator == o.numerator; }
  constexpr bool operator!=(const Ratio& o) const noexcept { return numerator != o.numerator; }
};

/// Quantises gamma to the nearest Ratio<DBits> and returns its value: the γ the exact
/// arithmetic really uses.
template <int DBits = 16>
double quantizedGamma(double gamma) {
  return Ratio<DBits>::quantize(gamma).value();
}

}  // namespace hypergrad
