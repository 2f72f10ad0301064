// SPDX-License-Identifier: MIT
#pragma once

/// \file objective.hpp
/// \brief The objective concept (training loss) and the meta-objective concept, stated once:
/// the table of valid expressions below, detection traits, and a static check whose message
/// names the missing member.
///
/// **Objective** — a training loss \f$L(w, \theta, t)\f$; `f` a const object, `w`, `u` of type
/// `const Eigen::VectorXd&`, `t` an `Index` (0-based step), outputs `Eigen::VectorXd&` that the
/// callee resizes and overwrites:
///
/// | expression                              | meaning                                                  |
/// |-----------------------------------------|----------------------------------------------------------|
/// | `f.numParameters()`                     | N, the size of w                                          |
/// | `f.numHyperparameters()`                | size of θ (0 when the loss has none)                      |
/// | `f.gradient(w, t, g)`                   | g = ∇_w L(w, θ, t)                                        |
/// | `f.hessianVectorProduct(w, t, u, hu)`   | hu = ∇²_w L(w, θ, t) u                                    |
/// | `f.mixedProduct(w, t, u, dtheta)`       | dtheta = (∂_θ ∇_w L(w, θ, t))ᵀ u, size numHyperparameters |
/// | `f.reverseStep(w, t, u, g, hu, dtheta)` | optional: all three from one pass (default: the 3 calls)  |
/// | `double f.valueAndGradient(w, t, g)`     | optional: returns L(w, θ, t) and sets g exactly as gradient() (the optimizer's step() then reports the loss: lastLoss()) |
/// | `f.reverseStepWithDirection(w, t, dir, u, g, hu, dtheta)` | optional: g, then `dir(g, u)` sets u, then hu and dtheta along it, sharing one forward pass (default: the 3 calls around dir) |
/// | `f.mixedTangentProduct(w, t, dtheta, out)` | optional: out = (∂_θ ∇_w L(w, θ, t)) dtheta, size N: forward mode's tangent of g along θ (hypergradients/forward.hpp) |
/// | `f.layout()`                            | optional: a ParameterLayout (e.g. an MLP's layers)        |
/// | `f.hyperparameterLayout()`              | optional: θ's named blocks as a ParameterLayout ("l2.logLambda"); results carry it |
///
/// `gradient` must be a pure, deterministic function of (w, θ, t): the reverse pass recomputes
/// g_t and relies on it being bit-identical to the forward pass's (DESIGN.md §3). Minibatches are
/// therefore a function of t (see batches.hpp), never of a stateful generator.
///
/// **Meta objective** — \f$f(w_{T+1}, \theta)\f$, e.g. a validation loss:
///
/// | expression                      | meaning                                                        |
/// |---------------------------------|----------------------------------------------------------------|
/// | `m.value(w)`                    | f(w)                                                            |
/// | `m.valueAndGradient(w, g)`      | returns f(w), sets g = ∇_w f(w)                                 |
/// | `m.hyperGradient(w, dtheta)`    | optional: dtheta = ∂f/∂θ (θ of the training objective)          |

#include <functional>
#include <type_traits>
#include <utility>

#include <Eigen/Core>

#include "config.hpp"
#include "errors.hpp"
#include "layout.hpp"

