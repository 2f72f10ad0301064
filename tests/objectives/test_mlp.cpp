// SPDX-License-Identifier: MIT
// Tests of the MLP objective: every derivative is checked against central finite differences,
// every loss against a naive per-example implementation written here independently.

#include <hypergrad/objectives/mlp.hpp>

#include <hypergrad/objective.hpp>
#include <hypergrad/random.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

using hypergrad::Activation;
using hypergrad::Dataset;
using hypergrad::Index;
using hypergrad::InvalidArgument;
using hypergrad::MlpArchitecture;
using hypergrad::MlpLoss;
using hypergrad::MlpObjective;
using Catch::Matchers::Contains;

static_assert(hypergrad::isObjective<MlpObjective>, "MlpObjective must satisfy the objective concept");
static_assert(hypergrad::isMetaObjective<MlpLoss>, "MlpLoss must satisfy the meta-objective concept");
static_assert(hypergrad::detail::HasReverseStep<MlpObjective>::value, "MlpObjective has a fused reverseStep");
static_assert(hypergrad::detail::HasLayout<MlpObjective>::value, "MlpObjective has a layout");

// The network and the objectives are templates (so that including mlp.hpp stays cheap): compile
// every member here, with the warnings on, including those no test calls.
template class hypergrad::BasicMlpObjective<double>;
template class hypergrad::BasicMlpLoss<double>;
template class hypergrad::detail::MlpNetwork<double>;

namespace {

constexpr double kEps = 1e-5;   // central-difference step
constexpr double kTol = 1e-6;   // relative norm error allowed against finite differences

Dataset randomDataset(std::uint64_t seed, Index n, Index features, Index classes) {
  hypergrad::CounterRng rng(seed, 1);
  Dataset d;
  d.inputs.resize(n, features);
  for (Index i = 0; i < n; ++i)
    for (Index j = 0; j < features; ++j) d.inputs(i, j) = rng.normal();
  d.labels.resize(n);
  for (Index i = 0; i < n; ++i) d.labels(i) = static_cast<int>(rng.below(static_cast<std::uint64_t>(classes)));
  d.numClasses = classes;
  return d;
}

Eigen::VectorXd randomVector(std::uint64_t seed, std::uint64_t stream, Index n, double scale) {
  hypergrad::CounterRng rng(seed, stream);
  Eigen::VectorXd v(n);
  for (Index i = 0; i < n; ++i) v(i) = scale * rng.normal();
  return v;
}

double naiveActivation(double z, Activation a) {
  switch (a) {
    case Activation::Tanh:
      return std::tanh(z);
    case Activation::Relu:
      return z > 0.0 ? z : 0.0;
    case Activation::Softplus:
      return std::log(1.0 + std::exp(z));  // fine for the moderate values used here
  }
  return 0.0;
}

// Independent forward pass for one example, straight from the documented storage order:
// W_l(i, j) at offset + i + j*in, then b_l. Records the hidden pre-activations when asked.
double naiveExampleLoss(const std::vector<Index>& sizes, Activation act, const Eigen::VectorXd& w,
                        const Eigen::RowVectorXd& x, int label, std::vector<double>* hiddenPre = nullptr) {
  std::vector<double> h(x.data(), x.data() + x.size());
  std::vector<double> logits;
  Index off = 0;
  const std::size_t L = sizes.size() - 1;
  for (std::size_t l = 0; l < L; ++l) {
    const Index in = sizes[l], out = sizes[l + 1];
    std::vector<double> z(static_cast<std::size_t>(out));
    for (Index j = 0; j < out; ++j) {
      double s = w(off + in * out + j);
      for (Index i = 0; i < in; ++i) s += h[static_cast<std::size_t>(i)] * w(off + i + j * in);
      z[static_cast<std::size_t>(j)] = s;
    }
    off += in * out + out;
    if (l + 1 < L) {
      h.assign(z.size(), 0.0);
      for (std::size_t j = 0; j < z.size(); ++j) {
        if (hiddenPre) hiddenPre->push_back(z[j]);
        h[j] = naiveActivation(z[j], act);
      }
    } else {
      logits = z;
    }
  }
  double sumExp = 0.0;
  for (double v : logits) sumExp += std::exp(v);
  return std::log(sumExp) - logits[static_cast<std::size_t>(label)];
}

double naiveMeanLoss(const MlpArchitecture& arch, const Dataset& d, const Eigen::VectorXd& w,
                     const std::vector<Index>& rows) {
  double s = 0.0;
  for (Index r : rows) s += naiveExampleLoss(arch.layerSizes(), arch.activation(), w, d.inputs.row(r), d.labels(r));
  return s / static_cast<double>(rows.size());
}

// Smallest |hidden pre-activation| over all examples (ReLU kinks break finite differences).
double minAbsHiddenPreactivation(const MlpArchitecture& arch, const Dataset& d, const Eigen::VectorXd& w) {
  std::vector<double> pre;
  for (Index r = 0; r < d.numExamples(); ++r)
    naiveExampleLoss(arch.layerSizes(), arch.activation(), w, d.inputs.row(r), d.labels(r), &pre);
  double m = std::numeric_limits<double>::infinity();
  for (double v : pre) m = std::min(m, std::abs(v));
  return m;
}

double relativeError(const Eigen::VectorXd& a, const Eigen::VectorXd& b) {
  const double scale = std::max({a.norm(), b.norm(), 1e-300});
  return (a - b).norm() / scale;
}

bool bitIdentical(const Eigen::VectorXd& a, const Eigen::VectorXd& b) {
  return a.size() == b.size() &&
         (a.size() == 0 ||  // memcmp on the null data of empty vectors is undefined
          std::memcmp(a.data(), b.data(), static_cast<std::size_t>(a.size()) * sizeof(double)) == 0);
}

// Central differences of a scalar function of w.
Eigen::VectorXd fdGradient(const std::function<double(const Eigen::VectorXd&)>& f, const Eigen::VectorXd& w) {
  Eigen::VectorXd g(w.size());
  Eigen::VectorXd wp = w;
  for (Index i = 0; i < w.size(); ++i) {
    wp(i) = w(i) + kEps;
    const double fp = f(wp);
    wp(i) = w(i) - kEps;
    const double fm = f(wp);
    wp(i) = w(i);
    g(i) = (fp - fm) / (2 * kEps);
  }
  return g;
}

template <class Fn>
std::string invalidArgumentMessage(Fn&& fn) {
  try {
    fn();
  } catch (const InvalidArgument& e) {
    return e.what();
  }
  return "<no InvalidArgument thrown>";
}

struct NetCase {
  std::vector<Index> sizes;
  Activation act;
  const char* name;
};

const std::vector<NetCase>& netCases() {
  static const std::vector<NetCase> cases = {
      {{5, 4, 3, 3}, Activation::Tanh, "tanh {5,4,3,3}"},
      {{5, 4, 3, 3}, Activation::Relu, "relu {5,4,3,3}"},
      {{5, 4, 3, 3}, Activation::Softplus, "softplus {5,4,3,3}"},
      {{6, 3}, Activation::Tanh, "logistic regression {6,3}"},
  };
  return cases;
}

constexpr Index kExamples = 12;
constexpr Index kBatch = 7;

// Calls body(arch, data, w, u, seed) for three seeds per case, skipping (for ReLU) seeds where a
// hidden pre-activation lies within 1e-3 of the kink; requires that three seeds were usable.
template <class Body>
void forEachCaseAndSeed(Body&& body) {
  for (const NetCase& c : netCases()) {
    SECTION(c.name) {
      const MlpArchitecture arch(c.sizes, c.act);
      int used = 0;
      for (std::uint64_t seed = 1; used < 3 && seed < 20; ++seed) {
        const Dataset data = randomDataset(seed, kExamples, c.sizes.front(), c.sizes.back());
        const Eigen::VectorXd w = randomVector(seed, 2, arch.numParameters(), 0.7);
        const Eigen::VectorXd u = randomVector(seed, 3, arch.numParameters(), 1.0);
        if (c.act == Activation::Relu && minAbsHiddenPreactivation(arch, data, w) < 1e-3) continue;
        INFO("seed " << seed);
        body(arch, data, w, u, seed);
        ++used;
      }
      REQUIRE(used == 3);
    }
  }
}

}  // namespace

