// SPDX-License-Identifier: MIT
#pragma once

/// \file rmsprop.hpp
/// \brief Exactly reversible RMSprop with momentum (Hinton's lecture 6e; TensorFlow's
/// RMSPropOptimizer with momentum) as an update rule, with per-iteration × per-group schedules
/// α_t, μ_t, ρ_t, ε_t:
/// \f[ s_{t+1} = \rho_t s_t + (1-\rho_t)\, g_t \odot g_t, \qquad
///     v_{t+1} = \mu_t v_t + \alpha_t\, g_t / \sqrt{s_{t+1} + \varepsilon_t}, \qquad
///     w_{t+1} = w_t - v_{t+1}. \f]
/// (PyTorch's RMSprop with momentum differs in two places: ε outside the root, √s + ε, and α
/// applied to the buffer instead of inside it; with constant α the trajectories are those of a
/// rescaled ε.)
///
/// **Why it reverses exactly.** s and v are updated from themselves, g_t and s_{t+1} (read after
/// its last write: the rule contract), w from v_{t+1} only; backwards, w_t = w_{t+1} + v_{t+1}, then
/// g_t at w_t, then v_t, s_t by subtracting the recomputed addends and dividing by μ, ρ. **Plain
/// RMSprop** (w ← w − α g/√(s+ε), no momentum buffer) is *not* exactly invertible: its weight
/// update needs g_t, which depends on the w_t it is recovering. Likewise Nesterov momentum.
///
/// **Information.** log2(1/μ) + log2(1/ρ) bits per weight per step (0.152 + 0.152 at 0.9/0.9).
/// Ratios are quantised to n / 2^20, as for Adam. s is stored 2^4 finer than the weights (see
/// adam.hpp: Q7.56 by default) and is never negative; ε > 0 keeps √(s + ε) ≥ √ε, so the update
/// and the adjoint are finite for finite gradients, s = 0 included.
///
/// **Adjoint** (a = √(s_{t+1} + ε); dw, dv, ds of the state after step t): dv −= dw; then, with
/// g_t at the post-step state (the rule's direction),
/// \f[ \partial f/\partial\alpha \mathrel{+}= dv\,g/a, \quad
///     \partial f/\partial\varepsilon \mathrel{+}= -dv\,\alpha g/(2a^3), \quad ds \mathrel{+}= -dv\,\alpha g/(2a^3), \quad
///     u = dv\,\alpha/a + 2(1-\rho)\,g\,ds, \f]
/// and at the pre-step state ∂f/∂μ += dv v_t, dv *= μ, ∂f/∂ρ += ds (s_t − g²), ds *= ρ.

#include <array>
#include <cmath>

#include <Eigen/Core>

#include "../config.hpp"
#include "../hypergradients/result.hpp"
#include "../schedule.hpp"
#include "concept.hpp"
#include "momentum.hpp"
#include "reversible_optimizer.hpp"

namespace hypergrad {

/// RMSprop's names for the optimizer's generic members: those of momentum (`velocity()`,
/// `learningRates()`, `quantizedMomenta()`, …) plus `meanSquare()` and `quantizedDecays()`.
template <class Optimizer>
class MeanSquareInterface : public VelocityInterface<Optimizer> {
 public:
  Eigen::VectorXd meanSquare() const { return self().state(2); }  ///< s, the running mean of g².
  decltype(auto) fixedMeanSquare() const { return self().fixedState(2); }  ///< s in fixed point (units 2^-56).
  const Eigen::MatrixXd& quantizedDecays() const { return self().scheduleValues(2); }  ///< ρ used, T × G.

 private:
  const Optimizer& self() const { return static_cast<const Optimizer&>(*this); }
};

/// The RMSprop-with-momentum update rule (see the file comment). States: weights, velocity,
/// mean square (non-negative). Schedules: "learningRates" (real), "momenta", "decays" (ratios in
/// [0, 1]), "epsilons" (> 0).
struct RmspropRule {
  static constexpr const char* name = "RMSprop with momentum";  ///< For messages and saved runs.

  enum : int { Weights = 0, Velocity = 1, MeanSquare = 2 };
  static constexpr int numStates = 3;  ///< w, v, s.
  /// Names of the states, as results and messages use them.
  static constexpr std::array<const char*, 3> stateNames{{"weights", "velocity", "mean square"}};
  /// s is a running mean of squares: start() rejects a negative s₁.
  static constexpr std::array<StateDomain, 3> stateDomains{
      {StateDomain::Real, StateDomain::Real, StateDomain::NonNegative}};
  /// s is stored 2^4 finer than the weights.
  static constexpr std::array<int, 3> stateExponents{{0, 0, 4}};

  enum : int { LearningRate = 0, Momentum = 1, Decay = 2, Epsilon = 3 };
  static constexpr int numSchedules = 4;  ///< α, μ, ρ, ε.
  /// Keys, descriptions and domains of the schedules, in the order of the enum above.
  static constexpr std::array<ScheduleSpec, 4> schedules{{
      {"learningRates", "learning-rate schedule", ScheduleDomain::Real},
      {"momenta", "momentum schedule", ScheduleDomain::Ratio},
      {"decays", "mean-square decay (rho) schedule", ScheduleDomain::Ratio},
      {"epsilons", "epsilon schedule", ScheduleDomain::Positive},
  }};

