// SPDX-License-Identifier: MIT
#pragma once

/// \file checkpointed.hpp
/// \brief CheckpointedOptimizer: the reverse pass for any update rule — also the ones that cannot
/// be inverted (Nesterov momentum, plain RMSprop) — by checkpointing (Griewank 1992): the forward
/// run keeps the state every k-th iteration, and reverse() recomputes one segment of k steps at a
/// time from its checkpoint, reading the states it needs from that segment.
///
/// Memory: ⌈T/k⌉ + k + 1 states of S·N values (k = ⌈√T⌉ by default: O(N·√T)), no information
/// buffer beyond one segment's; time: one extra forward pass (every step is recomputed once).
///
/// **What it wraps.** `Inner` is any optimizer of the reverse pass's forward interface that can
/// export and import its run: ReferenceOptimizer (plain double; every rule, the non-reversible
/// ones included) or ReversibleOptimizer (fixed point). A ReversibleOptimizer's buffer is emptied
/// at each checkpoint (the run is re-imported there with an empty buffer), so it holds at most k
/// steps' bits. With FloorRounding the exact trajectory does not depend on the buffer: the
/// checkpointed run *is* the uninterrupted run, and its hypergradients are bit-identical to the
/// exact reverse pass's (same states, same adjoint arithmetic; tested). With BitsBackRounding
/// the rounding reads the buffer, so the run is the checkpointed run's own (deterministic,
/// reproduced exactly when a segment is recomputed).
///
/// **How reverse() drives it.** reverse() calls `prepareReverseStep(f)` before each step (an
/// optional member of its optimizer interface): when the step's segment is not the cached one,
/// the inner optimizer is re-imported at the segment's checkpoint and stepped to the segment's
/// end, each recomputed gradient checked against the forward run's fingerprint
/// (ExactnessViolation otherwise); a failed recomputation puts the inner run back as it was. unstepWeights() / unstepOptimizerState(g) then move through the
/// cached states. Forward steps after a partial reversal (a failed reverse pass re-taking its
/// steps, reverseTruncated) move through the recorded trajectory.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "../config.hpp"
#include "../errors.hpp"
#include "../exact/fingerprint.hpp"
#include "../layout.hpp"
#include "../objective.hpp"

namespace hypergrad {
namespace detail {

template <class, class = void>
struct HasFixedStates : std::false_type {};
template <class O>
struct HasFixedStates<O, std::void_t<decltype(std::declval<const O&>().fixedState(0)),
                                     typename O::Buffer>> : std::true_type {};

template <class, class = void>
struct HasInnerBlockSize : std::false_type {};
template <class O>
struct HasInnerBlockSize<O, std::void_t<decltype(Index(std::declval<const O&>().blockSize()))>> : std::true_type {};

}  // namespace detail

/// Reverse-mode hypergradients by checkpointing, around optimizer `Inner` (see the file comment).
/// Use it as the optimizer: `CheckpointedOptimizer<ReferenceOptimizer<NesterovRule>> opt(inner);
/// opt.start(w1); train(opt, f); reverse(opt, f, meta);`.
template <class Inner>
class CheckpointedOptimizer {
 public:
  using InnerType = Inner;                                  ///< The wrapped optimizer.
  using RuleType = typename Inner::RuleType;                ///< The update rule.
  using Coefficients = typename Inner::Coefficients;        ///< Every schedule's entry at one (t, group).
  static constexpr int numStates = RuleType::numStates;     ///< S, the weights included.
  static constexpr int numSchedules = RuleType::numSchedules;  ///< J.

  /// Wraps `inner` (copied in; its run, if any, is replaced by start()). `interval` = k, the
  /// iterations between checkpoints; 0 takes ⌈√T⌉.
  explicit CheckpointedOptimizer(Inner inner, Index interval = 0) : m_inner(std::move(inner)) {
    const Index T = m_inner.numIterations();
    if (interval < 0) {
      throw InvalidArgument(detail::message("CheckpointedOptimizer: checkpoint interval ", interval,
                                            "; give k >= 1, or 0 for ceil(sqrt(T))"));
    }
    m_k = interval > 0 ? interval : std::max<Index>(1, static_cast<Index>(std::ceil(std::sqrt(static_cast<double>(T)))));
  }

