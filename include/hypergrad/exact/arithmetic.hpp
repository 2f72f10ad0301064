// SPDX-License-Identifier: MIT
#pragma once

/// \file arithmetic.hpp
/// \brief The exact operations layer: an update rule's element code (optimizers/concept.hpp)
/// run in fixed point with the information buffer — forward, and backwards by recording the same
/// code and undoing its operations in reverse order — as one fused pass over each buffer block.
///
/// Per element the kernel loads the element's state integers, runs the rule's element code on
/// them (×n/d through the buffer, checked fixed-point additions, the finiteness check of g_t),
/// and stores them back: one pass over memory, no staging vectors. Failure atomicity comes from
/// reversibility instead of copies: every operation is logged as it is applied, so an element
/// whose k-th operation fails undoes its first k−1 (in reverse order) before the error leaves it;
/// the elements already done in the block are then undone by the inverse pass (in reverse
/// order, so each block's word stack comes back word for word), and blocks that finished in
/// parallel are undone after the loop. A kernel call therefore either completes or leaves the
/// state and the buffer bit-identical to what they were.
///
/// Bits: a step runs per block as two passes (the state half of every element, then the weights
/// half; see forwardBoth). The forward visits each block's elements in increasing order and the
/// inverse in decreasing order, exactly as multiplyByRatio / divideByRatio do, and the conversions are those
/// of FixedFormat; for the momentum rule the result is bit-identical to the multi-pass update this
/// layer replaced (tests/optimizers/test_exact_kernel.cpp pins a recorded run).
///
/// Lanes: on a buffer in the lane layout (OptimizerOptions::lanes = 8) with the AVX-512 lane coder
/// active, each segment's aligned groups of eight elements go operation by operation, the
/// multiplications eight at a time (ExactKernel's lane path); each lane's stack sees its element's
/// operations in the same order, so the bits are those of the element-by-element kernel in that
/// layout (tests/optimizers/test_lane_kernel.cpp). Rules that declare `laneCode` run their element
/// code once per group on LaneValue (eight doubles; every operation IEEE, so each lane computes
/// the element's own doubles) through LaneElement, which applies the operations to the state
/// arrays as they come; other rules are replayed lane by lane (LaneReplay).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <exception>
#include <limits>
#include <type_traits>
#include <vector>

#include "../config.hpp"
#include "../errors.hpp"
#include "../layout.hpp"
#include "fixed_point.hpp"
#include "information_buffer.hpp"
#include "lane_value.hpp"
#include "lanes.hpp"
#include "ratio.hpp"
#include "ratio_multiply.hpp"

namespace hypergrad {
namespace detail {

/// What went wrong at one element, thrown inside the kernel and turned into a typed exception
/// with the iteration, group and state names by the optimizer (which knows them).
struct ElementFailure {
  enum class Kind {
    NonFiniteGradient,  ///< g_i is NaN or infinite
    AddendOutOfRange,   ///< an addend is not finite or does not fit the fixed-point range
    SumOutOfRange,      ///< state + addend leaves the range
    DivisionOutOfRange, ///< a division by a ratio leaves int64: the state is not from this run
    NotZero             ///< undoing a multiplication by 0 finds a non-zero value: not from this run
  };
  Kind kind = Kind::AddendOutOfRange;
  int state = 0;            ///< the state vector concerned
  Index element = 0;        ///< the element
  const char* what = "";    ///< the rule's name for the addend
  double operand = 0.0;     ///< the addend (or g_i)
  double current = 0.0;     ///< the state's value before the failing operation

  ElementFailure() = default;
  ElementFailure(Kind k, int s, Index i, const char* name, double x, double before) noexcept
      : kind(k), state(s), element(i), what(name), operand(x), current(before) {}
};

/// One logged operation of an element: an addition of `addend` to state `state` (numerator and
/// denominator 0), a multiplication of it by numerator/denominator through the buffer, or
/// (numerator 0, denominator not) a multiplication by zero, which stores the whole value.
struct ElementOp {
  int state;
  std::uint32_t numerator;    // 0 for an addition and for the zero ratio
  std::uint32_t denominator;  // 0 for an addition
  std::int64_t addend;

  bool isAddition() const noexcept { return denominator == 0; }
  bool isZero() const noexcept { return numerator == 0 && denominator != 0; }
};

/// Words a multiplication by zero may spill onto its block's stack: the value goes in as 64 bits
/// of digits (16-bit digits, 8-bit ones for a coder precision below 16), each push spilling at
/// most one word.
constexpr int kZeroRatioWords = 8;

/// x ← 0, its 64 bits pushed onto the buffer as digits, low first.
template <class Buffer>
void storeWhole(std::int64_t& x, Index i, Buffer& buf) {
  constexpr int bits = Buffer::precisionBits >= 16 ? 16 : 8;
  const auto v = static_cast<std::uint64_t>(x);
  for (int k = 0; k < 64 / bits; ++k)
    buf.pushPow2(i, static_cast<std::uint32_t>((v >> (bits * k)) & ((std::uint64_t(1) << bits) - 1)), bits);
  x = 0;
}
/// The inverse of storeWhole: x ← the value popped (x was 0).
template <class Buffer>
void restoreWhole(std::int64_t& x, Index i, Buffer& buf) noexcept {
  constexpr int bits = Buffer::precisionBits >= 16 ? 16 : 8;
  std::uint64_t v = 0;
  for (int k = 64 / bits; k-- > 0;) v |= static_cast<std::uint64_t>(buf.popPow2(i, bits)) << (bits * k);
  x = static_cast<std::int64_t>(v);
}

/// Most operations one element's step may perform (the rule's forwardState + forwardWeights).
constexpr int kMaxElementOps = 16;

/// How an ExactElement treats the rule's operations.
enum class ElementMode {
  Apply,  ///< apply them (the forward), counting them
  Record  ///< log them without applying them, to undo them last first (the inverse)
};

/// The exact arithmetic bound to element i. It works on a copy of the element's S state
/// integers; the kernel loads and stores them.
///
/// Apply mode keeps no log: if operation k fails, the kernel re-runs the element code in Record
/// mode limited to the k operations applied and undoes them. That re-recording is exact because
/// of the rule's contract (no state written after it was read): every applied operation's
/// addend is a function of states that no later operation changed, so the current values give
/// the same addend. The same argument makes Record mode at the post-step state recompute the
/// forward's addends, and undoing the operations last first never changes a value an earlier
/// operation read.
/// v, rounded to a double the compiler must materialise: a state value read by the element code
/// cannot be fused with what the rule does with it (x·y + z contracted to one multiply-add
/// under -ffp-contract=fast with FMA), so the forward and the recorded inverse see the same bits.
inline double materialized(double v) noexcept {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  __asm__("" : "+x"(v));
#elif defined(__GNUC__) && defined(__aarch64__)
  __asm__("" : "+w"(v));
#endif
  return v;
}

/// Scaling of an element whose states are all in the format's units.
struct UnitScaling {
  static constexpr bool identity() { return true; }
  static constexpr double up(int /*s*/) { return 1.0; }
  static constexpr double down(int /*s*/) { return 1.0; }
};

template <class Format, class Rounding, int DBits, class Buffer, int S, ElementMode Mode, class Scaling = UnitScaling>
class ExactElement {
 public:
  using RatioType = Ratio<DBits>;