namespace hypergrad {

/// The Hessian direction of a reverse step as a function of the step's gradient: `dir(g, u)`
/// sets u (N entries) from g = ∇_w L(w_t, θ, t). Rules whose direction needs g (Adam, RMSprop)
/// pass one to reverseStepWithDirection().
using DirectionFunction = std::function<void(const Eigen::VectorXd& g, Eigen::VectorXd& u)>;

namespace detail {

template <class, class = void>
struct HasNumParameters : std::false_type {};
template <class F>
struct HasNumParameters<F, std::void_t<decltype(Index(std::declval<const F&>().numParameters()))>>
    : std::true_type {};

template <class, class = void>
struct HasNumHyperparameters : std::false_type {};
template <class F>
struct HasNumHyperparameters<F, std::void_t<decltype(Index(std::declval<const F&>().numHyperparameters()))>>
    : std::true_type {};

template <class, class = void>
struct HasGradient : std::false_type {};
template <class F>
struct HasGradient<F, std::void_t<decltype(std::declval<const F&>().gradient(
                          std::declval<const Eigen::VectorXd&>(), Index(0), std::declval<Eigen::VectorXd&>()))>>
    : std::true_type {};

template <class, class = void>
struct HasHessianVectorProduct : std::false_type {};
template <class F>
struct HasHessianVectorProduct<
    F, std::void_t<decltype(std::declval<const F&>().hessianVectorProduct(
           std::declval<const Eigen::VectorXd&>(), Index(0), std::declval<const Eigen::VectorXd&>(),
           std::declval<Eigen::VectorXd&>()))>> : std::true_type {};

template <class, class = void>
struct HasMixedProduct : std::false_type {};
template <class F>
struct HasMixedProduct<F, std::void_t<decltype(std::declval<const F&>().mixedProduct(
                              std::declval<const Eigen::VectorXd&>(), Index(0),
                              std::declval<const Eigen::VectorXd&>(), std::declval<Eigen::VectorXd&>()))>>
    : std::true_type {};

/// The optional `mixedTangentProduct(w, t, dtheta, out)` (forward mode's tangent of g along θ).
template <class, class = void>
struct HasMixedTangentProduct : std::false_type {};
template <class F>
struct HasMixedTangentProduct<F, std::void_t<decltype(std::declval<const F&>().mixedTangentProduct(
                                     std::declval<const Eigen::VectorXd&>(), Index(0),
                                     std::declval<const Eigen::VectorXd&>(), std::declval<Eigen::VectorXd&>()))>>
    : std::true_type {};

template <class, class = void>
struct HasReverseStep : std::false_type {};
template <class F>
struct HasReverseStep<
    F, std::void_t<decltype(std::declval<const F&>().reverseStep(
           std::declval<const Eigen::VectorXd&>(), Index(0), std::declval<const Eigen::VectorXd&>(),
           std::declval<Eigen::VectorXd&>(), std::declval<Eigen::VectorXd&>(), std::declval<Eigen::VectorXd&>()))>>
    : std::true_type {};

template <class, class = void>
struct HasReverseStepWithDirection : std::false_type {};
template <class F>
struct HasReverseStepWithDirection<
    F, std::void_t<decltype(std::declval<const F&>().reverseStepWithDirection(
           std::declval<const Eigen::VectorXd&>(), Index(0), std::declval<const DirectionFunction&>(),
           std::declval<Eigen::VectorXd&>(), std::declval<Eigen::VectorXd&>(), std::declval<Eigen::VectorXd&>(),
           std::declval<Eigen::VectorXd&>()))>> : std::true_type {};

template <class, class = void>
struct HasStepValueAndGradient : std::false_type {};
template <class F>
struct HasStepValueAndGradient<F, std::void_t<decltype(double(std::declval<const F&>().valueAndGradient(
                                      std::declval<const Eigen::VectorXd&>(), Index(0),
                                      std::declval<Eigen::VectorXd&>())))>> : std::true_type {};

template <class, class = void>
struct HasLayout : std::false_type {};
template <class F>
struct HasLayout<F, std::void_t<decltype(std::declval<const F&>().layout())>> : std::true_type {};

template <class, class = void>
struct HasHyperparameterLayout : std::false_type {};
template <class F>
struct HasHyperparameterLayout<
    F, std::void_t<decltype(ParameterLayout(std::declval<const F&>().hyperparameterLayout()))>> : std::true_type {};

template <class, class = void>
struct HasValue : std::false_type {};
template <class M>
struct HasValue<M, std::void_t<decltype(double(std::declval<const M&>().value(std::declval<const Eigen::VectorXd&>())))>>
    : std::true_type {};

template <class, class = void>
struct HasValueAndGradient : std::false_type {};
template <class M>
struct HasValueAndGradient<M, std::void_t<decltype(double(std::declval<const M&>().valueAndGradient(
                                  std::declval<const Eigen::VectorXd&>(), std::declval<Eigen::VectorXd&>())))>>
    : std::true_type {};

template <class, class = void>
struct HasHyperGradient : std::false_type {};
template <class M>
struct HasHyperGradient<M, std::void_t<decltype(std::declval<const M&>().hyperGradient(
                               std::declval<const Eigen::VectorXd&>(), std::declval<Eigen::VectorXd&>()))>>
    : std::true_type {};

}  // namespace detail

/// True when F satisfies the objective concept (see the table in this file).
template <class F>
inline constexpr bool isObjective = detail::HasNumParameters<F>::value && detail::HasNumHyperparameters<F>::value &&
                                    detail::HasGradient<F>::value && detail::HasHessianVectorProduct<F>::value &&
                                    detail::HasMixedProduct<F>::value;

/// True when M satisfies the meta-objective concept.
template <class M>
inline constexpr bool isMetaObjective = detail::HasValue<M>::value && detail::HasValueAndGradient<M>::value;

/// Compile-time check with one message per missing member. Call as `checkObjective<F>();`.
template <class F>
constexpr void checkObjective() {
  static_assert(detail::HasNumParameters<F>::value,
                "hypergrad: the objective type lacks `Index numParameters() const` (see objective.hpp)");
  static_assert(detail::HasNumHyperparameters<F>::value,
                "hypergrad: the objective type lacks `Index numHyperparameters() const` (return 0 when the "
                "loss has no hyperparameters; see objective.hpp)");
  static_assert(detail::HasGradient<F>::value,
                "hypergrad: the objective type lacks `void gradient(const Eigen::VectorXd& w, Index t, "
                "Eigen::VectorXd& g) const` (see objective.hpp)");
  static_assert(detail::HasHessianVectorProduct<F>::value,
                "hypergrad: the objective type lacks `void hessianVectorProduct(const Eigen::VectorXd& w, Index t, "
                "const Eigen::VectorXd& u, Eigen::VectorXd& hu) const`; for a loss written as a template over "
                "the scalar type, AutoDiffObjective derives it (see objective.hpp)");
  static_assert(detail::HasMixedProduct<F>::value,
                "hypergrad: the objective type lacks `void mixedProduct(const Eigen::VectorXd& w, Index t, "
                "const Eigen::VectorXd& u, Eigen::VectorXd& dtheta) const` (dtheta = (d/dtheta grad_w L)^T u; "
                "size 0 when there are no hyperparameters; see objective.hpp)");
}

/// Compile-time check of the meta-objective concept.
template <class M>
constexpr void checkMetaObjective() {
  static_assert(detail::HasValue<M>::value,
                "hypergrad: the meta-objective type lacks `double value(const Eigen::VectorXd& w) const`");
  static_assert(detail::HasValueAndGradient<M>::value,
                "hypergrad: the meta-objective type lacks `double valueAndGradient(const Eigen::VectorXd& w, "
                "Eigen::VectorXd& g) const`");
}

/// Gradient, Hessian-vector product and mixed product at (w, t) along u, from the objective's
/// fused `reverseStep` when it has one, else from the three separate calls.
template <class F>
void reverseStep(const F& f, const Eigen::VectorXd& w, Index t, const Eigen::VectorXd& u, Eigen::VectorXd& g,
                 Eigen::VectorXd& hu, Eigen::VectorXd& dtheta) {
  checkObjective<F>();
  if constexpr (detail::HasReverseStep<F>::value) {
    f.reverseStep(w, t, u, g, hu, dtheta);
  } else {
    f.gradient(w, t, g);
    f.hessianVectorProduct(w, t, u, hu);
    f.mixedProduct(w, t, u, dtheta);
  }
}

/// The reverse step of a rule whose Hessian direction depends on the gradient: g at (w, t), then
/// `direction(g, u)`, then hu = H u and dtheta = (∂_θ g)ᵀ u — from the objective's
/// reverseStepWithDirection when it has one (one forward pass for all three), else from
/// gradient(), direction and the two separate products. Either way g is the objective's
/// gradient(w, t, g) bit for bit.
template <class F>
void reverseStepWithDirection(const F& f, const Eigen::VectorXd& w, Index t, const DirectionFunction& direction,
                              Eigen::VectorXd& u, Eigen::VectorXd& g, Eigen::VectorXd& hu, Eigen::VectorXd& dtheta) {
  checkObjective<F>();
  if constexpr (detail::HasReverseStepWithDirection<F>::value) {
    f.reverseStepWithDirection(w, t, direction, u, g, hu, dtheta);
  } else {
    f.gradient(w, t, g);
    direction(g, u);
    f.hessianVectorProduct(w, t, u, hu);
    f.mixedProduct(w, t, u, dtheta);
  }
}

/// \brief θ's named blocks: `f.hyperparameterLayout()` when the objective names them (checked to
/// cover exactly numHyperparameters() entries; InvalidState otherwise), else one block "theta"
/// covering θ, or an empty layout when the objective has no hyperparameters.
template <class F>
ParameterLayout hyperparameterLayout(const F& f) {
  const Index p = f.numHyperparameters();
  if constexpr (detail::HasHyperparameterLayout<F>::value) {
    ParameterLayout layout = f.hyperparameterLayout();
    if (layout.size() != p) {
      throw InvalidState(detail::message("hyperparameterLayout: the objective's blocks cover ", layout.size(),
                                         " hyperparameters but it reports numHyperparameters() = ", p));
    }
    return layout;
  } else {
    return p > 0 ? ParameterLayout::single(p, "theta") : ParameterLayout();
  }
}

}  // namespace hypergrad
