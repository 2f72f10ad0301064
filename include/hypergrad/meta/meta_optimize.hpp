// SPDX-License-Identifier: MIT
#pragma once

/// \file meta_optimize.hpp
/// \brief The meta-optimisation loop: evaluate hypergradients at the current hyperparameters,
/// report to the callbacks (any of which may stop the loop), take a meta step; repeat.
///
/// The user supplies `evaluate(const MetaParameters& p, Index metaIteration) -> MetaEvaluation`:
/// build the schedules and objectives from p, run computeHypergradients, and return the meta
/// objective with its gradient per block (value space, block order). Using metaIteration as part
/// of the training seed gives a fresh minibatch sequence per meta-iteration, as in the paper.
///
/// Callback hooks (all optional, plain structs; `true` from onMetaIteration stops the loop):
///
/// | hook                                               | called                         |
/// |----------------------------------------------------|--------------------------------|
/// | `void onMetaBegin(const MetaParameters&, Index n)` | before the first evaluation    |
/// | `bool onMetaIteration(const MetaIterationInfo&)`   | after each evaluation          |
/// | `void onMetaEnd(const MetaResult&)`                | once, at the end               |
/// | `std::string stopReason() const`                   | read when the callback stopped |

#include <chrono>
#include <cmath>
#include <map>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "../config.hpp"
#include "../errors.hpp"
#include "parameters.hpp"

namespace hypergrad {

/// What one evaluation of the hyperparameters returns.
struct MetaEvaluation {
  double objective = 0.0;                   ///< the quantity being minimised
  std::vector<Eigen::MatrixXd> gradients;   ///< ∂objective/∂value, one per MetaParameters block
  std::map<std::string, double> metrics;    ///< extra numbers to log ("train loss", "valid loss", …)
};

/// What callbacks see after each evaluation.
struct MetaIterationInfo {
  Index iteration = 0;          ///< 0-based meta-iteration
  Index numIterations = 0;      ///< the planned number
  double objective = 0.0;
  double gradientNorm = 0.0;    ///< ‖∂f/∂x‖ in the unconstrained coordinates
  const std::map<std::string, double>* metrics = nullptr;
  double elapsedSeconds = 0.0;
  double remainingSeconds = 0.0;  ///< estimate from the mean time per iteration so far
  const MetaParameters* parameters = nullptr;
};

/// The outcome of metaOptimize.
struct MetaResult {
  Index iterations = 0;                    ///< evaluations performed
  bool stoppedEarly = false;
  std::string stopReason;                  ///< empty unless stopped early
  std::vector<double> objectives;          ///< objective per evaluation
  std::vector<double> gradientNorms;       ///< ‖∂f/∂x‖ per evaluation
  std::vector<std::map<std::string, double>> metrics;
  Eigen::VectorXd bestRaw;                 ///< x with the lowest objective seen
  double bestObjective = 0.0;
  double seconds = 0.0;
};

namespace detail {
template <class, class = void>
struct HasOnMetaBegin : std::false_type {};
template <class C>
struct HasOnMetaBegin<C, std::void_t<decltype(std::declval<C&>().onMetaBegin(std::declval<const MetaParameters&>(), Index(0)))>>
    : std::true_type {};
template <class, class = void>
struct HasOnMetaIteration : std::false_type {};
template <class C>
struct HasOnMetaIteration<C, std::void_t<decltype(bool(std::declval<C&>().onMetaIteration(std::declval<const MetaIterationInfo&>())))>>
    : std::true_type {};
template <class, class = void>
struct HasOnMetaEnd : std::false_type {};
template <class C>
struct HasOnMetaEnd<C, std::void_t<decltype(std::declval<C&>().onMetaEnd(std::declval<const MetaResult&>()))>>
    : std::true_type {};
template <class, class = void>
struct HasStopReason : std::false_type {};
template <class C>
struct HasStopReason<C, std::void_t<decltype(std::string(std::declval<const C&>().stopReason()))>> : std::true_type {};

template <class C>
bool metaIteration(C& cb, const MetaIterationInfo& info, std::string& reason) {
  if constexpr (HasOnMetaIteration<C>::value) {
    if (cb.onMetaIteration(info)) {
      if (reason.empty()) {
        if constexpr (HasStopReason<C>::value) reason = cb.stopReason();
        else reason = "stopped by a callback";
      }
      return true;
    }
  }
  return false;
}
}  // namespace detail

/// Minimises evaluate(p).objective over the trainable blocks of `params` with `optimizer`
/// (MetaAdam, MetaSgd or any type with `update(Eigen::VectorXd& x, const Eigen::VectorXd& g)`),
/// for at most numIterations evaluations. On return `params` holds the last iterate (use
/// result.bestRaw for the best one). Throws NonFiniteValue when a hypergradient is not finite.
template <class Evaluate, class MetaOptimizer, class... Callbacks>
MetaResult metaOptimize(MetaParameters& params, Evaluate&& evaluate, MetaOptimizer& optimizer, Index numIterations,
                        Callbacks&&... callbacks) {
  if (numIterations <= 0)
    throw InvalidArgument(detail::message("metaOptimize: numIterations is ", numIterations, "; it must be positive"));
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  MetaResult result;
  (void)std::initializer_list<int>{([&] {
    if constexpr (detail::HasOnMetaBegin<std::decay_t<Callbacks>>::value) callbacks.onMetaBegin(params, numIterations);
  }(), 0)...};

  for (Index it = 0; it < numIterations; ++it) {
    MetaEvaluation eval = evaluate(static_cast<const MetaParameters&>(params), it);
    const Eigen::VectorXd dx = params.chain(eval.gradients);
    if (!dx.allFinite() || !std::isfinite(eval.objective)) {
      throw NonFiniteValue(detail::message("metaOptimize: at meta-iteration ", it, " the ",
                                           std::isfinite(eval.objective) ? "hypergradient" : "objective",
                                           " is not finite; the training run diverged. Lower the learning rates "
                                           "or the meta step size"));
    }
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    MetaIterationInfo info;
    info.iteration = it;
    info.numIterations = numIterations;
    info.objective = eval.objective;
    info.gradientNorm = dx.norm();
    info.metrics = &eval.metrics;
    info.elapsedSeconds = elapsed;
    info.remainingSeconds = elapsed / static_cast<double>(it + 1) * static_cast<double>(numIterations - it - 1);
    info.parameters = &params;

    ++result.iterations;
    result.objectives.push_back(eval.objective);
    result.gradientNorms.push_back(info.gradientNorm);
    result.metrics.push_back(eval.metrics);
    if (result.bestRaw.size() == 0 || eval.objective < result.bestObjective) {
      result.bestObjective = eval.objective;
      result.bestRaw = params.raw();
    }

    bool stop = false;
    (void)std::initializer_list<int>{(stop = detail::metaIteration(callbacks, info, result.stopReason) || stop, 0)...};
    if (stop) {
      result.stoppedEarly = true;
      break;
    }
    if (it + 1 < numIterations) {
      Eigen::VectorXd x = params.raw();
      optimizer.update(x, dx);
      params.setRaw(x);
    }
  }
  result.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  (void)std::initializer_list<int>{([&] {
    if constexpr (detail::HasOnMetaEnd<std::decay_t<Callbacks>>::value) callbacks.onMetaEnd(result);
  }(), 0)...};
  return result;
}

}  // namespace hypergrad
