// SPDX-License-Identifier: MIT
#pragma once

/// \file adam.hpp
/// \brief Exactly reversible Adam (Kingma & Ba 2015) as an update rule, with per-iteration ×
/// per-group schedules α_t, β1_t, β2_t, ε_t:
/// \f[ m_{t+1} = \beta_{1,t} m_t + (1-\beta_{1,t})\, g_t, \qquad
///     s_{t+1} = \beta_{2,t} s_t + (1-\beta_{2,t})\, g_t \odot g_t, \f]
/// \f[ w_{t+1} = w_t - \alpha_t\, \frac{m_{t+1} / c_{1,t}}{\sqrt{s_{t+1} / c_{2,t}} + \varepsilon_t}, \qquad
///     c_{i,t} = 1 - \textstyle\prod_{\tau=0}^{t} \beta_{i,\tau}, \f]
/// g_t = ∇_w L(w_t, θ, t), t = 0, 1, … (0-based). With constant β the bias corrections c are
/// the usual 1 − β^{t+1}; with time-varying β they are one minus the running product of the
/// values used so far (ScheduleEntry::product), which is what a moment started at zero needs to
/// be unbiased. A correction that is exactly 0 (every β so far is 1, so the moment has received
/// no gradient) is taken as 1: the moment is used uncorrected.
///
/// **Why it reverses exactly.** The step is two halves, as the rule concept requires: m and s
/// are updated from themselves and g_t (×β through the information buffer, then the addition of
/// an addend recomputable from g_t), and w from (m_{t+1}, s_{t+1}) only. Backwards: w_t = w_{t+1} +
/// the same addend recomputed from (m_{t+1}, s_{t+1}); then g_t recomputed at w_t; then m_t, s_t by
/// subtracting and dividing by β. Plain RMSprop and Nesterov momentum are *not* exactly
/// invertible this way: their weight update uses g at the point being updated, which the
/// inverse cannot recompute before it has that point.
///
/// **Information.** ×β1 and ×β2 store log2(1/β1) + log2(1/β2) bits per weight per step
/// (0.152 + 0.0014 at 0.9 / 0.999); β = 1 stores nothing; β = 0 stores the moment itself (64
/// bits), and its hypergradient through the bias corrections is still defined (the reverse pass
/// chains the running products without dividing by β).
///
/// **Ratio resolution.** ReversibleAdam quantises β to n / 2^20 (not momentum's 2^16): 0.999
/// becomes 1047527/2^20, so 1 − β2 is within 0.05% of the request (at 2^16 it would be 0.8% off).
/// The values used are scheduleValues(j) / quantizedBeta1() / quantizedBeta2(), and the
/// hypergradients refer to them.
///
/// **Fixed point.** w and m use the optimizer's format (default Q11.52: range ±2048, resolution
/// 2^-52 ≈ 2.2e-16); s is stored 2^4 finer (stateExponents: default Q7.56, range ±128,
/// resolution 2^-56 ≈ 1.4e-17), because it holds squares: g² from 1e-12 (s ≈ 7·10^4 units, 1.4e-5
/// relative) to 1e2 fits, where the weights' format would resolve 1e-12 to only 2.2e-4. s ≥ 0
/// always (start() rejects a negative s₁; rounded products and addends of non-negative values
/// stay non-negative). An addend (1 − β2) g² below half the resolution rounds to 0 — with
/// β2 = 0.999, |g| < 8.3e-8 — and s then keeps its previous value (0 for a unit whose gradients
/// were all that small), so the step is α m̂ / ε there. A sustained |g| above ~11 overflows s
/// (FixedPointOverflow, state unchanged): choose a format with fewer fractional bits for more
/// range. fixedSecondMoment() is in units of 2^-56 (stateScaleDown(2) converts).
///
/// **No NaN.** ε > 0 is required (ScheduleDomain::Positive), so the denominator √ŝ + ε ≥ ε and
/// the step and every adjoint below are finite for finite inputs. At s = 0 the derivative of √
/// is infinite; the adjoint uses the slope of the secant from 0 to 2^-52, finite, and exactly 0 whenever m = 0 too (a unit that has only ever seen g = 0:
/// the step is then identically 0 along s).
///
/// **Adjoint** (per element, dw, dm, ds the adjoints of the state after step t; q = m/c1,
/// r = √(s/c2), D = r + ε, Δ = α q / D the step):
/// \f[ \partial f/\partial\alpha \mathrel{+}= -dw\,q/D, \quad dm \mathrel{+}= -dw\,\alpha/(c_1 D), \quad
///     ds \mathrel{+}= dw\,\alpha q\, r'(s)/D^2, \quad \partial f/\partial\varepsilon \mathrel{+}= dw\,\alpha q/D^2, \f]
/// \f[ \partial f/\partial P_1 \mathrel{+}= -dw\,\Delta/c_1, \quad
///     \partial f/\partial P_2 \mathrel{+}= dw\,\alpha q\,r/(2 c_2 D^2), \f]
/// with r'(s) = 1/(2 r c2) (the secant above at s = 0) and P_i = Π β_i the running products,
/// which the reverse pass chains into ∂f/∂β at every earlier iteration. The Hessian direction is
/// u = (1 − β1) dm + 2 (1 − β2) g ⊙ ds (it needs g_t), then, at the pre-step state,
/// \f[ \partial f/\partial\beta_1 \mathrel{+}= dm\,(m_t - g_t), \quad dm \mathrel{*}= \beta_1, \quad
///     \partial f/\partial\beta_2 \mathrel{+}= ds\,(s_t - g_t^2), \quad ds \mathrel{*}= \beta_2. \f]

