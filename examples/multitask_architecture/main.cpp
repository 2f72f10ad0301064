// multitask_architecture — learning how much several task networks share: the multitask penalty
// matrices of Maclaurin, Duvenaud & Adams (2015, "learning continuously parameterized
// architectures"), learned by gradient descent on the validation loss with exact hypergradients.
//
// Four related 5-way classification tasks, each with a small training set. Default (--tasks
// mirrored): MNIST digits 0–4, the same digits mirrored left to right, Fashion-MNIST classes 0–4,
// the same clothes mirrored (disjoint examples) — pairs with the same labels and related inputs,
// and two domains whose labels mean different things. --tasks classes: MNIST digits 0–4 and 5–9,
// Fashion classes 0–4 and 5–9 (labels remapped to 0–4; README.md says why it is not the default).
// Each task k has its own network w_k (784 → H → 5, tanh); the training loss couples them layer
// by layer:
//
//     L(w, θ, t) = Σ_k L_k(w_k, t)
//                + Σ_l [ ½ Σ_{i<j} exp(θ^l_ij) ‖W^l_i − W^l_j‖² + ½ Σ_i exp(θ^l_ii) ‖W^l_i‖² ],
//
// a symmetric task × task matrix θ^l per layer (W^l_k: layer l's weights and biases of network k).
// exp(θ_ij) → 0 trains the networks separately, exp(θ_ij) → ∞ ties them into one network. The
// meta objective is the tasks' mean validation loss; hypergrad runs training backwards exactly to
// get its gradient with respect to all entries of θ, and Adam updates θ.
//
// Compared on held-out test data over several seeds (training / validation draws, initial weights
// and minibatches): separate networks (only the diagonal, per-task L2, learned), one tied network
// (literally the same weights for all tasks; its per-layer L2 learned) and learned sharing (the
// whole matrices learned). Every setting gets the same meta-optimiser and budget.
//
// Outputs in --out: summary.csv (mean ± sd over seeds per method), per_seed.csv, log.csv (every
// meta-iteration of every run), matrices.csv, matrices.svg and matrices.png (the learned
// matrices per layer), meta_learning_curve.svg.
//
// Usage: multitask_architecture [--data DIR] [--mnist DIR] [--out DIR] [--quick] [--seeds S] ...
// (--help lists every option).

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <hypergrad.hpp>
#include <hypergrad/data/deflate.hpp>
#include <hypergrad/data/idx.hpp>
#include <hypergrad/io/image.hpp>
#include <hypergrad/io/svg.hpp>

namespace {

using Eigen::MatrixXd;
using Eigen::VectorXd;
using hypergrad::Dataset;
using hypergrad::Index;

constexpr Index kSide = 28, kPixels = kSide * kSide, kWays = 5, kTasks = 4;
constexpr double kOff = -40.0;  // log λ of "no coupling": λ ≈ 4e-18, below double rounding of any gradient
const char* const kClassTasks[kTasks] = {"MNIST 0-4", "MNIST 5-9", "Fashion 0-4", "Fashion 5-9"};
const char* const kMirrorTasks[kTasks] = {"MNIST 0-4", "MNIST 0-4 mirrored", "Fashion 0-4", "Fashion 0-4 mirrored"};
const char* const* g_taskNames = kMirrorTasks;  // the design's (set once by parseOptions)

struct Options {
  std::string data = hypergrad::defaultDataDirectory();  // Fashion-MNIST
  std::string mnist = "mnist";  // MNIST (t10k suffices): by name, hypergrad::resolveDataDirectory
  std::string out = "multitask_architecture_out";
  std::string design = "mirrored";  // the tasks: "mirrored" or "classes"
  bool quick = false;
  Index train = 50;     // training examples per task (10 per class): few, so that sharing can matter
  Index valid = 500;    // validation examples per task (the meta objective)
  Index test = 2000;    // test examples per task (reported, never optimised)
  Index hidden = 32;    // H
  Index steps = 100;    // T
  Index batch = 25;     // minibatch per task
  Index metaIterations = 30;
  Index seeds = 3;
  double metaStep = 0.2;    // Adam step on θ
  double alpha = 0.3;       // learning rate
  double gamma = 0.9;       // momentum
  double lambda0 = -5.0;    // initial log λ on the diagonal (every method)
  double coupling0 = -6.0;  // initial log λ off the diagonal (learned sharing): weak sharing
};

void printUsage(std::FILE* out) {
  std::fputs(
      "usage: multitask_architecture [options]\n"
      "  --data DIR           Fashion-MNIST directory (default /usr/share/datasets/fashion-mnist)\n"
      "  --mnist DIR          MNIST directory; the t10k files suffice (default \"mnist\": $HYPERGRAD_MNIST_DIR or ../shared/data/mnist)\n"
      "  --out DIR            output directory (default ./multitask_architecture_out)\n"
      "  --tasks mirrored|classes  the four tasks: MNIST 0-4, the same mirrored, Fashion 0-4, the same\n"
      "                       mirrored (mirrored, default), or MNIST 0-4, 5-9, Fashion 0-4, 5-9 (classes)\n"
      "  --quick              tiny settings (seconds); synthetic tasks when no data directory is found\n"
      "  --train N            training examples per task (default 50)\n"
      "  --valid N            validation examples per task (default 500)\n"
      "  --test N             test examples per task (default 2000)\n"
      "  --hidden H           hidden units of each task network (default 32)\n"
      "  --steps T            SGD steps per training run (default 100)\n"
      "  --batch B            minibatch per task (default 25)\n"
      "  --meta-iterations M  Adam steps on the penalties (default 30)\n"
      "  --meta-step S        Adam step size on log lambda (default 0.2)\n"
      "  --seeds S            seeds (data draws, initial weights, minibatches) per method (default 3)\n"
      "  --alpha A            learning rate (default 0.3)\n"
      "  --gamma G            momentum (default 0.9)\n"
      "  --lambda0 L          initial log lambda of the diagonal (default -5)\n"
      "  --coupling0 C        initial log lambda of the couplings, learned sharing (default -6)\n",
      out);
}

bool parseOptions(int argc, char** argv, Options& opt) {
  // --quick first, so that explicit options given with it still win.
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]) == "--quick") {
      opt.quick = true;
      opt.train = 40;
      opt.valid = 100;
      opt.test = 200;
      opt.hidden = 8;
      opt.steps = 20;
      opt.batch = 20;
      opt.metaIterations = 3;
      opt.seeds = 2;
    }
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      printUsage(stdout);
      std::exit(0);
    }
    if (flag == "--quick") continue;
    if (i + 1 >= argc) {
      std::fprintf(stderr, "multitask_architecture: %s needs a value (see --help)\n", flag.c_str());
      return false;
    }
    const char* value = argv[++i];
    char* end = nullptr;
    bool ok = true;
    const auto integer = [&](Index& target, Index lowest) {
      target = static_cast<Index>(std::strtol(value, &end, 10));
      ok = target >= lowest;
    };
    const auto real = [&](double& target) {
      target = std::strtod(value, &end);
      ok = std::isfinite(target);
    };
    if (flag == "--data") {
      opt.data = value;
      continue;
    } else if (flag == "--mnist") {
      opt.mnist = value;
      continue;
    } else if (flag == "--out") {
      opt.out = value;
      continue;
    } else if (flag == "--tasks") {
      opt.design = value;
      if (opt.design != "classes" && opt.design != "mirrored") {
        std::fprintf(stderr, "multitask_architecture: --tasks is 'classes' or 'mirrored', not '%s'\n", value);
        return false;
      }
      g_taskNames = opt.design == "classes" ? kClassTasks : kMirrorTasks;
      continue;
    } else if (flag == "--train") {
      integer(opt.train, 5);
    } else if (flag == "--valid") {
      integer(opt.valid, 5);
    } else if (flag == "--test") {
      integer(opt.test, 5);
    } else if (flag == "--hidden") {
      integer(opt.hidden, 1);
    } else if (flag == "--steps") {
      integer(opt.steps, 1);
    } else if (flag == "--batch") {
      integer(opt.batch, 1);
    } else if (flag == "--meta-iterations") {
      integer(opt.metaIterations, 1);
    } else if (flag == "--seeds") {
      integer(opt.seeds, 1);
    } else if (flag == "--meta-step") {
      real(opt.metaStep);
      ok = ok && opt.metaStep > 0;
    } else if (flag == "--alpha") {
      real(opt.alpha);
      ok = ok && opt.alpha > 0;
    } else if (flag == "--gamma") {
      real(opt.gamma);
      ok = ok && opt.gamma > 0 && opt.gamma <= 1;
    } else if (flag == "--lambda0") {
      real(opt.lambda0);
    } else if (flag == "--coupling0") {
      real(opt.coupling0);
    } else {
      std::fprintf(stderr, "multitask_architecture: unknown option %s (see --help)\n", flag.c_str());
      return false;
    }
    if (!ok || end == value || *end != '\0') {
      std::fprintf(stderr, "multitask_architecture: bad value '%s' for %s\n", value, flag.c_str());
      return false;
    }
  }
  opt.batch = std::min(opt.batch, opt.train);
  return true;
}

