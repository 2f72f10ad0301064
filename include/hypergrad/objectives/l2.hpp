// SPDX-License-Identifier: MIT
#pragma once

/// \file l2.hpp
/// \brief L2 regularisation as a decorator of any objective, log-parameterised:
/// \f[ L(w, [\theta_{\text{inner}}, \eta], t) = L_{\text{inner}}(w, \theta_{\text{inner}}, t)
///     + \tfrac{c}{2} \sum_i \lambda_i w_i^2, \qquad \lambda = \exp(\eta), \f]
/// with one η per parameter group of a ParameterLayout (per-group mode) or one per weight
/// (per-weight mode, the paper's 7,840 penalties of a logistic regression). The factor c is 1 for
/// the convention L2Convention::HalfSquaredNorm (½ λ‖w‖², the default: the paper's, and what
/// PyTorch's `weight_decay = λ` adds to the gradient) and 2 for L2Convention::SquaredNorm (λ‖w‖²,
/// an explicit `lam * (w**2).sum()` term): pick the one the model being matched uses instead of
/// shifting η by ln 2.
///
/// The hyperparameter vector is θ = [θ_inner..., η...]: the inner objective's come first, and
/// hyperparameterLayout() names the η block "l2.logLambda". Added terms, with κ = c λ: ∇_w gains
/// κ ⊙ w, H u gains κ ⊙ u, and the mixed product's η block is ∂/∂η_k uᵀ(κ ⊙ w) =
/// Σ_{i ∈ k} u_i κ_i w_i (per group) or u_i κ_i w_i (per weight).
///
/// \code
/// auto f = hypergrad::l2PerGroup(mlp, mlp.layout(), Eigen::VectorXd::Constant(mlp.layout().numGroups(), -4.0));
/// \endcode

#include <cmath>
#include <string>
#include <type_traits>
#include <utility>

#include <Eigen/Core>

#include "../config.hpp"
#include "../errors.hpp"
#include "../layout.hpp"
#include "../objective.hpp"

namespace hypergrad {

/// Which L2 penalty an L2Regularized objective adds, λ = exp(η) either way.
enum class L2Convention {
  /// ½ Σ λ_i w_i² (gradient λ ⊙ w): the paper's, and PyTorch's / Keras' `weight_decay = λ`.
  HalfSquaredNorm,
  /// Σ λ_i w_i² (gradient 2λ ⊙ w): an explicit `lam * (w**2).sum()` loss term. Since ×2 is exact,
  /// its gradient term is bit-identical to autograd's `lam * (2 * w)`.
  SquaredNorm
};

/// How an L2Regularized objective ties its penalties to the weights.
enum class L2Mode {
  PerGroup,  ///< one λ per group of a ParameterLayout
  PerWeight  ///< one λ per parameter
};

namespace detail {
namespace l2 {

template <class, class = void>
struct HasHyperparameters : std::false_type {};
template <class F>
struct HasHyperparameters<F, std::void_t<decltype(Eigen::VectorXd(std::declval<const F&>().hyperparameters()))>>
    : std::true_type {};

template <class, class = void>
struct HasSetHyperparameters : std::false_type {};
template <class F>
struct HasSetHyperparameters<F, std::void_t<decltype(std::declval<F&>().setHyperparameters(
                                    std::declval<const Eigen::VectorXd&>()))>> : std::true_type {};

template <class, class = void>
struct HasStepValue : std::false_type {};
template <class F>
struct HasStepValue<F, std::void_t<decltype(double(std::declval<const F&>().value(
                           std::declval<const Eigen::VectorXd&>(), Index(0))))>> : std::true_type {};

}  // namespace l2
}  // namespace detail

/// Decorates the objective `Inner` with ½ Σ_i λ_i w_i² (or Σ_i λ_i w_i², see L2Convention),
/// λ = exp(η). Satisfies the objective
/// concept whenever Inner does. `Inner` may be a reference type (`L2Regularized<const Mlp&>`)
/// to share a large objective instead of copying it; the referent must then outlive this object.
///
/// Members beyond the concept: hyperparameters() / setHyperparameters() (whole θ, inner part
/// forwarded to the inner objective), hyperparameterLayout() (θ's named blocks), logLambda() /
/// setLogLambda() (η only), lambda(), convention(), penalty(w), value(w, t) when Inner has one,
/// layout() when Inner has one.
template <class Inner>
class L2Regularized {
  using InnerType = std::remove_cv_t<std::remove_reference_t<Inner>>;

