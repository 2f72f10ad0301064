// SPDX-License-Identifier: MIT
#pragma once

/// \file toolbox.hpp
/// \brief One entry point over the hypergradient methods: `hypergradients(method, opt, f, meta,
/// directions)` trains `opt` from its start and returns ∂f/∂λ along `directions`
/// (HyperparameterDirections) as a DirectionalHypergradients, whichever method computed it —
/// so that methods compare directly, and each against the exact one on the same problem.
///
/// | method                      | what it computes                                    | memory        | per step                 | exact?                        |
/// |-----------------------------|-----------------------------------------------------|---------------|--------------------------|-------------------------------|
/// | `method::Reverse{}`         | reverse(): every hypergradient, projected            | O(N) + buffer | 1 HVP, whatever H        | yes (the reference)           |
/// | `method::Forward{}`         | forward mode (forward.hpp)                           | O(N·H)        | H HVPs                   | yes, to rounding              |
/// | `method::Truncated{K}`      | reverseTruncated(): the last K steps                  | O(N) + buffer | 1 HVP for K steps        | biased for K < T              |
/// | `method::Implicit{options}` | implicitHypergradients() at the final weights (θ only) | O(N)          | none; CG at the end      | only at a stationary point    |
///
/// Real-time optimisation (realtime.hpp, RTHO) is built on forward mode but changes the run
/// itself as it goes, so it is a training loop of its own rather than one of these methods.
///
/// HVP: Hessian-vector product; H: hyperparameters; N: weights. Where the optimizer ends: Reverse
/// (and Truncated{T}, which is the reverse pass) at iteration 0, the run reversed and its start
/// verified bit for bit; the others at the end of the run, which can still be reversed. Each either completes or throws with the optimizer back
/// at iteration 0 as it was (train() and the reverse passes undo what they did; a failure after
/// training undoes the training steps, opt.unstep(f)).

#include <chrono>
#include <exception>
#include <string>
#include <utility>

#include <Eigen/Core>

#include "../config.hpp"
#include "../errors.hpp"
#include "directions.hpp"
#include "forward.hpp"
#include "implicit.hpp"
#include "reverse.hpp"
#include "train.hpp"

namespace hypergrad {

/// The methods of hypergradients() (see the file comment).
namespace method {
/// The exact reverse pass (reverse()), projected on the directions.
struct Reverse {};
/// Forward mode (forwardHypergradients()).
struct Forward {};
/// The last `steps` steps of the reverse pass (reverseTruncated()), 1 ≤ steps ≤ T.
struct Truncated {
  Index steps = 1;  ///< K
};
/// The implicit function theorem at the final weights (implicitHypergradients()): directions that
/// move θ only (a schedule or an initial state has no implicit hypergradient).
struct Implicit {
  ImplicitOptions options;  ///< the batch to evaluate at, CG tolerance and iteration limit
};
}  // namespace method

namespace detail {

inline double secondsSince(std::chrono::steady_clock::time_point begin) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
}

/// Trains `opt` to the end, then runs `then()`; if that throws, the training steps are undone
/// (opt.unstep(f)) before the exception goes on.
template <class Optimizer, class Objective, class Then>
DirectionalHypergradients trainThen(Optimizer& opt, const Objective& f, Then&& then) {
  if (opt.iteration() != 0) {
    throw InvalidState(detail::message("hypergradients: the run is at iteration ", opt.iteration(),
                                       "; the methods train it from iteration 0 (start() it, then call)"));
  }
  train(opt, f);
  try {
    return then();
  } catch (...) {
    const std::exception_ptr error = std::current_exception();
    try {
      if (opt.halfStep()) opt.restepWeights();
      while (opt.iteration() > 0) opt.unstep(f);
    } catch (...) {  // consistent at opt.iteration(); the first error matters more
    }
    std::rethrow_exception(error);
  }
}

template <class Rule>
DirectionalHypergradients projected(const HyperparameterDirections<Rule>& directions, const HypergradientResult<Rule>& r,
                                    const char* method) {
  DirectionalHypergradients out;
  out.method = method;
  out.values = directions.project(r);
  out.names = directions.names();
  out.metaObjective = r.metaObjective;
  out.finalWeights = r.finalWeights;
  out.iterations = r.statistics.iterations;
  out.hessianProducts = r.statistics.stepsDifferentiated;
  out.memoryBytes = r.statistics.bufferBytes;
  return out;
}

}  // namespace detail

