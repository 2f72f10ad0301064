// SPDX-License-Identifier: MIT
#pragma once

/// \file ratio.hpp
/// \brief Momentum factors as exact ratios n/d: the exact multiply works on the integer pair, and
/// the hypergradient refers to the ratio actually used.
///
/// **Which ratio a γ becomes** (Ratio::quantize): 0 is the zero ratio (no memory: the exact
/// multiply stores the value it destroys, 64 bits, log2(1/0) being unbounded); otherwise
/// 1. γ·2^DBits is an integer (0.5, 0.875, any multiple of 2^-16): the dyadic ratio n/2^DBits,
///    exact, on the fastest path (shifts instead of divisions).
/// 2. With Quantization::ExactFractions, a γ that is, in double precision, a fraction n/d with
///    d ≤ 2^DBits (0.9 = 9/10, 0.999 = 999/1000, 1/3): that fraction, exact, so the hypergradient
///    refers to the value the user asked for. Found among the continued-fraction convergents of γ
///    (only a convergent can be that close). Its multiply takes integer divisions where the dyadic
///    one shifts: about 2.5× the exact update's time per element (the gradient dominates a
///    training step: see benchmarks/README.md).
/// 3. With Quantization::BestFraction (AdamW's decay factor 1 − αλ, whose distance from 1 is what
///    matters): the closest fraction with d ≤ 2^DBits among γ's continued-fraction convergents and
///    the nearest dyadic ratio, |γ − n/d| < 1/(d·2^DBits); the general-denominator multiply.
/// 4. Any other γ: rounded to the nearest n/2^DBits, |γ − n/2^DBits| ≤ 2^-(DBits+1) (7.6e-6 at
///    DBits = 16); the optimizer reports how far each schedule moved
///    (ScheduleSet::quantization()). A γ below 1 that this would round to 1 is refused (the
///    momentum decay would silently vanish): pass 1 for no decay, or a finer Ratio<DBits>.
///
/// Every kind stores the entropy bound, log2(d/n) bits per multiply (the coder works for any
/// denominator: cumulative frequencies ceil(s·M/n) need no power of two).

#include <cmath>
#include <cstdint>

#include "../config.hpp"
#include "../errors.hpp"

namespace hypergrad {

/// How Ratio::quantize treats a γ that is not a multiple of 2^-DBits (see the file comment).
enum class Quantization {
  Dyadic,         ///< round to the nearest n/2^DBits (the default: the fastest exact multiply)
  ExactFractions, ///< use a fraction n/d with d ≤ 2^DBits exactly when γ is one; round the rest
  BestFraction    ///< the closest fraction with d ≤ 2^DBits (convergents and the nearest dyadic)
};

/// A ratio n/d in [0, 1] with 0 ≤ n ≤ d ≤ 2^DBits (n = 0: the exact multiply stores the whole
/// value it destroys, 64 bits, and restores it on the way back). Dyadic ratios are kept as n/2^DBits (d equal to
/// maxDenominator), so that every power-of-two denominator takes the fast path.
template <int DBits = 16>
struct Ratio {
  static_assert(DBits >= 1 && DBits <= 20, "hypergrad::Ratio<DBits>: DBits must be in [1, 20]");
  static constexpr int denominatorBits = DBits;  ///< log2 of the largest denominator
  /// 2^DBits: the largest denominator, and the one of every dyadic ratio.
  static constexpr std::uint32_t maxDenominator = std::uint32_t(1) << DBits;

  std::uint32_t numerator = maxDenominator;    ///< n, in [0, d]
  std::uint32_t denominator = maxDenominator;  ///< d, in [1, 2^DBits]

  /// The value n/d actually used.
  constexpr double value() const noexcept { return static_cast<double>(numerator) / denominator; }
  /// True for n/2^DBits (shifts, no divisions).
  constexpr bool dyadic() const noexcept { return denominator == maxDenominator; }
  /// True for 1 (an exact identity: multiplying stores nothing).
  constexpr bool one() const noexcept { return numerator == denominator; }
  /// True for 0 (multiplying stores the whole value: 64 bits).
  constexpr bool zero() const noexcept { return numerator == 0; }