// ---- The multitask objective ----------------------------------------------------------------------

// θ's entries of one layer: the S diagonal log-penalties, then the S(S−1)/2 off-diagonal
// log-couplings in the order (0,1), (0,2), …, (0,S−1), (1,2), …, (S−2,S−1).
Index numPairs(Index slots) { return slots * (slots - 1) / 2; }

/// \brief The training loss of K task networks with learned multitask penalty matrices, an
/// objective in hypergrad's sense (objective.hpp): gradient, Hessian-vector product and mixed
/// product with respect to w, a fused reverseStep, valueAndGradient and named θ blocks.
///
/// w holds S networks ("slots") of one MlpArchitecture back to back; task k trains slot
/// slotOf[k] on its own minibatches (an MlpObjective each, on a slice of w). Separate networks:
/// S = K, slot k = task k. One tied network: S = 1, every task on slot 0 — literally the same
/// weights. Each slot's loss is the mean of its tasks' losses (the tied network therefore sees the
/// mean gradient of the K tasks, the limit of infinitely strong coupling, at the same α).
///
///     L(w, θ, t) = Σ_s mean_{k ∈ s} L_k(w_s, t)
///                + Σ_l [ ½ Σ_{i<j} λ^l_ij ‖x^l_i − x^l_j‖² + ½ Σ_i λ^l_ii ‖x^l_i‖² ],  λ = exp(θ),
///
/// x^l_s: layer l's weights and biases in slot s (contiguous in the parameter vector). The
/// penalty's gradient is the linear map A x, (A x)_i = λ_ii x_i + Σ_{j≠i} λ_ij (x_i − x_j), so
/// H u gains A u, and the mixed product is ∂/∂θ (uᵀ A x): λ_ii u_iᵀ x_i on the diagonal and
/// λ_ij (u_i − u_j)ᵀ (x_i − x_j) off it.
class MultitaskObjective {
 public:
  MultitaskObjective(hypergrad::MlpArchitecture arch, std::vector<hypergrad::MlpObjective> tasks,
                     std::vector<Index> slotOf, Index slots)
      : m_arch(std::move(arch)), m_tasks(std::move(tasks)), m_slotOf(std::move(slotOf)), m_slots(slots) {
    if (m_slotOf.size() != m_tasks.size() || m_slots < 1)
      throw hypergrad::InvalidArgument("MultitaskObjective: one slot per task, at least one slot");
    m_P = m_arch.numParameters();
    m_scale.assign(m_tasks.size(), 0.0);
    std::vector<Index> count(static_cast<std::size_t>(m_slots), 0);
    for (Index s : m_slotOf) {
      if (s < 0 || s >= m_slots) throw hypergrad::InvalidArgument("MultitaskObjective: slot out of range");
      ++count[static_cast<std::size_t>(s)];
    }
    for (std::size_t k = 0; k < m_tasks.size(); ++k) {
      if (m_tasks[k].numParameters() != m_P)
        throw hypergrad::InvalidArgument("MultitaskObjective: every task network must have the same architecture");
      m_scale[k] = 1.0 / static_cast<double>(count[static_cast<std::size_t>(m_slotOf[k])]);
    }
    setHyperparameters(VectorXd::Constant(numHyperparameters(), kOff));
  }

  // --- the objective concept ---------------------------------------------------------------------

  Index numParameters() const noexcept { return m_slots * m_P; }
  Index numHyperparameters() const noexcept { return m_arch.numLayers() * (m_slots + numPairs(m_slots)); }

  void gradient(const VectorXd& w, Index t, VectorXd& g) const { valueAndGradient(w, t, g); }

  double valueAndGradient(const VectorXd& w, Index t, VectorXd& g) const {
    checkSize(w, "w");
    g.setZero(numParameters());
    double loss = 0;
    for (std::size_t k = 0; k < m_tasks.size(); ++k) {
      slice(w, k, m_ws);
      loss += m_scale[k] * m_tasks[k].valueAndGradient(m_ws, t, m_gk);
      segment(g, k) += m_scale[k] * m_gk;
    }
    addPenaltyMap(w, g);
    return loss + penalty(w);
  }

  void hessianVectorProduct(const VectorXd& w, Index t, const VectorXd& u, VectorXd& hu) const {
    checkSize(w, "w");
    checkSize(u, "u");
    hu.setZero(numParameters());
    for (std::size_t k = 0; k < m_tasks.size(); ++k) {
      slice(w, k, m_ws);
      slice(u, k, m_us);
      m_tasks[k].hessianVectorProduct(m_ws, t, m_us, m_hk);
      segment(hu, k) += m_scale[k] * m_hk;
    }
    addPenaltyMap(u, hu);
  }

  void mixedProduct(const VectorXd& w, Index t, const VectorXd& u, VectorXd& dtheta) const {
    (void)t;  // the task losses do not depend on θ
    checkSize(w, "w");
    checkSize(u, "u");
    penaltyMixed(w, u, dtheta);
  }

  /// g, H u and the mixed product from one forward pass per task (MlpObjective::reverseStep); g
  /// bit-identical to gradient(): the same products, added in the same order.
  void reverseStep(const VectorXd& w, Index t, const VectorXd& u, VectorXd& g, VectorXd& hu, VectorXd& dtheta) const {
    checkSize(w, "w");
    checkSize(u, "u");
    g.setZero(numParameters());
    hu.setZero(numParameters());
    VectorXd none;
    for (std::size_t k = 0; k < m_tasks.size(); ++k) {
      slice(w, k, m_ws);
      slice(u, k, m_us);
      m_tasks[k].reverseStep(m_ws, t, m_us, m_gk, m_hk, none);
      segment(g, k) += m_scale[k] * m_gk;
      segment(hu, k) += m_scale[k] * m_hk;
    }
    addPenaltyMap(w, g);
    addPenaltyMap(u, hu);
    penaltyMixed(w, u, dtheta);
  }

