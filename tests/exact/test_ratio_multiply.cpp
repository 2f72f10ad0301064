#include <catch2/catch.hpp>

#include <tuple>
#include <type_traits>

#include <cmath>
#include <cstdio>
#include <limits>
#include <vector>

#include <hypergrad/exact.hpp>
#include <hypergrad/random.hpp>

using namespace hypergrad;

namespace {

using Fixed = FixedVector<52>;  // range ±2048
using Buffer = InformationBuffer<24>;
constexpr std::uint32_t kD = Ratio<16>::maxDenominator;

// Numerator for element i at step t: a mix of the edge cases and random ratios, a pure function
// of (seed, t, i) so that the reverse pass can regenerate it.
std::uint32_t mixedNumerator(CounterRng& rng) {
  switch (rng.below(8)) {
    case 0: return kD;                                        // gamma = 1: identity
    case 1: return 1;                                         // the smallest gamma, 1/d
    case 2: return Ratio<16>::nearestDyadic(0.5).numerator;
    case 3: return Ratio<16>::nearestDyadic(0.9).numerator;
    case 4: return Ratio<16>::nearestDyadic(0.98).numerator;
    case 5: return Ratio<16>::nearestDyadic(0.999).numerator;
    default: return 1 + static_cast<std::uint32_t>(rng.below(kD));
  }
}

struct StepInputs {
  std::vector<RatioRun> runs;
  Eigen::VectorXd decay;  // (1 - gamma) * g, what the update subtracts
};

// gamma and g for step t: per element, per step; some elements work near the fixed-point range.
StepInputs stepInputs(Index n, int t, bool perElementGamma, std::uint32_t fixedNumerator) {
  CounterRng rng(1234, static_cast<std::uint64_t>(t));
  Eigen::Matrix<std::uint32_t, Eigen::Dynamic, 1> num(n);
  StepInputs in;
  in.decay.resize(n);
  for (Index i = 0; i < n; ++i) {
    num(i) = perElementGamma ? mixedNumerator(rng) : fixedNumerator;
    const double gamma = static_cast<double>(num(i)) / kD;
    const double scale = (i % 4 == 0) ? 2047.9 : 1.0 / (1 + i % 7);  // near ±2^11 for a quarter
    const double g = scale * (2.0 * rng.uniform() - 1.0);
    in.decay(i) = (1.0 - gamma) * g;
  }
  in.runs = ratioRuns(num);
  return in;
}

template <class Rounding>
void momentumForward(Fixed& v, Buffer& buf, int t, bool perElementGamma, std::uint32_t numerator) {
  const StepInputs in = stepInputs(v.size(), t, perElementGamma, numerator);
  multiplyByRatio<Rounding>(v.data(), v.size(), in.runs, buf);  // v <- gamma v
  v.subtractReal(in.decay);                                     // v <- v - (1 - gamma) g
}

template <class Rounding>
void momentumReverse(Fixed& v, Buffer& buf, int t, bool perElementGamma, std::uint32_t numerator) {
  const StepInputs in = stepInputs(v.size(), t, perElementGamma, numerator);
  v.addReal(in.decay);
  divideByRatio<Rounding>(v.data(), v.size(), in.runs, buf);
}

Fixed initialVelocity(Index n) {
  CounterRng rng(99);
  Eigen::VectorXd v0(n);
  for (Index i = 0; i < n; ++i) v0(i) = (i % 4 == 0 ? 2047.9 : 1.0) * (2.0 * rng.uniform() - 1.0);
  v0(0) = 2047.999999;  // the very edge of the range, both signs
  v0(4) = -2047.999999;
  return Fixed::fromDouble(v0);
}

// Expected bits of FloorRounding per op for ratio n/d when c mod d is uniform:
// E[log2 |preimage of floor(c n / d)|], enumerated over one period of d consecutive c.
double floorRoundingBits(std::uint32_t n) {
  std::vector<int> count(n + 1, 0);
  for (std::uint64_t c = 0; c < kD; ++c) ++count[static_cast<std::size_t>((c * n) / kD)];
  double bits = 0;
  for (int k : count)
    if (k > 0) bits += k * std::log2(static_cast<double>(k));
  return bits / kD;
}

}  // namespace

