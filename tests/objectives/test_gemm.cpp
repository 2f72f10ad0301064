// SPDX-License-Identifier: MIT
// Tests of the MLP's exact-order GEMM (objectives/mlp/gemm.hpp): its bits against a direct
// transcription of the definition written here, the AVX-512 kernel against the portable one,
// the edges (shapes that are not multiples of the tile, depths across the 256 block, strides,
// row-major views, k = 0, non-finite inputs), and the MLP's products with the SIMD kernels on
// and off.

#include <hypergrad/objectives/mlp.hpp>

#include <hypergrad/random.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

using hypergrad::Index;

namespace {

using hypergrad::detail::GemmKernel;

// Restores the process-wide SIMD switch and the automatic kernel choice when a test ends.
struct SimdSwitch {
  bool before = hypergrad::detail::laneCoderSwitch().load() != 0;
  ~SimdSwitch() {
    hypergrad::setLaneCoderEnabled(before);
    useKernel(GemmKernel::Automatic);
  }
  static void useKernel(GemmKernel k) { hypergrad::detail::gemmKernelOverride().store(static_cast<int>(k)); }
};

// The kernels this processor can run; the portable one always.
std::vector<GemmKernel> kernelsHere() {
  std::vector<GemmKernel> out;
  for (GemmKernel k : {GemmKernel::Portable, GemmKernel::Avx2, GemmKernel::Avx512})
    if (hypergrad::detail::gemmKernelSupported(k)) out.push_back(k);
  return out;
}

template <class S = double>
struct Operand {
  std::vector<S> data;
  Index rows = 0, cols = 0, stride = 0;  // column-major storage rows × cols, column stride
  S at(Index i, Index j) const { return data[static_cast<std::size_t>(i + j * stride)]; }
};

template <class S = double>
Operand<S> randomOperand(std::uint64_t seed, Index rows, Index cols, Index pad) {
  hypergrad::CounterRng rng(seed, 7);
  Operand<S> x;
  x.rows = rows;
  x.cols = cols;
  x.stride = rows + pad;
  x.data.resize(static_cast<std::size_t>(x.stride * std::max<Index>(cols, 1)));
  for (S& v : x.data) v = static_cast<S>(rng.normal() * std::ldexp(1.0, static_cast<int>(rng.below(9)) - 4));
  return x;
}

// The definition, transcribed: per depth block of 256, s = ((0 + p0) + p1) + …, then C += s
// (C = s for the first block when not accumulating); products and sums rounded one by one.
template <class S>
HYPERGRAD_NO_CONTRACT void definitionGemm(const Operand<S>& a, bool ta, const Operand<S>& b, bool tb, std::vector<S>& c,
                                          Index ldc, bool accumulate) {
  HYPERGRAD_NO_CONTRACT_BODY
  const Index m = ta ? a.cols : a.rows, k = ta ? a.rows : a.cols, n = tb ? b.rows : b.cols;
  for (Index j = 0; j < n; ++j)
    for (Index i = 0; i < m; ++i) {
      S& out = c[static_cast<std::size_t>(i + j * ldc)];
      if (!accumulate) out = S(0);
      for (Index k0 = 0; k0 < k; k0 += 256) {
        S s = S(0);
        for (Index kk = k0; kk < std::min(k, k0 + 256); ++kk) {
          const S x = ta ? a.at(kk, i) : a.at(i, kk);
          const S y = tb ? b.at(j, kk) : b.at(kk, j);
          const S p = x * y;
          s = s + p;
        }
        out = (k0 == 0 && !accumulate) ? s : out + s;
      }
    }
}

template <class S>
std::vector<S> libraryGemm(const Operand<S>& a, bool ta, const Operand<S>& b, bool tb, std::vector<S> c, Index ldc,
                           bool accumulate) {
  using View = hypergrad::detail::ConstMatrixView<S>;
  hypergrad::detail::GemmScratch<S> scratch;
  hypergrad::detail::serialGemm(View{a.data.data(), a.rows, a.cols, a.stride}, ta,
                                View{b.data.data(), b.rows, b.cols, b.stride}, tb, c.data(), ldc, accumulate, scratch);
  return c;
}

template <class S>
bool sameBits(const std::vector<S>& x, const std::vector<S>& y) {
  return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(S)) == 0;
}

