// SPDX-License-Identifier: MIT
#pragma once

/// \file ratio_multiply.hpp
/// \brief Exactly reversible multiplication of fixed-point integers by ratios n/d, with the
/// information buffer holding what the multiplication destroys. Two rounding policies:
///
/// | policy            | forward (× n/d)                                     | error of the product | buffer bits per op      |
/// |-------------------|-----------------------------------------------------|----------------------|-------------------------|
/// | BitsBackRounding  | push(c mod d, d); c = floor(c/d)·n + pop(n)          | in (−1, γ) units of 2^−R, nearly unbiased | log2(d/n) (the bound)   |
/// | FloorRounding     | c' = floor(c·n/d); push(index of c among preimages)  | in (−1, 0] units, bias −½ | up to 2 ln 2 ≈ 1.39× it |
///
/// Both are exact bijections on (integer, buffer) pairs. BitsBackRounding is the default: it
/// stores the entropy bound (0.152 bits at γ = 0.9), and its error stays below one unit: the digit
/// it pops comes from the coder slot that the remainder it just pushed occupies, so the product is
/// rounded to within one unit (a pop from another slot could be off by up to n units, which the
/// push-then-pop order never does). Measured at γ = 0.9 over 4.2 M products: bias −0.077 units
/// for bits-back, −0.50 for floor, which follows a float64 run 4.5–5.5× less closely on the
/// paper's MLP and stores 1.32–1.37× the bits (benchmarks/bench_accuracy.cpp).
///
/// Errors: numerators outside [1, d] or runs that do not tile the vector throw InvalidArgument
/// before anything changes. divideByRatio throws FixedPointOverflow for an element whose quotient
/// leaves the int64 range (it cannot come from the matching multiply): that element and the
/// buffer are left as they were, but elements already processed in the same call stay divided,
/// so the (vector, buffer) pair must then be discarded.
///
/// A "run" is a contiguous range of elements sharing one numerator. multiply() walks each block's
/// elements in increasing order; divide() walks them in exactly the reverse order, which is what
/// makes the shared per-block stack come back word for word. Blocks are independent and are split
/// across OpenMP threads when OpenMP is enabled; the result does not depend on the thread count.
///
/// On a buffer in the lane layout (`InformationBuffer(n, B, 8)`), BitsBackRounding with a
/// power-of-two denominator goes through the AVX-512 lane coder (lanes.hpp) eight elements at a
/// time where the processor has it: the same bits as element by element, 3–4× faster.

#include <algorithm>
#include <cstdint>
#include <exception>
#include <limits>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include "../config.hpp"
#include "../errors.hpp"
#include "information_buffer.hpp"
#include "lanes.hpp"
#include "ratio.hpp"

namespace hypergrad {

/// Elements [begin, end) are multiplied by numerator/d.
struct RatioRun {
  Index begin = 0;              ///< first element
  Index end = 0;                ///< one past the last element
  std::uint32_t numerator = 1;  ///< n of n/2^DBits
};

namespace detail {
inline std::int64_t floorDiv(std::int64_t a, std::int64_t b) noexcept {
  std::int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}
inline Int128 floorDiv128(Int128 a, Int128 b) noexcept {
  Int128 q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}
inline Int128 ceilDiv128(Int128 a, Int128 b) noexcept { return -floorDiv128(-a, b); }

[[noreturn]] inline void throwRangeError(const char* fn, Index i, std::int64_t c) {
  throw FixedPointOverflow(message(fn, ": element ", i, " (stored integer ", c,
                                   ") leaves the int64 range when divided by its ratio: this integer was not produced by "
                                   "the matching multiply (wrong buffer, wrong ratios or a corrupted state)"));
}
}  // namespace detail

/// Memory-optimal rounding (default): stores log2(d/n) bits per op on average; product error in
/// (−1, γ) units of the last place, nearly unbiased.
struct BitsBackRounding {
  static constexpr const char* name = "bits-back";  ///< its name in messages and saved runs

  /// c ← c · n/2^DBits: push(c mod 2^DBits); c = floor(c / 2^DBits)·n + pop(radix n).
  template <int DBits, class Buffer>
  static void multiplyOne(std::int64_t& c, std::uint32_t n, Index i, Buffer& buf) {
    const std::int64_t q = c >> DBits;  // arithmetic shift: floor(c / d)
    const std::uint32_t r = static_cast<std::uint32_t>(c & ((std::int64_t(1) << DBits) - 1));
    buf.pushPow2(i, r, DBits);
    const std::uint32_t s = buf.popUniform(i, n);
    c = q * static_cast<std::int64_t>(n) + static_cast<std::int64_t>(s);  // |q·n| ≤ |c|: no overflow
  }