TEST_CASE("10^5 elements x 10^3 momentum steps with per-element per-step gamma reverse bit for bit",
          "[exact][roundtrip]") {
  const Index n = 100000;
  const int steps = 1000;
  Fixed v = initialVelocity(n);
  const Fixed start = v;
  Buffer buf(n);
  for (int t = 0; t < steps; ++t) momentumForward<BitsBackRounding>(v, buf, t, true, 0);
  CHECK(v != start);
  CHECK(!buf.empty());
  CHECK(buf.spilledWords() > 0);
  for (int t = steps; t-- > 0;) momentumReverse<BitsBackRounding>(v, buf, t, true, 0);
  CHECK(v == start);
  CHECK(buf.empty());
}

TEST_CASE("floor rounding also reverses bit for bit with per-element per-step gamma", "[exact][roundtrip]") {
  const Index n = 10000;
  const int steps = 300;
  Fixed v = initialVelocity(n);
  const Fixed start = v;
  Buffer buf(n, 1000);
  for (int t = 0; t < steps; ++t) momentumForward<FloorRounding>(v, buf, t, true, 0);
  for (int t = steps; t-- > 0;) momentumReverse<FloorRounding>(v, buf, t, true, 0);
  CHECK(v == start);
  CHECK(buf.empty());
}

TEST_CASE("11 divisions then 11 multiplications by the same gamma return the start exactly", "[exact][roundtrip]") {
  for (double gamma : {0.5, 0.9, 0.98}) {
    const std::uint32_t num = Ratio<16>::nearestDyadic(gamma).numerator;
    Eigen::VectorXd x(6);
    x << 0.0, 1e-15, -1e-15, 0.123456789, -0.987654321, 1e-3;  // 1 / 0.5^11 = 2048: stay in range
    Fixed c = Fixed::fromDouble(x);
    const Fixed start = c;
    Buffer buf(c.size(), 4);
    const auto runs = ratioRuns(c.size(), num);
    for (int k = 0; k < 11; ++k) divideByRatio(c.data(), c.size(), runs, buf);
    CHECK(c != start);
    for (int k = 0; k < 11; ++k) multiplyByRatio(c.data(), c.size(), runs, buf);
    CHECK(c == start);
    CHECK(buf.empty());
    // and for floor rounding
    for (int k = 0; k < 11; ++k) divideByRatio<FloorRounding>(c.data(), c.size(), runs, buf);
    for (int k = 0; k < 11; ++k) multiplyByRatio<FloorRounding>(c.data(), c.size(), runs, buf);
    CHECK(c == start);
    CHECK(buf.empty());
  }
}

TEST_CASE("bits-back rounding stores within 2% of the entropy bound log2(d/n)", "[exact][memory]") {
  const Index n = 4000;
  const int steps = 1000;
  for (double gamma : {0.5, 0.9, 0.98, 0.999}) {
    const std::uint32_t num = Ratio<16>::nearestDyadic(gamma).numerator;
    const double bound = std::log2(static_cast<double>(kD) / num);
    Fixed v = initialVelocity(n);
    Buffer buf(n);
    for (int t = 0; t < steps; ++t) momentumForward<BitsBackRounding>(v, buf, t, false, num);
    const double perStep = buf.informationBits() / (static_cast<double>(n) * steps);
    std::printf("bits-back gamma=%.3f: %.6f bits/element/step, bound %.6f, ratio %.5f\n", gamma, perStep, bound,
                perStep / bound);
    CHECK(perStep / bound == Approx(1.0).epsilon(0.02));
    // Storage: 64 bits of coder state per element plus the spilled words, never less than the content.
    CHECK(buf.storageBits() >= 64.0 * n + 32.0 * static_cast<double>(buf.spilledWords()) - 1e-9);
  }
}

TEST_CASE("floor rounding stores E[log2 preimage size] bits, 1.3-1.4x the bound for gamma >= 0.9", "[exact][memory]") {
  // At gamma = 0.999 only ~1 op in 500 stores a bit: 20000 x 2000 ops keep the count's noise
  // (Poisson, sqrt of ~80k pushes) near 0.35%.
  const Index n = 20000;
  for (double gamma : {0.5, 0.9, 0.98, 0.999}) {
    const int steps = gamma >= 0.999 ? 2000 : 500;
    const std::uint32_t num = Ratio<16>::nearestDyadic(gamma).numerator;
    const double bound = std::log2(static_cast<double>(kD) / num);
    const double expected = floorRoundingBits(num);
    Fixed v = initialVelocity(n);
    Buffer buf(n);
    for (int t = 0; t < steps; ++t) momentumForward<FloorRounding>(v, buf, t, false, num);
    const double perStep = buf.informationBits() / (static_cast<double>(n) * steps);
    std::printf("floor     gamma=%.3f: %.6f bits/element/step, expected %.6f, bound %.6f, ratio %.4f\n", gamma, perStep,
                expected, bound, perStep / bound);
    CHECK(perStep == Approx(expected).epsilon(0.02));
    if (gamma >= 0.9) {
      CHECK(perStep / bound > 1.25);
      CHECK(perStep / bound < 1.45);
    }
  }
}

