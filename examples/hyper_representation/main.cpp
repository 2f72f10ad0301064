// Hyper-representations (Franceschi, Frasconi, Salzo, Grazzi & Pontil 2018, "Bilevel programming
// for hyperparameter optimization and meta-learning"): the outer variables θ are a representation
// φ(x) = tanh([x, 1] R) shared by all tasks (R: 785 × 64, 50,240 numbers); the inner problem
// trains a task head (a softmax layer on φ) for T steps of SGD with momentum on a few-shot
// episode's support set; the outer objective is the head's loss on the episode's queries. Its
// gradient with respect to R runs through the whole inner training — exactly, by reversing it bit
// for bit — through the objective's mixed product ∂_θ∇_w L (how the head's gradient depends on
// the representation) and the query loss's own ∂f/∂θ.
//
// Episodes are 3-way, 5-shot, 15 queries per class. Meta-training draws them from six
// Fashion-MNIST classes; meta-testing from the other four, on images never seen: the learned
// representation against a random one (its starting point) and one pretrained by ordinary
// 6-way classification on the same meta-training images.
//
//   hyper_representation [--quick] [--data DIR|NAME] [--out DIR] [--meta-iterations N] [--meta-step S]
//                        [--fine-tune-step S] [--seed N]
//
// Writes log.csv, log_from_pretrained.csv, summary.csv, meta_learning_curve.svg and filters.png.
// See README.md beside this file.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <hypergrad.hpp>
#include <hypergrad/data/deflate.hpp>
#include <hypergrad/data/idx.hpp>
#include <hypergrad/io/image.hpp>
#include <hypergrad/io/svg.hpp>

using Eigen::MatrixXd;
using Eigen::VectorXd;
using Eigen::VectorXi;
using hypergrad::Index;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

constexpr Index kPixels = 784, kSide = 28;
// Meta-training classes: T-shirt, trouser, pullover, dress, sandal, sneaker; meta-test: coat,
// shirt, bag, ankle boot. Each held-out class has relatives among the training ones (coat and
// shirt among the tops, the boot among the shoes) and one has none (the bag), so a representation
// can transfer, but not trivially.
const std::vector<int> kTrainClasses = {0, 1, 2, 3, 5, 7}, kTestClasses = {4, 6, 8, 9};

struct Options {
  bool quick = false;
  std::string data;
  std::string out = "hyper_representation_out";
  Index metaIterations = -1;  // -1: 1,500 (full) or 20 (--quick)
  Index hidden = 64;          // representation units
  Index ways = 3, shots = 5, queries = 15;
  Index steps = 30;           // inner training steps of the head
  double alpha = 1.0, gamma = 0.9;  // the head's SGD with momentum
  double headL2 = 1e-3;
  Index metaBatch = 4;        // episodes per meta-iteration
  double metaStep = 1e-3;     // Adam on R, from the random start
  double fineTuneStep = 1e-4; // Adam on R, from the pretrained representation (already near a good one)
  Index testEpisodes = 600;
  std::uint64_t seed = 1;
};

void usage(const char* argv0) {
  std::printf(
      "usage: %s [--quick] [--data DIR|NAME] [--out DIR] [--meta-iterations N] [--meta-step S] [--fine-tune-step S]\n"
      "          [--seed N]\n"
      "  --quick              tiny run (16 units, 20 meta-iterations, 50 test episodes); synthetic data when none is found\n"
      "  --data DIR|NAME      MNIST-format directory (default %s), or \"mnist\" / \"fashion-mnist\"\n"
      "  --out DIR            output directory (default ./hyper_representation_out)\n"
      "  --meta-iterations N  Adam steps on the representation (default 1500), each on %d episodes\n"
      "  --meta-step S        Adam step from the random start (default 1e-3)\n"
      "  --fine-tune-step S   Adam step from the pretrained representation (default 1e-4)\n"
      "  --seed N             base seed (default 1)\n",
      argv0, hypergrad::defaultDataDirectory().c_str(), int(Options{}.metaBatch));
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw hypergrad::InvalidArgument("option " + a + " needs a value (see --help)");
      return argv[++i];
    };
    if (a == "--quick") o.quick = true;
    else if (a == "--data") o.data = next();
    else if (a == "--out") o.out = next();
    else if (a == "--meta-iterations") o.metaIterations = std::stol(next());
    else if (a == "--seed") o.seed = std::stoull(next());
    else if (a == "--meta-step") o.metaStep = std::stod(next());
    else if (a == "--fine-tune-step") o.fineTuneStep = std::stod(next());
    else if (a == "--help" || a == "-h") usage(argv[0]), std::exit(0);
    else throw hypergrad::InvalidArgument("unknown option '" + a + "' (see --help)");
  }
  if (o.metaIterations == -1) o.metaIterations = o.quick ? 20 : 1500;
  if (o.metaIterations < 1) throw hypergrad::InvalidArgument("--meta-iterations must be >= 1");
  if (o.quick) o.hidden = 16, o.testEpisodes = 50;
  return o;
}