 public:
  /// One penalty per group of `layout` (which must cover inner.numParameters() parameters).
  static L2Regularized perGroup(Inner inner, ParameterLayout layout, Eigen::VectorXd logLambda,
                                L2Convention convention = L2Convention::HalfSquaredNorm) {
    return L2Regularized(std::forward<Inner>(inner), L2Mode::PerGroup, std::move(layout), std::move(logLambda),
                         convention);
  }

  /// One penalty per group of the inner objective's own layout(). Requires Inner::layout().
  static L2Regularized perGroup(Inner inner, Eigen::VectorXd logLambda,
                                L2Convention convention = L2Convention::HalfSquaredNorm) {
    static_assert(detail::HasLayout<InnerType>::value,
                  "hypergrad: L2Regularized::perGroup(inner, logLambda) takes the groups from inner.layout(), "
                  "which this objective lacks; pass a ParameterLayout explicitly");
    ParameterLayout layout = inner.layout();
    return L2Regularized(std::forward<Inner>(inner), L2Mode::PerGroup, std::move(layout), std::move(logLambda),
                         convention);
  }

  /// One penalty per weight: logLambda has inner.numParameters() entries.
  static L2Regularized perWeight(Inner inner, Eigen::VectorXd logLambda,
                                 L2Convention convention = L2Convention::HalfSquaredNorm) {
    return L2Regularized(std::forward<Inner>(inner), L2Mode::PerWeight, ParameterLayout(), std::move(logLambda),
                         convention);
  }

  /// A single penalty λ = exp(logLambda) shared by every weight (plain weight decay).
  static L2Regularized uniform(Inner inner, double logLambda, L2Convention convention = L2Convention::HalfSquaredNorm) {
    const Index n = inner.numParameters();
    return L2Regularized(std::forward<Inner>(inner), L2Mode::PerGroup, ParameterLayout::single(n, "all"),
                         Eigen::VectorXd::Constant(1, logLambda), convention);
  }

  // --- objective concept -------------------------------------------------------------------

  Index numParameters() const { return m_inner.numParameters(); }  ///< N, the inner objective's.
  /// The inner objective's hyperparameters plus one per penalty.
  Index numHyperparameters() const { return m_inner.numHyperparameters() + m_logLambda.size(); }

  /// g = ∇_w L_inner + κ ⊙ w (κ = λ, or 2λ with L2Convention::SquaredNorm).
  void gradient(const Eigen::VectorXd& w, Index t, Eigen::VectorXd& g) const {
    checkSize(w, "gradient", "w");
    m_inner.gradient(w, t, g);
    addScaled(g, w);
  }

  /// L_inner + penalty(w) and g = ∇_w L_inner + κ ⊙ w, g bit-identical to gradient() (present only
  /// when Inner has valueAndGradient(w, t, g)).
  template <class I = InnerType, std::enable_if_t<detail::HasStepValueAndGradient<I>::value, int> = 0>
  double valueAndGradient(const Eigen::VectorXd& w, Index t, Eigen::VectorXd& g) const {
    checkSize(w, "valueAndGradient", "w");
    const double inner = m_inner.valueAndGradient(w, t, g);
    addScaled(g, w);
    return inner + penalty(w);
  }

  /// hu = H_inner u + κ ⊙ u.
  void hessianVectorProduct(const Eigen::VectorXd& w, Index t, const Eigen::VectorXd& u, Eigen::VectorXd& hu) const {
    checkSize(w, "hessianVectorProduct", "w");
    checkSize(u, "hessianVectorProduct", "u");
    m_inner.hessianVectorProduct(w, t, u, hu);
    addScaled(hu, u);
  }