struct Shape {
  Index m, n, k;
};

const std::vector<Shape>& shapes() {
  static const std::vector<Shape> s = {{1, 1, 1},   {3, 5, 2},    {16, 8, 7},   {17, 9, 256}, {15, 7, 257},
                                       {50, 50, 784}, {784, 50, 50}, {50, 10, 50}, {33, 17, 513}, {8, 24, 1}};
  return s;
}

}  // namespace

TEMPLATE_TEST_CASE("exact-order GEMM gives the bits of its definition for every shape, transpose and stride",
                   "[mlp][gemm]", double, float) {
  using S = TestType;
  SimdSwitch restore;
  std::uint64_t seed = 1;
  for (GemmKernel kernel : kernelsHere()) {
    SimdSwitch::useKernel(kernel);
    REQUIRE(hypergrad::detail::gemmKernel() == kernel);
    const int simd = static_cast<int>(kernel);
    for (const Shape& s : shapes())
      for (int op = 0; op < 4; ++op)
        for (bool accumulate : {false, true}) {
          const bool ta = (op & 1) != 0, tb = (op & 2) != 0;
          INFO("kernel " << simd << ", m " << s.m << " n " << s.n << " k " << s.k << ", transA " << ta << " transB "
                       << tb << ", accumulate " << accumulate);
          const Operand<S> a = ta ? randomOperand<S>(++seed, s.k, s.m, 3) : randomOperand<S>(++seed, s.m, s.k, 1);
          const Operand<S> b = tb ? randomOperand<S>(++seed, s.n, s.k, 0) : randomOperand<S>(++seed, s.k, s.n, 2);
          const Index ldc = s.m + 5;
          std::vector<S> c0(static_cast<std::size_t>(ldc * s.n));
          hypergrad::CounterRng rng(++seed, 3);
          for (S& v : c0) v = static_cast<S>(rng.normal());
          std::vector<S> expected = c0;
          definitionGemm(a, ta, b, tb, expected, ldc, accumulate);
          const std::vector<S> got = libraryGemm(a, ta, b, tb, c0, ldc, accumulate);
          CHECK(sameBits(got, expected));  // including the padding rows i ≥ m of C, untouched
          // And it is a product: close to a long double evaluation.
          double worst = 0.0;
          for (Index j = 0; j < s.n; ++j)
            for (Index i = 0; i < s.m; ++i) {
              long double exact = accumulate ? c0[static_cast<std::size_t>(i + j * ldc)] : 0.0L;
              long double scale = std::fabs(static_cast<double>(exact));
              for (Index kk = 0; kk < s.k; ++kk) {
                const long double p = static_cast<long double>(ta ? a.at(kk, i) : a.at(i, kk)) *
                                      static_cast<long double>(tb ? b.at(j, kk) : b.at(kk, j));
                exact += p;
                scale += std::fabs(static_cast<double>(p));
              }
              worst = std::max(worst, static_cast<double>(std::fabs(got[static_cast<std::size_t>(i + j * ldc)] -
                                                                    static_cast<double>(exact)) /
                                                          scale));
            }
          CHECK(worst <= 4.5 * static_cast<double>(std::numeric_limits<S>::epsilon()) * static_cast<double>(s.k + 1));
        }
  }
}

