// hypergrad — exact hypergradients by reversible SGD with momentum.
// SPDX-License-Identifier: MIT
#pragma once

/// \file architecture.hpp
/// \brief The shape of a multilayer perceptron (MlpArchitecture: layer sizes and the hidden
/// activation) and the layout of its parameters in the flat parameter vector.
///
/// **Network.** Layer sizes {n_0, n_1, ..., n_L}, L ≥ 1 weight layers (L = 1 is multinomial
/// logistic regression). With A_0 the batch inputs (b × n_0, one example per row):
///
///     Z_l = A_{l-1} W_l + 1 b_lᵀ      (W_l is n_{l-1} × n_l, b_l has n_l entries)
///     A_l = σ(Z_l)                    for the hidden layers l < L
///     L   = (1/b) Σ_i [ logsumexp(Z_L[i, :]) − Z_L[i, y_i] ]
///
/// **Parameter vector.** Groups in order "layer1.weights", "layer1.biases", "layer2.weights", ...
/// Weight matrix W_l is stored as an n_{l-1} × n_l **column-major** block: entry (i, j) (input
/// unit i, output unit j) sits at offset + i + j·n_{l-1}. Column j holds the incoming weights of
/// output unit j, and Z = A·W maps the block with Eigen::Map, without copies.

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "../../config.hpp"
#include "../../errors.hpp"
#include "../../layout.hpp"

namespace hypergrad {

/// \brief How another framework stores one layer's weight matrix (n_in inputs, n_out outputs) in a
/// flat vector. Two memory orders exist; each has two names, both listed so that the
/// framework's own description can be matched word for word.
enum class WeightLayout {
  /// [out, in] row-major: PyTorch's `nn.Linear.weight` (C-contiguous), TensorFlow's
  /// `tf.raw_ops.MatMul(x, W, transpose_b=True)`. Same memory as InOutColumnMajor.
  OutInRowMajor,
  /// [in, out] column-major: hypergrad's own order, Eigen's `MatrixXd(in, out)`. Same memory as
  /// OutInRowMajor.
  InOutColumnMajor,
  /// [in, out] row-major: the kernel of `x @ W` in NumPy, JAX / Flax `Dense`, Keras `Dense`.
  /// Same memory as OutInColumnMajor.
  InOutRowMajor,
  /// [out, in] column-major: Fortran / MATLAB `W * x`, Eigen's `MatrixXd(out, in)`. Same memory
  /// as InOutRowMajor.
  OutInColumnMajor
};

/// \brief Where each layer's biases sit in a flat external parameter vector.
enum class BiasPosition {
  AfterWeights,  ///< [W_1, b_1, W_2, b_2, ...]: PyTorch's parameters() / state_dict(), Keras' get_weights()
  BeforeWeights  ///< [b_1, W_1, b_2, W_2, ...]: JAX's ravel_pytree of a Flax Dense tree ("bias" < "kernel")
};

/// Activation of the hidden layers (the output layer is always linear + softmax).
enum class Activation {
  Tanh,     ///< σ(z) = tanh z
  Relu,     ///< σ(z) = max(z, 0); σ'(0) = 0 and σ'' = 0 (the loss is not twice differentiable at kinks)
  Softplus  ///< σ(z) = log(1 + e^z), computed stably as log1p(e^{−|z|}) + max(z, 0)
};

/// \brief Name of an activation ("tanh", "relu", "softplus"), for messages and logs.
inline const char* activationName(Activation a) noexcept {
  switch (a) {
    case Activation::Tanh:
      return "tanh";
    case Activation::Relu:
      return "relu";
    case Activation::Softplus:
      return "softplus";
  }
  return "unknown";
}

/// \brief Shape of a fully connected network: layer sizes {in, h_1, ..., out} and the hidden
/// activation. Layers are indexed from 0 in this API: layer l maps n_l inputs to n_{l+1}
/// outputs and owns the groups "layer{l+1}.weights" and "layer{l+1}.biases".
class MlpArchitecture {
 public:
  /// \param layerSizes {in, h_1, ..., out}: at least 2 entries, all ≥ 1, out ≥ 2 (softmax over
  ///        one class is constant; use 2 outputs for binary classification).
  /// \param activation the activation of the hidden layers (unused with 2 entries).
  explicit MlpArchitecture(std::vector<Index> layerSizes, Activation activation = Activation::Tanh)
      : m_sizes(std::move(layerSizes)), m_activation(activation) {
    if (m_sizes.size() < 2) {
      throw InvalidArgument(detail::message("MlpArchitecture: got ", m_sizes.size(),
                                            " layer sizes; give at least {inputs, outputs} (2 entries = logistic "
                                            "regression)"));
    }
    for (std::size_t k = 0; k < m_sizes.size(); ++k) {
      if (m_sizes[k] < 1) {
        throw InvalidArgument(
            detail::message("MlpArchitecture: layer size ", k, " is ", m_sizes[k], "; every layer needs >= 1 unit"));
      }
    }
    if (m_sizes.back() < 2) {
      throw InvalidArgument(detail::message("MlpArchitecture: the output layer has ", m_sizes.back(),
                                            " unit; softmax needs >= 2 classes (use 2 for binary problems)"));
    }
    m_weightOffsets.resize(m_sizes.size() - 1);
    m_biasOffsets.resize(m_sizes.size() - 1);
    Index offset = 0;
    for (std::size_t l = 0; l + 1 < m_sizes.size(); ++l) {
      m_weightOffsets[l] = offset;
      offset += m_sizes[l] * m_sizes[l + 1];
      m_biasOffsets[l] = offset;
      offset += m_sizes[l + 1];
    }
    m_numParameters = offset;
  }

