// SPDX-License-Identifier: MIT
//
// libFuzzer target for the exact core: the information buffer and the reversible multiply.
//
// The input is a program. Its first byte picks a test and a template instantiation:
//
//  * ratio programs (FixedVector<R> + multiplyByRatio / divideByRatio / addReal / subtractReal,
//    both rounding policies) on a vector of 1..64 elements with any block size and any initial
//    integers (INT64_MIN excepted: FixedVector reserves it). Every op either succeeds or throws
//    the documented exception; the program is then undone in reverse order with the inverse ops
//    and the values and the buffer must be bit-identical to the start, the buffer empty().
//  * buffer programs: any mix of pushPow2 / popPow2 / pushUniform / popUniform on random
//    elements with random radices, undone in reverse; every pop of the undo must return the
//    digit pushed and the buffer must end identical to a new one.
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
#include <vector>

#include <hypergrad/exact.hpp>

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

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Reader in(data, size);
  switch (in.u8() % 10) {
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
