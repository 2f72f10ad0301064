// SPDX-License-Identifier: MIT
#pragma once

/// \file callbacks.hpp
/// \brief Per-step callbacks for the forward and reverse passes: plain structs that implement only
/// the hooks they need. A pass with no callback (NullCallback) pays nothing.
///
/// | hook (all optional)                                          | called                                    |
/// |--------------------------------------------------------------|-------------------------------------------|
/// | `void onForwardStep(const Opt& opt, Index t, const Eigen::VectorXd& g)` | after forward step t; opt holds w_{t+1}, v_{t+1}; g = g_t |
/// | `void onReverseStep(const Opt& opt, Index t, const ReverseState& s)`    | after reversing step t; opt holds w_t, v_t |

#include <type_traits>
#include <utility>

#include <Eigen/Core>

#include "config.hpp"

namespace hypergrad {

/// What the reverse pass knows after undoing step t.
struct ReverseState {
  const Eigen::VectorXd& gradient;  ///< g_t, recomputed
  const Eigen::VectorXd& dWeights;  ///< ∂f/∂w_t
  const Eigen::VectorXd& dVelocity; ///< ∂f/∂v_t
};

/// The callback that does nothing.
struct NullCallback {};

namespace detail {
template <class, class, class = void>
struct HasOnForwardStep : std::false_type {};
template <class C, class Opt>
struct HasOnForwardStep<C, Opt,
                        std::void_t<decltype(std::declval<C&>().onForwardStep(
                            std::declval<const Opt&>(), Index(0), std::declval<const Eigen::VectorXd&>()))>>
    : std::true_type {};

template <class, class, class = void>
struct HasOnReverseStep : std::false_type {};
template <class C, class Opt>
struct HasOnReverseStep<C, Opt,
                        std::void_t<decltype(std::declval<C&>().onReverseStep(std::declval<const Opt&>(), Index(0),
                                                                              std::declval<const ReverseState&>()))>>
    : std::true_type {};

template <class C, class Opt>
void callForwardStep(C& cb, const Opt& opt, Index t, const Eigen::VectorXd& g) {
  if constexpr (HasOnForwardStep<C, Opt>::value) cb.onForwardStep(opt, t, g);
}
template <class C, class Opt>
void callReverseStep(C& cb, const Opt& opt, Index t, const ReverseState& s) {
  if constexpr (HasOnReverseStep<C, Opt>::value) cb.onReverseStep(opt, t, s);
}
}  // namespace detail
}  // namespace hypergrad