// ---- data: per class, the images of a pool --------------------------------------------------------

using Pool = std::vector<MatrixXd>;  // [class] → images (one per row)

// Stand-in data of MNIST's shape for --quick without data: noisy copies of 10 random prototypes.
hypergrad::Dataset synthetic(Index n, std::uint64_t seed) {
  hypergrad::CounterRng rng(seed), protoRng(12345);
  MatrixXd prototypes(10, kPixels);
  for (Index c = 0; c < 10; ++c)
    for (Index j = 0; j < kPixels; ++j) prototypes(c, j) = protoRng.uniform();
  hypergrad::Dataset d;
  d.inputs.resize(n, kPixels);
  d.labels.resize(n);
  d.numClasses = 10;
  for (Index k = 0; k < n; ++k) {
    d.labels(k) = static_cast<int>(rng.below(10));
    for (Index j = 0; j < kPixels; ++j) d.inputs(k, j) = std::clamp(prototypes(d.labels(k), j) + 0.5 * rng.normal(), 0.0, 1.0);
  }
  return d;
}

Pool byClass(const hypergrad::Dataset& d) {
  std::vector<std::vector<Index>> rows(10);
  for (Index k = 0; k < d.numExamples(); ++k) rows[static_cast<std::size_t>(d.labels(k))].push_back(k);
  Pool pool(10);
  for (std::size_t c = 0; c < 10; ++c) {
    pool[c].resize(static_cast<Index>(rows[c].size()), kPixels);
    for (std::size_t i = 0; i < rows[c].size(); ++i) pool[c].row(static_cast<Index>(i)) = d.inputs.row(rows[c][i]);
  }
  return pool;
}

struct Pools {
  Pool train, test;  // the training split (meta-training, pretraining, meta-validation) and t10k (meta-test)
  std::string description;
};

Pools loadPools(const Options& o) {
  const std::string dir = o.data.empty() ? hypergrad::defaultDataDirectory() : hypergrad::resolveDataDirectory(o.data);
  Pools p;
  if (hypergrad::hasMnistSplit(dir, "train")) {
    p.train = byClass(hypergrad::loadMnist(dir, "train", o.quick ? 3000 : -1));
    p.test = byClass(hypergrad::loadMnist(dir, "t10k", o.quick ? 2000 : -1));
    p.description = dir + ": meta-training and pretraining on the train split, meta-test on t10k";
  } else if (hypergrad::hasMnistSplit(dir, "t10k")) {
    const hypergrad::Dataset all = hypergrad::loadMnist(dir, "t10k");
    p.train = byClass(hypergrad::subset(all, 0, 7000));
    p.test = byClass(hypergrad::subset(all, 7000, all.numExamples() - 7000));
    p.description = dir + " (t10k only): its first 7,000 images for meta-training, the rest for the meta-test";
  } else if (o.quick) {
    p.train = byClass(synthetic(3000, 1));
    p.test = byClass(synthetic(2000, 2));
    p.description = "SYNTHETIC data of MNIST's shape (no MNIST-format files in " + dir + ")";
  } else {
    hypergrad::loadMnist(dir, "train");  // throws the DataError that says what is missing and what to do
  }
  return p;
}

// ---- episodes -----------------------------------------------------------------------------------

struct Episode {
  MatrixXd support, query;  // rows [x, 1]: 785 columns, the bias input appended
  VectorXi supportLabels, queryLabels;
};

