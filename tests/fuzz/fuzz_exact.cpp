// SPDX-License-Identifier: MIT
//
// libFuzzer target for the exact core: the information buffer, the reversible multiply, and the
// exact optimizer that production runs drive through the fused kernel (exact/arithmetic.hpp).
//
// The input is a program. Its first byte picks a test and a template instantiation (below 128:
// the ratio and buffer programs, by the byte modulo 10; from 128 on: the optimizer programs):
//
//  * ratio programs (FixedVector<R> + multiplyByRatio / divideByRatio / addReal / subtractReal,
//    both rounding policies) on a vector of 1..64 elements with any block size and any initial
//    integers (INT64_MIN excepted: FixedVector reserves it). Every op either succeeds or throws
//    the documented exception; the program is then undone in reverse order with the inverse ops
//    and the values and the buffer must be bit-identical to the start, the buffer empty().
//  * buffer programs: any mix of pushPow2 / popPow2 / pushUniform / popUniform on random
//    elements with random radices, undone in reverse; every pop of the undo must return the
//    digit pushed and the buffer must end identical to a new one.
//  * optimizer programs: SgdMomentum<> (Q11.52, bits-back, d = 2^16), and
//    ReversibleOptimizer<MomentumRule> with FloorRounding in Q23.40, and with bits-back in Q1.62 at
//    d = 2^8, M = 2^16, on a layout of 1..64 elements in 1..4 groups with any block size and
//    T = 1..8. The α and γ schedules come from the input (any double, so also NaN, ±inf, γ <= 0,
//    γ > 1, γ below the smallest ratio): construction must succeed exactly when every α is finite
//    and every γ quantises to a ratio in [0, 1], and throw InvalidArgument otherwise. start()
//    takes input doubles (it must throw FixedPointOverflow exactly when one is not finite or out
//    of the fixed-point range, InvalidArgument for a wrong size) or raw fixed vectors. Then up to
//    64 operations from the input: stepWithGradient(g) (g any doubles, NaN, inf, huge, or the
//    wrong size), unstepWeights(), restepWeights(), unstepOptimizerState() with the recorded g_t
//    or a perturbed one, and start() again with bad values over the run in progress. Each either
//    succeeds or throws a documented hypergrad exception leaving every state, every start state,
//    the buffer, the run record, iteration() and halfStep() bit-identical; the operations that a
//    consistent run must accept (unstepWeights / restepWeights / unstepOptimizerState(g_t) in
//    the right state) must succeed. At the end every step is undone with the recorded gradients
//    and checkRecoveredStart() must pass, with the buffer equal to a new one.
//
// A violated property calls __builtin_trap() (libFuzzer reports a crash); so does an uncaught
// exception of an undocumented type, a failed HYPERGRAD_ASSERT (NDEBUG is never defined here) and
// any ASan / UBSan report. Build and run with tests/fuzz/run.sh.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <hypergrad/exact.hpp>
#include <hypergrad/optimizers/momentum.hpp>

namespace {

using hypergrad::Index;

// Set to true once divideByRatio is atomic on error (leaves values and buffer untouched when it
// throws FixedPointOverflow). It is not today: a throw at element i leaves the elements after i
// in the block (and other blocks) divided, and FloorRounding also leaves element i's digit popped,
// so a program stops at such a throw without a round trip (see the README in this folder).
constexpr bool kDivideIsAtomic = false;

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "fuzz_exact: property violated: %s\n", what);
  std::fflush(stderr);
  __builtin_trap();
}