  /// dtheta = [inner mixed product, ∂/∂η uᵀ(κ ⊙ w)].
  void mixedProduct(const Eigen::VectorXd& w, Index t, const Eigen::VectorXd& u, Eigen::VectorXd& dtheta) const {
    checkSize(w, "mixedProduct", "w");
    checkSize(u, "mixedProduct", "u");
    Eigen::VectorXd innerTheta;
    m_inner.mixedProduct(w, t, u, innerTheta);
    assemble(innerTheta, w, u, dtheta);
  }

  /// out = (∂_θ ∇_w L) dtheta, forward mode's tangent of g along θ (forward.hpp): the inner
  /// objective's (when dtheta moves its θ, it must have mixedTangentProduct) plus κ ⊙ w ⊙ dη,
  /// since ∂κ/∂η = κ.
  void mixedTangentProduct(const Eigen::VectorXd& w, Index t, const Eigen::VectorXd& dtheta, Eigen::VectorXd& out) const {
    checkSize(w, "mixedTangentProduct", "w");
    const Index p = m_inner.numHyperparameters();
    if (dtheta.size() != numHyperparameters()) {
      throw InvalidArgument(detail::message("L2Regularized::mixedTangentProduct: dtheta has ", dtheta.size(),
                                            " entries but the objective has ", numHyperparameters(), " hyperparameters"));
    }
    out.setZero(w.size());
    if (p > 0 && !dtheta.head(p).isZero(0.0)) {
      if constexpr (detail::HasMixedTangentProduct<InnerType>::value) {
        Eigen::VectorXd inner;
        m_inner.mixedTangentProduct(w, t, dtheta.head(p), inner);
        out += inner;
      } else {
        throw InvalidArgument("L2Regularized::mixedTangentProduct: dtheta moves the inner objective's "
                              "hyperparameters, which has no mixedTangentProduct to propagate them");
      }
    }
    const Eigen::VectorXd eta = dtheta.tail(m_logLambda.size());
    const Eigen::VectorXd perWeight = m_mode == L2Mode::PerGroup ? m_layout.expand(eta) : eta;
    out.array() += m_coefficient.array() * w.array() * perWeight.array();
  }

  /// All three at once, through the inner objective's fused reverseStep when it has one. The
  /// gradient is bit-identical to gradient(w, t, g): the reverse pass relies on that.
  void reverseStep(const Eigen::VectorXd& w, Index t, const Eigen::VectorXd& u, Eigen::VectorXd& g,
                   Eigen::VectorXd& hu, Eigen::VectorXd& dtheta) const {
    checkSize(w, "reverseStep", "w");
    checkSize(u, "reverseStep", "u");
    Eigen::VectorXd innerTheta;
    hypergrad::reverseStep(m_inner, w, t, u, g, hu, innerTheta);
    addScaled(g, w);
    addScaled(hu, u);
    assemble(innerTheta, w, u, dtheta);
  }

  /// The reverse step of a gradient-dependent direction, through the inner objective's
  /// reverseStepWithDirection when it has one: `direction` sees the regularised gradient, and g,
  /// hu, dtheta are bit-identical to gradient(), hessianVectorProduct() and mixedProduct().
  void reverseStepWithDirection(const Eigen::VectorXd& w, Index t, const DirectionFunction& direction,
                                Eigen::VectorXd& u, Eigen::VectorXd& g, Eigen::VectorXd& hu,
                                Eigen::VectorXd& dtheta) const {
    checkSize(w, "reverseStepWithDirection", "w");
    Eigen::VectorXd innerTheta, innerGradient;
    hypergrad::reverseStepWithDirection(
        m_inner, w, t,
        [&](const Eigen::VectorXd& gInner, Eigen::VectorXd& uOut) {
          g = gInner;
          addScaled(g, w);
          direction(g, uOut);
          checkSize(uOut, "reverseStepWithDirection", "the direction u");
        },
        u, innerGradient, hu, innerTheta);
    addScaled(hu, u);
    assemble(innerTheta, w, u, dtheta);
  }

  // --- extras ---------------------------------------------------------------------------------

