// The fused exact kernel (exact/arithmetic.hpp) against a recorded run of the implementation it
// replaced, and its failure atomicity at element, block and pass level.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>

#include <hypergrad/exact.hpp>
#include <hypergrad/optimizers/momentum.hpp>
#include <hypergrad/random.hpp>

using namespace hypergrad;

namespace {

/// A digest of everything a run consists of: both fixed-point states, the coder states and every
/// block's words (count, then bottom to top).
template <class Opt>
std::uint64_t runDigest(const Opt& opt) {
  std::uint64_t h = 0x6A09E667F3BCC908ull;
  auto add = [&h](std::uint64_t x) { h = mix64(h ^ x); };
  for (Index s = 0; s < 2; ++s)
    for (Index i = 0; i < opt.size(); ++i) add(static_cast<std::uint64_t>(opt.fixedState(s)[i]));
  for (std::uint64_t x : opt.buffer().states()) add(x);
  for (Index b = 0; b < opt.buffer().numBlocks(); ++b) {
    const auto words = opt.buffer().blockWords(b);
    add(words.size());
    for (std::uint32_t w : words) add(w);
  }
  return h;
}

ParameterLayout threeGroups() {
  ParameterLayout layout;
  layout.addGroup("a", 5000);  // groups cross the 4,096-element block boundary
  layout.addGroup("b", 3000);
  layout.addGroup("c", 1);
  return layout;
}

/// The recorded run: 40 steps of 8,001 parameters in 2 blocks, per-(iteration, group) α and γ
/// (γ = 1, an exact identity, included), start and gradients from CounterRng uniforms only, so
/// every double is computed with exactly rounded IEEE operations (no libm) and the run is the
/// same on any conforming platform.
template <class Opt>
std::uint64_t recordedRun() {
  const ParameterLayout layout = threeGroups();
  const Index T = 40, G = 3, N = layout.size();
  Eigen::MatrixXd alpha(T, G), gamma(T, G);
  // The momenta as the previous implementation quantised 0.5, 0.9, 0.97, 1 and 0.123 (to n/2^16;
  // 0.9, 0.97 and 0.123 would now be exact fractions, i.e. another run).
  const double gammas[] = {0.5, 58982.0 / 65536, 63570.0 / 65536, 1.0, 8061.0 / 65536};
  for (Index t = 0; t < T; ++t)
    for (Index k = 0; k < G; ++k) {
      alpha(t, k) = 0.01 * double(1 + (t * 7 + k * 3) % 5);
      gamma(t, k) = gammas[(t + k) % 5];
    }
  // One stack per block: the layout the digests below were recorded in (the default is the lane
  // layout, checked against a multi-pass update in the next test).
  Opt opt(layout, Schedule(alpha), Schedule(gamma), OptimizerOptions(4096).withLanes(1));
  CounterRng r0(11, 0);
  Eigen::VectorXd w1(N), v1(N), g(N);
  for (Index i = 0; i < N; ++i) {
    w1(i) = 2 * r0.uniform() - 1;
    v1(i) = 0.1 * r0.uniform();
  }
  opt.start(w1, v1);
  std::vector<Eigen::VectorXd> gradients;
  for (Index t = 0; t < T; ++t) {
    CounterRng r(12, static_cast<std::uint64_t>(t));
    for (Index i = 0; i < N; ++i) g(i) = 0.3 * (r.uniform() - 0.5);
    gradients.push_back(g);
    opt.stepWithGradient(g);
  }
  const std::uint64_t digest = runDigest(opt);
  // And back, bit for bit.
  for (Index t = T; t-- > 0;) {
    opt.unstepWeights();
    opt.unstepVelocity(gradients[static_cast<std::size_t>(t)]);
  }
  CHECK_NOTHROW(opt.checkRecoveredStart());
  return digest;
}

}  // namespace

TEST_CASE("the fused kernel is bit-identical to the multi-pass update it replaced, on a recorded run",
          "[optimizer][exact][kernel]") {
  // Digests of the same run computed by the previous implementation (multiplyByRatio, then
  // scratch-vector passes for v and w; commit 61fa863) with the program of this test.
  CHECK(recordedRun<SgdMomentum<FixedFormat<52>, BitsBackRounding>>() == 0xb36d1e44f530b26cull);
  CHECK(recordedRun<SgdMomentum<FixedFormat<52>, FloorRounding>>() == 0xf7336b1c452036a4ull);
  CHECK(recordedRun<SgdMomentum<FixedFormat<44>, BitsBackRounding>>() == 0x5a096fa6718c5d59ull);
}

