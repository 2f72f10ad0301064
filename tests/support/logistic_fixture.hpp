// Test fixture: an L2-regularised logistic regression written directly from its formulas, with
// explicit Hessian and mixed-derivative matrices, and a plain double SGD-with-momentum run that
// records its trajectory (the library's momentum rule on the reference arithmetic). Both are
// independent of the library's exact arithmetic and reverse pass; the tests compare against them.
#pragma once

#include <cmath>
#include <vector>

#include <Eigen/Dense>

#include <hypergrad/batches.hpp>
#include <hypergrad/layout.hpp>
#include <hypergrad/optimizers/momentum.hpp>
#include <hypergrad/random.hpp>
#include <hypergrad/reference/optimizer.hpp>

namespace fixture {

using Eigen::MatrixXd;
using Eigen::VectorXd;
using hypergrad::Index;

/// L(w, θ, t) = mean_{j ∈ batch t} log(1 + exp(−y_j x_jᵀw)) + ½ Σ_i exp(θ_i) w_i².
struct Logistic {
  MatrixXd x;  // examples × features
  VectorXd y;  // ±1
  VectorXd theta;
  hypergrad::BatchSchedule batches;

  Logistic(Index examples, Index features, Index batchSize, std::uint64_t seed) {
    // The teacher depends on the number of features only, so a validation set drawn with another
    // seed shares it; the examples and noise depend on the seed.
    hypergrad::CounterRng rng(seed), teacherRng(static_cast<std::uint64_t>(features) * 7919u);
    x.resize(examples, features);
    y.resize(examples);
    VectorXd truth(features);
    for (Index i = 0; i < features; ++i) truth(i) = teacherRng.normal();
    for (Index j = 0; j < examples; ++j) {
      for (Index i = 0; i < features; ++i) x(j, i) = rng.normal();
      y(j) = (x.row(j).dot(truth) + 0.5 * rng.normal()) > 0 ? 1.0 : -1.0;
    }
    theta = VectorXd::Constant(features, std::log(1e-2));
    for (Index i = 0; i < features; ++i) theta(i) += 0.3 * rng.normal();
    batches = hypergrad::SeededBatches(seed + 1, examples, batchSize);
  }

  Index numParameters() const { return x.cols(); }
  Index numHyperparameters() const { return theta.size(); }

  static double sigmoid(double z) { return 1.0 / (1.0 + std::exp(-z)); }

  double value(const VectorXd& w, Index t) const {
    const auto idx = batches(t);
    double s = 0;
    for (Index j : idx) s += std::log1p(std::exp(-y(j) * x.row(j).dot(w)));
    return s / static_cast<double>(idx.size()) + 0.5 * (theta.array().exp() * w.array().square()).sum();
  }
  void gradient(const VectorXd& w, Index t, VectorXd& g) const {
    const auto idx = batches(t);
    g = theta.array().exp().matrix().cwiseProduct(w);
    for (Index j : idx) g -= (y(j) * sigmoid(-y(j) * x.row(j).dot(w)) / static_cast<double>(idx.size())) * x.row(j).transpose();
  }
  MatrixXd hessian(const VectorXd& w, Index t) const {
    const auto idx = batches(t);
    MatrixXd h = theta.array().exp().matrix().asDiagonal();
    for (Index j : idx) {
      const double s = sigmoid(x.row(j).dot(w));
      h += (s * (1 - s) / static_cast<double>(idx.size())) * x.row(j).transpose() * x.row(j);
    }
    return h;
  }
  /// ∂g/∂θ, N × P: ∂g_i/∂θ_j = δ_ij exp(θ_i) w_i.
  MatrixXd mixedJacobian(const VectorXd& w, Index) const {
    return (theta.array().exp() * w.array()).matrix().asDiagonal();
  }
  void hessianVectorProduct(const VectorXd& w, Index t, const VectorXd& u, VectorXd& hu) const { hu = hessian(w, t) * u; }
  void mixedProduct(const VectorXd& w, Index t, const VectorXd& u, VectorXd& d) const {
    d = mixedJacobian(w, t).transpose() * u;
  }
};

/// Validation loss: mean logistic loss on a fixed set (no regulariser, no θ).
struct Validation {
  MatrixXd x;
  VectorXd y;
  explicit Validation(const Logistic& train, std::uint64_t seed) {
    Logistic other(60, train.x.cols(), 60, seed);
    x = other.x;
    y = other.y;
  }
  double value(const VectorXd& w) const {
    double s = 0;
    for (Index j = 0; j < x.rows(); ++j) s += std::log1p(std::exp(-y(j) * x.row(j).dot(w)));
    return s / static_cast<double>(x.rows());
  }
  double valueAndGradient(const VectorXd& w, VectorXd& g) const {
    g = VectorXd::Zero(w.size());
    for (Index j = 0; j < x.rows(); ++j)
      g -= (y(j) * Logistic::sigmoid(-y(j) * x.row(j).dot(w)) / static_cast<double>(x.rows())) * x.row(j).transpose();
    return value(w);
  }
};

/// Plain double SGD with momentum (the momentum rule in reference arithmetic), with its trajectory.
struct DoubleRun {
  std::vector<VectorXd> w, v, g;  // w[t], v[t] for t = 0..T; g[t] for t = 0..T-1
};

template <class Objective>
DoubleRun trainDouble(const Objective& f, const hypergrad::ParameterLayout& layout, const MatrixXd& alpha,
                      const MatrixXd& gamma, const VectorXd& w1, const VectorXd& v1) {
  hypergrad::ReferenceOptimizer<hypergrad::MomentumRule> opt(layout, hypergrad::Schedule(alpha),
                                                             hypergrad::Schedule(gamma));
  opt.start(w1, v1);
  DoubleRun run;
  run.w.push_back(w1);
  run.v.push_back(v1);
  while (opt.iteration() < opt.numIterations()) {
    opt.step(f);
    run.w.push_back(opt.weights());
    run.v.push_back(opt.state(hypergrad::MomentumRule::Velocity));
    run.g.push_back(opt.lastGradient());
  }
  return run;
}

}  // namespace fixture
