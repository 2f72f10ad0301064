// SPDX-License-Identifier: MIT
#pragma once

/// \file schedule_set.hpp
/// \brief An update rule's schedules, validated against the layout and the rule's domains, with
/// the ratio schedules quantised: what the exact optimizer and the reference optimizer share.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "../config.hpp"
#include "../errors.hpp"
#include "../exact/fingerprint.hpp"
#include "../exact/ratio.hpp"
#include "../layout.hpp"
#include "../schedule.hpp"
#include "concept.hpp"

namespace hypergrad {

/// The J schedules of rule R (T × G each), checked once: same T, G columns, finite, ratio
/// schedules in (0, 1] and quantised to RatioT (when `quantizeRatios`; the reference optimizer
/// uses them as given). coefficients(t) hands the element code its per-group entries.
template <class Rule, class RatioT>
class ScheduleSet {
 public:
  static constexpr int numSchedules = Rule::numSchedules;  ///< J
  /// The entries of every schedule at one (iteration, group).
  using Coefficients = std::array<ScheduleEntry<RatioT>, static_cast<std::size_t>(numSchedules)>;
  using Numerators = Eigen::Matrix<std::uint32_t, Eigen::Dynamic, Eigen::Dynamic>;  ///< T × G integers

  /// How far the ratios of one schedule moved from the values requested.
  struct QuantizationReport {
    Index exact = 0;               ///< entries used exactly as given (dyadic or a small-denominator fraction)
    Index rounded = 0;             ///< entries rounded to the nearest n/2^DBits
    double maxAbsolute = 0.0;      ///< max |γ − γ_used|
    double maxRelativeDecay = 0.0; ///< max |γ − γ_used| / (1 − γ): the relative change of the decay rate
    Index worstIteration = -1;     ///< where maxRelativeDecay occurs (−1 when every entry is exact)
    Index worstGroup = -1;         ///< and in which group
  };

  ScheduleSet() = default;

  /// \param layout         the parameter groups (G columns)
  /// \param schedules      the rule's schedules in its order
  /// \param quantizeRatios whether ratio schedules become exact ratios (the exact optimizer) or
  ///                       are used as given (the reference optimizer)
  /// \param owner          names the caller in messages (e.g. "SGD with momentum")
  /// \param quantization   how ratios are chosen (exact/ratio.hpp)
  ScheduleSet(const ParameterLayout& layout, std::array<Schedule, static_cast<std::size_t>(numSchedules)> schedules,
              bool quantizeRatios, const char* owner, Quantization quantization = Quantization::Dyadic)
      : m_requested(std::move(schedules)) {
    if (layout.size() == 0) throw InvalidArgument(detail::message(owner, ": the parameter layout is empty"));
    const Index T = m_requested[0].numIterations();
    if (T <= 0)
      throw InvalidArgument(detail::message(owner, ": the ", Rule::schedules[0].description, " has no iterations"));
    for (std::size_t j = 0; j < m_requested.size(); ++j) {
      const ScheduleSpec& spec = Rule::schedules[j];
      const Schedule& s = m_requested[j];
      s.validate(T, layout, detail::message(owner, ": ", spec.description).c_str());
      m_used[j] = s.values();
      if (spec.domain == ScheduleDomain::Positive) checkPositive(s, layout, owner, spec.description);
      if (spec.domain != ScheduleDomain::Ratio) continue;
      if (!quantizeRatios) {
        m_products[j] = runningProducts(m_used[j]);
        continue;
      }
      m_numerators[j].resize(T, layout.numGroups());
      m_denominators[j].resize(T, layout.numGroups());
      QuantizationReport& report = m_reports[j];
      for (Index k = 0; k < layout.numGroups(); ++k)
        for (Index t = 0; t < T; ++t) {
          RatioT r;
          const double requested = s(t, k);
          try {
            r = RatioT::quantize(requested, "value", quantization);
          } catch (const InvalidArgument& e) {  // the message gets its context only when needed
            throw InvalidArgument(detail::message(owner, ": ", spec.description, " at iteration ", t, ", group '",
                                                  layout.group(k).name, "': ", e.what()));
          }
          m_numerators[j](t, k) = r.numerator;
          m_denominators[j](t, k) = r.denominator;
          m_used[j](t, k) = r.value();
          const double moved = std::fabs(requested - r.value());
          if (moved == 0.0) {
            ++report.exact;
            continue;
          }
          ++report.rounded;
          report.maxAbsolute = std::max(report.maxAbsolute, moved);
          const double relative = moved / (1.0 - requested);
          if (relative > report.maxRelativeDecay) {
            report.maxRelativeDecay = relative;
            report.worstIteration = t;
            report.worstGroup = k;
          }
        }
      m_products[j] = runningProducts(m_used[j]);
    }
    m_numGroups = layout.numGroups();
  }

