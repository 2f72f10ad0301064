// SPDX-License-Identifier: MIT
#pragma once

/// \file mlp.hpp
/// \brief A multilayer perceptron with softmax cross-entropy: the training objective
/// (MlpObjective, minibatch loss, optionally with the training inputs as hyperparameters) and
/// the meta objective (MlpLoss, full-batch loss on a validation set).
///
/// Backprop and Pearlmutter's R-operator are written by hand on plain double Eigen matrices: a
/// "dual" matrix is a pair (value, R-value) of double matrices, so every product is an ordinary
/// double GEMM (DESIGN.md §4) and never a GEMM over a dual scalar type.
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
///
/// **Determinism.** Every result is a pure function of (w, θ, t): fixed summation orders, no
/// OpenMP of our own, and each output (gradient, Hessian-vector product, mixed product) is
/// computed by the same sequence of operations whether it is requested alone or together with
/// the others, so `reverseStep` is bit-identical to the three separate calls.
///
/// **Thread safety.** MlpObjective and MlpLoss keep a mutable workspace so the hot path does not
/// allocate; one object must therefore not be called from several threads at once (use one
/// copy per thread).

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "../batches.hpp"
#include "../config.hpp"
#include "../errors.hpp"
#include "../layout.hpp"

namespace hypergrad {

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

/// \brief A classification data set: one example per row of `inputs`, integer labels.
struct Dataset {
  Eigen::MatrixXd inputs;  ///< numExamples × numFeatures, one example per ROW
  Eigen::VectorXi labels;  ///< numExamples labels in [0, numClasses)
  Index numClasses = 0;    ///< number of classes

  Index numExamples() const noexcept { return inputs.rows(); }
  Index numFeatures() const noexcept { return inputs.cols(); }

  /// \brief Throws InvalidArgument when the sizes disagree, a label is out of [0, numClasses),
  /// or an input is NaN or infinite; the message names the offending entry.
  void validate() const {
    if (inputs.rows() == 0 || inputs.cols() == 0) {
      throw InvalidArgument(detail::message("Dataset: inputs are ", inputs.rows(), " x ", inputs.cols(),
                                            "; need at least one example (row) and one feature (column)"));
    }
    if (labels.size() != inputs.rows()) {
      throw InvalidArgument(detail::message("Dataset: ", inputs.rows(), " examples (rows of inputs) but ",
                                            labels.size(), " labels; give one label per example"));
    }
    if (numClasses < 1) {
      throw InvalidArgument(detail::message("Dataset: numClasses is ", numClasses, "; it must be at least 1"));
    }
    for (Index k = 0; k < labels.size(); ++k) {
      if (labels(k) < 0 || labels(k) >= numClasses) {
        throw InvalidArgument(detail::message("Dataset: label of example ", k, " is ", labels(k),
                                              ", outside [0, numClasses = ", numClasses, ")"));
      }
    }
    if (!inputs.allFinite()) {
      for (Index k = 0; k < inputs.rows(); ++k)
        for (Index j = 0; j < inputs.cols(); ++j)
          if (!std::isfinite(inputs(k, j))) {
            throw InvalidArgument(detail::message("Dataset: input (example ", k, ", feature ", j, ") is ",
                                                  inputs(k, j), "; inputs must be finite"));
          }
    }
  }
};

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
  /// Fan-in of layer l (n_l), fan-out (n_{l+1}).
  Index fanIn(Index l) const { return m_sizes.at(static_cast<std::size_t>(checkLayer(l, "fanIn"))); }
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