// N classes drawn from `classes`, K + Q distinct images of each from `pool` (rows in [lo, hi) of
// each class's images: disjoint ranges keep meta-validation images out of meta-training).
Episode sampleEpisode(const Pool& pool, const std::vector<int>& classes, const Options& o, hypergrad::CounterRng& rng,
                      double lo = 0.0, double hi = 1.0) {
  std::vector<int> chosen = classes;
  for (std::size_t i = 0; i < chosen.size(); ++i)  // partial Fisher–Yates
    std::swap(chosen[i], chosen[i + rng.below(chosen.size() - i)]);
  chosen.resize(static_cast<std::size_t>(o.ways));
  Episode e;
  e.support.resize(o.ways * o.shots, kPixels + 1);
  e.query.resize(o.ways * o.queries, kPixels + 1);
  e.supportLabels.resize(o.ways * o.shots);
  e.queryLabels.resize(o.ways * o.queries);
  for (Index c = 0; c < o.ways; ++c) {
    const MatrixXd& images = pool[static_cast<std::size_t>(chosen[static_cast<std::size_t>(c)])];
    const Index first = static_cast<Index>(lo * double(images.rows())), count = static_cast<Index>(hi * double(images.rows())) - first;
    std::vector<Index> picked;
    while (static_cast<Index>(picked.size()) < o.shots + o.queries) {
      const Index r = first + static_cast<Index>(rng.below(static_cast<std::uint64_t>(count)));
      if (std::find(picked.begin(), picked.end(), r) == picked.end()) picked.push_back(r);
    }
    for (Index k = 0; k < o.shots + o.queries; ++k) {
      const bool isSupport = k < o.shots;
      MatrixXd& target = isSupport ? e.support : e.query;
      const Index row = isSupport ? c * o.shots + k : c * o.queries + (k - o.shots);
      target.row(row).head(kPixels) = images.row(picked[static_cast<std::size_t>(k)]);
      target(row, kPixels) = 1.0;
      (isSupport ? e.supportLabels : e.queryLabels)(row) = static_cast<int>(c);
    }
  }
  return e;
}

// ---- the head's softmax loss on a representation, with its θ-derivatives -------------------------

// Row-wise softmax of logits; returns the mean cross-entropy against `labels`.
double softmaxRows(MatrixXd& z, const VectorXi& labels) {
  double loss = 0;
  for (Index i = 0; i < z.rows(); ++i) {
    const double m = z.row(i).maxCoeff();
    z.row(i) = (z.row(i).array() - m).exp();
    const double s = z.row(i).sum();
    z.row(i) /= s;
    loss -= std::log(std::max(z(i, labels(i)), 1e-300));
  }
  return loss / double(z.rows());
}

/// The head's loss L(w, θ) = mean CE(softmax(φ V + c)) + λ/2 ‖V‖², φ = tanh(X R), w = [vec V; c]
/// (V: H × N), θ = vec R (R: 785 × H, column-major). Full batch: the same at every step t.
/// Implements the objective concept (objective.hpp), θ included: the mixed product is
/// (∂_θ∇_w L)ᵀ u = ∂/∂θ [uᵀ∇_w L], by the chain rule through φ.
class HeadLoss {
 public:
  HeadLoss(const MatrixXd& r, const MatrixXd& x, const VectorXi& labels, Index ways, double l2)
      : m_x(x), m_labels(labels), m_ways(ways), m_l2(l2), m_phi((x * r).array().tanh().matrix()) {}

  Index numParameters() const { return m_phi.cols() * m_ways + m_ways; }
  Index numHyperparameters() const { return m_x.cols() * m_phi.cols(); }

  double valueAndGradient(const VectorXd& w, Index /*t*/, VectorXd& g) const {
    MatrixXd p;
    const double loss = probabilities(w, p);
    MatrixXd gz = p;  // (P − E)/n
    for (Index i = 0; i < gz.rows(); ++i) gz(i, m_labels(i)) -= 1;
    gz /= double(gz.rows());
    g.resize(numParameters());
    const auto v = head(w);
    Eigen::Map<MatrixXd>(g.data(), m_phi.cols(), m_ways) = m_phi.transpose() * gz + m_l2 * v;
    g.tail(m_ways) = gz.colwise().sum().transpose();
    return loss + 0.5 * m_l2 * v.squaredNorm();
  }
  void gradient(const VectorXd& w, Index t, VectorXd& g) const { valueAndGradient(w, t, g); }

