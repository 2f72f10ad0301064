// SPDX-License-Identifier: MIT
#pragma once

/// \file sgd_momentum.hpp
/// \brief Exactly reversible SGD with momentum (Maclaurin, Duvenaud & Adams 2015, Alg. 1–2):
/// \f[ v_{t+1} = \gamma_t \odot v_t - (1-\gamma_t) \odot \nabla L(w_t, \theta, t), \qquad
///     w_{t+1} = w_t + \alpha_t \odot v_{t+1} \f]
/// in fixed point, with the bits that multiplication by γ destroys kept in an information buffer,
/// so that unstep() recovers w_t, v_t bit for bit from w_{t+1}, v_{t+1}.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "../config.hpp"
#include "../errors.hpp"
#include "../exact.hpp"
#include "../layout.hpp"
#include "../objective.hpp"
#include "../schedule.hpp"

namespace hypergrad {

/// Reversible SGD with momentum.
///
/// \tparam Format    fixed-point format of w and v (default Q11.52: range ±2048, resolution 2^-52)
/// \tparam Rounding  BitsBackRounding (default, entropy-bound memory) or FloorRounding
/// \tparam RatioBits γ is quantised to n / 2^RatioBits (default 16: resolution 1.5e-5)
/// \tparam PrecisionBits information-buffer coder precision (default 24; must exceed RatioBits)
///
/// Invariants: `iteration()` steps have been taken since `start()`; the information buffer holds
/// exactly what is needed to undo them; after `iteration()` unsteps the state is bit-identical to
/// the one given to start() and the buffer is empty (checkRecoveredStart() verifies it).
/// Every step and unstep either completes or throws leaving the state as it was, except when a
/// reverse step finds the state corrupt: the optimizer is then marked unusable (InvalidState).
///
/// **Run fingerprint.** Each forward step records a 64-bit fingerprint of the bits of the
/// gradient g_t it used: 8 bytes per iteration (O(T) memory, 0.8 MB for T = 10^5) and O(N) time
/// per step (about 14 µs for N = 44,860: 0.6% of that 784-50-50-50-10 network's batch-200
/// gradient). unstepVelocity() fingerprints the recomputed gradient and, at the FIRST iteration
/// where the two differ, throws ExactnessViolation naming it, before touching the velocity or
/// the buffer: a reverse pass run with another objective, data set, seed, batch schedule, shard
/// size or hyperparameters than the forward run, or with a non-deterministic gradient, is
/// reported at the step where it diverges instead of corrupting the state (the optimizer is left
/// as it was before that reverse step, and can still be reversed with the right objective).
template <class Format = FixedFormat<52>, class Rounding = BitsBackRounding, int RatioBits = 16, int PrecisionBits = 24>
class SgdMomentum {
  static_assert(PrecisionBits >= RatioBits + 8,
                "hypergrad::SgdMomentum: PrecisionBits must exceed RatioBits by at least 8 for the coder to reach "
                "the entropy bound (e.g. RatioBits = 16, PrecisionBits = 24)");

 public:
  using FixedFormatType = Format;
  using RatioType = Ratio<RatioBits>;
  using Fixed = FixedVector<Format::radixBits>;
  using Buffer = InformationBuffer<PrecisionBits>;
  using RoundingPolicy = Rounding;

  /// \param layout         parameter groups
  /// \param learningRates  α, T × G (any finite values)
  /// \param momenta        γ, T × G, each in (0, 1]; quantised to n / 2^RatioBits
  /// \param blockSize      information-buffer block size (elements per independent word stack)
  SgdMomentum(ParameterLayout layout, Schedule learningRates, Schedule momenta,
              Index blockSize = Buffer::defaultBlockSize)
      : m_layout(std::move(layout)), m_alpha(std::move(learningRates)), m_blockSize(blockSize) {
    if (m_layout.size() == 0) throw InvalidArgument("SgdMomentum: the parameter layout is empty");
    const Index T = m_alpha.numIterations();
    if (T <= 0) throw InvalidArgument("SgdMomentum: the learning-rate schedule has no iterations");
    m_alpha.validate(T, m_layout, "SgdMomentum: learning-rate schedule");
    momenta.validate(T, m_layout, "SgdMomentum: momentum schedule");
    m_numerators.resize(T, m_layout.numGroups());
    m_gamma.resize(T, m_layout.numGroups());
    for (Index t = 0; t < T; ++t)
      for (Index k = 0; k < m_layout.numGroups(); ++k) {
        RatioType r;
        try {
          r = RatioType::quantize(momenta(t, k), "gamma");
        } catch (const InvalidArgument& e) {  // the message gets its context only when needed
          throw InvalidArgument(detail::message("SgdMomentum: momentum at iteration ", t, ", group '",
                                                m_layout.group(k).name, "': ", e.what()));
        }
        m_numerators(t, k) = r.numerator;
        m_gamma(t, k) = r.value();
      }
  }