  /// θ's blocks: per layer "layer<l>.logLambda" (S diagonal entries) and, with S > 1,
  /// "layer<l>.logCoupling" (the S(S−1)/2 pairs).
  hypergrad::ParameterLayout hyperparameterLayout() const {
    hypergrad::ParameterLayout out;
    for (Index l = 0; l < m_arch.numLayers(); ++l) {
      out.addGroup(diagonalName(l), m_slots);
      if (m_slots > 1) out.addGroup(couplingName(l), numPairs(m_slots));
    }
    return out;
  }

  /// The parameters' groups: per slot, its network's layers ("net1.layer1.weights", …).
  hypergrad::ParameterLayout layout() const {
    hypergrad::ParameterLayout out;
    const hypergrad::ParameterLayout one = m_arch.layout();
    for (Index s = 0; s < m_slots; ++s)
      for (const hypergrad::ParameterGroup& g : one.groups()) out.addGroup("net" + std::to_string(s + 1) + "." + g.name, g.size);
    return out;
  }

  // --- extras --------------------------------------------------------------------------------------

  static std::string diagonalName(Index l) { return "layer" + std::to_string(l + 1) + ".logLambda"; }
  static std::string couplingName(Index l) { return "layer" + std::to_string(l + 1) + ".logCoupling"; }

  void setHyperparameters(const VectorXd& theta) {
    if (theta.size() != numHyperparameters())
      throw hypergrad::InvalidArgument(hypergrad::detail::message("MultitaskObjective: theta has ", theta.size(),
                                                                  " entries, expected ", numHyperparameters()));
    for (Index i = 0; i < theta.size(); ++i)
      if (!std::isfinite(theta(i)) || theta(i) > 700)
        throw hypergrad::InvalidArgument(hypergrad::detail::message("MultitaskObjective: theta[", i, "] = ", theta(i)));
    m_theta = theta;
    m_lambda = theta.array().exp().matrix();
  }
  const VectorXd& hyperparameters() const noexcept { return m_theta; }

  /// ½ Σ_l [Σ_{i<j} λ_ij ‖x_i − x_j‖² + Σ_i λ_ii ‖x_i‖²].
  double penalty(const VectorXd& w) const {
    double p = 0;
    forEachLayer([&](Index l, Index off, Index len, Index th) {
      (void)l;
      for (Index i = 0; i < m_slots; ++i) p += 0.5 * m_lambda(th + i) * layerSlice(w, i, off, len).squaredNorm();
      Index pair = th + m_slots;
      for (Index i = 0; i < m_slots; ++i)
        for (Index j = i + 1; j < m_slots; ++j, ++pair)
          p += 0.5 * m_lambda(pair) * (layerSlice(w, i, off, len) - layerSlice(w, j, off, len)).squaredNorm();
    });
    return p;
  }

  const hypergrad::MlpArchitecture& architecture() const noexcept { return m_arch; }
  Index numSlots() const noexcept { return m_slots; }

 private:
  template <class F>
  void forEachLayer(F&& f) const {
    Index th = 0;
    for (Index l = 0; l < m_arch.numLayers(); ++l) {
      const Index off = m_arch.weightsOffset(l);
      const Index len = m_arch.fanIn(l) * m_arch.fanOut(l) + m_arch.fanOut(l);  // weights, then biases
      f(l, off, len, th);
      th += m_slots + numPairs(m_slots);
    }
  }
  Eigen::VectorBlock<const VectorXd> layerSlice(const VectorXd& x, Index slot, Index off, Index len) const {
    return x.segment(slot * m_P + off, len);
  }

  // out += A x, layer by layer: (A x)_i = λ_ii x_i + Σ_{j≠i} λ_ij (x_i − x_j). One function for
  // gradient and reverseStep, so both produce the same bits.
  void addPenaltyMap(const VectorXd& x, VectorXd& out) const {
    forEachLayer([&](Index, Index off, Index len, Index th) {
      for (Index i = 0; i < m_slots; ++i) out.segment(i * m_P + off, len) += m_lambda(th + i) * layerSlice(x, i, off, len);
      Index pair = th + m_slots;
      for (Index i = 0; i < m_slots; ++i)
        for (Index j = i + 1; j < m_slots; ++j, ++pair) {
          m_diff = layerSlice(x, i, off, len) - layerSlice(x, j, off, len);
          out.segment(i * m_P + off, len) += m_lambda(pair) * m_diff;
          out.segment(j * m_P + off, len) -= m_lambda(pair) * m_diff;
        }
    });
  }

  void penaltyMixed(const VectorXd& w, const VectorXd& u, VectorXd& dtheta) const {
    dtheta.resize(numHyperparameters());
    forEachLayer([&](Index, Index off, Index len, Index th) {
      for (Index i = 0; i < m_slots; ++i)
        dtheta(th + i) = m_lambda(th + i) * layerSlice(u, i, off, len).dot(layerSlice(w, i, off, len));
      Index pair = th + m_slots;
      for (Index i = 0; i < m_slots; ++i)
        for (Index j = i + 1; j < m_slots; ++j, ++pair)
          dtheta(pair) = m_lambda(pair) * (layerSlice(u, i, off, len) - layerSlice(u, j, off, len))
                                              .dot(layerSlice(w, i, off, len) - layerSlice(w, j, off, len));
    });
  }

  void slice(const VectorXd& x, std::size_t task, VectorXd& out) const {
    out = x.segment(m_slotOf[task] * m_P, m_P);
  }
  Eigen::VectorBlock<VectorXd> segment(VectorXd& x, std::size_t task) const {
    return x.segment(m_slotOf[task] * m_P, m_P);
  }
  void checkSize(const VectorXd& x, const char* name) const {
    if (x.size() != numParameters())
      throw hypergrad::InvalidArgument(hypergrad::detail::message("MultitaskObjective: ", name, " has ", x.size(),
                                                                  " entries, expected ", numParameters()));
  }

  hypergrad::MlpArchitecture m_arch;
  std::vector<hypergrad::MlpObjective> m_tasks;
  std::vector<Index> m_slotOf;
  Index m_slots = 1, m_P = 0;
  std::vector<double> m_scale;  // 1 / (tasks on the slot)
  VectorXd m_theta, m_lambda;
  mutable VectorXd m_ws, m_us, m_gk, m_hk, m_diff;  // workspaces: not thread-safe, like MlpObjective
};

/// The meta objective (and the evaluation): the mean over tasks of each task's full-batch
/// cross-entropy on its examples, task k evaluated with its slot's weights.
class MultitaskLoss {
 public:
  MultitaskLoss(const hypergrad::MlpArchitecture& arch, const std::vector<Dataset>& data, std::vector<Index> slotOf)
      : m_P(arch.numParameters()), m_slotOf(std::move(slotOf)) {
    for (const Dataset& d : data) m_losses.emplace_back(arch, d);
  }
  double value(const VectorXd& w) const {
    double sum = 0;
    for (std::size_t k = 0; k < m_losses.size(); ++k) sum += m_losses[k].value(slice(w, k));
    return sum / static_cast<double>(m_losses.size());
  }
  double valueAndGradient(const VectorXd& w, VectorXd& g) const {
    g.setZero(w.size());
    double sum = 0;
    VectorXd gk;
    const double scale = 1.0 / static_cast<double>(m_losses.size());
    for (std::size_t k = 0; k < m_losses.size(); ++k) {
      sum += m_losses[k].valueAndGradient(slice(w, k), gk);
      g.segment(m_slotOf[k] * m_P, m_P) += scale * gk;
    }
    return sum * scale;
  }
  double taskLoss(const VectorXd& w, std::size_t k) const { return m_losses[k].value(slice(w, k)); }
  double taskError(const VectorXd& w, std::size_t k) const { return m_losses[k].errorRate(slice(w, k)); }
  double meanError(const VectorXd& w) const {
    double sum = 0;
    for (std::size_t k = 0; k < m_losses.size(); ++k) sum += taskError(w, k);
    return sum / static_cast<double>(m_losses.size());
  }

