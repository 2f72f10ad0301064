// SPDX-License-Identifier: MIT
#pragma once

/// \file optimizer.hpp
/// \brief ReferenceOptimizer: any update rule in plain double arithmetic — the same element code
/// as the exact optimizer, run on doubles (reference/arithmetic.hpp). It is the independent
/// trainer that finite differences are taken of in the tests, the plain-double baseline of the
/// benchmarks, and, with TrajectoryStorage::Store, the naive store-the-trajectory reverse pass:
/// reverse() accepts it like the exact optimizer, and pops stored states instead of inverting.
///
/// Nothing is quantised: ratio schedules are used as given, so a run with the exact
/// optimizer's scheduleValues() follows its trajectory to rounding noise, and finite
/// differences can perturb any schedule entry.

#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "../config.hpp"
#include "../errors.hpp"
#include "../exact/fingerprint.hpp"
#include "../exact/ratio.hpp"
#include "../layout.hpp"
#include "../objective.hpp"
#include "../optimizers/concept.hpp"
#include "../optimizers/detail/arguments.hpp"
#include "../optimizers/schedule_set.hpp"
#include "../schedule.hpp"
#include "arithmetic.hpp"

namespace hypergrad {

/// Whether a ReferenceOptimizer keeps every state of its run (for reverse()).
enum class TrajectoryStorage {
  Discard,  ///< forward only: O(N) memory
  Store     ///< keep the state before every step: 8·S·N·T bytes, makes the run reversible
};

/// Update rule `Rule` in plain double arithmetic (see the file comment). RatioT only types the
/// schedule entries the element code reads; ratio schedules are not quantised.
template <class Rule, class RatioT = Ratio<16>>
class ReferenceOptimizer {
  static_assert((checkRule<Rule>(), true));

 public:
  using RuleType = Rule;                                 ///< The update rule.
  using Schedules = ScheduleSet<Rule, RatioT>;           ///< The validated schedules (not quantised).
  using Coefficients = typename Schedules::Coefficients;  ///< Every schedule's entry at one (t, group).
  static constexpr int numStates = Rule::numStates;      ///< S, state vectors, the weights included.
  static constexpr int numSchedules = Rule::numSchedules;  ///< J, T × G schedules.

  /// \param layout    parameter groups
  /// \param schedules the rule's schedules in its order (Rule::schedules), each T × G
  /// \param storage   TrajectoryStorage::Store to make the run reversible by reverse()
  ReferenceOptimizer(ParameterLayout layout, std::array<Schedule, static_cast<std::size_t>(numSchedules)> schedules,
                     TrajectoryStorage storage = TrajectoryStorage::Discard)
      : m_layout(std::move(layout)),
        m_schedules(m_layout, std::move(schedules), /*quantizeRatios=*/false, Rule::name),
        m_storage(storage) {}

  /// The same with the schedules as separate arguments, then optionally the storage.
  template <class... Args, std::enable_if_t<detail::schedulesThen<static_cast<std::size_t>(numSchedules),
                                                                  TrajectoryStorage, Args...>(),
                                            int> = 0>
  ReferenceOptimizer(ParameterLayout layout, Args&&... args)
      : ReferenceOptimizer(std::move(layout),
                           detail::takeSchedules<static_cast<std::size_t>(numSchedules)>(
                               std::forward_as_tuple(std::forward<Args>(args)...),
                               std::make_index_sequence<static_cast<std::size_t>(numSchedules)>()),
                           detail::takeExtra<static_cast<std::size_t>(numSchedules), TrajectoryStorage>(
                               std::forward_as_tuple(std::forward<Args>(args)...), TrajectoryStorage::Discard)) {}

  /// Begins a run at iteration 0 from the initial states (weights first; the rest default to 0).
  template <class... Initial>
  void start(const Initial&... initial) {
    static_assert(sizeof...(Initial) >= 1 && sizeof...(Initial) <= static_cast<std::size_t>(numStates),
                  "hypergrad: start() takes the initial weights and at most the rule's other states");
    std::array<Eigen::VectorXd, static_cast<std::size_t>(numStates)> s;
    int k = 0;
    (void)std::initializer_list<int>{(s[static_cast<std::size_t>(k)] = checked(initial, k), ++k)...};
    for (; k < numStates; ++k) s[static_cast<std::size_t>(k)] = Eigen::VectorXd::Zero(size());
    m_state = std::move(s);
    m_trajectory.clear();
    m_fingerprints.assign(static_cast<std::size_t>(numIterations()), 0);
    m_t = 0;
    m_halfStep = false;
    m_started = true;
  }

