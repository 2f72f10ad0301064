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
/// **Shards and threads (DESIGN.md §3).** Every result is a pure function of (w, θ, t) and of
/// the shard size — never of the number of threads. A batch of b examples (the rows of the
/// batch in the order the batch schedule returns them; all rows of the data set for MlpLoss) is
/// cut by a ShardPlan (parallel/shard_plan.hpp) into ⌈b / S⌉ consecutive shards of
/// S = shardSize() examples (default 50, set with setShardSize(); the last shard takes the
/// remainder). The partition depends only on b and S.
/// Each shard runs its own forward / R-forward / backward / R-backward sweep in its own
/// workspace, and the shard results (loss, gradient, Hessian-vector product, mixed product) are
/// then added in shard order 0, 1, 2, ... — a fixed summation order. When the code is compiled
/// with OpenMP (`-fopenmp`, `_OPENMP` defined) the shards run in a `#pragma omp parallel for`;
/// without it they run one after the other, with the same bits.
///
/// Inside a shard every matrix product is a *single-threaded* GEMM whatever the OpenMP settings.
/// Eigen 3.4's own products are not enough: `parallelize_gemm` (Parallelizer.h) goes
/// multi-threaded whenever `Eigen::nbThreads() > 1` and `omp_get_num_threads() == 1` — which is
/// the case inside a parallel region of ONE thread, or in a nested region — and a
/// multi-threaded GEMM re-blocks the depth for the thread count, which changes the last bits
/// (7e-14 on a 200×784 by 784×50 product between 1 and 2 threads). So the shards call Eigen's
/// sequential GEMM kernel (`general_matrix_matrix_product::run` with a one-thread blocking and
/// no parallel info) directly: exactly what Eigen runs on its own single-threaded path. The
/// library never calls `Eigen::setNbThreads` and leaves the user's Eigen settings untouched.
/// (With an Eigen other than 3.4.x the shards fall back to ordinary Eigen products: still
/// deterministic without OpenMP, and with OpenMP as long as Eigen stays single-threaded, e.g.
/// under `EIGEN_DONT_PARALLELIZE`.)
///
/// The shard size changes the rounding of the sums, hence the bits: it must be the same in the
/// forward and the reverse pass (SgdMomentum's gradient fingerprint reports a change). Results
/// for one shard size are identical at any thread count, but differ in the last bits from those
/// for another shard size. Small shards expose more parallelism, large ones make larger (more
/// efficient) GEMMs; 50 suits the paper's batch of 200 on up to 4 threads.
///
/// Each output (gradient, Hessian-vector product, mixed product) is computed by the same
/// sequence of operations whether it is requested alone or together with the others, so
/// `reverseStep` is bit-identical to the three separate calls.
///
/// **Thread safety.** MlpObjective and MlpLoss keep mutable per-shard workspaces so the hot path
/// does not allocate; one object must therefore not be called from several threads at once (use
/// one copy per thread). The object parallelises internally over shards.

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "../batches.hpp"
#include "../config.hpp"
#include "../data/dataset.hpp"
#include "../errors.hpp"
#include "../layout.hpp"
#include "../parallel/shard_plan.hpp"

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

/// A column-major view of constant doubles: rows × cols, column j at data + j·stride.
struct ConstMatrixView {
  const double* data = nullptr;
  Index rows = 0;
  Index cols = 0;
  Index stride = 0;
};

/// View of an Eigen column-major matrix (or Map / block with unit inner stride).
template <class M>
ConstMatrixView viewOf(const M& m) {
  return ConstMatrixView{m.data(), m.rows(), m.cols(), m.outerStride()};
}

/// The GEMM kernel's packing buffers, kept in a shard's workspace between calls so that the hot
/// path does not allocate (a fresh allocation per product made the C library return the memory
/// to the system and fault it back in: +25% on a 784-50-50-50-10 gradient).
struct GemmScratch {
  Eigen::VectorXd blockA, blockB;
};