 private:
  VectorXd slice(const VectorXd& w, std::size_t k) const { return w.segment(m_slotOf[k] * m_P, m_P); }
  Index m_P;
  std::vector<Index> m_slotOf;
  std::vector<hypergrad::MlpLoss> m_losses;
};

// ---- Data -------------------------------------------------------------------------------------------

// A task: the examples of 5 consecutive classes of a data set, labels shifted to 0–4. `pool`
// supplies the training and validation examples (drawn per seed), `test` is fixed.
struct Task {
  std::string name;
  Dataset pool, test;
};

Dataset selectClasses(const Dataset& d, int first, Index maxCount) {
  std::vector<Index> keep;
  for (Index i = 0; i < d.numExamples() && Index(keep.size()) < maxCount; ++i)
    if (d.labels(i) >= first && d.labels(i) < first + kWays) keep.push_back(i);
  Dataset out;
  out.numClasses = kWays;
  out.inputs.resize(Index(keep.size()), d.numFeatures());
  out.labels.resize(Index(keep.size()));
  for (std::size_t r = 0; r < keep.size(); ++r) {
    out.inputs.row(Index(r)) = d.inputs.row(keep[r]);
    out.labels(Index(r)) = d.labels(keep[r]) - first;
  }
  return out;
}

Dataset rows(const Dataset& d, const std::vector<Index>& idx) {
  Dataset out;
  out.numClasses = d.numClasses;
  out.inputs.resize(Index(idx.size()), d.numFeatures());
  out.labels.resize(Index(idx.size()));
  for (std::size_t r = 0; r < idx.size(); ++r) {
    out.inputs.row(Index(r)) = d.inputs.row(idx[r]);
    out.labels(Index(r)) = d.labels(idx[r]);
  }
  return out;
}

// Stand-in tasks for --quick without data: two "domains" of 10 classes each (patterns of three
// Gaussian blobs; the second domain's patterns are different blobs), split into 5 + 5 classes
// like the real tasks. An example is its class pattern at a random contrast plus pixel noise.
Dataset syntheticDomain(Index n, std::uint64_t domain, std::uint64_t stream) {
  MatrixXd prototypes = MatrixXd::Zero(10, kPixels);
  hypergrad::CounterRng shapes(2015 + domain, 0);
  for (Index c = 0; c < 10; ++c)
    for (int blob = 0; blob < 3; ++blob) {
      const double cy = 5 + 18 * shapes.uniform(), cx = 5 + 18 * shapes.uniform(), s = 2 + 3 * shapes.uniform();
      for (Index p = 0; p < kPixels; ++p) {
        const double dy = double(p / kSide) - cy, dx = double(p % kSide) - cx;
        prototypes(c, p) += std::exp(-(dx * dx + dy * dy) / (2 * s * s));
      }
    }
  Dataset d;
  d.numClasses = 10;
  d.inputs.resize(n, kPixels);
  d.labels.resize(n);
  hypergrad::CounterRng rng(7 + domain, stream);
  for (Index k = 0; k < n; ++k) {
    const Index c = static_cast<Index>(rng.below(10));
    const double contrast = 0.2 + 0.8 * rng.uniform();
    d.labels(k) = static_cast<int>(c);
    for (Index p = 0; p < kPixels; ++p)
      d.inputs(k, p) = std::clamp(contrast * prototypes(c, p) + 0.6 * rng.normal(), 0.0, 1.0);
  }
  return d;
}

struct Tasks {
  std::vector<Task> tasks;
  std::string source;
};

// Every other row of d (parity 0 or 1).
Dataset alternate(const Dataset& d, Index parity) {
  std::vector<Index> idx;
  for (Index i = parity; i < d.numExamples(); i += 2) idx.push_back(i);
  return rows(d, idx);
}

// Each 28 × 28 image mirrored left to right.
Dataset mirrored(Dataset d) {
  for (Index k = 0; k < d.numExamples(); ++k)
    for (Index r = 0; r < kSide; ++r) d.inputs.row(k).segment(r * kSide, kSide).reverseInPlace();
  return d;
}

// The first `n` rows of d (all when it has fewer).
Dataset head(const Dataset& d, Index n) { return hypergrad::subset(d, 0, std::min(n, d.numExamples())); }

// The four tasks from two domains (MNIST, Fashion-MNIST), each given as a pool for training and
// validation and a test set, all 10 classes. Design "classes": per domain classes 0–4 and classes
// 5–9. Design "mirrored": per domain classes 0–4 on half the pool and the same classes on the
// other half, mirrored left to right (disjoint examples).
void addDomainTasks(Tasks& out, const Options& opt, const Dataset& pool, const Dataset& test, Index domain) {
  if (opt.design == "classes") {
    for (int first : {0, 5})
      out.tasks.push_back({g_taskNames[2 * domain + (first ? 1 : 0)], selectClasses(pool, first, pool.numExamples()),
                           selectClasses(test, first, opt.test)});
  } else {
    const Dataset p = selectClasses(pool, 0, pool.numExamples()), t = selectClasses(test, 0, test.numExamples());
    out.tasks.push_back({g_taskNames[2 * domain], alternate(p, 0), head(alternate(t, 0), opt.test)});
    out.tasks.push_back({g_taskNames[2 * domain + 1], mirrored(alternate(p, 1)), mirrored(head(alternate(t, 1), opt.test))});
  }
}

// MNIST from --mnist (train for the pool when present; otherwise its t10k split in two, even rows
// the pool, odd rows the test set), Fashion-MNIST from --data (pool from its train split, test
// from t10k). Without data, --quick uses synthetic tasks; a full run lets loadMnist throw its
// DataError.
Tasks loadTasks(const Options& opt) {
  Tasks out;
  // Names ("mnist", "fashion-mnist") to directories; an MNIST that cannot be found is an error
  // for a full run (the DataError says where it looked) and synthetic data for --quick.
  std::string mnistDir = opt.mnist;
  try {
    mnistDir = hypergrad::resolveDataDirectory(opt.mnist);
  } catch (const hypergrad::DataError&) {
    if (!opt.quick) throw;
  }
  const std::string fashionDir = hypergrad::resolveDataDirectory(opt.data);
  const bool fashionTrain = hypergrad::hasMnistSplit(fashionDir, "train") && hypergrad::hasMnistSplit(fashionDir, "t10k");
  const bool mnist = hypergrad::hasMnistSplit(mnistDir, "t10k");
  if (opt.quick && (!fashionTrain || !mnist)) {
    for (Index domain = 0; domain < 2; ++domain)
      addDomainTasks(out, opt, syntheticDomain(8 * (opt.train + opt.valid), std::uint64_t(domain), 1),
                     syntheticDomain(4 * opt.test, std::uint64_t(domain), 2), domain);
    out.source = "SYNTHETIC tasks (no MNIST / Fashion-MNIST files in '" + mnistDir + "', '" + fashionDir + "'; --quick only)";
    return out;
  }
  const Index need = opt.train + opt.valid;
  if (hypergrad::hasMnistSplit(mnistDir, "train")) {
    addDomainTasks(out, opt, hypergrad::loadMnist(mnistDir, "train", 6 * need + 2000), hypergrad::loadMnist(mnistDir, "t10k"), 0);
  } else {
    const Dataset all = hypergrad::loadMnist(mnistDir, "t10k");
    addDomainTasks(out, opt, alternate(all, 0), alternate(all, 1), 0);
  }
  addDomainTasks(out, opt, hypergrad::loadMnist(fashionDir, "train", 6 * need + 2000), hypergrad::loadMnist(fashionDir, "t10k"), 1);
  for (const Task& t : out.tasks)
    if (t.pool.numExamples() < need)
      throw hypergrad::DataError("multitask_architecture: task '" + t.name + "' has only " +
                                 std::to_string(t.pool.numExamples()) + " examples for training and validation, " +
                                 std::to_string(need) + " needed");
  out.source = mnistDir + " (MNIST" + (hypergrad::hasMnistSplit(mnistDir, "train") ? "" : ": t10k, even rows for training / validation, odd rows for test") +
               ") and " + fashionDir + " (Fashion-MNIST: train for training / validation, t10k for test)";
  return out;
}

