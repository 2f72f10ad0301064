// SPDX-License-Identifier: MIT
#pragma once

/// \file heavy_ball.hpp
/// \brief SGD with heavy-ball momentum in PyTorch's convention (`torch.optim.SGD` with
/// `momentum = μ`, `dampening = 0`, `nesterov = False`) as an update rule:
/// \f[ v_{t+1} = \mu_t \odot v_t + g_t, \qquad w_{t+1} = w_t - \alpha_t \odot v_{t+1}. \f]
/// `SgdHeavyBall<>` is this rule on the shared driver. It is the same dynamics as MomentumRule
/// reparameterised (v here is −v/(1−μ) there, α here is α(1−μ) there); use it to reproduce a run
/// written for PyTorch without converting hyperparameters.
///
/// **Adjoint**, with adjoints dw, dv of the state after step t:
/// \f[ \partial f/\partial\alpha_{t,k} = -\textstyle\sum_{i\in k} dw_i\, v_{t+1,i}, \quad
///     dv \mathrel{-}= \alpha_t \odot dw, \quad u = dv, \f]
/// then, at the pre-step state,
/// \f[ \partial f/\partial\mu_{t,k} = \textstyle\sum_{i\in k} dv_i\, v_{t,i}, \quad dv \mathrel{*}= \mu_t, \f]
/// and dw += H_t u, dθ += (∂_θ g_t)ᵀ u. ∂f/∂μ refers to the quantised μ actually used.
///
/// **Limits.** μ is in [0, 1]; μ = 0 (PyTorch's default, plain SGD) destroys v at every step,
/// so the exact multiply stores v whole (64 bits per weight per step). The velocity accumulates about g/(1−μ) (10× the
/// gradient at μ = 0.9, against the gradient's own size for MomentumRule), so it needs that much
/// more fixed-point range. Information: log2(1/μ) bits per weight per step.

#include <array>

#include <Eigen/Core>

#include "../config.hpp"
#include "../hypergradients/result.hpp"
#include "concept.hpp"
#include "momentum.hpp"
#include "reversible_optimizer.hpp"

namespace hypergrad {

/// Heavy-ball momentum, PyTorch's convention (see the file comment). States: weights, velocity.
/// Schedules: "learningRates" (real), "momenta" (ratios in [0, 1]).
struct HeavyBallRule {
  static constexpr const char* name = "SGD with heavy-ball momentum";  ///< For messages and saved runs.

  enum : int { Weights = 0, Velocity = 1 };
  static constexpr int numStates = 2;  ///< The weights and the velocity.
  /// Names of the states, as results and messages use them.
  static constexpr std::array<const char*, 2> stateNames{{"weights", "velocity"}};

  enum : int { LearningRate = 0, Momentum = 1 };
  static constexpr int numSchedules = 2;  ///< α (real) and the momentum (a ratio).
  /// Keys, descriptions and domains of the schedules, in the order of the enum above.
  static constexpr std::array<ScheduleSpec, 2> schedules{{
      {"learningRates", "learning-rate schedule", ScheduleDomain::Real},
      {"momenta", "momentum schedule", ScheduleDomain::Ratio},
  }};

  /// v ← μ v + g.
  template <class A, class C, class G>
  static void forwardState(A& a, const C& c, G g) {
    a.multiply(Velocity, c[Momentum]);
    a.add(Velocity, g, "gradient");
  }

  /// w ← w − α v.
  template <class A, class C>
  static void forwardWeights(A& a, const C& c) {
    a.subtract(Weights, c[LearningRate].value * a.value(Velocity), "learning rate * velocity");
  }

  static constexpr bool laneCode = true;  ///< The element code runs on LaneValue (eight elements at once).

  static constexpr bool directionNeedsGradient = false;  ///< u = dv needs no g_t.

  /// w_{t+1} = w_t − α v_{t+1}: ∂/∂α = −v_{t+1}, ∂/∂v_{t+1} = −α.
  template <class B, class C>
  static void adjointWeights(B& b, const C& c) {
    b.scheduleGradient(LearningRate) -= b.adjoint(Weights) * b.value(Velocity);
    b.adjoint(Velocity) -= c[LearningRate].value * b.adjoint(Weights);
  }

  /// ∂v_{t+1}/∂g_t = 1.
  template <class B, class C>
  static void direction(B& b, const C& /*c*/) {
    b.direction() = b.adjoint(Velocity);
  }

  /// v_{t+1} = μ v_t + g_t: ∂/∂μ = v_t, ∂/∂v_t = μ.
  template <class B, class C>
  static void adjointState(B& b, const C& c) {
    b.scheduleGradient(Momentum) += b.adjoint(Velocity) * b.value(Velocity);
    b.adjoint(Velocity) *= c[Momentum].value;
  }

  /// The same result members as MomentumRule (`learningRates`, `momenta` for μ, `initialVelocity`).
  using HypergradientFields = MomentumRule::HypergradientFields;
  /// The result member of each schedule's hypergradient.
  static constexpr std::array<Eigen::MatrixXd HypergradientFields::*, 2> scheduleFields{
      {&HypergradientFields::learningRates, &HypergradientFields::momenta}};
  /// The result member of ∂f/∂(velocity at t = 1).
  static constexpr std::array<Eigen::VectorXd HypergradientFields::*, 1> stateFields{
      {&HypergradientFields::initialVelocity}};

  /// Momentum's names for the optimizer's generic members (SgdHeavyBall::velocity(), …).
  template <class Optimizer>
  using Interface = VelocityInterface<Optimizer>;
};

/// Reversible SGD with heavy-ball momentum (PyTorch's convention). See ReversibleOptimizer for
/// the template parameters.
template <class Format = FixedFormat<52>, class Rounding = BitsBackRounding, int RatioBits = 16, int PrecisionBits = 24>
using SgdHeavyBall = ReversibleOptimizer<HeavyBallRule, Format, Rounding, RatioBits, PrecisionBits>;

/// The result of a reverse pass through SgdHeavyBall (same members as Hypergradients).
using HeavyBallHypergradients = HypergradientResult<HeavyBallRule>;

}  // namespace hypergrad
