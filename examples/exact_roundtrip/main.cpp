// exact_roundtrip — runs the momentum update of SGD forward for T steps and then backwards, in
// exact arithmetic, and checks that the start is recovered bit for bit.
//
//   forward,  t = 1 … T:   v ← γ·v − (1 − γ)·g_t      w ← w + α·v
//   reverse,  t = T … 1:   w ← w − α·v                v ← (v + (1 − γ)·g_t) / γ
//
// w and v are fixed point (Q11.52). Adding a real vector is undone by subtracting the same one;
// multiplying by γ loses bits, which the information buffer keeps (bits-back rANS), so dividing
// by γ on the way back is exact too. g_t is a pseudo-random "gradient" that is a pure function of
// (seed, t), as a real minibatch gradient must be, so both passes see the identical vector.
//
// Usage: exact_roundtrip [--size N] [--steps T] [--gamma G] [--alpha A] [--seed S]

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

#include <hypergrad.hpp>

namespace {

struct Options {
  hypergrad::Index size = 100000;
  long steps = 1000;
  double gamma = 0.9;
  double alpha = 0.01;
  std::uint64_t seed = 1;
};

void printUsage(std::FILE* out) {
  std::fputs(
      "usage: exact_roundtrip [--size N] [--steps T] [--gamma G] [--alpha A] [--seed S]\n"
      "  --size N   number of weights (default 100000)\n"
      "  --steps T  number of momentum steps (default 1000)\n"
      "  --gamma G  momentum factor in (0, 1] (default 0.9, quantised to n/65536)\n"
      "  --alpha A  learning rate (default 0.01)\n"
      "  --seed S   seed of the initial state and the gradients (default 1)\n",
      out);
}

// Parses argv into `opt`; returns false (after printing why) on a bad command line.
bool parseOptions(int argc, char** argv, Options& opt) {
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      printUsage(stdout);
      std::exit(0);
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "exact_roundtrip: %s needs a value\n", flag.c_str());
      return false;
    }
    const char* value = argv[++i];
    char* end = nullptr;
    bool ok = true;
    if (flag == "--size") {
      opt.size = std::strtol(value, &end, 10);
      ok = opt.size >= 1;
    } else if (flag == "--steps") {
      opt.steps = std::strtol(value, &end, 10);
      ok = opt.steps >= 0;
    } else if (flag == "--gamma") {
      opt.gamma = std::strtod(value, &end);
    } else if (flag == "--alpha") {
      opt.alpha = std::strtod(value, &end);
      ok = std::isfinite(opt.alpha);
    } else if (flag == "--seed") {
      opt.seed = std::strtoull(value, &end, 10);
    } else {
      std::fprintf(stderr, "exact_roundtrip: unknown option %s\n", flag.c_str());
      return false;
    }
    if (!ok || end == value || *end != '\0') {
      std::fprintf(stderr, "exact_roundtrip: bad value '%s' for %s\n", value, flag.c_str());
      return false;
    }
  }
  return true;
}

// The "gradient" of step t: uniform in [-1, 1), a pure function of (seed, t).
void gradient(std::uint64_t seed, long t, Eigen::VectorXd& g) {
  hypergrad::CounterRng rng(seed, static_cast<std::uint64_t>(t));
  for (hypergrad::Index i = 0; i < g.size(); ++i) g(i) = 2.0 * rng.uniform() - 1.0;
}

double secondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

