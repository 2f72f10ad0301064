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

/// The transform's name as messages print it ("identity", "log", "logit").
inline const char* transformName(Transform t) noexcept {
  switch (t) {
    case Transform::Identity: return "identity";
    case Transform::Log: return "log";
    case Transform::Logit: return "logit";
  }
  return "unknown";
}

namespace detail {
// value(x). The logistic function in the form that cannot overflow: for x < 0, 1/(1 + e^{-x})
// would compute e^{-x} = inf and return 0 where e^x/(1 + e^x) still gives the (subnormal) value.
inline double toValue(Transform t, double x) {
  switch (t) {
    case Transform::Log: return std::exp(x);
    case Transform::Logit: {
      if (x >= 0) return 1.0 / (1.0 + std::exp(-x));
      const double e = std::exp(x);
      return e / (1.0 + e);
    }
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
// d value / d x, computed from x itself: from the value it would be 0 wherever the value has
// rounded to 0 or 1 (|x| > 37 for logit), although the derivative is representable down to
// |x| ≈ 745. Logit: σ(x)(1 − σ(x)) = e^{−|x|} / (1 + e^{−|x|})², symmetric, with no cancellation.
inline double derivative(Transform t, double x) {
  switch (t) {
    case Transform::Log: return std::exp(x);
    case Transform::Logit: {
      const double e = std::exp(-std::abs(x));
      return e / ((1.0 + e) * (1.0 + e));
    }
    default: return 1.0;
  }
}
}  // namespace detail

/// Named blocks of hyperparameters over one flat unconstrained vector.
///
/// The unconstrained vector x (raw()) is the stored truth; values are computed from it and are
/// never clamped. A value can round to the edge of its domain in double precision — σ(x) = 1 for
/// x > 37, e^x = 0 for x < −745 — where it no longer determines x; setValue() therefore keeps
/// the coordinate of every entry whose requested value equals what that coordinate already maps
/// to, so `p.setValue(k, p.value(k))` changes nothing, and chain() differentiates at x itself.
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
  /// Where a block lives in raw() and how it is stored.
  struct Block {
    std::string name;                           ///< unique; blockIndex() and value() find the block by it
    ///@{
    /// `offset`: index of the block's first entry in raw(); `rows` × `cols`: the shape of the
    /// value, as given to add() (stored column-major).
    Index offset = 0, rows = 0, cols = 0;
    ///@}
    Transform transform = Transform::Identity;  ///< value = transform(x) entrywise
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

  Index numBlocks() const noexcept { return static_cast<Index>(m_blocks.size()); }  ///< Blocks added.
  Index size() const noexcept { return m_raw.size(); }  ///< Entries of raw(), all blocks together.
  const Block& block(Index k) const { return m_blocks.at(static_cast<std::size_t>(k)); }  ///< Block k.
  /// Index of the block named `name`; throws InvalidArgument when there is none.
  Index blockIndex(const std::string& name) const {
    for (std::size_t k = 0; k < m_blocks.size(); ++k)
      if (m_blocks[k].name == name) return static_cast<Index>(k);
    throw InvalidArgument(detail::message("MetaParameters: no block named '", name, "'"));
  }

  /// The unconstrained vector x that meta-optimisers update.
  const Eigen::VectorXd& raw() const noexcept { return m_raw; }
  /// Replaces x (what a meta-optimiser's step produced); InvalidArgument on a wrong size,
  /// NonFiniteValue on a NaN or infinite entry.
  void setRaw(const Eigen::VectorXd& x) {
    if (x.size() != m_raw.size())
      throw InvalidArgument(detail::message("MetaParameters::setRaw: got ", x.size(), " entries, expected ", m_raw.size()));
    for (Index i = 0; i < x.size(); ++i)
      if (!std::isfinite(x(i))) throw NonFiniteValue(detail::message("MetaParameters::setRaw: entry ", i, " is ", x(i)));
    m_raw = x;
  }

  /// Values of block k (rows × cols, value space), computed from raw(). Never clamped: a value
  /// may have rounded to the edge of its domain (0 or 1 for logit, 0 or inf for log).
  Eigen::MatrixXd value(Index k) const {
    const Block& b = block(k);
    Eigen::MatrixXd out(b.rows, b.cols);
    for (Index i = 0; i < out.size(); ++i) out(i) = detail::toValue(b.transform, m_raw(b.offset + i));
    return out;
  }
  /// Values of the block named `name`.
  Eigen::MatrixXd value(const std::string& name) const { return value(blockIndex(name)); }

  /// Sets block k from values (value space).
  ///
  /// An entry equal (==) to the value its current coordinate maps to keeps that coordinate, bit
  /// for bit: `setValue(k, value(k))` is a round trip that changes nothing, also for entries that
  /// have saturated (a logit coordinate of 40 has the value 1.0 in double precision, from which
  /// no coordinate can be recovered). Every other entry must lie in the transform's domain (log:
  /// > 0, logit: (0, 1), identity: finite) and is stored as its inverse transform. Throws
  /// InvalidArgument on a wrong shape or an entry outside the domain, leaving the block unchanged.
  void setValue(Index k, const Eigen::MatrixXd& v) {
    const Block& b = block(k);
    if (v.rows() != b.rows || v.cols() != b.cols) {
      throw InvalidArgument(detail::message("MetaParameters::setValue: block '", b.name, "' is ", b.rows, " x ", b.cols,
                                            ", got ", v.rows(), " x ", v.cols()));
    }
    Eigen::VectorXd x = m_raw.segment(b.offset, v.size());  // committed only when every entry is valid
    for (Index i = 0; i < v.size(); ++i)
      if (!(v(i) == detail::toValue(b.transform, x(i)))) x(i) = detail::toRaw(b.transform, v(i), b.name, i);
    m_raw.segment(b.offset, v.size()) = x;
  }

  /// Chain rule: from ∂f/∂value of every block (in block order, each rows × cols) to ∂f/∂x.
  /// Blocks marked not trainable get zero. The derivative d value/dx is computed from x, not
  /// from the (possibly saturated) value: e^x for log, e^{−|x|}/(1 + e^{−|x|})² for logit. An
  /// entry with a zero value-space gradient gets zero even where e^x has overflowed.
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
        // A zero gradient contributes zero; 0 · inf would make it NaN.
        const bool zero = !b.trainable || gk(i) == 0.0;
        dx(b.offset + i) = zero ? 0.0 : gk(i) * detail::derivative(b.transform, m_raw(b.offset + i));
      }
    }
    return dx;
  }

 private:
  std::vector<Block> m_blocks;
  Eigen::VectorXd m_raw;
};

}  // namespace hypergrad
