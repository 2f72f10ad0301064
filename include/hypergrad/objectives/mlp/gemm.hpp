// hypergrad — exact hypergradients by reversible SGD with momentum.
// SPDX-License-Identifier: MIT
#pragma once

/// \file gemm.hpp
/// \brief The MLP's matrix products (detail::serialGemm): single-threaded, and an exact-order
/// kernel (double and float) whose bits are fixed by its definition — the same with or without
/// AVX-512, at any -march, on any number of threads.
///
/// **The arithmetic (this defines the bits).** For C += op(A)·op(B) (or C = …), each entry is
///
///     s_b = ((0 + a_{i,k_b} b_{k_b,j}) + a_{i,k_b+1} b_{k_b+1,j}) + …   over the depth block
///           b = [k_b, k_b + 256), every product and every sum rounded (no fused multiply-add);
///     C_ij ← C_ij + s_0 (or s_0 when not accumulating), then C_ij ← C_ij + s_b for b = 1, 2, …
///
/// The depth block (gemmDepthBlock = 256) is part of the definition; the register tile and the
/// cache blocking are not (they decide which entries are computed together, never the order of an
/// entry's operations). The arithmetic is that of the scalar type (double, or float for
/// MlpObjectiveFloat). Three implementations compute it, chosen at run time (gemmKernel(),
/// simd.hpp): an AVX-512 kernel (a 16 × 8 tile of sixteen 8-lane accumulators, 32 × 8 of 16-lane
/// ones for float; products and sums with explicit round-to-nearest so that no compiler can
/// contract them into multiply-adds), an AVX2 kernel (8 × 4 or 16 × 4 sub-tiles, compiled with
/// contraction off) and a portable one (4 × 4 sub-tiles, contraction off), which runs off x86 and
/// with HYPERGRAD_NO_SIMD=1. The test checks each against a transcription of the definition, bit
/// for bit, in double and in float (tests/objectives/test_gemm.cpp).
///
/// Speed (`bench_hypergrad --benchmark_filter=gemm/`, one core of an AMD EPYC Zen 5, default
/// flags; the MLP's shard products 50×784·784×50, 784×50·50×50, 50×50·50×784), GFLOP/s: double
/// AVX-512 60 / 73 / 73 (Eigen at -march=native, with FMA: 54–64), AVX2 34 / 35 / 31, portable
/// 13–14 (Eigen at default flags, SSE2: 18–19); float AVX-512 69 / 153 / 126, AVX2 46 / 69 / 47
/// (the first shape's transposing pack is scalar for float).
///
/// Why not Eigen's product: its bits depend on the build's SIMD width and on FMA (a default build
/// and a -march=native build disagree in the last bits), and at default flags it runs SSE2, 2
/// lanes, where this kernel runs 8 on a processor with AVX-512 (the hypergradient of the paper's
/// MLP: see benchmarks/README.md). Eigen's sequential kernel remains when HYPERGRAD_EIGEN_GEMM is
/// defined (for comparisons); its bits then depend on the build.
///
/// **Single-threaded.** Every product here is single-threaded whatever the OpenMP settings: the
/// shards of a batch are what runs in parallel (objectives/mlp/objective.hpp). Eigen 3.4's own
/// products are not enough for its path: `parallelize_gemm` (Parallelizer.h) goes multi-threaded
/// whenever `Eigen::nbThreads() > 1` and `omp_get_num_threads() == 1` — inside a parallel region
/// of one thread, or a nested one — and re-blocks the depth for the thread count, which changes
/// the last bits. So that path calls Eigen's sequential kernel (`general_matrix_matrix_product::run`
/// with a one-thread blocking and no parallel info) directly. The library never calls
/// `Eigen::setNbThreads`.

#include <algorithm>
#include <atomic>
#include <type_traits>

#include <Eigen/Core>

#include "../../config.hpp"
#include "../../simd.hpp"

/// \cond INTERNAL
// The portable kernel must not have its a·b + c contracted into a multiply-add under FMA flags.
#if defined(__clang__)
#define HYPERGRAD_NO_CONTRACT
#define HYPERGRAD_NO_CONTRACT_BODY _Pragma("clang fp contract(off)")
#elif defined(__GNUC__)
#define HYPERGRAD_NO_CONTRACT __attribute__((optimize("fp-contract=off")))
#define HYPERGRAD_NO_CONTRACT_BODY
#else
#define HYPERGRAD_NO_CONTRACT
#define HYPERGRAD_NO_CONTRACT_BODY
#endif
/// \endcond