  /// `limit`: Record mode logs only the first `limit` operations (the rest are ignored).
  ExactElement(Index i, Buffer& buf, int limit = kMaxElementOps) noexcept : m_i(i), m_buf(&buf), m_limit(limit) {}

  void load(std::int64_t* const* state) noexcept {
    for (int s = 0; s < S; ++s) m_x[s] = state[s][m_i];
  }
  void store(std::int64_t* const* state) const noexcept {
    for (int s = 0; s < S; ++s) state[s][m_i] = m_x[s];
  }
  /// Copies the other element's working state (same element).
  template <class Other>
  void loadFrom(const Other& other) noexcept {
    for (int s = 0; s < S; ++s) m_x[s] = other.raw(s);
  }
  std::int64_t raw(int s) const noexcept { return m_x[s]; }
  /// Operations applied (Apply) or logged (Record) so far.
  int count() const noexcept { return m_count; }

  // ---- The arithmetic the rule's element code calls ---------------------------------------------

  /// x_s ← x_s · n/d through the buffer (n = d: an exact identity that stores nothing; it is
  /// still counted, so that the number of operations does not depend on the data and the
  /// compiler can unroll the log).
  template <class Entry>
  void multiply(int s, const Entry& c) {
    const RatioType& r = c.ratio;
    if constexpr (Mode == ElementMode::Apply) {
      if (r.zero()) storeWhole(m_x[s], m_i, *m_buf);
      else if (!r.one()) Rounding::template multiplyRatio<DBits>(m_x[s], r, m_i, *m_buf);
      ++m_count;
    } else {
      if (m_count < m_limit) log(ElementOp{s, r.numerator, r.denominator, 0});
    }
  }

  /// x_s ← x_s + round(x · 2^R), checked.
  void add(int s, double x, const char* what = "addend") { addRounded(s, x, 1, what); }

  /// x_s ← x_s − round(x · 2^R), checked: add(s, −x) (rounding is symmetric), with the message
  /// naming x itself.
  void subtract(int s, double x, const char* what = "subtrahend") { addRounded(s, x, -1, what); }

  double value(int s) const noexcept { return materialized(toValue(s, m_x[s])); }

  /// Record mode: undoes the logged operations, last first. If an undo fails (a division
  /// leaving the int64 range, or a subtraction leaving the fixed-point range: the state is not
  /// one the forward produced), the operations undone so far are redone, so the element is
  /// exactly as before, and the failure is thrown.
  void undo() {
    static_assert(Mode == ElementMode::Record, "undo() needs the log of Record mode");
    int k = m_count;
    // No exceptions inside the loop: it stays a short straight-line sequence once inlined.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC unroll 16
#endif
    for (; k > 0; --k) {
      const ElementOp& op = m_log[k - 1];
      std::int64_t& x = m_x[op.state];
      if (op.isZero()) {
        if (x != 0) break;  // not the zero the multiplication left: not this run's state
        restoreWhole(x, m_i, *m_buf);
      } else if (!op.isAddition()) {
        if (op.numerator != op.denominator &&
            !Rounding::template tryDivideRatio<DBits>(x, RatioType{op.numerator, op.denominator}, m_i, *m_buf))
          break;
      } else {
        std::int64_t r;
        if (__builtin_sub_overflow(x, op.addend, &r) || r == std::numeric_limits<std::int64_t>::min()) break;
        x = r;
      }
    }
    if (k > 0) undoFailed(k);
    m_count = 0;
  }

 private:
  // x_s ← x_s + sign · round(x · 2^R). round(−x) = −round(x), so the sign is applied to the
  // integer; failures name x as the rule wrote it.
  void addRounded(int s, double x, int sign, const char* what) {
    if constexpr (Mode == ElementMode::Record) {
      if (m_count >= m_limit) return;
    }
    std::int64_t d;
    if (!Format::tryFromDouble(scaled(s, x), d)) fail(ElementFailure::Kind::AddendOutOfRange, s, what, x);
    if (sign < 0) d = -d;  // |d| < 2^63: no overflow
    if constexpr (Mode == ElementMode::Apply) {
      std::int64_t r;
      if (__builtin_add_overflow(m_x[s], d, &r) || r == std::numeric_limits<std::int64_t>::min())
        fail(ElementFailure::Kind::SumOutOfRange, s, what, sign * x);
      m_x[s] = r;
      ++m_count;
    } else {
      log(ElementOp{s, 0, 0, d});
    }
  }

  void log(const ElementOp& op) noexcept {
    HYPERGRAD_ASSERT(m_count < kMaxElementOps);
    m_log[m_count++] = op;
  }

  // The undo of op k−1 failed: redo ops k … m_count−1 (undone before it) and report.
  [[noreturn]] void undoFailed(int k) {
    const ElementOp& op = m_log[k - 1];
    for (int j = k; j < m_count; ++j) {
      const ElementOp& redo = m_log[j];
      if (redo.isZero()) storeWhole(m_x[redo.state], m_i, *m_buf);
      else if (!redo.isAddition() && redo.numerator == redo.denominator) continue;
      else if (!redo.isAddition())
        Rounding::template multiplyRatio<DBits>(m_x[redo.state], RatioType{redo.numerator, redo.denominator}, m_i, *m_buf);
      else m_x[redo.state] += redo.addend;  // restores a value that was stored before: cannot overflow
    }
    throw ElementFailure(op.isAddition() ? ElementFailure::Kind::SumOutOfRange
                         : op.isZero()    ? ElementFailure::Kind::NotZero
                                          : ElementFailure::Kind::DivisionOutOfRange,
                         op.state, m_i,
                         op.isAddition() ? "recorded addend"
                                         : (op.isZero() ? "restoring a value multiplied by 0" : "division by the ratio"),
                         toValue(op.state, op.addend), toValue(op.state, m_x[op.state]));
  }

  // A state value of state s from its integer, and the double whose fixed point is stored (the
  // rule's stateExponents: powers of two, exact).
  static double toValue(int s, std::int64_t c) noexcept {
    if constexpr (Scaling::identity()) return Format::toDouble(c);
    else return Format::toDouble(c) * Scaling::down(s);
  }
  static double scaled(int s, double x) noexcept {
    if constexpr (Scaling::identity()) return x;
    else return x * Scaling::up(s);
  }

  [[noreturn]] void fail(ElementFailure::Kind kind, int s, const char* what, double operand) const {
    throw ElementFailure(kind, s, m_i, what, operand, toValue(s, m_x[s]));
  }

  std::int64_t m_x[S];
  ElementOp m_log[Mode == ElementMode::Record ? kMaxElementOps : 1];
  int m_count = 0;
  Index m_i;
  Buffer* m_buf;
  int m_limit;
};

/// The operations of one step of eight elements (a lane group), recorded lane by lane and applied
/// operation by operation (see ExactKernel's lane path).
template <int S>
struct LaneGroup {
  alignas(64) std::int64_t x[S][8];                       // the working state integers
  alignas(64) std::int64_t addend[kMaxElementOps][8];     // each addition's integer, per lane
  ElementOp ops[kMaxElementOps];                          // the operations (the same in every lane)
};

/// The element code's arithmetic for lane `lane` of a group in one replay: it skips the
/// `applied` operations already applied, records the following ones with their addends (from the
/// current values) until the code reads a state that a recorded operation writes — that value is
/// not yet the one the forward would read, so the operations from there on wait for the next
/// replay (by the rule's contract every other read is final). Nothing is applied here.
/// With `wholeStep` (the inverse, at the post-step state) every operation is recorded in one go:
/// there, by the same contract, every value read is the one the forward read.
template <class Format, int S, class Scaling>
class LaneReplay {
 public:
  LaneReplay(LaneGroup<S>& group, int lane, int applied, bool wholeStep = false) noexcept
      : m_g(&group), m_lane(lane), m_applied(applied), m_whole(wholeStep) {}