TEST_CASE("bits-back error stays below n units of the last place, floor below one", "[exact][accuracy]") {
  CounterRng rng(17);
  const Index n = 20000;
  Eigen::VectorXd x(n);
  for (Index i = 0; i < n; ++i) x(i) = 1000.0 * (2.0 * rng.uniform() - 1.0);
  const std::uint32_t num = Ratio<16>::nearestDyadic(0.9).numerator;
  for (int policy = 0; policy < 2; ++policy) {
    Fixed c = Fixed::fromDouble(x);
    Buffer buf(n);
    if (policy == 0) multiplyByRatio<BitsBackRounding>(c.data(), n, ratioRuns(n, num), buf);
    else multiplyByRatio<FloorRounding>(c.data(), n, ratioRuns(n, num), buf);
    const Fixed before = Fixed::fromDouble(x);
    double worst = 0;  // |c_after - c_before n / d| in units, from the exact integer c_before n - c_after d
    for (Index i = 0; i < n; ++i) {
      const detail::Int128 diff = detail::Int128(before[i]) * num - detail::Int128(c[i]) * kD;
      worst = std::max(worst, std::fabs(static_cast<double>(diff)) / kD);
    }
    CHECK(worst < (policy == 0 ? static_cast<double>(num) : 1.0));
  }
}

TEST_CASE("invalid momentum factors are rejected with the documented exception", "[exact][errors]") {
  CHECK(Ratio<16>::quantize(0.0).zero());  // no memory: the exact multiply stores the whole value
  CHECK_THROWS_AS(Ratio<16>::quantize(-0.1), InvalidArgument);
  CHECK_THROWS_AS(Ratio<16>::quantize(-0.5), InvalidArgument);
  CHECK_THROWS_WITH(Ratio<16>::quantize(1.0000001), Catch::Contains("[0, 1]"));
  CHECK_THROWS_WITH(Ratio<16>::quantize(std::nan("")), Catch::Contains("finite"));
  CHECK_THROWS_WITH(Ratio<16>::quantize(1e-6), Catch::Contains("smallest representable"));
  CHECK(Ratio<16>::quantize(1.0 / kD).numerator == 1);
  CHECK(Ratio<16>::quantize(1.0).numerator == kD);
  CHECK(Ratio<16>::nearestDyadic(0.9).numerator == 58982);
  // A γ within 2^-17 of 1 that is no small fraction would silently lose its decay: refused.
  CHECK_THROWS_WITH(Ratio<16>::quantize(0.9999999), Catch::Contains("rounded to exactly 1") && Catch::Contains("Pass 1"));
  CHECK(Ratio<16>::quantize(65535.0 / 65536.0).numerator == 65535);  // but 1 − 2^-16 is exact

  Fixed c(10);
  Buffer buf(10);
  CHECK_THROWS_WITH(multiplyByRatio(c.data(), 10, ratioRuns(10, 0u), buf), Catch::Contains("numerator 0"));
  CHECK_THROWS_WITH(multiplyByRatio(c.data(), 10, ratioRuns(10, kD + 1), buf), Catch::Contains("numerator"));
  CHECK_THROWS_WITH(multiplyByRatio(c.data(), 10, {RatioRun{0, 5, 3}}, buf), Catch::Contains("cover"));
  CHECK_THROWS_WITH(multiplyByRatio(c.data(), 10, {RatioRun{0, 5, 3}, RatioRun{6, 10, 3}}, buf), Catch::Contains("tile"));
  Buffer small(9);
  CHECK_THROWS_WITH(multiplyByRatio(c.data(), 10, ratioRuns(10, 3u), small), Catch::Contains("buffer has 9"));
  CHECK(buf.empty());
}

