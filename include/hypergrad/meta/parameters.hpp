// SPDX-License-Identifier: MIT
#pragma once

/// \file parameters.hpp
/// \brief Hyperparameters as one unconstrained vector for a meta-optimiser: named blocks
/// (a learning-rate schedule, a momentum schedule, init scales, L2 strengths, …), each stored
/// through a transform (log α, logit γ, log s, …) so that any real vector is a valid setting,
/// with the chain rule from value-space hypergradients to the unconstrained vector built in.

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "../config.hpp"
#include "../errors.hpp"

namespace hypergrad {

/// How a block's values are stored in the unconstrained vector x.
enum class Transform {
  Identity,  ///< value = x
  Log,       ///< value = exp(x): positive quantities (learning rates, scales, λ)
  Logit      ///< value = 1 / (1 + exp(−x)): quantities in (0, 1) (momentum γ)
};

inline const char* transformName(Transform t) noexcept {
  switch (t) {
    case Transform::Identity: return "identity";
    case Transform::Log: return "log";
    case Transform::Logit: return "logit";
  }
  return "unknown";
}

namespace detail {
inline double toValue(Transform t, double x) {
  switch (t) {
    case Transform::Log: return std::exp(x);
    case Transform::Logit: return 1.0 / (1.0 + std::exp(-x));
    default: return x;
  }
}
inline double toRaw(Transform t, double value, const std::string& block, Index i) {
  const bool ok = std::isfinite(value) && (t != Transform::Log || value > 0) &&
                  (t != Transform::Logit || (value > 0 && value < 1));
  if (!ok) {
    throw InvalidArgument(message("MetaParameters: block '", block, "' entry ", i, " = ", value,
                                  " is outside the domain of its ", transformName(t), " transform (",
                                  t == Transform::Log ? "needs > 0" : t == Transform::Logit ? "needs (0, 1)" : "needs finite",
                                  ")"));
  }
  switch (t) {
    case Transform::Log: return std::log(value);
    case Transform::Logit: return std::log(value / (1.0 - value));
    default: return value;
  }
}
// d value / d x, expressed through the value.
inline double derivative(Transform t, double value) {
  switch (t) {
    case Transform::Log: return value;
    case Transform::Logit: return value * (1.0 - value);
    default: return 1.0;
  }
}
}  // namespace detail

/// Named blocks of hyperparameters over one flat unconstrained vector.
///
/// chain() expects gradients with respect to each block's VALUE. Where the library already
/// returns a gradient in a transformed coordinate — `L2Regularized` gives ∂f/∂η with η = log λ,
/// `ScaledInit::logScaleGradient` gives ∂f/∂log s — store that coordinate itself with
/// Transform::Identity (a block of η, not of λ with Transform::Log, which would multiply by λ a
/// second time).
///
/// \code
/// MetaParameters p;
/// p.add("learning rates", Eigen::MatrixXd::Constant(T, G, 0.1), Transform::Log);
/// p.add("momenta", Eigen::MatrixXd::Constant(T, G, 0.9), Transform::Logit);
/// Schedule alpha(p.value("learning rates"));
/// ...
/// Eigen::VectorXd dx = p.chain({hg.learningRates, hg.momenta});  // ∂f/∂x
/// \endcode
class MetaParameters {
 public:
  struct Block {
    std::string name;
    Index offset = 0, rows = 0, cols = 0;
    Transform transform = Transform::Identity;
    bool trainable = true;  ///< false: kept fixed by meta-optimisers (its gradient is zeroed)
  };

