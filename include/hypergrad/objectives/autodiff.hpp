// SPDX-License-Identifier: MIT
#pragma once

/// \file autodiff.hpp
/// \brief Turns a user's loss gradient, written once as a template over the scalar type, into a
/// full objective (objective.hpp): the Hessian-vector product and the mixed vector–Jacobian
/// product come from Eigen's forward-mode `AutoDiffScalar` applied to the gradient
/// (forward-over-reverse), so they are exact to rounding — no finite differences.
///
/// **Model requirement** — `m` a const Model, `Vec<S>` = `Eigen::Matrix<S, Eigen::Dynamic, 1>`,
/// `S` any of `double` and the AutoDiffScalar types below (write the members as templates):
///
/// | expression                                   | meaning                                              | required |
/// |----------------------------------------------|------------------------------------------------------|----------|
/// | `m.numParameters()`                          | N, the size of w                                      | yes      |
/// | `m.numHyperparameters()`                     | P, the size of θ (0 when there are none)              | yes      |
/// | `m.hyperparameters()`                        | initial θ, convertible to `Eigen::VectorXd` of size P | yes      |
/// | `m.gradient(w, theta, t, g)`                 | g = ∇_w L(w, θ, t); w, θ `const Vec<S>&`, t `Index`, g `Vec<S>&` (resize it) | yes |
/// | `m.hyperparameterGradient(w, theta, t, gt)`  | gt = ∇_θ L(w, θ, t), same argument types              | optional: O(1) mixed products |
/// | `m.value(w, theta, t)`                       | L(w, θ, t) as double for double arguments            | optional: gives `value(w, t)` |
/// | `m.layout()`                                 | a ParameterLayout                                     | optional: forwarded |
/// | `m.hyperparameterLayout()`                   | θ's named blocks, a ParameterLayout of size P         | optional: forwarded |
///
/// A value function is **not** required. `gradient` must be a deterministic function of (w, θ, t)
/// (minibatch from t, see batches.hpp): the reverse pass recomputes it and needs the same bits.
///
/// A conforming model looks like this:
/// \code
/// struct Logistic {
///   Eigen::MatrixXd x; Eigen::VectorXd y;                 // data, y in {-1, +1}
///   Index numParameters() const { return x.cols(); }
///   Index numHyperparameters() const { return 1; }
///   Eigen::VectorXd hyperparameters() const { return Eigen::VectorXd::Constant(1, -3.0); }  // log lambda
///   template <class S>
///   void gradient(const Eigen::Matrix<S, -1, 1>& w, const Eigen::Matrix<S, -1, 1>& theta, Index,
///                 Eigen::Matrix<S, -1, 1>& g) const {
///     using std::exp;                                      // found by ADL for AutoDiffScalar
///     const Eigen::Matrix<S, -1, 1> z = x.cast<S>() * w;  // cast the double data to S
///     Eigen::Matrix<S, -1, 1> r(z.size());
///     for (Index i = 0; i < z.size(); ++i) r(i) = -y(i) / (S(1) + exp(y(i) * z(i)));
///     g = x.transpose().cast<S>() * r / S(double(x.rows())) + exp(theta(0)) * w;
///   }
/// };
/// auto f = hypergrad::makeAutoDiffObjective(Logistic{x, y});
/// \endcode
///
/// Pitfalls of AutoDiffScalar in user code: call math functions unqualified after
/// `using std::exp;` (so ADL finds Eigen's overloads), write constants as `S(0.5)` or plain
/// doubles, cast double matrices with `.cast<S>()`, and initialise accumulators explicitly
/// (`setZero()`): a default-constructed AutoDiffScalar has uninitialised derivatives.
///
/// **Costs** (gradient cost C, generic non-vectorised kernels for the AutoDiffScalar passes):
/// - gradient: one double call, C;
/// - Hessian-vector product: one pass with a 1-wide derivative, ~2–4 C;
/// - mixed product without `hyperparameterGradient`: the N×P Jacobian ∂_θ∇_w L in
///   ⌈P / MixedChunk⌉ passes with fixed-size MixedChunk-wide derivatives (no heap traffic),
///   each contracted with u: O(P) · C. Fine for a handful of hyperparameters; for many (data as
///   hyperparameters, per-weight penalties) provide `hyperparameterGradient`, or tune
///   MixedChunk (wider chunks: fewer passes, more work per pass);
/// - mixed product with `hyperparameterGradient`: by symmetry of mixed partials
///   (∂_θ∇_w L)ᵀu = ∂_w(∇_θ L) · u, a single 1-wide directional pass, ~2–4 C regardless of P.
/// The fused reverseStep is the default (three calls).

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <utility>

