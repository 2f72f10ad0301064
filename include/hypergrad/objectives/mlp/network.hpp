// hypergrad — exact hypergradients by reversible SGD with momentum.
// SPDX-License-Identifier: MIT
#pragma once

/// \file network.hpp
/// \brief The MLP's math on one shard (detail::MlpNetwork): forward pass, Pearlmutter's
/// R-forward pass, backward and R-backward passes, shared by MlpObjective and MlpLoss.
///
/// Backprop and the R-operator are written by hand on plain Eigen matrices: a "dual" matrix is
/// a pair (value, R-value) of matrices, so every product is an ordinary GEMM (DESIGN.md §4) and
/// never a GEMM over a dual scalar type.
///
/// **Compile time.** Everything here is a template on the compute type `Scalar` (only `double`
/// is used today), so that including the MLP does not instantiate Eigen's GEMM kernels: they are
/// compiled only in the translation units that evaluate a network.
///
/// **Products.** Every matrix product goes through serialGemm (objectives/mlp/gemm.hpp):
/// single-threaded whatever the OpenMP settings, and for double an exact-order kernel whose bits
/// do not depend on the build flags or the processor's SIMD width.
///
/// **Fused and separate outputs.** Each output (gradient, Hessian-vector product, mixed product)
/// is computed by the same sequence of operations whether it is requested alone or together with
/// the others, so a fused reverse step is bit-identical to the three separate calls.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "../../config.hpp"
#include "../../data/dataset.hpp"
#include "../../errors.hpp"
#include "architecture.hpp"
#include "gemm.hpp"

