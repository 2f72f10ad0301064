// SPDX-License-Identifier: MIT
#pragma once

/// \file callbacks.hpp
/// \brief One callback protocol for train(), reverse() and metaOptimize(): callbacks are plain
/// structs that implement only the hooks they need; any number of them can be passed to each
/// call; a hook that returns `true` from a forward step or a meta iteration stops the loop (the
/// reverse pass only observes). Hooks are found at compile time (`if constexpr`), so a call with
/// no callbacks, or with callbacks lacking a hook, pays nothing for it.
///
/// `Opt` is the optimizer (any update rule), `Result` its HypergradientResult:
///
/// | hook (all optional)                                                  | called by    | when                                                   |
/// |----------------------------------------------------------------------|--------------|--------------------------------------------------------|
/// | `void onTrainBegin(const Opt& opt)`                                  | train        | before the first step                                   |
/// | `R onForwardStep(const Opt& opt, Index t, const Eigen::VectorXd& g)` | train        | after forward step t (opt holds the state at t + 1, g = g_t); R is `void`, or `bool` with `true` = stop training |
/// | `void onTrainEnd(const Opt& opt)`                                    | train        | after the last step taken                               |
/// | `void onReverseBegin(const Opt& opt, double metaObjective)`          | reverse      | after the meta objective at the final weights            |
/// | `void onReverseStep(const Opt& opt, Index t, const ReverseState& s)` | reverse      | after reversing step t (opt holds the state at t)       |
/// | `void onReverseEnd(const Opt& opt, const Result& hg)`                | reverse      | after the start state was verified bit for bit          |
/// | `void onMetaBegin(const MetaParameters& p, Index n)`                 | metaOptimize | before the first evaluation (meta/meta_optimize.hpp)    |
/// | `bool onMetaIteration(const MetaIterationInfo& info)`                | metaOptimize | after each evaluation; `true` = stop                    |
/// | `void onMetaEnd(const MetaResult& r)`                                | metaOptimize | once, at the end                                        |
/// | `std::string stopReason() const`                                     | train, metaOptimize | read when the callback stopped the loop          |
///
/// \code
/// struct LossPrinter {
///   template <class Opt>
///   void onForwardStep(const Opt& opt, hypergrad::Index t, const Eigen::VectorXd&) {
///     std::printf("step %ld: |w| = %g\n", long(t), opt.weights().norm());
///   }
/// };
/// hypergrad::train(sgd, objective, LossPrinter{}, hypergrad::StopAfter{50});
/// \endcode

#include <string>
#include <type_traits>
#include <utility>

#include <Eigen/Core>

#include "config.hpp"

namespace hypergrad {

/// What the reverse pass knows after undoing step t.
struct ReverseState {
  const Eigen::VectorXd& gradient;   ///< g_t, recomputed at w_t
  const Eigen::VectorXd& dWeights;   ///< ∂f/∂w_t
  const Eigen::VectorXd& direction;  ///< u_t, the direction of step t's Hessian-vector product
  const Eigen::VectorXd* adjoints;   ///< ∂f/∂(state s at t), s = 0 … numStates − 1 (0: dWeights)
  Index numStates;                   ///< the rule's number of state vectors