#include <Eigen/Core>
#include <unsupported/Eigen/AutoDiff>

#include "../config.hpp"
#include "../errors.hpp"
#include "../objective.hpp"

namespace hypergrad {

/// Scalar of the Hessian-vector-product pass: a value and one directional derivative.
using DirectionalScalar = Eigen::AutoDiffScalar<Eigen::Matrix<double, 1, 1>>;

/// Scalar of a Jacobian pass over K hyperparameters at once (fixed size: no allocation).
template <int K>
using ChunkScalar = Eigen::AutoDiffScalar<Eigen::Matrix<double, K, 1>>;

namespace detail {
namespace autodiff {

template <class S>
using Vec = Eigen::Matrix<S, Eigen::Dynamic, 1>;

template <class, class, class = void>
struct HasTemplatedGradient : std::false_type {};
template <class M, class S>
struct HasTemplatedGradient<M, S, std::void_t<decltype(std::declval<const M&>().gradient(
                                      std::declval<const Vec<S>&>(), std::declval<const Vec<S>&>(), Index(0),
                                      std::declval<Vec<S>&>()))>> : std::true_type {};

template <class, class, class = void>
struct HasHyperparameterGradient : std::false_type {};
template <class M, class S>
struct HasHyperparameterGradient<M, S, std::void_t<decltype(std::declval<const M&>().hyperparameterGradient(
                                           std::declval<const Vec<S>&>(), std::declval<const Vec<S>&>(),
                                           Index(0), std::declval<Vec<S>&>()))>> : std::true_type {};

template <class, class = void>
struct HasModelHyperparameters : std::false_type {};
template <class M>
struct HasModelHyperparameters<M, std::void_t<decltype(Eigen::VectorXd(std::declval<const M&>().hyperparameters()))>>
    : std::true_type {};

template <class, class = void>
struct HasModelValue : std::false_type {};
template <class M>
struct HasModelValue<M, std::void_t<decltype(double(std::declval<const M&>().value(
                            std::declval<const Eigen::VectorXd&>(), std::declval<const Eigen::VectorXd&>(),
                            Index(0))))>> : std::true_type {};

}  // namespace autodiff
}  // namespace detail

/// True when Model provides `hyperparameterGradient` for double and DirectionalScalar, so mixed
/// products take the single-pass route.
template <class Model>
inline constexpr bool hasHyperparameterGradient =
    detail::autodiff::HasHyperparameterGradient<Model, double>::value &&
    detail::autodiff::HasHyperparameterGradient<Model, DirectionalScalar>::value;

/// An objective (objective.hpp) built from a Model whose gradient is a template over the scalar
/// type (requirement table in autodiff.hpp). The adaptor owns θ: it starts as
/// model.hyperparameters() and changes through setHyperparameters(); the model receives it as an
/// argument on every call. MixedChunk is the number of hyperparameters per Jacobian pass.
template <class Model, int MixedChunk = 8>
class AutoDiffObjective {
  static_assert(MixedChunk >= 1, "hypergrad: AutoDiffObjective's MixedChunk must be at least 1");
  static_assert(detail::HasNumParameters<Model>::value,
                "hypergrad: the AutoDiffObjective model lacks `Index numParameters() const` (see autodiff.hpp)");
  static_assert(detail::HasNumHyperparameters<Model>::value,
                "hypergrad: the AutoDiffObjective model lacks `Index numHyperparameters() const` (return 0 when "
                "there are none; see autodiff.hpp)");
  static_assert(detail::autodiff::HasModelHyperparameters<Model>::value,
                "hypergrad: the AutoDiffObjective model lacks `Eigen::VectorXd hyperparameters() const` (the "
                "initial theta; return Eigen::VectorXd(0) when there are none; see autodiff.hpp)");
  static_assert(detail::autodiff::HasTemplatedGradient<Model, double>::value,
                "hypergrad: the AutoDiffObjective model lacks `template <class S> void gradient(const "
                "Eigen::Matrix<S,-1,1>& w, const Eigen::Matrix<S,-1,1>& theta, Index t, Eigen::Matrix<S,-1,1>& g) "
                "const` (see autodiff.hpp)");
  static_assert(detail::autodiff::HasTemplatedGradient<Model, DirectionalScalar>::value &&
                    detail::autodiff::HasTemplatedGradient<Model, ChunkScalar<MixedChunk>>::value,
                "hypergrad: the AutoDiffObjective model's gradient accepts double vectors only; write it as a "
                "template over the scalar type S (w, theta and g as Eigen::Matrix<S,-1,1>) so that forward-mode "
                "AutoDiffScalar can differentiate it (see autodiff.hpp)");

