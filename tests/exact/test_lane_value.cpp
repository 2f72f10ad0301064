// LaneValue and the lane conversions of the exact kernel's lane path (exact/lane_value.hpp,
// exact/arithmetic.hpp): every operation must give, lane by lane, the bits of the scalar
// operation it stands for — the arithmetic of double, FixedFormat::tryFromDouble's rounding and
// range check, FixedFormat::toDouble, the checked int64 additions — on the edge cases as well as on
// ordinary values, since a lane group and the element-by-element kernel must store the same
// integers.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include <hypergrad/exact.hpp>
#include <hypergrad/random.hpp>

using namespace hypergrad;

namespace {

using Format = FixedFormat<52>;
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max();
constexpr std::int64_t kMin = std::numeric_limits<std::int64_t>::min();

std::uint64_t bitsOf(double x) {
  std::uint64_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
}
// Equal bits, or both NaN (which NaN operand propagates may depend on the operand order the
// compiler picks for a commutative operation).
bool sameDouble(double a, double b) { return (std::isnan(a) && std::isnan(b)) || bitsOf(a) == bitsOf(b); }

// Ordinary values of every sign and size, and the edges: zeros, subnormals, infinities, NaN, the
// fixed-point range's ends and exact halves of its unit (the rounding ties).
std::vector<double> edgeValues() {
  const double unit = Format::resolution, top = Format::maxMagnitude;
  std::vector<double> v = {0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1.0, -1.0, 0.5, -0.5, 3.0,
                           kInf, -kInf, std::numeric_limits<double>::quiet_NaN(), 1e300, -1e300,
                           top, -top, std::nextafter(top, 0.0), std::nextafter(-top, 0.0), 0.5 * top, -0.5 * top,
                           0.5 * unit, -0.5 * unit, 1.5 * unit, -1.5 * unit, 2.5 * unit, -2.5 * unit,
                           std::nextafter(0.5 * unit, 1.0), std::nextafter(0.5 * unit, 0.0),
                           std::nextafter(-0.5 * unit, -1.0), std::nextafter(-0.5 * unit, 0.0),
                           1e6 * unit + 0.5 * unit, -(1e6 * unit + 0.5 * unit), 0.25 * unit, 0.75 * unit};
  CounterRng rng(31, 0);
  while (v.size() % 8 != 0 || v.size() < 200) {
    const double mag = std::ldexp(rng.uniform(), static_cast<int>(rng.below(80)) - 60);
    v.push_back(rng.below(2) ? mag : -mag);
  }
  return v;
}

LaneValue lanesAt(const std::vector<double>& v, std::size_t at) {
  LaneValue x;
  for (int l = 0; l < 8; ++l) x[l] = v[(at + static_cast<std::size_t>(l)) % v.size()];
  return x;
}

}  // namespace

TEST_CASE("LaneValue's operations are the double operations lane by lane, bit for bit", "[exact][lanes]") {
  const std::vector<double> v = edgeValues();
  for (std::size_t at = 0; at < v.size(); at += 3) {
    const LaneValue a = lanesAt(v, at), b = lanesAt(v, at * 7 + 5);
    const double s = v[(at * 13 + 1) % v.size()];
    const LaneValue sum = a + b, difference = a - b, product = a * b, quotient = a / b, negated = -a;
    const LaneValue scaledLeft = s * a, scaledRight = a * s, offset = a + s, shifted = s - a, ratio = s / a;
    using std::sqrt;
    const LaneValue root = sqrt(a);
    LaneValue accumulated = a;
    accumulated += b;
    for (int l = 0; l < 8; ++l) {
      INFO("a = " << a[l] << ", b = " << b[l] << ", s = " << s);
      CHECK(sameDouble(sum[l], a[l] + b[l]));
      CHECK(sameDouble(difference[l], a[l] - b[l]));
      CHECK(sameDouble(product[l], a[l] * b[l]));
      CHECK(sameDouble(quotient[l], a[l] / b[l]));
      CHECK(sameDouble(negated[l], -a[l]));
      CHECK(sameDouble(scaledLeft[l], s * a[l]));
      CHECK(sameDouble(scaledRight[l], a[l] * s));
      CHECK(sameDouble(offset[l], a[l] + s));
      CHECK(sameDouble(shifted[l], s - a[l]));
      CHECK(sameDouble(ratio[l], s / a[l]));
      CHECK(sameDouble(root[l], std::sqrt(a[l])));
      CHECK(sameDouble(accumulated[l], a[l] + b[l]));
    }
  }
  const LaneValue broadcast(0.25);
  for (int l = 0; l < 8; ++l) CHECK(broadcast[l] == 0.25);
}

