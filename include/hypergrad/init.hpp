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
    if (means.size() == 0) means = Eigen::VectorXd::Zero(m_layout.numGroups());
    setMeans(std::move(means));
    setLogScales(std::move(logScales));
    m_noise.resize(m_layout.size());
    CounterRng rng(seed, 0x1417u);
    for (Index i = 0; i < m_noise.size(); ++i) m_noise(i) = rng.normal();
  }

  /// The 1/√fan-in heuristic expressed as log scales, given each group's fan-in.
  static Eigen::VectorXd logScalesFromFanIn(const Eigen::VectorXd& fanIn) {
    if ((fanIn.array() <= 0).any()) throw InvalidArgument("ScaledInit::logScalesFromFanIn: fan-in must be positive");
    return (-0.5 * fanIn.array().log()).matrix();
  }

  const ParameterLayout& layout() const noexcept { return m_layout; }
  const Eigen::VectorXd& logScales() const noexcept { return m_logScales; }
  const Eigen::VectorXd& means() const noexcept { return m_means; }
  /// ε, the fixed standard-normal draw.
  const Eigen::VectorXd& noise() const noexcept { return m_noise; }
  std::uint64_t seed() const noexcept { return m_seed; }

  void setLogScales(Eigen::VectorXd logScales) {
    checkPerGroup(logScales, "log scales");
    m_logScales = std::move(logScales);
  }
  void setMeans(Eigen::VectorXd means) {
    checkPerGroup(means, "means");
    m_means = std::move(means);
  }

  /// w₁ = μ + s ⊙ ε.
  Eigen::VectorXd weights() const {
    return m_layout.expand(m_means) + (m_layout.expand(m_logScales).array().exp() * m_noise.array()).matrix();
  }

  /// ∂f/∂log s_k from ∂f/∂w₁.
  Eigen::VectorXd logScaleGradient(const Eigen::VectorXd& dInitialWeights) const {
    if (dInitialWeights.size() != m_layout.size()) {
      throw InvalidArgument(detail::message("ScaledInit::logScaleGradient: got ", dInitialWeights.size(),
                                            " entries, expected ", m_layout.size()));
    }
    const Eigen::VectorXd s = m_layout.expand(m_logScales).array().exp();
    return m_layout.sumByGroup((dInitialWeights.array() * s.array() * m_noise.array()).matrix());
  }

  /// ∂f/∂μ_k from ∂f/∂w₁.
  Eigen::VectorXd meanGradient(const Eigen::VectorXd& dInitialWeights) const {
    return m_layout.sumByGroup(dInitialWeights);
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