 public:
  /// Wraps `model`; θ starts as model.hyperparameters() (checked: size P, finite).
  explicit AutoDiffObjective(Model model) : m_model(std::move(model)) {
    m_theta = m_model.hyperparameters();
    if (m_theta.size() != m_model.numHyperparameters()) {
      throw InvalidArgument(detail::message("AutoDiffObjective: model.hyperparameters() has ", m_theta.size(),
                                            " entries but model.numHyperparameters() is ",
                                            m_model.numHyperparameters()));
    }
    checkTheta(m_theta, "AutoDiffObjective");
  }

  /// Wraps `model` with an explicit initial θ instead of model.hyperparameters().
  AutoDiffObjective(Model model, Eigen::VectorXd theta) : m_model(std::move(model)) { setHyperparameters(theta); }

  // --- objective concept -------------------------------------------------------------------

  Index numParameters() const { return m_model.numParameters(); }  ///< N, from the model.
  Index numHyperparameters() const { return m_model.numHyperparameters(); }  ///< Size of θ, from the model.

  /// g = ∇_w L(w, θ, t): the model's gradient with S = double.
  void gradient(const Eigen::VectorXd& w, Index t, Eigen::VectorXd& g) const {
    checkSize(w, "gradient", "w");
    m_model.gradient(w, m_theta, t, g);
    checkOutput(g, numParameters(), "gradient");
  }

  /// hu = ∇²_w L u: one forward-mode pass with w seeded along u.
  void hessianVectorProduct(const Eigen::VectorXd& w, Index t, const Eigen::VectorXd& u, Eigen::VectorXd& hu) const {
    checkSize(w, "hessianVectorProduct", "w");
    checkSize(u, "hessianVectorProduct", "u");
    using S = DirectionalScalar;
    const detail::autodiff::Vec<S> wd = seedDirection(w, u);
    const detail::autodiff::Vec<S> thetad = seedDirection(m_theta, Eigen::VectorXd::Zero(m_theta.size()));
    detail::autodiff::Vec<S> gd;
    m_model.gradient(wd, thetad, t, gd);
    checkOutput(gd, numParameters(), "gradient");
    hu.resize(gd.size());
    for (Index i = 0; i < gd.size(); ++i) hu(i) = derivative(gd(i), 0);
  }

  /// dtheta = (∂_θ ∇_w L)ᵀ u: one directional pass through hyperparameterGradient when the model
  /// has it, else ⌈P / MixedChunk⌉ Jacobian passes through gradient (see the costs in autodiff.hpp).
  void mixedProduct(const Eigen::VectorXd& w, Index t, const Eigen::VectorXd& u, Eigen::VectorXd& dtheta) const {
    checkSize(w, "mixedProduct", "w");
    checkSize(u, "mixedProduct", "u");
    const Index p = m_theta.size();
    dtheta.setZero(p);
    if (p == 0) return;
    if constexpr (hasHyperparameterGradient<Model>) {
      // Symmetry of mixed partials: (∂_θ ∇_w L)ᵀ u = ∂_w(∇_θ L) · u.
      using S = DirectionalScalar;
      const detail::autodiff::Vec<S> wd = seedDirection(w, u);
      const detail::autodiff::Vec<S> thetad = seedDirection(m_theta, Eigen::VectorXd::Zero(p));
      detail::autodiff::Vec<S> gt;
      m_model.hyperparameterGradient(wd, thetad, t, gt);
      checkOutput(gt, p, "hyperparameterGradient");
      for (Index j = 0; j < p; ++j) dtheta(j) = derivative(gt(j), 0);
    } else {
      using S = ChunkScalar<MixedChunk>;
      using Der = Eigen::Matrix<double, MixedChunk, 1>;
      detail::autodiff::Vec<S> wd(w.size());
      for (Index i = 0; i < w.size(); ++i) wd(i) = S(w(i), Der::Zero());
      detail::autodiff::Vec<S> thetad(p);
      detail::autodiff::Vec<S> gd;
      for (Index start = 0; start < p; start += MixedChunk) {
        const Index width = std::min<Index>(MixedChunk, p - start);
        // θ_{start + k} carries the k-th unit derivative; the rest of θ is constant this pass.
        for (Index j = 0; j < p; ++j) {
          Der d = Der::Zero();
          if (j >= start && j < start + width) d(j - start) = 1.0;
          thetad(j) = S(m_theta(j), d);
        }
        m_model.gradient(wd, thetad, t, gd);
        checkOutput(gd, numParameters(), "gradient");
        Der acc = Der::Zero();
        for (Index i = 0; i < gd.size(); ++i) {
          const auto& der = gd(i).derivatives();
          // An empty derivative means g_i does not depend on θ at all.
          if (der.size() == MixedChunk) acc += u(i) * der;
        }
        // Element-wise: a dynamic head() of a tiny fixed vector trips GCC's -Warray-bounds.
        for (Index k = 0; k < width; ++k) dtheta(start + k) = acc(k);
      }
    }
  }