  /// s ← ρ s + (1 − ρ) g², then v ← μ v + α g / √(s + ε) with the new s.
  template <class A, class C, class G>
  static void forwardState(A& a, const C& c, G g) {
    a.multiply(MeanSquare, c[Decay]);
    a.add(MeanSquare, (1.0 - c[Decay].value) * (g * g), "(1 - rho) * gradient^2");
    a.multiply(Velocity, c[Momentum]);
    using std::sqrt;  // LaneValue's sqrt on lane groups
    a.add(Velocity, c[LearningRate].value * g / sqrt(a.value(MeanSquare) + c[Epsilon].value),
          "learning rate * gradient / sqrt(mean square + epsilon)");
  }

  /// w ← w − v.
  template <class A, class C>
  static void forwardWeights(A& a, const C& /*c*/) {
    a.subtract(Weights, a.value(Velocity), "velocity");
  }

  static constexpr bool laneCode = true;  ///< The element code runs on LaneValue (eight elements at once).

  static constexpr bool directionNeedsGradient = true;  ///< u needs g_t and s_{t+1}.

  /// w_{t+1} = w_t − v_{t+1}.
  template <class B, class C>
  static void adjointWeights(B& b, const C& /*c*/) {
    b.adjoint(Velocity) -= b.adjoint(Weights);
  }

  /// At the post-step state with g_t: the terms of v_{t+1} = μ v + α g / √(s_{t+1} + ε) that
  /// need both, then u.
  template <class B, class C>
  static void direction(B& b, const C& c) {
    const double g = b.gradient(), dv = b.adjoint(Velocity), alpha = c[LearningRate].value;
    const double a = std::sqrt(b.value(MeanSquare) + c[Epsilon].value);
    const double dRoot = -dv * alpha * g / (2.0 * a * a * a);  // ∂f/∂(s_{t+1} + ε) through v_{t+1}
    b.scheduleGradient(LearningRate) += dv * g / a;
    b.scheduleGradient(Epsilon) += dRoot;
    b.adjoint(MeanSquare) += dRoot;
    b.direction() = dv * alpha / a + 2.0 * (1.0 - c[Decay].value) * g * b.adjoint(MeanSquare);
  }

  /// At the pre-step state: v_{t+1} = μ v_t + …, s_{t+1} = ρ s_t + (1 − ρ) g².
  template <class B, class C>
  static void adjointState(B& b, const C& c) {
    const double g = b.gradient();
    b.scheduleGradient(Momentum) += b.adjoint(Velocity) * b.value(Velocity);
    b.adjoint(Velocity) *= c[Momentum].value;
    b.scheduleGradient(Decay) += b.adjoint(MeanSquare) * (b.value(MeanSquare) - g * g);
    b.adjoint(MeanSquare) *= c[Decay].value;
  }

  /// The rule's members of the result (RmspropHypergradients).
  struct HypergradientFields {
    Eigen::MatrixXd learningRates;     ///< ∂f/∂α, T × G
    Eigen::MatrixXd momenta;           ///< ∂f/∂μ, T × G (w.r.t. the quantised μ)
    Eigen::MatrixXd decays;            ///< ∂f/∂ρ, T × G (w.r.t. the quantised ρ)
    Eigen::MatrixXd epsilons;          ///< ∂f/∂ε, T × G
    Eigen::VectorXd initialVelocity;   ///< ∂f/∂v₁
    Eigen::VectorXd initialMeanSquare; ///< ∂f/∂s₁
  };
  /// The result member of each schedule's hypergradient.
  static constexpr std::array<Eigen::MatrixXd HypergradientFields::*, 4> scheduleFields{
      {&HypergradientFields::learningRates, &HypergradientFields::momenta, &HypergradientFields::decays,
       &HypergradientFields::epsilons}};
  /// The result members of ∂f/∂(v at t = 1) and ∂f/∂(s at t = 1).
  static constexpr std::array<Eigen::VectorXd HypergradientFields::*, 2> stateFields{
      {&HypergradientFields::initialVelocity, &HypergradientFields::initialMeanSquare}};

  /// RMSprop's names for the optimizer's generic members (velocity(), meanSquare(), …).
  template <class Optimizer>
  using Interface = MeanSquareInterface<Optimizer>;
};

/// Exactly reversible RMSprop with momentum: RmspropRule on the shared driver, ratios at
/// n / 2^20. Construct as `ReversibleRmsprop<>(layout, alpha, mu, rho, epsilon)`.
template <class Format = FixedFormat<52>, class Rounding = BitsBackRounding, int RatioBits = 20, int PrecisionBits = 28>
using ReversibleRmsprop = ReversibleOptimizer<RmspropRule, Format, Rounding, RatioBits, PrecisionBits>;

/// The result of a reverse pass through RMSprop with momentum: `learningRates`, `momenta`,
/// `decays`, `epsilons`, `initialWeights`, `initialVelocity`, `initialMeanSquare`, ….
using RmspropHypergradients = HypergradientResult<RmspropRule>;

}  // namespace hypergrad