TEST_CASE("in the lane layout the kernel leaves the bits of a multi-pass update on the lane coder",
          "[optimizer][exact][kernel][lanes]") {
  // The reference: multiplyByRatio on a lane-layout buffer (the AVX-512 lane coder where the
  // processor has it, eight elements at a time), then plain passes for v and w — another code
  // path than the optimizer's fused kernel, run element by element here (its lane path is
  // pinned to this one in test_lane_kernel.cpp), which must leave the same bits.
  using Opt = SgdMomentum<>;
  using Format = FixedFormat<52>;
  const ParameterLayout layout = threeGroups();
  const Index T = 40, G = 3, N = layout.size();
  Eigen::MatrixXd alpha(T, G), gamma(T, G);
  const double gammas[] = {0.5, 0.9, 0.97, 1.0, 0.123};
  for (Index t = 0; t < T; ++t)
    for (Index k = 0; k < G; ++k) {
      alpha(t, k) = 0.01 * double(1 + (t * 7 + k * 3) % 5);
      gamma(t, k) = gammas[(t + k) % 5];
    }
  Opt opt(layout, Schedule(alpha), Schedule(gamma), OptimizerOptions(4096).withLanes(8));
  CounterRng r0(11, 0);
  Eigen::VectorXd w1(N), v1(N), g(N);
  for (Index i = 0; i < N; ++i) {
    w1(i) = 2 * r0.uniform() - 1;
    v1(i) = 0.1 * r0.uniform();
  }
  opt.start(w1, v1);
  std::vector<std::int64_t> w(static_cast<std::size_t>(N)), v(static_cast<std::size_t>(N));
  for (Index i = 0; i < N; ++i) {
    w[static_cast<std::size_t>(i)] = Format::fromDouble(w1(i));
    v[static_cast<std::size_t>(i)] = Format::fromDouble(v1(i));
  }
  InformationBuffer<24> reference(N, 4096, 8);
  std::vector<Eigen::VectorXd> gradients;
  for (Index t = 0; t < T; ++t) {
    CounterRng r(12, static_cast<std::uint64_t>(t));
    for (Index i = 0; i < N; ++i) g(i) = 0.3 * (r.uniform() - 0.5);
    gradients.push_back(g);
    setLaneCoderEnabled(false);  // the optimizer element by element, the reference by lanes
    opt.stepWithGradient(g);
    setLaneCoderEnabled(true);
    std::vector<RatioRun> runs;
    for (Index k = 0; k < G; ++k) {
      const ParameterGroup& grp = layout.group(k);
      runs.push_back(RatioRun{grp.offset, grp.offset + grp.size,
                              static_cast<std::uint32_t>(std::lround(opt.quantizedMomenta()(t, k) * 65536.0))});
    }
    multiplyByRatio(v.data(), N, runs, reference);
    for (Index k = 0; k < G; ++k) {
      const ParameterGroup& grp = layout.group(k);
      const double gammaQ = opt.quantizedMomenta()(t, k), a = alpha(t, k);
      for (Index i = grp.offset; i < grp.offset + grp.size; ++i) {
        auto& vi = v[static_cast<std::size_t>(i)];
        vi -= Format::fromDouble((1.0 - gammaQ) * g(i));
        w[static_cast<std::size_t>(i)] += Format::fromDouble(a * Format::toDouble(vi));
      }
    }
  }
  bool same = opt.buffer() == reference;
  for (Index i = 0; i < N; ++i)
    same = same && opt.fixedState(0)[i] == w[static_cast<std::size_t>(i)] && opt.fixedState(1)[i] == v[static_cast<std::size_t>(i)];
  CHECK(same);
  CHECK(reference.spilledWords() > 0);
  INFO("lane coder active: " << laneCoderActive());
  for (Index t = T; t-- > 0;) {
    opt.unstepWeights();
    opt.unstepVelocity(gradients[static_cast<std::size_t>(t)]);
  }
  CHECK_NOTHROW(opt.checkRecoveredStart());
  CHECK(opt.buffer().empty());
}

TEST_CASE("an optimizer's lane count is checked when it is built", "[optimizer][lanes][errors]") {
  const ParameterLayout layout = threeGroups();
  CHECK_THROWS_AS(SgdMomentum<>(layout, Schedule::constant(3, 3, 0.1), Schedule::constant(3, 3, 0.9),
                                OptimizerOptions(4096).withLanes(4)),
                  InvalidArgument);
  CHECK_THROWS_AS(SgdMomentum<>(layout, Schedule::constant(3, 3, 0.1), Schedule::constant(3, 3, 0.9),
                                OptimizerOptions(100).withLanes(8)),
                  InvalidArgument);
  // The default, 0: the lane layout when the block size allows it, else one stack per block.
  CHECK(SgdMomentum<>(layout, Schedule::constant(3, 3, 0.1), Schedule::constant(3, 3, 0.9), OptimizerOptions(4096))
            .options()
            .stacksPerBlock() == 8);
  SgdMomentum<> odd(layout, Schedule::constant(3, 3, 0.1), Schedule::constant(3, 3, 0.9), OptimizerOptions(100));
  odd.start(Eigen::VectorXd::Zero(layout.size()));
  CHECK(odd.buffer().lanes() == 1);
  SgdMomentum<> even(layout, Schedule::constant(3, 3, 0.1), Schedule::constant(3, 3, 0.9));
  even.start(Eigen::VectorXd::Zero(layout.size()));
  CHECK(even.buffer().lanes() == 8);
}