  /// Begins a run at iteration 0 from w₁ and v₁ (v₁ = 0 when omitted); clears the buffer.
  void start(const Eigen::VectorXd& w1, const Eigen::VectorXd& v1) {
    checkSize(w1.size(), "start: initial weights");
    checkSize(v1.size(), "start: initial velocity");
    m_w = Fixed::fromDouble(w1, "initial weights");
    m_v = Fixed::fromDouble(v1, "initial velocity");
    m_w1 = m_w;
    m_v1 = m_v;
    m_buffer = Buffer(m_layout.size(), m_blockSize);
    m_t = 0;
    m_halfStep = false;
    m_usable = true;
    m_started = true;
    m_gradientFingerprints.assign(static_cast<std::size_t>(numIterations()), 0);
  }
  void start(const Eigen::VectorXd& w1) { start(w1, Eigen::VectorXd::Zero(w1.size())); }

  /// One forward step at iteration t = iteration(): g = ∇L(w_t, θ, t), then the exact update.
  template <class Objective>
  void step(const Objective& f) {
    checkObjective<Objective>();
    requireUsable("step");
    if (m_t >= numIterations()) {
      throw InvalidState(detail::message("SgdMomentum::step: all ", numIterations(),
                                         " iterations of the schedule have been taken"));
    }
    checkObjectiveSize(f.numParameters());
    m_w.toDouble(m_wd);
    f.gradient(m_wd, m_t, m_g);
    stepWithGradient(m_g);
  }

  /// The exact update at iteration t = iteration() with a given gradient g_t (which the reverse
  /// pass must be able to recompute bit for bit).
  void stepWithGradient(const Eigen::VectorXd& g) {
    requireUsable("step");
    const Index t = m_t;
    checkSize(g.size(), "step: gradient");
    if (&g != &m_g) m_g = g;
    checkFinite(g, t, "gradient");
    const std::uint64_t fingerprint = gradientFingerprint(g);
    const std::vector<RatioRun> runs = ratioRunsAt(t);
    multiplyByRatio<Rounding, RatioBits, PrecisionBits>(m_v.data(), size(), runs, m_buffer);  // v ← γ v
    try {
      // v ← v − fix((1 − γ) g) and w ← w + fix(α v) in one pass, into scratch vectors: nothing
      // is committed until every element has fitted.
      forEachGroup(t, [&](Index k, Index i, double alpha, double gamma) {
        const std::int64_t v =
            checkedAdd(m_v[i], -fix((1.0 - gamma) * g(i), t, k, i, "(1 - gamma) * gradient"), t, k, i, "velocity");
        m_newV(i) = v;
        m_newW(i) = checkedAdd(m_w[i], fix(alpha * Format::toDouble(v), t, k, i, "learning rate * velocity"), t, k, i,
                               "weights");
      });
    } catch (...) {
      divideByRatio<Rounding, RatioBits, PrecisionBits>(m_v.data(), size(), runs, m_buffer);  // undo v ← γ v
      throw;
    }
    m_v.raw().swap(m_newV);
    m_w.raw().swap(m_newW);
    m_gradientFingerprints[static_cast<std::size_t>(t)] = fingerprint;
    ++m_t;
  }

  /// First half of a reverse step at iteration t = iteration() − 1: w_t = w_{t+1} − α_t ⊙ v_{t+1}
  /// (exact). After it, weights() is w_t and velocity() still v_{t+1}.
  void unstepWeights() {
    requireUsable("unstepWeights");
    if (m_t <= 0 || m_halfStep) {
      throw InvalidState(m_halfStep ? "SgdMomentum::unstepWeights: called twice; call unstepVelocity(g) first"
                                    : "SgdMomentum::unstepWeights: already at the first iteration; nothing to reverse");
    }
    const Index t = m_t - 1;
    forEachGroup(t, [&](Index k, Index i, double alpha, double) {
      m_newW(i) = checkedAdd(
          m_w[i], -fix(alpha * Format::toDouble(m_v[i]), t, k, i, "learning rate * velocity"), t, k, i, "weights");
    });
    m_w.raw().swap(m_newW);
    m_halfStep = true;
  }

