// SPDX-License-Identifier: MIT
#pragma once

/// \file layout.hpp
/// \brief Parameter groups: named contiguous slices of the flat parameter vector. Schedules give
/// one value per (iteration, group); hypergradients come back per (iteration, group).

#include <string>
#include <vector>

#include <Eigen/Core>

#include "config.hpp"
#include "errors.hpp"

namespace hypergrad {

/// One named contiguous slice [offset, offset + size) of the parameter vector.
struct ParameterGroup {
  std::string name;  ///< Unique within its layout; messages name the group by it.
  Index offset = 0;  ///< Index of the group's first parameter.
  Index size = 0;    ///< Number of parameters, at least 1.
};

/// An ordered partition of the parameter vector into named groups. Groups tile [0, size())
/// without gaps, in the order they were added.
class ParameterLayout {
 public:
  ParameterLayout() = default;

  /// A layout with one group named `name` covering all `size` parameters.
  static ParameterLayout single(Index size, std::string name = "all") {
    ParameterLayout layout;
    layout.addGroup(std::move(name), size);
    return layout;
  }

  /// Appends a group of `size` parameters after the existing ones; returns its index.
  /// Throws InvalidArgument, leaving the layout unchanged, when `size` is not positive or a group
  /// named `name` exists: names must be unique because groupIndex() and every message that names
  /// "group 'a'" refer to a group by its name.
  Index addGroup(std::string name, Index size) {
    if (size <= 0) {
      throw InvalidArgument(detail::message("ParameterLayout::addGroup: group '", name,
                                            "' has size ", size, "; a group needs at least one parameter"));
    }
    for (std::size_t k = 0; k < m_groups.size(); ++k) {
      if (m_groups[k].name == name) {
        throw InvalidArgument(detail::message("ParameterLayout::addGroup: a group named '", name,
                                              "' already exists (group ", k,
                                              "); group names must be unique, give this group another name"));
      }
    }
    m_groups.push_back(ParameterGroup{std::move(name), m_size, size});
    m_size += size;
    return static_cast<Index>(m_groups.size()) - 1;
  }

  /// Total number of parameters.
  Index size() const noexcept { return m_size; }
  /// Number of groups.
  Index numGroups() const noexcept { return static_cast<Index>(m_groups.size()); }
  /// Group k (0-based).
  const ParameterGroup& group(Index k) const { return m_groups.at(static_cast<std::size_t>(k)); }
  /// All groups, in order.
  const std::vector<ParameterGroup>& groups() const noexcept { return m_groups; }

  /// Index of the group named `name`; throws InvalidArgument when there is none.
  Index groupIndex(const std::string& name) const {
    for (std::size_t k = 0; k < m_groups.size(); ++k)
      if (m_groups[k].name == name) return static_cast<Index>(k);
    throw InvalidArgument(detail::message("ParameterLayout::groupIndex: no group named '", name, "'"));
  }

  /// Spreads one value per group over the parameters: out[i] = perGroup[group(i)].
  template <class Derived>
  Eigen::VectorXd expand(const Eigen::DenseBase<Derived>& perGroup) const {
    checkPerGroup(perGroup.size(), "expand");
    Eigen::VectorXd out(m_size);
    for (std::size_t k = 0; k < m_groups.size(); ++k)
      out.segment(m_groups[k].offset, m_groups[k].size).setConstant(perGroup(static_cast<Index>(k)));
    return out;
  }

  /// Sums a per-parameter vector within each group: out[k] = Σ_{i ∈ k} x[i].
  template <class Derived>
  Eigen::VectorXd sumByGroup(const Eigen::MatrixBase<Derived>& x) const {
    if (x.size() != m_size) {
      throw InvalidArgument(detail::message("ParameterLayout::sumByGroup: vector has ", x.size(),
                                            " entries but the layout has ", m_size, " parameters"));
    }
    Eigen::VectorXd out(numGroups());
    for (std::size_t k = 0; k < m_groups.size(); ++k)
      out(static_cast<Index>(k)) = x.segment(m_groups[k].offset, m_groups[k].size).sum();
    return out;
  }

  /// Same group names and sizes in the same order (the offsets follow).
  bool operator==(const ParameterLayout& o) const {
    if (m_size != o.m_size || m_groups.size() != o.m_groups.size()) return false;
    for (std::size_t k = 0; k < m_groups.size(); ++k)
      if (m_groups[k].name != o.m_groups[k].name || m_groups[k].size != o.m_groups[k].size) return false;
    return true;
  }
  /// Not the same groups.
  bool operator!=(const ParameterLayout& o) const { return !(*this == o); }

 private:
  void checkPerGroup(Index n, const char* fn) const {
    if (n != numGroups()) {
      throw InvalidArgument(detail::message("ParameterLayout::", fn, ": got ", n,
                                            " per-group values but the layout has ", numGroups(), " groups"));
    }
  }

  std::vector<ParameterGroup> m_groups;
  Index m_size = 0;
};

}  // namespace hypergrad