namespace hypergrad {
namespace detail {

/// Dynamic-size column-major matrix of the compute type.
template <class Scalar>
using MlpMatrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;

/// A view of constant scalars: rows × cols, column j at data + j·stride (column-major), or row i
/// at data + i·stride when `rowMajor` (MlpLoss reads a Dataset's row-major inputs in place).
template <class Scalar>
struct ConstMatrixView {
  const Scalar* data = nullptr;
  Index rows = 0;
  Index cols = 0;
  Index stride = 0;
  bool rowMajor = false;
};

/// View of an Eigen matrix (or Map / block with unit inner stride), column- or row-major.
template <class M>
ConstMatrixView<typename M::Scalar> viewOf(const M& m) {
  return ConstMatrixView<typename M::Scalar>{m.data(), m.rows(), m.cols(), m.outerStride(), bool(M::IsRowMajor)};
}

/// The GEMM kernel's packing buffers, kept in a shard's workspace between calls so that the hot
/// path does not allocate (a fresh allocation per product made the C library return the memory
/// to the system and fault it back in: +25% on a 784-50-50-50-10 gradient).
template <class Scalar>
struct GemmScratch {
  Eigen::Matrix<Scalar, Eigen::Dynamic, 1> blockA, blockB;
};

/// Depth block of the exact-order GEMM: part of the definition of its bits (see the file comment).
inline constexpr Index gemmDepthBlock = 256;
/// Register tile of the packed panels: two 512-bit vectors of rows of op(A) (16 doubles, 32
/// floats) by 8 columns of op(B) (not part of the bits).
template <class Scalar>
inline constexpr Index gemmTileRowsOf = Index(128 / sizeof(Scalar));
inline constexpr Index gemmTileRows = gemmTileRowsOf<double>;
inline constexpr Index gemmTileCols = 8;

#if HYPERGRAD_LANE_CODER
HYPERGRAD_INTRINSICS_BEGIN
/// Eight rows of 8 doubles, r[i][j] at src[i] + j, stored transposed: dst + x·stride holds
/// (r[0][x], …, r[7][x]). Three rounds of two-source permutes.
HYPERGRAD_TARGET_AVX512 inline void gemmTranspose8x8(const double* const* src, Index offset, double* dst,
                                                     Index stride) noexcept {
  __m512d r[8], a[8], b[8];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) r[i] = _mm512_loadu_pd(src[i] + offset);
#pragma GCC unroll 4
  for (int i = 0; i < 8; i += 2) {
    a[i] = _mm512_unpacklo_pd(r[i], r[i + 1]);      // r_i[0] r_i+1[0] r_i[2] r_i+1[2] …
    a[i + 1] = _mm512_unpackhi_pd(r[i], r[i + 1]);  // r_i[1] r_i+1[1] r_i[3] r_i+1[3] …
  }
  const __m512i lo2 = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13), hi2 = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
  const __m512i lo4 = _mm512_setr_epi64(0, 1, 2, 3, 8, 9, 10, 11), hi4 = _mm512_setr_epi64(4, 5, 6, 7, 12, 13, 14, 15);
  // b[0]: column 0 and 4 of rows 0–3; b[1]: 2 and 6; b[2]: 1 and 5; b[3]: 3 and 7; b[4..7]: rows 4–7.
#pragma GCC unroll 2
  for (int h = 0; h < 2; ++h) {
    const int o = 4 * h;
    b[o + 0] = _mm512_permutex2var_pd(a[o + 0], lo2, a[o + 2]);
    b[o + 1] = _mm512_permutex2var_pd(a[o + 0], hi2, a[o + 2]);
    b[o + 2] = _mm512_permutex2var_pd(a[o + 1], lo2, a[o + 3]);
    b[o + 3] = _mm512_permutex2var_pd(a[o + 1], hi2, a[o + 3]);
  }
  _mm512_storeu_pd(dst + 0 * stride, _mm512_permutex2var_pd(b[0], lo4, b[4]));
  _mm512_storeu_pd(dst + 4 * stride, _mm512_permutex2var_pd(b[0], hi4, b[4]));
  _mm512_storeu_pd(dst + 2 * stride, _mm512_permutex2var_pd(b[1], lo4, b[5]));
  _mm512_storeu_pd(dst + 6 * stride, _mm512_permutex2var_pd(b[1], hi4, b[5]));
  _mm512_storeu_pd(dst + 1 * stride, _mm512_permutex2var_pd(b[2], lo4, b[6]));
  _mm512_storeu_pd(dst + 5 * stride, _mm512_permutex2var_pd(b[2], hi4, b[6]));
  _mm512_storeu_pd(dst + 3 * stride, _mm512_permutex2var_pd(b[3], lo4, b[7]));
  _mm512_storeu_pd(dst + 7 * stride, _mm512_permutex2var_pd(b[3], hi4, b[7]));
}