  void hessianVectorProduct(const VectorXd& w, Index /*t*/, const VectorXd& u, VectorXd& hu) const {
    MatrixXd p;
    probabilities(w, p);
    const MatrixXd dp = logitTangent(p, u) / double(p.rows());
    hu.resize(numParameters());
    Eigen::Map<MatrixXd>(hu.data(), m_phi.cols(), m_ways) = m_phi.transpose() * dp + m_l2 * head(u);
    hu.tail(m_ways) = dp.colwise().sum().transpose();
  }

  void mixedProduct(const VectorXd& w, Index /*t*/, const VectorXd& u, VectorXd& dtheta) const {
    MatrixXd p;
    probabilities(w, p);
    const MatrixXd dp = logitTangent(p, u);
    MatrixXd pe = p;
    for (Index i = 0; i < pe.rows(); ++i) pe(i, m_labels(i)) -= 1;
    // ∂(uᵀ∇_w L)/∂φ = [(P − E) Uᵀ + δP Vᵀ] / n, then through tanh and the product X R.
    const MatrixXd dphi = (pe * head(u).transpose() + dp * head(w).transpose()) / double(p.rows());
    representationGradient(dphi, dtheta);
  }

  /// ∂/∂θ of a function of φ with derivative dphi (n × H): Xᵀ (dphi ⊙ (1 − φ²)).
  void representationGradient(const MatrixXd& dphi, VectorXd& dtheta) const {
    dtheta.resize(numHyperparameters());
    Eigen::Map<MatrixXd>(dtheta.data(), m_x.cols(), m_phi.cols()) =
        m_x.transpose() * (dphi.array() * (1 - m_phi.array().square())).matrix();
  }

  /// Softmax probabilities at w (rows), and the mean cross-entropy.
  double probabilities(const VectorXd& w, MatrixXd& p) const {
    p = m_phi * head(w);
    p.rowwise() += w.tail(m_ways).transpose();
    return softmaxRows(p, m_labels);
  }
  double errorRate(const VectorXd& w) const {
    MatrixXd p;
    probabilities(w, p);
    Index wrong = 0;
    for (Index i = 0; i < p.rows(); ++i) {
      Index best;
      p.row(i).maxCoeff(&best);
      wrong += best != m_labels(i) ? 1 : 0;
    }
    return double(wrong) / double(p.rows());
  }
  const VectorXi& labels() const { return m_labels; }
  Eigen::Map<const MatrixXd> head(const VectorXd& w) const { return Eigen::Map<const MatrixXd>(w.data(), m_phi.cols(), m_ways); }

 private:
  // Rows δp_i = (diag p_i − p_i p_iᵀ)(Uᵀφ_i + d): the softmax's tangent along u = [vec U; d].
  MatrixXd logitTangent(const MatrixXd& p, const VectorXd& u) const {
    MatrixXd dz = m_phi * head(u);
    dz.rowwise() += u.tail(m_ways).transpose();
    MatrixXd dp = p.cwiseProduct(dz);
    const VectorXd s = dp.rowwise().sum();
    dp -= p.cwiseProduct(s.replicate(1, m_ways));
    return dp;
  }

  MatrixXd m_x;
  VectorXi m_labels;
  Index m_ways;
  double m_l2;
  MatrixXd m_phi;
};

/// The meta objective: the head's query loss, f(w, θ) (no penalty), with ∂f/∂θ.
class QueryLoss {
 public:
  QueryLoss(const MatrixXd& r, const Episode& e, Index ways) : m_loss(r, e.query, e.queryLabels, ways, 0.0) {}
  double value(const VectorXd& w) const {
    MatrixXd p;
    return m_loss.probabilities(w, p);
  }
  double valueAndGradient(const VectorXd& w, VectorXd& g) const { return m_loss.valueAndGradient(w, 0, g); }
  void hyperGradient(const VectorXd& w, VectorXd& dtheta) const {
    MatrixXd p;
    m_loss.probabilities(w, p);
    for (Index i = 0; i < p.rows(); ++i) p(i, m_loss.labels()(i)) -= 1;  // ∂f/∂φ = (P − E) Vᵀ / m
    m_loss.representationGradient(p * m_loss.head(w).transpose() / double(p.rows()), dtheta);
  }
  double errorRate(const VectorXd& w) const { return m_loss.errorRate(w); }