  /// Adds a block with initial values (in value space, e.g. α itself); returns its index.
  Index add(std::string name, const Eigen::MatrixXd& initialValue, Transform transform, bool trainable = true) {
    for (const Block& b : m_blocks)
      if (b.name == name) throw InvalidArgument(detail::message("MetaParameters::add: a block named '", name, "' exists"));
    if (initialValue.size() == 0) throw InvalidArgument(detail::message("MetaParameters::add: block '", name, "' is empty"));
    Block b{std::move(name), m_raw.size(), initialValue.rows(), initialValue.cols(), transform, trainable};
    Eigen::VectorXd raw(m_raw.size() + initialValue.size());
    raw.head(m_raw.size()) = m_raw;
    for (Index i = 0; i < initialValue.size(); ++i)
      raw(b.offset + i) = detail::toRaw(transform, initialValue(i), b.name, i);
    m_raw = std::move(raw);
    m_blocks.push_back(std::move(b));
    return static_cast<Index>(m_blocks.size()) - 1;
  }

  Index numBlocks() const noexcept { return static_cast<Index>(m_blocks.size()); }
  Index size() const noexcept { return m_raw.size(); }
  const Block& block(Index k) const { return m_blocks.at(static_cast<std::size_t>(k)); }
  Index blockIndex(const std::string& name) const {
    for (std::size_t k = 0; k < m_blocks.size(); ++k)
      if (m_blocks[k].name == name) return static_cast<Index>(k);
    throw InvalidArgument(detail::message("MetaParameters: no block named '", name, "'"));
  }

  /// The unconstrained vector x that meta-optimisers update.
  const Eigen::VectorXd& raw() const noexcept { return m_raw; }
  void setRaw(const Eigen::VectorXd& x) {
    if (x.size() != m_raw.size())
      throw InvalidArgument(detail::message("MetaParameters::setRaw: got ", x.size(), " entries, expected ", m_raw.size()));
    if (!x.allFinite()) throw NonFiniteValue("MetaParameters::setRaw: the new vector is not finite");
    m_raw = x;
  }

  /// Values of block k (rows × cols, value space).
  Eigen::MatrixXd value(Index k) const {
    const Block& b = block(k);
    Eigen::MatrixXd out(b.rows, b.cols);
    for (Index i = 0; i < out.size(); ++i) out(i) = detail::toValue(b.transform, m_raw(b.offset + i));
    return out;
  }
  Eigen::MatrixXd value(const std::string& name) const { return value(blockIndex(name)); }

  /// Sets block k from values (value space).
  void setValue(Index k, const Eigen::MatrixXd& v) {
    const Block& b = block(k);
    if (v.rows() != b.rows || v.cols() != b.cols) {
      throw InvalidArgument(detail::message("MetaParameters::setValue: block '", b.name, "' is ", b.rows, " x ", b.cols,
                                            ", got ", v.rows(), " x ", v.cols()));
    }
    for (Index i = 0; i < v.size(); ++i) m_raw(b.offset + i) = detail::toRaw(b.transform, v(i), b.name, i);
  }

  /// Chain rule: from ∂f/∂value of every block (in block order, each rows × cols) to ∂f/∂x.
  /// Blocks marked not trainable get zero.
  Eigen::VectorXd chain(const std::vector<Eigen::MatrixXd>& valueGradients) const {
    if (valueGradients.size() != m_blocks.size()) {
      throw InvalidArgument(detail::message("MetaParameters::chain: got ", valueGradients.size(),
                                            " gradient blocks for ", m_blocks.size(), " parameter blocks"));
    }
    Eigen::VectorXd dx(m_raw.size());
    for (std::size_t k = 0; k < m_blocks.size(); ++k) {
      const Block& b = m_blocks[k];
      const Eigen::MatrixXd& gk = valueGradients[k];
      if (gk.rows() != b.rows || gk.cols() != b.cols) {
        throw InvalidArgument(detail::message("MetaParameters::chain: gradient for block '", b.name, "' is ", gk.rows(),
                                              " x ", gk.cols(), ", expected ", b.rows, " x ", b.cols));
      }
      for (Index i = 0; i < gk.size(); ++i) {
        const double value = detail::toValue(b.transform, m_raw(b.offset + i));
        dx(b.offset + i) = b.trainable ? gk(i) * detail::derivative(b.transform, value) : 0.0;
      }
    }
    return dx;
  }

 private:
  std::vector<Block> m_blocks;
  Eigen::VectorXd m_raw;
};

}  // namespace hypergrad
