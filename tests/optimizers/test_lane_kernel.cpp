// The exact kernel's lane path (exact/arithmetic.hpp, lane groups through exact/lanes.hpp): for
// every rule it must leave the bits of the element-by-element kernel in the same (lane) layout,
// step by step, forward and back, and keep the kernel's failure atomicity.
#include <catch2/catch.hpp>

#include <array>
#include <cstdint>
#include <limits>
#include <vector>

#include <hypergrad/exact.hpp>
#include <hypergrad/optimizers.hpp>
#include <hypergrad/random.hpp>

using namespace hypergrad;

namespace {

ParameterLayout lanesLayout() {
  ParameterLayout layout;
  layout.addGroup("a", 4100);  // groups cross the block boundary and groups of eight
  layout.addGroup("b", 1997);
  layout.addGroup("c", 3);
  return layout;
}

/// T × G values cycling through `values`, shifted per group.
Schedule cycling(Index T, Index G, std::initializer_list<double> values) {
  const std::vector<double> v(values);
  Eigen::MatrixXd m(T, G);
  for (Index t = 0; t < T; ++t)
    for (Index k = 0; k < G; ++k) m(t, k) = v[static_cast<std::size_t>((t + 2 * k) % static_cast<Index>(v.size()))];
  return Schedule(m);
}

/// Switches the lane coder around one call.
template <class F>
void withLaneCoder(bool on, F&& f) {
  setLaneCoderEnabled(on);
  try {
    f();
  } catch (...) {
    setLaneCoderEnabled(true);
    throw;
  }
  setLaneCoderEnabled(true);
}

template <class Opt>
bool sameRun(const Opt& a, const Opt& b) {
  for (int s = 0; s < Opt::numStates; ++s)
    if (a.fixedState(s) != b.fixedState(s)) return false;
  return a.buffer() == b.buffer();
}

/// Steps and unsteps two optimizers in the lane layout, one with the lane coder and one without,
/// comparing everything after every half step; gradients with exact zeros, signs and sizes mixed.
template <class Opt>
std::size_t compareLanePath(const std::array<Schedule, static_cast<std::size_t>(Opt::numSchedules)>& schedules, Index T) {
  const ParameterLayout layout = lanesLayout();
  const Index N = layout.size();
  Opt lanes(layout, schedules, OptimizerOptions(4096).withLanes(8)), scalar = lanes;
  CounterRng r0(21, 0);
  Eigen::VectorXd w1(N);
  for (Index i = 0; i < N; ++i) w1(i) = 2 * r0.uniform() - 1;
  lanes.start(w1);
  scalar.start(w1);
  std::vector<Eigen::VectorXd> gradients;
  Eigen::VectorXd g(N);
  bool same = true;
  for (Index t = 0; t < T && same; ++t) {
    CounterRng r(22, static_cast<std::uint64_t>(t));
    for (Index i = 0; i < N; ++i) {
      const std::uint64_t kind = r.below(8);
      g(i) = kind == 0 ? 0.0 : (kind == 1 ? 3.0 : 0.3) * (r.uniform() - 0.5);
    }
    gradients.push_back(g);
    withLaneCoder(true, [&] { lanes.stepWithGradient(g); });
    withLaneCoder(false, [&] { scalar.stepWithGradient(g); });
    same = sameRun(lanes, scalar);
    INFO("forward step " << t);
    CHECK(same);
  }
  const std::size_t spilled = lanes.buffer().spilledWords();
  for (Index t = T; t-- > 0 && same;) {
    withLaneCoder(true, [&] { lanes.unstepWeights(); });
    withLaneCoder(false, [&] { scalar.unstepWeights(); });
    same = sameRun(lanes, scalar);
    withLaneCoder(true, [&] { lanes.unstepOptimizerState(gradients[static_cast<std::size_t>(t)]); });
    withLaneCoder(false, [&] { scalar.unstepOptimizerState(gradients[static_cast<std::size_t>(t)]); });
    same = same && sameRun(lanes, scalar);
    INFO("reverse step " << t);
    CHECK(same);
  }
  CHECK_NOTHROW(lanes.checkRecoveredStart());
  CHECK(lanes.buffer().empty());
  return spilled;  // words on the stacks after the forward steps
}

/// Momentum whose operations depend on the data: for g ≤ 0 the velocity is multiplied by γ a
/// second time instead of taking the gradient term. Legal for the kernel (the inverse sees the same
/// g), but the lanes of a group then run different operations: the lane path must notice and take
/// such a group element by element. (Its adjoint is momentum's: only reversal is tested here.)
struct GatedMomentumRule : MomentumRule {
  static constexpr const char* name = "gated momentum";
  // It branches on g, so it cannot run on LaneValue: the lane path replays it lane by lane.
  static constexpr bool laneCode = false;
  template <class A, class C>
  static void forwardState(A& a, const C& c, double g) {
    a.multiply(Velocity, c[Momentum]);
    if (g > 0) a.subtract(Velocity, (1.0 - c[Momentum].value) * g, "(1 - gamma) * gradient");
    else a.multiply(Velocity, c[Momentum]);
  }
};

// The library's rules run their element code on LaneValue; the gated rule cannot (it branches on
// g) and is replayed lane by lane: both lane paths are compared below.
static_assert(detail::ruleHasLaneCode<MomentumRule>() && detail::ruleHasLaneCode<HeavyBallRule>() &&
                  detail::ruleHasLaneCode<AdamRule>() && detail::ruleHasLaneCode<AdamWRule>() &&
                  detail::ruleHasLaneCode<RmspropRule>() && !detail::ruleHasLaneCode<GatedMomentumRule>(),
              "which lane path each rule takes");

}  // namespace