TEST_CASE("an overflow in the last block undoes the blocks already stepped, word for word",
          "[optimizer][exact][kernel][errors]") {
  ParameterLayout layout;
  layout.addGroup("w", 3 * 256 + 7);  // 4 blocks of 256
  const Index N = layout.size(), T = 6;
  SgdMomentum<> opt(layout, Schedule::constant(T, 1, 0.5), Schedule::constant(T, 1, 0.9), 256);
  CounterRng rng(3);
  Eigen::VectorXd w1(N), g(N);
  for (Index i = 0; i < N; ++i) w1(i) = rng.normal();
  opt.start(w1);
  for (int k = 0; k < 3; ++k) {
    for (Index i = 0; i < N; ++i) g(i) = rng.normal();
    opt.stepWithGradient(g);
  }
  const auto before = opt.exportRun();
  const auto prints = opt.gradientFingerprints();
  for (Index bad : {Index(0), Index(255), Index(256), Index(N - 1)}) {
    Eigen::VectorXd h = g;
    h(bad) = 1e6;  // (1 − γ)·g fits, but w + α·v leaves ±2048
    CHECK_THROWS_AS(opt.stepWithGradient(h), FixedPointOverflow);
    h(bad) = std::numeric_limits<double>::quiet_NaN();
    CHECK_THROWS_AS(opt.stepWithGradient(h), NonFiniteValue);
    CHECK(opt.iteration() == 3);
    CHECK(opt.fixedWeights() == before.state[0]);
    CHECK(opt.fixedVelocity() == before.state[1]);
    CHECK(opt.buffer() == before.buffer);
    CHECK(opt.gradientFingerprints() == prints);
  }
  // The run continues and reverses exactly.
  opt.stepWithGradient(g);
  opt.unstepWeights();
  opt.unstepVelocity(g);
  CHECK(opt.buffer() == before.buffer);
}

TEST_CASE("an inverse half that cannot come from the run is refused with nothing changed",
          "[optimizer][exact][kernel][errors]") {
  ParameterLayout layout;
  layout.addGroup("w", 300);
  SgdMomentum<> opt(layout, Schedule::constant(4, 1, 1.0), Schedule::constant(4, 1, 0.5), 128);
  opt.start(Eigen::VectorXd::Zero(300));
  Eigen::VectorXd g = Eigen::VectorXd::Constant(300, 0.25);
  opt.stepWithGradient(g);
  // A state that no forward step produced: w at the edge of the range, so w − α·v leaves it.
  auto run = opt.exportRun();
  typename SgdMomentum<>::Fixed::Storage raw = run.state[0].raw();
  raw(200) = std::numeric_limits<std::int64_t>::max();  // w − α·v = w + 0.125 overflows
  run.state[0] = SgdMomentum<>::Fixed::fromRaw(raw);
  opt.importRun(run);
  const auto before = opt.exportRun();
  CHECK_THROWS_AS(opt.unstepWeights(), ExactnessViolation);
  CHECK(opt.fixedWeights() == before.state[0]);
  CHECK(opt.buffer() == before.buffer);
  CHECK_FALSE(opt.halfStep());
}

namespace {
// Reads v, then writes v again: the recorded inverse would see the wrong value.
struct SelfReading : MomentumRule {
  static constexpr const char* name = "self-reading";
  template <class A, class C>
  static void forwardState(A& a, const C& c, double g) {
    a.add(Velocity, 0.5 * a.value(Velocity) + g);
    a.multiply(Velocity, c[Momentum]);
  }
};
// Updates the velocity in the weights half.
struct WrongHalf : MomentumRule {
  static constexpr const char* name = "wrong-half";
  template <class A, class C>
  static void forwardWeights(A& a, const C& c) {
    a.multiply(Velocity, c[Momentum]);
    a.add(Weights, c[LearningRate].value * a.value(Velocity));
  }
};
}  // namespace

TEST_CASE("the element code's reversibility contract is checked when an optimizer is built",
          "[optimizer][concept]") {
  const auto layout = ParameterLayout::single(4);
  CHECK_THROWS_WITH((ReversibleOptimizer<SelfReading>(layout, Schedule::constant(2, 1, 0.1), Schedule::constant(2, 1, 0.9))),
                    Catch::Contains("self-reading") && Catch::Contains("written after it was read"));
  CHECK_THROWS_WITH((ReversibleOptimizer<WrongHalf>(layout, Schedule::constant(2, 1, 0.1), Schedule::constant(2, 1, 0.9))),
                    Catch::Contains("forwardWeights writes a state other than the weights"));
}
