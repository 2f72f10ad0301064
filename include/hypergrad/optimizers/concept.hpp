// SPDX-License-Identifier: MIT
#pragma once

/// \file concept.hpp
/// \brief The reversible update-rule concept: what an optimizer's update must say so that one
/// shared driver (ReversibleOptimizer) can run it forward in exact arithmetic, invert it bit for
/// bit, run it in plain double as a reference, and one generic reverse pass can differentiate it.
/// Written down three ways, like the objective concept: the table below, detection traits, and
/// checkRule<R>(), whose static_assert messages name the missing member.
///
/// **Why the update splits in two halves.** A step is exactly invertible when it is a
/// composition of pieces that each update one state vector from the *others*: an addition of an
/// addend that can be recomputed bit for bit (undone by subtracting the same bits), or a
/// multiplication by a ratio n/d through the information buffer (undone by the division). The
/// weights w may be updated only from the other state vectors (v; m, s), and those only from
/// themselves and g_t = ∇L(w_t): then the reverse pass restores w_t first (forwardWeights
/// inverted), recomputes g_t at w_t, and restores the rest (forwardState inverted). Nesterov
/// momentum and plain RMSprop update w from g(w) itself: they are written with
/// `forwardWeights(a, c, g)` (below), run in double and are reversed by checkpointing.
///
/// **The rule is written once**, as element code templated on an *arithmetic* `a` bound to one
/// element i: the exact arithmetic (fixed point + information buffer) runs it forward, records it
/// to run it backwards, and the reference arithmetic runs it in plain double. Each operation
/// names a state by its index s (0 is the weights):
///
/// | arithmetic expression   | exact (fixed point)                                  | reference (double) |
/// |-------------------------|------------------------------------------------------|--------------------|
/// | `a.multiply(s, c[j])`   | x_s ← x_s · n/d through the buffer (c[j] a ratio schedule's entry) | x_s ← x_s · value |
/// | `a.add(s, x, "what")`   | x_s ← x_s + round(x · 2^R), overflow checked ("what" names x in errors) | x_s ← x_s + x |
/// | `a.subtract(s, x, "what")` | x_s ← x_s − round(x · 2^R), overflow checked      | x_s ← x_s − x      |
/// | `a.value(s)`            | the current value of x_s as a double                  | x_s                |
///
/// One contract makes the recorded inverse exact: **no state is written after it has been read**
/// within a step (read your inputs in their final form). The inverse evaluates the same element
/// code at the post-step state and undoes the recorded operations in reverse order; under this
/// contract every addend it recomputes sees the values the forward saw. The driver checks the
/// contract (and that forwardWeights writes only w, forwardState never w) when it is constructed.
/// The addends must also come out bit-identical when recomputed: values from `a.value(s)` are
/// materialised doubles, but an expression of the rule's own such as `x * y + z` may be contracted
/// into a fused multiply-add differently in the two passes when built with FMA and
/// -ffp-contract=fast; write it so it has no such pattern (a reversal that did not recover the
/// start is reported by checkRecoveredStart(), never silent).
///
/// **Rule concept** — `R` a rule type, `a` an element arithmetic, `c` the step's coefficients
/// (`const std::array<ScheduleEntry<RatioT>, R::numSchedules + D>&`: entry j of schedule j at
/// (iteration t, the element's group)), `g` the element's g_t (a double):
///
/// | expression                         | meaning                                                                 |
/// |------------------------------------|-------------------------------------------------------------------------|
/// | `R::name`                          | `const char*`, e.g. "SGD with momentum" (messages, saved runs)          |
/// | `R::numStates`                     | S ≥ 1, the number of state vectors; state 0 is the weights w            |
/// | `R::stateNames`                    | `std::array<const char*, S>`, e.g. {"weights", "velocity"}              |
/// | `R::numSchedules`                  | J ≥ 1, the number of T × G schedules                                    |
/// | `R::schedules`                     | `std::array<ScheduleSpec, J>`: key, description and domain of each      |
/// | `R::forwardState(a, c, g)`         | the g-dependent half: updates states 1 … S−1 from g and themselves      |
/// | `R::forwardWeights(a, c)`          | w ← w + addend computed from states 1 … S−1                             |
/// | or `R::forwardWeights(a, c, g)`    | the same reading g_t too (Nesterov momentum, plain RMSprop): the rule is *not exactly reversible*; ReversibleOptimizer refuses it, ReferenceOptimizer runs it and CheckpointedOptimizer reverses it (adjoint terms that need g_t go in `direction`, with directionNeedsGradient) |
/// | `R::directionNeedsGradient`        | `bool`: whether the Hessian direction u needs g_t (Adam: yes)           |
/// | `R::adjointWeights(b, c)`          | adjoint of forwardWeights at the post-step state (see below)           |
/// | `R::direction(b, c)`               | u = (∂ state_{t+1} / ∂ g_t)ᵀ d state_{t+1}: sets `b.direction()`; once per step, after adjointWeights, at the post-step state; when directionNeedsGradient it may also add the adjoint terms that need both g_t and the post-step state (RMSprop) |
/// | `R::adjointState(b, c)`            | adjoint of forwardState at the pre-step state, given g_t                |
/// | `R::numDerived`, `R::derived`, `R::derive(d, v)` | optional: D ≥ 0 derived entries `c[J + d]`, computed per (iteration, group) from the J schedules' values `v` (`std::array<double, J>`) by `derive(d, v)`, with domain and description in `derived[d]` (a ScheduleSpec; its key names it in reports). A derived ratio (AdamW's 1 − αλ) is quantised to the closest fraction with d ≤ 2^RatioBits (Quantization::BestFraction) and refused when that moves 1 − value by more than 0.1%. Its hypergradient is the rule's to chain into the schedules it comes from |
/// | `R::stateDomains`                  | optional: `std::array<StateDomain, S>`; start() rejects a negative entry of a NonNegative state |
/// | `R::stateExponents`                | optional: `std::array<int, S>`, e_s: state s is stored in units of 2^-(R + e_s) (range ±2^(63−R−e_s)) instead of the format's 2^-R; e_0 must be 0 |
/// | `R::laneCode`                      | optional: `true` declares forwardState and forwardWeights generic in their value type — g a template parameter, values combined only with + − × ÷ and unqualified `sqrt` (after `using std::sqrt;`), no branch on a value — so that the kernel runs them once per group of eight elements on LaneValue (exact/lane_value.hpp) instead of eight times; same bits (tests/optimizers/test_lane_kernel.cpp). Without it, lane groups replay the element code lane by lane |
/// | `R::HypergradientFields`           | a struct of named result members (e.g. `learningRates`, `initialVelocity`) |
/// | `R::scheduleFields`                | `std::array<Eigen::MatrixXd Fields::*, J>`: schedule j's T × G result   |
/// | `R::stateFields`                   | `std::array<Eigen::VectorXd Fields::*, S−1>`: ∂f/∂(state s at t = 1), s ≥ 1 |
/// | `R::Interface<Opt>`                | optional: a CRTP base giving the rule's own names to the optimizer's generic members (e.g. `velocity()`) |
/// | `R::tangent(…)`                    | reserved for forward mode (not used yet)                                |
///
/// The adjoint functions receive an adjoint context `b` bound to one element: `b.value(s)` (state s
/// at the post-step state in adjointWeights and direction, at the pre-step state in
/// adjointState), `b.adjoint(s)` (`double&`, ∂f/∂ state s), `b.gradient()` (g_t; in adjointState,
/// and in direction when directionNeedsGradient), `b.direction()` (`double&`, u) and
/// `b.scheduleGradient(j)` (`double&`, the running sum of ∂f/∂ schedule j over the element's group at
/// this iteration) and `b.productGradient(j)` (`double&`, the same for the running product
/// `c[j].product` of a ratio schedule, which the reverse pass chains into ∂f/∂ schedule j at every
/// earlier iteration: Adam's bias corrections). With u so defined, the generic reverse pass does dw ← dw + H_t u and
/// dθ ← dθ + (∂_θ g_t)ᵀ u (one Hessian-vector product and one mixed product per step).