  template <class Entry>
  void multiply(int s, const Entry& c) {
    if (recording()) record(ElementOp{s, c.ratio.numerator, c.ratio.denominator, 0});
    ++m_k;
  }
  void add(int s, double x, const char* /*what*/ = "addend") { addRounded(s, x, 1); }
  void subtract(int s, double x, const char* /*what*/ = "subtrahend") { addRounded(s, x, -1); }
  double value(int s) noexcept {
    if (!m_whole && m_k >= m_applied && ((m_written >> s) & 1u)) m_open = false;
    const double v = Format::toDouble(m_g->x[s][m_lane]);
    return materialized(Scaling::identity() ? v : v * Scaling::down(s));
  }

  int end() const noexcept { return m_end; }          ///< One past the last operation recorded
  int total() const noexcept { return m_k; }          ///< Operations in the element code
  bool failed() const noexcept { return m_failed; }   ///< An addend did not convert
  std::uint64_t key(int k) const noexcept { return m_keys[k]; }  ///< Operation k's key (recorded ones)

 private:
  bool recording() const noexcept { return m_k >= m_applied && m_open; }
  // Lane 0 writes the operation; every lane keeps a key of it, which the kernel compares across
  // lanes after the replay (element code whose operations depend on the data cannot run in lanes:
  // the group then goes element by element). The key is exact on the lane path, whose ratios all
  // have the denominator 2^DBits: the state, whether it is an addition, the numerator.
  void record(const ElementOp& op) noexcept {
    if (m_lane == 0) m_g->ops[m_k] = op;
    m_keys[m_k] = static_cast<std::uint64_t>(op.state) | (std::uint64_t(op.numerator) << 8) |
                  (op.isAddition() ? std::uint64_t(1) << 63 : 0);
    m_written |= 1u << op.state;
    m_end = m_k + 1;
  }
  void addRounded(int s, double x, int sign) noexcept {
    if (recording()) {
      std::int64_t d = 0;
      if (!Format::tryFromDouble(Scaling::identity() ? x : x * Scaling::up(s), d)) m_failed = true;
      m_g->addend[m_k][m_lane] = sign < 0 ? -d : d;
      record(ElementOp{s, 0, 0, 0});
    }
    ++m_k;
  }

  LaneGroup<S>* m_g;
  int m_lane, m_applied;
  int m_k = 0, m_end = 0;
  unsigned m_written = 0;
  bool m_whole;
  bool m_open = true, m_failed = false;
  std::uint64_t m_keys[kMaxElementOps];
};

#if HYPERGRAD_LANE_CODER
HYPERGRAD_INTRINSICS_BEGIN
/// out ← ±round(x · up · 2^R) in every lane, FixedFormat::tryFromDouble's conversion (the same
/// operations in the same order, so the same integers); false, with `out` unspecified, if a lane is
/// not finite or out of range.
template <class Format>
HYPERGRAD_TARGET_AVX512 inline bool laneFromDouble(const LaneValue& x, double up, bool scaleUp, bool negate,
                                                   std::int64_t* out) noexcept {
  __m512d y = _mm512_loadu_pd(x.v);
  if (scaleUp) y = _mm512_mul_pd(y, _mm512_set1_pd(up));
  y = _mm512_mul_pd(y, _mm512_set1_pd(Format::scale));
  if (_mm512_cmp_pd_mask(_mm512_abs_pd(y), _mm512_set1_pd(9223372036854775808.0), _CMP_LT_OQ) != 0xFF) return false;
  __m512i t = _mm512_cvttpd_epi64(y);
  const __m512d frac = _mm512_sub_pd(y, _mm512_cvtepi64_pd(t));  // exact, as in the scalar code
  const __m512i one = _mm512_set1_epi64(1);
  t = _mm512_mask_add_epi64(t, _mm512_cmp_pd_mask(frac, _mm512_set1_pd(0.5), _CMP_GE_OQ), t, one);
  t = _mm512_mask_sub_epi64(t, _mm512_cmp_pd_mask(frac, _mm512_set1_pd(-0.5), _CMP_LE_OQ), t, one);
  if (negate) t = _mm512_sub_epi64(_mm512_setzero_si512(), t);
  _mm512_store_si512(out, t);
  return true;
}

/// x ← x + d in every lane, checked as ExactElement checks one (no int64 overflow, never −2^63);
/// false, with nothing changed, if a lane fails.
HYPERGRAD_TARGET_AVX512 inline bool laneAddInPlace(std::int64_t* x, const std::int64_t* d) noexcept {
  const __m512i a = _mm512_loadu_si512(x), b = _mm512_load_si512(d), r = _mm512_add_epi64(a, b);
  // Signed overflow: a and b of one sign, r of the other.
  const __m512i ov = _mm512_and_si512(_mm512_xor_si512(a, r), _mm512_xor_si512(b, r));
  const __mmask8 bad = _mm512_movepi64_mask(ov) |
                       _mm512_cmpeq_epi64_mask(r, _mm512_set1_epi64(std::numeric_limits<std::int64_t>::min()));
  if (bad != 0) return false;
  _mm512_storeu_si512(x, r);
  return true;
}

/// The values of eight state integers, FixedFormat::toDouble's (times `down` when scaled),
/// materialised as materialized() does for one.
template <class Format>
HYPERGRAD_TARGET_AVX512 inline LaneValue laneToDouble(const std::int64_t* x, double down, bool scaleDown) noexcept {
  __m512d v = _mm512_mul_pd(_mm512_cvtepi64_pd(_mm512_loadu_si512(x)), _mm512_set1_pd(Format::resolution));
  if (scaleDown) v = _mm512_mul_pd(v, _mm512_set1_pd(down));
  __asm__("" : "+v"(v));
  LaneValue r;
  _mm512_storeu_pd(r.v, v);
  return r;
}
HYPERGRAD_INTRINSICS_END

/// x ← x − d in every lane, checked as laneAddInPlace; false, with nothing changed, if a lane fails.
HYPERGRAD_TARGET_AVX512 inline bool laneSubtractInPlace(std::int64_t* x, const std::int64_t* d) noexcept {
  const __m512i a = _mm512_loadu_si512(x), b = _mm512_load_si512(d), r = _mm512_sub_epi64(a, b);
  // Signed overflow: a and b of different signs, r of b's sign.
  const __m512i ov = _mm512_and_si512(_mm512_xor_si512(a, b), _mm512_xor_si512(a, r));
  const __mmask8 bad = _mm512_movepi64_mask(ov) |
                       _mm512_cmpeq_epi64_mask(r, _mm512_set1_epi64(std::numeric_limits<std::int64_t>::min()));
  if (bad != 0) return false;
  _mm512_storeu_si512(x, r);
  return true;
}

/// The operations of one lane group's step: each operation, and each addition's integers.
struct LaneLog {
  alignas(64) std::int64_t addend[kMaxElementOps][8];
  ElementOp ops[kMaxElementOps];
};

/// The exact arithmetic of a whole lane group, for rules whose element code is generic in its
/// value type (`laneCode`, see optimizers/concept.hpp): the code runs once on LaneValue, and each
/// operation applies to the eight lanes in the state arrays as it comes (Apply: multiplications by
/// the lane coder, additions converted and checked eight at a time) or is logged at the post-step
/// state (Record: the inverse, which then undoes the log last first). Values are read as the
/// operations leave them, so every lane sees what the element-by-element kernel sees.
/// Nothing throws: the first operation that fails (an addend out of range, a sum leaving the
/// range) is not applied and marks the group failed, the later ones are skipped; the kernel
/// takes back the `count()` operations logged and redoes the group element by element, which
/// reports the failure with the usual typed error.
template <class Format, int DBits, class Buffer, int S, class Scaling, bool Record>
class LaneElement {
 public:
  LaneElement(std::int64_t* const* state, Index i, LaneLog& log, Buffer& buf, LaneStacks& st) noexcept
      : m_log(&log), m_i(i), m_buf(&buf), m_st(&st) {
    for (int s = 0; s < S; ++s) m_x[s] = state[s] + i;
  }