#if EIGEN_VERSION_AT_LEAST(3, 4, 0) && !EIGEN_VERSION_AT_LEAST(3, 4, 90)
#define HYPERGRAD_SERIAL_GEMM_KERNEL 1
/// The blocking of Eigen's gemm_blocking_space(rows, cols, depth, num_threads = 1, l3 = true) —
/// the one Eigen's own single-threaded product uses — with packing buffers from a GemmScratch.
class ScratchBlocking : public Eigen::internal::level3_blocking<double, double> {
 public:
  ScratchBlocking(Index m, Index n, Index k, GemmScratch& scratch) {
    this->m_mc = m;
    this->m_nc = n;
    this->m_kc = k;
    Eigen::internal::computeProductBlockingSizes<double, double, 1>(this->m_kc, this->m_mc, this->m_nc, Index(1));
    const Index sizeA = this->m_mc * this->m_kc, sizeB = this->m_kc * this->m_nc;
    if (scratch.blockA.size() < sizeA) scratch.blockA.resize(sizeA);
    if (scratch.blockB.size() < sizeB) scratch.blockB.resize(sizeB);
    this->m_blockA = scratch.blockA.data();
    this->m_blockB = scratch.blockB.data();
  }
};

/// C += op(A) op(B) with Eigen's sequential GEMM kernel: a one-thread blocking and no parallel
/// info, i.e. what Eigen's product runs on its single-threaded path, whatever the OpenMP state.
template <int LhsOrder, int RhsOrder>
void serialGemmKernel(Index m, Index n, Index k, const double* a, Index lda, const double* b, Index ldb, double* c,
                      Index ldc, GemmScratch& scratch) {
  ScratchBlocking blocking(m, n, k, scratch);
  Eigen::internal::general_matrix_matrix_product<Index, double, LhsOrder, false, double, RhsOrder, false,
                                                 Eigen::ColMajor, 1>::run(m, n, k, a, lda, b, ldb, c, 1, ldc, 1.0,
                                                                          blocking, nullptr);
}
#endif

/// \brief C = op(A)·op(B), or C += op(A)·op(B) when `accumulate`; op(X) is X or Xᵀ. C is m × n,
/// column-major with column stride ldc. Always single-threaded (see the file comment), so the
/// bits depend only on the operands and their shapes.
inline void serialGemm(const ConstMatrixView& a, bool transA, const ConstMatrixView& b, bool transB, double* c,
                       Index ldc, bool accumulate, GemmScratch& scratch) {
  const Index m = transA ? a.cols : a.rows;
  const Index k = transA ? a.rows : a.cols;
  const Index n = transB ? b.rows : b.cols;
  eigen_assert(k == (transB ? b.cols : b.rows));
  if (!accumulate)
    for (Index j = 0; j < n; ++j) std::fill(c + j * ldc, c + j * ldc + m, 0.0);
  if (m == 0 || n == 0 || k == 0) return;
#if defined(HYPERGRAD_SERIAL_GEMM_KERNEL)
  // A transposed column-major matrix is the same storage read row-major.
  if (!transA && !transB)
    serialGemmKernel<Eigen::ColMajor, Eigen::ColMajor>(m, n, k, a.data, a.stride, b.data, b.stride, c, ldc, scratch);
  else if (transA && !transB)
    serialGemmKernel<Eigen::RowMajor, Eigen::ColMajor>(m, n, k, a.data, a.stride, b.data, b.stride, c, ldc, scratch);
  else if (!transA && transB)
    serialGemmKernel<Eigen::ColMajor, Eigen::RowMajor>(m, n, k, a.data, a.stride, b.data, b.stride, c, ldc, scratch);
  else
    serialGemmKernel<Eigen::RowMajor, Eigen::RowMajor>(m, n, k, a.data, a.stride, b.data, b.stride, c, ldc, scratch);
#else
  static_cast<void>(scratch);
  using Stride = Eigen::OuterStride<>;
  const Eigen::Map<const Eigen::MatrixXd, 0, Stride> A(a.data, a.rows, a.cols, Stride(a.stride));
  const Eigen::Map<const Eigen::MatrixXd, 0, Stride> B(b.data, b.rows, b.cols, Stride(b.stride));
  Eigen::Map<Eigen::MatrixXd, 0, Stride> C(c, m, n, Stride(ldc));
  if (!transA && !transB) C.noalias() += A * B;
  else if (transA && !transB) C.noalias() += A.transpose() * B;
  else if (!transA && transB) C.noalias() += A * B.transpose();
  else C.noalias() += A.transpose() * B.transpose();
#endif
}
#undef HYPERGRAD_SERIAL_GEMM_KERNEL