TEST_CASE("the lane path leaves the element-by-element bits for every rule, forward and back", "[optimizer][exact][lanes]") {
  WARN("lane coder active: " << laneCoderActive());
  const Index T = 30, G = 3;
  // Ratios 0 and exact one, and α = 0, among the usual values: segments the lane path hands to the
  // element-by-element kernel sit next to lane segments.
  SECTION("SGD with momentum") {
    // γ = 0.123 stores 3 bits a step: the lane groups spill and refill words.
    CHECK(compareLanePath<SgdMomentum<>>(
              {cycling(T, G, {0.01, 0.05, 0.0, 0.02}), cycling(T, G, {0.5, 0.9, 0.97, 1.0, 0.123, 0.0})}, T) > 0);
  }
  SECTION("heavy ball") {
    CHECK(compareLanePath<SgdHeavyBall<>>({cycling(T, G, {0.01, 0.05, 0.02}), cycling(T, G, {0.5, 0.9, 1.0, 0.125})}, T) > 0);
  }
  SECTION("Adam") {
    compareLanePath<ReversibleAdam<>>({cycling(T, G, {1e-3, 1e-2, 0.0}), cycling(T, G, {0.9, 0.8, 0.0, 1.0}),
                                       cycling(T, G, {0.999, 0.99, 0.9999}), Schedule::constant(T, G, 1e-8)},
                                      T);
  }
  SECTION("AdamW") {
    compareLanePath<ReversibleAdamW<>>({cycling(T, G, {1e-3, 1e-2}), cycling(T, G, {0.9, 0.3}), cycling(T, G, {0.999, 0.99}),
                                        Schedule::constant(T, G, 1e-8), cycling(T, G, {0.1, 0.0, 0.01})},
                                       T);
  }
  SECTION("a rule whose operations depend on the data") {
    CHECK(compareLanePath<ReversibleOptimizer<GatedMomentumRule>>(
              {cycling(T, G, {0.01, 0.05}), cycling(T, G, {0.5, 0.25, 0.9})}, T) > 0);
  }
  SECTION("RMSprop with momentum") {
    compareLanePath<ReversibleRmsprop<>>({cycling(T, G, {1e-3, 1e-2}), cycling(T, G, {0.9, 0.25, 1.0}),
                                          cycling(T, G, {0.99, 0.9, 0.999}), Schedule::constant(T, G, 1e-8)},
                                         T);
  }
}