  template <class Entry>
  void multiply(int s, const Entry& c) {
    if (m_failed) return;
    const auto& r = c.ratio;
    if constexpr (!Record) {
      if (r.numerator != r.denominator)
        laneMultiply8<DBits, Buffer::precisionBits>(m_x[s], m_i, r.numerator, *m_buf, *m_st);
    }
    m_log->ops[m_count++] = ElementOp{s, r.numerator, r.denominator, 0};
  }
  void add(int s, const LaneValue& x, const char* /*what*/ = "addend") { addRounded(s, x, false); }
  void subtract(int s, const LaneValue& x, const char* /*what*/ = "subtrahend") { addRounded(s, x, true); }
  LaneValue value(int s) const noexcept {
    return laneToDouble<Format>(m_x[s], Scaling::down(s), !Scaling::identity());
  }

  int count() const noexcept { return m_count; }     ///< Operations applied (Apply) or logged (Record)
  bool failed() const noexcept { return m_failed; }  ///< An operation failed (see the class comment)

 private:
  void addRounded(int s, const LaneValue& x, bool negate) noexcept {
    if (m_failed) return;
    std::int64_t* d = m_log->addend[m_count];
    bool ok = laneFromDouble<Format>(x, Scaling::up(s), !Scaling::identity(), negate, d);
    if constexpr (!Record) ok = ok && laneAddInPlace(m_x[s], d);
    if (!ok) {
      m_failed = true;
      return;
    }
    m_log->ops[m_count++] = ElementOp{s, 0, 0, 0};
  }

  std::int64_t* m_x[S];
  LaneLog* m_log;
  Index m_i;
  Buffer* m_buf;
  LaneStacks* m_st;
  int m_count = 0;
  bool m_failed = false;
};
#endif

template <class, class = void>
struct HasLaneCode : std::false_type {};
template <class R>
struct HasLaneCode<R, std::void_t<decltype(static_cast<bool>(R::laneCode))>> : std::bool_constant<R::laneCode> {};

/// Whether rule R's element code runs on LaneValue (`R::laneCode`, see optimizers/concept.hpp).
template <class R>
constexpr bool ruleHasLaneCode() {
  return HasLaneCode<R>::value;
}

/// Whether the lane path can run the element code with these coefficients: every ratio a power-
/// of-two denominator with numerator ≥ 2 (or exactly one); other ratios (exact fractions, zero)
/// go element by element.
struct LaneRatioProbe {
  bool ok = true;
  template <class Entry>
  void multiply(int /*s*/, const Entry& c) {
    if (c.ratio.one()) return;
    if (!c.ratio.dyadic() || c.ratio.zero() || c.ratio.numerator < 2) ok = false;
  }
  void add(int /*s*/, double /*x*/, const char* /*what*/ = "") {}
  void subtract(int /*s*/, double /*x*/, const char* /*what*/ = "") {}
  double value(int /*s*/) const { return 0.5; }
};

/// Checks the rule's reversibility contract on one element (see optimizers/concept.hpp): no
/// state written after it was read, forwardWeights writes only state 0, forwardState never
/// reads or writes state 0. Runs the element code on made-up values; nothing is stored.
struct ContractArithmetic {
  unsigned read = 0, written = 0;
  int multiplies = 0;
  bool violated = false;
  const char* problem = "";
  template <class Entry>
  void multiply(int s, const Entry& /*ratio*/) {
    ++multiplies;
    write(s);
  }
  void add(int s, double /*x*/, const char* /*what*/ = "") { write(s); }
  void subtract(int s, double /*x*/, const char* /*what*/ = "") { write(s); }
  double value(int s) {
    read |= 1u << s;
    return 0.5;
  }
  void write(int s) {
    if ((read >> s) & 1u) {
      violated = true;
      problem = "a state is written after it was read in the same step";
    }
    written |= 1u << s;
  }
};

template <class Rule, class Coefficients>
const char* ruleContractViolation(const Coefficients& c) {
  ContractArithmetic state;
  Rule::forwardState(state, c, 0.25);
  if (state.violated) return state.problem;
  if ((state.read | state.written) & 1u) return "forwardState reads or writes the weights (state 0)";
  ContractArithmetic weights;
  weights.read = state.read;  // reads in forwardState followed by writes in forwardWeights count too
  Rule::forwardWeights(weights, c);
  if (weights.violated) return weights.problem;
  if ((weights.written & ~1u) != 0) return "forwardWeights writes a state other than the weights";
  if ((weights.written & 1u) == 0) return "forwardWeights does not update the weights";
  return nullptr;
}

/// Multiplications by a ratio in one step of the rule: at most one spilled word each, per element
/// and pass, which is what the kernel reserves in the buffer before a pass.
template <class Rule, class Coefficients>
int ruleMultiplies(const Coefficients& c) {
  ContractArithmetic a;
  Rule::forwardState(a, c, 0.25);
  Rule::forwardWeights(a, c);
  return a.multiplies;
}

/// Which halves of the step a kernel call applies or inverts.
enum class StepPart { State, Weights, Both };

/// The fused per-block kernel of an update rule in exact arithmetic.
/// `Scaling` (UnitScaling, or the driver's StateScaling of the rule) gives each state's power of
/// two between its values and the format's units.
template <class Rule, class Format, class Rounding, int DBits, class Buffer, class Scaling = UnitScaling>
class ExactKernel {
 public:
  static constexpr int S = Rule::numStates;
  using Applier = ExactElement<Format, Rounding, DBits, Buffer, S, ElementMode::Apply, Scaling>;
  using Recorder = ExactElement<Format, Rounding, DBits, Buffer, S, ElementMode::Record, Scaling>;

