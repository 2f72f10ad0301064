// SPDX-License-Identifier: MIT
#pragma once

/// \file arithmetic.hpp
/// \brief The reference arithmetic: an update rule's element code (optimizers/concept.hpp) run
/// in plain double — the independent trainer that finite differences are taken of, and the
/// plain-double baselines of the benchmarks. Same code as the exact path, other number type.

#include "../config.hpp"

namespace hypergrad {
namespace detail {

/// The rule's element arithmetic on doubles, bound to element i of S state arrays.
template <int S>
class ReferenceElement {
 public:
  ReferenceElement(double* const* state, Index i) noexcept : m_state(state), m_i(i) {}

  /// x_s ← x_s · value (the ratio's value as given; nothing is quantised here).
  template <class Entry>
  void multiply(int s, const Entry& c) noexcept {
    m_state[s][m_i] *= c.value;
  }
  /// x_s ← x_s + x.
  void add(int s, double x, const char* /*what*/ = "") noexcept { m_state[s][m_i] += x; }
  /// x_s ← x_s − x.
  void subtract(int s, double x, const char* /*what*/ = "") noexcept { m_state[s][m_i] -= x; }
  double value(int s) const noexcept { return m_state[s][m_i]; }

 private:
  double* const* m_state;
  Index m_i;
};

}  // namespace detail
}  // namespace hypergrad