  /// One step at iteration t = iteration(): g = ∇L(w_t, θ, t), then the update in double.
  template <class Objective>
  void step(const Objective& f) {
    checkObjective<Objective>();
    requireForward();
    f.gradient(m_state[0], m_t, m_g);
    applyStep(m_g);
  }

  /// The update at iteration t = iteration() with a given gradient g_t.
  void stepWithGradient(const Eigen::VectorXd& g) {
    requireForward();
    if (&g != &m_g) m_g = g;
    applyStep(m_g);
  }

  // ---- The store-the-trajectory reverse interface (TrajectoryStorage::Store) ---------------------

  /// w_t from the stored trajectory.
  void unstepWeights() {
    requireStored("unstepWeights");
    if (m_halfStep || m_t == 0)
      throw InvalidState(detail::message(Rule::name, " (reference): unstepWeights() out of order"));
    m_state[0].swap(m_post);
    m_state[0] = m_trajectory[static_cast<std::size_t>(m_t - 1)][0];
    m_halfStep = true;
  }
  /// Back to w_{t+1} after unstepWeights().
  void restepWeights() {
    if (!m_halfStep) throw InvalidState(detail::message(Rule::name, " (reference): restepWeights() out of order"));
    m_state[0].swap(m_post);
    m_halfStep = false;
  }
  /// The other states at t from the stored trajectory; g must be the forward step's (checked).
  void unstepOptimizerState(const Eigen::VectorXd& g) {
    if (!m_halfStep) throw InvalidState(detail::message(Rule::name, " (reference): call unstepWeights() first"));
    const auto t = static_cast<std::size_t>(m_t - 1);
    if (fingerprint(g.data(), g.size()) != m_fingerprints[t]) {
      throw ExactnessViolation(detail::message(Rule::name, " (reference): the gradient recomputed at iteration ", t,
                                               " differs from the forward pass's"));
    }
    for (std::size_t s = 1; s < m_state.size(); ++s) m_state[s] = m_trajectory[t][s];
    m_halfStep = false;
    --m_t;
  }
  /// One reverse step from the stored trajectory (TrajectoryStorage::Store), recomputing g_t to
  /// check it against the forward step's; throws with the state unchanged.
  template <class Objective>
  void unstep(const Objective& f) {
    unstepWeights();
    try {
      f.gradient(m_state[0], m_t - 1, m_g);
      unstepOptimizerState(m_g);
    } catch (...) {
      restepWeights();
      throw;
    }
  }
  /// The stored states are the run's own: reversal ends at the start by construction.
  void checkRecoveredStart() const {
    if (m_t != 0 || m_halfStep)
      throw ExactnessViolation(detail::message(Rule::name, " (reference): the reverse pass stopped at iteration ", m_t));
  }

  // ---- A run as data (CheckpointedOptimizer resumes from its checkpoints with it) -----------------