  /// Second half: v_t = (v_{t+1} + (1 − γ_t) ⊙ g_t) / γ_t exactly, with g_t = ∇L(w_t, θ, t)
  /// recomputed at the w_t that unstepWeights() restored. Then iteration() becomes t.
  /// Throws NonFiniteValue when g is not finite, ExactnessViolation when its fingerprint differs
  /// from the one the forward step at iteration t recorded; unstepWeights() is then undone, so the
  /// optimizer is exactly as before this reverse step (iteration() = t + 1).
  void unstepVelocity(const Eigen::VectorXd& g) {
    requireUsable("unstepVelocity");
    if (!m_halfStep) throw InvalidState("SgdMomentum::unstepVelocity: call unstepWeights() first");
    const Index t = m_t - 1;
    checkSize(g.size(), "unstepVelocity: gradient");
    try {
      checkFinite(g, t, "recomputed gradient");
    } catch (...) {
      redoWeights(t);  // exact: w_{t+1} = w_t + fix(α_t v_{t+1}), the value unstepWeights() started from
      m_halfStep = false;
      throw;
    }
    if (gradientFingerprint(g) != m_gradientFingerprints[static_cast<std::size_t>(t)]) {
      redoWeights(t);
      m_halfStep = false;
      throw ExactnessViolation(detail::message(
          "SgdMomentum::unstepVelocity: the gradient recomputed at iteration ", t,
          " differs from the one the forward pass used there (64-bit fingerprint mismatch): the objective, its data, "
          "hyperparameters, seed or batch schedule changed since the forward pass, or its gradient is not "
          "deterministic (check for a stateful random generator or thread-count-dependent reductions). Nothing was "
          "changed: the optimizer is still at iteration ", t + 1, "; reverse with the forward run's objective"));
    }
    try {
      forEachGroup(t, [&](Index k, Index i, double, double gamma) {
        m_newV(i) =
            checkedAdd(m_v[i], fix((1.0 - gamma) * g(i), t, k, i, "(1 - gamma) * gradient"), t, k, i, "velocity");
      });
      m_v.raw().swap(m_newV);
      divideByRatio<Rounding, RatioBits, PrecisionBits>(m_v.data(), size(), ratioRunsAt(t), m_buffer);
    } catch (const Error& e) {
      m_usable = false;
      throw ExactnessViolation(detail::message("SgdMomentum::unstepVelocity at iteration ", t, ": ", e.what(),
                                               ". The state does not come from the forward run being reversed; this "
                                               "optimizer is now unusable until start() is called again"));
    }
    m_halfStep = false;
    --m_t;
  }

  /// A whole reverse step: unstepWeights(), g recomputed from the objective, unstepVelocity(g).
  template <class Objective>
  void unstep(const Objective& f) {
    checkObjective<Objective>();
    checkObjectiveSize(f.numParameters());
    unstepWeights();
    m_w.toDouble(m_wd);
    f.gradient(m_wd, m_t - 1, m_g);
    unstepVelocity(m_g);
  }

  /// Throws ExactnessViolation unless the state is back at iteration 0, bit-identical to what
  /// start() received, with an empty information buffer. Cheap: O(N) comparisons.
  void checkRecoveredStart() const {
    if (!m_started) throw InvalidState("SgdMomentum: start() has not been called");
    if (m_t != 0 || m_halfStep)
      throw ExactnessViolation(detail::message("SgdMomentum: the reverse pass stopped at iteration ", m_t,
                                               " instead of 0"));
    const Index wDiff = firstDifference(m_w, m_w1), vDiff = firstDifference(m_v, m_v1);
    if (wDiff >= 0 || vDiff >= 0 || !m_buffer.empty()) {
      throw ExactnessViolation(detail::message(
          "SgdMomentum: the reverse pass did not recover the initial state exactly (",
          wDiff >= 0 ? detail::message("w differs first at element ", wDiff, "; ") : std::string(),
          vDiff >= 0 ? detail::message("v differs first at element ", vDiff, "; ") : std::string(),
          m_buffer.empty() ? "buffer empty" : "information buffer not empty",
          "). The objective's gradient must be a deterministic function of (w, theta, t): check for a stateful "
          "random generator, thread-count-dependent reductions, or an objective changed between the passes"));
    }
  }