/// The two packs that transpose (op(A) = Aᵀ, op(B) = B) for a full panel, eight depths at a time
/// through gemmTranspose8x8; the depth's last depth mod 8 entries element by element.
HYPERGRAD_TARGET_AVX512 inline void gemmPackTransposedAvx512(const double* const* src, int streams, Index depth,
                                                             double* panel, Index panelWidth) noexcept {
  Index kk = 0;
  for (; kk + 8 <= depth; kk += 8)
    for (int s = 0; s < streams; s += 8) gemmTranspose8x8(src + s, kk, panel + kk * panelWidth + s, panelWidth);
  for (; kk < depth; ++kk)
    for (int s = 0; s < streams; ++s) panel[kk * panelWidth + s] = src[s][kk];
}
HYPERGRAD_INTRINSICS_END
#endif

/// Packs rows [i0, i0 + rows) (rows ≤ R = gemmTileRowsOf<Scalar>) and depth [k0, k0 + depth) of op(A)
/// into an R-row panel, depth-major (panel[kk·R + r]); rows beyond `rows` are zero. Both orders write the panel
/// sequentially (a transposed A is read as up to 16 sequential streams, one per row).
template <class Scalar>
void gemmPackA(const Scalar* a, Index lda, bool trans, Index i0, Index rows, Index k0, Index depth, Scalar* panel,
               bool avx512) noexcept {
  constexpr Index R = gemmTileRowsOf<Scalar>;
  static_cast<void>(avx512);  // unused without the AVX-512 kernels
  if (!trans) {
    for (Index kk = 0; kk < depth; ++kk) {
      const Scalar* src = a + i0 + (k0 + kk) * lda;
      Scalar* dst = panel + kk * R;
      for (Index r = 0; r < rows; ++r) dst[r] = src[r];
      for (Index r = rows; r < R; ++r) dst[r] = Scalar(0);
    }
    return;
  }
  const Scalar* src[R];
  for (Index r = 0; r < R; ++r) src[r] = a + k0 + (i0 + std::min(r, rows - 1)) * lda;
  if (rows == R) {
#if HYPERGRAD_LANE_CODER
    if constexpr (std::is_same_v<Scalar, double>) {
      if (avx512) {
        gemmPackTransposedAvx512(src, static_cast<int>(R), depth, panel, R);
        return;
      }
    }
#endif
    for (Index kk = 0; kk < depth; ++kk)
      for (Index r = 0; r < R; ++r) panel[kk * R + r] = src[r][kk];
  } else {
    for (Index kk = 0; kk < depth; ++kk)
      for (Index r = 0; r < R; ++r) panel[kk * R + r] = r < rows ? src[r][kk] : Scalar(0);
  }
}

/// Packs depth [k0, k0 + depth) and all n columns of op(B) into 8-column panels, each depth-major
/// (block[q·depth·8 + kk·8 + c] = op(B)(k0 + kk, 8q + c)); columns beyond n are zero. Written
/// sequentially, as gemmPackA.
template <class Scalar>
void gemmPackB(const Scalar* b, Index ldb, bool trans, Index k0, Index depth, Index n, Scalar* block,
               bool avx512) noexcept {
  static_cast<void>(avx512);  // unused without the AVX-512 kernels
  const Index panels = (n + gemmTileCols - 1) / gemmTileCols;
  for (Index q = 0; q < panels; ++q) {
    Scalar* panel = block + q * depth * gemmTileCols;
    const Index j0 = q * gemmTileCols;
    const Index cols = std::min(gemmTileCols, n - j0);
    if (trans) {
      for (Index kk = 0; kk < depth; ++kk) {
        const Scalar* src = b + j0 + (k0 + kk) * ldb;
        for (Index c = 0; c < cols; ++c) panel[kk * gemmTileCols + c] = src[c];
        for (Index c = cols; c < gemmTileCols; ++c) panel[kk * gemmTileCols + c] = Scalar(0);
      }
      continue;
    }
    const Scalar* src[gemmTileCols];
    for (Index c = 0; c < gemmTileCols; ++c) src[c] = b + k0 + (j0 + std::min(c, cols - 1)) * ldb;
    if (cols == gemmTileCols) {
#if HYPERGRAD_LANE_CODER
      if constexpr (std::is_same_v<Scalar, double>) {
        if (avx512) {
          gemmPackTransposedAvx512(src, static_cast<int>(gemmTileCols), depth, panel, gemmTileCols);
          continue;
        }
      }
#endif
      for (Index kk = 0; kk < depth; ++kk)
        for (Index c = 0; c < gemmTileCols; ++c) panel[kk * gemmTileCols + c] = src[c][kk];
    } else {
      for (Index kk = 0; kk < depth; ++kk)
        for (Index c = 0; c < gemmTileCols; ++c) panel[kk * gemmTileCols + c] = c < cols ? src[c][kk] : Scalar(0);
    }
  }
}