  /// The current state vectors, the gradient fingerprints of the steps taken and the iteration.
  struct RunState {
    std::array<Eigen::VectorXd, static_cast<std::size_t>(numStates)> state;  ///< state 0 the weights
    std::vector<std::uint64_t> fingerprints;  ///< one per iteration of the schedules
    Index iteration = 0;                      ///< forward steps applied
  };
  /// A copy of the current run (requires start(); not between unstepWeights() and
  /// unstepOptimizerState()).
  RunState exportRun() const {
    if (!m_started || m_halfStep)
      throw InvalidState(detail::message(Rule::name, " (reference): exportRun needs a started run, not a half step"));
    return RunState{m_state, m_fingerprints, m_t};
  }
  /// Makes `run` the current run; InvalidArgument (nothing changed) when it does not fit these
  /// schedules and layout, or when this optimizer stores its trajectory (TrajectoryStorage::Store)
  /// and the run is past iteration 0: the states before it would be missing.
  void importRun(RunState run) {
    for (int s = 0; s < numStates; ++s)
      if (run.state[static_cast<std::size_t>(s)].size() != size())
        throw InvalidArgument(detail::message(Rule::name, " (reference): importRun: state '", Rule::stateNames[static_cast<std::size_t>(s)],
                                              "' has the wrong size for a layout of ", size(), " parameters"));
    if (static_cast<Index>(run.fingerprints.size()) != numIterations() || run.iteration < 0 ||
        run.iteration > numIterations() || (m_storage == TrajectoryStorage::Store && run.iteration > 0)) {
      throw InvalidArgument(detail::message(Rule::name, " (reference): importRun: iteration ", run.iteration, " and ",
                                            run.fingerprints.size(), " recorded steps do not fit schedules of ",
                                            numIterations(), " iterations",
                                            m_storage == TrajectoryStorage::Store ? " with the trajectory stored" : ""));
    }
    m_state = std::move(run.state);
    m_fingerprints = std::move(run.fingerprints);
    m_t = run.iteration;
    m_trajectory.clear();
    m_halfStep = false;
    m_started = true;
  }
  /// The gradient fingerprint of each forward step taken (the run record).
  const std::vector<std::uint64_t>& gradientFingerprints() const noexcept { return m_fingerprints; }

  // ---- Accessors ----------------------------------------------------------------------------------

  Index size() const noexcept { return m_layout.size(); }  ///< N, the number of parameters.
  Index numIterations() const noexcept { return m_schedules.numIterations(); }  ///< T.
  Index iteration() const noexcept { return m_t; }  ///< Forward steps currently applied.
  const ParameterLayout& layout() const noexcept { return m_layout; }  ///< The parameter groups.
  /// True between unstepWeights() and unstepOptimizerState() (or restepWeights()).
  bool halfStep() const noexcept { return m_halfStep; }
  bool started() const noexcept { return m_started; }  ///< True once start() has succeeded.
  const Schedules& schedules() const noexcept { return m_schedules; }  ///< The validated schedules.
  /// Schedule j's values, T × G: as given, also for ratio schedules.
  const Eigen::MatrixXd& scheduleValues(Index j) const { return m_schedules.used(j); }
  /// The entries of every schedule for each group at iteration t (what the element code reads).
  void coefficients(Index t, std::vector<Coefficients>& out) const { m_schedules.fill(t, out); }
  /// State s (0 = weights).
  const Eigen::VectorXd& state(Index s) const { return m_state.at(static_cast<std::size_t>(s)); }
  const Eigen::VectorXd& weights() const noexcept { return m_state[0]; }  ///< w.
  void weights(Eigen::VectorXd& out) const { out = m_state[0]; }  ///< w, copied into `out`.
  /// True when weights() equals `w` element by element (double ==; nothing is quantised here):
  /// the same check as ReversibleOptimizer::weightsEqual, so generic code can test a recovered
  /// start with either optimizer. Throws InvalidArgument for a wrong size, InvalidState before
  /// start().
  bool weightsEqual(const Eigen::VectorXd& w) const {
    if (!m_started)
      throw InvalidState(detail::message(Rule::name, " (reference): weightsEqual: call start(w1, ...) first"));
    if (w.size() != size()) {
      throw InvalidArgument(detail::message(Rule::name, " (reference): weightsEqual: w has ", w.size(),
                                            " entries but the parameter layout has ", size()));
    }
    for (Index i = 0; i < w.size(); ++i)
      if (!(m_state[0](i) == w(i))) return false;
    return true;
  }
  /// The gradient used by the last forward step (or recomputed by the last reverse step).
  const Eigen::VectorXd& lastGradient() const noexcept { return m_g; }
  /// Bytes of the stored trajectory (0 with TrajectoryStorage::Discard).
  std::size_t trajectoryBytes() const noexcept {
    std::size_t bytes = 0;
    for (const auto& states : m_trajectory)
      for (const Eigen::VectorXd& x : states) bytes += sizeof(double) * static_cast<std::size_t>(x.size());
    return bytes;
  }

