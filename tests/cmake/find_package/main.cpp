// A consumer of hypergrad: quantises gamma, multiplies a fixed-point vector by it and divides it
// back through the information buffer. Exits non-zero unless the round trip is bit for bit.
#include <cstdio>

#include <hypergrad.hpp>

int main() {
  const auto gamma = hypergrad::Ratio<16>::nearestDyadic(0.9);
  Eigen::VectorXd x(1000);
  hypergrad::CounterRng rng(42);
  for (hypergrad::Index i = 0; i < x.size(); ++i) x(i) = rng.normal();

  const auto start = hypergrad::FixedVector<52>::fromDouble(x);
  auto c = start;
  hypergrad::InformationBuffer<> buffer(c.size());
  const auto runs = hypergrad::ratioRuns(c.size(), gamma.numerator);
  for (int t = 0; t < 10; ++t) hypergrad::multiplyByRatio(c.data(), c.size(), runs, buffer);
  for (int t = 0; t < 10; ++t) hypergrad::divideByRatio(c.data(), c.size(), runs, buffer);

  if (c != start || !buffer.empty()) {
    std::puts("hypergrad consumer: round trip NOT exact");
    return 1;
  }
  std::printf("hypergrad %d.%d.%d consumer: gamma %.6f round trip exact\n", HYPERGRAD_VERSION_MAJOR,
              HYPERGRAD_VERSION_MINOR, HYPERGRAD_VERSION_PATCH, gamma.value());
  return 0;
}