  /// The ratio for gamma (see the file comment): exact when gamma is dyadic (or, with
  /// Quantization::ExactFractions, a fraction with a denominator ≤ 2^DBits), else the nearest
  /// n/2^DBits; 0 is the zero ratio. Throws InvalidArgument when gamma is not finite, not in
  /// [0, 1], rounds to zero although it is not 0, or rounds to 1 although it is below 1. `where`
  /// names the caller's context in the message.
  static Ratio quantize(double gamma, const char* where = "gamma", Quantization quantization = Quantization::Dyadic) {
    if (!std::isfinite(gamma) || gamma < 0.0 || gamma > 1.0) {
      throw InvalidArgument(detail::message(where, " = ", gamma, ": a momentum factor must be a finite number in [0, 1]"));
    }
    if (gamma == 0.0) return Ratio{0, maxDenominator};
    const double scaled = gamma * maxDenominator;  // exact: a power of two
    if (scaled == std::floor(scaled)) return Ratio{static_cast<std::uint32_t>(scaled), maxDenominator};
    Ratio exact;
    if (quantization == Quantization::ExactFractions && exactFraction(gamma, exact)) return exact;
    const double rounded = std::round(scaled);
    if (quantization == Quantization::BestFraction && bestFraction(gamma, exact) &&
        std::fabs(exact.value() - gamma) < std::fabs(rounded / maxDenominator - gamma) && !exact.one())
      return exact;
    if (rounded < 1.0) {
      throw InvalidArgument(detail::message(where, " = ", gamma, " is below the smallest representable momentum 1/",
                                            maxDenominator, " = ", 1.0 / maxDenominator,
                                            "; use a larger gamma, a finer Ratio<DBits>, or 0 (no memory: the exact "
                                            "multiply then stores the whole state, 64 bits per element and step)"));
    }
    if (rounded >= maxDenominator) {
      throw InvalidArgument(detail::message(
          where, " = ", gamma, " would be rounded to exactly 1 (it is within ", 1.0 / (2 * maxDenominator),
          " of 1 and not a fraction with a denominator <= ", maxDenominator,
          "), which turns the momentum decay off. Pass 1 if that is what you want, a gamma at most ",
          1.0 - 1.0 / maxDenominator, ", or a finer Ratio<DBits>"));
    }
    return Ratio{static_cast<std::uint32_t>(rounded), maxDenominator};
  }

  /// The nearest dyadic ratio n/2^DBits to gamma (ties away from zero), whatever gamma is: the
  /// ratios of the dyadic primitives multiplyByRatio / divideByRatio. Throws InvalidArgument when
  /// gamma is not finite, not in (0, 1] or below 1/2^(DBits+1).
  static Ratio nearestDyadic(double gamma, const char* where = "gamma") {
    if (!std::isfinite(gamma) || gamma <= 0.0 || gamma > 1.0) {
      throw InvalidArgument(detail::message(where, " = ", gamma, ": a momentum factor must be a finite number in (0, 1]"));
    }
    const double rounded = std::round(gamma * maxDenominator);
    if (rounded < 1.0) {
      throw InvalidArgument(detail::message(where, " = ", gamma, " is below the smallest representable momentum 1/",
                                            maxDenominator, "; use a larger gamma or a finer Ratio<DBits>"));
    }
    return Ratio{static_cast<std::uint32_t>(rounded), maxDenominator};
  }

  /// The dyadic ratio n / 2^DBits, n in [1, 2^DBits].
  static Ratio fromNumerator(std::uint32_t n) {
    if (n < 1 || n > maxDenominator) {
      throw InvalidArgument(detail::message("Ratio::fromNumerator: numerator ", n, " must be in [1, ", maxDenominator, "]"));
    }
    return Ratio{n, maxDenominator};
  }

