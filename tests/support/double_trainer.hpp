// The final weights of a plain double SGD-with-momentum run for any objective: the momentum
// rule on the reference arithmetic, the independent run that finite differences are taken of
// (DESIGN.md §8). Same rule, same batches, same schedules as the exact run; no fixed point.
#pragma once

#include <algorithm>
#include <cmath>

#include <Eigen/Core>

#include <hypergrad/layout.hpp>
#include <hypergrad/optimizers/momentum.hpp>
#include <hypergrad/reference/optimizer.hpp>

namespace fixture {

template <class Objective>
Eigen::VectorXd trainDoubleFinal(const Objective& f, const hypergrad::ParameterLayout& layout,
                                 const Eigen::MatrixXd& alpha, const Eigen::MatrixXd& gamma, const Eigen::VectorXd& w,
                                 const Eigen::VectorXd& v) {
  hypergrad::ReferenceOptimizer<hypergrad::MomentumRule> opt(layout, hypergrad::Schedule(alpha),
                                                             hypergrad::Schedule(gamma));
  opt.start(w, v);
  while (opt.iteration() < opt.numIterations()) opt.step(f);
  return opt.weights();
}

inline double relErr(double a, double b) {
  const double scale = std::max(std::fabs(a), std::fabs(b));
  return scale == 0 ? 0 : std::fabs(a - b) / scale;
}

}  // namespace fixture