  // ---- The forward run ------------------------------------------------------------------------------

  /// Starts a run (the inner optimizer's start(initial...)); the start is checkpoint 0.
  template <class... Initial>
  void start(const Initial&... initial) {
    m_inner.start(initial...);
    m_fingerprints.assign(static_cast<std::size_t>(numIterations()), 0);
    m_checkpoints.clear();
    m_checkpoints.push_back(snapshot());
    m_cache.clear();
    m_cacheBegin = -1;
    m_t = 0;
    m_end = 0;
    m_halfStep = false;
    m_innerAt = 0;
    m_recomputed = 0;
    m_peakBytes = memoryBytes();
  }

  /// Forward step t = iteration(). At the end of the recorded run it steps the inner optimizer
  /// (and keeps a checkpoint every k steps); inside it (after a partial reversal) it moves to the
  /// recorded state t + 1, recomputing its segment from a checkpoint when needed. Throws with
  /// nothing changed when the step fails.
  template <class Objective>
  void step(const Objective& f) {
    requireStarted("step");
    if (m_halfStep) throw InvalidState("CheckpointedOptimizer: step() between unstepWeights() and unstepOptimizerState()");
    if (m_t >= numIterations())
      throw InvalidState(detail::message("CheckpointedOptimizer: all ", numIterations(), " iterations have been taken"));
    if (m_t < m_end) {  // inside the recorded run
      prepareSegment(f, m_t);
      ++m_t;
      return;
    }
    positionInner(f, m_t);
    m_inner.step(f);
    ++m_innerAt;
    const Eigen::VectorXd& g = m_inner.lastGradient();
    m_fingerprints[static_cast<std::size_t>(m_t)] = fingerprint(g.data(), g.size());
    ++m_t;
    m_end = m_t;
    if (m_cacheBegin >= 0 && m_cacheEnd >= m_t) m_cacheBegin = -1;  // the cached segment was of another run
    if (m_t % m_k == 0 && m_t < numIterations()) {
      m_checkpoints.resize(static_cast<std::size_t>(m_t / m_k));
      m_checkpoints.push_back(snapshot());
      restartInner(m_t);  // empties a ReversibleOptimizer's buffer: it holds one segment at most
    }
    m_peakBytes = std::max(m_peakBytes, memoryBytes());
  }

  // ---- The reverse pass (reverse() drives these) ---------------------------------------------------

  /// Caches the segment holding step iteration() − 1 (recomputing it from its checkpoint).
  template <class Objective>
  void prepareReverseStep(const Objective& f) {
    requireStarted("prepareReverseStep");
    if (m_t == 0) throw InvalidState("CheckpointedOptimizer: at iteration 0 there is no step to reverse");
    prepareSegment(f, m_t - 1);
  }
  /// w_t from the cached segment (prepareReverseStep() first).
  void unstepWeights() {
    if (m_halfStep || m_t == 0 || !cached(m_t - 1))
      throw InvalidState("CheckpointedOptimizer: unstepWeights() out of order (call prepareReverseStep(f) first)");
    m_halfStep = true;
  }
  /// Back to w_{t+1} after unstepWeights().
  void restepWeights() {
    if (!m_halfStep) throw InvalidState("CheckpointedOptimizer: restepWeights() out of order");
    m_halfStep = false;
  }
  /// The other states at t; g must be the forward step's (its fingerprint is checked).
  void unstepOptimizerState(const Eigen::VectorXd& g) {
    if (!m_halfStep) throw InvalidState("CheckpointedOptimizer: call unstepWeights() first");
    if (fingerprint(g.data(), g.size()) != m_fingerprints[static_cast<std::size_t>(m_t - 1)]) {
      throw ExactnessViolation(detail::message("CheckpointedOptimizer: the gradient recomputed at iteration ", m_t - 1,
                                               " differs from the forward pass's"));
    }
    m_halfStep = false;
    --m_t;
  }
  /// One reverse step without hypergradients (train() undoes its steps with it).
  template <class Objective>
  void unstep(const Objective& f) {
    prepareReverseStep(f);
    --m_t;
    m_end = m_t;  // the steps after t are no longer part of the run
    m_checkpoints.resize(static_cast<std::size_t>(m_t / m_k + 1));
    if (m_cacheEnd > m_end) {  // keep the cached states up to the new end: the same run
      m_cacheEnd = m_end;
      m_cache.resize(static_cast<std::size_t>(m_cacheEnd - m_cacheBegin + 1));
    }
  }
  /// Throws ExactnessViolation unless the run is back at iteration 0 with the start's state.
  void checkRecoveredStart() const {
    if (m_t != 0 || m_halfStep || !cached(0))
      throw ExactnessViolation(detail::message("CheckpointedOptimizer: the reverse pass stopped at iteration ", m_t));
    const auto& start = m_checkpoints.front();
    const auto& now = m_cache.front();
    for (int s = 0; s < numStates; ++s)
      if (!sameValues(start, now, s))
        throw ExactnessViolation(detail::message("CheckpointedOptimizer: the recomputed start state '",
                                                 RuleType::stateNames[static_cast<std::size_t>(s)], "' differs from the stored one"));
  }

