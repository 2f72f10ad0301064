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
/// schedules in [0, 1] and quantised to RatioT (when `quantizeRatios`; the reference optimizer
/// uses them as given). coefficients(t) hands the element code its per-group entries.
template <class Rule, class RatioT>
class ScheduleSet {
 public:
  static constexpr int numSchedules = Rule::numSchedules;  ///< J
  static constexpr int numDerived = detail::numDerived<Rule>();  ///< D, the rule's derived entries
  /// The entries of every schedule at one (iteration, group), then the D derived ones.
  using Coefficients = std::array<ScheduleEntry<RatioT>, static_cast<std::size_t>(numSchedules + numDerived)>;
  /// A derived ratio whose 1 − value moves by more than this when quantised is refused.
  static constexpr double derivedTolerance = 1e-3;
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
      if (spec.domain == ScheduleDomain::Positive || spec.domain == ScheduleDomain::NonNegative)
        checkSign(s, layout, owner, spec.description, spec.domain == ScheduleDomain::Positive);
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
          m_hasZeroRatio = m_hasZeroRatio || r.zero();
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
    if constexpr (numDerived > 0) deriveEntries(layout, quantizeRatios, owner);
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
  /// True when some quantised ratio is 0 (its multiplication stores the whole value: the
  /// exact kernel reserves more buffer words per element and step).
  bool hasZeroRatio() const noexcept { return m_hasZeroRatio; }
  /// How far ratio schedule j moved from the requested values (all zero for real schedules).
  const QuantizationReport& quantization(Index j) const { return m_reports.at(static_cast<std::size_t>(j)); }

  /// The values derived entry d uses (T × G): the quantised ratios for a derived ratio.
  const Eigen::MatrixXd& derivedValues(Index d) const { return m_derivedUsed.at(static_cast<std::size_t>(d)); }
  /// How far derived ratio d moved from its exact value (as quantization(j) for schedules).
  const QuantizationReport& derivedQuantization(Index d) const { return m_derivedReports.at(static_cast<std::size_t>(d)); }

