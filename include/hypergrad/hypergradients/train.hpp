// SPDX-License-Identifier: MIT
#pragma once

/// \file train.hpp
/// \brief The forward pass: train() runs the remaining steps of an optimizer, with callbacks.

#include <chrono>
#include <exception>
#include <string>
#include <type_traits>
#include <utility>

#include <Eigen/Core>

#include "../callbacks.hpp"
#include "../config.hpp"
#include "../objective.hpp"

namespace hypergrad {

namespace detail {

/// True for an optimizer whose state is sharded over processes (ShardedOptimizer: it has a
/// slicing); train() and reverse() then agree on what their callbacks did.
template <class, class = void>
struct IsSharded : std::false_type {};
template <class O>
struct IsSharded<O, std::void_t<decltype(std::declval<const O&>().slicing())>> : std::true_type {};

/// Runs callback hooks (`hooks()` returns whether one asked to stop). For a sharded optimizer
/// the processes agree on the outcome — one process's callback throwing makes every process throw
/// DistributedError, one process's stop stops all — so they stay in step; otherwise a plain call.
template <class Optimizer, class Hooks>
bool runHooks(const Optimizer& opt, Index t, const char* what, Hooks&& hooks) {
  if constexpr (IsSharded<Optimizer>::value) {
    bool stop = false;
    std::exception_ptr error;
    try {
      stop = hooks();
    } catch (...) {
      error = std::current_exception();
    }
    return opt.agreeOnStop(t, error, stop, what);
  } else {
    static_cast<void>(opt);
    static_cast<void>(t);
    static_cast<void>(what);
    return hooks();
  }
}

}  // namespace detail

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
///
/// With a ShardedOptimizer, the callbacks see this process's slice of g, and their outcome is
/// agreed among the processes after each hook (one collective per hook when there are callbacks).
template <class Optimizer, class Objective, class... Callbacks>
TrainSummary train(Optimizer& opt, const Objective& f, Callbacks&&... callbacks) {
  checkObjective<Objective>();
  const auto begin = std::chrono::steady_clock::now();
  const Index first = opt.iteration();
  TrainSummary summary;
  try {
    if constexpr (sizeof...(Callbacks) > 0) {
      detail::runHooks(opt, first, "running a callback's onTrainBegin at iteration", [&] {
        (detail::callTrainBegin(callbacks, opt), ...);
        return false;
      });
    }
    while (opt.iteration() < opt.numIterations()) {
      [[maybe_unused]] const Index t = opt.iteration();
      opt.step(f);
      ++summary.stepsTaken;
      bool stop = false;
      if constexpr (sizeof...(Callbacks) > 0) {
        stop = detail::runHooks(opt, t, "running a callback's onForwardStep at iteration", [&] {
          bool any = false;
          ((any = detail::callForwardStep(callbacks, opt, t, opt.lastGradient(), summary.stopReason) || any), ...);
          return any;
        });
      }
      if (stop) {
        summary.stoppedEarly = true;
        break;
      }
    }
    if constexpr (sizeof...(Callbacks) > 0) {
      detail::runHooks(opt, opt.iteration(), "running a callback's onTrainEnd at iteration", [&] {
        (detail::callTrainEnd(callbacks, opt), ...);
        return false;
      });
    }
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