#include <array>
#include <cmath>

#include <Eigen/Core>

#include "../config.hpp"
#include "../hypergradients/result.hpp"
#include "../schedule.hpp"
#include "concept.hpp"
#include "reversible_optimizer.hpp"

namespace hypergrad {

/// Adam's names for the optimizer's generic members: `firstMoment()`, `secondMoment()`, their
/// fixed-point forms, `learningRates()`, `quantizedBeta1()`, `quantizedBeta2()`. A CRTP base.
template <class Optimizer>
class MomentsInterface {
 public:
  Eigen::VectorXd firstMoment() const { return self().state(1); }   ///< m (m_{t+1} after t + 1 steps).
  Eigen::VectorXd secondMoment() const { return self().state(2); }  ///< s, the running mean of g².
  decltype(auto) fixedFirstMoment() const { return self().fixedState(1); }   ///< m in fixed point.
  decltype(auto) fixedSecondMoment() const { return self().fixedState(2); }  ///< s in fixed point.
  const Schedule& learningRates() const { return self().schedule(0); }       ///< α as given.
  const Eigen::MatrixXd& quantizedBeta1() const { return self().scheduleValues(1); }  ///< β1 used, T × G.
  const Eigen::MatrixXd& quantizedBeta2() const { return self().scheduleValues(2); }  ///< β2 used, T × G.

 private:
  const Optimizer& self() const { return static_cast<const Optimizer&>(*this); }
};

namespace detail {
/// Slope of √x used at x = 0: the secant from 0 to 2^-52 (see adam.hpp), 2^26.
constexpr double kSqrtSecantAtZero = 67108864.0;
}  // namespace detail

/// The Adam update rule (see the file comment). States: weights, first moment m, second moment
/// s (non-negative). Schedules: "learningRates" (real), "beta1", "beta2" (ratios in [0, 1]),
/// "epsilons" (> 0).
struct AdamRule {
  static constexpr const char* name = "Adam";  ///< For messages and saved runs.

  enum : int { Weights = 0, FirstMoment = 1, SecondMoment = 2 };
  static constexpr int numStates = 3;  ///< w, m, s.
  /// Names of the states, as results and messages use them.
  static constexpr std::array<const char*, 3> stateNames{{"weights", "first moment", "second moment"}};
  /// s is a running mean of squares: start() rejects a negative s₁.
  static constexpr std::array<StateDomain, 3> stateDomains{
      {StateDomain::Real, StateDomain::Real, StateDomain::NonNegative}};
  /// s is stored 2^4 finer than the weights (see the file comment).
  static constexpr std::array<int, 3> stateExponents{{0, 0, 4}};