  /// The entries of every schedule at (t, k).
  Coefficients at(Index t, Index k) const {
    Coefficients c;
    for (std::size_t d = 0; d < static_cast<std::size_t>(numDerived); ++d) {
      ScheduleEntry<RatioT>& e = c[static_cast<std::size_t>(numSchedules) + d];
      e.value = m_derivedUsed[d](t, k);
      if (m_derivedNumerators[d].size() != 0) e.ratio = RatioT{m_derivedNumerators[d](t, k), m_derivedDenominators[d](t, k)};
    }
    for (std::size_t j = 0; j < static_cast<std::size_t>(numSchedules); ++j) {
      c[j].value = m_used[j](t, k);
      if (m_numerators[j].size() != 0) c[j].ratio = RatioT{m_numerators[j](t, k), m_denominators[j](t, k)};
      if (m_products[j].size() != 0) {
        c[j].product = m_products[j](t, k);
        c[j].previousProduct = t > 0 ? m_products[j](t - 1, k) : 1.0;
        c[j].debias = c[j].product == 1.0 ? 1.0 : 1.0 / (1.0 - c[j].product);
      }
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
  // The derived entries from the values used (see the concept's numDerived): validated in their
  // domain, derived ratios quantised to the best fraction and refused beyond derivedTolerance.
  void deriveEntries(const ParameterLayout& layout, bool quantizeRatios, const char* owner) {
    const Index T = numIterations(), G = m_numGroups;
    for (std::size_t d = 0; d < static_cast<std::size_t>(numDerived); ++d) {
      const ScheduleSpec& spec = Rule::derived[d];
      Eigen::MatrixXd& used = m_derivedUsed[d];
      used.resize(T, G);
      const bool quantize = spec.domain == ScheduleDomain::Ratio && quantizeRatios;
      if (quantize) {
        m_derivedNumerators[d].resize(T, G);
        m_derivedDenominators[d].resize(T, G);
      }
      QuantizationReport& report = m_derivedReports[d];
      for (Index k = 0; k < G; ++k)
        for (Index t = 0; t < T; ++t) {
          std::array<double, static_cast<std::size_t>(numSchedules)> v;
          for (std::size_t j = 0; j < v.size(); ++j) v[j] = m_used[j](t, k);
          const double x = Rule::derive(static_cast<int>(d), v);
          const std::string where = detail::message(owner, ": ", spec.description, " at iteration ", t, ", group '",
                                                    layout.group(k).name, "'");
          if (!std::isfinite(x) || (spec.domain == ScheduleDomain::Ratio && !(x > 0.0 && x <= 1.0)) ||
              (spec.domain == ScheduleDomain::Positive && !(x > 0.0)) ||
              (spec.domain == ScheduleDomain::NonNegative && !(x >= 0.0))) {
            throw InvalidArgument(detail::message(where, " is ", x, ", outside its domain",
                                                  spec.domain == ScheduleDomain::Ratio ? " [0, 1]" : "",
                                                  "; change the schedules it is computed from"));
          }
          used(t, k) = x;
          if (!quantize) continue;
          RatioT r;
          try {
            r = RatioT::quantize(x, "value", Quantization::BestFraction);
          } catch (const InvalidArgument& e) {
            throw InvalidArgument(detail::message(where, ": ", e.what()));
          }
          const double moved = std::fabs(x - r.value());
          const double relative = x < 1.0 ? moved / (1.0 - x) : 0.0;
          if (relative > derivedTolerance) {
            throw InvalidArgument(detail::message(
                where, " = 1 - ", 1.0 - x, " becomes 1 - ", 1.0 - r.value(), " as the closest fraction with a denominator <= ",
                RatioT::maxDenominator, " (", 100.0 * relative, "% off, more than ", 100.0 * derivedTolerance,
                "%): the exact multiply cannot resolve so small a decay. Use a larger decay, or 0"));
          }
          m_hasZeroRatio = m_hasZeroRatio || r.zero();
          m_derivedNumerators[d](t, k) = r.numerator;
          m_derivedDenominators[d](t, k) = r.denominator;
          used(t, k) = r.value();
          if (moved == 0.0) {
            ++report.exact;
            continue;
          }
          ++report.rounded;
          report.maxAbsolute = std::max(report.maxAbsolute, moved);
          if (relative > report.maxRelativeDecay) {
            report.maxRelativeDecay = relative;
            report.worstIteration = t;
            report.worstGroup = k;
          }
        }
    }
  }

  // Column-wise running products of the values used, in iteration order (ScheduleEntry::product).
  static Eigen::MatrixXd runningProducts(const Eigen::MatrixXd& used) {
    Eigen::MatrixXd p(used.rows(), used.cols());
    for (Index k = 0; k < used.cols(); ++k) {
      double running = 1.0;
      for (Index t = 0; t < used.rows(); ++t) p(t, k) = running *= used(t, k);
    }
    return p;
  }

  static void checkSign(const Schedule& s, const ParameterLayout& layout, const char* owner, const char* what,
                        bool strict) {
    for (Index k = 0; k < s.numGroups(); ++k)
      for (Index t = 0; t < s.numIterations(); ++t)
        if (strict ? !(s(t, k) > 0.0) : !(s(t, k) >= 0.0)) {
          throw InvalidArgument(detail::message(owner, ": ", what, " at iteration ", t, ", group '",
                                                layout.group(k).name, "' is ", s(t, k), "; it must be ",
                                                strict ? "> 0" : ">= 0"));
        }
  }

  std::array<Schedule, static_cast<std::size_t>(numSchedules)> m_requested;
  std::array<Eigen::MatrixXd, static_cast<std::size_t>(numSchedules)> m_products;  // ratio schedules only
  static constexpr std::size_t kDerivedSlots = numDerived > 0 ? static_cast<std::size_t>(numDerived) : 1;
  std::array<Eigen::MatrixXd, kDerivedSlots> m_derivedUsed;
  std::array<Numerators, kDerivedSlots> m_derivedNumerators, m_derivedDenominators;
  std::array<QuantizationReport, kDerivedSlots> m_derivedReports;
  std::array<Eigen::MatrixXd, static_cast<std::size_t>(numSchedules)> m_used;
  std::array<Numerators, static_cast<std::size_t>(numSchedules)> m_numerators, m_denominators;
  std::array<QuantizationReport, static_cast<std::size_t>(numSchedules)> m_reports;
  Index m_numGroups = 0;
  bool m_hasZeroRatio = false;
};

}  // namespace hypergrad