 private:
  HeadLoss m_loss;
};

}  // namespace

int main(int argc, char** argv) try {
  const auto clockStart = Clock::now();
  const Options o = parse(argc, argv);
  const Pools pools = loadPools(o);
  fs::create_directories(o.out);
  std::printf("data: %s\n", pools.description.c_str());
  const Index H = o.hidden, N = o.ways, headSize = H * N + N;
  std::printf("representation: 785 x %ld = %ld outer variables; episodes %ld-way %ld-shot, %ld queries per class; head "
              "trained %ld steps (alpha %.2f, gamma %.2f)\n",
              long(H), long(785 * H), long(N), long(o.shots), long(o.queries), long(o.steps), o.alpha, o.gamma);

  const hypergrad::ParameterLayout headLayout = hypergrad::ParameterLayout::single(headSize);
  auto makeSgd = [&] {
    return hypergrad::SgdMomentum<>(headLayout, hypergrad::Schedule::constant(o.steps, 1, o.alpha),
                                    hypergrad::Schedule::constant(o.steps, 1, o.gamma));
  };
  const VectorXd zeroHead = VectorXd::Zero(headSize);
  // One episode: the head trained from zero on the support set; with `reverse`, ∂(query loss)/∂R.
  auto runEpisode = [&](const MatrixXd& r, const Episode& e, bool reverse) {
    const HeadLoss f(r, e.support, e.supportLabels, N, o.headL2);
    const QueryLoss q(r, e, N);
    hypergrad::SgdMomentum<> sgd = makeSgd();
    if (reverse) return hypergrad::computeHypergradients(sgd, f, q, zeroHead, zeroHead);
    sgd.start(zeroHead);
    hypergrad::train(sgd, f);
    hypergrad::Hypergradients out;
    out.finalWeights = sgd.weights();
    out.metaObjective = q.value(out.finalWeights);
    return out;
  };
  auto queryError = [&](const MatrixXd& r, const Episode& e, const VectorXd& w) {
    QueryLoss q(r, e, N);
    return q.errorRate(w);
  };

  // ---- the random start (also the "random" baseline) ----
  hypergrad::CounterRng initRng(o.seed, 1);
  MatrixXd r0(kPixels + 1, H);
  for (Index h = 0; h < H; ++h)
    for (Index j = 0; j < kPixels + 1; ++j) r0(j, h) = j < kPixels ? initRng.normal() / std::sqrt(double(kPixels)) : 0.0;

  // ---- the check: the exact hypergradient against central differences of a plain double loop ----
  {
    hypergrad::CounterRng rng(o.seed, 2);
    const Episode e = sampleEpisode(pools.train, kTrainClasses, o, rng);
    const hypergrad::Hypergradients hg = runEpisode(r0, e, true);
    MatrixXd direction(kPixels + 1, H);
    for (Index k = 0; k < direction.size(); ++k) direction(k) = rng.normal();
    direction /= direction.norm();
    // Independent: SGD with momentum in double, v ← γv − (1−γ)g, w ← w + αv, then the query loss,
    // with the γ the exact run used (a ratio n/d close to 0.9: quantizedMomenta()).
    const double gamma = makeSgd().quantizedMomenta()(0, 0);
    const auto plain = [&](const MatrixXd& r) {
      const HeadLoss f(r, e.support, e.supportLabels, N, o.headL2);
      QueryLoss q(r, e, N);
      VectorXd w = zeroHead, v = zeroHead, g;
      for (Index t = 0; t < o.steps; ++t) {
        f.gradient(w, t, g);
        v = gamma * v - (1 - gamma) * g;
        w += o.alpha * v;
      }
      return q.value(w);
    };
    const double eps = 1e-4;
    const double fd = (plain(r0 + eps * direction) - plain(r0 - eps * direction)) / (2 * eps);
    const double exact = Eigen::Map<const VectorXd>(direction.data(), direction.size()).dot(hg.hyperparameters);
    const double rel = std::abs(fd - exact) / std::max(std::abs(fd), 1e-12);
    std::printf("check: d(query loss)/dR along a random direction: exact reverse %.9e, central differences of a plain "
                "double run %.9e (relative %.1e)\n",
                exact, fd, rel);
    if (!(rel < 1e-5)) throw hypergrad::Error("the hypergradient disagrees with central differences");
  }

  // ---- pretrained representation: ordinary 6-way classification on the meta-training images ----
  MatrixXd rPretrained(kPixels + 1, H);
  {
    hypergrad::Dataset d;
    Index n = 0;
    for (int c : kTrainClasses) n += static_cast<Index>(0.8 * double(pools.train[static_cast<std::size_t>(c)].rows()));
    d.inputs.resize(n, kPixels);
    d.labels.resize(n);
    d.numClasses = static_cast<Index>(kTrainClasses.size());
    Index row = 0;
    for (std::size_t k = 0; k < kTrainClasses.size(); ++k) {
      const MatrixXd& images = pools.train[static_cast<std::size_t>(kTrainClasses[k])];
      for (Index i = 0; i < static_cast<Index>(0.8 * double(images.rows())); ++i, ++row) {
        d.inputs.row(row) = images.row(i);
        d.labels(row) = static_cast<int>(k);
      }
    }
    const hypergrad::MlpArchitecture arch({kPixels, H, d.numClasses}, hypergrad::Activation::Tanh);
    const Index steps = o.quick ? 200 : 3000;
    const hypergrad::MlpObjective f(arch, d, hypergrad::SeededBatches(o.seed, n, 100));
    hypergrad::SgdMomentum<> sgd(arch.layout(), hypergrad::Schedule::constant(steps, arch.layout().numGroups(), 0.5),
                                 hypergrad::Schedule::constant(steps, arch.layout().numGroups(), 0.9));
    VectorXd w = VectorXd::Zero(arch.numParameters());
    arch.weights(w, 0) = r0.topRows(kPixels);
    hypergrad::CounterRng headRng(o.seed, 3);
    for (Index k = 0; k < arch.weights(w, 1).size(); ++k) arch.weights(w, 1).data()[k] = headRng.normal() / std::sqrt(double(H));
    sgd.start(w);
    hypergrad::train(sgd, f);
    const hypergrad::MlpLoss loss(arch, d);
    rPretrained.topRows(kPixels) = arch.weights(sgd.weights(), 0);
    rPretrained.row(kPixels) = arch.biases(sgd.weights(), 0).transpose();
    std::printf("pretrained: %ld steps of 6-way classification (batch 100) on %ld images: training error %.2f%%\n",
                long(steps), long(n), 100 * loss.errorRate(sgd.weights()));
  }

  // ---- meta-validation episodes (held-out classes, training-split images) and the meta-test ----
  auto evaluateOn = [&](const MatrixXd& r, const std::vector<Episode>& episodes, double& loss, double& error, double& errorSd) {
    std::vector<double> errors;
    loss = 0;
    for (const Episode& e : episodes) {
      const hypergrad::Hypergradients out = runEpisode(r, e, false);
      loss += out.metaObjective / double(episodes.size());
      errors.push_back(queryError(r, e, out.finalWeights));
    }
    error = 0;
    for (double x : errors) error += x / double(errors.size());
    double var = 0;
    for (double x : errors) var += (x - error) * (x - error) / double(errors.size() - 1);
    errorSd = std::sqrt(var);
  };
  std::vector<Episode> validation, test, trainClassesTest;
  {
    hypergrad::CounterRng rng(o.seed, 4);
    for (Index k = 0; k < (o.quick ? 20 : 200); ++k) validation.push_back(sampleEpisode(pools.train, kTestClasses, o, rng));
    for (Index k = 0; k < o.testEpisodes; ++k) test.push_back(sampleEpisode(pools.test, kTestClasses, o, rng));
    for (Index k = 0; k < o.testEpisodes; ++k) trainClassesTest.push_back(sampleEpisode(pools.test, kTrainClasses, o, rng));
  }

  // ---- meta-training: Adam on R, the exact hypergradient of the mean query loss of a few episodes ----
  // Meta-validation: held-out classes on training-split images (never the meta-test's); the
  // representation kept is the one with the lowest meta-validation error (checked every 100).
  struct MetaRun {
    MatrixXd best;
    double bestValidError = 2;
    Index bestIteration = 0;
    std::vector<double> iterations, validError, objectives;
    double seconds = 0;
  };
  const Index validEvery = o.quick ? 10 : 100;
  auto metaTrain = [&](const MatrixXd& start, double step, const std::string& logName) {
    MetaRun run;
    run.best = start;
    hypergrad::MetaParameters params;
    params.add("representation", start, hypergrad::Transform::Identity);
    auto evaluate = [&](const hypergrad::MetaParameters& p, Index metaIteration) {
      const MatrixXd r = p.value(0);
      hypergrad::CounterRng rng(o.seed * 7919u + 5, static_cast<std::uint64_t>(metaIteration));
      hypergrad::MetaEvaluation ev;
      MatrixXd gradient = MatrixXd::Zero(kPixels + 1, H);
      double error = 0;
      for (Index b = 0; b < o.metaBatch; ++b) {
        // Meta-training images: the first 80% of each training class (the pretraining's images too).
        const Episode e = sampleEpisode(pools.train, kTrainClasses, o, rng, 0.0, 0.8);
        const hypergrad::Hypergradients hg = runEpisode(r, e, true);
        ev.objective += hg.metaObjective / double(o.metaBatch);
        gradient += Eigen::Map<const MatrixXd>(hg.hyperparameters.data(), kPixels + 1, H) / double(o.metaBatch);
        error += queryError(r, e, hg.finalWeights) / double(o.metaBatch);
      }
      ev.gradients = {gradient};
      ev.metrics["query error"] = error;
      if (metaIteration % validEvery == 0 || metaIteration + 1 == o.metaIterations) {
        double vl, ve, vsd;
        evaluateOn(r, validation, vl, ve, vsd);
        run.iterations.push_back(double(metaIteration));
        run.validError.push_back(ve);
        if (ve < run.bestValidError) run.bestValidError = ve, run.bestIteration = metaIteration, run.best = r;
      }
      return ev;
    };
    hypergrad::MetaAdam adam;
    adam.stepSize = step;
    hypergrad::ProgressBar progress;
    hypergrad::CsvLogger csv((fs::path(o.out) / logName).string());
    const auto metaStart = Clock::now();
    const hypergrad::MetaResult result = hypergrad::metaOptimize(params, evaluate, adam, o.metaIterations, progress, csv);
    if (result.iterations == 0) throw hypergrad::Error(result.stopReason);
    run.seconds = std::chrono::duration<double>(Clock::now() - metaStart).count();
    run.objectives = result.objectives;
    std::printf("meta-validation error (held-out classes, %zu episodes) every %ld meta-iterations:", validation.size(),
                long(validEvery));
    for (double e : run.validError) std::printf(" %.3f", e);
    std::printf("\nkept: the representation of meta-iteration %ld (meta-validation error %.4f)\n", long(run.bestIteration),
                run.bestValidError);
    return run;
  };
  std::printf("meta-training from the random representation:\n");
  const MetaRun fromRandom = metaTrain(r0, o.metaStep, "log.csv");
  std::printf("meta-training from the pretrained representation:\n");
  const MetaRun fromPretrained = metaTrain(rPretrained, o.fineTuneStep, "log_from_pretrained.csv");
  const MatrixXd& rLearned = fromRandom.best;

  // ---- meta-test ----
  struct Row {
    const char* name;
    const MatrixXd* r;
    double loss = 0, error = 0, sd = 0, trainLoss = 0, trainError = 0, trainSd = 0;
  };
  std::vector<Row> rows = {{"random (the start)", &r0},
                           {"pretrained (6-way classification)", &rPretrained},
                           {"learned from random (bilevel, exact)", &rLearned},
                           {"learned from pretrained (bilevel, exact)", &fromPretrained.best}};
  for (Row& row : rows) {
    evaluateOn(*row.r, test, row.loss, row.error, row.sd);
    evaluateOn(*row.r, trainClassesTest, row.trainLoss, row.trainError, row.trainSd);
  }

  // ---- outputs ----
  {
    std::ofstream out(fs::path(o.out) / "summary.csv");
    out << "representation,test_classes_query_loss,test_classes_accuracy,accuracy_ci95,train_classes_query_loss,"
           "train_classes_accuracy\n";
    for (const Row& row : rows)
      out << row.name << ',' << row.loss << ',' << 1 - row.error << ',' << 1.96 * row.sd / std::sqrt(double(test.size())) << ','
          << row.trainLoss << ',' << 1 - row.trainError << '\n';
  }
  {
    const auto smooth = [](const std::vector<double>& v) {  // running mean over 50 meta-iterations
      std::vector<double> out;
      double sum = 0;
      for (std::size_t i = 0; i < v.size(); ++i) {
        sum += v[i] - (i >= 50 ? v[i - 50] : 0.0);
        out.push_back(sum / double(std::min<std::size_t>(i + 1, 50)));
      }
      return out;
    };
    hypergrad::SvgPlot plot("Meta-training: query loss (mean of 50), held-out error", "meta-iteration", "query loss / error");
    plot.addLine("from random: loss (train classes)", smooth(fromRandom.objectives), hypergrad::LineStyle{0});
    plot.addLine("from random: error (held-out)", fromRandom.iterations, fromRandom.validError, hypergrad::LineStyle{0, true});
    plot.addLine("from pretrained: loss (train classes)", smooth(fromPretrained.objectives), hypergrad::LineStyle{1});
    plot.addLine("from pretrained: error (held-out)", fromPretrained.iterations, fromPretrained.validError,
                 hypergrad::LineStyle{1, true});
    plot.save((fs::path(o.out) / "meta_learning_curve.svg").string());
  }
  {
    // The first 16 units' input weights (28 x 28 each); rows: random, pretrained, learned from
    // random, learned from pretrained.
    const Index shown = std::min<Index>(16, H);
    std::vector<MatrixXd> tiles;
    for (const MatrixXd* r : std::vector<const MatrixXd*>{&r0, &rPretrained, &rLearned, &fromPretrained.best})
      for (Index h = 0; h < shown; ++h) {
        MatrixXd tile = Eigen::Map<const MatrixXd>(r->col(h).data(), kSide, kSide).transpose();
        tiles.push_back(tile / std::max(1e-12, tile.cwiseAbs().maxCoeff()));  // each unit on its own scale
      }
    hypergrad::writePngDiverging((fs::path(o.out) / "filters.png").string(), hypergrad::imageGrid(tiles, shown, 1, 0.0), 1.0,
                                 hypergrad::PngOptions().withScale(2).withDeflate(hypergrad::zlibDeflate));
  }

  std::printf("\nmeta-training: %ld meta-iterations x %ld episodes, %.1f s from random, %.1f s from pretrained\n",
              long(o.metaIterations), long(o.metaBatch), fromRandom.seconds, fromPretrained.seconds);
  std::printf("meta-test, %ld-way %ld-shot episodes (%zu each):  held-out classes: query loss, accuracy (95%% CI) | "
              "training classes, new images: accuracy\n",
              long(N), long(o.shots), test.size());
  for (const Row& row : rows)
    std::printf("  %-42s %.4f  %6.2f%% +- %.2f | %6.2f%%\n", row.name, row.loss, 100 * (1 - row.error),
                100 * 1.96 * row.sd / std::sqrt(double(test.size())), 100 * (1 - row.trainError));
  std::printf("wall time %.1f s; outputs in %s\n",
              std::chrono::duration<double>(Clock::now() - clockStart).count(), o.out.c_str());

  if (o.quick) {
    for (const char* name : {"log.csv", "log_from_pretrained.csv", "summary.csv", "meta_learning_curve.svg", "filters.png"}) {
      const fs::path p = fs::path(o.out) / name;
      if (!fs::exists(p) || fs::file_size(p) < 100) {
        std::fprintf(stderr, "self-check failed: %s is missing or empty\n", p.string().c_str());
        return 1;
      }
    }
    std::printf("quick self-check: all outputs written\n");
  }
  return 0;
} catch (const hypergrad::DataError& e) {
  std::fprintf(stderr, "error: %s\n(run with --quick to try the example on synthetic data)\n", e.what());
  return 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
