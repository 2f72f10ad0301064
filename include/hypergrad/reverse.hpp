// SPDX-License-Identifier: MIT
#pragma once

/// \file reverse.hpp
/// \brief The reverse pass: exact hypergradients of a meta objective f(w_{T+1}) with respect to
/// the learning-rate and momentum schedules, the initial weights and velocity, and the training
/// objective's hyperparameters θ, by running the optimizer backwards (Maclaurin et al. 2015,
/// Alg. 2; DESIGN.md §1). It stores no trajectory: memory is O(N) plus the information buffer.

#include <cmath>
#include <string>

#include <Eigen/Core>

#include "callbacks.hpp"
#include "config.hpp"
#include "errors.hpp"
#include "layout.hpp"
#include "objective.hpp"

namespace hypergrad {

/// The result of a reverse pass. Gradients with respect to γ refer to the quantised values the
/// optimizer actually used (SgdMomentum::quantizedMomenta()).
struct Hypergradients {
  double metaObjective = 0.0;       ///< f(w_{T+1})
  Eigen::MatrixXd learningRates;    ///< ∂f/∂α, T × G
  Eigen::MatrixXd momenta;          ///< ∂f/∂γ, T × G
  Eigen::VectorXd initialWeights;   ///< ∂f/∂w₁
  Eigen::VectorXd initialVelocity;  ///< ∂f/∂v₁
  Eigen::VectorXd hyperparameters;  ///< ∂f/∂θ (size of the objective's θ; empty when it has none)
  Eigen::VectorXd finalWeights;     ///< w_{T+1}, the trained weights
};

namespace detail {
// Throws NonFiniteValue naming the iteration, the entry and (for w-sized vectors) its group.
inline void checkFiniteProduct(const Eigen::VectorXd& x, const char* what, Index t, const ParameterLayout* layout) {
  for (Index i = 0; i < x.size(); ++i) {
    if (std::isfinite(x(i))) continue;
    std::string group;
    if (layout != nullptr)
      for (const ParameterGroup& grp : layout->groups())
        if (i >= grp.offset && i < grp.offset + grp.size) group = detail::message(", group '", grp.name, "'");
    throw NonFiniteValue(detail::message("reverse: the ", what, " at iteration ", t, group, ", entry ", i, " is ", x(i),
                                         ". The optimizer has reversed step ", t,
                                         " consistently; check the objective's second derivatives there"));
  }
}
}  // namespace detail

/// Runs the remaining forward steps of `opt` (from iteration() to numIterations()).
template <class Optimizer, class Objective, class Callback = NullCallback>
void train(Optimizer& opt, const Objective& f, Callback&& callback = {}) {
  checkObjective<Objective>();
  while (opt.iteration() < opt.numIterations()) {
    const Index t = opt.iteration();
    opt.step(f);
    detail::callForwardStep(callback, opt, t, opt.lastGradient());
  }
}

/// Reverses every step `opt` has taken, accumulating hypergradients of `meta` at the current
/// weights, and verifies that the initial state was recovered bit for bit with an empty buffer
/// (throws ExactnessViolation otherwise). Per step: one gradient, one Hessian-vector product and
/// one mixed product at the recomputed w_t, from the objective's fused reverseStep when it has one.
///
/// Note on per-group γ: w_t enters v_{t+1} through −(1−γ_t) ⊙ g_t, so the adjoint is
/// H_t((1−γ_t) ⊙ dv) — the product direction is scaled before the Hessian, which matters when γ
/// differs between groups.
template <class Optimizer, class Objective, class Meta, class Callback = NullCallback>
Hypergradients reverse(Optimizer& opt, const Objective& f, const Meta& meta, Callback&& callback = {}) {
  checkObjective<Objective>();
  checkMetaObjective<Meta>();
  const Index T = opt.iteration();
  if (T == 0) {
    throw InvalidState("reverse: the optimizer is at iteration 0: there is nothing to reverse (run the forward pass "
                       "first; a run can be reversed once)");
  }
  const Index n = opt.size();
  const Index numGroups = opt.layout().numGroups();
  if (f.numParameters() != n) {
    throw InvalidArgument(detail::message("reverse: the objective has ", f.numParameters(),
                                          " parameters but the optimizer has ", n));
  }

  Hypergradients out;
  out.finalWeights = opt.weights();
  Eigen::VectorXd dw(n);
  out.metaObjective = meta.valueAndGradient(out.finalWeights, dw);
  if (dw.size() != n) {
    throw InvalidArgument(detail::message("reverse: the meta objective's gradient has ", dw.size(), " entries, expected ", n));
  }
  if (!dw.allFinite() || !std::isfinite(out.metaObjective))
    throw NonFiniteValue("reverse: the meta objective or its gradient at the final weights is not finite");

  const Index numHyper = f.numHyperparameters();
  Eigen::VectorXd dtheta = Eigen::VectorXd::Zero(numHyper);
  if constexpr (detail::HasHyperGradient<Meta>::value) {
    meta.hyperGradient(out.finalWeights, dtheta);
    if (dtheta.size() != numHyper) {
      throw InvalidArgument(detail::message("reverse: the meta objective's hyperGradient has ", dtheta.size(),
                                            " entries but the objective has ", numHyper, " hyperparameters"));
    }
  }
  out.learningRates = Eigen::MatrixXd::Zero(opt.numIterations(), numGroups);
  out.momenta = Eigen::MatrixXd::Zero(opt.numIterations(), numGroups);

  Eigen::VectorXd dv = Eigen::VectorXd::Zero(n), u(n), vNext(n), w(n), v(n), g(n), hu(n), mixed(numHyper);
  Eigen::VectorXd groupSum(numGroups);  // per-group sums of one step, in a fixed order
  for (Index t = T; t-- > 0;) {
    opt.velocity(vNext);
    opt.unstepWeights();  // w_t = w_{t+1} − α_t ⊙ v_{t+1}, exact
    opt.weights(w);
    groupSum.setZero();
    opt.forEachGroup(t, [&](Index k, Index i, double alpha, double gamma) {
      groupSum(k) += dw(i) * vNext(i);  // ∂w_{t+1}/∂α_t = v_{t+1}
      dv(i) += alpha * dw(i);           // ∂w_{t+1}/∂v_{t+1} = α_t
      u(i) = (1.0 - gamma) * dv(i);
    });
    out.learningRates.row(t) = groupSum.transpose();
    reverseStep(f, w, t, u, g, hu, mixed);  // g_t, H_t u, (∂_θ g_t)ᵀ u
    if (g.size() != n || hu.size() != n || mixed.size() != numHyper) {
      throw InvalidArgument(detail::message("reverse: at iteration ", t, " the objective returned sizes ", g.size(), ", ",
                                            hu.size(), ", ", mixed.size(), " for the gradient, Hessian-vector product "
                                            "and mixed product; expected ", n, ", ", n, ", ", numHyper));
    }
    opt.unstepVelocity(g);  // v_t = (v_{t+1} + (1 − γ_t) g_t) / γ_t, exact
    // Checked after the step is complete, so the optimizer is left consistent at iteration t.
    detail::checkFiniteProduct(hu, "Hessian-vector product", t, &opt.layout());
    detail::checkFiniteProduct(mixed, "mixed product", t, nullptr);
    opt.velocity(v);
    groupSum.setZero();
    opt.forEachGroup(t, [&](Index k, Index i, double, double gamma) {
      groupSum(k) += dv(i) * (v(i) + g(i));  // ∂v_{t+1}/∂γ_t = v_t + g_t
      dv(i) *= gamma;                        // ∂v_{t+1}/∂v_t = γ_t
    });
    out.momenta.row(t) = groupSum.transpose();
    dw -= hu;
    dtheta -= mixed;
    detail::callReverseStep(callback, opt, t, ReverseState{g, dw, dv});
  }
  opt.checkRecoveredStart();
  out.initialWeights = std::move(dw);
  out.initialVelocity = std::move(dv);
  out.hyperparameters = std::move(dtheta);
  return out;
}

/// Starts `opt` at (w₁, v₁), trains for all its iterations and reverses: the whole computation
/// in one call.
template <class Optimizer, class Objective, class Meta, class Callback = NullCallback>
Hypergradients computeHypergradients(Optimizer& opt, const Objective& f, const Meta& meta, const Eigen::VectorXd& w1,
                                     const Eigen::VectorXd& v1, Callback&& callback = {}) {
  opt.start(w1, v1);
  train(opt, f, callback);
  return reverse(opt, f, meta, callback);
}

}  // namespace hypergrad