/// Writes the sub-tile s (nc columns of nr rows, column j at s + j·stride) into C: C ← C + s
/// (`add`) or C ← s, for the valid entries only (the tile kernels that sum in a local array).
template <class Scalar>
inline void gemmWriteBack(const Scalar* s, Index stride, Index nr, Index nc, Scalar* c, Index ldc, bool add) noexcept {
  for (Index j = 0; j < nc; ++j)
    for (Index i = 0; i < nr; ++i) {
      Scalar& out = c[i + j * ldc];
      out = add ? out + s[j * stride + i] : s[j * stride + i];
    }
}

/// One R × 8 tile (R = gemmTileRowsOf<Scalar>), portable: the block sums s of the file comment
/// in 4 × 4 sub-tiles, then C ← C + s (`add`) or C ← s for the valid rows × cols.
template <class Scalar>
HYPERGRAD_NO_CONTRACT void gemmTilePortable(const Scalar* panelA, const Scalar* panelB, Index depth, Scalar* c,
                                            Index ldc, Index rows, Index cols, bool add) noexcept {
  HYPERGRAD_NO_CONTRACT_BODY
  constexpr Index R = gemmTileRowsOf<Scalar>;
  for (Index cb = 0; cb < cols; cb += 4) {
    for (Index rb = 0; rb < rows; rb += 4) {
      Scalar s[4][4] = {};  // s[column][row]
      for (Index kk = 0; kk < depth; ++kk) {
        const Scalar* x = panelA + kk * R + rb;
        const Scalar* y = panelB + kk * gemmTileCols + cb;
        for (int j = 0; j < 4; ++j)
          for (int i = 0; i < 4; ++i) s[j][i] = s[j][i] + x[i] * y[j];
      }
      gemmWriteBack(&s[0][0], 4, std::min<Index>(4, rows - rb), std::min<Index>(4, cols - cb), c + rb + cb * ldc, ldc,
                    add);
    }
  }
}

#if HYPERGRAD_LANE_CODER
HYPERGRAD_INTRINSICS_BEGIN
/// The AVX-512 vector of a scalar type: W lanes, and the operations the tile kernel needs —
/// products and sums with explicit round-to-nearest, which compilers do not contract.
template <class Scalar>
struct GemmAvx512;
template <>
struct GemmAvx512<double> {
  using V = __m512d;
  using Mask = __mmask8;
  static constexpr Index W = 8;
  static constexpr int rn = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  HYPERGRAD_TARGET_AVX512 static V zero() noexcept { return _mm512_setzero_pd(); }
  HYPERGRAD_TARGET_AVX512 static V load(const double* p) noexcept { return _mm512_loadu_pd(p); }
  HYPERGRAD_TARGET_AVX512 static V set1(double x) noexcept { return _mm512_set1_pd(x); }
  HYPERGRAD_TARGET_AVX512 static V mul(V a, V b) noexcept { return _mm512_mul_round_pd(a, b, rn); }
  HYPERGRAD_TARGET_AVX512 static V add(V a, V b) noexcept { return _mm512_add_round_pd(a, b, rn); }
  HYPERGRAD_TARGET_AVX512 static V maskLoad(Mask m, const double* p) noexcept { return _mm512_maskz_loadu_pd(m, p); }
  HYPERGRAD_TARGET_AVX512 static void maskStore(double* p, Mask m, V x) noexcept { _mm512_mask_storeu_pd(p, m, x); }
};
template <>
struct GemmAvx512<float> {
  using V = __m512;
  using Mask = __mmask16;
  static constexpr Index W = 16;
  static constexpr int rn = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  HYPERGRAD_TARGET_AVX512 static V zero() noexcept { return _mm512_setzero_ps(); }
  HYPERGRAD_TARGET_AVX512 static V load(const float* p) noexcept { return _mm512_loadu_ps(p); }
  HYPERGRAD_TARGET_AVX512 static V set1(float x) noexcept { return _mm512_set1_ps(x); }
  HYPERGRAD_TARGET_AVX512 static V mul(V a, V b) noexcept { return _mm512_mul_round_ps(a, b, rn); }
  HYPERGRAD_TARGET_AVX512 static V add(V a, V b) noexcept { return _mm512_add_round_ps(a, b, rn); }
  HYPERGRAD_TARGET_AVX512 static V maskLoad(Mask m, const float* p) noexcept { return _mm512_maskz_loadu_ps(m, p); }
  HYPERGRAD_TARGET_AVX512 static void maskStore(float* p, Mask m, V x) noexcept { _mm512_mask_storeu_ps(p, m, x); }
};