/// Buffers of one forward / R-forward / backward / R-backward sweep over one shard; sized on
/// first use and reused (Eigen's resize keeps the allocation when the size is unchanged).
struct MlpWorkspace {
  Eigen::MatrixXd input;                // gathered shard rows (MlpObjective only)
  Eigen::VectorXi labels;               // gathered shard labels (MlpObjective only)
  std::vector<Eigen::MatrixXd> z;       // z[l]: pre-activation of layer l (b × n_{l+1})
  std::vector<Eigen::MatrixXd> a;       // a[l] = σ(z[l]), hidden layers only
  std::vector<Eigen::MatrixXd> d1;      // σ'(z[l]), hidden layers only
  std::vector<Eigen::MatrixXd> rz, ra;  // R{z[l]}, R{a[l]}
  std::vector<Eigen::MatrixXd> delta;   // ∂L/∂z[l]
  std::vector<Eigen::MatrixXd> rdelta;  // R{∂L/∂z[l]}
  std::vector<Eigen::MatrixXd> da;      // ∂L/∂a[l] (hidden)
  std::vector<Eigen::MatrixXd> rda;     // R{∂L/∂a[l]} (hidden)
  Eigen::MatrixXd probs;                // softmax of z[L-1]
  Eigen::MatrixXd rInputGrad;           // R{∂L/∂A_0}: the mixed product w.r.t. the shard's inputs
  GemmScratch gemm;                     // packing buffers of every product of the sweep
};

/// One shard slot's workspace and partial results. Shard 0 writes straight into the caller's
/// output vectors; shards s ≥ 1 into their slot's own, added to the output in shard order.
struct MlpShard {
  MlpWorkspace ws;
  Eigen::VectorXd gradient;  ///< this shard's share of ∇_w L (shards ≥ 1)
  Eigen::VectorXd hvp;       ///< this shard's share of ∇²_w L u (shards ≥ 1)
  double lossSum = 0.0;      ///< Σ over the shard's examples of their cross-entropy
};

