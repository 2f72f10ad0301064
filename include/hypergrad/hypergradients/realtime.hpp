// SPDX-License-Identifier: MIT
#pragma once

/// \file realtime.hpp
/// \brief Real-time hyperparameter optimisation (RTHO; Franceschi et al.\ 2017, Alg.\ 3): the
/// hyperparameters change *during* one training run. Every Δ steps the forward tangents
/// (forward.hpp) give ∂f(w_t)/∂λ — the validation objective at the current weights, as if λ had
/// been constant so far — and λ ← λ − β ∂f/∂λ takes effect from the next step on. One run instead
/// of a meta-loop of runs, at H Hessian-vector products per step, biased by that "as if".
///
/// The hyperparameters are offsets along schedule directions (HyperparameterDirections): schedule
/// j's entry (t, k) is its initial value plus Σ_h λ_h · tangent_h(t, k), λ starting at 0; a
/// per-group constant learning rate (`addScheduleGroups("learningRates")`) moves α_k by λ_k. The
/// run is in plain double on a ReferenceOptimizer (nothing here is reversed): its schedules are
/// replaced at every update for the iterations not yet taken, the run continuing from its state
/// (exportRun / importRun). `schedulesUsed` holds what every iteration used, so a
/// ReferenceOptimizer with those schedules retraces the run bit for bit (tested).

#include <array>
#include <chrono>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "../config.hpp"
#include "../errors.hpp"
#include "../objective.hpp"
#include "../reference/optimizer.hpp"
#include "../schedule.hpp"
#include "directions.hpp"
#include "forward.hpp"

