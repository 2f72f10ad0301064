// SPDX-License-Identifier: MIT
#pragma once

/// \file schedule.hpp
/// \brief Hyperparameter schedules: one value per (iteration, parameter group). Scalars and
/// per-group constants are conveniences that fill the same T × G table.

#include <cmath>
#include <utility>

#include <Eigen/Core>

#include "config.hpp"
#include "errors.hpp"
#include "layout.hpp"

namespace hypergrad {

/// A T × G table of values: row t is iteration t (0-based), column k is parameter group k.
class Schedule {
 public:
  Schedule() = default;
  /// From a T × G matrix.
  explicit Schedule(Eigen::MatrixXd values) : m_values(std::move(values)) {}

  /// The same value for every iteration and group.
  static Schedule constant(Index numIterations, Index numGroups, double value) {
    checkShape(numIterations, numGroups, "Schedule::constant");
    return filled(numIterations, numGroups, [value](Index, Index) { return value; });
  }
  /// One value per group, repeated for every iteration.
  static Schedule perGroup(Index numIterations, const Eigen::VectorXd& groupValues) {
    checkShape(numIterations, groupValues.size(), "Schedule::perGroup");
    return filled(numIterations, groupValues.size(), [&groupValues](Index, Index k) { return groupValues(k); });
  }
  /// One value per iteration, shared by all groups.
  static Schedule perIteration(const Eigen::VectorXd& iterationValues, Index numGroups) {
    checkShape(iterationValues.size(), numGroups, "Schedule::perIteration");
    return filled(iterationValues.size(), numGroups, [&iterationValues](Index t, Index) { return iterationValues(t); });
  }

  Index numIterations() const noexcept { return m_values.rows(); }  ///< T, the rows.
  Index numGroups() const noexcept { return m_values.cols(); }  ///< G, the columns.
  double operator()(Index t, Index k) const { return m_values(t, k); }  ///< The value at (t, k).
  double& operator()(Index t, Index k) { return m_values(t, k); }  ///< The value at (t, k), writable.
  const Eigen::MatrixXd& values() const noexcept { return m_values; }  ///< The T × G table.
  Eigen::MatrixXd& values() noexcept { return m_values; }  ///< The T × G table, writable.

  /// Throws InvalidArgument unless the table is numIterations × layout.numGroups() and finite.
  /// `name` (e.g. "learning-rate schedule") appears in the message.
  void validate(Index numIterations, const ParameterLayout& layout, const char* name) const {
    if (m_values.rows() != numIterations || m_values.cols() != layout.numGroups()) {
      throw InvalidArgument(detail::message(name, " has shape ", m_values.rows(), " x ", m_values.cols(),
                                            " but the run needs ", numIterations, " iterations x ", layout.numGroups(),
                                            " parameter groups (rows are iterations, columns groups)"));
    }
    for (Index t = 0; t < m_values.rows(); ++t)
      for (Index k = 0; k < m_values.cols(); ++k)
        if (!std::isfinite(m_values(t, k))) {
          throw InvalidArgument(detail::message(name, " at iteration ", t, ", group '", layout.group(k).name,
                                                "' is ", m_values(t, k), "; every entry must be finite"));
        }
  }

 private:
  // A loop rather than Eigen's replicate(): Schedule is not a template, and Eigen expressions in
  // its inline members would be compiled in every translation unit that includes the header.
  template <class Value>
  static Schedule filled(Index rows, Index cols, Value value) {
    Eigen::MatrixXd m(rows, cols);
    for (Index k = 0; k < cols; ++k)
      for (Index t = 0; t < rows; ++t) m(t, k) = value(t, k);
    return Schedule(std::move(m));
  }

  static void checkShape(Index rows, Index cols, const char* fn) {
    if (rows <= 0 || cols <= 0) {
      throw InvalidArgument(detail::message(fn, ": need at least one iteration and one group, got ", rows, " x ", cols));
    }
  }

  Eigen::MatrixXd m_values;
};

}  // namespace hypergrad
