// SPDX-License-Identifier: MIT
#pragma once

/// \file optimizers.hpp
/// \brief Meta-optimisers: first-order methods that update the unconstrained hyperparameter
/// vector x (MetaParameters::raw()) from ∂f/∂x, minimising f.

#include <cmath>

#include <Eigen/Core>

#include "../config.hpp"
#include "../errors.hpp"

namespace hypergrad {

/// Adam (Kingma & Ba 2015) with bias correction; the paper's meta step was 0.04.
struct MetaAdam {
  double stepSize = 0.04;  ///< η > 0, the step in x
  double beta1 = 0.9;      ///< decay of the first-moment estimate, in [0, 1)
  double beta2 = 0.999;    ///< decay of the second-moment estimate, in [0, 1)
  double epsilon = 1e-8;   ///< ε > 0, keeps the step bounded where v̂ ≈ 0

  /// x ← x − stepSize · m̂ / (√v̂ + ε).
  void update(Eigen::VectorXd& x, const Eigen::VectorXd& grad) {
    check(x, grad);
    if (m_m.size() != x.size()) {
      m_m.resize(x.size());
      m_v.resize(x.size());
      for (Index i = 0; i < x.size(); ++i) m_m(i) = m_v(i) = 0.0;
      m_t = 0;
    }
    ++m_t;
    const double c1 = 1 - std::pow(beta1, static_cast<double>(m_t)), c2 = 1 - std::pow(beta2, static_cast<double>(m_t));
    // A loop, not Eigen expressions: this is not a template, so expressions would be compiled in
    // every translation unit that includes the header.
    for (Index i = 0; i < x.size(); ++i) {
      m_m(i) = beta1 * m_m(i) + (1 - beta1) * grad(i);
      m_v(i) = beta2 * m_v(i) + (1 - beta2) * (grad(i) * grad(i));
      x(i) -= stepSize * (m_m(i) / c1) / (std::sqrt(m_v(i) / c2) + epsilon);
    }
  }
  /// Forgets the moment estimates (e.g. between independent meta runs).
  void reset() {
    m_m.resize(0);
    m_v.resize(0);
    m_t = 0;
  }

 private:
  void check(const Eigen::VectorXd& x, const Eigen::VectorXd& grad) const {
    if (x.size() != grad.size())
      throw InvalidArgument(detail::message("MetaAdam::update: x has ", x.size(), " entries, gradient ", grad.size()));
    if (!(stepSize > 0) || !(beta1 >= 0 && beta1 < 1) || !(beta2 >= 0 && beta2 < 1) || !(epsilon > 0))
      throw InvalidArgument("MetaAdam: need stepSize > 0, beta1 and beta2 in [0, 1), epsilon > 0");
  }
  Eigen::VectorXd m_m, m_v;
  long m_t = 0;
};

/// Gradient descent with optional heavy-ball momentum: u ← μ u − η ∇; x ← x + u.
struct MetaSgd {
  double stepSize = 0.01;  ///< η > 0
  double momentum = 0.0;   ///< μ in [0, 1); 0 is plain gradient descent

  /// One step on x from ∂f/∂x; InvalidArgument on a size mismatch or a setting out of range.
  void update(Eigen::VectorXd& x, const Eigen::VectorXd& grad) {
    if (x.size() != grad.size())
      throw InvalidArgument(detail::message("MetaSgd::update: x has ", x.size(), " entries, gradient ", grad.size()));
    if (!(stepSize > 0) || !(momentum >= 0 && momentum < 1))
      throw InvalidArgument("MetaSgd: need stepSize > 0 and momentum in [0, 1)");
    if (m_u.size() != x.size()) {
      m_u.resize(x.size());
      for (Index i = 0; i < x.size(); ++i) m_u(i) = 0.0;
    }
    for (Index i = 0; i < x.size(); ++i) {
      m_u(i) = momentum * m_u(i) - stepSize * grad(i);
      x(i) += m_u(i);
    }
  }
  /// Forgets the momentum (e.g. between independent meta runs).
  void reset() { m_u.resize(0); }

 private:
  Eigen::VectorXd m_u;
};

}  // namespace hypergrad