// One seed's draw of every task's training and validation examples (a seeded permutation of
// the pool), with the fixed test sets.
struct Draw {
  std::vector<Dataset> train, valid, test;
};

Draw drawTasks(const Tasks& tasks, const Options& opt, std::uint64_t seed) {
  Draw d;
  for (std::size_t k = 0; k < tasks.tasks.size(); ++k) {
    const Task& task = tasks.tasks[k];
    std::vector<Index> idx(static_cast<std::size_t>(task.pool.numExamples()));
    std::iota(idx.begin(), idx.end(), Index(0));
    hypergrad::CounterRng rng(seed, 100 + k);
    for (std::size_t i = 0; i < std::size_t(opt.train + opt.valid); ++i)
      std::swap(idx[i], idx[i + rng.below(idx.size() - i)]);
    d.train.push_back(rows(task.pool, std::vector<Index>(idx.begin(), idx.begin() + opt.train)));
    d.valid.push_back(
        rows(task.pool, std::vector<Index>(idx.begin() + opt.train, idx.begin() + opt.train + opt.valid)));
    d.test.push_back(task.test);
  }
  return d;
}

// ---- The experiment -----------------------------------------------------------------------------

enum class Method { Separate, Tied, Learned };
const char* methodName(Method m) {
  return m == Method::Separate ? "separate networks" : m == Method::Tied ? "tied weights" : "learned sharing";
}
const char* methodKey(Method m) { return m == Method::Separate ? "separate" : m == Method::Tied ? "tied" : "learned"; }

// Everything one (method, seed) needs: the objective, the three losses, initial weights.
class Setting {
 public:
  Setting(const Options& opt, const Draw& draw, Method method, std::uint64_t seed)
      : m_opt(opt),
        m_method(method),
        m_arch({kPixels, opt.hidden, kWays}, hypergrad::Activation::Tanh),
        m_slots(method == Method::Tied ? 1 : kTasks),
        m_slotOf(slotsOf(method)),
        m_objective(m_arch, taskObjectives(opt, draw, m_arch, seed), m_slotOf, m_slots),
        m_train(m_arch, draw.train, m_slotOf),
        m_valid(m_arch, draw.valid, m_slotOf),
        m_test(m_arch, draw.test, m_slotOf),
        m_w0(initialWeights(seed)) {}

  static std::vector<Index> slotsOf(Method m) {
    std::vector<Index> s(kTasks);
    for (Index k = 0; k < kTasks; ++k) s[std::size_t(k)] = m == Method::Tied ? 0 : k;
    return s;
  }

  MultitaskObjective& objective() { return m_objective; }
  const MultitaskObjective& objective() const { return m_objective; }
  const MultitaskLoss& valid() const { return m_valid; }
  const MultitaskLoss& test() const { return m_test; }
  const MultitaskLoss& train() const { return m_train; }
  Method method() const { return m_method; }
  Index slots() const { return m_slots; }

  // One training run at the objective's θ; with `reverse`, the hypergradients too.
  hypergrad::Hypergradients run(bool reverse) const {
    const hypergrad::ParameterLayout layout = m_objective.layout();
    hypergrad::SgdMomentum<> sgd(layout, hypergrad::Schedule::constant(m_opt.steps, layout.numGroups(), m_opt.alpha),
                                 hypergrad::Schedule::constant(m_opt.steps, layout.numGroups(), m_opt.gamma));
    const VectorXd v0 = VectorXd::Zero(m_w0.size());
    if (reverse) return hypergrad::computeHypergradients(sgd, m_objective, m_valid, m_w0, v0);
    sgd.start(m_w0, v0);
    hypergrad::train(sgd, m_objective);
    hypergrad::Hypergradients out;
    out.finalWeights = sgd.weights();
    out.metaObjective = m_valid.value(out.finalWeights);
    return out;
  }

 private:
  static std::vector<hypergrad::MlpObjective> taskObjectives(const Options& opt, const Draw& draw,
                                                             const hypergrad::MlpArchitecture& arch, std::uint64_t seed) {
    std::vector<hypergrad::MlpObjective> out;
    for (std::size_t k = 0; k < draw.train.size(); ++k) {
      out.emplace_back(arch, draw.train[k],
                       hypergrad::SeededBatches(1000 * seed + k, draw.train[k].numExamples(), opt.batch));
      // Two shards per batch: parallel when built with OpenMP (the examples are not; the bits are
      // the same either way, those of this shard size).
      out.back().setShardSize(std::max<Index>(1, (opt.batch + 1) / 2));
    }
    return out;
  }

  // One network's initial weights, N(0, 1/fan-in), biases 0, the same in every slot: the
  // networks start identical, so a coupling pulls corresponding units together.
  VectorXd initialWeights(std::uint64_t seed) const {
    VectorXd one = VectorXd::Zero(m_arch.numParameters());
    hypergrad::CounterRng rng(seed, 7);
    for (Index l = 0; l < m_arch.numLayers(); ++l) {
      auto W = m_arch.weights(one, l);
      const double s = 1.0 / std::sqrt(double(m_arch.fanIn(l)));
      for (Index j = 0; j < W.cols(); ++j)
        for (Index i = 0; i < W.rows(); ++i) W(i, j) = s * rng.normal();
    }
    VectorXd w(m_slots * one.size());
    for (Index s = 0; s < m_slots; ++s) w.segment(s * one.size(), one.size()) = one;
    return w;
  }

  const Options& m_opt;
  Method m_method;
  hypergrad::MlpArchitecture m_arch;
  Index m_slots;
  std::vector<Index> m_slotOf;
  MultitaskObjective m_objective;
  MultitaskLoss m_train, m_valid, m_test;
  VectorXd m_w0;
};

// The hyperparameters as MetaParameters blocks, one per θ block of the objective (same names):
// per layer the diagonal (trainable in every method) and the couplings (trainable only for
// learned sharing; fixed at kOff, no coupling, for separate networks; absent when tied).
hypergrad::MetaParameters initialParameters(const Options& opt, const Setting& s) {
  hypergrad::MetaParameters p;
  const Index layers = s.objective().architecture().numLayers();
  for (Index l = 0; l < layers; ++l) {
    p.add(MultitaskObjective::diagonalName(l), MatrixXd::Constant(s.slots(), 1, opt.lambda0),
          hypergrad::Transform::Identity);
    if (s.slots() > 1) {
      const bool learned = s.method() == Method::Learned;
      p.add(MultitaskObjective::couplingName(l), MatrixXd::Constant(numPairs(s.slots()), 1, learned ? opt.coupling0 : kOff),
            hypergrad::Transform::Identity, learned);
    }
  }
  return p;
}

