// SPDX-License-Identifier: MIT
#pragma once

/// \file fixed_point.hpp
/// \brief Fixed-point vectors: int64 with an implied radix 2^-R. Addition of a real vector is
/// exactly reversible (subtract the bit-identical vector); conversions round deterministically;
/// overflow is detected and reported, never wrapped.

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <Eigen/Core>

#include "../config.hpp"
#include "../errors.hpp"

namespace hypergrad {

/// The fixed-point format: a value x is stored as the int64 round(x · 2^R).
/// Range (−2^(63−R), 2^(63−R)), resolution 2^−R. R = 44…52 are sensible (DESIGN.md §2).
/// \tparam R number of fractional bits, 1 ≤ R ≤ 62.
template <int R>
struct FixedFormat {
  static_assert(R >= 1 && R <= 62, "hypergrad::FixedFormat<R>: R (fractional bits) must be in [1, 62]");
  static constexpr int radixBits = R;  ///< R, the number of fractional bits.
  /// 2^R: one unit in the last place is 1/scale.
  static constexpr double scale = static_cast<double>(std::uint64_t(1) << R);
  /// Resolution, 2^−R.
  static constexpr double resolution = 1.0 / scale;
  /// Largest magnitude that converts: values must satisfy |x| < maxMagnitude = 2^(63−R).
  static constexpr double maxMagnitude = static_cast<double>(std::uint64_t(1) << (63 - R));

  /// Rounds x·2^R to the nearest integer, ties away from zero (independent of the FP rounding
  /// mode). Throws FixedPointOverflow (naming `what` and `index`) when x is not finite or out of
  /// range.
  static std::int64_t fromDouble(double x, const char* what = "value", Index index = -1) {
    std::int64_t c;
    if (!tryFromDouble(x, c)) throw overflowError(x, what, index);
    return c;
  }

  /// The same conversion without exceptions, for hot loops: returns false (and leaves `out`
  /// alone) when x is not finite or out of range. fromDouble is this plus the error.
  static bool tryFromDouble(double x, std::int64_t& out) noexcept {
    const double y = x * scale;  // exact: scaling by a power of two
    // 2^63 is exactly representable; the int64 range is [−2^63, 2^63). Reject ±2^63 too so the
    // negation of any stored value is representable.
    if (!(std::fabs(y) < 9223372036854775808.0)) return false;
    const auto t = static_cast<std::int64_t>(y);     // truncation toward zero
    const double frac = y - static_cast<double>(t);  // exact
    // Branch-free (the rounding direction is data-dependent and mispredicts half the time). No
    // overflow: |frac| >= 0.5 means y is not an integer, so |y| < 2^52 and t ± 1 fits.
    out = t + static_cast<std::int64_t>(frac >= 0.5) - static_cast<std::int64_t>(frac <= -0.5);
    return true;
  }

  /// The real value of a stored integer (exact when |c| < 2^53, else correctly rounded).
  static double toDouble(std::int64_t c) noexcept { return static_cast<double>(c) * resolution; }

  /// The exception fromDouble throws for x (naming `what`[`index`] when index >= 0), for callers
  /// that convert with tryFromDouble and report the failure themselves.
  static FixedPointOverflow overflowError(double x, const char* what, Index index) {
    return FixedPointOverflow(detail::message(
        "fixed point Q", 63 - R, ".", R, ": ", what, (index >= 0 ? detail::message("[", index, "]") : std::string()),
        " = ", x, (std::isfinite(x) ? " is outside the representable range ±" : " is not finite; range ±"),
        maxMagnitude, ". Use fewer fractional bits (FixedFormat<R> with a smaller R) or rescale the problem "
        "(e.g. a smaller learning rate)"));
  }
};

/// A vector of fixed-point numbers in format FixedFormat<R>.
///
/// Invariant: every element c satisfies |c| < 2^63 (the value −2^63 is never stored), so negation
/// and the checked arithmetic below cannot wrap.
template <int R>
class FixedVector {
 public:
  using Format = FixedFormat<R>;                                  ///< The number format.
  using Storage = Eigen::Matrix<std::int64_t, Eigen::Dynamic, 1>;  ///< The stored integers.

  FixedVector() = default;  ///< An empty vector.
  /// n zeros.
  explicit FixedVector(Index n) : m_data(Storage::Zero(n)) {}