 private:
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

namespace detail {

/// Buffers of one forward / R-forward / backward / R-backward sweep; sized on first use and
/// reused (Eigen's resize keeps the allocation when the size is unchanged).
struct MlpWorkspace {
  Eigen::MatrixXd input;                // gathered batch rows (MlpObjective only)
  Eigen::VectorXi labels;               // gathered batch labels (MlpObjective only)
  std::vector<Eigen::MatrixXd> z;       // z[l]: pre-activation of layer l (b × n_{l+1})
  std::vector<Eigen::MatrixXd> a;       // a[l] = σ(z[l]), hidden layers only
  std::vector<Eigen::MatrixXd> d1;      // σ'(z[l]), hidden layers only
  std::vector<Eigen::MatrixXd> rz, ra;  // R{z[l]}, R{a[l]}
  std::vector<Eigen::MatrixXd> delta;   // ∂L/∂z[l]
  std::vector<Eigen::MatrixXd> rdelta;  // R{∂L/∂z[l]}
  std::vector<Eigen::MatrixXd> da;      // ∂L/∂a[l] (hidden)
  std::vector<Eigen::MatrixXd> rda;     // R{∂L/∂a[l]} (hidden)
  Eigen::MatrixXd probs;                // softmax of z[L-1]
  Eigen::MatrixXd rInputGrad;           // R{∂L/∂A_0}: the mixed product w.r.t. the inputs
};

/// \brief The one implementation of the network's math, shared by MlpObjective and MlpLoss.
class MlpNetwork {
 public:
  explicit MlpNetwork(MlpArchitecture arch) : m_arch(std::move(arch)) {}

  const MlpArchitecture& architecture() const noexcept { return m_arch; }

  /// What a sweep produces; null pointers are skipped. Every output is computed by the same
  /// operations whatever else is requested (bit-identity of the fused and separate calls).
  struct Outputs {
    double* gradient = nullptr;     ///< ∇_w L, numParameters() doubles
    double* hvp = nullptr;          ///< ∇²_w L u, numParameters() doubles
    bool inputMixed = false;        ///< compute ws.rInputGrad = ∂_{A_0}(uᵀ ∇_w L), b × n_0
  };

  /// \brief Forward pass on `input` (b × n_0) with `labels`; fills ws.z/a/d1/probs and returns
  /// the mean softmax cross-entropy.
  double forward(const double* w, const Eigen::MatrixXd& input, const Eigen::VectorXi& labels,
                 MlpWorkspace& ws) const {
    const Index L = m_arch.numLayers();
    const Index b = input.rows();
    ensureLayers(ws);
    for (Index l = 0; l < L; ++l) {
      const auto k = static_cast<std::size_t>(l);
      const Eigen::MatrixXd& x = (l == 0) ? input : ws.a[k - 1];
      Eigen::MatrixXd& z = ws.z[k];
      z.resize(b, m_arch.fanOut(l));
      z.noalias() = x * m_arch.weights(w, l);
      z.rowwise() += m_arch.biases(w, l).transpose();
      if (l + 1 < L) activate(z, ws.a[k], ws.d1[k]);
    }
    return softmaxCrossEntropy(ws.z[static_cast<std::size_t>(L - 1)], labels, ws.probs);
  }

  /// \brief R-forward pass along direction u (in w): R{z[l]} and R{a[l]}. Needs forward().
  void rForward(const double* w, const double* u, const Eigen::MatrixXd& input, MlpWorkspace& ws) const {
    const Index L = m_arch.numLayers();
    const Index b = input.rows();
    for (Index l = 0; l < L; ++l) {
      const auto k = static_cast<std::size_t>(l);
      const Eigen::MatrixXd& x = (l == 0) ? input : ws.a[k - 1];
      Eigen::MatrixXd& rz = ws.rz[k];
      rz.resize(b, m_arch.fanOut(l));
      // R{Z_l} = A_{l-1} U_l + R{A_{l-1}} W_l + 1 R{b_l}ᵀ   (R{A_0} = 0: u is a direction in w)
      rz.noalias() = x * m_arch.weights(u, l);
      if (l > 0) rz.noalias() += ws.ra[k - 1] * m_arch.weights(w, l);
      rz.rowwise() += m_arch.biases(u, l).transpose();
      if (l + 1 < L) ws.ra[k] = ws.d1[k].cwiseProduct(rz);
    }
  }