// θ of the objective from the blocks (θ's layout is the blocks' order).
VectorXd thetaOf(const hypergrad::MetaParameters& p) {
  VectorXd theta(p.size());
  for (Index k = 0; k < p.numBlocks(); ++k) {
    const MatrixXd v = p.value(k);
    theta.segment(p.block(k).offset, v.size()) = Eigen::Map<const VectorXd>(v.data(), v.size());
  }
  return theta;
}

struct Evaluate {
  Setting& setting;

  hypergrad::MetaEvaluation operator()(const hypergrad::MetaParameters& p, Index) const {
    setting.objective().setHyperparameters(thetaOf(p));
    const hypergrad::Hypergradients hg = setting.run(/*reverse=*/true);
    hypergrad::MetaEvaluation e;
    e.objective = hg.metaObjective;
    for (Index k = 0; k < p.numBlocks(); ++k) e.gradients.push_back(MatrixXd(hg.hyperparameterBlock(p.block(k).name)));
    e.metrics = {{"train_loss", setting.train().value(hg.finalWeights)},
                 {"valid_error", setting.valid().meanError(hg.finalWeights)}};
    return e;
  }
};

// log.csv: one row per meta-iteration of every (method, seed) run.
struct LogRows {
  std::ofstream* file;
  std::string method;
  std::uint64_t seed;
  std::vector<double>* curve;  // the validation loss per meta-iteration
  bool onMetaIteration(const hypergrad::MetaIterationInfo& info) {
    *file << method << "," << seed << "," << info.iteration << "," << info.objective << "," << info.gradientNorm << ","
          << info.metrics->at("train_loss") << "," << info.metrics->at("valid_error") << "," << info.elapsedSeconds
          << "\n";
    curve->push_back(info.objective);
    return false;
  }
};

struct Scores {
  double trainLoss = 0, validLoss = 0, validError = 0, testLoss = 0, testError = 0;
  std::vector<double> taskTestLoss, taskTestError;
};

Scores score(const Setting& s, const VectorXd& w) {
  Scores r;
  r.trainLoss = s.train().value(w);
  r.validLoss = s.valid().value(w);
  r.validError = s.valid().meanError(w);
  r.testLoss = s.test().value(w);
  r.testError = s.test().meanError(w);
  for (std::size_t k = 0; k < std::size_t(kTasks); ++k) {
    r.taskTestLoss.push_back(s.test().taskLoss(w, k));
    r.taskTestError.push_back(s.test().taskError(w, k));
  }
  return r;
}

// ---- The derivative check ---------------------------------------------------------------------------

// The objective's Hessian-vector product and mixed product against central differences of its
// gradient (an independent computation: only gradient() is trusted), at random w, u and θ with
// every coupling active; and reverseStep's gradient bit-identical to gradient()'s. Returns the
// worst relative error.
double checkDerivatives(const Options& opt, const Draw& draw) {
  Setting s(opt, draw, Method::Learned, 99);
  MultitaskObjective& f = s.objective();
  const Index N = f.numParameters(), H = f.numHyperparameters();
  hypergrad::CounterRng rng(4242, 1);
  VectorXd w(N), u(N), theta(H);
  for (Index i = 0; i < N; ++i) w(i) = 0.3 * rng.normal();
  for (Index i = 0; i < N; ++i) u(i) = rng.normal();
  for (Index i = 0; i < H; ++i) theta(i) = -2.0 + rng.normal();
  f.setHyperparameters(theta);
  const Index t = 3;
  VectorXd g, hu, dtheta, gPlus, gMinus;
  f.gradient(w, t, g);
  f.hessianVectorProduct(w, t, u, hu);
  f.mixedProduct(w, t, u, dtheta);
  VectorXd g2, hu2, dtheta2;
  f.reverseStep(w, t, u, g2, hu2, dtheta2);
  if (!(g2.array() == g.array()).all())
    throw std::runtime_error("derivative check: reverseStep's gradient differs from gradient()'s bits");
  if ((hu2 - hu).norm() > 1e-14 * hu.norm() || (dtheta2 - dtheta).norm() > 1e-14 * dtheta.norm())
    throw std::runtime_error("derivative check: reverseStep's products differ from the separate calls");

  const double eps = 1e-5;
  f.gradient(w + eps * u, t, gPlus);
  f.gradient(w - eps * u, t, gMinus);
  const VectorXd fdHu = (gPlus - gMinus) / (2 * eps);
  const double hvpError = (fdHu - hu).norm() / hu.norm();

  VectorXd fdTheta(H);
  for (Index j = 0; j < H; ++j) {
    VectorXd th = theta;
    th(j) += eps;
    f.setHyperparameters(th);
    f.gradient(w, t, gPlus);
    th(j) = theta(j) - eps;
    f.setHyperparameters(th);
    f.gradient(w, t, gMinus);
    fdTheta(j) = u.dot(gPlus - gMinus) / (2 * eps);
  }
  f.setHyperparameters(theta);
  const double mixedError = (fdTheta - dtheta).cwiseAbs().maxCoeff() / dtheta.cwiseAbs().maxCoeff();
  std::printf("derivative check (%ld parameters, %ld hyperparameters, central differences, h = %g):\n"
              "  Hessian-vector product: relative error %.2e\n  mixed product, every theta entry: max error %.2e "
              "(relative to max |entry|)\n  reverseStep: gradient bit-identical to gradient()\n",
              long(N), long(H), eps, hvpError, mixedError);
  return std::max(hvpError, mixedError);
}

// The whole hypergradient (exact reverse pass through T steps) against central differences of
// the validation loss after retraining, entry by entry: an independent computation of ∂f/∂θ.
double checkHypergradient(const Options& opt, const Draw& draw) {
  Setting s(opt, draw, Method::Learned, 98);
  const hypergrad::MetaParameters p = initialParameters(opt, s);
  const VectorXd theta = thetaOf(p);
  s.objective().setHyperparameters(theta);
  const hypergrad::Hypergradients hg = s.run(true);
  const double eps = 1e-4;
  double worst = 0;
  const double scale = hg.hyperparameters.cwiseAbs().maxCoeff();
  std::printf("hypergradient check (exact reverse pass vs central differences of retrained runs, h = %g):\n", eps);
  for (Index j = 0; j < theta.size(); ++j) {
    VectorXd th = theta;
    th(j) += eps;
    s.objective().setHyperparameters(th);
    const double plus = s.run(false).metaObjective;
    th(j) = theta(j) - eps;
    s.objective().setHyperparameters(th);
    const double minus = s.run(false).metaObjective;
    const double fd = (plus - minus) / (2 * eps);
    worst = std::max(worst, std::abs(fd - hg.hyperparameters(j)) / scale);
    if (j < 2 || j == 4 || j == theta.size() - 1)  // two diagonal entries, a coupling, the last
      std::printf("  theta[%2ld]  reverse %+.6e   differences %+.6e\n", long(j), hg.hyperparameters(j), fd);
  }
  s.objective().setHyperparameters(theta);
  std::printf("  all %ld entries: max error %.2e (relative to max |entry|)\n", long(theta.size()), worst);
  return worst;
}

// ---- Outputs -----------------------------------------------------------------------------------------

// The symmetric S × S matrix of log λ of layer l from θ (diagonal and couplings).
MatrixXd layerMatrix(const VectorXd& theta, Index l, Index S) {
  MatrixXd m(S, S);
  const Index th = l * (S + numPairs(S));
  for (Index i = 0; i < S; ++i) m(i, i) = theta(th + i);
  Index pair = th + S;
  for (Index i = 0; i < S; ++i)
    for (Index j = i + 1; j < S; ++j, ++pair) m(i, j) = m(j, i) = theta(pair);
  return m;
}