#define FUZZ_CHECK(cond)                     \
  do {                                       \
    if (!(cond)) fail(#cond " (line " HG_STR(__LINE__) ")"); \
  } while (0)
#define HG_STR2(x) #x
#define HG_STR(x) HG_STR2(x)

/// Reads the fuzz input front to back; past the end every read returns zeros.
class Reader {
 public:
  Reader(const std::uint8_t* data, std::size_t size) : m_data(data), m_size(size) {}
  bool done() const { return m_pos >= m_size; }
  std::uint8_t u8() { return m_pos < m_size ? m_data[m_pos++] : 0; }
  // Little-endian; each read is its own statement (operand evaluation order is unspecified).
  std::uint16_t u16() {
    const unsigned lo = u8();
    return static_cast<std::uint16_t>(lo | (unsigned{u8()} << 8));
  }
  std::uint32_t u32() {
    const std::uint32_t lo = u16();
    return lo | (std::uint32_t{u16()} << 16);
  }
  std::uint64_t u64() {
    const std::uint64_t lo = u32();
    return lo | (std::uint64_t{u32()} << 32);
  }
  double f64() {
    const std::uint64_t bits = u64();
    double x;
    std::memcpy(&x, &bits, sizeof x);
    return x;
  }

 private:
  const std::uint8_t* m_data;
  std::size_t m_size;
  std::size_t m_pos = 0;
};

constexpr std::int64_t kMin = std::numeric_limits<std::int64_t>::min();
constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max();

// An initial stored integer, biased towards the edges of the range.
std::int64_t initialValue(Reader& in) {
  const std::uint8_t kind = in.u8();
  const auto small = static_cast<std::int64_t>(in.u16());
  switch (kind % 8) {
    case 0: return static_cast<std::int64_t>(in.u64());      // anything (INT64_MIN mapped below)
    case 1: return kMin + 1 + small;                          // the most negative values
    case 2: return kMax - small;                              // the most positive values
    case 3: return (std::int64_t(1) << 62) - 32768 + small;   // around +2^62
    case 4: return -(std::int64_t(1) << 62) + 32768 - small;  // around -2^62
    case 5: return static_cast<std::int8_t>(small);           // near zero
    default: return static_cast<std::int32_t>(in.u32());
  }
}

// A numerator: usually valid, sometimes exactly 1 or d, sometimes any uint32 (0 and > d must be
// rejected with InvalidArgument).
template <int DBits>
std::uint32_t numerator(Reader& in) {
  constexpr std::uint32_t d = std::uint32_t(1) << DBits;
  const std::uint8_t kind = in.u8();
  switch (kind % 8) {
    case 0: return in.u32();
    case 1: return d;
    case 2: return 1;
    case 3: return d - 1 - in.u8() % 4;  // d >= 2^8 in every instantiation below
    case 4: return kind & 0x80 ? 0 : d + 1;
    default: return 1 + in.u32() % d;
  }
}

// Ratio runs for a vector of n elements: one numerator, per-element numerators, or arbitrary
// (possibly malformed) runs, which must be rejected with InvalidArgument.
template <int DBits>
std::vector<hypergrad::RatioRun> ratioRuns(Reader& in, Index n) {
  std::vector<hypergrad::RatioRun> runs;
  const std::uint8_t kind = in.u8();
  switch (kind % 4) {
    case 0:
      runs.push_back({0, n, numerator<DBits>(in)});
      break;
    case 1:
    case 2: {  // per element, consecutive equal numerators merged (as ratioRuns does)
      for (Index i = 0; i < n; ++i) {
        const std::uint32_t num = (i > 0 && (in.u8() & 1)) ? runs.back().numerator : numerator<DBits>(in);
        if (!runs.empty() && runs.back().numerator == num) runs.back().end = i + 1;
        else runs.push_back({i, i + 1, num});
      }
      break;
    }
    default: {  // raw runs: gaps, overlaps, empty or out-of-range runs
      const int count = in.u8() % 5;
      for (int r = 0; r < count; ++r) {
        const auto begin = static_cast<Index>(static_cast<std::int8_t>(in.u8()));
        const auto end = static_cast<Index>(static_cast<std::int8_t>(in.u8()));
        runs.push_back({begin, end, numerator<DBits>(in)});
      }
      break;
    }
  }
  return runs;
}

enum class OpKind { Multiply, Divide, Add, Subtract };

template <int R, int DBits, int MBits>
struct RatioProgram {
  using Fixed = hypergrad::FixedVector<R>;
  using Buffer = hypergrad::InformationBuffer<MBits>;

  struct Op {
    OpKind kind;
    bool floorRounding;
    std::vector<hypergrad::RatioRun> runs;
    Eigen::VectorXd reals;
  };

  static void apply(const Op& op, OpKind kind, Fixed& v, Buffer& buf) {
    switch (kind) {
      case OpKind::Multiply:
        if (op.floorRounding)
          hypergrad::multiplyByRatio<hypergrad::FloorRounding, DBits, MBits>(v.data(), v.size(), op.runs, buf);
        else
          hypergrad::multiplyByRatio<hypergrad::BitsBackRounding, DBits, MBits>(v.data(), v.size(), op.runs, buf);
        break;
      case OpKind::Divide:
        if (op.floorRounding)
          hypergrad::divideByRatio<hypergrad::FloorRounding, DBits, MBits>(v.data(), v.size(), op.runs, buf);
        else
          hypergrad::divideByRatio<hypergrad::BitsBackRounding, DBits, MBits>(v.data(), v.size(), op.runs, buf);
        break;
      case OpKind::Add:
        v.addReal(op.reals);
        break;
      case OpKind::Subtract:
        v.subtractReal(op.reals);
        break;
    }
  }

  static OpKind inverse(OpKind k) {
    switch (k) {
      case OpKind::Multiply: return OpKind::Divide;
      case OpKind::Divide: return OpKind::Multiply;
      case OpKind::Add: return OpKind::Subtract;
      case OpKind::Subtract: return OpKind::Add;
    }
    return k;
  }

  static void checkInvariant(const Fixed& v) {
    for (Index i = 0; i < v.size(); ++i) FUZZ_CHECK(v[i] != kMin);  // FixedVector never stores INT64_MIN
  }

  static void run(Reader& in) {
    const Index n = 1 + in.u8() % 64;
    const Index blockSize = 1 + in.u8() % (n + 1);  // n + 1: one block larger than the vector
    typename Fixed::Storage raw(n);
    for (Index i = 0; i < n; ++i) raw(i) = initialValue(in);
    Fixed v;
    try {
      v = Fixed::fromRaw(raw);
    } catch (const hypergrad::FixedPointOverflow&) {  // documented: INT64_MIN is reserved
      bool hasMin = false;
      for (Index i = 0; i < n; ++i) hasMin = hasMin || raw(i) == kMin;
      FUZZ_CHECK(hasMin);
      for (Index i = 0; i < n; ++i)
        if (raw(i) == kMin) raw(i) = kMin + 1;
      v = Fixed::fromRaw(raw);
    }
    const Fixed start = v;
    Buffer buf(n, blockSize);
    const Buffer empty = buf;

    std::vector<Op> done;
    bool roundTrip = true;
    for (int step = 0; step < 48 && !in.done(); ++step) {
      const std::uint8_t code = in.u8();
      Op op;
      op.kind = static_cast<OpKind>(code % 4);
      op.floorRounding = (code >> 2) & 1;
      if (op.kind == OpKind::Add || op.kind == OpKind::Subtract) {
        op.reals.resize(n);
        const bool anyBits = (code >> 3) & 1;
        for (Index i = 0; i < n; ++i) {
          // Any double (NaN, inf, huge: FixedPointOverflow) or a value in the representable range.
          if (anyBits) {
            op.reals(i) = in.f64();
          } else {
            const auto mantissa = static_cast<double>(static_cast<std::int32_t>(in.u32()));
            op.reals(i) = std::ldexp(mantissa, (in.u8() % 80) - R);  // stored: mantissa * 2^(0..79)
          }
        }
      } else {
        op.runs = ratioRuns<DBits>(in, n);
      }

      const Fixed before = v;
      const Buffer bufBefore = buf;
      try {
        apply(op, op.kind, v, buf);
      } catch (const hypergrad::InvalidArgument&) {
        // Bad runs or numerators: documented to be checked before anything changes.
        FUZZ_CHECK(op.kind == OpKind::Multiply || op.kind == OpKind::Divide);
        FUZZ_CHECK(v == before && buf == bufBefore);
        continue;
      } catch (const hypergrad::FixedPointOverflow&) {
        // addReal / subtractReal: documented to throw before changing anything. Multiply by a
        // ratio <= 1 cannot overflow. Divide: out of range for the int64 (this integer was not
        // produced by a multiply).
        FUZZ_CHECK(op.kind != OpKind::Multiply);
        checkInvariant(v);
        if (op.kind == OpKind::Divide && !kDivideIsAtomic) {
          roundTrip = false;  // partial state: nothing more to check
          break;
        }
        FUZZ_CHECK(v == before && buf == bufBefore);
        continue;
      }
      checkInvariant(v);
      done.push_back(std::move(op));
    }
    if (!roundTrip) return;

    // Undo in reverse order. No inverse may throw: it undoes an op that succeeded.
    for (auto it = done.rbegin(); it != done.rend(); ++it) {
      try {
        apply(*it, inverse(it->kind), v, buf);
      } catch (const hypergrad::Error& e) {
        std::fprintf(stderr, "fuzz_exact: undoing op %d threw: %s\n", static_cast<int>(it->kind), e.what());
        fail("an inverse op threw");
      }
      checkInvariant(v);
    }
    FUZZ_CHECK(v == start);
    FUZZ_CHECK(buf == empty);
    FUZZ_CHECK(buf.empty());
  }
};

template <int MBits>
struct BufferProgram {
  using Buffer = hypergrad::InformationBuffer<MBits>;
  static constexpr std::uint32_t kM = Buffer::precision;

  enum class Kind { PushPow2, PopPow2, PushUniform, PopUniform };
  struct Op {
    Kind kind;
    Index element;
    std::uint32_t radix;  // k for pow2, n for uniform
    std::uint32_t digit;  // pushed or popped
  };

  static std::uint32_t uniformRadix(Reader& in) {
    const std::uint8_t kind = in.u8();
    switch (kind % 8) {
      case 0: return 1;
      case 1: return 2;
      case 2: return kM / 2;
      case 3: return kM / 2 - 1;
      case 4: return std::uint32_t(1) << (MBits - 8);
      case 5: return 1 + in.u16() % (std::uint32_t(1) << (MBits - 8));
      default: return 1 + in.u32() % (kM / 2);
    }
  }

  static void run(Reader& in) {
    const Index n = 1 + in.u8() % 16;
    const Index blockSize = 1 + in.u8() % 16;
    Buffer buf(n, blockSize);
    const Buffer empty = buf;
    std::vector<Op> done;
    for (int step = 0; step < 512 && !in.done(); ++step) {
      const std::uint8_t code = in.u8();
      Op op{static_cast<Kind>(code % 4), static_cast<Index>(in.u8() % n), 0, 0};
      // Runs of the same op on one element make the states spill and refill.
      const int repeat = 1 + ((code >> 2) & 7) * ((code >> 5) & 3);
      switch (op.kind) {
        case Kind::PushPow2:
        case Kind::PopPow2:
          op.radix = in.u8() % (MBits + 1);
          break;
        case Kind::PushUniform:
        case Kind::PopUniform:
          op.radix = uniformRadix(in);
          break;
      }
      for (int r = 0; r < repeat; ++r) {
        switch (op.kind) {
          case Kind::PushPow2:
            op.digit = in.u32() & ((std::uint64_t(1) << op.radix) - 1);
            buf.pushPow2(op.element, op.digit, static_cast<int>(op.radix));
            break;
          case Kind::PopPow2:
            op.digit = buf.popPow2(op.element, static_cast<int>(op.radix));
            FUZZ_CHECK(op.digit < (std::uint64_t(1) << op.radix));
            break;
          case Kind::PushUniform:
            op.digit = in.u32() % op.radix;
            buf.pushUniform(op.element, op.digit, op.radix);
            break;
          case Kind::PopUniform:
            op.digit = buf.popUniform(op.element, op.radix);
            FUZZ_CHECK(op.digit < op.radix);
            break;
        }
        for (std::uint64_t x : buf.states()) FUZZ_CHECK(x >= Buffer::lowerBound);
        done.push_back(op);
      }
    }
    for (auto it = done.rbegin(); it != done.rend(); ++it) {
      switch (it->kind) {
        case Kind::PushPow2:
          FUZZ_CHECK(buf.popPow2(it->element, static_cast<int>(it->radix)) == it->digit);
          break;
        case Kind::PopPow2:
          buf.pushPow2(it->element, it->digit, static_cast<int>(it->radix));
          break;
        case Kind::PushUniform:
          FUZZ_CHECK(buf.popUniform(it->element, it->radix) == it->digit);
          break;
        case Kind::PopUniform:
          buf.pushUniform(it->element, it->digit, it->radix);
          break;
      }
    }
    FUZZ_CHECK(buf == empty);
    FUZZ_CHECK(buf.empty());
  }
};


// ---- Optimizer programs ------------------------------------------------------------------------

// Build with -DFUZZ_EXACT_TRACE to print what an optimizer program does (to read a reproducer).
#if defined(FUZZ_EXACT_TRACE)
#define FUZZ_TRACE(...) std::fprintf(stderr, __VA_ARGS__)
#else
#define FUZZ_TRACE(...) static_cast<void>(0)
#endif

// A double from the input: usually moderate, sometimes any bit pattern (NaN, inf, huge,
// subnormal), exactly 0 or -0, or near a power of two.
double anyDouble(Reader& in, double scale) {
  const std::uint8_t kind = in.u8();
  switch (kind % 8) {
    case 0: return in.f64();
    case 1: return 0.0;
    case 2: return (kind & 0x80) ? -0.0 : scale;
    case 3: return std::ldexp(static_cast<double>(static_cast<std::int16_t>(in.u16())), (in.u8() % 64) - 50);
    default: return scale * static_cast<double>(static_cast<std::int16_t>(in.u16())) / 32768.0;
  }
}

// A momentum: usually in (0, 1], sometimes 1, 0, negative, above 1, tiny or not finite.
double anyMomentum(Reader& in) {
  const std::uint8_t kind = in.u8();
  switch (kind % 10) {
    case 0: return in.f64();
    case 1: return 1.0;
    case 2: return (kind & 0x80) ? 0.0 : -0.5;
    case 3: return 1.0 + std::ldexp(1.0, -(in.u8() % 60));  // just above 1 (or 1 itself, rounded)
    case 4: return std::ldexp(1.0, -(in.u8() % 30));        // down to below the smallest ratio
    case 5: return 1.0 - std::ldexp(1.0, -(in.u8() % 24));  // near 1
    default: return (1.0 + in.u16()) / 65537.0;
  }
}

/// Everything the optimizer's guarantee covers, copied.
template <class Opt>
struct OptimizerState {
  std::vector<typename Opt::Fixed> state, start;
  typename Opt::Buffer buffer;
  std::vector<std::uint64_t> fingerprints;
  Index iteration;
  bool halfStep, started, usable;
  explicit OptimizerState(const Opt& o)
      : buffer(o.buffer()),
        fingerprints(o.gradientFingerprints()),
        iteration(o.iteration()),
        halfStep(o.halfStep()),
        started(o.started()),
        usable(o.usable()) {
    for (int s = 0; s < Opt::numStates; ++s) {
      state.push_back(o.fixedState(s));
      start.push_back(o.startState(s));
    }
  }
  bool operator==(const OptimizerState& o) const {
    return state == o.state && start == o.start && buffer == o.buffer && fingerprints == o.fingerprints &&
           iteration == o.iteration && halfStep == o.halfStep && started == o.started && usable == o.usable;
  }
};

// Which exceptions an operation documents (besides succeeding).
enum Allowed : unsigned {
  kInvalidArgument = 1,
  kNonFinite = 2,
  kOverflow = 4,
  kExactness = 8,
  kInvalidState = 16,
};

template <class Format, class Rounding, int RatioBits, int PrecisionBits>
struct OptimizerProgram {
  using Opt = hypergrad::ReversibleOptimizer<hypergrad::MomentumRule, Format, Rounding, RatioBits, PrecisionBits>;
  static constexpr int R = Format::radixBits;
  static constexpr double kRange = Format::maxMagnitude;

  // Runs op; on an exception checks that it is one of `allowed` and that nothing changed.
  // Returns true when op succeeded.
  template <class Op>
  static bool attempt(Opt& opt, unsigned allowed, Op&& op) {
    const OptimizerState<Opt> before(opt);
    unsigned thrown = 0;
    try {
      op();
      FUZZ_TRACE("ok\n");
      return true;
    } catch (const hypergrad::InvalidArgument&) {
      thrown = kInvalidArgument;
    } catch (const hypergrad::NonFiniteValue&) {
      thrown = kNonFinite;
    } catch (const hypergrad::FixedPointOverflow&) {
      thrown = kOverflow;
    } catch (const hypergrad::ExactnessViolation&) {
      thrown = kExactness;
    } catch (const hypergrad::InvalidState&) {
      thrown = kInvalidState;
    }  // anything else escapes: an undocumented exception is a crash
    FUZZ_TRACE("threw kind %u\n", thrown);
    if ((thrown & allowed) == 0) {
      std::fprintf(stderr, "fuzz_exact: optimizer: undocumented exception kind %u (allowed %u)\n", thrown, allowed);
      fail("an operation threw an exception it does not document");
    }
    FUZZ_CHECK(OptimizerState<Opt>(opt) == before);  // usable() included: a failure never loses the state
    return false;
  }

  static bool fits(double x) {
    return std::isfinite(x) && std::fabs(x) < kRange && std::fabs(x * Format::scale) < 9223372036854775808.0;
  }

  static void run(Reader& in) {
    // Layout: n elements in 1..4 groups.
    const Index n = 1 + in.u8() % 64;
    const Index numGroups = 1 + in.u8() % std::min<Index>(4, n);
    hypergrad::ParameterLayout layout;
    Index offset = 0;
    for (Index k = 0; k < numGroups; ++k) {
      const Index left = n - offset - (numGroups - 1 - k);  // leave one element per later group
      const Index size = k + 1 == numGroups ? n - offset : 1 + in.u8() % left;
      layout.addGroup("g" + std::to_string(k), size);
      offset += size;
    }
    const Index blockSize = 1 + in.u8() % (n + 1);
    const Index T = 1 + in.u8() % 8;

    // Schedules; construction must fail exactly when one entry is outside its domain.
    Eigen::MatrixXd alpha(T, numGroups), gamma(T, numGroups);
    bool valid = true;
    for (Index t = 0; t < T; ++t)
      for (Index k = 0; k < numGroups; ++k) {
        alpha(t, k) = anyDouble(in, 0.5);
        gamma(t, k) = anyMomentum(in);
        valid = valid && std::isfinite(alpha(t, k));
        const double g = gamma(t, k);
        // In [0, 1], 0 or not below 1/2^(RatioBits+1); a γ below 1 that rounds to 1 is refused (no
        // fraction with a denominator <= 2^RatioBits lies that close to 1: exact/ratio.hpp).
        const double scaled = g * double(1u << RatioBits);
        const bool domain = std::isfinite(g) && g >= 0.0 && g <= 1.0 && (g == 0.0 || std::round(scaled) >= 1.0);
        const bool toOne = domain && g < 1.0 && std::round(scaled) >= double(1u << RatioBits);
        valid = valid && domain && !toOne;
      }
    std::unique_ptr<Opt> made;
    try {
      made = std::make_unique<Opt>(layout, hypergrad::Schedule(alpha), hypergrad::Schedule(gamma), blockSize);
    } catch (const hypergrad::InvalidArgument&) {
      FUZZ_TRACE("optimizer: n %ld, %ld groups, block %ld, T %ld: schedules rejected\n", static_cast<long>(n),
                 static_cast<long>(numGroups), static_cast<long>(blockSize), static_cast<long>(T));
      FUZZ_CHECK(!valid);
      return;
    }
    FUZZ_CHECK(valid);
    FUZZ_TRACE("optimizer: n %ld, %ld groups, block %ld, T %ld\n", static_cast<long>(n), static_cast<long>(numGroups),
               static_cast<long>(blockSize), static_cast<long>(T));
    Opt& opt = *made;

    // The start.
    const std::uint8_t startMode = in.u8();
    bool started = false;
    while (!started && !in.done()) started = startFromInput(opt, in, n, startMode);
    FUZZ_TRACE("  start: %s\n", started ? "ok" : "rejected");
    if (!started) return;

    std::vector<Eigen::VectorXd> recorded;  // g_t of the steps taken
    for (int step = 0; step < 64 && !in.done(); ++step) {
      const std::uint8_t code = in.u8();
      const Index t = opt.iteration();
      const bool half = opt.halfStep();
      FUZZ_TRACE("  op %d at iteration %ld%s -> ", code % 7, static_cast<long>(t), half ? " (half step)" : "");
      switch (code % 7) {
        case 0:
        case 1: {  // stepWithGradient: the documented outcome, in the order the checks are made
          const Eigen::VectorXd g = gradient(in, n, code);
          unsigned allowed = kOverflow;  // a valid step may still leave the fixed-point range
          bool mustFail = false;
          if (half || t >= T) {
            allowed = kInvalidState;
            mustFail = true;
          } else if (g.size() != n) {
            allowed = kInvalidArgument;
            mustFail = true;
          } else if (!g.allFinite()) {
            allowed = kNonFinite | kOverflow;  // an element before the non-finite one may overflow first
            mustFail = true;
          }
          const bool ok = attempt(opt, allowed, [&] { opt.stepWithGradient(g); });
          FUZZ_CHECK(!(ok && mustFail));
          if (ok) recorded.push_back(g);
          break;
        }
        case 2: {  // unstepWeights: must succeed exactly when a step is taken and not half undone
          const bool ok = attempt(opt, kInvalidState, [&] { opt.unstepWeights(); });
          FUZZ_CHECK(ok == (!half && t > 0));
          break;
        }
        case 3: {  // restepWeights: must succeed exactly in a half step
          const bool ok = attempt(opt, kInvalidState, [&] { opt.restepWeights(); });
          FUZZ_CHECK(ok == half);
          break;
        }
        case 4: {  // unstepOptimizerState with the recorded gradient: must succeed in a half step
          const Eigen::VectorXd g = t > 0 ? recorded[static_cast<std::size_t>(t - 1)] : Eigen::VectorXd::Zero(n);
          const bool ok = attempt(opt, kInvalidState, [&] { opt.unstepOptimizerState(g); });
          FUZZ_CHECK(ok == half);
          if (ok) recorded.pop_back();
          break;
        }
        case 5: {  // unstepOptimizerState with a perturbed gradient: rejected in the order of the checks
          Eigen::VectorXd g = t > 0 ? recorded[static_cast<std::size_t>(t - 1)] : Eigen::VectorXd::Zero(n);
          perturb(g, in);
          const bool same =
              half && g.size() == n &&
              std::memcmp(g.data(), recorded.back().data(), sizeof(double) * static_cast<std::size_t>(n)) == 0;
          const unsigned allowed = !half            ? kInvalidState
                                   : g.size() != n  ? kInvalidArgument
                                   : !g.allFinite() ? kNonFinite
                                                    : kExactness;  // the record is a fingerprint of g's bits
          const bool ok = attempt(opt, allowed, [&] { opt.unstepOptimizerState(g); });
          FUZZ_CHECK(ok == same);
          if (ok) recorded.pop_back();
          break;
        }
        default: {  // start() again, with a value that must be rejected, over the run in progress
          Eigen::VectorXd w = opt.weights(), v = opt.state(1);
          const std::uint8_t which = in.u8();
          Eigen::VectorXd& x = (which & 1) ? v : w;
          const double bad[] = {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity(),
                                -kRange, 2 * kRange, 1e300};
          x(static_cast<Index>(in.u8()) % n) = bad[(which >> 1) % 5];
          const bool ok = attempt(opt, kOverflow | kInvalidArgument, [&] {
            if (which & 0x40) opt.start(w, Eigen::VectorXd(v.head(n - 1)));
            else opt.start(w, v);
          });
          FUZZ_CHECK(!ok);
          break;
        }
      }
    }

    FUZZ_TRACE("  final reverse from iteration %ld\n", static_cast<long>(opt.iteration()));
    // Undo everything with the recorded gradients: every call must succeed.
    try {
      if (opt.halfStep()) {
        opt.unstepOptimizerState(recorded.back());
        recorded.pop_back();
      }
      while (opt.iteration() > 0) {
        opt.unstepWeights();
        opt.unstepOptimizerState(recorded.back());
        recorded.pop_back();
      }
      opt.checkRecoveredStart();
    } catch (const hypergrad::Error& e) {
      std::fprintf(stderr, "fuzz_exact: optimizer: the final reverse pass failed: %s\n", e.what());
      fail("the run could not be reversed to its start");
    }
    FUZZ_CHECK(recorded.empty());
    FUZZ_CHECK(opt.buffer() == typename Opt::Buffer(n, blockSize, opt.options().stacksPerBlock()));
    for (int s = 0; s < Opt::numStates; ++s) FUZZ_CHECK(opt.fixedState(s) == opt.startState(s));
  }

  // One attempt at start(): from doubles (checked against the documented outcome) or from raw
  // fixed vectors. Returns whether the optimizer was started.
  static bool startFromInput(Opt& opt, Reader& in, Index n, std::uint8_t mode) {
    if (mode & 1) {  // raw fixed vectors: any integers (INT64_MIN is reserved: fromRaw rejects it)
      std::vector<typename Opt::Fixed> x;
      for (int s = 0; s < 2; ++s) {
        typename Opt::Fixed::Storage raw(n);
        for (Index i = 0; i < n; ++i) {
          raw(i) = initialValue(in);
          if (raw(i) == kMin) raw(i) = kMin + 1;
        }
        x.push_back(Opt::Fixed::fromRaw(raw));
      }
      const bool ok = attempt(opt, 0, [&] {
        if (mode & 2) opt.start(x[0], x[1]);
        else opt.start(x[0]);
      });
      FUZZ_CHECK(ok);
      return true;
    }
    // Doubles: mostly in range, sometimes not; rarely the wrong size.
    const bool wrongSize = (mode & 0x70) == 0x70;
    Eigen::VectorXd w(wrongSize && (mode & 0x80) ? n + 1 : n), v(wrongSize && !(mode & 0x80) ? n - 1 : n);
    for (Index i = 0; i < w.size(); ++i) w(i) = anyDouble(in, kRange / 4);
    for (Index i = 0; i < v.size(); ++i) v(i) = anyDouble(in, kRange / 4);
    const bool usesV = (mode & 2) != 0;
    const bool sizesOk = w.size() == n && (!usesV || v.size() == n);
    bool valuesFit = true;
    for (Index i = 0; i < w.size(); ++i) valuesFit = valuesFit && fits(w(i));
    if (usesV)
      for (Index i = 0; i < v.size(); ++i) valuesFit = valuesFit && fits(v(i));
    // Which error comes first depends on the order of the checks (the weights' size and values,
    // then the velocity's): any of the two documented ones that applies.
    const unsigned allowed = (sizesOk ? 0u : unsigned{kInvalidArgument}) | (valuesFit ? 0u : unsigned{kOverflow});
    const bool ok = attempt(opt, allowed, [&] {
      if (usesV) opt.start(w, v);
      else opt.start(w);
    });
    FUZZ_CHECK(ok == (sizesOk && valuesFit));
    return ok;
  }

  // A gradient from the input: moderate values, sometimes NaN / inf / huge, rarely the wrong size.
  static Eigen::VectorXd gradient(Reader& in, Index n, std::uint8_t code) {
    const Index size = (code & 0xF0) == 0xF0 ? (code & 8 ? n + 1 : n - 1) : n;
    Eigen::VectorXd g(size);
    for (Index i = 0; i < size; ++i) g(i) = anyDouble(in, 4.0);
    return g;
  }

  // Changes one entry of g (NaN, inf, the last bit, a huge value, the sign) or its size.
  static void perturb(Eigen::VectorXd& g, Reader& in) {
    const std::uint8_t kind = in.u8();
    const Index i = static_cast<Index>(in.u8()) % g.size();
    switch (kind % 6) {
      case 0: g(i) = std::numeric_limits<double>::quiet_NaN(); break;
      case 1: g(i) = -std::numeric_limits<double>::infinity(); break;
      case 2: g(i) = std::nextafter(g(i), (kind & 0x80) ? 1e308 : -1e308); break;
      case 3: g(i) = 1e300; break;
      case 4: g(i) = -g(i) == g(i) ? (std::signbit(g(i)) ? 0.0 : -0.0) : -g(i); break;
      default: {
        Eigen::VectorXd h = g;
        g.resize(kind & 0x80 ? g.size() + 1 : g.size() - 1);
        g.setZero();
        g.head(std::min(g.size(), h.size())) = h.head(std::min(g.size(), h.size()));
        break;
      }
    }
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Reader in(data, size);
  const std::uint8_t kind = in.u8();
  if (kind >= 128) {
    // Optimizer programs: the default SgdMomentum<>, floor rounding in Q23.40, and bits-back at
    // the edge of the range (Q1.62) with the smallest ratio (d = 2^8) and coder (M = 2^16).
    switch (kind % 3) {
      case 0: OptimizerProgram<hypergrad::FixedFormat<52>, hypergrad::BitsBackRounding, 16, 24>::run(in); break;
      case 1: OptimizerProgram<hypergrad::FixedFormat<40>, hypergrad::FloorRounding, 16, 24>::run(in); break;
      default: OptimizerProgram<hypergrad::FixedFormat<62>, hypergrad::BitsBackRounding, 8, 16>::run(in); break;
    }
    return 0;
  }
  switch (kind % 10) {
    // Ratio programs: (R, DBits, MBits). The default instantiation, the smallest coder precision
    // for d = 2^8, the largest d with the tightest precision, and the integer cumulative path.
    case 0: RatioProgram<52, 16, 24>::run(in); break;
    case 1: RatioProgram<1, 8, 9>::run(in); break;
    case 2: RatioProgram<62, 20, 21>::run(in); break;
    case 3: RatioProgram<44, 12, 31>::run(in); break;
    // Buffer programs over the range of coder precisions (26 / 27: the double / integer switch).
    case 4: BufferProgram<9>::run(in); break;
    case 5: BufferProgram<16>::run(in); break;
    case 6: BufferProgram<24>::run(in); break;
    case 7: BufferProgram<26>::run(in); break;
    case 8: BufferProgram<27>::run(in); break;
    default: BufferProgram<31>::run(in); break;
  }
  return 0;
}
