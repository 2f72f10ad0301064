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
/// | hook                                               | called                                      |
/// |----------------------------------------------------|---------------------------------------------|
/// | `void onMetaBegin(const MetaParameters&, Index n)` | before the first evaluation                 |
/// | `bool onMetaIteration(const MetaIterationInfo&)`   | after each evaluation that succeeded        |
/// | `void onMetaFailure(const MetaFailureInfo&)`       | once, when the run diverged (see below)     |
/// | `void onMetaEnd(const MetaResult&)`                | once, at the end (also after a failure)     |
/// | `std::string stopReason() const`                   | read when the callback stopped              |
///
/// A diverged training run is a result, not a crash: when `evaluate` throws NonFiniteValue or
/// FixedPointOverflow, returns a non-finite objective or a gradient whose chain rule is not
/// finite, or the meta step leaves a non-finite x, metaOptimize reports the failure to
/// onMetaFailure, puts `params` back at the best iterate and returns with `result.diverged` set
/// (MetaFailure names the kind). It does not retry: a retry that halves the step would need a
/// step size in the MetaOptimizer concept and costs whole training runs that the caller may not
/// want; to go on, restart from `result.bestRaw` with a smaller meta step. Every other exception
/// (InvalidArgument, ExactnessViolation, InvalidState, the caller's own) propagates.
///
/// What `params` holds when metaOptimize ends ("the best iterate" is result.bestRaw, or the
/// initial values when no evaluation succeeded):
///
/// | how the loop ended                                | `params`                                       |
/// |---------------------------------------------------|------------------------------------------------|
/// | all numIterations evaluations, or a callback stop | the last iterate evaluated (no step follows it) |
/// | a failure (`result.diverged`)                     | the best iterate                               |
/// | an exception propagated                           | the best iterate                               |

#include <chrono>
#include <cmath>
#include <initializer_list>
#include <limits>
#include <map>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "../callbacks.hpp"
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
  double objective = 0.0;        ///< the evaluation's objective
  double gradientNorm = 0.0;    ///< ‖∂f/∂x‖ in the unconstrained coordinates
  const std::map<std::string, double>* metrics = nullptr;  ///< the evaluation's metrics
  double elapsedSeconds = 0.0;  ///< since metaOptimize started
  double remainingSeconds = 0.0;  ///< estimate from the mean time per iteration so far
  const MetaParameters* parameters = nullptr;  ///< the hyperparameters just evaluated
};

/// Why a meta run stopped on a failure (MetaFailureInfo::kind, MetaResult::failure).
enum class MetaFailure {
  None,                ///< no failure
  NonFiniteObjective,  ///< evaluate returned an objective that is NaN or infinite
  NonFiniteGradient,   ///< ∂f/∂x, the returned gradients through the chain rule, is not finite
  NonFiniteValue,      ///< evaluate threw hypergrad::NonFiniteValue
  FixedPointOverflow,  ///< evaluate threw hypergrad::FixedPointOverflow
  NonFiniteStep        ///< the meta-optimiser's step gave a non-finite x
};

/// A short name for messages: "non-finite objective", "fixed-point overflow", …
inline const char* metaFailureName(MetaFailure f) noexcept {
  switch (f) {
    case MetaFailure::None: return "none";
    case MetaFailure::NonFiniteObjective: return "non-finite objective";
    case MetaFailure::NonFiniteGradient: return "non-finite hypergradient";
    case MetaFailure::NonFiniteValue: return "non-finite value";
    case MetaFailure::FixedPointOverflow: return "fixed-point overflow";
    case MetaFailure::NonFiniteStep: return "non-finite meta step";
  }
  return "unknown";
}

/// What onMetaFailure sees. The failed evaluation is recorded nowhere else: it has no entry in
/// MetaResult::objectives and never reaches onMetaIteration.
struct MetaFailureInfo {
  /// The meta-iteration that failed: its evaluation, or for NonFiniteStep the iterate the step
  /// from the previous one could not produce.
  Index iteration = 0;
  Index numIterations = 0;  ///< the planned number
  MetaFailure kind = MetaFailure::None;  ///< what failed
  std::string message;      ///< the exception's what(), or which entry is not finite, and what to change
  /// As evaluate returned them; NaN (and no metrics) when it threw or for NonFiniteStep.
  double objective = std::numeric_limits<double>::quiet_NaN();
  double gradientNorm = std::numeric_limits<double>::quiet_NaN();  ///< ‖∂f/∂x‖ if it was computed
  const std::map<std::string, double>* metrics = nullptr;  ///< the evaluation's metrics, if any
  double elapsedSeconds = 0.0;  ///< since metaOptimize started
  /// The hyperparameters that failed (for NonFiniteStep, those the step started from), before
  /// metaOptimize puts `params` back at the best iterate.
  const MetaParameters* parameters = nullptr;
};

