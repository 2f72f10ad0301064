// A plain double SGD-with-momentum trainer for any objective: the independent reference that
// finite differences are taken of (DESIGN.md §8). Same recurrence, same batches, same schedules.
#pragma once

#include <Eigen/Core>

#include <hypergrad/layout.hpp>

namespace fixture {

template <class Objective>
Eigen::VectorXd trainDoubleFinal(const Objective& f, const hypergrad::ParameterLayout& layout,
                                 const Eigen::MatrixXd& alpha, const Eigen::MatrixXd& gamma, Eigen::VectorXd w,
                                 Eigen::VectorXd v) {
  Eigen::VectorXd g;
  for (hypergrad::Index t = 0; t < alpha.rows(); ++t) {
    f.gradient(w, t, g);
    const Eigen::VectorXd a = layout.expand(alpha.row(t).transpose()), c = layout.expand(gamma.row(t).transpose());
    v = (c.array() * v.array() - (1.0 - c.array()) * g.array()).matrix();
    w += a.cwiseProduct(v);
  }
  return w;
}

inline double relErr(double a, double b) {
  const double scale = std::max(std::fabs(a), std::fabs(b));
  return scale == 0 ? 0 : std::fabs(a - b) / scale;
}

}  // namespace fixture