TEST_CASE("layout of the 784-50-50-50-10 network has the paper's 44,860 parameters in named groups", "[mlp]") {
  const MlpArchitecture arch({784, 50, 50, 50, 10}, Activation::Tanh);
  CHECK(arch.numParameters() == 784 * 50 + 50 + 50 * 50 + 50 + 50 * 50 + 50 + 50 * 10 + 10);
  CHECK(arch.numParameters() == 44860);
  const hypergrad::ParameterLayout layout = arch.layout();
  REQUIRE(layout.numGroups() == 8);
  const std::vector<std::string> names = {"layer1.weights", "layer1.biases", "layer2.weights", "layer2.biases",
                                          "layer3.weights", "layer3.biases", "layer4.weights", "layer4.biases"};
  const std::vector<Index> sizes = {784 * 50, 50, 50 * 50, 50, 50 * 50, 50, 50 * 10, 10};
  Index offset = 0;
  for (Index k = 0; k < 8; ++k) {
    CHECK(layout.group(k).name == names[static_cast<std::size_t>(k)]);
    CHECK(layout.group(k).size == sizes[static_cast<std::size_t>(k)]);
    CHECK(layout.group(k).offset == offset);
    offset += sizes[static_cast<std::size_t>(k)];
  }
  CHECK(layout.size() == 44860);
  for (Index l = 0; l < 4; ++l) {
    CHECK(arch.weightsOffset(l) == layout.group(2 * l).offset);
    CHECK(arch.biasesOffset(l) == layout.group(2 * l + 1).offset);
  }
  CHECK(arch.groupFanIn() == std::vector<Index>{784, 784, 50, 50, 50, 50, 50, 50});
}

TEST_CASE("weight views map the documented column-major (in x out) storage", "[mlp]") {
  const MlpArchitecture arch({3, 2, 2});
  Eigen::VectorXd w = Eigen::VectorXd::LinSpaced(arch.numParameters(), 0, double(arch.numParameters() - 1));
  const auto w0 = arch.weights(w, 0);
  REQUIRE(w0.rows() == 3);
  REQUIRE(w0.cols() == 2);
  CHECK(w0(2, 1) == 2 + 1 * 3);  // entry (i, j) at i + j*in
  CHECK(arch.biases(w, 0)(1) == 3 * 2 + 1);
  CHECK(arch.weights(w, 1)(1, 0) == 3 * 2 + 2 + 1);
  arch.weights(w, 1)(0, 1) = -5.0;
  CHECK(w(8 + 0 + 1 * 2) == -5.0);
}

