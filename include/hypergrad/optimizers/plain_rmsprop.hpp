// SPDX-License-Identifier: MIT
#pragma once

/// \file plain_rmsprop.hpp
/// \brief RMSprop without momentum as an update rule (Tieleman & Hinton 2012, in the form
/// torch.optim.RMSprop uses: ε outside the square root):
/// \f[ s_{t+1} = \rho_t \odot s_t + (1-\rho_t) \odot g_t^2, \qquad
///     w_{t+1} = w_t - \alpha_t \odot g_t / (\sqrt{s_{t+1}} + \epsilon_t). \f]
///
/// **Not exactly reversible.** The weights' step reads g_t itself (momentum-RMSprop, rmsprop.hpp,
/// routes it through a velocity and is reversible); this rule declares `forwardWeights(a, c, g)`
/// and is reversed by CheckpointedOptimizer over a ReferenceOptimizer.
///
/// **Adjoint**, q = √s_{t+1} + ε: nothing at the post-step state without g_t; with g_t
/// (direction) ∂f/∂α −= dw·g/q, ∂f/∂ε += dw·αg/q², ds += dw·αg/(2q²√s_{t+1}) and
/// u = −α dw/q + 2(1−ρ) g ds; at the pre-step state ∂f/∂ρ += ds·(s_t − g²), ds ← ρ ds.

#include <array>
#include <cmath>

#include <Eigen/Core>

#include "../hypergradients/result.hpp"
#include "concept.hpp"

namespace hypergrad {

/// Plain RMSprop (see the file comment). States: weights, mean square. Schedules:
/// "learningRates" (real), "decays" (ρ in [0, 1]), "epsilons" (> 0).
struct PlainRmspropRule {
  static constexpr const char* name = "RMSprop";  ///< For messages.

  enum : int { Weights = 0, MeanSquare = 1 };
  static constexpr int numStates = 2;  ///< w and s.
  /// Names of the states.
  static constexpr std::array<const char*, 2> stateNames{{"weights", "mean square"}};
  /// s is a running mean of squares.
  static constexpr std::array<StateDomain, 2> stateDomains{{StateDomain::Real, StateDomain::NonNegative}};

  enum : int { LearningRate = 0, Decay = 1, Epsilon = 2 };
  static constexpr int numSchedules = 3;  ///< α, ρ, ε.
  /// Keys, descriptions and domains of the schedules.
  static constexpr std::array<ScheduleSpec, 3> schedules{{
      {"learningRates", "learning-rate schedule", ScheduleDomain::Real},
      {"decays", "mean-square decay (rho) schedule", ScheduleDomain::Ratio},
      {"epsilons", "epsilon schedule", ScheduleDomain::Positive},
  }};

  /// s ← ρ s + (1 − ρ) g².
  template <class A, class C, class G>
  static void forwardState(A& a, const C& c, G g) {
    a.multiply(MeanSquare, c[Decay]);
    a.add(MeanSquare, (1.0 - c[Decay].value) * (g * g), "(1 - rho) * gradient^2");
  }

  /// w ← w − α g / (√s + ε), with the new s.
  template <class A, class C, class G>
  static void forwardWeights(A& a, const C& c, G g) {
    using std::sqrt;
    a.subtract(Weights, c[LearningRate].value * g / (sqrt(a.value(MeanSquare)) + c[Epsilon].value),
               "learning rate * gradient / (sqrt(mean square) + epsilon)");
  }

  static constexpr bool laneCode = true;  ///< Generic in the value type (forward mode's dual numbers).

  static constexpr bool directionNeedsGradient = true;  ///< Every term of the weights' step needs g_t.

  /// Nothing of the weights' step is known without g_t (dw passes through unchanged).
  template <class B, class C>
  static void adjointWeights(B& /*b*/, const C& /*c*/) {}

  /// The weights' step's terms (g_t and s_{t+1} known), then u.
  template <class B, class C>
  static void direction(B& b, const C& c) {
    const double dw = b.adjoint(Weights), g = b.gradient(), s = b.value(MeanSquare);
    const double alpha = c[LearningRate].value, root = std::sqrt(s), q = root + c[Epsilon].value;
    b.scheduleGradient(LearningRate) -= dw * (g / q);
    if (g != 0.0) {  // s ≥ (1 − ρ) g² > 0 then; with g = 0 the step has no s or ε dependence
      const double k = dw * (alpha * g / (q * q));
      b.scheduleGradient(Epsilon) += k;
      b.adjoint(MeanSquare) += k / (2.0 * root);
    }
    b.direction() = -(alpha * dw / q) + 2.0 * (1.0 - c[Decay].value) * g * b.adjoint(MeanSquare);
  }

  /// s_{t+1} = ρ s_t + (1 − ρ) g²: ∂/∂ρ = s_t − g², ∂/∂s_t = ρ.
  template <class B, class C>
  static void adjointState(B& b, const C& c) {
    const double g = b.gradient();
    b.scheduleGradient(Decay) += b.adjoint(MeanSquare) * (b.value(MeanSquare) - g * g);
    b.adjoint(MeanSquare) *= c[Decay].value;
  }

  /// The rule's members of the result.
  struct HypergradientFields {
    Eigen::MatrixXd learningRates;      ///< ∂f/∂α, T × G
    Eigen::MatrixXd decays;             ///< ∂f/∂ρ, T × G
    Eigen::MatrixXd epsilons;           ///< ∂f/∂ε, T × G
    Eigen::VectorXd initialMeanSquare;  ///< ∂f/∂s₁
  };
  /// The result member of each schedule's hypergradient.
  static constexpr std::array<Eigen::MatrixXd HypergradientFields::*, 3> scheduleFields{
      {&HypergradientFields::learningRates, &HypergradientFields::decays, &HypergradientFields::epsilons}};
  /// The result member of ∂f/∂(mean square at t = 1).
  static constexpr std::array<Eigen::VectorXd HypergradientFields::*, 1> stateFields{
      {&HypergradientFields::initialMeanSquare}};
};

/// The result of a (checkpointed) reverse pass through plain RMSprop.
using PlainRmspropHypergradients = HypergradientResult<PlainRmspropRule>;

}  // namespace hypergrad