/// One R × 8 tile on AVX-512 (R = 2W: 16 doubles or 32 floats): sixteen accumulators of W rows
/// (eight when `Upper` is false: a last panel of at most W rows), rounded products and sums (the
/// bits of gemmTilePortable); C's valid rows through masked loads and stores.
template <class Scalar, bool Upper>
HYPERGRAD_TARGET_AVX512 inline void gemmTileAvx512(const Scalar* panelA, const Scalar* panelB, Index depth, Scalar* c,
                                                   Index ldc, Index rows, Index cols, bool add) noexcept {
  using T = GemmAvx512<Scalar>;
  using V = typename T::V;
  using Mask = typename T::Mask;
  constexpr Index W = T::W, R = gemmTileRowsOf<Scalar>;
  static_assert(R == 2 * W, "gemmTileAvx512: a tile is two vectors of rows");
  V lo[8], hi[8];
#pragma GCC unroll 8
  for (int j = 0; j < 8; ++j) lo[j] = hi[j] = T::zero();
  for (Index kk = 0; kk < depth; ++kk) {
    const V a0 = T::load(panelA + kk * R);
    const V a1 = Upper ? T::load(panelA + kk * R + W) : a0;
    const Scalar* y = panelB + kk * gemmTileCols;
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) {
      const V bj = T::set1(y[j]);
      lo[j] = T::add(lo[j], T::mul(a0, bj));
      if (Upper) hi[j] = T::add(hi[j], T::mul(a1, bj));
    }
  }
  const auto rowMask = [](Index r) {
    return static_cast<Mask>(r >= W ? ~Mask(0) : r <= 0 ? Mask(0) : static_cast<Mask>((1u << r) - 1u));
  };
  const Mask m0 = rowMask(rows), m1 = rowMask(rows - W);
#pragma GCC unroll 8
  for (int j = 0; j < 8; ++j) {
    if (j >= cols) break;
    Scalar* out = c + j * ldc;
    if (add) {
      T::maskStore(out, m0, T::add(T::maskLoad(m0, out), lo[j]));
      if (Upper) T::maskStore(out + W, m1, T::add(T::maskLoad(m1, out + W), hi[j]));
    } else {
      T::maskStore(out, m0, lo[j]);
      if (Upper) T::maskStore(out + W, m1, hi[j]);
    }
  }
}