  /// The inner objective's layout (present only when Inner has layout()).
  template <class I = InnerType, std::enable_if_t<detail::HasLayout<I>::value, int> = 0>
  decltype(auto) layout() const {
    return m_inner.layout();
  }

  /// L(w, t) = L_inner(w, t) + penalty(w) (present only when Inner has value(w, t)).
  template <class I = InnerType, std::enable_if_t<detail::l2::HasStepValue<I>::value, int> = 0>
  double value(const Eigen::VectorXd& w, Index t) const {
    checkSize(w, "value", "w");
    return m_inner.value(w, t) + penalty(w);
  }

  /// ½ Σ_i λ_i w_i² (HalfSquaredNorm) or Σ_i λ_i w_i² (SquaredNorm): ½ Σ_i κ_i w_i² either way.
  double penalty(const Eigen::VectorXd& w) const {
    checkSize(w, "penalty", "w");
    return 0.5 * (m_coefficient.array() * w.array().square()).sum();
  }

  /// \brief θ's named blocks: the inner objective's (its own hyperparameterLayout(), or one block
  /// "theta" when it has hyperparameters but no names), then "l2.logLambda" — with a suffix
  /// ".2", ".3", ... when an inner L2Regularized took that name (see logLambdaBlockName()).
  /// Reverse passes copy it into the result: `hg.hyperparameterBlock("l2.logLambda")`.
  ParameterLayout hyperparameterLayout() const {
    ParameterLayout out = hypergrad::hyperparameterLayout(m_inner);
    out.addGroup(logLambdaBlockName(), m_logLambda.size());
    return out;
  }

  /// The name of the η block in hyperparameterLayout(): "l2.logLambda", or "l2.logLambda.k" for
  /// the k-th nested L2Regularized (k ≥ 2), so that every block name is unique.
  std::string logLambdaBlockName() const {
    const ParameterLayout inner = hypergrad::hyperparameterLayout(m_inner);
    const auto taken = [&](const std::string& name) {
      for (const ParameterGroup& g : inner.groups())
        if (g.name == name) return true;
      return false;
    };
    std::string name = "l2.logLambda";
    for (int k = 2; taken(name); ++k) name = "l2.logLambda." + std::to_string(k);
    return name;
  }

  /// The penalty's form (½ λ‖w‖² or λ‖w‖²).
  L2Convention convention() const noexcept { return m_convention; }

  const InnerType& inner() const noexcept { return m_inner; }  ///< The unregularised objective.
  /// Mutable access (e.g. to change the inner objective's own hyperparameters).
  std::remove_reference_t<Inner>& inner() noexcept { return m_inner; }

  L2Mode mode() const noexcept { return m_mode; }  ///< One λ per group or one per weight.
  /// The groups the penalties act on (per-group mode); empty in per-weight mode.
  const ParameterLayout& penaltyLayout() const noexcept { return m_layout; }

  /// η = log λ, one entry per group or per weight.
  const Eigen::VectorXd& logLambda() const noexcept { return m_logLambda; }
  /// λ = exp(η), one entry per group or per weight.
  Eigen::VectorXd lambda() const { return m_logLambda.array().exp().matrix(); }
  /// λ spread over the weights (size numParameters()).
  const Eigen::VectorXd& lambdaPerWeight() const noexcept { return m_lambdaPerWeight; }

  /// Replaces η; same size as before, every entry finite with exp(η) finite.
  void setLogLambda(const Eigen::VectorXd& logLambda) {
    if (logLambda.size() != m_logLambda.size()) {
      throw InvalidArgument(detail::message("L2Regularized::setLogLambda: got ", logLambda.size(),
                                            " log-penalties but this regulariser has ", m_logLambda.size(), " (",
                                            modeName(), ")"));
    }
    setLogLambdaUnchecked(logLambda, "setLogLambda");
  }