  /// The inverse of multiplyOne; FixedPointOverflow (element and buffer unchanged) for a c the
  /// multiply cannot have produced.
  template <int DBits, class Buffer>
  static void divideOne(std::int64_t& c, std::uint32_t n, Index i, Buffer& buf) {
    const std::int64_t before = c;
    if (!tryDivideOne<DBits>(c, n, i, buf)) detail::throwRangeError("divideByRatio", i, before);
  }

  /// divideOne without exceptions: false (element and buffer unchanged) when the quotient
  /// leaves the int64 range, which the matching multiply never produces.
  template <int DBits, class Buffer>
  static bool tryDivideOne(std::int64_t& c, std::uint32_t n, Index i, Buffer& buf) noexcept {
    // floor(c / n) and c mod n without forming q·n, which leaves the int64 range for c near INT64_MIN.
    std::int64_t q = c / static_cast<std::int64_t>(n);
    std::int64_t rem = c % static_cast<std::int64_t>(n);
    if (rem < 0) {
      rem += static_cast<std::int64_t>(n);
      --q;
    }
    const auto s = static_cast<std::uint32_t>(rem);
    // q·d + r must be in (INT64_MIN, INT64_MAX]: q in [INT64_MIN >> DBits, INT64_MAX >> DBits], and
    // the lowest q only with r > 0 (that q is floor(c / d) for every c in (INT64_MIN, INT64_MIN + d)).
    constexpr std::int64_t qMax = std::numeric_limits<std::int64_t>::max() >> DBits;
    constexpr std::int64_t qMin = std::numeric_limits<std::int64_t>::min() >> DBits;
    if (q > qMax || q < qMin) return false;
    buf.pushUniform(i, s, n);
    const std::uint32_t r = buf.popPow2(i, DBits);
    if (q == qMin && r == 0) {  // would be INT64_MIN (reserved): undo the pair, leaving the buffer as it was
      buf.pushPow2(i, r, DBits);
      static_cast<void>(buf.popUniform(i, n));
      return false;
    }
    c = q * (std::int64_t(1) << DBits) + static_cast<std::int64_t>(r);
    return true;
  }

  /// c ← c · n/d for any ratio (optimizers/ use this): the dyadic path above, or, for another d,
  /// push(c mod d, radix d); c = floor(c/d)·n + pop(radix n). Error in (−1, γ] units, log2(d/n) bits.
  template <int DBits, class Buffer>
  static void multiplyRatio(std::int64_t& c, const Ratio<DBits>& ratio, Index i, Buffer& buf) {
    if (ratio.dyadic()) return multiplyOne<DBits>(c, ratio.numerator, i, buf);
    const auto d = static_cast<std::int64_t>(ratio.denominator);
    std::int64_t q = c / d, rem = c % d;  // floor division: the quotient's sign fixed below
    if (rem < 0) {
      rem += d;
      --q;
    }
    buf.pushUniform(i, static_cast<std::uint32_t>(rem), ratio.denominator);
    const std::uint32_t s = buf.popUniform(i, ratio.numerator);
    c = q * static_cast<std::int64_t>(ratio.numerator) + static_cast<std::int64_t>(s);  // |q·n| ≤ |c|
  }

  /// The inverse of multiplyRatio; false (element and buffer unchanged) when the quotient leaves
  /// the int64 range, which the matching multiply never produces.
  template <int DBits, class Buffer>
  static bool tryDivideRatio(std::int64_t& c, const Ratio<DBits>& ratio, Index i, Buffer& buf) noexcept {
    if (ratio.dyadic()) return tryDivideOne<DBits>(c, ratio.numerator, i, buf);
    const auto n = static_cast<std::int64_t>(ratio.numerator);
    const auto d = static_cast<detail::Int128>(ratio.denominator);
    std::int64_t q = c / n, rem = c % n;
    if (rem < 0) {
      rem += n;
      --q;
    }
    // The result q·d + r, r in [0, d), must lie in (INT64_MIN, INT64_MAX]: rule out a q for which
    // no r fits before touching the buffer, and check the exact result after.
    constexpr detail::Int128 lo = detail::Int128(std::numeric_limits<std::int64_t>::min()) + 1;
    constexpr detail::Int128 hi = std::numeric_limits<std::int64_t>::max();
    const detail::Int128 base = detail::Int128(q) * d;
    if (base + d - 1 < lo || base > hi) return false;
    buf.pushUniform(i, static_cast<std::uint32_t>(rem), ratio.numerator);
    const std::uint32_t r = buf.popUniform(i, ratio.denominator);
    const detail::Int128 result = base + r;
    if (result < lo || result > hi) {  // undo the pair, leaving the buffer as it was
      buf.pushUniform(i, r, ratio.denominator);
      static_cast<void>(buf.popUniform(i, ratio.numerator));
      return false;
    }
    c = static_cast<std::int64_t>(result);
    return true;
  }
};

/// Deterministic rounding: c' = floor(c·n/d) exactly (error below one unit); stores the index of
/// c among the preimages of c', E[log2(preimage size)] bits (≈1.3–1.4× the bound for γ ≥ 0.9).
struct FloorRounding {
  static constexpr const char* name = "floor";  ///< its name in messages and saved runs

