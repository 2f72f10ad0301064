#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

#include <hypergrad/exact/fixed_point.hpp>
#include <hypergrad/random.hpp>

using hypergrad::FixedFormat;
using hypergrad::FixedPointOverflow;
using hypergrad::FixedVector;

TEST_CASE("fixed point conversion rounds to nearest with ties away from zero", "[exact][fixed]") {
  using F = FixedFormat<4>;  // units of 1/16, so ties are easy to write down
  CHECK(F::fromDouble(1.0 / 32) == 1);     // 0.5 unit -> 1
  CHECK(F::fromDouble(-1.0 / 32) == -1);   // -0.5 unit -> -1
  CHECK(F::fromDouble(3.0 / 64) == 1);     // 0.75 unit -> 1
  CHECK(F::fromDouble(1.0 / 64) == 0);     // 0.25 unit -> 0
  CHECK(F::fromDouble(-5.0 / 64) == -1);   // -1.25 units -> -1
  CHECK(F::fromDouble(2.5) == 40);
  CHECK(F::toDouble(40) == 2.5);
}

TEST_CASE("fixed point conversion of representable values is exact both ways", "[exact][fixed]") {
  using F = FixedFormat<52>;
  hypergrad::CounterRng rng(7);
  for (int k = 0; k < 10000; ++k) {
    const auto c = static_cast<std::int64_t>(rng.next() >> 12) - (std::int64_t(1) << 51);  // |c| < 2^53
    CHECK(F::fromDouble(F::toDouble(c)) == c);
  }
}

TEST_CASE("fixed point conversion rejects out-of-range and non-finite values naming the element", "[exact][fixed]") {
  using V = FixedVector<52>;  // range ±2^11 = ±2048
  Eigen::VectorXd x(3);
  x << 1.0, 2047.99, 2048.0;
  try {
    (void)V::fromDouble(x, "w");
    FAIL("no exception");
  } catch (const FixedPointOverflow& e) {
    const std::string msg = e.what();
    CHECK_THAT(msg, Catch::Contains("w[2]"));
    CHECK_THAT(msg, Catch::Contains("2048"));
    CHECK_THAT(msg, Catch::Contains("smaller R"));
  }
  x(2) = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_WITH(V::fromDouble(x, "v"), Catch::Contains("v[2]") && Catch::Contains("not finite"));
  x(2) = -std::numeric_limits<double>::infinity();
  CHECK_THROWS_AS(V::fromDouble(x), FixedPointOverflow);
  x(2) = -2047.5;
  CHECK_NOTHROW(V::fromDouble(x));
}

TEST_CASE("adding then subtracting the same real vector restores the fixed-point vector bit for bit", "[exact][fixed]") {
  hypergrad::CounterRng rng(3);
  const Eigen::Index n = 5000;
  Eigen::VectorXd w0(n), step(n);
  for (Eigen::Index i = 0; i < n; ++i) {
    w0(i) = 100.0 * rng.normal();
    step(i) = 1e-3 * rng.normal() * std::pow(10.0, -static_cast<double>(i % 12));  // tiny to moderate
  }
  auto w = FixedVector<50>::fromDouble(w0);
  const auto start = w;
  for (int t = 0; t < 50; ++t) w.addReal(step * (1.0 + t));
  CHECK(w != start);
  for (int t = 50; t-- > 0;) w.subtractReal(step * (1.0 + t));
  CHECK(w == start);
}

TEST_CASE("an overflowing addition throws and leaves the vector unchanged", "[exact][fixed]") {
  Eigen::VectorXd x(4);
  x << 1.0, -3.0, 2000.0, 0.5;
  auto w = FixedVector<52>::fromDouble(x);
  const auto before = w;
  Eigen::VectorXd d(4);
  d << 1.0, 1.0, 100.0, 1.0;  // element 2 leaves ±2048
  CHECK_THROWS_WITH(w.addReal(d, "update"), Catch::Contains("update[2]") && Catch::Contains("2000"));
  CHECK(w == before);
  CHECK_THROWS_AS(w.addReal(Eigen::VectorXd::Zero(3)), hypergrad::InvalidArgument);
}