  /// θ = [θ_inner, η]. Throws InvalidState when the inner objective has hyperparameters but no
  /// hyperparameters() accessor.
  Eigen::VectorXd hyperparameters() const {
    const Index p = m_inner.numHyperparameters();
    Eigen::VectorXd theta(p + m_logLambda.size());
    if (p > 0) {
      if constexpr (detail::l2::HasHyperparameters<InnerType>::value) {
        const Eigen::VectorXd innerTheta = m_inner.hyperparameters();
        if (innerTheta.size() != p) {
          throw InvalidState(detail::message("L2Regularized::hyperparameters: the inner objective returned ",
                                             innerTheta.size(), " hyperparameters but reports ", p));
        }
        theta.head(p) = innerTheta;
      } else {
        throw InvalidState(detail::message("L2Regularized::hyperparameters: the inner objective has ", p,
                                           " hyperparameters but no hyperparameters() accessor; use logLambda() "
                                           "for the penalties alone"));
      }
    }
    theta.tail(m_logLambda.size()) = m_logLambda;
    return theta;
  }

  /// Sets θ = [θ_inner, η]: the first inner.numHyperparameters() entries go to
  /// inner.setHyperparameters(), the rest to setLogLambda(). Nothing changes when it throws.
  void setHyperparameters(const Eigen::VectorXd& theta) {
    const Index p = m_inner.numHyperparameters();
    if (theta.size() != numHyperparameters()) {
      throw InvalidArgument(detail::message("L2Regularized::setHyperparameters: got ", theta.size(),
                                            " values but the objective has ", numHyperparameters(), " (", p,
                                            " of the inner objective, then ", m_logLambda.size(), " log-penalties)"));
    }
    const Eigen::VectorXd eta = theta.tail(m_logLambda.size());
    checkLogLambda(eta, "setHyperparameters", p);
    if (p > 0) {
      if constexpr (detail::l2::HasSetHyperparameters<std::remove_reference_t<Inner>>::value) {
        m_inner.setHyperparameters(Eigen::VectorXd(theta.head(p)));
      } else {
        throw InvalidState(detail::message("L2Regularized::setHyperparameters: the inner objective has ", p,
                                           " hyperparameters but no (non-const) setHyperparameters(); use "
                                           "setLogLambda() for the penalties alone"));
      }
    }
    setLogLambdaUnchecked(eta, "setHyperparameters");
  }

 private:
  L2Regularized(Inner inner, L2Mode mode, ParameterLayout layout, Eigen::VectorXd logLambda, L2Convention convention)
      : m_inner(std::forward<Inner>(inner)), m_mode(mode), m_convention(convention), m_layout(std::move(layout)) {
    checkObjective<InnerType>();
    const Index n = m_inner.numParameters();
    if (m_mode == L2Mode::PerGroup) {
      if (m_layout.size() != n) {
        throw InvalidArgument(detail::message("L2Regularized::perGroup: the layout covers ", m_layout.size(),
                                              " parameters but the objective has ", n));
      }
      if (logLambda.size() != m_layout.numGroups()) {
        throw InvalidArgument(detail::message("L2Regularized::perGroup: got ", logLambda.size(),
                                              " log-penalties but the layout has ", m_layout.numGroups(),
                                              " groups; pass one log(lambda) per group"));
      }
    } else if (logLambda.size() != n) {
      throw InvalidArgument(detail::message("L2Regularized::perWeight: got ", logLambda.size(),
                                            " log-penalties but the objective has ", n,
                                            " parameters; pass one log(lambda) per weight"));
    }
    m_logLambda.resize(logLambda.size());
    setLogLambdaUnchecked(logLambda, m_mode == L2Mode::PerGroup ? "perGroup" : "perWeight");
  }

  const char* modeName() const noexcept { return m_mode == L2Mode::PerGroup ? "one per group" : "one per weight"; }

  /// Finite η with finite, non-zero-underflow-irrelevant exp(η); `offset` shifts the reported
  /// index to θ's numbering.
  void checkLogLambda(const Eigen::VectorXd& eta, const char* fn, Index offset) const {
    for (Index k = 0; k < eta.size(); ++k) {
      if (!std::isfinite(eta(k)) || !std::isfinite(std::exp(eta(k)))) {
        throw InvalidArgument(detail::message(
            "L2Regularized::", fn, ": log(lambda) entry ", k, offset > 0 ? detail::message(" (theta[", offset + k, "])") : "",
            m_mode == L2Mode::PerGroup && k < m_layout.numGroups()
                ? detail::message(" for group '", m_layout.group(k).name, "'")
                : std::string(),
            " is ", eta(k), "; it must be finite and below ~709 so that lambda = exp(it) is finite"));
      }
    }
  }

