// SPDX-License-Identifier: MIT
#pragma once

/// \file init.hpp
/// \brief Seeded initialisation with per-group scales, w₁ = μ_k + s_k ε, and the chain rule that
/// turns ∂f/∂w₁ into ∂f/∂log s_k = Σ_{i∈k} (∂f/∂w₁)_i s_k ε_i.

#include <cmath>
#include <cstdint>

#include <Eigen/Core>

#include "config.hpp"
#include "errors.hpp"
#include "layout.hpp"
#include "random.hpp"

namespace hypergrad {

/// w₁ = μ_k + exp(logScale_k) · ε with ε ~ N(0, 1) drawn once from `seed` (a pure function of
/// the seed and the element index).
class ScaledInit {
 public:
  /// \param layout    parameter groups
  /// \param logScales log s_k, one per group (finite)
  /// \param seed      seed of ε
  /// \param means     μ_k, one per group (default 0)
  ScaledInit(ParameterLayout layout, Eigen::VectorXd logScales, std::uint64_t seed,
             Eigen::VectorXd means = Eigen::VectorXd())
      : m_layout(std::move(layout)), m_seed(seed) {
    if (means.size() == 0) {
      means.resize(m_layout.numGroups());
      for (Index k = 0; k < means.size(); ++k) means(k) = 0.0;
    }
    setMeans(std::move(means));
    setLogScales(std::move(logScales));
    m_noise.resize(m_layout.size());
    CounterRng rng(seed, 0x1417u);
    for (Index i = 0; i < m_noise.size(); ++i) m_noise(i) = rng.normal();
  }

  /// The 1/√fan-in heuristic expressed as log scales, given each group's fan-in.
  static Eigen::VectorXd logScalesFromFanIn(const Eigen::VectorXd& fanIn) {
    Eigen::VectorXd out(fanIn.size());
    for (Index k = 0; k < fanIn.size(); ++k) {
      if (!(fanIn(k) > 0)) throw InvalidArgument("ScaledInit::logScalesFromFanIn: fan-in must be positive");
      out(k) = -0.5 * std::log(fanIn(k));
    }
    return out;
  }

  const ParameterLayout& layout() const noexcept { return m_layout; }  ///< The parameter groups.
  const Eigen::VectorXd& logScales() const noexcept { return m_logScales; }  ///< log s_k per group.
  const Eigen::VectorXd& means() const noexcept { return m_means; }  ///< μ_k per group.
  /// ε, the fixed standard-normal draw.
  const Eigen::VectorXd& noise() const noexcept { return m_noise; }
  std::uint64_t seed() const noexcept { return m_seed; }  ///< The seed of ε.

  /// Replaces log s_k (ε stays, so w₁ changes smoothly); InvalidArgument unless one finite value
  /// per group.
  void setLogScales(Eigen::VectorXd logScales) {
    checkPerGroup(logScales, "log scales");
    m_logScales = std::move(logScales);
  }
  /// Replaces μ_k; InvalidArgument unless one finite value per group.
  void setMeans(Eigen::VectorXd means) {
    checkPerGroup(means, "means");
    m_means = std::move(means);
  }

  /// w₁ = μ + s ⊙ ε.
  Eigen::VectorXd weights() const {
    // Plain loops here and below: this class is not a template, so Eigen expressions would be
    // instantiated in every translation unit that includes the header (include cost).
    Eigen::VectorXd w(m_layout.size());
    for (Index k = 0; k < m_layout.numGroups(); ++k) {
      const ParameterGroup& grp = m_layout.group(k);
      const double mean = m_means(k), scale = std::exp(m_logScales(k));
      for (Index i = grp.offset; i < grp.offset + grp.size; ++i) w(i) = mean + scale * m_noise(i);
    }
    return w;
  }

  /// ∂f/∂log s_k from ∂f/∂w₁.
  Eigen::VectorXd logScaleGradient(const Eigen::VectorXd& dInitialWeights) const {
    if (dInitialWeights.size() != m_layout.size()) {
      throw InvalidArgument(detail::message("ScaledInit::logScaleGradient: got ", dInitialWeights.size(),
                                            " entries, expected ", m_layout.size()));
    }
    Eigen::VectorXd out(m_layout.numGroups());
    for (Index k = 0; k < m_layout.numGroups(); ++k) {
      const ParameterGroup& grp = m_layout.group(k);
      const double scale = std::exp(m_logScales(k));
      double sum = 0.0;
      for (Index i = grp.offset; i < grp.offset + grp.size; ++i) sum += dInitialWeights(i) * scale * m_noise(i);
      out(k) = sum;
    }
    return out;
  }

  /// ∂f/∂μ_k from ∂f/∂w₁.
  Eigen::VectorXd meanGradient(const Eigen::VectorXd& dInitialWeights) const {
    if (dInitialWeights.size() != m_layout.size()) {
      throw InvalidArgument(detail::message("ScaledInit::meanGradient: got ", dInitialWeights.size(),
                                            " entries, expected ", m_layout.size()));
    }
    Eigen::VectorXd out(m_layout.numGroups());
    for (Index k = 0; k < m_layout.numGroups(); ++k) {
      const ParameterGroup& grp = m_layout.group(k);
      double sum = 0.0;
      for (Index i = grp.offset; i < grp.offset + grp.size; ++i) sum += dInitialWeights(i);
      out(k) = sum;
    }
    return out;
  }

 private:
  void checkPerGroup(const Eigen::VectorXd& x, const char* what) const {
    if (x.size() != m_layout.numGroups()) {
      throw InvalidArgument(detail::message("ScaledInit: ", what, " have ", x.size(), " entries but the layout has ",
                                            m_layout.numGroups(), " groups"));
    }
    for (Index k = 0; k < x.size(); ++k)
      if (!std::isfinite(x(k))) {
        throw InvalidArgument(detail::message("ScaledInit: ", what, " for group '", m_layout.group(k).name, "' is ",
                                              x(k), "; it must be finite"));
      }
  }

  ParameterLayout m_layout;
  Eigen::VectorXd m_logScales, m_means, m_noise;
  std::uint64_t m_seed;
};

}  // namespace hypergrad