  /// n/d with 1 ≤ n ≤ d ≤ 2^DBits (a dyadic d is rescaled to 2^DBits).
  static Ratio fromFraction(std::uint32_t n, std::uint32_t d) {
    if (d < 1 || d > maxDenominator || n < 1 || n > d) {
      throw InvalidArgument(detail::message("Ratio::fromFraction: ", n, "/", d, " needs 1 <= n <= d <= ", maxDenominator));
    }
    if ((maxDenominator % d) == 0) return Ratio{n * (maxDenominator / d), maxDenominator};
    return Ratio{n, d};
  }

  /// Equal values (7/8 == 57344/65536).
  constexpr bool operator==(const Ratio& o) const noexcept {
    return std::uint64_t(numerator) * o.denominator == std::uint64_t(o.numerator) * denominator;
  }
  constexpr bool operator!=(const Ratio& o) const noexcept { return !(*this == o); }  ///< Different values.

 private:
  // The last convergent p/q of gamma's continued fraction with 1 ≤ p ≤ q ≤ 2^DBits (the best
  // approximation with such a denominator but for semiconvergents), if there is one.
  static bool bestFraction(double gamma, Ratio& out) {
    int exponent = 0;
    const double mantissa = std::frexp(gamma, &exponent);
    const int shift = 53 - exponent;
    if (shift > 120) return false;
    detail::UInt128 a = static_cast<detail::UInt128>(std::ldexp(mantissa, 53));
    detail::UInt128 b = detail::UInt128(1) << shift;
    detail::UInt128 p0 = 0, q0 = 1, p1 = 1, q1 = 0;
    bool found = false;
    while (b != 0) {
      const detail::UInt128 k = a / b, r = a % b;
      const detail::UInt128 p2 = k * p1 + p0, q2 = k * q1 + q0;
      if (q2 > maxDenominator) break;
      if (p2 >= 1 && p2 <= q2) {
        out = fromFraction(static_cast<std::uint32_t>(p2), static_cast<std::uint32_t>(q2));
        found = true;
      }
      p0 = p1;
      q0 = q1;
      p1 = p2;
      q1 = q2;
      a = b;
      b = r;
    }
    return found;
  }

  // The fraction n/d, d ≤ 2^DBits, whose correctly rounded quotient is gamma, if there is one.
  // Two such fractions would differ by at least 2^-2·DBits, far more than the half ulp of gamma
  // that each is within, so there is at most one, and (being within 1/(2d²) of gamma) it is a
  // convergent of gamma's continued fraction (Legendre). gamma = m / 2^e exactly, e ≤ 53 + DBits:
  // the expansion runs on 128-bit integers.
  static bool exactFraction(double gamma, Ratio& out) {
    int exponent = 0;
    const double mantissa = std::frexp(gamma, &exponent);  // gamma = mantissa · 2^exponent, mantissa in [0.5, 1)
    const int shift = 53 - exponent;                        // gamma = m / 2^shift with m = mantissa · 2^53
    if (shift > 120) return false;                          // far below 2^-DBits: no such fraction
    detail::UInt128 a = static_cast<detail::UInt128>(std::ldexp(mantissa, 53));
    detail::UInt128 b = detail::UInt128(1) << shift;
    // Convergents p/q from the quotients of Euclid's algorithm on a/b.
    detail::UInt128 p0 = 0, q0 = 1, p1 = 1, q1 = 0;
    while (b != 0) {
      const detail::UInt128 k = a / b, r = a % b;
      const detail::UInt128 p2 = k * p1 + p0, q2 = k * q1 + q0;
      if (q2 > maxDenominator) break;
      if (p2 >= 1 && p2 <= q2 && static_cast<double>(p2) / static_cast<double>(q2) == gamma) {
        out = fromFraction(static_cast<std::uint32_t>(p2), static_cast<std::uint32_t>(q2));
        return true;
      }
      p0 = p1;
      q0 = q1;
      p1 = p2;
      q1 = q2;
      a = b;
      b = r;
    }
    return false;
  }
};

/// The value of the ratio gamma becomes (Ratio<DBits>::quantize): what the exact arithmetic
/// really uses.
template <int DBits = 16>
double quantizedGamma(double gamma, Quantization quantization = Quantization::Dyadic) {
  return Ratio<DBits>::quantize(gamma, "gamma", quantization).value();
}

}  // namespace hypergrad