  /// Layer sizes {in, h_1, ..., out}.
  const std::vector<Index>& layerSizes() const noexcept { return m_sizes; }
  /// Number of weight layers L (= layerSizes().size() − 1).
  Index numLayers() const noexcept { return static_cast<Index>(m_sizes.size()) - 1; }
  /// Number of input features n_0.
  Index inputSize() const noexcept { return m_sizes.front(); }
  /// Number of classes n_L.
  Index outputSize() const noexcept { return m_sizes.back(); }
  /// Fan-in of layer l (n_l).
  Index fanIn(Index l) const { return m_sizes.at(static_cast<std::size_t>(checkLayer(l, "fanIn"))); }
  /// Fan-out of layer l (n_{l+1}).
  Index fanOut(Index l) const { return m_sizes.at(static_cast<std::size_t>(checkLayer(l, "fanOut")) + 1); }
  /// Hidden-layer activation.
  Activation activation() const noexcept { return m_activation; }
  /// Total number of parameters N.
  Index numParameters() const noexcept { return m_numParameters; }

  /// Offset of W_l (layer l, 0-based) in the parameter vector.
  Index weightsOffset(Index l) const { return m_weightOffsets[static_cast<std::size_t>(checkLayer(l, "weightsOffset"))]; }
  /// Offset of b_l in the parameter vector.
  Index biasesOffset(Index l) const { return m_biasOffsets[static_cast<std::size_t>(checkLayer(l, "biasesOffset"))]; }

  /// \brief Groups "layer1.weights", "layer1.biases", "layer2.weights", ... in parameter order.
  ParameterLayout layout() const {
    ParameterLayout layout;
    for (Index l = 0; l < numLayers(); ++l) {
      const std::string prefix = "layer" + std::to_string(l + 1);
      layout.addGroup(prefix + ".weights", m_sizes[static_cast<std::size_t>(l)] * m_sizes[static_cast<std::size_t>(l) + 1]);
      layout.addGroup(prefix + ".biases", m_sizes[static_cast<std::size_t>(l) + 1]);
    }
    return layout;
  }

  /// \brief Fan-in of the layer each group belongs to, one entry per layout group (for
  /// initialisation scales such as 1/√fan-in; biases get their layer's fan-in too).
  std::vector<Index> groupFanIn() const {
    std::vector<Index> out;
    for (std::size_t l = 0; l + 1 < m_sizes.size(); ++l) {
      out.push_back(m_sizes[l]);
      out.push_back(m_sizes[l]);
    }
    return out;
  }

  /// \brief W_l of a flat parameter vector as an n_l × n_{l+1} column-major matrix view.
  /// \param w parameter vector of size numParameters()
  /// \param l layer (0-based)
  Eigen::Map<const Eigen::MatrixXd> weights(const Eigen::VectorXd& w, Index l) const {
    checkSize(w.size(), "weights");
    return weights(w.data(), l);
  }
  /// \copydoc weights(const Eigen::VectorXd&, Index) const
  Eigen::Map<Eigen::MatrixXd> weights(Eigen::VectorXd& w, Index l) const {
    checkSize(w.size(), "weights");
    return weights(w.data(), l);
  }
  /// \brief b_l of a flat parameter vector as a vector view of n_{l+1} entries.
  Eigen::Map<const Eigen::VectorXd> biases(const Eigen::VectorXd& w, Index l) const {
    checkSize(w.size(), "biases");
    return biases(w.data(), l);
  }
  /// \copydoc biases(const Eigen::VectorXd&, Index) const
  Eigen::Map<Eigen::VectorXd> biases(Eigen::VectorXd& w, Index l) const {
    checkSize(w.size(), "biases");
    return biases(w.data(), l);
  }