  /// c ← floor(c · n/2^DBits), with the index of c among the preimages pushed.
  template <int DBits, class Buffer>
  static void multiplyOne(std::int64_t& c, std::uint32_t n, Index i, Buffer& buf) {
    const detail::Int128 d = detail::Int128(1) << DBits;
    const detail::Int128 image = (detail::Int128(c) * n) >> DBits;          // floor(c·n/d)
    const detail::Int128 first = detail::ceilDiv128(image * d, n);     // smallest preimage
    const detail::Int128 count = detail::ceilDiv128((image + 1) * d, n) - first;
    buf.pushUniform(i, static_cast<std::uint32_t>(detail::Int128(c) - first), static_cast<std::uint32_t>(count));
    c = static_cast<std::int64_t>(image);
  }

  /// The inverse of multiplyOne; FixedPointOverflow (element and buffer unchanged) out of range.
  template <int DBits, class Buffer>
  static void divideOne(std::int64_t& c, std::uint32_t n, Index i, Buffer& buf) {
    const std::int64_t before = c;
    if (!tryDivideOne<DBits>(c, n, i, buf)) detail::throwRangeError("divideByRatio", i, before);
  }

  /// divideOne without exceptions: false (element and buffer unchanged) out of range.
  template <int DBits, class Buffer>
  static bool tryDivideOne(std::int64_t& c, std::uint32_t n, Index i, Buffer& buf) noexcept {
    const detail::Int128 d = detail::Int128(1) << DBits;
    const detail::Int128 first = detail::ceilDiv128(detail::Int128(c) * d, n);
    const detail::Int128 count = detail::ceilDiv128((detail::Int128(c) + 1) * d, n) - first;
    const std::uint32_t digit = buf.popUniform(i, static_cast<std::uint32_t>(count));
    const detail::Int128 result = first + digit;
    if (result > std::numeric_limits<std::int64_t>::max() || result <= std::numeric_limits<std::int64_t>::min()) {
      buf.pushUniform(i, digit, static_cast<std::uint32_t>(count));  // undo the pop: the buffer is as it was
      return false;
    }
    c = static_cast<std::int64_t>(result);
    return true;
  }

  /// c ← floor(c · n/d) for any ratio (optimizers/ use this); stores the index of c among the
  /// preimages.
  template <int DBits, class Buffer>
  static void multiplyRatio(std::int64_t& c, const Ratio<DBits>& ratio, Index i, Buffer& buf) {
    if (ratio.dyadic()) return multiplyOne<DBits>(c, ratio.numerator, i, buf);
    const detail::Int128 n = ratio.numerator, d = ratio.denominator;
    const detail::Int128 image = detail::floorDiv128(detail::Int128(c) * n, d);
    const detail::Int128 first = detail::ceilDiv128(image * d, n);
    const detail::Int128 count = detail::ceilDiv128((image + 1) * d, n) - first;
    buf.pushUniform(i, static_cast<std::uint32_t>(detail::Int128(c) - first), static_cast<std::uint32_t>(count));
    c = static_cast<std::int64_t>(image);
  }