TEMPLATE_TEST_CASE("the AVX-512 and AVX2 GEMM kernels give the portable kernel's bits on the MLP's shapes",
                   "[mlp][gemm]", double, float) {
  using S = TestType;
  const std::vector<GemmKernel> kernels = kernelsHere();
  if (kernels.size() == 1) WARN("no AVX2 or AVX-512 here: the portable kernel alone was checked against the definition");
  SimdSwitch restore;
  std::uint64_t seed = 100;
  for (const Shape& s : {Shape{200, 50, 784}, Shape{784, 50, 200}, Shape{61, 13, 1000}, Shape{5, 130, 3}})
    for (int op = 0; op < 4; ++op) {
      const bool ta = (op & 1) != 0, tb = (op & 2) != 0;
      INFO("m " << s.m << " n " << s.n << " k " << s.k << ", transA " << ta << " transB " << tb);
      const Operand<S> a = ta ? randomOperand<S>(++seed, s.k, s.m, 0) : randomOperand<S>(++seed, s.m, s.k, 0);
      const Operand<S> b = tb ? randomOperand<S>(++seed, s.n, s.k, 0) : randomOperand<S>(++seed, s.k, s.n, 0);
      const std::vector<S> c0(static_cast<std::size_t>(s.m * s.n), S(0.25));
      SimdSwitch::useKernel(GemmKernel::Portable);
      const std::vector<S> portable = libraryGemm(a, ta, b, tb, c0, s.m, true);
      for (GemmKernel kernel : kernels) {
        INFO("kernel " << static_cast<int>(kernel));
        SimdSwitch::useKernel(kernel);
        CHECK(sameBits(libraryGemm(a, ta, b, tb, c0, s.m, true), portable));
      }
    }
}

TEST_CASE("exact-order GEMM: row-major views, an empty depth, and non-finite inputs", "[mlp][gemm]") {
  using View = hypergrad::detail::ConstMatrixView<double>;
  SimdSwitch restore;
  for (GemmKernel kernel : kernelsHere()) {
    SimdSwitch::useKernel(kernel);
    const int simd = static_cast<int>(kernel);
    hypergrad::detail::GemmScratch<double> scratch;
    // A row-major view is the transposed column-major operand: same bits as the flipped call.
    const Operand a = randomOperand(5, 37, 20, 0);  // read as a row-major 20 × 37 matrix
    const Operand b = randomOperand(6, 37, 11, 0);
    std::vector<double> viaRowMajor(20 * 11), expected(20 * 11);
    hypergrad::detail::serialGemm(View{a.data.data(), 20, 37, 37, true}, false, View{b.data.data(), 37, 11, 37}, false,
                                  viaRowMajor.data(), 20, false, scratch);
    definitionGemm(a, true, b, false, expected, 20, false);
    CHECK(sameBits(viaRowMajor, expected));

    // k = 0: C = 0, or C unchanged when accumulating.
    std::vector<double> c(6, 3.0);
    hypergrad::detail::serialGemm(View{a.data.data(), 2, 0, 2}, false, View{b.data.data(), 0, 3, 1}, false, c.data(), 2,
                                  true, scratch);
    CHECK(c == std::vector<double>(6, 3.0));
    hypergrad::detail::serialGemm(View{a.data.data(), 2, 0, 2}, false, View{b.data.data(), 0, 3, 1}, false, c.data(), 2,
                                  false, scratch);
    CHECK(c == std::vector<double>(6, 0.0));

    // A NaN or an infinity reaches exactly the entries it feeds, never swallowed.
    Operand x = randomOperand(7, 19, 9, 0), y = randomOperand(8, 9, 12, 0);
    x.data[static_cast<std::size_t>(4 + 2 * x.stride)] = std::numeric_limits<double>::quiet_NaN();  // row 4
    y.data[static_cast<std::size_t>(3 + 10 * y.stride)] = std::numeric_limits<double>::infinity();  // column 10
    const std::vector<double> out = libraryGemm(x, false, y, false, std::vector<double>(19 * 12, 0.0), 19, false);
    for (Index j = 0; j < 12; ++j)
      for (Index i = 0; i < 19; ++i) {
        INFO("kernel " << simd << " entry " << i << ", " << j);
        const double v = out[static_cast<std::size_t>(i + j * 19)];
        if (i == 4) CHECK(std::isnan(v));
        else if (j == 10) CHECK(std::isinf(v));
        else CHECK(std::isfinite(v));
      }
  }
}