  Index numIterations() const noexcept { return m_used[0].rows(); }  ///< T
  Index numGroups() const noexcept { return m_numGroups; }  ///< G

  /// Schedule j as given.
  const Schedule& requested(Index j) const { return m_requested.at(static_cast<std::size_t>(j)); }
  /// The values schedule j's element code uses: as given, or the quantised ratios n/d.
  const Eigen::MatrixXd& used(Index j) const { return m_used.at(static_cast<std::size_t>(j)); }
  /// Numerators of a quantised ratio schedule (empty for the others).
  const Numerators& numerators(Index j) const { return m_numerators.at(static_cast<std::size_t>(j)); }
  /// Denominators of a quantised ratio schedule (empty for the others).
  const Numerators& denominators(Index j) const { return m_denominators.at(static_cast<std::size_t>(j)); }
  /// How far ratio schedule j moved from the requested values (all zero for real schedules).
  const QuantizationReport& quantization(Index j) const { return m_reports.at(static_cast<std::size_t>(j)); }

  /// The entries of every schedule at (t, k).
  Coefficients at(Index t, Index k) const {
    Coefficients c;
    for (std::size_t j = 0; j < c.size(); ++j) {
      c[j].value = m_used[j](t, k);
      if (m_numerators[j].size() != 0) c[j].ratio = RatioT{m_numerators[j](t, k), m_denominators[j](t, k)};
      if (m_products[j].size() != 0) c[j].product = m_products[j](t, k);
    }
    return c;
  }

  /// The entries of every group at iteration t, into `out` (resized to G).
  void fill(Index t, std::vector<Coefficients>& out) const {
    out.resize(static_cast<std::size_t>(m_numGroups));
    for (Index k = 0; k < m_numGroups; ++k) out[static_cast<std::size_t>(k)] = at(t, k);
  }

  /// 64-bit fingerprint of the values used (all schedules, in order): identifies the run's
  /// schedules in a saved run.
  std::uint64_t fingerprint() const noexcept {
    std::uint64_t h = 0x5CED0001ull;
    for (const Eigen::MatrixXd& m : m_used) h = h * 0x9E3779B97F4A7C15ull ^ hypergrad::fingerprint(m.data(), m.size());
    return h;
  }

 private:
  // Column-wise running products of the values used, in iteration order (ScheduleEntry::product).
  static Eigen::MatrixXd runningProducts(const Eigen::MatrixXd& used) {
    Eigen::MatrixXd p(used.rows(), used.cols());
    for (Index k = 0; k < used.cols(); ++k) {
      double running = 1.0;
      for (Index t = 0; t < used.rows(); ++t) p(t, k) = running *= used(t, k);
    }
    return p;
  }

  static void checkPositive(const Schedule& s, const ParameterLayout& layout, const char* owner, const char* what) {
    for (Index k = 0; k < s.numGroups(); ++k)
      for (Index t = 0; t < s.numIterations(); ++t)
        if (!(s(t, k) > 0.0)) {
          throw InvalidArgument(detail::message(owner, ": ", what, " at iteration ", t, ", group '",
                                                layout.group(k).name, "' is ", s(t, k), "; it must be > 0"));
        }
  }

  std::array<Schedule, static_cast<std::size_t>(numSchedules)> m_requested;
  std::array<Eigen::MatrixXd, static_cast<std::size_t>(numSchedules)> m_products;  // ratio schedules only
  std::array<Eigen::MatrixXd, static_cast<std::size_t>(numSchedules)> m_used;
  std::array<Numerators, static_cast<std::size_t>(numSchedules)> m_numerators, m_denominators;
  std::array<QuantizationReport, static_cast<std::size_t>(numSchedules)> m_reports;
  Index m_numGroups = 0;
};

}  // namespace hypergrad
