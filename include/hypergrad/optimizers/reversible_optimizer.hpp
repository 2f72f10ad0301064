// SPDX-License-Identifier: MIT
#pragma once

/// \file reversible_optimizer.hpp
/// \brief The shared driver of every exactly reversible update rule: it owns the fixed-point
/// state, the information buffer and the run record (gradient fingerprints, the exact start
/// snapshot, the half-step flag), runs the rule's element code through the exact operations
/// layer forward and backwards, and gives every public operation the same guarantee — it
/// completes, or throws leaving the state, the buffer and the record bit-identical to what they
/// were.

#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <exception>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "../config.hpp"
#include "../errors.hpp"
#include "../exact/arithmetic.hpp"
#include "../exact/fingerprint.hpp"
#include "../exact/fixed_point.hpp"
#include "../exact/information_buffer.hpp"
#include "../exact/ratio.hpp"
#include "../exact/ratio_multiply.hpp"
#include "../layout.hpp"
#include "../objective.hpp"
#include "../schedule.hpp"
#include "concept.hpp"
#include "detail/arguments.hpp"
#include "schedule_set.hpp"

namespace hypergrad {

/// Construction options of a ReversibleOptimizer beyond its schedules. An Index converts to the
/// options with that block size, so `SgdMomentum<>(layout, alpha, gamma, 1024)` keeps working.
struct OptimizerOptions {
  /// Elements per information-buffer block (an independent word stack; blocks run in parallel).
  Index blockSize = 4096;
  /// How ratio schedules become exact ratios (exact/ratio.hpp): Quantization::Dyadic rounds to
  /// n/2^RatioBits (the fastest); Quantization::ExactFractions keeps fractions such as 0.9 = 9/10
  /// exact, at about 2.5× the exact update's cost per element for those ratios.
  Quantization ratios = Quantization::Dyadic;
  /// Word stacks per buffer block: 8, the lane layout (InformationBuffer, exact/lanes.hpp), which
  /// the exact kernel runs eight elements at a time with AVX-512 where the processor has it; 1,
  /// one stack per block (the layout of releases before 2026-12); or 0, the default: 8 when the
  /// block size is a multiple of 8, else 1. Both layouts reverse exactly and give the same bits
  /// on every processor; they code the same information into different words, so the last bits
  /// of a trajectory depend on the choice (a saved run records it, and with 0 a run of either
  /// layout can be imported). 8 needs a block size that is a multiple of 8.
  int lanes = 0;