TEST_CASE("minibatch loss equals a naive per-example mean over the rows of batch t", "[mlp]") {
  const MlpArchitecture arch({4, 3, 3}, Activation::Softplus);
  const Dataset data = randomDataset(7, 10, 4, 3);
  // Batches of different sizes, one with a repeated example (which counts twice in the mean).
  const hypergrad::BatchSchedule batches = [](Index t) {
    if (t == 2) return std::vector<Index>{2, 2, 5};
    return std::vector<Index>{t, t + 3, 7, 9 - t};
  };
  const MlpObjective f(arch, data, batches);
  const Eigen::VectorXd w = randomVector(7, 2, arch.numParameters(), 0.8);
  for (Index t = 0; t < 4; ++t) {
    INFO("t = " << t);
    CHECK(f.value(w, t) == Approx(naiveMeanLoss(arch, data, w, batches(t))).epsilon(1e-13));
  }
  // Sanity: different batches give different losses.
  CHECK(f.value(w, 0) != f.value(w, 1));
}

TEST_CASE("gradient matches central finite differences of the loss", "[mlp]") {
  forEachCaseAndSeed([](const MlpArchitecture& arch, const Dataset& data, const Eigen::VectorXd& w,
                        const Eigen::VectorXd&, std::uint64_t seed) {
    const MlpObjective f(arch, data, hypergrad::SeededBatches(seed, kExamples, kBatch));
    for (Index t : {Index(0), Index(3)}) {
      Eigen::VectorXd g;
      f.gradient(w, t, g);
      const Eigen::VectorXd fd = fdGradient([&](const Eigen::VectorXd& x) { return f.value(x, t); }, w);
      CHECK(relativeError(g, fd) < kTol);
      // The loss the FD differentiates is itself checked against the naive implementation.
      CHECK(f.value(w, t) == Approx(naiveMeanLoss(arch, data, w, hypergrad::SeededBatches(seed, kExamples, kBatch)(t)))
                                 .epsilon(1e-13));
    }
  });
}

TEST_CASE("Hessian-vector product matches central differences of the gradient along u", "[mlp]") {
  forEachCaseAndSeed([](const MlpArchitecture& arch, const Dataset& data, const Eigen::VectorXd& w,
                        const Eigen::VectorXd& u, std::uint64_t seed) {
    const MlpObjective f(arch, data, hypergrad::SeededBatches(seed, kExamples, kBatch));
    const Index t = 1;
    Eigen::VectorXd hu, gp, gm;
    f.hessianVectorProduct(w, t, u, hu);
    f.gradient(w + kEps * u, t, gp);
    f.gradient(w - kEps * u, t, gm);
    const Eigen::VectorXd fd = (gp - gm) / (2 * kEps);
    CHECK(relativeError(hu, fd) < kTol);
    CHECK(hu.norm() > 1e-3);  // a non-trivial product
  });
}

TEST_CASE("mixed product w.r.t. the training inputs matches central differences of u'grad", "[mlp]") {
  forEachCaseAndSeed([](const MlpArchitecture& arch, const Dataset& data, const Eigen::VectorXd& w,
                        const Eigen::VectorXd& u, std::uint64_t seed) {
    const hypergrad::SeededBatches batches(seed, kExamples, kBatch);
    const MlpObjective f(arch, data, batches, /*inputsAreHyperparameters=*/true);
    const Index t = 2;
    REQUIRE(f.numHyperparameters() == kExamples * arch.inputSize());
    Eigen::VectorXd dtheta;
    f.mixedProduct(w, t, u, dtheta);
    REQUIRE(dtheta.size() == f.numHyperparameters());

    MlpObjective probe(arch, data, batches, true);
    const Eigen::VectorXd theta = f.hyperparameters();
    const auto uDotGrad = [&](const Eigen::VectorXd& th) {
      probe.setHyperparameters(th);
      Eigen::VectorXd g;
      probe.gradient(w, t, g);
      return u.dot(g);
    };
    const Eigen::VectorXd fd = fdGradient(uDotGrad, theta);
    CHECK(relativeError(dtheta, fd) < kTol);

    // Exactly zero outside the batch rows (example-major flattening).
    const std::vector<Index> rows = batches(t);
    const Index F = arch.inputSize();
    for (Index e = 0; e < kExamples; ++e) {
      // (A batch row may also be zero: with ReLU, an example whose first hidden layer is all
      // inactive does not depend on its inputs.)
      if (std::find(rows.begin(), rows.end(), e) == rows.end()) CHECK(dtheta.segment(e * F, F).isZero(0.0));
    }
    CHECK(dtheta.norm() > 1e-3);  // a non-trivial product
  });
}