TEST_CASE("a division that leaves the int64 range throws FixedPointOverflow", "[exact][errors]") {
  Fixed::Storage raw(2);
  raw << 1, std::numeric_limits<std::int64_t>::max() / 4;
  Fixed c = Fixed::fromRaw(raw);
  Buffer buf(2);
  CHECK_THROWS_AS(divideByRatio(c.data(), 2, ratioRuns(2, 1u), buf), FixedPointOverflow);
}

TEST_CASE("with exact fractions, momentum factors a user types are used exactly; others are rounded",
          "[exact][ratio]") {
  using R = Ratio<16>;
  const Quantization exact = Quantization::ExactFractions;
  CHECK(R::quantize(0.9).numerator == 58982);  // the default: the nearest n/2^16
  CHECK(R::quantize(0.9).dyadic());
  // Decimal and simple fractions: exact, with their own denominator.
  for (const auto& [gamma, n, d] : {std::tuple<double, unsigned, unsigned>{0.9, 9, 10}, {0.99, 99, 100},
                                     {0.999, 999, 1000}, {0.95, 19, 20}, {1.0 / 3.0, 1, 3}, {0.123, 123, 1000},
                                     {0.9999, 9999, 10000}, {0.6, 3, 5}}) {
    const R r = R::quantize(gamma, "gamma", exact);
    INFO("gamma = " << gamma);
    CHECK(r.numerator == n);
    CHECK(r.denominator == d);
    CHECK(r.value() == gamma);  // the hypergradient refers to exactly the value asked for
    CHECK_FALSE(r.dyadic());
  }
  // Dyadic values keep the fast dyadic form, whatever their denominator.
  CHECK(R::quantize(0.875, "gamma", exact).dyadic());
  CHECK(R::quantize(0.875, "gamma", exact).numerator == 57344);
  CHECK(R::fromFraction(7, 8) == R::quantize(0.875));
  // Other doubles are rounded (a meta-optimiser's γ, say): within 2^-17 of the request.
  const double odd = 0.8765432123456789;
  const R r = R::quantize(odd, "gamma", exact);
  CHECK(r.dyadic());
  CHECK(std::fabs(r.value() - odd) <= 0.5 / kD);
  CHECK(R::fromFraction(6, 10) == R::fromFraction(3, 5));
  CHECK_THROWS_AS(R::fromFraction(11, 10), InvalidArgument);
  CHECK_THROWS_AS(R::fromFraction(1, 70000), InvalidArgument);
}

TEMPLATE_TEST_CASE("multiplying by a non-dyadic ratio n/d is exactly undone, near the entropy bound",
                   "[exact][ratio]", BitsBackRounding, FloorRounding) {
  using R = Ratio<16>;
  const Index n = 3000;
  Buffer buf(n, 1000);
  Fixed c(n);
  hypergrad::CounterRng rng(17);
  for (Index i = 0; i < n; ++i) c.raw(i) = static_cast<std::int64_t>(rng.next() >> 1) - (std::int64_t(1) << 62);
  c.raw(0) = std::numeric_limits<std::int64_t>::max();
  c.raw(1) = std::numeric_limits<std::int64_t>::min() + 1;
  const Fixed start = c;
  const R ratios[] = {R::fromFraction(9, 10), R::fromFraction(999, 1000), R::fromFraction(1, 3),
                      R::fromFraction(65521, 65536 - 1)};
  double bound = 0.0;
  for (int step = 0; step < 40; ++step) {
    const R& r = ratios[step % 4];
    bound += std::log2(1.0 / r.value()) * static_cast<double>(n);
    for (Index i = 0; i < n; ++i) {
      const std::int64_t before = c[i];
      TestType::template multiplyRatio<16>(c.raw(i), r, i, buf);
      // floor(c·n/d) ≤ result < floor(c·n/d) + n (bits-back) or = floor(c·n/d) (floor).
      const detail::Int128 image = detail::floorDiv128(detail::Int128(before) * r.numerator, r.denominator);
      CHECK((detail::Int128(c[i]) >= image && detail::Int128(c[i]) < image + r.numerator));
    }
  }
  const double bits = buf.informationBits();
  if (std::is_same<TestType, BitsBackRounding>::value) CHECK(bits <= 1.001 * bound + 64.0);
  for (int step = 40; step-- > 0;) {
    const R& r = ratios[step % 4];
    for (Index i = n; i-- > 0;) REQUIRE(TestType::template tryDivideRatio<16>(c.raw(i), r, i, buf));
  }
  CHECK(c == start);
  CHECK(buf.empty());
}