  // ---- Accessors ------------------------------------------------------------------------------

  Index size() const noexcept { return m_layout.size(); }
  Index numIterations() const noexcept { return m_alpha.numIterations(); }
  /// Number of forward steps currently applied (t of the state w_{t+1}, v_{t+1} held, 0-based).
  Index iteration() const noexcept { return m_t; }
  const ParameterLayout& layout() const noexcept { return m_layout; }
  const Schedule& learningRates() const noexcept { return m_alpha; }
  /// The quantised momentum values n/d actually used, T × G.
  const Eigen::MatrixXd& quantizedMomenta() const noexcept { return m_gamma; }
  Eigen::VectorXd weights() const { return m_w.toDouble(); }
  Eigen::VectorXd velocity() const { return m_v.toDouble(); }
  /// The same into preallocated vectors (no allocation when the size matches).
  void weights(Eigen::VectorXd& out) const { m_w.toDouble(out); }
  void velocity(Eigen::VectorXd& out) const { m_v.toDouble(out); }
  const Fixed& fixedWeights() const noexcept { return m_w; }
  const Fixed& fixedVelocity() const noexcept { return m_v; }
  const Buffer& buffer() const noexcept { return m_buffer; }
  bool usable() const noexcept { return m_usable && m_started; }
  /// The gradient used by the last forward step (or recomputed by the last unstep()).
  const Eigen::VectorXd& lastGradient() const noexcept { return m_g; }

  /// Calls fn(group k, element i, α_t[k], γ_t[k] quantised) for every element, group by group.
  template <class Fn>
  void forEachGroup(Index t, Fn&& fn) const {
    for (Index k = 0; k < m_layout.numGroups(); ++k) {
      const ParameterGroup& grp = m_layout.group(k);
      const double alpha = m_alpha(t, k), gamma = m_gamma(t, k);
      for (Index i = grp.offset; i < grp.offset + grp.size; ++i) fn(k, i, alpha, gamma);
    }
  }

 private:
  std::vector<RatioRun> ratioRunsAt(Index t) const {
    std::vector<RatioRun> runs;
    runs.reserve(static_cast<std::size_t>(m_layout.numGroups()));
    for (Index k = 0; k < m_layout.numGroups(); ++k) {
      const ParameterGroup& grp = m_layout.group(k);
      const auto n = static_cast<std::uint32_t>(m_numerators(t, k));
      if (!runs.empty() && runs.back().numerator == n) runs.back().end = grp.offset + grp.size;
      else runs.push_back(RatioRun{grp.offset, grp.offset + grp.size, n});
    }
    return runs;
  }

  // 64-bit fingerprint of the bits of g: four interleaved lanes (short dependency chains), each
  // h ← rotl((h ⊕ bits) · K, 29) — a bijection of h, so vectors differing in one element always
  // differ — then mixed with the length by a splitmix64 finaliser.
  static std::uint64_t gradientFingerprint(const Eigen::VectorXd& g) noexcept {
    constexpr std::uint64_t K = 0x9E3779B97F4A7C15ull;
    std::uint64_t h[4] = {0x243F6A8885A308D3ull, 0x13198A2E03707344ull, 0xA4093822299F31D0ull, 0x082EFA98EC4E6C89ull};
    const double* p = g.data();
    const Index n = g.size();
    auto mix = [](std::uint64_t x, double value) {
      std::uint64_t bits;
      std::memcpy(&bits, &value, sizeof bits);
      x = (x ^ bits) * K;
      return (x << 29) | (x >> 35);
    };
    Index i = 0;
    for (; i + 4 <= n; i += 4) {
      h[0] = mix(h[0], p[i]);
      h[1] = mix(h[1], p[i + 1]);
      h[2] = mix(h[2], p[i + 2]);
      h[3] = mix(h[3], p[i + 3]);
    }
    for (; i < n; ++i) h[i & 3] = mix(h[i & 3], p[i]);
    std::uint64_t x = static_cast<std::uint64_t>(n);
    for (std::uint64_t lane : h) {
      x = (x ^ lane) * K;
      x ^= x >> 31;
    }
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBull;
    return x ^ (x >> 31);
  }