/// The AVX2 vector of a scalar type: W lanes; plain vmul / vadd, compiled (like the kernel) with
/// contraction off.
template <class Scalar>
struct GemmAvx2;
template <>
struct GemmAvx2<double> {
  using V = __m256d;
  static constexpr Index W = 4;
  HYPERGRAD_TARGET_AVX2 HYPERGRAD_NO_CONTRACT static V zero() noexcept { return _mm256_setzero_pd(); }
  HYPERGRAD_TARGET_AVX2 HYPERGRAD_NO_CONTRACT static V load(const double* p) noexcept { return _mm256_loadu_pd(p); }
  HYPERGRAD_TARGET_AVX2 HYPERGRAD_NO_CONTRACT static V set1(const double* p) noexcept { return _mm256_broadcast_sd(p); }
  HYPERGRAD_TARGET_AVX2 HYPERGRAD_NO_CONTRACT static V mul(V a, V b) noexcept {
    HYPERGRAD_NO_CONTRACT_BODY
    return _mm256_mul_pd(a, b);
  }
  HYPERGRAD_TARGET_AVX2 HYPERGRAD_NO_CONTRACT static V add(V a, V b) noexcept {
    HYPERGRAD_NO_CONTRACT_BODY
    return _mm256_add_pd(a, b);
  }
  HYPERGRAD_TARGET_AVX2 HYPERGRAD_NO_CONTRACT static void store(double* p, V x) noexcept { _mm256_store_pd(p, x); }
};
template <>
struct GemmAvx2<float> {
  using V = __m256;
  static constexpr Index W = 8;
  HYPERGRAD_TARGET_AVX2 HYPERGRAD_NO_CONTRACT static V zero() noexcept { return _mm256_setzero_ps(); }
  HYPERGRAD_TARGET_AVX2 HYPERGRAD_NO_CONTRACT static V load(const float* p) noexcept { return _mm256_loadu_ps(p); }
  HYPERGRAD_TARGET_AVX2 HYPERGRAD_NO_CONTRACT static V set1(const float* p) noexcept { return _mm256_broadcast_ss(p); }
  HYPERGRAD_TARGET_AVX2 HYPERGRAD_NO_CONTRACT static V mul(V a, V b) noexcept {
    HYPERGRAD_NO_CONTRACT_BODY
    return _mm256_mul_ps(a, b);
  }
  HYPERGRAD_TARGET_AVX2 HYPERGRAD_NO_CONTRACT static V add(V a, V b) noexcept {
    HYPERGRAD_NO_CONTRACT_BODY
    return _mm256_add_ps(a, b);
  }
  HYPERGRAD_TARGET_AVX2 HYPERGRAD_NO_CONTRACT static void store(float* p, V x) noexcept { _mm256_store_ps(p, x); }
};

/// One R × 8 tile on AVX2 (no AVX-512): 2W × 4 sub-tiles of eight W-lane accumulators, summed
/// into a local array and written back (the bits of gemmTilePortable).
template <class Scalar>
HYPERGRAD_TARGET_AVX2 HYPERGRAD_NO_CONTRACT inline void gemmTileAvx2(const Scalar* panelA, const Scalar* panelB,
                                                                     Index depth, Scalar* c, Index ldc, Index rows,
                                                                     Index cols, bool add) noexcept {
  HYPERGRAD_NO_CONTRACT_BODY
  using T = GemmAvx2<Scalar>;
  using V = typename T::V;
  constexpr Index W = T::W, R = gemmTileRowsOf<Scalar>;
  for (Index cb = 0; cb < cols; cb += 4) {
    for (Index rb = 0; rb < rows; rb += 2 * W) {
      V lo[4], hi[4];
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) lo[j] = hi[j] = T::zero();
      for (Index kk = 0; kk < depth; ++kk) {
        const V a0 = T::load(panelA + kk * R + rb);
        const V a1 = T::load(panelA + kk * R + rb + W);
        const Scalar* y = panelB + kk * gemmTileCols + cb;
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
          const V bj = T::set1(y + j);
          lo[j] = T::add(lo[j], T::mul(a0, bj));
          hi[j] = T::add(hi[j], T::mul(a1, bj));
        }
      }
      alignas(32) Scalar s[4][2 * W];
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        T::store(s[j], lo[j]);
        T::store(s[j] + W, hi[j]);
      }
      gemmWriteBack(&s[0][0], 2 * W, std::min<Index>(2 * W, rows - rb), std::min<Index>(4, cols - cb),
                    c + rb + cb * ldc, ldc, add);
    }
  }
}
HYPERGRAD_INTRINSICS_END
#endif

/// Which tile kernel runs (same bits): AVX-512 when laneCoderActive(), else AVX2 when the
/// processor has it and the SIMD kernels are not switched off, else the portable one.
enum class GemmKernel { Automatic, Portable, Avx2, Avx512 };

/// Forces one kernel (tests and measurements; Automatic restores the choice above). A kernel the
/// processor lacks is never forced: gemmKernelSupported() says which are.
inline std::atomic<int>& gemmKernelOverride() noexcept {
  static std::atomic<int> choice{static_cast<int>(GemmKernel::Automatic)};
  return choice;
}

inline bool gemmKernelSupported(GemmKernel k) noexcept {
  switch (k) {
    case GemmKernel::Automatic:
    case GemmKernel::Portable:
      return true;
    case GemmKernel::Avx2:
#if HYPERGRAD_LANE_CODER
    {
      static const bool avx2 = [] {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") != 0;
      }();
      return avx2;
    }
#else
      return false;
#endif
    case GemmKernel::Avx512:
      return laneCoderSupported();
  }
  return false;
}

