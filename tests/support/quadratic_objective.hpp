// SPDX-License-Identifier: MIT
#pragma once

/// \file quadratic_objective.hpp (tests only)
/// \brief A stochastic quadratic training loss with closed-form derivatives, for tests and
/// benchmarks of the optimizer and the reverse pass:
/// \f[ L(w, t) = \tfrac12 (w - c_t)^\top A (w - c_t), \qquad c_t = \mu + \sigma\,\varepsilon_t, \f]
/// ε_t ~ N(0, I) drawn from CounterRng(seed, t).
/// A is fixed, symmetric positive definite; c_t plays the minibatch (a pure function of t, so the
/// reverse pass sees the same target as the forward pass). θ is empty.

#include <cmath>
#include <cstdint>
#include <utility>

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <Eigen/QR>

#include <hypergrad/config.hpp>
#include <hypergrad/errors.hpp>
#include <hypergrad/random.hpp>

namespace hypergrad {

/// \f$L(w, t) = \tfrac12 (w - c_t)^\top A (w - c_t)\f$: gradient A(w − c_t), Hessian A, no
/// hyperparameters. Satisfies the objective concept (objective.hpp).
class QuadraticObjective {
 public:
  /// A quadratic with Hessian `hessian` (symmetric positive definite, checked) and targets
  /// c_t = mean + noiseScale · ε_t, ε_t standard normal from CounterRng(seed, t).
  QuadraticObjective(Eigen::MatrixXd hessian, Eigen::VectorXd mean, double noiseScale, std::uint64_t seed)
      : m_hessian(std::move(hessian)), m_mean(std::move(mean)), m_noiseScale(noiseScale), m_seed(seed) {
    validate();
  }

  /// Zero-mean targets: c_t = noiseScale · ε_t.
  QuadraticObjective(const Eigen::MatrixXd& hessian, double noiseScale, std::uint64_t seed)
      : QuadraticObjective(hessian, Eigen::VectorXd::Zero(hessian.rows()), noiseScale, seed) {}

  /// A random symmetric positive definite n×n matrix Q diag(λ) Qᵀ, Q a random orthogonal matrix
  /// (from `seed`), eigenvalues log-spaced in [minEigenvalue, maxEigenvalue]: the condition
  /// number is exactly maxEigenvalue / minEigenvalue. Handy to build test problems.
  static Eigen::MatrixXd randomHessian(Index n, std::uint64_t seed, double minEigenvalue = 0.1,
                                       double maxEigenvalue = 1.0) {
    if (n <= 0) {
      throw InvalidArgument(detail::message("QuadraticObjective::randomHessian: n = ", n, " must be positive"));
    }
    if (!(minEigenvalue > 0.0) || !(maxEigenvalue >= minEigenvalue) || !std::isfinite(maxEigenvalue)) {
      throw InvalidArgument(detail::message("QuadraticObjective::randomHessian: eigenvalue range [", minEigenvalue,
                                            ", ", maxEigenvalue, "] must satisfy 0 < min <= max < inf"));
    }
    CounterRng rng(seed, 0x48455353ull);  // stream "HESS": independent of the targets' streams
    Eigen::MatrixXd g(n, n);
    for (Index j = 0; j < n; ++j)
      for (Index i = 0; i < n; ++i) g(i, j) = rng.normal();
    const Eigen::MatrixXd q = Eigen::HouseholderQR<Eigen::MatrixXd>(g).householderQ();
    Eigen::VectorXd lambda(n);
    for (Index i = 0; i < n; ++i) {
      const double s = n == 1 ? 0.0 : static_cast<double>(i) / static_cast<double>(n - 1);
      lambda(i) = minEigenvalue * std::pow(maxEigenvalue / minEigenvalue, s);
    }
    Eigen::MatrixXd a = q * lambda.asDiagonal() * q.transpose();
    // Exactly symmetric, so that A u and Aᵀ u are the same bits.
    return (0.5 * (a + a.transpose())).eval();
  }