  /// Arguments of one kernel call. `coefficients[k]` are group k's step coefficients; `gradient`
  /// is g_t (needed by the state half, forward and inverse).
  template <class Coefficients>
  struct Call {
    std::int64_t* const* state;   // S arrays of layout.size() integers
    Buffer* buffer;
    const ParameterLayout* layout;
    const Coefficients* coefficients;
    const double* gradient;
    int multiplies;                      // ruleMultiplies(): the words per element to reserve
    unsigned char* blockDone;            // workspace of buffer->numBlocks() flags
    std::exception_ptr* blockErrors;     // workspace of buffer->numBlocks() slots (empty)
  };

  /// Applies `part` of the step forward to every element; on failure nothing has changed and
  /// the ElementFailure of the lowest failing block is rethrown.
  template <class Coefficients>
  static void forward(const Call<Coefficients>& call, StepPart part) {
    dispatch<true>(call, part);
  }

  /// Inverts `part` of the step for every element (State and Both need g_t); on failure nothing
  /// has changed.
  template <class Coefficients>
  static void inverse(const Call<Coefficients>& call, StepPart part) {
    dispatch<false>(call, part);
  }

 private:
  // The part is a template argument below, so that each instantiation sees a fixed sequence of
  // element operations and the compiler can unroll the element's log and its undo.
  template <bool Forward, class Coefficients>
  static void dispatch(const Call<Coefficients>& call, StepPart part) {
    switch (part) {
      case StepPart::State: run<Forward, StepPart::State>(call); break;
      case StepPart::Weights: run<Forward, StepPart::Weights>(call); break;
      case StepPart::Both: run<Forward, StepPart::Both>(call); break;
    }
  }

  // Nothing in a pass allocates: the buffer's worst case is reserved first (the only step that
  // can fail for lack of memory, before anything changes) and the per-block flags live in the
  // caller's workspace. So the undo of a failed pass cannot fail either.
  // The lane path or not is decided once per call, as a template argument, so that the
  // element-by-element passes compile exactly as without it (a run-time test inside them made the
  // compiler treat them differently: the one-stack update got 30% slower).
  template <bool Forward, StepPart Part, class Coefficients>
  static void run(const Call<Coefficients>& call) {
    if (laneLayout(*call.buffer)) runBlocks<Forward, Part, true>(call);
    else runBlocks<Forward, Part, false>(call);
  }

  template <bool Forward, StepPart Part, bool L, class Coefficients>
  static void runBlocks(const Call<Coefficients>& call) {
    Buffer& buf = *call.buffer;
    const Index numBlocks = buf.numBlocks();
    buf.reserve(call.multiplies);
    unsigned char* done = call.blockDone;  // 1 when a block finished (to undo if another fails)
    std::exception_ptr* errors = call.blockErrors;
    for (Index b = 0; b < numBlocks; ++b) done[b] = 0;
    bool failed = false;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (numBlocks > 1 && buf.size() >= 32768) reduction(|| : failed)
#endif
    for (Index b = 0; b < numBlocks; ++b) {
      try {
        if constexpr (Forward) forwardBlock<Part, L>(call, b);
        else inverseBlock<Part, L>(call, b);
        done[b] = 1;
      } catch (...) {
        errors[b] = std::current_exception();
        failed = true;
      }
    }
    if (!failed) return;
    // Undo the blocks that finished. The opposite pass cannot fail on a state it just produced;
    // if it did anyway, the state is lost and InvalidState says so.
    bool undoFailed = false;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (numBlocks > 1 && buf.size() >= 32768) reduction(|| : undoFailed)
#endif
    for (Index b = 0; b < numBlocks; ++b) {
      if (!done[b]) continue;
      try {
        if constexpr (Forward) inverseBlock<Part, L>(call, b);
        else forwardBlock<Part, L>(call, b);
      } catch (...) {
        undoFailed = true;
      }
    }
    if (undoFailed) {
      throw InvalidState("exact kernel: undoing a failed step failed; the optimizer state is lost (call start() "
                         "again). This is a bug: please report it");
    }
    for (Index b = 0; b < numBlocks; ++b) {
      if (!errors[b]) continue;
      std::exception_ptr first = errors[b];  // the lowest failing block's: the same at any thread count
      for (Index c = b; c < numBlocks; ++c) errors[c] = nullptr;
      std::rethrow_exception(first);
    }
  }

  // Calls fn(k, begin, end) for each group k's part of [lo, hi), in increasing order of k, or in
  // decreasing order when `reversed` (groups tile the vector in order).
  template <class Fn>
  static void forEachSegment(const ParameterLayout& layout, Index lo, Index hi, bool reversed, Fn&& fn) {
    if (lo >= hi) return;
    Index first = 0, last = layout.numGroups() - 1;
    for (Index a = 0, b = layout.numGroups(); b - a > 1;) {  // the group of lo
      const Index mid = (a + b) / 2;
      if (layout.group(mid).offset <= lo) a = mid;
      else b = mid;
      first = a;
    }
    if (layout.numGroups() == 1) first = 0;
    for (last = first; last + 1 < layout.numGroups() && layout.group(last + 1).offset < hi;) ++last;
    for (Index j = 0; j <= last - first; ++j) {
      const Index k = reversed ? last - j : first + j;
      const ParameterGroup& grp = layout.group(k);
      fn(k, std::max(lo, grp.offset), std::min(hi, grp.offset + grp.size));
    }
  }

  // The element code of `Part` in arithmetic `a`.
  template <StepPart Part, class A, class Coefficients, class G>
  static void elementCode(A& a, const Coefficients& c, const G& g) {
    if constexpr (Part != StepPart::Weights) Rule::forwardState(a, c, g);
    if constexpr (Part != StepPart::State) Rule::forwardWeights(a, c);
  }

  // Copy 1 of applyElement and invertElement is the lane path's: with the element-by-element
  // passes as the only callers of copy 0, the compiler treats copy 0 as it did before the lane
  // path existed (a shared copy made the one-stack update 30% slower, measured).
  template <StepPart Part, int Copy = 0, class Coefficients>
  static void applyElement(const Call<Coefficients>& call, const Coefficients& c, Index i) {
    Applier e(i, *call.buffer);
    e.load(call.state);
    const double g = Part != StepPart::Weights ? call.gradient[i] : 0.0;
    try {
      if (Part != StepPart::Weights && !std::isfinite(g))
        throw ElementFailure(ElementFailure::Kind::NonFiniteGradient, 0, i, "gradient", g, 0.0);
      elementCode<Part>(e, c, g);
    } catch (...) {
      // Take back the operations applied before the failing one (see ExactElement): only the
      // buffer has changed, the state in memory is untouched until store().
      if (e.count() > 0) {
        Recorder r(i, *call.buffer, e.count());
        r.loadFrom(e);
        elementCode<Part>(r, c, g);
        r.undo();
      }
      throw;
    }
    e.store(call.state);
  }

  template <StepPart Part, int Copy = 0, class Coefficients>
  static void invertElement(const Call<Coefficients>& call, const Coefficients& c, Index i) {
    Recorder e(i, *call.buffer);
    e.load(call.state);
    // Record the step's operations at the post-step state (the contract makes every recomputed
    // addend equal to the forward's), then undo them last first.
    elementCode<Part>(e, c, Part != StepPart::Weights ? call.gradient[i] : 0.0);
    e.undo();
    e.store(call.state);
  }