namespace hypergrad {

/// Default number of examples per shard of MlpObjective and MlpLoss (see "Shards and threads" in
/// objectives/mlp/objective.hpp): 50 suits the paper's batch of 200 on up to 4 threads.
inline constexpr Index defaultMlpShardSize = 50;

namespace detail {

/// tanh of one packet of Eigen's SIMD type (Cephes' tanh in packet arithmetic): for |x| < 0.625
/// x + x·x²·P(x²)/Q(x²), else sign(x)·(1 − 2 / (exp(2|x|) + 1)) with Eigen's vectorised exp.
/// Both branches are evaluated and one is selected per lane, so there are no branches on data.
template <class Packet>
Packet tanhPacket(const Packet& x) {
  namespace ei = Eigen::internal;
  const Packet ax = ei::pabs(x);
  const Packet s = ei::pmul(x, x);
  Packet p = ei::pset1<Packet>(-9.64399179425052238628e-1);
  p = ei::pmadd(p, s, ei::pset1<Packet>(-9.92877231001918586564e1));
  p = ei::pmadd(p, s, ei::pset1<Packet>(-1.61468768441708447952e3));
  Packet q = ei::padd(s, ei::pset1<Packet>(1.12811678491632931402e2));
  q = ei::pmadd(q, s, ei::pset1<Packet>(2.23548839060100448583e3));
  q = ei::pmadd(q, s, ei::pset1<Packet>(4.84406305325125486048e3));
  const Packet small = ei::padd(x, ei::pmul(ei::pmul(x, s), ei::pdiv(p, q)));
  const Packet one = ei::pset1<Packet>(1.0);
  const Packet e = ei::pexp(ei::padd(ax, ax));
  Packet large = ei::psub(one, ei::pdiv(ei::pset1<Packet>(2.0), ei::padd(e, one)));
  large = ei::pselect(ei::pcmp_lt(x, ei::pzero(x)), ei::pnegate(large), large);
  return ei::pselect(ei::pcmp_lt(ax, ei::pset1<Packet>(0.625)), small, large);
}

#if HYPERGRAD_LANE_CODER
HYPERGRAD_INTRINSICS_BEGIN
// Rounded AVX-512 operations: explicit round-to-nearest, so never contracted into multiply-adds.
HYPERGRAD_TARGET_AVX512 inline __m512d roundedMul(__m512d a, __m512d b) noexcept {
  return _mm512_mul_round_pd(a, b, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
HYPERGRAD_TARGET_AVX512 inline __m512d roundedAdd(__m512d a, __m512d b) noexcept {
  return _mm512_add_round_pd(a, b, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
HYPERGRAD_TARGET_AVX512 inline __m512d roundedSub(__m512d a, __m512d b) noexcept {
  return _mm512_sub_round_pd(a, b, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
HYPERGRAD_TARGET_AVX512 inline __m512d roundedDiv(__m512d a, __m512d b) noexcept {
  return _mm512_div_round_pd(a, b, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
HYPERGRAD_TARGET_AVX512 inline __m512d broadcast(double x) noexcept { return _mm512_set1_pd(x); }

/// tanhPacket on eight lanes of AVX-512, operation for operation as Eigen's SSE2 packets evaluate
/// it in a default build (no FMA: each multiply-add a rounded multiply, then a rounded add; exp
/// as Eigen's pexp_double — clamp, Cephes' reduction and rational approximation, scaling by
/// 2^n), so that a default build gets the same bits with and without AVX-512 (tested). NaN in,
/// NaN out.
HYPERGRAD_TARGET_AVX512 inline __m512d tanhAvx512(__m512d x) noexcept {
  const __m512d ax = _mm512_abs_pd(x);
  const __m512d s = roundedMul(x, x);
  __m512d p = roundedAdd(roundedMul(broadcast(-9.64399179425052238628e-1), s), broadcast(-9.92877231001918586564e1));
  p = roundedAdd(roundedMul(p, s), broadcast(-1.61468768441708447952e3));
  __m512d q = roundedAdd(s, broadcast(1.12811678491632931402e2));
  q = roundedAdd(roundedMul(q, s), broadcast(2.23548839060100448583e3));
  q = roundedAdd(roundedMul(q, s), broadcast(4.84406305325125486048e3));
  const __m512d small = roundedAdd(x, roundedMul(roundedMul(x, s), roundedDiv(p, q)));
  // exp(2|x|), Eigen's pexp_double.
  const __m512d y = roundedAdd(ax, ax);
  __m512d e = _mm512_max_pd(_mm512_min_pd(y, broadcast(709.784)), broadcast(-709.784));
  __m512d fx = roundedAdd(roundedMul(broadcast(1.4426950408889634073599), e), broadcast(0.5));
  fx = _mm512_roundscale_pd(fx, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  e = roundedSub(e, roundedMul(fx, broadcast(0.693145751953125)));
  e = roundedSub(e, roundedMul(fx, broadcast(1.42860682030941723212e-6)));
  const __m512d e2 = roundedMul(e, e);
  __m512d px = roundedAdd(roundedMul(broadcast(1.26177193074810590878e-4), e2), broadcast(3.02994407707441961300e-2));
  px = roundedAdd(roundedMul(px, e2), broadcast(9.99999999999999999910e-1));
  px = roundedMul(px, e);
  __m512d qx = roundedAdd(roundedMul(broadcast(3.00198505138664455042e-6), e2), broadcast(2.52448340349684104192e-3));
  qx = roundedAdd(roundedMul(qx, e2), broadcast(2.27265548208155028766e-1));
  qx = roundedAdd(roundedMul(qx, e2), broadcast(2.00000000000000000009e0));
  __m512d r = roundedDiv(px, roundedSub(qx, px));
  r = roundedAdd(roundedMul(broadcast(2.0), r), broadcast(1.0));
  const __m512d ex = _mm512_max_pd(_mm512_scalef_pd(r, fx), y);
  __m512d large = roundedSub(broadcast(1.0), roundedDiv(broadcast(2.0), roundedAdd(ex, broadcast(1.0))));
  const __mmask8 negative = _mm512_cmp_pd_mask(x, _mm512_setzero_pd(), _CMP_LT_OQ);
  large = _mm512_castsi512_pd(_mm512_mask_xor_epi64(_mm512_castpd_si512(large), negative, _mm512_castpd_si512(large),
                                                    _mm512_set1_epi64(std::int64_t(1) << 63)));  // pnegate
  __m512d out = _mm512_mask_blend_pd(_mm512_cmp_pd_mask(ax, broadcast(0.625), _CMP_LT_OQ), large, small);
  return _mm512_mask_blend_pd(_mm512_cmp_pd_mask(x, x, _CMP_UNORD_Q), out, x);
}

HYPERGRAD_TARGET_AVX512 inline void tanhArrayAvx512(const double* in, double* out, Index n) noexcept {
  Index i = 0;
  for (; i + 8 <= n; i += 8) _mm512_storeu_pd(out + i, tanhAvx512(_mm512_loadu_pd(in + i)));
  if (i < n) {
    const auto mask = static_cast<__mmask8>((1u << (n - i)) - 1u);
    _mm512_mask_storeu_pd(out + i, mask, tanhAvx512(_mm512_maskz_loadu_pd(mask, in + i)));
  }
}
HYPERGRAD_INTRINSICS_END
#endif

/// \brief out[i] = tanh(in[i]) for i < n, vectorised (Eigen's libm tanh for double is scalar and
/// was ~6% of a hypergradient's time). With AVX-512 at run time (laneCoderActive()) eight lanes at
/// a time by tanhAvx512, which in a default build gives the bits of the SSE2 packets exactly.
/// Every element goes through the same packet code — the tail is padded to a full packet — so an
/// element's bits never depend on its position, the
/// array's length or its alignment: only on the value and the build (its SIMD width and whether
/// multiply-adds are fused). Accuracy: within 2 ulp of std::tanh on [−40, 40] (measured in
/// tests/objectives/test_mlp.cpp), NaN and ±inf as std::tanh.
/// A template (on double only) so that including the MLP compiles none of it.
template <class Scalar>
void tanhArray(const Scalar* in, Scalar* out, Index n) {
  static_assert(std::is_same_v<Scalar, double>, "tanhArray: double only");
#if HYPERGRAD_LANE_CODER
  if (laneCoderActive()) {
    tanhArrayAvx512(in, out, n);
    return;
  }
#endif
#if EIGEN_VERSION_AT_LEAST(3, 4, 0) && !EIGEN_VERSION_AT_LEAST(3, 4, 90) && !defined(EIGEN_DONT_VECTORIZE)
  using Packet = typename Eigen::internal::packet_traits<Scalar>::type;
  constexpr Index P = Eigen::internal::packet_traits<Scalar>::size;
  if constexpr (P > 1 && Eigen::internal::packet_traits<Scalar>::HasExp) {
    Index i = 0;
    for (; i + P <= n; i += P)
      Eigen::internal::pstoreu(out + i, tanhPacket(Eigen::internal::ploadu<Packet>(in + i)));
    if (i < n) {
      Scalar buffer[P] = {};
      std::copy(in + i, in + n, buffer);
      Eigen::internal::pstoreu(buffer, tanhPacket(Eigen::internal::ploadu<Packet>(buffer)));
      std::copy(buffer, buffer + (n - i), out + i);
    }
    return;
  }
#endif
  for (Index i = 0; i < n; ++i) out[i] = std::tanh(in[i]);
}

/// Buffers of one forward / R-forward / backward / R-backward sweep over one shard; sized on
/// first use and reused (Eigen's resize keeps the allocation when the size is unchanged).
template <class Scalar>
struct MlpWorkspace {
  using Matrix = MlpMatrix<Scalar>;
  // Gathered shard rows (MlpObjective only), row-major like the Dataset: the gather copies whole
  // rows (into a column-major matrix it wrote one cache line per value: 10% of a hypergradient).
  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> input;
  Eigen::VectorXi labels;      // gathered shard labels (MlpObjective only)
  std::vector<Matrix> z;       // z[l]: pre-activation of layer l (b × n_{l+1})
  std::vector<Matrix> a;       // a[l] = σ(z[l]), hidden layers only
  std::vector<Matrix> d1;      // σ'(z[l]), hidden layers only
  std::vector<Matrix> rz, ra;  // R{z[l]}, R{a[l]}
  std::vector<Matrix> delta;   // ∂L/∂z[l]
  std::vector<Matrix> rdelta;  // R{∂L/∂z[l]}
  std::vector<Matrix> da;      // ∂L/∂a[l] (hidden)
  std::vector<Matrix> rda;     // R{∂L/∂a[l]} (hidden)
  Matrix probs;                // softmax of z[L-1]
  Matrix rInputGrad;           // R{∂L/∂A_0}: the mixed product w.r.t. the shard's inputs
  GemmScratch<Scalar> gemm;    // packing buffers of every product of the sweep
};

/// One shard slot's workspace and partial results. Shard 0 writes straight into the caller's
/// output vectors; shards s ≥ 1 into their slot's own, added to the output in shard order.
template <class Scalar>
struct MlpShard {
  MlpWorkspace<Scalar> ws;
  Eigen::Matrix<Scalar, Eigen::Dynamic, 1> gradient;  ///< this shard's share of ∇_w L (shards ≥ 1)
  Eigen::Matrix<Scalar, Eigen::Dynamic, 1> hvp;       ///< this shard's share of ∇²_w L u (shards ≥ 1)
  Scalar lossSum = Scalar(0);  ///< Σ over the shard's examples of their cross-entropy
};

/// \brief The one implementation of the network's math on one shard, shared by MlpObjective and
/// MlpLoss. All products go through serialGemm (single-threaded).
/// \tparam Scalar the compute type of the weights, activations and products (double today)
template <class Scalar>
class MlpNetwork {
 public:
  using Matrix = MlpMatrix<Scalar>;
  using View = ConstMatrixView<Scalar>;
  using Workspace = MlpWorkspace<Scalar>;

  explicit MlpNetwork(MlpArchitecture arch) : m_arch(std::move(arch)) {}

  const MlpArchitecture& architecture() const noexcept { return m_arch; }

  /// What a sweep produces; null pointers are skipped. Every output is computed by the same
  /// operations whatever else is requested (bit-identity of the fused and separate calls).
  struct Outputs {
    Scalar* gradient = nullptr;  ///< ∇_w L, numParameters() scalars
    Scalar* hvp = nullptr;       ///< ∇²_w L u, numParameters() scalars
    bool inputMixed = false;     ///< compute ws.rInputGrad = ∂_{A_0}(uᵀ ∇_w L), b × n_0
    /// ws.delta and ws.da already hold this forward's backward chain (an earlier backward() on
    /// the same forward and weights): the R-backward reuses them instead of recomputing them.
    /// The bits are the same, since the chain is the same sequence of operations either way.
    bool deltasReady = false;
  };

  /// \brief Forward pass on `input` (b × n_0) with `labels` (b entries); fills ws.z/a/d1/probs
  /// and returns the SUM over the b examples of their softmax cross-entropy.
  Scalar forward(const Scalar* w, const View& input, const int* labels, Workspace& ws) const {
    const Index L = m_arch.numLayers();
    const Index b = input.rows;
    ensureLayers(ws);
    for (Index l = 0; l < L; ++l) {
      const auto k = static_cast<std::size_t>(l);
      const View x = (l == 0) ? input : viewOf(ws.a[k - 1]);
      Matrix& z = ws.z[k];
      z.resize(b, m_arch.fanOut(l));
      serialGemm(x, false, weightsView(w, l), false, z.data(), b, false, ws.gemm);
      z.rowwise() += biasesView(w, l).transpose();
      if (l + 1 < L) activate(z, ws.a[k], ws.d1[k]);
    }
    return softmaxCrossEntropySum(ws.z[static_cast<std::size_t>(L - 1)], labels, ws.probs);
  }

  /// \brief R-forward pass along direction u (in w): R{z[l]} and R{a[l]}. Needs forward().
  void rForward(const Scalar* w, const Scalar* u, const View& input, Workspace& ws) const {
    const Index L = m_arch.numLayers();
    const Index b = input.rows;
    for (Index l = 0; l < L; ++l) {
      const auto k = static_cast<std::size_t>(l);
      const View x = (l == 0) ? input : viewOf(ws.a[k - 1]);
      Matrix& rz = ws.rz[k];
      rz.resize(b, m_arch.fanOut(l));
      // R{Z_l} = A_{l-1} U_l + R{A_{l-1}} W_l + 1 R{b_l}ᵀ   (R{A_0} = 0: u is a direction in w)
      serialGemm(x, false, weightsView(u, l), false, rz.data(), b, false, ws.gemm);
      if (l > 0) serialGemm(viewOf(ws.ra[k - 1]), false, weightsView(w, l), false, rz.data(), b, true, ws.gemm);
      rz.rowwise() += biasesView(u, l).transpose();
      if (l + 1 < L) ws.ra[k] = ws.d1[k].cwiseProduct(rz);
    }
  }

  /// \brief Backward pass (and R-backward pass when `u` is given). Needs forward() (and
  /// rForward() when u != nullptr) on the same input. `scale` multiplies ∂L/∂Z_L: 1/b for the
  /// mean over a batch of b examples, of which this shard is a part.
  void backward(const Scalar* w, const Scalar* u, const View& input, const int* labels, Scalar scale, Workspace& ws,
                const Outputs& out) const {
    const Index L = m_arch.numLayers();
    const Index b = input.rows;
    const bool wantR = u != nullptr && (out.hvp != nullptr || out.inputMixed);
    const auto last = static_cast<std::size_t>(L - 1);

    // ∂L/∂Z_L = (P − Y)·scale;  R{∂L/∂Z_L} = (P ⊙ R{Z_L} − P ⊙ rowsum(P ⊙ R{Z_L}))·scale
    if (!out.deltasReady) {
      ws.delta[last] = ws.probs;
      for (Index i = 0; i < b; ++i) ws.delta[last](i, labels[i]) -= Scalar(1);
      ws.delta[last] *= scale;
    }
    if (wantR) {
      const Matrix& p = ws.probs;
      const Matrix& rz = ws.rz[last];
      Matrix& rd = ws.rdelta[last];
      rd.resize(b, p.cols());
      for (Index i = 0; i < b; ++i) {
        Scalar s(0);
        for (Index c = 0; c < p.cols(); ++c) s += p(i, c) * rz(i, c);
        for (Index c = 0; c < p.cols(); ++c) rd(i, c) = p(i, c) * (rz(i, c) - s) * scale;
      }
    }

    for (Index l = L - 1; l >= 0; --l) {
      const auto k = static_cast<std::size_t>(l);
      const View x = (l == 0) ? input : viewOf(ws.a[k - 1]);
      const Matrix& delta = ws.delta[k];
      const Index in = m_arch.fanIn(l);
      if (out.gradient != nullptr) {
        serialGemm(x, true, viewOf(delta), false, out.gradient + m_arch.weightsOffset(l), in, false, ws.gemm);
        biasesView(out.gradient, l).noalias() = delta.colwise().sum().transpose();
      }
      if (out.hvp != nullptr && wantR) {
        // R{∂L/∂W_l} = A_{l-1}ᵀ R{δ_l} + R{A_{l-1}}ᵀ δ_l
        Scalar* hw = out.hvp + m_arch.weightsOffset(l);
        serialGemm(x, true, viewOf(ws.rdelta[k]), false, hw, in, false, ws.gemm);
        if (l > 0) serialGemm(viewOf(ws.ra[k - 1]), true, viewOf(delta), false, hw, in, true, ws.gemm);
        biasesView(out.hvp, l).noalias() = ws.rdelta[k].colwise().sum().transpose();
      }
      if (l > 0) {
        // Into hidden layer l-1: ∂L/∂A = δ Wᵀ, δ_{l-1} = ∂L/∂A ⊙ σ'(Z_{l-1}).
        const auto km = k - 1;
        if (!out.deltasReady) {
          ws.da[km].resize(b, in);
          serialGemm(viewOf(delta), false, weightsView(w, l), true, ws.da[km].data(), b, false, ws.gemm);
          ws.delta[km] = ws.da[km].cwiseProduct(ws.d1[km]);
        }
        if (wantR) {
          // R{∂L/∂A} = R{δ} Wᵀ + δ Uᵀ;  R{δ_{l-1}} = R{∂L/∂A} ⊙ σ' + ∂L/∂A ⊙ σ'' ⊙ R{Z_{l-1}}
          ws.rda[km].resize(b, in);
          serialGemm(viewOf(ws.rdelta[k]), false, weightsView(w, l), true, ws.rda[km].data(), b, false, ws.gemm);
          serialGemm(viewOf(delta), false, weightsView(u, l), true, ws.rda[km].data(), b, true, ws.gemm);
          Matrix& rd = ws.rdelta[km];
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
  static void argmaxRows(const Matrix& logits, int* out) {
    for (Index i = 0; i < logits.rows(); ++i) {
      Index best = 0;
      for (Index c = 1; c < logits.cols(); ++c)
        if (logits(i, c) > logits(i, best)) best = c;
      out[i] = static_cast<int>(best);
    }
  }

 private:
  View weightsView(const Scalar* w, Index l) const {
    return View{w + m_arch.weightsOffset(l), m_arch.fanIn(l), m_arch.fanOut(l), m_arch.fanIn(l)};
  }
  // b_l of the parameter vector (or of an output laid out like it), as a vector view.
  Eigen::Map<const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>> biasesView(const Scalar* w, Index l) const {
    return Eigen::Map<const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>>(w + m_arch.biasesOffset(l), m_arch.fanOut(l));
  }
  Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, 1>> biasesView(Scalar* w, Index l) const {
    return Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, 1>>(w + m_arch.biasesOffset(l), m_arch.fanOut(l));
  }

  void ensureLayers(Workspace& ws) const {
    const auto n = static_cast<std::size_t>(m_arch.numLayers());
    if (ws.z.size() == n) return;
    for (auto* v : {&ws.z, &ws.a, &ws.d1, &ws.rz, &ws.ra, &ws.delta, &ws.rdelta, &ws.da, &ws.rda}) v->resize(n);
  }

  /// a = σ(z), d1 = σ'(z).
  void activate(const Matrix& z, Matrix& a, Matrix& d1) const {
    a.resize(z.rows(), z.cols());
    d1.resize(z.rows(), z.cols());
    switch (m_arch.activation()) {
      case Activation::Tanh:
        if constexpr (std::is_same_v<Scalar, double>) tanhArray(z.data(), a.data(), z.size());
        else a = z.array().tanh().matrix();
        d1 = (Scalar(1) - a.array().square()).matrix();
        break;
      case Activation::Relu:
        a = z.cwiseMax(Scalar(0));
        d1 = (z.array() > Scalar(0)).template cast<Scalar>().matrix();
        break;
      case Activation::Softplus:
        for (Index j = 0; j < z.cols(); ++j)
          for (Index i = 0; i < z.rows(); ++i) {
            const Scalar x = z(i, j);
            const Scalar e = std::exp(-std::abs(x));  // in (0, 1]: no overflow
            a(i, j) = std::log1p(e) + std::max(x, Scalar(0));
            d1(i, j) = x >= Scalar(0) ? Scalar(1) / (Scalar(1) + e) : e / (Scalar(1) + e);  // logistic sigmoid
          }
        break;
    }
  }

  /// rd += da ⊙ σ''(z) ⊙ rz, with σ'' from the stored a = σ(z), d1 = σ'(z).
  void addSecondOrderTerm(const Matrix& da, const Matrix& a, const Matrix& d1, const Matrix& rz, Matrix& rd) const {
    switch (m_arch.activation()) {
      case Activation::Tanh:  // σ'' = −2 tanh(z) (1 − tanh²(z))
        rd.array() -= Scalar(2) * da.array() * a.array() * d1.array() * rz.array();
        break;
      case Activation::Relu:  // σ'' = 0 (almost everywhere)
        break;
      case Activation::Softplus:  // σ'' = s (1 − s), s = sigmoid(z) = σ'
        rd.array() += da.array() * (d1.array() * (Scalar(1) - d1.array())) * rz.array();
        break;
    }
  }

  /// Log-sum-exp stabilised softmax of each row; returns the SUM of the rows' cross-entropies.
  static Scalar softmaxCrossEntropySum(const Matrix& z, const int* labels, Matrix& p) {
    const Index b = z.rows();
    const Index C = z.cols();
    p.resize(b, C);
    Scalar total(0);
    for (Index i = 0; i < b; ++i) {
      Scalar m = z(i, 0);
      for (Index c = 1; c < C; ++c) m = std::max(m, z(i, c));
      Scalar s(0);
      for (Index c = 0; c < C; ++c) {
        p(i, c) = std::exp(z(i, c) - m);
        s += p(i, c);
      }
      const Scalar inv = Scalar(1) / s;
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
}  // namespace hypergrad