/// \brief The one implementation of the network's math on one shard, shared by MlpObjective and
/// MlpLoss. All products go through serialGemm (single-threaded).
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

  /// \brief Forward pass on `input` (b × n_0) with `labels` (b entries); fills ws.z/a/d1/probs
  /// and returns the SUM over the b examples of their softmax cross-entropy.
  double forward(const double* w, const ConstMatrixView& input, const int* labels, MlpWorkspace& ws) const {
    const Index L = m_arch.numLayers();
    const Index b = input.rows;
    ensureLayers(ws);
    for (Index l = 0; l < L; ++l) {
      const auto k = static_cast<std::size_t>(l);
      const ConstMatrixView x = (l == 0) ? input : viewOf(ws.a[k - 1]);
      Eigen::MatrixXd& z = ws.z[k];
      z.resize(b, m_arch.fanOut(l));
      serialGemm(x, false, weightsView(w, l), false, z.data(), b, false, ws.gemm);
      z.rowwise() += m_arch.biases(w, l).transpose();
      if (l + 1 < L) activate(z, ws.a[k], ws.d1[k]);
    }
    return softmaxCrossEntropySum(ws.z[static_cast<std::size_t>(L - 1)], labels, ws.probs);
  }

  /// \brief R-forward pass along direction u (in w): R{z[l]} and R{a[l]}. Needs forward().
  void rForward(const double* w, const double* u, const ConstMatrixView& input, MlpWorkspace& ws) const {
    const Index L = m_arch.numLayers();
    const Index b = input.rows;
    for (Index l = 0; l < L; ++l) {
      const auto k = static_cast<std::size_t>(l);
      const ConstMatrixView x = (l == 0) ? input : viewOf(ws.a[k - 1]);
      Eigen::MatrixXd& rz = ws.rz[k];
      rz.resize(b, m_arch.fanOut(l));
      // R{Z_l} = A_{l-1} U_l + R{A_{l-1}} W_l + 1 R{b_l}ᵀ   (R{A_0} = 0: u is a direction in w)
      serialGemm(x, false, weightsView(u, l), false, rz.data(), b, false, ws.gemm);
      if (l > 0) serialGemm(viewOf(ws.ra[k - 1]), false, weightsView(w, l), false, rz.data(), b, true, ws.gemm);
      rz.rowwise() += m_arch.biases(u, l).transpose();
      if (l + 1 < L) ws.ra[k] = ws.d1[k].cwiseProduct(rz);
    }
  }

  /// \brief Backward pass (and R-backward pass when `u` is given). Needs forward() (and
  /// rForward() when u != nullptr) on the same input. `scale` multiplies ∂L/∂Z_L: 1/b for the
  /// mean over a batch of b examples, of which this shard is a part.
  void backward(const double* w, const double* u, const ConstMatrixView& input, const int* labels, double scale,
                MlpWorkspace& ws, const Outputs& out) const {
    const Index L = m_arch.numLayers();
    const Index b = input.rows;
    const bool wantR = u != nullptr && (out.hvp != nullptr || out.inputMixed);
    const auto last = static_cast<std::size_t>(L - 1);

    // ∂L/∂Z_L = (P − Y)·scale;  R{∂L/∂Z_L} = (P ⊙ R{Z_L} − P ⊙ rowsum(P ⊙ R{Z_L}))·scale
    ws.delta[last] = ws.probs;
    for (Index i = 0; i < b; ++i) ws.delta[last](i, labels[i]) -= 1.0;
    ws.delta[last] *= scale;
    if (wantR) {
      const Eigen::MatrixXd& p = ws.probs;
      const Eigen::MatrixXd& rz = ws.rz[last];
      Eigen::MatrixXd& rd = ws.rdelta[last];
      rd.resize(b, p.cols());
      for (Index i = 0; i < b; ++i) {
        double s = 0.0;
        for (Index c = 0; c < p.cols(); ++c) s += p(i, c) * rz(i, c);
        for (Index c = 0; c < p.cols(); ++c) rd(i, c) = p(i, c) * (rz(i, c) - s) * scale;
      }
    }

    for (Index l = L - 1; l >= 0; --l) {
      const auto k = static_cast<std::size_t>(l);
      const ConstMatrixView x = (l == 0) ? input : viewOf(ws.a[k - 1]);
      const Eigen::MatrixXd& delta = ws.delta[k];
      const Index in = m_arch.fanIn(l);
      if (out.gradient != nullptr) {
        serialGemm(x, true, viewOf(delta), false, out.gradient + m_arch.weightsOffset(l), in, false, ws.gemm);
        m_arch.biases(out.gradient, l).noalias() = delta.colwise().sum().transpose();
      }
      if (out.hvp != nullptr && wantR) {
        // R{∂L/∂W_l} = A_{l-1}ᵀ R{δ_l} + R{A_{l-1}}ᵀ δ_l
        double* hw = out.hvp + m_arch.weightsOffset(l);
        serialGemm(x, true, viewOf(ws.rdelta[k]), false, hw, in, false, ws.gemm);
        if (l > 0) serialGemm(viewOf(ws.ra[k - 1]), true, viewOf(delta), false, hw, in, true, ws.gemm);
        m_arch.biases(out.hvp, l).noalias() = ws.rdelta[k].colwise().sum().transpose();
      }
      if (l > 0) {
        // Into hidden layer l-1: ∂L/∂A = δ Wᵀ, δ_{l-1} = ∂L/∂A ⊙ σ'(Z_{l-1}).
        const auto km = k - 1;
        ws.da[km].resize(b, in);
        serialGemm(viewOf(delta), false, weightsView(w, l), true, ws.da[km].data(), b, false, ws.gemm);
        ws.delta[km] = ws.da[km].cwiseProduct(ws.d1[km]);
        if (wantR) {
          // R{∂L/∂A} = R{δ} Wᵀ + δ Uᵀ;  R{δ_{l-1}} = R{∂L/∂A} ⊙ σ' + ∂L/∂A ⊙ σ'' ⊙ R{Z_{l-1}}
          ws.rda[km].resize(b, in);
          serialGemm(viewOf(ws.rdelta[k]), false, weightsView(w, l), true, ws.rda[km].data(), b, false, ws.gemm);
          serialGemm(viewOf(delta), false, weightsView(u, l), true, ws.rda[km].data(), b, true, ws.gemm);
          Eigen::MatrixXd& rd = ws.rdelta[km];
          rd = ws.rda[km].cwiseProduct(ws.d1[km]);
          addSecondOrderTerm(ws.da[km], ws.a[km], ws.d1[km], ws.rz[km], rd);
        }
      } else if (out.inputMixed && wantR) {
        // ∂_{A_0}(uᵀ∇_w L) = R{∂L/∂A_0} = R{δ_1} W_1ᵀ + δ_1 U_1ᵀ  (symmetry of second derivatives)
        ws.rInputGrad.resize(b, m_arch.inputSize());
        serialGemm(viewOf(ws.rdelta[k]), false, weightsView(w, l), true, ws.rInputGrad.data(), b, false, ws.gemm);
        serialGemm(viewOf(delta), false, weightsView(u, l), true, ws.rInputGrad.data(), b, true, ws.gemm);
      }
    }
  }

  /// \brief Row-wise argmax of the logits of the last forward() (ties: lowest class), written to
  /// out[0 .. rows).
  static void argmaxRows(const Eigen::MatrixXd& logits, int* out) {
    for (Index i = 0; i < logits.rows(); ++i) {
      Index best = 0;
      for (Index c = 1; c < logits.cols(); ++c)
        if (logits(i, c) > logits(i, best)) best = c;
      out[i] = static_cast<int>(best);
    }
  }

 private:
  ConstMatrixView weightsView(const double* w, Index l) const {
    return ConstMatrixView{w + m_arch.weightsOffset(l), m_arch.fanIn(l), m_arch.fanOut(l), m_arch.fanIn(l)};
  }

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

  /// Log-sum-exp stabilised softmax of each row; returns the SUM of the rows' cross-entropies.
  static double softmaxCrossEntropySum(const Eigen::MatrixXd& z, const int* labels, Eigen::MatrixXd& p) {
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
      total += (m + std::log(s)) - z(i, labels[i]);
    }
    return total;
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