  // Undoes unstepWeights() at iteration t: w += fix(α_t v_{t+1}), bit for bit.
  void redoWeights(Index t) {
    forEachGroup(t, [&](Index k, Index i, double alpha, double) {
      m_w.raw(i) += fix(alpha * Format::toDouble(m_v[i]), t, k, i, "learning rate * velocity");
    });
  }

  // Fixed-point conversion and addition whose errors name the iteration, group and element.
  std::int64_t fix(double x, Index t, Index k, Index i, const char* what) const {
    if (!(std::fabs(x) < Format::maxMagnitude)) throw overflow(t, k, i, detail::message(what, " = ", x));
    return Format::fromDouble(x, what, i);
  }
  std::int64_t checkedAdd(std::int64_t a, std::int64_t b, Index t, Index k, Index i, const char* what) const {
    std::int64_t r;
    if (__builtin_add_overflow(a, b, &r) || r == std::numeric_limits<std::int64_t>::min()) {
      throw overflow(t, k, i, detail::message(what, " ", Format::toDouble(a), (b >= 0 ? " + " : " - "),
                                              std::fabs(Format::toDouble(b))));
    }
    return r;
  }
  FixedPointOverflow overflow(Index t, Index k, Index i, const std::string& detailText) const {
    return FixedPointOverflow(detail::message(
        "SgdMomentum at iteration ", t, ", group '", m_layout.group(k).name, "', element ", i, ": ", detailText,
        " leaves the fixed-point range ±", Format::maxMagnitude, " (Q", 63 - Format::radixBits, ".", Format::radixBits,
        "). The state is unchanged. Use a smaller learning rate, or a FixedFormat with fewer fractional bits "
        "for more range"));
  }

  void checkFinite(const Eigen::VectorXd& g, Index t, const char* what) const {
    for (Index k = 0; k < m_layout.numGroups(); ++k) {
      const ParameterGroup& grp = m_layout.group(k);
      for (Index i = grp.offset; i < grp.offset + grp.size; ++i)
        if (!std::isfinite(g(i))) {
          throw NonFiniteValue(detail::message("SgdMomentum: the ", what, " at iteration ", t, ", group '", grp.name,
                                               "', element ", i, " is ", g(i),
                                               "; the state is unchanged. Lower the learning rate or check the objective"));
        }
    }
  }

  void checkSize(Index n, const char* what) const {
    if (n != size()) {
      throw InvalidArgument(detail::message("SgdMomentum::", what, " has ", n, " entries but the parameter layout has ",
                                            size()));
    }
  }
  void checkObjectiveSize(Index n) const {
    if (n != size()) {
      throw InvalidArgument(detail::message("SgdMomentum: the objective has ", n,
                                            " parameters but the parameter layout has ", size()));
    }
  }
  void requireUsable(const char* fn) {
    if (!m_started) throw InvalidState(detail::message("SgdMomentum::", fn, ": call start(w1, v1) first"));
    if (!m_usable)
      throw InvalidState(detail::message("SgdMomentum::", fn,
                                         ": an earlier reverse step found a corrupt state; call start() again"));
    m_newV.resize(size());
    m_newW.resize(size());
  }
  static Index firstDifference(const Fixed& a, const Fixed& b) {
    for (Index i = 0; i < a.size(); ++i)
      if (a[i] != b[i]) return i;
    return -1;
  }

  ParameterLayout m_layout;
  Schedule m_alpha;
  Eigen::MatrixXd m_gamma;                                                   // quantised γ, T × G
  Eigen::Matrix<std::int64_t, Eigen::Dynamic, Eigen::Dynamic> m_numerators;  // n of γ = n/d, T × G
  Index m_blockSize;

  Fixed m_w, m_v, m_w1, m_v1;
  Buffer m_buffer;
  std::vector<std::uint64_t> m_gradientFingerprints;  // fingerprint of g_t per forward step: 8 bytes × T
  Index m_t = 0;
  bool m_halfStep = false;
  bool m_usable = true;
  bool m_started = false;

  // Workspace (not part of the state).
  Eigen::VectorXd m_wd, m_g;
  typename Fixed::Storage m_newV, m_newW;  // scratch for the next v and w, swapped in on success
};

}  // namespace hypergrad