int run(const Options& opt) {
  using Fixed = hypergrad::FixedVector<52>;
  const hypergrad::Index n = opt.size;
  // The γ the arithmetic really uses; (1 − γ) below must use the same value.
  const auto gamma = hypergrad::Ratio<16>::nearestDyadic(opt.gamma, "--gamma");
  const double g = gamma.value();
  const std::uint64_t gradientSeed = hypergrad::mix64(opt.seed);

  // Initial state: w ~ N(0, 1), v ~ 0.1·N(0, 1), from the seed.
  Eigen::VectorXd w0(n), v0(n);
  hypergrad::CounterRng init(opt.seed, /*stream=*/0xC0FFEE);
  for (hypergrad::Index i = 0; i < n; ++i) w0(i) = init.normal();
  for (hypergrad::Index i = 0; i < n; ++i) v0(i) = 0.1 * init.normal();
  Fixed w = Fixed::fromDouble(w0, "w");
  Fixed v = Fixed::fromDouble(v0, "v");
  const Fixed wStart = w;
  const Fixed vStart = v;

  hypergrad::InformationBuffer<> buffer(n);
  const auto runs = hypergrad::ratioRuns(n, gamma.numerator);
  Eigen::VectorXd grad(n), vReal(n);

  const auto forwardStart = std::chrono::steady_clock::now();
  for (long t = 0; t < opt.steps; ++t) {
    gradient(gradientSeed, t, grad);
    hypergrad::multiplyByRatio(v.data(), n, runs, buffer);  // v ← γ·v, remainder into the buffer
    v.subtractReal((1.0 - g) * grad, "(1 - gamma) g");
    v.toDouble(vReal);
    w.addReal(opt.alpha * vReal, "alpha v");
  }
  const double forwardSeconds = secondsSince(forwardStart);

  // What the reverse pass needs besides the final state, measured at its largest.
  const double bitsPerElementStep =
      opt.steps > 0 ? buffer.informationBits() / (static_cast<double>(n) * static_cast<double>(opt.steps)) : 0.0;
  const double bound = std::log2(1.0 / g);
  const double bufferBytes = static_cast<double>(buffer.memoryBytes());
  const double trajectoryBytes = 8.0 * static_cast<double>(n) * static_cast<double>(opt.steps);

  const auto reverseStart = std::chrono::steady_clock::now();
  for (long t = opt.steps; t-- > 0;) {
    v.toDouble(vReal);
    w.subtractReal(opt.alpha * vReal, "alpha v");  // the bit-identical vector the forward step added
    gradient(gradientSeed, t, grad);                 // recomputed, bit-identical
    v.addReal((1.0 - g) * grad, "(1 - gamma) g");
    hypergrad::divideByRatio(v.data(), n, runs, buffer);  // v ← v/γ, bits drawn back out
  }
  const double reverseSeconds = secondsSince(reverseStart);

  const bool exact = w == wStart && v == vStart && buffer.empty();

  std::printf("exact_roundtrip: SGD with momentum, forward then backward in exact arithmetic\n");
  std::printf("  elements N               %ld\n", static_cast<long>(n));
  std::printf("  steps T                  %ld\n", opt.steps);
  std::printf("  gamma (quantised)        %.8f = %u/%u\n", g, static_cast<unsigned>(gamma.numerator),
              static_cast<unsigned>(gamma.denominator));
  std::printf("  buffer information       %.5f bits per element per step\n", bitsPerElementStep);
  std::printf("  entropy bound            %.5f = log2(1/gamma)\n", bound);
  if (bound > 0.0 && opt.steps > 0) std::printf("  buffer / bound           %.4f\n", bitsPerElementStep / bound);
  std::printf("  buffer memory            %.3f MB (memoryBytes, states included)\n", bufferBytes / 1e6);
  std::printf("  stored trajectory of v   %.3f MB (8 N T bytes)", trajectoryBytes / 1e6);
  if (bufferBytes > 0.0 && trajectoryBytes > 0.0) std::printf(", %.0fx the buffer", trajectoryBytes / bufferBytes);
  std::printf("\n");
  std::printf("  forward / reverse time   %.2f s / %.2f s\n", forwardSeconds, reverseSeconds);
  std::printf("  round trip exact: %s\n", exact ? "yes" : "NO");
  if (!exact) {
    std::fprintf(stderr, "exact_roundtrip: w %s, v %s, buffer %s\n", w == wStart ? "recovered" : "DIFFERS",
                 v == vStart ? "recovered" : "DIFFERS", buffer.empty() ? "empty" : "NOT EMPTY");
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  if (!parseOptions(argc, argv, opt)) {
    printUsage(stderr);
    return 2;
  }
  try {
    return run(opt);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "exact_roundtrip: %s\n", e.what());
    return 2;
  }
}
