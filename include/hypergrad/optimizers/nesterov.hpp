// SPDX-License-Identifier: MIT
#pragma once

/// \file nesterov.hpp
/// \brief SGD with Nesterov momentum as an update rule (Sutskever et al.\ 2013, in the form
/// torch.optim.SGD(nesterov=True, dampening=0) uses):
/// \f[ v_{t+1} = \mu_t \odot v_t + g_t, \qquad w_{t+1} = w_t - \alpha_t \odot (g_t + \mu_t \odot v_{t+1}). \f]
///
/// **Not exactly reversible.** The weights' step reads g_t = ∇L(w_t) itself, so w_t cannot be
/// recovered from w_{t+1} without already knowing it: the rule declares `forwardWeights(a, c, g)`
/// (optimizers/concept.hpp), ReversibleOptimizer refuses it, ReferenceOptimizer runs it in double,
/// and CheckpointedOptimizer (checkpointed.hpp) reverses it by recomputing segments.
///
/// **Adjoint**, with dw, dv the adjoints of (w_{t+1}, v_{t+1}): at the post-step state
/// ∂f/∂α −= dw·μ v_{t+1}, ∂f/∂μ −= α dw·v_{t+1}, dv −= αμ dw; with g_t (direction)
/// ∂f/∂α −= dw·g_t and u = dv − α dw; at the pre-step state ∂f/∂μ += dv·v_t, dv ← μ dv.

#include <array>

#include <Eigen/Core>

#include "../hypergradients/result.hpp"
#include "concept.hpp"

namespace hypergrad {

/// The Nesterov momentum rule (see the file comment). States: weights, velocity. Schedules:
/// "learningRates" (real), "momenta" (in [0, 1]).
struct NesterovRule {
  static constexpr const char* name = "SGD with Nesterov momentum";  ///< For messages.

  enum : int { Weights = 0, Velocity = 1 };
  static constexpr int numStates = 2;  ///< The weights and the velocity.
  /// Names of the states.
  static constexpr std::array<const char*, 2> stateNames{{"weights", "velocity"}};

  enum : int { LearningRate = 0, Momentum = 1 };
  static constexpr int numSchedules = 2;  ///< α and μ.
  /// Keys, descriptions and domains of the schedules.
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

  /// w ← w − α (g + μ v): reads g_t, which makes the rule checkpoint-only.
  template <class A, class C, class G>
  static void forwardWeights(A& a, const C& c, G g) {
    a.subtract(Weights, c[LearningRate].value * (g + c[Momentum].value * a.value(Velocity)),
               "learning rate * (gradient + momentum * velocity)");
  }

  static constexpr bool laneCode = true;  ///< Generic in the value type (forward mode's dual numbers).

  static constexpr bool directionNeedsGradient = true;  ///< ∂w_{t+1}/∂α and u need g_t.

  /// The terms of w_{t+1} = w_t − α g_t − αμ v_{t+1} that need no g_t.
  template <class B, class C>
  static void adjointWeights(B& b, const C& c) {
    const double dw = b.adjoint(Weights), alpha = c[LearningRate].value, mu = c[Momentum].value;
    b.scheduleGradient(LearningRate) -= dw * (mu * b.value(Velocity));
    b.scheduleGradient(Momentum) -= dw * (alpha * b.value(Velocity));
    b.adjoint(Velocity) -= alpha * mu * dw;
  }

  /// ∂f/∂α −= dw·g_t, and u = (∂(w, v)_{t+1}/∂g_t)ᵀ (dw, dv) = dv − α dw.
  template <class B, class C>
  static void direction(B& b, const C& c) {
    const double dw = b.adjoint(Weights);
    b.scheduleGradient(LearningRate) -= dw * b.gradient();
    b.direction() = b.adjoint(Velocity) - c[LearningRate].value * dw;
  }

  /// v_{t+1} = μ v_t + g_t: ∂/∂μ = v_t, ∂/∂v_t = μ.
  template <class B, class C>
  static void adjointState(B& b, const C& c) {
    b.scheduleGradient(Momentum) += b.adjoint(Velocity) * b.value(Velocity);
    b.adjoint(Velocity) *= c[Momentum].value;
  }

  /// The rule's members of the result.
  struct HypergradientFields {
    Eigen::MatrixXd learningRates;    ///< ∂f/∂α, T × G
    Eigen::MatrixXd momenta;          ///< ∂f/∂μ, T × G
    Eigen::VectorXd initialVelocity;  ///< ∂f/∂v₁
  };
  /// The result member of each schedule's hypergradient.
  static constexpr std::array<Eigen::MatrixXd HypergradientFields::*, 2> scheduleFields{
      {&HypergradientFields::learningRates, &HypergradientFields::momenta}};
  /// The result member of ∂f/∂(velocity at t = 1).
  static constexpr std::array<Eigen::VectorXd HypergradientFields::*, 1> stateFields{
      {&HypergradientFields::initialVelocity}};
};

/// The result of a (checkpointed) reverse pass through Nesterov momentum.
using NesterovHypergradients = HypergradientResult<NesterovRule>;

}  // namespace hypergrad