TEST_CASE("hyperparameters are the inputs flattened example-major and round-trip", "[mlp]") {
  const MlpArchitecture arch({3, 2});
  const Dataset data = randomDataset(3, 4, 3, 2);
  MlpObjective f(arch, data, hypergrad::SeededBatches(1, 4, 4), true);
  const Eigen::VectorXd theta = f.hyperparameters();
  REQUIRE(theta.size() == 12);
  CHECK(theta(1 * 3 + 2) == data.inputs(1, 2));
  Eigen::VectorXd changed = theta;
  changed(2 * 3 + 0) = 42.0;
  f.setHyperparameters(changed);
  CHECK(f.data().inputs(2, 0) == 42.0);
  CHECK(bitIdentical(f.hyperparameters(), changed));

  const MlpObjective plain(arch, data, hypergrad::SeededBatches(1, 4, 4));
  CHECK(plain.numHyperparameters() == 0);
  CHECK(plain.hyperparameters().size() == 0);
  Eigen::VectorXd dtheta = Eigen::VectorXd::Ones(3);
  plain.mixedProduct(Eigen::VectorXd::Zero(arch.numParameters()), 0, Eigen::VectorXd::Ones(arch.numParameters()),
                     dtheta);
  CHECK(dtheta.size() == 0);
}

TEST_CASE("reverseStep equals the three separate calls bit for bit", "[mlp]") {
  for (const NetCase& c : netCases()) {
    for (bool inputsAsTheta : {false, true}) {
      INFO(c.name << (inputsAsTheta ? " (inputs as hyperparameters)" : ""));
      const MlpArchitecture arch(c.sizes, c.act);
      const Dataset data = randomDataset(11, kExamples, c.sizes.front(), c.sizes.back());
      const MlpObjective f(arch, data, hypergrad::SeededBatches(11, kExamples, kBatch), inputsAsTheta);
      const Eigen::VectorXd w = randomVector(11, 2, arch.numParameters(), 0.7);
      const Eigen::VectorXd u = randomVector(11, 3, arch.numParameters(), 1.0);
      for (Index t : {Index(0), Index(5)}) {
        Eigen::VectorXd g1, hu1, dt1, g2, hu2, dt2;
        f.gradient(w, t, g1);
        f.hessianVectorProduct(w, t, u, hu1);
        f.mixedProduct(w, t, u, dt1);
        f.reverseStep(w, t, u, g2, hu2, dt2);
        CHECK(bitIdentical(g1, g2));
        CHECK(bitIdentical(hu1, hu2));
        CHECK(bitIdentical(dt1, dt2));
        CHECK(dt2.size() == f.numHyperparameters());
        // The generic dispatcher picks the fused member.
        Eigen::VectorXd g3, hu3, dt3;
        hypergrad::reverseStep(f, w, t, u, g3, hu3, dt3);
        CHECK(bitIdentical(g1, g3));
        CHECK(bitIdentical(hu1, hu3));
        CHECK(bitIdentical(dt1, dt3));
      }
    }
  }
}

TEST_CASE("the vectorised tanh is within 2 ulp of std::tanh and its bits do not depend on position", "[mlp]") {
  std::vector<double> x{0.0, -0.0, 1e-300, -1e-300, 1e-16, 1e-8, -3e-5, 0.1, 0.6249999999999999, 0.625,
                        0.6250000000000001, -0.625, 1.0, 5.0, 19.0, 22.0, 40.0, -40.0, 400.0, -1e5};
  for (int k = 0; k <= 200000; ++k) x.push_back(-20.0 + 40.0 * k / 200000.0);
  for (int k = 0; k <= 2000; ++k) x.push_back(0.6 + 0.05 * k / 2000.0);  // around the branch switch
  std::vector<double> y(x.size());
  hypergrad::detail::tanhArray(x.data(), y.data(), static_cast<Index>(x.size()));
  double worstUlps = 0.0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double ref = std::tanh(x[i]);
    const double ulp = std::nextafter(std::fabs(ref), INFINITY) - std::fabs(ref);
    const double ulps = ref == 0.0 ? std::fabs(y[i]) : std::fabs(y[i] - ref) / ulp;
    worstUlps = std::max(worstUlps, ulps);
  }
  INFO("worst error: " << worstUlps << " ulp");
  CHECK(worstUlps <= 2.0);
  // Non-finite inputs as std::tanh.
  const double special[4] = {INFINITY, -INFINITY, NAN, 0.3};
  double out[4];
  hypergrad::detail::tanhArray(special, out, 4);
  CHECK(out[0] == 1.0);
  CHECK(out[1] == -1.0);
  CHECK(std::isnan(out[2]));
  // The same value gives the same bits at any position of arrays of any length (the tail of an
  // array goes through the same packet code).
  const std::vector<double> values{0.3, -0.7, 2.5, 0.0625, -11.0, 0.61, 0.64, 1e-3, 7.0};
  std::vector<double> alone(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) hypergrad::detail::tanhArray(&values[i], &alone[i], 1);
  for (Index offset = 0; offset < 3; ++offset) {
    std::vector<double> in(static_cast<std::size_t>(offset), 0.5), out2(static_cast<std::size_t>(offset) + values.size());
    in.insert(in.end(), values.begin(), values.end());
    hypergrad::detail::tanhArray(in.data(), out2.data(), static_cast<Index>(in.size()));
    for (std::size_t i = 0; i < values.size(); ++i)
      CHECK(std::memcmp(&out2[static_cast<std::size_t>(offset) + i], &alone[i], sizeof(double)) == 0);
  }
}

