// SPDX-License-Identifier: MIT
#pragma once

/// \file implicit.hpp
/// \brief Implicit (IFT) hypergradients (Bengio 2000; Pedregosa 2016, HOAG): at weights w that
/// are taken to be a stationary point of the training loss, ∇_w L(w, θ) = 0, the implicit
/// function theorem gives
///
///     df/dθ = ∂f/∂θ − (∂_θ ∇_w L)ᵀ x,   with   H x = ∇_w f,   H = ∇²_w L(w, θ),
///
/// solved by conjugate gradient on Hessian-vector products. It needs no trajectory and no reverse
/// pass — one linear solve at the final weights — but it is the hypergradient of the *optimum*,
/// not of the training run: it approaches the exact reverse pass's ∂f/∂θ only as w approaches a
/// stationary point (and only for hyperparameters of the training loss: L2 penalties, the training
/// data; a learning rate has no implicit gradient). ImplicitResult::stationarity says how far the
/// weights are from one; the exact pass (reverse()) is the reference to measure the error with.

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include <Eigen/Core>

#include "../config.hpp"
#include "../errors.hpp"
#include "../layout.hpp"
#include "../objective.hpp"

namespace hypergrad {

/// Settings of implicitHypergradients().
struct ImplicitOptions {
  /// The objective's batch index t at which L, H and the mixed product are evaluated; give an
  /// objective whose batch is the whole training set for the textbook IFT.
  Index batch = 0;
  /// CG stops when |H x − ∇_w f| ≤ tolerance · |∇_w f| (HOAG lowers it as the outer loop
  /// converges; a fixed one is enough for a single hypergradient).
  double tolerance = 1e-10;
  /// At most this many CG iterations (each one Hessian-vector product); 0: the number of weights.
  Index maxIterations = 0;
};

/// The implicit hypergradient and how the solve went.
struct ImplicitResult {
  double metaObjective = 0.0;       ///< f(w)
  Eigen::VectorXd hyperparameters;  ///< df/dθ by the implicit function theorem
  ParameterLayout hyperparameterLayout;  ///< θ's named blocks (from the objective)
  Eigen::VectorXd solution;         ///< x with H x ≈ ∇_w f
  Index iterations = 0;             ///< CG iterations (Hessian-vector products) taken
  double relativeResidual = 0.0;    ///< |H x − ∇_w f| / |∇_w f| at the end
  bool converged = false;           ///< relativeResidual ≤ tolerance
  /// Why CG stopped: "converged", "iteration limit", or "negative curvature" (pᵀHp ≤ 0: H is not
  /// positive definite along a CG direction, so w is not a strict minimum; x is then CG's last
  /// iterate and the result unreliable).
  std::string stopReason;
  /// |∇_w L(w, θ)| / max(1, |w|): how far w is from the stationary point the formula assumes.
  double stationarity = 0.0;
};

/// \brief Implicit hypergradients of `meta` with respect to the training objective's
/// hyperparameters θ at weights `w` (see the file comment).
///
/// Cost: one gradient of L, one of f, `iterations` Hessian-vector products, one mixed product.
/// \throws InvalidArgument for a w of the wrong size or an objective without hyperparameters;
///         NonFiniteValue when a product is not finite. CG failing to converge is reported in the
///         result (converged, stopReason), not thrown.
template <class Objective, class Meta>
ImplicitResult implicitHypergradients(const Objective& f, const Meta& meta, const Eigen::VectorXd& w,
                                      const ImplicitOptions& options = ImplicitOptions()) {
  checkObjective<Objective>();
  checkMetaObjective<Meta>();
  const Index n = f.numParameters();
  if (w.size() != n) {
    throw InvalidArgument(detail::message("implicitHypergradients: w has ", w.size(), " entries but the objective has ",
                                          n, " parameters"));
  }
  if (f.numHyperparameters() == 0) {
    throw InvalidArgument("implicitHypergradients: the objective has no hyperparameters θ (an implicit hypergradient "
                          "exists only for hyperparameters of the training loss, e.g. L2Regularized's penalties)");
  }
  if (!(options.tolerance > 0.0) || options.maxIterations < 0) {
    throw InvalidArgument(detail::message("implicitHypergradients: tolerance ", options.tolerance, " and maxIterations ",
                                          options.maxIterations, "; the tolerance must be > 0, the limit >= 0"));
  }
  const Index t = options.batch;
  auto finite = [](const Eigen::VectorXd& v, const char* what) {
    if (!v.allFinite())
      throw NonFiniteValue(detail::message("implicitHypergradients: the ", what, " is not finite"));
  };

  ImplicitResult out;
  Eigen::VectorXd df(n), gradL(n);
  out.metaObjective = meta.valueAndGradient(w, df);
  finite(df, "meta objective's gradient");
  f.gradient(w, t, gradL);
  finite(gradL, "training gradient");
  out.stationarity = gradL.norm() / std::max(1.0, w.norm());

  // Conjugate gradient on H x = df from x = 0.
  const Index limit = options.maxIterations > 0 ? options.maxIterations : n;
  const double target = options.tolerance * df.norm();
  Eigen::VectorXd x = Eigen::VectorXd::Zero(n), r = df, p = r, hp(n);
  double rr = r.squaredNorm();
  out.stopReason = "iteration limit";
  if (std::sqrt(rr) <= target) out.stopReason = "converged";
  while (out.stopReason != "converged" && out.iterations < limit) {
    f.hessianVectorProduct(w, t, p, hp);
    finite(hp, "Hessian-vector product");
    ++out.iterations;
    const double curvature = p.dot(hp);
    if (!(curvature > 0.0)) {
      out.stopReason = "negative curvature";
      break;
    }
    const double step = rr / curvature;
    x += step * p;
    r -= step * hp;
    const double next = r.squaredNorm();
    if (std::sqrt(next) <= target) {
      out.stopReason = "converged";
      rr = next;
      break;
    }
    p = r + (next / rr) * p;
    rr = next;
  }
  out.relativeResidual = df.norm() > 0.0 ? std::sqrt(rr) / df.norm() : 0.0;
  out.converged = out.stopReason == "converged";

  // df/dθ = ∂f/∂θ − (∂_θ ∇_w L)ᵀ x.
  Eigen::VectorXd mixed;
  f.mixedProduct(w, t, x, mixed);
  if (mixed.size() != f.numHyperparameters()) {
    throw InvalidArgument(detail::message("implicitHypergradients: the mixed product has ", mixed.size(),
                                          " entries but the objective has ", f.numHyperparameters(), " hyperparameters"));
  }
  finite(mixed, "mixed product");
  out.hyperparameters = -mixed;
  if constexpr (detail::HasHyperGradient<Meta>::value) {
    Eigen::VectorXd direct;
    meta.hyperGradient(w, direct);
    finite(direct, "meta objective's hyperGradient");
    out.hyperparameters += direct;
  }
  out.hyperparameterLayout = hyperparameterLayout(f);
  out.solution = std::move(x);
  return out;
}

}  // namespace hypergrad