std::string hexColour(const std::array<std::uint8_t, 3>& c) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "#%02x%02x%02x", c[0], c[1], c[2]);
  return buf;
}

// matrices.svg: one heat map per layer of the learned log λ (mean over seeds), the value in
// each cell; the diverging map centred at the couplings' starting value.
void writeMatricesSvg(const std::string& path, const std::vector<MatrixXd>& layers, Index hidden, double centre,
                      double range) {
  const int cell = 80, left = 150, top = 70, gap = 40;
  const int panel = cell * int(kTasks);
  const int width = left + int(layers.size()) * (panel + gap) + 10, height = top + panel + 110;
  std::ostringstream s;
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
    << "\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    << "<text x=\"" << width / 2 << "\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">Learned multitask penalties "
    << "log λ (mean over seeds)</text>\n";
  for (std::size_t l = 0; l < layers.size(); ++l) {
    const int x0 = left + int(l) * (panel + gap);
    s << "<text x=\"" << x0 + panel / 2 << "\" y=\"" << top - 28 << "\" text-anchor=\"middle\" font-size=\"13\">layer "
      << l + 1 << (l == 0 ? " (784 → " : " (") << hidden << (l == 0 ? ")" : " → 5)") << "</text>\n";
    for (Index i = 0; i < kTasks; ++i) {
      for (Index j = 0; j < kTasks; ++j) {
        const double v = layers[l](i, j);
        const auto c = hypergrad::divergingColour((v - centre) / range);
        const int x = x0 + int(j) * cell, y = top + int(i) * cell;
        const bool dark = std::abs(v - centre) > 0.6 * range;
        char num[32];
        std::snprintf(num, sizeof num, "%.1f", v);
        s << "<rect x=\"" << x << "\" y=\"" << y << "\" width=\"" << cell << "\" height=\"" << cell << "\" fill=\""
          << hexColour(c) << "\" stroke=\"#888\"/><text x=\"" << x + cell / 2 << "\" y=\"" << y + cell / 2 + 4
          << "\" text-anchor=\"middle\" fill=\"" << (dark ? "white" : "black") << "\">" << num << "</text>\n";
      }
      if (l == 0)
        s << "<text x=\"" << x0 - 6 << "\" y=\"" << top + int(i) * cell + cell / 2 + 4 << "\" text-anchor=\"end\">"
          << g_taskNames[i] << "</text>\n";
      // Column labels on two lines: "Fashion 0-4" / "mirrored".
      const std::string name = g_taskNames[i];
      const std::size_t cut = name.find(" mirrored");
      const int cx = x0 + int(i) * cell + cell / 2;
      s << "<text x=\"" << cx << "\" y=\"" << top + panel + 16 << "\" text-anchor=\"middle\" font-size=\"11\">"
        << name.substr(0, cut) << "</text>\n";
      if (cut != std::string::npos)
        s << "<text x=\"" << cx << "\" y=\"" << top + panel + 30 << "\" text-anchor=\"middle\" font-size=\"11\">"
          << "mirrored</text>\n";
    }
  }
  s << "<text x=\"" << left << "\" y=\"" << top + panel + 58 << "\">off the diagonal: log λ_ij of ½ λ_ij ‖W_i − W_j‖² "
    << "(sharing); on it: log λ_ii of ½ λ_ii ‖W_i‖² (L2)</text>\n<text x=\"" << left << "\" y=\"" << top + panel + 76
    << "\">colour: red above, blue below the couplings' start " << centre << " (±" << range
    << " saturates)</text>\n</svg>\n";
  std::ofstream out(path);
  out << s.str();
  if (!out) throw std::runtime_error("cannot write " + path);
}

double mean(const std::vector<double>& v) { return std::accumulate(v.begin(), v.end(), 0.0) / double(v.size()); }
double sd(const std::vector<double>& v) {
  if (v.size() < 2) return 0.0;
  const double m = mean(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / double(v.size() - 1));
}

// --quick's self-check (ctest looks for its last line): every output exists and is not empty.
void checkOutputs(const std::filesystem::path& dir, const std::vector<std::string>& names) {
  for (const std::string& name : names) {
    std::error_code ec;
    const auto size = std::filesystem::file_size(dir / name, ec);
    if (ec || size == 0)
      throw std::runtime_error("quick self-check failed: " + (dir / name).string() + " is missing or empty");
  }
  std::printf("quick self-check: all outputs written\n");
}

double secondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