  /// ∂f/∂(state s at t), s = 0 the weights.
  const Eigen::VectorXd& adjoint(Index s) const { return adjoints[s]; }
};

/// The callback that does nothing (kept for code that passes one explicitly).
struct NullCallback {};

/// Stops training after a given number of forward steps (counted from train()'s start).
struct StopAfter {
  Index steps;     ///< steps to take
  Index taken = 0; ///< steps taken so far
  /// Counts a step; true once `steps` have been taken.
  template <class Opt>
  bool onForwardStep(const Opt& /*opt*/, Index /*t*/, const Eigen::VectorXd& /*g*/) {
    return ++taken >= steps;
  }
  /// "stopped after N steps".
  std::string stopReason() const { return "stopped after " + std::to_string(steps) + " steps"; }
};

namespace detail {

template <class C, class Opt, class = void>
struct HasOnTrainBegin : std::false_type {};
template <class C, class Opt>
struct HasOnTrainBegin<C, Opt, std::void_t<decltype(std::declval<C&>().onTrainBegin(std::declval<const Opt&>()))>>
    : std::true_type {};

template <class C, class Opt, class = void>
struct HasOnForwardStep : std::false_type {};
template <class C, class Opt>
struct HasOnForwardStep<C, Opt,
                        std::void_t<decltype(std::declval<C&>().onForwardStep(
                            std::declval<const Opt&>(), Index(0), std::declval<const Eigen::VectorXd&>()))>>
    : std::true_type {};

template <class C, class Opt, class = void>
struct HasOnTrainEnd : std::false_type {};
template <class C, class Opt>
struct HasOnTrainEnd<C, Opt, std::void_t<decltype(std::declval<C&>().onTrainEnd(std::declval<const Opt&>()))>>
    : std::true_type {};

template <class C, class Opt, class = void>
struct HasOnReverseBegin : std::false_type {};
template <class C, class Opt>
struct HasOnReverseBegin<C, Opt,
                         std::void_t<decltype(std::declval<C&>().onReverseBegin(std::declval<const Opt&>(), 0.0))>>
    : std::true_type {};

template <class C, class Opt, class = void>
struct HasOnReverseStep : std::false_type {};
template <class C, class Opt>
struct HasOnReverseStep<C, Opt,
                        std::void_t<decltype(std::declval<C&>().onReverseStep(std::declval<const Opt&>(), Index(0),
                                                                              std::declval<const ReverseState&>()))>>
    : std::true_type {};

template <class C, class Opt, class Result, class = void>
struct HasOnReverseEnd : std::false_type {};
template <class C, class Opt, class Result>
struct HasOnReverseEnd<C, Opt, Result,
                       std::void_t<decltype(std::declval<C&>().onReverseEnd(std::declval<const Opt&>(),
                                                                            std::declval<const Result&>()))>>
    : std::true_type {};

template <class C, class = void>
struct HasStopReason : std::false_type {};
template <class C>
struct HasStopReason<C, std::void_t<decltype(std::string(std::declval<const C&>().stopReason()))>> : std::true_type {};

/// The stop reason of a callback that returned true.
template <class C>
std::string stopReasonOf(const C& cb) {
  if constexpr (HasStopReason<C>::value) return std::string(cb.stopReason());
  else return "stopped by a callback";
}

template <class C, class Opt>
void callTrainBegin(C& cb, const Opt& opt) {
  if constexpr (HasOnTrainBegin<C, Opt>::value) cb.onTrainBegin(opt);
}

/// After forward step t: true when this callback asks to stop (its reason in `reason` if empty).
template <class C, class Opt>
bool callForwardStep(C& cb, const Opt& opt, Index t, const Eigen::VectorXd& g, std::string& reason) {
  if constexpr (HasOnForwardStep<C, Opt>::value) {
    using Return = decltype(cb.onForwardStep(opt, t, g));
    if constexpr (std::is_void_v<Return>) {
      cb.onForwardStep(opt, t, g);
    } else {
      if (static_cast<bool>(cb.onForwardStep(opt, t, g))) {
        if (reason.empty()) reason = stopReasonOf(cb);
        return true;
      }
    }
  }
  return false;
}

template <class C, class Opt>
void callTrainEnd(C& cb, const Opt& opt) {
  if constexpr (HasOnTrainEnd<C, Opt>::value) cb.onTrainEnd(opt);
}

template <class C, class Opt>
void callReverseBegin(C& cb, const Opt& opt, double metaObjective) {
  if constexpr (HasOnReverseBegin<C, Opt>::value) cb.onReverseBegin(opt, metaObjective);
}

template <class C, class Opt>
void callReverseStep(C& cb, const Opt& opt, Index t, const ReverseState& s) {
  if constexpr (HasOnReverseStep<C, Opt>::value) cb.onReverseStep(opt, t, s);
}

template <class C, class Opt, class Result>
void callReverseEnd(C& cb, const Opt& opt, const Result& r) {
  if constexpr (HasOnReverseEnd<C, Opt, Result>::value) cb.onReverseEnd(opt, r);
}

}  // namespace detail
}  // namespace hypergrad