  /// \brief Converts a flat parameter vector from another framework's order into hypergrad's.
  /// \param external per layer its weight matrix in `weights` order and its biases, the two in
  ///        `biases` order; numParameters() entries
  /// \param weights how the external vector stores each weight matrix
  /// \param biases where the external vector puts each layer's biases
  /// \return the same values in hypergrad's order (W_l column-major in × out, then b_l)
  ///
  /// The values are moved, never changed, so a vector converted back with exportParameters() is
  /// bit-identical. Works for anything with the parameters' shape: initial weights, ∂f/∂w₁,
  /// per-weight penalties. InvalidArgument when the size is not numParameters().
  Eigen::VectorXd importParameters(const Eigen::VectorXd& external, WeightLayout weights,
                                   BiasPosition biases = BiasPosition::AfterWeights) const {
    checkSize(external.size(), "importParameters");
    Eigen::VectorXd w(m_numParameters);
    permute(external.data(), w.data(), weights, biases, /*toInternal=*/true);
    return w;
  }

  /// \brief Converts hypergrad's parameter vector (or a gradient with its shape) into another
  /// framework's order: the inverse of importParameters().
  /// \param w a vector of numParameters() entries in hypergrad's order
  /// \param weights how the external vector is to store each weight matrix
  /// \param biases where the external vector is to put each layer's biases
  Eigen::VectorXd exportParameters(const Eigen::VectorXd& w, WeightLayout weights,
                                   BiasPosition biases = BiasPosition::AfterWeights) const {
    checkSize(w.size(), "exportParameters");
    Eigen::VectorXd external(m_numParameters);
    permute(w.data(), external.data(), weights, biases, /*toInternal=*/false);
    return external;
  }

  ///@{
  /// Unchecked views on raw storage of numParameters() doubles (no size check possible).
  Eigen::Map<const Eigen::MatrixXd> weights(const double* w, Index l) const {
    const auto k = static_cast<std::size_t>(checkLayer(l, "weights"));
    return Eigen::Map<const Eigen::MatrixXd>(w + m_weightOffsets[k], m_sizes[k], m_sizes[k + 1]);
  }
  Eigen::Map<Eigen::MatrixXd> weights(double* w, Index l) const {
    const auto k = static_cast<std::size_t>(checkLayer(l, "weights"));
    return Eigen::Map<Eigen::MatrixXd>(w + m_weightOffsets[k], m_sizes[k], m_sizes[k + 1]);
  }
  Eigen::Map<const Eigen::VectorXd> biases(const double* w, Index l) const {
    const auto k = static_cast<std::size_t>(checkLayer(l, "biases"));
    return Eigen::Map<const Eigen::VectorXd>(w + m_biasOffsets[k], m_sizes[k + 1]);
  }
  Eigen::Map<Eigen::VectorXd> biases(double* w, Index l) const {
    const auto k = static_cast<std::size_t>(checkLayer(l, "biases"));
    return Eigen::Map<Eigen::VectorXd>(w + m_biasOffsets[k], m_sizes[k + 1]);
  }
  ///@}

 private:
  /// Moves every value between hypergrad's order and the external one (toInternal: ext → ours).
  void permute(const double* from, double* to, WeightLayout weights, BiasPosition biases, bool toInternal) const {
    // Input-fastest memory is ours: the two layouts that share it are a plain copy.
    const bool inputFastest = weights == WeightLayout::OutInRowMajor || weights == WeightLayout::InOutColumnMajor;
    Index ext = 0;
    for (std::size_t l = 0; l + 1 < m_sizes.size(); ++l) {
      const Index in = m_sizes[l], out = m_sizes[l + 1];
      const Index ours = m_weightOffsets[l], oursBias = m_biasOffsets[l];
      Index extWeights = ext, extBias = ext + in * out;
      if (biases == BiasPosition::BeforeWeights) {
        extBias = ext;
        extWeights = ext + out;
      }
      for (Index j = 0; j < out; ++j)
        for (Index i = 0; i < in; ++i) {
          const Index a = ours + i + j * in;  // (input i, output j), input fastest
          const Index e = extWeights + (inputFastest ? i + j * in : j + i * out);
          if (toInternal) to[a] = from[e];
          else to[e] = from[a];
        }
      for (Index j = 0; j < out; ++j) {
        if (toInternal) to[oursBias + j] = from[extBias + j];
        else to[extBias + j] = from[oursBias + j];
      }
      ext += in * out + out;
    }
  }

  Index checkLayer(Index l, const char* fn) const {
    if (l < 0 || l >= numLayers()) {
      throw InvalidArgument(
          detail::message("MlpArchitecture::", fn, ": layer ", l, " outside [0, ", numLayers(), ") (0-based)"));
    }
    return l;
  }
  void checkSize(Index n, const char* fn) const {
    if (n != m_numParameters) {
      throw InvalidArgument(detail::message("MlpArchitecture::", fn, ": parameter vector has ", n,
                                            " entries, expected numParameters() = ", m_numParameters));
    }
  }

  std::vector<Index> m_sizes;
  Activation m_activation;
  std::vector<Index> m_weightOffsets;
  std::vector<Index> m_biasOffsets;
  Index m_numParameters = 0;
};

}  // namespace hypergrad