inline GemmKernel gemmKernel() noexcept {
  const auto forced = static_cast<GemmKernel>(gemmKernelOverride().load(std::memory_order_relaxed));
  if (forced != GemmKernel::Automatic && gemmKernelSupported(forced)) return forced;
  if (laneCoderSwitch().load(std::memory_order_relaxed) == 0) return GemmKernel::Portable;
  if (gemmKernelSupported(GemmKernel::Avx512)) return GemmKernel::Avx512;
  if (gemmKernelSupported(GemmKernel::Avx2)) return GemmKernel::Avx2;
  return GemmKernel::Portable;
}

/// C (m × n, column stride ldc) = op(A)·op(B), or += when `accumulate`, by the exact-order
/// arithmetic of the file comment (in Scalar: double or float); A and B column-major (op =
/// transpose when trans*).
template <class Scalar>
void exactOrderGemm(Index m, Index n, Index k, const Scalar* a, Index lda, bool transA, const Scalar* b, Index ldb,
                    bool transB, Scalar* c, Index ldc, bool accumulate, Eigen::Matrix<Scalar, Eigen::Dynamic, 1>& blockA,
                    Eigen::Matrix<Scalar, Eigen::Dynamic, 1>& blockB) {
  static_assert(std::is_same_v<Scalar, double> || std::is_same_v<Scalar, float>, "exactOrderGemm: double or float");
  constexpr Index R = gemmTileRowsOf<Scalar>;
  if (k == 0) {
    if (!accumulate)
      for (Index j = 0; j < n; ++j) std::fill(c + j * ldc, c + j * ldc + m, Scalar(0));
    return;
  }
  const Index panels = (n + gemmTileCols - 1) / gemmTileCols;
  const Index maxDepth = std::min(gemmDepthBlock, k);
  if (blockA.size() < R * maxDepth) blockA.resize(R * maxDepth);
  if (blockB.size() < panels * gemmTileCols * maxDepth) blockB.resize(panels * gemmTileCols * maxDepth);
  const GemmKernel kernel = gemmKernel();
  for (Index k0 = 0; k0 < k; k0 += gemmDepthBlock) {
    const Index depth = std::min(gemmDepthBlock, k - k0);
    const bool add = accumulate || k0 > 0;
    gemmPackB(b, ldb, transB, k0, depth, n, blockB.data(), kernel == GemmKernel::Avx512);
    for (Index i0 = 0; i0 < m; i0 += R) {
      const Index rows = std::min(R, m - i0);
      gemmPackA(a, lda, transA, i0, rows, k0, depth, blockA.data(), kernel == GemmKernel::Avx512);
      for (Index q = 0; q < panels; ++q) {
        const Index cols = std::min(gemmTileCols, n - q * gemmTileCols);
        const Scalar* panelB = blockB.data() + q * depth * gemmTileCols;
        Scalar* tile = c + i0 + q * gemmTileCols * ldc;
#if HYPERGRAD_LANE_CODER
        if (kernel == GemmKernel::Avx512) {
          if (rows > R / 2) gemmTileAvx512<Scalar, true>(blockA.data(), panelB, depth, tile, ldc, rows, cols, add);
          else gemmTileAvx512<Scalar, false>(blockA.data(), panelB, depth, tile, ldc, rows, cols, add);
          continue;
        }
        if (kernel == GemmKernel::Avx2) {
          gemmTileAvx2(blockA.data(), panelB, depth, tile, ldc, rows, cols, add);
          continue;
        }
#endif
        gemmTilePortable(blockA.data(), panelB, depth, tile, ldc, rows, cols, add);
      }
    }
  }
  static_cast<void>(kernel);
}