TEST_CASE("a lane group whose addend overflows is taken back and the step fails with nothing changed",
          "[optimizer][exact][lanes][errors]") {
  const ParameterLayout layout = lanesLayout();
  const Index N = layout.size(), T = 4;
  SgdMomentum<> opt(layout, Schedule::constant(T, 3, 0.1), Schedule::constant(T, 3, 0.9), OptimizerOptions(4096).withLanes(8));
  opt.start(Eigen::VectorXd::Constant(N, 0.5));
  Eigen::VectorXd g = Eigen::VectorXd::Constant(N, 0.01);
  opt.stepWithGradient(g);
  const auto before = opt.exportRun();
  // Element 5000 (lane 0 of its group, block 1) gets a gradient whose velocity term leaves Q11.52;
  // the groups before it, in both blocks, were stepped by the lane path and must be undone.
  g(5003) = 1e6;
  CHECK_THROWS_AS(opt.stepWithGradient(g), FixedPointOverflow);
  const auto after = opt.exportRun();
  CHECK(after.state[0] == before.state[0]);
  CHECK(after.state[1] == before.state[1]);
  CHECK(after.buffer == before.buffer);
  CHECK(opt.iteration() == 1);
  // A non-finite gradient in a lane group likewise.
  g(5003) = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_AS(opt.stepWithGradient(g), NonFiniteValue);
  CHECK(opt.exportRun().buffer == before.buffer);
  g(5003) = 0.01;
  opt.stepWithGradient(g);
  opt.unstepWeights();
  opt.unstepOptimizerState(g);
  opt.unstepWeights();
  opt.unstepOptimizerState(Eigen::VectorXd::Constant(N, 0.01));
  CHECK_NOTHROW(opt.checkRecoveredStart());
}

TEST_CASE("a lane group whose inverse cannot come from the run is redone and the unstep refused with nothing changed",
          "[optimizer][exact][lanes][errors]") {
  ParameterLayout layout;
  layout.addGroup("w", 300);
  SgdMomentum<> opt(layout, Schedule::constant(4, 1, 1.0), Schedule::constant(4, 1, 0.5), OptimizerOptions(128).withLanes(8));
  opt.start(Eigen::VectorXd::Zero(300));
  Eigen::VectorXd g = Eigen::VectorXd::Constant(300, 0.25);
  opt.stepWithGradient(g);
  opt.stepWithGradient(g);
  // Weights: element 203 (lane 3 of the group 200..207) at the top of the range, so that
  // w − α·v leaves it; the groups above it in its block were already undone by the lane path.
  auto run = opt.exportRun();
  auto raw = run.state[0].raw();
  raw(203) = std::numeric_limits<std::int64_t>::max();
  run.state[0] = SgdMomentum<>::Fixed::fromRaw(raw);
  opt.importRun(run);
  const auto before = opt.exportRun();
  CHECK_THROWS_AS(opt.unstepWeights(), ExactnessViolation);
  CHECK(opt.fixedWeights() == before.state[0]);
  CHECK(opt.buffer() == before.buffer);
  // Velocity: element 203 at 3·2^61 units (1536), so that w − α·v stays in range but the
  // division by γ = 0.5 of the state half's undo leaves it (a quotient the lane divide hands to
  // the scalar code, which reports it).
  run = opt.exportRun();
  raw = before.state[0].raw();
  raw(203) = 0;
  run.state[0] = SgdMomentum<>::Fixed::fromRaw(raw);
  auto rawV = run.state[1].raw();
  rawV(203) = std::int64_t(3) << 61;
  run.state[1] = SgdMomentum<>::Fixed::fromRaw(rawV);
  opt.importRun(run);
  opt.unstepWeights();
  const auto half = opt.exportRun();
  CHECK_THROWS_AS(opt.unstepOptimizerState(g), ExactnessViolation);
  const auto after = opt.exportRun();
  CHECK(after.state[0] == half.state[0]);
  CHECK(after.state[1] == half.state[1]);
  CHECK(after.buffer == half.buffer);
  CHECK(opt.halfStep());
}