/// Default number of examples per shard (see the file comment).
inline constexpr Index defaultMlpShardSize = 50;

/// \brief Training objective: mean softmax cross-entropy of an MLP over minibatch t.
///
/// Satisfies the objective concept (objective.hpp). Hyperparameters θ: none by default; with
/// `inputsAreHyperparameters` θ is the training inputs, flattened **example-major** (row-major):
/// θ[k·numFeatures + j] = inputs(k, j), so example k's features are contiguous. The mixed
/// product then has numExamples·numFeatures entries, non-zero only in the rows of batch t —
/// meant for small learned training sets (e.g. 10 images), since the output is dense.
///
/// The batch is processed in shards of shardSize() examples, in parallel under OpenMP, with
/// results that do not depend on the number of threads (file comment). Not thread-safe: calls
/// share mutable workspaces (one object per thread). Output vectors must not alias w or u.
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
    m_examples = m_data.inputs.transpose();
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

  /// Examples per shard (default 50). Results depend on it (rounding), never on the thread count.
  Index shardSize() const noexcept { return m_shardSize; }
  /// \brief Sets the examples per shard (≥ 1). Keep it fixed between a forward and its reverse pass.
  void setShardSize(Index shardSize) { m_shardSize = detail::checkShardSize(shardSize, "MlpObjective::setShardSize"); }

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
    m_examples = m_data.inputs.transpose();
  }

  /// \brief The minibatch loss L(w, θ, t).
  double value(const Eigen::VectorXd& w, Index t) const {
    detail::checkVectorSize(w, numParameters(), "MlpObjective::value", "w");
    return run(w, t, nullptr, nullptr, nullptr, nullptr, "value");
  }

  /// \brief g = ∇_w L(w, θ, t); deterministic (bit-identical for identical inputs, at any
  /// number of threads).
  void gradient(const Eigen::VectorXd& w, Index t, Eigen::VectorXd& g) const {
    detail::checkVectorSize(w, numParameters(), "MlpObjective::gradient", "w");
    run(w, t, nullptr, &g, nullptr, nullptr, "gradient");
  }

  /// \brief hu = ∇²_w L(w, θ, t) u by Pearlmutter's R-operator.
  void hessianVectorProduct(const Eigen::VectorXd& w, Index t, const Eigen::VectorXd& u, Eigen::VectorXd& hu) const {
    detail::checkVectorSize(w, numParameters(), "MlpObjective::hessianVectorProduct", "w");
    detail::checkVectorSize(u, numParameters(), "MlpObjective::hessianVectorProduct", "u");
    run(w, t, &u, nullptr, &hu, nullptr, "hessianVectorProduct");
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
    run(w, t, &u, nullptr, nullptr, &dtheta, "mixedProduct");
  }

  /// \brief Gradient, Hessian-vector product and mixed product from one forward + R-forward and
  /// one backward + R-backward pass per shard; bit-identical to the three separate calls.
  void reverseStep(const Eigen::VectorXd& w, Index t, const Eigen::VectorXd& u, Eigen::VectorXd& g,
                   Eigen::VectorXd& hu, Eigen::VectorXd& dtheta) const {
    detail::checkVectorSize(w, numParameters(), "MlpObjective::reverseStep", "w");
    detail::checkVectorSize(u, numParameters(), "MlpObjective::reverseStep", "u");
    if (!m_inputsAreHyperparameters) dtheta.resize(0);
    run(w, t, &u, &g, &hu, m_inputsAreHyperparameters ? &dtheta : nullptr, "reverseStep");
  }

 private:
  /// Every entry point: shards of batch t, each swept (forward; R-forward when u; backward when
  /// an output is wanted), then the shard results added in shard order. Returns the mean loss.
  double run(const Eigen::VectorXd& w, Index t, const Eigen::VectorXd* u, Eigen::VectorXd* g, Eigen::VectorXd* hu,
             Eigen::VectorXd* dtheta, const char* fn) const {
    gatherIndices(t, fn);
    const Index N = numParameters();
    const auto b = static_cast<Index>(m_batchIndex.size());
    const ShardPlan plan(b, m_shardSize);
    const Index numShards = plan.numShards();
    const Index slots = std::min(numShards, detail::shardSlots());
    if (static_cast<Index>(m_shards.size()) < slots) m_shards.resize(static_cast<std::size_t>(slots));
    if (g != nullptr) g->resize(N);
    if (hu != nullptr) hu->resize(N);
    const bool wantBackward = g != nullptr || hu != nullptr || dtheta != nullptr;
    const double scale = 1.0 / static_cast<double>(b);
    const Index F = m_data.numFeatures();
    if (dtheta != nullptr) {
      dtheta->resize(numHyperparameters());
      dtheta->setZero();
    }
    double lossSum = 0.0;

    detail::runShardWaves(
        numShards, slots,
        [&](Index s, Index slot) {
          detail::MlpShard& shard = m_shards[static_cast<std::size_t>(slot)];
          detail::MlpWorkspace& ws = shard.ws;
          gatherRows(plan.begin(s), plan.size(s), ws);
          const detail::ConstMatrixView input = detail::viewOf(ws.input);
          shard.lossSum = m_net.forward(w.data(), input, ws.labels.data(), ws);
          if (!wantBackward) return;
          if (u != nullptr) m_net.rForward(w.data(), u->data(), input, ws);
          detail::MlpNetwork::Outputs out;
          if (g != nullptr) out.gradient = shardOutput(s, *g, shard.gradient);
          if (hu != nullptr) out.hvp = shardOutput(s, *hu, shard.hvp);
          out.inputMixed = dtheta != nullptr;
          m_net.backward(w.data(), u != nullptr ? u->data() : nullptr, input, ws.labels.data(), scale, ws, out);
        },
        [&](Index s, Index slot) {
          // Fixed order: output = ((shard 0 + shard 1) + shard 2) + ...
          const detail::MlpShard& shard = m_shards[static_cast<std::size_t>(slot)];
          lossSum += shard.lossSum;
          if (s > 0 && g != nullptr) *g += shard.gradient;
          if (s > 0 && hu != nullptr) *hu += shard.hvp;
          if (dtheta != nullptr) {
            // Scatter the shard's rows back to example-major θ, in batch order; += so repeated
            // examples accumulate.
            for (Index k = 0; k < plan.size(s); ++k) {
              const Index e = m_batchIndex[static_cast<std::size_t>(plan.begin(s) + k)];
              dtheta->segment(e * F, F) += shard.ws.rInputGrad.row(k).transpose();
            }
          }
        });
    return lossSum / static_cast<double>(b);
  }

  /// Shard 0 writes into the caller's vector, the others into their own buffer.
  double* shardOutput(Index s, Eigen::VectorXd& output, Eigen::VectorXd& own) const {
    if (s == 0) return output.data();
    own.resize(numParameters());
    return own.data();
  }

  /// Fetches and validates the example indices of batch t.
  void gatherIndices(Index t, const char* fn) const {
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
  }

  /// Copies the rows and labels of batch positions [begin, begin + count) into a shard workspace.
  void gatherRows(Index begin, Index count, detail::MlpWorkspace& ws) const {
    ws.input.resize(count, m_data.numFeatures());
    ws.labels.resize(count);
    for (Index k = 0; k < count; ++k) {
      const Index e = m_batchIndex[static_cast<std::size_t>(begin + k)];
      ws.input.row(k) = m_examples.col(e).transpose();  // contiguous read (a row of inputs is strided)
      ws.labels(k) = m_data.labels(e);
    }
  }

  void flattenInputs(Eigen::VectorXd& theta) const {
    const Index F = m_data.numFeatures();
    for (Index k = 0; k < m_data.numExamples(); ++k) theta.segment(k * F, F) = m_data.inputs.row(k).transpose();
  }

  detail::MlpNetwork m_net;
  Dataset m_data;
  // The inputs again, one example per contiguous column: gathering a minibatch from the
  // column-major `inputs` cost a cache miss per value (21% of a training step at 10k examples).
  // Twice the input memory, for a copy that is bit-identical.
  Eigen::MatrixXd m_examples;
  BatchSchedule m_batches;
  bool m_inputsAreHyperparameters;
  Index m_shardSize = defaultMlpShardSize;
  mutable std::vector<detail::MlpShard> m_shards;
  mutable std::vector<Index> m_batchIndex;
};