  // A whole step on one block runs as two passes, the state half of every element, then the
  // weights half: so the block's word stack receives the state half's words first, and the
  // reverse pass — which undoes the weights half of every element (unstepWeights) before it can
  // recompute g_t and undo the state half — pops them in exactly the reverse order, also when
  // the weights half multiplies through the buffer (AdamW's decay). The second pass also has no
  // buffer dependence between elements when the weights half has no multiplication, so the
  // processor overlaps the elements' square roots and divisions (Adam).
  template <bool L, class Coefficients>
  static void forwardBoth(const Call<Coefficients>& call, Index b) {
    forwardBlock<StepPart::State, L>(call, b);
    try {
      forwardBlock<StepPart::Weights, L>(call, b);
    } catch (...) {
      inverseBlock<StepPart::State, L>(call, b);  // exact: the state the pass just produced
      throw;
    }
  }
  template <bool L, class Coefficients>
  static void inverseBoth(const Call<Coefficients>& call, Index b) {
    inverseBlock<StepPart::Weights, L>(call, b);
    try {
      inverseBlock<StepPart::State, L>(call, b);
    } catch (...) {
      forwardBlock<StepPart::Weights, L>(call, b);
      throw;
    }
  }

  // L: the lane path (see run()).
  template <StepPart Part, bool L, class Coefficients>
  static void forwardBlock(const Call<Coefficients>& call, Index b) {
    if constexpr (Part == StepPart::Both) forwardBoth<L>(call, b);
    else forwardPass<Part, L>(call, b);
  }
  template <StepPart Part, bool L, class Coefficients>
  static void inverseBlock(const Call<Coefficients>& call, Index b) {
    if constexpr (Part == StepPart::Both) inverseBoth<L>(call, b);
    else inversePass<Part, L>(call, b);
  }

  // A pass failed: undo the elements [lo, done) it stepped, last first, so that each stack comes
  // back word for word (the failing element undid itself).
  template <StepPart Part, class Coefficients>
  static void undoStepped(const Call<Coefficients>& call, Index lo, Index done) {
    forEachSegment(*call.layout, lo, done, true, [&](Index k, Index begin, Index end) {
      const Coefficients& c = call.coefficients[k];
      for (Index i = end; i-- > begin;) invertElement<Part>(call, c, i);
    });
  }
  // An inverse pass failed: redo the elements [undone, hi) it inverted, in increasing order (the
  // failing element is as it was).
  template <StepPart Part, class Coefficients>
  static void redoInverted(const Call<Coefficients>& call, Index undone, Index hi) {
    forEachSegment(*call.layout, undone, hi, false, [&](Index k, Index begin, Index end) {
      const Coefficients& c = call.coefficients[k];
      for (Index i = begin; i < end; ++i) applyElement<Part>(call, c, i);
    });
  }

  // ---- The lane path ------------------------------------------------------------------------
  // In the lane layout, with the lane coder active, each segment's aligned groups of eight go
  // operation by operation: the element code runs per lane in a LaneReplay (recording the
  // operations and their addends from the current values, applying nothing), then each recorded
  // operation is applied to the eight lanes at once — a multiplication by the lane coder, an
  // addition checked per lane. The bits are the element-by-element kernel's: each lane's stack
  // sees its element's operations in the same order, and every addend is computed by the same
  // element code from the same values (see LaneReplay). A group where anything fails (an addend
  // out of range, a non-finite g, a state not from this run) is taken back and redone element by
  // element, which throws the typed error with the usual undo.
  static constexpr bool kLaneRounding =
      std::is_same<Rounding, BitsBackRounding>::value && laneCoderFits<DBits, Buffer::precisionBits>();

  static bool laneLayout(const Buffer& buf) noexcept {
    if constexpr (kLaneRounding && HYPERGRAD_LANE_CODER) {
      return buf.lanes() == Buffer::laneCount && laneCoderActive();
    } else {
      static_cast<void>(buf);
      return false;
    }
  }

  template <StepPart Part, class Coefficients>
  static bool laneSegment(const Coefficients& c) {
    LaneRatioProbe probe;
    elementCode<Part>(probe, c, 0.25);
    return probe.ok;
  }

  // Calls scalar(i) for [begin, a) and [z, end) and groups(a, z) for the aligned groups between,
  // in increasing order (forward) or decreasing (inverse); a and z are begin and end rounded
  // inwards to multiples of 8.
  template <bool Forward, class Scalar, class Groups>
  static void laneSplit(Index begin, Index end, Scalar&& scalar, Groups&& groups) {
    const Index a = std::min(end, (begin + 7) & ~Index(7)), z = std::max(a, end & ~Index(7));
    if (Forward) {
      for (Index i = begin; i < a; ++i) scalar(i);
      if (a < z) groups(a, z);
      for (Index i = z; i < end; ++i) scalar(i);
    } else {
      for (Index i = end; i-- > z;) scalar(i);
      if (a < z) groups(a, z);
      for (Index i = a; i-- > begin;) scalar(i);
    }
  }

#if HYPERGRAD_LANE_CODER
  // A group's addend rows are written lane by lane for the operations recorded, and read only for
  // those; GCC 12 cannot see that through the replay loop. Zeroing the group would cost more than
  // the rest of a group's step.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
  using Group = LaneGroup<S>;

  static void loadGroup(const std::int64_t* const* state, Index i, Group& grp) noexcept {
    for (int s = 0; s < S; ++s)
      for (int l = 0; l < 8; ++l) grp.x[s][l] = state[s][i + l];
  }
  static void storeGroup(std::int64_t* const* state, Index i, const Group& grp) noexcept {
    for (int s = 0; s < S; ++s)
      for (int l = 0; l < 8; ++l) state[s][i + l] = grp.x[s][l];
  }

  // x ← x ± addend in every lane, checked as ExactElement checks one; false (nothing changed) if
  // a lane leaves the range.
  static bool laneAddChecked(std::int64_t* x, const std::int64_t* addend, bool subtract) noexcept {
    std::int64_t r[8];
    bool overflow = false;
    for (int l = 0; l < 8; ++l) {
      overflow |= (subtract ? __builtin_sub_overflow(x[l], addend[l], &r[l]) : __builtin_add_overflow(x[l], addend[l], &r[l])) ||
                  r[l] == std::numeric_limits<std::int64_t>::min();
    }
    if (overflow) return false;
    for (int l = 0; l < 8; ++l) x[l] = r[l];
    return true;
  }

  // Applies operation op to the group's lanes; false (nothing changed) if an addition overflows.
  static bool laneApply(Group& grp, int j, Index i, Buffer& buf, LaneStacks& st) {
    const ElementOp& op = grp.ops[j];
    std::int64_t* x = grp.x[op.state];
    if (op.isAddition()) return laneAddChecked(x, grp.addend[j], false);
    if (op.numerator != op.denominator) laneMultiply8<DBits, Buffer::precisionBits>(x, i, op.numerator, buf, st);
    return true;
  }
  // Undoes operation op; false (nothing changed) if a subtraction overflows or a division leaves
  // the int64 range (the state is not one this operation produced).
  static bool laneUndo(Group& grp, int j, Index i, Buffer& buf, LaneStacks& st) {
    const ElementOp& op = grp.ops[j];
    std::int64_t* x = grp.x[op.state];
    if (op.isAddition()) return laneAddChecked(x, grp.addend[j], true);
    return op.numerator == op.denominator || laneDivide8<DBits, Buffer::precisionBits>(x, i, op.numerator, buf, st);
  }