  /// \brief Backward pass (and R-backward pass when `u` is given). Needs forward() (and
  /// rForward() when u != nullptr) on the same input.
  void backward(const double* w, const double* u, const Eigen::MatrixXd& input, const Eigen::VectorXi& labels,
                MlpWorkspace& ws, const Outputs& out) const {
    const Index L = m_arch.numLayers();
    const Index b = input.rows();
    const bool wantR = u != nullptr && (out.hvp != nullptr || out.inputMixed);
    const auto last = static_cast<std::size_t>(L - 1);
    const double invB = 1.0 / static_cast<double>(b);

    // ∂L/∂Z_L = (P − Y)/b;  R{∂L/∂Z_L} = (P ⊙ R{Z_L} − P ⊙ rowsum(P ⊙ R{Z_L}))/b
    ws.delta[last] = ws.probs;
    for (Index i = 0; i < b; ++i) ws.delta[last](i, labels(i)) -= 1.0;
    ws.delta[last] *= invB;
    if (wantR) {
      const Eigen::MatrixXd& p = ws.probs;
      const Eigen::MatrixXd& rz = ws.rz[last];
      Eigen::MatrixXd& rd = ws.rdelta[last];
      rd.resize(b, p.cols());
      for (Index i = 0; i < b; ++i) {
        double s = 0.0;
        for (Index c = 0; c < p.cols(); ++c) s += p(i, c) * rz(i, c);
        for (Index c = 0; c < p.cols(); ++c) rd(i, c) = p(i, c) * (rz(i, c) - s) * invB;
      }
    }

    for (Index l = L - 1; l >= 0; --l) {
      const auto k = static_cast<std::size_t>(l);
      const Eigen::MatrixXd& x = (l == 0) ? input : ws.a[k - 1];
      const Eigen::MatrixXd& delta = ws.delta[k];
      if (out.gradient != nullptr) {
        m_arch.weights(out.gradient, l).noalias() = x.transpose() * delta;
        m_arch.biases(out.gradient, l).noalias() = delta.colwise().sum().transpose();
      }
      if (out.hvp != nullptr && wantR) {
        // R{∂L/∂W_l} = A_{l-1}ᵀ R{δ_l} + R{A_{l-1}}ᵀ δ_l
        auto hw = m_arch.weights(out.hvp, l);
        hw.noalias() = x.transpose() * ws.rdelta[k];
        if (l > 0) hw.noalias() += ws.ra[k - 1].transpose() * delta;
        m_arch.biases(out.hvp, l).noalias() = ws.rdelta[k].colwise().sum().transpose();
      }
      if (l > 0) {
        // Into hidden layer l-1: ∂L/∂A = δ Wᵀ, δ_{l-1} = ∂L/∂A ⊙ σ'(Z_{l-1}).
        const auto km = k - 1;
        ws.da[km].resize(b, m_arch.fanIn(l));
        ws.da[km].noalias() = delta * m_arch.weights(w, l).transpose();
        ws.delta[km] = ws.da[km].cwiseProduct(ws.d1[km]);
        if (wantR) {
          // R{∂L/∂A} = R{δ} Wᵀ + δ Uᵀ;  R{δ_{l-1}} = R{∂L/∂A} ⊙ σ' + ∂L/∂A ⊙ σ'' ⊙ R{Z_{l-1}}
          ws.rda[km].resize(b, m_arch.fanIn(l));
          ws.rda[km].noalias() = ws.rdelta[k] * m_arch.weights(w, l).transpose();
          ws.rda[km].noalias() += delta * m_arch.weights(u, l).transpose();
          Eigen::MatrixXd& rd = ws.rdelta[km];
          rd = ws.rda[km].cwiseProduct(ws.d1[km]);
          addSecondOrderTerm(ws.da[km], ws.a[km], ws.d1[km], ws.rz[km], rd);
        }
      } else if (out.inputMixed && wantR) {
        // ∂_{A_0}(uᵀ∇_w L) = R{∂L/∂A_0} = R{δ_1} W_1ᵀ + δ_1 U_1ᵀ  (symmetry of second derivatives)
        ws.rInputGrad.resize(b, m_arch.inputSize());
        ws.rInputGrad.noalias() = ws.rdelta[k] * m_arch.weights(w, l).transpose();
        ws.rInputGrad.noalias() += delta * m_arch.weights(u, l).transpose();
      }
    }
  }

  /// \brief Row-wise argmax of the logits of the last forward() (ties: lowest class).
  static void argmaxRows(const Eigen::MatrixXd& logits, Eigen::VectorXi& out) {
    out.resize(logits.rows());
    for (Index i = 0; i < logits.rows(); ++i) {
      Index best = 0;
      for (Index c = 1; c < logits.cols(); ++c)
        if (logits(i, c) > logits(i, best)) best = c;
      out(i) = static_cast<int>(best);
    }
  }