  /// Element-wise reads of the current state (the reverse pass's adjoint code): the cached
  /// segment's state at iteration(), the weights at iteration() − 1 while a step is half undone.
  struct StateReader {
    std::array<const double*, static_cast<std::size_t>(numStates)> x;  ///< each state's values
    double value(int s, Index i) const noexcept { return x[static_cast<std::size_t>(s)][i]; }  ///< x_s[i]
  };
  /// A reader of the current state; valid until the state next changes.
  StateReader stateReader() const {
    requireCached(m_t);
    StateReader r;
    for (int s = 0; s < numStates; ++s) r.x[static_cast<std::size_t>(s)] = current(s).data();
    return r;
  }

  // ---- Accessors ------------------------------------------------------------------------------------

  Index iteration() const noexcept { return m_t; }                            ///< Steps applied.
  Index numIterations() const noexcept { return m_inner.numIterations(); }  ///< T.
  Index size() const noexcept { return m_inner.size(); }                    ///< N.
  const ParameterLayout& layout() const noexcept { return m_inner.layout(); }  ///< The groups.
  bool halfStep() const noexcept { return m_halfStep; }  ///< Between unstepWeights() and unstepOptimizerState().
  bool started() const noexcept { return !m_checkpoints.empty(); }  ///< True once start() has succeeded.
  /// The inner optimizer's buffer block size (the reverse pass sums schedule gradients in blocks
  /// of it), when it has one.
  template <class I = Inner, std::enable_if_t<detail::HasInnerBlockSize<I>::value, int> = 0>
  Index blockSize() const noexcept {
    return m_inner.blockSize();
  }
  /// Schedule j's values used, T × G.
  const Eigen::MatrixXd& scheduleValues(Index j) const { return m_inner.scheduleValues(j); }
  /// The entries of every schedule for each group at iteration t.
  void coefficients(Index t, std::vector<Coefficients>& out) const { m_inner.coefficients(t, out); }
  /// w at iteration() (w_t while a step is half undone).
  Eigen::VectorXd weights() const {
    Eigen::VectorXd w;
    weights(w);
    return w;
  }
  /// w into `out`.
  void weights(Eigen::VectorXd& out) const {
    requireStarted("weights");
    if (m_t == m_innerAt && !m_halfStep) {
      stateOfInner(0, out);
      return;
    }
    requireCached(m_halfStep ? m_t - 1 : m_t);
    out = m_halfStep ? m_cache[static_cast<std::size_t>(m_t - 1 - m_cacheBegin)][0] : current(0);
  }
  /// The gradient of the last step the inner optimizer took.
  const Eigen::VectorXd& lastGradient() const noexcept { return m_inner.lastGradient(); }
  /// The wrapped optimizer (positioned wherever the last recomputation left it).
  const Inner& inner() const noexcept { return m_inner; }
  Index checkpointInterval() const noexcept { return m_k; }  ///< k.
  Index numCheckpoints() const noexcept { return static_cast<Index>(m_checkpoints.size()); }  ///< Stored now.
  Index recomputedSteps() const noexcept { return m_recomputed; }  ///< Forward steps recomputed since start().
  /// Bytes of the checkpoints and the cached segment now (the inner optimizer's own state and
  /// buffer not included).
  std::size_t memoryBytes() const noexcept {
    std::size_t doubles = 0;
    for (const auto& c : m_cache)
      for (const Eigen::VectorXd& x : c) doubles += static_cast<std::size_t>(x.size());
    return sizeof(double) * doubles + m_checkpoints.size() * checkpointBytes();
  }
  /// The most memoryBytes() has been since start().
  std::size_t peakMemoryBytes() const noexcept { return m_peakBytes; }