  OptimizerOptions() = default;
  /// The default options with another block size (implicit on purpose, see above).
  OptimizerOptions(Index elementsPerBlock) : blockSize(elementsPerBlock) {}  // NOLINT(google-explicit-constructor)
  /// The same options with exact fractions.
  OptimizerOptions exactFractions() const {
    OptimizerOptions o = *this;
    o.ratios = Quantization::ExactFractions;
    return o;
  }
  /// The same options with `n` stacks per block (1 or 8; 0 chooses from the block size).
  OptimizerOptions withLanes(int n) const {
    OptimizerOptions o = *this;
    o.lanes = n;
    return o;
  }
  /// The stacks per block these options give: `lanes`, or for 0, 8 when the block size is a
  /// multiple of 8, else 1.
  int stacksPerBlock() const noexcept { return lanes != 0 ? lanes : (blockSize % 8 == 0 ? 8 : 1); }
};

/// An exactly reversible optimizer: update rule `Rule` (optimizers/concept.hpp) in fixed point.
///
/// \tparam Rule          the update rule (MomentumRule, …)
/// \tparam Format        fixed-point format of every state vector (default Q11.52: range ±2048,
///                       resolution 2^-52)
/// \tparam Rounding      BitsBackRounding (default, entropy-bound memory) or FloorRounding
/// \tparam RatioBits     ratio schedules are quantised to n / 2^RatioBits (default 16)
/// \tparam PrecisionBits information-buffer coder precision (default 24; ≥ RatioBits + 8)
///
/// **State.** S fixed-point vectors (state 0 the weights w), `iteration()` steps taken since
/// start(); the information buffer holds exactly what is needed to undo them. After
/// `iteration()` reverse steps the state is bit-identical to the one start() received and the
/// buffer is empty; checkRecoveredStart() verifies it (reverse() calls it on every run).
///
/// **Exactness of the start.** start() from doubles rounds each value to the fixed-point grid
/// (2^-R): a double start is exact, i.e. the run starts from the given values themselves, only
/// for values on that grid (at R = 52, |x| < 2 with no bits below 2^-52, or any integer multiple
/// of 2^-52 within range). start() from Fixed vectors is always exact.
///
/// **Run record.** Each forward step stores a 64-bit fingerprint of the gradient g_t it used
/// (8 bytes per iteration; about 0.3 ns per parameter per step). The reverse step compares the
/// recomputed gradient's fingerprint before it touches the optimizer state, so a reverse pass
/// run with another objective, data set, seed, batch schedule, shard size or hyperparameters
/// than the forward run, or with a non-deterministic gradient, is reported (ExactnessViolation)
/// at the first iteration where it differs.
///
/// **Failure atomicity.** Every public member either completes or throws leaving the state, the
/// buffer and the record as they were: start() builds the new run aside and commits it at the
/// end; the exact kernel undoes a partial pass by running it backwards (exact/arithmetic.hpp);
/// unstep(f) re-applies the weights half when the objective throws or returns a gradient that
/// does not match the forward run's. Errors name the iteration, group, element and value.
template <class Rule, class Format = FixedFormat<52>, class Rounding = BitsBackRounding, int RatioBits = 16,
          int PrecisionBits = 24>
class ReversibleOptimizer
    : public detail::RuleInterfaceOf<Rule, ReversibleOptimizer<Rule, Format, Rounding, RatioBits, PrecisionBits>>::Type {
  static_assert((checkRule<Rule>(), true));  // checkRule's own static_asserts name what is missing
  static_assert(!detail::weightsReadGradient<Rule>(),
                "hypergrad::ReversibleOptimizer: this rule updates the weights from g_t itself (forwardWeights(a, c, g): "
                "Nesterov momentum, plain RMSprop), so no step can be inverted exactly; run it on a ReferenceOptimizer "
                "and reverse it with CheckpointedOptimizer (optimizers/checkpointed.hpp)");
  static_assert(PrecisionBits >= RatioBits + 8,
                "hypergrad::ReversibleOptimizer: PrecisionBits must exceed RatioBits by at least 8 for the coder to "
                "reach the entropy bound (e.g. RatioBits = 16, PrecisionBits = 24)");

 public:
  using RuleType = Rule;                          ///< The update rule.
  using FixedFormatType = Format;                 ///< The fixed-point format of the state.
  using RatioType = Ratio<RatioBits>;             ///< A quantised ratio schedule entry, n / 2^RatioBits.
  using Fixed = FixedVector<Format::radixBits>;   ///< One state vector.
  using Buffer = InformationBuffer<PrecisionBits>;  ///< The information buffer.
  using RoundingPolicy = Rounding;                ///< How products by a ratio are rounded.
  using Schedules = ScheduleSet<Rule, RatioType>;  ///< The validated schedules.
  /// The entries of every schedule at one (iteration, group): what the rule's element code reads.
  using Coefficients = typename Schedules::Coefficients;
  static constexpr int numStates = Rule::numStates;  ///< S, state vectors, the weights included.
  static constexpr int numSchedules = Rule::numSchedules;  ///< J, T × G schedules.

  /// \param layout     parameter groups
  /// \param schedules  the rule's schedules in its order (Rule::schedules), each T × G
  /// \param options    buffer block size and ratio quantisation (an Index: the block size)
  ReversibleOptimizer(ParameterLayout layout, std::array<Schedule, static_cast<std::size_t>(numSchedules)> schedules,
                      OptimizerOptions options = OptimizerOptions())
      : m_layout(std::move(layout)),
        m_schedules(m_layout, std::move(schedules), /*quantizeRatios=*/true, Rule::name, options.ratios),
        m_blockSize(options.blockSize),
        m_options(options) {
    if (m_blockSize <= 0)
      throw InvalidArgument(detail::message(Rule::name, ": the buffer block size is ", m_blockSize, "; it must be >= 1"));
    if (options.lanes != 0 && options.lanes != 1 && options.lanes != Buffer::laneCount)
      throw InvalidArgument(detail::message(Rule::name, ": OptimizerOptions::lanes is ", options.lanes, "; it must be 1, ",
                                            Buffer::laneCount, " or 0 (", Buffer::laneCount,
                                            " when the block size is a multiple of it, else 1)"));
    if (m_blockSize % options.stacksPerBlock() != 0)
      throw InvalidArgument(detail::message(Rule::name, ": the buffer block size ", m_blockSize, " must be a multiple of ",
                                            options.lanes, " with ", options.lanes, " lanes"));
    if (const char* problem = detail::ruleContractViolation<Rule>(m_schedules.at(0, 0))) {
      throw InvalidArgument(detail::message("update rule '", Rule::name, "' breaks the reversibility contract: ",
                                            problem, " (see optimizers/concept.hpp)"));
    }
    // Words per element a pass may spill: one per multiplication, more when some ratio is 0.
    m_multiplies = detail::ruleMultiplies<Rule>(m_schedules.at(0, 0)) *
                   (m_schedules.hasZeroRatio() ? detail::kZeroRatioWords : 1);
  }

  /// The same with the schedules as separate arguments: `(layout, α, γ)`, `(layout, α, γ, blockSize)`
  /// or `(layout, α, γ, options)`.
  template <class... Args, std::enable_if_t<detail::schedulesThen<static_cast<std::size_t>(numSchedules),
                                                                  OptimizerOptions, Args...>(),
                                            int> = 0>
  ReversibleOptimizer(ParameterLayout layout, Args&&... args)
      : ReversibleOptimizer(std::move(layout), fromArguments(std::forward_as_tuple(std::forward<Args>(args)...)),
                            detail::takeExtra<static_cast<std::size_t>(numSchedules), OptimizerOptions>(
                                std::forward_as_tuple(std::forward<Args>(args)...), OptimizerOptions())) {}

  // ---- Run ----------------------------------------------------------------------------------------

  /// Begins a run at iteration 0 from the given initial states, in the rule's order (weights
  /// first); states not given start at zero. Each is an Eigen vector of doubles (rounded to the
  /// grid, see the class comment) or a Fixed vector (exact). Clears the buffer and the record.
  /// Throws (InvalidArgument, FixedPointOverflow) leaving the previous run untouched.
  template <class... Initial>
  void start(const Initial&... initial) {
    static_assert(sizeof...(Initial) >= 1 && sizeof...(Initial) <= static_cast<std::size_t>(numStates),
                  "hypergrad: start() takes the initial weights and at most the rule's other states");
    std::array<Fixed, static_cast<std::size_t>(numStates)> s;
    int k = 0;
    (void)std::initializer_list<int>{(s[static_cast<std::size_t>(k)] = toFixed(initial, k), ++k)...};
    for (; k < numStates; ++k) s[static_cast<std::size_t>(k)] = Fixed(size());
    RunState run{s, s, Buffer(size(), m_blockSize, m_options.stacksPerBlock()), std::vector<std::uint64_t>(static_cast<std::size_t>(numIterations()), 0),
                 0, false};
    commit(std::move(run));
  }

  /// One forward step at iteration t = iteration(): g = ∇L(w_t, θ, t), then the exact update.
  template <class Objective>
  void step(const Objective& f) {
    checkObjective<Objective>();
    requireForward("step");
    checkObjectiveSize(f.numParameters());
    const auto begin = std::chrono::steady_clock::now();
    m_state[0].toDouble(m_wd);
    double loss = std::numeric_limits<double>::quiet_NaN();
    if constexpr (detail::HasStepValueAndGradient<Objective>::value) loss = f.valueAndGradient(m_wd, m_t, m_work);
    else f.gradient(m_wd, m_t, m_work);
    applyStep(m_work);
    m_g.swap(m_work);
    m_lastLoss = loss;
    m_forwardSeconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  }

  /// The exact update at iteration t = iteration() with a given gradient g_t (which the reverse
  /// pass must be able to recompute bit for bit). Throws NonFiniteValue for a non-finite g,
  /// FixedPointOverflow when a value leaves the fixed-point range, with the state unchanged.
  void stepWithGradient(const Eigen::VectorXd& g) {
    const auto begin = std::chrono::steady_clock::now();
    applyStep(g);
    m_lastLoss = std::numeric_limits<double>::quiet_NaN();
    if (&g != &m_g) m_g = g;
    m_forwardSeconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  }

  /// Wall seconds spent in step() (gradient included) and stepWithGradient() since start(); 0
  /// after loadRun(). reverse() reports it in its result's statistics.
  double forwardSeconds() const noexcept { return m_forwardSeconds; }

  /// First half of a reverse step at iteration t = iteration() − 1: restores w_t (exact); the
  /// other states stay at t + 1. Throws ExactnessViolation when the state cannot come from the
  /// forward run (nothing changed).
  void unstepWeights() {
    requireStarted("unstepWeights");
    if (m_halfStep) {
      throw InvalidState(detail::message(Rule::name, ": unstepWeights() called twice; call unstepOptimizerState(g) ",
                                         "to finish the reverse step, or restepWeights() to undo it"));
    }
    if (m_t <= 0) {
      throw InvalidState(
          detail::message(Rule::name, ": unstepWeights(): already at the first iteration; nothing to reverse"));
    }
    const Index t = m_t - 1;
    m_schedules.fill(t, m_coefficients);
    runKernel(false, detail::StepPart::Weights, t, nullptr);
    m_halfStep = true;
  }

  /// Undoes unstepWeights(): back to w_{t+1} (exact), iteration() unchanged.
  void restepWeights() {
    requireStarted("restepWeights");
    if (!m_halfStep)
      throw InvalidState(detail::message(Rule::name, ": restepWeights(): there is no unstepWeights() to undo"));
    m_schedules.fill(m_t - 1, m_coefficients);
    runKernel(true, detail::StepPart::Weights, m_t - 1, nullptr);
    m_buffer.trim(m_multiplies);
    m_halfStep = false;
  }

  /// Second half: restores the other states at iteration t from g_t = ∇L(w_t, θ, t) recomputed
  /// at the w_t that unstepWeights() restored; then iteration() becomes t. Throws NonFiniteValue
  /// when g is not finite and ExactnessViolation when its fingerprint differs from the forward
  /// step's (another objective, data, seed or batch schedule) — in both cases nothing changed:
  /// retry with the forward run's gradient, or restepWeights() to return to iteration t + 1.
  void unstepOptimizerState(const Eigen::VectorXd& g) {
    applyUnstepState(g);
    if (&g != &m_g) m_g = g;
  }

  /// A whole reverse step: unstepWeights(), g_t recomputed from the objective, then
  /// unstepOptimizerState(g_t). If the objective throws or its gradient does not match the
  /// forward run's, the weights half is re-applied: the optimizer is exactly as before the call.
  template <class Objective>
  void unstep(const Objective& f) {
    checkObjective<Objective>();
    checkObjectiveSize(f.numParameters());
    unstepWeights();
    try {
      m_state[0].toDouble(m_wd);
      f.gradient(m_wd, m_t - 1, m_work);
      applyUnstepState(m_work);
    } catch (...) {
      restepWeights();  // exact: cannot fail on the state unstepWeights() just produced
      throw;
    }
    m_g.swap(m_work);
  }

 private:
  void applyUnstepState(const Eigen::VectorXd& g) {
    requireStarted("unstepOptimizerState");
    if (!m_halfStep)
      throw InvalidState(detail::message(Rule::name, ": unstepOptimizerState(g): call unstepWeights() first"));
    const Index t = m_t - 1;
    checkSize(g.size(), "unstepOptimizerState: gradient");
    checkFinite(g, t, "recomputed gradient");
    if (fingerprint(g.data(), g.size()) != m_fingerprints[static_cast<std::size_t>(t)]) {
      throw ExactnessViolation(detail::message(
          Rule::name, ": the gradient recomputed at iteration ", t,
          " differs from the one the forward pass used there (64-bit fingerprint mismatch): the objective, its data, "
          "hyperparameters, seed or batch schedule changed since the forward pass, or its gradient is not "
          "deterministic (check for a stateful random generator or thread-count-dependent reductions). Nothing was "
          "changed: reverse with the forward run's objective"));
    }
    m_schedules.fill(t, m_coefficients);
    runKernel(false, detail::StepPart::State, t, g.data());
    m_buffer.trim(m_multiplies);
    m_fingerprints[static_cast<std::size_t>(t)] = 0;  // a step not taken has no record
    m_halfStep = false;
    --m_t;
  }

 public:

  /// Throws ExactnessViolation unless the state is back at iteration 0, bit-identical to what
  /// start() received, with an empty information buffer. O(N) comparisons.
  void checkRecoveredStart() const {
    if (!m_started) throw InvalidState(detail::message(Rule::name, ": start() has not been called"));
    if (m_t != 0 || m_halfStep)
      throw ExactnessViolation(
          detail::message(Rule::name, ": the reverse pass stopped at iteration ", m_t, " instead of 0"));
    std::string differences;
    for (int s = 0; s < numStates; ++s) {
      const Index d = firstDifference(m_state[static_cast<std::size_t>(s)], m_start[static_cast<std::size_t>(s)]);
      if (d >= 0) differences += detail::message(Rule::stateNames[static_cast<std::size_t>(s)], " differs first at element ", d, "; ");
    }
    if (!differences.empty() || !m_buffer.empty()) {
      throw ExactnessViolation(detail::message(
          Rule::name, ": the reverse pass did not recover the initial state exactly (", differences,
          m_buffer.empty() ? "buffer empty" : "information buffer not empty",
          "). The objective's gradient must be a deterministic function of (w, theta, t): check for a stateful "
          "random generator, thread-count-dependent reductions, or an objective changed between the passes"));
    }
  }

  // ---- Accessors ----------------------------------------------------------------------------------

  Index size() const noexcept { return m_layout.size(); }  ///< N, the number of parameters.
  Index numIterations() const noexcept { return m_schedules.numIterations(); }  ///< T, the schedules' length.
  /// Number of forward steps currently applied (t of the state w_{t+1}, … held; 0-based).
  Index iteration() const noexcept { return m_t; }
  const ParameterLayout& layout() const noexcept { return m_layout; }  ///< The parameter groups.
  Index blockSize() const noexcept { return m_blockSize; }  ///< Elements per information-buffer block.
  const OptimizerOptions& options() const noexcept { return m_options; }  ///< As constructed.
  /// The validated schedules (as given, the values used, the ratios' numerators).
  const Schedules& schedules() const noexcept { return m_schedules; }
  /// Schedule j as given, by index or by key (e.g. "learningRates").
  const Schedule& schedule(Index j) const { return m_schedules.requested(j); }
  /// Schedule `key` as given; InvalidArgument for a key the rule does not have.
  const Schedule& schedule(const std::string& key) const { return m_schedules.requested(scheduleIndex<Rule>(key)); }
  /// The values schedule j's update actually uses, T × G: the quantised n/d for ratio schedules.
  const Eigen::MatrixXd& scheduleValues(Index j) const { return m_schedules.used(j); }
  /// The entries of every schedule for each group at iteration t (what the element code reads).
  void coefficients(Index t, std::vector<Coefficients>& out) const { m_schedules.fill(t, out); }

  /// State s (0 = weights) in fixed point, the exact stored values.
  const Fixed& fixedState(Index s) const { return m_state.at(static_cast<std::size_t>(s)); }
  /// State s as doubles.
  Eigen::VectorXd state(Index s) const {
    Eigen::VectorXd out;
    state(s, out);
    return out;
  }
  /// State s as doubles into `out` (resized if needed).
  void state(Index s, Eigen::VectorXd& out) const {
    fixedState(s).toDouble(out);
    if (stateScaleDown(s) != 1.0) out *= stateScaleDown(s);
  }
  /// The factor from state s's fixed-point values (in the format's units) to its values:
  /// 2^-e_s for the rule's stateExponents (1 for the weights). State s's resolution is
  /// Format::resolution times this, its range ±Format::maxMagnitude times this.
  static double stateScaleDown(Index s) { return Scaling::down(static_cast<int>(s)); }
  /// The state start() received (the exact start snapshot).
  const Fixed& startState(Index s) const { return m_start.at(static_cast<std::size_t>(s)); }

  Eigen::VectorXd weights() const { return m_state[0].toDouble(); }  ///< w as doubles.
  /// w as doubles into `out` (resized if needed).
  void weights(Eigen::VectorXd& out) const { m_state[0].toDouble(out); }
  const Fixed& fixedWeights() const noexcept { return m_state[0]; }  ///< w in fixed point.
  /// The fixed-point weights start(w) begins from: each w_i rounded as start() rounds it, to the
  /// nearest multiple of the resolution 2^-R, ties away from zero (FixedFormat::fromDouble). With
  /// it, `opt.fixedWeights() == opt.quantizeWeights(w1)` needs no name for Fixed. Throws
  /// InvalidArgument for a wrong size, FixedPointOverflow for a value out of range.
  Fixed quantizeWeights(const Eigen::VectorXd& w) const { return toFixed(w, 0); }
  /// True when the weights are bit for bit the quantisation of `w` (quantizeWeights(w), what
  /// start(w) stores): after start(w1), steps and as many reverse steps, weightsEqual(w1) holds,
  /// even where w1 is not on the grid and weights() != w1. So w_i within half the resolution
  /// 2^-R of the stored value compares equal, farther does not; a NaN, infinite or out-of-range
  /// w_i compares unequal. Throws InvalidArgument for a wrong size, InvalidState before start().
  bool weightsEqual(const Eigen::VectorXd& w) const {
    requireStarted("weightsEqual");
    checkSize(w.size(), "weightsEqual: w");
    const Fixed& x = m_state[0];
    for (Index i = 0; i < w.size(); ++i) {
      std::int64_t c;  // the weights are in the format's units (state exponent 0): no scaling
      if (!Fixed::Format::tryFromDouble(w(i), c) || c != x[i]) return false;
    }
    return true;
  }
  /// The information buffer: what the steps taken destroyed (informationBits(), memoryBytes()).
  const Buffer& buffer() const noexcept { return m_buffer; }
  /// The gradient fingerprint of each forward step taken (the run record).
  const std::vector<std::uint64_t>& gradientFingerprints() const noexcept { return m_fingerprints; }
  /// The gradient used by the last forward step (or recomputed by the last reverse step).
  const Eigen::VectorXd& lastGradient() const noexcept { return m_g; }
  /// The minibatch loss L(w_t, θ, t) of the last forward step(), when its objective reports it
  /// (valueAndGradient(w, t, g), e.g. MlpObjective and L2Regularized of it): a training curve at no
  /// extra cost, e.g. from a callback's onForwardStep. NaN otherwise, after stepWithGradient()
  /// and after start().
  double lastLoss() const noexcept { return m_lastLoss; }
  bool started() const noexcept { return m_started; }  ///< True once start() has succeeded.
  /// True between unstepWeights() and unstepOptimizerState() (or restepWeights()).
  bool halfStep() const noexcept { return m_halfStep; }
  /// False before start() (and after an internal error that lost the state, which is a bug).
  bool usable() const noexcept { return m_started && !m_broken; }

  /// Everything a run consists of beyond the optimizer's configuration: what saveRun() writes
  /// and loadRun() restores (optimizers/snapshot.hpp).
  struct RunState {
    ///@{
    /// The current state vectors and the exact start snapshot (state 0 the weights).
    std::array<Fixed, static_cast<std::size_t>(numStates)> state, start;
    ///@}
    Buffer buffer;                            ///< what the steps taken destroyed
    std::vector<std::uint64_t> fingerprints;  ///< one per iteration of the schedules
    Index iteration = 0;                      ///< forward steps applied
    bool halfStep = false;                    ///< between unstepWeights() and unstepOptimizerState()
  };
  /// A copy of the current run (requires start()).
  RunState exportRun() const {
    requireStarted("exportRun");
    return RunState{m_state, m_start, m_buffer, m_fingerprints, m_t, m_halfStep};
  }
  /// Replaces the current run by `run`, after checking that it fits this optimizer (sizes,
  /// iteration within the schedules, buffer layout); InvalidArgument otherwise, with nothing
  /// changed. A run that fits but was not produced by this optimizer's schedules and objective
  /// is detected by the reverse pass (ExactnessViolation), not here.
  void importRun(RunState run) {
    for (int s = 0; s < numStates; ++s) {
      const auto k = static_cast<std::size_t>(s);
      if (run.state[k].size() != size() || run.start[k].size() != size())
        throw InvalidArgument(detail::message(Rule::name, ": importRun: state '", Rule::stateNames[k],
                                              "' has the wrong size for a layout of ", size(), " parameters"));
    }
    // With lanes = 0 a run of either layout fits: the kernel follows the buffer's layout.
    if (run.buffer.size() != size() || run.buffer.blockSize() != m_blockSize ||
        (m_options.lanes != 0 && run.buffer.lanes() != m_options.lanes)) {
      throw InvalidArgument(detail::message(Rule::name, ": importRun: the buffer has ", run.buffer.size(),
                                            " elements in blocks of ", run.buffer.blockSize(), " with ", run.buffer.lanes(),
                                            " stack(s) each, expected ", size(), " in blocks of ", m_blockSize, " with ",
                                            m_options.lanes, " (OptimizerOptions::lanes)"));
    }
    if (static_cast<Index>(run.fingerprints.size()) != numIterations() || run.iteration < 0 ||
        run.iteration > numIterations() || (run.halfStep && run.iteration == 0)) {
      throw InvalidArgument(detail::message(Rule::name, ": importRun: iteration ", run.iteration, " and ",
                                            run.fingerprints.size(), " recorded steps do not fit schedules of ",
                                            numIterations(), " iterations"));
    }
    commit(std::move(run));
  }

  /// Reads the current state as doubles element by element (what the reverse pass's adjoint
  /// code uses, without converting whole vectors).
  struct StateReader {
    std::array<const std::int64_t*, static_cast<std::size_t>(numStates)> x;  ///< each state's integers
    /// Element i of state s as a double.
    double value(int s, Index i) const noexcept {
      const double v = Format::toDouble(x[static_cast<std::size_t>(s)][i]);
      if constexpr (Scaling::identity()) return v;
      else return v * Scaling::down(s);
    }
  };
  /// A reader of the current state; valid until the state next changes.
  StateReader stateReader() const noexcept {
    StateReader r;
    for (int s = 0; s < numStates; ++s) r.x[static_cast<std::size_t>(s)] = m_state[static_cast<std::size_t>(s)].data();
    return r;
  }

 private:
  // Makes `run` the current run. Everything that can allocate happens before the first member
  // changes (the workspaces are sized here, so that no later operation allocates after it has
  // changed the state); the moves at the end do not throw.
  void commit(RunState&& run) {
    std::vector<Coefficients> coefficients(static_cast<std::size_t>(m_layout.numGroups()));
    std::vector<unsigned char> blockDone(static_cast<std::size_t>(run.buffer.numBlocks()));
    std::vector<std::exception_ptr> blockErrors(static_cast<std::size_t>(run.buffer.numBlocks()));
    Eigen::VectorXd wd(size()), g = Eigen::VectorXd::Zero(size()), work(size());
    m_state = std::move(run.state);
    m_start = std::move(run.start);
    m_buffer = std::move(run.buffer);
    m_fingerprints = std::move(run.fingerprints);
    m_t = run.iteration;
    m_halfStep = run.halfStep;
    m_forwardSeconds = 0.0;
    m_lastLoss = std::numeric_limits<double>::quiet_NaN();
    m_coefficients = std::move(coefficients);
    m_blockDone = std::move(blockDone);
    m_blockErrors = std::move(blockErrors);
    m_wd.swap(wd);
    m_g.swap(g);
    m_work.swap(work);
    m_broken = false;
    m_started = true;
  }

  // The forward step with g_t given; everything but remembering g (see lastGradient()).
  void applyStep(const Eigen::VectorXd& g) {
    requireForward("step");
    const Index t = m_t;
    checkSize(g.size(), "step: gradient");
    const std::uint64_t print = fingerprint(g.data(), g.size());
    m_schedules.fill(t, m_coefficients);
    runKernel(true, detail::StepPart::Both, t, g.data());
    m_buffer.trim(m_multiplies);
    m_fingerprints[static_cast<std::size_t>(t)] = print;
    ++m_t;
  }

  template <class Tuple>
  static std::array<Schedule, static_cast<std::size_t>(numSchedules)> fromArguments(Tuple&& args) {
    return detail::takeSchedules<static_cast<std::size_t>(numSchedules)>(
        std::forward<Tuple>(args), std::make_index_sequence<static_cast<std::size_t>(numSchedules)>());
  }

  template <class Derived>
  Fixed toFixed(const Eigen::MatrixBase<Derived>& x, int s) const {
    const std::string what = detail::message("initial ", Rule::stateNames[static_cast<std::size_t>(s)]);
    checkSize(x.size(), (std::string("start: ") + what).c_str());
    Fixed f = Scaling::up(s) == 1.0 ? Fixed::fromDouble(x, what.c_str())
                                    : Fixed::fromDouble((x * Scaling::up(s)).eval(), what.c_str());
    checkDomain(f, s);
    return f;
  }
  Fixed toFixed(const Fixed& x, int s) const {
    checkSize(x.size(), detail::message("start: initial ", Rule::stateNames[static_cast<std::size_t>(s)]).c_str());
    checkDomain(x, s);
    return x;
  }
  void checkDomain(const Fixed& x, int s) const {
    if (detail::stateDomain<Rule>(s) != StateDomain::NonNegative) return;
    for (Index i = 0; i < x.size(); ++i)
      if (x[i] < 0) {
        throw InvalidArgument(detail::message(Rule::name, ": start: initial ", Rule::stateNames[static_cast<std::size_t>(s)],
                                              " at element ", i, " is ", Format::toDouble(x[i]) * Scaling::down(s),
                                              "; this state is a running mean of squares and must be >= 0"));
      }
  }

  // One pass of the exact kernel over every element; failures become typed exceptions naming
  // the iteration, group and state (the state is unchanged when they leave).
  void runKernel(bool forwardDirection, detail::StepPart part, Index t, const double* g) {
    std::array<std::int64_t*, static_cast<std::size_t>(numStates)> x;
    for (int s = 0; s < numStates; ++s) x[static_cast<std::size_t>(s)] = m_state[static_cast<std::size_t>(s)].data();
    const typename Kernel::template Call<Coefficients> call{x.data(), &m_buffer, &m_layout, m_coefficients.data(), g,
                                                            m_multiplies, m_blockDone.data(), m_blockErrors.data()};
    try {
      if (forwardDirection) Kernel::forward(call, part);
      else Kernel::inverse(call, part);
    } catch (const detail::ElementFailure& f) {
      m_buffer.trim(m_multiplies);
      throwFailure(f, t, forwardDirection);
    } catch (const InvalidState&) {
      m_broken = true;
      throw;
    } catch (...) {  // std::bad_alloc from the reservation, before anything changed
      m_buffer.trim(m_multiplies);
      throw;
    }
  }

  [[noreturn]] void throwFailure(const detail::ElementFailure& f, Index t, bool forwardDirection) const {
    using Kind = detail::ElementFailure::Kind;
    const std::string where = detail::message(" at iteration ", t, ", group '", groupName(f.element), "', element ",
                                              f.element);
    const char* state = Rule::stateNames[static_cast<std::size_t>(f.state)];
    if (f.kind == Kind::NonFiniteGradient) {
      throw NonFiniteValue(detail::message(Rule::name, ": the gradient", where, " is ", f.operand,
                                           "; the state is unchanged. Lower the learning rate or check the objective"));
    }
    if (!forwardDirection) {
      throw ExactnessViolation(detail::message(
          Rule::name, ": reversing", where, " failed (", state, " = ", f.current, ", ", f.what,
          f.kind == Kind::DivisionOutOfRange ? " leaves the int64 range"
          : f.kind == Kind::NotZero          ? " finds a value that is not the 0 the multiplication left"
                                             : " leaves the fixed-point range",
          "): the state does not come from the forward run being reversed (wrong saved run, schedules or buffer). "
          "Nothing was changed"));
    }
    const std::string detailText =
        f.kind == Kind::AddendOutOfRange
            ? detail::message(f.what, " = ", f.operand)
            : detail::message(state, " ", f.current, (f.operand >= 0 ? " + " : " - "), std::fabs(f.operand), " (",
                              f.what, ")");
    throw FixedPointOverflow(detail::message(
        Rule::name, where, ": ", detailText, " leaves the fixed-point range of the ", state, ", ±",
        Format::maxMagnitude * Scaling::down(f.state), " (Q", 63 - Format::radixBits - detail::stateExponent<Rule>(f.state),
        ".", Format::radixBits + detail::stateExponent<Rule>(f.state),
        "). The state is unchanged. Use a smaller learning rate, or a FixedFormat with fewer fractional bits "
        "for more range"));
  }

  const std::string& groupName(Index i) const {
    for (const ParameterGroup& grp : m_layout.groups())
      if (i >= grp.offset && i < grp.offset + grp.size) return grp.name;
    return m_layout.group(0).name;
  }

  void checkFinite(const Eigen::VectorXd& g, Index t, const char* what) const {
    for (Index i = 0; i < g.size(); ++i)
      if (!std::isfinite(g(i))) {
        throw NonFiniteValue(detail::message(Rule::name, ": the ", what, " at iteration ", t, ", group '",
                                             groupName(i), "', element ", i, " is ", g(i),
                                             "; the state is unchanged. Check the objective"));
      }
  }

  void checkSize(Index n, const char* what) const {
    if (n != size()) {
      throw InvalidArgument(detail::message(Rule::name, ": ", what, " has ", n,
                                            " entries but the parameter layout has ", size()));
    }
  }
  void checkObjectiveSize(Index n) const {
    if (n != size()) {
      throw InvalidArgument(detail::message(Rule::name, ": the objective has ", n,
                                            " parameters but the parameter layout has ", size()));
    }
  }
  void requireStarted(const char* fn) const {
    if (!m_started) throw InvalidState(detail::message(Rule::name, ": ", fn, ": call start(w1, ...) first"));
    if (m_broken)
      throw InvalidState(detail::message(Rule::name, ": ", fn, ": an internal error lost the state; call start() again"));
  }
  void requireForward(const char* fn) const {
    requireStarted(fn);
    if (m_halfStep) {
      throw InvalidState(detail::message(Rule::name, ": ", fn, ": a reverse step is half done (after unstepWeights()); "
                                         "finish it with unstepOptimizerState(g) or undo it with restepWeights()"));
    }
    if (m_t >= numIterations()) {
      throw InvalidState(detail::message(Rule::name, ": ", fn, ": all ", numIterations(),
                                         " iterations of the schedule have been taken"));
    }
  }
  static Index firstDifference(const Fixed& a, const Fixed& b) {
    if (a.size() != b.size()) return 0;
    for (Index i = 0; i < a.size(); ++i)
      if (a[i] != b[i]) return i;
    return -1;
  }

  using Scaling = detail::StateScaling<Rule>;
  static_assert(detail::stateExponent<Rule>(0) == 0, "hypergrad: the weights (state 0) must be in the format's units");
  using Kernel = detail::ExactKernel<Rule, Format, Rounding, RatioBits, Buffer, Scaling>;

  ParameterLayout m_layout;
  Schedules m_schedules;
  Index m_blockSize;
  OptimizerOptions m_options;
  int m_multiplies = 0;  // ratio multiplications per element and step (the buffer reservation)

  std::array<Fixed, static_cast<std::size_t>(numStates)> m_state, m_start;
  Buffer m_buffer;
  std::vector<std::uint64_t> m_fingerprints;  // fingerprint of g_t per forward step: 8 bytes × T
  Index m_t = 0;
  bool m_halfStep = false;
  bool m_started = false;
  bool m_broken = false;

  // Workspace (not part of the state), sized by commit() so that no operation allocates it.
  std::vector<Coefficients> m_coefficients;
  double m_forwardSeconds = 0.0;  // see forwardSeconds()
  double m_lastLoss = std::numeric_limits<double>::quiet_NaN();  // see lastLoss()
  std::vector<unsigned char> m_blockDone;
  std::vector<std::exception_ptr> m_blockErrors;
  Eigen::VectorXd m_wd, m_g, m_work;
};

/// The optimizer of `Rule` with ratios at n / 2^RatioBits (finer ratios: 0.999 is 1047527/2^20 at
/// 20 bits) and the coder precision that keeps the buffer at the entropy bound, RatioBits + 8;
/// format and rounding as the defaults. Names the one parameter a user changes without spelling
/// the other three: `ReversibleWithRatioBits<MomentumRule, 20>` is
/// `SgdMomentum<FixedFormat<52>, BitsBackRounding, 20, 28>`.
template <class Rule, int RatioBits>
using ReversibleWithRatioBits = ReversibleOptimizer<Rule, FixedFormat<52>, BitsBackRounding, RatioBits, RatioBits + 8>;

}  // namespace hypergrad