#include <array>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>

#include <Eigen/Core>

#include "../config.hpp"
#include "../errors.hpp"

namespace hypergrad {

/// Domain of a schedule's entries.
enum class ScheduleDomain {
  Real,      ///< any finite value (learning rates)
  Ratio,       ///< [0, 1], quantised to a ratio n/d and applied exactly through the information buffer (0 stores the whole value: 64 bits)
  Positive,    ///< finite and > 0 (Adam's ε)
  NonNegative  ///< finite and ≥ 0 (AdamW's weight decay λ)
};

/// Domain of a state vector's entries, checked by start().
enum class StateDomain {
  Real,        ///< any value in the fixed-point range
  NonNegative  ///< ≥ 0 (a running mean of squares); the rule's update keeps it so
};

/// One named schedule of an update rule.
struct ScheduleSpec {
  const char* key;          ///< its name in results and lookups, e.g. "learningRates"
  const char* description;  ///< its name in messages, e.g. "learning-rate schedule"
  ScheduleDomain domain;    ///< real, or a ratio applied through the information buffer
};

/// The value of one schedule at one (iteration, group), as the element code sees it.
template <class RatioT>
struct ScheduleEntry {
  double value = 0.0;    ///< the value used: as given (real schedules) or the ratio n/d (ratio schedules)
  RatioT ratio{};        ///< the ratio itself (ratio schedules only)
  /// Ratio schedules: the running product of the values used at iterations 0 … t (this one
  /// included), multiplied in that order in double; 1 for the other domains.
  double product = 1.0;
  /// Ratio schedules: the running product before this iteration (1 at t = 0).
  double previousProduct = 1.0;
  /// Ratio schedules: 1 / (1 − product), the bias correction of a running mean started at zero
  /// (Adam's m̂ = m · debias), or 1 when product is 1 (nothing averaged yet); 1 for the others.
  double debias = 1.0;
};

namespace detail {

template <class, class = void>
struct HasRuleName : std::false_type {};
template <class R>
struct HasRuleName<R, std::void_t<decltype(static_cast<const char*>(R::name))>> : std::true_type {};

template <class, class = void>
struct HasRuleStates : std::false_type {};
template <class R>
struct HasRuleStates<R, std::void_t<decltype(std::integral_constant<int, R::numStates>{}),
                                    decltype(static_cast<const char*>(R::stateNames[0]))>>
    : std::bool_constant<(R::numStates >= 1 && std::tuple_size<std::decay_t<decltype(R::stateNames)>>::value ==
                                                   static_cast<std::size_t>(R::numStates))> {};

template <class, class = void>
struct HasRuleSchedules : std::false_type {};
template <class R>
struct HasRuleSchedules<R, std::void_t<decltype(std::integral_constant<int, R::numSchedules>{}),
                                       decltype(static_cast<ScheduleSpec>(R::schedules[0]))>>
    : std::bool_constant<(R::numSchedules >= 1 && std::tuple_size<std::decay_t<decltype(R::schedules)>>::value ==
                                                      static_cast<std::size_t>(R::numSchedules))> {};

template <class, class = void>
struct HasDirectionFlag : std::false_type {};
template <class R>
struct HasDirectionFlag<R, std::void_t<decltype(std::bool_constant<R::directionNeedsGradient>{})>> : std::true_type {};

/// A stand-in element arithmetic and adjoint context: the traits below ask whether the rule's
/// element code compiles against the documented expressions and nothing else.
struct ConceptArithmetic {
  template <class Entry>
  void multiply(int /*s*/, const Entry& /*ratio*/) {}
  void add(int /*s*/, double /*x*/, const char* /*what*/ = "") {}
  void subtract(int /*s*/, double /*x*/, const char* /*what*/ = "") {}
  double value(int /*s*/) const { return 0.0; }
};
class ConceptAdjoint {
 public:
  double value(int /*s*/) const { return 0.0; }
  double& adjoint(int /*s*/) { return m_x; }
  double gradient() const { return 0.0; }
  double& direction() { return m_x; }
  double& scheduleGradient(int /*j*/) { return m_x; }
  double& productGradient(int /*j*/) { return m_x; }