 private:
  // A checkpoint: the exact fixed-point states of a ReversibleOptimizer, or the doubles of a
  // ReferenceOptimizer.
  template <class I, bool Fixed = detail::HasFixedStates<I>::value>
  struct CheckpointOf {
    using Type = std::array<Eigen::VectorXd, static_cast<std::size_t>(numStates)>;
  };
  template <class I>
  struct CheckpointOf<I, true> {
    using Type = std::array<typename I::Fixed, static_cast<std::size_t>(numStates)>;
  };
  using Checkpoint = typename CheckpointOf<Inner>::Type;
  using States = std::array<Eigen::VectorXd, static_cast<std::size_t>(numStates)>;

  Checkpoint snapshot() const {
    Checkpoint c;
    for (int s = 0; s < numStates; ++s) {
      if constexpr (detail::HasFixedStates<Inner>::value) c[static_cast<std::size_t>(s)] = m_inner.fixedState(s);
      else c[static_cast<std::size_t>(s)] = m_inner.state(s);
    }
    return c;
  }
  std::size_t checkpointBytes() const noexcept {
    return sizeof(std::int64_t) * static_cast<std::size_t>(numStates) * static_cast<std::size_t>(size());
  }

  // Re-imports the inner optimizer at checkpoint iteration t (a multiple of k) with an empty
  // buffer.
  void restartInner(Index t) {
    const Checkpoint& c = m_checkpoints[static_cast<std::size_t>(t / m_k)];
    if constexpr (detail::HasFixedStates<Inner>::value) {
      typename Inner::RunState run{c, m_checkpoints.front(),
                                   typename Inner::Buffer(size(), m_inner.blockSize(), m_inner.options().stacksPerBlock()),
                                   m_fingerprints, t, false};
      m_inner.importRun(std::move(run));
    } else {
      m_inner.importRun(typename Inner::RunState{c, m_fingerprints, t});
    }
    m_innerAt = t;
  }

  // Runs `move` on the inner optimizer; if it throws, the inner run is put back as it was (so
  // weights() and the state reads stay where they were), and the exception goes on.
  template <class Move>
  void keepingInnerOnFailure(Move&& move) {
    auto saved = m_inner.exportRun();
    const Index savedAt = m_innerAt;
    try {
      move();
    } catch (...) {
      m_inner.importRun(std::move(saved));
      m_innerAt = savedAt;
      throw;
    }
  }

  // The inner optimizer at iteration t exactly: from the last checkpoint at or before t.
  template <class Objective>
  void positionInner(const Objective& f, Index t) {
    if (m_innerAt == t && m_inner.iteration() == t) return;
    keepingInnerOnFailure([&] {
      restartInner((t / m_k) * m_k);
      while (m_innerAt < t) recomputeStep(f);
    });
  }