TEST_CASE("MlpObjectiveFloat computes in float behind a double interface: close to double, deterministic, "
          "fused calls bit-identical", "[mlp][float]") {
  for (const NetCase& c : netCases()) {
    for (bool inputsAsTheta : {false, true}) {
      for (Index shardSize : {Index(2), Index(50)}) {
        INFO(c.name << (inputsAsTheta ? " (inputs as hyperparameters)" : "") << ", shard size " << shardSize);
        const MlpArchitecture arch(c.sizes, c.act);
        const Dataset data = randomDataset(17, kExamples, c.sizes.front(), c.sizes.back());
        MlpObjective f64(arch, data, hypergrad::SeededBatches(17, kExamples, kBatch), inputsAsTheta);
        hypergrad::MlpObjectiveFloat f32(arch, data, hypergrad::SeededBatches(17, kExamples, kBatch), inputsAsTheta);
        f64.setShardSize(shardSize);
        f32.setShardSize(shardSize);
        const Eigen::VectorXd w = randomVector(17, 2, arch.numParameters(), 0.7);
        const Eigen::VectorXd u = randomVector(17, 3, arch.numParameters(), 1.0);
        for (Index t : {Index(0), Index(3)}) {
          Eigen::VectorXd g64, hu64, dt64, g32, hu32, dt32;
          f64.gradient(w, t, g64);
          f64.hessianVectorProduct(w, t, u, hu64);
          f64.mixedProduct(w, t, u, dt64);
          f32.gradient(w, t, g32);
          f32.hessianVectorProduct(w, t, u, hu32);
          f32.mixedProduct(w, t, u, dt32);
          // float rounding (2^-24 = 6e-8 per operation) accumulated over the layers' sums
          CHECK(relativeError(g32, g64) < 1e-5);
          CHECK(relativeError(hu32, hu64) < 1e-4);
          CHECK(dt32.size() == dt64.size());
          if (inputsAsTheta) CHECK(relativeError(dt32, dt64) < 1e-4);
          CHECK(std::fabs(f32.value(w, t) - f64.value(w, t)) < 1e-5 * std::max(1.0, std::fabs(f64.value(w, t))));
          CHECK_FALSE(bitIdentical(g32, g64));  // it really is computed in float
          // A pure function of (w, t): the same bits again, and from the fused calls.
          Eigen::VectorXd g2, hu2, dt2, g3, u3, hu3, dt3;
          f32.reverseStep(w, t, u, g2, hu2, dt2);
          CHECK(bitIdentical(g2, g32));
          CHECK(bitIdentical(hu2, hu32));
          CHECK(bitIdentical(dt2, dt32));
          f32.reverseStepWithDirection(
              w, t, [&](const Eigen::VectorXd&, Eigen::VectorXd& v) { v = u; }, u3, g3, hu3, dt3);
          CHECK(bitIdentical(g3, g32));
          CHECK(bitIdentical(hu3, hu32));
          CHECK(bitIdentical(dt3, dt32));
        }
      }
    }
  }
}

TEST_CASE("reverseStepWithDirection equals gradient, the direction and the separate products bit for bit",
          "[mlp]") {
  static_assert(hypergrad::detail::HasReverseStepWithDirection<MlpObjective>::value,
                "MlpObjective has a two-phase reverse step");
  for (const NetCase& c : netCases()) {
    for (bool inputsAsTheta : {false, true}) {
      for (Index shardSize : {Index(2), Index(50)}) {  // 4 shards of the batch of 7, and one
        INFO(c.name << (inputsAsTheta ? " (inputs as hyperparameters)" : "") << ", shard size " << shardSize);
        const MlpArchitecture arch(c.sizes, c.act);
        const Dataset data = randomDataset(13, kExamples, c.sizes.front(), c.sizes.back());
        MlpObjective f(arch, data, hypergrad::SeededBatches(13, kExamples, kBatch), inputsAsTheta);
        f.setShardSize(shardSize);
        const Eigen::VectorXd w = randomVector(13, 2, arch.numParameters(), 0.7);
        const Eigen::VectorXd u0 = randomVector(13, 3, arch.numParameters(), 1.0);
        // A direction that depends on g, as Adam's does.
        const hypergrad::DirectionFunction direction = [&](const Eigen::VectorXd& g, Eigen::VectorXd& u) {
          u = u0 + (0.5 * g.array() * u0.array()).matrix();
        };
        for (Index t : {Index(0), Index(5)}) {
          Eigen::VectorXd g1, u1, hu1, dt1, g2, u2, hu2, dt2;
          f.gradient(w, t, g1);
          direction(g1, u1);
          f.hessianVectorProduct(w, t, u1, hu1);
          f.mixedProduct(w, t, u1, dt1);
          hypergrad::reverseStepWithDirection(f, w, t, direction, u2, g2, hu2, dt2);
          CHECK(bitIdentical(g1, g2));
          CHECK(bitIdentical(u1, u2));
          CHECK(bitIdentical(hu1, hu2));
          CHECK(bitIdentical(dt1, dt2));
          CHECK(dt2.size() == f.numHyperparameters());
          CHECK_FALSE(hu1.isZero());
        }
        // A direction of the wrong size is refused.
        Eigen::VectorXd g, u, hu, dt;
        CHECK_THROWS_AS(f.reverseStepWithDirection(
                            w, 0, [](const Eigen::VectorXd&, Eigen::VectorXd& v) { v.resize(1); }, u, g, hu, dt),
                        InvalidArgument);
      }
    }
  }
}