  // One group forward; `done` counts the elements stepped (the caller's undo range).
  template <StepPart Part, class Coefficients>
  static void forwardGroup(const Call<Coefficients>& call, const Coefficients& c, Index i, LaneStacks& st, Index& done) {
    Buffer& buf = *call.buffer;
    Group grp;
    loadGroup(call.state, i, grp);
    double g[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    bool ok = true;
    if constexpr (Part != StepPart::Weights) {
      for (int l = 0; l < 8; ++l) {
        g[l] = call.gradient[i + l];
        ok = ok && std::isfinite(g[l]);
      }
    }
    int applied = 0;
    while (ok) {
      int end = 0, total = 0;
      std::uint64_t keys[kMaxElementOps];
      for (int l = 0; l < 8; ++l) {
        LaneReplay<Format, S, Scaling> r(grp, l, applied);
        elementCode<Part>(r, c, g[l]);
        ok = ok && !r.failed() && (l == 0 || (r.end() == end && r.total() == total));
        end = r.end();
        total = r.total();
        for (int k = applied; k < end && ok; ++k) {
          if (l == 0) keys[k] = r.key(k);
          else ok = r.key(k) == keys[k];
        }
      }
      if (!ok || applied >= total) break;
      HYPERGRAD_ASSERT(end > applied);
      for (int j = applied; j < end && ok; ++j) {
        if (laneApply(grp, j, i, buf, st)) ++applied;
        else ok = false;
      }
    }
    if (ok) {
      storeGroup(call.state, i, grp);
      done += 8;
      return;
    }
    // Take back the operations applied (their addends are in grp), then the scalar kernel
    // repeats the group and throws where it fails.
    for (int j = applied; j-- > 0;) {
      const bool undone = laneUndo(grp, j, i, buf, st);
      HYPERGRAD_ASSERT(undone);
      static_cast<void>(undone);
    }
    st.store(buf);
    for (int l = 0; l < 8; ++l, ++done) applyElement<Part, 1>(call, c, i + l);
    st.load(buf, st.firstStack);
  }

  // One group backwards; `undone` is the lowest element inverted (the caller's redo range).
  template <StepPart Part, class Coefficients>
  static void inverseGroup(const Call<Coefficients>& call, const Coefficients& c, Index i, LaneStacks& st,
                           Index& undone) {
    Buffer& buf = *call.buffer;
    Group grp;
    loadGroup(call.state, i, grp);
    int total = 0;
    bool ok = true;
    // Record at the post-step state: by the contract every addend is the forward's. An addend
    // out of range: the scalar kernel reports it.
    std::uint64_t keys[kMaxElementOps];
    for (int l = 0; l < 8; ++l) {
      LaneReplay<Format, S, Scaling> r(grp, l, 0, /*wholeStep=*/true);
      elementCode<Part>(r, c, Part != StepPart::Weights ? call.gradient[i + l] : 0.0);
      ok = ok && !r.failed() && (l == 0 || r.total() == total);
      total = r.total();
      for (int k = 0; k < total && ok; ++k) {
        if (l == 0) keys[k] = r.key(k);
        else ok = r.key(k) == keys[k];
      }
    }
    int j = total;  // operations [j, total) are undone
    while (ok && j > 0) {
      if (laneUndo(grp, j - 1, i, buf, st)) --j;
      else ok = false;
    }
    if (ok) {
      storeGroup(call.state, i, grp);
      undone = i;
      return;
    }
    // Redo what was undone ([j, total); the failing undo changed nothing), then the scalar kernel
    // repeats the group and throws where it fails.
    for (int k = j; k < total; ++k) {
      const bool redone = laneApply(grp, k, i, buf, st);
      HYPERGRAD_ASSERT(redone);
      static_cast<void>(redone);
    }
    st.store(buf);
    for (int l = 8; l-- > 0;) {
      invertElement<Part, 1>(call, c, i + l);
      undone = i + l;
    }
    st.load(buf, st.firstStack);
  }

  // ---- Lane groups of rules with `laneCode` ----------------------------------------------------
  // The element code runs once per group on LaneValue, applying each operation to the eight
  // lanes in the state arrays as it comes (LaneElement). A run of groups is one AVX-512 function
  // into which everything is inlined (flatten) — LaneValue's operations become vector
  // instructions, the coder's calls direct ones — except the cold paths after a failure.
  using LaneApplier = LaneElement<Format, DBits, Buffer, S, Scaling, false>;
  using LaneRecorder = LaneElement<Format, DBits, Buffer, S, Scaling, true>;

  // Undoes (Undo) or redoes logged operation j on the group at i; false (nothing changed) if a
  // subtraction overflows or a division leaves the int64 range.
  template <bool Undo>
  static bool laneOp(std::int64_t* const* state, const LaneLog& log, int j, Index i, Buffer& buf, LaneStacks& st) {
    const ElementOp& op = log.ops[j];
    std::int64_t* x = state[op.state] + i;
    if (op.isAddition()) return Undo ? laneSubtractInPlace(x, log.addend[j]) : laneAddInPlace(x, log.addend[j]);
    if (op.numerator == op.denominator) return true;
    if (Undo) return laneDivide8<DBits, Buffer::precisionBits>(x, i, op.numerator, buf, st);
    laneMultiply8<DBits, Buffer::precisionBits>(x, i, op.numerator, buf, st);
    return true;
  }
  // Takes back the first `count` operations of a failed forward group, last first.
  HYPERGRAD_NOINLINE static void laneTakeBack(std::int64_t* const* state, const LaneLog& log, int count, Index i,
                                              Buffer& buf, LaneStacks& st) {
    for (int j = count; j-- > 0;) {
      if (laneOp<true>(state, log, j, i, buf, st)) continue;
      // Only a multiply's undo can decline: laneDivide8 leaves a quotient near the int64 edge to
      // the scalar coder (nothing changed). Its exact result is the value before the multiply, in
      // range: divide element by element, in decreasing order, as laneDivide does.
      const ElementOp& op = log.ops[j];
      HYPERGRAD_ASSERT(!op.isAddition());
      std::int64_t* x = state[op.state] + i;
      st.store(buf);
      for (Index e = 8; e-- > 0;) Rounding::template divideOne<DBits>(x[e], op.numerator, i + e, buf);
      st.load(buf, st.firstStack);
    }
  }
  // Redoes operations [from, count) of a group whose undo failed at from − 1.
  HYPERGRAD_NOINLINE static void laneRedo(std::int64_t* const* state, const LaneLog& log, int from, int count, Index i,
                                          Buffer& buf, LaneStacks& st) {
    for (int j = from; j < count; ++j) {
      const bool redone = laneOp<false>(state, log, j, i, buf, st);
      HYPERGRAD_ASSERT(redone);
      static_cast<void>(redone);
    }
  }

  // Groups [a, z) forward, in increasing order; returns the first group that failed, with nothing
  // of it applied, or z.
  template <StepPart Part, class Coefficients>
  HYPERGRAD_TARGET_AVX512 __attribute__((flatten)) static Index forwardGroupsValues(const Call<Coefficients>& call,
                                                                                    const Coefficients& c, Index a,
                                                                                    Index z, LaneStacks& st) {
    Buffer& buf = *call.buffer;
    LaneLog log;
    for (Index i = a; i < z; i += 8) {
      LaneValue g(0.0);
      if constexpr (Part != StepPart::Weights) {
        const __m512d gv = _mm512_loadu_pd(call.gradient + i);
        if (_mm512_fpclass_pd_mask(gv, 0x99) != 0) return i;  // NaN or ±∞
        _mm512_storeu_pd(g.v, gv);
      }
      LaneApplier e(call.state, i, log, buf, st);
      elementCode<Part>(e, c, g);
      if (e.failed()) {
        laneTakeBack(call.state, log, e.count(), i, buf, st);
        return i;
      }
    }
    return z;
  }

  // Groups [a, z) backwards, in decreasing order; returns f with the groups [f, z) inverted: f = a,
  // or the group at f − 8 failed and is as it was.
  template <StepPart Part, class Coefficients>
  HYPERGRAD_TARGET_AVX512 __attribute__((flatten)) static Index inverseGroupsValues(const Call<Coefficients>& call,
                                                                                    const Coefficients& c, Index a,
                                                                                    Index z, LaneStacks& st) {
    Buffer& buf = *call.buffer;
    LaneLog log;
    for (Index i = z; i > a;) {
      i -= 8;
      LaneValue g(0.0);
      if constexpr (Part != StepPart::Weights) _mm512_storeu_pd(g.v, _mm512_loadu_pd(call.gradient + i));
      LaneRecorder e(call.state, i, log, buf, st);
      elementCode<Part>(e, c, g);
      if (e.failed()) return i + 8;
      const int total = e.count();
      for (int j = total; j > 0; --j) {
        if (!laneOp<true>(call.state, log, j - 1, i, buf, st)) {
          laneRedo(call.state, log, j, total, i, buf, st);
          return i + 8;
        }
      }
    }
    return a;
  }

  // forwardPass / inversePass on the lane path: each segment whose ratios the lane coder takes
  // goes by aligned groups of eight, its unaligned ends and the other segments element by
  // element; on failure the same undo as the element-by-element pass.
  template <StepPart Part, class Coefficients>
  HYPERGRAD_NOINLINE static void forwardPassLanes(const Call<Coefficients>& call, Index b) {
    const ParameterLayout& layout = *call.layout;
    const Index lo = call.buffer->blockBegin(b), hi = call.buffer->blockEnd(b);
    Index done = lo;  // elements [lo, done) are stepped
    try {
      forEachSegment(layout, lo, hi, false, [&](Index k, Index begin, Index end) {
        const Coefficients& c = call.coefficients[k];
        auto scalar = [&](Index i) { applyElement<Part, 1>(call, c, i), ++done; };
        if (!laneSegment<Part>(c)) {
          for (Index i = begin; i < end; ++i) scalar(i);
          return;
        }
        laneSplit<true>(begin, end, scalar, [&](Index a, Index z) {
          LaneStacks st;  // open over the groups only: the scalar elements use the stacks
          st.load(*call.buffer, call.buffer->stackOf(a));
          if constexpr (ruleHasLaneCode<Rule>()) {
            for (Index i = a; i < z;) {
              const Index f = forwardGroupsValues<Part>(call, c, i, z, st);
              done += f - i;
              if (f == z) break;
              // The group at f failed: element by element, which throws where it fails.
              st.store(*call.buffer);
              for (int l = 0; l < 8; ++l, ++done) applyElement<Part, 1>(call, c, f + l);
              st.load(*call.buffer, st.firstStack);
              i = f + 8;
            }
          } else {
            for (Index i = a; i < z; i += 8) forwardGroup<Part>(call, c, i, st, done);
          }
          st.store(*call.buffer);
        });
      });
    } catch (...) {
      undoStepped<Part>(call, lo, done);
      throw;
    }
  }
  template <StepPart Part, class Coefficients>
  HYPERGRAD_NOINLINE static void inversePassLanes(const Call<Coefficients>& call, Index b) {
    const ParameterLayout& layout = *call.layout;
    const Index lo = call.buffer->blockBegin(b), hi = call.buffer->blockEnd(b);
    Index undone = hi;  // elements [undone, hi) are inverted
    try {
      forEachSegment(layout, lo, hi, true, [&](Index k, Index begin, Index end) {
        const Coefficients& c = call.coefficients[k];
        auto scalar = [&](Index i) { invertElement<Part, 1>(call, c, i), undone = i; };
        if (!laneSegment<Part>(c)) {
          for (Index i = end; i-- > begin;) scalar(i);
          return;
        }
        laneSplit<false>(begin, end, scalar, [&](Index a, Index z) {
          LaneStacks st;
          st.load(*call.buffer, call.buffer->stackOf(a));
          if constexpr (ruleHasLaneCode<Rule>()) {
            for (Index i = z; i > a;) {
              const Index f = inverseGroupsValues<Part>(call, c, a, i, st);
              undone = f;
              if (f == a) break;
              // The group at f − 8 failed: element by element, which throws where it fails.
              st.store(*call.buffer);
              for (int l = 8; l-- > 0;) {
                invertElement<Part, 1>(call, c, f - 8 + l);
                undone = f - 8 + l;
              }
              st.load(*call.buffer, st.firstStack);
              i = f - 8;
            }
          } else {
            for (Index i = z; i > a;) inverseGroup<Part>(call, c, i -= 8, st, undone);
          }
          st.store(*call.buffer);
        });
      });
    } catch (...) {
      redoInverted<Part>(call, undone, hi);
      throw;
    }
  }
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif

  // One half of the step over one block, element by element (or by lane groups, above).
  template <StepPart Part, bool L, class Coefficients>
  static void forwardPass(const Call<Coefficients>& call, Index b) {
#if HYPERGRAD_LANE_CODER
    if constexpr (L) return forwardPassLanes<Part>(call, b);
#endif
    const ParameterLayout& layout = *call.layout;
    const Index lo = call.buffer->blockBegin(b), hi = call.buffer->blockEnd(b);
    Index done = lo;  // elements [lo, done) are stepped
    try {
      forEachSegment(layout, lo, hi, false, [&](Index k, Index begin, Index end) {
        const Coefficients& c = call.coefficients[k];
        for (Index i = begin; i < end; ++i, ++done) applyElement<Part>(call, c, i);
      });
    } catch (...) {
      undoStepped<Part>(call, lo, done);
      throw;
    }
  }

  template <StepPart Part, bool L, class Coefficients>
  static void inversePass(const Call<Coefficients>& call, Index b) {
#if HYPERGRAD_LANE_CODER
    if constexpr (L) return inversePassLanes<Part>(call, b);
#endif
    const ParameterLayout& layout = *call.layout;
    const Index lo = call.buffer->blockBegin(b), hi = call.buffer->blockEnd(b);
    Index undone = hi;  // elements [undone, hi) are inverted
    try {
      forEachSegment(layout, lo, hi, true, [&](Index k, Index begin, Index end) {
        const Coefficients& c = call.coefficients[k];
        for (Index i = end; i-- > begin; --undone) invertElement<Part>(call, c, i);
      });
    } catch (...) {
      redoInverted<Part>(call, undone, hi);
      throw;
    }
  }
};

}  // namespace detail
}  // namespace hypergrad