/// The outcome of metaOptimize.
struct MetaResult {
  Index iterations = 0;                    ///< evaluations that succeeded (a failed one is not counted)
  bool stoppedEarly = false;               ///< a callback stopped the loop, or it diverged
  std::string stopReason;                  ///< empty unless stopped early; names the failed iteration and error
  bool diverged = false;                   ///< the loop ended on a failure; `params` holds the best iterate
  MetaFailure failure = MetaFailure::None; ///< its kind
  Index failedIteration = -1;              ///< the meta-iteration that failed, -1 if none
  std::vector<double> objectives;          ///< objective per successful evaluation
  std::vector<double> gradientNorms;       ///< ‖∂f/∂x‖ per successful evaluation
  std::vector<std::map<std::string, double>> metrics;  ///< metrics per successful evaluation
  Eigen::VectorXd bestRaw;                 ///< x with the lowest objective seen; empty if no evaluation succeeded
  double bestObjective = std::numeric_limits<double>::infinity();  ///< its objective (+inf if none)
  Index bestIteration = -1;                ///< its meta-iteration (-1 if none)
  double seconds = 0.0;                    ///< wall time of the run
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
struct HasOnMetaFailure : std::false_type {};
template <class C>
struct HasOnMetaFailure<C, std::void_t<decltype(std::declval<C&>().onMetaFailure(std::declval<const MetaFailureInfo&>()))>>
    : std::true_type {};
template <class, class = void>
struct HasOnMetaEnd : std::false_type {};
template <class C>
struct HasOnMetaEnd<C, std::void_t<decltype(std::declval<C&>().onMetaEnd(std::declval<const MetaResult&>()))>>
    : std::true_type {};

template <class C>
bool metaIteration(C& cb, const MetaIterationInfo& info, std::string& reason) {
  if constexpr (HasOnMetaIteration<C>::value) {
    if (cb.onMetaIteration(info)) {
      if (reason.empty()) reason = stopReasonOf(cb);  // the protocol's, as train() reads it
      return true;
    }
  }
  return false;
}

// Where flat index i of the unconstrained vector lives, for messages: "block 'name' entry j".
inline std::string describeEntry(const MetaParameters& p, Index i) {
  for (Index k = 0; k < p.numBlocks(); ++k) {
    const MetaParameters::Block& b = p.block(k);
    if (i >= b.offset && i < b.offset + b.rows * b.cols) return message("block '", b.name, "' entry ", i - b.offset);
  }
  return message("entry ", i);
}

inline Index firstNonFinite(const Eigen::VectorXd& v) {
  for (Index i = 0; i < v.size(); ++i)
    if (!std::isfinite(v(i))) return i;
  return -1;
}
}  // namespace detail