#if HYPERGRAD_LANE_CODER
TEST_CASE("the lane conversions and checked additions store the scalar kernel's integers", "[exact][lanes]") {
  if (!detail::laneCoderSupported()) {
    WARN("no AVX-512F/DQ on this processor: the lane conversions are not run here");
    return;
  }
  const std::vector<double> v = edgeValues();
  for (std::size_t at = 0; at < v.size(); ++at) {
    const LaneValue x = lanesAt(v, at);
    for (const bool negate : {false, true})
      for (const double up : {1.0, 16.0}) {
        // Format::tryFromDouble(x · up), negated after rounding, as ExactElement::addRounded does.
        bool allOk = true;
        std::int64_t expected[8] = {};
        for (int l = 0; l < 8; ++l) {
          std::int64_t d = 0;
          const bool ok = Format::tryFromDouble(up == 1.0 ? x[l] : x[l] * up, d);
          allOk = allOk && ok;
          expected[l] = negate ? -d : d;
        }
        alignas(64) std::int64_t got[8];
        const bool ok = detail::laneFromDouble<Format>(x, up, up != 1.0, negate, got);
        INFO("group at " << at << ", up " << up << ", negate " << negate);
        REQUIRE(ok == allOk);
        if (ok)
          for (int l = 0; l < 8; ++l) CHECK(got[l] == expected[l]);
      }
  }

  // toDouble of the stored integers, scaled down or not.
  const std::int64_t ints[8] = {0, 1, -1, kMax, kMin + 1, std::int64_t(1) << 53, (std::int64_t(1) << 53) + 1, -123456789};
  for (const double down : {1.0, 0.0625}) {
    const LaneValue y = detail::laneToDouble<Format>(ints, down, down != 1.0);
    for (int l = 0; l < 8; ++l) {
      const double expected = down == 1.0 ? Format::toDouble(ints[l]) : Format::toDouble(ints[l]) * down;
      CHECK(bitsOf(y[l]) == bitsOf(expected));
    }
  }

  // Checked additions and subtractions: a lane that overflows, or lands on −2^63, fails the group
  // and changes nothing; otherwise every lane gets the exact sum.
  CounterRng rng(32, 0);
  const std::int64_t edges[] = {0, 1, -1, kMax, kMin + 1, kMax - 5, kMin + 6, std::int64_t(1) << 62, -(std::int64_t(1) << 62)};
  for (int trial = 0; trial < 2000; ++trial) {
    alignas(64) std::int64_t x[8], d[8], sum[8], difference[8];
    bool sumOk = true, differenceOk = true;
    for (int l = 0; l < 8; ++l) {
      const bool edge = rng.below(4) == 0;
      x[l] = edge ? edges[rng.below(9)] : static_cast<std::int64_t>(rng.next() >> 2) - (std::int64_t(1) << 61);
      d[l] = edge ? edges[rng.below(9)] : static_cast<std::int64_t>(rng.next() >> 2) - (std::int64_t(1) << 61);
      const bool addOverflow = __builtin_add_overflow(x[l], d[l], &sum[l]);
      const bool subOverflow = __builtin_sub_overflow(x[l], d[l], &difference[l]);
      sumOk = sumOk && !addOverflow && sum[l] != kMin;
      differenceOk = differenceOk && !subOverflow && difference[l] != kMin;
    }
    alignas(64) std::int64_t a[8], s[8];
    std::memcpy(a, x, sizeof a);
    std::memcpy(s, x, sizeof s);
    REQUIRE(detail::laneAddInPlace(a, d) == sumOk);
    REQUIRE(detail::laneSubtractInPlace(s, d) == differenceOk);
    for (int l = 0; l < 8; ++l) {
      CHECK(a[l] == (sumOk ? sum[l] : x[l]));
      CHECK(s[l] == (differenceOk ? difference[l] : x[l]));
    }
  }
}
#endif