  /// Element-wise reads of the current state (the reverse pass's adjoint code).
  struct StateReader {
    std::array<const double*, static_cast<std::size_t>(numStates)> x;  ///< each state's values
    double value(int s, Index i) const noexcept { return x[static_cast<std::size_t>(s)][i]; }  ///< x_s[i]
  };
  /// A reader of the current state; valid until the state next changes.
  StateReader stateReader() const noexcept {
    StateReader r;
    for (int s = 0; s < numStates; ++s) r.x[static_cast<std::size_t>(s)] = m_state[static_cast<std::size_t>(s)].data();
    return r;
  }

 private:
  template <class Derived>
  Eigen::VectorXd checked(const Eigen::MatrixBase<Derived>& x, int s) const {
    if (x.size() != size()) {
      throw InvalidArgument(detail::message(Rule::name, " (reference): start: initial ",
                                            Rule::stateNames[static_cast<std::size_t>(s)], " has ", x.size(),
                                            " entries but the parameter layout has ", size()));
    }
    if (detail::stateDomain<Rule>(s) == StateDomain::NonNegative)
      for (Index i = 0; i < x.size(); ++i)
        if (!(x(i) >= 0.0)) {
          throw InvalidArgument(detail::message(Rule::name, " (reference): start: initial ",
                                                Rule::stateNames[static_cast<std::size_t>(s)], " at element ", i,
                                                " is ", x(i), "; it must be >= 0"));
        }
    return x;
  }

  void applyStep(const Eigen::VectorXd& g) {
    if (g.size() != size()) {
      throw InvalidArgument(detail::message(Rule::name, " (reference): the gradient has ", g.size(),
                                            " entries but the parameter layout has ", size()));
    }
    const auto t = static_cast<std::size_t>(m_t);
    if (m_storage == TrajectoryStorage::Store) {
      if (m_trajectory.size() <= t) m_trajectory.resize(t + 1);
      m_trajectory[t] = m_state;
    }
    m_fingerprints[t] = fingerprint(g.data(), g.size());
    m_schedules.fill(m_t, m_coefficients);
    std::array<double*, static_cast<std::size_t>(numStates)> x;
    for (int s = 0; s < numStates; ++s) x[static_cast<std::size_t>(s)] = m_state[static_cast<std::size_t>(s)].data();
    for (Index k = 0; k < m_layout.numGroups(); ++k) {
      const ParameterGroup& grp = m_layout.group(k);
      const Coefficients& c = m_coefficients[static_cast<std::size_t>(k)];
      for (Index i = grp.offset; i < grp.offset + grp.size; ++i) {
        detail::ReferenceElement<numStates> e(x.data(), i);
        Rule::forwardState(e, c, g[i]);
        if constexpr (detail::weightsReadGradient<Rule>()) Rule::forwardWeights(e, c, g[i]);
        else Rule::forwardWeights(e, c);
      }
    }
    ++m_t;
  }

  void requireForward() const {
    if (!m_started) throw InvalidState(detail::message(Rule::name, " (reference): call start(w1, ...) first"));
    if (m_halfStep) throw InvalidState(detail::message(Rule::name, " (reference): a reverse step is half done"));
    if (m_t >= numIterations()) {
      throw InvalidState(detail::message(Rule::name, " (reference): all ", numIterations(),
                                         " iterations of the schedule have been taken"));
    }
  }
  void requireStored(const char* fn) const {
    if (m_storage != TrajectoryStorage::Store) {
      throw InvalidState(detail::message(Rule::name, " (reference): ", fn,
                                         " needs the trajectory: construct with TrajectoryStorage::Store"));
    }
  }

  ParameterLayout m_layout;
  Schedules m_schedules;
  TrajectoryStorage m_storage;
  std::array<Eigen::VectorXd, static_cast<std::size_t>(numStates)> m_state;
  std::vector<std::array<Eigen::VectorXd, static_cast<std::size_t>(numStates)>> m_trajectory;  // state before step t
  std::vector<std::uint64_t> m_fingerprints;
  Eigen::VectorXd m_post;  // w_{t+1} while a reverse step is half done
  Index m_t = 0;
  bool m_halfStep = false;
  bool m_started = false;
  Eigen::VectorXd m_g;
  std::vector<Coefficients> m_coefficients;
};

}  // namespace hypergrad