namespace hypergrad {

/// Settings of realTimeHyperparameters().
struct RealTimeOptions {
  double metaLearningRate = 0.01;  ///< β in λ ← λ − β ∂f/∂λ
  Index interval = 10;             ///< Δ: λ is updated after every Δ steps (not after the last)
};

/// What realTimeHyperparameters() did.
struct RealTimeResult {
  std::vector<std::string> names;        ///< λ_h's names (the directions')
  Eigen::VectorXd hyperparameters;       ///< λ at the end (offsets along the directions)
  std::vector<Index> iterations;         ///< the steps taken at each update
  Eigen::MatrixXd trajectory;            ///< λ after each update, updates × H
  Eigen::MatrixXd hypergradients;        ///< ∂f/∂λ at each update, updates × H
  std::vector<double> metaObjective;     ///< f(w_t) at each update
  double finalMetaObjective = 0.0;       ///< f at the final weights
  Eigen::VectorXd finalWeights;          ///< the weights after T steps
  std::vector<Eigen::MatrixXd> schedulesUsed;  ///< each schedule's values as used, T × G, in the rule's order
  Index hessianProducts = 0;             ///< Hessian-vector products evaluated
  double seconds = 0.0;                  ///< wall time
};

/// \brief Trains `prototype`'s rule from `w1` for its T iterations while updating the
/// hyperparameters of `directions` online (see the file comment); `prototype` gives the layout
/// and the initial schedules and is not changed.
///
/// \throws InvalidArgument for directions that move θ or an initial state (only schedules can
///         change during a run), a non-finite β or Δ < 1, and for an update that drives a ratio
///         schedule out of [0, 1] or another out of its domain (non-finite, ε ≤ 0), naming the
///         entry (nothing is clamped); whatever a step throws.
template <class Rule, class RatioT, class Objective, class Meta>
RealTimeResult realTimeHyperparameters(const ReferenceOptimizer<Rule, RatioT>& prototype, const Objective& f,
                                       const Meta& meta, const HyperparameterDirections<Rule>& directions,
                                       const Eigen::VectorXd& w1, const RealTimeOptions& options = RealTimeOptions()) {
  constexpr auto J = static_cast<std::size_t>(Rule::numSchedules);
  const auto begin = std::chrono::steady_clock::now();
  const Index T = prototype.numIterations(), H = directions.size();
  if (!std::isfinite(options.metaLearningRate) || options.interval < 1) {
    throw InvalidArgument(detail::message("realTimeHyperparameters: meta learning rate ", options.metaLearningRate,
                                          " and interval ", options.interval, "; give a finite rate and an interval >= 1"));
  }
  for (Index h = 0; h < H; ++h) {
    const HyperparameterDirection& d = directions.direction(h);
    if (!d.theta.empty() || !d.initial.empty()) {
      throw InvalidArgument(detail::message("realTimeHyperparameters: hyperparameter '", d.name,
                                            "' moves the objective's theta or an initial state; only schedules can "
                                            "change during a run"));
    }
  }
  std::array<Schedule, J> schedules;
  for (std::size_t j = 0; j < J; ++j) schedules[j] = prototype.schedules().requested(static_cast<Index>(j));
  const std::array<Schedule, J> initial = schedules;

  ReferenceOptimizer<Rule, RatioT> opt(prototype.layout(), schedules);
  opt.start(w1);
  ForwardTangents<Rule, Objective> tangents(f, directions);
  tangents.onTrainBegin(opt);

  RealTimeResult out;
  out.names = directions.names();
  Eigen::VectorXd lambda = Eigen::VectorXd::Zero(H);
  std::vector<Eigen::VectorXd> lambdas, gradients;
  for (Index t = 0; t < T; ++t) {
    opt.step(f);
    tangents.onForwardStep(opt, t, opt.lastGradient());
    if ((t + 1) % options.interval != 0 || t + 1 == T) continue;
    const DirectionalHypergradients hg = tangents.hypergradients(meta, opt.weights());
    lambda -= options.metaLearningRate * hg.values;
    // The schedules from iteration t + 1 on: the initial values plus λ along the directions.
    for (std::size_t j = 0; j < J; ++j)
      schedules[j].values().bottomRows(T - t - 1) = initial[j].values().bottomRows(T - t - 1);
    for (Index h = 0; h < H; ++h)
      for (const auto& e : directions.direction(h).schedules)
        if (e.iteration > t) schedules[static_cast<std::size_t>(e.schedule)].values()(e.iteration, e.group) += lambda(h) * e.value;
    // Ratio schedules stay in [0, 1] (the reference arithmetic itself would run any value);
    // the constructor below checks finiteness and the signs of the others.
    for (std::size_t j = 0; j < J; ++j) {
      if (Rule::schedules[j].domain != ScheduleDomain::Ratio) continue;
      const Eigen::MatrixXd& v = schedules[j].values();
      for (Index r = t + 1; r < T; ++r)
        for (Index k = 0; k < v.cols(); ++k)
          if (!(v(r, k) >= 0.0 && v(r, k) <= 1.0)) {
            throw InvalidArgument(detail::message(
                "realTimeHyperparameters: after the update at step ", t + 1, " the ", Rule::schedules[j].description,
                " at iteration ", r, ", group '", prototype.layout().group(k).name, "' would be ", v(r, k),
                ", outside [0, 1]; lower the meta learning rate (", options.metaLearningRate, ")"));
          }
    }
    ReferenceOptimizer<Rule, RatioT> next(prototype.layout(), schedules);  // validates the new entries
    next.importRun(opt.exportRun());
    opt = std::move(next);
    out.iterations.push_back(t + 1);
    out.metaObjective.push_back(hg.metaObjective);
    lambdas.push_back(lambda);
    gradients.push_back(hg.values);
  }
  out.hyperparameters = lambda;
  out.trajectory.resize(static_cast<Index>(lambdas.size()), H);
  out.hypergradients.resize(static_cast<Index>(gradients.size()), H);
  for (std::size_t u = 0; u < lambdas.size(); ++u) {
    out.trajectory.row(static_cast<Index>(u)) = lambdas[u].transpose();
    out.hypergradients.row(static_cast<Index>(u)) = gradients[u].transpose();
  }
  out.finalWeights = opt.weights();
  out.finalMetaObjective = meta.value(out.finalWeights);
  for (std::size_t j = 0; j < J; ++j) out.schedulesUsed.push_back(schedules[j].values());
  out.hessianProducts = tangents.hessianProducts();
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  return out;
}

}  // namespace hypergrad