TEST_CASE("gradient is deterministic across calls and batches of other sizes in between", "[mlp]") {
  const MlpArchitecture arch({6, 5, 4}, Activation::Tanh);
  const Dataset data = randomDataset(5, 20, 6, 4);
  const hypergrad::BatchSchedule batches = [](Index t) {
    return t % 2 == 0 ? std::vector<Index>{0, 3, 4, 8, 9, 15, 19} : std::vector<Index>{1, 2, 6};
  };
  const MlpObjective f(arch, data, batches);
  const Eigen::VectorXd w = randomVector(5, 2, arch.numParameters(), 0.5);
  Eigen::VectorXd g1, g2, other;
  f.gradient(w, 0, g1);
  f.gradient(w, 1, other);  // resizes the workspace
  f.gradient(w, 0, g2);
  CHECK(bitIdentical(g1, g2));
  const MlpObjective copy = f;  // an independent workspace gives the same bits
  Eigen::VectorXd g3;
  copy.gradient(w, 0, g3);
  CHECK(bitIdentical(g1, g3));
  CHECK(!bitIdentical(g1, other));
}

TEST_CASE("softmax and softplus stay finite for huge pre-activations (log-sum-exp)", "[mlp]") {
  // Logistic regression with logits (1000, 0): loss 1000 for label 1, e^-1000 ~ 0 for label 0.
  const MlpArchitecture arch({1, 2});
  Dataset d;
  d.inputs = Eigen::MatrixXd::Ones(2, 1);
  d.labels.resize(2);
  d.labels << 1, 0;
  d.numClasses = 2;
  Eigen::VectorXd w(4);
  w << 1000.0, 0.0, 0.0, 0.0;  // W(0,0), W(0,1), b0, b1
  const MlpObjective f(arch, d, [](Index t) { return std::vector<Index>{t}; });
  CHECK(f.value(w, 0) == 1000.0);
  CHECK(f.value(w, 1) == 0.0);
  Eigen::VectorXd g;
  f.gradient(w, 0, g);
  CHECK(g.allFinite());
  CHECK(g(0) == Approx(1.0));  // dL/dW(0,0) = p0 - 0 = 1
  CHECK(g(1) == Approx(-1.0));

  const MlpArchitecture sp({1, 2, 2}, Activation::Softplus);
  Eigen::VectorXd ws = Eigen::VectorXd::Constant(sp.numParameters(), 800.0);
  const MlpObjective fs(sp, d, [](Index t) { return std::vector<Index>{t}; });
  Eigen::VectorXd hu;
  fs.gradient(ws, 0, g);
  fs.hessianVectorProduct(ws, 0, Eigen::VectorXd::Ones(sp.numParameters()), hu);
  CHECK(std::isfinite(fs.value(ws, 0)));
  CHECK(g.allFinite());
  CHECK(hu.allFinite());
}

TEST_CASE("MlpLoss: full-batch value, gradient vs finite differences, naive mean", "[mlp]") {
  for (const NetCase& c : netCases()) {
    INFO(c.name);
    const MlpArchitecture arch(c.sizes, c.act);
    const Dataset data = randomDataset(21, 9, c.sizes.front(), c.sizes.back());
    Eigen::VectorXd w = randomVector(21, 2, arch.numParameters(), 0.7);
    for (std::uint64_t s = 3; c.act == Activation::Relu && minAbsHiddenPreactivation(arch, data, w) < 1e-3; ++s)
      w = randomVector(21, s, arch.numParameters(), 0.7);
    const MlpLoss m(arch, data);
    Eigen::VectorXd g;
    const double f = m.valueAndGradient(w, g);
    CHECK(f == m.value(w));
    std::vector<Index> all(9);
    for (Index i = 0; i < 9; ++i) all[static_cast<std::size_t>(i)] = i;
    CHECK(f == Approx(naiveMeanLoss(arch, data, w, all)).epsilon(1e-13));
    const Eigen::VectorXd fd = fdGradient([&](const Eigen::VectorXd& x) { return m.value(x); }, w);
    CHECK(relativeError(g, fd) < kTol);
  }
}

TEST_CASE("MlpLoss errorRate and predict on a hand-made case", "[mlp]") {
  // W = identity, b = 0: the prediction is the argmax of the two features.
  const MlpArchitecture arch({2, 2});
  Dataset d;
  d.inputs.resize(5, 2);
  d.inputs << 1, 0,  //
      0, 1,          //
      2, 1,          // predicted 0, labelled 1: wrong
      0, 3,          // predicted 1, labelled 0: wrong
      5, 4;
  d.labels.resize(5);
  d.labels << 0, 1, 1, 0, 0;
  d.numClasses = 2;
  Eigen::VectorXd w(6);
  w << 1, 0, 0, 1, 0, 0;
  const MlpLoss m(arch, d);
  Eigen::VectorXi expected(5);
  expected << 0, 1, 0, 1, 0;
  CHECK(m.predict(w) == expected);
  CHECK(m.errorRate(w) == 0.4);
}