  /// The inverse of multiplyRatio; false (element and buffer unchanged) out of range.
  template <int DBits, class Buffer>
  static bool tryDivideRatio(std::int64_t& c, const Ratio<DBits>& ratio, Index i, Buffer& buf) noexcept {
    if (ratio.dyadic()) return tryDivideOne<DBits>(c, ratio.numerator, i, buf);
    const detail::Int128 n = ratio.numerator, d = ratio.denominator;
    const detail::Int128 first = detail::ceilDiv128(detail::Int128(c) * d, n);
    const detail::Int128 count = detail::ceilDiv128((detail::Int128(c) + 1) * d, n) - first;
    const std::uint32_t digit = buf.popUniform(i, static_cast<std::uint32_t>(count));
    const detail::Int128 result = first + digit;
    if (result > std::numeric_limits<std::int64_t>::max() || result <= std::numeric_limits<std::int64_t>::min()) {
      buf.pushUniform(i, digit, static_cast<std::uint32_t>(count));  // undo the pop: the buffer is as it was
      return false;
    }
    c = static_cast<std::int64_t>(result);
    return true;
  }
};

namespace detail {

template <class Buffer>
void checkRuns(const std::vector<RatioRun>& runs, Index size, std::uint32_t d, const Buffer& buf, const char* fn) {
  if (buf.size() != size) {
    throw InvalidArgument(message(fn, ": the information buffer has ", buf.size(), " elements but the vector has ", size));
  }
  Index expect = 0;
  for (const RatioRun& run : runs) {
    if (run.begin != expect || run.end <= run.begin || run.end > size) {
      throw InvalidArgument(message(fn, ": ratio runs must tile [0, ", size, ") in order; got run [", run.begin, ", ",
                                    run.end, ") where element ", expect, " was expected next"));
    }
    if (run.numerator < 1 || run.numerator > d) {
      throw InvalidArgument(message(fn, ": numerator ", run.numerator, " for elements [", run.begin, ", ", run.end,
                                    ") must be in [1, ", d, "] (gamma in (0, 1])"));
    }
    expect = run.end;
  }
  if (expect != size) {
    throw InvalidArgument(message(fn, ": ratio runs cover [0, ", expect, ") but the vector has ", size, " elements"));
  }
}

// Exceptions must not cross an OpenMP region: keep the first one, rethrow after the loop.
class BlockErrors {
 public:
  template <class F>
  void guard(F&& f) noexcept {
    try {
      f();
    } catch (...) {
#if defined(_OPENMP)
#pragma omp critical(hypergrad_block_errors)
#endif
      if (!m_first) m_first = std::current_exception();
    }
  }
  void rethrow() const {
    if (m_first) std::rethrow_exception(m_first);
  }