int run(const Options& opt) {
  const auto start = std::chrono::steady_clock::now();
  const Tasks tasks = loadTasks(opt);
  const std::filesystem::path out(opt.out);
  std::filesystem::create_directories(out);
  std::printf("data: %s\n", tasks.source.c_str());
  for (const Task& t : tasks.tasks)
    std::printf("  task %-21s %5ld examples for training / validation, %5ld test\n", t.name.c_str(),
                long(t.pool.numExamples()), long(t.test.numExamples()));
  const hypergrad::MlpArchitecture arch({kPixels, opt.hidden, kWays});
  std::printf("per task: %ld training / %ld validation examples; network 784-%ld-5 tanh (%ld parameters)\n",
              long(opt.train), long(opt.valid), long(opt.hidden), long(arch.numParameters()));
  std::printf("training run: T = %ld steps, minibatch %ld per task, alpha %.3g, gamma %.3g; meta: Adam step %.3g, "
              "%ld meta-iterations, %ld seeds\n\n",
              long(opt.steps), long(opt.batch), opt.alpha, opt.gamma, opt.metaStep, long(opt.metaIterations),
              long(opt.seeds));

  // Independent checks of the objective's derivatives and of one whole hypergradient.
  const Draw first = drawTasks(tasks, opt, 1);
  const double derivativeError = checkDerivatives(opt, first);
  Options small = opt;
  small.steps = std::min<Index>(opt.steps, 30);
  const double hypergradientError = checkHypergradient(small, first);
  std::printf("\n");
  if (derivativeError > 1e-6 || hypergradientError > 1e-4)
    throw std::runtime_error("derivative check failed: the errors exceed 1e-6 (objective) or 1e-4 (hypergradient)");

  std::ofstream log(out / "log.csv");
  log << "method,seed,meta_iteration,valid_loss,hypergradient_norm,train_loss,valid_error,seconds\n";
  std::ofstream perSeed(out / "per_seed.csv");
  perSeed << "method,seed,best_meta_iteration,train_loss,valid_loss,valid_error,test_loss,test_error";
  for (Index k = 0; k < kTasks; ++k) perSeed << ",test_loss_" << g_taskNames[k] << ",test_error_" << g_taskNames[k];
  perSeed << ",seconds\n";

  const Method methods[] = {Method::Separate, Method::Tied, Method::Learned};
  std::map<Method, std::vector<Scores>> results;
  std::map<Method, std::vector<double>> seconds;
  std::map<Method, std::vector<double>> firstCurve;
  std::vector<VectorXd> learnedTheta;
  for (Index seed = 1; seed <= opt.seeds; ++seed) {
    const Draw draw = seed == 1 ? first : drawTasks(tasks, opt, std::uint64_t(seed));
    for (Method m : methods) {
      const auto t0 = std::chrono::steady_clock::now();
      Setting setting(opt, draw, m, std::uint64_t(seed));
      hypergrad::MetaParameters params = initialParameters(opt, setting);
      hypergrad::MetaAdam adam;
      adam.stepSize = opt.metaStep;
      std::vector<double> curve;
      const hypergrad::MetaResult result = hypergrad::metaOptimize(
          params, Evaluate{setting}, adam, opt.metaIterations, LogRows{&log, methodKey(m), std::uint64_t(seed), &curve});
      if (result.iterations == 0) {
        std::fprintf(stderr, "multitask_architecture: %s, seed %ld: %s\n", methodName(m), long(seed),
                     result.stopReason.c_str());
        return 1;
      }
      if (result.diverged)
        std::printf("  (%s, seed %ld stopped early: %s)\n", methodName(m), long(seed), result.stopReason.c_str());
      // The best iterate on validation, retrained once more; then the test set, for the first time.
      params.setRaw(result.bestRaw);
      const VectorXd theta = thetaOf(params);
      setting.objective().setHyperparameters(theta);
      const Scores s = score(setting, setting.run(false).finalWeights);
      const double secs = secondsSince(t0);
      results[m].push_back(s);
      seconds[m].push_back(secs);
      if (seed == 1) firstCurve[m] = curve;
      if (m == Method::Learned) learnedTheta.push_back(theta);
      std::printf("seed %ld  %-18s valid loss %.4f -> %.4f (best at meta-iteration %2ld)   test loss %.4f  error %.2f%%"
                  "   %.1f s\n",
                  long(seed), methodName(m), result.objectives.front(), s.validLoss, long(result.bestIteration),
                  s.testLoss, 100 * s.testError, secs);
      perSeed << methodKey(m) << "," << seed << "," << result.bestIteration << "," << s.trainLoss << "," << s.validLoss
              << "," << s.validError << "," << s.testLoss << "," << s.testError;
      for (Index k = 0; k < kTasks; ++k) perSeed << "," << s.taskTestLoss[std::size_t(k)] << "," << s.taskTestError[std::size_t(k)];
      perSeed << "," << secs << "\n";
    }
  }
  log.close();
  perSeed.close();
  if (!log || !perSeed) throw std::runtime_error("cannot write log.csv / per_seed.csv in " + opt.out);

  // Summary: mean ± sd over seeds.
  std::ofstream summary(out / "summary.csv");
  summary << "method,seeds,train_loss_mean,valid_loss_mean,test_loss_mean,test_loss_sd,test_error_mean,test_error_sd";
  for (Index k = 0; k < kTasks; ++k) summary << ",test_loss_" << g_taskNames[k];
  summary << ",seconds_per_seed\n";
  std::printf("\n%-18s %10s %10s %18s %18s   test loss per task (", "mean over seeds", "train loss", "valid loss",
              "test loss", "test error");
  for (Index k = 0; k < kTasks; ++k) std::printf("%s%s", g_taskNames[k], k + 1 < kTasks ? ", " : ")\n");
  for (Method m : methods) {
    const std::vector<Scores>& r = results[m];
    std::vector<double> tr, va, tl, te;
    for (const Scores& s : r) {
      tr.push_back(s.trainLoss);
      va.push_back(s.validLoss);
      tl.push_back(s.testLoss);
      te.push_back(s.testError);
    }
    std::printf("%-18s %10.4f %10.4f   %.4f ± %.4f   %6.2f%% ± %4.2f%%  ", methodName(m), mean(tr), mean(va), mean(tl),
                sd(tl), 100 * mean(te), 100 * sd(te));
    summary << methodKey(m) << "," << r.size() << "," << mean(tr) << "," << mean(va) << "," << mean(tl) << "," << sd(tl)
            << "," << mean(te) << "," << sd(te);
    for (std::size_t k = 0; k < std::size_t(kTasks); ++k) {
      std::vector<double> v;
      for (const Scores& s : r) v.push_back(s.taskTestLoss[k]);
      std::printf(" %.3f", mean(v));
      summary << "," << mean(v);
    }
    std::printf("\n");
    summary << "," << mean(seconds[m]) << "\n";
  }
  summary.close();
  if (!summary) throw std::runtime_error("cannot write " + (out / "summary.csv").string());

  // The learned matrices: mean over seeds of log λ, per layer.
  const Index layers = arch.numLayers();
  std::vector<MatrixXd> meanMatrices(std::size_t(layers), MatrixXd::Zero(kTasks, kTasks));
  std::ofstream matrices(out / "matrices.csv");
  matrices << "seed,layer,task_i,task_j,log_lambda\n";
  for (std::size_t s = 0; s < learnedTheta.size(); ++s)
    for (Index l = 0; l < layers; ++l) {
      const MatrixXd m = layerMatrix(learnedTheta[s], l, kTasks);
      meanMatrices[std::size_t(l)] += m / double(learnedTheta.size());
      for (Index i = 0; i < kTasks; ++i)
        for (Index j = 0; j < kTasks; ++j)
          matrices << s + 1 << "," << l + 1 << "," << g_taskNames[i] << "," << g_taskNames[j] << "," << m(i, j) << "\n";
    }
  matrices.close();
  if (!matrices) throw std::runtime_error("cannot write " + (out / "matrices.csv").string());
  std::printf("\nlearned log lambda, mean over seeds (rows / columns: ");
  for (Index k = 0; k < kTasks; ++k) std::printf("%s%s", g_taskNames[k], k + 1 < kTasks ? ", " : "):\n");
  double range = 1e-3;
  for (Index l = 0; l < layers; ++l) {
    std::printf("  layer %ld\n", long(l + 1));
    for (Index i = 0; i < kTasks; ++i) {
      std::printf("   ");
      for (Index j = 0; j < kTasks; ++j) std::printf(" %7.2f", meanMatrices[std::size_t(l)](i, j));
      std::printf("\n");
    }
    range = std::max(range, (meanMatrices[std::size_t(l)].array() - opt.coupling0).abs().maxCoeff());
  }
  writeMatricesSvg((out / "matrices.svg").string(), meanMatrices, opt.hidden, opt.coupling0, range);
  // The same matrices as a PNG: each entry a 24 × 24 block, the layers side by side.
  MatrixXd image = MatrixXd::Constant(kTasks, layers * (kTasks + 1) - 1, 0.0);
  for (Index l = 0; l < layers; ++l)
    image.block(0, l * (kTasks + 1), kTasks, kTasks) = (meanMatrices[std::size_t(l)].array() - opt.coupling0).matrix();
  hypergrad::writePngDiverging((out / "matrices.png").string(), image, range,
                               hypergrad::PngOptions().withScale(24).withDeflate(hypergrad::zlibDeflate));

  hypergrad::SvgPlot curve("Multitask penalties: meta-learning curve (seed 1)", "meta-iteration",
                           "mean validation loss of the 4 tasks");
  for (Method m : methods) curve.addLine(methodName(m), firstCurve[m]);
  curve.save((out / "meta_learning_curve.svg").string());

  std::printf("\nwrote %s/{summary.csv, per_seed.csv, log.csv, matrices.csv, matrices.svg, matrices.png, "
              "meta_learning_curve.svg}\ntotal time %.1f s\n",
              opt.out.c_str(), secondsSince(start));
  if (opt.quick)
    checkOutputs(out, {"summary.csv", "per_seed.csv", "log.csv", "matrices.csv", "matrices.svg", "matrices.png",
                       "meta_learning_curve.svg"});
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  if (!parseOptions(argc, argv, opt)) return 2;
  try {
    return run(opt);
  } catch (const hypergrad::DataError& e) {
    std::fprintf(stderr, "multitask_architecture: %s\n(or run with --quick, which falls back to synthetic data)\n",
                 e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "multitask_architecture: %s\n", e.what());
    return 1;
  }
}