TEST_CASE("bad input throws InvalidArgument with an actionable message", "[mlp]") {
  const MlpArchitecture arch({3, 2, 2});
  const Dataset data = randomDataset(1, 5, 3, 2);
  const MlpObjective f(arch, data, [](Index t) { return t == 3 ? std::vector<Index>{0, 99} : std::vector<Index>{0, 1}; });
  const Eigen::VectorXd w = Eigen::VectorXd::Zero(arch.numParameters());
  const Eigen::VectorXd shortVec = Eigen::VectorXd::Zero(arch.numParameters() - 1);
  Eigen::VectorXd out, out2, out3;

  CHECK_THROWS_AS(f.gradient(shortVec, 0, out), InvalidArgument);
  CHECK_THAT(invalidArgumentMessage([&] { f.gradient(shortVec, 0, out); }),
             Contains("gradient") && Contains("expected 14") && Contains("has 13"));
  CHECK_THROWS_AS(f.hessianVectorProduct(w, 0, shortVec, out), InvalidArgument);
  CHECK_THAT(invalidArgumentMessage([&] { f.hessianVectorProduct(w, 0, shortVec, out); }),
             Contains("hessianVectorProduct") && Contains("u has 13"));
  CHECK_THROWS_AS(f.reverseStep(w, 0, shortVec, out, out2, out3), InvalidArgument);
  CHECK_THROWS_AS(f.mixedProduct(shortVec, 0, w, out), InvalidArgument);

  CHECK_THROWS_AS(f.value(w, 3), InvalidArgument);
  CHECK_THAT(invalidArgumentMessage([&] { f.gradient(w, 3, out); }),
             Contains("t = 3") && Contains("index 99") && Contains("numExamples = 5"));

  const MlpObjective empty(arch, data, [](Index) { return std::vector<Index>{}; });
  CHECK_THAT(invalidArgumentMessage([&] { empty.value(w, 0); }), Contains("empty"));

  Dataset badLabel = data;
  badLabel.labels(2) = 2;
  CHECK_THROWS_AS(badLabel.validate(), InvalidArgument);
  CHECK_THAT(invalidArgumentMessage([&] { badLabel.validate(); }), Contains("label of example 2"));
  CHECK_THROWS_AS(MlpLoss(arch, badLabel), InvalidArgument);

  Dataset nonFinite = data;
  nonFinite.inputs(1, 2) = std::numeric_limits<double>::quiet_NaN();
  CHECK_THAT(invalidArgumentMessage([&] { nonFinite.validate(); }),
             Contains("example 1") && Contains("feature 2") && Contains("finite"));

  Dataset sizeMismatch = data;
  sizeMismatch.labels.resize(4);
  CHECK_THAT(invalidArgumentMessage([&] { sizeMismatch.validate(); }), Contains("labels"));

  CHECK_THROWS_AS(MlpArchitecture({5}), InvalidArgument);
  CHECK_THAT(invalidArgumentMessage([&] { MlpArchitecture({5}); }), Contains("at least"));
  CHECK_THAT(invalidArgumentMessage([&] { MlpArchitecture({5, 0, 2}); }), Contains("layer size 1"));
  CHECK_THAT(invalidArgumentMessage([&] { MlpArchitecture({5, 1}); }), Contains("output"));

  CHECK_THAT(invalidArgumentMessage([&] { MlpObjective(MlpArchitecture({4, 2}), data, hypergrad::SeededBatches(1, 5, 2)); }),
             Contains("features"));
  CHECK_THAT(invalidArgumentMessage([&] { MlpLoss(MlpArchitecture({3, 4}), data); }), Contains("numClasses"));

  MlpObjective learnable(arch, data, hypergrad::SeededBatches(1, 5, 2), true);
  CHECK_THAT(invalidArgumentMessage([&] { learnable.setHyperparameters(Eigen::VectorXd::Zero(14)); }),
             Contains("setHyperparameters") && Contains("expected numExamples*numFeatures = 15"));
  Eigen::VectorXd inf = Eigen::VectorXd::Zero(15);
  inf(4) = std::numeric_limits<double>::infinity();
  CHECK_THAT(invalidArgumentMessage([&] { learnable.setHyperparameters(inf); }),
             Contains("example 1") && Contains("feature 1"));
  MlpObjective fixed(arch, data, hypergrad::SeededBatches(1, 5, 2));
  CHECK_THAT(invalidArgumentMessage([&] { fixed.setHyperparameters(Eigen::VectorXd::Zero(15)); }),
             Contains("inputsAreHyperparameters"));

  const MlpLoss m(arch, data);
  CHECK_THAT(invalidArgumentMessage([&] { m.value(shortVec); }), Contains("MlpLoss::value"));
  CHECK_THROWS_AS(arch.weights(shortVec, 0), InvalidArgument);
  CHECK_THROWS_AS(arch.weights(w.data(), 2), InvalidArgument);
}