  enum : int { LearningRate = 0, Beta1 = 1, Beta2 = 2, Epsilon = 3 };
  static constexpr int numSchedules = 4;  ///< α, β1, β2, ε.
  /// Keys, descriptions and domains of the schedules, in the order of the enum above.
  static constexpr std::array<ScheduleSpec, 4> schedules{{
      {"learningRates", "learning-rate schedule", ScheduleDomain::Real},
      {"beta1", "first-moment decay (beta1) schedule", ScheduleDomain::Ratio},
      {"beta2", "second-moment decay (beta2) schedule", ScheduleDomain::Ratio},
      {"epsilons", "epsilon schedule", ScheduleDomain::Positive},
  }};

  /// m ← β1 m + (1 − β1) g, s ← β2 s + (1 − β2) g².
  template <class A, class C, class G>
  static void forwardState(A& a, const C& c, G g) {
    a.multiply(FirstMoment, c[Beta1]);
    a.add(FirstMoment, (1.0 - c[Beta1].value) * g, "(1 - beta1) * gradient");
    a.multiply(SecondMoment, c[Beta2]);
    a.add(SecondMoment, (1.0 - c[Beta2].value) * (g * g), "(1 - beta2) * gradient^2");
  }

  /// w ← w − α m̂ / (√ŝ + ε). (No a·b + c in the addend: a contracted multiply-add could differ
  /// between the forward and the recorded inverse.)
  template <class A, class C>
  static void forwardWeights(A& a, const C& c) {
    a.subtract(Weights, c[LearningRate].value * normalizedMoment(a.value(FirstMoment), a.value(SecondMoment), c),
               "learning rate * Adam direction");
  }

  static constexpr bool laneCode = true;  ///< The element code runs on LaneValue (eight elements at once).

  static constexpr bool directionNeedsGradient = true;  ///< u = (1 − β1) dm + 2 (1 − β2) g ds.

  /// Adjoint of the weights half at (m_{t+1}, s_{t+1}); see the file comment. k_i = 1/c_i
  /// (ScheduleEntry::debias).
  template <class B, class C>
  static void adjointWeights(B& b, const C& c) {
    const double dw = b.adjoint(Weights);
    if (dw != 0.0) adjointOfStep(b, c, dw);
  }

  /// The body of adjointWeights for dw ≠ 0; returns q/D = m̂ / (√ŝ + ε), bit-identical to
  /// normalizedMoment() (AdamW reuses it to recover w_t).
  template <class B, class C>
  static double adjointOfStep(B& b, const C& c, double dw) {
    const double alpha = c[LearningRate].value, eps = c[Epsilon].value;
    const double k1 = c[Beta1].debias, k2 = c[Beta2].debias;
    const double m = b.value(FirstMoment), s = b.value(SecondMoment);
    const double q = m * k1, r = std::sqrt(s * k2), d = r + eps;
    const double qOverD2 = q / (d * d);
    const double rPrime = s > 0.0 ? k2 / (2.0 * r) : detail::kSqrtSecantAtZero * std::sqrt(k2);
    b.scheduleGradient(LearningRate) -= dw * (q / d);
    b.adjoint(FirstMoment) -= dw * (alpha * k1 / d);
    b.adjoint(SecondMoment) += dw * (alpha * qOverD2 * rPrime);
    b.scheduleGradient(Epsilon) += dw * (alpha * qOverD2);
    if (c[Beta1].product != 1.0) b.productGradient(Beta1) -= dw * (alpha * q / d) * k1;
    if (c[Beta2].product != 1.0) b.productGradient(Beta2) += dw * (alpha * qOverD2 * r * k2 / 2.0);
    return q / d;
  }

  /// u = (1 − β1) dm + 2 (1 − β2) g ds.
  template <class B, class C>
  static void direction(B& b, const C& c) {
    b.direction() = (1.0 - c[Beta1].value) * b.adjoint(FirstMoment) +
                    2.0 * (1.0 - c[Beta2].value) * b.gradient() * b.adjoint(SecondMoment);
  }

  /// Adjoint of the state half at (m_t, s_t) and the recomputed g_t.
  template <class B, class C>
  static void adjointState(B& b, const C& c) {
    const double g = b.gradient();
    b.scheduleGradient(Beta1) += b.adjoint(FirstMoment) * (b.value(FirstMoment) - g);
    b.adjoint(FirstMoment) *= c[Beta1].value;
    b.scheduleGradient(Beta2) += b.adjoint(SecondMoment) * (b.value(SecondMoment) - g * g);
    b.adjoint(SecondMoment) *= c[Beta2].value;
  }

