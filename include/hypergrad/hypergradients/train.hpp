// SPDX-License-Identifier: MIT
#pragma once

/// \file train.hpp
/// \brief The forward pass: train() runs the remaining steps of an optimizer, with callbacks.

#include <chrono>
#include <exception>
#include <string>
#include <utility>

#include <Eigen/Core>

#include "../callbacks.hpp"
#include "../config.hpp"
#include "../objective.hpp"

namespace hypergrad {

/// What train() did.
struct TrainSummary {
  Index stepsTaken = 0;    ///< forward steps taken by this call
  bool stoppedEarly = false;  ///< a callback asked to stop before the schedule's end
  std::string stopReason;  ///< the first stopping callback's stopReason(), if any
  double seconds = 0.0;    ///< wall time of the call
};

/// Runs the remaining forward steps of `opt` (from iteration() to numIterations()), calling the
/// callbacks' hooks (callbacks.hpp); a callback's `true` from onForwardStep stops after that
/// step. Works for any optimizer with step(f) (ReversibleOptimizer, ReferenceOptimizer).
///
/// Failure: if a step throws (non-finite gradient, fixed-point overflow, the objective's own
/// exception) — or a callback does — the steps this call took are reversed (opt.unstep(f), which
/// recomputes their gradients) so that the optimizer is exactly as it was before the call, and
/// the exception is rethrown. Should the objective fail again during that rollback, the
/// optimizer is left consistent at opt.iteration() and the first exception is rethrown.
template <class Optimizer, class Objective, class... Callbacks>
TrainSummary train(Optimizer& opt, const Objective& f, Callbacks&&... callbacks) {
  checkObjective<Objective>();
  const auto begin = std::chrono::steady_clock::now();
  const Index first = opt.iteration();
  TrainSummary summary;
  try {
    (detail::callTrainBegin(callbacks, opt), ...);
    while (opt.iteration() < opt.numIterations()) {
      [[maybe_unused]] const Index t = opt.iteration();
      opt.step(f);
      ++summary.stepsTaken;
      bool stop = false;
      ((stop = detail::callForwardStep(callbacks, opt, t, opt.lastGradient(), summary.stopReason) || stop), ...);
      if (stop) {
        summary.stoppedEarly = true;
        break;
      }
    }
    (detail::callTrainEnd(callbacks, opt), ...);
  } catch (...) {
    const std::exception_ptr error = std::current_exception();
    try {
      while (opt.iteration() > first) opt.unstep(f);
    } catch (...) {  // the optimizer is consistent at opt.iteration(); the first error matters more
    }
    std::rethrow_exception(error);
  }
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  return summary;
}

}  // namespace hypergrad