 private:
  void ensureLayers(MlpWorkspace& ws) const {
    const auto n = static_cast<std::size_t>(m_arch.numLayers());
    if (ws.z.size() == n) return;
    for (auto* v : {&ws.z, &ws.a, &ws.d1, &ws.rz, &ws.ra, &ws.delta, &ws.rdelta, &ws.da, &ws.rda}) v->resize(n);
  }

  /// a = σ(z), d1 = σ'(z).
  void activate(const Eigen::MatrixXd& z, Eigen::MatrixXd& a, Eigen::MatrixXd& d1) const {
    a.resize(z.rows(), z.cols());
    d1.resize(z.rows(), z.cols());
    switch (m_arch.activation()) {
      case Activation::Tanh:
        a = z.array().tanh().matrix();
        d1 = (1.0 - a.array().square()).matrix();
        break;
      case Activation::Relu:
        a = z.cwiseMax(0.0);
        d1 = (z.array() > 0.0).cast<double>().matrix();
        break;
      case Activation::Softplus:
        for (Index j = 0; j < z.cols(); ++j)
          for (Index i = 0; i < z.rows(); ++i) {
            const double x = z(i, j);
            const double e = std::exp(-std::abs(x));  // in (0, 1]: no overflow
            a(i, j) = std::log1p(e) + std::max(x, 0.0);
            d1(i, j) = x >= 0.0 ? 1.0 / (1.0 + e) : e / (1.0 + e);  // logistic sigmoid
          }
        break;
    }
  }

  /// rd += da ⊙ σ''(z) ⊙ rz, with σ'' from the stored a = σ(z), d1 = σ'(z).
  void addSecondOrderTerm(const Eigen::MatrixXd& da, const Eigen::MatrixXd& a, const Eigen::MatrixXd& d1,
                          const Eigen::MatrixXd& rz, Eigen::MatrixXd& rd) const {
    switch (m_arch.activation()) {
      case Activation::Tanh:  // σ'' = −2 tanh(z) (1 − tanh²(z))
        rd.array() -= 2.0 * da.array() * a.array() * d1.array() * rz.array();
        break;
      case Activation::Relu:  // σ'' = 0 (almost everywhere)
        break;
      case Activation::Softplus:  // σ'' = s (1 − s), s = sigmoid(z) = σ'
        rd.array() += da.array() * (d1.array() * (1.0 - d1.array())) * rz.array();
        break;
    }
  }

  /// Log-sum-exp stabilised softmax of each row; returns the mean cross-entropy.
  static double softmaxCrossEntropy(const Eigen::MatrixXd& z, const Eigen::VectorXi& labels, Eigen::MatrixXd& p) {
    const Index b = z.rows();
    const Index C = z.cols();
    p.resize(b, C);
    double total = 0.0;
    for (Index i = 0; i < b; ++i) {
      double m = z(i, 0);
      for (Index c = 1; c < C; ++c) m = std::max(m, z(i, c));
      double s = 0.0;
      for (Index c = 0; c < C; ++c) {
        p(i, c) = std::exp(z(i, c) - m);
        s += p(i, c);
      }
      const double inv = 1.0 / s;
      for (Index c = 0; c < C; ++c) p(i, c) *= inv;
      total += (m + std::log(s)) - z(i, labels(i));
    }
    return total / static_cast<double>(b);
  }