  Index numParameters() const noexcept { return m_hessian.rows(); }
  Index numHyperparameters() const noexcept { return 0; }
  /// θ is empty.
  Eigen::VectorXd hyperparameters() const { return Eigen::VectorXd(0); }

  const Eigen::MatrixXd& hessian() const noexcept { return m_hessian; }
  const Eigen::VectorXd& mean() const noexcept { return m_mean; }
  double noiseScale() const noexcept { return m_noiseScale; }
  std::uint64_t seed() const noexcept { return m_seed; }

  /// The target c_t of step t.
  Eigen::VectorXd target(Index t) const {
    CounterRng rng(m_seed, static_cast<std::uint64_t>(t));
    Eigen::VectorXd c(m_mean.size());
    for (Index i = 0; i < c.size(); ++i) c(i) = m_mean(i) + m_noiseScale * rng.normal();
    return c;
  }

  /// L(w, t).
  double value(const Eigen::VectorXd& w, Index t) const {
    checkSize(w, "value", "w");
    const Eigen::VectorXd d = w - target(t);
    return 0.5 * d.dot(m_hessian * d);
  }

  /// g = A (w − c_t).
  void gradient(const Eigen::VectorXd& w, Index t, Eigen::VectorXd& g) const {
    checkSize(w, "gradient", "w");
    g.noalias() = m_hessian * (w - target(t));
  }

  /// hu = A u.
  void hessianVectorProduct(const Eigen::VectorXd& w, Index /*t*/, const Eigen::VectorXd& u,
                            Eigen::VectorXd& hu) const {
    checkSize(w, "hessianVectorProduct", "w");
    checkSize(u, "hessianVectorProduct", "u");
    hu.noalias() = m_hessian * u;
  }

  /// θ is empty: dtheta becomes a vector of size 0.
  void mixedProduct(const Eigen::VectorXd& w, Index /*t*/, const Eigen::VectorXd& u, Eigen::VectorXd& dtheta) const {
    checkSize(w, "mixedProduct", "w");
    checkSize(u, "mixedProduct", "u");
    dtheta.resize(0);
  }

 private:
  void validate() const {
    const Index n = m_hessian.rows();
    if (n == 0 || m_hessian.cols() != n) {
      throw InvalidArgument(detail::message("QuadraticObjective: the Hessian is ", m_hessian.rows(), "x",
                                            m_hessian.cols(), "; it must be square and non-empty"));
    }
    if (!m_hessian.allFinite()) throw InvalidArgument("QuadraticObjective: the Hessian has a NaN or infinite entry");
    for (Index j = 0; j < n; ++j)
      for (Index i = j + 1; i < n; ++i)
        if (m_hessian(i, j) != m_hessian(j, i)) {
          throw InvalidArgument(detail::message("QuadraticObjective: the Hessian is not exactly symmetric at (", i,
                                                ", ", j, "): ", m_hessian(i, j), " vs ", m_hessian(j, i),
                                                "; symmetrise it, e.g. 0.5 * (A + A.transpose())"));
        }
    if (Eigen::LLT<Eigen::MatrixXd>(m_hessian).info() != Eigen::Success) {
      throw InvalidArgument("QuadraticObjective: the Hessian is not positive definite (Cholesky failed)");
    }
    if (m_mean.size() != n) {
      throw InvalidArgument(detail::message("QuadraticObjective: the mean has ", m_mean.size(),
                                            " entries but the Hessian is ", n, "x", n));
    }
    if (!m_mean.allFinite() || !std::isfinite(m_noiseScale)) {
      throw InvalidArgument("QuadraticObjective: the mean and the noise scale must be finite");
    }
  }

  void checkSize(const Eigen::VectorXd& x, const char* fn, const char* name) const {
    if (x.size() != m_hessian.rows()) {
      throw InvalidArgument(detail::message("QuadraticObjective::", fn, ": ", name, " has ", x.size(),
                                            " entries but the objective has ", m_hessian.rows(), " parameters"));
    }
  }

  Eigen::MatrixXd m_hessian;
  Eigen::VectorXd m_mean;
  double m_noiseScale;
  std::uint64_t m_seed;
};

}  // namespace hypergrad