  template <class Objective>
  void recomputeStep(const Objective& f) {
    const Index t = m_innerAt;
    m_inner.step(f);
    ++m_innerAt;
    ++m_recomputed;
    const Eigen::VectorXd& g = m_inner.lastGradient();
    if (fingerprint(g.data(), g.size()) != m_fingerprints[static_cast<std::size_t>(t)]) {
      throw ExactnessViolation(detail::message("CheckpointedOptimizer: recomputing iteration ", t,
                                               " from its checkpoint gave another gradient than the forward run: the "
                                               "objective is not a deterministic function of (w, theta, t)"));
    }
  }

  // Caches the states of the segment holding step t (iterations c … e, c = ⌊t/k⌋k, e its end).
  template <class Objective>
  void prepareSegment(const Objective& f, Index t) {
    if (cached(t) && cached(t + 1)) return;
    const Index c = (t / m_k) * m_k, e = std::min(c + m_k, m_end);
    std::vector<States> cache(static_cast<std::size_t>(e - c + 1));
    keepingInnerOnFailure([&] {
      restartInner(c);
      read(cache[0]);
      for (Index s = c; s < e; ++s) {
        recomputeStep(f);
        read(cache[static_cast<std::size_t>(s - c + 1)]);
      }
    });
    m_cache = std::move(cache);
    m_cacheBegin = c;
    m_cacheEnd = e;
    m_peakBytes = std::max(m_peakBytes, memoryBytes());
  }

  void read(States& out) const {
    const auto reader = m_inner.stateReader();
    for (int s = 0; s < numStates; ++s) {
      Eigen::VectorXd& x = out[static_cast<std::size_t>(s)];
      x.resize(size());
      for (Index i = 0; i < x.size(); ++i) x(i) = reader.value(s, i);
    }
  }
  void stateOfInner(int s, Eigen::VectorXd& out) const {
    const auto reader = m_inner.stateReader();
    out.resize(size());
    for (Index i = 0; i < size(); ++i) out(i) = reader.value(s, i);
  }

  bool cached(Index t) const noexcept { return m_cacheBegin >= 0 && t >= m_cacheBegin && t <= m_cacheEnd; }
  void requireCached(Index t) const {
    if (!cached(t))
      throw InvalidState(detail::message("CheckpointedOptimizer: the state at iteration ", t,
                                         " is not in the cached segment (reverse() calls prepareReverseStep(f) first)"));
  }
  // State s as the reverse pass sees it now: w at t − 1 while half stepped, else at t.
  const Eigen::VectorXd& current(int s) const {
    const Index at = (m_halfStep && s == 0) ? m_t - 1 : m_t;
    return m_cache[static_cast<std::size_t>(at - m_cacheBegin)][static_cast<std::size_t>(s)];
  }
  bool sameValues(const Checkpoint& c, const States& x, int s) const {
    const auto& a = c[static_cast<std::size_t>(s)];
    const Eigen::VectorXd& b = x[static_cast<std::size_t>(s)];
    if constexpr (detail::HasFixedStates<Inner>::value) {
      Eigen::VectorXd d;
      a.toDouble(d);
      d *= Inner::stateScaleDown(s);
      return d.size() == b.size() && (d.array() == b.array()).all();
    } else {
      return a.size() == b.size() && (a.array() == b.array()).all();
    }
  }
  void requireStarted(const char* fn) const {
    if (m_checkpoints.empty())
      throw InvalidState(detail::message("CheckpointedOptimizer: ", fn, ": call start(w1, ...) first"));
  }

  Inner m_inner;
  Index m_k = 1;
  std::vector<Checkpoint> m_checkpoints;   // at iterations 0, k, 2k, … below m_end
  std::vector<std::uint64_t> m_fingerprints;
  std::vector<States> m_cache;             // states at m_cacheBegin … m_cacheEnd
  Index m_cacheBegin = -1, m_cacheEnd = -1;
  Index m_t = 0;        // the iteration the adaptor is at
  Index m_end = 0;      // steps of the recorded run
  Index m_innerAt = 0;  // the inner optimizer's iteration
  bool m_halfStep = false;
  Index m_recomputed = 0;
  std::size_t m_peakBytes = 0;
};

}  // namespace hypergrad