  MlpArchitecture m_arch;
};

/// Throws InvalidArgument unless v has n entries.
inline void checkVectorSize(const Eigen::VectorXd& v, Index n, const char* fn, const char* what) {
  if (v.size() != n) {
    throw InvalidArgument(detail::message(fn, ": ", what, " has ", v.size(), " entries, expected ", n,
                                          " (numParameters())"));
  }
}

/// Checks that an architecture and a data set fit together.
inline void checkArchitectureFitsData(const MlpArchitecture& arch, const Dataset& data, const char* fn) {
  data.validate();
  if (data.numFeatures() != arch.inputSize()) {
    throw InvalidArgument(detail::message(fn, ": the data has ", data.numFeatures(),
                                          " features (columns) but the network has ", arch.inputSize(), " inputs"));
  }
  if (data.numClasses != arch.outputSize()) {
    throw InvalidArgument(detail::message(fn, ": the data has numClasses = ", data.numClasses,
                                          " but the network has ", arch.outputSize(), " outputs"));
  }
}

}  // namespace detail

/// \brief Training objective: mean softmax cross-entropy of an MLP over minibatch t.
///
/// Satisfies the objective concept (objective.hpp). Hyperparameters θ: none by default; with
/// `inputsAreHyperparameters` θ is the training inputs, flattened **example-major** (row-major):
/// θ[k·numFeatures + j] = inputs(k, j), so example k's features are contiguous. The mixed
/// product then has numExamples·numFeatures entries, non-zero only in the rows of batch t —
/// meant for small learned training sets (e.g. 10 images), since the output is dense.
///
/// Not thread-safe: calls share a mutable workspace (one object per thread). Output vectors
/// must not alias w or u.
class MlpObjective {
 public:
  /// \param architecture network shape; its input/output sizes must match the data
  /// \param train training data (validated: sizes, labels, finite inputs)
  /// \param batches t -> indices of the examples in batch t (pure function, e.g. SeededBatches)
  /// \param inputsAreHyperparameters treat the training inputs as θ
  MlpObjective(MlpArchitecture architecture, Dataset train, BatchSchedule batches,
               bool inputsAreHyperparameters = false)
      : m_net(std::move(architecture)),
        m_data(std::move(train)),
        m_batches(std::move(batches)),
        m_inputsAreHyperparameters(inputsAreHyperparameters) {
    detail::checkArchitectureFitsData(m_net.architecture(), m_data, "MlpObjective");
    if (!m_batches) throw InvalidArgument("MlpObjective: the batch schedule is empty (no callable)");
  }

  /// Number of parameters N.
  Index numParameters() const noexcept { return m_net.architecture().numParameters(); }
  /// numExamples·numFeatures when the inputs are hyperparameters, else 0.
  Index numHyperparameters() const noexcept {
    return m_inputsAreHyperparameters ? m_data.numExamples() * m_data.numFeatures() : 0;
  }
  /// Parameter groups "layer1.weights", "layer1.biases", ...
  ParameterLayout layout() const { return m_net.architecture().layout(); }
  const MlpArchitecture& architecture() const noexcept { return m_net.architecture(); }
  const Dataset& data() const noexcept { return m_data; }
  const BatchSchedule& batches() const noexcept { return m_batches; }
  bool inputsAreHyperparameters() const noexcept { return m_inputsAreHyperparameters; }

  /// \brief θ: the training inputs flattened example-major (size 0 unless inputs are hyperparameters).
  Eigen::VectorXd hyperparameters() const {
    Eigen::VectorXd theta(numHyperparameters());
    if (m_inputsAreHyperparameters) flattenInputs(theta);
    return theta;
  }

  /// \brief Replaces the training inputs by θ (example-major, see the class comment).
  /// \param theta numExamples·numFeatures finite values
  void setHyperparameters(const Eigen::VectorXd& theta) {
    if (!m_inputsAreHyperparameters) {
      throw InvalidArgument(
          "MlpObjective::setHyperparameters: this objective has no hyperparameters; construct it with "
          "inputsAreHyperparameters = true to learn the training inputs");
    }
    if (theta.size() != numHyperparameters()) {
      throw InvalidArgument(detail::message("MlpObjective::setHyperparameters: theta has ", theta.size(),
                                            " entries, expected numExamples*numFeatures = ", numHyperparameters()));
    }
    const Index F = m_data.numFeatures();
    for (Index i = 0; i < theta.size(); ++i) {
      if (!std::isfinite(theta(i))) {
        throw InvalidArgument(detail::message("MlpObjective::setHyperparameters: theta[", i, "] (example ", i / F,
                                              ", feature ", i % F, ") is ", theta(i), "; inputs must be finite"));
      }
    }
    for (Index k = 0; k < m_data.numExamples(); ++k)
      m_data.inputs.row(k) = theta.segment(k * F, F).transpose();
  }

  /// \brief The minibatch loss L(w, θ, t).
  double value(const Eigen::VectorXd& w, Index t) const {
    detail::checkVectorSize(w, numParameters(), "MlpObjective::value", "w");
    gather(t, "value");
    return m_net.forward(w.data(), m_ws.input, m_ws.labels, m_ws);
  }