 private:
  std::exception_ptr m_first;
};

// Index of the first run that ends after element i (runs tile in order).
inline std::size_t firstRunAfter(const std::vector<RatioRun>& runs, Index i) {
  std::size_t lo = 0, hi = runs.size();
  while (lo < hi) {
    const std::size_t mid = (lo + hi) / 2;
    if (runs[mid].end <= i) lo = mid + 1; else hi = mid;
  }
  return lo;
}

}  // namespace detail

namespace detail {

// Elements [begin, end) of one block times n/2^DBits (increasing order), eight at a time through
// the lane coder where it applies (the groups of eight aligned on multiples of 8, so that lane l
// is stack l of the block).
template <class Rounding, int DBits, int MBits>
void multiplySegment(std::int64_t* c, Index begin, Index end, std::uint32_t n, InformationBuffer<MBits>& buf,
                     bool lanes) {
#if HYPERGRAD_LANE_CODER
  if constexpr (std::is_same<Rounding, BitsBackRounding>::value && laneCoderFits<DBits, MBits>()) {
    if (lanes) {
      const Index a = std::min(end, (begin + 7) & ~Index(7)), z = std::max(a, end & ~Index(7));
      for (Index i = begin; i < a; ++i) Rounding::template multiplyOne<DBits>(c[i], n, i, buf);
      if (z > a) {
        laneMultiply<DBits, MBits>(c, a, z, n, buf);
      }
      for (Index i = z; i < end; ++i) Rounding::template multiplyOne<DBits>(c[i], n, i, buf);
      return;
    }
  }
#endif
  static_cast<void>(lanes);
  for (Index i = begin; i < end; ++i) Rounding::template multiplyOne<DBits>(c[i], n, i, buf);
}

// The inverse of multiplySegment: the same elements in decreasing order.
template <class Rounding, int DBits, int MBits>
void divideSegment(std::int64_t* c, Index begin, Index end, std::uint32_t n, InformationBuffer<MBits>& buf,
                   bool lanes) {
#if HYPERGRAD_LANE_CODER
  if constexpr (std::is_same<Rounding, BitsBackRounding>::value && laneCoderFits<DBits, MBits>()) {
    if (lanes) {
      const Index a = std::min(end, (begin + 7) & ~Index(7)), z = std::max(a, end & ~Index(7));
      for (Index i = end; i-- > z;) Rounding::template divideOne<DBits>(c[i], n, i, buf);
      if (z > a) {
        laneDivide<DBits, MBits>(c, a, z, n, buf, &Rounding::template divideOne<DBits, InformationBuffer<MBits>>);
      }
      for (Index i = a; i-- > begin;) Rounding::template divideOne<DBits>(c[i], n, i, buf);
      return;
    }
  }
#endif
  static_cast<void>(lanes);
  for (Index i = end; i-- > begin;) Rounding::template divideOne<DBits>(c[i], n, i, buf);
}

// Whether a call on `buf` may use the lane coder (numerators below 2 go element by element).
template <int MBits>
bool useLaneCoder(const InformationBuffer<MBits>& buf) noexcept {
  return buf.lanes() == InformationBuffer<MBits>::laneCount && laneCoderActive();
}

}  // namespace detail

/// c ← c × n/d for each run, exactly reversible with divideByRatio and the same buffer.
/// Runs with n = d (γ = 1) are skipped: an exact identity that stores nothing.
template <class Rounding = BitsBackRounding, int DBits = 16, int MBits = 24>
void multiplyByRatio(std::int64_t* c, Index size, const std::vector<RatioRun>& runs, InformationBuffer<MBits>& buf) {
  static_assert(MBits >= DBits + 1, "hypergrad: the coder precision MBits must exceed the ratio bits DBits");
  constexpr std::uint32_t d = std::uint32_t(1) << DBits;
  detail::checkRuns(runs, size, d, buf, "multiplyByRatio");
  buf.reserve(1);  // each element spills at most one word: no allocation inside the loop
  const Index numBlocks = buf.numBlocks();
  const bool lanes = detail::useLaneCoder(buf);
  detail::BlockErrors errors;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (numBlocks > 1 && size >= 32768)
#endif
  for (Index b = 0; b < numBlocks; ++b) {
    errors.guard([&] {
      const Index lo = buf.blockBegin(b), hi = buf.blockEnd(b);
      for (std::size_t r = detail::firstRunAfter(runs, lo); r < runs.size() && runs[r].begin < hi; ++r) {
        const std::uint32_t n = runs[r].numerator;
        if (n == d) continue;
        detail::multiplySegment<Rounding, DBits>(c, std::max(lo, runs[r].begin), std::min(hi, runs[r].end), n, buf,
                                                 lanes && n >= 2);
      }
    });
  }
  buf.trim();
  errors.rethrow();
}

/// c ← c × d/n for each run: the exact inverse of multiplyByRatio with the same runs, applied to
/// the buffer it left. Elements are visited in reverse order within each block.
template <class Rounding = BitsBackRounding, int DBits = 16, int MBits = 24>
void divideByRatio(std::int64_t* c, Index size, const std::vector<RatioRun>& runs, InformationBuffer<MBits>& buf) {
  constexpr std::uint32_t d = std::uint32_t(1) << DBits;
  detail::checkRuns(runs, size, d, buf, "divideByRatio");
  buf.reserve(1);
  const Index numBlocks = buf.numBlocks();
  const bool lanes = detail::useLaneCoder(buf);
  detail::BlockErrors errors;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (numBlocks > 1 && size >= 32768)
#endif
  for (Index b = 0; b < numBlocks; ++b) {
    errors.guard([&] {
      const Index lo = buf.blockBegin(b), hi = buf.blockEnd(b);
      const std::size_t first = detail::firstRunAfter(runs, lo);
      std::size_t last = first;
      while (last < runs.size() && runs[last].begin < hi) ++last;
      for (std::size_t r = last; r-- > first;) {
        const std::uint32_t n = runs[r].numerator;
        if (n == d) continue;
        detail::divideSegment<Rounding, DBits>(c, std::max(lo, runs[r].begin), std::min(hi, runs[r].end), n, buf,
                                               lanes && n >= 2);
      }
    });
  }
  buf.trim();
  errors.rethrow();
}

/// Runs from one numerator per element (consecutive equal numerators merged).
template <class Derived>
std::vector<RatioRun> ratioRuns(const Eigen::DenseBase<Derived>& numerators) {
  std::vector<RatioRun> runs;
  for (Index i = 0; i < numerators.size(); ++i) {
    const auto n = static_cast<std::uint32_t>(numerators(i));
    if (!runs.empty() && runs.back().numerator == n) runs.back().end = i + 1;
    else runs.push_back(RatioRun{i, i + 1, n});
  }
  return runs;
}

/// A single run covering [0, size).
inline std::vector<RatioRun> ratioRuns(Index size, std::uint32_t numerator) {
  return {RatioRun{0, size, numerator}};
}

}  // namespace hypergrad
