// SPDX-License-Identifier: MIT
#pragma once

/// \file momentum.hpp
/// \brief SGD with momentum as an update rule (Maclaurin, Duvenaud & Adams 2015, Alg.\ 1–2):
/// \f[ v_{t+1} = \gamma_t \odot v_t - (1-\gamma_t) \odot g_t, \qquad
///     w_{t+1} = w_t + \alpha_t \odot v_{t+1}, \qquad g_t = \nabla_w L(w_t, \theta, t), \f]
/// with per-iteration × per-group learning rates α and momenta γ ∈ [0, 1]. `SgdMomentum<>` is
/// this rule on the shared driver (ReversibleOptimizer), and `Hypergradients` its result.
///
/// **Adjoint** (DESIGN.md §1), for a meta objective f(w_{T+1}) with adjoints dw, dv of the
/// state after step t:
/// \f[ \partial f/\partial\alpha_{t,k} = \textstyle\sum_{i\in k} dw_i\, v_{t+1,i}, \quad
///     dv \mathrel{+}= \alpha_t \odot dw, \quad u = -(1-\gamma_t)\odot dv, \f]
/// then, at the pre-step state and the recomputed g_t,
/// \f[ \partial f/\partial\gamma_{t,k} = \textstyle\sum_{i\in k} dv_i\,(v_{t,i} + g_{t,i}), \quad
///     dv \mathrel{*}= \gamma_t, \quad dw \mathrel{+}= H_t u, \quad d\theta \mathrel{+}= (\partial_\theta g_t)^\top u. \f]
/// u is scaled by (1−γ) *before* the Hessian product, which matters when γ differs between
/// groups. ∂f/∂γ refers to the quantised γ actually used (quantizedMomenta()).
///
/// **Information.** Multiplying v by γ = n/d stores log2(d/n) = log2(1/γ) bits per weight per
/// step in the buffer (0.152 at γ = 0.9); γ = 1 is an exact identity and stores nothing; γ = 0
/// (plain SGD) stores v itself, 64 bits per weight per step.

#include <array>

#include <Eigen/Core>

#include "../config.hpp"
#include "../hypergradients/result.hpp"
#include "../schedule.hpp"
#include "concept.hpp"
#include "reversible_optimizer.hpp"

namespace hypergrad {

/// The names of a two-state rule {weights, velocity} with schedules {learningRates, momenta}
/// for the optimizer's generic members: `velocity()`, `fixedVelocity()`, `learningRates()`,
/// `quantizedMomenta()`, `unstepVelocity(g)`. A CRTP base of the optimizer (see the concept's
/// `Interface`).
template <class Optimizer>
class VelocityInterface {
 public:
  /// v, the velocity (v_{t+1} after t + 1 steps).
  Eigen::VectorXd velocity() const { return self().state(1); }
  /// Writes v into `out` (resized if needed), without allocating when the size is right.
  void velocity(Eigen::VectorXd& out) const { self().state(1, out); }
  /// v in fixed point, the exact stored state.
  decltype(auto) fixedVelocity() const { return self().fixedState(1); }
  /// α as given.
  const Schedule& learningRates() const { return self().schedule(0); }
  /// The quantised momentum values n/d actually used, T × G.
  const Eigen::MatrixXd& quantizedMomenta() const { return self().scheduleValues(1); }
  /// unstepOptimizerState(g): the velocity at iteration t, exactly.
  void unstepVelocity(const Eigen::VectorXd& g) { self().unstepOptimizerState(g); }

 private:
  const Optimizer& self() const { return static_cast<const Optimizer&>(*this); }
  Optimizer& self() { return static_cast<Optimizer&>(*this); }
};

/// The momentum update rule (see the file comment). States: weights, velocity. Schedules:
/// "learningRates" (real), "momenta" (ratios in [0, 1]).
struct MomentumRule {
  static constexpr const char* name = "SGD with momentum";  ///< For messages and saved runs.

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

  /// v ← γ v − (1 − γ) g.
  template <class A, class C, class G>
  static void forwardState(A& a, const C& c, G g) {
    a.multiply(Velocity, c[Momentum]);
    a.subtract(Velocity, (1.0 - c[Momentum].value) * g, "(1 - gamma) * gradient");
  }

  /// w ← w + α v.
  template <class A, class C>
  static void forwardWeights(A& a, const C& c) {
    a.add(Weights, c[LearningRate].value * a.value(Velocity), "learning rate * velocity");
  }

  static constexpr bool laneCode = true;  ///< The element code runs on LaneValue (eight elements at once).

  static constexpr bool directionNeedsGradient = false;  ///< u = −(1 − γ) dv needs no g_t.

  /// w_{t+1} = w_t + α v_{t+1}: ∂/∂α = v_{t+1}, ∂/∂v_{t+1} = α.
  template <class B, class C>
  static void adjointWeights(B& b, const C& c) {
    b.scheduleGradient(LearningRate) += b.adjoint(Weights) * b.value(Velocity);
    b.adjoint(Velocity) += c[LearningRate].value * b.adjoint(Weights);
  }

  /// ∂v_{t+1}/∂g_t = −(1 − γ).
  template <class B, class C>
  static void direction(B& b, const C& c) {
    b.direction() = -((1.0 - c[Momentum].value) * b.adjoint(Velocity));
  }

  /// v_{t+1} = γ v_t − (1 − γ) g_t: ∂/∂γ = v_t + g_t, ∂/∂v_t = γ.
  template <class B, class C>
  static void adjointState(B& b, const C& c) {
    b.scheduleGradient(Momentum) += b.adjoint(Velocity) * (b.value(Velocity) + b.gradient());
    b.adjoint(Velocity) *= c[Momentum].value;
  }

  /// The rule's members of the result (Hypergradients).
  struct HypergradientFields {
    Eigen::MatrixXd learningRates;    ///< ∂f/∂α, T × G
    Eigen::MatrixXd momenta;          ///< ∂f/∂γ, T × G (with respect to the quantised γ used)
    Eigen::VectorXd initialVelocity;  ///< ∂f/∂v₁
  };
  /// The result member of each schedule's hypergradient.
  static constexpr std::array<Eigen::MatrixXd HypergradientFields::*, 2> scheduleFields{
      {&HypergradientFields::learningRates, &HypergradientFields::momenta}};
  /// The result member of ∂f/∂(velocity at t = 1).
  static constexpr std::array<Eigen::VectorXd HypergradientFields::*, 1> stateFields{
      {&HypergradientFields::initialVelocity}};

  /// Momentum's names for the optimizer's generic members (SgdMomentum::velocity(), …).
  template <class Optimizer>
  using Interface = VelocityInterface<Optimizer>;
};

/// Reversible SGD with momentum: MomentumRule on the shared driver (the name of the first release,
/// kept for source compatibility). See ReversibleOptimizer for the template parameters.
template <class Format = FixedFormat<52>, class Rounding = BitsBackRounding, int RatioBits = 16, int PrecisionBits = 24>
using SgdMomentum = ReversibleOptimizer<MomentumRule, Format, Rounding, RatioBits, PrecisionBits>;

/// The result of a reverse pass through SGD with momentum: `learningRates`, `momenta`,
/// `initialWeights`, `initialVelocity`, `hyperparameters`, `metaObjective`, `finalWeights`.
using Hypergradients = HypergradientResult<MomentumRule>;

}  // namespace hypergrad