  /// \brief g = ∇_w L(w, θ, t); deterministic (bit-identical for identical inputs).
  void gradient(const Eigen::VectorXd& w, Index t, Eigen::VectorXd& g) const {
    detail::checkVectorSize(w, numParameters(), "MlpObjective::gradient", "w");
    gather(t, "gradient");
    m_net.forward(w.data(), m_ws.input, m_ws.labels, m_ws);
    g.resize(numParameters());
    detail::MlpNetwork::Outputs out;
    out.gradient = g.data();
    m_net.backward(w.data(), nullptr, m_ws.input, m_ws.labels, m_ws, out);
  }

  /// \brief hu = ∇²_w L(w, θ, t) u by Pearlmutter's R-operator.
  void hessianVectorProduct(const Eigen::VectorXd& w, Index t, const Eigen::VectorXd& u, Eigen::VectorXd& hu) const {
    detail::checkVectorSize(w, numParameters(), "MlpObjective::hessianVectorProduct", "w");
    detail::checkVectorSize(u, numParameters(), "MlpObjective::hessianVectorProduct", "u");
    hu.resize(numParameters());
    run(w, t, u, nullptr, &hu, nullptr, "hessianVectorProduct");
  }

  /// \brief dtheta = (∂_θ ∇_w L(w, θ, t))ᵀ u: with inputs as hyperparameters, the gradient of
  /// uᵀ∇_w L with respect to the inputs (zero outside batch t); size 0 otherwise.
  void mixedProduct(const Eigen::VectorXd& w, Index t, const Eigen::VectorXd& u, Eigen::VectorXd& dtheta) const {
    detail::checkVectorSize(w, numParameters(), "MlpObjective::mixedProduct", "w");
    detail::checkVectorSize(u, numParameters(), "MlpObjective::mixedProduct", "u");
    if (!m_inputsAreHyperparameters) {
      dtheta.resize(0);
      return;
    }
    run(w, t, u, nullptr, nullptr, &dtheta, "mixedProduct");
  }

  /// \brief Gradient, Hessian-vector product and mixed product from one forward + R-forward and
  /// one backward + R-backward pass; bit-identical to the three separate calls.
  void reverseStep(const Eigen::VectorXd& w, Index t, const Eigen::VectorXd& u, Eigen::VectorXd& g,
                   Eigen::VectorXd& hu, Eigen::VectorXd& dtheta) const {
    detail::checkVectorSize(w, numParameters(), "MlpObjective::reverseStep", "w");
    detail::checkVectorSize(u, numParameters(), "MlpObjective::reverseStep", "u");
    g.resize(numParameters());
    hu.resize(numParameters());
    if (!m_inputsAreHyperparameters) dtheta.resize(0);
    run(w, t, u, &g, &hu, m_inputsAreHyperparameters ? &dtheta : nullptr, "reverseStep");
  }

 private:
  void run(const Eigen::VectorXd& w, Index t, const Eigen::VectorXd& u, Eigen::VectorXd* g, Eigen::VectorXd* hu,
           Eigen::VectorXd* dtheta, const char* fn) const {
    gather(t, fn);
    m_net.forward(w.data(), m_ws.input, m_ws.labels, m_ws);
    m_net.rForward(w.data(), u.data(), m_ws.input, m_ws);
    detail::MlpNetwork::Outputs out;
    out.gradient = g != nullptr ? g->data() : nullptr;
    out.hvp = hu != nullptr ? hu->data() : nullptr;
    out.inputMixed = dtheta != nullptr;
    m_net.backward(w.data(), u.data(), m_ws.input, m_ws.labels, m_ws, out);
    if (dtheta != nullptr) {
      // Scatter the batch rows back to example-major θ; += so repeated examples accumulate.
      const Index F = m_data.numFeatures();
      dtheta->resize(numHyperparameters());
      dtheta->setZero();
      for (std::size_t k = 0; k < m_batchIndex.size(); ++k) {
        const Index e = m_batchIndex[k];
        dtheta->segment(e * F, F) += m_ws.rInputGrad.row(static_cast<Index>(k)).transpose();
      }
    }
  }

