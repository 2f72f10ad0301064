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
  double stepSize = 0.04;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double epsilon = 1e-8;

  /// x ← x − stepSize · m̂ / (√v̂ + ε).
  void update(Eigen::VectorXd& x, const Eigen::VectorXd& grad) {
    check(x, grad);
    if (m_m.size() != x.size()) {
      m_m = Eigen::VectorXd::Zero(x.size());
      m_v = Eigen::VectorXd::Zero(x.size());
      m_t = 0;
    }
    ++m_t;
    m_m = beta1 * m_m + (1 - beta1) * grad;
    m_v = beta2 * m_v + (1 - beta2) * grad.cwiseAbs2();
    const double c1 = 1 - std::pow(beta1, static_cast<double>(m_t)), c2 = 1 - std::pow(beta2, static_cast<double>(m_t));
    x.array() -= stepSize * (m_m.array() / c1) / ((m_v.array() / c2).sqrt() + epsilon);
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
  double stepSize = 0.01;
  double momentum = 0.0;

  void update(Eigen::VectorXd& x, const Eigen::VectorXd& grad) {
    if (x.size() != grad.size())
      throw InvalidArgument(detail::message("MetaSgd::update: x has ", x.size(), " entries, gradient ", grad.size()));
    if (!(stepSize > 0) || !(momentum >= 0 && momentum < 1))
      throw InvalidArgument("MetaSgd: need stepSize > 0 and momentum in [0, 1)");
    if (m_u.size() != x.size()) m_u = Eigen::VectorXd::Zero(x.size());
    m_u = momentum * m_u - stepSize * grad;
    x += m_u;
  }
  void reset() { m_u.resize(0); }

 private:
  Eigen::VectorXd m_u;
};

}  // namespace hypergrad