TEST_CASE("importParameters and exportParameters put every weight where each framework keeps it", "[mlp][layout]") {
  const MlpArchitecture arch({3, 4, 2});
  const Index N = arch.numParameters();
  const Eigen::VectorXd w = randomVector(31, 1, N, 1.0);
  using RowMajor = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const hypergrad::WeightLayout layouts[] = {hypergrad::WeightLayout::OutInRowMajor, hypergrad::WeightLayout::InOutColumnMajor,
                                             hypergrad::WeightLayout::InOutRowMajor, hypergrad::WeightLayout::OutInColumnMajor};
  for (const hypergrad::WeightLayout layout : layouts)
    for (const hypergrad::BiasPosition biases : {hypergrad::BiasPosition::AfterWeights, hypergrad::BiasPosition::BeforeWeights}) {
      // The external vector written with Eigen's own storage orders: W_l (in × out) stored as the
      // framework stores it, by assigning it to a matrix of that shape and order.
      std::vector<double> expected;
      for (Index l = 0; l < arch.numLayers(); ++l) {
        const Eigen::MatrixXd W = arch.weights(w, l);
        std::vector<double> block;
        const auto append = [&block](const double* p, Index n) { block.insert(block.end(), p, p + n); };
        switch (layout) {
          case hypergrad::WeightLayout::OutInRowMajor: {
            const RowMajor m = W.transpose();
            append(m.data(), m.size());
            break;
          }
          case hypergrad::WeightLayout::InOutColumnMajor:
            append(W.data(), W.size());
            break;
          case hypergrad::WeightLayout::InOutRowMajor: {
            const RowMajor m = W;
            append(m.data(), m.size());
            break;
          }
          case hypergrad::WeightLayout::OutInColumnMajor: {
            const Eigen::MatrixXd m = W.transpose();
            append(m.data(), m.size());
            break;
          }
        }
        const Eigen::VectorXd b = arch.biases(w, l);
        if (biases == hypergrad::BiasPosition::BeforeWeights) block.insert(block.begin(), b.data(), b.data() + b.size());
        else block.insert(block.end(), b.data(), b.data() + b.size());
        expected.insert(expected.end(), block.begin(), block.end());
      }
      const Eigen::VectorXd external = arch.exportParameters(w, layout, biases);
      REQUIRE(static_cast<std::size_t>(external.size()) == expected.size());
      CHECK(std::equal(expected.begin(), expected.end(), external.data()));
      CHECK(bitIdentical(arch.importParameters(external, layout, biases), w));
    }
  // torch's nn.Linear.weight is hypergrad's memory: the default conversion is the identity.
  CHECK(bitIdentical(arch.exportParameters(w, hypergrad::WeightLayout::OutInRowMajor), w));
  // x @ W with the exported [in, out] row-major kernel gives the layer's pre-activations.
  const Eigen::VectorXd flax = arch.exportParameters(w, hypergrad::WeightLayout::InOutRowMajor);
  const Eigen::Map<const RowMajor> kernel(flax.data(), 3, 4);
  const Eigen::RowVector3d x(0.5, -1.0, 2.0);
  CHECK(((x * kernel) - x * arch.weights(w, 0)).norm() < 1e-15);
  CHECK_THROWS_AS(arch.importParameters(Eigen::VectorXd::Zero(N - 1), hypergrad::WeightLayout::InOutRowMajor),
                  InvalidArgument);
  CHECK_THROWS_WITH(arch.exportParameters(Eigen::VectorXd::Zero(N + 1), hypergrad::WeightLayout::InOutRowMajor),
                    Contains("expected numParameters()"));
}

TEST_CASE("MlpObjective and MlpLoss share one data set; inputs as hyperparameters copy it on write", "[mlp][data]") {
  const MlpArchitecture arch({5, 4, 3});
  const auto data = std::make_shared<const Dataset>(randomDataset(41, 60, 5, 3));
  const hypergrad::SeededBatches batches(2, 60, 20);
  MlpObjective f(arch, data, batches, true);
  CHECK(f.sharedData().get() == data.get());  // no copy
  const MlpLoss loss(arch, f.sharedData());
  CHECK(loss.sharedData().get() == data.get());
  const MlpObjective copy = f;
  CHECK(copy.sharedData().get() == data.get());

  // Same bits as an objective and a loss holding their own copies.
  const MlpObjective own(arch, *data, batches, true);
  const MlpLoss ownLoss(arch, *data);
  const Eigen::VectorXd w = randomVector(42, 1, arch.numParameters(), 0.3);
  const Eigen::VectorXd u = randomVector(42, 2, arch.numParameters(), 1.0);
  Eigen::VectorXd g1, hu1, d1, g2, hu2, d2;
  f.reverseStep(w, 3, u, g1, hu1, d1);
  own.reverseStep(w, 3, u, g2, hu2, d2);
  CHECK(bitIdentical(g1, g2));
  CHECK(bitIdentical(hu1, hu2));
  CHECK(bitIdentical(d1, d2));
  CHECK(loss.value(w) == ownLoss.value(w));

  // The loss reads the row-major inputs in place: it equals the naive per-example loss.
  std::vector<Index> all(60);
  for (Index k = 0; k < 60; ++k) all[static_cast<std::size_t>(k)] = k;
  CHECK(std::abs(loss.value(w) - naiveMeanLoss(arch, *data, w, all)) < 1e-13);

  // Learning the inputs gives this objective its own copy; the others keep the original.
  Eigen::VectorXd theta = f.hyperparameters();
  theta(7) += 1.0;
  f.setHyperparameters(theta);
  CHECK(f.sharedData().get() != data.get());
  CHECK(f.data().inputs(1, 2) == data->inputs(1, 2) + 1.0);
  CHECK(bitIdentical(copy.hyperparameters(), own.hyperparameters()));
  CHECK(loss.value(w) == ownLoss.value(w));

  CHECK(f.hyperparameterLayout().numGroups() == 1);
  CHECK(f.hyperparameterLayout().group(0).name == "inputs");
  CHECK(f.hyperparameterLayout().size() == f.numHyperparameters());
  CHECK(MlpObjective(arch, data, batches).hyperparameterLayout().numGroups() == 0);

  CHECK_THROWS_WITH(MlpObjective(arch, std::shared_ptr<const Dataset>(), batches), Contains("null"));
  CHECK_THROWS_WITH(MlpLoss(arch, std::shared_ptr<const Dataset>()), Contains("null"));
}