/// Minimises evaluate(p).objective over the trainable blocks of `params` with `optimizer`
/// (MetaAdam, MetaSgd or any type with `update(Eigen::VectorXd& x, const Eigen::VectorXd& g)`),
/// for at most numIterations evaluations. A training run that diverges ends the loop with
/// result.diverged set instead of an exception (see the file comment); others propagate.
///
/// On return `params` holds the last iterate evaluated when the loop ran to the end or a
/// callback stopped it (result.bestRaw is the best one), and the best iterate when the run
/// diverged (result.diverged; see the file comment) or an exception propagated — the initial
/// values if no evaluation succeeded. result.bestRaw, bestObjective and bestIteration only ever
/// come from evaluations that succeeded.
template <class Evaluate, class MetaOptimizer, class... Callbacks>
MetaResult metaOptimize(MetaParameters& params, Evaluate&& evaluate, MetaOptimizer& optimizer, Index numIterations,
                        Callbacks&&... callbacks) {
  if (numIterations <= 0)
    throw InvalidArgument(detail::message("metaOptimize: numIterations is ", numIterations, "; it must be positive"));
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  auto elapsedSeconds = [&] { return std::chrono::duration<double>(Clock::now() - start).count(); };
  MetaResult result;
  // Invariant: bestRaw is finite and of params' size once an evaluation succeeded, so putting
  // params back cannot throw.
  auto restoreBest = [&] {
    if (result.bestRaw.size() > 0) params.setRaw(result.bestRaw);
  };
  // Reports a failure, puts params back at the best iterate; the loop then ends.
  auto fail = [&](MetaFailureInfo& failure) {
    failure.numIterations = numIterations;
    failure.elapsedSeconds = elapsedSeconds();
    failure.parameters = &params;
    result.stoppedEarly = true;
    result.diverged = true;
    result.failure = failure.kind;
    result.failedIteration = failure.iteration;
    result.stopReason = detail::message(
        "meta-iteration ", failure.iteration, " failed (", metaFailureName(failure.kind), "): ", failure.message, "; ",
        result.bestIteration >= 0
            ? detail::message("the parameters are back at the best iterate, meta-iteration ", result.bestIteration,
                              " with objective ", result.bestObjective)
            : std::string("no evaluation succeeded, the parameters are the initial values"));
    (void)std::initializer_list<int>{([&] {
      if constexpr (detail::HasOnMetaFailure<std::decay_t<Callbacks>>::value) callbacks.onMetaFailure(failure);
    }(), 0)...};
    restoreBest();
  };

  (void)std::initializer_list<int>{([&] {
    if constexpr (detail::HasOnMetaBegin<std::decay_t<Callbacks>>::value) callbacks.onMetaBegin(params, numIterations);
  }(), 0)...};

  try {
    for (Index it = 0; it < numIterations; ++it) {
      MetaFailureInfo failure;
      failure.iteration = it;
      MetaEvaluation eval;
      // Only the two errors of a training run that diverged are results; anything else is a bug
      // or a misuse and propagates.
      try {
        eval = evaluate(static_cast<const MetaParameters&>(params), it);
      } catch (const NonFiniteValue& e) {
        failure.kind = MetaFailure::NonFiniteValue;
        failure.message = e.what();
      } catch (const FixedPointOverflow& e) {
        failure.kind = MetaFailure::FixedPointOverflow;
        failure.message = e.what();
      }
      Eigen::VectorXd dx;
      double gradientNorm = 0.0;
      if (failure.kind == MetaFailure::None) {
        dx = params.chain(eval.gradients);  // wrong shapes are an InvalidArgument, not a divergence
        gradientNorm = dx.stableNorm();  // finite entries near 1e154 must not give an infinite norm
        failure.objective = eval.objective;
        failure.gradientNorm = gradientNorm;
        failure.metrics = &eval.metrics;
        const Index bad = detail::firstNonFinite(dx);
        if (!std::isfinite(eval.objective)) {
          failure.kind = MetaFailure::NonFiniteObjective;
          failure.message = detail::message("metaOptimize: the objective is ", eval.objective,
                                            "; the training run diverged. Lower the learning rates or the meta step size");
        } else if (bad >= 0) {
          failure.kind = MetaFailure::NonFiniteGradient;
          failure.message = detail::message("metaOptimize: the hypergradient of ", detail::describeEntry(params, bad),
                                            " is ", dx(bad),
                                            "; the training run diverged. Lower the learning rates or the meta step size");
        }
      }
      if (failure.kind != MetaFailure::None) {
        fail(failure);
        break;
      }

      const double elapsed = elapsedSeconds();
      MetaIterationInfo info;
      info.iteration = it;
      info.numIterations = numIterations;
      info.objective = eval.objective;
      info.gradientNorm = gradientNorm;
      info.metrics = &eval.metrics;
      info.elapsedSeconds = elapsed;
      info.remainingSeconds = elapsed / static_cast<double>(it + 1) * static_cast<double>(numIterations - it - 1);
      info.parameters = &params;

      ++result.iterations;
      result.objectives.push_back(eval.objective);
      result.gradientNorms.push_back(info.gradientNorm);
      result.metrics.push_back(eval.metrics);
      if (result.bestIteration < 0 || eval.objective < result.bestObjective) {
        result.bestObjective = eval.objective;
        result.bestRaw = params.raw();
        result.bestIteration = it;
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
        const Index bad = detail::firstNonFinite(x);
        if (bad >= 0) {
          MetaFailureInfo stepFailure;
          stepFailure.iteration = it + 1;
          stepFailure.kind = MetaFailure::NonFiniteStep;
          stepFailure.message = detail::message("metaOptimize: the meta step after meta-iteration ", it, " sets ",
                                                detail::describeEntry(params, bad), " of x to ", x(bad),
                                                "; lower the meta step size");
          fail(stepFailure);
          break;
        }
        params.setRaw(x);
      }
    }
  } catch (...) {
    restoreBest();  // the best iterate is the one result a caller can still reach
    throw;
  }
  result.seconds = elapsedSeconds();
  (void)std::initializer_list<int>{([&] {
    if constexpr (detail::HasOnMetaEnd<std::decay_t<Callbacks>>::value) callbacks.onMetaEnd(result);
  }(), 0)...};
  return result;
}

}  // namespace hypergrad