TEST_CASE("the MLP's gradient and Hessian-vector product have the same bits with every GEMM kernel", "[mlp][gemm]") {
  SimdSwitch restore;
  const hypergrad::MlpArchitecture arch({30, 19, 17, 10}, hypergrad::Activation::Tanh);
  hypergrad::Dataset data;
  hypergrad::CounterRng rng(3, 1);
  data.inputs.resize(120, 30);
  for (Index i = 0; i < data.inputs.size(); ++i) data.inputs.data()[i] = rng.normal();
  data.labels.resize(120);
  for (Index i = 0; i < 120; ++i) data.labels(i) = static_cast<int>(rng.below(10));
  data.numClasses = 10;
  const hypergrad::MlpObjective f(arch, data, hypergrad::SeededBatches(3, 120, 70), true);
  Eigen::VectorXd w(arch.numParameters()), u(arch.numParameters());
  for (Index i = 0; i < w.size(); ++i) {
    w(i) = 0.3 * rng.normal();
    u(i) = rng.normal();
  }
  const auto same = [](const Eigen::VectorXd& x, const Eigen::VectorXd& y) {
    return x.size() == y.size() && std::memcmp(x.data(), y.data(), static_cast<std::size_t>(x.size()) * 8) == 0;
  };
  Eigen::VectorXd g0, hu0, mixed0;
  SimdSwitch::useKernel(GemmKernel::Portable);
  f.reverseStep(w, 2, u, g0, hu0, mixed0);
  CHECK(g0.allFinite());
  CHECK(g0.norm() > 0.0);
  for (GemmKernel kernel : kernelsHere()) {
    INFO("kernel " << static_cast<int>(kernel));
    SimdSwitch::useKernel(kernel);
    Eigen::VectorXd g, hu, mixed;
    f.reverseStep(w, 2, u, g, hu, mixed);
    CHECK(same(g, g0));
    CHECK(same(hu, hu0));
    CHECK(same(mixed, mixed0));
  }
}

TEST_CASE("the AVX-512 tanh gives the bits of the packet tanh in a default build", "[mlp][gemm]") {
  if (!hypergrad::detail::laneCoderSupported()) {
    WARN("no AVX-512 here: nothing to compare");
    return;
  }
  SimdSwitch restore;
  std::vector<double> x{0.0, -0.0, 1e-300, -1e-300, 5e-324, 1e-16, 1e-8, -3e-5, 0.1, 0.6249999999999999, 0.625,
                        0.6250000000000001, -0.625, 1.0, 5.0, 19.0, 22.0, 40.0, -40.0, 354.0, 355.0, 400.0, -1e5,
                        1e300, -1e300, 1.7e308};
  for (int k = 0; k <= 100000; ++k) x.push_back(-25.0 + 50.0 * k / 100000.0);
  hypergrad::CounterRng rng(9, 1);
  for (int k = 0; k < 20000; ++k) x.push_back(rng.normal() * std::ldexp(1.0, static_cast<int>(rng.below(40)) - 30));
  x.push_back(1.0);  // an odd length: the masked tail
  std::vector<double> vector(x.size()), packet(x.size());
  hypergrad::setLaneCoderEnabled(true);
  hypergrad::detail::tanhArray(x.data(), vector.data(), static_cast<Index>(x.size()));
  hypergrad::setLaneCoderEnabled(false);
  hypergrad::detail::tanhArray(x.data(), packet.data(), static_cast<Index>(x.size()));
  std::size_t differ = 0;
  double worstUlps = 0.0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    if (std::memcmp(&vector[i], &packet[i], sizeof(double)) != 0) ++differ;
    const double ulp = std::nextafter(std::fabs(packet[i]), INFINITY) - std::fabs(packet[i]);
    worstUlps = std::max(worstUlps, std::fabs(vector[i] - packet[i]) / ulp);
  }
  INFO(differ << " of " << x.size() << " differ; worst " << worstUlps << " ulp");
#if defined(__FMA__)
  CHECK(worstUlps <= 2.0);  // the packets fuse multiply-adds in this build: close, not the same bits
#else
  CHECK(differ == 0);
#endif
  const double special[3] = {INFINITY, -INFINITY, NAN};
  double out[3];
  hypergrad::setLaneCoderEnabled(true);
  hypergrad::detail::tanhArray(special, out, 3);
  CHECK(out[0] == 1.0);
  CHECK(out[1] == -1.0);
  CHECK(std::isnan(out[2]));
}