  /// The rule's members of the result (AdamHypergradients).
  struct HypergradientFields {
    Eigen::MatrixXd learningRates;        ///< ∂f/∂α, T × G
    Eigen::MatrixXd beta1;                ///< ∂f/∂β1, T × G (bias corrections included; w.r.t. the quantised β1)
    Eigen::MatrixXd beta2;                ///< ∂f/∂β2, T × G (likewise)
    Eigen::MatrixXd epsilons;             ///< ∂f/∂ε, T × G
    Eigen::VectorXd initialFirstMoment;   ///< ∂f/∂m₁
    Eigen::VectorXd initialSecondMoment;  ///< ∂f/∂s₁

    /// ∂f/∂log ε_k for an ε constant over the iterations of each group: Σ_t ε_{t,k} ∂f/∂ε_{t,k}.
    Eigen::VectorXd logEpsilon(const Schedule& eps) const {
      return (eps.values().array() * epsilons.array()).colwise().sum().transpose();
    }
  };
  /// The result member of each schedule's hypergradient.
  static constexpr std::array<Eigen::MatrixXd HypergradientFields::*, 4> scheduleFields{
      {&HypergradientFields::learningRates, &HypergradientFields::beta1, &HypergradientFields::beta2,
       &HypergradientFields::epsilons}};
  /// The result members of ∂f/∂(m at t = 1) and ∂f/∂(s at t = 1).
  static constexpr std::array<Eigen::VectorXd HypergradientFields::*, 2> stateFields{
      {&HypergradientFields::initialFirstMoment, &HypergradientFields::initialSecondMoment}};

  /// Adam's names for the optimizer's generic members (firstMoment(), …).
  template <class Optimizer>
  using Interface = MomentsInterface<Optimizer>;

  /// m̂ / (√ŝ + ε) for one element at the post-step state: (m k1) / (√(s k2) + ε), one division
  /// (the bias corrections' reciprocals k_i = 1/c_i come per group with the schedules).
  /// Generic in the value type (double, or LaneValue on lane groups).
  template <class T, class C>
  static T normalizedMoment(const T& m, const T& s, const C& c) {
    using std::sqrt;
    return (m * c[Beta1].debias) / (sqrt(s * c[Beta2].debias) + c[Epsilon].value);
  }
};

/// AdamW (Loshchilov & Hutter 2019, decoupled weight decay, as torch.optim.AdamW): Adam with
/// w ← (1 − α_t λ_t) w − α_t m̂ / (√ŝ + ε), λ_t ≥ 0 a fifth schedule "weightDecays".
///
/// The decay is one more exact multiplication through the information buffer, by the derived
/// ratio ρ = 1 − αλ (+ log2(1/ρ) bits per weight per step; λ = 0 is an exact identity). ρ is
/// typically within 1e-4 of 1, far finer than 2^-20, so it is quantised to the closest fraction
/// with a denominator ≤ 2^20 (Quantization::BestFraction: αλ = 1e-5 is 1 − 99999/100000 exactly,
/// and any αλ from 2^-20 ≈ 9.5e-7 up is resolved to better than 1e-6 relative) and refused when
/// that moves αλ by more than 0.1% (ScheduleSet::derivedTolerance: αλ below 2^-20). The hypergradients refer to
/// the ρ used, chained into α and λ as if it were 1 − αλ exactly: ∂f/∂α gains −λ dw·w_t and
/// ∂f/∂λ is −α dw·w_t, summed over the group (w_t recomputed from the post-step state).
struct AdamWRule : AdamRule {
  static constexpr const char* name = "AdamW";  ///< For messages and saved runs.

  enum : int { WeightDecay = 4, DecayFactor = 5 };
  static constexpr int numSchedules = 5;  ///< α, β1, β2, ε, λ.
  /// Keys, descriptions and domains of the schedules: Adam's, then λ.
  static constexpr std::array<ScheduleSpec, 5> schedules{{
      {"learningRates", "learning-rate schedule", ScheduleDomain::Real},
      {"beta1", "first-moment decay (beta1) schedule", ScheduleDomain::Ratio},
      {"beta2", "second-moment decay (beta2) schedule", ScheduleDomain::Ratio},
      {"epsilons", "epsilon schedule", ScheduleDomain::Positive},
      {"weightDecays", "weight-decay (lambda) schedule", ScheduleDomain::NonNegative},
  }};