  void setLogLambdaUnchecked(const Eigen::VectorXd& eta, const char* fn) {
    checkLogLambda(eta, fn, 0);
    m_logLambda = eta;
    const Eigen::VectorXd lambda = m_logLambda.array().exp().matrix();
    m_lambdaPerWeight = m_mode == L2Mode::PerGroup ? m_layout.expand(lambda) : lambda;
    // κ = 2λ is exact (a power-of-two scaling), so SquaredNorm's terms are the autograd bits.
    m_coefficient = m_convention == L2Convention::SquaredNorm ? Eigen::VectorXd(2.0 * m_lambdaPerWeight)
                                                               : m_lambdaPerWeight;
  }

  void checkSize(const Eigen::VectorXd& x, const char* fn, const char* name) const {
    if (x.size() != m_lambdaPerWeight.size()) {
      throw InvalidArgument(detail::message("L2Regularized::", fn, ": ", name, " has ", x.size(),
                                            " entries but the objective has ", m_lambdaPerWeight.size(),
                                            " parameters"));
    }
  }

  /// out += κ ⊙ x. One function for gradient() and reverseStep() so both produce the same bits.
  void addScaled(Eigen::VectorXd& out, const Eigen::VectorXd& x) const {
    out.array() += m_coefficient.array() * x.array();
  }

  void assemble(const Eigen::VectorXd& innerTheta, const Eigen::VectorXd& w, const Eigen::VectorXd& u,
                Eigen::VectorXd& dtheta) const {
    const Index p = m_inner.numHyperparameters();
    if (innerTheta.size() != p) {
      throw InvalidState(detail::message("L2Regularized: the inner objective's mixed product has ",
                                         innerTheta.size(), " entries but it reports ", p, " hyperparameters"));
    }
    dtheta.resize(p + m_logLambda.size());
    dtheta.head(p) = innerTheta;
    // ∂/∂η_i (u_i κ_i w_i) = u_i κ_i w_i since dκ/dη = κ.
    const Eigen::VectorXd perWeight = (u.array() * m_coefficient.array() * w.array()).matrix();
    if (m_mode == L2Mode::PerGroup) {
      dtheta.tail(m_logLambda.size()) = m_layout.sumByGroup(perWeight);
    } else {
      dtheta.tail(m_logLambda.size()) = perWeight;
    }
  }

  Inner m_inner;
  L2Mode m_mode;
  L2Convention m_convention;
  ParameterLayout m_layout;          // per-group mode only
  Eigen::VectorXd m_logLambda;       // η
  Eigen::VectorXd m_lambdaPerWeight; // exp(η) spread over the weights
  Eigen::VectorXd m_coefficient;     // κ = λ or 2λ per weight: the gradient's term is κ ⊙ w
};

/// L2Regularized<Inner>::perGroup with Inner deduced (the objective is copied or moved in).
template <class Inner>
L2Regularized<std::decay_t<Inner>> l2PerGroup(Inner&& inner, ParameterLayout layout, Eigen::VectorXd logLambda,
                                              L2Convention convention = L2Convention::HalfSquaredNorm) {
  return L2Regularized<std::decay_t<Inner>>::perGroup(std::forward<Inner>(inner), std::move(layout),
                                                       std::move(logLambda), convention);
}

/// L2Regularized<Inner>::perWeight with Inner deduced (the objective is copied or moved in).
template <class Inner>
L2Regularized<std::decay_t<Inner>> l2PerWeight(Inner&& inner, Eigen::VectorXd logLambda,
                                               L2Convention convention = L2Convention::HalfSquaredNorm) {
  return L2Regularized<std::decay_t<Inner>>::perWeight(std::forward<Inner>(inner), std::move(logLambda), convention);
}

}  // namespace hypergrad
