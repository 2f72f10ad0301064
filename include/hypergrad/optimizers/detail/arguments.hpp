// SPDX-License-Identifier: MIT
#pragma once

/// \file arguments.hpp
/// \brief Argument plumbing shared by the optimizers: "J schedules, then optionally one more
/// argument" constructors, and start() with 1 … S initial state vectors.

#include <array>
#include <cstddef>
#include <tuple>
#include <type_traits>
#include <utility>

#include <Eigen/Core>

#include "../../config.hpp"
#include "../../exact/fixed_point.hpp"
#include "../../schedule.hpp"

namespace hypergrad {
namespace detail {

template <class T>
inline constexpr bool isScheduleArgument = std::is_convertible_v<T, Schedule>;

/// True when Args are J schedules, or J schedules then one argument of type Extra.
template <std::size_t J, class Extra, class... Args>
constexpr bool schedulesThen() {
  constexpr std::size_t n = sizeof...(Args);
  if constexpr (n == J) {
    return (isScheduleArgument<Args> && ...);
  } else if constexpr (n == J + 1) {
    constexpr bool isSchedule[] = {isScheduleArgument<Args>...};
    using Last = std::tuple_element_t<n - 1, std::tuple<std::decay_t<Args>...>>;
    for (std::size_t k = 0; k < J; ++k)
      if (!isSchedule[k]) return false;
    return std::is_convertible_v<Last, Extra>;
  } else {
    return false;
  }
}

/// The first J arguments as an array of schedules.
template <std::size_t J, class Tuple, std::size_t... K>
std::array<Schedule, J> takeSchedules(Tuple&& args, std::index_sequence<K...> /*indices*/) {
  return {{Schedule(std::get<K>(std::forward<Tuple>(args)))...}};
}

/// The (J+1)-th argument if there is one, else `fallback`.
template <std::size_t J, class Extra, class Tuple>
Extra takeExtra(Tuple&& args, Extra fallback) {
  if constexpr (std::tuple_size<std::decay_t<Tuple>>::value > J) return Extra(std::get<J>(std::forward<Tuple>(args)));
  else return fallback;
}

template <class T>
struct IsFixedVector : std::false_type {};
template <int R>
struct IsFixedVector<FixedVector<R>> : std::true_type {};

/// An initial state: an Eigen object (doubles) or a FixedVector.
template <class T>
inline constexpr bool isStateArgument =
    std::is_base_of_v<Eigen::EigenBase<std::decay_t<T>>, std::decay_t<T>> || IsFixedVector<std::decay_t<T>>::value;

/// How many of the leading arguments are initial states (computeHypergradients: the states,
/// then the callbacks).
template <class... Args>
constexpr std::size_t leadingStateArguments() {
  constexpr bool isState[] = {isStateArgument<Args>..., false};
  std::size_t n = 0;
  while (isState[n]) ++n;
  return n;
}

}  // namespace detail
}  // namespace hypergrad