/// \brief Meta objective: full-batch mean softmax cross-entropy of an MLP on a data set
/// (typically the validation set), plus error rate and predictions.
///
/// Satisfies the meta-objective concept. The examples are processed in shards of shardSize()
/// rows like MlpObjective's batches (same guarantees: parallel under OpenMP, independent of the
/// thread count). Not thread-safe (mutable workspaces).
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

  /// Examples per shard (default 50).
  Index shardSize() const noexcept { return m_shardSize; }
  /// \brief Sets the examples per shard (≥ 1).
  void setShardSize(Index shardSize) { m_shardSize = detail::checkShardSize(shardSize, "MlpLoss::setShardSize"); }

  /// \brief Mean cross-entropy over all examples.
  double value(const Eigen::VectorXd& w) const {
    detail::checkVectorSize(w, numParameters(), "MlpLoss::value", "w");
    return run(w, nullptr, nullptr);
  }

  /// \brief Returns the mean cross-entropy and sets g to its gradient.
  double valueAndGradient(const Eigen::VectorXd& w, Eigen::VectorXd& g) const {
    detail::checkVectorSize(w, numParameters(), "MlpLoss::valueAndGradient", "w");
    g.resize(numParameters());
    return run(w, &g, nullptr);
  }

  /// \brief Predicted class of every example (argmax of the logits; ties go to the lower class).
  Eigen::VectorXi predict(const Eigen::VectorXd& w) const {
    detail::checkVectorSize(w, numParameters(), "MlpLoss::predict", "w");
    Eigen::VectorXi out(m_data.numExamples());
    run(w, nullptr, &out);
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
  double run(const Eigen::VectorXd& w, Eigen::VectorXd* g, Eigen::VectorXi* predictions) const {
    const Index n = m_data.numExamples();
    const ShardPlan plan(n, m_shardSize);
    const Index numShards = plan.numShards();
    const Index slots = std::min(numShards, detail::shardSlots());
    if (static_cast<Index>(m_shards.size()) < slots) m_shards.resize(static_cast<std::size_t>(slots));
    const double scale = 1.0 / static_cast<double>(n);
    const Index stride = m_data.inputs.rows();
    double lossSum = 0.0;
    detail::runShardWaves(
        numShards, slots,
        [&](Index s, Index slot) {
          detail::MlpShard& shard = m_shards[static_cast<std::size_t>(slot)];
          const Index begin = plan.begin(s);
          const detail::ConstMatrixView input{m_data.inputs.data() + begin, plan.size(s), m_data.numFeatures(),
                                              stride};
          const int* labels = m_data.labels.data() + begin;
          shard.lossSum = m_net.forward(w.data(), input, labels, shard.ws);
          if (predictions != nullptr) detail::MlpNetwork::argmaxRows(shard.ws.z.back(), predictions->data() + begin);
          if (g == nullptr) return;
          detail::MlpNetwork::Outputs out;
          if (s == 0) {
            out.gradient = g->data();
          } else {
            shard.gradient.resize(numParameters());
            out.gradient = shard.gradient.data();
          }
          m_net.backward(w.data(), nullptr, input, labels, scale, shard.ws, out);
        },
        [&](Index s, Index slot) {
          const detail::MlpShard& shard = m_shards[static_cast<std::size_t>(slot)];
          lossSum += shard.lossSum;
          if (s > 0 && g != nullptr) *g += shard.gradient;
        });
    return lossSum / static_cast<double>(n);
  }

  detail::MlpNetwork m_net;
  Dataset m_data;
  Index m_shardSize = defaultMlpShardSize;
  mutable std::vector<detail::MlpShard> m_shards;
};

}  // namespace hypergrad