  /// Gathers the rows and labels of batch t into the workspace, validating the indices.
  void gather(Index t, const char* fn) const {
    m_batchIndex = m_batches(t);
    const Index n = m_data.numExamples();
    if (m_batchIndex.empty()) {
      throw InvalidArgument(detail::message("MlpObjective::", fn, ": batch t = ", t,
                                            " is empty; the batch schedule must return at least one index"));
    }
    for (std::size_t k = 0; k < m_batchIndex.size(); ++k) {
      const Index e = m_batchIndex[k];
      if (e < 0 || e >= n) {
        throw InvalidArgument(detail::message("MlpObjective::", fn, ": batch t = ", t, " contains example index ",
                                              e, " (position ", k, "), outside [0, numExamples = ", n, ")"));
      }
    }
    const auto b = static_cast<Index>(m_batchIndex.size());
    m_ws.input.resize(b, m_data.numFeatures());
    m_ws.labels.resize(b);
    for (Index k = 0; k < b; ++k) {
      const Index e = m_batchIndex[static_cast<std::size_t>(k)];
      m_ws.input.row(k) = m_data.inputs.row(e);
      m_ws.labels(k) = m_data.labels(e);
    }
  }

  void flattenInputs(Eigen::VectorXd& theta) const {
    const Index F = m_data.numFeatures();
    for (Index k = 0; k < m_data.numExamples(); ++k) theta.segment(k * F, F) = m_data.inputs.row(k).transpose();
  }

  detail::MlpNetwork m_net;
  Dataset m_data;
  BatchSchedule m_batches;
  bool m_inputsAreHyperparameters;
  mutable detail::MlpWorkspace m_ws;
  mutable std::vector<Index> m_batchIndex;
};

/// \brief Meta objective: full-batch mean softmax cross-entropy of an MLP on a data set
/// (typically the validation set), plus error rate and predictions.
///
/// Satisfies the meta-objective concept. Not thread-safe (mutable workspace).
class MlpLoss {
 public:
  /// \param architecture network shape; input/output sizes must match the data
  /// \param data the examples the loss averages over (validated)
  MlpLoss(MlpArchitecture architecture, Dataset data) : m_net(std::move(architecture)), m_data(std::move(data)) {
    detail::checkArchitectureFitsData(m_net.architecture(), m_data, "MlpLoss");
  }

  Index numParameters() const noexcept { return m_net.architecture().numParameters(); }
  ParameterLayout layout() const { return m_net.architecture().layout(); }
  const MlpArchitecture& architecture() const noexcept { return m_net.architecture(); }
  const Dataset& data() const noexcept { return m_data; }

  /// \brief Mean cross-entropy over all examples.
  double value(const Eigen::VectorXd& w) const {
    detail::checkVectorSize(w, numParameters(), "MlpLoss::value", "w");
    return m_net.forward(w.data(), m_data.inputs, m_data.labels, m_ws);
  }

  /// \brief Returns the mean cross-entropy and sets g to its gradient.
  double valueAndGradient(const Eigen::VectorXd& w, Eigen::VectorXd& g) const {
    detail::checkVectorSize(w, numParameters(), "MlpLoss::valueAndGradient", "w");
    const double f = m_net.forward(w.data(), m_data.inputs, m_data.labels, m_ws);
    g.resize(numParameters());
    detail::MlpNetwork::Outputs out;
    out.gradient = g.data();
    m_net.backward(w.data(), nullptr, m_data.inputs, m_data.labels, m_ws, out);
    return f;
  }

  /// \brief Predicted class of every example (argmax of the logits; ties go to the lower class).
  Eigen::VectorXi predict(const Eigen::VectorXd& w) const {
    detail::checkVectorSize(w, numParameters(), "MlpLoss::predict", "w");
    m_net.forward(w.data(), m_data.inputs, m_data.labels, m_ws);
    Eigen::VectorXi out;
    detail::MlpNetwork::argmaxRows(m_ws.z.back(), out);
    return out;
  }

  /// \brief Fraction of examples whose predicted class differs from the label.
  double errorRate(const Eigen::VectorXd& w) const {
    const Eigen::VectorXi pred = predict(w);
    Index wrong = 0;
    for (Index i = 0; i < pred.size(); ++i) wrong += (pred(i) != m_data.labels(i)) ? 1 : 0;
    return static_cast<double>(wrong) / static_cast<double>(pred.size());
  }

 private:
  detail::MlpNetwork m_net;
  Dataset m_data;
  mutable detail::MlpWorkspace m_ws;
};

}  // namespace hypergrad