 private:
  double m_x = 0.0;
};
struct ConceptRatio {
  std::uint32_t numerator = 1;
  double value() const { return 1.0; }
};

template <class, class = void>
struct HasDerived : std::false_type {};
template <class R>
struct HasDerived<R, std::void_t<decltype(std::integral_constant<int, R::numDerived>{}),
                                 decltype(static_cast<ScheduleSpec>(R::derived[0])),
                                 decltype(static_cast<double>(R::derive(
                                     0, std::declval<const std::array<double, static_cast<std::size_t>(R::numSchedules)>&>())))>>
    : std::true_type {};

/// D, the rule's derived entries (0 unless it declares them).
template <class R>
constexpr int numDerived() {
  if constexpr (HasDerived<R>::value) return R::numDerived;
  else return 0;
}

template <class R, class = void>
struct ConceptCoefficients {
  using Type = std::array<ScheduleEntry<ConceptRatio>, 1>;
};
template <class R>
struct ConceptCoefficients<R, std::enable_if_t<HasRuleSchedules<R>::value>> {
  using Type = std::array<ScheduleEntry<ConceptRatio>, static_cast<std::size_t>(R::numSchedules + numDerived<R>())>;
};
template <class R>
using ConceptCoefficientsT = typename ConceptCoefficients<R>::Type;

template <class, class = void>
struct HasForwardState : std::false_type {};
template <class R>
struct HasForwardState<R, std::void_t<decltype(R::forwardState(std::declval<ConceptArithmetic&>(),
                                                                std::declval<const ConceptCoefficientsT<R>&>(), 0.0))>>
    : std::true_type {};

template <class, class = void>
struct HasForwardWeights : std::false_type {};
template <class R>
struct HasForwardWeights<R, std::void_t<decltype(R::forwardWeights(std::declval<ConceptArithmetic&>(),
                                                                    std::declval<const ConceptCoefficientsT<R>&>()))>>
    : std::true_type {};

/// A rule whose weights half reads g_t: `forwardWeights(a, c, g)` (Nesterov momentum, plain
/// RMSprop). It cannot be inverted (w_t is needed to recompute g_t, which w_{t+1} needs), so the
/// exact driver refuses it; ReferenceOptimizer runs it and CheckpointedOptimizer reverses it.
template <class, class = void>
struct HasForwardWeightsWithGradient : std::false_type {};
template <class R>
struct HasForwardWeightsWithGradient<R, std::void_t<decltype(R::forwardWeights(std::declval<ConceptArithmetic&>(),
                                                                                std::declval<const ConceptCoefficientsT<R>&>(),
                                                                                0.0))>>
    : std::true_type {};

/// True for rule R when its weights half reads g_t (see HasForwardWeightsWithGradient).
template <class R>
constexpr bool weightsReadGradient() {
  return !HasForwardWeights<R>::value && HasForwardWeightsWithGradient<R>::value;
}

template <class, class = void>
struct HasAdjointWeights : std::false_type {};
template <class R>
struct HasAdjointWeights<R, std::void_t<decltype(R::adjointWeights(std::declval<ConceptAdjoint&>(),
                                                                    std::declval<const ConceptCoefficientsT<R>&>()))>>
    : std::true_type {};

template <class, class = void>
struct HasDirection : std::false_type {};
template <class R>
struct HasDirection<R, std::void_t<decltype(R::direction(std::declval<ConceptAdjoint&>(),
                                                          std::declval<const ConceptCoefficientsT<R>&>()))>>
    : std::true_type {};

template <class, class = void>
struct HasAdjointState : std::false_type {};
template <class R>
struct HasAdjointState<R, std::void_t<decltype(R::adjointState(std::declval<ConceptAdjoint&>(),
                                                                std::declval<const ConceptCoefficientsT<R>&>()))>>
    : std::true_type {};

template <class, class = void>
struct HasHypergradientFields : std::false_type {};
template <class R>
struct HasHypergradientFields<
    R, std::void_t<typename R::HypergradientFields,
                   decltype(static_cast<Eigen::MatrixXd R::HypergradientFields::*>(R::scheduleFields[0]))>>
    : std::true_type {};

template <class, class = void>
struct HasStateFields : std::false_type {};
template <class R>
struct HasStateFields<R, std::void_t<typename R::HypergradientFields, decltype(R::stateFields)>>
    : std::bool_constant<std::tuple_size<std::decay_t<decltype(R::stateFields)>>::value + 1 ==
                         static_cast<std::size_t>(R::numStates)> {};

template <class, class, class = void>
struct HasRuleInterface : std::false_type {};
template <class R, class Opt>
struct HasRuleInterface<R, Opt, std::void_t<typename R::template Interface<Opt>>> : std::true_type {};

template <class, class = void>
struct HasStateDomains : std::false_type {};
template <class R>
struct HasStateDomains<R, std::void_t<decltype(static_cast<StateDomain>(R::stateDomains[0]))>> : std::true_type {};

/// The domain of rule R's state s: R::stateDomains[s] when the rule declares them, else Real.
template <class R>
constexpr StateDomain stateDomain(int s) {
  if constexpr (HasStateDomains<R>::value) return R::stateDomains[static_cast<std::size_t>(s)];
  else return StateDomain::Real;
}

template <class, class = void>
struct HasStateExponents : std::false_type {};
template <class R>
struct HasStateExponents<R, std::void_t<decltype(static_cast<int>(R::stateExponents[0]))>> : std::true_type {};

/// e_s of rule R's state s (R::stateExponents[s] when declared, else 0).
template <class R>
constexpr int stateExponent(int s) {
  if constexpr (HasStateExponents<R>::value) return R::stateExponents[static_cast<std::size_t>(s)];
  else return 0;
}

/// The power-of-two factors between rule R's state values and the format's units: a state
/// value x is stored as the format's fixed-point of x · up(s), read back as double · down(s).
/// Multiplying by a power of two is exact, so the conversions stay bit-reproducible.
template <class R>
struct StateScaling {
  static constexpr bool identity() {
    for (int s = 0; s < R::numStates; ++s)
      if (stateExponent<R>(s) != 0) return false;
    return true;
  }
  static constexpr double pow2(int e) {
    double x = 1.0;
    for (int k = 0; k < e; ++k) x *= 2.0;
    for (int k = 0; k > e; --k) x *= 0.5;
    return x;
  }
  static constexpr double up(int s) { return pow2(stateExponent<R>(s)); }
  static constexpr double down(int s) { return pow2(-stateExponent<R>(s)); }
};

/// The optimizer's base: the rule's named accessors when it has them, else nothing.
struct NoRuleInterface {};
template <class R, class Opt, class = void>
struct RuleInterfaceOf {
  using Type = NoRuleInterface;
};
template <class R, class Opt>
struct RuleInterfaceOf<R, Opt, std::enable_if_t<HasRuleInterface<R, Opt>::value>> {
  using Type = typename R::template Interface<Opt>;
};

}  // namespace detail

/// True when R satisfies the update-rule concept (see the table in this file).
template <class R>
inline constexpr bool isUpdateRule =
    detail::HasRuleName<R>::value && detail::HasRuleStates<R>::value && detail::HasRuleSchedules<R>::value &&
    detail::HasDirectionFlag<R>::value && detail::HasForwardState<R>::value &&
    (detail::HasForwardWeights<R>::value || detail::HasForwardWeightsWithGradient<R>::value) &&
    detail::HasAdjointWeights<R>::value && detail::HasDirection<R>::value && detail::HasAdjointState<R>::value &&
    detail::HasHypergradientFields<R>::value && detail::HasStateFields<R>::value;

/// Compile-time check of the update-rule concept, one message per missing member. Call as
/// `checkRule<R>();`.
template <class R>
constexpr void checkRule() {
  static_assert(detail::HasRuleName<R>::value,
                "hypergrad: the update rule lacks `static constexpr const char* name` (see optimizers/concept.hpp)");
  static_assert(detail::HasRuleStates<R>::value,
                "hypergrad: the update rule lacks `static constexpr int numStates` (>= 1, state 0 = weights) with "
                "`static constexpr std::array<const char*, numStates> stateNames` (see optimizers/concept.hpp)");
  static_assert(detail::HasRuleSchedules<R>::value,
                "hypergrad: the update rule lacks `static constexpr int numSchedules` (>= 1) with "
                "`static constexpr std::array<ScheduleSpec, numSchedules> schedules` (see optimizers/concept.hpp)");
  static_assert(detail::HasDirectionFlag<R>::value,
                "hypergrad: the update rule lacks `static constexpr bool directionNeedsGradient` (see "
                "optimizers/concept.hpp)");
  static_assert(detail::HasForwardState<R>::value,
                "hypergrad: the update rule lacks `template <class A, class C> static void forwardState(A& a, const C& "
                "c, double g)`, the g-dependent half of the step (see optimizers/concept.hpp)");
  static_assert(detail::HasForwardWeights<R>::value || detail::HasForwardWeightsWithGradient<R>::value,
                "hypergrad: the update rule lacks `template <class A, class C> static void forwardWeights(A& a, const "
                "C& c)`, the weights half of the step (or `forwardWeights(a, c, g)` for a rule that is not exactly "
                "reversible; see optimizers/concept.hpp)");
  static_assert(detail::HasAdjointWeights<R>::value,
                "hypergrad: the update rule lacks `template <class B, class C> static void adjointWeights(B& b, const "
                "C& c)` (see optimizers/concept.hpp)");
  static_assert(detail::HasDirection<R>::value,
                "hypergrad: the update rule lacks `template <class B, class C> static void direction(B& b, const C& "
                "c)`, the Hessian-vector product's direction u (see optimizers/concept.hpp)");
  static_assert(detail::HasAdjointState<R>::value,
                "hypergrad: the update rule lacks `template <class B, class C> static void adjointState(B& b, const C& "
                "c)` (see optimizers/concept.hpp)");
  static_assert(detail::HasHypergradientFields<R>::value,
                "hypergrad: the update rule lacks `struct HypergradientFields` with `static constexpr std::array<"
                "Eigen::MatrixXd HypergradientFields::*, numSchedules> scheduleFields` (see optimizers/concept.hpp)");
  static_assert(detail::HasStateFields<R>::value,
                "hypergrad: the update rule lacks `static constexpr std::array<Eigen::VectorXd HypergradientFields::*, "
                "numStates - 1> stateFields`, the result members of the initial states after the weights (see "
                "optimizers/concept.hpp)");
}

/// Index of rule R's schedule whose key is `key` ("learningRates"); InvalidArgument naming the
/// rule's keys otherwise.
template <class R>
Index scheduleIndex(const std::string& key) {
  std::string keys;
  for (std::size_t j = 0; j < R::schedules.size(); ++j) {
    if (key == R::schedules[j].key) return static_cast<Index>(j);
    keys += detail::message(j ? ", " : "", "'", R::schedules[j].key, "'");
  }
  throw InvalidArgument(detail::message(R::name, " has no schedule '", key, "' (its schedules: ", keys, ")"));
}

/// Index of rule R's state named `name` ("velocity"); InvalidArgument naming the states otherwise.
template <class R>
Index stateIndex(const std::string& name) {
  std::string names;
  for (std::size_t s = 0; s < R::stateNames.size(); ++s) {
    if (name == R::stateNames[s]) return static_cast<Index>(s);
    names += detail::message(s ? ", " : "", "'", R::stateNames[s], "'");
  }
  throw InvalidArgument(detail::message(R::name, " has no state '", name, "' (its states: ", names, ")"));
}

}  // namespace hypergrad