  // --- extras ---------------------------------------------------------------------------------

  /// L(w, t) from the model's double value(w, θ, t) (present only when the model has one).
  template <class M = Model, std::enable_if_t<detail::autodiff::HasModelValue<M>::value, int> = 0>
  double value(const Eigen::VectorXd& w, Index t) const {
    checkSize(w, "value", "w");
    return m_model.value(w, m_theta, t);
  }

  /// θ's named blocks (present only when the model has hyperparameterLayout()).
  template <class M = Model, std::enable_if_t<detail::HasHyperparameterLayout<M>::value, int> = 0>
  ParameterLayout hyperparameterLayout() const {
    return m_model.hyperparameterLayout();
  }

  /// The model's layout (present only when the model has layout()).
  template <class M = Model, std::enable_if_t<detail::HasLayout<M>::value, int> = 0>
  decltype(auto) layout() const {
    return m_model.layout();
  }

  /// The current θ.
  const Eigen::VectorXd& hyperparameters() const noexcept { return m_theta; }

  /// Replaces θ (size numHyperparameters(), finite).
  void setHyperparameters(const Eigen::VectorXd& theta) {
    if (theta.size() != m_model.numHyperparameters()) {
      throw InvalidArgument(detail::message("AutoDiffObjective::setHyperparameters: got ", theta.size(),
                                            " values but the model has ", m_model.numHyperparameters(),
                                            " hyperparameters"));
    }
    checkTheta(theta, "AutoDiffObjective::setHyperparameters");
    m_theta = theta;
  }

  const Model& model() const noexcept { return m_model; }  ///< The wrapped model.

 private:
  template <class S>
  static double derivative(const S& x, Index k) {
    // A result that never met an active variable may carry an empty (dynamic) derivative.
    return x.derivatives().size() > k ? x.derivatives()(k) : 0.0;
  }

  static detail::autodiff::Vec<DirectionalScalar> seedDirection(const Eigen::VectorXd& x, const Eigen::VectorXd& dx) {
    detail::autodiff::Vec<DirectionalScalar> out(x.size());
    for (Index i = 0; i < x.size(); ++i) out(i) = DirectionalScalar(x(i), Eigen::Matrix<double, 1, 1>(dx(i)));
    return out;
  }

  static void checkTheta(const Eigen::VectorXd& theta, const char* fn) {
    for (Index j = 0; j < theta.size(); ++j)
      if (!std::isfinite(theta(j))) {
        throw InvalidArgument(detail::message(fn, ": theta[", j, "] is ", theta(j), "; hyperparameters must be finite"));
      }
  }

  void checkSize(const Eigen::VectorXd& x, const char* fn, const char* name) const {
    if (x.size() != m_model.numParameters()) {
      throw InvalidArgument(detail::message("AutoDiffObjective::", fn, ": ", name, " has ", x.size(),
                                            " entries but the model has ", m_model.numParameters(), " parameters"));
    }
  }

  template <class V>
  static void checkOutput(const V& out, Index expected, const char* member) {
    if (out.size() != expected) {
      throw InvalidArgument(detail::message("AutoDiffObjective: the model's ", member, " produced ", out.size(),
                                            " entries, expected ", expected, "; resize the output argument"));
    }
  }

  Model m_model;
  Eigen::VectorXd m_theta;
};

/// AutoDiffObjective<Model> with Model deduced.
template <class Model>
AutoDiffObjective<std::decay_t<Model>> makeAutoDiffObjective(Model&& model) {
  return AutoDiffObjective<std::decay_t<Model>>(std::forward<Model>(model));
}

/// AutoDiffObjective<Model> with Model deduced and an explicit initial θ.
template <class Model>
AutoDiffObjective<std::decay_t<Model>> makeAutoDiffObjective(Model&& model, Eigen::VectorXd theta) {
  return AutoDiffObjective<std::decay_t<Model>>(std::forward<Model>(model), std::move(theta));
}

}  // namespace hypergrad