#if EIGEN_VERSION_AT_LEAST(3, 4, 0) && !EIGEN_VERSION_AT_LEAST(3, 4, 90)
#define HYPERGRAD_SERIAL_GEMM_KERNEL 1
/// The blocking of Eigen's gemm_blocking_space(rows, cols, depth, num_threads = 1, l3 = true) —
/// the one Eigen's own single-threaded product uses — with packing buffers from a GemmScratch.
template <class Scalar>
class ScratchBlocking : public Eigen::internal::level3_blocking<Scalar, Scalar> {
 public:
  ScratchBlocking(Index m, Index n, Index k, GemmScratch<Scalar>& scratch) {
    this->m_mc = m;
    this->m_nc = n;
    this->m_kc = k;
    Eigen::internal::computeProductBlockingSizes<Scalar, Scalar, 1>(this->m_kc, this->m_mc, this->m_nc, Index(1));
    const Index sizeA = this->m_mc * this->m_kc, sizeB = this->m_kc * this->m_nc;
    if (scratch.blockA.size() < sizeA) scratch.blockA.resize(sizeA);
    if (scratch.blockB.size() < sizeB) scratch.blockB.resize(sizeB);
    this->m_blockA = scratch.blockA.data();
    this->m_blockB = scratch.blockB.data();
  }
};

/// C += op(A) op(B) with Eigen's sequential GEMM kernel: a one-thread blocking and no parallel
/// info, i.e. what Eigen's product runs on its single-threaded path, whatever the OpenMP state.
template <int LhsOrder, int RhsOrder, class Scalar>
void serialGemmKernel(Index m, Index n, Index k, const Scalar* a, Index lda, const Scalar* b, Index ldb, Scalar* c,
                      Index ldc, GemmScratch<Scalar>& scratch) {
  ScratchBlocking<Scalar> blocking(m, n, k, scratch);
  Eigen::internal::general_matrix_matrix_product<Index, Scalar, LhsOrder, false, Scalar, RhsOrder, false,
                                                 Eigen::ColMajor, 1>::run(m, n, k, a, lda, b, ldb, c, 1, ldc,
                                                                          Scalar(1), blocking, nullptr);
}
#endif

/// \brief C = op(A)·op(B), or C += op(A)·op(B) when `accumulate`; op(X) is X or Xᵀ. C is m × n,
/// column-major with column stride ldc. Always single-threaded (see the file comment); the
/// exact-order kernel (bits fixed by the operands and their shapes alone), or with
/// HYPERGRAD_EIGEN_GEMM Eigen's sequential kernel.
template <class Scalar>
void serialGemm(const ConstMatrixView<Scalar>& a, bool transA, const ConstMatrixView<Scalar>& b, bool transB,
                Scalar* c, Index ldc, bool accumulate, GemmScratch<Scalar>& scratch) {
  // A row-major matrix is the same storage as its transpose column-major: flip the operation.
  // (Eigen packs either order into the same panels, so the bits do not depend on the order.)
  if (a.rowMajor || b.rowMajor) {
    const auto columnMajor = [](const ConstMatrixView<Scalar>& x) {
      return x.rowMajor ? ConstMatrixView<Scalar>{x.data, x.cols, x.rows, x.stride, false} : x;
    };
    serialGemm(columnMajor(a), transA != a.rowMajor, columnMajor(b), transB != b.rowMajor, c, ldc, accumulate, scratch);
    return;
  }
  const Index m = transA ? a.cols : a.rows;
  const Index k = transA ? a.rows : a.cols;
  const Index n = transB ? b.rows : b.cols;
  eigen_assert(k == (transB ? b.cols : b.rows));
#if !defined(HYPERGRAD_EIGEN_GEMM)
  if constexpr (std::is_same_v<Scalar, double> || std::is_same_v<Scalar, float>) {
    if (m == 0 || n == 0) return;
    exactOrderGemm(m, n, k, a.data, a.stride, transA, b.data, b.stride, transB, c, ldc, accumulate, scratch.blockA,
                   scratch.blockB);
    return;
  }
#endif
  if (!accumulate)
    for (Index j = 0; j < n; ++j) std::fill(c + j * ldc, c + j * ldc + m, Scalar(0));
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
  const Eigen::Map<const MlpMatrix<Scalar>, 0, Stride> A(a.data, a.rows, a.cols, Stride(a.stride));
  const Eigen::Map<const MlpMatrix<Scalar>, 0, Stride> B(b.data, b.rows, b.cols, Stride(b.stride));
  Eigen::Map<MlpMatrix<Scalar>, 0, Stride> C(c, m, n, Stride(ldc));
  if (!transA && !transB) C.noalias() += A * B;
  else if (transA && !transB) C.noalias() += A.transpose() * B;
  else if (!transA && transB) C.noalias() += A * B.transpose();
  else C.noalias() += A.transpose() * B.transpose();
#endif
}
#undef HYPERGRAD_SERIAL_GEMM_KERNEL

}  // namespace detail
}  // namespace hypergrad