/// The exact reverse pass: trains, reverses (the start verified bit for bit), projects.
template <class Optimizer, class Objective, class Meta>
DirectionalHypergradients hypergradients(method::Reverse /*m*/, Optimizer& opt, const Objective& f, const Meta& meta,
                                         const HyperparameterDirections<typename Optimizer::RuleType>& directions) {
  const auto begin = std::chrono::steady_clock::now();
  DirectionalHypergradients out = detail::trainThen(
      opt, f, [&] { return detail::projected(directions, reverse(opt, f, meta), "reverse"); });
  out.seconds = detail::secondsSince(begin);
  return out;
}

/// Forward mode (forwardHypergradients()).
template <class Optimizer, class Objective, class Meta>
DirectionalHypergradients hypergradients(method::Forward /*m*/, Optimizer& opt, const Objective& f, const Meta& meta,
                                         const HyperparameterDirections<typename Optimizer::RuleType>& directions) {
  return forwardHypergradients(opt, f, meta, directions);
}

/// Truncated reverse over the last m.steps steps: trains, then reverseTruncated().
template <class Optimizer, class Objective, class Meta>
DirectionalHypergradients hypergradients(method::Truncated m, Optimizer& opt, const Objective& f, const Meta& meta,
                                         const HyperparameterDirections<typename Optimizer::RuleType>& directions) {
  if (m.steps < 1 || m.steps > opt.numIterations()) {
    throw InvalidArgument(detail::message("hypergradients: method::Truncated{", m.steps, "} for a run of ",
                                          opt.numIterations(), " steps; give 1 <= steps <= ", opt.numIterations()));
  }
  const auto begin = std::chrono::steady_clock::now();
  DirectionalHypergradients out = detail::trainThen(opt, f, [&] {
    return detail::projected(directions, reverseTruncated(opt, f, meta, m.steps),
                             m.steps == opt.numIterations() ? "reverse" : "truncated");
  });
  out.seconds = detail::secondsSince(begin);
  return out;
}

/// Implicit hypergradients at the final weights: trains, then implicitHypergradients(); the
/// directions must move θ only (InvalidArgument, before training, naming the first that does
/// not). `diagnostics` reports CG's stop reason, iterations and the weights' stationarity.
template <class Optimizer, class Objective, class Meta>
DirectionalHypergradients hypergradients(const method::Implicit& m, Optimizer& opt, const Objective& f, const Meta& meta,
                                         const HyperparameterDirections<typename Optimizer::RuleType>& directions) {
  for (Index h = 0; h < directions.size(); ++h) {
    const HyperparameterDirection& d = directions.direction(h);
    if (!d.schedules.empty() || !d.initial.empty()) {
      throw InvalidArgument(detail::message("hypergradients: method::Implicit differentiates the optimum of the "
                                            "training loss, which no schedule or initial state moves; hyperparameter '",
                                            d.name, "' does (use it with θ directions only, e.g. L2 penalties)"));
    }
  }
  const auto begin = std::chrono::steady_clock::now();
  DirectionalHypergradients out = detail::trainThen(opt, f, [&] {
    const ImplicitResult r = implicitHypergradients(f, meta, opt.weights(), m.options);
    DirectionalHypergradients o;
    o.method = "implicit";
    o.names = directions.names();
    o.values = directions.projectTheta(r.hyperparameters);
    o.metaObjective = r.metaObjective;
    o.finalWeights = opt.weights();
    o.iterations = opt.iteration();
    o.hessianProducts = r.iterations;
    o.memoryBytes = sizeof(double) * 5 * static_cast<std::size_t>(opt.size());  // CG's x, r, p, Hp, ∇f
    o.diagnostics = detail::message("CG: ", r.stopReason, " after ", r.iterations, " iterations, relative residual ",
                                    r.relativeResidual, "; stationarity |grad L|/max(1,|w|) = ", r.stationarity);
    return o;
  });
  out.seconds = detail::secondsSince(begin);
  return out;
}

}  // namespace hypergrad