  /// Converts each element with Format::fromDouble; throws FixedPointOverflow naming the element.
  template <class Derived>
  static FixedVector fromDouble(const Eigen::MatrixBase<Derived>& x, const char* what = "value") {
    FixedVector out(x.size());
    for (Index i = 0; i < x.size(); ++i) out.m_data(i) = Format::fromDouble(x(i), what, i);
    return out;
  }

  /// From raw stored integers (each must be > INT64_MIN).
  static FixedVector fromRaw(const Storage& raw) {
    for (Index i = 0; i < raw.size(); ++i)
      if (raw(i) == std::numeric_limits<std::int64_t>::min())
        throw FixedPointOverflow(detail::message("FixedVector::fromRaw: element ", i, " is INT64_MIN, which is reserved"));
    FixedVector out;
    out.m_data = raw;
    return out;
  }

  Index size() const noexcept { return m_data.size(); }  ///< Number of elements.

  /// The real values (exact for |value| < 2^(53−R)).
  Eigen::VectorXd toDouble() const {
    Eigen::VectorXd out(size());
    writeDouble(out.data());
    return out;
  }
  /// Writes the real values into `out` (resized if needed).
  void toDouble(Eigen::VectorXd& out) const {
    if (out.size() != size()) out.resize(size());
    writeDouble(out.data());
  }

  /// this += fix(x) elementwise. Undone exactly by subtractReal with the bit-identical x.
  /// Throws FixedPointOverflow before changing anything if any element would not fit.
  template <class Derived>
  void addReal(const Eigen::MatrixBase<Derived>& x, const char* what = "value") {
    checkSize(x.size(), "addReal");
    applyChecked(x, +1, what);
  }
  /// this −= fix(x) elementwise; the exact inverse of addReal(x).
  template <class Derived>
  void subtractReal(const Eigen::MatrixBase<Derived>& x, const char* what = "value") {
    checkSize(x.size(), "subtractReal");
    applyChecked(x, -1, what);
  }

  /// The stored integer of element i (its value times 2^R).
  std::int64_t operator[](Index i) const { return m_data(i); }
  /// \name Raw access to the stored integers
  /// For the exact kernels. A writer must keep the invariant: never store INT64_MIN.
  ///@{
  std::int64_t& raw(Index i) { return m_data(i); }                   ///< Element i.
  const Storage& raw() const noexcept { return m_data; }              ///< All elements.
  Storage& raw() noexcept { return m_data; }                          ///< All elements.
  std::int64_t* data() noexcept { return m_data.data(); }             ///< Contiguous elements.
  const std::int64_t* data() const noexcept { return m_data.data(); } ///< Contiguous elements.
  ///@}

  /// Bit-for-bit equality (same size, same integers): the test of an exact round trip.
  bool operator==(const FixedVector& o) const { return m_data.size() == o.m_data.size() && m_data == o.m_data; }
  /// Not bit-for-bit equal.
  bool operator!=(const FixedVector& o) const { return !(*this == o); }

 private:
  void writeDouble(double* out) const noexcept {
    for (Index i = 0; i < size(); ++i) out[i] = Format::toDouble(m_data(i));
  }

  void checkSize(Index n, const char* fn) const {
    if (n != size())
      throw InvalidArgument(detail::message("FixedVector::", fn, ": size ", n, " does not match ", size()));
  }

  // Two passes so that an overflow leaves *this untouched (no partial update to undo).
  template <class Derived>
  void applyChecked(const Eigen::MatrixBase<Derived>& x, int sign, const char* what) {
    std::vector<std::int64_t> delta(static_cast<std::size_t>(size()));
    for (Index i = 0; i < size(); ++i) {
      const std::int64_t d = Format::fromDouble(x(i), what, i);
      std::int64_t r;
      const bool bad = sign > 0 ? __builtin_add_overflow(m_data(i), d, &r) : __builtin_sub_overflow(m_data(i), d, &r);
      if (bad || r == std::numeric_limits<std::int64_t>::min()) {
        throw FixedPointOverflow(detail::message(
            "FixedVector::", (sign > 0 ? "addReal" : "subtractReal"), ": ", what, "[", i, "]: ",
            Format::toDouble(m_data(i)), (sign > 0 ? " + " : " - "), x(i), " leaves the fixed-point range ±",
            Format::maxMagnitude, ". Use a smaller R in FixedFormat<R> or a smaller step"));
      }
      delta[static_cast<std::size_t>(i)] = r;
    }
    for (Index i = 0; i < size(); ++i) m_data(i) = delta[static_cast<std::size_t>(i)];
  }

  Storage m_data;
};

}  // namespace hypergrad