  static constexpr int numDerived = 1;  ///< ρ = 1 − αλ, entry c[DecayFactor].
  /// The derived decay factor.
  static constexpr std::array<ScheduleSpec, 1> derived{
      {{"decayFactors", "weight-decay factor 1 - learning rate * lambda", ScheduleDomain::Ratio}}};
  /// ρ = 1 − αλ (generic in the value type: forward mode runs it on dual numbers).
  template <class T>
  static T derive(int /*d*/, const std::array<T, 5>& v) {
    return 1.0 - v[LearningRate] * v[WeightDecay];
  }

  /// w ← ρ w − α m̂ / (√ŝ + ε).
  template <class A, class C>
  static void forwardWeights(A& a, const C& c) {
    a.multiply(Weights, c[DecayFactor]);
    AdamRule::forwardWeights(a, c);
  }

  /// Adam's adjoint, then the decay: ∂f/∂ρ = dw · w_t into α and λ, dw ← ρ dw.
  template <class B, class C>
  static void adjointWeights(B& b, const C& c) {
    const double dw = b.adjoint(Weights);
    if (dw == 0.0) return;
    const double normalized = adjointOfStep(b, c, dw);
    const double alpha = c[LearningRate].value, rho = c[DecayFactor].value;
    const double wt = (b.value(Weights) + alpha * normalized) / rho;
    const double dRho = dw * wt;
    b.scheduleGradient(LearningRate) -= c[WeightDecay].value * dRho;
    b.scheduleGradient(WeightDecay) -= alpha * dRho;
    b.adjoint(Weights) = rho * dw;
  }

  /// The rule's members of the result (AdamWHypergradients): Adam's and ∂f/∂λ.
  struct HypergradientFields : AdamRule::HypergradientFields {
    Eigen::MatrixXd weightDecays;  ///< ∂f/∂λ, T × G
  };
  /// The result member of each schedule's hypergradient.
  static constexpr std::array<Eigen::MatrixXd HypergradientFields::*, 5> scheduleFields{
      {&HypergradientFields::learningRates, &HypergradientFields::beta1, &HypergradientFields::beta2,
       &HypergradientFields::epsilons, &HypergradientFields::weightDecays}};
  /// The result members of ∂f/∂(m at t = 1) and ∂f/∂(s at t = 1).
  static constexpr std::array<Eigen::VectorXd HypergradientFields::*, 2> stateFields{
      {&HypergradientFields::initialFirstMoment, &HypergradientFields::initialSecondMoment}};
};

/// Exactly reversible Adam: AdamRule on the shared driver, ratios at n / 2^20 (see the file
/// comment). Construct as `ReversibleAdam<>(layout, alpha, beta1, beta2, epsilon)`.
template <class Format = FixedFormat<52>, class Rounding = BitsBackRounding, int RatioBits = 20, int PrecisionBits = 28>
using ReversibleAdam = ReversibleOptimizer<AdamRule, Format, Rounding, RatioBits, PrecisionBits>;

/// Exactly reversible AdamW: AdamWRule on the shared driver. Construct as
/// `ReversibleAdamW<>(layout, alpha, beta1, beta2, epsilon, lambda)`.
template <class Format = FixedFormat<52>, class Rounding = BitsBackRounding, int RatioBits = 20, int PrecisionBits = 28>
using ReversibleAdamW = ReversibleOptimizer<AdamWRule, Format, Rounding, RatioBits, PrecisionBits>;

/// The result of a reverse pass through AdamW: Adam's members and `weightDecays` (∂f/∂λ).
using AdamWHypergradients = HypergradientResult<AdamWRule>;

/// The result of a reverse pass through Adam: `learningRates`, `beta1`, `beta2`, `epsilons`,
/// `initialWeights`, `initialFirstMoment`, `initialSecondMoment`, `hyperparameters`, ….
using AdamHypergradients = HypergradientResult<AdamRule>;

}  // namespace hypergrad
